"""
The conversation, folder and changes tools through the ``/mcp`` endpoint:
`MCPApp` with the real tool set over real HTTP, in front of the real IMAP
pool and Dovecot.  ``tools/list`` describes them honestly; results carry
``structuredContent`` and the same JSON as text; bad input is ``isError``
while the IMAP server receives nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted

from mailmcp.mail._untrusted import unmark_body
from tests.harness import Services
from tests.integration.dovecot_wire import Wire, plain
from tests.integration.mcp_loopback import call, rpc, serve_mcp

pytestmark = pytest.mark.integration

NEW_TOOLS = ("get_mail_thread", "get_mailbox_changes", "create_mailbox", "rename_mailbox",
             "delete_mailbox")


@pytest.fixture
def endpoint(services: Services) -> Iterator[Any]:
    wire = Wire(services)
    url, token, port = serve_mcp(wire.account, wire.ctx.services)
    yield SimpleNamespace(url=url, token=token, wire=wire)
    pytest_twisted.blockon(port.stopListening())
    pytest_twisted.blockon(wire.pool.stopService())


@pytest_twisted.ensureDeferred
async def test_tools_list_describes_the_new_tools(endpoint: Any) -> None:
    """Titles, honest annotations and both schemas; no IMAP command for tools/list."""
    tools = {t["name"]: t for t in (await rpc(endpoint, "tools/list", {}))["result"]["tools"]}
    for name in NEW_TOOLS:
        tool = tools[name]
        assert tool["title"]
        assert tool["inputSchema"]["type"] == "object" and tool["outputSchema"]["type"] == "object"
        assert tool["annotations"]["openWorldHint"] is True
    hints = {name: tools[name]["annotations"] for name in NEW_TOOLS}
    for name in ("get_mail_thread", "get_mailbox_changes"):
        assert hints[name]["readOnlyHint"] is True and hints[name]["destructiveHint"] is False
    for name in ("create_mailbox", "rename_mailbox", "delete_mailbox"):
        assert hints[name]["readOnlyHint"] is False
    assert hints["delete_mailbox"]["destructiveHint"] is True
    assert hints["create_mailbox"]["destructiveHint"] is False
    assert tools["get_mail_thread"]["inputSchema"]["required"] == ["uid"]
    assert {"folder", "uid", "limit"} <= set(tools["get_mail_thread"]["inputSchema"]["properties"])
    assert {"folder", "since"} <= set(tools["get_mailbox_changes"]["inputSchema"]["properties"])
    assert {"name", "parent"} == set(tools["create_mailbox"]["inputSchema"]["properties"])
    assert {"name", "new_name"} == set(tools["rename_mailbox"]["inputSchema"]["properties"])
    assert "state" in tools["list_mail_messages"]["outputSchema"]["properties"]
    assert endpoint.wire.events == []


@pytest_twisted.ensureDeferred
async def test_thread_folders_and_changes_through_mcp(endpoint: Any) -> None:
    """A listing's state, a new message, its thread, and a folder made, renamed and deleted."""
    wire: Wire = endpoint.wire
    wire.deliver(plain("first"))
    listing = (await call(endpoint, "list_mail_messages", {"folder": "INBOX"}))["structuredContent"]
    assert isinstance(listing["state"], str) and listing["total"] == 1
    wire.deliver(plain("second"))
    changed = (await call(endpoint, "get_mailbox_changes",
                          {"folder": "INBOX", "since": listing["state"]}))["structuredContent"]
    assert [m["uid"] for m in changed["new"]] == [2] and changed["new"][0]["subject"] == "second"
    assert changed["uidvalidity"] == listing["uidvalidity"] and changed["vanished"] == []
    thread = (await call(endpoint, "get_mail_thread", {"folder": "INBOX", "uid": 2}))["structuredContent"]
    assert [(m["folder"], m["uid"], unmark_body(m["snippet"])) for m in thread["messages"]] == [("INBOX", 2, "Hello.")]
    assert thread["messages"][0]["from"] == [{"name": "Ann", "email": "ann@example.test"}]

    made = (await call(endpoint, "create_mailbox", {"name": "Заметки"}))["structuredContent"]
    assert made == {"name": "Заметки", "delimiter": "/", "created": True}
    renamed = (await call(endpoint, "rename_mailbox", {"name": "Заметки", "new_name": "Notizen/Büro"}))
    assert renamed["structuredContent"]["name"] == "Notizen/Büro"
    boxes = (await call(endpoint, "list_mailboxes", {}))["structuredContent"]["mailboxes"]
    assert "Notizen/Büro" in [b["name"] for b in boxes] and "Заметки" not in [b["name"] for b in boxes]
    refused = await call(endpoint, "delete_mailbox", {"name": "Notizen"})
    assert refused["isError"] and "has subfolders" in refused["content"][0]["text"]
    deleted = await call(endpoint, "delete_mailbox", {"name": "Notizen/Büro"})
    assert deleted["structuredContent"] == {"name": "Notizen/Büro", "deleted": True}


@pytest_twisted.ensureDeferred
async def test_bad_arguments_are_errors_without_imap(endpoint: Any) -> None:
    """Malformed states, bad UIDs and folder names: isError results, zero IMAP commands."""
    wire: Wire = endpoint.wire
    cases = [
        ("get_mailbox_changes", {"folder": "INBOX", "since": "not-a-state"}, "not a mailbox state"),
        ("get_mailbox_changes", {"folder": "INBOX", "since": "ms1.eJyrVg"}, "damaged"),
        ("get_mailbox_changes", {"folder": "INBOX"}, "since"),
        ("get_mail_thread", {"folder": "INBOX", "uid": 0}, "uid"),
        ("get_mail_thread", {"folder": "INBOX", "uid": "1"}, "uid"),
        ("create_mailbox", {"name": "a\r\nX DELETE INBOX"}, "control characters"),
        ("create_mailbox", {"name": ""}, "name"),
        ("rename_mailbox", {"name": "INBOX\r\n", "new_name": "x"}, "name"),
        ("delete_mailbox", {"name": "*"}, ""),
    ]
    for name, arguments, why in cases:
        result = await call(endpoint, name, arguments)
        assert result["isError"], (name, arguments)
        assert why in result["content"][0]["text"], (name, result)
    assert not any(cmd in ("CREATE", "RENAME", "DELETE", "EXAMINE", "SELECT")
                   for _, cmd, _ in wire.events)
