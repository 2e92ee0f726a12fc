"""
The ESMTP sender against the harness's real Postfix (delivering to real
Dovecot over LMTP), and against scripted misbehaving SMTP servers written
as real Twisted protocols on loopback.

Delivered mail is read back over IMAPS with the stdlib client in a thread.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher

from mailmcp._account import MailAccount
from mailmcp._tls import MailTLS
from mailmcp.mail._compose import compose, make_message_id, parse_addresses
from mailmcp.mail._smtp import SMTPAuthFailed, SMTPOutcomeUnknown, SMTPSender, SMTPSendFailed
from tests.harness import Services
from tests.helpers import ClockedReactor, live_account, until
from tests.integration.mail_live import fresh_users, smtp_account_plain, wait_for_mail

pytestmark = pytest.mark.integration


def fresh_user(services: Services) -> tuple[str, str]:
    """One brand-new user (see `fresh_users`)."""
    return fresh_users(services, 1)[0]


def smtp_account(services: Services, email: str, password: str, security: str = "tls",
                 host: str = "localhost", port: int | None = None) -> MailAccount:
    return live_account(services, email, password, full_name="Writer", smtp_security=security,
                        smtp_host=host, smtp_port=port)


def sender_for(services: Services, timeout: float = 20.0) -> SMTPSender:
    return SMTPSender(reactor, MailTLS(services.ca_file), timeout=timeout)


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


@pytest.fixture
def captured_logs() -> Iterator[list[str]]:
    """Every log event emitted meanwhile, formatted, plus its raw fields' repr."""
    from twisted.logger import formatEvent

    events: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        events.append((formatEvent(event) or "") + " " + repr(event))

    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


# -- every transport security mode -------------------------------------------


@pytest.mark.parametrize("security", ["tls", "starttls", "plain"])
@pytest_twisted.ensureDeferred
async def test_send_each_security_mode_delivers(services: Services, security: str) -> None:
    """
    tls on the SMTPS port, starttls on the submission port and plain on the
    cleartext port (loopback only) each authenticate and deliver; the
    recipient's copy ends with exactly the bytes sent.
    """
    (sender_email, sender_pw), (rcpt, rcpt_pw) = fresh_users(services, 2)
    message = compose(
        from_email=sender_email, from_name="Writer", to=parse_addresses("to", rcpt),
        subject=f"mode {security}", text_body="hello over " + security,
        message_id=make_message_id(sender_email), date=time.time(),
    )
    host = "127.0.0.1" if security == "plain" else "localhost"
    account = smtp_account(services, sender_email, sender_pw, security, host=host)
    result = await sender_for(services).send(account, message.envelope_from, message.recipients,
                                             message.wire_bytes)
    assert result.code == 250
    assert [(r.address, r.code) for r in result.recipients] == [(rcpt, 250)]
    [delivered] = await wait_for_mail(services, rcpt, rcpt_pw)
    assert delivered.endswith(message.wire_bytes)


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_a_clean_auth_failure(services: Services, captured_logs: list[str]) -> None:
    """
    A wrong password fails with SMTPAuthFailed whose message holds neither
    the password nor its base64 form, and no log line carries them either.
    """
    email, _ = fresh_user(services)
    wrong = "WRONG-CANARY-" + uuid.uuid4().hex[:8]
    account = smtp_account(services, email, wrong, "tls")
    with pytest.raises(SMTPAuthFailed) as info:
        await sender_for(services).send(account, email, ["bob@example.test"], b"Subject: x\r\n\r\nx\r\n")
    secrets = [wrong, base64.b64encode(wrong.encode()).decode()[:12],
               base64.b64encode(f"\0{email}\0{wrong}".encode()).decode()[:20]]
    text = info.value.message + str(info.value) + repr(info.value.args)
    assert "rejected the login" in info.value.message
    for secret in secrets:
        assert secret not in text
        assert not any(secret in line for line in captured_logs)


@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_is_refused(services: Services) -> None:
    """Without the harness CA the self-signed certificate is not trusted: nothing is sent."""
    email, password = fresh_user(services)
    sender = SMTPSender(reactor, MailTLS(None), timeout=20)
    for security in ("tls", "starttls"):
        account = smtp_account(services, email, password, security)
        with pytest.raises(SMTPSendFailed) as info:
            await sender.send(account, email, ["bob@example.test"], b"Subject: x\r\n\r\nx\r\n")
        assert "TLS" in info.value.message


@pytest_twisted.ensureDeferred
async def test_starttls_mode_refuses_a_server_without_starttls(services: Services) -> None:
    """starttls against the port that offers no STARTTLS refuses before AUTH (SM-02)."""
    email, password = fresh_user(services)
    account = smtp_account(services, email, password, "starttls", host="localhost",
                           port=services.smtp_plain_port)
    with pytest.raises(SMTPSendFailed) as info:
        await sender_for(services).send(account, email, ["bob@example.test"], b"Subject: x\r\n\r\nx\r\n")
    assert "STARTTLS" in info.value.message


