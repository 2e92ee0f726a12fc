"""
The token room: ``/oauth/token`` (authorization code and refresh token
grants) and ``/oauth/revoke`` (RFC 7009), with client authentication
(client_secret_basic, client_secret_post, none).

Every answer is RFC 6749 JSON; `OAuthError` becomes the error JSON in one
place, `TokenRoom._answer`, which also writes the audit entry.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

import attrs
from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ..web._http import json_body
from ._cimd import ClientMetadataError
from ._clients import Client
from ._grants import OAuthError, client_ref
from ._parts import OAuthParts
from ._tokens import InvalidToken

log = Logger()

MAX_TOKEN_BODY = 8192
#: The audit event of each token grant type.
TOKEN_EVENTS = {"authorization_code": "token", "refresh_token": "refresh"}
_NOT_POST = ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]


@attrs.define
class _Exchange:
    """What a request has told us so far, for its audit entry."""

    event: str
    client: Client | None = None
    #: The grant's mailbox, once known (`TokenSet.account`).
    account: str | None = None


def error_json(request: IRequest, error: OAuthError, basic: bool = False) -> bytes:
    """RFC 6749 §5.2 error JSON (with a Basic challenge for a Basic 401)."""
    if error.status == 401 and basic:
        request.setHeader(b"www-authenticate", b'Basic realm="mailmcp"')
    request.setHeader(b"pragma", b"no-cache")
    body: dict[str, str] = {"error": error.error}
    if error.description:
        body["error_description"] = error.description
    encoded: bytes = json_body(request, error.status, body)
    return encoded


def read_form(request: IRequest) -> dict[str, str]:
    """
    The request body as single-valued parameters.

    :raises OAuthError: for a query string, a wrong content type, a
        body too large, or a repeated parameter.
    """
    if b"?" in (request.uri or b""):
        raise OAuthError("invalid_request", "URL query parameters are not allowed")
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype != b"application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    content = request.content
    body = content.read(MAX_TOKEN_BODY + 1) if content is not None else b""
    if len(body) > MAX_TOKEN_BODY:
        raise OAuthError("invalid_request", "the request body is too large", 413)
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the body is not UTF-8") from None
    form: dict[str, str] = {}
    for name, values in parsed.items():
        if len(values) != 1:
            raise OAuthError("invalid_request", f"parameter {name} repeated")
        form[name] = values[0]
    return form


class TokenRoom:
    """``/oauth/token`` and ``/oauth/revoke``."""

    app = Klein()

    def __init__(self, parts: OAuthParts) -> None:
        self._parts = parts

    async def _answer(
        self,
        request: IRequest,
        exchange: _Exchange,
        handle: Callable[[_Exchange], Awaitable[dict[str, Any]]],
        failed: str,
        log_refusal: bool,
    ) -> bytes:
        """
        The one error mapping of this room: C{handle}'s JSON with 200, or
        its `OAuthError` as error JSON; anything else is logged and answered
        ``temporarily_unavailable``.  Each outcome is audited.
        """
        basic = request.getHeader(b"authorization") is not None
        try:
            body = await handle(exchange)
        except OAuthError as e:
            if log_refusal:
                log.info("token request refused: {error}", error=e.error)
            self._parts.record(exchange.event, exchange.client, "error", error=e.error)
            return error_json(request, e, basic)
        except Exception:
            log.failure(failed)
            self._parts.record(exchange.event, exchange.client, "error")
            return error_json(
                request, OAuthError("temporarily_unavailable", "try again later", 503)
            )
        self._parts.record(exchange.event, exchange.client, "ok", exchange.account)
        request.setHeader(b"pragma", b"no-cache")
        encoded: bytes = json_body(request, 200, body)
        return encoded

    async def _authenticate_client(self, request: IRequest, form: Mapping[str, str]) -> Client:
        """
        client_secret_basic, client_secret_post, or none (public clients).

        :raises OAuthError: ``invalid_client`` (401) or ``invalid_request``.
        """
        headers = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(headers) > 1:
            raise OAuthError("invalid_request", "more than one Authorization header")
        client_id = form.get("client_id")
        secret = form.get("client_secret")
        if headers:
            scheme, _, value = headers[0].partition(b" ")
            if scheme.lower() != b"basic":
                raise OAuthError("invalid_client", "unsupported client authentication", 401)
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
                raw_id, sep, raw_secret = decoded.partition(":")
                if not sep:
                    raise ValueError("no colon")
            except (binascii.Error, ValueError, UnicodeDecodeError):
                raise OAuthError("invalid_client", "malformed Basic credentials", 401) from None
            if secret is not None or (client_id is not None and client_id != unquote(raw_id)):
                raise OAuthError("invalid_request", "use one client authentication method")
            client_id, secret = unquote(raw_id), unquote(raw_secret)
        if not client_id:
            raise OAuthError("invalid_client", "client authentication failed", 401)
        try:
            client = await self._parts.find_client(client_id)
        except (InvalidToken, ClientMetadataError):
            # Unknown (or from a key ring since replaced): Claude re-registers on 401.
            raise OAuthError("invalid_client", "client authentication failed", 401) from None
        if client.is_public:
            if secret:
                raise OAuthError("invalid_client", "client authentication failed", 401)
        elif not client.check_secret(secret):
            raise OAuthError("invalid_client", "client authentication failed", 401)
        return client

    @app.route("/oauth/token", methods=["POST"])
    async def token(self, request: IRequest) -> bytes:
        async def handle(exchange: _Exchange) -> dict[str, Any]:
            form = read_form(request)
            client = exchange.client = await self._authenticate_client(request, form)
            if await self._parts.grants.store.client_denied(client_ref(client.client_id)):
                raise OAuthError("invalid_client", "this client has been revoked", 401)
            grant_type = form.get("grant_type")
            if not grant_type:
                raise OAuthError("invalid_request", "grant_type is required")
            exchange.event = TOKEN_EVENTS.get(grant_type, "token")
            grants = self._parts.grants
            if grant_type == "authorization_code":
                tokens = await grants.redeem_code(
                    client,
                    form.get("code"),
                    form.get("redirect_uri"),
                    form.get("code_verifier"),
                    form.get("resource"),
                )
            elif grant_type == "refresh_token":
                tokens = await grants.refresh(
                    client, form.get("refresh_token"), form.get("resource")
                )
            else:
                raise OAuthError(
                    "unsupported_grant_type", "use authorization_code or refresh_token"
                )
            exchange.account = tokens.account
            answer: dict[str, Any] = tokens.to_json()
            return answer

        return await self._answer(
            request, _Exchange("token"), handle, "token request failed", log_refusal=True
        )

    @app.route("/oauth/revoke", methods=["POST"])
    async def revoke(self, request: IRequest) -> bytes:
        async def handle(exchange: _Exchange) -> dict[str, Any]:
            form = read_form(request)
            exchange.client = await self._authenticate_client(request, form)
            exchange.account = await self._parts.grants.revoke(exchange.client, form.get("token"))
            return {}

        return await self._answer(
            request, _Exchange("revoke"), handle, "revocation failed", log_refusal=False
        )

    # CORS preflights of the token, revocation and registration endpoints
    # (browser clients such as the Inspector) are answered by the router,
    # for the origins the operator allowed: see mailmcp.web._cors.

    @app.route("/oauth/token", methods=_NOT_POST)
    def token_wrong_method(self, request: IRequest) -> bytes:
        return _use_post(request)

    @app.route("/oauth/revoke", methods=_NOT_POST)
    def revoke_wrong_method(self, request: IRequest) -> bytes:
        return _use_post(request)


def _use_post(request: IRequest) -> bytes:
    request.setHeader(b"allow", b"POST")
    return error_json(request, OAuthError("invalid_request", "use POST", 405))
