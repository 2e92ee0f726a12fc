"""
An `MCPApp` with the real tool set on a loopback HTTP port, and the JSON-RPC
calls the MCP integration tests make to it.
"""

from __future__ import annotations

import json
import uuid
from io import BytesIO
from typing import Any

from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from mailmcp.mcp._app import MCPApp
from mailmcp.testing import FakeTokenVerifier, make_config
from mailmcp.tools import all_tools
from mailmcp.web._http import MailMCPSite
from mailmcp.web._router import Router


def serve_mcp(account: Any, services: Any) -> tuple[str, str, IListeningPort]:
    """
    Listen on loopback with an MCPApp whose one bearer token stands for
    C{account}; the tools run on C{services}.  Returns the ``/mcp`` URL, the
    token and the port (the caller stops listening).
    """
    verifier = FakeTokenVerifier()
    token = "tok-" + uuid.uuid4().hex
    verifier.add(token, account)
    site = MailMCPSite(Resource(), max_body=1 << 20, reactor=reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    config = make_config(base_url=base, max_request_body=1 << 20)
    app = MCPApp(config, verifier, services, all_tools())
    site.resource = Router([("/mcp", app.resource())])
    return f"{base}/mcp", token, port


async def rpc(endpoint: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """POST one JSON-RPC request to C{endpoint.url} with C{endpoint.token}; the reply must be 200."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(
        b"POST", endpoint.url.encode(),
        Headers({b"content-type": [b"application/json"], b"accept": [b"application/json, text/event-stream"],
                 b"authorization": [b"Bearer " + endpoint.token.encode()],
                 b"mcp-protocol-version": [b"2025-06-18"]}),
        FileBodyProducer(BytesIO(body)),
    )
    assert response.code == 200
    message: dict[str, Any] = json.loads(await readBody(response))
    return message


async def call(endpoint: Any, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """tools/call; a result that is not an error carries the same JSON as text and structuredContent."""
    message = await rpc(endpoint, "tools/call", {"name": name, "arguments": arguments})
    result: dict[str, Any] = message["result"]
    if not result.get("isError"):
        assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    return result
