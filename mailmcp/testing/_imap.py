"""
An in-memory IMAP server behind the `IMAPSession` / `IMAPPoolAPI` contract,
for unit tests of the tools.  Re-exported by `mailmcp.testing`.

Messages are stored as raw RFC 5322 bytes; ENVELOPE, BODYSTRUCTURE and body
sections are computed from them with the stdlib parser, so tests can use
realistic MIME.  Every session call is recorded in `FakeIMAPServer.commands`
so a test can assert exactly what reached "the wire" (or that nothing did).
"""

from __future__ import annotations

import datetime
import email
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from email.header import decode_header
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses
from typing import Any, TypeVar

import attrs

from .._account import MailAccount
from ..mail._mailbox_api import (
    Address,
    Appended,
    Envelope,
    FetchedMessage,
    IMAPError,
    IMAPNoSuchMailbox,
    IMAPSession,
    Literal,
    MailboxInfo,
    MailboxState,
)

T = TypeVar("T")


@attrs.define
class FakeMessage:
    uid: int
    raw: bytes
    flags: set[str] = attrs.field(factory=set)
    internal_date: str = "01-Jan-2025 12:00:00 +0000"

    def parsed(self) -> Message:
        return email.message_from_bytes(self.raw, policy=compat32)


@attrs.define
class FakeMailbox:
    name: str
    uidvalidity: int = 1000
    uidnext: int = 1
    flags: tuple[str, ...] = ("\\HasNoChildren",)
    messages: list[FakeMessage] = attrs.field(factory=list)

    def add(self, raw: bytes, flags: Iterable[str] = (), internal_date: str | None = None) -> int:
        uid = self.uidnext
        self.uidnext += 1
        message = FakeMessage(uid, raw, set(flags))
        if internal_date is not None:
            message.internal_date = internal_date
        self.messages.append(message)
        return uid

    def expunge(self, uid: int) -> None:
        self.messages = [m for m in self.messages if m.uid != uid]


@attrs.define
class FakeIMAPServer:
    """The mailboxes of one fake account and the log of every session call."""

    mailboxes: dict[str, FakeMailbox] = attrs.field(factory=dict)
    commands: list[tuple[Any, ...]] = attrs.field(factory=list)
    delimiter: str = "/"

    def mailbox(self, name: str, *flags: str) -> FakeMailbox:
        if name not in self.mailboxes:
            self.mailboxes[name] = FakeMailbox(name, flags=("\\HasNoChildren", *flags))
        return self.mailboxes[name]

    def session(self) -> FakeIMAPSession:
        return FakeIMAPSession(self)


@attrs.define
class FakeIMAPPool:
    """`IMAPPoolAPI` over a `FakeIMAPServer`: every lease gets a fresh session."""

    server: FakeIMAPServer
    leases: int = 0

    async def run(
        self,
        account: MailAccount,
        operation: Callable[[IMAPSession], Awaitable[T]],
        *,
        read_only: bool,
    ) -> T:
        self.leases += 1
        return await operation(self.server.session())


_ITEM = re.compile(
    r"BODY\.PEEK\[(?P<section>[^\]]*)\](?:<(?P<start>\d+)\.(?P<length>\d+)>)?|UID|FLAGS|RFC822\.SIZE"
    r"|INTERNALDATE|ENVELOPE|BODYSTRUCTURE",
    re.IGNORECASE,
)


