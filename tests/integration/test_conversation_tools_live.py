"""
reply_mail_message and forward_mail_message with the real pieces: the pooled
IMAP layer against Dovecot, the ESMTP sender against Postfix (delivering to
Dovecot over LMTP).  Every check is made from the IMAP side, with the stdlib
client in a thread: what the recipients' INBOXes hold, and the flags of the
original in the user's mailbox.
"""

from __future__ import annotations

import email
from email import policy
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from mailmcp.tools._conversation import (
    FORWARD_MAIL_MESSAGE,
    REPLY_MAIL_MESSAGE,
    ForwardInput,
    ReplyInput,
)
from tests.harness import Services
from tests.integration.mail_live import (
    BLOB,
    _client,
    account,
    append,
    folder,
    fresh_users,
    original,
    wait_for_mail,
)

pytestmark = pytest.mark.integration


def parsed(raw: bytes) -> Any:
    return email.message_from_bytes(raw, policy=policy.default)


def _fetch_section(services: Services, user: str, password: str, box: str, section: str) -> list[bytes]:
    """BODY.PEEK[section] of every message in C{box}, as Dovecot serves it."""
    with _client(services, user, password) as client:
        client.select(f'"{box}"', readonly=True)
        _, data = client.uid("SEARCH", "ALL")
        out = []
        for uid in data[0].split():
            _, parts = client.uid("FETCH", uid, f"(BODY.PEEK[{section}])")
            out.append(parts[0][1])
        return out


@pytest_twisted.ensureDeferred
async def test_reply_is_in_the_thread_and_the_original_is_answered(services: Services, tools: Any) -> None:
    """
    Through Postfix: Anna's INBOX gets the reply with In-Reply-To = the
    original's Message-ID, References = its References + Message-ID, one
    'Re:'; the original in the user's INBOX is \\Answered; the sent copy is in Sent.
    """
    (me, pw), (anna, anna_pw) = fresh_users(services, 2)
    raw, message_id = original(anna, [me])
    uid = await append(services, me, pw, "INBOX", raw)
    ctx = tools(account(services, me, pw))
    result = await REPLY_MAIL_MESSAGE.handler(ctx, ReplyInput(folder="INBOX", uid=uid, text_body="Looks good."))
    assert result.status == "sent" and result.marked_answered and result.warnings == []
    [delivered] = await wait_for_mail(services, anna, anna_pw)
    reply = parsed(delivered)
    assert reply["In-Reply-To"] == message_id
    assert reply["References"].split() == ["<root@example.test>", "<second@example.test>", message_id]
    assert reply["Subject"] == "Re: Quarterly plan"
    assert reply["To"] == f"Anna Berg <{anna}>"
    text = reply.get_body(("plain",)).get_content()
    assert "Looks good." in text and "> Here is the plan." in text and "Anna Berg" in text
    flags, _ = (await folder(services, me, pw, "INBOX"))[uid]
    assert b"\\Answered" in flags
    sent = await folder(services, me, pw, "Sent")
    assert delivered.endswith(sent[result.sent_uid][1])


@pytest_twisted.ensureDeferred
async def test_reply_all_reaches_everyone_but_the_user(services: Services, tools: Any) -> None:
    """
    Reply-all to a mail that names the user in To (upper-cased) and Cc:
    Anna, Bob and Carol get it, To and Cc name exactly them (no Bcc), and
    the user's own INBOX gets no copy.
    """
    (me, pw), (anna, anna_pw), (bob, bob_pw), (carol, carol_pw) = fresh_users(services, 4)
    raw, _ = original(anna, [me.upper(), bob], [carol, me, bob])
    uid = await append(services, me, pw, "INBOX", raw)
    ctx = tools(account(services, me, pw))
    result = await REPLY_MAIL_MESSAGE.handler(ctx, ReplyInput(folder="INBOX", uid=uid, text_body="All: yes.",
                                                               reply_all=True))
    assert {r.address for r in result.recipients} == {anna, bob, carol}
    for user, password in ((anna, anna_pw), (bob, bob_pw), (carol, carol_pw)):
        [delivered] = await wait_for_mail(services, user, password)
        message = parsed(delivered)
        assert message["To"] == f"Anna Berg <{anna}>" and message["Cc"] == f"{bob}, {carol}"
        assert message["Bcc"] is None and message["From"].addresses[0].addr_spec == me
    assert len(await folder(services, me, pw, "INBOX")) == 1  # only the original


