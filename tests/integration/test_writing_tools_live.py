"""
The writing tools driven through their handlers with the real pieces: the
pooled IMAP layer against Dovecot, the ESMTP sender against Postfix
(delivering to Dovecot over LMTP), and a scripted SMTP server on loopback
for the ambiguous outcome.  Mailboxes are read back, and "another client"
acts, with the stdlib IMAP client in a thread.
"""

from __future__ import annotations

import base64
import email
import os
import uuid
from email import policy
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from mailmcp._toolkit import ToolError
from mailmcp.tools._writing import (
    CREATE_DRAFT_MAIL_MESSAGE,
    DELETE_MAIL_MESSAGE,
    MOVE_MAIL_MESSAGE,
    SEND_MAIL_MESSAGE,
    UNKNOWN_OUTCOME_KEYWORD,
    UPDATE_MAIL_MESSAGE_FLAGS,
    DeleteInput,
    DraftInput,
    FlagsInput,
    MoveInput,
    SendInput,
)
from tests.harness import Services
from tests.integration.mail_live import account, append, folder, fresh_users, sample, wait_for_mail

pytestmark = pytest.mark.integration


# -- another client, over stdlib imaplib in a thread ---------------------------


# -- send ---------------------------------------------------------------------------


@pytest.mark.parametrize("security", ["tls", "starttls", "plain"])
@pytest_twisted.ensureDeferred
async def test_sent_message_arrives_and_its_exact_copy_is_in_sent(
    services: Services, tools: Any, security: str
) -> None:
    """
    Over each SMTP security mode: the message arrives in the recipient's
    INBOX with the right From/To/Cc/Subject/Message-ID, the Cc recipient gets
    it too, and the Sent folder holds exactly the bytes that were sent.
    """
    (me, pw), (bob, bob_pw), (carol, carol_pw) = fresh_users(services, 3)
    ctx = tools(account(services, me, pw, security))
    result = await SEND_MAIL_MESSAGE.handler(ctx, SendInput(
        to=f"Bob <{bob}>", cc=[carol], subject="Quartalsbericht für Q3", text_body="Hallo Bob,\n\nanbei.\n",
        html_body="<p>Hallo Bob,</p>"))
    assert result.status == "sent" and result.warnings == []
    assert {r.address for r in result.recipients if r.accepted} == {bob, carol}
    [delivered] = await wait_for_mail(services, bob, bob_pw)
    await wait_for_mail(services, carol, carol_pw)
    parsed = email.message_from_bytes(delivered, policy=policy.default)
    assert parsed["From"] == f"Writer Wörld <{me}>"
    assert parsed["To"] == f"Bob <{bob}>"
    assert parsed["Cc"] == carol
    assert parsed["Subject"] == "Quartalsbericht für Q3"
    assert parsed["Message-ID"] == result.message_id
    sent = await folder(services, me, pw, "Sent")
    assert result.sent_folder == "Sent" and result.sent_uid in sent
    flags, copy = sent[result.sent_uid]
    assert b"\\Seen" in flags
    assert delivered.endswith(copy)  # the exact bytes sent (Postfix/Dovecot only prepend trace headers)


@pytest_twisted.ensureDeferred
async def test_bcc_recipient_receives_and_no_header_reveals_them(services: Services, tools: Any) -> None:
    """
    The Bcc recipient gets the message; nothing in the To recipient's copy
    names them; their own copy has no Bcc header; the Sent copy keeps the Bcc
    line and is otherwise the sent bytes.
    """
    (me, pw), (bob, bob_pw), (dave, dave_pw) = fresh_users(services, 3)
    ctx = tools(account(services, me, pw, "starttls"))
    result = await SEND_MAIL_MESSAGE.handler(ctx, SendInput(to=bob, bcc=[f"Dave <{dave}>"], subject="bcc"))
    [to_copy] = await wait_for_mail(services, bob, bob_pw)
    [hidden_copy] = await wait_for_mail(services, dave, dave_pw)
    assert dave.encode() not in to_copy and dave.split("@")[0].encode() not in to_copy
    hidden_headers = hidden_copy.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\nbcc:" not in hidden_headers
    _, sent_copy = (await folder(services, me, pw, "Sent"))[result.sent_uid]
    bcc_line = f"Bcc: Dave <{dave}>\r\n".encode()
    assert bcc_line in sent_copy
    assert to_copy.endswith(sent_copy.replace(bcc_line, b""))


@pytest_twisted.ensureDeferred
async def test_inline_base64_attachment_arrives_byte_exact(services: Services, tools: Any) -> None:
    """An inline base64 attachment goes through real Postfix and arrives byte-exact in the recipient's INBOX."""
    (me, pw), (bob, bob_pw) = fresh_users(services, 2)
    ctx = tools(account(services, me, pw))
    payload = os.urandom(40_000) + b"\r\n.\r\n" + bytes(range(256))
    inline = {"filename": "Bericht März.pdf", "content_type": "application/pdf",
              "content_base64": base64.b64encode(payload).decode()}
    result = await SEND_MAIL_MESSAGE.handler(ctx, SendInput(to=bob, subject="inline", attachments=[inline]))
    assert result.status == "sent"
    [delivered] = await wait_for_mail(services, bob, bob_pw)
    [attachment] = list(email.message_from_bytes(delivered, policy=policy.default).iter_attachments())
    assert attachment.get_filename() == "Bericht März.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == payload


