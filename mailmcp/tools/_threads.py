"""
``get_mail_thread``: the conversation a message belongs to, across its own
folder, the \\Sent folder and the \\Archive folder.

1. The seed message's Message-ID, In-Reply-To and References are read.
2. In its folder, when the server offers ``THREAD=REFERENCES`` (RFC 5256),
   ``UID THREAD REFERENCES UTF-8 ALL`` gives the seed's thread there.
3. Across all three folders the header chain does the rest (and all of it
   on servers without THREAD): ``UID SEARCH`` for messages whose Message-ID,
   In-Reply-To or References name a known id; the ids of what is found are
   searched for in turn, until nothing new turns up (at most `MAX_ROUNDS`
   rounds and `MAX_IDS` ids).

The entries are ordered by date, each with a short snippet of its text
(the first text part, at most `SNIPPET_FETCH` bytes fetched with
``BODY.PEEK``).  Nothing is marked read.
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Sequence
from typing import Any, Protocol, cast

import attrs
from pydantic import Field

from .._scopes import READ
from .._toolkit import Tool, ToolContext, ToolError
from ..mail import _mime, _untrusted
from ..mail._mailbox_api import FetchedMessage, IMAPError, IMAPSession, MailboxInfo
from ._reading import (
    UID,
    EmailAddress,
    Folder,
    _addresses,
    _In,
    _Out,
    _recoverable,
    _run,
    _threading_section,
    uid_set,
)
from ._writing import find_special

MAX_ENTRIES = 100
#: Larger folders are not THREADed whole (the answer grows with the folder);
#: the header chain alone finds the conversation there.
MAX_THREAD_FOLDER = 50_000
MAX_FOUND = 500
MAX_ROUNDS = 6
MAX_IDS = 300
IDS_PER_SEARCH = 25
SNIPPET_CHARS = 200
SNIPPET_FETCH = 2048
THREAD_FIELDS = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID IN-REPLY-TO REFERENCES)]<0.16384>"
HEAD_ITEMS = f"(UID FLAGS INTERNALDATE ENVELOPE BODYSTRUCTURE {THREAD_FIELDS})"
HEAD_ITEMS_PLAIN = f"(UID FLAGS INTERNALDATE ENVELOPE {THREAD_FIELDS})"
ARCHIVE_NAMES = ("archive", "archives")
SENT_NAMES = ("sent", "sent items", "sent messages", "sent mail")


class ThreadSession(IMAPSession, Protocol):
    """THREAD as `mailmcp.mail.imap._session.Session` adds it to `IMAPSession`."""

    async def uid_thread_references(self, criteria: Sequence[bytes]) -> list[list[int]]: ...


class ThreadInput(_In):
    folder: Folder = "INBOX"
    uid: UID
    uidvalidity: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=2**32 - 1,
        description="Optional: the uidvalidity the UID came with; the call fails if the folder "
        "was renumbered since.",
    )
    limit: int = Field(
        default=50,
        strict=True,
        ge=1,
        le=MAX_ENTRIES,
        description=f"At most this many messages (the newest), 1-{MAX_ENTRIES}.",
    )


class ThreadEntry(_Out):
    folder: str
    uid: int
    uidvalidity: int
    from_: list[EmailAddress] = Field(serialization_alias="from")
    to: list[EmailAddress]
    cc: list[EmailAddress]
    subject: str | None
    date: str | None = Field(
        description="The Date header as ISO 8601; null when absent or invalid."
    )
    received: str | None
    flags: list[str]
    seen: bool
    message_id: str | None
    in_reply_to: str | None
    snippet: str = Field(
        description=f"The first ~{SNIPPET_CHARS} characters of its text, between the untrusted "
        "begin/end markers the notice names."
    )


class ThreadOutput(_Out):
    folder: str
    uid: int
    uidvalidity: int
    notice: str = Field(
        description="Which parts of this answer the senders wrote (untrusted), and the "
        "snippets' begin/end markers."
    )
    messages: list[ThreadEntry] = Field(description="The conversation, oldest first.")
    total: int = Field(description="How many messages of the conversation were found.")
    truncated: bool = Field(description="True when only the newest `limit` are listed.")
    folders_searched: list[str]
    threaded_by: str = Field(
        description="THREAD=REFERENCES (the server threaded the folder) or headers "
        "(Message-ID/References search only)."
    )
    warnings: list[str] = Field(default_factory=list)


@attrs.define
class _Found:
    folder: str
    uidvalidity: int
    message: FetchedMessage
    ids: dict[str, Any]


class _Search:
    """The conversation as found so far, across folders."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, int], _Found] = {}
        self.ids: set[str] = set()
        self.searched: set[str] = set()
        self.warnings: list[str] = []

    def learn(self, entry: _Found) -> None:
        self.found[(entry.folder, entry.message.uid)] = entry
        for value in (entry.ids["message_id"], entry.ids["in_reply_to"], *entry.ids["references"]):
            if value and len(self.ids) < MAX_IDS and _searchable(value):
                self.ids.add(value)


