"""
Reading hostile MIME safely: BODYSTRUCTURE analysis, part decoding, HTML to
readable text.

`get_mail_message` never downloads a whole message.  It asks the server for
the BODYSTRUCTURE, decides here which parts are the readable body and which
are attachments, and then fetches only a bounded prefix of the body part(s).
So the cost of a 60 MB attachment or a 50,000-part bomb is the size of its
BODYSTRUCTURE, which the analysis below walks with caps on part count and
nesting depth instead of recursion without limit (docs/threat-model.rst, P-16, MM-01,
MM-02).

Everything that comes out is text for a language model: transfer encodings
and charsets are decoded leniently (unknown or broken charsets fall back with
replacement characters, never an exception), invisible characters used to
hide instructions (Unicode tags, zero-width and bidi controls) are removed,
and HTML is reduced to its visible text: ``<head>``, ``<script>``,
``<style>``, elements hidden with ``display:none``/``visibility:hidden``/
``hidden``, and tracking pixels are dropped (`mailmcp.mail._html`).
"""

from __future__ import annotations

import binascii
import codecs
import datetime
import email.utils
import functools
import quopri
import re
from collections.abc import Iterator, Sequence
from email.header import decode_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from html.parser import HTMLParser
from typing import Any

import attrs

from ._filenames import sanitise_filename
from ._html import MarkdownReader, html_to_markdown

MAX_PARTS = 200
MAX_DEPTH = 20
MAX_HEADER_CHARS = 2000
MAX_REFERENCES = 50

# -- text hygiene ------------------------------------------------------------

# Unicode TAG characters, zero-width characters, bidi embeddings/overrides/
# isolates, the BOM and other format controls a sender can use to hide text
# from a human reader but not from a model.
_INVISIBLE = re.compile(
    "[\U000e0000-\U000e007f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\u00ad\u180e]"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Both at once (each removes single characters, so one pass is the same).
_UNSEEN = re.compile(_INVISIBLE.pattern[:-1] + _CONTROL.pattern[1:])
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x85]+")


