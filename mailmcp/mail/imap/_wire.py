"""
Everything that turns a caller's value into bytes on the IMAP wire.

No user string is ever interpolated raw (docs/threat-model.rst, P-01…P-04): mailbox
names are checked for control characters, encoded to modified UTF-7 and
sent as a quoted string; flags must be atoms; UIDs must be real ints in
range; free text goes out as a quoted string when it is plain printable
ASCII and as a literal otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import twisted.mail.imap4  # noqa: F401 - registers the "imap4-utf-7" codec

from .._mailbox_api import IMAPError, Literal
from ._parser import MAX_UINT32, compress_uids

#: Pieces of a command's argument text: plain bytes, or a literal payload.
Piece = bytes | Literal  # noqa: UP040

_SYSTEM_FLAGS = {"\\seen", "\\answered", "\\flagged", "\\deleted", "\\draft"}
#: RFC 9051 atom: printable ASCII except ( ) { SP % * " \ ]
_KEYWORD = re.compile(r"[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_QUOTABLE = re.compile(rb"[\x20-\x7e]*")
_DATE_TIME = re.compile(
    r"[ 0-9]?[0-9]-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-[0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}"
)
MAX_MAILBOX_NAME = 1024


def check_uids(uids: Sequence[int]) -> bytes:
    """
    Validated UIDs as a compact sequence set.  Booleans, strings, zero and
    numbers beyond 2³²-1 are refused (P-02, P-20).
    """
    if not uids:
        raise IMAPError("no message UIDs given")
    for uid in uids:
        if type(uid) is not int or not 0 < uid <= MAX_UINT32:
            raise IMAPError(f"invalid message UID {uid!r:.40}")
    return compress_uids(uids)


def check_flag(flag: str) -> bytes:
    """A system flag from the allow-list or a keyword atom, as bytes."""
    if not isinstance(flag, str):
        raise IMAPError(f"invalid flag {flag!r:.40}")
    if flag.startswith("\\"):
        if flag.lower() not in _SYSTEM_FLAGS:
            raise IMAPError(f"unsupported system flag {flag!r:.40}")
        return flag.encode("ascii")
    if not _KEYWORD.fullmatch(flag):
        raise IMAPError(f"invalid flag {flag!r:.40}: keywords are 1-64 printable ASCII characters")
    return flag.encode("ascii")


def flag_list(flags: Sequence[str]) -> bytes:
    return b"(" + b" ".join(check_flag(f) for f in flags) + b")"


def check_date_time(date: str) -> bytes:
    """An APPEND date-time like ``01-Jul-2025 13:30:00 +0000``, quoted."""
    if not isinstance(date, str) or not _DATE_TIME.fullmatch(date):
        raise IMAPError(f"invalid IMAP date-time {date!r:.40}")
    return b'"' + date.encode("ascii") + b'"'


def encode_mailbox(name: str) -> bytes:
    """
    A mailbox name as modified UTF-7 bytes (not yet quoted).  Control
    characters are refused rather than silently mangled (P-04).
    """
    if not isinstance(name, str) or not name:
        raise IMAPError("mailbox name must be a non-empty string")
    if len(name) > MAX_MAILBOX_NAME or _CONTROL.search(name):
        raise IMAPError("invalid mailbox name: control characters or too long")
    if name.upper() == "INBOX":
        return b"INBOX"
    if name.isascii() and "&" not in name:
        # Printable ASCII but "&" stands for itself in modified UTF-7
        # (RFC 3501 5.1.3); the codec machinery cost more than the rest of
        # writing the command.
        return name.encode("ascii")
    return name.encode("imap4-utf-7")


def decode_mailbox(raw: bytes) -> str:
    """
    A mailbox name from the server.  Invalid modified UTF-7 (IM-12) comes
    back as its raw bytes with backslash escapes instead of failing.
    """
    try:
        return raw.decode("imap4-utf-7")
    except (UnicodeDecodeError, ValueError):
        return raw.decode("ascii", "backslashreplace")


def quote(value: bytes) -> bytes:
    """An IMAP quoted string; only for printable ASCII (callers check)."""
    if not _QUOTABLE.fullmatch(value):
        raise IMAPError("value cannot be sent as a quoted string")
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def astring(value: bytes) -> bytes | Literal:
    """A quoted string when possible, else a literal."""
    if _QUOTABLE.fullmatch(value):
        return quote(value)
    return Literal(value)


def check_atom_token(token: bytes) -> bytes:
    """
    One pre-compiled search token: printable ASCII, no literal syntax, no
    CR/LF/NUL.  (Search compilation itself is the tools' job; this is the
    last line of defence against P-01.)
    """
    if not isinstance(token, bytes) or not token or not _QUOTABLE.fullmatch(token):
        raise IMAPError(f"invalid search token {token!r:.40}")
    if b"{" in token and token.rstrip().endswith(b"}"):
        raise IMAPError("literal syntax is not allowed in search tokens")
    return token
