"""
`IMAPPool` without sockets: an in-memory endpoint connects each pooled
protocol to a scripted IMAP server on a ``StringTransport``, and a
``Clock`` drives every deadline, so waits, timeouts and caps are exact.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mailmcp._account import MailAccount
from mailmcp._tls import MailTLS
from mailmcp.mail._mailbox_api import IMAPAuthError, IMAPError, IMAPSession
from mailmcp.mail.imap import IMAPPool
from mailmcp.oauth._clients import MailServer
from tests.unit.imap_script import ScriptedEndpoint, ScriptedServer


def account(password: str = "pw", user: str = "alice@example.test") -> MailAccount:
    server = MailServer(host="127.0.0.1", port=143, security="plain")
    return MailAccount(
        owner="g", email=user, full_name="", imap=server, imap_username=user,
        imap_password=password, smtp=server, smtp_username=user, smtp_password=password,
    )  # fmt: skip


def make_pool(server: ScriptedServer, clock: Clock, **kwargs: Any) -> IMAPPool:
    kwargs.setdefault("command_timeout", 30.0)
    return IMAPPool(
        None,
        MailTLS(None),
        clock=clock,
        endpoint_factory=lambda _a: ScriptedEndpoint(server),
        **kwargs,
    )


def run(pool: IMAPPool, acct: MailAccount, operation: Any, read_only: bool = True) -> Deferred[Any]:
    return Deferred.fromCoroutine(pool.run(acct, operation, read_only=read_only))


def outcome(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


async def noop(session: IMAPSession) -> str:
    await session.noop()
    return "ok"


def test_twenty_concurrent_calls_share_four_connections() -> None:
    """IM-16: 20 calls for one account: at most 4 connections; the rest queue and succeed."""
    server, clock = ScriptedServer(), Clock()
    pool = make_pool(server, clock, pool_size=4)
    gate: Deferred[None] = Deferred()

    async def held(session: IMAPSession) -> str:
        await session.noop()
        await gate
        return "ok"

    calls = [run(pool, account(), held) for _ in range(20)]
    assert server.open == 4 and pool.open_connections == 4
    gate.callback(None)
    assert outcome(gatherResults(calls)) == ["ok"] * 20
    assert server.peak == 4 and server.commands.count(b"LOGIN") == 4
    assert pool.stats["reused"] == 16


def test_wait_timeout_says_busy() -> None:
    """A caller that cannot get a connection within pool_wait_timeout gets 'mailbox busy'."""
    server, clock = ScriptedServer(), Clock()
    pool = make_pool(server, clock, pool_size=1, wait_timeout=5)
    gate: Deferred[None] = Deferred()

    async def held(session: IMAPSession) -> None:
        await gate

    first = run(pool, account(), held)
    second = run(pool, account(), noop)
    clock.advance(4.9)
    assert not second.called
    clock.advance(0.2)
    with pytest.raises(IMAPError, match="mailbox busy, try again"):
        outcome(second)
    gate.callback(None)
    outcome(first)
    assert pool.stats["busy"] == 1 and server.commands.count(b"LOGIN") == 1


def test_connect_timeout_retried_once_for_reads_never_for_writes() -> None:
    """A connect that never completes times out (transient); reads try twice, writes once."""
    server, clock = ScriptedServer(), Clock()
    server.connect_hangs = True
    pool = make_pool(server, clock, command_timeout=10)
    for read_only, attempts in ((True, 2), (False, 1)):
        d = run(pool, account(), noop, read_only=read_only)
        for _ in range(attempts):
            clock.advance(10)
        with pytest.raises(IMAPError, match="could not connect .* within 10 s") as caught:
            outcome(d)
        assert caught.value.transient
    assert pool.stats["retries"] == 1 and pool.open_connections == 0


def test_auth_failure_not_retried_and_logged_out() -> None:
    """A refused LOGIN is IMAPAuthError, never retried; the connection is closed."""
    server, clock = ScriptedServer(), Clock()
    pool = make_pool(server, clock)
    with pytest.raises(IMAPAuthError):
        outcome(run(pool, account(password="bad"), noop))
    assert server.commands.count(b"LOGIN") == 1
    assert server.open == 0 and pool.open_connections == 0


def test_idle_expiry_and_noop_check_on_reuse() -> None:
    """Idle connections are logged out after idle_timeout; one idle > 60 s is NOOP-checked."""
    server, clock = ScriptedServer(), Clock()
    pool = make_pool(server, clock, idle_timeout=300)

    async def select(session: IMAPSession) -> int:
        return (await session.select("INBOX")).exists

    assert outcome(run(pool, account(), select)) == 3
    clock.advance(61)
    server.commands.clear()
    assert outcome(run(pool, account(), select)) == 3
    assert server.commands == [b"NOOP", b"NOOP"]  # health check, then the cached select
    clock.advance(301)
    assert server.commands[-1] == b"LOGOUT" and server.open == 0
    assert pool.stats["expired"] == 1 and pool.open_connections == 0


def test_connection_lost_while_idle_is_dropped() -> None:
    """An idle connection whose server hung up is forgotten at once."""
    server, clock = ScriptedServer(), Clock()
    pool = make_pool(server, clock)
    outcome(run(pool, account(), noop))
    server.transports[0].loseConnection()
    assert pool.open_connections == 0 and pool.idle_count(account()) == 0
    outcome(run(pool, account(), noop))
    assert len(server.transports) == 2


def test_cancelled_operation_discards_its_connection() -> None:
    """A call cancelled mid-command leaves a connection in an unknown state: it is discarded."""
    server, clock = ScriptedServer(), Clock()
    pool = make_pool(server, clock)
    server.stall = True
    d = run(pool, account(), noop)
    d.cancel()
    d.addErrback(lambda f: None)
    assert server.transports[0].closed and pool.open_connections == 0
    server.stall = False
    assert outcome(run(pool, account(), noop)) == "ok"
    assert len(server.transports) == 2


def test_changed_password_never_reuses_old_connection() -> None:
    """The pool key covers the password: a new password gets a new connection."""
    server, clock = ScriptedServer(), Clock()
    pool = make_pool(server, clock)
    outcome(run(pool, account(password="one"), noop))
    outcome(run(pool, account(password="two"), noop))
    assert server.commands.count(b"LOGIN") == 2


def test_global_cap_waits_then_evicts_idle_connection() -> None:
    """At the global cap a call waits; when another account's connection goes idle it is evicted."""
    server, clock = ScriptedServer(), Clock()
    pool = make_pool(server, clock, max_connections=1)
    gate: Deferred[None] = Deferred()

    async def held(session: IMAPSession) -> str:
        await gate
        return "held"

    first = run(pool, account(user="a@example.test"), held)
    second = run(pool, account(user="b@example.test"), noop)
    assert not second.called and server.open == 1
    gate.callback(None)
    assert outcome(first) == "held" and outcome(second) == "ok"
    assert pool.stats["evicted"] == 1 and server.open == 1 and server.peak == 1


