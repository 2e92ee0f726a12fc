"""
What the mail tools use from the attachment store.

- `fetch_part` / `link_part`: read one MIME part of a message with
  ``BODY.PEEK[part]`` (bounded by a partial fetch) on a leased IMAP session,
  store it content-addressed for the caller and return a fresh link.  Used by
  ``get_mail_attachment_link`` and by ``get_mail_message`` for its
  ``attachments[].url``.
- `resolve_attachment_urls`: turn ``attachment_urls`` given to send/draft
  into bytes, accepting only links this server issued to the caller, with
  count and size caps.  Anything else is a `ToolError` and no request is made.
"""

from __future__ import annotations

import binascii
import datetime
import email.parser
import email.policy
import quopri
import re
from collections import OrderedDict
from collections.abc import Sequence
from email._encoded_words import decode_b  # what get_payload(decode=True) uses
from email.message import EmailMessage
from typing import Any

import attrs

from .._toolkit import ToolContext, ToolError
from ..mail._mailbox_api import IMAPSession
from ._common import AttachmentError, Limits, ResolvedAttachment, sanitise_filename

PART_PATTERN = r"^[1-9][0-9]{0,3}(\.[1-9][0-9]{0,3}){0,15}$"
_PART = re.compile(PART_PATTERN)
#: Text attachments up to this many characters may be returned inline.
INLINE_TEXT_MAX = 32 * 1024


@attrs.frozen
class FetchedPart:
    """One decoded MIME part."""

    data: bytes
    filename: str
    content_type: str
    charset: str | None


@attrs.frozen
class PartLink:
    """A stored part and its fresh link (``url`` None when storing failed)."""

    part: FetchedPart
    size: int
    sha256: str | None
    url: str | None
    expires_at: str | None
    error: str | None = None
    obj: Any = None


class StoredPartIndex:
    """
    Which message parts this process stored recently, so that reading the
    same message again mints fresh links without fetching its attachments
    from IMAP again.  Keyed by owner, mailbox, UIDVALIDITY, UID and part, so
    a renumbered mailbox never maps to the wrong bytes; bounded in size and
    age (entries live shorter than the S3 re-upload horizon).
    """

    def __init__(self, max_entries: int = 20_000, max_age: float = 3600.0) -> None:
        self._entries: OrderedDict[
            tuple[str, str, int, int, str], tuple[float, Any, FetchedPart]
        ] = OrderedDict()
        self._max_entries = max_entries
        self._max_age = max_age

    def get(
        self, key: tuple[str, str, int, int, str], now: float
    ) -> tuple[Any, FetchedPart] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, obj, part = entry
        if now - stored_at > self._max_age:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return obj, part

    def put(
        self, key: tuple[str, str, int, int, str], now: float, obj: Any, part: FetchedPart
    ) -> None:
        self._entries[key] = (now, obj, part)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def encoded_cap(max_bytes: int) -> int:
    """How many transfer-encoded bytes may hold C{max_bytes} decoded (base64 + line breaks)."""
    return max_bytes * 138 // 100 + 4096


def decode_part(mime_header: bytes, body: bytes) -> FetchedPart:
    """
    Undo the part's Content-Transfer-Encoding and read its filename and type
    from the part header (RFC 2231 and RFC 2047 names included).

    Only the header goes through the email package when it parses cleanly
    and the part is a leaf in base64, quoted-printable or no encoding: the
    body is decoded as ``get_payload(decode=True)`` decodes it, without
    feeding megabytes through its line parser on the reactor (40 ms for a
    2 MB PDF).  Anything else is parsed whole, as before.
    """
    if mime_header and not mime_header.endswith(b"\r\n\r\n") and not mime_header.endswith(b"\n\n"):
        mime_header = mime_header.rstrip(b"\r\n") + b"\r\n\r\n"
    data: bytes | None = None
    message: EmailMessage | None = None
    if mime_header:
        head = email.parser.BytesParser(policy=email.policy.default).parsebytes(mime_header)
        assert isinstance(head, EmailMessage)
        if head.get_payload() == "" and head.get_content_maintype() not in _CONTAINERS:
            message = head
            data = _decoded_payload(str(head.get("content-transfer-encoding", "")).lower(), body)
    if message is None or data is None:
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            mime_header + body
        )
        assert isinstance(message, EmailMessage)
        payload = message.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else body
    try:
        filename = message.get_filename()
    except (ValueError, TypeError, LookupError):
        filename = None
    return FetchedPart(
        data=data,
        filename=sanitise_filename(filename),
        content_type=message.get_content_type(),
        charset=message.get_content_charset(),
    )


#: Parts the email package parses into subparts (their payload is not bytes).
_CONTAINERS = ("multipart", "message")


