"""
Protocol tests for `mailmcp.mail._smtp`: the ESMTP sender driven over a
`StringTransport` with scripted server replies, on a `MemoryReactorClock`.
No sockets.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import directlyProvides

from mailmcp._account import MailAccount
from mailmcp._tls import MailTLS
from mailmcp.mail._smtp import (
    DotStuffer,
    SendResult,
    SMTPAuthFailed,
    SMTPOutcomeUnknown,
    SMTPSender,
    SMTPSendFailed,
)
from mailmcp.oauth._clients import MailServer

PASSWORD = "PASSWORD-CANARY-9f3e"

EHLO_TLS = [b"250-mail.example.test", b"250-PIPELINING", b"250-AUTH PLAIN LOGIN", b"250 8BITMIME"]


def make_account(security: str = "tls", host: str = "smtp.example.test", port: int = 465) -> MailAccount:
    server = MailServer(host=host, port=port, security=security)  # type: ignore[arg-type]
    return MailAccount(
        owner="grant-1",
        email="alice@example.test",
        full_name="Alice",
        imap=MailServer(host=host, port=993, security="tls"),
        imap_username="alice@example.test",
        imap_password=PASSWORD,
        smtp=server,
        smtp_username="alice@example.test",
        smtp_password=PASSWORD,
    )


class TLSStringTransport(StringTransport):
    """A StringTransport that can be upgraded with STARTTLS, like a TCP transport."""

    def __init__(self) -> None:
        super().__init__()
        self.tls_started_with: Any = None

    def startTLS(self, contextFactory: Any) -> None:
        self.tls_started_with = contextFactory
        directlyProvides(self, ISSLTransport)


class Conversation:
    """One send, with the test playing the SMTP server."""

    def __init__(
        self,
        security: str = "tls",
        recipients: tuple[str, ...] = ("bob@example.test",),
        message: bytes = b"Subject: hi\r\n\r\nhello\r\n",
        host: str = "smtp.example.test",
        timeout: float = 60.0,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.sender = SMTPSender(self.clock, MailTLS(), timeout=timeout)
        self.account = make_account(security, host=host)
        self.outcome: list[Any] = []
        self.d: Deferred[SendResult] = Deferred.fromCoroutine(
            self.sender.send(self.account, "alice@example.test", recipients, message)
        )
        self.d.addBoth(self.outcome.append)
        if security == "tls":
            assert not self.clock.tcpClients
            host_, port, factory, self.context, _timeout, _bind = self.clock.sslClients[0]
        else:
            assert not self.clock.sslClients
            host_, port, factory, _timeout, _bind = self.clock.tcpClients[0]
        self.factory = factory
        self.proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        self.transport = TLSStringTransport()
        if security == "tls":
            directlyProvides(self.transport, ISSLTransport)
        self.proto.makeConnection(self.transport)

    def server(self, *lines: bytes) -> None:
        for line in lines:
            self.proto.dataReceived(line + b"\r\n")

    def client(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def pump(self) -> None:
        """Let FileSender push the whole body, chunk by chunk."""
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()

    def lose(self) -> None:
        from twisted.internet.error import ConnectionLost

        self.proto.connectionLost(Failure(ConnectionLost("gone")))

    def through_rcpt(self, replies: tuple[bytes, ...] = (b"250 2.1.5 Ok",)) -> None:
        """Greeting, EHLO, AUTH, MAIL FROM and the RCPT replies."""
        self.server(b"220 mail.example.test ESMTP")
        assert self.client().startswith(b"EHLO ")
        self.server(*EHLO_TLS)
        assert self.client().startswith(b"AUTH PLAIN ")
        self.server(b"235 2.7.0 Authentication successful")
        assert self.client() == b"MAIL FROM:<alice@example.test>\r\n"
        self.server(b"250 2.1.0 Ok")
        for reply in replies:
            assert self.client().startswith(b"RCPT TO:<")
            self.server(reply)

    def through_data(self) -> bytes:
        """Everything up to and including the terminating dot; returns the DATA bytes."""
        self.through_rcpt()
        assert self.client() == b"DATA\r\n"
        self.server(b"354 End data with <CR><LF>.<CR><LF>")
        self.pump()
        return self.client()

    @property
    def result(self) -> Any:
        assert self.outcome, "the send has not finished"
        value = self.outcome[0]
        if isinstance(value, Failure):
            return value.value
        return value


def unstuff(data: bytes) -> tuple[bytes, bytes]:
    """
    What an SMTP server makes of C{data} after 354: the message (un-stuffed)
    and whatever follows the first terminating line (commands, if smuggled).
    """
    lines = data.split(b"\r\n")
    out: list[bytes] = []
    for index, line in enumerate(lines):
        if line == b".":
            return b"".join(x + b"\r\n" for x in out), b"\r\n".join(lines[index + 1 :])
        out.append(line[1:] if line.startswith(b".") else line)
    raise AssertionError("no terminating dot")


# -- dot-stuffing ------------------------------------------------------------


def test_dot_stuffer_matches_whole_message_stuffing_for_any_split() -> None:
    """Stuffing chunk by chunk gives the same bytes as stuffing the whole message at once."""
    rng = random.Random(5)
    for _ in range(200):
        lines = [rng.choice([b".", b"..", b".x", b"a.", b"", b"abc", b". ."]) for _ in range(30)]
        data = b"".join(line + b"\r\n" for line in lines)
        whole = b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in lines)
        stuffer = DotStuffer()
        cuts = sorted(rng.sample(range(1, len(data)), 5))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert b"".join(stuffer.feed(p) for p in pieces) == whole


def test_dot_stuffer_first_chunk_is_a_line_start() -> None:
    """A message whose very first byte is '.' has that dot doubled."""
    assert DotStuffer().feed(b".x\r\n") == b"..x\r\n"


@pytest.mark.parametrize("offset", list(range(16380, 16391)) + list(range(32762, 32771)))
def test_dot_line_at_chunk_boundary_is_stuffed(offset: int) -> None:
    """
    A body line "." starting at any offset around the 16 KiB FileSender chunk
    boundaries (including exactly at 16384 and 32768) is stuffed: the server
    sees one message, byte-identical after un-stuffing, and nothing after the
    terminator (docs/threat-model.rst, P-10, SM-10).
    """
    head = b"Subject: dots\r\n\r\n"
    filler_len = offset - len(head) - 2
    filler = (b"x" * 70 + b"\r\n") * (filler_len // 72)
    filler += b"y" * (filler_len - len(filler))
    message = head + filler + b"\r\n" + b".\r\nMAIL FROM:<mallory@evil.test>\r\n.\r\nafter\r\n"
    assert message[offset : offset + 3] == b".\r\n"
    c = Conversation(message=message)
    data = c.through_data()
    received, rest = unstuff(data)
    assert received == message
    assert rest == b""
    assert data.count(b"\r\n.\r\n") == 1 and data.endswith(b"\r\n.\r\n")


def test_smuggling_sequence_in_body_stays_in_the_message() -> None:
    """A body carrying '\\r\\n.\\r\\nMAIL FROM:...' ends DATA only at the real end."""
    message = b"Subject: x\r\n\r\nhi\r\n.\r\nMAIL FROM:<x@evil.test>\r\nRCPT TO:<y@evil.test>\r\nDATA\r\n"
    c = Conversation(message=message)
    data = c.through_data()
    assert unstuff(data) == (message, b"")


def test_message_without_final_crlf_is_terminated_correctly() -> None:
    """A message not ending in CRLF gets CRLF before the terminating dot."""
    c = Conversation(message=b"Subject: x\r\n\r\nno newline")
    assert c.through_data().endswith(b"no newline\r\n.\r\n")


def test_bare_lf_message_is_refused_before_connecting() -> None:
    """Bytes with bare LF or CR are a programming error: refused before any connection."""
    clock = MemoryReactorClock()
    sender = SMTPSender(clock, MailTLS())
    for bad in (b"Subject: x\n\nbody\n", b"Subject: x\r\n\r\nbare\rcr\r\n"):
        d = Deferred.fromCoroutine(sender.send(make_account(), "alice@example.test", ["b@example.test"], bad))
        failure = []
        d.addErrback(failure.append)
        assert failure and failure[0].check(ValueError)
    assert not clock.tcpClients and not clock.sslClients


def test_envelope_address_with_crlf_is_refused() -> None:
    """An envelope address carrying CR/LF never reaches the wire."""
    clock = MemoryReactorClock()
    sender = SMTPSender(clock, MailTLS())
    d = Deferred.fromCoroutine(
        sender.send(make_account(), "alice@example.test", ["b@x.test>\r\nRSET"], b"x\r\n")
    )
    failure: list[Failure] = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(ValueError)
    assert not clock.sslClients


# -- outcomes ----------------------------------------------------------------


def test_success_reports_every_recipient() -> None:
    """A 250 after DATA is success, with each recipient's code and reply."""
    c = Conversation(recipients=("bob@example.test", "carol@example.test"))
    c.through_rcpt((b"250 2.1.5 Ok", b"250 2.1.5 Ok carol"))
    assert c.client() == b"DATA\r\n"
    c.server(b"354 go ahead")
    c.pump()
    c.client()
    assert not c.outcome
    c.server(b"250 2.0.0 Ok: queued as ABC")
    result = c.result
    assert isinstance(result, SendResult)
    assert result.code == 250 and "queued as ABC" in result.message
    assert [(r.address, r.code, r.accepted) for r in result.recipients] == [
        ("bob@example.test", 250, True),
        ("carol@example.test", 250, True),
    ]
    assert c.client() == b"QUIT\r\n"


