"""
The reading tools against the real Dovecot of the test harness, through the
real IMAP pool.

Each test gets a Dovecot user of its own.  The pool's command observers see
exactly what goes on the wire, so the tests can assert that listing never
searches, that reading never changes ``\\Seen`` and that refused input never
reaches the server at all.
"""

from __future__ import annotations

import imaplib
import os
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from pydantic import ValidationError
from twisted.internet import threads

from mailmcp._toolkit import ToolError
from mailmcp.mail._mailbox_api import IMAPSession
from mailmcp.mail._untrusted import unmark_body
from mailmcp.tools._reading import (
    GetMessageInput,
    ListMailboxesInput,
    ListMessagesInput,
    SearchInput,
    get_mail_message,
    list_mail_messages,
    list_mailboxes,
    search_mail_messages,
)
from tests.harness import Services
from tests.integration.dovecot_wire import Wire, expunge, plain

pytestmark = pytest.mark.integration

MAIL_UID = 8  # the "mail" user Dovecot runs mailboxes as (first_valid_uid = 8)


@pytest.fixture
def wire(services: Services) -> Iterator[Wire]:
    made = Wire(services)
    yield made
    pytest_twisted.blockon(made.pool.stopService())


async def flags_of(wire: Wire, uid: int) -> tuple[str, ...]:
    async def operation(session: IMAPSession) -> tuple[str, ...]:
        await session.examine("INBOX")
        (message,) = await session.fetch(str(uid), "(UID FLAGS)")
        return message.flags or ()

    result: tuple[str, ...] = await wire.session(operation)
    return result


@pytest_twisted.ensureDeferred
async def test_seq_differs_from_uid(wire: Wire) -> None:
    """
    After expunges, sequence numbers and UIDs differ: list, search and get
    all speak UIDs, and each UID leads to the message it was listed with.
    Listing sends no SEARCH; reading leaves \\Seen alone.
    """
    for i in range(1, 13):
        wire.deliver(plain(f"message {i}", f"body of message {i}\n"))
    await expunge(wire, [1, 2, 3, 7])
    wire.events.clear()

    listing = await list_mail_messages(wire.ctx, ListMessagesInput(per_page=5))
    assert listing.total == 8 and listing.has_more and listing.uidvalidity > 0
    assert [m.uid for m in listing.messages] == [12, 11, 10, 9, 8]
    assert [m.subject for m in listing.messages] == [f"message {i}" for i in (12, 11, 10, 9, 8)]
    last = await list_mail_messages(wire.ctx, ListMessagesInput(page=2, per_page=5))
    assert [m.uid for m in last.messages] == [6, 5, 4] and not last.has_more
    assert not any("SEARCH" in c for c in wire.commands), wire.commands
    assert any(c.startswith("FETCH 4:8 ") for c in wire.commands), wire.commands

    found = await search_mail_messages(wire.ctx, SearchInput(query='OR SUBJECT "message 5" SUBJECT "message 9"'))
    assert found.uids == [9, 5] and found.total == 2
    assert [m.subject for m in found.messages] == ["message 9", "message 5"]

    for uid in (5, 9, 12):
        message = await get_mail_message(wire.ctx, GetMessageInput(uid=uid))
        assert message.subject == f"message {uid}"
        assert unmark_body(message.body).strip() == f"body of message {uid}"
        assert not message.seen
        assert "\\Seen" not in await flags_of(wire, uid)
    fetches = [c for c in wire.commands if "FETCH" in c]
    assert fetches and all("BODY[" not in c for c in fetches), fetches
    assert not any(c.startswith(("STORE", "UID STORE", "SELECT")) for c in wire.commands), wire.commands

    with pytest.raises(ToolError, match="no message with UID 2 in folder 'INBOX'"):
        await get_mail_message(wire.ctx, GetMessageInput(uid=2))


@pytest_twisted.ensureDeferred
async def test_warm_listing_is_one_round_trip_and_sees_new_mail(wire: Wire) -> None:
    """
    A repeat listing on the pooled connection writes the freshness NOOP and
    the page FETCH together (the FETCH leaves while the NOOP is still in
    flight).  Mail delivered in between is reported by that NOOP: the stale
    page is dropped and the right one fetched, so the listing is exact.
    """
    for i in range(3):
        wire.deliver(plain(f"m{i}"))
    first = await list_mail_messages(wire.ctx, ListMessagesInput(per_page=2))
    assert [m.subject for m in first.messages] == ["m2", "m1"] and first.total == 3

    async def grab(session: Any) -> Any:
        return session.protocol

    protocol = await wire.session(grab)
    written: list[tuple[str, int]] = []  # (command, commands in flight once it is written)
    wire.pool.command_observers.append(
        lambda _label, command, args: written.append((f"{command} {args}", protocol.in_flight))
    )
    warm = await list_mail_messages(wire.ctx, ListMessagesInput(per_page=2))
    assert [m.subject for m in warm.messages] == ["m2", "m1"] and warm.total == 3
    assert [(c.split(" (")[0], n) for c, n in written] == [("NOOP ", 1), ("FETCH 2:3", 2)]

    written.clear()
    wire.deliver(plain("m3"))
    fresh = await list_mail_messages(wire.ctx, ListMessagesInput(per_page=2))
    assert [m.subject for m in fresh.messages] == ["m3", "m2"] and fresh.total == 4
    assert [c.split(" (")[0] for c, _ in written] == ["NOOP ", "FETCH 2:3", "FETCH 3:4"]


