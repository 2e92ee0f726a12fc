"""
The attack catalogue (docs/threat-model.rst, MCP and TL) end to end: hostile
``/mcp`` bodies and hostile tool arguments sent to a real ``twistd mailmcp``
with a real token of a real Dovecot user, grouped by surface.

Each case asserts the clear refusal (HTTP status and JSON-RPC error, or an
``isError`` result naming the problem) and, after all of them, that
nothing changed: every folder of the mailbox holds exactly the same UIDs
and flags as before, no message went out through Postfix (the would-be
recipient's INBOX is empty), the daemon still serves a normal call, and
its log has no error line.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import httpx2
import pytest

from tests.harness import Services, generate_client
from tests.hostile import mcp_http
from tests.hostile.catalogue import snapshot
from tests.hostile.daemon_clients import error_lines, seed
from tests.integration.mail_live import _inbox

pytestmark = pytest.mark.integration

LONE_SURROGATE = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_mail_messages",' \
                 b'"arguments":{"folder":"\\ud800"}}}'

#: (case id, raw body, expected HTTP status, expected JSON-RPC error code)
TRANSPORT_CASES = [
    ("MCP-06 malformed", b"{", 400, -32700),
    ("MCP-06 array", b"[]", 400, -32600),
    ("MCP-06 string", b'"str"', 400, -32600),
    ("MCP-06 null", b"null", 400, -32600),
    ("MCP-07 batch", b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]', 400, -32600),
    ("MCP-08 unknown method", b'{"jsonrpc":"2.0","id":1,"method":"foo/bar"}', 200, -32601),
    ("MCP-08 unknown tool", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm_rf","arguments":{}}}',
     200, -32602),
    ("MCP-09 object id", b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', 400, -32600),
    ("MCP-09 float id", b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', 400, -32600),
    ("MCP-10 deep nesting", b"[" * 100_000 + b"]" * 100_000, 400, -32700),
    ("MCP-10 5000-digit integer", b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"ping"}', 400, -32700),
    ("MCP-10 NaN", b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}', 400, -32700),
    ("MCP-10 duplicate keys", b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}', 400, -32700),
    ("MCP-10 lone surrogate", LONE_SURROGATE, 400, -32700),
]

#: A get_mailbox_changes ``since`` that inflates to 50 MB of zeros.
ZIP_BOMB_STATE = "ms1." + base64.urlsafe_b64encode(zlib.compress(b"0" * 50_000_000, 9)).decode().rstrip("=")

#: (case id, tool, arguments, text the refusal must contain (lower case))
TOOL_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("TL-U1 string uid", "get_mail_message", {"uid": "5"}, "uid"),
    ("TL-U1 range uid", "delete_mail_message", {"folder": "INBOX", "uid": "1:*", "permanent": True}, "uid"),
    ("TL-U1 zero", "delete_mail_message", {"folder": "INBOX", "uid": 0}, "uid"),
    ("TL-U1 2^32", "move_mail_message", {"folder": "INBOX", "uid": 4294967296, "destination": "Trash"}, "uid"),
    ("TL-U1 float", "update_mail_message_flags", {"folder": "INBOX", "uid": 1.5, "add": ["\\Seen"]}, "uid"),
    ("TL-U1 bool", "update_mail_message_flags", {"folder": "INBOX", "uid": True, "add": ["\\Seen"]}, "uid"),
    ("TL-U1 list", "get_mail_message", {"uid": [1]}, "uid"),
    ("TL-U2 stale uidvalidity", "delete_mail_message", {"folder": "INBOX", "uid": 1, "uidvalidity": 1, "permanent": True}, "uidvalidity"),
    ("TL-F1 CRLF folder", "list_mail_messages", {"folder": "INBOX\r\nX DELETE Trash"}, "folder"),
    ("TL-F1 NUL folder", "delete_mail_message", {"folder": "INBOX\x00", "uid": 1}, "folder"),
    ("TL-F1 10 KiB folder", "list_mail_messages", {"folder": "x" * 10240}, "folder"),
    ("TL-F1 empty folder", "list_mail_messages", {"folder": ""}, "folder"),
    ("TL-F2 missing folder", "list_mail_messages", {"folder": "Nope"}, "no folder"),
    ("TL-F2 wildcard folder", "list_mail_messages", {"folder": "*"}, "no folder"),
    ("TL-L1 page 0", "list_mail_messages", {"page": 0}, "page"),
    ("TL-L1 per_page 10^6", "list_mail_messages", {"per_page": 10**6}, "per_page"),
    ("TL-L1 per_page string", "list_mail_messages", {"per_page": "20"}, "per_page"),
    ("TL-S1 CRLF", "search_mail_messages", {"query": "ALL\r\nX1 DELETE INBOX"}, "control character"),
    ("TL-S1 LF", "search_mail_messages", {"query": "ALL\nX1 DELETE INBOX"}, "control character"),
    ("TL-S1 literal", "search_mail_messages", {"query": "{5}\r\nhello"}, "control character"),
    ("TL-S1 literal+", "search_mail_messages", {"query": "SUBJECT ~{5+}"}, "literal"),
    ("TL-S1 NUL", "search_mail_messages", {"query": "SUBJECT a\x00b"}, "control character"),
    ("TL-G1 injection flag", "update_mail_message_flags", {"folder": "INBOX", "uid": 1, "add": ["\\Seen)\r\nX EXPUNGE"]}, "flag"),
    ("TL-G1 space flag", "update_mail_message_flags", {"folder": "INBOX", "uid": 1, "add": ["a b"]}, "flag"),
    ("TL-G1 1000 flags", "update_mail_message_flags", {"folder": "INBOX", "uid": 1, "add": [f"$k{i}" for i in range(1000)]}, "add"),
    ("TL-T1 CRLF recipient", "send_mail_message", {"to": "a@x.test\r\nRCPT TO:<x@evil.test>", "subject": "s"},
     "to"),
    ("TL-T1 1000 recipients", "send_mail_message", {"to": [f"r{i}@example.test" for i in range(1000)]}, "to"),
    ("TL-T1 a@b@c", "send_mail_message", {"to": "a@b@c", "subject": "s"}, "a@b@c"),
    ("TL-T2 header injection", "send_mail_message", {"to": "{rcpt}", "subject": "hi\r\nBcc: evil@x.test"},
     "subject"),
    ("TL-T2 1 MiB subject", "create_draft_mail_message", {"subject": "s" * (1 << 20)}, "subject"),
    ("TL-A1 file URL", "send_mail_message", {"to": "{rcpt}", "attachment_urls": ["file:///etc/passwd"]},
     "attachment"),
    ("TL-A1 metadata URL", "send_mail_message",
     {"to": "{rcpt}", "attachment_urls": ["http://169.254.169.254/latest/meta-data/"]}, "attachment"),
    ("TL-A1 loopback URL", "create_draft_mail_message", {"attachment_urls": ["http://127.0.0.1:1/x"]},
     "attachment"),
    ("TL-A5 100 URLs", "send_mail_message",
     {"to": "{rcpt}", "attachment_urls": [f"https://example.test/{i}" for i in range(100)]}, "attachment"),
    ("TL-U1 range uid reply", "reply_mail_message", {"folder": "INBOX", "uid": "1:*", "text_body": "x"}, "uid"),
    ("TL-T1 CRLF cc reply", "reply_mail_message",
     {"folder": "INBOX", "uid": 1, "text_body": "x", "cc": "a@x.test\r\nRCPT TO:<x@evil.test>"}, "cc"),
    ("TL-T1 CRLF forward", "forward_mail_message",
     {"folder": "INBOX", "uid": 1, "to": "a@x.test\r\nRCPT TO:<x@evil.test>"}, "to"),
    # Refused after the original was read (BODY.PEEK: the snapshot shows no \Seen appearing).
    ("TL-A1 file URL reply", "reply_mail_message",
     {"folder": "INBOX", "uid": 1, "text_body": "x", "attachment_urls": ["file:///etc/passwd"]}, "attachment"),
    ("TL-U1 thread uid set", "get_mail_thread", {"folder": "INBOX", "uid": "1:*"}, "uid"),
    ("TL-F1 CRLF new folder", "create_mailbox", {"name": "x\r\nA1 DELETE INBOX"}, "control characters"),
    ("TL-F1 delimiter in leaf", "create_mailbox", {"name": "a/b"}, "separator"),
    ("TL-F1 wildcard leaf", "create_mailbox", {"name": "new%"}, "'*' or '%'"),
    ("TL-F1 existing folder", "create_mailbox", {"name": "Sent"}, "already exists"),
    ("TL-F1 CRLF rename", "rename_mailbox", {"name": "Trash", "new_name": "T\r\nA1 LOGOUT"}, "new_name"),
    ("TL-F3 delete INBOX", "delete_mailbox", {"name": "INBOX"}, "inbox cannot be deleted"),
    ("TL-F3 delete special-use", "delete_mailbox", {"name": "Sent"}, "\\sent folder"),
    ("TL-F3 rename INBOX", "rename_mailbox", {"name": "INBOX", "new_name": "Old"}, "inbox cannot be renamed"),
    ("TL-F3 rename special-use", "rename_mailbox", {"name": "Trash", "new_name": "Bin"}, "\\trash folder"),
    ("TL-C1 state garbage", "get_mailbox_changes", {"since": "ms1.AAAA"}, "damaged"),
    ("TL-C1 state zip bomb", "get_mailbox_changes", {"since": ZIP_BOMB_STATE}, "damaged"),
    ("TL-C1 state 1 MiB", "get_mailbox_changes", {"since": "ms1." + "A" * (1 << 20)}, "since"),
]


def post(base: str, token: str, body: bytes) -> tuple[int, dict[str, Any] | None]:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": mcp_http.PROTOCOL_VERSION, "authorization": "Bearer " + token}
    response = httpx2.post(base + "/mcp", content=body, headers=headers, timeout=30)
    return response.status_code, json.loads(response.content) if response.content else None


def test_catalogue_against_the_real_daemon(services: Services, daemon_factory: Any) -> None:
    """
    Every transport case answers its JSON-RPC error with the right status
    (never a 500); every hostile tool call is refused with a reason naming
    the field (-32602 or isError); afterwards the mailbox is unchanged,
    nothing was sent, a normal call works and the log has no error line.
    """
    (user, password), (rcpt, rcpt_pw) = seed(services, 2, messages=2)
    daemon = daemon_factory(services)
    client = generate_client(daemon.state_dir, services)
    token = mcp_http.login(daemon.base_url, client, user, password, "127.5.0.1")["access_token"]
    assert mcp_http.call(daemon.base_url, token, "list_mailboxes").get("isError") is not True
    before = snapshot(services, user, password)
    assert sum(len(v) for v in before.values()) == 2

    for case, body, status, code in TRANSPORT_CASES:
        got_status, message = post(daemon.base_url, token, body)
        assert (got_status, message and message["error"]["code"]) == (status, code), (case, got_status, message)
        assert message["error"]["message"], case

    for case, tool, arguments, expected in TOOL_CASES:
        arguments = json.loads(json.dumps(arguments).replace("{rcpt}", rcpt))
        status, message = mcp_http.rpc(daemon.base_url, token, "tools/call", {"name": tool, "arguments": arguments})
        assert status == 200, (case, status, message)
        assert message is not None
        if "error" in message:
            assert message["error"]["code"] == -32602, (case, message)
            reason = json.dumps(message["error"]).lower()
        else:
            assert message["result"]["isError"] is True, (case, message)
            reason = mcp_http.text_of(message["result"]).lower()
        assert expected in reason, (case, reason[:500])
        assert password not in reason

    assert snapshot(services, user, password) == before
    assert [m for m in _inbox(services, rcpt, rcpt_pw) if b"From: Load" not in m] == []
    listing = mcp_http.call(daemon.base_url, token, "list_mail_messages", {"folder": "INBOX"})
    assert listing.get("isError") is not True and len(listing["structuredContent"]["messages"]) == 2
    assert daemon.stop() == 0
    assert error_lines(daemon) == [], error_lines(daemon)[:5]
