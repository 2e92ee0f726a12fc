"""
Finding clients by id, and registering new ones (RFC 7591).

A client id is one of:

  - a short id (``mc_...``) filed in the grant store (`IClientStore`) by
    ``mailmcp-generate`` or by ``POST /oauth/register``;
  - a Client ID Metadata Document URL (`mailmcp.oauth._cimd`);
  - a long sealed id issued before short ids, opened with the key ring.

Registered and metadata clients bring no mail servers: they log in to the
daemon's default mail profile (``--imap-host`` ...), so both are only on
when there is one (`open_registration`).
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from .._config import Config
from ..interfaces import IClientStore
from ..web._http import json_body
from ._cimd import ClientMetadataError, ClientMetadataResolver
from ._clients import (
    SHORT_ID,
    Client,
    MailServer,
    client_claims,
    open_client,
    register_client,
)
from ._tokens import InvalidToken, TokenCodec

log = Logger()

#: The servers of a client that brings none when the daemon has no default
#: profile but --allow-user-servers: never connected to (``.invalid``), as
#: the login page always asks such a client's user for theirs.
NAMED_ON_LOGIN = MailServer("user-named.invalid", 993, "tls")

MAX_REGISTRATION_BODY = 16 * 1024
MAX_REDIRECT_URIS = 10
AUTH_METHODS = ("none", "client_secret_post", "client_secret_basic")
GRANT_TYPES = ("authorization_code", "refresh_token")


def open_registration(config: Config) -> bool:
    """Whether clients may come without mail servers (CIMD and DCR on)."""
    return (
        config.default_imap is not None
        and config.default_smtp is not None
        or bool(getattr(config, "allow_user_servers", False))
    )


class ClientDirectory:
    """Client id → `Client`, whichever of the three kinds it is."""

    def __init__(
        self,
        config: Config,
        codec: TokenCodec,
        store: Any,
        metadata: ClientMetadataResolver | None,
    ) -> None:
        self._config = config
        self._codec = codec
        self._store = store
        self._metadata = metadata

    async def find(self, client_id: str) -> Client:
        """
        :raises InvalidToken: an id this server does not know.
        :raises ClientMetadataError: a metadata document that cannot be used.
        """
        imap, smtp = self._config.default_imap, self._config.default_smtp
        if (imap is None or smtp is None) and self._config.allow_user_servers:
            # The user names the servers on the login page instead.
            imap = smtp = NAMED_ON_LOGIN
        if SHORT_ID.fullmatch(client_id):
            sealed = await self._store.get_client(client_id)
            if sealed is None:
                raise InvalidToken()
            return open_client(self._codec, client_id, sealed, imap, smtp)
        if self._metadata is not None and self._metadata.is_metadata_url(client_id):
            metadata = await self._metadata.resolve(client_id)
            if imap is None or smtp is None:
                raise ClientMetadataError("This server has no default mail server for this client.")
            return metadata.client(imap, smtp)
        if client_id.startswith(("https://", "http://")):
            raise InvalidToken()
        return open_client(self._codec, client_id)


class RegistrationError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(error)
        self.error = error
        self.description = description
        self.status = status


def _metadata_claims(document: Any) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """
    Check a registration request.  Returns (claims without the secret, the
    auth method, the metadata to echo).

    :raises RegistrationError: ``invalid_redirect_uri`` or ``invalid_client_metadata``.
    """
    if not isinstance(document, dict):
        raise RegistrationError("invalid_client_metadata", "the body must be a JSON object")
    uris = document.get("redirect_uris")
    if (
        not isinstance(uris, list)
        or not uris
        or len(uris) > MAX_REDIRECT_URIS
        or not all(isinstance(u, str) and len(u) <= 2048 for u in uris)
    ):
        raise RegistrationError(
            "invalid_redirect_uri",
            f"redirect_uris must list 1 to {MAX_REDIRECT_URIS} URIs",
        )
    from ._clients import validate_redirect_uri

    for uri in uris:
        try:
            validate_redirect_uri(uri)
        except ValueError as e:
            raise RegistrationError("invalid_redirect_uri", str(e)) from None
        if uri.endswith("/*"):
            raise RegistrationError("invalid_redirect_uri", f"redirect URI {uri!r} is a pattern")
    method = document.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise RegistrationError(
            "invalid_client_metadata",
            "token_endpoint_auth_method must be none, client_secret_post or client_secret_basic",
        )
    grants = document.get("grant_types", ["authorization_code"])
    if not isinstance(grants, list) or not grants or not set(grants) <= set(GRANT_TYPES):
        raise RegistrationError(
            "invalid_client_metadata", "grant_types may hold authorization_code and refresh_token"
        )
    if "authorization_code" not in grants:
        raise RegistrationError("invalid_client_metadata", "grant_types needs authorization_code")
    responses = document.get("response_types", ["code"])
    if responses != ["code"]:
        raise RegistrationError("invalid_client_metadata", 'response_types must be ["code"]')
    name = document.get("client_name")
    if name is not None and (not isinstance(name, str) or len(name) > 100):
        raise RegistrationError(
            "invalid_client_metadata", "client_name: text of at most 100 characters"
        )
    scope = document.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise RegistrationError("invalid_client_metadata", "scope must be a string")
    echo: dict[str, Any] = {
        "redirect_uris": uris,
        "token_endpoint_auth_method": method,
        "grant_types": grants,
        "response_types": ["code"],
    }
    if name:
        echo["client_name"] = name
    return {"redirect_uris": uris, "name": name or None}, str(method), echo


class Registration:
    """``POST /oauth/register``: JSON in, 201 JSON out, rate-limited per address."""

    app = Klein()

    def __init__(
        self,
        config: Config,
        codec: TokenCodec,
        store: Any,
        address: Any,
    ) -> None:
        self._config = config
        self._codec = codec
        self._store = store
        self._address = address

    def _error(self, request: IRequest, error: RegistrationError) -> bytes:
        request.setHeader(b"access-control-allow-origin", b"*")
        body = {"error": error.error, "error_description": error.description}
        return bytes(json_body(request, error.status, body))

    @app.route("/oauth/register", methods=["POST"])
    async def handle(self, request: IRequest) -> bytes:
        """RFC 7591 dynamic client registration; errors as RFC 7591 JSON, mapped here."""
        try:
            return await self._handle(request)
        except RegistrationError as e:
            log.info("client registration refused: {error}", error=e.error)
            return self._error(request, e)
        except Exception:
            log.failure("client registration failed")
            return self._error(
                request, RegistrationError("temporarily_unavailable", "try again later", 503)
            )

    async def _handle(self, request: IRequest) -> bytes:
        if not open_registration(self._config):
            raise RegistrationError(
                "invalid_request", "client registration is off on this server", 404
            )
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            raise RegistrationError("invalid_client_metadata", "the body must be application/json")
        content = request.content
        body = content.read(MAX_REGISTRATION_BODY + 1) if content is not None else b""
        if len(body) > MAX_REGISTRATION_BODY:
            raise RegistrationError("invalid_client_metadata", "the request body is too large", 413)
        try:
            document = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise RegistrationError("invalid_client_metadata", "the body is not JSON") from None
        claims, method, echo = _metadata_claims(document)
        address = self._address(request)
        full = await self._store.reserve(
            [(f"register:{address}", self._config.registrations_per_address, 3600)]
        )
        if full is not None:
            request.setHeader(b"retry-after", b"600")
            raise RegistrationError(
                "invalid_request", "too many client registrations from this address", 429
            )
        import secrets

        secret = None if method == "none" else secrets.token_urlsafe(32)
        sealed_claims = client_claims(
            None, None, claims["redirect_uris"], secret, claims["name"], kind="registered"
        )
        assert IClientStore.providedBy(self._store)
        client_id = await register_client(self._store, self._codec, sealed_claims)
        log.info("client {client} registered ({method})", client=client_id, method=method)
        answer: dict[str, Any] = {
            "client_id": client_id,
            "client_id_issued_at": int(self._codec.now()),
            "client_secret_expires_at": 0,
            **echo,
        }
        if secret is not None:
            answer["client_secret"] = secret
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"pragma", b"no-cache")
        return bytes(json_body(request, 201, answer))
