"""
The reading tools: ``list_mailboxes``, ``list_mail_messages``,
``get_mail_message`` and ``search_mail_messages``.

They only ever open folders with EXAMINE and fetch with ``BODY.PEEK``, so
reading never changes a flag.  Listing works from the folder's message count
(EXISTS) and fetches one sequence-number range, so page 1 of a 100,000
message folder costs the same as page 1 of a 20 message one.  Everything the
model gets back names messages by UID, with the folder's UIDVALIDITY.

Mail content is untrusted data: bodies are capped and fetched partially,
BODYSTRUCTURE is analysed with caps (`mailmcp.mail._mime`), HTML is reduced to its
visible text, and search criteria are compiled by `mailmcp.mail._search` inside
input validation, so a hostile query is refused before any IMAP command.
"""

from __future__ import annotations

import datetime
import functools
import heapq
import itertools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, cast

import attrs
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from .._scopes import READ
from .._toolkit import Tool, ToolContext, ToolError, imap_tool_error
from ..mail import _mime, _untrusted
from ..mail._mailbox_api import (
    Address,
    FetchedMessage,
    IMAPAuthError,
    IMAPError,
    IMAPNoSuchMailbox,
    IMAPSession,
)
from ..mail._mailbox_api import Literal as IMAPLiteral
from ..mail._search import Filters, SearchQueryError, compile_search, render
from ._state import current_state

log = Logger()

T = TypeVar("T")

UID_MAX = 2**32 - 1
MAX_STATUS_FOLDERS = 200
MAX_ADDRESSES = 50
MAX_BODY_PARTS = 10
#: HTML bodies larger than this are converted on a thread, not the reactor.
INLINE_HTML_CHARS = 16 * 1024

SUMMARY_ITEMS = "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)"
BASIC_ITEMS = "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)"
UNREADABLE_STRUCTURE = (
    "the MIME structure of UID {uid} is too deep or malformed to read; its body and attachments "
    "are not shown"
)
THREADING_FIELDS = "HEADER.FIELDS (MESSAGE-ID IN-REPLY-TO REFERENCES)"
MESSAGE_ITEMS = f"(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE BODY.PEEK[{THREADING_FIELDS}]<0.32768>)"

AUTH_RESULTS_ITEM = (
    f"BODY.PEEK[HEADER.FIELDS (AUTHENTICATION-RESULTS)]<0.{_untrusted.MAX_AUTH_RESULTS_BYTES}>"
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorFromThreads

Folder = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1000,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description=(
            'Folder (mailbox) name exactly as list_mailboxes returns it, e.g. "INBOX", '
            '"Sent" or "Archive/2024". Case-sensitive except INBOX.'
        ),
    ),
]
UID = Annotated[
    int,
    Field(
        strict=True,
        ge=1,
        le=UID_MAX,
        description="The message's IMAP UID in this folder, as returned by list_mail_messages or "
        "search_mail_messages.",
    ),
]


# -- output models -----------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True, populate_by_name=True)


class EmailAddress(_Out):
    name: str | None = Field(description="Display name, decoded; null when absent.")
    email: str = Field(description="The address (mailbox@domain); empty for group syntax.")


class MessageSummary(_Out):
    uid: int = Field(description="IMAP UID, stable while the folder's uidvalidity is unchanged.")
    # Read back from its wire name too: `summary_data` is the listing's plain form.
    from_: list[EmailAddress] = Field(
        serialization_alias="from", validation_alias=AliasChoices("from_", "from")
    )
    to: list[EmailAddress]
    cc: list[EmailAddress]
    subject: str | None
    date: str | None = Field(
        description="The Date header as ISO 8601; null when absent or invalid."
    )
    received: str | None = Field(description="When the server received the message (ISO 8601).")
    flags: list[str]
    seen: bool
    flagged: bool
    answered: bool
    size: int | None = Field(description="Size of the whole message in bytes.")
    has_attachments: bool | None = Field(
        description="Null when the MIME structure could not be read."
    )
    message_id: str | None


class MailboxEntry(_Out):
    name: str = Field(description="Folder name to pass as `folder` to the other tools.")
    delimiter: str | None = Field(description='Hierarchy separator, e.g. "/" or ".".')
    special_use: str | None = Field(
        description="RFC 6154 role such as \\Sent, \\Drafts, \\Trash, \\Junk, \\Archive; null for none."
    )
    flags: list[str]
    selectable: bool
    messages: int | None = Field(
        default=None, description="Number of messages (null if not counted)."
    )
    unseen: int | None = Field(
        default=None, description="Number of unread messages (null if not counted)."
    )


class ListMailboxesOutput(_Out):
    mailboxes: list[MailboxEntry]
    total: int
    counts_included: bool = Field(description="False when there were too many folders to count.")


class ListMessagesOutput(_Out):
    folder: str
    uidvalidity: int
    total: int = Field(description="Messages in the folder.")
    page: int
    per_page: int
    has_more: bool = Field(description="True when a later page holds older messages.")
    messages: list[MessageSummary] = Field(description="Newest first.")
    warnings: list[str] = Field(default_factory=list)
    state: str = Field(
        description="Opaque marker of the folder as it is now: pass it as `since` to "
        "get_mailbox_changes to learn what arrived, changed or vanished after this call."
    )


