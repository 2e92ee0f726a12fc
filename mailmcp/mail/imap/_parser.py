"""
A fast parser for IMAP server responses, working on bytes.

Twisted's ``imap4.parseNestedParens`` walks a response byte by byte in
Python and costs about ten times the network floor on a 20-message ENVELOPE
FETCH (docs/architecture.rst, Targets).  Here a response arrives already split by the
protocol into text segments and literal payloads (``RawResponse``:
``(text, literal, text, literal, ..., text)``), each text segment is
tokenised by one compiled regular expression (``findall`` runs in C), and a
short Python loop builds the nested lists.

Value conventions of the nested form:

- atoms are ``bytes``; atoms made of at most 20 ASCII digits are ``int``
  (longer digit strings stay ``bytes`` so a hostile number cannot reach
  ``int()``'s 4,300-digit limit, and callers reject them as bad numbers);
- the atom ``NIL`` is ``None``;
- quoted strings and literals are ``bytes`` (a quoted ``"NIL"`` or ``"12"``
  stays ``bytes``, so a parameter value is never mistaken for a number);
- ``( ... )`` and ``[ ... ]`` are lists.

Every malformed input raises `ParseError`; nothing here trusts the server.
"""

from __future__ import annotations

import binascii
import itertools
import re
from collections.abc import Sequence
from typing import Any, TypeAlias

import orjson

from .._mailbox_api import Address, Envelope, FetchedMessage, IMAPError

#: One response as assembled by the protocol: text segments with the
#: literal payloads between them (always an odd number of items).
RawResponse = tuple[bytes, ...]

Value: TypeAlias = bytes | int | None | list["Value"]

#: Largest value accepted for a UID, a sequence number or a count.
MAX_UINT32 = 2**32 - 1
#: Largest mod-sequence (RFC 7162: 63-bit).
MAX_MODSEQ = 2**63 - 1
#: Deepest nesting accepted (BODYSTRUCTURE of hostile messages).
MAX_DEPTH = 100
#: Longest header text decoded with RFC 2047 (P-16: 20,000 encoded words
#: cost seconds); anything longer is cut before decoding.
MAX_HEADER_DECODE = 8192


class ParseError(IMAPError, ValueError):
    """
    The server sent something that is not valid IMAP.  An `IMAPError`, so a
    malformed response that escapes a caller still reaches the tools as a
    clean error, never as a crash.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"the mail server sent a malformed response ({detail})")
        self.detail = detail


_TOKEN = re.compile(
    rb"""[ \t]*(
        "[^"\\\r\n]*(?:\\.[^"\\\r\n]*)*"          # quoted string (unrolled: fast in re)
       |[()\[\]]                                  # list delimiters
       |[^ \t()"\[\]{\r\n]+                       # atom ...
          (?:\[[^\]\r\n]*\](?:<[0-9.]+>)?)?       #   ... with a section: BODY[1.2]<0>
       |\S                                        # anything else: an error
    )""",
    re.VERBOSE | re.DOTALL,
)
_UNQUOTE = re.compile(rb"\\(.)", re.DOTALL)
_OPEN, _CLOSE, _BOPEN, _BCLOSE, _QUOTE, _BRACE = 40, 41, 91, 93, 34, 123


def parse_values(response: RawResponse, start: int = 0) -> list[Value]:
    """
    Parse a whole response (text segments and literals) into a flat list of
    top-level values with nested lists.  C{start} skips that many bytes of
    the first segment (e.g. a tag already split off).

    :raises ParseError: on unbalanced parentheses, junk characters or
        nesting deeper than `MAX_DEPTH`.
    """
    top: list[Value] = []
    current = top
    append = top.append
    stack: list[tuple[list[Value], int]] = []
    closer = 0
    last = len(response) - 1
    findall = _TOKEN.findall
    for index in range(0, last + 1, 2):
        text = response[index]
        if index == 0 and start:
            text = text[start:]
        for token in findall(text):
            first = token[0]
            if first == _QUOTE:
                if len(token) < 2 or token[-1] != _QUOTE:
                    raise ParseError("unterminated quoted string")
                quoted = token[1:-1]
                if b"\\" in quoted:
                    quoted = _UNQUOTE.sub(rb"\1", quoted)
                append(quoted)
            elif first == _OPEN or first == _BOPEN:
                if len(stack) >= MAX_DEPTH:
                    raise ParseError("nesting too deep")
                child: list[Value] = []
                append(child)
                stack.append((current, closer))
                closer = _CLOSE if first == _OPEN else _BCLOSE
                current = child
                append = child.append
            elif first == _CLOSE or first == _BCLOSE:
                if first != closer:
                    raise ParseError("unbalanced parentheses")
                current, closer = stack.pop()
                append = current.append
            elif token == b"NIL":
                append(None)
            elif token.isdigit():
                append(int(token) if len(token) <= 20 else token)
            elif first == _BRACE:
                raise ParseError("unexpected literal marker")
            else:
                append(token)
        if index < last:
            append(response[index + 1])
    if stack:
        raise ParseError("unbalanced parentheses")
    return top


# -- small typed accessors ----------------------------------------------------


def as_number(value: Value, limit: int = MAX_UINT32, what: str = "number") -> int:
    """A non-negative integer no larger than C{limit}, else `ParseError`."""
    if type(value) is not int or value > limit:
        raise ParseError(f"bad {what}: {value!r:.40}")
    return value


def as_text(value: Value) -> str | None:
    """An nstring as text: UTF-8 when valid, else Latin-1 (never fails)."""
    if value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    raise ParseError("expected a string, got a list")


def as_atom_str(value: Value) -> str:
    """An atom or string as Latin-1 text (flags, attributes)."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, int):
        return str(value)
    raise ParseError(f"expected an atom, got {value!r:.40}")


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]+")