def _searchable(message_id: str) -> bool:
    return 2 < len(message_id) <= 250 and message_id.isascii() and message_id.isprintable()


def _quote(value: str) -> bytes:
    return b'"' + value.encode("ascii").replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def header_criteria(ids: Sequence[str]) -> list[bytes]:
    """``OR OR HEADER Message-ID x HEADER In-Reply-To x HEADER References x`` for each id, OR-ed."""
    terms: list[list[bytes]] = []
    for value in ids:
        q = _quote(value)
        terms.append(
            [b"OR", b"OR", b"HEADER", b"Message-ID", q, b"HEADER", b"In-Reply-To", q,
             b"HEADER", b"References", q]
        )  # fmt: skip
    out: list[bytes] = []
    for i, term in enumerate(terms):
        if i < len(terms) - 1:
            out.append(b"OR")
        out.extend(term)
    return out


async def _heads(
    session: IMAPSession, folder: str, uidvalidity: int, uids: Sequence[int]
) -> list[_Found]:
    if not uids:
        return []
    try:
        fetched = await session.fetch(uid_set(uids), HEAD_ITEMS, uid=True)
    except IMAPError as e:
        if not _recoverable(e):
            raise
        fetched = await session.fetch(uid_set(uids), HEAD_ITEMS_PLAIN, uid=True)
    wanted = set(uids)
    return [
        _Found(folder, uidvalidity, m, _mime.threading_headers(_threading_section(m)))
        for m in fetched
        if m.uid in wanted
    ]


async def _linked_members(session: IMAPSession, seed: _Found, uids: Sequence[int]) -> list[int]:
    """
    The members of the seed's THREAD tree linked to it by their headers (a
    light FETCH of the three headers only): the tree also holds messages
    merged in by subject alone, often many in a busy folder, and fetching
    and searching for all of them would cost more than the thread itself.
    """
    if not uids:
        return []
    fetched = await session.fetch(uid_set(uids), f"(UID {THREAD_FIELDS})", uid=True)
    wanted = set(uids)
    light = [
        _Found(seed.folder, seed.uidvalidity, m, _mime.threading_headers(_threading_section(m)))
        for m in fetched
        if m.uid in wanted
    ]
    return [f.message.uid for f in _connected([seed, *light], seed) if f is not seed]


def _special_folders(boxes: Sequence[MailboxInfo], seed: str) -> list[str]:
    """The seed's folder, \\Sent and \\Archive; and INBOX when the seed is elsewhere (in Sent, say)."""
    out = [seed] if seed.upper() == "INBOX" else [seed, "INBOX"]
    for special, names in (("\\Sent", SENT_NAMES), ("\\Archive", ARCHIVE_NAMES)):
        name = find_special(boxes, special, names)
        if name is not None and name not in out and name.upper() != "INBOX":
            out.append(name)
    return out


def _links(entry: _Found) -> set[str]:
    ids = entry.ids
    return {i for i in (ids["message_id"], ids["in_reply_to"], *ids["references"]) if i}


