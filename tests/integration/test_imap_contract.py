"""
One contract suite for the IMAP session (`mailmcp.mail._mailbox_api.IMAPSession`):
the same cases run against the in-memory fake (`mailmcp.testing`) that the
tool unit tests use, and against the real session on the harness's Dovecot
through the real pool.  A case that passes on Dovecot and fails on the fake
means the fake lies to the unit tests; the fake is fixed, never the case.

Deliberately outside the contract: ``\\Recent`` (a per-session flag Dovecot
adds and the fake never does) and the UIDVALIDITY value itself (a timestamp
on Dovecot); a case compares UIDVALIDITY only with itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet import reactor

from mailmcp._tls import MailTLS
from mailmcp.mail._mailbox_api import Appended, IMAPError, IMAPNoSuchMailbox, IMAPSession
from mailmcp.mail.imap import IMAPPool
from mailmcp.testing import FakeIMAPPool, FakeIMAPServer, make_account
from tests.helpers import fresh_user, live_account

pytestmark = pytest.mark.integration

T = TypeVar("T")

#: The folders Dovecot creates for every user (tests/services.sh), with their special use.
FOLDERS = {"Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash", "Junk": "\\Junk",
           "Archive": "\\Archive"}


class Mailbox:
    """One account's mailbox behind a pool: the fake's, or a fresh Dovecot user's."""

    def __init__(self, pool: Any, account: Any) -> None:
        self.pool = pool
        self.account = account

    async def run(self, operation: Callable[[IMAPSession], Awaitable[T]]) -> T:
        """Run C{operation} on one leased session."""
        result: T = await self.pool.run(self.account, operation, read_only=False)
        return result

    async def append(self, *messages: bytes, folder: str = "INBOX",
                     flags: tuple[str, ...] = ()) -> list[Appended]:
        async def put(session: IMAPSession) -> list[Appended]:
            return [await session.append(folder, m, flags) for m in messages]
        return await self.run(put)

    async def uids(self, folder: str = "INBOX") -> list[int]:
        async def look(session: IMAPSession) -> list[int]:
            await session.examine(folder)
            return await session.uid_search([b"ALL"])
        return await self.run(look)

    async def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """Each message's flags, without the session-bound ``\\Recent``."""
        async def look(session: IMAPSession) -> dict[int, set[str]]:
            state = await session.examine(folder)
            if state.exists == 0:
                return {}
            fetched = await session.fetch("1:*", "(UID FLAGS)")
            return {m.uid: set(m.flags or ()) - {"\\Recent"} for m in fetched}
        return await self.run(look)


@pytest.fixture(params=["fake", "dovecot"])
def mailbox(request: pytest.FixtureRequest) -> Iterator[Mailbox]:
    if request.param == "fake":
        server = FakeIMAPServer()
        server.mailbox("INBOX")
        for name, use in FOLDERS.items():
            server.mailbox(name, use)
        yield Mailbox(FakeIMAPPool(server), make_account())
        return
    services = request.getfixturevalue("services")
    email, password = fresh_user(services)
    pool = IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=30.0)
    yield Mailbox(pool, live_account(services, email, password, full_name="Contract"))
    pytest_twisted.blockon(pool.stopService())


def message(subject: str, sender: str = "Ann Example <ann@example.test>", body: str = "Hello.\n") -> bytes:
    m = EmailMessage(policy=SMTP)
    m["From"] = sender
    m["To"] = "reader@example.test"
    m["Subject"] = subject
    m["Message-ID"] = f"<{subject.replace(' ', '.')}@example.test>"
    m["Date"] = "Mon, 01 Jan 2024 12:00:00 +0000"
    m.set_content(body)
    return m.as_bytes()


