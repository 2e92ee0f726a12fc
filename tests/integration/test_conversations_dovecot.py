"""
Conversations, folders and changes (issue 16, part B) against the real
Dovecot of the test harness, through the real IMAP pool, checked from the
IMAP side with a separate plain ``imaplib`` connection ("another client").

Dovecot offers THREAD=REFERENCES, CONDSTORE and QRESYNC.  Every scenario
also runs with those hidden from the session (``hidden=True``): the session
then never sends them, so the tools take their fallbacks (header-chain
search, snapshot comparison) on the real wire against the real server.
"""

from __future__ import annotations

import imaplib
import re
import ssl
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import pytest
import pytest_twisted

from mailmcp._toolkit import ToolError
from mailmcp.mail._untrusted import unmark_body
from mailmcp.mail.imap._session import Session
from mailmcp.tools._changes import MailboxChangesInput, get_mailbox_changes
from mailmcp.tools._folders import (
    CreateMailboxInput,
    DeleteMailboxInput,
    RenameMailboxInput,
    create_mailbox,
    delete_mailbox,
    rename_mailbox,
)
from mailmcp.tools._reading import (
    ListMessagesInput,
    SearchInput,
    list_mail_messages,
    search_mail_messages,
)
from mailmcp.tools._threads import ThreadInput, get_mail_thread
from tests.harness import Services
from tests.integration.dovecot_wire import Wire, plain

pytestmark = pytest.mark.integration

HIDDEN = frozenset({"THREAD=REFERENCES", "THREAD=REFS", "THREAD=ORDEREDSUBJECT", "CONDSTORE",
                    "QRESYNC"})


def hide_extensions(wire: Wire) -> None:
    """Make every pooled session believe the server lacks THREAD, CONDSTORE and QRESYNC."""
    original = wire.pool.run

    async def run(account: Any, operation: Any, *, read_only: bool) -> Any:
        async def masked(session: Session) -> Any:
            session._capabilities = session._capabilities - HIDDEN
            return await operation(session)

        return await original(account, masked, read_only=read_only)

    wire.pool.run = run  # type: ignore[method-assign]


@pytest.fixture(params=[False, True], ids=["dovecot", "hidden-extensions"])
def wire(request: Any, services: Services) -> Iterator[Wire]:
    made = Wire(services)
    made.hidden = request.param  # type: ignore[attr-defined]
    if request.param:
        hide_extensions(made)
    yield made
    pytest_twisted.blockon(made.pool.stopService())


@pytest.fixture
def other(wire: Wire) -> Iterator[imaplib.IMAP4_SSL]:
    """Another mail client of the same account: plain imaplib over TLS."""
    context = ssl.create_default_context(cafile=str(wire.services.ca_file))
    client = imaplib.IMAP4_SSL("localhost", wire.services.imaps_port, ssl_context=context)
    client.login(wire.account.imap_username, wire.account.imap_password)
    yield client
    try:
        client.logout()
    except (imaplib.IMAP4.error, OSError):
        pass


def mutf7(name: str) -> bytes:
    return b'"' + name.encode("imap4-utf-7") + b'"'


def folder_names(client: imaplib.IMAP4_SSL) -> set[str]:
    typ, lines = client.list()
    assert typ == "OK"
    names = set()
    for line in lines:
        assert isinstance(line, bytes)
        match = re.match(rb'^\([^)]*\) (?:"[^"]*"|NIL) (.+)$', line)
        assert match is not None, line
        raw = match.group(1).strip(b'"')
        names.add(raw.decode("imap4-utf-7"))
    return names


def message(subject: str, message_id: str, date: str, body: str, *, sender: str,
            to: str, in_reply_to: str | None = None, references: str | None = None) -> bytes:
    made = EmailMessage(policy=SMTP)
    made["From"] = sender
    made["To"] = to
    made["Subject"] = subject
    made["Date"] = date
    made["Message-ID"] = message_id
    if in_reply_to:
        made["In-Reply-To"] = in_reply_to
    if references:
        made["References"] = references
    made.set_content(body)
    return made.as_bytes()


def append(client: imaplib.IMAP4_SSL, folder: str, raw: bytes, flags: str = "") -> None:
    typ, data = client.append(mutf7(folder).decode("ascii"), f"({flags})" if flags else None,
                              None, raw)
    assert typ == "OK", data


