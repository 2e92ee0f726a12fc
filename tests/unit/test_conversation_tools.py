"""
Unit tests of reply_mail_message and forward_mail_message: the pure rules
(subject prefixes, References, recipients, quoting) table-driven, and the
handlers against the in-memory IMAP fake and the recording SMTP sender of
``tests.unit.writable_imap``, asserting exactly what was sent, saved and flagged.
"""

from __future__ import annotations

import base64
import email
import os
from email import policy
from email.message import EmailMessage
from typing import Any

import attrs
import pytest
from pydantic import ValidationError
from twisted.internet.task import Clock

from mailmcp._toolkit import ToolContext, ToolError
from mailmcp.attachments._common import Limits
from mailmcp.mail._compose import (
    MAX_REPLY_REFERENCES,
    forward_subject,
    quote_text,
    reply_references,
    reply_subject,
)
from mailmcp.mail._mailbox_api import Address, Envelope, MailboxState
from mailmcp.mail._smtp import SMTPSendFailed
from mailmcp.testing import FakeIMAPPool, make_account, tool_services
from mailmcp.tools import all_tools
from mailmcp.tools._conversation import (
    FORWARD_MAIL_MESSAGE,
    REPLY_MAIL_MESSAGE,
    TOOLS,
    ForwardInput,
    ReplyInput,
    attribution,
    reply_recipients,
)
from tests.helpers import run
from tests.unit.writable_imap import FakeSender, WritableServer, WritableSession

ME = "alice@example.test"

# -- subjects -------------------------------------------------------------------

REPLY_SUBJECTS = [
    ("Lunch?", "Re: Lunch?"),
    ("Re: Lunch?", "Re: Lunch?"),
    ("RE: Lunch?", "Re: Lunch?"),
    ("re:Lunch?", "Re: Lunch?"),
    ("Re: Re: Re: Lunch?", "Re: Lunch?"),
    ("Re[2]: Lunch?", "Re: Lunch?"),
    ("Re(3): Lunch?", "Re: Lunch?"),
    ("Re^2: Lunch?", "Re: Lunch?"),
    ("AW: Lunch?", "Re: Lunch?"),
    ("Aw: RE: AW: Lunch?", "Re: Lunch?"),
    ("SV: Lunch?", "Re: Lunch?"),
    ("Antw: Lunch?", "Re: Lunch?"),
    ("R: Lunch?", "Re: Lunch?"),
    ("RIF: Lunch?", "Re: Lunch?"),
    ("Odp: Lunch?", "Re: Lunch?"),
    ("VS: Lunch?", "Re: Lunch?"),
    ("YNT: Lunch?", "Re: Lunch?"),
    ("ΑΠ: Lunch?", "Re: Lunch?"),
    ("Отв: Lunch?", "Re: Lunch?"),
    ("回复：午饭", "Re: 午饭"),
    ("返信: 昼食", "Re: 昼食"),
    ("  Re :  Lunch?  ", "Re: Lunch?"),
    # not reply prefixes: words that merely start like one, and forwards
    ("Report: Q3", "Re: Report: Q3"),
    ("Réunion", "Re: Réunion"),
    ("Rework needed", "Re: Rework needed"),
    ("Fwd: Lunch?", "Re: Fwd: Lunch?"),
    ("", "Re:"),
    (None, "Re:"),
    ("Re:", "Re:"),
    ("evil\r\nBcc: x@evil.test", "Re: evil Bcc: x@evil.test"),
]


@pytest.mark.parametrize(("original", "expected"), REPLY_SUBJECTS)
def test_reply_subject_has_exactly_one_re(original: str | None, expected: str) -> None:
    """Any stack of (localised) reply prefixes becomes exactly one 'Re: '; other words stay."""
    assert reply_subject(original) == expected


FORWARD_SUBJECTS = [
    ("Plan", "Fwd: Plan"),
    ("Fwd: Plan", "Fwd: Plan"),
    ("FW: Fwd: FWD: Plan", "Fwd: Plan"),
    ("Fw: Plan", "Fwd: Plan"),
    ("WG: Plan", "Fwd: Plan"),
    ("TR: Plan", "Fwd: Plan"),
    ("Fwd[2]: Plan", "Fwd: Plan"),
    ("Fwd: Re: Plan", "Fwd: Re: Plan"),
    ("Re: Plan", "Fwd: Re: Plan"),
    ("Trip: Plan", "Fwd: Trip: Plan"),
    ("", "Fwd:"),
]


