"""
The reading tools through the ``/mcp`` endpoint: `MCPApp` with the real tool
set over real HTTP, in front of the real IMAP pool and Dovecot.

What the assistant sees: ``tools/list`` describes the four tools honestly;
``tools/call`` results carry ``structuredContent`` and the same JSON as
text, with UIDs and uidvalidity; hostile arguments come back as ``isError``
results while the IMAP server receives nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted

from mailmcp.mail._untrusted import unmark_body
from tests.harness import Services
from tests.integration.dovecot_wire import Wire, expunge, plain
from tests.integration.mcp_loopback import call, rpc, serve_mcp

pytestmark = pytest.mark.integration

READING = ("list_mailboxes", "list_mail_messages", "get_mail_message", "search_mail_messages")


@pytest.fixture
def endpoint(services: Services) -> Iterator[Any]:
    """An MCPApp on a loopback port whose tools use a fresh Dovecot account through the pool."""
    wire = Wire(services)
    url, token, port = serve_mcp(wire.account, wire.ctx.services)
    yield SimpleNamespace(url=url, token=token, wire=wire)
    pytest_twisted.blockon(port.stopListening())
    pytest_twisted.blockon(wire.pool.stopService())


@pytest_twisted.ensureDeferred
async def test_tools_list_describes_reading_tools(endpoint: Any) -> None:
    """
    tools/list: the four tools with titles, honest annotations and both
    schemas; get_mail_message is not read-only (it stores attachments, MCP-14).
    """
    tools = {t["name"]: t for t in (await rpc(endpoint, "tools/list", {}))["result"]["tools"]}
    for name in READING:
        tool = tools[name]
        read_only = name != "get_mail_message"
        assert tool["title"] and tool["annotations"]["readOnlyHint"] is read_only
        assert tool["annotations"]["destructiveHint"] is False
        assert tool["inputSchema"]["type"] == "object" and tool["outputSchema"]["type"] == "object"
    assert "from" in tools["search_mail_messages"]["inputSchema"]["properties"]
    assert endpoint.wire.events == []


@pytest_twisted.ensureDeferred
async def test_read_through_mcp(endpoint: Any) -> None:
    """Listing, searching and reading over MCP give UIDs that agree, after expunges."""
    wire: Wire = endpoint.wire
    for i in range(1, 6):
        wire.deliver(plain(f"note {i}", f"text {i}\n"))
    await expunge(wire, [1, 3])
    boxes = (await call(endpoint, "list_mailboxes", {}))["structuredContent"]["mailboxes"]
    assert {"name": "INBOX", "messages": 3} in [{"name": b["name"], "messages": b["messages"]} for b in boxes]
    listing = (await call(endpoint, "list_mail_messages", {"folder": "INBOX"}))["structuredContent"]
    assert [m["uid"] for m in listing["messages"]] == [5, 4, 2]
    assert listing["messages"][0]["from"] == [{"name": "Ann", "email": "ann@example.test"}]
    found = (await call(endpoint, "search_mail_messages", {"subject": "note 4"}))["structuredContent"]
    assert found["uids"] == [4]
    message = (await call(endpoint, "get_mail_message", {"folder": "INBOX", "uid": 4,
                                                        "uidvalidity": listing["uidvalidity"]}))
    assert unmark_body(message["structuredContent"]["body"]) == "text 4\n"
    assert message["structuredContent"]["seen"] is False
    missing = await call(endpoint, "get_mail_message", {"folder": "INBOX", "uid": 3})
    assert missing["isError"] and "no message with UID 3" in missing["content"][0]["text"]


@pytest_twisted.ensureDeferred
async def test_hostile_arguments_are_errors_without_imap(endpoint: Any) -> None:
    """docs/threat-model.rst TL-S1/TL-U1/TL-F1 over MCP: isError results, and zero IMAP commands."""
    attempts = [
        ("search_mail_messages", {"query": "ALL\r\nX1 DELETE INBOX"}),
        ("search_mail_messages", {"query": "{5}\r\nhello"}),
        ("search_mail_messages", {"query": "~{5+}"}),
        ("search_mail_messages", {"from": "a\r\nX1 DELETE INBOX"}),
        ("get_mail_message", {"uid": "5"}),
        ("get_mail_message", {"uid": "1:*"}),
        ("get_mail_message", {"uid": True}),
        ("get_mail_message", {"uid": 4294967296}),
        ("list_mail_messages", {"folder": "INBOX\r\nX DELETE Trash"}),
        ("list_mail_messages", {"per_page": 10**6}),
        ("list_mailboxes", {"unexpected": 1}),
    ]
    for name, arguments in attempts:
        message = await rpc(endpoint, "tools/call", {"name": name, "arguments": arguments})
        result = message.get("result")
        assert (result is not None and result["isError"]) or "error" in message, (name, arguments, message)
    assert endpoint.wire.events == []
    assert endpoint.wire.pool.open_connections == 0
