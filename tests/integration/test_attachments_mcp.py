"""
Attachments through the MCP endpoint: `MCPApp` with the real tool set,
served over real HTTP, in front of the real IMAP pool (Dovecot), SMTP
sender (Postfix) and each attachment store (local, SeaweedFS S3).

What the assistant sees: ``get_mail_attachment_link`` returns a working
link in ``structuredContent`` and as text; ``attachment_urls`` that are not
our own live links come back as ``isError`` results and cause no request
to anything (the sink counts).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from mailmcp.mcp._app import MCPApp
from mailmcp.testing import FakeTokenVerifier, make_config
from mailmcp.tools import all_tools
from mailmcp.web._http import MailMCPSite
from mailmcp.web._router import Router
from tests.integration.attachments_world import SinkSite, World, download, fresh_account, multipart

pytestmark = pytest.mark.integration


@pytest.fixture
def mcp(world: World) -> Iterator[Any]:
    verifier = FakeTokenVerifier()
    site = MailMCPSite(Resource(), max_body=1 << 20, reactor=reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    config = make_config(base_url=base, max_request_body=1 << 20)
    app = MCPApp(config, verifier, world.services, all_tools())
    site.resource = Router([("/mcp", app.resource())])
    yield SimpleNamespace(url=f"{base}/mcp", verifier=verifier)
    pytest_twisted.blockon(port.stopListening())


async def call_tool(mcp: Any, token: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": name, "arguments": arguments}}).encode()
    from io import BytesIO

    from twisted.web.client import FileBodyProducer

    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(
        b"POST", mcp.url.encode(),
        Headers({b"content-type": [b"application/json"], b"accept": [b"application/json, text/event-stream"],
                 b"authorization": [b"Bearer " + token.encode()]}),
        FileBodyProducer(BytesIO(body)),
    )
    assert response.code == 200
    message = json.loads(await readBody(response))
    result: dict[str, Any] = message["result"]
    return result


@pytest_twisted.ensureDeferred
async def test_link_tool_over_mcp(world: World, mcp: Any) -> None:
    """get_mail_attachment_link over MCP returns a link (structured and as text) that downloads the bytes."""
    account = fresh_account(world.harness)
    token = "tok-" + uuid.uuid4().hex
    mcp.verifier.add(token, account)
    payload = os.urandom(70_000)
    world.harness.deliver(account.email, multipart(payload, "report.pdf", subtype="pdf"))
    result = await call_tool(mcp, token, "get_mail_attachment_link", {"folder": "INBOX", "uid": 1, "part": "2"})
    assert not result.get("isError")
    structured = result["structuredContent"]
    assert json.loads(result["content"][0]["text"]) == structured
    assert structured["filename"] == "report.pdf" and structured["size"] == len(payload)
    code, headers, body = await download(structured["url"])
    assert code == 200 and body == payload
    assert headers.getRawHeaders("content-type") == ["application/pdf"]


@pytest_twisted.ensureDeferred
async def test_send_with_foreign_urls_is_error_and_silent(world: World, mcp: Any, sink: tuple[SinkSite, int]) -> None:
    """send/draft with URLs that are not our links are isError results, and nothing is contacted."""
    site, port = sink
    alice, bob = fresh_account(world.harness), fresh_account(world.harness)
    token = "tok-" + uuid.uuid4().hex
    mcp.verifier.add(token, alice)
    world.harness.deliver(bob.email, multipart(b"bob's file", "b.bin"))
    bob_token = "tok-" + uuid.uuid4().hex
    mcp.verifier.add(bob_token, bob)
    bobs = (await call_tool(mcp, bob_token, "get_mail_attachment_link",
                            {"folder": "INBOX", "uid": 1, "part": "2"}))["structuredContent"]["url"]
    for url in ["file:///etc/passwd", "|id", f"http://127.0.0.1:{port}/", f"http://2130706433:{port}/",
                f"http://localhost:{port}/redirect", "http://169.254.169.254/latest/meta-data/", bobs]:
        for tool in ("send_mail_message", "create_draft_mail_message"):
            result = await call_tool(mcp, token, tool, {
                "to": [bob.email], "subject": "x", "text_body": "y", "attachment_urls": [url]})
            assert result.get("isError") is True, (tool, url, result)
            assert "never fetched" in result["content"][0]["text"] or "not" in result["content"][0]["text"]
    assert site.connections == 0


@pytest_twisted.ensureDeferred
async def test_get_mail_message_lists_attachments_with_links(world: World, mcp: Any) -> None:
    """get_mail_message gives each attachment a working link; reading the message again stores nothing new."""
    account = fresh_account(world.harness)
    token = "tok-" + uuid.uuid4().hex
    mcp.verifier.add(token, account)
    payload = os.urandom(90_000)
    world.harness.deliver(account.email, multipart(payload, "photo.jpg", subtype="octet-stream"))
    first = await call_tool(mcp, token, "get_mail_message", {"folder": "INBOX", "uid": 1})
    assert not first.get("isError"), first
    attachments = first["structuredContent"]["attachments"]
    assert [a["filename"] for a in attachments] == ["photo.jpg"]
    code, _, body = await download(attachments[0]["url"])
    assert code == 200 and body == payload
    second = await call_tool(mcp, token, "get_mail_message", {"folder": "INBOX", "uid": 1})
    assert second["structuredContent"]["attachments"][0]["url"]
    assert world.store.puts == 1 and await world.count_objects() == 1