@pytest.mark.parametrize(("original", "expected"), FORWARD_SUBJECTS)
def test_forward_subject_has_exactly_one_fwd(original: str, expected: str) -> None:
    """Stacked Fwd:/FW:/WG:/TR: become one 'Fwd: '; a reply prefix under it is kept."""
    assert forward_subject(original) == expected


def test_reply_subject_is_bounded() -> None:
    """A 5,000-character subject yields a subject within the 998-character line limit."""
    assert len(reply_subject("Re: " + "x" * 5000)) <= 998


# -- References -----------------------------------------------------------------


def test_references_are_the_originals_plus_its_message_id() -> None:
    assert reply_references("<c@x>", ["<a@x>", "<b@x>"], "<b@x>") == ("<a@x>", "<b@x>", "<c@x>")


def test_references_fall_back_to_in_reply_to() -> None:
    assert reply_references("<c@x>", [], "<b@x>") == ("<b@x>", "<c@x>")


def test_references_without_anything_are_empty() -> None:
    assert reply_references(None, [], None) == ()


def test_references_drop_duplicates_and_malformed_ids() -> None:
    got = reply_references("<c@x>", ["<a@x>", "<a@x>", "<no-at-sign>", "<b@x\r\n>", "<c@x>"], None)
    assert got == ("<a@x>", "<c@x>")


def test_long_references_are_trimmed_from_the_front_keeping_the_root() -> None:
    """RFC 5322 §3.6.4: the first id (the thread's root) stays, the oldest after it go."""
    chain = [f"<m{i}@x>" for i in range(60)]
    got = reply_references("<new@x>", chain, None)
    assert len(got) == MAX_REPLY_REFERENCES
    assert got[0] == "<m0@x>"
    assert got[1:] == (*chain[60 - MAX_REPLY_REFERENCES + 2 :], "<new@x>")


def test_long_ids_are_trimmed_by_length_too() -> None:
    chain = [f"<{'a' * 240}{i}@x>" for i in range(15)]
    got = reply_references("<new@x>", chain, None)
    assert got[0] == chain[0] and got[-1] == "<new@x>"
    assert len(" ".join(got)) <= 2000


# -- recipients -----------------------------------------------------------------


def envelope(
    from_: list[str],
    to: list[str] = (),  # type: ignore[assignment]
    cc: list[str] = (),  # type: ignore[assignment]
    reply_to: list[str] = (),  # type: ignore[assignment]
    subject: str = "Lunch?",
    date: str | None = "Thu, 03 Dec 2026 10:05:00 +0100",
) -> Envelope:
    def addresses(values: Any) -> tuple[Address, ...]:
        return tuple(Address(None, v) for v in values)

    return Envelope(
        date, subject, addresses(from_), (), addresses(reply_to), addresses(to), addresses(cc),
        (), None, None,
    )


def specs(addresses: Any) -> list[str]:
    return [a.addr_spec for a in addresses]


RECIPIENTS = [
    # (from, to, cc, reply_to, reply_all) -> (to, cc)
    (["anna@x.test"], [ME], [], [], False, ["anna@x.test"], []),
    (["anna@x.test"], [ME], [], ["list@x.test"], False, ["list@x.test"], []),
    (["anna@x.test"], [ME, "bob@x.test"], ["carol@x.test"], [], True,
     ["anna@x.test"], ["bob@x.test", "carol@x.test"]),
    # the user in any case, twice, and duplicates: all dropped
    (["anna@x.test"], ["ALICE@Example.Test", "bob@x.test", "Bob@X.test"], [ME, "anna@x.test"], [], True,
     ["anna@x.test"], ["bob@x.test"]),
    # reply-to set: the From is not added back by reply-all (it is not in To/Cc)
    (["anna@x.test"], [ME], ["bob@x.test"], ["list@x.test"], True, ["list@x.test"], ["bob@x.test"]),
    # the user's own sent message: the reply goes to its recipients
    ([ME], ["bob@x.test"], ["carol@x.test"], [], False, ["bob@x.test"], []),
    ([ME], ["bob@x.test", ME], ["carol@x.test"], [], True, ["bob@x.test"], ["carol@x.test"]),
]


