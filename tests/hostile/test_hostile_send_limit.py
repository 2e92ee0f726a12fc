"""
SM-12 through a real daemon: a token (a runaway model, or a stolen token)
cannot get around the send limit by packing recipients into one message.
With ``--send-burst 3 --sends-per-hour 1``, one message to 1 + 3 bcc
recipients is refused whole; a message to 3 goes out; after it not even one
recipient more is allowed.  Postfix delivers only the allowed message.
"""

from __future__ import annotations

import email
from email import policy
from typing import Any

import pytest
import pytest_twisted

from tests.harness import Services, generate_client
from tests.hostile import mcp_http
from tests.integration.mail_live import fresh_users, wait_for_mail
from tests.integration.send_limit_client import count, login, send

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_bcc_packing_does_not_escape_the_send_limit(
    services: Services, daemon_factory: Any
) -> None:
    (me, pw), (bob, bob_pw), *others = fresh_users(services, 5)
    hidden = [address for address, _ in others]
    daemon = daemon_factory(services, "--send-burst", "3", "--sends-per-hour", "1")
    token = await login(daemon, generate_client(daemon.state_dir, services), me, pw)

    packed = await send(daemon, token, {"to": bob, "bcc": hidden, "subject": "packed", "text_body": "x"})
    assert packed["isError"] is True, packed
    text = mcp_http.text_of(packed)
    assert "this message has 4 recipients, more than" in text and "Nothing was sent" in text, text

    allowed = await send(daemon, token, {"to": bob, "bcc": hidden[:2], "subject": "three", "text_body": "y"})
    assert allowed.get("isError") is not True, allowed
    assert allowed["structuredContent"]["status"] == "sent"
    after = await send(daemon, token, {"to": bob, "subject": "one more", "text_body": "z"})
    assert after["isError"] is True and "rate limit" in mcp_http.text_of(after), after

    delivered = await wait_for_mail(services, bob, bob_pw, count=1)
    # Give a wrongly accepted message time to arrive too; none may.
    delivered = await wait_for_mail(services, bob, bob_pw, count=2, timeout=2.0)
    assert [str(email.message_from_bytes(m, policy=policy.default)["Subject"]) for m in delivered] == [
        "three"
    ]
    assert len(await wait_for_mail(services, others[2][0], others[2][1], count=1, timeout=2.0)) == 0
    assert await count(services, me, pw, "Sent") == 1
    assert await count(services, me, pw, "Drafts") == 0
