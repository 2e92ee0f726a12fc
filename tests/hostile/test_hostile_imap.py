"""
IMAP server misbehaviour (docs/threat-model.rst, IM) with scripted servers written as
real Twisted protocols on 127.0.0.1 (`tests.hostile.scripted_imap`), driven
through the real `IMAPPool` in-process and, for a stalling server, through
a real ``twistd mailmcp`` daemon and MCP ``tools/call`` while another user
keeps being served by the real Dovecot.

Each case: a clean `IMAPError` (or ``isError`` result) within the configured
timeout, no connection left open on either side, no credentials ever sent
to a server that strips STARTTLS or fails TLS verification.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from mailmcp._tls import MailTLS
from mailmcp.mail._mailbox_api import IMAPError
from mailmcp.mail.imap import IMAPPool
from tests.harness import Services, generate_client
from tests.helpers import until
from tests.hostile import mcp_http
from tests.hostile.imap_accounts import (
    dovecot_account,
    read_message,
    scripted_account,
    scripted_imap_client,
)
from tests.hostile.scripted_imap import MESSAGE, ScriptedIMAPFactory, listen

pytestmark = pytest.mark.integration

TIMEOUT = 1.0


@pytest.fixture
def servers() -> Iterator[Any]:
    """Start scripted IMAP servers; all are stopped (and their connections cut) afterwards."""
    started: list[tuple[ScriptedIMAPFactory, Any]] = []

    async def start(behaviour: str, tls_svc: Any = None) -> tuple[ScriptedIMAPFactory, int]:
        factory, port = await listen(reactor, behaviour, tls_svc=tls_svc)
        started.append((factory, port))
        return factory, port.getHost().port

    yield start
    for factory, port in started:
        factory.close_all()
        pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def pool(services: Services) -> Iterator[IMAPPool]:
    """A pool trusting the harness CA, with a short command timeout; stopped afterwards."""
    made = IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=TIMEOUT, wait_timeout=5)
    made.startService()
    yield made
    pytest_twisted.blockon(made.stopService())


async def settle(factory: ScriptedIMAPFactory, pool: IMAPPool, seconds: float = 3.0) -> None:
    """Wait (bounded) until neither side keeps a connection open."""
    deadline = time.monotonic() + seconds
    while (factory.open or pool.open_connections) and time.monotonic() < deadline:
        await deferLater(reactor, 0.05, lambda: None)


CASES = [
    # behaviour, expected text in the error, most connections the server may see
    ("no-greeting", "did not answer greeting", 2),
    ("stall", "did not answer EXAMINE", 2),
    ("reset-literal", "lost while reading a message", 2),
    ("giant-literal", "over the 67108864-byte limit", 1),
    ("long-line", "line longer than", 1),
]


@pytest.mark.parametrize("behaviour, expected, max_connections", CASES)
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest_twisted.ensureDeferred
async def test_misbehaving_server_is_a_clean_bounded_error(
    services: Services, servers: Any, behaviour: str, expected: str,
    max_connections: int, tls: bool,
) -> None:
    """
    IM-01 (no greeting), IM-02 (stall mid-session), IM-03 (RST inside a FETCH
    literal), IM-08 (giant literal) and IM-09 (endless line), over plain and
    implicit TLS: the read fails with a clear IMAPError within the timeout
    (a transient failure is retried once, on a fresh connection, so at most
    twice the timeout), no partial message is returned, and afterwards no
    connection stays open on either side; the same pool then reads the
    real Dovecot fine.
    """
    factory, port = await servers(behaviour, services.svc if tls else None)
    account = scripted_account(port, "tls" if tls else "plain", "localhost" if tls else "127.0.0.1")
    clock = Clock()
    # The slot hold differs from TIMEOUT so that the only timer due at
    # now + TIMEOUT is the greeting's or the command's deadline.
    pool = IMAPPool(reactor, MailTLS(services.ca_file), clock=clock, command_timeout=TIMEOUT,
                    wait_timeout=5, connect_slot_hold=TIMEOUT / 4)
    try:
        reading = Deferred.fromCoroutine(pool.run(account, read_message, read_only=True))
        # Where the server stalls, time passes only when it is stuck: one
        # stuck point per attempt (a connection never greeted, an EXAMINE
        # never answered), and then exactly one deadline.
        stuck = {"no-greeting": lambda: factory.connections,
                 "stall": lambda: factory.verbs.count(b"EXAMINE")}.get(behaviour)
        attempts = 0
        while stuck is not None and not reading.called and attempts < 2:
            await until(lambda: reading.called or (stuck() > attempts and deadline_due(clock)),
                        f"attempt {attempts + 1} to get stuck")
            if not reading.called:
                attempts += 1
                clock.advance(TIMEOUT)
        with pytest.raises(IMAPError) as info:
            await reading
        assert expected in info.value.message, info.value.message
        assert "scripted-pw" not in info.value.message
        # Within the timeout, retried once: at most twice the timeout of
        # clock time; a failure the data causes takes none.
        assert clock.seconds() <= 2 * TIMEOUT if stuck else clock.seconds() == 0
        assert 1 <= factory.connections <= max_connections
        await settle(factory, pool)
        assert pool.open_connections == 0 and not factory.open
        body = await pool.run(dovecot_account(services), lambda s: s.examine("INBOX"), read_only=True)
        assert body.uidvalidity > 0
    finally:
        stopping = pool.stopService()
        clock.advance(pool.logout_timeout)
        await stopping


def deadline_due(clock: Clock) -> bool:
    """A greeting or command deadline is pending on C{clock} (due exactly TIMEOUT from now)."""
    return any(abs(call.getTime() - (clock.seconds() + TIMEOUT)) < 1e-9 for call in clock.getDelayedCalls())


@pytest_twisted.ensureDeferred
async def test_normal_scripted_server_reads_fine(servers: Any, pool: IMAPPool) -> None:
    """The scripted server's normal behaviour is real IMAP: the pool logs in and reads the message whole."""
    factory, port = await servers("normal")
    assert await pool.run(scripted_account(port), read_message, read_only=True) == MESSAGE
    assert factory.saw_credentials


