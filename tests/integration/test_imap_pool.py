"""
The pooled IMAP layer against the real Dovecot of the test harness.

Every test logs in as a user of its own (``fresh_user``) so mailbox state
never leaks between tests.  Commands are observed through the pool's
command observers, which see exactly what goes on the wire (arguments of
LOGIN/AUTHENTICATE redacted).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from mailmcp._account import MailAccount
from mailmcp._tls import MailTLS
from mailmcp.mail._mailbox_api import (
    IMAPAuthError,
    IMAPError,
    IMAPNoSuchMailbox,
    IMAPSession,
    Literal,
)
from mailmcp.mail.imap import IMAPPool
from mailmcp.oauth._clients import MailServer
from tests.harness import Services
from tests.helpers import until

pytestmark = pytest.mark.integration


_prepared: dict[str, list[tuple[str, str]]] = {}
NON_ASCII_PASSWORD = "pässwörd-日本"


def fresh_user(services: Services, password: str | None = None) -> tuple[str, str]:
    """
    A Dovecot user of its own (an empty mailbox) for one test.

    Dovecot re-reads its passwd-file at most once a second (and only when
    the mtime changed), so a user appended right after another login may be
    unknown for up to a second.  All users of this module are therefore
    written in one go, the first time one is needed, followed by a pause.
    """
    key = str(services.svc)
    if key not in _prepared:
        users = [
            (f"u{uuid.uuid4().hex[:10]}@example.test", "pw-" + uuid.uuid4().hex[:8])
            for _ in range(80)
        ]
        users += [
            (f"n{uuid.uuid4().hex[:10]}@example.test", NON_ASCII_PASSWORD + str(i))
            for i in range(4)
        ]
        with open(services.svc / "users", "a", encoding="utf-8") as f:
            for email, pw in users:
                f.write(f"{email}:{{PLAIN}}{pw}::::::\n")
        time.sleep(1.2)
        _prepared[key] = users
    users = _prepared[key]
    for index, (email, pw) in enumerate(users):
        if (password is None and pw.isascii()) or (password is not None and not pw.isascii()):
            return users.pop(index)
    raise RuntimeError("out of prepared test users")


def account_for(
    services: Services, email: str, password: str, security: str = "tls"
) -> MailAccount:
    port = services.imaps_port if security == "tls" else services.imap_port
    server = MailServer(host="localhost", port=port, security=security)  # type: ignore[arg-type]
    return MailAccount(
        owner="grant-" + email,
        email=email,
        full_name="Test User",
        imap=server,
        imap_username=email,
        imap_password=password,
        smtp=MailServer(host="localhost", port=465, security="tls"),
        smtp_username=email,
        smtp_password=password,
    )


class Recorder:
    """Collects (label, command, arguments) of every command a pool sends."""

    def __init__(self, pool: IMAPPool) -> None:
        self.events: list[tuple[str, str, str]] = []
        pool.command_observers.append(lambda *event: self.events.append(event))

    @property
    def commands(self) -> list[str]:
        return [command for _, command, _ in self.events]

    def clear(self) -> None:
        self.events.clear()


@pytest.fixture
def pools(services: Services) -> Iterator[Any]:
    """Build pools that trust the harness CA; all are stopped afterwards."""
    made: list[IMAPPool] = []

    def make(**kwargs: Any) -> IMAPPool:
        kwargs.setdefault("command_timeout", 10.0)
        tls = kwargs.pop("tls", None) or MailTLS(services.ca_file)
        pool = IMAPPool(reactor, tls, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        if pool.running or pool.open_connections:
            pytest_twisted.blockon(pool.stopService())


def message(
    subject: str,
    body: str = "Hello.\r\n",
    *,
    sender: str = "Sender <sender@example.test>",
    to: str = "rcpt@example.test",
    extra: str = "",
) -> bytes:
    """A small RFC 5322 message (CRLF line ends)."""
    date = format_datetime(datetime(2025, 7, 1, 13, 30, tzinfo=UTC))
    text = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n{extra}"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n" + body
    )
    return text.encode("utf-8")


# -- login and transport security ---------------------------------------------------


@pytest.mark.parametrize("security", ["tls", "starttls", "plain"])
@pytest_twisted.ensureDeferred
async def test_login_each_security_mode(services: Services, pools: Any, security: str) -> None:
    """Each configured security mode logs in and lists the SPECIAL-USE folders."""
    email, password = fresh_user(services)
    pool = pools()
    recorder = Recorder(pool)
    account = account_for(services, email, password, security)

    async def operation(session: IMAPSession) -> Any:
        boxes = await session.list_mailboxes()
        return boxes, session.protocol.startedTLS, session.capabilities  # type: ignore[attr-defined]

    boxes, started_tls, caps = await pool.run(account, operation, read_only=True)
    names = {b.name: b for b in boxes}
    assert "INBOX" in names
    assert names["Sent"].special_use == "\\Sent"
    assert names["Drafts"].special_use == "\\Drafts"
    assert "UIDPLUS" in caps and "MOVE" in caps
    assert started_tls is (security == "starttls")
    assert "LOGIN" in recorder.commands
    if security == "starttls":
        assert recorder.commands.index("STARTTLS") < recorder.commands.index("LOGIN")
    login_args = [a for _, c, a in recorder.events if c == "LOGIN"]
    assert login_args == ["<credentials redacted>"]
    assert all(password not in a for _, _, a in recorder.events)


@pytest.mark.parametrize("security", ["tls", "plain"])
@pytest_twisted.ensureDeferred
async def test_connections_log_one_line_not_factory_noise(
    services: Services, pools: Any, security: str
) -> None:
    """
    A new pooled connection logs its login, once, and not Twisted's
    "Starting factory" / "Stopping factory" pair (thousands of accounts made
    those most of the log).
    """
    from twisted.logger import formatEvent, globalLogPublisher

    email, password = fresh_user(services)
    pool = pools()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await pool.run(account_for(services, email, password, security), _noop, read_only=True)
        await pool.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events]
    assert [line for line in lines if "logged in to" in line] != []
    assert [line for line in lines if "factory" in line.lower()] == []


async def _noop(session: IMAPSession) -> None:
    await session.noop()


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_auth_error_and_not_retried(services: Services, pools: Any) -> None:
    """A refused login is IMAPAuthError, is tried once even for reads, and leaves nothing open."""
    email, _ = fresh_user(services)
    pool = pools()
    recorder = Recorder(pool)
    account = account_for(services, email, "not-the-password")
    calls = []

    async def operation(session: IMAPSession) -> None:
        calls.append(1)

    with pytest.raises(IMAPAuthError) as caught:
        await pool.run(account, operation, read_only=True)
    assert "rejected the login" in caught.value.message
    assert recorder.commands.count("LOGIN") == 1
    assert calls == []
    await until(lambda: pool.open_connections == 0, "the refused connection to be closed")


@pytest_twisted.ensureDeferred
async def test_non_ascii_password_uses_authenticate_plain(services: Services, pools: Any) -> None:
    """A non-ASCII password logs in with AUTHENTICATE PLAIN (UTF-8), never a raw LOGIN."""
    email, password = fresh_user(services, password=NON_ASCII_PASSWORD)
    pool = pools()
    recorder = Recorder(pool)

    async def operation(session: IMAPSession) -> int:
        return (await session.examine("INBOX")).exists

    assert await pool.run(account_for(services, email, password), operation, read_only=True) == 0
    assert "AUTHENTICATE" in recorder.commands and "LOGIN" not in recorder.commands
    assert [a for _, c, a in recorder.events if c == "AUTHENTICATE"] == [
        "PLAIN <credentials redacted>"
    ]


@pytest.mark.parametrize("security", ["tls", "starttls"])
@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_refused_before_credentials(
    services: Services, pools: Any, security: str
) -> None:
    """Without the harness CA the certificate does not verify: a clear TLS error, no LOGIN sent."""
    email, password = fresh_user(services)
    pool = pools(tls=MailTLS(None))
    recorder = Recorder(pool)

    async def operation(session: IMAPSession) -> None:
        raise AssertionError("must not get a session")

    with pytest.raises(IMAPError) as caught:
        await pool.run(account_for(services, email, password, security), operation, read_only=False)
    assert "TLS" in caught.value.message
    assert "certificate" in caught.value.message
    assert "LOGIN" not in recorder.commands and "AUTHENTICATE" not in recorder.commands
    assert pool.open_connections == 0


@pytest_twisted.ensureDeferred
async def test_plain_refused_for_non_loopback_host(services: Services, pools: Any) -> None:
    """``plain`` security is refused for a host that is not loopback, before any command."""
    email, password = fresh_user(services)
    pool = pools(endpoint_factory=lambda account: _loopback_endpoint(services.imap_port))
    recorder = Recorder(pool)
    account = account_for(services, email, password, "plain")
    account = MailAccount(
        owner=account.owner,
        email=email,
        full_name="",
        imap=MailServer("mail.example.test", services.imap_port, "plain"),
        imap_username=email,
        imap_password=password,
        smtp=account.smtp,
        smtp_username=email,
        smtp_password=password,
    )

    async def operation(session: IMAPSession) -> None:
        raise AssertionError("must not get a session")

    with pytest.raises(IMAPError, match="loopback"):
        await pool.run(account, operation, read_only=False)
    assert "LOGIN" not in recorder.commands


def _loopback_endpoint(port: int) -> Any:
    from twisted.internet.endpoints import TCP4ClientEndpoint

    return TCP4ClientEndpoint(reactor, "127.0.0.1", port)


# -- pooling ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_second_operation_reuses_the_connection(services: Services, pools: Any) -> None:
    """Two operations for one account use one connection: one LOGIN, no reconnect."""
    email, password = fresh_user(services)
    pool = pools()
    recorder = Recorder(pool)
    account = account_for(services, email, password)

    async def operation(session: IMAPSession) -> int:
        return (await session.examine("INBOX")).exists

    await pool.run(account, operation, read_only=True)
    await pool.run(account, operation, read_only=True)
    assert pool.stats["connections"] == 1
    assert pool.stats["reused"] == 1
    assert recorder.commands.count("LOGIN") == 1
    assert pool.idle_count(account) == 1


@pytest_twisted.ensureDeferred
async def test_examine_cache_costs_one_noop(services: Services, pools: Any) -> None:
    """A repeat examine of the open folder sends NOOP, not EXAMINE, and sees new mail."""
    email, password = fresh_user(services)
    pool = pools()
    recorder = Recorder(pool)
    account = account_for(services, email, password)

    async def operation(session: IMAPSession) -> Any:
        return await session.examine("INBOX")

    first = await pool.run(account, operation, read_only=True)
    services.deliver(email, message("new one"))
    recorder.clear()
    second = await pool.run(account, operation, read_only=True)
    assert recorder.commands == ["NOOP"]
    assert first.exists == 0 and second.exists == 1
    assert second.uidvalidity == first.uidvalidity and second.read_only


@pytest_twisted.ensureDeferred
async def test_examine_upgrades_to_select_for_a_write(services: Services, pools: Any) -> None:
    """A write on an EXAMINEd folder re-opens it with SELECT first; a later select costs a NOOP."""
    email, password = fresh_user(services)
    services.deliver(email, message("flag me"))
    pool = pools()
    recorder = Recorder(pool)
    account = account_for(services, email, password)

    async def operation(session: IMAPSession) -> Any:
        await session.examine("INBOX")
        uids = await session.uid_search([b"ALL"])
        flags = await session.uid_store(uids, "+FLAGS", ["\\Flagged", "$Label1"], silent=False)
        state = session.selected
        await session.select("INBOX")
        return uids, flags, state

    uids, flags, state = await pool.run(account, operation, read_only=False)
    assert state is not None and not state.read_only
    assert set(flags[uids[0]]) >= {"\\Flagged", "$Label1"}
    commands = recorder.commands
    assert commands.index("EXAMINE") < commands.index("SELECT") < commands.index("UID STORE")
    assert commands[-1] == "NOOP"


@pytest_twisted.ensureDeferred
async def test_per_account_cap_and_wait_timeout(services: Services, pools: Any) -> None:
    """
    With one connection per account a second caller waits, and gets
    'mailbox busy' when the wait timeout has passed on the pool's clock, not
    before; a waiter is served as soon as the holder gives the connection back.
    """
    email, password = fresh_user(services)
    clock = Clock()
    pool = pools(pool_size=1, wait_timeout=0.3, clock=clock)
    account = account_for(services, email, password)
    hold: Deferred[None] = Deferred()
    holding: list[bool] = []

    async def holder(session: IMAPSession) -> str:
        await session.noop()
        holding.append(True)
        await hold
        return "held"

    async def quick(session: IMAPSession) -> str:
        await session.noop()
        return "quick"

    first = Deferred.fromCoroutine(pool.run(account, holder, read_only=True))
    await until(lambda: holding, "the first call to hold the connection")
    waiting = Deferred.fromCoroutine(pool.run(account, quick, read_only=True))
    clock.advance(0.29)
    assert not waiting.called
    clock.advance(0.01)
    assert waiting.called  # at the clock's 0.3 s, no wall-clock wait
    with pytest.raises(IMAPError, match="mailbox busy, try again"):
        await waiting
    # A waiter is served as soon as the holder gives the connection back.
    second = Deferred.fromCoroutine(pool.run(account, quick, read_only=True))
    assert not second.called
    hold.callback(None)
    assert await first == "held"
    assert await second == "quick"
    assert clock.seconds() == pytest.approx(0.3)
    assert pool.stats["connections"] == 1
    assert pool.open_connections == 1


@pytest_twisted.ensureDeferred
async def test_cap_bounds_concurrent_connections(services: Services, pools: Any) -> None:
    """Ten concurrent calls for one account never open more than pool_size connections."""
    email, password = fresh_user(services)
    pool = pools(pool_size=3, wait_timeout=10)
    account = account_for(services, email, password)
    peak = []

    async def operation(session: IMAPSession) -> int:
        peak.append(pool.open_connections)
        await session.examine("INBOX")
        await deferLater(reactor, 0.02, lambda: None)
        return 1

    results = await _gather([pool.run(account, operation, read_only=True) for _ in range(10)])
    assert results == [1] * 10
    assert max(peak) <= 3
    assert pool.stats["connections"] == 3


async def _gather(coroutines: list[Any]) -> list[Any]:
    from twisted.internet.defer import gatherResults

    return await gatherResults([Deferred.fromCoroutine(c) for c in coroutines])  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_idle_connection_expires_on_the_clock(services: Services, pools: Any) -> None:
    """An idle connection is logged out after pool_idle_timeout on the injected clock."""
    email, password = fresh_user(services)
    clock = Clock()
    pool = pools(clock=clock, idle_timeout=300)
    recorder = Recorder(pool)
    account = account_for(services, email, password)

    async def operation(session: IMAPSession) -> None:
        await session.noop()

    await pool.run(account, operation, read_only=True)
    clock.advance(299)
    assert pool.idle_count(account) == 1
    clock.advance(2)
    assert pool.idle_count(account) == 0 and pool.stats["expired"] == 1
    assert recorder.commands[-1] == "LOGOUT"
    await pool.run(account, operation, read_only=True)
    assert pool.stats["connections"] == 2


@pytest_twisted.ensureDeferred
async def test_long_idle_connection_is_checked_with_noop(services: Services, pools: Any) -> None:
    """A connection idle for over a minute is checked with NOOP before it is lent again."""
    email, password = fresh_user(services)
    clock = Clock()
    pool = pools(clock=clock)
    recorder = Recorder(pool)
    account = account_for(services, email, password)

    async def operation(session: IMAPSession) -> None:
        await session.status("INBOX", ["MESSAGES"])

    await pool.run(account, operation, read_only=True)
    clock.advance(61)
    recorder.clear()
    await pool.run(account, operation, read_only=True)
    assert recorder.commands == ["NOOP", "STATUS"]


@pytest_twisted.ensureDeferred
async def test_dead_idle_connection_is_replaced(services: Services, pools: Any) -> None:
    """An idle connection whose transport went away is dropped, and the next call reconnects."""
    email, password = fresh_user(services)
    pool = pools()
    account = account_for(services, email, password)
    sessions: list[Any] = []

    async def operation(session: IMAPSession) -> None:
        sessions.append(session)
        await session.noop()

    await pool.run(account, operation, read_only=False)
    sessions[0].protocol.transport.abortConnection()
    await until(lambda: pool.idle_count(account) == 0, "the dead connection to be dropped")
    await pool.run(account, operation, read_only=False)
    assert sessions[1] is not sessions[0]
    assert pool.stats["connections"] == 2


@pytest.mark.parametrize("read_only", [True, False])
@pytest_twisted.ensureDeferred
async def test_broken_connection_retried_once_only_for_reads(
    services: Services, pools: Any, read_only: bool
) -> None:
    """A connection breaking mid-operation is discarded; reads retry once, writes never."""
    email, password = fresh_user(services)
    pool = pools()
    account = account_for(services, email, password)
    calls: list[Any] = []

    async def operation(session: IMAPSession) -> str:
        calls.append(session)
        if len(calls) <= 2:
            session.protocol.transport.abortConnection()  # type: ignore[attr-defined]
        await session.noop()
        return "ok"

    with pytest.raises(IMAPError) as caught:
        await pool.run(account, operation, read_only=read_only)
    assert caught.value.transient
    assert len(calls) == (2 if read_only else 1)
    assert pool.stats["retries"] == (1 if read_only else 0)
    assert pool.stats["discarded"] == len(calls)
    # Once the connection stays up, a read succeeds after one retry.
    calls.clear()
    calls.append(None)
    assert await pool.run(account, operation, read_only=True) == "ok"
    assert len(calls) == 3


@pytest_twisted.ensureDeferred
async def test_connect_per_call_mode(services: Services, pools: Any) -> None:
    """With pooling disabled each operation connects, logs in and logs out."""
    email, password = fresh_user(services)
    pool = pools(connect_per_call=True)
    recorder = Recorder(pool)
    account = account_for(services, email, password)

    async def operation(session: IMAPSession) -> None:
        await session.noop()

    await pool.run(account, operation, read_only=True)
    await pool.run(account, operation, read_only=True)
    assert pool.stats["connections"] == 2
    assert recorder.commands.count("LOGIN") == 2 and recorder.commands.count("LOGOUT") == 2
    assert pool.open_connections == 0


@pytest_twisted.ensureDeferred
async def test_global_cap_evicts_idle_connection_of_another_account(
    services: Services, pools: Any
) -> None:
    """At the global cap, the least recently used idle connection of another account is closed."""
    first = account_for(services, *fresh_user(services))
    second = account_for(services, *fresh_user(services))
    pool = pools(max_connections=1)

    async def operation(session: IMAPSession) -> None:
        await session.noop()

    await pool.run(first, operation, read_only=True)
    await pool.run(second, operation, read_only=True)
    assert pool.stats["evicted"] == 1
    assert pool.idle_count(first) == 0 and pool.idle_count(second) == 1
    assert pool.open_connections == 1


@pytest_twisted.ensureDeferred
async def test_stop_service_logs_out_idle_connections(services: Services, pools: Any) -> None:
    """Stopping the pool logs every idle connection out and refuses new work."""
    pool = pools()
    pool.startService()
    recorder = Recorder(pool)
    account = account_for(services, *fresh_user(services))

    async def operation(session: IMAPSession) -> None:
        await session.noop()

    await pool.run(account, operation, read_only=True)
    await pool.stopService()
    assert recorder.commands[-1] == "LOGOUT" and pool.open_connections == 0
    with pytest.raises(IMAPError, match="shutting down"):
        await pool.run(account, operation, read_only=True)


# -- mailbox operations -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_fetch_envelope_bodystructure_and_peek_sections(
    services: Services, pools: Any
) -> None:
    """ENVELOPE is decoded, BODYSTRUCTURE parsed, BODY.PEEK sections byte-exact, \\Seen untouched."""
    email, password = fresh_user(services)
    body = "Grüße aus Köln.\r\nLine two.\r\n"
    raw = message(
        "=?utf-8?q?Gr=C3=BC=C3=9Fe?= and more",
        body,
        sender='"=?utf-8?b?SsO8cmdlbg==?=" <juergen@example.test>',
        to="A <a@example.test>, b@example.test",
    )
    services.deliver(email, raw)
    pool = pools()
    recorder = Recorder(pool)

    async def operation(session: IMAPSession) -> Any:
        await session.examine("INBOX")
        listing = await session.fetch(
            "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)", uid=True
        )
        uid = listing[0].uid
        parts = await session.fetch(str(uid), "(BODY.PEEK[HEADER] BODY.PEEK[1] BODY.PEEK[])")
        partial = await session.fetch(str(uid), "(BODY[1]<3.4>)")
        after = await session.fetch(str(uid), "(FLAGS)")
        return listing, parts, partial, after

    listing, parts, partial, after = await pool.run(
        account_for(services, email, password), operation, read_only=True
    )
    (item,) = listing
    envelope = item.envelope
    assert envelope is not None
    assert envelope.subject == "Grüße and more"
    assert envelope.from_[0].name == "Jürgen" and envelope.from_[0].email == "juergen@example.test"
    assert [a.email for a in envelope.to] == ["a@example.test", "b@example.test"]
    assert envelope.message_id and envelope.message_id.startswith("<")
    assert item.bodystructure[0].lower() == "text" and item.bodystructure[1].lower() == "plain"
    assert isinstance(item.bodystructure[6], int)
    assert item.flags is not None and "\\Seen" not in item.flags
    assert item.size is not None and item.size > len(raw)  # Dovecot adds Return-Path etc.
    assert item.internal_date
    (fetched,) = parts
    whole = fetched.sections[""]
    assert whole.endswith(raw)
    assert fetched.sections["1"] == body.encode("utf-8")
    assert fetched.sections["HEADER"] == whole[: whole.index(b"\r\n\r\n") + 4]
    assert partial[0].sections == {"1": body.encode("utf-8")[3:7]}
    assert after[0].flags is not None and "\\Seen" not in after[0].flags
    assert all("BODY[" not in a for _, c, a in recorder.events if c == "UID FETCH")


@pytest_twisted.ensureDeferred
async def test_sequence_numbers_differ_from_uids(services: Services, pools: Any) -> None:
    """After UID EXPUNGE of two of five messages, FETCH by sequence reports the right UIDs."""
    email, password = fresh_user(services)
    for i in range(5):
        services.deliver(email, message(f"message {i + 1}"))
    pool = pools()
    recorder = Recorder(pool)

    async def operation(session: IMAPSession) -> Any:
        await session.select("INBOX")
        uids = await session.uid_search([b"ALL"])
        await session.uid_store([uids[0], uids[2]], "+FLAGS", ["\\Deleted"])
        await session.uid_expunge([uids[0], uids[2]])
        state = session.selected
        by_seq = await session.fetch("1:3", "(UID ENVELOPE)", uid=False)
        by_uid = await session.fetch(f"{uids[3]}", "(ENVELOPE)")
        return uids, state, by_seq, by_uid

    uids, state, by_seq, by_uid = await pool.run(
        account_for(services, email, password), operation, read_only=False
    )
    assert state.exists == 3
    assert [(m.seq, m.uid) for m in by_seq] == [(1, uids[1]), (2, uids[3]), (3, uids[4])]
    assert [m.envelope.subject for m in by_seq] == ["message 2", "message 4", "message 5"]
    assert by_uid[0].seq == 2 and by_uid[0].envelope.subject == "message 4"
    assert "EXPUNGE" not in recorder.commands
    assert [a for _, c, a in recorder.events if c == "UID EXPUNGE"] == [f"{uids[0]},{uids[2]}"]


@pytest_twisted.ensureDeferred
async def test_search_with_non_ascii_literal(services: Services, pools: Any) -> None:
    """A non-ASCII search term goes out as a literal with CHARSET UTF-8 and finds the message."""
    email, password = fresh_user(services)
    services.deliver(email, message("Résumé für 日本"))
    services.deliver(email, message("plain subject"))
    pool = pools()
    recorder = Recorder(pool)

    async def operation(session: IMAPSession) -> Any:
        await session.examine("INBOX")
        hits = await session.uid_search([b"SUBJECT", Literal("日本".encode())])
        ascii_hits = await session.uid_search([b"SUBJECT", b'"plain"'])
        both = await session.uid_search([b"ALL"])
        return hits, ascii_hits, both

    hits, ascii_hits, both = await pool.run(
        account_for(services, email, password), operation, read_only=True
    )
    assert len(both) == 2
    assert hits == [both[0]] and ascii_hits == [both[1]]
    searches = [a for _, c, a in recorder.events if c == "UID SEARCH"]
    assert searches[0] == "RETURN (ALL) CHARSET UTF-8 SUBJECT {6 bytes}"


@pytest_twisted.ensureDeferred
async def test_append_copy_move_expunge_with_uids(services: Services, pools: Any) -> None:
    """APPEND returns APPENDUID; COPY and MOVE return COPYUID maps; UID EXPUNGE removes one."""
    email, password = fresh_user(services)
    pool = pools()
    recorder = Recorder(pool)

    async def operation(session: IMAPSession) -> Any:
        appended = [
            await session.append(
                "INBOX", message(f"m{i}"), flags=["\\Seen"], date="01-Jul-2025 13:30:00 +0000"
            )
            for i in range(3)
        ]
        uidvalidity = (await session.select("INBOX")).uidvalidity
        uids = [stored.uid for stored in appended]
        copied = await session.uid_copy([uids[0]], "Archive")
        moved = await session.uid_move([uids[1]], "Trash")
        await session.uid_expunge([uids[2]])  # not \Deleted: stays
        kept = await session.uid_search([b"ALL"])
        await session.uid_store([uids[2]], "+FLAGS", ["\\Deleted"])
        await session.uid_expunge([uids[2]])
        inbox = await session.uid_search([b"ALL"])
        archive = await session.status("Archive", ["MESSAGES", "UIDNEXT"])
        trash = await session.examine("Trash")
        trash_items = await session.fetch("1:*", "(UID FLAGS ENVELOPE)")
        return appended, uidvalidity, uids, copied, moved, kept, inbox, archive, trash, trash_items

    (
        appended,
        uidvalidity,
        uids,
        copied,
        moved,
        kept,
        inbox,
        archive,
        trash,
        trash_items,
    ) = await pool.run(account_for(services, email, password), operation, read_only=False)
    assert all(stored.uidvalidity == uidvalidity for stored in appended) and uids == sorted(uids)
    assert list(copied) == [uids[0]] and list(moved) == [uids[1]]
    assert kept == [uids[0], uids[2]]
    assert inbox == [uids[0]]
    assert archive["MESSAGES"] == 1
    assert trash.exists == 1
    assert trash_items[0].uid == moved[uids[1]]
    assert "\\Seen" in (trash_items[0].flags or ())
    assert trash_items[0].envelope.subject == "m1"
    assert "UID MOVE" in recorder.commands and "EXPUNGE" not in recorder.commands


@pytest_twisted.ensureDeferred
async def test_missing_mailbox_errors(services: Services, pools: Any) -> None:
    """Selecting, copying to or appending to a missing folder is IMAPNoSuchMailbox."""
    email, password = fresh_user(services)
    services.deliver(email, message("x"))
    pool = pools()

    async def operation(session: IMAPSession) -> Any:
        errors = []
        for attempt in (
            lambda: session.examine("Nope"),
            lambda: session.append("Nope", message("y")),
            lambda: session.status("Nope", ["MESSAGES"]),
        ):
            with pytest.raises(IMAPNoSuchMailbox) as caught:
                await attempt()
            errors.append(caught.value)
        await session.examine("INBOX")
        with pytest.raises(IMAPNoSuchMailbox):
            await session.uid_copy((await session.uid_search([b"ALL"])), "Nope")
        return session.selected

    state = await pool.run(account_for(services, email, password), operation, read_only=False)
    assert state is not None and state.name == "INBOX"


@pytest_twisted.ensureDeferred
async def test_non_ascii_folder_names_round_trip(services: Services, pools: Any) -> None:
    """A folder named with accents and CJK is created, listed, selected and filled by name."""
    email, password = fresh_user(services)
    name = "Résumé/Ünïcødé 日本 & co"
    pool = pools()
    recorder = Recorder(pool)

    async def operation(session: Any) -> Any:
        await session.create_mailbox(name)
        names = [b.name for b in await session.list_mailboxes()]
        uid = (await session.append(name, message("in a unicode folder"))).uid
        state = await session.examine(name)
        items = await session.fetch(str(uid), "(ENVELOPE)")
        with_status = await session.list_mailboxes_status(["MESSAGES", "UNSEEN"])
        return names, state, items, with_status

    names, state, items, with_status = await pool.run(
        account_for(services, email, password), operation, read_only=False
    )
    counts = {box.name: status for box, status in with_status}
    assert counts[name] == {"MESSAGES": 1, "UNSEEN": 1}
    parent = next(box for box, _ in with_status if box.name == "Résumé")
    assert counts["Résumé"] == ({} if not parent.selectable else {"MESSAGES": 0, "UNSEEN": 0})
    assert counts["INBOX"] == {"MESSAGES": 0, "UNSEEN": 0}
    assert name in names and "Résumé" in names
    assert state.name == name and state.exists == 1
    assert items[0].envelope.subject == "in a unicode folder"
    create_args = [a for _, c, a in recorder.events if c == "CREATE"]
    assert create_args == ['"R&AOk-sum&AOk-/&ANw-n&AO8-c&APg-d&AOk- &ZeVnLA- &- co"']


@pytest_twisted.ensureDeferred
async def test_hostile_arguments_refused_before_sending(services: Services, pools: Any) -> None:
    """Injection attempts in UIDs, flags, names and search tokens fail before any command."""
    email, password = fresh_user(services)
    services.deliver(email, message("x"))
    pool = pools()
    recorder = Recorder(pool)

    async def operation(session: IMAPSession) -> None:
        await session.select("INBOX")
        recorder.clear()
        attempts = [
            lambda: session.uid_store([True], "+FLAGS", ["\\Seen"]),  # type: ignore[list-item]
            lambda: session.uid_store([0], "+FLAGS", ["\\Seen"]),
            lambda: session.uid_store([1], "+FLAGS", ["\\Seen)\r\nX2 EXPUNGE\r\nX3 NOOP ("]),
            lambda: session.uid_store([1], "+FLAGS", ["\\Recent"]),
            lambda: session.uid_copy([1], "INBOX\r\nX4 DELETE Trash"),
            lambda: session.uid_search([b"ALL\r\nX1 DELETE INBOX"]),
            lambda: session.uid_search([b"SUBJECT {5}"]),
            lambda: session.fetch("1:*", "(BODY[])\r\nX5 EXPUNGE"),
            lambda: session.fetch("1:*\r\n", "(FLAGS)"),
            lambda: session.fetch("1", "(RFC822)"),
            lambda: session.append("INBOX", b"x", date="tomorrow"),
            lambda: session.uid_expunge([]),
        ]
        for attempt in attempts:
            with pytest.raises(IMAPError):
                await attempt()

    await pool.run(account_for(services, email, password), operation, read_only=False)
    assert recorder.commands == []