@pytest_twisted.ensureDeferred
async def test_idempotency_key_sends_once(services: Services, tools: Any) -> None:
    """A retried call with the same idempotency_key finds the message in Sent and sends nothing (SM-11)."""
    (me, pw), (bob, bob_pw) = fresh_users(services, 2)
    ctx = tools(account(services, me, pw))
    args = SendInput(to=bob, subject="once", idempotency_key="invoice-7")
    first = await SEND_MAIL_MESSAGE.handler(ctx, args)
    second = await SEND_MAIL_MESSAGE.handler(ctx, args)
    assert (first.status, second.status) == ("sent", "already_sent")
    assert second.sent_uid == first.sent_uid and second.message_id == first.message_id
    await deferLater(reactor, 1.0, lambda: None)
    assert len(await wait_for_mail(services, bob, bob_pw)) == 1


@pytest_twisted.ensureDeferred
async def test_wrong_smtp_password_is_a_clean_error_and_keeps_a_draft(services: Services, tools: Any) -> None:
    """
    A wrong SMTP password is a ToolError that names the problem, carries no
    credential, and says where the message was kept (Drafts).
    """
    (me, pw), (bob, _) = fresh_users(services, 2)
    wrong = "WRONG-CANARY-" + uuid.uuid4().hex[:6]
    ctx = tools(account(services, me, pw, smtp_password=wrong))
    with pytest.raises(ToolError) as info:
        await SEND_MAIL_MESSAGE.handler(ctx, SendInput(to=bob, subject="kept"))
    text = info.value.message
    assert "rejected the login" in text and "'Drafts'" in text
    assert wrong not in text and base64.b64encode(wrong.encode()).decode()[:10] not in text
    drafts = await folder(services, me, pw, "Drafts")
    [(flags, raw)] = drafts.values()
    assert b"\\Draft" in flags and b"Subject: kept" in raw
    assert await folder(services, me, pw, "Sent") == {}


@pytest_twisted.ensureDeferred
async def test_refused_recipient_sends_nothing_and_keeps_a_draft(services: Services, tools: Any) -> None:
    """
    One recipient refused at RCPT: nobody gets the message, the error lists
    the refused address with its code, and the message waits in Drafts (SM-03).
    """
    (me, pw), (bob, bob_pw) = fresh_users(services, 2)
    ctx = tools(account(services, me, pw))
    with pytest.raises(ToolError) as info:
        await SEND_MAIL_MESSAGE.handler(ctx, SendInput(to=[bob, "someone@outside.invalid"], subject="fix me"))
    assert "someone@outside.invalid (550)" in info.value.message and "'Drafts'" in info.value.message
    [(_, raw)] = (await folder(services, me, pw, "Drafts")).values()
    assert b"Subject: fix me" in raw
    await deferLater(reactor, 1.0, lambda: None)
    assert await wait_for_mail(services, bob, bob_pw, timeout=0) == []


@pytest_twisted.ensureDeferred
async def test_connection_dropped_after_data_reports_unknown_once(
    services: Services, tools: Any, scripted: Any
) -> None:
    """
    An SMTP server that drops the connection after the final "." gets one
    transaction; the tool reports an unknown outcome with the Message-ID,
    saves no draft, files a marked copy in Sent, and a retry with the same
    key sends nothing (SM-05, SM-11).
    """
    ((me, pw),) = fresh_users(services, 1)
    factory, port = await scripted("drop")
    clock = Clock()
    ctx = tools(account(services, me, pw, "plain", smtp_port=port), smtp_clock=clock)
    args = SendInput(to="bob@example.test", subject="maybe", idempotency_key="k-drop")
    with pytest.raises(ToolError) as info:
        await SEND_MAIL_MESSAGE.handler(ctx, args)
    assert "unknown" in info.value.message and "<mailmcp.k." in info.value.message
    again = await SEND_MAIL_MESSAGE.handler(ctx, args)
    assert again.status == "already_sent"
    # Nothing is left scheduled that could try again, however long one waits.
    clock.advance(3600)
    assert clock.getDelayedCalls() == []
    assert len(factory.transactions) == 1 and factory.connections == 1
    assert await folder(services, me, pw, "Drafts") == {}
    [(flags, _)] = (await folder(services, me, pw, "Sent")).values()
    assert UNKNOWN_OUTCOME_KEYWORD.encode() in flags


