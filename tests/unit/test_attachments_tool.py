"""
Unit tests for ``get_mail_attachment_link`` and the helpers the mail tools
use (part fetching, multi-part linking, attachment_urls resolution), on the
in-memory IMAP fake and the local store with a synchronous pool.  No sockets.
"""

from __future__ import annotations

import base64
import email
import os
import re
from collections.abc import Callable, Coroutine
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mailmcp._toolkit import ToolContext, ToolError
from mailmcp.attachments import Limits, LocalAttachmentStore
from mailmcp.attachments._helpers import (
    StoredPartIndex,
    decode_part,
    link_parts,
    resolve_attachment_urls,
)
from mailmcp.oauth._keyring import KeyRing, new_master_key
from mailmcp.testing import (
    FakeIMAPPool,
    FakeIMAPServer,
    FakeIMAPSession,
    make_account,
    tool_services,
)
from mailmcp.tools._attachments import TOOLS, AttachmentLinkInput, get_mail_attachment_link

T = TypeVar("T")
BINARY = bytes(range(256)) * 40 + os.urandom(1000)

MESSAGE = (
    b"From: Sender <sender@example.test>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: files\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"See attached.\r\n"
    b"--b1\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename*=UTF-8''..%2F..%2Fd%C3%A9j%C3%A0.bin\r\n"
    b"\r\n"
    + base64.encodebytes(BINARY).replace(b"\n", b"\r\n")
    + b"--b1\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1; name=notes.txt\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b'Content-Disposition: attachment; filename="notes.txt"\r\n'
    b"\r\n"
    b"Gr=FC=DFe aus K=F6ln\r\n"
    b"--b1--\r\n"
)


class MimeSession(FakeIMAPSession):
    """The shared fake, taught ``BODY.PEEK[n.MIME]`` (part headers), which Dovecot serves."""

    async def fetch(self, message_set: str, items: str, *, uid: bool = True) -> list[Any]:
        mime = re.findall(r"BODY\.PEEK\[([0-9.]+)\.MIME\]", items)
        rest = re.sub(r"BODY\.PEEK\[[0-9.]+\.MIME\]\s*", "", items)
        results = await super().fetch(message_set, rest, uid=uid)
        self.server.commands[-1] = ("UID FETCH", message_set, items)
        assert self._selected is not None
        for result in results:
            raw = next(m.raw for m in self._selected.messages if m.uid == result.uid)
            parsed = email.message_from_bytes(raw)
            for section in mime:
                part: Message | None = parsed
                for index in section.split("."):
                    payload = part.get_payload() if part is not None else None
                    if isinstance(payload, list):
                        part = payload[int(index) - 1] if int(index) <= len(payload) else None
                if part is None:
                    continue
                head = b"".join(f"{k}: {v}\r\n".encode() for k, v in part.items()) + b"\r\n"
                result.sections[f"{section}.MIME"] = head
        return results


class MimeServer(FakeIMAPServer):
    def session(self) -> FakeIMAPSession:
        return MimeSession(self)


class SyncPool:
    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        self.calls += 1
        try:
            result = f(*a, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class ClockReactor(Clock):
    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        f(*a, **kw)


def result_of(coro: Coroutine[Any, Any, T]) -> T:
    box: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(box.append)
    assert box, "did not complete synchronously"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]  # type: ignore[no-any-return]


@pytest.fixture
def world(tmp_path: Path) -> Any:
    reactor = ClockReactor()
    reactor.advance(1_800_000_000)
    server = MimeServer()
    server.mailbox("INBOX").add(MESSAGE)
    store = LocalAttachmentStore(
        tmp_path, KeyRing([new_master_key()]), reactor, SyncPool(), "http://127.0.0.1:8080",  # type: ignore[arg-type]
        link_lifetime=900, limits=Limits(max_attachment_bytes=64 * 1024, max_message_bytes=30 * 1024, max_count=3),
    )
    services = tool_services(reactor=reactor, imap=FakeIMAPPool(server), attachments=store)
    ctx = ToolContext(account=make_account(owner="grant-a"), services=services)
    return ctx, server, store