class FakeIMAPSession:
    """One "connection": tracks the selected mailbox and records each call."""

    def __init__(self, server: FakeIMAPServer) -> None:
        self.server = server
        self._selected: FakeMailbox | None = None
        self._read_only = True

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset({"IMAP4REV1", "UIDPLUS", "MOVE", "ESEARCH", "LITERAL+", "SPECIAL-USE"})

    @property
    def selected(self) -> MailboxState | None:
        return self._state() if self._selected is not None else None

    def _state(self) -> MailboxState:
        assert self._selected is not None
        box = self._selected
        return MailboxState(
            box.name, len(box.messages), box.uidvalidity, box.uidnext, self._read_only
        )

    def _log(self, *entry: Any) -> None:
        self.server.commands.append(entry)

    async def list_mailboxes(self) -> list[MailboxInfo]:
        self._log("LIST")
        return [
            MailboxInfo(b.name, self.server.delimiter, b.flags)
            for b in self.server.mailboxes.values()
        ]

    async def status(self, mailbox: str, items: Sequence[str]) -> dict[str, int]:
        self._log("STATUS", mailbox, tuple(items))
        box = self._box(mailbox)
        values = {
            "MESSAGES": len(box.messages),
            "UNSEEN": sum(1 for m in box.messages if "\\Seen" not in m.flags),
            "UIDNEXT": box.uidnext,
            "UIDVALIDITY": box.uidvalidity,
        }
        return {item.upper(): values[item.upper()] for item in items if item.upper() in values}

    def _box(self, mailbox: str) -> FakeMailbox:
        box = self.server.mailboxes.get(mailbox)
        if box is None:
            raise IMAPNoSuchMailbox(f"Mailbox doesn't exist: {mailbox}")
        return box

    async def examine(self, mailbox: str) -> MailboxState:
        self._log("EXAMINE", mailbox)
        self._selected, self._read_only = self._box(mailbox), True
        return self._state()

    async def select(self, mailbox: str) -> MailboxState:
        self._log("SELECT", mailbox)
        self._selected, self._read_only = self._box(mailbox), False
        return self._state()

    async def noop(self) -> None:
        self._log("NOOP")

    async def fetch(
        self, message_set: str, items: str, *, uid: bool = True
    ) -> list[FetchedMessage]:
        self._log("UID FETCH" if uid else "FETCH", message_set, items)
        if self._selected is None:
            raise IMAPError("No mailbox selected")
        box = self._selected
        if not re.fullmatch(r"[0-9:*,]+", message_set):
            raise IMAPError("Invalid messageset")
        top = box.messages[-1].uid if uid and box.messages else len(box.messages)
        wanted = _expand(message_set, top)
        results: list[FetchedMessage] = []
        for seq, message in enumerate(box.messages, start=1):
            if (message.uid if uid else seq) in wanted:
                results.append(_fetch_one(message, seq, items))
        return results

    async def uid_search(self, criteria: Sequence[bytes | Literal]) -> list[int]:
        self._log("UID SEARCH", tuple(criteria))
        if self._selected is None:
            raise IMAPError("No mailbox selected")
        tokens: list[bytes | Literal] = []
        for token in criteria:
            if isinstance(token, Literal):
                tokens.append(token)
                continue
            if b"\r" in token or b"\n" in token or b"\0" in token:
                raise IMAPError("control character in search token")
            for piece in re.findall(rb'\(|\)|"(?:[^"\\]|\\.)*"|[^\s()"]+', token):
                tokens.append(piece)
        box = self._selected
        top = box.messages[-1].uid if box.messages else 0
        matched: list[int] = []
        for seq, message in enumerate(box.messages, start=1):
            position = [0]
            ok = True
            while position[0] < len(tokens):
                ok = _eval(tokens, position, message, seq, top) and ok
            if ok:
                matched.append(message.uid)
        return matched

    def _open(self) -> FakeMailbox:
        if self._selected is None:
            raise IMAPError("no mailbox is open; examine or select one first")
        return self._selected

    def _writable(self) -> FakeMailbox:
        """As the real session: a write after EXAMINE opens the mailbox read-write first."""
        box = self._open()
        if self._read_only:
            self._log("SELECT", box.name)
            self._read_only = False
        return box

    async def uid_store(
        self, uids: Sequence[int], mode: str, flags: Sequence[str], *, silent: bool = True
    ) -> dict[int, tuple[str, ...]]:
        self._log("UID STORE", tuple(uids), mode, tuple(flags))
        if mode not in ("+FLAGS", "-FLAGS", "FLAGS"):
            raise IMAPError(f"invalid STORE mode {mode!r:.20}")
        box = self._writable()
        changed: dict[int, tuple[str, ...]] = {}
        for message in box.messages:
            if message.uid in uids:
                if mode == "+FLAGS":
                    message.flags |= set(flags)
                elif mode == "-FLAGS":
                    message.flags -= set(flags)
                else:
                    message.flags = set(flags)
                changed[message.uid] = tuple(sorted(message.flags))
        return {} if silent else changed

    async def uid_copy(self, uids: Sequence[int], mailbox: str) -> dict[int, int]:
        self._log("UID COPY", tuple(uids), mailbox)
        box = self._open()
        target = self._box(mailbox)
        return {m.uid: target.add(m.raw, m.flags) for m in list(box.messages) if m.uid in uids}

    async def uid_move(self, uids: Sequence[int], mailbox: str) -> dict[int, int]:
        self._log("UID MOVE", tuple(uids), mailbox)
        box = self._writable()
        target = self._box(mailbox)
        mapping = {m.uid: target.add(m.raw, m.flags) for m in list(box.messages) if m.uid in uids}
        for uid in mapping:
            box.expunge(uid)
        return mapping

    async def uid_expunge(self, uids: Sequence[int]) -> None:
        """Only the named messages that are also flagged \\Deleted go (RFC 4315)."""
        self._log("UID EXPUNGE", tuple(uids))
        box = self._writable()
        for message in list(box.messages):
            if message.uid in uids and "\\Deleted" in message.flags:
                box.expunge(message.uid)

    async def append(
        self, mailbox: str, message: bytes, flags: Sequence[str] = (), date: str | None = None
    ) -> Appended:
        self._log("APPEND", mailbox)
        box = self._box(mailbox)
        return Appended(box.uidvalidity, box.add(message, flags))

    # -- folders and a fresh EXAMINE (the fallbacks of get_mailbox_changes and
    # the folder tools; this fake has no THREAD, CONDSTORE or QRESYNC) --------

    async def reopen(self, mailbox: str) -> MailboxState:
        self._log("EXAMINE", mailbox)
        self._selected, self._read_only = self._box(mailbox), True
        return self._state()

    async def create_mailbox(self, mailbox: str) -> None:
        self._log("CREATE", mailbox)
        if mailbox in self.server.mailboxes or mailbox.upper() == "INBOX":
            raise IMAPError("Mailbox already exists")
        self.server.mailbox(mailbox)

    async def rename_mailbox(self, old: str, new: str) -> None:
        self._log("RENAME", old, new)
        self._selected = None
        self._box(old)
        if new in self.server.mailboxes:
            raise IMAPError("Mailbox already exists")
        prefix = old + self.server.delimiter
        for name in list(self.server.mailboxes):
            if name == old or name.startswith(prefix):
                box = self.server.mailboxes.pop(name)
                box.name = new + name[len(old) :]
                self.server.mailboxes[box.name] = box

    async def delete_mailbox(self, mailbox: str) -> None:
        self._log("DELETE", mailbox)
        self._box(mailbox)
        if self._selected is not None and self._selected.name == mailbox:
            self._selected = None
        del self.server.mailboxes[mailbox]