def test_one_refused_recipient_aborts_before_data() -> None:
    """
    RCPT replies 250, 550, 452: no DATA is sent (nothing delivered to anyone),
    and the failure lists each recipient's status (SM-03).
    """
    c = Conversation(recipients=("bob@example.test", "nobody@example.test", "full@example.test"))
    c.through_rcpt((b"250 2.1.5 Ok", b"550 5.1.1 no such user", b"452 4.2.2 mailbox full"))
    sent = c.client()
    assert b"DATA" not in sent
    assert sent == b"QUIT\r\n"
    failure = c.result
    assert isinstance(failure, SMTPSendFailed)
    assert [(r.address, r.code) for r in failure.recipients] == [
        ("bob@example.test", 250),
        ("nobody@example.test", 550),
        ("full@example.test", 452),
    ]
    assert "nobody@example.test" in failure.message and "550" in failure.message


def test_connection_lost_after_final_dot_is_unknown() -> None:
    """
    The connection drops after the terminating dot and before the reply:
    the outcome is unknown (never "failed", never resent), SM-05.
    """
    c = Conversation()
    c.through_data()
    c.lose()
    failure = c.result
    assert isinstance(failure, SMTPOutcomeUnknown)
    assert "unknown" in failure.message and "Do not resend" in failure.message
    assert len(c.clock.sslClients) == 1  # no reconnection


