"""
OAuth clients: provisioned by ``twistd mailmcp-generate``, registered at
``/oauth/register`` (RFC 7591), or named by a Client ID Metadata Document
URL (see `mailmcp._cimd`).

A client's description (mail servers, redirect URIs, a hash of its secret)
is a sealed token (kind ``client``).  Ids issued before version 0.2 *are*
that token (~740 characters); Claude's connector dialog and some clients
cap a client id far below that, so every id issued now is short:
``mc_`` and 22 random URL-safe characters (25 in all), mapped to the sealed
description in the grant store (`IClientStore`: SQLite or Redis, so every
process sharing the store knows it).  The store sees only the sealed form.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from ._tokens import InvalidToken, TokenCodec
from .interfaces import IClientStore

Security = Literal["tls", "starttls", "plain"]
SECURITY_MODES: tuple[Security, ...] = ("tls", "starttls", "plain")

CLAUDE_REDIRECT_URIS = (
    "https://claude.ai/api/mcp/auth_callback",
    "https://claude.com/api/mcp/auth_callback",
)
LOOPBACK_REDIRECT_URIS = ("http://127.0.0.1/*", "http://localhost/*")
DEFAULT_REDIRECT_URIS = CLAUDE_REDIRECT_URIS + LOOPBACK_REDIRECT_URIS


DEFAULT_PORTS = {
    "imap": {"tls": 993, "starttls": 143, "plain": 143},
    "smtp": {"tls": 465, "starttls": 587, "plain": 25},
}

#: A short client id: ``mc_`` and 128 random bits.
SHORT_ID = re.compile(r"mc_[A-Za-z0-9_-]{22}")


def new_client_id() -> str:
    return "mc_" + secrets.token_urlsafe(16)


def parse_mail_server(
    kind: str, host: str | None, port: str | int | None, security: str | None
) -> MailServer:
    """
    One mail server from ``--KIND-host/-port/-security`` (``mailmcp-generate``
    and the daemon's default mail profile share this).

    :raises ValueError: with a one-line reason naming the option.
    """
    if not host:
        raise ValueError(f"--{kind}-host is required")
    security = security or "tls"
    if security not in SECURITY_MODES:
        raise ValueError(f"--{kind}-security must be tls, starttls or plain")
    if security == "plain" and not is_loopback_host(host):
        raise ValueError(
            f"--{kind}-security plain would send passwords in clear text; "
            f"it is only allowed for a loopback host, not {host}"
        )
    try:
        number = int(port) if port else DEFAULT_PORTS[kind][security]
    except ValueError:
        raise ValueError(f"--{kind}-port must be a number") from None
    if not 0 < number < 65536:
        raise ValueError(f"--{kind}-port must be between 1 and 65535")
    return MailServer(host=host.strip().lower(), port=number, security=security)


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
    #: ``provisioned`` (mailmcp-generate), ``registered`` (DCR) or ``metadata`` (CIMD).
    kind: str = "provisioned"

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


def client_claims(
    imap: MailServer | None,
    smtp: MailServer | None,
    redirect_uris: Iterable[str],
    secret: str | None,
    name: str | None = None,
    kind: str = "provisioned",
) -> dict[str, Any]:
    """The sealed description of a client; no servers means the default mail profile."""
    claims: dict[str, Any] = {
        "redirect_uris": [validate_redirect_uri(u) for u in redirect_uris],
        "secret_hash": None if secret is None else hash_secret(secret),
        "cid": secrets.token_hex(8),
    }
    if imap is not None and smtp is not None:
        claims["imap"] = imap.to_claims()
        claims["smtp"] = smtp.to_claims()
    if name:
        claims["name"] = name
    if kind != "provisioned":
        claims["kind"] = kind
    return claims


def provision_client(
    codec: TokenCodec,
    imap: MailServer,
    smtp: MailServer,
    redirect_uris: Iterable[str],
    public: bool = False,
    name: str | None = None,
) -> tuple[str, str | None]:
    """
    Seal a client description and return ``(sealed, client_secret)``; the
    secret is L{None} for a public client and is never stored anywhere.
    The sealed form is a (long) client id by itself, as issued before
    short ids; `register_client` files it under a short id.
    """
    secret = None if public else secrets.token_urlsafe(32)
    claims = client_claims(imap, smtp, redirect_uris, secret, name)
    return codec.seal("client", claims, None), secret


async def register_client(store: IClientStore, codec: TokenCodec, claims: dict[str, Any]) -> str:
    """File a sealed description under a new short id; return the id."""
    client_id = new_client_id()
    await store.put_client(client_id, codec.seal("client", claims, None))
    return client_id


def open_client(
    codec: TokenCodec,
    client_id: str | None,
    sealed: str | None = None,
    default_imap: MailServer | None = None,
    default_smtp: MailServer | None = None,
) -> Client:
    """
    Open a client: C{sealed} (from the store) when given, else the long
    C{client_id} itself.  A description without servers takes the default
    mail profile.

    :raises InvalidToken: when it is not a client this key ring issued, or
        it needs a default profile the daemon does not have.
    """
    claims = codec.open("client", sealed if sealed is not None else client_id)
    try:
        assert client_id is not None
        uris = claims["redirect_uris"]
        if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            raise ValueError("bad redirect_uris")
        secret_hash = claims.get("secret_hash")
        if secret_hash is not None and not isinstance(secret_hash, str):
            raise ValueError("bad secret hash")
        name = claims.get("name")
        kind = claims.get("kind", "provisioned")
        if "imap" in claims:
            imap, smtp = (
                MailServer.from_claims(claims["imap"]),
                MailServer.from_claims(claims["smtp"]),
            )
        elif default_imap is not None and default_smtp is not None:
            imap, smtp = default_imap, default_smtp
        else:
            raise ValueError("no mail servers")
        return Client(
            client_id=client_id,
            imap=imap,
            smtp=smtp,
            redirect_uris=tuple(uris),
            secret_hash=secret_hash,
            name=name if isinstance(name, str) else None,
            kind=kind if isinstance(kind, str) else "provisioned",
        )
    except (KeyError, ValueError, AssertionError):
        raise InvalidToken() from None