class AttachmentInfo(_Out):
    part_id: str = Field(description='IMAP body section of the part, e.g. "2" or "1.3".')
    filename: str | None = Field(description="Decoded and sanitised file name.")
    content_type: str
    size: int = Field(description="Encoded size in bytes (base64 is about 4/3 of the file).")
    disposition: str | None
    inline: bool = Field(
        description="Shown inside the message body (e.g. an image referenced by cid:)."
    )
    content_id: str | None
    url: str | None = Field(
        default=None, description="Download link, when the server provides one."
    )
    link_error: str | None = Field(
        default=None,
        description="Why there is no download link (too large, too many, storage failed).",
    )


class Authentication(_Out):
    spf: str | None = Field(description="SPF result (pass, fail, softfail, neutral, none, …).")
    dkim: str | None = Field(description="DKIM result; pass when any signature passed.")
    dmarc: str | None = Field(description="DMARC result.")
    authserv_id: str | None = Field(
        description="The receiving server whose Authentication-Results header was believed."
    )
    note: str = Field(description="Where the results come from, or why they are unknown.")


class GetMessageOutput(_Out):
    folder: str
    uidvalidity: int
    uid: int
    notice: str = Field(
        description="Which parts of this answer the sender wrote (untrusted), and the body's "
        "begin/end markers."
    )
    authentication: Authentication = Field(
        description="SPF/DKIM/DMARC as checked by the user's own mail server (only its topmost "
        "Authentication-Results header is believed); null results: unknown."
    )
    message_id: str | None
    in_reply_to: str | None
    references: list[str]
    # Read back from its wire name too: `get_mail_message_data` is the tool's plain form.
    from_: list[EmailAddress] = Field(
        serialization_alias="from", validation_alias=AliasChoices("from_", "from")
    )
    sender: list[EmailAddress]
    reply_to: list[EmailAddress]
    to: list[EmailAddress]
    cc: list[EmailAddress]
    bcc: list[EmailAddress]
    subject: str | None
    date: str | None = Field(
        description="The Date header as ISO 8601; null when absent or invalid."
    )
    date_raw: str | None = Field(description="The Date header as sent.")
    received: str | None
    flags: list[str]
    seen: bool
    flagged: bool
    answered: bool
    size: int | None
    body: str = Field(
        description="Readable text of the body, from body_offset on, between a <<<BEGIN UNTRUSTED "
        "EMAIL BODY id=…>>> line and a <<<END UNTRUSTED EMAIL BODY id=…>>> line (see notice)."
    )
    body_format: Literal["text/plain", "text/html", "none"] = Field(
        description="Which part the text came from (HTML is converted to text)."
    )
    body_offset: int = Field(
        description="Offsets count characters of the body text inside the markers."
    )
    truncated: bool = Field(description="True when there is more body text after this.")
    next_offset: int | None = Field(description="Pass as body_offset to read on; null at the end.")
    attachments: list[AttachmentInfo]
    warnings: list[str]


class SearchOutput(_Out):
    folder: str
    uidvalidity: int
    criteria: str = Field(description="The IMAP SEARCH criteria that were sent.")
    total: int = Field(description="How many messages matched.")
    returned: int
    truncated: bool = Field(description="True when more messages matched than `limit`.")
    uids: list[int] = Field(description="Matching UIDs, newest (highest) first.")
    messages: list[MessageSummary] = Field(
        description="Summaries of the returned UIDs, newest first."
    )
    warnings: list[str] = Field(default_factory=list)


# -- input models ------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ListMailboxesInput(_In):
    pass


class ListMessagesInput(_In):
    folder: Folder = "INBOX"
    page: int = Field(
        default=1, strict=True, ge=1, le=1_000_000, description="Page number, 1 = newest."
    )
    per_page: int = Field(
        default=20, strict=True, ge=1, le=100, description="Messages per page (1-100)."
    )


class GetMessageInput(_In):
    folder: Folder = "INBOX"
    uid: UID
    max_body_chars: int = Field(
        default=20_000,
        strict=True,
        ge=100,
        le=200_000,
        description="At most this many characters of body text are returned.",
    )
    body_offset: int = Field(
        default=0,
        strict=True,
        ge=0,
        le=10_000_000,
        description="Start of the body text to return; pass the previous next_offset to read on.",
    )
    uidvalidity: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=UID_MAX,
        description="Optional: the uidvalidity the UID came with. If the folder's has changed since, "
        "the UID may now name another message, and the call fails instead of guessing.",
    )


SearchText = Annotated[str, Field(min_length=1, max_length=500)]