def _decoded_payload(cte: str, body: bytes) -> bytes | None:
    """
    What ``Message.get_payload(decode=True)`` gives for a leaf whose payload
    is C{body} (the parser keeps a leaf's lines as they are); None for an
    encoding left to the email package (uuencode).
    """
    if cte == "base64":
        # b"".join(body.splitlines()), in one C pass.
        joined = body.translate(None, b"\r\n")
        pad = len(joined) % 4
        try:
            # What decode_b's first try gives when it succeeds, without its
            # regular expression over megabytes; damaged data goes to it.
            return binascii.a2b_base64(
                joined + b"==="[: 4 - pad] if pad else joined, strict_mode=True
            )
        except binascii.Error:
            decoded: bytes = decode_b(joined)[0]
            return decoded
    if cte == "quoted-printable":
        return quopri.decodestring(body)
    if cte in ("x-uuencode", "uuencode", "uue", "x-uue"):
        return None
    return body


async def fetch_part(session: IMAPSession, uid: int, part: str, max_bytes: int) -> FetchedPart:
    """
    ``UID FETCH uid (BODY.PEEK[part.MIME] BODY.PEEK[part]<0.cap>)`` on the
    already opened mailbox: only the one part crosses the wire, and never
    more than the cap.

    :raises ToolError: bad part, no such message or part, too large.
    """
    if not _PART.fullmatch(part):
        raise ToolError("part must be a MIME part number like 2 or 1.2")
    cap = encoded_cap(max_bytes)
    fetched = await session.fetch(
        str(int(uid)), f"(UID BODY.PEEK[{part}.MIME] BODY.PEEK[{part}]<0.{cap + 1}>)"
    )
    for message in fetched:
        if message.uid == uid:
            break
    else:
        raise ToolError(f"no message with UID {uid} in this folder")
    body = message.sections.get(part)
    header = message.sections.get(f"{part}.MIME", b"")
    if body is None or (not body and not header):
        # Servers answer an empty string (or NIL) for a part that does not exist.
        raise ToolError(f"message {uid} has no part {part}")
    if len(body) > cap:
        raise ToolError(f"attachment part {part} is over the {max_bytes}-byte cap")
    decoded = decode_part(header, body)
    if len(decoded.data) > max_bytes:
        raise ToolError(f"attachment part {part} is over the {max_bytes}-byte cap")
    return decoded


def _iso(seconds: float) -> str:
    return (
        datetime.datetime.fromtimestamp(int(seconds), datetime.UTC)
        .isoformat()
        .replace("+00:00", "Z")
    )


def _link_lifetime(store: Any, lifetime: float | None) -> float:
    """The asked-for link lifetime, capped by the store's configured one."""
    configured: float = store.link_lifetime
    return configured if lifetime is None else min(lifetime, configured)


async def store_and_link(
    ctx: ToolContext,
    data: bytes,
    filename: str,
    content_type: str,
    lifetime: float | None = None,
) -> PartLink:
    """
    Store C{data} for the caller and mint a link.  A storage failure is not
    raised: it comes back as ``url=None`` with an ``error``, so a message can
    still be read when the store is down (S3-02).
    """
    part = FetchedPart(data, sanitise_filename(filename), content_type, None)
    store = ctx.services.attachments
    if store is None:
        return PartLink(part, len(data), None, None, None, "attachment storage is not configured")
    try:
        obj = await store.put(ctx.account.owner, data, content_type)
        limit = _link_lifetime(store, lifetime)
        url = store.link(ctx.account.owner, obj, part.filename, content_type, limit)
    except AttachmentError as e:
        return PartLink(part, len(data), None, None, None, e.message)
    return PartLink(
        part, obj.size, obj.sha256, url, _iso(ctx.services.reactor.seconds() + limit), obj=obj
    )


async def link_part(
    ctx: ToolContext, session: IMAPSession, uid: int, part: str, lifetime: float | None = None
) -> PartLink:
    """`fetch_part` then `store_and_link`, for a mailbox already open on C{session}."""
    limits = _limits(ctx)
    fetched = await fetch_part(session, uid, part, limits.max_attachment_bytes)
    linked = await store_and_link(
        ctx, fetched.data, fetched.filename, fetched.content_type, lifetime
    )
    return attrs.evolve(linked, part=fetched)