# -- get_mail_thread -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_thread_of_five_across_inbox_and_sent(wire: Wire, other: imaplib.IMAP4_SSL) -> None:
    """
    Five messages of one conversation, three in INBOX and two in Sent (the
    Sent ones stored in reverse order), among unrelated mail with the same
    subject: the thread comes back whole, in date order, with folders, UIDs,
    uidvalidity and snippets; nothing is marked read.  The last message
    references only its parent in Sent, so the chain must go through Sent.
    """
    tag = uuid.uuid4().hex[:8]
    ann, me = "Ann <ann@example.test>", f"Reader <{wire.email}>"
    ids = [f"<t{i}.{tag}@example.test>" for i in range(1, 6)]
    days = [f"Mon, 0{i} Sep 2025 10:00:00 +0000" for i in range(1, 6)]
    m1 = message("Plan", ids[0], days[0], "one: shall we plan?\n", sender=ann, to=me)
    m2 = message("Re: Plan", ids[1], days[1], "two: yes\n\n> one: shall we plan?\n", sender=me,
                 to=ann, in_reply_to=ids[0], references=ids[0])
    m3 = message("Re: Plan", ids[2], days[2], "three: when?\n", sender=ann, to=me,
                 in_reply_to=ids[1], references=f"{ids[0]} {ids[1]}")
    m4 = message("Re: Plan", ids[3], days[3], "four: monday\n", sender=me, to=ann,
                 in_reply_to=ids[2], references=" ".join(ids[:3]))
    m5 = message("Re: Plan", ids[4], days[4], "five: fine\n", sender=ann, to=me,
                 in_reply_to=ids[3], references=ids[3])
    wire.deliver(plain("Plan"))  # same subject, another conversation
    wire.deliver(m1)
    wire.deliver(plain("unrelated"))
    wire.deliver(m3)
    wire.deliver(m5)
    append(other, "Sent", message("Re: Plan", f"<x.{tag}@example.test>", days[2], "other\n",
                                  sender=me, to="bob@example.test"), "\\Seen")
    append(other, "Sent", m4, "\\Seen")
    append(other, "Sent", m2, "\\Seen")

    thread = await get_mail_thread(wire.ctx, ThreadInput(folder="INBOX", uid=4))

    assert [unmark_body(e.snippet) for e in thread.messages] == [
        "one: shall we plan?", "two: yes", "three: when?", "four: monday", "five: fine"]
    assert [(e.folder, e.uid) for e in thread.messages] == [
        ("INBOX", 2), ("Sent", 3), ("INBOX", 4), ("Sent", 2), ("INBOX", 5)]
    assert [e.message_id for e in thread.messages] == ids
    assert thread.total == 5 and not thread.truncated
    assert thread.messages[1].to[0].email == "ann@example.test"
    assert thread.messages[0].date == "2025-09-01T10:00:00+00:00"
    assert thread.threaded_by == ("headers" if wire.hidden else "THREAD=REFERENCES")  # type: ignore[attr-defined]
    assert thread.folders_searched == ["INBOX", "Sent", "Archive"]
    # The UIDs and uidvalidity are the server's own.
    for folder in ("INBOX", "Sent"):
        typ, data = other.select(folder, readonly=True)
        assert typ == "OK"
        typ, data = other.response("UIDVALIDITY")
        uidvalidity = int(data[0])
        for entry in (e for e in thread.messages if e.folder == folder):
            assert entry.uidvalidity == uidvalidity
            typ, found = other.uid("SEARCH", "HEADER", "Message-ID", f'"{entry.message_id}"')
            assert found[0].split() == [str(entry.uid).encode()]
    # Reading the thread marked nothing read.
    other.select("INBOX", readonly=True)
    typ, unseen = other.uid("SEARCH", "UNSEEN")
    assert unseen[0].split() == [b"1", b"2", b"3", b"4", b"5"]
    if wire.hidden:  # type: ignore[attr-defined]
        assert not any("THREAD" in c for c in wire.commands)
    else:
        assert any(c.startswith("UID THREAD REFERENCES UTF-8") for c in wire.commands)

    newest = await get_mail_thread(wire.ctx, ThreadInput(folder="Sent", uid=2, limit=2))
    assert [e.message_id for e in newest.messages] == ids[3:] and newest.truncated, ([(e.folder, e.uid, e.message_id, e.date) for e in newest.messages], newest.total, newest.warnings, wire.commands[-40:])

    with pytest.raises(ToolError, match="no message with UID 99"):
        await get_mail_thread(wire.ctx, ThreadInput(folder="INBOX", uid=99))