class SearchInput(_In):
    folder: Folder = "INBOX"
    query: str | None = Field(
        default=None,
        max_length=4000,
        description=(
            "Optional IMAP SEARCH criteria, e.g. 'OR FROM alice FROM bob', 'SUBJECT \"q3 report\" "
            "SINCE 01-Jan-2025', '(UNSEEN FLAGGED)', 'NOT SEEN', 'UID 100:200', 'HEADER List-Id "
            "dev'. Quote phrases with double quotes; non-ASCII text is fine. Keys: ALL ANSWERED "
            "BCC BEFORE BODY CC DELETED DRAFT FLAGGED FROM HEADER KEYWORD LARGER NEW NOT OLD OLDER "
            "ON OR RECENT SEEN SENTBEFORE SENTON SENTSINCE SINCE SMALLER SUBJECT TEXT TO UID "
            "UNANSWERED UNDELETED UNDRAFT UNFLAGGED UNKEYWORD UNSEEN YOUNGER. AND-ed with the "
            "filters below; with neither, every message matches (the result is still limited)."
        ),
    )
    from_: SearchText | None = Field(
        default=None, alias="from", description="Sender contains this text."
    )
    to: SearchText | None = Field(default=None, description="To contains this text.")
    cc: SearchText | None = Field(default=None, description="Cc contains this text.")
    subject: SearchText | None = Field(default=None, description="Subject contains this text.")
    text: SearchText | None = Field(default=None, description="Headers or body contain this text.")
    body: SearchText | None = Field(default=None, description="Body contains this text.")
    since: datetime.date | None = Field(
        default=None, description="Received on or after this date (YYYY-MM-DD)."
    )
    before: datetime.date | None = Field(
        default=None, description="Received before this date (YYYY-MM-DD), exclusive."
    )
    seen: bool | None = Field(
        default=None, description="true: only read messages; false: only unread."
    )
    unseen: bool | None = Field(default=None, description="true: only unread messages.")
    flagged: bool | None = Field(
        default=None, description="true: only flagged (starred); false: only not."
    )
    answered: bool | None = Field(default=None, description="true: only answered; false: only not.")
    larger: int | None = Field(
        default=None, strict=True, ge=0, le=UID_MAX, description="Bigger than N bytes."
    )
    smaller: int | None = Field(
        default=None, strict=True, ge=1, le=UID_MAX, description="Smaller than N bytes."
    )
    limit: int = Field(
        default=50, strict=True, ge=1, le=500, description="Return at most this many (newest)."
    )

    _criteria: list[bytes | IMAPLiteral] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _compile(self) -> SearchInput:
        # Compiling here makes a bad query an input-validation error: the
        # handler (and so the IMAP connection) never sees it.
        try:
            self._criteria = compile_search(
                self.query,
                Filters(
                    from_=self.from_,
                    to=self.to,
                    cc=self.cc,
                    subject=self.subject,
                    text=self.text,
                    body=self.body,
                    since=self.since,
                    before=self.before,
                    seen=self.seen,
                    unseen=self.unseen,
                    flagged=self.flagged,
                    answered=self.answered,
                    larger=self.larger,
                    smaller=self.smaller,
                ),
            )
        except SearchQueryError as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def criteria(self) -> list[bytes | IMAPLiteral]:
        return list(self._criteria)


# -- helpers -----------------------------------------------------------------


async def _run(
    ctx: ToolContext, folder: str | None, operation: Callable[[IMAPSession], Any]
) -> Any:
    """Run C{operation} on a pooled connection, turning IMAP failures into `ToolError`."""
    try:
        return await ctx.services.imap.run(ctx.account, operation, read_only=True)
    except IMAPError as e:
        raise imap_tool_error(e, folder) from None


def _addresses(values: Sequence[Address]) -> list[EmailAddress]:
    return [
        EmailAddress(
            name=_mime.clean_line(a.name, 200) or None, email=_mime.clean_line(a.email, 320) or ""
        )
        for a in values[:MAX_ADDRESSES]
    ]


def _has(flags: Sequence[str], flag: str) -> bool:
    return flag in {f.lower() for f in flags}


def _common_fields(message: FetchedMessage) -> dict[str, Any]:
    """What a listing and a full message both say of one FETCH result: From/To/Cc, subject, dates, flags, size."""
    envelope = message.envelope
    flags = list(message.flags or ())
    return {
        "from_": _addresses(envelope.from_) if envelope else [],
        "to": _addresses(envelope.to) if envelope else [],
        "cc": _addresses(envelope.cc) if envelope else [],
        "subject": _mime.clean_line(envelope.subject) if envelope else None,
        "date": _mime.parse_date(envelope.date) if envelope else None,
        "received": _mime.parse_internal_date(message.internal_date),
        "flags": flags,
        "seen": _has(flags, "\\seen"),
        "flagged": _has(flags, "\\flagged"),
        "answered": _has(flags, "\\answered"),
        "size": message.size,
    }


def summarise(message: FetchedMessage) -> MessageSummary:
    """The listing form of one FETCH result (ENVELOPE, FLAGS, BODYSTRUCTURE …)."""
    envelope = message.envelope
    return MessageSummary(
        uid=message.uid,
        **_common_fields(message),
        has_attachments=(
            _mime.has_attachments(message.bodystructure)
            if message.bodystructure is not None
            else None
        ),
        message_id=_mime.clean_line(envelope.message_id, 300) if envelope else None,
    )


def _address_data(values: Sequence[Address]) -> list[dict[str, Any]]:
    return [
        {
            "name": _mime.clean_line(a.name, 200) or None,
            "email": _mime.clean_line(a.email, 320) or "",
        }
        for a in values[:MAX_ADDRESSES]
    ]