def _expand(message_set: str, top: int) -> set[int]:
    out: set[int] = set()
    for piece in message_set.split(","):
        low, _, high = piece.partition(":")
        a = top if low == "*" else int(low)
        b = a if not high else (top if high == "*" else int(high))
        a, b = min(a, b), max(a, b)
        out.update(range(a, min(b, max(top, a)) + 1))
    return out


def _decode(value: str | None) -> str | None:
    if value is None:
        return None
    out = []
    for data, charset in decode_header(value):
        out.append(data if isinstance(data, str) else data.decode(charset or "latin-1", "replace"))
    return "".join(out)


def _addresses(message: Message, name: str) -> tuple[Address, ...]:
    values = message.get_all(name) or []
    return tuple(
        Address(_decode(n) or None, a) for n, a in getaddresses([str(v) for v in values]) if a
    )


def envelope_of(message: Message) -> Envelope:
    return Envelope(
        date=message.get("Date"),
        subject=_decode(message.get("Subject")),
        from_=_addresses(message, "From"),
        sender=_addresses(message, "Sender") or _addresses(message, "From"),
        reply_to=_addresses(message, "Reply-To") or _addresses(message, "From"),
        to=_addresses(message, "To"),
        cc=_addresses(message, "Cc"),
        bcc=_addresses(message, "Bcc"),
        in_reply_to=message.get("In-Reply-To"),
        message_id=message.get("Message-ID"),
    )