@pytest.mark.parametrize("behaviour, expected", [
    ("strip-starttls", "does not offer STARTTLS"),
    ("starttls-bad", "refused STARTTLS"),
])
@pytest_twisted.ensureDeferred
async def test_starttls_stripping_never_sends_credentials(
    servers: Any, pool: IMAPPool, behaviour: str, expected: str
) -> None:
    """IM-05: a starttls account on a port without STARTTLS, or whose STARTTLS is refused: no LOGIN/AUTHENTICATE ever arrives."""
    factory, port = await servers(behaviour)
    for read_only in (True, False):
        with pytest.raises(IMAPError) as info:
            await pool.run(scripted_account(port, "starttls", "localhost"), read_message, read_only=read_only)
        assert expected in info.value.message
    await settle(factory, pool)
    assert not factory.saw_credentials, factory.lines
    assert all(b"scripted-pw" not in line for line in factory.lines)
    assert pool.open_connections == 0


@pytest_twisted.ensureDeferred
async def test_untrusted_tls_certificate_never_gets_credentials(servers: Any, services: Services) -> None:
    """IM-06: implicit TLS with a certificate from a CA the client does not trust: refused, nothing after the handshake."""
    factory, port = await servers("normal", services.svc)
    untrusting = IMAPPool(reactor, MailTLS(None), command_timeout=TIMEOUT)
    try:
        with pytest.raises(IMAPError) as info:
            await untrusting.run(scripted_account(port, "tls", "localhost"), read_message, read_only=False)
        assert "TLS" in info.value.message and "no credentials were sent" in info.value.message
        assert factory.lines == [] and not factory.saw_credentials
    finally:
        await untrusting.stopService()