def test_stop_service_closes_idle_and_fails_waiters() -> None:
    """stopService logs idle connections out and fails callers still waiting."""
    server, clock = ScriptedServer(), Clock()
    pool = make_pool(server, clock, pool_size=1)
    pool.startService()
    gate: Deferred[None] = Deferred()

    async def held(session: IMAPSession) -> None:
        await gate

    first = run(pool, account(), held)
    waiting = run(pool, account(), noop)
    pool.stopService()
    with pytest.raises(IMAPError, match="shutting down"):
        outcome(waiting)
    gate.callback(None)
    outcome(first)
    assert server.open == 0 and server.commands[-1] == b"LOGOUT"


def test_stop_does_not_wait_long_for_a_silent_logout() -> None:
    """A server that never answers LOGOUT is cut off after logout_timeout on stop."""
    server, clock = ScriptedServer(), Clock()
    pool = make_pool(server, clock, logout_timeout=2)
    outcome(run(pool, account(), noop))
    original = server.answer
    server.answer = lambda transport, line: b"" if b"LOGOUT" in line else original(transport, line)  # type: ignore[method-assign]
    stopped = pool.stopService()
    assert not stopped.called
    clock.advance(2)
    assert stopped.called and server.open == 0


def test_waiter_reconnects_when_the_busy_connection_breaks() -> None:
    """
    With one slot: the holder's connection dies while another caller waits.
    The waiter gets the freed slot and connects afresh; the holder's read is
    retried once and served after it, on the same new connection.
    """
    server, clock = ScriptedServer(), Clock()
    pool = make_pool(server, clock, pool_size=1, wait_timeout=10)
    gate: Deferred[None] = Deferred()
    calls: list[str] = []

    async def held(session: IMAPSession) -> str:
        calls.append("held")
        await gate
        await session.noop()
        return "held"

    holder = run(pool, account(), held)
    waiter = run(pool, account(), noop)
    assert not waiter.called
    server.transports[0].abortConnection()  # the holder's connection dies while it waits
    gate.callback(None)
    assert outcome(waiter) == "ok"
    assert outcome(holder) == "held"
    assert calls == ["held", "held"]
    assert len(server.transports) == 2 and server.open == 1 and server.peak == 1
    assert pool.stats["retries"] == 1 and pool.open_connections == 1