def test_connection_lost_during_body_is_a_definite_failure() -> None:
    """Lost before the terminating dot went out: the server cannot have delivered."""
    c = Conversation(message=b"Subject: x\r\n\r\n" + b"a" * 40000 + b"\r\n")
    c.through_rcpt()
    c.client()
    c.server(b"354 go ahead")
    c.transport.producer.resumeProducing()  # one chunk only
    c.lose()
    assert isinstance(c.result, SMTPSendFailed)
    assert c.result.stage == "body"


def test_552_after_data_is_a_definite_failure() -> None:
    """A 5xx reply to the end of DATA is a refusal (SM-04), not an unknown outcome."""
    c = Conversation()
    c.through_data()
    c.server(b"552 5.3.4 Message size exceeds fixed limit")
    failure = c.result
    assert isinstance(failure, SMTPSendFailed)
    assert failure.code == 552 and "size" in failure.message
    assert not failure.transient


def test_451_after_data_is_a_transient_failure() -> None:
    """A 451 after DATA is a temporary refusal, reported, not retried (SM-06)."""
    c = Conversation()
    c.through_data()
    c.server(b"451 4.3.0 try later")
    assert isinstance(c.result, SMTPSendFailed) and c.result.transient
    assert len(c.clock.sslClients) == 1