# -- select and examine ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_select_and_examine_report_the_mailbox(mailbox: Mailbox) -> None:
    """SELECT opens read-write, EXAMINE read-only; both count the messages and name the next UID."""
    async def open_both(session: IMAPSession) -> Any:
        empty = await session.select("INBOX")
        await session.append("INBOX", message("one"))
        examined = await session.examine("Archive")
        selected = await session.select("INBOX")
        return empty, examined, selected, session.selected
    empty, examined, selected, current = await mailbox.run(open_both)
    assert (empty.name, empty.exists, empty.uidnext, empty.read_only) == ("INBOX", 0, 1, False)
    assert (examined.name, examined.exists, examined.read_only) == ("Archive", 0, True)
    assert (selected.exists, selected.uidnext, selected.read_only) == (1, 2, False)
    assert selected.uidvalidity == empty.uidvalidity > 0
    assert current is not None and current.name == "INBOX"


@pytest_twisted.ensureDeferred
async def test_opening_a_missing_mailbox_is_no_such_mailbox(mailbox: Mailbox) -> None:
    """SELECT or EXAMINE of a folder that does not exist raises IMAPNoSuchMailbox."""
    for verb in ("select", "examine"):
        async def open_missing(session: IMAPSession, verb: str = verb) -> Any:
            return await getattr(session, verb)("No Such Folder")
        with pytest.raises(IMAPNoSuchMailbox):
            await mailbox.run(open_missing)


@pytest_twisted.ensureDeferred
async def test_status_counts_without_opening(mailbox: Mailbox) -> None:
    """STATUS gives MESSAGES, UNSEEN and UIDNEXT of a folder."""
    await mailbox.append(message("read"), flags=("\\Seen",))
    await mailbox.append(message("unread"))

    async def status(session: IMAPSession) -> dict[str, int]:
        return await session.status("INBOX", ["MESSAGES", "UNSEEN", "UIDNEXT"])
    assert await mailbox.run(status) == {"MESSAGES": 2, "UNSEEN": 1, "UIDNEXT": 3}


# -- append -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_append_answers_appenduid_and_keeps_flags_and_bytes(mailbox: Mailbox) -> None:
    """APPEND returns (UIDVALIDITY, UID) in order, stores the flags given and the bytes exactly."""
    first, second = message("first"), message("second")
    answers = await mailbox.append(first, second, folder="Drafts", flags=("\\Draft", "\\Seen"))

    async def read(session: IMAPSession) -> Any:
        state = await session.examine("Drafts")
        return state, await session.fetch("1:*", "(UID FLAGS RFC822.SIZE BODY.PEEK[])")
    state, fetched = await mailbox.run(read)
    assert answers == [Appended(state.uidvalidity, 1), Appended(state.uidvalidity, 2)]
    assert [m.uid for m in fetched] == [1, 2]
    assert [m.sections[""] for m in fetched] == [first, second]
    assert [m.size for m in fetched] == [len(first), len(second)]
    assert [set(m.flags or ()) - {"\\Recent"} for m in fetched] == [{"\\Draft", "\\Seen"}] * 2


@pytest_twisted.ensureDeferred
async def test_append_to_a_missing_mailbox_is_no_such_mailbox(mailbox: Mailbox) -> None:
    """APPEND into a folder that does not exist raises IMAPNoSuchMailbox and stores nothing."""
    with pytest.raises(IMAPNoSuchMailbox):
        await mailbox.append(message("lost"), folder="No Such Folder")
    assert await mailbox.uids() == []


# -- fetch ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_fetch_summaries(mailbox: Mailbox) -> None:
    """UID FETCH of the listing items: UID, sequence number, flags, size and the decoded envelope."""
    raw = [message("Report", sender="=?utf-8?q?Zo=C3=A9?= <zoe@example.test>"), message("Lunch")]
    await mailbox.append(raw[0], flags=("\\Seen",))
    await mailbox.append(raw[1])

    async def summaries(session: IMAPSession) -> Any:
        await session.examine("INBOX")
        return await session.fetch("1:*", "(UID FLAGS RFC822.SIZE ENVELOPE)")
    fetched = await mailbox.run(summaries)
    assert [(m.uid, m.seq, m.size) for m in fetched] == [(1, 1, len(raw[0])), (2, 2, len(raw[1]))]
    assert [set(m.flags or ()) - {"\\Recent"} for m in fetched] == [{"\\Seen"}, set()]
    envelope = fetched[0].envelope
    assert envelope is not None
    assert envelope.subject == "Report" and envelope.message_id == "<Report@example.test>"
    assert [(a.name, a.email) for a in envelope.from_] == [("Zoé", "zoe@example.test")]
    assert [a.email for a in envelope.to] == ["reader@example.test"]


