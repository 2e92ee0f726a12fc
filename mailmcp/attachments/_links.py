"""
Signed download links for the local store.

A link is ``<base>/attachments/<kid>.<payload>?sig=<signature>``.  The
payload (base64url JSON) names the owner tag, the content hash, the size,
the filename and type to serve, and the expiry; the signature is an
HMAC-SHA256 (truncated to 128 bits) over the kid and payload under the key
ring's ``attachments/link`` subkey.  The signature sits in the query string
on purpose: the daemon's access log drops query strings, so a logged path
is not a working link.

Verification never touches the disk or the network and every defect maps to
one `AttachmentRefused` (or "expired" for a genuine but stale link).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from urllib.parse import parse_qs, urlsplit

import attrs
from twisted.internet.interfaces import IReactorTime

from ..oauth._keyring import KeyRing
from ._common import LINK_PURPOSE, MAX_URL_LENGTH, AttachmentRefused

DOWNLOAD_PREFIX = "/attachments/"
_SIG_BYTES = 16
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TAG = re.compile(r"[0-9a-f]{32}")

NOT_OURS = (
    "attachment source not allowed: only links this server issued to you "
    "(from get_mail_message or get_mail_attachment_link) or inline base64 "
    "content in the attachments parameter are accepted"
)
TAMPERED = "attachment link is not valid (altered or not issued by this server)"
EXPIRED = "attachment link has expired: get a fresh one with get_mail_attachment_link"
OTHER_OWNER = "attachment link was issued to another account"


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.frozen
class LinkClaims:
    """What a link says about itself, once its signature checked out."""

    owner_tag: str
    sha256: str
    size: int
    filename: str
    content_type: str
    expires: int

    @property
    def key(self) -> str:
        return f"{self.owner_tag}/{self.sha256}"


class LinkCodec:
    """
    Signs and verifies local download links.

    :param keyring: master keys; the newest signs, any verifies.
    :param clock: where "now" comes from.
    :param base_url: the daemon's public base URL (no trailing slash).
    """

    def __init__(self, keyring: KeyRing, clock: IReactorTime, base_url: str) -> None:
        self._keyring = keyring
        self._clock = clock
        self._base = urlsplit(base_url)
        self._prefix = self._base.path.rstrip("/") + DOWNLOAD_PREFIX
        self.base_url = base_url.rstrip("/")

    def _mac(self, kid: str, payload: str) -> bytes:
        key = self._keyring.subkey(kid, LINK_PURPOSE)
        # hmac.digest: the one-shot C path, same bytes as hmac.new(...).digest().
        return hmac.digest(key, f"{kid}.{payload}".encode("ascii"), "sha256")[:_SIG_BYTES]

    def sign(self, claims: LinkClaims) -> str:
        """The URL for C{claims}."""
        body = [
            1,
            claims.owner_tag,
            claims.sha256,
            claims.size,
            claims.content_type,
            claims.filename,
            claims.expires,
        ]
        payload = _b64e(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        kid = self._keyring.current_kid
        return (
            f"{self.base_url}{DOWNLOAD_PREFIX}{kid}.{payload}?sig={_b64e(self._mac(kid, payload))}"
        )

    def verify_token(self, token: str, sig: str, *, check_expiry: bool = True) -> LinkClaims:
        """
        Check the path token and signature of a download request.

        :raises AttachmentRefused: altered, foreign or expired.
        """
        kid, dot, payload = token.partition(".")
        if not dot or not kid or not payload or not self._keyring.has(kid) or len(sig) > 64:
            raise AttachmentRefused(TAMPERED)
        try:
            given = _b64d(sig)
        except (binascii.Error, ValueError):
            raise AttachmentRefused(TAMPERED) from None
        if _b64e(given) != sig or not hmac.compare_digest(self._mac(kid, payload), given):
            raise AttachmentRefused(TAMPERED)
        try:
            version, tag, sha, size, ctype, filename, expires = json.loads(_b64d(payload))
        except (ValueError, TypeError, binascii.Error):
            raise AttachmentRefused(TAMPERED) from None
        if (
            version != 1
            or not isinstance(tag, str)
            or not _TAG.fullmatch(tag)
            or not isinstance(sha, str)
            or not _SHA256.fullmatch(sha)
            or not isinstance(size, int)
            or not isinstance(ctype, str)
            or not isinstance(filename, str)
            or not isinstance(expires, int)
        ):
            raise AttachmentRefused(TAMPERED)
        if check_expiry and expires <= self._clock.seconds():
            raise AttachmentRefused(EXPIRED)
        return LinkClaims(tag, sha, size, filename, ctype, expires)

    def verify_url(self, url: str) -> LinkClaims:
        """
        Check that C{url} is, character for character where it matters, one
        of our download links, and return its claims.  This is pure string
        and HMAC work: nothing is resolved or fetched.

        :raises AttachmentRefused: for anything else.
        """
        if not isinstance(url, str) or len(url) > MAX_URL_LENGTH or url != url.strip():
            raise AttachmentRefused(NOT_OURS)
        try:
            parts = urlsplit(url)
        except ValueError:
            raise AttachmentRefused(NOT_OURS) from None
        if (
            parts.scheme.lower() != self._base.scheme.lower()
            or parts.netloc.lower() != self._base.netloc.lower()
            or parts.fragment
            or not parts.path.startswith(self._prefix)
        ):
            raise AttachmentRefused(NOT_OURS)
        token = parts.path[len(self._prefix) :]
        if "/" in token or "%" in token:
            raise AttachmentRefused(NOT_OURS)
        query = parse_qs(parts.query, strict_parsing=False)
        sigs = query.get("sig", [])
        if len(sigs) != 1 or set(query) != {"sig"}:
            raise AttachmentRefused(TAMPERED)
        return self.verify_token(token, sigs[0])
