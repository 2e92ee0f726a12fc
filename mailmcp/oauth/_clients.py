"""
OAuth clients: provisioned by ``twistd mailmcp-generate``, registered at
``/oauth/register`` (RFC 7591), or named by a Client ID Metadata Document
URL (see `mailmcp.oauth._cimd`).

A client's description (mail servers, redirect URIs, a hash of its secret)
was a sealed JWE (kind ``client``) that *was* the client id: ~740
characters, more than Claude's connector dialog and some clients accept.
Those ids keep working.  Every id issued now is under 200 characters, in one
of two forms:

  - **compact sealed** (``mc1.`` ...), what ``mailmcp-generate`` prints
    when it fits: the same description as lines of text, AES-GCM sealed
    under a key-ring subkey with a 4-byte key tag, the secret hash cut to
    128 bits.  Like the long form it needs no server-side state, so any
    process with the key ring recognises it and ``mailmcp-generate`` needs
    no access to the daemon's store.
  - **stored** (``mc_`` and 22 random characters): the sealed description
    filed in the grant store (`IClientStore`: SQLite or Redis, shared by
    every process on it).  Registration (``/oauth/register``) always uses
    it; ``mailmcp-generate`` does when the compact form would not fit (many
    redirect URIs, a long name), writing to ``--store``.  The store sees
    only the sealed description.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._scopes import FULL, format_scope, parse_scope
from ..interfaces import IClientStore
from ._keyring import KeyRing
from ._tokens import InvalidToken, TokenCodec

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
    """
    True for ``localhost`` (also as an absolute name, ``localhost.``) and
    loopback IP literals (127.0.0.0/8, ``::1``, bracketed or not).
    """
    host = host.strip("[]").lower().rstrip(".")
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
    #: ``provisioned`` (mailmcp-generate), ``registered`` (DCR), ``metadata`` (CIMD),
    #: or ``default`` (the default mail profile, on the account page).
    kind: str = "provisioned"
    #: The most this client may be granted (``--scope`` of
    #: ``twistd mailmcp-generate``); client ids from before allow all five.
    scopes: frozenset[str] = FULL
    #: Its own provider sign-in (``mailmcp-generate --imap-auth xoauth2 ...``):
    #: a `mailmcp.provider._client.ProviderProfile`, or None (passwords).
    provider: Any = attrs.field(default=None, repr=False)

    @property
    def is_public(self) -> bool:
        return self.secret_hash is None

    def check_secret(self, secret: str | None) -> bool:
        """Constant-time check of a presented client secret (full or 128-bit hash)."""
        if self.secret_hash is None:
            return secret is None or secret == ""
        if not secret or len(self.secret_hash) not in (32, 64):
            return False
        presented = hash_secret(secret)[: len(self.secret_hash)]
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
    scopes: frozenset[str] = FULL,
    provider: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """
    The sealed description of a client; no servers means the default mail
    profile.  C{provider} is its own provider profile
    (`mailmcp.provider._options.profile_claims`), client secret included:
    sealed like the rest, so only processes with the key ring read it.
    """
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
    if scopes != FULL:
        # Sealed in the id: the cap cannot be lifted by whoever holds it.
        claims["scope"] = format_scope(scopes)
    if provider is not None:
        claims["provider"] = provider
    return claims


COMPACT_PREFIX = "mc1."
MAX_CLIENT_ID = 199
_COMPACT_AAD = b"mailmcp client id v1"
_SECURITY_LETTER = {"tls": "t", "starttls": "s", "plain": "p"}
_LETTER_SECURITY: dict[str, Security] = {"t": "tls", "s": "starttls", "p": "plain"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _kid_tag(kid: str) -> bytes:
    return hashlib.sha256(kid.encode("utf-8")).digest()[:4]


def seal_compact(keyring: KeyRing, claims: dict[str, Any]) -> str | None:
    """
    The compact sealed id for C{claims} (with servers), or None when it
    would be C{MAX_CLIENT_ID} characters or longer.
    """
    if "provider" in claims:
        # A provider profile (endpoints, client secret) never fits.
        return None
    imap, smtp = claims["imap"], claims["smtp"]
    name = claims.get("name") or ""
    uris = claims["redirect_uris"]
    if any("\n" in str(v) for v in (name, *uris)) or " " in imap["host"] + smtp["host"]:
        return None
    secret_hash = claims["secret_hash"]
    lines = [
        f"{imap['host']} {imap['port']} {_SECURITY_LETTER[imap['security']]}",
        f"{smtp['host']} {smtp['port']} {_SECURITY_LETTER[smtp['security']]}"
        + ("f" if smtp.get("files_sent") else ""),
        "-" if secret_hash is None else _b64(bytes.fromhex(secret_hash[:32])),
        claims.get("scope", ""),
        name,
        *([] if list(uris) == list(DEFAULT_REDIRECT_URIS) else uris),
    ]
    kid = keyring.current_kid
    nonce = os.urandom(12)
    box = AESGCM(keyring.subkey(kid, "client-id/compact"))
    sealed = box.encrypt(nonce, "\n".join(lines).encode("utf-8"), _COMPACT_AAD)
    token = base64.urlsafe_b64encode(_kid_tag(kid) + nonce + sealed).rstrip(b"=").decode()
    client_id = COMPACT_PREFIX + token
    return client_id if len(client_id) <= MAX_CLIENT_ID else None


def open_compact(keyring: KeyRing, client_id: str) -> dict[str, Any]:
    """
    The claims of a compact sealed id.

    :raises InvalidToken: for anything this key ring did not seal.
    """
    token = client_id[len(COMPACT_PREFIX) :]
    if not client_id.startswith(COMPACT_PREFIX) or len(client_id) > MAX_CLIENT_ID:
        raise InvalidToken()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken() from None
    tag, nonce, sealed = raw[:4], raw[4:16], raw[16:]
    for kid in keyring.kids:
        if hmac.compare_digest(_kid_tag(kid), tag):
            try:
                box = AESGCM(keyring.subkey(kid, "client-id/compact"))
                text = box.decrypt(nonce, sealed, _COMPACT_AAD).decode("utf-8")
            except (InvalidTag, ValueError):
                continue
            return _compact_claims(text)
    raise InvalidToken()


def _compact_claims(text: str) -> dict[str, Any]:
    try:
        lines = text.split("\n")
        servers = []
        for line in lines[:2]:
            host, port, security = line.split(" ")
            servers.append(
                {
                    "host": host,
                    "port": int(port),
                    "security": _LETTER_SECURITY[security[0]],
                    **({"files_sent": True} if security[1:] == "f" else {}),
                }
            )
        secret_hash = None
        if lines[2] != "-":
            secret_hash = base64.urlsafe_b64decode(lines[2] + "==").hex()
            if len(secret_hash) != 32:
                raise ValueError("bad secret hash")
        return {
            "imap": servers[0],
            "smtp": servers[1],
            "secret_hash": secret_hash,
            **({"scope": lines[3]} if lines[3] else {}),
            "name": lines[4] or None,
            "redirect_uris": lines[5:] or list(DEFAULT_REDIRECT_URIS),
        }
    except (IndexError, KeyError, ValueError, binascii.Error):
        raise InvalidToken() from None


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
    Seal a client description and return ``(sealed, client_secret)``; the
    secret is L{None} for a public client and is never stored anywhere.
    The sealed form is a (long) client id by itself, as issued before
    short ids; `register_client` files it under a short id.
    """
    secret = None if public else secrets.token_urlsafe(32)
    claims = client_claims(imap, smtp, redirect_uris, secret, name, scopes=scopes)
    return codec.seal("client", claims, None), secret