@pytest_twisted.ensureDeferred
async def test_fetch_by_uid_and_by_sequence_and_peek_leaves_seen_alone(mailbox: Mailbox) -> None:
    """A UID set selects by UID, a plain FETCH by position; BODY.PEEK never sets \\Seen."""
    await mailbox.append(message("a"), message("b"), message("c"))

    async def pick(session: IMAPSession) -> Any:
        await session.select("INBOX")
        await session.uid_store([1], "+FLAGS", ["\\Deleted"])
        await session.uid_expunge([1])
        by_uid = await session.fetch("3", "(UID BODY.PEEK[HEADER])")
        by_seq = await session.fetch("1", "(UID)", uid=False)
        beyond = await session.fetch("9", "(UID)")
        return by_uid, by_seq, beyond
    by_uid, by_seq, beyond = await mailbox.run(pick)
    assert [m.uid for m in by_uid] == [3] and b"Subject: c" in by_uid[0].sections["HEADER"]
    assert [(m.uid, m.seq) for m in by_seq] == [(2, 1)]
    assert beyond == []
    assert await mailbox.flags() == {2: set(), 3: set()}


# -- search -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_search(mailbox: Mailbox) -> None:
    """UID SEARCH: ALL, SUBJECT, FROM, SEEN/UNSEEN, NOT, UID ranges, a quoted string; UIDs ascending."""
    await mailbox.append(message("Quarterly report", sender="ann@example.test"), flags=("\\Seen",))
    await mailbox.append(message("Lunch plans", sender="bob@example.test"))
    await mailbox.append(message("Report draft", sender="bob@example.test"), flags=("\\Flagged",))

    async def search(session: IMAPSession) -> dict[str, list[int]]:
        await session.examine("INBOX")
        cases: dict[str, list[bytes]] = {
            "all": [b"ALL"],
            "subject": [b"SUBJECT", b"report"],
            "quoted": [b"SUBJECT", b'"lunch plans"'],
            "from": [b"FROM", b"bob@example.test"],
            "unseen": [b"UNSEEN"],
            "seen": [b"SEEN"],
            "not": [b"NOT", b"FROM", b"bob"],
            "and": [b"FROM", b"bob", b"SUBJECT", b"report"],
            "flagged": [b"FLAGGED"],
            "uid": [b"UID", b"2:*"],
            "none": [b"SUBJECT", b"nowhere"],
        }
        return {name: await session.uid_search(criteria) for name, criteria in cases.items()}
    assert await mailbox.run(search) == {
        "all": [1, 2, 3], "subject": [1, 3], "quoted": [2], "from": [2, 3], "unseen": [2, 3],
        "seen": [1], "not": [1], "and": [3], "flagged": [3], "uid": [2, 3], "none": [],
    }


@pytest_twisted.ensureDeferred
async def test_search_without_an_open_mailbox_fails(mailbox: Mailbox) -> None:
    """UID SEARCH before SELECT/EXAMINE is an IMAPError, not an empty answer."""
    async def search(session: IMAPSession) -> list[int]:
        return await session.uid_search([b"ALL"])
    with pytest.raises(IMAPError):
        await mailbox.run(search)