def _flag_elsewhere(wire: Wire, subject: str, change: str) -> None:
    """What another device of the user does: its own IMAP connection stores a flag."""
    context = ssl.create_default_context(cafile=str(wire.services.ca_file))
    with imaplib.IMAP4_SSL("localhost", wire.services.imaps_port, ssl_context=context) as client:
        client.login(wire.email, wire.password)
        client.select("INBOX")
        _, found = client.uid("SEARCH", "SUBJECT", subject)
        (uid,) = found[0].split()
        client.uid("STORE", uid, change, "(\\Flagged)")


@pytest_twisted.ensureDeferred
async def test_repeated_listing_shows_flags_changed_by_another_client(wire: Wire) -> None:
    """
    A page listed again is answered from the lines already read only when
    the server sends the same bytes: a flag set or cleared by another client
    in between shows in the very next listing, and again after it.
    """
    wire.deliver(plain("keep"))
    wire.deliver(plain("mark"))

    async def flagged() -> dict[str | None, bool]:
        page = await list_mail_messages(wire.ctx, ListMessagesInput(per_page=5))
        return {m.subject: m.flagged for m in page.messages}

    assert await flagged() == {"mark": False, "keep": False}
    assert await flagged() == {"mark": False, "keep": False}
    await threads.deferToThread(_flag_elsewhere, wire, "mark", "+FLAGS")
    assert await flagged() == {"mark": True, "keep": False}
    assert await flagged() == {"mark": True, "keep": False}
    await threads.deferToThread(_flag_elsewhere, wire, "mark", "-FLAGS")
    assert await flagged() == {"mark": False, "keep": False}


@pytest_twisted.ensureDeferred
async def test_list_mailboxes_counts(wire: Wire) -> None:
    """Folders come back with special use and STATUS counts."""
    wire.deliver(plain("one"))
    wire.deliver(plain("two"))
    result = await list_mailboxes(wire.ctx, ListMailboxesInput())
    boxes = {b.name: b for b in result.mailboxes}
    assert boxes["INBOX"].messages == 2 and boxes["INBOX"].unseen == 2
    assert boxes["Sent"].special_use == "\\Sent" and boxes["Sent"].messages == 0
    assert boxes["Trash"].special_use == "\\Trash"


@pytest_twisted.ensureDeferred
async def test_unknown_folder(wire: Wire) -> None:
    """A folder that doesn't exist is a ToolError pointing at list_mailboxes; nothing is created."""
    with pytest.raises(ToolError, match="list_mailboxes"):
        await list_mail_messages(wire.ctx, ListMessagesInput(folder="Nope"))
    assert not any(c.startswith("CREATE") for c in wire.commands)


def test_injection_refused_before_any_command(services: Services) -> None:
    """
    docs/threat-model.rst TL-S1/TL-U1/TL-F1: hostile queries, UIDs and folder names are
    refused by input validation, so the pool never even connects.
    """
    wire = Wire(services)
    for query in ["ALL\r\nX1 DELETE INBOX", "ALL\nX1 DELETE INBOX", "{5}\r\nhello", "~{5+}", "TEXT a\x00"]:
        with pytest.raises(ValidationError):
            SearchInput.model_validate({"query": query})
    for uid in ["5", "1:*", 0, -1, 4294967296, True, 1.5]:
        with pytest.raises(ValidationError):
            GetMessageInput.model_validate({"uid": uid})
    for folder in ["INBOX\r\nX DELETE Trash", "", "a\x00"]:
        with pytest.raises(ValidationError):
            ListMessagesInput.model_validate({"folder": folder})
    assert wire.events == [] and wire.pool.open_connections == 0