# -- folders ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_folder_create_rename_delete(wire: Wire, other: imaplib.IMAP4_SSL) -> None:
    """
    Create (also non-ASCII, also under a parent), rename (subfolders move
    along) and delete, as another client sees them; a non-empty folder, one
    with subfolders, INBOX and special-use folders are refused with nothing
    lost; bad names are refused before anything reaches the server.
    """
    made = await create_mailbox(wire.ctx, CreateMailboxInput(name="Rechnungen"))
    assert made.name == "Rechnungen" and made.delimiter == "/"
    made = await create_mailbox(wire.ctx, CreateMailboxInput(name="Büro", parent="Rechnungen"))
    assert made.name == "Rechnungen/Büro"
    notes = await create_mailbox(wire.ctx, CreateMailboxInput(name="Заметки"))
    assert notes.name == "Заметки"
    assert {"Rechnungen", "Rechnungen/Büro", "Заметки"} <= folder_names(other)
    assert any('"Rechnungen/B&APw-ro"' in c for c in wire.commands)

    renamed = await rename_mailbox(wire.ctx, RenameMailboxInput(name="Rechnungen", new_name="Belege"))
    assert renamed.name == "Belege" and renamed.old_name == "Rechnungen"
    moved = await rename_mailbox(wire.ctx, RenameMailboxInput(name="Заметки",
                                                             new_name="Belege/Заметки 2025"))
    assert moved.name == "Belege/Заметки 2025"
    names = folder_names(other)
    assert {"Belege", "Belege/Büro", "Belege/Заметки 2025"} <= names
    assert not {"Rechnungen", "Rechnungen/Büro", "Заметки"} & names

    append(other, "Belege/Büro", plain("keep me"))
    before = folder_names(other)
    wire.events.clear()
    refusals = [
        (DeleteMailboxInput(name="Belege/Büro"), "still holds 1 message"),
        (DeleteMailboxInput(name="Belege"), "has subfolders"),
        (DeleteMailboxInput(name="INBOX"), "INBOX cannot be deleted"),
        (DeleteMailboxInput(name="Sent"), "\\\\Sent folder"),
        (DeleteMailboxInput(name="Nope"), "no folder 'Nope'"),
    ]
    for arguments, why in refusals:
        with pytest.raises(ToolError, match=why):
            await delete_mailbox(wire.ctx, arguments)
    assert not any(c.startswith("DELETE") for c in wire.commands)
    for bad, why in [("a/b", "separator"), ("x*", "'\\*' or '%'"), ("50%", "'\\*' or '%'"),
                     ("..", "not a usable"), (" pad", "spaces"), ("Belege", "already exists")]:
        parent = None if bad == "Belege" else "Belege"
        with pytest.raises(ToolError, match=why):
            await create_mailbox(wire.ctx, CreateMailboxInput(name=bad, parent=parent))
    with pytest.raises(ToolError, match="Sent folder"):
        await rename_mailbox(wire.ctx, RenameMailboxInput(name="Sent", new_name="Gesendet"))
    with pytest.raises(ToolError, match="inside itself"):
        await rename_mailbox(wire.ctx, RenameMailboxInput(name="Belege", new_name="Belege/x"))
    with pytest.raises(ToolError, match="already exists"):
        await rename_mailbox(wire.ctx, RenameMailboxInput(name="Belege/Büro", new_name="Belege"))
    assert not any(c.split()[0] in ("CREATE", "RENAME", "DELETE") for c in wire.commands)
    assert folder_names(other) == before
    other.select(mutf7("Belege/Büro").decode("ascii"), readonly=True)
    typ, data = other.uid("SEARCH", "ALL")
    assert data[0].split() == [b"1"]  # nothing lost

    gone = await delete_mailbox(wire.ctx, DeleteMailboxInput(name="Belege/Заметки 2025"))
    assert gone.deleted
    assert "Belege/Заметки 2025" not in folder_names(other)


