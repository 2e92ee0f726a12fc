"""
Building outgoing messages safely.

Every message the server writes (sent mail, drafts) is built here with the
stdlib `EmailMessage` under ``email.policy.SMTP`` (CRLF line endings, RFC 2047
encoded non-ASCII headers).  The model supplies the field values; nothing it
sends reaches a header unchecked:

- every header value is refused when it contains a control character
  (CR, LF, NUL, and the other characters Python treats as line breaks),
  because ``getaddresses`` turns ``"a@x\\r\\nRCPT TO:<evil>"`` into three
  addresses and older email packages fold raw newlines into new headers;
- each recipient is parsed with the modern header parser, then checked
  against a strict ``dot-atom@hostname`` grammar, with internationalised
  domains IDNA-encoded (no SMTPUTF8 dependency);
- ``From`` is always the logged-in account, never a parameter;
- ``Bcc`` addresses go to the SMTP envelope only: the bytes sent over the wire
  never carry a ``Bcc`` header.  The copy kept in the user's own Sent folder
  (and a draft) does, as every mail client does, so the user can still see
  who was blind-copied;
- text parts are quoted-printable, so no line exceeds 76 octets, no bare CR
  or LF survives, and only ASCII goes on the wire.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

import attrs

MAX_RECIPIENTS = 50
MAX_SUBJECT_CHARS = 998
MAX_BODY_CHARS = 10 * 1024 * 1024
MAX_REFERENCES = 100
MAX_ADDRESS_CHARS = 320
MAX_DISPLAY_NAME_CHARS = 200

# Characters that split a header value into lines somewhere in Python or in a
# mail server: all C0 controls and DEL, the C1 controls, and the characters
# str.splitlines() breaks on (\x1c-\x1e, \x85, \u2028, \u2029).
_HEADER_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Bodies keep their line breaks and tabs; other controls have no place there.
_BODY_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL_PART = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,250}@[!-;=?-~]{1,250}>")


class ComposeError(ValueError):
    """A field cannot go into a message; the message says which and why."""


def check_header_text(field: str, value: str, *, limit: int = MAX_SUBJECT_CHARS) -> str:
    """
    Refuse header text that could break out of its header: control
    characters (CR/LF/NUL and friends), lone surrogates, or over-length.
    """
    if _HEADER_FORBIDDEN.search(value):
        raise ComposeError(f"{field} must not contain control characters (CR, LF, NUL, ...)")
    _check_encodable(field, value)
    if len(value) > limit:
        raise ComposeError(f"{field} is too long (at most {limit} characters)")
    return value


def check_body(field: str, value: str) -> str:
    """Refuse bodies with NUL or other stray control characters, or too big."""
    if len(value) > MAX_BODY_CHARS:
        raise ComposeError(f"{field} is too large (at most {MAX_BODY_CHARS} characters)")
    if _BODY_FORBIDDEN.search(value):
        raise ComposeError(f"{field} must not contain NUL or other control characters")
    _check_encodable(field, value)
    return value


def _check_encodable(field: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ComposeError(f"{field} is not valid Unicode (lone surrogate)") from None


def normalize_addr_spec(field: str, local: str, domain: str) -> str:
    """
    ``local@domain`` with the domain IDNA-encoded, or `ComposeError` naming
    the bad address.
    """
    shown = f"{local}@{domain}"
    if not _LOCAL_PART.fullmatch(local):
        raise ComposeError(f"{field}: {shown!r} is not a valid email address")
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        raise ComposeError(f"{field}: {shown!r} has an invalid domain") from None
    if not _HOSTNAME.fullmatch(ascii_domain) or len(ascii_domain) > 253:
        raise ComposeError(f"{field}: {shown!r} is not a valid email address")
    addr = f"{local}@{ascii_domain}"
    if len(addr) > MAX_ADDRESS_CHARS:
        raise ComposeError(f"{field}: {shown!r} is too long")
    return addr


def parse_addresses(field: str, values: str | Sequence[str] | None) -> tuple[Address, ...]:
    """
    Parse C{values} (one string with comma-separated addresses, or a list of
    them) into `Address` objects with ASCII addr-specs.  Each raw string is
    checked for control characters *before* parsing (P-18).
    """
    if values is None:
        return ()
    items = [values] if isinstance(values, str) else list(values)
    result: list[Address] = []
    for item in items:
        if not isinstance(item, str):
            raise ComposeError(f"{field}: every address must be a string")
        check_header_text(field, item, limit=MAX_ADDRESS_CHARS * MAX_RECIPIENTS)
        if not item.strip():
            raise ComposeError(f"{field}: empty address")
        try:
            header = policy.SMTP.header_factory(field, item)
        except Exception:  # the stdlib parser raises IndexError on "a@", among others
            raise ComposeError(f"{field}: {item!r} is not a valid email address") from None
        groups = getattr(header, "groups", ())
        if any(group.display_name is not None for group in groups):
            raise ComposeError(f"{field}: group syntax ({item!r}) is not accepted; list addresses")
        parsed = list(getattr(header, "addresses", ()))
        if not parsed or header.defects:
            raise ComposeError(f"{field}: {item!r} is not a valid email address")
        for address in parsed:
            if not address.username or not address.domain:
                raise ComposeError(f"{field}: {item!r} is not a valid email address")
            addr = normalize_addr_spec(field, address.username, address.domain)
            name = address.display_name or ""
            if len(name) > MAX_DISPLAY_NAME_CHARS:
                raise ComposeError(f"{field}: display name too long in {item!r}")
            local, _, domain = addr.rpartition("@")
            result.append(Address(display_name=name, username=local, domain=domain))
    return tuple(result)


def parse_message_ids(field: str, values: str | Sequence[str] | None) -> tuple[str, ...]:
    """Message-IDs (``<left@right>``) for In-Reply-To and References."""
    if values is None:
        return ()
    items: list[str] = []
    for value in [values] if isinstance(values, str) else list(values):
        check_header_text(field, value, limit=MAX_REFERENCES * 502)
        items.extend(value.split())
    if len(items) > MAX_REFERENCES:
        raise ComposeError(f"{field}: at most {MAX_REFERENCES} message ids")
    for item in items:
        if not _MESSAGE_ID.fullmatch(item):
            raise ComposeError(f"{field}: {item!r} is not a Message-ID like <id@host>")
    return tuple(items)


def message_id_domain(email: str) -> str:
    """The domain of C{email}, IDNA-encoded, for Message-IDs."""
    domain = email.rpartition("@")[2] or "localhost"
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "localhost"


def make_message_id(
    email: str, idempotency_key: str | None = None, *, random: Callable[[int], bytes] = os.urandom
) -> str:
    """
    A new Message-ID for a message from C{email}.

    With an C{idempotency_key} the id is deterministic: a hash of the
    account's address and the key.  Retrying a send with the same key then
    yields the same Message-ID, which the send tool looks for in Sent before
    sending again.  The account's address (not the login) is hashed so the
    key still works after the user logs in again.
    """
    domain = message_id_domain(email)
    if idempotency_key is None:
        token = random(16).hex()
    else:
        material = "\0".join(["mailmcp-idempotency-v1", email.lower(), idempotency_key])
        token = "k." + hashlib.sha256(material.encode("utf-8")).hexdigest()[:40]
    return f"<mailmcp.{token}@{domain}>"


@attrs.frozen
class OutgoingAttachment:
    """One file to attach: its bytes, a display filename and a MIME type."""

    data: bytes
    filename: str
    content_type: str


_MIME_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")


def _mime_type(content_type: str) -> tuple[str, str]:
    maintype, _, subtype = content_type.partition(";")[0].strip().lower().partition("/")
    if (
        _MIME_TOKEN.fullmatch(maintype)
        and _MIME_TOKEN.fullmatch(subtype)
        and maintype != "multipart"
    ):
        return maintype, subtype
    return "application", "octet-stream"


@attrs.frozen
class ComposedMessage:
    """
    One outgoing message.

    :ivar wire_bytes: what is sent over SMTP: CRLF line endings, no ``Bcc``.
    :ivar copy_bytes: what is filed in Sent or Drafts: C{wire_bytes} plus the
        ``Bcc`` header when there are blind-copy recipients (identical
        otherwise).
    :ivar envelope_from: the SMTP ``MAIL FROM`` address.
    :ivar recipients: every ``RCPT TO`` address (To, Cc and Bcc, without
        duplicates, in that order).
    """

    message_id: str
    envelope_from: str
    recipients: tuple[str, ...]
    bcc: tuple[str, ...]
    wire_bytes: bytes
    copy_bytes: bytes


def _clean_display_name(name: str) -> str:
    """The account's full name, minus anything that could break a header."""
    name = _HEADER_FORBIDDEN.sub(" ", name).strip()
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return ""
    return name[:MAX_DISPLAY_NAME_CHARS]