# -- through the real daemon ----------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["stall", "reset-literal"])
@pytest_twisted.ensureDeferred
async def test_daemon_answers_is_error_and_keeps_serving_alice(
    services: Services, daemon_factory: Any, servers: Any, behaviour: str
) -> None:
    """
    A real daemon (``--imap-timeout 2``) with a client provisioned for a
    scripted server that accepts the login check and then misbehaves:
    ``tools/call`` answers HTTP 200 with ``isError`` and a clear reason
    within the timeout (stall: EXAMINE never answered; reset: the FETCH
    literal cut short), while alice on the real Dovecot is served normally
    during the stall; the daemon logs no traceback.
    """
    factory, port = await servers(behaviour)
    daemon = daemon_factory(services, "--imap-timeout", "2")
    scripted_client = scripted_imap_client(daemon, services, port)
    alice_client = generate_client(daemon.state_dir, services)
    bad = await threads.deferToThread(mcp_http.login, daemon.base_url, scripted_client,
                                      "alice@example.test", "alicepw", "127.3.0.1")
    good = await threads.deferToThread(mcp_http.login, daemon.base_url, alice_client,
                                       "alice@example.test", "alicepw", "127.3.0.2")
    assert factory.saw_credentials  # the login check logged in, and out
    started = time.monotonic()
    tool, arguments = (("list_mail_messages", {"folder": "INBOX"}) if behaviour == "stall"
                       else ("get_mail_message", {"folder": "INBOX", "uid": 1}))
    hostile = threads.deferToThread(mcp_http.call, daemon.base_url, bad["access_token"], tool, arguments)
    await deferLater(reactor, 0.3, lambda: None)
    normal = await threads.deferToThread(mcp_http.call, daemon.base_url, good["access_token"],
                                         "list_mail_messages", {"folder": "INBOX"})
    assert normal.get("isError") is not True, normal
    if behaviour == "stall":
        assert not hostile.called  # alice was served while the scripted call hangs
    result = await hostile
    elapsed = time.monotonic() - started
    assert result["isError"] is True
    text = mcp_http.text_of(result)
    assert ("did not answer" in text) if behaviour == "stall" else ("lost while reading" in text), text
    assert "alicepw" not in text
    assert elapsed < 2 * 2 + 3.0, elapsed
    again = await threads.deferToThread(mcp_http.call, daemon.base_url, good["access_token"], "list_mailboxes")
    assert again.get("isError") is not True
    log = daemon.log_text()
    assert "Traceback" not in log and "#error]" not in log and "#critical]" not in log, log[-3000:]


@pytest.mark.parametrize("behaviour", ["strip-starttls", "starttls-bad"])
@pytest_twisted.ensureDeferred
async def test_login_page_never_sends_credentials_to_a_stripping_server(
    services: Services, daemon_factory: Any, servers: Any, behaviour: str
) -> None:
    """
    IM-05 at the login page of a real daemon: a client provisioned for
    ``starttls`` whose server does not offer STARTTLS (or refuses it) gets a
    generic "unreachable"-style refusal (no redirect, no code, no host or
    port in the page), and the scripted server never receives LOGIN or
    AUTHENTICATE.
    """
    from benchmarks._clients import LoginFailed

    factory, port = await servers(behaviour)
    daemon = daemon_factory(services, "--imap-timeout", "2")
    client = scripted_imap_client(daemon, services, port, "starttls", "localhost")
    with pytest.raises(LoginFailed) as info:
        await threads.deferToThread(mcp_http.login, daemon.base_url, client, "alice@example.test",
                                    "alicepw", "127.3.1.1")
    text = str(info.value)
    assert text.startswith("POST /oauth/authorize: ") and " 303 " not in text[:30], text
    assert str(port) not in text and "alicepw" not in text
    assert factory.connections >= 1
    assert not factory.saw_credentials, factory.lines


