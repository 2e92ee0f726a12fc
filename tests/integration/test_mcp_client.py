"""
The real ``mcp`` 2.x client against `MCPApp` served over real HTTP.

`MCPApp` runs in this process on the real reactor, mounted in the daemon's
own `MailMCPSite` and `Router`, on a free loopback port, with a
`FakeTokenVerifier` and the demo ``echo`` tool (the OAuth end-to-end test
covers the real daemon with real tokens).  The client is the unmodified
``mcp`` package in a plain-asyncio subprocess, so the two event loops never
meet; it carries the Bearer token through its own ``httpx2`` client.  Its
inbound validation of every result against the negotiated version's schema
doubles as a wire-format check.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from mailmcp.mcp._app import MCPApp
from mailmcp.testing import FakeTokenVerifier, echo_tool, make_account, make_config, tool_services
from mailmcp.web._http import MailMCPSite
from mailmcp.web._router import Router

TOKEN = "integration-token-0123456789"

CLIENT_SCRIPT = r'''
import asyncio, json, sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


async def main(url, token, mode):
    out = {}
    async with httpx2.AsyncClient() as raw:
        r = await raw.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                           headers={"accept": "application/json, text/event-stream"})
        out["unauthenticated"] = [r.status_code, r.headers.get("www-authenticate")]
        r = await raw.get(url, headers={"authorization": "Bearer " + token})
        out["get"] = [r.status_code, r.headers.get("allow")]
    headers = {"authorization": "Bearer " + token}
    async with httpx2.AsyncClient(headers=headers) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            session = client.session
            if session.initialize_result is not None:
                out["era"] = "legacy"
                out["version"] = session.initialize_result.protocol_version
                out["server"] = session.initialize_result.server_info.name
            else:
                out["era"] = "modern"
                out["version"] = session.discover_result.supported_versions
            tools = await client.list_tools()
            out["tools"] = [
                {"name": t.name, "title": t.title, "input": t.input_schema, "output": t.output_schema,
                 "readOnly": t.annotations.read_only_hint if t.annotations else None}
                for t in tools.tools
            ]
            res = await client.call_tool("echo", {"text": "héllo ✓", "times": 2})
            out["echo"] = {"error": res.is_error, "structured": res.structured_content,
                           "text": res.content[0].text}
            res = await client.call_tool("echo", {"times": 0})
            out["bad_args"] = {"error": res.is_error, "text": res.content[0].text}
            res = await client.call_tool("echo", {"text": "fail"})
            out["tool_error"] = {"error": res.is_error, "text": res.content[0].text}
            try:
                await client.call_tool("no_such_tool", {})
            except MCPError as e:
                out["unknown_tool"] = e.error.code
            else:
                out["unknown_tool"] = None
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
'''


class Recorder(Resource):
    """Wraps a resource and records what each request looked like on the wire."""

    isLeaf = True

    def __init__(self, inner: IResource, seen: list[dict[str, Any]]) -> None:
        super().__init__()
        self._inner = inner
        self._seen = seen

    def render(self, request: IRequest) -> Any:
        body = request.content.read() if request.content is not None else b""
        request.content.seek(0)
        try:
            method = json.loads(body).get("method") if body else None
        except ValueError:
            method = None
        entry = {
            "http": request.method.decode(),
            "rpc": method,
            "version": (request.getHeader(b"mcp-protocol-version") or b"").decode() or None,
            "session": request.getHeader(b"mcp-session-id"),
        }
        self._seen.append(entry)

        def finished(_: object) -> None:
            entry["status"] = request.code
            entry["session_out"] = request.responseHeaders.getRawHeaders(b"mcp-session-id")

        request.notifyFinish().addBoth(finished)
        return self._inner.render(request)


@pytest.fixture
def served() -> Any:
    """MCPApp listening on a free loopback port, behind the daemon's Site and Router."""
    seen: list[dict[str, Any]] = []
    port_holder: dict[str, Any] = {}
    verifier = FakeTokenVerifier({TOKEN: make_account(owner="grant-int", email="alice@example.test")})
    # The base URL needs the real port; bind first, then build the app.
    placeholder = Resource()
    site = MailMCPSite(placeholder, max_body=1 << 20, reactor=reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    config = make_config(base_url=base, max_request_body=1 << 20)
    app = MCPApp(config, verifier, tool_services(reactor=reactor), [echo_tool()])
    site.resource = Router([("/mcp", Recorder(app.resource(), seen))])
    port_holder.update(port=port, base=base, seen=seen)
    yield SimpleNamespace(url=f"{base}/mcp", base=base, seen=seen)
    port.stopListening()


async def run_client(tmp_path: Path, url: str, mode: str) -> dict[str, Any]:
    script = tmp_path / "mcp_client.py"
    script.write_text(CLIENT_SCRIPT)
    out, err, code = await getProcessOutputAndValue(
        sys.executable, [str(script), url, TOKEN, mode], env=dict(os.environ), reactor=reactor
    )
    assert code == 0, err.decode(errors="replace")[-4000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def check_common(out: dict[str, Any], base: str) -> None:
    assert out["unauthenticated"] == [
        401,
        f'Bearer resource_metadata="{base}/.well-known/oauth-protected-resource/mcp", '
        f'scope="mail.read mail.organize mail.draft mail.send mail.delete"',
    ]
    assert out["get"] == [405, "POST"]
    [tool] = out["tools"]
    assert tool["name"] == "echo" and tool["title"] == "Echo" and tool["readOnly"] is True
    assert tool["input"]["type"] == "object" and tool["output"]["type"] == "object"
    echo = out["echo"]
    assert echo["error"] is False
    assert echo["structured"] == {"text": "héllo ✓héllo ✓", "owner": "grant-int", "email": "alice@example.test"}
    assert json.loads(echo["text"]) == echo["structured"]
    assert out["bad_args"]["error"] is True and "text" in out["bad_args"]["text"]
    assert out["tool_error"] == {"error": True, "text": "You asked the echo tool to fail, so it did."}
    assert out["unknown_tool"] == -32602


@pytest_twisted.ensureDeferred
async def test_legacy_mode(served: Any, tmp_path: Path) -> None:
    """mode="legacy": initialize negotiates 2025-11-25, then list/call, all without a session."""
    out = await run_client(tmp_path, served.url, "legacy")
    check_common(out, served.base)
    assert out["era"] == "legacy" and out["version"] == "2025-11-25" and out["server"] == "mailmcp"
    rpc = [(e["rpc"], e["status"]) for e in served.seen if e["rpc"]]
    assert ("initialize", 200) in rpc
    assert ("notifications/initialized", 202) in rpc
    assert not any(e["session_out"] for e in served.seen)
    after_init = [e for e in served.seen if e["rpc"] == "tools/call"]
    assert after_init and all(e["version"] == "2025-11-25" for e in after_init)


@pytest_twisted.ensureDeferred
async def test_auto_mode_takes_the_stateless_era(served: Any, tmp_path: Path) -> None:
    """mode="auto": server/discover succeeds, so the client speaks 2026-07-28 and never initializes."""
    out = await run_client(tmp_path, served.url, "auto")
    check_common(out, served.base)
    assert out["era"] == "modern"
    assert "2026-07-28" in out["version"]
    methods = [e["rpc"] for e in served.seen if e["rpc"]]
    assert "server/discover" in methods and "initialize" not in methods
    calls = [e for e in served.seen if e["rpc"] == "tools/call"]
    assert calls and all(e["version"] == "2026-07-28" and e["status"] in (200, 400) for e in calls)
    assert not any(e["session_out"] for e in served.seen)


@pytest_twisted.ensureDeferred
async def test_pinned_modern_mode(served: Any, tmp_path: Path) -> None:
    """mode="2026-07-28": no probe, every request stateless with the 2026 headers."""
    out = await run_client(tmp_path, served.url, "2026-07-28")
    check_common(out, served.base)
    assert out["era"] == "modern"
    methods = [e["rpc"] for e in served.seen if e["rpc"]]
    assert "initialize" not in methods


def test_daemon_mcp_gate(daemon_factory: Any) -> None:
    """
    The real ``twistd mailmcp``: ``/mcp`` challenges every unauthenticated
    request with a resource_metadata URL that really serves this resource's
    metadata, and a forged token is invalid_token, GET included.
    """
    import urllib.error
    import urllib.request

    daemon = daemon_factory()
    url = daemon.base_url + "/mcp"

    def fetch(method: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers
        except urllib.error.HTTPError as e:
            return e.code, e.headers

    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize"}).encode()
    status, headers = fetch("POST", {"content-type": "application/json"}, body)
    assert status == 401
    challenge = headers["www-authenticate"]
    prm_url = f"{daemon.base_url}/.well-known/oauth-protected-resource/mcp"
    assert challenge == f'Bearer resource_metadata="{prm_url}", scope="mail.read mail.organize mail.draft mail.send mail.delete"'
    with urllib.request.urlopen(prm_url, timeout=10) as response:
        metadata = json.loads(response.read())
    assert metadata["resource"] == url
    forged = "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIiwia2lkIjoieCJ9..AAAA.BBBB.CCCC"
    for method in ("POST", "GET", "DELETE"):
        status, headers = fetch(method, {"authorization": f"Bearer {forged}", "content-type": "application/json"},
                                body if method == "POST" else None)
        assert status == 401, method
        assert 'error="invalid_token"' in headers["www-authenticate"]
    assert forged not in daemon.log_text()
