"""
``get_mail_message`` on a warm pooled connection to the real Dovecot: the
freshness NOOP and the head's ``UID FETCH`` leave together (one round trip
fewer), and whatever another client changed meanwhile (flags, new mail, an
expunge) is still answered exactly (issue 17).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from mailmcp._toolkit import ToolError
from mailmcp.mail._mailbox_api import IMAPSession
from mailmcp.mail._untrusted import unmark_body
from mailmcp.tools._reading import GetMessageInput, get_mail_message
from tests.harness import Services
from tests.integration.dovecot_wire import Wire, expunge, plain

pytestmark = pytest.mark.integration


@pytest.fixture
def wire(services: Services) -> Iterator[Wire]:
    made = Wire(services)
    yield made
    pytest_twisted.blockon(made.pool.stopService())


def _short(command: str) -> str:
    return command.split(" (")[0].strip()


@pytest_twisted.ensureDeferred
async def test_warm_read_pipelines_the_head_and_stays_exact(wire: Wire) -> None:
    """
    Warm: NOOP and the head's UID FETCH are in flight together, then the
    body.  A flag set and new mail from another connection make the NOOP
    bring news: the pipelined head is dropped and fetched again, so the
    answer has the new flag; an expunged message is reported as gone.
    """
    wire.deliver(plain("first", "one\n"))
    wire.deliver(plain("second", "two\n"))
    cold = await get_mail_message(wire.ctx, GetMessageInput(uid=1))
    assert cold.subject == "first" and unmark_body(cold.body).strip() == "one"

    async def grab(session: Any) -> Any:
        return session.protocol

    protocol = await wire.pool.run(wire.account, grab, read_only=True)
    written: list[tuple[str, int]] = []  # (command, commands in flight once it is written)
    wire.pool.command_observers.append(
        lambda _label, command, args: written.append((f"{command} {args}", protocol.in_flight))
    )
    warm = await get_mail_message(wire.ctx, GetMessageInput(uid=2))
    assert warm.subject == "second" and unmark_body(warm.body).strip() == "two"
    assert not warm.flagged
    assert [(_short(c), n) for c, n in written] == [
        ("NOOP", 1),
        ("UID FETCH 2", 2),
        ("UID FETCH 2", 1),
    ], written
    assert "BODYSTRUCTURE" in written[1][0] and "BODY.PEEK[1]<0." in written[2][0]

    async def flag(session: IMAPSession) -> None:
        await session.select("INBOX")
        await session.uid_store([2], "+FLAGS", ["\\Flagged"])

    await wire.session(flag)
    wire.deliver(plain("third"))
    written.clear()
    fresh = await get_mail_message(wire.ctx, GetMessageInput(uid=2))
    assert fresh.flagged and fresh.subject == "second"
    assert [_short(c) for c, _ in written] == ["NOOP", "UID FETCH 2", "UID FETCH 2", "UID FETCH 2"]

    await expunge(wire, [2])
    with pytest.raises(ToolError, match="no message with UID 2"):
        await get_mail_message(wire.ctx, GetMessageInput(uid=2))
    again = await get_mail_message(wire.ctx, GetMessageInput(uid=1))
    assert again.subject == "first" and not again.seen