async def link_parts(
    ctx: ToolContext,
    session: IMAPSession,
    uid: int,
    parts: Sequence[tuple[str, int]],
    lifetime: float | None = None,
) -> dict[str, PartLink | str]:
    """
    Links for several attachments of one message in one ``UID FETCH``, for
    ``get_mail_message``: C{parts} are (part id, encoded size from
    BODYSTRUCTURE).  Parts over the per-attachment cap, or beyond the
    per-message budget, are not fetched at all; for them (and when storage
    fails) the value is an error string instead of a `PartLink`.
    """
    limits = _limits(ctx)
    cap = encoded_cap(limits.max_attachment_bytes)
    budget = encoded_cap(limits.max_message_bytes)
    results: dict[str, PartLink | str] = {}
    wanted: list[str] = []
    for part, size in parts[: limits.max_count]:
        if not _PART.fullmatch(part):
            results[part] = "not a valid part number"
        elif size > cap:
            results[part] = f"over the {limits.max_attachment_bytes}-byte cap; no link"
        elif size > budget:
            results[part] = "over this message's attachment budget; use get_mail_attachment_link"
        else:
            budget -= size
            wanted.append(part)
    for part, _ in parts[limits.max_count :]:
        results[part] = "too many attachments; use get_mail_attachment_link"
    index = ctx.services.attachment_index
    selected = session.selected
    now = ctx.services.reactor.seconds()

    def index_key(part: str) -> tuple[str, str, int, int, str] | None:
        if index is None or selected is None:
            return None
        return (ctx.account.owner, selected.name, selected.uidvalidity, int(uid), part)

    store = ctx.services.attachments
    if index is not None and store is not None:
        for part in list(wanted):
            key = index_key(part)
            known = index.get(key, now) if key is not None else None
            if known is None:
                continue
            obj, decoded = known
            limit = _link_lifetime(store, lifetime)
            wanted.remove(part)
            try:
                url = store.link(
                    ctx.account.owner, obj, decoded.filename, decoded.content_type, limit
                )
            except AttachmentError as e:
                results[part] = e.message
                continue
            results[part] = PartLink(decoded, obj.size, obj.sha256, url, _iso(now + limit))
    if not wanted:
        return results
    items = " ".join(f"BODY.PEEK[{p}.MIME] BODY.PEEK[{p}]<0.{cap + 1}>" for p in wanted)
    fetched = await session.fetch(str(int(uid)), f"(UID {items})")
    message = next((m for m in fetched if m.uid == uid), None)
    for part in wanted:
        body = message.sections.get(part) if message is not None else None
        header = message.sections.get(f"{part}.MIME", b"") if message is not None else b""
        if body is None or (not body and not header):
            results[part] = "part not found"
            continue
        if len(body) > cap:
            results[part] = f"over the {limits.max_attachment_bytes}-byte cap; no link"
            continue
        decoded = decode_part(header, body)
        linked = await store_and_link(
            ctx, decoded.data, decoded.filename, decoded.content_type, lifetime
        )
        results[part] = (
            attrs.evolve(linked, part=decoded) if linked.url else (linked.error or "storage failed")
        )
        key = index_key(part)
        if index is not None and key is not None and linked.url and linked.obj is not None:
            index.put(key, now, linked.obj, attrs.evolve(decoded, data=b""))
    return results


def _limits(ctx: ToolContext) -> Limits:
    return ctx.services.limits


_ONLY_OURS = (
    "attachment_urls must be links issued by this server (get_mail_attachment_link gives "
    "one per attachment); other URLs are never fetched"
)


async def resolve_attachment_urls(
    ctx: ToolContext, urls: Sequence[Any]
) -> list[ResolvedAttachment]:
    """
    The attachments behind C{urls}, in order.  Every URL is checked (pure
    signature and ownership checks, no I/O) before any object is read, so a
    single bad URL means nothing at all is read, and no URL is ever fetched.

    :raises ToolError: a URL that is not a live link this server issued to
        the caller; more than the count cap; over a size cap.
    """
    if not urls:
        return []
    store = ctx.services.attachments
    if store is None:
        raise ToolError(f"{_ONLY_OURS}, and attachments are not enabled on this server")
    limits = _limits(ctx)
    if len(urls) > limits.max_count:
        raise ToolError(f"at most {limits.max_count} attachments per message")
    owner = ctx.account.owner
    for index, url in enumerate(urls):
        if not isinstance(url, str):
            raise ToolError(f"attachment_urls[{index}]: not a string")
        try:
            store.check(owner, url)
        except AttachmentError as e:
            raise ToolError(f"attachment_urls[{index}]: {e.message}. {_ONLY_OURS}") from None
    resolved: list[ResolvedAttachment] = []
    total = 0
    for index, url in enumerate(urls):
        try:
            item: ResolvedAttachment = await store.resolve(owner, url)
        except AttachmentError as e:
            raise ToolError(f"attachment_urls[{index}]: {e.message}") from None
        total += len(item.data)
        if total > limits.max_message_bytes:
            raise ToolError(
                f"attachments together are over the {limits.max_message_bytes}-byte cap"
            )
        resolved.append(item)
    return resolved