@pytest_twisted.ensureDeferred
async def test_twenty_calls_on_a_stalling_server_stay_bounded(servers: Any, services: Services) -> None:
    """
    IM-16 with IM-02: 20 concurrent reads for one account whose server
    stalls after login: never more than 4 connections at the server at once,
    every call fails (timeout, or "busy" for the queued ones) within the
    bounded time on the pool's clock, none hangs, and nothing stays open
    afterwards.
    """
    from twisted.internet.defer import DeferredList
    from twisted.internet.task import LoopingCall

    factory, port = await servers("stall")
    peak = 0

    def watch() -> None:
        nonlocal peak
        peak = max(peak, len(factory.open))

    clock = Clock()
    pool = IMAPPool(reactor, MailTLS(services.ca_file), clock=clock, command_timeout=TIMEOUT,
                    wait_timeout=5, connect_slot_hold=TIMEOUT / 4)
    watcher = LoopingCall(watch)
    watcher.start(0.01)
    account = scripted_account(port)
    # Each attempt waits at most wait_timeout (5 s) for a slot, then runs at
    # most one command timeout; a read has two attempts.
    bound = 2 * (5 + TIMEOUT)
    step = TIMEOUT / 4
    try:
        calls = DeferredList(
            [Deferred.fromCoroutine(pool.run(account, read_message, read_only=True)) for _ in range(20)],
            consumeErrors=True)
        # Clock time passes only while the network has nothing to do: every
        # connection at the server is stuck on a command it will never answer.
        for _ in range(int(bound / step) + 1):
            await until(lambda: calls.called or all(p.stalled for p in factory.open),
                        "every open connection to be stuck")
            if calls.called:
                break
            clock.advance(step)
            await deferLater(reactor, 0.01, lambda: None)  # let the network react to the deadline
        assert calls.called, f"still running at {clock.seconds()} s of clock time"
        results = await calls
    finally:
        watcher.stop()
    errors = [r.value.message for ok, r in results if not ok and isinstance(r.value, IMAPError)]
    assert len(errors) == 20, results
    assert all("did not answer" in e or "busy" in e for e in errors), set(errors)
    assert peak <= 4, peak
    assert clock.seconds() <= bound, clock.seconds()
    try:
        await settle(factory, pool)
        assert pool.open_connections == 0 and not factory.open
    finally:
        stopping = pool.stopService()
        clock.advance(pool.logout_timeout)
        await stopping


@pytest_twisted.ensureDeferred
async def test_giant_greeting_literal_is_refused_at_once(servers: Any, pool: IMAPPool) -> None:
    """IM-08 at the greeting: the pool's client hangs up at the announcement, long before the data adds up."""
    factory, port = await servers("giant-greeting")
    clock = Clock()  # never advanced: no deadline can be what ends the read
    clocked = IMAPPool(reactor, MailTLS(None), clock=clock, command_timeout=TIMEOUT, wait_timeout=5)
    try:
        with pytest.raises(IMAPError) as info:
            await clocked.run(scripted_account(port), read_message, read_only=False)
        assert "99999999999-byte literal" in info.value.message
        assert clock.seconds() == 0
        await settle(factory, clocked)
    finally:
        await clocked.stopService()
    assert factory.streamed < 64 << 20 and not factory.saw_credentials


@pytest_twisted.ensureDeferred
async def test_login_check_refuses_a_giant_literal_at_once(
    services: Services, daemon_factory: Any, servers: Any
) -> None:
    """
    IM-08 at the login page of a real daemon: an IMAP server whose greeting
    announces a 99,999,999,999-byte literal and then streams data is cut
    off at once -- the login fails within seconds, not at the 20 s
    validation deadline, and the daemon reads (and spools to temporary
    files) only a bounded amount, never the stream.
    """
    from benchmarks._clients import LoginFailed

    factory, port = await servers("giant-greeting")
    daemon = daemon_factory(services)
    client = scripted_imap_client(daemon, services, port)
    started = time.monotonic()
    with pytest.raises(LoginFailed):
        await threads.deferToThread(mcp_http.login, daemon.base_url, client, "alice@example.test",
                                    "alicepw", "127.3.2.1")
    elapsed = time.monotonic() - started  # a real daemon: its 20 s deadline is wall-clock
    await until(lambda: not factory.open, "the daemon to stop reading the stream")
    assert factory.streamed < 64 << 20, factory.streamed
    assert elapsed < 5, elapsed
    assert not factory.saw_credentials


@pytest_twisted.ensureDeferred
async def test_login_check_cuts_off_endless_untagged_lines(
    services: Services, daemon_factory: Any, servers: Any
) -> None:
    """
    A server that greets and then streams ``* OK`` lines forever: the login
    page's IMAP check gives up after a bounded amount (no memory or log
    flood until the 20 s deadline) -- even though the server answers the
    login OK somewhere in the stream -- and the login fails within seconds.
    """
    from benchmarks._clients import LoginFailed

    factory, port = await servers("endless-untagged")
    daemon = daemon_factory(services)
    client = scripted_imap_client(daemon, services, port)
    started = time.monotonic()
    with pytest.raises(LoginFailed):
        await threads.deferToThread(mcp_http.login, daemon.base_url, client, "alice@example.test",
                                    "alicepw", "127.3.3.1")
    assert time.monotonic() - started < 5  # a real daemon: its 20 s deadline is wall-clock
    await until(lambda: not factory.open, "the daemon to stop reading the stream")
    assert factory.streamed < 64 << 20, factory.streamed
    assert len(daemon.log_text()) < 1 << 20