def test_421_greeting_is_a_failure() -> None:
    """A 421 banner fails the send before anything else is said."""
    c = Conversation()
    c.server(b"421 4.3.2 service not available")
    assert isinstance(c.result, SMTPSendFailed)
    assert b"EHLO" not in c.client()


def test_auth_declined_is_clean_and_attempted_once() -> None:
    """
    A 535 is an SMTPAuthFailed whose message holds neither the password nor
    its base64 form, after exactly one AUTH attempt (SM-01).
    """
    c = Conversation()
    c.server(b"220 hi")
    c.client()
    c.server(*EHLO_TLS)
    auth = c.client()
    expected = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode())
    assert auth == b"AUTH PLAIN " + expected + b"\r\n"
    c.server(b"535 5.7.8 Error: authentication failed")
    failure = c.result
    assert isinstance(failure, SMTPAuthFailed)
    text = failure.message + str(failure) + repr(failure.args)
    assert PASSWORD not in text
    assert base64.b64encode(PASSWORD.encode()).decode()[:8] not in text
    assert expected.decode() not in text
    assert c.client() == b"QUIT\r\n"


def test_starttls_mode_refuses_server_without_starttls() -> None:
    """On a starttls account, EHLO without STARTTLS ends the send; AUTH is never sent (SM-02)."""
    c = Conversation(security="starttls")
    c.server(b"220 hi")
    c.client()
    c.server(b"250-mail.example.test", b"250 AUTH PLAIN LOGIN")
    sent = c.client()
    assert b"AUTH" not in sent
    assert isinstance(c.result, SMTPSendFailed)
    assert "STARTTLS" in c.result.message


def test_starttls_mode_upgrades_with_verifying_options_before_auth() -> None:
    """STARTTLS is used when offered, with the verifying options, and EHLO is repeated."""
    c = Conversation(security="starttls")
    c.server(b"220 hi")
    c.client()
    c.server(b"250-mail.example.test", b"250-STARTTLS", b"250 AUTH PLAIN LOGIN")
    assert c.client() == b"STARTTLS\r\n"
    c.server(b"220 2.0.0 Ready to start TLS")
    assert c.transport.tls_started_with is c.sender._tls.options_for("smtp.example.test")
    assert c.client().startswith(b"EHLO ")
    c.server(*EHLO_TLS)
    assert c.client().startswith(b"AUTH PLAIN ")


def test_plain_mode_refused_for_non_loopback_host() -> None:
    """security=plain to a remote host is refused before any connection."""
    clock = MemoryReactorClock()
    sender = SMTPSender(clock, MailTLS())
    d = Deferred.fromCoroutine(
        sender.send(make_account("plain", host="smtp.example.test"), "alice@example.test",
                    ["b@example.test"], b"x\r\n")
    )
    failure: list[Failure] = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(SMTPSendFailed)
    assert not clock.tcpClients


def test_plain_mode_on_loopback_authenticates_without_tls() -> None:
    """security=plain on loopback: TCP, no STARTTLS even if offered, AUTH still required."""
    c = Conversation(security="plain", host="127.0.0.1")
    c.server(b"220 hi")
    c.client()
    c.server(b"250-mail.example.test", b"250-STARTTLS", b"250 AUTH PLAIN LOGIN")
    assert c.client().startswith(b"AUTH PLAIN ")