def _connected(found: Sequence[_Found], seed: _Found) -> list[_Found]:
    """
    The messages linked to C{seed} through Message-ID, In-Reply-To or
    References.  THREAD=REFERENCES also groups unrelated messages that merely
    share a subject, and HEADER search matches substrings: both are dropped.
    """
    by_id: dict[str, list[int]] = {}
    links = [_links(entry) for entry in found]
    for index, ids in enumerate(links):
        for value in ids:
            by_id.setdefault(value, []).append(index)
    start = next(i for i, entry in enumerate(found) if entry is seed)
    reached = {start}
    todo = [start]
    while todo:
        index = todo.pop()
        for value in links[index]:
            for other in by_id.get(value, ()):
                if other not in reached:
                    reached.add(other)
                    todo.append(other)
    return [found[i] for i in sorted(reached)]


def _when(entry: _Found) -> datetime.datetime:
    envelope = entry.message.envelope
    internal = entry.message.internal_date
    for raw in (envelope.date if envelope else None, internal and internal.replace("-", " ", 2)):
        if not raw:
            continue
        try:
            parsed = email.utils.parsedate_to_datetime(raw[:200])
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.UTC)
        return parsed
    return datetime.datetime.min.replace(tzinfo=datetime.UTC)


async def _snippets(session: IMAPSession, entries: Sequence[_Found]) -> dict[int, str]:
    """The first text of each message of the open folder, one FETCH per body part number."""
    parts: dict[str, list[tuple[int, _mime.Part]]] = {}
    for entry in entries:
        structure = _mime.analyse(entry.message.bodystructure)
        if structure.body_parts:
            part = structure.body_parts[0]
            parts.setdefault(part.part_id, []).append((entry.message.uid, part))
    out: dict[int, str] = {}
    for part_id, members in parts.items():
        by_uid = dict(members)
        fetched = await session.fetch(
            uid_set(list(by_uid)), f"(UID BODY.PEEK[{part_id}]<0.{SNIPPET_FETCH}>)", uid=True
        )
        for message in fetched:
            found = by_uid.get(message.uid)
            if found is None:
                continue
            part = found
            raw = message.sections.get(part_id, b"")
            data = _mime.decode_transfer(raw, part.encoding, complete=len(raw) < SNIPPET_FETCH).data
            text = _mime.decode_bytes(data, part.charset, final=False).text
            if part.content_type == "text/html":
                text = _mime.html_to_text(text)
            out[message.uid] = _snippet(text)
    return out


def _snippet(text: str) -> str:
    lines = [ln.strip() for ln in _mime.clean_text(text).splitlines()]
    # Quoted replies repeat the conversation; the snippet shows what is new.
    flat = " ".join(ln for ln in lines if ln and not ln.startswith(">"))
    return flat[:SNIPPET_CHARS]


