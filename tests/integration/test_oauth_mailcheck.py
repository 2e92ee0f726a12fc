"""
The login page's live credential checks against the real Dovecot and
Postfix: implicit TLS, mandatory STARTTLS, plain only where configured, and
refusal to send credentials when TLS cannot be had or verified.
"""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater

from mailmcp._tls import MailTLS
from mailmcp.mail._mailcheck import (
    IMAPLoginChecker,
    LoginRejected,
    MailServerUnavailable,
    SMTPLoginChecker,
)
from mailmcp.oauth._clients import MailServer
from tests.helpers import ClockedReactor, until

pytestmark = pytest.mark.integration


@pytest.fixture
def tls(services):
    return MailTLS(services.ca_file)


async def outcome(d):
    try:
        await d
    except (LoginRejected, MailServerUnavailable) as e:
        return e
    return None


@pytest_twisted.ensureDeferred
async def test_imap_implicit_tls_accepts_and_rejects(services, tls) -> None:
    """IMAPS with the right password passes; a wrong one is LoginRejected."""
    checker = IMAPLoginChecker(reactor, tls, timeout=10)
    server = MailServer("localhost", services.imaps_port, "tls")
    assert await outcome(checker.check(server, "alice@example.test", "alicepw")) is None
    result = await outcome(checker.check(server, "alice@example.test", "WRONG"))
    assert isinstance(result, LoginRejected)


@pytest_twisted.ensureDeferred
async def test_imap_starttls_and_plain(services, tls) -> None:
    """STARTTLS on the IMAP port passes; plain (loopback only) passes as configured."""
    checker = IMAPLoginChecker(reactor, tls, timeout=10)
    for security in ("starttls", "plain"):
        server = MailServer("localhost", services.imap_port, security)
        assert await outcome(checker.check(server, "bob@example.test", "bobpw")) is None, security


@pytest_twisted.ensureDeferred
async def test_imap_non_ascii_and_quotes_password(services, tls) -> None:
    """OA-22: passwords with quotes, backslashes and non-ASCII reach Dovecot intact."""
    password = 'pä"ss\\wörd'
    with open(services.svc / "users", "a", encoding="utf-8") as f:
        f.write(f"quoted@example.test:{{PLAIN}}{password}::::::\n")
    # Dovecot re-reads the passwd-file when its mtime changes: make sure it does.
    stamp = time.time() + 5
    os.utime(services.svc / "users", (stamp, stamp))
    checker = IMAPLoginChecker(reactor, tls, timeout=10)
    server = MailServer("localhost", services.imaps_port, "tls")
    # Dovecot notices the changed passwd-file asynchronously: allow it a moment.
    for _ in range(4):
        result = await outcome(checker.check(server, "quoted@example.test", password))
        if result is None:
            break
        await deferLater(reactor, 1.0)
    assert result is None


@pytest_twisted.ensureDeferred
async def test_imap_untrusted_certificate_refused(services) -> None:
    """Without the test CA the server's certificate is not trusted: unavailable, no login."""
    checker = IMAPLoginChecker(reactor, MailTLS(None), timeout=10)
    server = MailServer("localhost", services.imaps_port, "tls")
    result = await outcome(checker.check(server, "alice@example.test", "alicepw"))
    assert isinstance(result, MailServerUnavailable)


@pytest_twisted.ensureDeferred
async def test_imap_starttls_missing_refuses_cleartext(tls) -> None:
    """A server that offers no STARTTLS never receives the LOGIN (no cleartext fallback)."""
    received: list[bytes] = []

    class NoTLS(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n")

        def dataReceived(self, data: bytes) -> None:
            received.append(data)
            for line in data.split(b"\r\n"):
                if line.endswith(b"CAPABILITY"):
                    tag = line.split(b" ")[0]
                    self.transport.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n")

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(NoTLS))
    try:
        checker = IMAPLoginChecker(reactor, tls, timeout=5)
        server = MailServer("127.0.0.1", port.getHost().port, "starttls")
        result = await outcome(checker.check(server, "alice@example.test", "secret-pw"))
        assert isinstance(result, MailServerUnavailable)
        assert result.reason == "no-starttls"
        assert not any(b"LOGIN" in chunk or b"secret-pw" in chunk for chunk in received)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_imap_stalled_server_times_out(tls) -> None:
    """A server that accepts and never greets is unavailable at the deadline, not before."""
    accepted: list[Protocol] = []

    class Silent(Protocol):
        def connectionMade(self) -> None:
            accepted.append(self)

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Silent))
    try:
        clock = Clock()
        checker = IMAPLoginChecker(ClockedReactor(reactor, clock), tls, timeout=1)
        checking = Deferred.fromCoroutine(
            outcome(checker.check(MailServer("127.0.0.1", port.getHost().port, "tls"), "a", "b"))
        )
        await until(lambda: accepted, "the checker to connect")
        clock.advance(0.9)
        assert not checking.called
        clock.advance(0.1)
        result = await checking
        assert isinstance(result, MailServerUnavailable) and result.reason == "timeout"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_imap_connection_refused(tls) -> None:
    """Nothing listening: unavailable."""
    from tests.harness import free_port

    checker = IMAPLoginChecker(reactor, tls, timeout=5)
    result = await outcome(checker.check(MailServer("127.0.0.1", free_port(), "tls"), "a", "b"))
    assert isinstance(result, MailServerUnavailable)


@pytest_twisted.ensureDeferred
async def test_smtp_implicit_tls_accepts_and_rejects(services, tls) -> None:
    """SMTPS AUTH with the right password passes; a wrong one is LoginRejected."""
    checker = SMTPLoginChecker(reactor, tls, timeout=10)
    server = MailServer("localhost", services.smtps_port, "tls")
    assert await outcome(checker.check(server, "alice@example.test", "alicepw")) is None
    result = await outcome(checker.check(server, "alice@example.test", "WRONG-SMTP"))
    assert isinstance(result, LoginRejected)
    assert "WRONG-SMTP" not in str(result)


@pytest_twisted.ensureDeferred
async def test_smtp_starttls_and_plain(services, tls) -> None:
    """Submission with mandatory STARTTLS passes; plain AUTH on the loopback plain port passes when configured."""
    checker = SMTPLoginChecker(reactor, tls, timeout=10)
    ok = await outcome(checker.check(MailServer("localhost", services.submission_port, "starttls"),
                                     "carol@example.test", "carolpw"))
    assert ok is None
    ok = await outcome(checker.check(MailServer("localhost", services.smtp_plain_port, "plain"),
                                     "carol@example.test", "carolpw"))
    assert ok is None


@pytest_twisted.ensureDeferred
async def test_smtp_starttls_required_on_cleartext_server(services, tls) -> None:
    """A server without STARTTLS, configured as starttls: unavailable, AUTH never sent."""
    checker = SMTPLoginChecker(reactor, tls, timeout=10)
    result = await outcome(checker.check(MailServer("localhost", services.smtp_plain_port, "starttls"),
                                         "carol@example.test", "carolpw"))
    assert isinstance(result, MailServerUnavailable)
    assert result.reason == "tls"


@pytest_twisted.ensureDeferred
async def test_smtp_untrusted_certificate_refused(services) -> None:
    """Without the test CA: unavailable."""
    checker = SMTPLoginChecker(reactor, MailTLS(None), timeout=10)
    for port, security in ((services.smtps_port, "tls"), (services.submission_port, "starttls")):
        result = await outcome(checker.check(MailServer("localhost", port, security), "a@example.test", "x"))
        assert isinstance(result, MailServerUnavailable), security
