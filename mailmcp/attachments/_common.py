"""
What both attachment stores share: the value types, the errors, the limits,
and the rules that make a stored attachment harmless to serve.

The filename and content type of an attachment come from an email, that is
from whoever sent it.  They never reach a storage key or a file path, and
when a download is served they are cleaned here: the filename becomes an
RFC 6266 ``Content-Disposition: attachment`` parameter, and any type a
browser could execute (HTML, SVG, XML, scripts) is served as
``application/octet-stream``.
"""

from __future__ import annotations

import functools
import hmac
import re
from typing import NamedTuple
from urllib.parse import quote

import attrs

from ..mail._filenames import sanitise_filename as sanitise_filename
from ..oauth._keyring import KeyRing

#: Purpose names for the key ring's HKDF subkeys.
OWNER_PURPOSE = "attachments/owner"
LINK_PURPOSE = "attachments/link"

DEFAULT_MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_MESSAGE_ATTACHMENT_BYTES = 35 * 1024 * 1024
DEFAULT_MAX_ATTACHMENTS = 20
#: Longest URL ``resolve`` even looks at; our own links are far shorter.
MAX_URL_LENGTH = 4096


class AttachmentError(Exception):
    """
    An attachment could not be stored, linked or resolved.  The message is
    safe to show to the user and the model: it never quotes a link (whose
    signature is a bearer secret) nor any credential.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AttachmentRefused(AttachmentError):
    """
    A URL given as an attachment source is not a live link this server
    issued to the caller.  Nothing was fetched: refusal happens before any
    I/O.
    """


class AttachmentTooLarge(AttachmentError):
    """An attachment (or all of a message's attachments) is over the size cap."""


class AttachmentNotFound(AttachmentError):
    """The link is genuine but its object is gone (swept or deleted)."""


@attrs.frozen
class StoredObject:
    """
    One stored blob.  ``key`` is the store's name for it
    (``<owner tag>/<sha256>``): it is derived from the owner and the content
    only, never from a filename.  ``created`` is False when the content was
    already stored and nothing was written.
    """

    key: str
    size: int
    sha256: str
    created: bool = True


class ResolvedAttachment(NamedTuple):
    """The content behind a link, with the filename and type it was issued with."""

    data: bytes
    filename: str
    content_type: str


@attrs.frozen
class Limits:
    """Size caps for attachments going into a message."""

    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_ATTACHMENT_BYTES
    max_count: int = DEFAULT_MAX_ATTACHMENTS


def owner_tag(keyring: KeyRing, owner: str) -> str:
    """
    The owner's name in storage keys: an HMAC of the owner id under the
    oldest master key, so keys reveal no grant id, cannot be guessed for
    another user, and stay stable when a new key is added to the ring.
    """
    return _tag(keyring.subkey(keyring.kids[0], OWNER_PURPOSE), owner)


@functools.lru_cache(maxsize=4096)
def _tag(key: bytes, owner: str) -> str:
    """`owner_tag` remembered: it is asked for on every link and download."""
    return hmac.digest(key, owner.encode("utf-8"), "sha256").hex()[:32]


def content_disposition(filename: str) -> str:
    """
    ``attachment`` with the RFC 6266 pair of parameters: an ASCII fallback
    ``filename`` and the exact UTF-8 ``filename*``.
    """
    clean = sanitise_filename(filename)
    fallback = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\%' else "_" for ch in clean)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(clean, safe='')}"


_TOKEN = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_ACTIVE_EXACT = frozenset(
    {
        "text/html",
        "text/xml",
        "text/xsl",
        "text/css",
        "text/javascript",
        "text/ecmascript",
        "text/vbscript",
        "text/x-javascript",
        "text/jscript",
        "application/xml",
        "application/xhtml+xml",
        "application/javascript",
        "application/ecmascript",
        "application/x-javascript",
        "application/x-shockwave-flash",
        "application/java-archive",
        "application/x-java-jnlp-file",
        "application/hta",
        "image/svg+xml",
        "message/rfc822",
        "multipart/related",
    }
)


def safe_content_type(content_type: str | None) -> str:
    """
    The type to serve a download with.  Malformed types and anything a
    browser might render actively (HTML, any XML, SVG, scripts, CSS, Flash,
    MHTML) become ``application/octet-stream``; parameters are dropped except
    a sane ``charset`` on ``text/*``.
    """
    if not content_type:
        return "application/octet-stream"
    essence, _, params = content_type.partition(";")
    essence = essence.strip().lower()
    kind, slash, subtype = essence.partition("/")
    if not slash or not _TOKEN.fullmatch(kind) or not _TOKEN.fullmatch(subtype):
        return "application/octet-stream"
    if (
        essence in _ACTIVE_EXACT
        or kind == "multipart"
        or subtype.endswith("+xml")
        or "xml" in subtype
        or "script" in subtype
        or "html" in subtype
    ):
        return "application/octet-stream"
    if kind == "text":
        match = re.search(r"charset\s*=\s*\"?([A-Za-z0-9_.:-]{1,40})\"?", params)
        if match:
            return f"{essence}; charset={match.group(1).lower()}"
    return essence