@pytest_twisted.ensureDeferred
async def test_refused_recipient_sends_to_nobody(services: Services) -> None:
    """
    An outside recipient refused at RCPT: the whole send is abandoned before
    DATA, so the accepted local recipient gets nothing either (SM-03).
    """
    (email, password), (rcpt, rcpt_pw) = fresh_users(services, 2)
    account = smtp_account(services, email, password, "tls")
    with pytest.raises(SMTPSendFailed) as info:
        await sender_for(services).send(account, email, [rcpt, "someone@outside.invalid"],
                                        b"Subject: x\r\n\r\nx\r\n")
    codes = {r.address: r.code for r in info.value.recipients}
    assert codes == {rcpt: 250, "someone@outside.invalid": 550}
    assert "someone@outside.invalid" in info.value.message
    await deferLater(reactor, 1.0, lambda: None)
    assert await wait_for_mail(services, rcpt, rcpt_pw, timeout=0) == []


# -- dot-stuffing and smuggling, end to end ------------------------------------


@pytest.mark.parametrize("offset", [16382, 16383, 16384, 16385, 16386, 32768])
@pytest_twisted.ensureDeferred
async def test_dot_lines_at_chunk_boundaries_arrive_intact(services: Services, offset: int) -> None:
    """
    A body line "." (followed by a smuggled MAIL FROM / RCPT / DATA) at the
    16 KiB chunk boundaries arrives as one message, byte-identical, and the
    smuggled transaction never reaches its victim (P-10, SM-10).
    """
    (email, password), (rcpt, rcpt_pw), (victim, victim_pw) = fresh_users(services, 3)
    head = (f"From: {email}\r\nTo: {rcpt}\r\nSubject: dots {offset}\r\n"
            f"Date: Tue, 25 Nov 2025 10:00:00 +0000\r\nMessage-ID: {make_message_id(email)}\r\n\r\n").encode()
    filler_len = offset - len(head) - 2
    filler = (b"z" * 70 + b"\r\n") * (filler_len // 72)
    filler += b"y" * (filler_len - len(filler))
    smuggled = (f".\r\nMAIL FROM:<{email}>\r\nRCPT TO:<{victim}>\r\nDATA\r\n"
                f"Subject: smuggled\r\n\r\nowned\r\n.\r\n").encode()
    message = head + filler + b"\r\n" + smuggled + b"tail\r\n"
    assert message[offset:offset + 3] == b".\r\n"
    account = smtp_account(services, email, password, "tls")
    result = await sender_for(services).send(account, email, [rcpt], message)
    assert result.code == 250
    [delivered] = await wait_for_mail(services, rcpt, rcpt_pw)
    assert delivered.endswith(message)
    assert await wait_for_mail(services, victim, victim_pw, timeout=0) == []


# -- Bcc ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bcc_recipient_receives_and_is_never_revealed(services: Services) -> None:
    """
    The Bcc recipient gets the message; the visible recipient's copy names
    them nowhere; the Bcc recipient's own copy has no Bcc header (TL-T5).
    """
    (email, password), (to, to_pw), (hidden, hidden_pw) = fresh_users(services, 3)
    message = compose(
        from_email=email, from_name="Writer", to=parse_addresses("to", to),
        bcc=parse_addresses("bcc", hidden), subject="bcc test", text_body="hi",
        message_id=make_message_id(email), date=time.time(),
    )
    account = smtp_account(services, email, password, "starttls")
    await sender_for(services).send(account, message.envelope_from, message.recipients, message.wire_bytes)
    [to_copy] = await wait_for_mail(services, to, to_pw)
    [hidden_copy] = await wait_for_mail(services, hidden, hidden_pw)
    assert hidden.encode() not in to_copy
    assert hidden.split("@")[0].encode() not in to_copy
    assert b"\nbcc:" not in header_block(hidden_copy).lower()
    assert hidden_copy.endswith(message.wire_bytes)


# -- scripted misbehaving servers ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connection_dropped_after_data_is_unknown_and_not_resent(scripted: Any) -> None:
    """
    A server that drops the connection after the final "." gets exactly one
    transaction and one connection, and the send reports an unknown outcome
    (SM-05): the sender never reconnects to try again.
    """
    factory, port = await scripted("drop")
    account = smtp_account_plain(port)
    clock = Clock()
    sender = SMTPSender(ClockedReactor(reactor, clock), MailTLS(None), timeout=10)
    with pytest.raises(SMTPOutcomeUnknown) as info:
        await sender.send(account, "alice@example.test", ["bob@example.test"],
                          b"Subject: once\r\n\r\nonly once\r\n")
    assert "unknown" in info.value.message
    # Nothing is left scheduled that could try again, however long one waits.
    clock.advance(3600)
    assert clock.getDelayedCalls() == []
    assert factory.connections == 1
    assert factory.transactions == [b"Subject: once\r\n\r\nonly once"]


@pytest_twisted.ensureDeferred
async def test_silent_server_after_data_hits_the_deadline_as_unknown(scripted: Any) -> None:
    """A server that never answers the final "." ends in an unknown outcome at the deadline (SM-07)."""
    factory, port = await scripted("silent")
    clock = Clock()
    sender = SMTPSender(ClockedReactor(reactor, clock), MailTLS(None), timeout=1.5)
    sending = Deferred.fromCoroutine(
        sender.send(smtp_account_plain(port), "alice@example.test", ["bob@example.test"],
                    b"Subject: s\r\n\r\nx\r\n")
    )
    await until(lambda: factory.transactions, "the server to receive the message")
    clock.advance(1.4)
    assert not sending.called
    clock.advance(0.1)
    with pytest.raises(SMTPOutcomeUnknown):
        await sending
    clock.advance(60)  # the QUIT grace: the connection is cut, nothing is resent
    assert len(factory.transactions) == 1 and factory.connections == 1


