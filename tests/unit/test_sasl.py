"""
XOAUTH2 and OAUTHBEARER (RFC 7628) on the wire, without sockets: the
message formats, and the exchanges of the pool's IMAP session, the login
checks and the SMTP sender over a ``StringTransport`` -- including the
error-challenge dance (the server sends a base64 JSON error as a
challenge, the client closes the exchange, then the server fails it).
"""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from zope.interface import directlyProvides

from mailmcp._account import MailAccount
from mailmcp._tls import MailTLS
from mailmcp.mail._mailbox_api import IMAPAuthError, IMAPTokenRejected
from mailmcp.mail._mailcheck import (
    IMAPLoginChecker,
    LoginRejected,
    MailServerUnavailable,
    SMTPLoginChecker,
    credentials_check,
)
from mailmcp.mail._sasl import SASLInputError, SMTPTokenAuthenticator, TokenSASL
from mailmcp.mail._smtp import SendResult, SMTPAuthFailed, SMTPSender
from mailmcp.oauth._clients import MailServer
from mailmcp.provider._client import ProviderTokens
from tests.unit.imap_wire import Wire, result_of, run

TOKEN = "CANARY-access-token-91c2"
ERROR_JSON = b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}'
ERROR_CHALLENGE = base64.b64encode(ERROR_JSON)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# -- the messages ---------------------------------------------------------------------


def test_xoauth2_initial_response() -> None:
    sasl = TokenSASL(
        "xoauth2", "someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
    )
    assert sasl.name == b"XOAUTH2"
    assert sasl.initial_response() == (
        b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
    )
    assert sasl.respond(b"") == sasl.initial_response()
    assert sasl.respond(ERROR_JSON) == b""  # XOAUTH2 ends an error exchange with an empty line


def test_oauthbearer_initial_response_matches_rfc7628() -> None:
    """RFC 7628 §4.1's example, byte for byte; the error exchange ends with %x01 (§3.2.3)."""
    sasl = TokenSASL("oauthbearer", "user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
                     host="server.example.com", port=143)  # fmt: skip
    assert sasl.name == b"OAUTHBEARER"
    assert sasl.initial_response() == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )
    assert sasl.respond(ERROR_JSON) == b"\x01"
    # RFC 5801 saslname escaping of "," and "=".
    odd = TokenSASL("oauthbearer", "a,b=c@x.test", "t")
    assert odd.initial_response().startswith(b"n,a=a=2Cb=3Dc@x.test,\x01")


@pytest.mark.parametrize("user,token", [("a\r\nb", "t"), ("a", "t\x01x"), ("a", ""), ("a", "t\n")])
def test_control_characters_are_refused(user: str, token: str) -> None:
    with pytest.raises(SASLInputError):
        TokenSASL("xoauth2", user, token)
    with pytest.raises(SASLInputError):
        TokenSASL("plain", "a", "t")


def test_repr_hides_the_token() -> None:
    sasl = TokenSASL("xoauth2", "u@x.test", TOKEN)
    assert TOKEN not in repr(sasl)
    assert TOKEN not in repr(SMTPTokenAuthenticator(sasl))


# -- the pool's IMAP session ----------------------------------------------------------


def token_account(mechanism: str = "xoauth2") -> Any:
    return SimpleNamespace(
        imap=SimpleNamespace(host="imap.example.test", port=993, security="tls"),
        imap_username="alice@example.test",
        imap_password="",
        imap_auth=mechanism,
        uses_token=True,
        oauth=ProviderTokens(TOKEN, "CANARY-refresh", 10),
    )


def test_session_xoauth2_with_sasl_ir_is_one_round_trip() -> None:
    wire = Wire()
    d = run(wire.session.open(token_account(), None))
    wire.server(b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=XOAUTH2] ready\r\n")
    line = wire.sent()
    expected = b64(b"user=alice@example.test\x01auth=Bearer " + TOKEN.encode() + b"\x01\x01")
    assert line == b"0001 AUTHENTICATE XOAUTH2 " + expected + b"\r\n"
    wire.server(b"0001 OK [CAPABILITY IMAP4rev1 UIDPLUS] Logged in\r\n")
    result_of(d)
    assert wire.session.capabilities == frozenset({"IMAP4REV1", "UIDPLUS"})
    assert wire.events == [("AUTHENTICATE", "XOAUTH2 <token redacted>")]