def call(ctx: ToolContext, **kw: Any) -> Any:
    return result_of(get_mail_attachment_link(ctx, AttachmentLinkInput(**kw)))


def test_tool_declared() -> None:
    """The tool is exported, honest about publishing (not read-only) and idempotent."""
    tool = TOOLS[0]
    assert tool.name == "get_mail_attachment_link"
    assert tool.annotations()["readOnlyHint"] is False and tool.idempotent


def test_binary_attachment_round_trip(world: Any) -> None:
    """The part is decoded from base64, stored, and its link resolves to the exact bytes."""
    ctx, _, store = world
    out = call(ctx, folder="INBOX", uid=1, part="2")
    assert out.filename == "déjà.bin" and out.size == len(BINARY)
    assert out.uidvalidity == 1000 and out.expires_at.endswith("Z")
    resolved = result_of(store.resolve("grant-a", out.url))
    assert resolved.data == BINARY and resolved.filename == "déjà.bin"


def test_only_the_part_is_fetched_with_peek(world: Any) -> None:
    """One UID FETCH with BODY.PEEK of the part and its MIME header, bounded; never the whole message."""
    ctx, server, _ = world
    call(ctx, folder="INBOX", uid=1, part="2")
    fetches = [c for c in server.commands if c[0] == "UID FETCH"]
    assert len(fetches) == 1
    items = fetches[0][2]
    assert re.fullmatch(r"\(UID BODY\.PEEK\[2\.MIME\] BODY\.PEEK\[2\]<0\.\d+>\)", items)


def test_second_read_stores_nothing(world: Any) -> None:
    """Asking again gives a fresh link to the same object; nothing new is written."""
    ctx, _, store = world
    first = call(ctx, folder="INBOX", uid=1, part="2")
    second = call(ctx, folder="INBOX", uid=1, part="2")
    assert store.puts == 1 and first.sha256 == second.sha256
    assert len([p for p in store.root.rglob("*") if p.is_file()]) == 1


def test_inline_text(world: Any) -> None:
    """A small text attachment comes back as text, decoded from its charset."""
    ctx, _, _ = world
    out = call(ctx, folder="INBOX", uid=1, part="3", inline_text=True)
    assert out.text == "Grüße aus Köln" and not out.text_truncated
    assert out.content_type == "text/plain" and out.url


def test_errors(world: Any) -> None:
    """Stale UIDVALIDITY, unknown UID, missing part and bad part numbers are clear tool errors."""
    ctx, _, _ = world
    with pytest.raises(ToolError, match="UIDVALIDITY"):
        call(ctx, folder="INBOX", uid=1, part="2", uidvalidity=999)
    with pytest.raises(ToolError, match="no message"):
        call(ctx, folder="INBOX", uid=7, part="2")
    with pytest.raises(ToolError, match="no part|not found|has no"):
        call(ctx, folder="INBOX", uid=1, part="9")
    with pytest.raises(ToolError):
        call(ctx, folder="Nope", uid=1, part="2")
    with pytest.raises(ValueError):
        AttachmentLinkInput(folder="INBOX", uid=1, part="2]<0.1> BODY[")


def test_too_large_part_refused(world: Any, tmp_path: Path) -> None:
    """A part over the cap is refused from the size of the bounded fetch, and nothing is stored."""
    ctx, server, store = world
    big = MESSAGE.replace(base64.encodebytes(BINARY).replace(b"\n", b"\r\n"),
                          base64.encodebytes(os.urandom(70 * 1024)).replace(b"\n", b"\r\n"))
    server.mailbox("INBOX").add(big)
    with pytest.raises(ToolError, match="cap"):
        call(ctx, folder="INBOX", uid=2, part="2")
    assert store.puts == 0


