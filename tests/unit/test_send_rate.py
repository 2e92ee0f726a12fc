"""
The per-account send rate limit (SM-12) and the "server files sent mail
itself" setting (SM-09), on a `Clock` and the writing-tool fakes: the bucket
counts recipients (to + cc + bcc) and refills with time, the handler takes
its tokens before SMTP is contacted, and a refused send touches neither SMTP
nor IMAP.
"""

from __future__ import annotations

import math

import attrs
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from mailmcp._toolkit import ToolContext, ToolError
from mailmcp.interfaces import ISendBudget
from mailmcp.mail._sendrate import SendRateLimiter, SharedSendRateLimiter, send_key
from mailmcp.mail._smtp import SMTPOutcomeUnknown, SMTPSendFailed
from mailmcp.testing import FakeIMAPPool, make_account, tool_services
from mailmcp.tools._writing import (
    CREATE_DRAFT_MAIL_MESSAGE,
    SEND_MAIL_MESSAGE,
    DraftInput,
    SendInput,
)
from tests.helpers import run
from tests.unit.writable_imap import FakeSender, WritableServer, commands

HOUR = 3600.0


def test_burst_then_refusal_then_refill_on_the_clock() -> None:
    """
    Burst 3 at 1 per hour: three sends are allowed at once, the fourth is
    refused with the wait until the next token (an hour); after 3599 s it is
    still refused, after 3600 s exactly one more is allowed.
    """
    clock = Clock()
    limiter = SendRateLimiter(clock, burst=3, per_hour=1)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(HOUR)
    clock.advance(HOUR - 1)
    assert limiter.acquire("a") == pytest.approx(1.0)
    clock.advance(1)
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(HOUR)


def test_refill_stops_at_the_burst() -> None:
    """A day idle refills to the burst (2), not to 24 sends."""
    clock = Clock()
    limiter = SendRateLimiter(clock, burst=2, per_hour=1)
    limiter.acquire("a")
    clock.advance(24 * HOUR)
    assert limiter.available("a") == 2
    assert [limiter.acquire("a") for _ in range(3)][2] > 0


def test_a_message_costs_one_token_per_recipient() -> None:
    """
    Burst 5 at 1 per hour: 3 recipients, then 3 more is refused (only 2
    left, the third is an hour away), 2 goes through; more than the burst
    can never be taken (inf), whatever is left.
    """
    clock = Clock()
    limiter = SendRateLimiter(clock, burst=5, per_hour=1)
    assert verifyObject(ISendBudget, limiter)
    assert limiter.acquire("a", 3) == 0.0
    assert limiter.acquire("a", 3) == pytest.approx(HOUR)
    assert limiter.available("a") == 2
    assert limiter.acquire("a", 2) == 0.0
    assert limiter.acquire("a", 1) == pytest.approx(HOUR)
    assert limiter.acquire("b", 6) == math.inf
    assert limiter.available("b") == 5
    clock.advance(3 * HOUR)
    assert limiter.acquire("a", 3) == 0.0


def test_shared_limiter_asks_the_store_and_refuses_oversize_itself() -> None:
    """The shared budget is the store's; a count over the burst never reaches it."""
    calls: list[tuple[str, int, int, float]] = []

    class Store:
        def take_send_tokens(self, key: str, count: int, burst: int, per_hour: float) -> object:
            calls.append((key, count, burst, per_hour))
            return succeed(0.0)

    limiter = SharedSendRateLimiter(Store(), burst=4, per_hour=30)
    assert verifyObject(ISendBudget, limiter)
    assert successResultOf(limiter.take("k", 3)) == 0.0
    assert successResultOf(limiter.take("k", 5)) == math.inf
    assert calls == [("k", 3, 4, 30)]