# -- drafts -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_draft_lands_in_drafts(services: Services, tools: Any) -> None:
    """A draft is APPENDed to \\Drafts with \\Draft, and the returned UID and UIDVALIDITY are right."""
    ((me, pw),) = fresh_users(services, 1)
    ctx = tools(account(services, me, pw))
    result = await CREATE_DRAFT_MAIL_MESSAGE.handler(ctx, DraftInput(to="bob@example.test", subject="draft 1",
                                                                     text_body="later"))
    assert result.folder == "Drafts" and result.uid is not None and result.uidvalidity is not None
    drafts = await folder(services, me, pw, "Drafts")
    flags, raw = drafts[result.uid]
    assert b"\\Draft" in flags and b"Subject: draft 1" in raw
    assert result.message_id.encode() in raw


# -- delete, move, flags ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delete_removes_only_its_target(services: Services, tools: Any) -> None:
    """
    A permanent delete removes only the target, while another client's
    \\Deleted-flagged message in the same folder survives (TL-D1); the
    default delete moves to Trash and reports the Trash UID.
    """
    ((me, pw),) = fresh_users(services, 1)
    other = await append(services, me, pw, "INBOX", sample("other client's"), r"(\Deleted)")
    target = await append(services, me, pw, "INBOX", sample("target"))
    to_trash = await append(services, me, pw, "INBOX", sample("to trash"))
    ctx = tools(account(services, me, pw))
    result = await DELETE_MAIL_MESSAGE.handler(ctx, DeleteInput(folder="INBOX", uid=target, permanent=True))
    assert result.action == "deleted_permanently"
    inbox = await folder(services, me, pw, "INBOX")
    assert set(inbox) == {other, to_trash}
    assert b"\\Deleted" in inbox[other][0]
    moved = await DELETE_MAIL_MESSAGE.handler(ctx, DeleteInput(folder="INBOX", uid=to_trash,
                                                               uidvalidity=result.uidvalidity))
    assert moved.action == "moved_to_trash" and moved.trash_folder == "Trash"
    trash = await folder(services, me, pw, "Trash")
    assert moved.trash_uid in trash and b"Subject: to trash" in trash[moved.trash_uid][1]
    assert set(await folder(services, me, pw, "INBOX")) == {other}


@pytest_twisted.ensureDeferred
async def test_delete_missing_uid_and_stale_uidvalidity_change_nothing(services: Services, tools: Any) -> None:
    """A UID that does not exist, or a stale UIDVALIDITY, is an error and nothing changes."""
    ((me, pw),) = fresh_users(services, 1)
    uid = await append(services, me, pw, "INBOX", sample("keep"))
    ctx = tools(account(services, me, pw))
    with pytest.raises(ToolError, match="not found"):
        await DELETE_MAIL_MESSAGE.handler(ctx, DeleteInput(folder="INBOX", uid=uid + 100, permanent=True))
    with pytest.raises(ToolError, match="stale"):
        await DELETE_MAIL_MESSAGE.handler(ctx, DeleteInput(folder="INBOX", uid=uid, permanent=True,
                                                           uidvalidity=1))
    inbox = await folder(services, me, pw, "INBOX")
    assert set(inbox) == {uid} and b"\\Deleted" not in inbox[uid][0]


@pytest_twisted.ensureDeferred
async def test_move_returns_the_destination_uid(services: Services, tools: Any) -> None:
    """A move returns the message's UID in the destination, where it now is."""
    ((me, pw),) = fresh_users(services, 1)
    await append(services, me, pw, "Archive", sample("already there"))
    uid = await append(services, me, pw, "INBOX", sample("moving"))
    ctx = tools(account(services, me, pw))
    result = await MOVE_MAIL_MESSAGE.handler(ctx, MoveInput(folder="INBOX", uid=uid, destination="Archive"))
    archive = await folder(services, me, pw, "Archive")
    assert result.destination_uid in archive and b"Subject: moving" in archive[result.destination_uid][1]
    assert result.destination_uidvalidity is not None
    assert await folder(services, me, pw, "INBOX") == {}
    with pytest.raises(ToolError, match="not found"):
        await MOVE_MAIL_MESSAGE.handler(ctx, MoveInput(folder="INBOX", uid=uid, destination="Nowhere"))


@pytest_twisted.ensureDeferred
async def test_flags_are_added_and_removed(services: Services, tools: Any) -> None:
    """Allowed system flags and keywords are set and cleared on exactly that message."""
    ((me, pw),) = fresh_users(services, 1)
    uid = await append(services, me, pw, "INBOX", sample("flag me"), r"(\Flagged)")
    other = await append(services, me, pw, "INBOX", sample("leave me"))
    ctx = tools(account(services, me, pw))
    result = await UPDATE_MAIL_MESSAGE_FLAGS.handler(
        ctx, FlagsInput(folder="INBOX", uid=uid, add=["\\Seen", "$Important"], remove=["\\Flagged"]))
    assert set(result.flags) == {"\\Seen", "$Important"}
    inbox = await folder(services, me, pw, "INBOX")
    assert b"\\Seen" in inbox[uid][0] and b"$Important" in inbox[uid][0] and b"\\Flagged" not in inbox[uid][0]
    assert b"\\Seen" not in inbox[other][0]