def decode_header_text(value: Value) -> str | None:
    """
    Decode an ENVELOPE text field (subject, display name): raw 8-bit bytes
    as UTF-8 (else Latin-1), then RFC 2047 encoded words.  Unknown or broken
    charsets fall back to UTF-8 with replacement characters; control
    characters (CR, LF, NUL...) become spaces, so decoded text can never
    smuggle a header line anywhere.
    """
    if type(value) is bytes and value.isascii() and b"=?" not in value:
        plain = value.decode("ascii")  # the common case, kept cheap
        return plain if plain.isprintable() else _CONTROL.sub(" ", plain)
    text = as_text(value)
    if text is None:
        return None
    if len(text) > MAX_HEADER_DECODE:
        text = text[:MAX_HEADER_DECODE]
    if "=?" in text:
        text = decode_words(text)
    return text if text.isprintable() else _CONTROL.sub(" ", text)


_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,64})\?([qQbB])\?([^?\s]*)\?=")


def decode_words(text: str) -> str:
    """
    RFC 2047 encoded words in C{text}, decoded; whitespace between two
    adjacent encoded words is dropped, as the RFC says.  Never raises:
    bad base64 stays as written, unknown charsets decode as UTF-8.
    """
    out: list[str] = []
    position = 0
    previous_word = False
    for match in _ENCODED_WORD.finditer(text):
        gap = text[position : match.start()]
        if not (previous_word and (not gap or gap.isspace())):
            out.append(gap)
        charset = match.group(1).split("*", 1)[0]
        payload = match.group(3).encode("ascii", "replace")
        if match.group(2) in "qQ":
            data = binascii.a2b_qp(payload, header=True)
        else:
            try:
                data = binascii.a2b_base64(payload + b"=" * (-len(payload) % 4))
            except binascii.Error:
                out.append(match.group(0))
                position = match.end()
                previous_word = False
                continue
        try:
            out.append(data.decode(charset, "replace"))
        except (LookupError, ValueError):
            out.append(data.decode("utf-8", "replace"))
        position = match.end()
        previous_word = True
    out.append(text[position:])
    return "".join(out)