@pytest.mark.parametrize(("from_", "to", "cc", "reply_to", "reply_all", "want_to", "want_cc"), RECIPIENTS)
def test_reply_recipients(from_: list[str], to: list[str], cc: list[str], reply_to: list[str], reply_all: bool,
                          want_to: list[str], want_cc: list[str]) -> None:
    """Reply-To else From; reply-all adds To and Cc; never the user; no duplicates."""
    got_to, got_cc, warnings = reply_recipients(envelope(from_, to, cc, reply_to), {ME}, reply_all=reply_all)
    assert (specs(got_to), specs(got_cc), warnings) == (want_to, want_cc, [])


def test_hostile_original_addresses_are_left_out_with_a_warning() -> None:
    """An address in the original that could not go in a header is dropped, and the result says so."""
    env = envelope(["anna@x.test"], ["bad\r\nBcc: evil@x.test@x", "bob@x.test"])
    to, cc, warnings = reply_recipients(env, {ME}, reply_all=True)
    assert specs(to) == ["anna@x.test"] and specs(cc) == ["bob@x.test"]
    assert len(warnings) == 1 and "not valid" in warnings[0]


# -- quoting ----------------------------------------------------------------------


def test_quote_text_prefixes_every_line() -> None:
    assert quote_text("one\r\n\r\n> two\nthree\n\n\n", "On X, Anna wrote:") == (
        "On X, Anna wrote:\n> one\n>\n> > two\n> three\n"
    )


def test_attribution_names_date_and_sender() -> None:
    env = attrs.evolve(envelope(["anna@x.test"]), from_=(Address("Anna Berg", "anna@x.test"),))
    assert attribution(env) == "On Thu, 3 Dec 2026 at 10:05 +0100, Anna Berg <anna@x.test> wrote:"
    assert attribution(attrs.evolve(env, date=None)) == "Anna Berg <anna@x.test> wrote:"


# -- the handlers over the fake ----------------------------------------------------------


class KeywordSession(WritableSession):
    """The writable fake whose SELECT also reports PERMANENTFLAGS, as real servers do."""

    server: KeywordServer

    async def select(self, mailbox: str) -> MailboxState:
        state = await super().select(mailbox)
        return attrs.evolve(state, permanent_flags=self.server.permanent_flags)


@attrs.define
class KeywordServer(WritableServer):
    permanent_flags: tuple[str, ...] = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\*")

    def session(self) -> KeywordSession:
        return KeywordSession(self)


@pytest.fixture
def server() -> KeywordServer:
    s = KeywordServer()
    for name, flags in (("INBOX", ()), ("Drafts", ("\\Drafts",)), ("Sent", ("\\Sent",))):
        s.mailbox(name, *flags)
    return s


@pytest.fixture
def sender() -> FakeSender:
    return FakeSender()


@pytest.fixture
def ctx(server: KeywordServer, sender: FakeSender) -> ToolContext:
    clock = Clock()
    clock.advance(1_700_000_000)
    services = tool_services(reactor=clock, imap=FakeIMAPPool(server), smtp=sender)
    return ToolContext(account=make_account(email=ME, full_name="Alice Example"), services=services)


PDF = os.urandom(3000) + b"\r\n.\r\n" + bytes(range(256))


def original(*, html: bool = False, attachment: bool = False, refs: str = "<root@x.test> <mid@x.test>") -> bytes:
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = "Anna Berg <anna@x.test>"
    message["To"] = f"Alice <{ME}>, bob@x.test"
    message["Cc"] = "carol@x.test"
    message["Subject"] = "AW: Re: Lunch?"
    message["Date"] = "Thu, 03 Dec 2026 10:05:00 +0100"
    message["Message-ID"] = "<orig@x.test>"
    message["In-Reply-To"] = "<mid@x.test>"
    message["References"] = refs
    message.set_content("Shall we?\nAt noon.\n")
    if html:
        message.add_alternative("<html><body><p>Shall <b>we</b>?</p><script>x()</script></body></html>",
                                subtype="html")
    if attachment:
        message.add_attachment(PDF, maintype="application", subtype="pdf", filename="menu.pdf")
    return message.as_bytes()


def put(server: KeywordServer, raw: bytes, folder: str = "INBOX") -> int:
    return server.mailboxes[folder].add(raw, {"\\Seen"})


def flags_of(server: KeywordServer, uid: int, folder: str = "INBOX") -> set[str]:
    return next(m.flags for m in server.mailboxes[folder].messages if m.uid == uid)


