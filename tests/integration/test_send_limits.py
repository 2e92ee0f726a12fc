"""
Send limits through a real ``twistd mailmcp`` daemon, the real OAuth login
and MCP ``tools/call`` over HTTP, with Postfix delivering to Dovecot:

- SM-12: ``--send-burst 3 --sends-per-hour 1`` lets exactly three of five
  one-recipient sends out; the other two are ``isError`` results naming the
  rate limit, and reach neither Postfix nor Sent.
- SM-12, recipients and shared: the budget counts recipients (to + cc +
  bcc), and two daemons on one Redis store share it.
- SM-09: a client provisioned with ``--smtp-files-sent`` sends once and adds
  no copy to Sent (the provider would file its own); the result says so.
  A client without the flag, on the same daemon, does file a copy.
"""

from __future__ import annotations

import email
from email import policy
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.harness import Services, generate_client
from tests.hostile import mcp_http
from tests.integration.mail_live import fresh_users, wait_for_mail
from tests.integration.send_limit_client import count, login, send

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_send_burst_lets_exactly_three_of_five_out(
    services: Services, daemon_factory: Any
) -> None:
    """
    Burst 3 at 1 per hour, five sends in a row: calls 1-3 are sent, 4 and 5
    are isError with "rate limit" and a retry time; Bob's INBOX receives
    exactly the three sent Message-IDs, and Sent holds three copies.  A
    draft is still saved afterwards (drafts are not limited).
    """
    (me, pw), (bob, bob_pw) = fresh_users(services, 2)
    daemon = daemon_factory(services, "--send-burst", "3", "--sends-per-hour", "1")
    token = await login(daemon, generate_client(daemon.state_dir, services), me, pw)
    results = [
        await send(daemon, token, {"to": bob, "subject": f"burst {n}", "text_body": "hi"})
        for n in range(5)
    ]
    ok, refused = results[:3], results[3:]
    assert all(
        r.get("isError") is not True and r["structuredContent"]["status"] == "sent" for r in ok
    ), ok
    for r in refused:
        assert r["isError"] is True
        text = mcp_http.text_of(r)
        assert "rate limit" in text and "Try again in" in text and "Nothing was sent" in text, text
    delivered = await wait_for_mail(services, bob, bob_pw, count=3)
    sent_ids = {r["structuredContent"]["message_id"] for r in ok}
    got_ids = {email.message_from_bytes(m, policy=policy.default)["Message-ID"] for m in delivered}
    assert len(delivered) == 3 and got_ids == sent_ids
    assert await count(services, me, pw, "Sent") == 3
    assert await count(services, me, pw, "Drafts") == 0  # refused sends are not kept as drafts
    draft = await threads.deferToThread(
        mcp_http.call,
        daemon.base_url,
        token,
        "create_draft_mail_message",
        {"subject": "still allowed"},
    )
    assert draft.get("isError") is not True and draft["structuredContent"]["status"] == "saved", (
        draft
    )


@pytest_twisted.ensureDeferred
async def test_two_daemons_on_one_redis_share_one_recipient_budget(
    services: Services, daemon_factory: Any, tmp_path: Any
) -> None:
    """
    Two daemons on one Redis store, ``--send-burst 3 --sends-per-hour 1``,
    the same mailbox logged in at each.  Through A, one message to bob (to)
    and carol (bcc) uses 2 of 3; through B, a message to both is refused
    (2 recipients, 1 left: "rate limit", "2 recipients", nothing sent or
    filed), and one to bob alone is sent; then A refuses even one.  Bob
    receives exactly 2 messages, carol 1, and Sent holds 2 copies.
    """
    (me, pw), (bob, bob_pw), (carol, carol_pw) = fresh_users(services, 3)
    args = ("--store", services.redis_url, "--send-burst", "3", "--sends-per-hour", "1")
    first = daemon_factory(services, *args, state_dir=tmp_path / "a")
    second = daemon_factory(services, *args, state_dir=tmp_path / "b")
    token_a = await login(first, generate_client(first.state_dir, services), me, pw)
    token_b = await login(second, generate_client(second.state_dir, services), me, pw)

    both = await send(first, token_a, {"to": bob, "bcc": carol, "subject": "two", "text_body": "1"})
    assert both.get("isError") is not True and both["structuredContent"]["status"] == "sent", both
    refused = await send(second, token_b, {"to": bob, "cc": carol, "subject": "no", "text_body": "x"})
    assert refused["isError"] is True, refused
    text = mcp_http.text_of(refused)
    assert "rate limit" in text and "this message has 2 recipients" in text, text
    assert "Nothing was sent" in text and "Try again in" in text, text
    one = await send(second, token_b, {"to": bob, "subject": "one", "text_body": "2"})
    assert one.get("isError") is not True and one["structuredContent"]["status"] == "sent", one
    empty = await send(first, token_a, {"to": carol, "subject": "none", "text_body": "y"})
    assert empty["isError"] is True and "rate limit" in mcp_http.text_of(empty), empty

    bob_mail = await wait_for_mail(services, bob, bob_pw, count=2)
    carol_mail = await wait_for_mail(services, carol, carol_pw, count=1)
    subjects = sorted(
        str(email.message_from_bytes(m, policy=policy.default)["Subject"]) for m in bob_mail
    )
    assert subjects == ["one", "two"]
    assert [
        str(email.message_from_bytes(m, policy=policy.default)["Subject"]) for m in carol_mail
    ] == ["two"]
    assert await count(services, me, pw, "Sent") == 2
    assert await count(services, me, pw, "Drafts") == 0


@pytest_twisted.ensureDeferred
async def test_smtp_files_sent_client_adds_no_copy_to_sent(
    services: Services, daemon_factory: Any
) -> None:
    """
    A client generated with --smtp-files-sent: the send is delivered once,
    Sent stays empty (no APPEND) and the result carries
    sent_copy_filed_by_server=true with sent_folder null.  A second user of
    a client without the flag, on the same daemon, gets its copy in Sent.
    """
    (me, pw), (other, other_pw), (bob, bob_pw) = fresh_users(services, 3)
    daemon = daemon_factory(services)
    filing = generate_client(daemon.state_dir, services, "--smtp-files-sent")
    assert filing["smtp"].get("files_sent") is True
    plain = generate_client(daemon.state_dir, services)
    assert "files_sent" not in plain["smtp"]
    assert await count(services, me, pw, "Sent") == 0

    result = await send(
        daemon,
        await login(daemon, filing, me, pw),
        {"to": bob, "subject": "filed by the server", "text_body": "once"},
    )
    assert result.get("isError") is not True, result
    structured = result["structuredContent"]
    assert structured["status"] == "sent" and structured["sent_copy_filed_by_server"] is True
    assert structured["sent_folder"] is None and structured["warnings"] == []
    assert '"sent_copy_filed_by_server":true' in mcp_http.text_of(result).replace(" ", "")
    [delivered] = await wait_for_mail(services, bob, bob_pw, count=1)
    assert (
        email.message_from_bytes(delivered, policy=policy.default)["Message-ID"]
        == structured["message_id"]
    )
    assert await count(services, me, pw, "Sent") == 0

    control = await send(
        daemon,
        await login(daemon, plain, other, other_pw),
        {"to": bob, "subject": "filed by us", "text_body": "copy"},
    )
    assert control["structuredContent"]["sent_copy_filed_by_server"] is False
    assert control["structuredContent"]["sent_folder"] == "Sent"
    assert await count(services, other, other_pw, "Sent") == 1
    assert len(await wait_for_mail(services, bob, bob_pw, count=2)) == 2