def test_link_parts_for_get_mail_message(world: Any) -> None:
    """link_parts links several parts in one fetch and skips parts over the caps."""
    ctx, server, store = world

    async def op(session: Any) -> Any:
        await session.examine("INBOX")
        return await link_parts(ctx, session, 1, [("2", 14000), ("3", 30), ("4", 10**9)])

    results = result_of(ctx.services.imap.run(ctx.account, op, read_only=True))
    assert result_of(store.resolve("grant-a", results["2"].url)).data == BINARY
    assert results["3"].part.filename == "notes.txt"
    assert isinstance(results["4"], str) and "cap" in results["4"]
    assert len([c for c in server.commands if c[0] == "UID FETCH"]) == 1


def test_link_parts_reread_skips_the_imap_fetch(world: Any) -> None:
    """
    With the stored-part index, reading the same message again mints fresh
    links to the same objects without fetching the attachments from IMAP.
    """
    ctx, server, store = world
    ctx = ToolContext(account=ctx.account, services=attrs.evolve(ctx.services, attachment_index=StoredPartIndex()))

    async def op(session: Any) -> Any:
        await session.examine("INBOX")
        return await link_parts(ctx, session, 1, [("2", 14000), ("3", 30)])

    first = result_of(ctx.services.imap.run(ctx.account, op, read_only=True))
    fetches_after_first = len([c for c in server.commands if c[0] == "UID FETCH"])
    ctx.services.reactor.advance(60)
    second = result_of(ctx.services.imap.run(ctx.account, op, read_only=True))
    assert len([c for c in server.commands if c[0] == "UID FETCH"]) == fetches_after_first == 1
    assert second["2"].url != first["2"].url and second["2"].sha256 == first["2"].sha256
    assert result_of(store.resolve("grant-a", second["2"].url)).data == BINARY
    assert second["3"].part.filename == "notes.txt" and store.puts == 2
    ctx.services.reactor.advance(7200)
    result_of(ctx.services.imap.run(ctx.account, op, read_only=True))
    assert len([c for c in server.commands if c[0] == "UID FETCH"]) == 2, "an old entry is fetched again"


def test_resolve_urls_matrix_refused_without_io(world: Any) -> None:
    """Every URL in the attack matrix is a ToolError and the store does no I/O at all."""
    ctx, _, store = world
    good = call(ctx, folder="INBOX", uid=1, part="3").url
    pool_calls = store._pool.calls
    for url in [
        "file:///etc/passwd", "|id", "/etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/",
        "http://127.0.0.1:8080/etc/passwd", "http://[::1]/", "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/", "http://0x7f000001/", "http://2130706433/",
        "http://017700000001/", "http://100.64.0.1/", "http://metadata.google.internal/",
        good.replace("127.0.0.1", "2130706433"), good + "&redirect=http://169.254.169.254/",
    ]:
        with pytest.raises(ToolError, match="attachment_urls\\[1\\]"):
            result_of(resolve_attachment_urls(ctx, [good, url]))
    assert store._pool.calls == pool_calls


def test_resolve_urls_caps(world: Any) -> None:
    """More URLs than the count cap, or more bytes than the message cap, are refused."""
    ctx, _, _ = world
    link = call(ctx, folder="INBOX", uid=1, part="2").url
    with pytest.raises(ToolError, match="at most 3"):
        result_of(resolve_attachment_urls(ctx, [link] * 4))
    with pytest.raises(ToolError, match="together"):
        result_of(resolve_attachment_urls(ctx, [link] * 3))
    assert [r.data for r in result_of(resolve_attachment_urls(ctx, [link]))] == [BINARY]


def test_decode_part_rfc2047_name() -> None:
    """Filenames in RFC 2047 encoded-words are decoded and sanitised."""
    head = b"Content-Type: application/pdf; name=\"=?utf-8?q?r=C3=A9sum=C3=A9/..pdf?=\"\r\n\r\n"
    part = decode_part(head, b"%PDF")
    assert part.filename == "..pdf".strip(".") + "pdf" or part.filename.endswith("pdf")
    assert "/" not in part.filename and part.data == b"%PDF"