def sent_message(sender: FakeSender) -> Any:
    [(_, _, wire)] = sender.sent
    return email.message_from_bytes(wire, policy=policy.default)


def test_reply_is_threaded_quoted_and_marks_the_original_answered(
    ctx: ToolContext, server: KeywordServer, sender: FakeSender
) -> None:
    uid = put(server, original())
    result = run(REPLY_MAIL_MESSAGE.handler(ctx, ReplyInput(folder="INBOX", uid=uid, text_body="Yes!")))
    assert result.status == "sent" and result.marked_answered and result.warnings == []
    [(_, recipients, _)] = sender.sent
    assert recipients == ("anna@x.test",)
    reply = sent_message(sender)
    assert reply["Subject"] == "Re: Lunch?" == result.subject
    assert reply["In-Reply-To"] == "<orig@x.test>" == result.in_reply_to
    assert reply["References"].split() == ["<root@x.test>", "<mid@x.test>", "<orig@x.test>"] == result.references
    assert reply["To"] == "Anna Berg <anna@x.test>" and reply["Cc"] is None
    text = reply.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text.startswith("Yes!\n\nOn Thu, 3 Dec 2026 at 10:05 +0100, Anna Berg <anna@x.test> wrote:\n")
    assert "> Shall we?\n> At noon.\n" in text
    assert reply.get_body(("html",)) is None  # neither side has HTML
    assert flags_of(server, uid) == {"\\Seen", "\\Answered"}
    [copy] = server.mailboxes["Sent"].messages
    assert copy.uid == result.sent_uid
    assert ("UID STORE", (uid,), "+FLAGS", ("\\Answered",)) in server.commands


def test_reply_all_leaves_out_the_user(ctx: ToolContext, server: KeywordServer, sender: FakeSender) -> None:
    uid = put(server, original())
    result = run(REPLY_MAIL_MESSAGE.handler(ctx, ReplyInput(
        folder="INBOX", uid=uid, text_body="Yes!", reply_all=True, cc=["Dave <dave@x.test>", "BOB@x.test"],
        bcc=["erin@x.test"])))
    [(_, recipients, wire)] = sender.sent
    assert recipients == ("anna@x.test", "bob@x.test", "carol@x.test", "dave@x.test", "erin@x.test")
    assert ME.encode() not in wire.split(b"\r\n\r\n")[0].replace(b"From: Alice Example <" + ME.encode(), b"")
    assert result.to == ["Anna Berg <anna@x.test>"]
    assert result.cc == ["bob@x.test", "carol@x.test", "Dave <dave@x.test>"]
    assert result.bcc == ["erin@x.test"]


def test_reply_quotes_html_when_the_original_has_it(ctx: ToolContext, server: KeywordServer,
                                                    sender: FakeSender) -> None:
    """The HTML reply holds the original's visible HTML in a cite blockquote, without its scripts."""
    uid = put(server, original(html=True))
    run(REPLY_MAIL_MESSAGE.handler(ctx, ReplyInput(folder="INBOX", uid=uid, text_body="Yes & no <3")))
    html = sent_message(sender).get_body(("html",)).get_content().replace("\r\n", "\n")
    assert html.startswith("Yes &amp; no &lt;3")
    assert '<blockquote type="cite"' in html and "<p>Shall <b>we</b>?</p>" in html
    assert "script" not in html and "<html" not in html


def test_reply_with_html_body_puts_the_quote_inside_its_body(ctx: ToolContext, server: KeywordServer,
                                                             sender: FakeSender) -> None:
    uid = put(server, original())
    run(REPLY_MAIL_MESSAGE.handler(ctx, ReplyInput(
        folder="INBOX", uid=uid, text_body="Yes", html_body="<html><body><p>Yes</p></body></html>")))
    html = sent_message(sender).get_body(("html",)).get_content().replace("\r\n", "\n")
    assert html.index("<p>Yes</p>") < html.index("<blockquote") < html.index("</body>")
    assert "Shall we?<br>" in html