def successResultOf(d: Deferred[float]) -> float:
    out: list[float] = []
    d.addCallback(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def test_accounts_have_separate_buckets() -> None:
    """One account's empty bucket does not stop another account."""
    limiter = SendRateLimiter(Clock(), burst=1, per_hour=1)
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    assert limiter.acquire("b") == 0.0


def test_full_buckets_are_dropped() -> None:
    """
    Memory is bounded: after 1,000 accounts each sent once and their
    buckets refilled, the next call leaves only its own bucket.
    """
    clock = Clock()
    limiter = SendRateLimiter(clock, burst=5, per_hour=60)
    for n in range(1000):
        limiter.acquire(f"account-{n}")
    assert len(limiter) == 1000
    clock.advance(60)  # one token back each: full again
    limiter.acquire("another")
    assert len(limiter) == 1


def test_bad_settings_are_refused() -> None:
    for burst, per_hour in [(0, 1.0), (1, 0.0), (1, float("nan")), (1, float("inf"))]:
        with pytest.raises(ValueError):
            SendRateLimiter(Clock(), burst=burst, per_hour=per_hour)


def test_key_is_the_smtp_login_not_the_grant_or_password() -> None:
    """Two logins (grants) of one mailbox share a bucket, whatever the password."""
    one = make_account()
    other = attrs.evolve(one, owner="another-grant", smtp_password="changed")
    assert send_key(one) == send_key(other)
    assert send_key(one) != send_key(attrs.evolve(one, smtp_username="someone-else@example.test"))
    assert one.smtp_username not in send_key(one)


# -- through the send handler ------------------------------------------------------


def make_ctx(
    burst: int = 2,
    per_hour: float = 1.0,
    files_sent: bool = False,
    sender: FakeSender | None = None,
) -> tuple[ToolContext, WritableServer, FakeSender, Clock]:
    server = WritableServer()
    server.mailbox("INBOX")
    server.mailbox("Drafts", "\\Drafts")
    server.mailbox("Sent", "\\Sent")
    clock = Clock()
    clock.advance(1_700_000_000)
    sender = sender or FakeSender()
    account = make_account()
    account = attrs.evolve(account, smtp=attrs.evolve(account.smtp, files_sent=files_sent))
    services = tool_services(
        reactor=clock,
        imap=FakeIMAPPool(server),
        smtp=sender,
        send_limiter=SendRateLimiter(clock, burst, per_hour),
    )
    return ToolContext(account=account, services=services), server, sender, clock


def test_refused_send_contacts_nothing_and_says_when_to_retry() -> None:
    """
    Burst 2: the third send is an isError-style ToolError naming the rate
    limit and the wait (3600 s); the SMTP fake saw two sends, Sent holds two
    copies and Drafts none.  An hour later a send goes through.
    """
    ctx, server, sender, clock = make_ctx()
    for n in range(2):
        run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", subject=f"m{n}")))
    with pytest.raises(ToolError) as caught:
        run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", subject="m2")))
    text = caught.value.message
    assert (
        "rate limit" in text and "Try again in 3600 seconds" in text and "Nothing was sent" in text
    )
    assert len(sender.sent) == 2
    assert len(commands(server, "APPEND")) == 2
    assert server.mailboxes["Drafts"].messages == []
    clock.advance(HOUR)
    run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", subject="m3")))
    assert len(sender.sent) == 3


def test_recipients_not_messages_are_counted() -> None:
    """
    Burst 5: one message to a (to), b (cc) and c (bcc) takes 3; the next to
    3 people is refused naming its 3 recipients and the wait, with nothing
    sent or filed; one to 2 people (a duplicate address counts once) goes.
    """
    ctx, server, sender, _ = make_ctx(burst=5)
    three = SendInput(to="a@example.test", cc="b@example.test", bcc="c@example.test", subject="3")
    assert run(SEND_MAIL_MESSAGE.handler(ctx, three)).status == "sent"
    with pytest.raises(ToolError) as caught:
        run(SEND_MAIL_MESSAGE.handler(ctx, three.model_copy(update={"subject": "again"})))
    text = caught.value.message
    assert "rate limit" in text and "this message has 3 recipients" in text, text
    assert "5 recipients at once" in text and "to, cc and bcc all count" in text, text
    assert "Try again in 3600 seconds" in text and "Nothing was sent" in text, text
    assert len(sender.sent) == 1 and len(commands(server, "APPEND")) == 1
    two = SendInput(to=["d@example.test", "D@example.test"], cc="e@example.test", subject="2")
    assert run(SEND_MAIL_MESSAGE.handler(ctx, two)).status == "sent"
    assert [len(recipients) for _, recipients, _ in sender.sent] == [3, 2]
    assert ctx.services.send_limiter.available(send_key(ctx.account)) == 0


def test_message_over_the_burst_is_refused_at_once() -> None:
    """Burst 2 and 3 recipients: refused, saying to send to fewer at a time; nothing taken."""
    ctx, server, sender, _ = make_ctx(burst=2)
    args = SendInput(to=["a@example.test", "b@example.test"], bcc="c@example.test")
    with pytest.raises(ToolError) as caught:
        run(SEND_MAIL_MESSAGE.handler(ctx, args))
    text = caught.value.message
    assert "this message has 3 recipients, more than" in text and "fewer recipients" in text, text
    assert "Nothing was sent" in text
    assert sender.sent == [] and commands(server, "APPEND") == []
    assert ctx.services.send_limiter.available(send_key(ctx.account)) == 2


def test_unavailable_shared_store_refuses_the_send() -> None:
    """A store that cannot answer: the send is refused (fail closed), nothing sent."""

    class DownStore:
        def take_send_tokens(self, key: str, count: int, burst: int, per_hour: float) -> object:
            return fail(ConnectionRefusedError("redis down"))

    ctx, server, sender, _ = make_ctx()
    services = attrs.evolve(ctx.services, send_limiter=SharedSendRateLimiter(DownStore(), 5, 10))
    ctx = attrs.evolve(ctx, services=services)
    with pytest.raises(ToolError) as caught:
        run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test")))
    assert "could not be checked" in caught.value.message
    assert "Nothing was sent" in caught.value.message
    assert "redis" not in caught.value.message.lower()
    assert sender.sent == [] and commands(server, "APPEND") == []


def test_drafts_are_not_limited() -> None:
    """With the bucket empty, drafts are still saved."""
    ctx, server, sender, _ = make_ctx(burst=1)
    run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test")))
    for n in range(3):
        saved = run(CREATE_DRAFT_MAIL_MESSAGE.handler(ctx, DraftInput(subject=f"d{n}")))
        assert saved.status == "saved"
    assert len(server.mailboxes["Drafts"].messages) == 3


def test_idempotent_replay_takes_no_token() -> None:
    """
    Burst 2: a send, then two replays of it (already_sent), then a second
    new send still goes out; only the third new one is refused.
    """
    ctx, _, sender, _ = make_ctx(burst=2)
    args = SendInput(to="bob@example.test", subject="once", idempotency_key="k-1")
    statuses = [run(SEND_MAIL_MESSAGE.handler(ctx, args)).status for _ in range(3)]
    assert statuses == ["sent", "already_sent", "already_sent"]
    second = run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", subject="new")))
    assert second.status == "sent"
    with pytest.raises(ToolError, match="rate limit"):
        run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", subject="third")))
    assert len(sender.sent) == 2


def test_invalid_message_takes_no_token() -> None:
    """A call refused before sending (attachment URL not ours) leaves the budget untouched."""
    ctx, _, _, _ = make_ctx(burst=1)
    with pytest.raises(ToolError, match="attachment_urls"):
        run(
            SEND_MAIL_MESSAGE.handler(
                ctx, SendInput(to="bob@example.test", attachment_urls=["https://evil.test/x"])
            )
        )
    assert ctx.services.send_limiter.available(send_key(ctx.account)) == 1


# -- SM-09: the SMTP server files sent mail itself -----------------------------------


def test_server_filed_send_appends_nothing_and_says_why() -> None:
    """files_sent: the message is sent once, no APPEND happens, the result says the server files it."""
    ctx, server, sender, _ = make_ctx(files_sent=True)
    result = run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", subject="x")))
    assert result.status == "sent" and result.sent_copy_filed_by_server is True
    assert (result.sent_folder, result.sent_uid) == (None, None)
    assert result.warnings == []
    assert len(sender.sent) == 1
    assert commands(server, "APPEND") == []


def test_default_send_files_its_copy_and_says_so() -> None:
    ctx, server, _, _ = make_ctx(files_sent=False)
    result = run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", subject="x")))
    assert result.sent_copy_filed_by_server is False and result.sent_folder == "Sent"
    assert len(commands(server, "APPEND")) == 1


def test_server_filed_unknown_outcome_files_no_marker_copy() -> None:
    """
    files_sent and an ambiguous outcome: no marker copy is appended (the
    server's own copy, if it went out, is what a retry finds), and the error
    says the status is unknown.
    """
    ctx, server, _, _ = make_ctx(
        files_sent=True,
        sender=FakeSender(SMTPOutcomeUnknown("connection lost after DATA.", stage="after-data")),
    )
    with pytest.raises(ToolError, match="Delivery status unknown") as caught:
        run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", idempotency_key="u")))
    assert "files sent mail itself" in caught.value.message
    assert commands(server, "APPEND") == []


def test_server_filed_definite_failure_still_keeps_a_draft() -> None:
    """files_sent changes nothing for a send that failed: the message is kept in Drafts."""
    ctx, server, _, _ = make_ctx(
        files_sent=True, sender=FakeSender(SMTPSendFailed("rejected", stage="envelope", code=550))
    )
    with pytest.raises(ToolError, match="Not sent"):
        run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test")))
    assert [c[1] for c in commands(server, "APPEND")] == ["Drafts"]