# -- flags ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_store_adds_removes_and_replaces_flags(mailbox: Mailbox) -> None:
    """+FLAGS, -FLAGS and FLAGS change only the UIDs named; without .SILENT the new flags come back."""
    await mailbox.append(message("a"), message("b"))

    async def store(session: IMAPSession) -> Any:
        await session.select("INBOX")
        await session.uid_store([1, 2], "+FLAGS", ["\\Seen", "\\Flagged"])
        await session.uid_store([2], "-FLAGS", ["\\Seen"])
        return await session.uid_store([1], "FLAGS", ["\\Answered"], silent=False)
    answered = await mailbox.run(store)
    assert {uid: set(flags) - {"\\Recent"} for uid, flags in answered.items()} == {1: {"\\Answered"}}
    assert await mailbox.flags() == {1: {"\\Answered"}, 2: {"\\Flagged"}}


@pytest_twisted.ensureDeferred
async def test_store_on_an_examined_mailbox_opens_it_read_write(mailbox: Mailbox) -> None:
    """A write after EXAMINE upgrades the session to SELECT first (the session contract), then applies."""
    await mailbox.append(message("a"))

    async def store(session: IMAPSession) -> Any:
        await session.examine("INBOX")
        await session.uid_store([1], "+FLAGS", ["\\Seen"])
        return session.selected
    state = await mailbox.run(store)
    assert state is not None and not state.read_only
    assert await mailbox.flags() == {1: {"\\Seen"}}


# -- copy and move ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_copy_keeps_the_source_and_maps_uids(mailbox: Mailbox) -> None:
    """UID COPY answers old UID -> new UID (COPYUID), keeps the flags and leaves the source as it was."""
    await mailbox.append(message("a"), message("b"), message("c"))
    await mailbox.append(message("old"), folder="Archive")

    async def copy(session: IMAPSession) -> dict[int, int]:
        await session.examine("INBOX")
        await session.uid_store([3], "+FLAGS", ["\\Flagged"])
        return await session.uid_copy([1, 3], "Archive")
    assert await mailbox.run(copy) == {1: 2, 3: 3}
    assert await mailbox.uids() == [1, 2, 3]
    assert await mailbox.flags("Archive") == {1: set(), 2: set(), 3: {"\\Flagged"}}


@pytest_twisted.ensureDeferred
async def test_move_removes_only_the_moved_messages(mailbox: Mailbox) -> None:
    """UID MOVE maps UIDs like COPY and removes exactly the moved messages from the source."""
    await mailbox.append(message("a"), message("b"), message("c"))

    async def move(session: IMAPSession) -> dict[int, int]:
        await session.select("INBOX")
        return await session.uid_move([2], "Trash")
    assert await mailbox.run(move) == {2: 1}
    assert await mailbox.uids() == [1, 3]
    assert await mailbox.uids("Trash") == [1]


@pytest_twisted.ensureDeferred
async def test_copy_or_move_to_a_missing_mailbox_changes_nothing(mailbox: Mailbox) -> None:
    """COPY or MOVE into a folder that does not exist raises IMAPNoSuchMailbox; the source keeps its mail."""
    await mailbox.append(message("a"))
    for verb in ("uid_copy", "uid_move"):
        async def send(session: IMAPSession, verb: str = verb) -> Any:
            await session.select("INBOX")
            return await getattr(session, verb)([1], "No Such Folder")
        with pytest.raises(IMAPNoSuchMailbox):
            await mailbox.run(send)
    assert await mailbox.uids() == [1]


# -- expunge by UID ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_uid_expunge_removes_only_named_deleted_messages(mailbox: Mailbox) -> None:
    """
    UID EXPUNGE removes a message only when it is both named and \\Deleted:
    another \\Deleted message and a named but undeleted one stay (never a bare EXPUNGE).
    """
    await mailbox.append(message("a"), message("b"), message("c"))

    async def expunge(session: IMAPSession) -> Any:
        await session.select("INBOX")
        await session.uid_store([1, 2], "+FLAGS", ["\\Deleted"])
        await session.uid_expunge([1, 3])
        return session.selected
    state = await mailbox.run(expunge)
    assert state is not None and state.exists == 2
    assert await mailbox.uids() == [2, 3]
    assert await mailbox.flags() == {2: {"\\Deleted"}, 3: set()}