@pytest_twisted.ensureDeferred
async def test_non_ascii_search(wire: Wire) -> None:
    """``FROM "Müller"`` and a non-ASCII subject filter reach Dovecot as UTF-8 literals."""
    wire.deliver(plain("Grüße aus Köln", sender="Jürgen Müller <jm@example.test>"))
    wire.deliver(plain("plain ascii", sender="bob@example.test"))
    found = await search_mail_messages(wire.ctx, SearchInput(query='FROM "Müller"'))
    assert found.uids == [1]
    assert found.messages[0].from_[0].name == "Jürgen Müller"
    found = await search_mail_messages(
        wire.ctx, SearchInput.model_validate({"subject": "Köln", "unseen": True}))
    assert found.uids == [1]
    assert any("CHARSET UTF-8" in c for c in wire.commands)


@pytest_twisted.ensureDeferred
async def test_mime_message_through_real_bodystructure(wire: Wire) -> None:
    """
    A multipart mail (plain + HTML alternative, an RFC 2231 named attachment,
    an inline image) analysed from Dovecot's own BODYSTRUCTURE: the plain text
    is the body, attachments listed with decoded names, threading headers read.
    """
    message = EmailMessage(policy=SMTP)
    message["From"] = "Ann <ann@example.test>"
    message["To"] = "reader@example.test"
    message["Subject"] = "Quarterly report"
    message["Message-ID"] = "<q3@example.test>"
    message["In-Reply-To"] = "<q2@example.test>"
    message["References"] = "<q1@example.test> <q2@example.test>"
    message.set_content("Plain text wins.\n")
    message.add_alternative("<p>HTML <b>loses</b></p>", subtype="html")
    message.add_attachment("données".encode(), maintype="application", subtype="octet-stream",
                           filename="données – résumé.pdf")
    wire.deliver(message.as_bytes())
    out = await get_mail_message(wire.ctx, GetMessageInput(uid=1))
    assert unmark_body(out.body) == "Plain text wins.\n" and out.body_format == "text/plain"
    assert (out.message_id, out.in_reply_to, out.references) == (
        "<q3@example.test>", "<q2@example.test>", ["<q1@example.test>", "<q2@example.test>"])
    (attachment,) = out.attachments
    assert attachment.part_id == "2" and attachment.filename == "données – résumé.pdf"
    assert attachment.disposition == "attachment" and attachment.size > 0
    listing = await list_mail_messages(wire.ctx, ListMessagesInput())
    assert listing.messages[0].has_attachments


@pytest_twisted.ensureDeferred
async def test_html_only_and_paging_through_body(wire: Wire) -> None:
    """
    An HTML-only base64 mail loses its hidden text, and a long body is read
    in pieces with partial fetches that together give the whole text.
    """
    rows = "".join(f"<p>row {i:05d}</p>" for i in range(4000))
    html = f"<html><head><style>p{{}}</style></head><body><div style='display:none'>SECRET</div>{rows}</body></html>"
    message = EmailMessage(policy=SMTP)
    message["From"] = "news@example.test"
    message["Subject"] = "long html"
    message.set_content(html, subtype="html", cte="base64")
    wire.deliver(message.as_bytes())
    pieces: list[str] = []
    offset = 0
    while True:
        out = await get_mail_message(wire.ctx, GetMessageInput(uid=1, max_body_chars=10_000, body_offset=offset))
        assert out.body_format == "text/html"
        pieces.append(unmark_body(out.body))
        if out.next_offset is None:
            break
        offset = out.next_offset
    text = "".join(pieces)
    assert "SECRET" not in text
    assert [line for line in text.split("\n\n") if line.startswith("row")] == [f"row {i:05d}" for i in range(4000)]
    assert any("BODY.PEEK[1]<0." in c for c in wire.commands)


def seed_maildir(services: Services, email: str, count: int) -> None:
    """
    Write C{count} messages straight into the user's Maildir (``cur/``,
    owned by the mail uid): 10,000 files take well under a second, where
    10,000 LMTP deliveries or APPENDs take minutes on two shared cores.
    """
    maildir = Path(services.svc) / "mail" / email / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    base = int(time.time()) - count
    for i in range(1, count + 1):
        name = maildir / "cur" / f"{base + i}.M{i}P1.seed:2,"
        name.write_bytes(
            b"From: seed@example.test\r\nTo: %s\r\nSubject: seeded %05d\r\n"
            b"Date: Tue, 01 Jul 2025 13:30:00 +0000\r\nMessage-ID: <seed-%d@example.test>\r\n\r\n"
            b"body %d\r\n" % (email.encode(), i, i, i)
        )
    for root, dirs, files in os.walk(Path(services.svc) / "mail" / email):
        os.chown(root, MAIL_UID, MAIL_UID)
        for name_ in files:
            os.chown(os.path.join(root, name_), MAIL_UID, MAIL_UID)


