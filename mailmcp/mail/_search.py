"""
IMAP SEARCH criteria from untrusted text, compiled to safe wire tokens.

The model may write raw IMAP SEARCH syntax (``OR FROM alice FROM bob``,
``SUBJECT "q3 report" SINCE 01-Jan-2025``).  Twisted's ``IMAP4Client.search``
would join such text into the command line verbatim, so a CR/LF smuggles a
second command and a ``{5}`` literal header stalls the connection
(docs/threat-model.rst, P-01).  Here the text is lexed and parsed against an allow-list
of search keys with their argument types, and the parse tree is re-emitted:
every string argument is re-quoted (or sent as a `Literal` when it is not
ASCII), dates, numbers and UID sets are validated, and nothing the user wrote
reaches the wire unparsed.  Every refusal happens here, before any IMAP
command exists.

Structured filters (``from``, ``since``, ``unseen`` …) compile to the same
tree, so both paths share one emitter.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence

import attrs

from ._mailbox_api import Literal

#: Caps on what one query may contain; far above any real need, low enough
#: that a hostile query cannot make a huge command line.
MAX_QUERY_CHARS = 4000
MAX_KEYS = 100
MAX_DEPTH = 20
MAX_STRING_BYTES = 1000
MAX_UID_SET_CHARS = 1000

UID_MAX = 2**32 - 1

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Search keys by argument shape (RFC 3501 §6.4.4 / RFC 9051 §6.4.4, plus
# RFC 5032 WITHIN's YOUNGER/OLDER).
_NO_ARG = frozenset(
    {
        "ALL",
        "ANSWERED",
        "DELETED",
        "DRAFT",
        "FLAGGED",
        "NEW",
        "OLD",
        "RECENT",
        "SEEN",
        "UNANSWERED",
        "UNDELETED",
        "UNDRAFT",
        "UNFLAGGED",
        "UNSEEN",
    }
)
_STRING_ARG = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_DATE_ARG = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
_NUMBER_ARG = frozenset({"LARGER", "SMALLER", "YOUNGER", "OLDER"})
_KEYWORD_ARG = frozenset({"KEYWORD", "UNKEYWORD"})

_FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9051 atom: any CHAR except atom-specials "(" ")" "{" SP CTL "%" "*" DQUOTE "\" "]"
_KEYWORD_RE = re.compile(r"[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]{1,64}")
_HEADER_NAME_RE = re.compile(r"[!-9;-~]{1,76}")  # RFC 5322 ftext
_SEQ_NUMBER = r"(?:[1-9][0-9]{0,9}|\*)"
_UID_SET_RE = re.compile(rf"{_SEQ_NUMBER}(?::{_SEQ_NUMBER})?(?:,{_SEQ_NUMBER}(?::{_SEQ_NUMBER})?)*")
_IMAP_DATE_RE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_ISO_DATE_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")


class SearchQueryError(ValueError):
    """The query cannot be compiled; the message says why and how to fix it."""


# -- lexer -------------------------------------------------------------------


@attrs.frozen
class Token:
    kind: str  # "(", ")", "atom", "string"
    text: str
    position: int


def tokenize(query: str) -> list[Token]:
    """
    Split C{query} into parentheses, atoms and quoted strings.

    Control characters (CR, LF, NUL …) and IMAP literal syntax ``{n}`` /
    ``{n+}`` are refused outright: they are the two ways to break out of a
    command line, and no legitimate query needs them.
    """
    if len(query) > MAX_QUERY_CHARS:
        raise SearchQueryError(
            f"query is too long ({len(query)} characters, at most {MAX_QUERY_CHARS})"
        )
    bad = _FORBIDDEN_CHARS.search(query)
    if bad is not None:
        raise SearchQueryError(
            f"query contains a control character (code {ord(bad.group()):#04x}) at position "
            f"{bad.start()}; line breaks and NUL are not allowed in a search"
        )
    tokens: list[Token] = []
    i = 0
    n = len(query)
    while i < n:
        c = query[i]
        if c in " \t":
            i += 1
        elif c in "()":
            tokens.append(Token(c, c, i))
            i += 1
        elif c == '"':
            start = i
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise SearchQueryError(
                        f"unterminated quoted string starting at position {start}"
                    )
                c = query[i]
                if c == "\\":
                    if i + 1 >= n:
                        raise SearchQueryError(
                            f"unterminated quoted string starting at position {start}"
                        )
                    chars.append(query[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
            tokens.append(Token("string", "".join(chars), start))
        elif c == "{":
            raise SearchQueryError(
                f"IMAP literal syntax ({{n}}) at position {i} is not allowed; "
                'write the text in double quotes instead, e.g. SUBJECT "hello world"'
            )
        else:
            start = i
            while i < n and query[i] not in ' \t()"':
                if query[i] == "{":
                    raise SearchQueryError(
                        f"IMAP literal syntax ({{n}}) at position {i} is not allowed; "
                        "write the text in double quotes instead"
                    )
                i += 1
            tokens.append(Token("atom", query[start:i], start))
    return tokens


# -- parse tree --------------------------------------------------------------


@attrs.frozen
class Key:
    """A search key and its already validated, wire-ready arguments."""

    name: str
    args: tuple[bytes | Literal, ...] = ()


@attrs.frozen
class Not:
    operand: Node


@attrs.frozen
class Or:
    left: Node
    right: Node


@attrs.frozen
class And:
    operands: tuple[Node, ...]


Node = Key | Not | Or | And


def imap_date(value: str | datetime.date) -> bytes:
    """
    A validated IMAP date (``7-Mar-2025``) from an IMAP date string, an ISO
    ``YYYY-MM-DD`` string or a `datetime.date`.
    """
    if isinstance(value, datetime.date):
        day = value
    else:
        m = _IMAP_DATE_RE.fullmatch(value)
        iso = _ISO_DATE_RE.fullmatch(value)
        try:
            if m is not None:
                month = m.group(2).capitalize()
                if month not in _MONTHS:
                    raise ValueError(month)
                day = datetime.date(int(m.group(3)), _MONTHS.index(month) + 1, int(m.group(1)))
            elif iso is not None:
                day = datetime.date(int(iso.group(1)), int(iso.group(2)), int(iso.group(3)))
            else:
                raise ValueError(value)
        except ValueError:
            raise SearchQueryError(
                f"{value!r} is not a date; use DD-Mon-YYYY (e.g. 07-Mar-2025) or YYYY-MM-DD"
            ) from None
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year:04d}".encode("ascii")


def search_string(value: str) -> bytes | Literal:
    """
    A search string argument: a quoted string when it is printable ASCII, a
    UTF-8 `Literal` otherwise (the IMAP layer then adds ``CHARSET UTF-8``).
    """
    if _FORBIDDEN_CHARS.search(value):
        raise SearchQueryError("search text may not contain line breaks or control characters")
    encoded = value.encode("utf-8", errors="strict")
    if len(encoded) > MAX_STRING_BYTES:
        raise SearchQueryError(
            f"search text is too long ({len(encoded)} bytes, at most {MAX_STRING_BYTES})"
        )
    if value.isascii():
        return b'"' + encoded.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return Literal(encoded)


def uid_set(value: str) -> bytes:
    """A validated UID set (``1:10,15,20:*``); every number 1..4294967295."""
    if len(value) > MAX_UID_SET_CHARS or not _UID_SET_RE.fullmatch(value):
        raise SearchQueryError(
            f"{value[:50]!r} is not a UID set; use numbers, ranges and '*', e.g. 100:200,305"
        )
    for number in re.split(r"[:,]", value):
        if number != "*" and int(number) > UID_MAX:
            raise SearchQueryError(f"UID {number} is out of range (1..{UID_MAX})")
    return value.encode("ascii")


def _number(value: str, key: str) -> bytes:
    if not value.isdigit() or len(value) > 10 or int(value) > UID_MAX:
        raise SearchQueryError(f"{key} needs a whole number (0..{UID_MAX}), not {value[:30]!r}")
    return str(int(value)).encode("ascii")


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.keys = 0

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, what: str) -> Token:
        token = self.peek()
        if token is None:
            raise SearchQueryError(f"query ends where {what} was expected")
        self.pos += 1
        return token

    def argument(self, key: str) -> Token:
        token = self.take(f"the argument of {key}")
        if token.kind not in ("atom", "string"):
            raise SearchQueryError(
                f"{key} needs an argument, found {token.text!r} at position {token.position}"
            )
        return token

    def parse(self) -> Node:
        nodes: list[Node] = []
        while self.peek() is not None:
            nodes.append(self.key(0))
        return _and(nodes)

    def key(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise SearchQueryError(f"query nests deeper than {MAX_DEPTH} levels")
        self.keys += 1
        if self.keys > MAX_KEYS:
            raise SearchQueryError(f"query has more than {MAX_KEYS} search keys")
        token = self.take("a search key")
        if token.kind == "(":
            nodes: list[Node] = []
            while True:
                nxt = self.peek()
                if nxt is None:
                    raise SearchQueryError(
                        f"parenthesis opened at position {token.position} is never closed"
                    )
                if nxt.kind == ")":
                    self.pos += 1
                    break
                nodes.append(self.key(depth + 1))
            if not nodes:
                raise SearchQueryError(f"empty parentheses at position {token.position}")
            return And(tuple(nodes)) if len(nodes) > 1 else nodes[0]
        if token.kind == ")":
            raise SearchQueryError(f"unbalanced ')' at position {token.position}")
        if token.kind == "string":
            raise SearchQueryError(
                f"a quoted string at position {token.position} must follow a search key "
                '(e.g. TEXT "words" to search everywhere)'
            )
        name = token.text.upper()
        if name in _NO_ARG:
            return Key(name)
        if name == "NOT":
            return Not(self.key(depth + 1))
        if name == "OR":
            return Or(self.key(depth + 1), self.key(depth + 1))
        if name in _STRING_ARG:
            return Key(name, (search_string(self.argument(name).text),))
        if name in _DATE_ARG:
            return Key(name, (imap_date(self.argument(name).text),))
        if name in _NUMBER_ARG:
            return Key(name, (_number(self.argument(name).text, name),))
        if name in _KEYWORD_ARG:
            flag = self.argument(name).text
            if not _KEYWORD_RE.fullmatch(flag):
                raise SearchQueryError(
                    f"{name} needs a keyword such as $Important (system flags like \\Seen "
                    "have their own keys: SEEN, FLAGGED …)"
                )
            return Key(name, (flag.encode("ascii"),))
        if name == "HEADER":
            field = self.argument(name).text
            if not _HEADER_NAME_RE.fullmatch(field):
                raise SearchQueryError(f"{field[:40]!r} is not a header field name")
            return Key(name, (search_string(field), search_string(self.argument(name).text)))
        if name == "UID":
            return Key(name, (uid_set(self.argument(name).text),))
        if _UID_SET_RE.fullmatch(token.text):
            raise SearchQueryError(
                f"{token.text!r} looks like message sequence numbers; this server speaks UIDs only: "
                f"write UID {token.text}"
            )
        if name == "CHARSET":
            raise SearchQueryError(
                "leave out CHARSET: non-ASCII text is sent as UTF-8 automatically"
            )
        raise SearchQueryError(
            f"unknown search key {token.text[:40]!r} at position {token.position}; known keys: "
            + ", ".join(
                sorted(
                    _NO_ARG
                    | _STRING_ARG
                    | _DATE_ARG
                    | _NUMBER_ARG
                    | _KEYWORD_ARG
                    | {"HEADER", "UID", "NOT", "OR"}
                )
            )
        )


def _and(nodes: Sequence[Node]) -> Node:
    flat: list[Node] = []
    for node in nodes:
        if isinstance(node, And):
            flat.extend(node.operands)
        else:
            flat.append(node)
    if len(flat) == 1:
        return flat[0]
    return And(tuple(flat))


def parse_query(query: str) -> Node | None:
    """Parse C{query}; None when it is empty (meaning: every message)."""
    tokens = tokenize(query)
    if not tokens:
        return None
    return _Parser(tokens).parse()


# -- structured filters ------------------------------------------------------


@attrs.frozen
class Filters:
    """The structured search parameters; each one set narrows the result."""

    from_: str | None = None
    to: str | None = None
    cc: str | None = None
    subject: str | None = None
    text: str | None = None
    body: str | None = None
    since: datetime.date | None = None
    before: datetime.date | None = None
    seen: bool | None = None
    unseen: bool | None = None
    flagged: bool | None = None
    answered: bool | None = None
    larger: int | None = None
    smaller: int | None = None

    def nodes(self) -> list[Node]:
        out: list[Node] = []
        for name, value in (
            ("FROM", self.from_),
            ("TO", self.to),
            ("CC", self.cc),
            ("SUBJECT", self.subject),
            ("TEXT", self.text),
            ("BODY", self.body),
        ):
            if value is not None:
                out.append(Key(name, (search_string(value),)))
        if self.since is not None:
            out.append(Key("SINCE", (imap_date(self.since),)))
        if self.before is not None:
            out.append(Key("BEFORE", (imap_date(self.before),)))
        for state, yes, no in (
            (self.seen, "SEEN", "UNSEEN"),
            (self.unseen, "UNSEEN", "SEEN"),
            (self.flagged, "FLAGGED", "UNFLAGGED"),
            (self.answered, "ANSWERED", "UNANSWERED"),
        ):
            if state is not None:
                out.append(Key(yes if state else no))
        if self.larger is not None:
            out.append(Key("LARGER", (str(self.larger).encode("ascii"),)))
        if self.smaller is not None:
            out.append(Key("SMALLER", (str(self.smaller).encode("ascii"),)))
        return out


# -- emitter -----------------------------------------------------------------


def _emit(node: Node, out: list[bytes | Literal], top: bool) -> None:
    if isinstance(node, Key):
        out.append(node.name.encode("ascii"))
        out.extend(node.args)
    elif isinstance(node, Not):
        out.append(b"NOT")
        _emit(node.operand, out, False)
    elif isinstance(node, Or):
        out.append(b"OR")
        _emit(node.left, out, False)
        _emit(node.right, out, False)
    else:
        if top:
            for operand in node.operands:
                _emit(operand, out, True)
            return
        inner: list[bytes | Literal] = []
        for operand in node.operands:
            _emit(operand, inner, False)
        # Glue the parentheses onto their neighbours ("(SEEN", "FLAGGED)")
        # as RFC 9051 writes them; next to a literal they stay separate tokens.
        if isinstance(inner[0], bytes):
            inner[0] = b"(" + inner[0]
        else:
            inner.insert(0, b"(")
        last = inner[-1]
        if isinstance(last, bytes):
            inner[-1] = last + b")"
        else:
            inner.append(b")")
        out.extend(inner)


def compile_node(node: Node | None) -> list[bytes | Literal]:
    """The wire tokens for C{node}; ``[b"ALL"]`` for no criteria."""
    if node is None:
        return [b"ALL"]
    out: list[bytes | Literal] = []
    _emit(node, out, True)
    return out


def compile_search(query: str | None, filters: Filters | None = None) -> list[bytes | Literal]:
    """
    Compile a raw query and structured filters (AND-ed together) into the
    criteria tokens `IMAPSession.uid_search` takes.  Raises
    `SearchQueryError` for anything that is not a well-formed search.
    """
    nodes: list[Node] = []
    if query is not None and query.strip():
        parsed = parse_query(query)
        if parsed is not None:
            nodes.append(parsed)
    if filters is not None:
        nodes.extend(filters.nodes())
    if not nodes:
        return [b"ALL"]
    return compile_node(_and(nodes))


def render(criteria: Sequence[bytes | Literal]) -> str:
    """A human-readable form of compiled criteria (literals shown quoted)."""
    parts: list[str] = []
    for token in criteria:
        if isinstance(token, Literal):
            parts.append('"' + token.data.decode("utf-8", "replace").replace('"', '\\"') + '"')
        else:
            parts.append(token.decode("ascii", "replace"))
    return " ".join(parts)