def test_session_oauthbearer_without_sasl_ir_waits_for_the_empty_challenge() -> None:
    wire = Wire()
    d = run(wire.session.open(token_account("oauthbearer"), None))
    wire.server(b"* OK [CAPABILITY IMAP4rev1 AUTH=OAUTHBEARER] ready\r\n")
    assert wire.sent() == b"0001 AUTHENTICATE OAUTHBEARER\r\n"
    wire.server(b"+ \r\n")
    sent = base64.b64decode(wire.sent().strip())
    assert sent.startswith(b"n,a=alice@example.test,\x01host=imap.example.test\x01port=993\x01")
    assert sent.endswith(b"auth=Bearer " + TOKEN.encode() + b"\x01\x01")
    wire.server(b"0001 OK [CAPABILITY IMAP4rev1] in\r\n")
    result_of(d)


@pytest.mark.parametrize("mechanism,closing", [("xoauth2", b"\r\n"), ("oauthbearer", b"AQ==\r\n")])
def test_session_error_challenge_dance(mechanism: str, closing: bytes) -> None:
    """A refused token: JSON error challenge, the closing response, then NO = IMAPTokenRejected."""
    wire = Wire()
    d = run(wire.session.open(token_account(mechanism), None))
    wire.server(b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER] ready\r\n")
    assert wire.sent().startswith(b"0001 AUTHENTICATE " + mechanism.upper().encode() + b" ")
    wire.server(b"+ " + ERROR_CHALLENGE + b"\r\n")
    assert wire.sent() == closing
    wire.server(b"0001 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    with pytest.raises(IMAPTokenRejected) as info:
        result_of(d)
    assert isinstance(info.value, IMAPAuthError)
    assert TOKEN not in info.value.message
    assert not wire.protocol.logged_in


def test_session_refuses_when_the_mechanism_is_not_offered() -> None:
    """No AUTH=XOAUTH2: nothing is sent (never a LOGIN with an empty password)."""
    wire = Wire()
    d = run(wire.session.open(token_account(), None))
    wire.server(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
    with pytest.raises(IMAPAuthError, match="does not offer XOAUTH2"):
        result_of(d)
    assert wire.transport.value() == b""


# -- the login checks (Twisted's IMAP4Client and ESMTPClient) -------------------------


class CheckWire:
    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.proto = reactor.tcpClients[-1][2].buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def feed(self, *lines: bytes) -> None:
        for line in lines:
            self.proto.dataReceived(line + b"\r\n")

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data


def outcome(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the check has not finished"
    return getattr(out[0], "value", out[0])


def test_imap_check_xoauth2_success_and_error_dance() -> None:
    reactor = MemoryReactorClock()
    checker = IMAPLoginChecker(reactor, MailTLS(None), timeout=5)
    server = MailServer("127.0.0.1", 143, "plain")
    d = checker.check(server, "alice@x.test", TOKEN, mechanism="xoauth2")
    wire = CheckWire(reactor)
    wire.feed(b"* OK ready")
    assert wire.sent() == b"0001 CAPABILITY\r\n"
    wire.feed(b"* CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2", b"0001 OK done")
    expected = b64(b"user=alice@x.test\x01auth=Bearer " + TOKEN.encode() + b"\x01\x01")
    assert wire.sent() == b"0002 AUTHENTICATE XOAUTH2 " + expected + b"\r\n"
    wire.feed(b"0002 OK [CAPABILITY IMAP4rev1] in")
    assert wire.sent() == b"0003 LOGOUT\r\n"
    wire.feed(b"* BYE bye", b"0003 OK bye")
    assert outcome(d) is None

    with capturedLogs() as events:
        d = checker.check(server, "alice@x.test", TOKEN, mechanism="xoauth2")
        wire = CheckWire(reactor)
        wire.feed(b"* OK ready", b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2", b"0001 OK done")
        assert wire.sent().endswith(b"0002 AUTHENTICATE XOAUTH2\r\n")
        wire.feed(b"+ ")
        assert base64.b64decode(wire.sent().strip()).endswith(TOKEN.encode() + b"\x01\x01")
        wire.feed(b"+ " + ERROR_CHALLENGE)
        assert wire.sent() == b"\r\n"
        wire.feed(b"0002 NO [AUTHENTICATIONFAILED] Authentication failed.")
        assert isinstance(outcome(d), LoginRejected)
    assert TOKEN not in repr(events)


def test_imap_check_without_the_mechanism_is_unavailable() -> None:
    reactor = MemoryReactorClock()
    checker = IMAPLoginChecker(reactor, MailTLS(None), timeout=5)
    d = checker.check(
        MailServer("127.0.0.1", 143, "plain"), "a@x.test", TOKEN, mechanism="oauthbearer"
    )
    wire = CheckWire(reactor)
    wire.feed(b"* OK ready", b"* CAPABILITY IMAP4rev1 AUTH=PLAIN", b"0001 OK done")
    assert TOKEN.encode() not in wire.sent()
    failure = outcome(d)
    assert isinstance(failure, MailServerUnavailable) and failure.reason == "no-token-login"


def test_smtp_check_xoauth2_success_and_error_dance() -> None:
    reactor = MemoryReactorClock()
    checker = SMTPLoginChecker(reactor, MailTLS(None), timeout=5, identity="mcp.example")
    server = MailServer("smtp.test", 587, "plain")
    d = checker.check(server, "alice@x.test", TOKEN, mechanism="xoauth2")
    wire = CheckWire(reactor)
    wire.feed(b"220 smtp.test ESMTP")
    assert wire.sent() == b"EHLO mcp.example\r\n"
    wire.feed(b"250-smtp.test", b"250 AUTH PLAIN LOGIN XOAUTH2")
    assert wire.sent() == b"AUTH XOAUTH2\r\n"  # the token mechanism only: never PLAIN
    wire.feed(b"334 ")
    assert base64.b64decode(wire.sent().strip()) == (
        b"user=alice@x.test\x01auth=Bearer " + TOKEN.encode() + b"\x01\x01"
    )
    wire.feed(b"235 2.7.0 ok")
    assert wire.sent() == b"QUIT\r\n"
    assert outcome(d) is None

    d = checker.check(server, "alice@x.test", TOKEN, mechanism="xoauth2")
    wire = CheckWire(reactor)
    wire.feed(b"220 hi", b"250-hi", b"250 AUTH XOAUTH2", b"334 ")
    wire.sent()
    wire.feed(b"334 " + ERROR_CHALLENGE)
    assert wire.sent() == b"\r\n"
    wire.feed(b"535 5.7.8 Authentication failed")
    failure = outcome(d)
    assert isinstance(failure, LoginRejected)
    assert TOKEN not in str(failure)


def test_smtp_check_without_the_mechanism_is_unavailable() -> None:
    reactor = MemoryReactorClock()
    checker = SMTPLoginChecker(reactor, MailTLS(None), timeout=5)
    d = checker.check(MailServer("smtp.test", 587, "plain"), "a@x.test", TOKEN, mechanism="xoauth2")
    wire = CheckWire(reactor)
    wire.feed(b"220 hi", b"250-hi", b"250 AUTH PLAIN LOGIN")
    assert TOKEN.encode() not in wire.sent()
    failure = outcome(d)
    assert isinstance(failure, MailServerUnavailable) and failure.reason == "no-auth"


def test_credentials_check_picks_the_token_for_token_credentials() -> None:
    from mailmcp.oauth._grants import Credentials

    imap, smtp = MailServer("i.test", 993, "tls"), MailServer("s.test", 465, "tls")
    tokens = ProviderTokens(TOKEN, "r", 1)
    creds = Credentials("a@x.test", "A", imap, "a@x.test", "", smtp, "a@x.test", "",
                        imap_auth="oauthbearer", oauth=tokens)  # fmt: skip
    assert credentials_check(creds, "IMAP") == (imap, "a@x.test", TOKEN, "oauthbearer")
    assert credentials_check(creds, "SMTP") == (smtp, "a@x.test", TOKEN, "oauthbearer")
    plain = Credentials("a@x.test", "A", imap, "iu", "ip", smtp, "su", "sp")
    assert credentials_check(plain, "SMTP") == (smtp, "su", "sp", "password")


# -- the SMTP sender ------------------------------------------------------------------


def sender_account() -> MailAccount:
    server = MailServer("smtp.example.test", 465, "tls")
    return MailAccount(
        owner="grant-1", email="alice@example.test", full_name="Alice",
        imap=MailServer("smtp.example.test", 993, "tls"), imap_username="alice@example.test",
        imap_password="", smtp=server, smtp_username="alice@example.test", smtp_password="",
        imap_auth="xoauth2", oauth=ProviderTokens(TOKEN, "CANARY-refresh", 10),
    )  # fmt: skip


def start_send() -> tuple[Any, StringTransport, list[Any]]:
    reactor = MemoryReactorClock()
    sender = SMTPSender(reactor, MailTLS(), timeout=60)
    out: list[Any] = []
    d = Deferred.fromCoroutine(
        sender.send(
            sender_account(),
            "alice@example.test",
            ["bob@example.test"],
            b"Subject: x\r\n\r\nhi\r\n",
        )
    )
    d.addBoth(out.append)
    factory = reactor.sslClients[0][2]
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 465))
    transport = StringTransport()
    directlyProvides(transport, ISSLTransport)
    proto.makeConnection(transport)
    return proto, transport, out


def test_sender_authenticates_with_xoauth2() -> None:
    proto, transport, out = start_send()
    for line in (b"220 hi", b"250-hi", b"250 AUTH PLAIN LOGIN XOAUTH2"):
        proto.dataReceived(line + b"\r\n")
    assert transport.value().endswith(b"AUTH XOAUTH2\r\n")
    transport.clear()
    proto.dataReceived(b"334 \r\n")
    assert base64.b64decode(transport.value().strip()).endswith(
        b"Bearer " + TOKEN.encode() + b"\x01\x01"
    )
    transport.clear()
    proto.dataReceived(b"235 2.7.0 ok\r\n")
    assert transport.value() == b"MAIL FROM:<alice@example.test>\r\n"
    assert not out


def test_sender_token_refused_is_an_auth_failure_before_mail_from() -> None:
    """The error dance ends in SMTPAuthFailed with no MAIL FROM: nothing was sent, safe to retry."""
    proto, transport, out = start_send()
    for line in (b"220 hi", b"250-hi", b"250 AUTH XOAUTH2", b"334 "):
        proto.dataReceived(line + b"\r\n")
    transport.clear()
    proto.dataReceived(b"334 " + ERROR_CHALLENGE + b"\r\n")
    assert transport.value() == b"\r\n"
    proto.dataReceived(b"535 5.7.8 Username and Password not accepted\r\n")
    assert out and isinstance(out[0].value, SMTPAuthFailed)
    assert "refused the sign-in token" in out[0].value.message
    assert b"MAIL FROM" not in transport.value()
    assert TOKEN not in str(out[0].value)
    assert not isinstance(out[0], SendResult)


def test_sender_without_the_token_mechanism_never_falls_back_to_a_password() -> None:
    """No XOAUTH2 offered: not sent, no AUTH PLAIN with a placeholder, and the message names the mechanism."""
    proto, transport, out = start_send()
    for line in (b"220 hi", b"250-hi", b"250 AUTH PLAIN LOGIN"):
        proto.dataReceived(line + b"\r\n")
    assert b"AUTH" not in transport.value()
    assert out and "offers no supported authentication (XOAUTH2)" in out[0].value.message
    assert not isinstance(out[0].value, SMTPAuthFailed)