@pytest_twisted.ensureDeferred
async def test_forward_carries_the_attachments_byte_exact_and_sets_forwarded(
    services: Services, tools: Any
) -> None:
    """
    An inline forward: Bob gets the note, the header block and the original
    text, the binary attachment decodes to the exact bytes; the original is
    marked $Forwarded (Dovecot's PERMANENTFLAGS has \\*).
    """
    (me, pw), (anna, _), (bob, bob_pw) = fresh_users(services, 3)
    raw, _ = original(anna, [me], attachment=True, subject="Fwd: FW: Plan")
    uid = await append(services, me, pw, "INBOX", raw)
    ctx = tools(account(services, me, pw))
    result = await FORWARD_MAIL_MESSAGE.handler(ctx, ForwardInput(folder="INBOX", uid=uid, to=bob,
                                                                  text_body="FYI, Bob."))
    assert result.status == "sent" and result.marked_forwarded and result.forwarded_attachments == ["plan.bin"]
    [delivered] = await wait_for_mail(services, bob, bob_pw)
    forward = parsed(delivered)
    assert forward["Subject"] == "Fwd: Plan"
    text = forward.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text.startswith("FYI, Bob.\n\n---------- Forwarded message ----------\n")
    assert f"From: Anna Berg <{anna}>\n" in text and "Here is the plan." in text
    [attached] = list(forward.iter_attachments())
    assert attached.get_filename() == "plan.bin" and attached.get_content() == BLOB
    flags, _ = (await folder(services, me, pw, "INBOX"))[uid]
    assert b"$Forwarded" in flags


@pytest_twisted.ensureDeferred
async def test_forward_as_attachment_is_the_original_byte_for_byte(services: Services, tools: Any) -> None:
    """as_attachment: Dovecot serves part 2 of Bob's copy (message/rfc822) as exactly the original's bytes."""
    (me, pw), (anna, _), (bob, bob_pw) = fresh_users(services, 3)
    raw, _ = original(anna, [me], attachment=True)
    uid = await append(services, me, pw, "INBOX", raw)
    ctx = tools(account(services, me, pw))
    result = await FORWARD_MAIL_MESSAGE.handler(ctx, ForwardInput(folder="INBOX", uid=uid, to=bob,
                                                                  text_body="See attached.", as_attachment=True))
    assert result.status == "sent" and result.marked_forwarded
    await wait_for_mail(services, bob, bob_pw)
    [mime] = await threads.deferToThread(_fetch_section, services, bob, bob_pw, "INBOX", "2.MIME")
    assert b"message/rfc822" in mime.lower()
    [part] = await threads.deferToThread(_fetch_section, services, bob, bob_pw, "INBOX", "2")
    assert part == raw
    [encapsulated_subject] = await threads.deferToThread(
        _fetch_section, services, bob, bob_pw, "INBOX", "2.HEADER.FIELDS (SUBJECT)")
    assert encapsulated_subject.strip() == b"Subject: RE: AW: Quarterly plan"


@pytest_twisted.ensureDeferred
async def test_inline_forward_keeps_an_attached_message_byte_exact(services: Services, tools: Any) -> None:
    """An original carrying a message/rfc822 attachment: the inline forward carries that message unchanged."""
    (me, pw), (bob, bob_pw) = fresh_users(services, 2)
    inner = b"From: z@example.test\r\nSubject: inner\r\nMessage-ID: <inner@example.test>\r\n\r\ninner body\r\n"
    outer = (
        b"From: anna@example.test\r\nSubject: with eml\r\nMessage-ID: <outer@example.test>\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b'--b\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; filename="inner.eml"\r\n\r\n'
        + inner + b"\r\n--b--\r\n"
    )
    uid = await append(services, me, pw, "INBOX", outer)
    ctx = tools(account(services, me, pw))
    result = await FORWARD_MAIL_MESSAGE.handler(ctx, ForwardInput(folder="INBOX", uid=uid, to=bob))
    assert result.forwarded_attachments == ["inner.eml"]
    await wait_for_mail(services, bob, bob_pw)
    [part] = await threads.deferToThread(_fetch_section, services, bob, bob_pw, "INBOX", "2")
    assert part == inner


@pytest_twisted.ensureDeferred
async def test_bad_uid_or_folder_sends_nothing(services: Services, tools: Any) -> None:
    """A UID that is not there, a folder that does not exist, a stale uidvalidity: errors, nothing delivered."""
    (me, pw), (anna, anna_pw) = fresh_users(services, 2)
    raw, _ = original(anna, [me])
    uid = await append(services, me, pw, "INBOX", raw)
    ctx = tools(account(services, me, pw))
    attempts = [
        ReplyInput(folder="INBOX", uid=uid + 100, text_body="x"),
        ReplyInput(folder="No such folder", uid=uid, text_body="x"),
        ReplyInput(folder="INBOX", uid=uid, uidvalidity=1, text_body="x"),
    ]
    from mailmcp._toolkit import ToolError

    for args in attempts:
        with pytest.raises(ToolError):
            await REPLY_MAIL_MESSAGE.handler(ctx, args)
        with pytest.raises(ToolError):
            await FORWARD_MAIL_MESSAGE.handler(ctx, ForwardInput(folder=args.folder, uid=args.uid,
                                                                 uidvalidity=args.uidvalidity, to=anna))
    assert await folder(services, me, pw, "Sent") == {}
    # Prove the path works, then that it delivered only that one message.
    await REPLY_MAIL_MESSAGE.handler(ctx, ReplyInput(folder="INBOX", uid=uid, text_body="the only one"))
    delivered = await wait_for_mail(services, anna, anna_pw)
    assert len(delivered) == 1 and b"the only one" in delivered[0]
    flags, _ = (await folder(services, me, pw, "INBOX"))[uid]
    assert b"\\Answered" in flags