def test_reply_without_quote(ctx: ToolContext, server: KeywordServer, sender: FakeSender) -> None:
    uid = put(server, original(html=True))
    run(REPLY_MAIL_MESSAGE.handler(ctx, ReplyInput(folder="INBOX", uid=uid, text_body="Yes", quote=False)))
    reply = sent_message(sender)
    assert reply.get_body(("plain",)).get_content().replace("\r\n", "\n").strip() == "Yes"
    assert reply.get_body(("html",)) is None
    # The original's body is not even read.
    fetched = " ".join(c[2] for c in server.commands if c[0] == "UID FETCH")
    assert "BODY.PEEK[1" not in fetched


def test_draft_reply_sends_nothing_and_marks_nothing(ctx: ToolContext, server: KeywordServer,
                                                     sender: FakeSender) -> None:
    uid = put(server, original())
    result = run(REPLY_MAIL_MESSAGE.handler(ctx, ReplyInput(folder="INBOX", uid=uid, text_body="Yes",
                                                            draft=True)))
    assert sender.sent == []
    assert result.status == "saved" and not result.marked_answered and result.sent_folder is None
    [draft] = server.mailboxes["Drafts"].messages
    assert draft.uid == result.draft_uid and draft.flags == {"\\Draft", "\\Seen"}
    parsed = email.message_from_bytes(draft.raw, policy=policy.default)
    assert parsed["In-Reply-To"] == "<orig@x.test>" and parsed["Subject"] == "Re: Lunch?"
    assert flags_of(server, uid) == {"\\Seen"}
    assert not any(c[0] == "UID STORE" for c in server.commands)


def test_draft_reply_works_without_smtp(server: KeywordServer) -> None:
    """Saving a draft needs no SMTP server; sending without one is a clear error."""
    services = tool_services(reactor=Clock(), imap=FakeIMAPPool(server), smtp=None)
    ctx = ToolContext(account=make_account(email=ME), services=services)
    uid = put(server, original())
    assert run(REPLY_MAIL_MESSAGE.handler(ctx, ReplyInput(folder="INBOX", uid=uid, text_body="x",
                                                          draft=True))).status == "saved"
    with pytest.raises(ToolError, match="not configured"):
        run(REPLY_MAIL_MESSAGE.handler(ctx, ReplyInput(folder="INBOX", uid=uid, text_body="x")))


@pytest.mark.parametrize(("folder", "uid", "uidvalidity", "message"), [
    ("INBOX", 99, None, "no message with UID 99"),
    ("Nowhere", 1, None, "no folder 'Nowhere'"),
    ("INBOX", 1, 4242, "stale"),
])
def test_bad_original_is_an_error_and_nothing_is_sent(
    ctx: ToolContext, server: KeywordServer, sender: FakeSender, folder: str, uid: int, uidvalidity: int | None,
    message: str,
) -> None:
    put(server, original())
    for tool, args in ((REPLY_MAIL_MESSAGE, ReplyInput(folder=folder, uid=uid, uidvalidity=uidvalidity,
                                                       text_body="x")),
                       (FORWARD_MAIL_MESSAGE, ForwardInput(folder=folder, uid=uid, uidvalidity=uidvalidity,
                                                           to="bob@x.test"))):
        with pytest.raises(ToolError, match=message) as caught:
            run(tool.handler(ctx, args))  # type: ignore[attr-defined]
        assert "Nothing was sent" in caught.value.message or "no folder" in caught.value.message
    assert sender.sent == []
    assert server.mailboxes["Sent"].messages == [] and server.mailboxes["Drafts"].messages == []
    assert not any(c[0] in ("UID STORE", "APPEND") for c in server.commands)


def test_failed_send_does_not_mark_the_original(ctx: ToolContext, server: KeywordServer) -> None:
    """A refused send keeps the reply in Drafts (as send_mail_message does) and leaves the original unanswered."""
    uid = put(server, original())
    ctx.services.smtp.outcome = SMTPSendFailed("550 mailbox unavailable", stage="RCPT", code=550)
    with pytest.raises(ToolError, match="Not sent"):
        run(REPLY_MAIL_MESSAGE.handler(ctx, ReplyInput(folder="INBOX", uid=uid, text_body="x")))
    assert flags_of(server, uid) == {"\\Seen"}
    assert len(server.mailboxes["Drafts"].messages) == 1