def clean_text(text: str) -> str:
    """Body text for the model: invisible and control characters removed, newlines kept."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _UNSEEN.sub("", text)


def clean_line(text: str | None, limit: int = MAX_HEADER_CHARS) -> str | None:
    """
    A one-line header value (subject, display name, filename): line breaks
    become spaces, so a decoded ``\\r\\nBcc:`` can never pass for a header
    (MM-06), and it is capped.
    """
    if text is None:
        return None
    if len(text) <= limit and text.isprintable():
        # The common case, without the regex passes: nothing they remove is
        # printable (line breaks, controls and the invisible characters are
        # all in Unicode's Other or Separator categories; a test checks each
        # code point).
        return text.strip()
    text = _LINE_BREAKS.sub(" ", text)
    text = _CONTROL.sub("", _INVISIBLE.sub("", text)).strip()
    if len(text) > limit:
        text = text[:limit] + "…"
    return text


def fix_8bit(value: str) -> str:
    """
    The IMAP layer hands raw 8-bit strings over as latin-1; most such values
    are really UTF-8 (e.g. unencoded filenames), so try that first.
    """
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def decode_words(value: str, limit: int = MAX_HEADER_CHARS) -> str:
    """
    Decode RFC 2047 encoded-words in C{value}, capped first so a header of
    20,000 encoded-words costs nothing (MM-03); unknown charsets fall back.
    """
    value = fix_8bit(value[: limit * 2])
    if "=?" not in value:
        return value
    try:
        pieces = decode_header(value)
    except Exception:  # noqa: BLE001 - hostile input, any failure means "leave as is"
        return value
    out: list[str] = []
    for data, charset in pieces:
        if isinstance(data, str):
            out.append(data)
        else:
            out.append(decode_bytes(data, charset).text)
    return "".join(out)


# -- charsets and transfer encodings ----------------------------------------

_CHARSET_ALIASES = {
    "unicode-1-1-utf-7": "utf-7",
    "x-unknown": "utf-8",
    "unknown-8bit": "utf-8",
    "ks_c_5601-1987": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
}


def _codec(charset: str | None) -> str | None:
    if not charset:
        return None
    name = _CHARSET_ALIASES.get(charset.strip().lower(), charset.strip().lower())
    try:
        return codecs.lookup(name).name
    except (LookupError, ValueError):
        return None


def known_charset(charset: str) -> bool:
    """Whether Python has a codec for C{charset} (after common aliases)."""
    return _codec(charset) is not None


@attrs.frozen
class Decoded:
    """Text decoded from a declared charset, and the codec actually used."""

    text: str
    codec: str


@attrs.frozen
class Transferred:
    """Bytes with their Content-Transfer-Encoding undone, and whether the input had defects."""

    data: bytes
    defect: bool


def decode_bytes(data: bytes, charset: str | None, *, final: bool = True) -> Decoded:
    """
    Decode C{data} declared as C{charset}.  Returns the text and the codec
    actually used (`Decoded`).  An unknown charset (``x-evil``) falls back to UTF-8 when
    that decodes cleanly, else windows-1252; never raises (MM-04).  When not
    C{final} (a prefix cut by a partial fetch) a trailing incomplete
    multi-byte sequence is dropped instead of shown as garbage.
    """
    codec = _codec(charset)
    if codec is None:
        try:
            return Decoded(_decode(data, "utf-8", final, "strict"), "utf-8")
        except UnicodeDecodeError:
            codec = "cp1252"
    if codec in ("cp1252", "latin-1", "iso8859-1", "ascii"):
        # windows-1252 is what "latin-1" and "us-ascii" mail means in practice.
        return Decoded(data.decode("cp1252", errors="replace"), "cp1252")
    try:
        return Decoded(_decode(data, codec, final, "replace"), codec)
    except UnicodeError:
        # UTF-16/32 without a BOM raise even with errors="replace" (MM-04);
        # RFC 2781 says such text is big-endian.
        fallback = {"utf-16": "utf-16-be", "utf-32": "utf-32-be"}.get(codec, "cp1252")
        return Decoded(_decode(data, fallback, final, "replace"), fallback)


def _decode(data: bytes, codec: str, final: bool, errors: str) -> str:
    decoder = codecs.getincrementaldecoder(codec)(errors=errors)
    return decoder.decode(data, final=final)


_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")


def decode_transfer(data: bytes, encoding: str | None, *, complete: bool = True) -> Transferred:
    """
    Undo a Content-Transfer-Encoding.  C{complete} is False for a prefix cut
    by a partial fetch: a trailing incomplete base64 quantum or ``=X``
    escape is dropped.  Returns the bytes and whether the input had defects
    (garbage, bad padding); garbage is skipped, never fatal (MM-05).
    """
    name = (encoding or "7bit").strip().lower()
    if name == "base64":
        head = data.split(b"=", 1)
        clean = _B64_JUNK.sub(b"", head[0])
        # Padding is implied by the length; a lone trailing character
        # cannot encode a byte and is a defect.
        rest = len(clean) % 4
        garbage = len(head[0]) - len(clean) > sum(
            head[0].count(c) for c in (b"\r", b"\n", b" ", b"\t")
        )
        defect = garbage or (complete and rest == 1)
        if complete and rest in (2, 3):
            clean += b"=" * (4 - rest)
        else:
            clean = clean[: len(clean) - rest]
        try:
            return Transferred(binascii.a2b_base64(clean), defect)
        except binascii.Error:
            return Transferred(b"", True)
    if name == "quoted-printable":
        if not complete:
            cut = data.rfind(b"=", max(0, len(data) - 2))
            if cut != -1:
                data = data[:cut]
        return Transferred(quopri.decodestring(data), False)
    return Transferred(data, False)


# -- HTML --------------------------------------------------------------------

_VOID = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    }
)
_DROP_WITH_CONTENT = frozenset(
    {
        "head",
        "script",
        "style",
        "title",
        "template",
        "noscript",
        "object",
        "iframe",
        "svg",
        "math",
        "select",
        "textarea",
        "button",
    }
)
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?:[a-z%]*)?\s*(?:;|$|!)"
    r"|opacity\s*:\s*0(?:\.0*)?\s*(?:;|$|!)|max-height\s*:\s*0(?:px)?\s*(?:;|$|!)",
    re.IGNORECASE,
)


def _hidden(tag: str, attrs_: list[tuple[str, str | None]]) -> bool:
    values = {name.lower(): (value or "") for name, value in attrs_}
    if tag in _DROP_WITH_CONTENT:
        return True
    if "hidden" in values or values.get("aria-hidden", "").lower() == "true":
        return True
    if _HIDDEN_STYLE.search(values.get("style", "")):
        return True
    return False


def _tracking_pixel(attrs_: list[tuple[str, str | None]]) -> bool:
    values = {name.lower(): (value or "") for name, value in attrs_}
    for dimension in ("width", "height"):
        if values.get(dimension, "").strip().rstrip("px") in ("0", "1"):
            return True
    return bool(re.search(r"(?:width|height)\s*:\s*[01](?:px)?\b", values.get("style", ""), re.I))


class _VisibleHTML(HTMLParser):
    """
    Re-serialises HTML without the parts a reader would not see.  A hidden
    element's whole subtree is skipped; unbalanced markup is tolerated (an
    end tag closes the nearest matching open element).
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.out: list[str] = []
        self.stack: list[str] = []
        self.hidden_at: int | None = None  # stack depth where hiding started

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs_, self.get_starttag_text() or "", closed=False)

    def handle_startendtag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs_, self.get_starttag_text() or "", closed=True)

    def _start(
        self, tag: str, attrs_: list[tuple[str, str | None]], text: str, closed: bool
    ) -> None:
        void = closed or tag in _VOID
        if self.hidden_at is not None:
            if not void:
                self.stack.append(tag)
            return
        if tag == "img" and _tracking_pixel(attrs_):
            return
        if _hidden(tag, attrs_):
            if not void:
                self.hidden_at = len(self.stack)
                self.stack.append(tag)
            return
        if not void:
            if len(self.stack) >= 500:
                return
            self.stack.append(tag)
        self.out.append(text)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.stack:
            return
        while self.stack:
            depth = len(self.stack) - 1
            top = self.stack.pop()
            if self.hidden_at is not None and depth == self.hidden_at:
                self.hidden_at = None
                if top == tag:
                    return
                continue
            if self.hidden_at is None:
                self.out.append(f"</{top}>")
            if top == tag:
                return

    def _text(self, data: str) -> None:
        if self.hidden_at is None:
            self.out.append(data)

    def handle_data(self, data: str) -> None:
        self._text(data)

    def handle_entityref(self, name: str) -> None:
        self._text(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self._text(f"&#{name};")


def visible_html(html: str) -> str:
    """C{html} without hidden elements, scripts, styles, head and tracking pixels."""
    parser = _VisibleHTML()
    parser.feed(html)
    parser.close()
    return "".join(parser.out)


def html_to_text(html: str) -> str:
    """
    Readable text of an HTML body: hidden content dropped, links kept as
    Markdown, emphasis, headings and lists marked, images left out, no
    wrapping (`mailmcp.mail._html`).  One linear pass, ~0.1 µs per byte of
    ordinary mail and up to ~2 µs per byte of hostile markup, so callers
    still cap the input and run big documents off the reactor.
    """
    return clean_text(html_to_markdown(html)).strip()


#: How far past the characters wanted `html_text_prefix` reads at first,
#: and how many times it reads on before it reads to the end.
_PREFIX_SLACK = 512
_PREFIX_TRIES = 3


def html_text_prefix(html: str, chars: int) -> str:
    """
    ``html_to_text(html)``, or a prefix of it longer than C{chars}: a tool
    that shows 20,000 characters of a 40,000-character newsletter renders
    about half of it (`mailmcp.mail._html.MarkdownReader`).  Whoever needs
    to know whether there is more than C{chars} can tell from the length,
    which is all the same for the prefix and the whole.
    """
    reader = MarkdownReader(html)
    want = chars + _PREFIX_SLACK
    for _ in range(_PREFIX_TRIES):
        reader.more(want)
        if reader.done:
            break
        text = clean_text(reader.settled()).strip()
        if len(text) > chars:
            return text
        # Blank runs, hidden characters or one long open line ate the slack.
        want = chars - len(text) + 4 * _PREFIX_SLACK
    while not reader.done:
        reader.more(len(html))
    return clean_text(reader.settled()).strip()


# -- BODYSTRUCTURE -----------------------------------------------------------


@attrs.frozen
class Part:
    """One leaf (non-multipart) MIME part, as BODYSTRUCTURE describes it."""

    part_id: str  # IMAP section number, e.g. "1.2"
    content_type: str  # lower-case "type/subtype"
    params: dict[str, str]
    content_id: str | None
    description: str | None
    encoding: str | None
    size: int  # encoded size in bytes
    disposition: str | None  # lower-case "inline" / "attachment" / None
    filename: str | None  # decoded and sanitised
    in_related: bool = False

    @property
    def charset(self) -> str | None:
        return self.params.get("charset")

    @property
    def is_text_body_candidate(self) -> bool:
        return self.content_type in ("text/plain", "text/html") and self.disposition != "attachment"

    @property
    def inline(self) -> bool:
        """Shown inside the message (a cid: image of an HTML body, an inline part)."""
        return self.disposition == "inline" or (
            self.disposition is None and self.content_id is not None and self.in_related
        )


@attrs.frozen
class Structure:
    """What `analyse` found: the body parts to show, the attachments, warnings."""

    body_parts: tuple[Part, ...]
    attachments: tuple[Part, ...]
    part_count: int
    warnings: tuple[str, ...]

    @property
    def has_attachments(self) -> bool:
        return any(not p.inline for p in self.attachments)


def _str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    if (
        isinstance(value, (str, bytes))
        and str(value if isinstance(value, str) else value.decode()).isdigit()
    ):
        return int(value)
    return 0


def _params(value: Any) -> dict[str, str]:
    """A BODYSTRUCTURE parameter list ("k", "v", …) as a dict, RFC 2231 joined."""
    raw: dict[str, str] = {}
    if isinstance(value, (list, tuple)):
        items = list(value)[:200]
        for i in range(0, len(items) - 1, 2):
            key, val = _str(items[i]), _str(items[i + 1])
            if key is not None and val is not None and len(raw) < 100:
                raw[key.lower()] = val[: MAX_HEADER_CHARS * 2]
    return _join_rfc2231(raw)


_RFC2231_SEGMENT = re.compile(r"(?P<name>[^*]+)\*(?:(?P<index>[0-9]{1,3})\*?|)")


def _join_rfc2231(raw: dict[str, str]) -> dict[str, str]:
    """
    Join RFC 2231 continuations (``filename*0*=utf-8''…``, ``filename*1*=…``)
    and decode their charset; a value given both ways keeps the RFC 2231 one,
    which is the more precise.
    """
    plain: dict[str, str] = {}
    segments: dict[str, dict[int, tuple[str, bool]]] = {}
    for key, value in raw.items():
        m = _RFC2231_SEGMENT.fullmatch(key)
        if m is None:
            plain[key] = value
            continue
        index = int(m.group("index") or 0)
        segments.setdefault(m.group("name"), {})[index] = (value, key.endswith("*"))
    for name, parts in segments.items():
        ordered = [parts[i] for i in sorted(parts)]
        charset = None
        pieces: list[bytes] = []
        for position, (value, encoded) in enumerate(ordered):
            if encoded:
                if position == 0 and value.count("'") >= 2:
                    charset, _language, value = value.split("'", 2)
                pieces.append(_percent_decode(value))
            else:
                pieces.append(value.encode("latin-1", "replace"))
        plain[name] = decode_bytes(b"".join(pieces), charset or "utf-8").text
    return plain


def _percent_decode(value: str) -> bytes:
    out = bytearray()
    data = value.encode("latin-1", "replace")
    i = 0
    while i < len(data):
        if data[i : i + 1] == b"%" and re.match(rb"[0-9A-Fa-f]{2}", data[i + 1 : i + 3]):
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


def decode_filename(name: str | None) -> str | None:
    """
    An attachment's filename as sent (RFC 2047 encoded-words, raw 8-bit,
    folded), decoded and unfolded, then cleaned by the one sanitiser the
    attachment stores use too; C{None} when nothing safe is left.
    """
    if not name:
        return None
    return sanitise_filename(clean_line(decode_words(name), 10_000), default="") or None


def _disposition(value: Any) -> tuple[str | None, dict[str, str]]:
    if isinstance(value, (list, tuple)) and value:
        kind = _str(value[0])
        params = _params(value[1]) if len(value) > 1 else {}
        return (kind.lower() if kind else None), params
    return None, {}


def _disposition_kind(value: Any) -> str | None:
    """`_disposition`'s kind alone (``"attachment"``), without reading its parameters."""
    if isinstance(value, (list, tuple)) and value:
        kind = _str(value[0])
        return kind.lower() if kind else None
    return None


def _leaf(node: Sequence[Any], part_id: str, in_related: bool) -> Part:
    main = (_str(node[0]) or "application").lower()
    sub = (_str(node[1]) or "octet-stream").lower() if len(node) > 1 else "octet-stream"
    params = _params(node[2]) if len(node) > 2 else {}
    if main == "text":
        ext = 8
    elif main == "message" and sub in ("rfc822", "global"):
        ext = 10
    else:
        ext = 7
    disposition, disposition_params = (
        _disposition(node[ext + 1]) if len(node) > ext + 1 else (None, {})
    )
    filename = disposition_params.get("filename") or params.get("name")
    content_id = _str(node[3]) if len(node) > 3 else None
    if content_id:
        content_id = clean_line(content_id.strip().strip("<>"), 200)
    description = _str(node[4]) if len(node) > 4 else None
    return Part(
        part_id=part_id,
        content_type=f"{main}/{sub}"[:100],
        params=params,
        content_id=content_id or None,
        description=clean_line(decode_words(description), 200) if description else None,
        encoding=(_str(node[5]) or "7bit").lower() if len(node) > 5 else "7bit",
        size=_int(node[6]) if len(node) > 6 else 0,
        disposition=disposition,
        filename=decode_filename(filename),
        in_related=in_related,
    )


def _is_multipart(node: Any) -> bool:
    return isinstance(node, (list, tuple)) and bool(node) and isinstance(node[0], (list, tuple))


def iter_leaves(bodystructure: Any, warnings: list[str]) -> Iterator[tuple[Part, tuple[str, ...]]]:
    """
    Every leaf part with the chain of enclosing multipart subtypes, walked
    iteratively with the part-count and depth caps.  An encapsulated
    message (``message/rfc822``) is one leaf: it is an attachment, and its
    inner parts are not the outer message's body.
    """
    count = 0
    stack: list[tuple[Any, str, tuple[str, ...]]] = [(bodystructure, "", ())]
    while stack:
        node, part_id, chain = stack.pop()
        if not isinstance(node, (list, tuple)) or not node:
            warnings.append(f"part {part_id or '1'} has a malformed structure and was skipped")
            continue
        if _is_multipart(node):
            if len(chain) >= MAX_DEPTH:
                warnings.append(f"MIME nesting deeper than {MAX_DEPTH} levels was not read")
                continue
            # Children come first; the subtype string ends them (the
            # extension data after it may hold lists too).
            children: list[Any] = []
            subtype = "mixed"
            for item in node:
                if not isinstance(item, (list, tuple)):
                    subtype = (_str(item) or "mixed").lower()
                    break
                if len(children) <= MAX_PARTS:
                    children.append(item)
            inner = chain + (subtype,)
            for index in range(len(children), 0, -1):
                child_id = f"{part_id}.{index}" if part_id else str(index)
                stack.append((children[index - 1], child_id, inner))
            continue
        count += 1
        if count > MAX_PARTS:
            warnings.append(f"the message has more than {MAX_PARTS} parts; the rest were not read")
            return
        yield _leaf(node, part_id or "1", "related" in chain), chain


def analyse(bodystructure: Any) -> Structure:
    """
    Decide which parts are the body and which are attachments.

    Inside ``multipart/alternative`` the text/plain version wins and the
    text/html version is used only when there is no plain one; elsewhere
    every inline text part is body, in order (a mail with a text part, an
    image, and a second text part reads as both text parts).  Everything
    else is an attachment; images referenced by ``cid:`` inside
    ``multipart/related`` are marked inline.
    """
    warnings: list[str] = []
    leaves = list(iter_leaves(bodystructure, warnings))
    attachments: list[Part] = []
    # Body candidates in order; those inside a multipart/alternative are
    # grouped under that container's part id so only one version is shown.
    alternatives: dict[str, list[Part]] = {}
    order: list[Part | str] = []
    for part, chain in leaves:
        named_file = (
            part.filename is not None
            and part.disposition is None
            and bool(chain)
            and chain[-1] != "alternative"
        )
        if not part.is_text_body_candidate or named_file:
            attachments.append(part)
            continue
        container = _alternative_container(part.part_id, chain)
        if container is None:
            order.append(part)
        else:
            if container not in alternatives:
                alternatives[container] = []
                order.append(container)
            alternatives[container].append(part)
    body: list[Part] = []
    for item in order:
        if isinstance(item, Part):
            body.append(item)
            continue
        choices = alternatives[item]
        plain = [p for p in choices if p.content_type == "text/plain"]
        body.extend(plain[:1] or [p for p in choices if p.content_type == "text/html"][:1])
    return Structure(tuple(body), tuple(attachments), len(leaves), tuple(warnings))


def _alternative_container(part_id: str, chain: tuple[str, ...]) -> str | None:
    """The part id of the innermost multipart/alternative enclosing this part."""
    if "alternative" not in chain:
        return None
    depth = len(chain) - 1 - chain[::-1].index("alternative")
    pieces = part_id.split(".")
    return ".".join(pieces[:depth]) or "0"


# -- fetch budgets -----------------------------------------------------------

#: Never fetch more of one body part than this, whatever the offset asked.
MAX_PLAIN_FETCH = 2 * 1024 * 1024
MAX_HTML_FETCH = 2 * 1024 * 1024


def fetch_budget(part: Part, chars_needed: int) -> int:
    """
    How many encoded bytes of C{part} to fetch to show its first
    C{chars_needed} characters: UTF-8 text needs up to 4 bytes per character
    in the worst case but rarely more than 1.2, base64 adds a third,
    quoted-printable up to 3x, and HTML markup is typically 3-10x its text.
    The estimate is generous and then capped, so a 20 MB body costs at most
    the cap (MM-14).
    """
    factor = 1.5
    if part.encoding == "base64":
        factor *= 4 / 3
    elif part.encoding == "quoted-printable":
        factor *= 2
    cap = MAX_PLAIN_FETCH
    if part.content_type == "text/html":
        factor *= 8
        cap = MAX_HTML_FETCH
    wanted = int(chars_needed * factor) + 4096
    return max(1, min(wanted, cap, part.size or cap))


# -- headers -----------------------------------------------------------------

_MONTH_NUMBERS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}