@pytest_twisted.ensureDeferred
async def test_mail_filed_while_a_folder_is_deleted_is_kept(
    wire: Wire, other: imaplib.IMAP4_SSL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Against Dovecot: another client files a message into the folder right
    after delete_mailbox found it empty; the folder (set aside, checked again)
    gets its name back with the message instead of being deleted with it.
    """
    from mailmcp.mail.imap._session import Session

    await create_mailbox(wire.ctx, CreateMailboxInput(name="Quittungen"))
    real_status = Session.status
    checked: list[str] = []

    async def status_then_delivery(self: Session, mailbox: str, items: Any) -> dict[str, int]:
        answer = await real_status(self, mailbox, items)
        checked.append(mailbox)
        if mailbox == "Quittungen" and len(checked) == 1:
            append(other, "Quittungen", plain("filed just now"))
        return answer

    monkeypatch.setattr(Session, "status", status_then_delivery)
    with pytest.raises(ToolError, match="still holds 1 message"):
        await delete_mailbox(wire.ctx, DeleteMailboxInput(name="Quittungen"))
    assert len(checked) == 2 and checked[1].startswith("mailmcp-deleting-")
    names = folder_names(other)
    assert "Quittungen" in names and not [n for n in names if "mailmcp-deleting" in n]
    other.select("Quittungen", readonly=True)
    typ, data = other.uid("SEARCH", "ALL")
    assert typ == "OK" and len(data[0].split()) == 1  # nothing lost
    other.unselect()
    monkeypatch.undo()
    with pytest.raises(ToolError, match="still holds 1 message"):
        await delete_mailbox(wire.ctx, DeleteMailboxInput(name="Quittungen"))
    assert not [c for c in wire.commands if c.startswith("DELETE")]


# -- get_mailbox_changes -------------------------------------------------------------


async def changes(wire: Wire, since: str, folder: str = "INBOX") -> Any:
    return await get_mailbox_changes(wire.ctx, MailboxChangesInput(folder=folder, since=since))


@pytest_twisted.ensureDeferred
async def test_changes_after_another_client_adds_flags_and_expunges(
    wire: Wire, other: imaplib.IMAP4_SSL
) -> None:
    """
    After list_mail_messages, another client appends one message, flags one
    and expunges one: get_mailbox_changes reports exactly those, and the
    returned state then reports nothing more.  On the connection where
    QRESYNC was enabled, listing and searching still count right after a
    further expunge (VANISHED instead of EXPUNGE).
    """
    for i in range(1, 5):
        wire.deliver(plain(f"note {i}"))
    listing = await list_mail_messages(wire.ctx, ListMessagesInput())
    assert listing.total == 4

    other.select("INBOX")
    append(other, "INBOX", plain("arrived later"))
    other.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
    other.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
    other.expunge()

    found = await changes(wire, listing.state)
    assert found.method == ("snapshot" if wire.hidden else "qresync")  # type: ignore[attr-defined]
    assert found.complete and not found.uidvalidity_changed
    assert [m.uid for m in found.new] == [5] and found.new_total == 1
    assert found.new[0].subject == "arrived later"
    assert [(c.uid, c.flags) for c in found.changed] == [(1, ["\\Flagged"])]
    assert found.vanished == [2]
    assert found.uidvalidity == listing.uidvalidity

    again = await changes(wire, found.state)
    assert (again.new, again.changed, again.vanished) == ([], [], [])

    other.uid("STORE", "3", "+FLAGS", "(\\Deleted)")
    other.expunge()
    before = len(wire.events)
    listing = await list_mail_messages(wire.ctx, ListMessagesInput())
    if not wire.hidden:  # type: ignore[attr-defined]
        # The listing ran on the very connection where QRESYNC was enabled.
        (enabled,) = [label for label, command, _ in wire.events if command == "ENABLE"]
        assert {label for label, _, _ in wire.events[before:]} == {enabled}
    assert [m.uid for m in listing.messages] == [5, 4, 1] and listing.total == 3
    searched = await search_mail_messages(wire.ctx, SearchInput(query="ALL"))
    assert searched.uids == [5, 4, 1]
    last = await changes(wire, again.state)
    assert last.vanished == [3] and last.new == [] and last.changed == []


@pytest_twisted.ensureDeferred
async def test_changes_report_a_renumbered_folder(wire: Wire, other: imaplib.IMAP4_SSL) -> None:
    """The folder deleted and re-created by another client: uidvalidity_changed, no UIDs."""
    await create_mailbox(wire.ctx, CreateMailboxInput(name="Projekt"))
    append(other, "Projekt", plain("first"))
    listing = await list_mail_messages(wire.ctx, ListMessagesInput(folder="Projekt"))
    typ, _ = other.delete("Projekt")
    assert typ == "OK"
    other.create("Projekt")
    append(other, "Projekt", plain("second"))
    found = await changes(wire, listing.state, "Projekt")
    assert found.uidvalidity_changed and found.method == "renumbered"
    assert (found.new, found.changed, found.vanished) == ([], [], [])
    assert found.uidvalidity != listing.uidvalidity
    assert "renumbered" in found.warnings[0]
    after = await changes(wire, found.state, "Projekt")
    assert not after.uidvalidity_changed and after.new == []


@pytest_twisted.ensureDeferred
async def test_bad_states_are_refused_without_imap(wire: Wire) -> None:
    """A malformed, foreign-folder or damaged `since` is a clear error; no IMAP command is sent."""
    listing = await list_mail_messages(wire.ctx, ListMessagesInput())
    wire.events.clear()
    for since, why in [("hello", "not a mailbox state"), ("ms1.!!!!", "damaged"),
                       (listing.state[:-6], "damaged"), ("ms1." + "A" * 5000, "damaged")]:
        with pytest.raises(ToolError, match=why):
            await changes(wire, since)
    with pytest.raises(ToolError, match="another folder"):
        await changes(wire, listing.state, "Sent")
    assert wire.events == []