def test_cancel_while_connecting_is_not_retried() -> None:
    """Cancelling a read while its connection is being opened ends it: no retry, no leak."""
    from twisted.internet.defer import CancelledError

    server, clock = ScriptedServer(), Clock()
    server.connect_hangs = True
    pool = make_pool(server, clock)
    d = run(pool, account(), noop, read_only=True)
    d.cancel()
    with pytest.raises(CancelledError):
        outcome(d)
    assert pool.stats["retries"] == 0 and pool.open_connections == 0


def test_connect_gate_bounds_logins_in_progress() -> None:
    """
    At most connect_concurrency new connections are in progress at once;
    the others wait, and all log in as slots free up.
    """
    server, clock = ScriptedServer(), Clock()
    server.connect_hangs = True
    pool = make_pool(server, clock, connect_concurrency=2, connect_slot_hold=1.0)
    calls = [run(pool, account(user=f"u{i}@example.test"), noop) for i in range(5)]
    assert server.connect_attempts == 2 and pool.stats["connect_waits"] == 3
    server.connect_hangs = False
    clock.advance(0.9)
    assert server.connect_attempts == 2
    clock.advance(0.1)  # the two stalled logins give up their slots, not their attempt,
    # and the three waiting ones (now answered at once) log in one after another
    assert server.connect_attempts == 5
    assert [c.called for c in calls] == [False, False, True, True, True]
    assert [outcome(c) for c in calls[2:]] == ["ok"] * 3


def test_connect_gate_releases_at_once_when_logins_are_quick() -> None:
    """With one slot, logins that finish at once run back to back, without waiting for the hold."""
    server, clock = ScriptedServer(), Clock()
    pool = make_pool(server, clock, connect_concurrency=1, connect_slot_hold=60.0)
    calls = [run(pool, account(user=f"u{i}@example.test"), noop) for i in range(4)]
    assert [outcome(c) for c in calls] == ["ok"] * 4
    assert server.commands.count(b"LOGIN") == 4 and clock.seconds() == 0


def test_connect_gate_wait_is_bounded() -> None:
    """
    A login that cannot get a slot within pool_wait_timeout plus
    imap_timeout fails with a clear message (here: a queue of logins to a
    server that never answers, one slot).
    """
    server, clock = ScriptedServer(), Clock()
    server.connect_hangs = True
    pool = make_pool(
        server, clock, connect_concurrency=1, connect_slot_hold=100.0, wait_timeout=5,
        command_timeout=60,
    )  # fmt: skip
    calls = [run(pool, account(user=f"{n}@example.test"), noop, read_only=False) for n in "abc"]
    clock.advance(64.9)
    assert server.connect_attempts == 2 and not calls[2].called
    clock.advance(0.1)
    with pytest.raises(IMAPError, match="busy logging in to other mailboxes"):
        outcome(calls[2])
    with pytest.raises(IMAPError, match="could not connect"):
        outcome(calls[0])  # its own connect timed out at 60 s, freeing the slot for b
    clock.advance(60)
    with pytest.raises(IMAPError, match="could not connect"):
        outcome(calls[1])
    assert server.connect_attempts == 2 and pool.open_connections == 0