def _valid(year: int, month: int, day: int, hour: int, minute: int, second: int) -> bool:
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return hour < 24 and minute < 60 and second < 61


_MSG_ID = re.compile(r"<[^<>\s]{1,250}>")


def threading_headers(raw: bytes) -> dict[str, Any]:
    """
    Message-ID, In-Reply-To and References from a ``HEADER.FIELDS`` fetch,
    as ``<id>`` strings (References capped at the last 50 ids).  The
    header parser's answer for a small section is remembered by its bytes
    (a message read again has the same ones).
    """
    message_id, in_reply_to, references = (
        _threading_ids(raw) if len(raw) <= 4096 else _threading_ids.__wrapped__(raw)
    )
    return {"message_id": message_id, "in_reply_to": in_reply_to, "references": list(references)}


@functools.lru_cache(maxsize=1024)
def _threading_ids(raw: bytes) -> tuple[str | None, str | None, tuple[str, ...]]:
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:65536])
    except Exception:  # noqa: BLE001 - hostile input
        return None, None, ()

    def ids(name: str) -> list[str]:
        values = headers.get_all(name) or []
        found: list[str] = []
        for value in values:
            found.extend(_MSG_ID.findall(str(value)))
        return [fix_8bit(i) for i in found]

    message_id = ids("message-id")
    in_reply_to = ids("in-reply-to")
    references = ids("references")[-MAX_REFERENCES:]
    return (
        message_id[0] if message_id else None,
        in_reply_to[0] if in_reply_to else None,
        tuple(references),
    )