def _dedupe(addresses: Iterable[Address]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for address in addresses:
        seen.setdefault(address.addr_spec.lower(), address.addr_spec)
    return tuple(seen.values())


def compose(
    *,
    from_email: str,
    from_name: str,
    to: Sequence[Address],
    cc: Sequence[Address] = (),
    bcc: Sequence[Address] = (),
    subject: str,
    text_body: str,
    html_body: str | None = None,
    message_id: str,
    date: float,
    in_reply_to: Sequence[str] = (),
    references: Sequence[str] = (),
    attachments: Sequence[OutgoingAttachment] = (),
    require_recipients: bool = True,
) -> ComposedMessage:
    """
    Build a message.  C{to}/C{cc}/C{bcc} come from `parse_addresses`;
    C{date} is a POSIX timestamp (the reactor's clock).  Raises
    `ComposeError` for anything that cannot be represented safely.
    """
    check_header_text("subject", subject)
    check_body("text_body", text_body)
    if html_body is not None:
        check_body("html_body", html_body)
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ComposeError("bad Message-ID")
    recipients = _dedupe([*to, *cc, *bcc])
    if require_recipients and not recipients:
        raise ComposeError("at least one recipient (to, cc or bcc) is required")
    if len(recipients) > MAX_RECIPIENTS:
        raise ComposeError(f"too many recipients (at most {MAX_RECIPIENTS})")
    local, _, domain = from_email.rpartition("@")
    sender = normalize_addr_spec("account email", local, domain)
    s_local, _, s_domain = sender.rpartition("@")

    message = EmailMessage(policy=policy.SMTP)
    try:
        message["From"] = Address(
            display_name=_clean_display_name(from_name), username=s_local, domain=s_domain
        )
        if to:
            message["To"] = list(to)
        if cc:
            message["Cc"] = list(cc)
        if bcc:
            message["Bcc"] = list(bcc)
        message["Subject"] = subject
        message["Date"] = format_datetime(datetime.fromtimestamp(date, UTC))
        message["Message-ID"] = message_id
        if in_reply_to:
            message["In-Reply-To"] = " ".join(in_reply_to)
        if references:
            message["References"] = " ".join(references)
        if html_body is not None and not text_body.strip():
            # HTML only: an empty text/plain alternative would be what
            # plain-text readers (and most summaries) show: a blank message.
            message.set_content(html_body, subtype="html", cte="quoted-printable")
        else:
            message.set_content(text_body, cte="quoted-printable")
            if html_body is not None:
                message.add_alternative(html_body, subtype="html", cte="quoted-printable")
        for attachment in attachments:
            maintype, subtype = _mime_type(attachment.content_type)
            filename = _HEADER_FORBIDDEN.sub("_", attachment.filename)[:200] or "attachment"
            message.add_attachment(
                attachment.data,
                maintype=maintype,
                subtype=subtype,
                filename=filename,
                cte=_attachment_cte(maintype, subtype, attachment.data),
            )
        _drop_part_mime_version(message)
        # The first rendering picks each multipart boundary (one that occurs
        # in no part) and stores it on the message, so the rendering without
        # Bcc below is byte-identical apart from that header.
        copy_bytes = message.as_bytes()
        del message["Bcc"]
        wire_bytes = message.as_bytes()
    except (ValueError, TypeError, UnicodeError) as e:
        # EmailMessage refuses CR/LF itself (P-17); whatever slipped past the
        # checks above still ends here, never on the wire.
        raise ComposeError(f"cannot build the message: {type(e).__name__}") from None
    return ComposedMessage(
        message_id=message_id,
        envelope_from=sender,
        recipients=recipients,
        bcc=tuple(a.addr_spec for a in bcc),
        wire_bytes=wire_bytes,
        copy_bytes=copy_bytes,
    )


_LONG_LINE = re.compile(rb"[^\r\n]{999}")


def _attachment_cte(maintype: str, subtype: str, data: bytes) -> str:
    """
    base64 for every attachment, except an attached message (a forward as
    attachment) that is 7-bit clean with CRLF lines of at most 998 octets:
    that one goes as ``7bit``, byte for byte, as RFC 2046 §5.2.1 wants for
    ``message/rfc822`` (the recipient's client then shows it as a message).
    """
    if (
        (maintype, subtype) == ("message", "rfc822")
        and data.isascii()
        and is_canonical_crlf(data)
        and b"\0" not in data
        and not _LONG_LINE.search(data)
    ):
        return "7bit"
    return "base64"


def _drop_part_mime_version(message: EmailMessage) -> None:
    """EmailMessage repeats MIME-Version in sub-parts; only the top needs it."""
    for part in message.walk():
        if part is not message:
            del part["MIME-Version"]


def is_canonical_crlf(data: bytes) -> bool:
    """True when every CR and LF in C{data} is part of a CRLF pair."""
    stripped = data.replace(b"\r\n", b"")
    return b"\r" not in stripped and b"\n" not in stripped


# -- replies and forwards ------------------------------------------------------
#
# Pure functions that turn what the original message says into the fields of
# a reply or a forward; the tools in ``mailmcp.tools._conversation`` fetch
# the original and call these.

#: At most this many ids in a reply's References (RFC 5322 §3.6.4 allows
#: trimming; the first id, the thread's root, is always kept).
MAX_REPLY_REFERENCES = 20
#: And at most this many characters of them, however short each id is.
MAX_REPLY_REFERENCES_CHARS = 2000

# The reply prefixes mail clients write, in the languages they are
# localised to: Re, Re[2], Re(2), Re^2 (any language), AW (German), SV
# (Scandinavian), Antw (Dutch), R and RIF (Italian), Res (Portuguese), Odp
# (Polish), VS (Finnish), Vá (Hungarian), YNT (Turkish), Отв, ΑΠ/ΣΧΕΤ, and
# the CJK ones.  A colon may be full-width.
_REPLY_WORDS = (
    r"re|aw|sv|antw|antwort|r|rif|res|odp|vs|v[áa]|ynt|atb|отв|απ|σχετ|回复|回覆|答复|返信"
)
_FORWARD_WORDS = r"fwd?|wg|tr|rv|enc|vb|vl|pd|doorst|i|fs|转发|轉寄|転送|πρθ"
_COUNTER = r"(?:\s*\[\d{1,4}\]|\s*\(\d{1,4}\)|\^\d{1,4})?"
_REPLY_PREFIX = re.compile(rf"^\s*(?:{_REPLY_WORDS}){_COUNTER}\s*[:：]\s*", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(rf"^\s*(?:{_FORWARD_WORDS}){_COUNTER}\s*[:：]\s*", re.IGNORECASE)


def _strip_prefixes(subject: str, prefix: re.Pattern[str]) -> str:
    for _ in range(100):  # bounded: each round removes at least one character
        stripped = prefix.sub("", subject, count=1)
        if stripped == subject:
            break
        subject = stripped
    return subject.strip()


def _one_line(text: str | None) -> str:
    return " ".join(_HEADER_FORBIDDEN.sub(" ", text or "").split())


def reply_subject(subject: str | None) -> str:
    """
    The subject of a reply: the original's without any stack of reply
    prefixes (``Re: AW: Re[2]: x``), then exactly one ``Re: ``.
    """
    rest = _strip_prefixes(_one_line(subject), _REPLY_PREFIX)
    return f"Re: {rest}"[:MAX_SUBJECT_CHARS].rstrip()


def forward_subject(subject: str | None) -> str:
    """The subject of a forward: stacked ``Fwd:``/``FW:``/``WG:``/``TR:``… stripped, one ``Fwd: ``."""
    rest = _strip_prefixes(_one_line(subject), _FORWARD_PREFIX)
    return f"Fwd: {rest}"[:MAX_SUBJECT_CHARS].rstrip()


def reply_references(
    message_id: str | None, references: Sequence[str], in_reply_to: str | None
) -> tuple[str, ...]:
    """
    A reply's References (RFC 5322 §3.6.4): the original's References (or,
    without them, its In-Reply-To) followed by its Message-ID; ids that are
    not well-formed are dropped, duplicates too, and a long chain is trimmed
    from the front after the first id (the thread's root), to at most
    `MAX_REPLY_REFERENCES` ids and `MAX_REPLY_REFERENCES_CHARS` characters.
    """
    chain = list(references) or ([in_reply_to] if in_reply_to else [])
    if message_id:
        chain.append(message_id)
    seen: set[str] = set()
    ids: list[str] = []
    for item in chain:
        if _MESSAGE_ID.fullmatch(item) and item not in seen:
            seen.add(item)
            ids.append(item)
    if len(ids) > MAX_REPLY_REFERENCES:
        ids = ids[:1] + ids[len(ids) - MAX_REPLY_REFERENCES + 1 :]
    while len(ids) > 2 and len(" ".join(ids)) > MAX_REPLY_REFERENCES_CHARS:
        del ids[1]
    return tuple(ids)


def valid_message_id(value: str | None) -> str | None:
    """C{value} when it is a Message-ID this module would write, else None."""
    return value if value is not None and _MESSAGE_ID.fullmatch(value) else None


def safe_address(email: str, name: str | None = None) -> Address | None:
    """
    An address read from a message (so: untrusted) as an `Address` fit for
    a header, or None when it is not a valid address (group syntax, a
    hostile local part, ...).
    """
    local, at, domain = (email or "").rpartition("@")
    if not at:
        return None
    try:
        spec = normalize_addr_spec("address", local, domain)
    except ComposeError:
        return None
    s_local, _, s_domain = spec.rpartition("@")
    return Address(display_name=_clean_display_name(name or ""), username=s_local, domain=s_domain)


def without(addresses: Iterable[Address], excluded: Iterable[str] = ()) -> tuple[Address, ...]:
    """
    C{addresses} without duplicates and without any whose address is in
    C{excluded}, compared case-insensitively, the first spelling kept.
    """
    seen = {e.lower() for e in excluded}
    kept: list[Address] = []
    for address in addresses:
        key = address.addr_spec.lower()
        if key not in seen:
            seen.add(key)
            kept.append(address)
    return tuple(kept)


#: The original's text quoted in a reply, or forwarded, is cut after this many characters.
MAX_QUOTED_CHARS = 200_000


def quote_text(text: str, attribution: str) -> str:
    """C{attribution} then C{text} with every line behind ``> `` (``>`` alone on blank lines)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    quoted = [f"> {line}" if line.strip() else ">" for line in lines]
    return "\n".join([attribution, *quoted]) + "\n"


def text_to_html(text: str) -> str:
    """Plain text as HTML that shows the same: escaped, line breaks kept."""
    escaped = html.escape(text.replace("\r\n", "\n"), quote=False)
    return escaped.replace("\n", "<br>\n")


_DOCUMENT_TAGS = re.compile(r"</?(?:html|body)\b[^>]*>|<!doctype[^>]*>", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def html_fragment(document: str) -> str:
    """The inside of an HTML document, to nest in another one (no html/body/doctype tags)."""
    return _DOCUMENT_TAGS.sub("", document).strip()


def append_html(document: str, addition: str) -> str:
    """C{addition} inside C{document}'s body, at its end."""
    matches = list(_BODY_END.finditer(document))
    if not matches:
        return document + addition
    at = matches[-1].start()
    return document[:at] + addition + document[at:]


def blockquote(attribution: str, inner_html: str) -> str:
    """A quoted original as HTML: the attribution line, then the original in a cite blockquote."""
    return (
        f'<div class="mailmcp-quote"><p>{html.escape(attribution, quote=False)}</p>'
        '<blockquote type="cite" style="margin:0 0 0 .8ex;border-left:1px solid #ccc;'
        f'padding-left:1ex">{inner_html}</blockquote></div>'
    )