def _addresses(value: Value) -> tuple[Address, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ParseError("bad address list")
    result: list[Address] = []
    for item in value:
        if not isinstance(item, list) or len(item) != 4:
            raise ParseError("bad address")
        name, _adl, mailbox, host = item
        if host is None:
            if mailbox is None:
                continue  # end of group
            # start of group: the group name is in the mailbox field
            result.append(Address(name=decode_header_text(mailbox), email=""))
            continue
        local = as_text(mailbox) or ""
        domain = as_text(host) or ""
        result.append(
            Address(
                name=decode_header_text(name),
                email=_CONTROL.sub("", f"{local}@{domain}" if local else domain),
            )
        )
    return tuple(result)


def parse_envelope(value: Value) -> Envelope:
    """The ten fields of an ENVELOPE, decoded (RFC 3501 §7.4.2)."""
    if not isinstance(value, list) or len(value) != 10:
        raise ParseError("bad ENVELOPE")
    date, subject, from_, sender, reply_to, to, cc, bcc, in_reply_to, message_id = value
    return Envelope(
        date=decode_header_text(date),
        subject=decode_header_text(subject),
        from_=_addresses(from_),
        sender=_addresses(sender),
        reply_to=_addresses(reply_to),
        to=_addresses(to),
        cc=_addresses(cc),
        bcc=_addresses(bcc),
        in_reply_to=decode_header_text(in_reply_to),
        message_id=decode_header_text(message_id),
    )


def convert_bodystructure(value: Value, depth: int = 0) -> Any:
    """The contract's BODYSTRUCTURE form: str (Latin-1) atoms/strings, int numbers, None."""
    if depth > MAX_DEPTH:
        raise ParseError("BODYSTRUCTURE nested too deep")
    if isinstance(value, list):
        return [convert_bodystructure(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value


def _section_key(item: bytes) -> tuple[str, str]:
    """``BODY[1.2]<0>`` → (``"BODY"``, ``"1.2"``); partial origin dropped."""
    open_at = item.index(b"[")
    close_at = item.rindex(b"]")
    return item[:open_at].decode("latin-1").upper(), item[open_at + 1 : close_at].decode("latin-1")


def parse_fetch(response: RawResponse) -> FetchedMessage | None:
    """
    Parse one untagged ``n FETCH (...)`` response (the ``*`` already
    stripped).  Returns None when it is some other untagged response.

    :raises ParseError: when it is a FETCH but malformed.
    """
    head = response[0]
    space = head.find(b" ")
    if space <= 0 or head[space + 1 : space + 7].upper() != b"FETCH ":
        return None
    # A line alone is its own key; with literals (a message's head and
    # header fields) the tuple of its pieces is.
    key: bytes | RawResponse = head if len(response) == 1 else response
    known = _SCANNED.get(key)
    if known is not None:
        return known
    seq = as_number(_int_atom(head[:space]), what="sequence number")
    if len(response) == 1:
        scanned = _scan_fetch(head, space + 7, seq)
        if scanned is not None:
            _remember(key, scanned)
            return scanned
        fast = _fast_envelope(head, space + 7)
        if fast is not None:
            return fast_fetch(seq, *fast)
    values = parse_values(response, space + 7)
    if len(values) != 1 or not isinstance(values[0], list):
        raise ParseError("FETCH without a parenthesised list")
    message = fetch_from_items(seq, values[0])
    if len(response) > 1:
        _remember(key, message)
    return message


# -- lines already read ------------------------------------------------------------
#
# An assistant lists the same first page again and again, and a pooled
# connection gets the same bytes back for it each time: a listing line is
# read once and its `FetchedMessage` (frozen, never changed by its users)
# handed out again for the same bytes.  Keyed by the whole line, sequence
# number and flags included, so any change on the server is a new key.
# Bounded: the oldest quarter goes when it is full.

# A message's head (its FETCH of flags, envelope, structure and a few header
# fields, with literals) is kept the same way, by the tuple of its pieces:
# reading a message again does not parse its head again.

#: Listing lines the scanner read, and heads read, by their exact bytes.
_SCANNED: dict[bytes | RawResponse, FetchedMessage] = {}
#: At most this many (~3 KB each with their message: ~12 MB).
SCANNED_MAX = 4096
#: Responses longer than this are not kept (a listing line is ~0.5-2 KB).
SCANNED_LINE_MAX = 8192


def _remember(key: bytes | RawResponse, message: FetchedMessage) -> None:
    size = len(key) if isinstance(key, bytes) else sum(map(len, key))
    if size > SCANNED_LINE_MAX:
        return
    if len(_SCANNED) >= SCANNED_MAX:
        for old in list(itertools.islice(_SCANNED, SCANNED_MAX // 4)):
            del _SCANNED[old]
    _SCANNED[key] = message


# -- the single-pass listing scanner ------------------------------------------------
#
# A listing FETCH (``UID n FLAGS (...) RFC822.SIZE n INTERNALDATE "..."
# ENVELOPE (...) BODYSTRUCTURE (...)``, MODSEQ with CONDSTORE) is read item
# by item straight from the line into a `FetchedMessage`: one anchored
# regular expression per item, no token tree of the whole line and no
# second conversion pass.  It accepts only the plain forms servers send
# (single spaces, no literals, no escapes in dates, flags that are plain
# atoms); on anything else it returns None and the general parser below
# decides, so hostile input gets exactly the general parser's answer.

_SCAN_ITEM = re.compile(rb"(UID|FLAGS|RFC822\.SIZE|INTERNALDATE|ENVELOPE|BODYSTRUCTURE|MODSEQ) ")
_SCAN_NUMBER = re.compile(rb"[0-9]{1,10}")
_SCAN_FLAGS = re.compile(rb'\(((?:[^ \t()"\[\]{\r\n]+(?: [^ \t()"\[\]{\r\n]+)*)?)\)')
_SCAN_DATE = re.compile(rb'"([^"\\\r\n]*)"')
_SCAN_MODSEQ = re.compile(rb"\(([0-9]{1,19})\)")
#: The end of a line whose last item is BODYSTRUCTURE, followed by MODSEQ.
_SCAN_TAIL_MODSEQ = re.compile(rb" MODSEQ \(([0-9]{1,19})\)\)")


def _scan_fetch(head: bytes, start: int, seq: int) -> FetchedMessage | None:
    """
    The `FetchedMessage` of a plain listing FETCH line (C{start}: the
    offset of its ``(``), or None when the line is not of that plain form.
    """
    end = len(head) - 1
    if end <= start or head[start] != _OPEN or head[end] != _CLOSE:
        return None
    uid: int | None = None
    flags: tuple[str, ...] | None = None
    size: int | None = None
    internal_date: str | None = None
    envelope: Envelope | None = None
    bodystructure: Any = None
    modseq: int | None = None
    pos = start + 1
    listing = _SCAN_LISTING.match(head, start)
    if listing is not None:  # the items in the order a listing asks for them, in one match
        groups = listing.groups()
        uid = int(groups[0])
        size = int(groups[2])
        if not 0 < uid <= MAX_UINT32 or size > MAX_UINT32:
            return None
        words = groups[1].split(b" ") if groups[1] else []
        for word in words:
            if word == b"NIL" or word.isdigit():
                return None
        flags = tuple([word.decode("latin-1") for word in words])
        internal_date = as_text(groups[3])
        envelope = _envelope_from_groups(groups[4:])
        pos = listing.end()
    while True:
        item = _SCAN_ITEM.match(head, pos)
        if item is None:
            return None
        name = item.group(1)
        pos = item.end()
        if name == b"UID" or name == b"RFC822.SIZE":
            number = _SCAN_NUMBER.match(head, pos)
            if number is None:
                return None
            value = int(number.group())
            if value > MAX_UINT32 or (value == 0 and name == b"UID"):
                return None
            if name == b"UID":
                uid = value
            else:
                size = value
            pos = number.end()
        elif name == b"FLAGS":
            found = _SCAN_FLAGS.match(head, pos)
            if found is None:
                return None
            raw = found.group(1)
            words = raw.split(b" ") if raw else []
            for word in words:
                if word == b"NIL" or word.isdigit():
                    return None
            flags = tuple([word.decode("latin-1") for word in words])
            pos = found.end()
        elif name == b"INTERNALDATE":
            found = _SCAN_DATE.match(head, pos)
            if found is None:
                return None
            internal_date = as_text(found.group(1))
            pos = found.end()
        elif name == b"ENVELOPE":
            found = _ENVELOPE_VALUE.match(head, pos)
            if found is None:
                return None
            envelope = _envelope_from_groups(found.groups())
            pos = found.end()
        elif name == b"MODSEQ":
            found = _SCAN_MODSEQ.match(head, pos)
            if found is None:
                return None
            modseq = int(found.group(1))
            if modseq > MAX_MODSEQ:
                return None
            pos = found.end()
        else:  # BODYSTRUCTURE: the last item, or followed by MODSEQ only
            stop = end
            tail = head.rfind(b" MODSEQ (", pos)
            if tail != -1:
                found = _SCAN_TAIL_MODSEQ.match(head, tail)
                if found is not None and found.end() == len(head):
                    stop = tail
            bodystructure = _scan_structure(head, pos, stop)
            if bodystructure is None:
                return None
            if stop != end:
                modseq = int(head[stop + 9 : end - 1])
                if modseq > MAX_MODSEQ:
                    return None
            pos = end
        if pos == end:
            break
        if pos > end or head[pos] != 32:  # one space between items, else the general parser
            return None
        pos += 1
    if uid is None:
        return None
    return FetchedMessage(
        uid=uid,
        seq=seq,
        flags=flags,
        size=size,
        internal_date=internal_date,
        envelope=envelope,
        bodystructure=bodystructure,
        modseq=modseq,
    )


def _scan_structure(head: bytes, pos: int, stop: int) -> list[Any] | None:
    """
    The BODYSTRUCTURE list filling C{head[pos:stop]} exactly, in the
    contract's form (what `convert_bodystructure` makes of `parse_values`),
    built in the same pass as the tokens are read; None when it is not one
    well-formed list.
    """
    if head[pos] != _OPEN:
        return None
    as_json = _structure_as_json(head[pos:stop])
    if as_json is not None:
        return as_json
    return _scan_structure_tokens(head, pos, stop)


def _scan_structure_tokens(head: bytes, pos: int, stop: int) -> list[Any] | None:
    """`_scan_structure` token by token: any form the general tokenizer reads."""
    top: list[Any] = []
    current = top
    append = top.append
    stack: list[tuple[list[Any], int]] = []
    closer = 0
    for token in _TOKEN.findall(head, pos, stop):
        if current is top and top:
            return None  # something after the list
        first = token[0]
        if first == _QUOTE:
            if len(token) < 2 or token[-1] != _QUOTE:
                return None
            quoted = token[1:-1]
            if b"\\" in quoted:
                quoted = _UNQUOTE.sub(rb"\1", quoted)
            append(quoted.decode("latin-1"))
        elif first == _OPEN or first == _BOPEN:
            if len(stack) >= MAX_DEPTH - 1:  # the FETCH list is one level already
                return None
            child: list[Any] = []
            append(child)
            stack.append((current, closer))
            closer = _CLOSE if first == _OPEN else _BCLOSE
            current = child
            append = child.append
        elif first == _CLOSE or first == _BCLOSE:
            if first != closer:
                return None
            current, closer = stack.pop()
            append = current.append
        elif token == b"NIL":
            append(None)
        elif token.isdigit():
            append(int(token) if len(token) <= 20 else token.decode("latin-1"))
        elif first == _BRACE:
            return None
        else:
            append(token.decode("latin-1"))
    if stack or len(top) != 1:
        return None
    structure: list[Any] = top[0]
    return structure


#: A BODYSTRUCTURE `_structure_as_json` takes: parentheses, single spaces,
#: NIL, numbers of up to 18 digits, and quoted strings with no escape,
#: control character, space or parenthesis in them.
_JSON_STRUCTURE = re.compile(rb'(?:[() ]|NIL|[0-9]{1,18}(?![0-9])|"[^"\\\x00-\x1f ()]*")*')
#: Parentheses and spaces in their JSON spelling.
_TO_JSON = bytes.maketrans(b"( )", b"[,]")


def _structure_as_json(raw: bytes) -> list[Any] | None:
    """
    The plain BODYSTRUCTURE servers send, read by the JSON parser (in C)
    instead of token by token: its quoted strings are JSON strings already,
    and what lies between them (parentheses, spaces, NIL, numbers) has a
    one-to-one JSON spelling, made by substitutions that cannot touch the
    strings (they hold no space, parenthesis or NIL).  None for anything
    else (8-bit text, escapes, a filename with a space, deep nesting, odd
    spacing), which the token loop then reads: a result here is always the
    one the token loop gives (a property test holds them equal).
    """
    if (
        not raw.isascii()
        or raw.count(b"(") >= MAX_DEPTH - 1
        or _JSON_STRUCTURE.fullmatch(raw) is None
        # Every NIL a token of its own: one inside a string (which holds no
        # space or parenthesis) is never preceded by either.
        or raw.count(b"NIL") != raw.count(b" NIL") + raw.count(b"(NIL")
    ):
        return None
    text = raw.replace(b"NIL", b"null").replace(b")(", b"),(").translate(_TO_JSON)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


# The listing hot path: an ENVELOPE without literals is matched by one
# regular expression (in C) instead of ~50 tokens through the Python loop.
_NSTRING = rb'(?:NIL|"[^"\\\r\n]*(?:\\.[^"\\\r\n]*)*")'
_ADDRESS = rb"\(" + rb" ".join([_NSTRING] * 4) + rb"\)"
_ADDRESSES = rb"(?:NIL|\((?:" + _ADDRESS + rb")+\))"
_FAST_ENVELOPE = re.compile(
    rb"(?<=[ (])ENVELOPE \("
    + rb" ".join(
        [rb"(" + _NSTRING + rb")"] * 2
        + [rb"(" + _ADDRESSES + rb")"] * 6
        + [rb"(" + _NSTRING + rb")"] * 2
    )
    + rb"\)"
)
#: The value of an ENVELOPE item alone (groups as in `_FAST_ENVELOPE`).
_ENVELOPE_VALUE = re.compile(_FAST_ENVELOPE.pattern[len(rb"(?<=[ (])ENVELOPE ") :])
#: A listing FETCH up to its BODYSTRUCTURE item: UID, FLAGS, RFC822.SIZE,
#: INTERNALDATE and ENVELOPE in the order `SUMMARY_ITEMS` asks for them.
_SCAN_LISTING = re.compile(
    rb"\(UID ("
    + _SCAN_NUMBER.pattern
    + rb") FLAGS "
    + _SCAN_FLAGS.pattern
    + rb" RFC822\.SIZE ("
    + _SCAN_NUMBER.pattern
    + rb") INTERNALDATE "
    + _SCAN_DATE.pattern
    + rb" ENVELOPE "
    + _ENVELOPE_VALUE.pattern
    + rb" (?=BODYSTRUCTURE \()"
)
_ADDRESS_FIELDS = re.compile(rb"\(" + rb" ".join([rb"(" + _NSTRING + rb")"] * 4) + rb"\)")


def _nstring(raw: bytes) -> bytes | None:
    if raw == b"NIL":
        return None
    inner = raw[1:-1]
    return _UNQUOTE.sub(rb"\1", inner) if b"\\" in inner else inner


def _fast_envelope(head: bytes, start: int) -> tuple[list[Value], Envelope] | None:
    """
    (the FETCH items with ENVELOPE's value a placeholder, the Envelope), or
    None when the fast path does not apply (the general parser then runs).
    """
    at = head.find(b"ENVELOPE (", start)
    if at <= start or head[at - 1] not in b" (":
        return None
    match = _FAST_ENVELOPE.match(head, at)
    if match is None:
        return None
    rest = head[start : match.start()] + b"ENVELOPE NIL" + head[match.end() :]
    try:
        values = parse_values((rest,))
    except ParseError:
        return None
    if len(values) != 1 or not isinstance(values[0], list):
        return None
    items = values[0]
    # The match must be the top-level ENVELOPE item (not text inside some
    # quoted string): its placeholder must be found there.
    for i in range(0, len(items) - 1, 2):
        key = items[i]
        if isinstance(key, bytes) and key.upper() == b"ENVELOPE" and items[i + 1] is None:
            break
    else:
        return None
    return items, _envelope_from_groups(match.groups())


def _envelope_from_groups(groups: Sequence[bytes]) -> Envelope:
    """The `Envelope` of the ten raw fields an ENVELOPE regex matched."""
    return Envelope(
        date=_fast_text(groups[0]),
        subject=_fast_text(groups[1]),
        from_=_fast_addresses(groups[2]),
        sender=_fast_addresses(groups[3]),
        reply_to=_fast_addresses(groups[4]),
        to=_fast_addresses(groups[5]),
        cc=_fast_addresses(groups[6]),
        bcc=_fast_addresses(groups[7]),
        in_reply_to=_fast_text(groups[8]),
        message_id=_fast_text(groups[9]),
    )


#: Decoded header texts by raw bytes: senders' names repeat on every page.
_DECODED: dict[bytes, str | None] = {}
_DECODED_MAX = 4096


def _fast_text(raw: bytes) -> str | None:
    """`decode_header_text` of a raw nstring, memoised (bounded)."""
    if raw == b"NIL":
        return None
    cached = _DECODED.get(raw)
    if cached is None:
        cached = decode_header_text(_nstring(raw))
        if len(_DECODED) >= _DECODED_MAX:
            _DECODED.clear()
        _DECODED[raw] = cached
    return cached


#: Address lists by raw bytes (immutable values, safe to share).
_ADDRESS_LISTS: dict[bytes, tuple[Address, ...]] = {}


def _fast_addresses(raw: bytes) -> tuple[Address, ...]:
    """The Address tuple of a raw address list, memoised (bounded)."""
    if raw == b"NIL":
        return ()
    cached = _ADDRESS_LISTS.get(raw)
    if cached is None:
        cached = _decode_addresses(raw)
        if len(_ADDRESS_LISTS) >= _DECODED_MAX:
            _ADDRESS_LISTS.clear()
        _ADDRESS_LISTS[raw] = cached
    return cached


def _decode_addresses(raw: bytes) -> tuple[Address, ...]:
    result: list[Address] = []
    for name, _adl, mailbox, host in _ADDRESS_FIELDS.findall(raw):
        if host == b"NIL":
            if mailbox != b"NIL":  # start of a group; NIL is its end
                result.append(Address(name=_fast_text(mailbox), email=""))
            continue
        local = "" if mailbox == b"NIL" else as_text(_nstring(mailbox)) or ""
        domain = as_text(_nstring(host)) or ""
        email = f"{local}@{domain}" if local else domain
        if not email.isprintable():
            email = _CONTROL.sub("", email)
        result.append(Address(name=_fast_text(name), email=email))
    return tuple(result)


def fast_fetch(seq: int, items: list[Value], envelope: Envelope) -> FetchedMessage:
    message = fetch_from_items(seq, items, envelope)
    return message


def _int_atom(atom: bytes) -> Value:
    return int(atom) if atom.isdigit() and len(atom) <= 20 else atom


def fetch_from_items(
    seq: int, items: list[Value], parsed_envelope: Envelope | None = None
) -> FetchedMessage:
    """
    Build a `FetchedMessage` from the key/value list of one FETCH.
    C{parsed_envelope}, when given, stands for the ENVELOPE item's value.
    """
    if len(items) % 2:
        raise ParseError("FETCH list has an odd number of items")
    uid: int | None = None
    flags: tuple[str, ...] | None = None
    size: int | None = None
    internal_date: str | None = None
    envelope: Envelope | None = None
    bodystructure: Any = None
    modseq: int | None = None
    sections: dict[str, bytes] = {}
    for i in range(0, len(items), 2):
        key = items[i]
        value = items[i + 1]
        if not isinstance(key, bytes):
            raise ParseError(f"bad FETCH item name {key!r:.40}")
        name = key.upper()
        if name == b"UID":
            uid = as_number(value, what="UID")
            if uid == 0:
                raise ParseError("UID 0")
        elif name == b"FLAGS":
            if not isinstance(value, list):
                raise ParseError("FLAGS is not a list")
            flags = tuple(as_atom_str(f) for f in value)
        elif name == b"RFC822.SIZE":
            size = as_number(value, what="RFC822.SIZE")
        elif name == b"INTERNALDATE":
            internal_date = as_text(value)
        elif name == b"ENVELOPE":
            envelope = parsed_envelope if parsed_envelope is not None else parse_envelope(value)
        elif name in (b"BODYSTRUCTURE", b"BODY"):
            if not isinstance(value, list):
                raise ParseError("BODYSTRUCTURE is not a list")
            bodystructure = convert_bodystructure(value)
        elif name == b"MODSEQ":
            if not isinstance(value, list) or len(value) != 1:
                raise ParseError("bad MODSEQ")
            modseq = as_number(value[0], MAX_MODSEQ, "MODSEQ")
        elif b"[" in name:
            _, section = _section_key(key)
            if value is None:
                sections[section] = b""
            elif isinstance(value, bytes):
                sections[section] = value
            elif isinstance(value, int):
                sections[section] = str(value).encode("ascii")
            else:
                raise ParseError("section value is a list")
        elif name in (b"RFC822.HEADER", b"RFC822", b"RFC822.TEXT"):
            if value is not None and not isinstance(value, bytes):
                raise ParseError(f"bad {name.decode('latin-1')}")
            sections[{b"RFC822.HEADER": "HEADER", b"RFC822": "", b"RFC822.TEXT": "TEXT"}[name]] = (
                value or b""
            )
        # Anything else (X-GM-*, SAVEDATE, PREVIEW...) is ignored.
    if uid is None:
        raise ParseError("FETCH response without UID")
    return FetchedMessage(
        uid=uid,
        seq=seq,
        flags=flags,
        size=size,
        internal_date=internal_date,
        envelope=envelope,
        bodystructure=bodystructure,
        sections=sections,
        modseq=modseq,
    )


def merge_fetched(old: FetchedMessage, new: FetchedMessage) -> FetchedMessage:
    """Two FETCH responses for the same message (a server may split them)."""
    sections = dict(old.sections)
    sections.update(new.sections)
    return FetchedMessage(
        uid=old.uid,
        seq=old.seq,
        flags=new.flags if new.flags is not None else old.flags,
        size=new.size if new.size is not None else old.size,
        internal_date=new.internal_date or old.internal_date,
        envelope=new.envelope or old.envelope,
        bodystructure=new.bodystructure if new.bodystructure is not None else old.bodystructure,
        sections=sections,
        modseq=new.modseq if new.modseq is not None else old.modseq,
    )


# -- sequence sets ------------------------------------------------------------

_SEQ_SET = re.compile(rb"(?:\d+|\*)(?::(?:\d+|\*))?(?:,(?:\d+|\*)(?::(?:\d+|\*))?)*")


def is_sequence_set(value: str) -> bool:
    """Whether C{value} is a syntactically valid, non-zero, bounded sequence set."""
    if not value or len(value) > 10_000:
        return False
    raw = value.encode("ascii", "replace")
    if not _SEQ_SET.fullmatch(raw):
        return False
    for part in re.split(rb"[:,]", raw):
        if part != b"*" and (len(part) > 10 or not 0 < int(part) <= MAX_UINT32):
            return False
    return True


def sequence_ranges(value: bytes | str) -> list[tuple[int, int]]:
    """Ranges of a sequence set; ``*`` counts as `MAX_UINT32`."""
    raw = value.encode("ascii") if isinstance(value, str) else value
    ranges = []
    for part in raw.split(b","):
        low, _, high = part.partition(b":")
        a = MAX_UINT32 if low == b"*" else _bounded_int(low)
        b = a if not high else (MAX_UINT32 if high == b"*" else _bounded_int(high))
        ranges.append((min(a, b), max(a, b)))
    return ranges


def _bounded_int(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 10 or int(raw) > MAX_UINT32:
        raise ParseError(f"bad number in sequence set: {raw!r:.30}")
    return int(raw)


def expand_sequence_set(value: bytes, limit: int) -> list[int]:
    """Every number of a sequence set (no ``*``), at most C{limit} of them."""
    result: list[int] = []
    for low, high in sequence_ranges(value):
        if low == 0 or high == MAX_UINT32 and b"*" in value:
            raise ParseError("bad sequence set from server")
        if len(result) + (high - low + 1) > limit:
            raise ParseError(f"sequence set with more than {limit} numbers")
        result.extend(range(low, high + 1))
    return result


def compress_uids(uids: Sequence[int]) -> bytes:
    """A compact sequence set for validated UIDs: ``1:4,7,9:10``."""
    ordered = sorted(set(uids))
    parts: list[bytes] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
        start = prev = uid
    parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(parts)


# -- response codes, status lines ------------------------------------------------

_CODE = re.compile(rb"^\s*\[([^\]\r\n]*)\]\s*(.*)$", re.DOTALL)


def split_code(text: bytes) -> tuple[list[Value] | None, bytes]:
    """``[APPENDUID 3 7] Done`` → ([b"APPENDUID", 3, 7], b"Done")."""
    match = _CODE.match(text)
    if match is None:
        return None, text
    try:
        code = parse_values((match.group(1),))
    except ParseError:
        code = [match.group(1)]
    if not code:
        return None, match.group(2)
    first = code[0]
    # The code's name is always bytes, so callers compare like with like.
    code[0] = (
        first.upper()
        if isinstance(first, bytes)
        else str(first).encode("ascii")
        if isinstance(first, int)
        else b""
    )
    return code, match.group(2)