def parse_date(raw: str | None) -> str | None:
    """An RFC 5322 Date as ISO 8601, or None when absent or unparseable (MM-15)."""
    if not raw:
        return None
    m = _RFC5322_DATE.fullmatch(raw)
    if m is not None:
        day, month, year, hh, mm, ss, sign, zh, zm = m.groups()
        number = _MONTH_NUMBERS.get(month.lower())
        if number is not None and _valid(int(year), number, int(day), int(hh), int(mm), int(ss)):
            return f"{year}-{number:02d}-{int(day):02d}T{hh}:{mm}:{ss}{sign}{zh}:{zm}"
    try:
        parsed = email.utils.parsedate_to_datetime(raw[:200])
        return parsed.isoformat()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


# The usual shape of a Date header, parsed without the email package (a
# listing parses twenty of them per call); anything else takes the slow path.
_RFC5322_DATE = re.compile(
    r"(?:[A-Za-z]{3}, )?([0-9]{1,2}) ([A-Za-z]{3}) ([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) "
    r"([+-])([0-9]{2})([0-9]{2})(?: \([^()]*\))?"
)
_INTERNAL_DATE = re.compile(
    r" ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"
)


def parse_internal_date(raw: str | None) -> str | None:
    """
    IMAP INTERNALDATE (``17-Jul-1996 02:44:25 -0700``) as ISO 8601.  Done by
    hand: strptime costs 30 µs, too much for every line of every listing.
    """
    if not raw:
        return None
    m = _INTERNAL_DATE.fullmatch(raw.strip())
    if m is None:
        return None
    day, month, year, hh, mm, ss, sign, zh, zm = m.groups()
    number = _MONTH_NUMBERS.get(month.lower())
    if number is None or not _valid(int(year), number, int(day), int(hh), int(mm), int(ss)):
        return None
    return f"{year}-{number:02d}-{int(day):02d}T{hh}:{mm}:{ss}{sign}{zh}:{zm}"