#: Summaries already built, by the identity of their (frozen) message, the
#: message kept alive beside it so its id is not reused: the IMAP layer hands
#: out the same `FetchedMessage` for a listing line it has read before, so a
#: page listed again is not summarised again.  Bounded like that memo.
_SUMMARIES: dict[int, tuple[FetchedMessage, dict[str, Any]]] = {}
SUMMARIES_MAX = 4096


def summary_data(message: FetchedMessage) -> dict[str, Any]:
    """
    `summarise` as plain JSON-ready data under the wire names of
    `MessageSummary`: the listing's hot path builds no model per message
    (tests check the two agree and that the data fits ``outputSchema``).
    The result is shared between calls for the same message object: read
    it, never change it.
    """
    known = _SUMMARIES.get(id(message))
    if known is not None and known[0] is message:
        return known[1]
    data = _summary_data(message)
    if len(_SUMMARIES) >= SUMMARIES_MAX:
        for old in list(itertools.islice(_SUMMARIES, SUMMARIES_MAX // 4)):
            del _SUMMARIES[old]
    _SUMMARIES[id(message)] = (message, data)
    return data


def _summary_data(message: FetchedMessage) -> dict[str, Any]:
    envelope = message.envelope
    flags = list(message.flags or ())
    lowered = {f.lower() for f in flags}
    return {
        "uid": message.uid,
        "from": _address_data(envelope.from_) if envelope else [],
        "to": _address_data(envelope.to) if envelope else [],
        "cc": _address_data(envelope.cc) if envelope else [],
        "subject": _mime.clean_line(envelope.subject) if envelope else None,
        "date": _mime.parse_date(envelope.date) if envelope else None,
        "received": _mime.parse_internal_date(message.internal_date),
        "flags": flags,
        "seen": "\\seen" in lowered,
        "flagged": "\\flagged" in lowered,
        "answered": "\\answered" in lowered,
        "size": message.size,
        "has_attachments": (
            _mime.has_attachments(message.bodystructure)
            if message.bodystructure is not None
            else None
        ),
        "message_id": _mime.clean_line(envelope.message_id, 300) if envelope else None,
    }


def _recoverable(error: IMAPError) -> bool:
    """A failed FETCH worth retrying in smaller pieces on the same connection."""
    return not error.transient and not isinstance(error, (IMAPAuthError, IMAPNoSuchMailbox))


async def fetch_summaries(
    session: IMAPSession,
    message_set: str,
    *,
    uid: bool,
    first: list[FetchedMessage] | IMAPError | None = None,
) -> tuple[list[FetchedMessage], list[str]]:
    """
    FETCH the listing items for C{message_set}.  One hostile message whose
    BODYSTRUCTURE the IMAP layer refuses (nested too deep) must not hide the
    whole page: then the page is fetched without BODYSTRUCTURE and each
    message's structure asked for alone, so only the bad one goes without.
    C{first}, when given, is the outcome of that FETCH already sent
    (pipelined with the NOOP by `Session.examine_fetch`).
    """
    try:
        if first is None:
            return await session.fetch(message_set, SUMMARY_ITEMS, uid=uid), []
        if not isinstance(first, IMAPError):
            return first, []
        raise first
    except IMAPError as e:
        if not _recoverable(e):
            raise
        log.info("summary FETCH failed, retrying per message: {error}", error=e.message)
    basic = await session.fetch(message_set, BASIC_ITEMS, uid=uid)
    out: list[FetchedMessage] = []
    warnings: list[str] = []
    for message in basic:
        try:
            got = [
                m
                for m in await session.fetch(str(message.uid), "(UID BODYSTRUCTURE)", uid=True)
                if m.uid == message.uid
            ]
        except IMAPError as e:
            if not _recoverable(e):
                raise
            got = []
        if got and got[0].bodystructure is not None:
            message = attrs.evolve(message, bodystructure=got[0].bodystructure)
        else:
            warnings.append(UNREADABLE_STRUCTURE.format(uid=message.uid))
        out.append(message)
    return out, warnings


def uid_set(uids: Sequence[int]) -> str:
    """A compact sequence set (``1:3,7,9:10``) for C{uids}."""
    ordered = sorted(set(uids))
    pieces: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        pieces.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(pieces)


# -- list_mailboxes ----------------------------------------------------------


async def list_mailboxes(ctx: ToolContext, arguments: ListMailboxesInput) -> ListMailboxesOutput:
    async def operation(session: IMAPSession) -> ListMailboxesOutput:
        infos = await session.list_mailboxes()
        count = len(infos) <= MAX_STATUS_FOLDERS
        entries: list[MailboxEntry] = []
        for info in infos:
            entry = MailboxEntry(
                name=info.name,
                delimiter=info.delimiter,
                special_use=info.special_use,
                flags=list(info.flags),
                selectable=info.selectable,
            )
            if count and info.selectable:
                try:
                    status = await session.status(info.name, ("MESSAGES", "UNSEEN"))
                except IMAPError as e:
                    if isinstance(e, IMAPAuthError) or e.transient:
                        raise
                    status = {}
                upper = {key.upper(): value for key, value in status.items()}
                entry.messages = upper.get("MESSAGES")
                entry.unseen = upper.get("UNSEEN")
            entries.append(entry)
        return ListMailboxesOutput(mailboxes=entries, total=len(entries), counts_included=count)

    result: ListMailboxesOutput = await _run(ctx, None, operation)
    return result


# -- list_mail_messages ------------------------------------------------------


def page_range(exists: int, page: int, per_page: int) -> tuple[int, int] | None:
    """
    The sequence numbers (low, high) of C{page} when the newest message is
    number C{exists}: page 1 of 20 in 10,000 is 9981..10000.  None past the end.
    """
    high = exists - (page - 1) * per_page
    if high < 1:
        return None
    return max(1, high - per_page + 1), high


async def list_mail_messages(ctx: ToolContext, arguments: ListMessagesInput) -> ListMessagesOutput:
    """`list_mail_messages_data`, as the output model (for callers other than MCP)."""
    return ListMessagesOutput.model_validate(await list_mail_messages_data(ctx, arguments))


async def list_mail_messages_data(ctx: ToolContext, arguments: ListMessagesInput) -> dict[str, Any]:
    """
    The ``list_mail_messages`` tool: a page of the folder as plain
    JSON-ready data in the shape of `ListMessagesOutput`, serialised once
    by the MCP layer with no model in between (the warm path is CPU).
    """
    folder, page, per_page = arguments.folder, arguments.page, arguments.per_page

    def page_set(exists: int) -> str | None:
        window = page_range(exists, page, per_page)
        return None if window is None else f"{window[0]}:{window[1]}"

    async def operation(session: IMAPSession) -> dict[str, Any]:
        # A pooled connection with the folder open sends NOOP and FETCH in
        # one round trip (Session.examine_fetch); other sessions, two.
        examine_fetch = getattr(session, "examine_fetch", None)
        first: list[FetchedMessage] | IMAPError | None = None
        if examine_fetch is not None:
            state, first = await examine_fetch(folder, page_set, SUMMARY_ITEMS)
        else:
            state = await session.examine(folder)
        window = page_range(state.exists, page, per_page)
        fetched: list[FetchedMessage] = []
        warnings: list[str] = []
        if window is not None:
            low, high = window
            results, warnings = await fetch_summaries(
                session, f"{low}:{high}", uid=False, first=first
            )
            fetched = sorted(
                (m for m in results if low <= m.seq <= high), key=lambda m: m.seq, reverse=True
            )
        top = fetched[0].uid if fetched and fetched[0].seq == state.exists else None
        marker = await current_state(session, folder, state, top_uid=top)
        return {
            "folder": folder,
            "uidvalidity": state.uidvalidity,
            "total": state.exists,
            "page": page,
            "per_page": per_page,
            "has_more": window is not None and window[0] > 1,
            "messages": [summary_data(m) for m in fetched],
            "warnings": warnings,
            "state": marker.encode(),
        }

    result: dict[str, Any] = await _run(ctx, folder, operation)
    return result


# -- get_mail_message --------------------------------------------------------


async def _convert_html(ctx: ToolContext, html: str, chars: int | None = None) -> str:
    """
    HTML to text costs up to ~2 µs per byte of hostile markup (~0.1 µs for
    an ordinary newsletter): small documents are converted in
    place, bigger ones on a thread pool so the reactor keeps serving (the
    services' ``cpu_pool`` when there is one, else the reactor's own pool).
    With C{chars}: the text may stop early, somewhere after C{chars}
    characters (`mailmcp.mail._mime.html_text_prefix`).
    """
    convert: Callable[[str], str] = (
        _mime.html_to_text
        if chars is None
        else functools.partial(_mime.html_text_prefix, chars=chars)
    )
    if len(html) <= INLINE_HTML_CHARS:
        return convert(html)
    reactor = ctx.services.reactor
    pool = ctx.services.cpu_pool
    if pool is None and hasattr(reactor, "getThreadPool"):
        pool = reactor.getThreadPool()
    if pool is None:
        return convert(html)
    # A reactor with a thread pool runs work from threads too.
    threads = cast("IReactorFromThreads", reactor)
    text: str = await deferToThreadPool(threads, pool, convert, html)
    return text


class _KnownStructures:
    """
    The analysed structure of the last few messages read on one pooled
    connection (kept as long as the connection), so that reading one again,
    typically the next page of a long body, sends its body ``UID FETCH``
    together with the head.  A guess only: it is used when the head fetched
    in the same round trip has exactly this structure, under the same
    UIDVALIDITY (a UID never names another message then).
    """

    MAX = 8
    _by_session: weakref.WeakKeyDictionary[Any, _KnownStructures] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        # (folder, uidvalidity, uid) -> (BODYSTRUCTURE as fetched, its analysis)
        self._recent: OrderedDict[tuple[str, int, int], tuple[Any, _mime.Structure]] = OrderedDict()

    @classmethod
    def of(cls, session: object) -> _KnownStructures | None:
        """Those of C{session}, or None for a session that cannot be weakly referenced."""
        try:
            known = cls._by_session.get(session)
            if known is None:
                known = cls._by_session[session] = cls()
        except TypeError:
            return None
        return known

    def get(self, folder: str, selected: Any, uid: int) -> tuple[Any, _mime.Structure] | None:
        if selected is None or selected.name != folder:
            return None
        return self._recent.get((folder, selected.uidvalidity, uid))

    def put(self, folder: str, state: Any, uid: int, raw: Any, structure: _mime.Structure) -> None:
        key = (folder, state.uidvalidity, uid)
        self._recent[key] = (raw, structure)
        self._recent.move_to_end(key)
        while len(self._recent) > self.MAX:
            self._recent.popitem(last=False)


async def get_mail_message(ctx: ToolContext, arguments: GetMessageInput) -> GetMessageOutput:
    """`get_mail_message_data`, as the output model (for callers other than MCP)."""
    return GetMessageOutput.model_validate(await get_mail_message_data(ctx, arguments))


async def get_mail_message_data(ctx: ToolContext, arguments: GetMessageInput) -> dict[str, Any]:
    """
    One message as plain JSON-ready data under the wire names of
    `GetMessageOutput`, encoded once by the MCP layer with no model in
    between (tests check it is what the model gives and fits ``outputSchema``).
    """
    folder, uid = arguments.folder, arguments.uid
    offset, max_chars = arguments.body_offset, arguments.max_body_chars
    chars_needed = offset + max_chars
    trusted_id = ctx.services.trusted_authserv_id
    # The sender's forged Authentication-Results matter only against a trusted id.
    head_items = (
        MESSAGE_ITEMS if trusted_id is None else MESSAGE_ITEMS[:-1] + f" {AUTH_RESULTS_ITEM})"
    )

    def body_items(structure: _mime.Structure) -> tuple[Any, dict[str, int], str | None]:
        """The text parts to show, their fetch budgets, and the FETCH items for them."""
        parts = structure.body_parts[:MAX_BODY_PARTS]
        budgets = {p.part_id: _mime.fetch_budget(p, chars_needed) for p in parts}
        if not parts:
            return parts, budgets, None
        items = " ".join(f"BODY.PEEK[{p.part_id}]<0.{budgets[p.part_id]}>" for p in parts)
        return parts, budgets, f"(UID {items})"

    async def operation(session: IMAPSession) -> tuple[Any, ...]:
        # On a connection with the folder open, the freshness NOOP and the
        # head's UID FETCH go in one round trip (Session.examine_uid_fetch),
        # and the body's too when this connection read the message lately.
        examine_uid_fetch = getattr(session, "examine_uid_fetch", None)
        first: list[FetchedMessage] | IMAPError | None = None
        known = _KnownStructures.of(session)
        remembered = None
        guess: _mime.Structure | None = None
        if examine_uid_fetch is not None:
            remembered = known.get(folder, session.selected, uid) if known is not None else None
            guess = remembered[1] if remembered is not None else None
            then = body_items(guess)[2] if guess is not None else None
            state, first = await examine_uid_fetch(folder, str(uid), head_items, then)
        else:
            state = await session.examine(folder)
        if arguments.uidvalidity is not None and arguments.uidvalidity != state.uidvalidity:
            raise ToolError(
                f"UID {uid} is stale: folder {folder!r} was rebuilt (its uidvalidity is now "
                f"{state.uidvalidity}, not {arguments.uidvalidity}). List or search it again."
            )
        unreadable = False
        try:
            if isinstance(first, IMAPError):
                raise first
            fetched = (
                first if first is not None else await session.fetch(str(uid), head_items, uid=True)
            )
            head = [m for m in fetched if m.uid == uid]
        except IMAPError as e:
            if not _recoverable(e):
                raise
            unreadable = True
            head = [
                m
                for m in await session.fetch(
                    str(uid), head_items.replace(" BODYSTRUCTURE", ""), uid=True
                )
                if m.uid == uid
            ]
        if not head:
            raise ToolError(
                f"There is no message with UID {uid} in folder {folder!r} (it may have been moved or "
                "deleted). List or search the folder again for current UIDs."
            )
        message = head[0]
        if not unreadable and remembered is not None and message.bodystructure == remembered[0]:
            structure = remembered[1]  # analyse() is a function of the BODYSTRUCTURE alone
        else:
            structure = _mime.analyse(message.bodystructure)
        if unreadable:
            structure = attrs.evolve(structure, warnings=(UNREADABLE_STRUCTURE.format(uid=uid),))
        elif known is not None:
            known.put(folder, state, uid, message.bodystructure, structure)
        parts, budgets, items = body_items(structure)
        sections: dict[str, bytes] = {}
        if first is not None and guess is not None and not unreadable and guess == structure:
            # The body came with the head, for exactly these parts and budgets.
            sections = message.sections
        elif items is not None:
            for got in await session.fetch(str(uid), items, uid=True):
                if got.uid == uid:
                    sections.update(got.sections)
        # Attachments: each part is fetched on its own (BODY.PEEK[part]),
        # stored content-addressed for this user and linked (mailmcp.attachments).
        links: dict[str, Any] = {}
        if ctx.services.attachments is not None and structure.attachments:
            from ..attachments._helpers import link_parts

            links = await link_parts(
                ctx, session, uid, [(p.part_id, p.size) for p in structure.attachments]
            )
        return state, message, structure, parts, budgets, sections, links

    state, message, structure, parts, budgets, sections, links = await _run(ctx, folder, operation)
    warnings = list(structure.warnings)
    if len(structure.body_parts) > MAX_BODY_PARTS:
        warnings.append(f"only the first {MAX_BODY_PARTS} text parts are shown")
    texts: list[str] = []
    # Length of "\n\n".join(texts) so far: once it is past what the window
    # needs, later text only decides `truncated`, which it already is.
    written = -2
    complete = True
    formats: set[str] = set()
    for part in parts:
        raw = sections.get(part.part_id, b"")
        budget = budgets[part.part_id]
        # Asked for at least its whole declared size, or got less than asked.
        part_complete = (part.size > 0 and budget >= part.size) or len(raw) < budget
        transferred = _mime.decode_transfer(raw, part.encoding, complete=part_complete)
        data, defect = transferred.data, transferred.defect
        if defect:
            warnings.append(f"part {part.part_id} has a damaged {part.encoding} encoding")
        decoded = _mime.decode_bytes(data, part.charset, final=part_complete)
        text, codec = decoded.text, decoded.codec
        if part.charset and not _mime.known_charset(part.charset):
            warnings.append(
                f"part {part.part_id} declares unknown charset {part.charset[:40]!r}; read as {codec}"
            )
        if part.content_type != "text/html":
            text = _mime.clean_text(text)
        elif written > chars_needed:
            text = ""  # beyond the window, and the body is truncated anyway
        else:
            # The text needed (past the window, so `truncated` holds), not all.
            text = await _convert_html(ctx, text, chars_needed)
        formats.add(part.content_type)
        texts.append(text)
        if text:
            written += len(text) + 2
        if not part_complete:
            # Later parts would shift as this one is read further; they
            # follow once it is complete, so offsets stay stable.
            complete = False
            break
    combined = "\n\n".join(t for t in texts if t)
    window = combined[offset : offset + max_chars]
    truncated = len(combined) > offset + max_chars or not complete
    next_offset = offset + len(window) if truncated and window else None
    if truncated and next_offset is None:
        warnings.append("the rest of the body is beyond what mailmcp reads from one part (2 MiB)")
    body_format: Literal["text/plain", "text/html", "none"] = (
        "none" if not formats else "text/plain" if "text/plain" in formats else "text/html"
    )
    envelope = message.envelope
    threading = _mime.threading_headers(_header_section(message, "MESSAGE-ID"))
    authentication, auth_warnings = _untrusted.authentication(
        _header_section(message, "AUTHENTICATION-RESULTS"), trusted_id
    )
    from_ = _address_data(envelope.from_) if envelope else []
    spoofs = _untrusted.spoof_warnings("From", [SimpleNamespace(**a) for a in from_])
    marker_id = _untrusted.new_marker_id()
    flags = list(message.flags or ())
    lowered = {f.lower() for f in flags}
    return {
        "folder": folder,
        "uidvalidity": state.uidvalidity,
        "uid": uid,
        "notice": _untrusted.body_notice(marker_id),
        "authentication": {
            "spf": authentication["spf"],
            "dkim": authentication["dkim"],
            "dmarc": authentication["dmarc"],
            "authserv_id": authentication["authserv_id"],
            "note": authentication["note"],
        },
        "message_id": threading["message_id"] or (envelope.message_id if envelope else None),
        "in_reply_to": threading["in_reply_to"] or (envelope.in_reply_to if envelope else None),
        "references": threading["references"],
        "from": from_,
        "sender": _address_data(envelope.sender) if envelope else [],
        "reply_to": _address_data(envelope.reply_to) if envelope else [],
        "to": _address_data(envelope.to) if envelope else [],
        "cc": _address_data(envelope.cc) if envelope else [],
        "bcc": _address_data(envelope.bcc) if envelope else [],
        "subject": _mime.clean_line(envelope.subject) if envelope else None,
        "date": _mime.parse_date(envelope.date) if envelope else None,
        "date_raw": _mime.clean_line(envelope.date, 200) if envelope else None,
        "received": _mime.parse_internal_date(message.internal_date),
        "flags": flags,
        "seen": "\\seen" in lowered,
        "flagged": "\\flagged" in lowered,
        "answered": "\\answered" in lowered,
        "size": message.size,
        "body": _untrusted.mark_body(window, marker_id),
        "body_format": body_format,
        "body_offset": offset,
        "truncated": truncated,
        "next_offset": next_offset,
        "attachments": [
            {
                "part_id": p.part_id,
                "filename": p.filename,
                "content_type": p.content_type,
                "size": p.size,
                "disposition": p.disposition,
                "inline": p.inline,
                "content_id": p.content_id,
                "url": _link_url(links.get(p.part_id)),
                "link_error": _link_error(links.get(p.part_id)),
            }
            for p in structure.attachments
        ],
        "warnings": spoofs + auth_warnings + warnings + _unlinked_warnings(links),
    }


def _link_url(link: object) -> str | None:
    """The download URL of a `PartLink` (None when storing failed); None for a reason string."""
    from ..attachments._helpers import PartLink

    return link.url if isinstance(link, PartLink) else None


def _link_error(link: object) -> str | None:
    """`link_parts` gives a reason string instead of a link when it made none."""
    return link if isinstance(link, str) else None


def _unlinked_warnings(links: dict[str, Any]) -> list[str]:
    """One warning per distinct reason, so a thousand attachments are not a thousand lines."""
    reasons: dict[str, int] = {}
    for link in links.values():
        if isinstance(link, str):
            reasons[link] = reasons.get(link, 0) + 1
    return [
        f"{count} attachment{'s' if count > 1 else ''} without a download link: {reason}"
        for reason, count in reasons.items()
    ]


def _threading_section(message: FetchedMessage) -> bytes:
    """The Message-ID/In-Reply-To/References fetch of C{message}."""
    return _header_section(message, "MESSAGE-ID")


def _header_section(message: FetchedMessage, field: str) -> bytes:
    """The HEADER.FIELDS section fetched for C{field} (upper case), or nothing."""
    for key, value in message.sections.items():
        upper = key.upper()
        if upper.startswith("HEADER.FIELDS") and field in upper.split("(", 1)[-1]:
            return value
    return b""


# -- search_mail_messages ----------------------------------------------------


async def search_mail_messages(ctx: ToolContext, arguments: SearchInput) -> SearchOutput:
    folder, limit = arguments.folder, arguments.limit
    criteria = arguments.criteria

    async def operation(session: IMAPSession) -> SearchOutput:
        state = await session.examine(folder)
        found = await session.uid_search(criteria)
        # The newest `limit` without sorting a result that may hold a million UIDs.
        chosen = sorted(set(heapq.nlargest(limit, found)), reverse=True)
        summaries: list[MessageSummary] = []
        warnings: list[str] = []
        if chosen:
            wanted = set(chosen)
            results, warnings = await fetch_summaries(session, uid_set(chosen), uid=True)
            summaries = [
                summarise(m)
                for m in sorted(results, key=lambda m: m.uid, reverse=True)
                if m.uid in wanted
            ]
        return SearchOutput(
            folder=folder,
            uidvalidity=state.uidvalidity,
            criteria=render(criteria),
            total=len(found),
            returned=len(chosen),
            truncated=len(found) > len(chosen),
            uids=chosen,
            messages=summaries,
            warnings=warnings,
        )

    result: SearchOutput = await _run(ctx, folder, operation)
    return result


# -- the tools ---------------------------------------------------------------

TOOLS: list[Tool[Any, Any]] = [
    Tool(
        name="list_mailboxes",
        title="List mail folders",
        description=(
            "List the account's mail folders with their special use (\\Sent, \\Drafts, \\Trash, "
            "\\Junk, \\Archive), flags, and message and unread counts. Use the names it returns "
            "as `folder` for the other tools."
        ),
        input_model=ListMailboxesInput,
        output_model=ListMailboxesOutput,
        handler=list_mailboxes,
        scopes=frozenset({READ}),
        read_only=True,
        destructive=False,
        idempotent=True,
        open_world=True,
    ),
    Tool(
        name="list_mail_messages",
        title="List messages in a folder",
        description=(
            "List the messages of a folder, newest first, one page at a time: sender, recipients, "
            "subject, date, flags, size and whether there are attachments, each with its UID. "
            "Does not mark anything as read. Use get_mail_message with a UID to read one."
        ),
        input_model=ListMessagesInput,
        output_model=ListMessagesOutput,
        handler=list_mail_messages_data,
        scopes=frozenset({READ}),
        read_only=True,
        destructive=False,
        idempotent=True,
        open_world=True,
    ),
    Tool(
        name="get_mail_message",
        title="Read a message",
        description=(
            "Read one message by UID: headers (including Message-ID, In-Reply-To and References "
            "for threading), the body as readable text (plain text preferred, HTML converted), "
            "and the list of attachments. Long bodies are cut at max_body_chars; read on with "
            "body_offset = next_offset. Does not mark the message as read."
        ),
        input_model=GetMessageInput,
        output_model=GetMessageOutput,
        handler=get_mail_message_data,
        scopes=frozenset({READ}),
        # Not read-only (docs/threat-model.rst, MCP-14): reading stores the message's
        # attachments in the attachment store and mints links to them.
        read_only=False,
        destructive=False,
        idempotent=True,
        open_world=True,
    ),
    Tool(
        name="search_mail_messages",
        title="Search messages",
        description=(
            "Search a folder with structured filters (from, to, subject, text, since, before, "
            "unseen, flagged …) and/or IMAP SEARCH criteria in `query`. Returns the UIDs of the "
            "matches, newest first, up to `limit`, the total count, and a summary of each "
            "returned message. Does not mark anything as read."
        ),
        input_model=SearchInput,
        output_model=SearchOutput,
        handler=search_mail_messages,
        scopes=frozenset({READ}),
        read_only=True,
        destructive=False,
        idempotent=True,
        open_world=True,
    ),
]
