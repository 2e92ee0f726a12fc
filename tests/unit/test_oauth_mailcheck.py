"""
The live login checks as protocols, without sockets: a `MemoryReactorClock`
takes the connection, a `StringTransport` plays the wire, and the test
scripts the server's lines.  Checks what is (and is never) sent.
"""

from __future__ import annotations

import base64

import pytest
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer

from mailmcp._tls import MailTLS
from mailmcp.mail._mailcheck import (
    IMAPLoginChecker,
    LoginRejected,
    MailServerUnavailable,
    SMTPLoginChecker,
)
from mailmcp.oauth._clients import MailServer

PASSWORD = "pw-SECRET-42"


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """A StringTransport that can 'start TLS' (and records that it did)."""

    tls_started = False

    def startTLS(self, contextFactory: object) -> None:
        self.tls_started = True


class Wire:
    def __init__(self, reactor: MemoryReactorClock, transport: StringTransport | None = None) -> None:
        host, port, factory, timeout, bind = reactor.tcpClients[-1]
        self.proto = factory.buildProtocol(None)
        self.transport = transport or TLSStringTransport()
        self.proto.makeConnection(self.transport)

    def feed(self, *lines: bytes) -> None:
        for line in lines:
            self.proto.dataReceived(line + b"\r\n")

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data


def result_of(d):
    out: list = []
    d.addBoth(out.append)
    assert out, "the check has not finished"
    if isinstance(out[0], Failure):
        return out[0].value
    return out[0]


def imap_check(security: str = "plain", timeout: float = 5, password: str = PASSWORD,
               host: str = "127.0.0.1"):
    """A check against a scripted server (``plain`` only to a loopback host, as in the pool)."""
    reactor = MemoryReactorClock()
    checker = IMAPLoginChecker(reactor, MailTLS(None), timeout=timeout)
    d = checker.check(MailServer(host, 143, security), "alice", password)
    return reactor, d