def has_attachments(bodystructure: Any) -> bool:
    """
    Whether a message has attachments, from its BODYSTRUCTURE, without
    building `Part` objects: the listing asks this for every message, so it
    must be cheap.  Same rules as `analyse`: a part is an attachment when its
    disposition says so, or when it is not text/plain or text/html and not
    an inline part (a ``cid:`` image of an HTML body).
    """
    stack: list[tuple[Any, int, bool]] = [(bodystructure, 0, False)]
    leaves = 0
    while stack:
        node, depth, in_related = stack.pop()
        if not isinstance(node, (list, tuple)) or not node:
            continue
        if isinstance(node[0], (list, tuple)):
            if depth >= MAX_DEPTH:
                continue
            subtype = next((x for x in node if not isinstance(x, (list, tuple))), None)
            related = in_related or (_str(subtype) or "").lower() == "related"
            for child in node:
                if not isinstance(child, (list, tuple)):
                    break
                stack.append((child, depth + 1, related))
            continue
        leaves += 1
        if leaves > MAX_PARTS:
            return True
        main = (_str(node[0]) or "").lower()
        sub = (_str(node[1]) or "").lower() if len(node) > 1 else ""
        ext = (
            8 if main == "text" else 10 if main == "message" and sub in ("rfc822", "global") else 7
        )
        disposition = _disposition_kind(node[ext + 1]) if len(node) > ext + 1 else None
        if disposition == "attachment":
            return True
        if main == "text" and sub in ("plain", "html"):
            continue
        if disposition == "inline" or (
            disposition is None and in_related and len(node) > 3 and node[3]
        ):
            continue
        return True
    return False