def test_idempotent_reply_sends_once(ctx: ToolContext, server: KeywordServer, sender: FakeSender) -> None:
    uid = put(server, original())
    args = ReplyInput(folder="INBOX", uid=uid, text_body="x", idempotency_key="reply-1")
    first = run(REPLY_MAIL_MESSAGE.handler(ctx, args))
    second = run(REPLY_MAIL_MESSAGE.handler(ctx, args))
    assert (first.status, second.status) == ("sent", "already_sent")
    assert len(sender.sent) == 1 and first.message_id == second.message_id
    assert second.marked_answered


def test_forward_inline_reattaches_the_attachments_and_sets_forwarded(
    ctx: ToolContext, server: KeywordServer, sender: FakeSender
) -> None:
    uid = put(server, original(html=True, attachment=True))
    result = run(FORWARD_MAIL_MESSAGE.handler(ctx, ForwardInput(
        folder="INBOX", uid=uid, to="Dave <dave@x.test>", text_body="FYI")))
    assert result.status == "sent" and result.marked_forwarded and result.warnings == []
    assert result.forwarded_attachments == ["menu.pdf"]
    forward = sent_message(sender)
    assert forward["Subject"] == "Fwd: AW: Re: Lunch?"
    assert forward["In-Reply-To"] is None
    text = forward.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text.startswith("FYI\n\n---------- Forwarded message ----------\nFrom: Anna Berg <anna@x.test>\n")
    assert "Subject: AW: Re: Lunch?\nTo: Alice <alice@example.test>, bob@x.test\nCc: carol@x.test\n" in text
    assert "Shall we?\nAt noon." in text
    assert "<p>Shall <b>we</b>?</p>" in forward.get_body(("html",)).get_content().replace("\r\n", "\n")
    [attached] = list(forward.iter_attachments())
    assert attached.get_filename() == "menu.pdf" and attached.get_content() == PDF
    assert flags_of(server, uid) == {"\\Seen", "$Forwarded"}


def test_forward_without_attachments(ctx: ToolContext, server: KeywordServer, sender: FakeSender) -> None:
    uid = put(server, original(attachment=True))
    result = run(FORWARD_MAIL_MESSAGE.handler(ctx, ForwardInput(
        folder="INBOX", uid=uid, to="dave@x.test", include_attachments=False)))
    assert result.forwarded_attachments == [] and list(sent_message(sender).iter_attachments()) == []


def test_forward_as_attachment_carries_the_original_byte_exact(
    ctx: ToolContext, server: KeywordServer, sender: FakeSender
) -> None:
    raw = original(attachment=True)
    uid = put(server, raw)
    result = run(FORWARD_MAIL_MESSAGE.handler(ctx, ForwardInput(
        folder="INBOX", uid=uid, to="dave@x.test", text_body="see attached", as_attachment=True)))
    assert result.as_attachment and result.forwarded_attachments == ["AW_ Re_ Lunch_.eml"]
    [(_, _, wire)] = sender.sent
    assert b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n" in wire
    assert raw in wire  # byte for byte, unencoded
    [part] = list(sent_message(sender).iter_attachments())
    assert part.get_content_type() == "message/rfc822"


def test_forward_as_attachment_of_8bit_original_is_base64(ctx: ToolContext, server: KeywordServer,
                                                          sender: FakeSender) -> None:
    """An original with raw 8-bit bytes is attached base64-encoded (only ASCII goes on the wire)."""
    raw = b"From: anna@x.test\r\nSubject: 8-bit\r\nMessage-ID: <8@x.test>\r\n\r\ncaf\xc3\xa9 \xff\r\n"
    uid = put(server, raw)
    run(FORWARD_MAIL_MESSAGE.handler(ctx, ForwardInput(folder="INBOX", uid=uid, to="d@x.test", as_attachment=True)))
    [(_, _, wire)] = sender.sent
    assert wire.isascii() and base64.b64encode(raw)[:40] in wire.replace(b"\r\n", b"")


def test_forward_keyword_skipped_where_the_folder_refuses_keywords(
    ctx: ToolContext, server: KeywordServer, sender: FakeSender
) -> None:
    server.permanent_flags = ("\\Answered", "\\Seen")
    uid = put(server, original())
    result = run(FORWARD_MAIL_MESSAGE.handler(ctx, ForwardInput(folder="INBOX", uid=uid, to="d@x.test")))
    assert result.status == "sent" and not result.marked_forwarded
    assert any("does not accept keywords" in w for w in result.warnings)
    assert flags_of(server, uid) == {"\\Seen"}


