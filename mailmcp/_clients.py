"""
OAuth clients provisioned by ``twistd mailmcp-generate``.

A client id is itself a sealed token (kind ``client``) that records which
mail servers the client may log in to, how, the redirect URIs it may use and
a hash of its secret.  Nothing about clients is stored server-side, so any
process sharing the key ring recognises them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from ._scopes import FULL, format_scope, parse_scope
from ._tokens import InvalidToken, TokenCodec

Security = Literal["tls", "starttls", "plain"]
SECURITY_MODES: tuple[Security, ...] = ("tls", "starttls", "plain")

CLAUDE_REDIRECT_URIS = (
    "https://claude.ai/api/mcp/auth_callback",
    "https://claude.com/api/mcp/auth_callback",
)
LOOPBACK_REDIRECT_URIS = ("http://127.0.0.1/*", "http://localhost/*")
DEFAULT_REDIRECT_URIS = CLAUDE_REDIRECT_URIS + LOOPBACK_REDIRECT_URIS


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen
class MailServer:
    """
    Where and how to reach one IMAP or SMTP server.

    C{files_sent} (SMTP only) says the server files a copy of every message
    it sends in the Sent folder itself, as Gmail and Office 365 do, so ours
    would be a duplicate.  It is written into claims only when set, so
    client ids and grants made before it existed open unchanged.
    """

    host: str
    port: int
    security: Security
    files_sent: bool = False

    def to_claims(self) -> dict[str, Any]:
        claims: dict[str, Any] = {"host": self.host, "port": self.port, "security": self.security}
        if self.files_sent:
            claims["files_sent"] = True
        return claims

    @classmethod
    def from_claims(cls, claims: Any) -> MailServer:
        if not isinstance(claims, dict):
            raise ValueError("not a server description")
        host, port, security = claims["host"], claims["port"], claims["security"]
        files_sent = claims.get("files_sent", False)
        if (
            not isinstance(host, str)
            or not isinstance(port, int)
            or security not in SECURITY_MODES
            or not isinstance(files_sent, bool)
        ):
            raise ValueError("bad server description")
        return cls(host=host, port=port, security=security, files_sent=files_sent)


@attrs.frozen
class Client:
    """A provisioned OAuth client, as opened from its client id."""

    client_id: str
    imap: MailServer
    smtp: MailServer
    redirect_uris: tuple[str, ...]
    secret_hash: str | None
    name: str | None = None
    #: The most this client may be granted (``--scope`` of
    #: ``twistd mailmcp-generate``); client ids from before allow all five.
    scopes: frozenset[str] = FULL

    @property
    def is_public(self) -> bool:
        return self.secret_hash is None

    def check_secret(self, secret: str | None) -> bool:
        """Constant-time check of a presented client secret."""
        if self.secret_hash is None:
            return secret is None or secret == ""
        if not secret:
            return False
        presented = hash_secret(secret)
        return hmac.compare_digest(self.secret_hash, presented)

    def allows_redirect(self, redirect_uri: str) -> bool:
        return any(redirect_uri_matches(r, redirect_uri) for r in self.redirect_uris)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def validate_redirect_uri(uri: str) -> str:
    """
    A registrable redirect URI: https anywhere, or http on a loopback host
    (RFC 8252).  A loopback URI may end in ``/*`` to allow any path.

    :raises ValueError: with a one-line reason.
    """
    parts = urlsplit(uri)
    if parts.fragment or not parts.hostname:
        raise ValueError(f"redirect URI {uri!r} must be absolute and carry no fragment")
    if parts.scheme == "https":
        return uri
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return uri
    raise ValueError(f"redirect URI {uri!r} must use https, or http on a loopback host")


def redirect_uri_matches(registered: str, candidate: str) -> bool:
    """
    Exact string match, except that for a loopback registration the port is
    ignored (RFC 8252 §7.3) and a registered path of ``/*`` admits any path.
    """
    if registered == candidate:
        return True
    reg, cand = urlsplit(registered), urlsplit(candidate)
    if reg.scheme != "http" or not reg.hostname or not is_loopback_host(reg.hostname):
        return False
    if cand.scheme != "http" or cand.fragment or cand.username or cand.password:
        return False
    if (cand.hostname or "").lower() != reg.hostname.lower():
        return False
    try:
        cand.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    if reg.path == "/*":
        return True
    return cand.path == reg.path and cand.query == reg.query


def provision_client(
    codec: TokenCodec,
    imap: MailServer,
    smtp: MailServer,
    redirect_uris: Iterable[str],
    public: bool = False,
    name: str | None = None,
    scopes: frozenset[str] = FULL,
) -> tuple[str, str | None]:
    """
    Seal a new client id.  Returns ``(client_id, client_secret)``; the secret
    is L{None} for a public client and is never stored anywhere.
    """
    secret = None if public else secrets.token_urlsafe(32)
    claims: dict[str, Any] = {
        "imap": imap.to_claims(),
        "smtp": smtp.to_claims(),
        "redirect_uris": [validate_redirect_uri(u) for u in redirect_uris],
        "secret_hash": None if secret is None else hash_secret(secret),
        "cid": secrets.token_hex(8),
    }
    if name:
        claims["name"] = name
    if scopes != FULL:
        # Sealed in the id: the cap cannot be lifted by whoever holds it.
        claims["scope"] = format_scope(scopes)
    return codec.seal("client", claims, None), secret


def open_client(codec: TokenCodec, client_id: str | None) -> Client:
    """
    Open a client id.

    :raises InvalidToken: when it is not a client id this key ring issued.
    """
    claims = codec.open("client", client_id)
    try:
        assert client_id is not None
        uris = claims["redirect_uris"]
        if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            raise ValueError("bad redirect_uris")
        secret_hash = claims.get("secret_hash")
        if secret_hash is not None and not isinstance(secret_hash, str):
            raise ValueError("bad secret hash")
        name = claims.get("name")
        scope = claims.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise ValueError("bad scope")
        scopes = parse_scope(scope) if scope is not None else FULL
        return Client(
            client_id=client_id,
            imap=MailServer.from_claims(claims["imap"]),
            smtp=MailServer.from_claims(claims["smtp"]),
            redirect_uris=tuple(uris),
            secret_hash=secret_hash,
            name=name if isinstance(name, str) else None,
            scopes=scopes,
        )
    except (KeyError, ValueError, AssertionError):
        raise InvalidToken() from None