@pytest_twisted.ensureDeferred
async def test_sigterm_with_a_call_stuck_on_a_stalling_server(
    services: Services, daemon_factory: Any, servers: Any
) -> None:
    """
    Graceful shutdown (docs/threat-model.rst, Reliability goals) with a call that cannot finish: the
    daemon (``--shutdown-timeout 2``, ``--imap-timeout 30``) stops within
    a few seconds of SIGTERM, exits 0, and the stuck call ends (an answer
    or a closed connection) instead of holding the shutdown for the IMAP
    timeout.
    """
    import signal

    factory, port = await servers("stall")
    daemon = daemon_factory(services, "--imap-timeout", "30", "--shutdown-timeout", "2")
    client = scripted_imap_client(daemon, services, port)
    token = (await threads.deferToThread(mcp_http.login, daemon.base_url, client, "alice@example.test",
                                         "alicepw", "127.3.4.1"))["access_token"]
    stuck = threads.deferToThread(mcp_http.rpc, daemon.base_url, token, "tools/call",
                                  {"name": "list_mailboxes", "arguments": {}})
    stuck.addErrback(lambda f: f.value)
    await deferLater(reactor, 0.5, lambda: None)
    assert not stuck.called
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    outcome = await stuck
    code = await threads.deferToThread(daemon.process.wait, 20)
    elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 8, elapsed
    print(f"stuck call outcome after SIGTERM: {outcome!r:.300}")
    log = daemon.log_text()
    assert "Traceback" not in log and "#critical]" not in log, log[-3000:]


@pytest_twisted.ensureDeferred
async def test_certificate_for_another_host_never_gets_credentials(services: Services) -> None:
    """
    IM-06: implicit TLS on 127.0.0.2 with a certificate (from the trusted CA)
    that names only localhost and 127.0.0.1: refused as a TLS failure,
    nothing after the handshake reaches the server.
    """
    factory, port = await listen(reactor, "normal", tls_svc=services.svc, interface="127.0.0.2")
    pool = IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=TIMEOUT)
    try:
        with pytest.raises(IMAPError) as info:
            await pool.run(scripted_account(port.getHost().port, "tls", "127.0.0.2"), read_message,
                           read_only=False)
        assert "TLS" in info.value.message and "no credentials were sent" in info.value.message
        assert factory.lines == [] and not factory.saw_credentials
    finally:
        await pool.stopService()
        factory.close_all()
        await port.stopListening()


@pytest.mark.parametrize("host, works", [("localhost", True), ("127.0.0.2", False)])
@pytest_twisted.ensureDeferred
async def test_starttls_then_certificate_for_another_host(services: Services, host: str, works: bool) -> None:
    """
    IM-05 third variant: a server that does STARTTLS for real, with a
    certificate naming localhost/127.0.0.1.  Reached as localhost the
    upgrade verifies and the read works; reached as 127.0.0.2 the
    certificate names another host: refused, and LOGIN never arrives.
    """
    factory, port = await listen(reactor, "starttls-ok", tls_svc=services.svc, interface="127.0.0.2"
                                 if not works else "127.0.0.1")
    pool = IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=TIMEOUT)
    try:
        account = scripted_account(port.getHost().port, "starttls", host)
        if works:
            assert await pool.run(account, read_message, read_only=False) == MESSAGE
            assert factory.saw_credentials
        else:
            with pytest.raises(IMAPError) as info:
                await pool.run(account, read_message, read_only=False)
            assert "TLS" in info.value.message and "no credentials were sent" in info.value.message
            assert not factory.saw_credentials, factory.lines
    finally:
        await pool.stopService()
        factory.close_all()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_fifty_thousand_mailboxes_are_listed_without_status_storm(servers: Any, pool: IMAPPool) -> None:
    """
    IM-09 (LIST with 50,000 mailboxes) through list_mailboxes: answered in
    a few seconds with every name, without one STATUS per folder (counts
    left out, and said so).
    """
    from mailmcp._toolkit import ToolContext
    from mailmcp.testing import tool_services
    from mailmcp.tools._reading import ListMailboxesInput, list_mailboxes

    factory, port = await servers("many-mailboxes")
    ctx = ToolContext(account=scripted_account(port), services=tool_services(reactor=reactor, imap=pool))
    started = time.monotonic()
    result = await list_mailboxes(ctx, ListMailboxesInput())
    assert time.monotonic() - started < 10
    assert result.total == 50_001 and result.counts_included is False
    assert factory.verbs.count(b"STATUS") == 0