def _param_list(params: list[tuple[str, str]]) -> list[str] | None:
    flat: list[str] = []
    for key, value in params:
        flat += [key.upper(), value]
    return flat or None


def _body_of(part: Message) -> bytes:
    payload = part.get_payload()
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    return b""


def bodystructure_of(message: Message) -> Any:
    """The parsed BODYSTRUCTURE of C{message}, shaped like the IMAP layer's."""
    if message.is_multipart():
        children = [bodystructure_of(p) for p in message.get_payload() if isinstance(p, Message)]
        params = list((message.get_params() or [])[1:])
        return [
            *children,
            message.get_content_subtype().upper(),
            _param_list(params),
            None,
            None,
            None,
        ]
    main, sub = message.get_content_maintype().upper(), message.get_content_subtype().upper()
    params = [(k, v) for k, v in (message.get_params() or [])[1:]]
    disposition: Any = None
    raw_disposition = message.get("Content-Disposition")
    if raw_disposition:
        kind = raw_disposition.split(";")[0].strip().upper()
        dparams = (message.get_params(header="Content-Disposition") or [])[1:]
        disposition = [kind, _param_list(list(dparams))]
    body = _body_of(message)
    content_id = message.get("Content-ID")
    node: list[Any] = [
        main,
        sub,
        _param_list(params),
        content_id,
        message.get("Content-Description"),
        (message.get("Content-Transfer-Encoding") or "7BIT").upper(),
        len(body),
    ]
    if main == "TEXT":
        node.append(body.count(b"\n"))
    node += [None, disposition, None, None]
    return node


def _part(message: Message, section: str) -> Message | None:
    current = message
    for index in section.split("."):
        if not current.is_multipart():
            return current if index == "1" else None
        children = current.get_payload()
        assert isinstance(children, list)
        if not 0 < int(index) <= len(children):
            return None
        child = children[int(index) - 1]
        assert isinstance(child, Message)
        current = child
    return current


def _fetch_one(message: FakeMessage, seq: int, items: str) -> FetchedMessage:
    parsed = message.parsed()
    fields: dict[str, Any] = {"uid": message.uid, "seq": seq}
    sections: dict[str, bytes] = {}
    for m in _ITEM.finditer(items):
        item = m.group(0).upper()
        if item == "FLAGS":
            fields["flags"] = tuple(sorted(message.flags))
        elif item == "RFC822.SIZE":
            fields["size"] = len(message.raw)
        elif item == "INTERNALDATE":
            fields["internal_date"] = message.internal_date
        elif item == "ENVELOPE":
            fields["envelope"] = envelope_of(parsed)
        elif item == "BODYSTRUCTURE":
            fields["bodystructure"] = bodystructure_of(parsed)
        elif item.startswith("BODY.PEEK"):
            section = m.group("section")
            data = _section(message.raw, parsed, section)
            if m.group("start") is not None:
                start = int(m.group("start"))
                data = data[start : start + int(m.group("length"))]
            sections[section.upper() if not section[:1].isdigit() else section] = data
    return FetchedMessage(sections=sections, **fields)