def test_server_without_auth_is_refused() -> None:
    """No AUTH offered: the send fails, never goes on unauthenticated."""
    c = Conversation()
    c.server(b"220 hi")
    c.client()
    c.server(b"250-mail.example.test", b"250 8BITMIME")
    assert b"MAIL FROM" not in c.client()
    assert isinstance(c.result, SMTPSendFailed)


def test_stalled_banner_times_out() -> None:
    """A server that never sends its banner: the deadline fails the send, the connection is aborted."""
    c = Conversation(timeout=30)
    c.clock.advance(31)
    assert isinstance(c.result, SMTPSendFailed)
    assert c.transport.disconnecting


def test_stall_after_final_dot_is_unknown() -> None:
    """A server that goes silent after the final dot: the deadline reports an unknown outcome (SM-07)."""
    c = Conversation(timeout=30)
    c.through_data()
    c.clock.advance(31)
    assert isinstance(c.result, SMTPOutcomeUnknown)


def test_stall_after_354_is_definite_failure() -> None:
    """
    A send whose body is still stuck in the transport when the deadline
    passes has not sent its dot: nothing can have been delivered.
    """
    c = Conversation(timeout=30)
    c.through_rcpt()
    c.client()
    c.server(b"354 go ahead")
    c.clock.advance(31)
    assert isinstance(c.result, SMTPSendFailed)


def test_tls_mode_connects_with_implicit_tls_and_verifying_options() -> None:
    """security=tls uses connectSSL with the MailTLS options for the host."""
    c = Conversation(security="tls")
    assert c.context is c.sender._tls.options_for("smtp.example.test")
    # Over implicit TLS no STARTTLS is attempted.
    c.server(b"220 hi")
    c.client()
    c.server(b"250-mail.example.test", b"250-STARTTLS", b"250 AUTH PLAIN LOGIN")
    assert c.client().startswith(b"AUTH PLAIN ")


def test_connection_refused_is_a_definite_failure() -> None:
    """A refused TCP connection fails cleanly; no retry is scheduled."""
    from twisted.internet.error import ConnectionRefusedError

    clock = MemoryReactorClock()
    sender = SMTPSender(clock, MailTLS())
    outcome: list[Any] = []
    Deferred.fromCoroutine(
        sender.send(make_account(), "alice@example.test", ["b@example.test"], b"x\r\n")
    ).addBoth(outcome.append)
    factory = clock.sslClients[0][2]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert isinstance(outcome[0].value, SMTPSendFailed)
    assert len(clock.sslClients) == 1


def test_failure_logs_carry_no_secret() -> None:
    """The log events of a refused login name the account and stage, never the password."""
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        events.append((formatEvent(event) or "") + repr(event))

    globalLogPublisher.addObserver(observer)
    try:
        c = Conversation()
        c.server(b"220 hi")
        c.server(*EHLO_TLS)
        c.server(b"535 5.7.8 Error: authentication failed")
    finally:
        globalLogPublisher.removeObserver(observer)
    assert isinstance(c.result, SMTPAuthFailed)
    assert any("alice@example.test" in e for e in events)
    secret_b64 = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode()
    assert not any(PASSWORD in e or secret_b64 in e for e in events)


def test_claim_blocks_a_concurrent_send_of_the_same_message_id() -> None:
    """A Message-ID claimed by an in-flight send cannot be claimed again until released."""
    sender = SMTPSender(MemoryReactorClock(), MailTLS())
    release = sender.claim("<a@example.test>")
    assert callable(release)
    assert sender.claim("<a@example.test>") is False
    assert callable(sender.claim("<b@example.test>"))
    release()
    assert callable(sender.claim("<a@example.test>"))