@pytest_twisted.ensureDeferred
async def test_send_while_imap_stalls_is_reported_and_never_duplicated(
    services: Services, daemon_factory: Any, servers: Any
) -> None:
    """
    send_mail_message for an account whose IMAP server stalls after login
    (SMTP is the real Postfix): without an idempotency key the mail goes
    out once and the result says it was not saved to Sent (SM-08); with a
    key the pre-send check in Sent fails, the call says nothing was sent,
    and indeed nothing arrives.  Both within the IMAP timeout.
    """
    from tests.integration.mail_live import _inbox, fresh_users

    (rcpt, rcpt_pw), = fresh_users(services, 1)
    factory, port = await servers("stall")
    daemon = daemon_factory(services, "--imap-timeout", "2")
    client = scripted_imap_client(daemon, services, port)
    token = (await threads.deferToThread(mcp_http.login, daemon.base_url, client, "alice@example.test",
                                         "alicepw", "127.3.5.1"))["access_token"]
    started = time.monotonic()
    plain = await threads.deferToThread(mcp_http.call, daemon.base_url, token, "send_mail_message",
                                        {"to": rcpt, "subject": "stalled sent copy", "text_body": "once"})
    keyed = await threads.deferToThread(mcp_http.call, daemon.base_url, token, "send_mail_message",
                                        {"to": rcpt, "subject": "keyed", "text_body": "never",
                                         "idempotency_key": "k-stall"})
    assert time.monotonic() - started < 2 * (2 * 2 + 3)
    assert plain.get("isError") is not True, plain
    assert any("sent" in w.lower() for w in plain["structuredContent"]["warnings"]), plain
    assert keyed["isError"] is True
    assert "nothing was sent" in mcp_http.text_of(keyed).lower() or "not sent" in mcp_http.text_of(keyed).lower(), \
        mcp_http.text_of(keyed)
    await deferLater(reactor, 2.0, lambda: None)
    got = await threads.deferToThread(_inbox, services, rcpt, rcpt_pw)
    assert [b"stalled sent copy" in m for m in got].count(True) == 1
    assert not any(b"Subject: keyed" in m for m in got)


@pytest_twisted.ensureDeferred
async def test_password_changed_after_login_is_one_login_per_call(
    services: Services, daemon_factory: Any, servers: Any
) -> None:
    """
    IM-04 through a real daemon: the IMAP server accepted the login check,
    then refuses the password (NO [AUTHENTICATIONFAILED]).  Each tool call
    is an isError telling the user to sign in again, distinct from a
    temporary failure, after exactly one LOGIN -- never a retry loop.
    """
    factory, port = await servers("login-once")
    daemon = daemon_factory(services, "--imap-timeout", "2")
    client = scripted_imap_client(daemon, services, port)
    token = (await threads.deferToThread(mcp_http.login, daemon.base_url, client, "alice@example.test",
                                         "alicepw", "127.3.6.1"))["access_token"]
    assert factory.verbs.count(b"LOGIN") == 1
    for expected_logins in (2, 3):
        result = await threads.deferToThread(mcp_http.call, daemon.base_url, token, "list_mail_messages",
                                             {"folder": "INBOX"})
        assert result["isError"] is True
        text = mcp_http.text_of(result)
        assert "rejected the login" in text and "sign in again" in text, text
        assert factory.verbs.count(b"LOGIN") == expected_logins
