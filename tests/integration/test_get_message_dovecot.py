"""
``get_mail_message`` on a warm pooled connection to the real Dovecot: the
freshness NOOP and the head's ``UID FETCH`` leave together (one round trip
fewer), and whatever another client changed meanwhile (flags, new mail, an
expunge) is still answered exactly (issue 17).
"""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import attrs
import pytest
import pytest_twisted

from mailmcp._toolkit import ToolError
from mailmcp.mail import _mime
from mailmcp.mail._mailbox_api import IMAPSession
from mailmcp.mail._untrusted import unmark_body
from mailmcp.tools._reading import GetMessageInput, _KnownStructures, get_mail_message
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
    # Read before on this connection: the body went with the head, and both again.
    assert [_short(c) for c, _ in written] == ["NOOP"] + ["UID FETCH 2"] * 4

    await expunge(wire, [2])
    with pytest.raises(ToolError, match="no message with UID 2"):
        await get_mail_message(wire.ctx, GetMessageInput(uid=2))
    again = await get_mail_message(wire.ctx, GetMessageInput(uid=1))
    assert again.subject == "first" and not again.seen


def _same(out: Any) -> dict[str, Any]:
    data: dict[str, Any] = out.model_dump()
    data["body"] = unmark_body(out.body)
    data.pop("notice")
    return data


@pytest_twisted.ensureDeferred
async def test_rereading_sends_the_body_with_the_head(wire: Wire) -> None:
    """
    A message read before on the connection: NOOP, head and body leave
    together (one round trip), and the answer is the one of the first read.
    Paging through a long HTML body this way gives the whole text; a wrong
    remembered structure is caught by the head's own and costs one FETCH more.
    """
    rows = "".join(f"<p>row {i:05d} <b>bold</b> <a href='https://e.example/{i}'>link</a></p>" for i in range(3000))
    message = EmailMessage(policy=SMTP)
    message["From"] = "news@example.test"
    message["Subject"] = "long html"
    message.set_content(f"<html><body>{rows}</body></html>", subtype="html")
    message.add_attachment(b"%PDF" * 10, maintype="application", subtype="pdf", filename="a.pdf")
    wire.deliver(message.as_bytes())
    first = await get_mail_message(wire.ctx, GetMessageInput(uid=1, max_body_chars=20_000))
    assert first.truncated and first.body_format == "text/html"

    async def grab(session: Any) -> Any:
        return session.protocol

    protocol = await wire.pool.run(wire.account, grab, read_only=True)
    written: list[tuple[str, int]] = []
    wire.pool.command_observers.append(
        lambda _label, command, args: written.append((f"{command} {args}", protocol.in_flight))
    )
    again = await get_mail_message(wire.ctx, GetMessageInput(uid=1, max_body_chars=20_000))
    assert _same(again) == _same(first)
    assert [(_short(c), n) for c, n in written] == [("NOOP", 1), ("UID FETCH 1", 2), ("UID FETCH 1", 3)]
    assert "BODY.PEEK[1]<0." in written[2][0]

    pieces = [unmark_body(first.body)]
    offset = first.next_offset
    while offset is not None:
        written.clear()
        page = await get_mail_message(wire.ctx, GetMessageInput(uid=1, max_body_chars=20_000, body_offset=offset))
        assert [_short(c) for c, _ in written] == ["NOOP", "UID FETCH 1", "UID FETCH 1"]
        pieces.append(unmark_body(page.body))
        offset = page.next_offset
    assert len(pieces) > 3
    assert "".join(pieces) == _mime.html_to_text(f"<html><body>{rows}</body></html>")

    # A remembered structure that is not the message's (a smaller text part,
    # so less of it fetched): caught, the body fetched again as it should be.
    async def poison(session: Any) -> None:
        known = _KnownStructures.of(session)
        assert known is not None
        state = session.selected
        remembered = known.get("INBOX", state, 1)
        assert remembered is not None
        raw, right = remembered
        (text,) = right.body_parts
        wrong = attrs.evolve(right, body_parts=(attrs.evolve(text, size=900),))
        known.put("INBOX", state, 1, [*raw[:-1], "other"], wrong)

    await wire.pool.run(wire.account, poison, read_only=True)
    written.clear()
    checked = await get_mail_message(wire.ctx, GetMessageInput(uid=1, max_body_chars=20_000))
    assert _same(checked) == _same(first)
    assert [_short(c) for c, _ in written] == ["NOOP"] + ["UID FETCH 1"] * 3
    assert "BODY.PEEK[1]<0.900>" in written[2][0] and "BODY.PEEK[1]<0.900>" not in written[3][0]