def test_forward_over_the_attachment_cap_is_refused_before_sending(server: KeywordServer,
                                                                  sender: FakeSender) -> None:
    services = tool_services(reactor=Clock(), imap=FakeIMAPPool(server), smtp=sender,
                             limits=Limits(max_attachment_bytes=1000, max_message_bytes=5000))
    ctx = ToolContext(account=make_account(email=ME), services=services)
    uid = put(server, original(attachment=True))
    with pytest.raises(ToolError, match="over the 1000-byte cap"):
        run(FORWARD_MAIL_MESSAGE.handler(ctx, ForwardInput(folder="INBOX", uid=uid, to="d@x.test")))
    assert sender.sent == []


def test_forward_draft_needs_no_recipient_and_sends_nothing(ctx: ToolContext, server: KeywordServer,
                                                            sender: FakeSender) -> None:
    uid = put(server, original(attachment=True))
    result = run(FORWARD_MAIL_MESSAGE.handler(ctx, ForwardInput(folder="INBOX", uid=uid, draft=True)))
    assert result.status == "saved" and sender.sent == [] and not result.marked_forwarded
    [draft] = server.mailboxes["Drafts"].messages
    assert b"menu.pdf" in draft.raw
    assert flags_of(server, uid) == {"\\Seen"}


@pytest.mark.parametrize("arguments", [
    {"folder": "INBOX", "uid": 1},  # no recipient
    {"folder": "INBOX", "uid": 1, "to": "a@x\r\nRCPT TO:<e@evil.test>"},
    {"folder": "INBOX", "uid": "1:*", "to": "a@x.test"},
    {"folder": "INBOX", "uid": 1, "to": "a@x.test", "as_attachment": "yes"},
    {"folder": "INBOX", "uid": 1, "to": "a@x.test", "subject": "not a parameter"},
])
def test_bad_forward_arguments_are_invalid(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ForwardInput.model_validate(arguments)


@pytest.mark.parametrize("arguments", [
    {"folder": "INBOX", "uid": 1},  # no text_body
    {"folder": "INBOX", "uid": 1, "text_body": "x\x00"},
    {"folder": "INBOX\r\nA DELETE INBOX", "uid": 1, "text_body": "x"},
    {"folder": "INBOX", "uid": 1, "text_body": "x", "cc": "a@b@c"},
    {"folder": "INBOX", "uid": 1, "text_body": "x", "reply_all": 1},
    {"folder": "INBOX", "uid": 1, "text_body": "x", "to": "a@x.test"},
])
def test_bad_reply_arguments_are_invalid(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ReplyInput.model_validate(arguments)


def test_contract_names_parameters_and_annotations() -> None:
    """The contract's names and parameters; honest hints: they send mail (open world), not idempotent."""
    params = {t.name: set(t.input_model.model_fields) for t in TOOLS}
    assert {"folder", "uid", "text_body", "html_body", "reply_all", "cc", "bcc", "attachment_urls", "attachments",
            "quote", "draft", "idempotency_key"} <= params["reply_mail_message"]
    assert {"folder", "uid", "to", "cc", "bcc", "text_body", "include_attachments", "as_attachment", "draft",
            "idempotency_key"} <= params["forward_mail_message"]
    for tool in TOOLS:
        assert tool.annotations() == {"title": tool.title, "readOnlyHint": False, "destructiveHint": False,
                                      "idempotentHint": False, "openWorldHint": True}
    assert {"reply_mail_message", "forward_mail_message"} <= {t.name for t in all_tools()}


def test_reply_to_an_html_only_original_quotes_its_text_and_its_html(
    ctx: ToolContext, server: KeywordServer, sender: FakeSender
) -> None:
    """Without a text/plain part the text quote is the HTML made readable; the HTML quote is the HTML."""
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = "anna@x.test"
    message["Subject"] = "Newsletter"
    message["Message-ID"] = "<html-only@x.test>"
    message.set_content("<p>Big <b>news</b></p><div style='display:none'>hidden</div>", subtype="html")
    uid = put(server, message.as_bytes())
    run(REPLY_MAIL_MESSAGE.handler(ctx, ReplyInput(folder="INBOX", uid=uid, text_body="Thanks")))
    reply = sent_message(sender)
    text = reply.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "> Big **news**" in text and "hidden" not in text
    html = reply.get_body(("html",)).get_content()
    assert "<p>Big <b>news</b></p>" in html and "hidden" not in html