async def get_mail_thread(ctx: ToolContext, arguments: ThreadInput) -> ThreadOutput:
    seed_folder, seed_uid, limit = arguments.folder, arguments.uid, arguments.limit

    async def operation(session: IMAPSession) -> ThreadOutput:
        boxes = await session.list_mailboxes()
        folders = _special_folders(boxes, seed_folder)
        search = _Search()
        seed_state = await session.examine(seed_folder)
        if arguments.uidvalidity is not None and arguments.uidvalidity != seed_state.uidvalidity:
            raise ToolError(
                f"UID {seed_uid} is stale: folder {seed_folder!r} was rebuilt (its uidvalidity is "
                f"now {seed_state.uidvalidity}, not {arguments.uidvalidity}). List it again."
            )
        seed = await _heads(session, seed_folder, seed_state.uidvalidity, [seed_uid])
        if not seed:
            raise ToolError(
                f"There is no message with UID {seed_uid} in folder {seed_folder!r} (it may have "
                "been moved or deleted). List or search the folder again for current UIDs."
            )
        search.learn(seed[0])
        threaded_by = "headers"
        if "THREAD=REFERENCES" in session.capabilities and seed_state.exists <= MAX_THREAD_FOLDER:
            try:
                threads = await cast(ThreadSession, session).uid_thread_references([b"ALL"])
            except IMAPError as e:
                if not _recoverable(e):
                    raise
                search.warnings.append(f"the server could not thread {seed_folder!r}: {e.message}")
            else:
                threaded_by = "THREAD=REFERENCES"
                mine = next((t for t in threads if seed_uid in t), [seed_uid])
                others = [u for u in mine if u != seed_uid][: MAX_FOUND - 1]
                members = await _linked_members(session, seed[0], others)
                for entry in await _heads(session, seed_folder, seed_state.uidvalidity, members):
                    search.learn(entry)
        validities = {seed_folder: seed_state.uidvalidity}
        for _round in range(MAX_ROUNDS):
            fresh = sorted(search.ids - search.searched)
            if not fresh or len(search.found) >= MAX_FOUND:
                break
            search.searched.update(fresh)
            for folder in folders:
                if folder not in validities:
                    try:
                        validities[folder] = (await session.examine(folder)).uidvalidity
                    except IMAPError as e:
                        if not _recoverable(e):
                            raise
                        search.warnings.append(f"folder {folder!r} could not be opened")
                        validities[folder] = 0
                        continue
                elif validities[folder] == 0:
                    continue
                else:
                    await session.examine(folder)
                uids: set[int] = set()
                for i in range(0, len(fresh), IDS_PER_SEARCH):
                    uids.update(
                        await session.uid_search(header_criteria(fresh[i : i + IDS_PER_SEARCH]))
                    )
                new = sorted(u for u in uids if (folder, u) not in search.found)
                new = new[: max(0, MAX_FOUND - len(search.found))]
                for entry in await _heads(session, folder, validities[folder], new):
                    search.learn(entry)
        else:
            if search.ids - search.searched:
                search.warnings.append("the conversation may go on beyond what was searched")
        if len(search.found) >= MAX_FOUND:
            search.warnings.append(f"only the first {MAX_FOUND} messages found were considered")
        linked = _connected(list(search.found.values()), search.found[(seed_folder, seed_uid)])
        ordered = sorted(linked, key=_when)
        chosen = ordered[-limit:]
        snippets: dict[tuple[str, int], str] = {}
        for folder in folders:
            here = [e for e in chosen if e.folder == folder]
            if not here:
                continue
            await session.examine(folder)
            for uid, text in (await _snippets(session, here)).items():
                snippets[(folder, uid)] = text
        marker_id = _untrusted.new_marker_id()
        entries = [
            _entry(e, _untrusted.mark_body(snippets.get((e.folder, e.message.uid), ""), marker_id))
            for e in chosen
        ]
        return ThreadOutput(
            folder=seed_folder,
            uid=seed_uid,
            uidvalidity=seed_state.uidvalidity,
            notice=_untrusted.snippet_notice(marker_id),
            messages=entries,
            total=len(ordered),
            truncated=len(ordered) > len(chosen),
            folders_searched=folders,
            threaded_by=threaded_by,
            warnings=search.warnings,
        )

    result: ThreadOutput = await _run(ctx, seed_folder, operation)
    return result


def _entry(found: _Found, snippet: str) -> ThreadEntry:
    message = found.message
    envelope = message.envelope
    flags = list(message.flags or ())
    return ThreadEntry(
        folder=found.folder,
        uid=message.uid,
        uidvalidity=found.uidvalidity,
        from_=_addresses(envelope.from_) if envelope else [],
        to=_addresses(envelope.to) if envelope else [],
        cc=_addresses(envelope.cc) if envelope else [],
        subject=_mime.clean_line(envelope.subject) if envelope else None,
        date=_mime.parse_date(envelope.date) if envelope else None,
        received=_mime.parse_internal_date(message.internal_date),
        flags=flags,
        seen="\\seen" in {f.lower() for f in flags},
        message_id=found.ids["message_id"],
        in_reply_to=found.ids["in_reply_to"],
        snippet=snippet,
    )


TOOLS: list[Tool[Any, Any]] = [
    Tool(
        name="get_mail_thread",
        title="Read a conversation",
        description=(
            "The whole conversation a message belongs to: the messages it replies to and the "
            "replies to it, found in its folder, the Sent folder and the Archive folder (and INBOX), "
            "oldest first, each with folder, UID, sender, recipients, date, subject, flags and "
            "a short snippet. Use get_mail_message to read one in full. Does not mark anything "
            "as read."
        ),
        input_model=ThreadInput,
        output_model=ThreadOutput,
        handler=get_mail_thread,
        scopes=frozenset({READ}),
        read_only=True,
        destructive=False,
        idempotent=True,
        open_world=True,
    ),
]