def test_imap_makes_the_pools_login_then_logs_out() -> None:
    """
    The check is the pool's own login (one protocol class for both): LOGIN
    for a printable password even with AUTH=PLAIN offered, then LOGOUT; success.
    """
    reactor, d = imap_check()
    wire = Wire(reactor)
    wire.feed(b"* OK IMAP4rev1 ready")
    assert wire.sent() == b"0001 CAPABILITY\r\n"
    wire.feed(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN", b"0001 OK done")
    assert wire.sent() == b'0002 LOGIN "alice" "' + PASSWORD.encode() + b'"\r\n'
    wire.feed(b"0002 OK [CAPABILITY IMAP4rev1] logged in")
    assert wire.sent() == b"0003 LOGOUT\r\n"
    wire.feed(b"* BYE bye", b"0003 OK bye")
    assert result_of(d) is None


def test_imap_non_ascii_password_goes_as_sasl_plain() -> None:
    """A UTF-8 password that quoted LOGIN cannot carry exactly goes as AUTHENTICATE PLAIN."""
    reactor, d = imap_check(password="pässwörd")
    wire = Wire(reactor)
    wire.feed(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready")
    assert wire.sent() == b"0001 AUTHENTICATE PLAIN\r\n"
    wire.feed(b"+ ")
    assert base64.b64decode(wire.sent().strip()) == b"\0alice\0" + "pässwörd".encode()
    wire.feed(b"0001 OK [CAPABILITY IMAP4rev1] logged in")
    assert wire.sent() == b"0002 LOGOUT\r\n"
    wire.feed(b"* BYE bye", b"0002 OK bye")
    assert result_of(d) is None


def test_imap_plain_refused_to_a_remote_host() -> None:
    """``plain`` to a non-loopback host: unavailable, and no credential is ever written."""
    reactor, d = imap_check(host="imap.example.test")
    wire = Wire(reactor)
    wire.feed(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready")
    assert PASSWORD.encode() not in wire.sent()
    assert isinstance(result_of(d), MailServerUnavailable)


def test_imap_login_quotes() -> None:
    """LOGIN with quoted strings; a NO is LoginRejected."""
    reactor, d = imap_check()
    wire = Wire(reactor)
    wire.feed(b"* OK ready")
    wire.sent()
    wire.feed(b"* CAPABILITY IMAP4rev1", b"0001 OK done")
    assert wire.sent() == b'0002 LOGIN "alice" "' + PASSWORD.encode() + b'"\r\n'
    wire.feed(b"0002 NO [AUTHENTICATIONFAILED] Authentication failed.")
    assert isinstance(result_of(d), LoginRejected)


def test_imap_logindisabled_refused() -> None:
    """LOGINDISABLED and no SASL PLAIN: unavailable, nothing sent."""
    reactor, d = imap_check()
    wire = Wire(reactor)
    wire.feed(b"* OK ready")
    wire.sent()
    wire.feed(b"* CAPABILITY IMAP4rev1 LOGINDISABLED", b"0001 OK done")
    assert PASSWORD.encode() not in wire.sent()
    assert isinstance(result_of(d), MailServerUnavailable)


def test_imap_wrong_password_is_rejected() -> None:
    """A NO to AUTHENTICATE is LoginRejected, whose text carries no secret."""
    reactor, d = imap_check(password="wrong-pässword")
    wire = Wire(reactor)
    wire.feed(b"* OK ready", b"* CAPABILITY IMAP4rev1 AUTH=PLAIN", b"0001 OK done", b"+ ")
    wire.feed(b"0002 NO [AUTHENTICATIONFAILED] Authentication failed.")
    failure = result_of(d)
    assert isinstance(failure, LoginRejected)
    assert "wrong-pässword" not in str(failure)


def test_imap_temporary_failure_is_unavailable() -> None:
    """NO [UNAVAILABLE] is the server's problem, not the user's password."""
    reactor, d = imap_check()
    wire = Wire(reactor)
    wire.feed(b"* OK ready", b"* CAPABILITY IMAP4rev1 AUTH=PLAIN", b"0001 OK done", b"+ ")
    wire.feed(b"0002 NO [UNAVAILABLE] Try later")
    assert isinstance(result_of(d), MailServerUnavailable)


def test_imap_starttls_mandatory() -> None:
    """security=starttls and no STARTTLS advertised: refused before any credential is sent."""
    reactor, d = imap_check("starttls")
    wire = Wire(reactor)
    wire.feed(b"* OK ready", b"* CAPABILITY IMAP4rev1 AUTH=PLAIN", b"0001 OK done")
    failure = result_of(d)
    assert isinstance(failure, MailServerUnavailable) and failure.reason == "no-starttls"
    assert b"AUTHENTICATE" not in wire.sent() and not wire.transport.tls_started


def test_imap_starttls_upgrades_before_login() -> None:
    """security=starttls: STARTTLS first, then the credentials over the upgraded transport."""
    reactor, d = imap_check("starttls")
    wire = Wire(reactor)
    wire.feed(b"* OK ready")
    wire.sent()
    wire.feed(b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED", b"0001 OK done")
    assert wire.sent() == b"0002 STARTTLS\r\n"
    wire.feed(b"0002 OK begin TLS")
    assert wire.transport.tls_started
    assert wire.sent() == b"0003 CAPABILITY\r\n"
    wire.feed(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN", b"0003 OK done")
    assert wire.sent() == b'0004 LOGIN "alice" "' + PASSWORD.encode() + b'"\r\n'


def test_imap_deadline() -> None:
    """A server that never greets: unavailable at the deadline, connection aborted."""
    reactor, d = imap_check(timeout=3)
    wire = Wire(reactor)
    reactor.advance(3.1)
    failure = result_of(d)
    assert isinstance(failure, MailServerUnavailable) and failure.reason == "timeout"
    assert wire.transport.disconnecting


def test_imap_connection_lost_before_greeting() -> None:
    """A lost connection (e.g. a failed TLS handshake) fails the greeting instead of hanging."""
    from twisted.internet.error import ConnectionLost

    reactor, d = imap_check()
    wire = Wire(reactor)
    wire.proto.connectionLost(Failure(ConnectionLost()))
    assert isinstance(result_of(d), MailServerUnavailable)


@pytest.mark.parametrize("username", ["al\rice", "alice\n", "a\0b"])
def test_imap_control_characters_never_sent(username) -> None:
    """CR, LF or NUL in credentials: rejected without any connection."""
    reactor = MemoryReactorClock()
    d = IMAPLoginChecker(reactor, MailTLS(None)).check(MailServer("h", 143, "plain"), username, "x")
    assert isinstance(result_of(d), LoginRejected)
    assert reactor.tcpClients == []


def smtp_check(security: str = "plain"):
    reactor = MemoryReactorClock()
    checker = SMTPLoginChecker(reactor, MailTLS(None), timeout=5, identity="mcp.example")
    d = checker.check(MailServer("smtp.test", 587, security), "alice", PASSWORD)
    return reactor, d


def test_smtp_auth_only_never_sends_mail() -> None:
    """EHLO, AUTH PLAIN, QUIT: success without MAIL FROM."""
    reactor, d = smtp_check()
    wire = Wire(reactor, StringTransport())
    wire.feed(b"220 smtp.test ESMTP")
    assert wire.sent() == b"EHLO mcp.example\r\n"
    wire.feed(b"250-smtp.test", b"250 AUTH PLAIN LOGIN")
    line = wire.sent()
    assert line.startswith(b"AUTH PLAIN ")
    assert base64.b64decode(line.split()[2]) == b"alice\0alice\0" + PASSWORD.encode()
    wire.feed(b"235 2.7.0 ok")
    assert wire.sent() == b"QUIT\r\n"
    assert result_of(d) is None


def test_smtp_declined_is_rejected_and_logs_no_transcript() -> None:
    """AUTH declined (both PLAIN forms): LoginRejected; nothing logged or raised carries the password."""
    with capturedLogs() as events:
        reactor, d = smtp_check()
        wire = Wire(reactor, StringTransport())
        wire.feed(b"220 hi", b"250-hi", b"250 AUTH PLAIN")
        wire.feed(b"535 5.7.8 nope")
        wire.feed(b"535 5.7.8 nope")
        failure = result_of(d)
    assert isinstance(failure, LoginRejected)
    secret_forms = [PASSWORD, base64.b64encode(b"\0alice\0" + PASSWORD.encode()).decode()]
    text = repr(events) + str(failure)
    assert not any(form in text for form in secret_forms)


def test_smtp_starttls_mandatory() -> None:
    """security=starttls against a server without STARTTLS: unavailable, AUTH never sent."""
    reactor, d = smtp_check("starttls")
    wire = Wire(reactor, StringTransport())
    wire.feed(b"220 hi", b"250-hi", b"250 AUTH PLAIN")
    failure = result_of(d)
    assert isinstance(failure, MailServerUnavailable) and failure.reason == "tls"
    assert b"AUTH" not in wire.sent()


def test_smtp_starttls_then_auth() -> None:
    """security=starttls: STARTTLS, EHLO again, then AUTH."""
    reactor, d = smtp_check("starttls")
    wire = Wire(reactor)
    wire.feed(b"220 hi")
    wire.sent()
    wire.feed(b"250-hi", b"250 STARTTLS")
    assert wire.sent() == b"STARTTLS\r\n"
    wire.feed(b"220 go ahead")
    assert wire.transport.tls_started
    assert wire.sent() == b"EHLO mcp.example\r\n"
    wire.feed(b"250-hi", b"250 AUTH PLAIN")
    assert wire.sent().startswith(b"AUTH PLAIN ")


def test_smtp_no_auth_offered() -> None:
    """A server offering no AUTH: unavailable (no-auth)."""
    reactor, d = smtp_check()
    wire = Wire(reactor, StringTransport())
    wire.feed(b"220 hi", b"250 hi")
    failure = result_of(d)
    assert isinstance(failure, MailServerUnavailable) and failure.reason == "no-auth"


def test_smtp_deadline_on_injected_clock() -> None:
    """A server that stops answering mid-dialogue: unavailable when the injected clock passes the deadline."""
    reactor, d = smtp_check()
    wire = Wire(reactor, StringTransport())
    wire.feed(b"220 hi")
    reactor.advance(5.1)
    failure = result_of(d)
    assert isinstance(failure, MailServerUnavailable) and failure.reason == "timeout"
    assert reactor.getDelayedCalls() == [] or all(not c.active() for c in reactor.getDelayedCalls())


def test_imap_untagged_flood_during_the_login_ends_the_check() -> None:
    """A server burying its answer under untagged lines: unavailable once a reply passes the bound."""
    reactor, d = imap_check()
    wire = Wire(reactor)
    wire.feed(b"* OK [CAPABILITY IMAP4rev1] ready")
    assert wire.sent().startswith(b"0001 LOGIN ")
    flood = b"* OK " + b"u" * 1017
    for _ in range(300):  # ~300 KiB, over the check's 256 KiB per reply
        wire.feed(flood)
        if wire.transport.disconnecting:
            break
    wire.feed(b"0001 OK logged in")
    failure = result_of(d)
    assert isinstance(failure, MailServerUnavailable)
    assert wire.transport.disconnecting