def provision_short_client(
    codec: TokenCodec,
    imap: MailServer,
    smtp: MailServer,
    redirect_uris: Iterable[str],
    public: bool = False,
    name: str | None = None,
    scopes: frozenset[str] = FULL,
    provider: dict[str, Any] | None = None,
) -> tuple[str | None, str, str | None]:
    """
    A new provisioned client: ``(compact id or None, sealed, secret)``.
    When the compact id is None (it would not fit), file C{sealed} under a
    `new_client_id` in the store.
    """
    secret = None if public else secrets.token_urlsafe(32)
    claims = client_claims(
        imap, smtp, redirect_uris, secret, name, scopes=scopes, provider=provider
    )
    return seal_compact(codec.keyring, claims), codec.seal("client", claims, None), secret


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
    if sealed is None and client_id is not None and client_id.startswith(COMPACT_PREFIX):
        claims = open_compact(codec.keyring, client_id)
    else:
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
        scope = claims.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise ValueError("bad scope")
        scopes = parse_scope(scope) if scope is not None else FULL
        provider = None
        if "provider" in claims:
            from ..provider._options import profile_from_claims

            provider = profile_from_claims(claims["provider"])
        return Client(
            client_id=client_id,
            imap=imap,
            smtp=smtp,
            redirect_uris=tuple(uris),
            secret_hash=secret_hash,
            name=name if isinstance(name, str) else None,
            kind=kind if isinstance(kind, str) else "provisioned",
            scopes=scopes,
            provider=provider,
        )
    except (KeyError, ValueError, AssertionError):
        raise InvalidToken() from None