@pytest_twisted.ensureDeferred
async def test_ten_thousand_messages_page_correctly(wire: Wire) -> None:
    """
    A folder of 10,000 messages: page 1 is the 20 newest (sequence range
    9981:10000, no SEARCH), and paging with per_page=100 visits every UID
    exactly once, newest first.
    """
    seed_maildir(wire.services, wire.email, 10_000)
    first = await list_mail_messages(wire.ctx, ListMessagesInput())
    assert first.total == 10_000 and first.has_more
    assert [m.subject for m in first.messages] == [f"seeded {i:05d}" for i in range(10_000, 9980, -1)]
    assert any(c.startswith("FETCH 9981:10000 ") for c in wire.commands), wire.commands[-3:]
    seen: list[int] = []
    page = 1
    while True:
        out = await list_mail_messages(wire.ctx, ListMessagesInput(page=page, per_page=100))
        seen.extend(m.uid for m in out.messages)
        if not out.has_more:
            break
        page += 1
    assert page == 100
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 10_000
    assert not any("SEARCH" in c for c in wire.commands)
    found = await search_mail_messages(wire.ctx, SearchInput(query="SUBJECT seeded", limit=10))
    assert found.total == 10_000 and found.truncated and found.uids == seen[:10]


def nested(depth: int) -> bytes:
    """A multipart/mixed message nested C{depth} deep with a text part at the bottom."""
    head = b"From: bomb@example.test\r\nSubject: nested\r\nMIME-Version: 1.0\r\n"
    body = b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    for level in range(depth, 0, -1):
        boundary = b"b%d" % level
        body = (b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--' + boundary + b"\r\n"
                + body + b"\r\n--" + boundary + b"--\r\n")
    return head + body


@pytest_twisted.ensureDeferred
async def test_hostile_mime_is_bounded(wire: Wire) -> None:
    """
    docs/threat-model.rst MM-01/MM-02 through Dovecot's own BODYSTRUCTURE: a message
    nested 3,000 deep and one with 1,000 parts are listed and read without
    error or stall, and the next call works.
    """
    wire.deliver(nested(3000))
    parts = b"".join(
        b"--p\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
        b"filename=\"f%d.bin\"\r\n\r\nx\r\n" % i for i in range(1000)
    )
    wire.deliver(b"From: bomb@example.test\r\nSubject: many\r\nMIME-Version: 1.0\r\n"
                 b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n--p\r\nContent-Type: text/plain\r\n\r\n'
                 b"top text\r\n" + parts + b"--p--\r\n")
    started = time.monotonic()
    listing = await list_mail_messages(wire.ctx, ListMessagesInput())
    assert [m.subject for m in listing.messages] == ["many", "nested"]
    assert listing.messages[0].has_attachments
    # Dovecot reports the 3,000 levels; the IMAP layer refuses to parse that
    # deep, and only that message goes without its structure.
    assert listing.messages[1].has_attachments is None
    assert any("UID 1" in w for w in listing.warnings)
    many = await get_mail_message(wire.ctx, GetMessageInput(uid=2))
    assert unmark_body(many.body).strip() == "top text"
    assert 0 < len(many.attachments) <= 200
    deep = await get_mail_message(wire.ctx, GetMessageInput(uid=1))
    assert deep.subject == "nested" and deep.warnings
    assert time.monotonic() - started < 10
    again = await list_mail_messages(wire.ctx, ListMessagesInput())
    assert again.total == 2


@pytest_twisted.ensureDeferred
async def test_non_ascii_and_wildcard_folder_names(wire: Wire) -> None:
    """
    docs/threat-model.rst TL-F1: a folder named ``Entwürfe`` (modified UTF-7 on disk
    and on the wire) is listed decoded and opens by that name; ``*`` and
    ``%`` are literal names, not patterns.
    """
    wire.deliver(plain("hello"))  # creates the Maildir
    folder = Path(wire.services.svc) / "mail" / wire.email / "Maildir" / ".Entw&APw-rfe"
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True)
    (folder / "cur" / "1.M1P1.seed:2,S").write_bytes(b"From: a@example.test\r\nSubject: draft\r\n\r\nx\r\n")
    for root, _, files in os.walk(folder):
        os.chown(root, MAIL_UID, MAIL_UID)
        for name in files:
            os.chown(os.path.join(root, name), MAIL_UID, MAIL_UID)
    names = [b.name for b in (await list_mailboxes(wire.ctx, ListMailboxesInput())).mailboxes]
    assert "Entwürfe" in names
    listing = await list_mail_messages(wire.ctx, ListMessagesInput(folder="Entwürfe"))
    assert [(m.subject, m.seen) for m in listing.messages] == [("draft", True)]
    for pattern in ("*", "%", "INBOX*"):
        with pytest.raises(ToolError, match="list_mailboxes"):
            await list_mail_messages(wire.ctx, ListMessagesInput(folder=pattern))