def _section(raw: bytes, parsed: Message, section: str) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n") if b"\r\n\r\n" in raw else raw.partition(b"\n\n")
    upper = section.upper()
    if upper.startswith("HEADER.FIELDS"):
        names = {n.lower() for n in re.findall(r"[^\s()]+", section[len("HEADER.FIELDS") :])}
        lines = re.split(rb"\r?\n(?![ \t])", head)
        keep = [
            ln for ln in lines if ln.split(b":", 1)[0].strip().decode("latin-1").lower() in names
        ]
        return b"\r\n".join(keep) + b"\r\n\r\n"
    if upper == "HEADER":
        return head + b"\r\n\r\n"
    if upper in ("", "TEXT"):
        return raw if upper == "" else body
    part = _part(parsed, section)
    if part is None:
        return b""
    return _body_of(part)


def _string(token: bytes | Literal) -> str:
    if isinstance(token, Literal):
        return str(token.data, "utf-8")
    if token.startswith(b'"'):
        return str(re.sub(rb"\\(.)", rb"\1", token[1:-1]).decode("ascii"))
    return token.decode("ascii")


def _eval(
    tokens: list[bytes | Literal], pos: list[int], message: FakeMessage, seq: int, top: int
) -> bool:
    token = tokens[pos[0]]
    pos[0] += 1
    if isinstance(token, Literal):
        raise IMAPError("unexpected literal")
    key = token.upper()
    if key == b"(":
        result = True
        while tokens[pos[0]] != b")":
            result = _eval(tokens, pos, message, seq, top) and result
        pos[0] += 1
        return result
    if key == b"NOT":
        return not _eval(tokens, pos, message, seq, top)
    if key == b"OR":
        left = _eval(tokens, pos, message, seq, top)
        right = _eval(tokens, pos, message, seq, top)
        return left or right
    flags = {f.lower() for f in message.flags}
    simple = {
        b"ALL": True,
        b"SEEN": "\\seen" in flags,
        b"UNSEEN": "\\seen" not in flags,
        b"FLAGGED": "\\flagged" in flags,
        b"UNFLAGGED": "\\flagged" not in flags,
        b"ANSWERED": "\\answered" in flags,
        b"UNANSWERED": "\\answered" not in flags,
        b"DELETED": "\\deleted" in flags,
        b"UNDELETED": "\\deleted" not in flags,
    }
    if key in simple:
        return simple[key]
    argument = tokens[pos[0]]
    pos[0] += 1
    parsed = message.parsed()
    if key in (b"FROM", b"TO", b"CC", b"BCC", b"SUBJECT"):
        header = key.decode().capitalize() if key != b"CC" else "Cc"
        values = " ".join(_decode(str(v)) or "" for v in parsed.get_all(header) or [])
        return _string(argument).lower() in values.lower()
    if key in (b"TEXT", b"BODY"):
        haystack = message.raw.decode("utf-8", "replace")
        if key == b"TEXT":
            haystack += " ".join(_decode(str(v)) or "" for v in parsed.values())
        return _string(argument).lower() in haystack.lower()
    if key == b"UID":
        return message.uid in _expand(_string(argument), top)
    if key == b"HEADER":
        value = tokens[pos[0]]
        pos[0] += 1
        wanted = _string(value).lower()
        found = " ".join(str(v) for v in parsed.get_all(_string(argument)) or [])
        return wanted in found.lower()
    if key in (b"LARGER", b"SMALLER"):
        size = int(_string(argument))
        return len(message.raw) > size if key == b"LARGER" else len(message.raw) < size
    if key in (b"SINCE", b"BEFORE", b"ON"):
        day = datetime.datetime.strptime(_string(argument), "%d-%b-%Y").date()
        received = datetime.datetime.strptime(message.internal_date, "%d-%b-%Y %H:%M:%S %z").date()
        return {b"SINCE": received >= day, b"BEFORE": received < day, b"ON": received == day}[key]
    raise IMAPError(f"the fake server does not know search key {key!r}")
