"""
reply_mail_message and forward_mail_message through the ``/mcp`` endpoint:
`MCPApp` with the real tool set over real HTTP, the real IMAP pool and
Dovecot, and a scripted SMTP server on loopback that counts connections and
keeps every transaction, so "nothing was sent" is a count of zero.
"""

from __future__ import annotations

import email
from email import policy
from typing import Any

import pytest
import pytest_twisted

from tests.harness import Services
from tests.integration.mail_live import append, folder, original
from tests.integration.mcp_loopback import call, rpc

pytestmark = pytest.mark.integration

CONVERSATION = ("reply_mail_message", "forward_mail_message")


@pytest_twisted.ensureDeferred
async def test_tools_list_describes_reply_and_forward(endpoint: Any) -> None:
    """tools/list: both tools with a title, honest hints (they send mail: open world, not idempotent), schemas."""
    tools = {t["name"]: t for t in (await rpc(endpoint, "tools/list", {}))["result"]["tools"]}
    for name in CONVERSATION:
        tool = tools[name]
        assert tool["title"] and tool["annotations"]["title"] == tool["title"]
        assert {k: tool["annotations"][k] for k in ("readOnlyHint", "destructiveHint", "idempotentHint",
                                                     "openWorldHint")} == {
            "readOnlyHint": False, "destructiveHint": False, "idempotentHint": False, "openWorldHint": True}
        assert tool["inputSchema"]["type"] == "object" and tool["outputSchema"]["type"] == "object"
        assert tool["inputSchema"]["additionalProperties"] is False
    reply = tools["reply_mail_message"]["inputSchema"]
    assert set(reply["required"]) == {"folder", "uid", "text_body"}
    assert {"html_body", "reply_all", "cc", "bcc", "attachment_urls", "attachments", "quote", "draft",
            "idempotency_key", "uidvalidity"} <= set(reply["properties"])
    forward = tools["forward_mail_message"]["inputSchema"]
    assert {"to", "cc", "bcc", "text_body", "include_attachments", "as_attachment", "draft",
            "idempotency_key"} <= set(forward["properties"])


@pytest_twisted.ensureDeferred
async def test_draft_reply_sends_nothing_and_lands_in_drafts(services: Services, endpoint: Any) -> None:
    """
    draft=true: the SMTP server is never contacted; Drafts holds the reply
    with the thread headers, the recipient and one 'Re:'; the original is
    not marked answered.
    """
    raw, message_id = original("anna@example.test", [endpoint.user])
    uid = await append(services, endpoint.user, endpoint.password, "INBOX", raw)
    result = await call(endpoint, "reply_mail_message",
                        {"folder": "INBOX", "uid": uid, "text_body": "Draft answer", "draft": True})
    out = result["structuredContent"]
    assert not result["isError"] and out["status"] == "saved" and out["marked_answered"] is False
    assert endpoint.smtp.connections == 0
    drafts = await folder(services, endpoint.user, endpoint.password, "Drafts")
    flags, raw_draft = drafts[out["draft_uid"]]
    assert b"\\Draft" in flags
    draft = email.message_from_bytes(raw_draft, policy=policy.default)
    assert draft["In-Reply-To"] == message_id
    assert draft["References"].split()[-1] == message_id
    assert draft["Subject"] == "Re: Quarterly plan" and draft["To"] == "Anna Berg <anna@example.test>"
    inbox_flags, _ = (await folder(services, endpoint.user, endpoint.password, "INBOX"))[uid]
    assert b"\\Answered" not in inbox_flags


@pytest_twisted.ensureDeferred
async def test_reply_and_forward_send_once_each(services: Services, endpoint: Any) -> None:
    """One SMTP transaction per call, with the thread headers; the original ends \\Answered and $Forwarded."""
    raw, message_id = original("anna@example.test", [endpoint.user], attachment=True)
    uid = await append(services, endpoint.user, endpoint.password, "INBOX", raw)
    reply = await call(endpoint, "reply_mail_message", {"folder": "INBOX", "uid": uid, "text_body": "Yes"})
    assert reply["structuredContent"]["status"] == "sent"
    assert len(endpoint.smtp.transactions) == 1
    assert f"In-Reply-To: {message_id}".encode() in endpoint.smtp.transactions[0]
    forward = await call(endpoint, "forward_mail_message",
                         {"folder": "INBOX", "uid": uid, "to": "bob@example.test", "as_attachment": True})
    assert forward["structuredContent"]["status"] == "sent"
    assert len(endpoint.smtp.transactions) == 2 and raw in endpoint.smtp.transactions[1]
    flags, _ = (await folder(services, endpoint.user, endpoint.password, "INBOX"))[uid]
    assert b"\\Answered" in flags and b"$Forwarded" in flags


@pytest_twisted.ensureDeferred
async def test_bad_original_is_an_error_result_and_nothing_is_sent(services: Services, endpoint: Any) -> None:
    """A missing UID, a missing folder, a stale uidvalidity: isError with a clear message; no SMTP, no copies."""
    raw, _ = original("anna@example.test", [endpoint.user])
    uid = await append(services, endpoint.user, endpoint.password, "INBOX", raw)
    cases = [
        ({"folder": "INBOX", "uid": uid + 50}, "no message with UID"),
        ({"folder": "Nope", "uid": uid}, "no folder 'Nope'"),
        ({"folder": "INBOX", "uid": uid, "uidvalidity": 1}, "stale"),
    ]
    for where, message in cases:
        for name, extra in (("reply_mail_message", {"text_body": "x"}),
                            ("forward_mail_message", {"to": "bob@example.test"})):
            result = await call(endpoint, name, {**where, **extra})
            assert result["isError"] is True, (name, where)
            assert message in result["content"][0]["text"], result
    assert endpoint.smtp.connections == 0
    assert await folder(services, endpoint.user, endpoint.password, "Sent") == {}
    assert await folder(services, endpoint.user, endpoint.password, "Drafts") == {}


@pytest_twisted.ensureDeferred
async def test_hostile_arguments_are_errors_before_any_imap_or_smtp(endpoint: Any) -> None:
    """Header injection, UID sets, unknown fields, wrong types: refused before the mailbox is touched."""
    attempts = [
        ("reply_mail_message", {"folder": "INBOX", "uid": 1, "text_body": "x", "cc": "a@x.test\r\nRCPT TO:<e@x>"}),
        ("reply_mail_message", {"folder": "INBOX", "uid": "1:*", "text_body": "x"}),
        ("reply_mail_message", {"folder": "INBOX", "uid": 1, "text_body": "x", "to": "evil@x.test"}),
        ("reply_mail_message", {"folder": "INBOX", "uid": 1, "text_body": "x\x00"}),
        ("reply_mail_message", {"folder": "INBOX\r\nX DELETE INBOX", "uid": 1, "text_body": "x"}),
        ("forward_mail_message", {"folder": "INBOX", "uid": 1}),
        ("forward_mail_message", {"folder": "INBOX", "uid": 1, "to": "a@b@c"}),
        ("forward_mail_message", {"folder": "INBOX", "uid": 1, "to": "a@x.test", "draft": "no"}),
    ]
    for name, arguments in attempts:
        message = await rpc(endpoint, "tools/call", {"name": name, "arguments": arguments})
        result = message.get("result")
        assert (result is not None and result["isError"]) or "error" in message, (name, arguments, message)
    assert endpoint.imap == []
    assert endpoint.smtp.connections == 0
