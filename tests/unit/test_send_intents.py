"""
The send tools' store-backed claim (SM-13, SM-14), socket-free: two "daemons"
(two `SendIntents` owners) on one `MemoryGrantStore`, the in-memory IMAP fake
and a fake SMTP sender.  What a retry with the same idempotency_key does
when another daemon is sending it, died while sending it, or sent it.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from mailmcp._toolkit import ToolContext, ToolError
from mailmcp.mail._compose import make_message_id
from mailmcp.mail._sendintent import LEASE_MARGIN, SendIntents, intent_key
from mailmcp.mail._smtp import SMTPOutcomeUnknown, SMTPSendFailed
from mailmcp.testing import FakeIMAPPool, MemoryGrantStore, make_account, tool_services
from mailmcp.tools._writing import SEND_MAIL_MESSAGE, SendInput
from tests.helpers import run
from tests.unit.writable_imap import FakeSender, WritableServer

LEASE = 60.0 + LEASE_MARGIN
ARGS = SendInput(to="bob@example.test", subject="x", idempotency_key="order-7")


class Daemon:
    """One process's view: its own sender and owner id, the shared IMAP fake and store."""

    def __init__(self, name: str, store: MemoryGrantStore, server: WritableServer, clock: Clock):
        self.sender = FakeSender()
        self.intents = SendIntents(store, lease=LEASE, owner=name)
        services = tool_services(
            reactor=clock,
            imap=FakeIMAPPool(server),
            smtp=self.sender,
            send_intents=self.intents,
        )
        self.ctx = ToolContext(account=make_account(), services=services)


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1_700_000_000)
    return c


@pytest.fixture
def store(clock: Clock) -> MemoryGrantStore:
    return MemoryGrantStore(clock)


@pytest.fixture
def server() -> WritableServer:
    s = WritableServer()
    for name, use in (("INBOX", None), ("Drafts", "\\Drafts"), ("Sent", "\\Sent")):
        s.mailbox(name, *([use] if use else []))
    return s


def daemons(store: MemoryGrantStore, server: WritableServer, clock: Clock) -> tuple[Daemon, Daemon]:
    return Daemon("a", store, server, clock), Daemon("b", store, server, clock)


def claim(d: Daemon) -> tuple[str, str]:
    """Take the claim of ARGS' Message-ID as d's deliver() would before DATA."""
    msgid = make_message_id(d.ctx.account.email, "order-7")
    result: list[str] = []
    d.intents.begin(d.ctx.account, msgid).addCallback(result.append)
    return msgid, result[0]


def test_a_send_in_progress_on_another_daemon_is_not_repeated(
    store: MemoryGrantStore, server: WritableServer, clock: Clock
) -> None:
    """
    Daemon a holds the claim (its DATA is under way, nothing in Sent yet):
    the same key on daemon b sends nothing and says it is in progress.
    """
    a, b = daemons(store, server, clock)
    msgid, state = claim(a)
    assert state == "claimed"
    with pytest.raises(ToolError) as info:
        run(SEND_MAIL_MESSAGE.handler(b.ctx, ARGS))
    assert "already in progress" in info.value.message and msgid in info.value.message
    assert b.sender.sent == [] and server.mailboxes["Sent"].messages == []


def test_a_daemon_that_died_mid_send_leaves_outcome_unknown_not_a_resend(
    store: MemoryGrantStore, server: WritableServer, clock: Clock
) -> None:
    """
    Daemon a claimed, then died after DATA (no outcome, no Sent copy).  Past
    the lease, a retry on b answers "Delivery status unknown" with what to
    check and how to force a resend (a new key); it sends nothing.  A new
    key sends.
    """
    a, b = daemons(store, server, clock)
    msgid, state = claim(a)
    assert state == "claimed"
    clock.advance(LEASE)
    with pytest.raises(ToolError) as info:
        run(SEND_MAIL_MESSAGE.handler(b.ctx, ARGS))
    text = info.value.message
    assert text.startswith("Delivery status unknown") and msgid in text
    assert "Sent" in text and "new idempotency_key" in text
    assert b.sender.sent == []
    fresh = SendInput(to="bob@example.test", subject="x", idempotency_key="order-7b")
    assert run(SEND_MAIL_MESSAGE.handler(b.ctx, fresh)).status == "sent"
    assert len(b.sender.sent) == 1


def test_sent_is_recorded_so_a_retry_elsewhere_sends_nothing_even_without_a_sent_copy(
    store: MemoryGrantStore, server: WritableServer, clock: Clock
) -> None:
    """
    a sends (record "sent"); the Sent copy then disappears (a provider
    that files nothing, a user who deleted it): b's retry answers
    already_sent from the store and sends nothing.
    """
    a, b = daemons(store, server, clock)
    first = run(SEND_MAIL_MESSAGE.handler(a.ctx, ARGS))
    assert first.status == "sent"
    assert store.intents[intent_key(first.message_id)][0] == "sent"
    server.mailboxes["Sent"].messages.clear()
    again = run(SEND_MAIL_MESSAGE.handler(b.ctx, ARGS))
    assert again.status == "already_sent" and again.sent_folder is None
    assert any("not in 'Sent'" in w for w in again.warnings)
    assert len(a.sender.sent) == 1 and b.sender.sent == []


def test_a_definite_failure_frees_the_key_and_an_unknown_one_holds_it(
    store: MemoryGrantStore, server: WritableServer, clock: Clock
) -> None:
    """
    Refused by the SMTP server (nothing went out): the record is "failed",
    so a retry with the same key sends.  Connection lost after DATA: the
    record is "unknown", and even with the Sent copy gone a retry does not send.
    """
    a, b = daemons(store, server, clock)
    a.sender.outcome = SMTPSendFailed("refused, nothing was sent", stage="envelope", code=550)
    with pytest.raises(ToolError):
        run(SEND_MAIL_MESSAGE.handler(a.ctx, ARGS))
    assert run(SEND_MAIL_MESSAGE.handler(b.ctx, ARGS)).status == "sent"
    assert len(b.sender.sent) == 1

    other = SendInput(to="bob@example.test", subject="y", idempotency_key="order-8")
    a.sender.outcome = SMTPOutcomeUnknown("connection lost after DATA", stage="after-data")
    with pytest.raises(ToolError):
        run(SEND_MAIL_MESSAGE.handler(a.ctx, other))
    server.mailboxes["Sent"].messages.clear()
    with pytest.raises(ToolError) as info:
        run(SEND_MAIL_MESSAGE.handler(b.ctx, other))
    assert info.value.message.startswith("Delivery status unknown")
    assert len(b.sender.sent) == 1


def test_unkeyed_sends_record_nothing(
    store: MemoryGrantStore, server: WritableServer, clock: Clock
) -> None:
    """Without a key the Message-ID is random: no record, no store round trip."""
    a, _ = daemons(store, server, clock)
    run(SEND_MAIL_MESSAGE.handler(a.ctx, SendInput(to="bob@example.test", subject="x")))
    assert store.intents == {} and len(a.sender.sent) == 1
