"""
The transport gate of ``/mcp``: the HTTP checks a request passes before
its body is read as JSON-RPC, in a fixed order that matters:

1. the Bearer token (before anything else, so an unauthenticated client,
   whatever it sends, learns where to log in from the ``401``);
2. the ``Origin`` (DNS rebinding), the HTTP method (``405`` for the GET
   listen stream and DELETE), ``Content-Type``, ``Accept``;
3. admission (`mailmcp.web._admission.Admission`): the mailbox's share and the
   queue (``503`` with ``Retry-After`` past them), then the body size.

Each check gives the account (or None: pass) or an `Answer`, the complete
refusal; nothing is raised to return early.  The gate also answers a
scope refusal with the MCP step-up challenge, and admits bodies over the
unauthenticated cap (`mailmcp.web._http.ILargeBodyGate`) once the token is
verified from the headers.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.web.iweb import IRequest

from .._account import MailAccount
from .._config import Config
from .._logging import Logger
from .._paths import resource_metadata_url
from .._scopes import ALL_SCOPES, format_scope
from ..interfaces import IAccessTokenVerifier
from ..oauth._tokens import MAX_TOKEN_LENGTH, InvalidToken
from ..web._admission import Admission, Refused
from ..web._cors import CORSPolicy, origin_of
from ..web._http import SMALL_BODY, Refusal
from ._dispatch import ROUTING_HEADERS, Headers
from ._jsonrpc import INVALID_REQUEST, encode, error_message
from ._results import InsufficientScope

log = Logger()

#: RFC 6750 ``b64token``.
_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
#: Bodies up to this size are decoded on the reactor thread (a few
#: milliseconds at worst); larger ones on the decode thread pool, so that one
#: large body cannot stall every other request.
DECODE_ON_REACTOR_MAX = SMALL_BODY
#: JSON-RPC error code (implementation-defined range) for "too busy, retry".
SERVER_BUSY = -32001


@attrs.frozen
class Answer:
    """A complete HTTP answer given instead of serving the request: status, JSON body, headers."""

    status: int
    body: Any
    headers: tuple[tuple[bytes, bytes], ...] = ()


@attrs.frozen
class Body:
    """A request body that passed the size check: how to read it, and whether it is large."""

    read: Callable[[], bytes]
    large: bool


def account_key(account: MailAccount) -> Hashable:
    """
    Whose share of ``/mcp`` a request takes: the mailbox (server and user
    name), not the grant, so that logging in many times buys no more.
    """
    return (account.imap.host.lower(), account.imap.port, account.imap_username)


def _media_types(value: str) -> list[str]:
    return [part.split(";", 1)[0].strip().lower() for part in value.split(",")]


def _rpc_refusal(status: int, message: str) -> Answer:
    return Answer(status, error_message(None, INVALID_REQUEST, message))


def _empty() -> bytes:
    return b""


class TransportGate:
    """
    The HTTP checks of ``/mcp``.

    :param config: the daemon's config (base URL, allowed origins).
    :param verifier: provides `mailmcp.interfaces.IAccessTokenVerifier`.
    :param admission: how many requests are worked on at once, with each
        account's share.
    :param max_body: the largest body ``/mcp`` accepts.
    """

    def __init__(
        self, config: Config, verifier: IAccessTokenVerifier, admission: Admission, max_body: int
    ) -> None:
        self._verifier = verifier
        self._admission = admission
        self._max_body = max_body
        self._resource_metadata = resource_metadata_url(config.base_url)
        # The same origins the CORS headers name (see mailmcp.web._cors).
        self.cors = CORSPolicy.from_config(config)
        self._origins = self.cors.origins
        #: Large bodies (admitted by `admit_large_body`) arriving or being
        #: served, per mailbox, and how many one mailbox may have at once.
        self._uploads: dict[Hashable, int] = {}
        self._max_uploads = max(1, admission.per_account // 4)
        #: Accounts verified at headers time by `admit_large_body`, for `authenticate`.
        self.verified: weakref.WeakKeyDictionary[IRequest, MailAccount] = (
            weakref.WeakKeyDictionary()
        )

    # -- 1. the token ----------------------------------------------------------

    def _challenge(self, status: int, error: str | None, description: str | None) -> Answer:
        challenge = f'Bearer resource_metadata="{self._resource_metadata}"'
        if status == 401:
            # Which scopes to ask for (MCP scope selection): all of them.
            challenge += f', scope="{" ".join(ALL_SCOPES)}"'
        body: dict[str, str] = {"error": error or "unauthorized"}
        if error is not None:
            challenge += f', error="{error}"'
        if description is not None:
            challenge += f', error_description="{description}"'
            body["error_description"] = description
        return Answer(status, body, ((b"www-authenticate", challenge.encode("ascii")),))

    async def authenticate(self, request: IRequest) -> MailAccount | Answer:
        """
        The account the request's Bearer token grants, or the RFC 6750
        challenge.  Never logs the token.
        """
        if request.args and (b"access_token" in request.args):
            return self._challenge(
                401, "invalid_request", "Access tokens are not accepted in the URL"
            )
        known = self.verified.pop(request, None)
        if known is not None:
            return known
        values = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(values) > 1:
            return self._challenge(400, "invalid_request", "More than one Authorization header")
        if not values:
            return self._challenge(401, None, None)
        scheme, _, credentials = values[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return self._challenge(401, None, None)
        token = credentials.strip(b" ")
        if not token or len(token) > MAX_TOKEN_LENGTH or not _B64TOKEN.fullmatch(token):
            return self._challenge(401, "invalid_token", None)
        try:
            outcome = self._verifier.verify(token.decode("ascii"))
            # Checked below: a verifier is a replaceable part.
            account: object = await outcome if inspect.isawaitable(outcome) else outcome
        except InvalidToken:
            return self._challenge(401, "invalid_token", None)
        except (CancelledError, asyncio.CancelledError):
            raise
        except Exception:
            log.failure("access token verification failed unexpectedly")
            return Answer(
                503,
                {"error": "temporarily_unavailable", "error_description": "Try again shortly"},
                ((b"retry-after", b"5"),),
            )
        if not isinstance(account, MailAccount):
            log.error(
                "token verifier returned {kind} instead of an account", kind=type(account).__name__
            )
            return self._challenge(401, "invalid_token", None)
        return account

    def insufficient_scope(self, account: MailAccount, refusal: InsufficientScope) -> Answer:
        """
        The MCP step-up challenge: 403 ``insufficient_scope`` whose
        ``scope`` is what the call needs plus what the token already has,
        so that authorizing again widens the grant instead of swapping it.
        """
        wanted = format_scope(refusal.needed | account.scopes)
        missing = format_scope(refusal.needed - account.scopes)
        log.info(
            "tool {tool} for {owner} refused: the token lacks {missing}",
            tool=refusal.tool,
            owner=account.owner,
            missing=missing,
        )
        description = f"{refusal.tool} needs {missing}; authorize again to allow it"
        challenge = (
            f'Bearer error="insufficient_scope", scope="{wanted}", '
            f'resource_metadata="{self._resource_metadata}", '
            f'error_description="{description}"'
        )
        body = {"error": "insufficient_scope", "error_description": description}
        return Answer(403, body, ((b"www-authenticate", challenge.encode("ascii")),))

    # -- 2. Origin, method, media types ----------------------------------------

    def check(self, request: IRequest) -> Answer | None:
        """The Origin, the method, Content-Type and Accept: None if all pass."""
        return (
            self._check_origin(request)
            or self._check_method(request)
            or self._check_content_type(request)
            or self._check_accept(request)
        )

    def _check_origin(self, request: IRequest) -> Answer | None:
        values = request.requestHeaders.getRawHeaders(b"origin") or []
        if not values:
            return None
        if len(values) == 1:
            origin = origin_of(values[0].decode("latin-1"))
            if origin is not None and origin in self._origins:
                return None
        log.info("refused /mcp request from a foreign Origin")
        return _rpc_refusal(403, "Forbidden: Origin not allowed")

    def _check_method(self, request: IRequest) -> Answer | None:
        if request.method == b"POST":
            return None
        refusal = _rpc_refusal(405, "Method not allowed: use POST")
        return attrs.evolve(refusal, headers=((b"allow", b"POST"),))

    def _check_content_type(self, request: IRequest) -> Answer | None:
        value = request.getHeader(b"content-type")
        if value is None or _media_types(value.decode("latin-1"))[0] != "application/json":
            return _rpc_refusal(
                415, "Unsupported Media Type: Content-Type must be application/json"
            )
        return None

    def _check_accept(self, request: IRequest) -> Answer | None:
        value = request.getHeader(b"accept")
        if value is None:
            return None
        accepted = _media_types(value.decode("latin-1"))
        if not any(kind in ("application/json", "application/*", "*/*") for kind in accepted):
            return _rpc_refusal(406, "Not Acceptable: responses are application/json")
        return None

    # -- 3. admission and size ---------------------------------------------------

    async def enter(self, account: MailAccount) -> Answer | None:
        """
        Take the request's place in admission (None), or the ``503`` that
        says to retry; a request that entered must `leave`.
        """
        try:
            await self._admission.enter(account_key(account))
        except Refused as refused:
            # Debug only: a flood would otherwise write a log line per refusal
            # (Admission.refused counts them).
            log.debug(
                "/mcp request for {owner} refused: {reason}",
                owner=account.owner,
                reason=refused.reason,
            )
            data = {"retryAfter": refused.retry_after, "reason": refused.reason}
            return Answer(
                503,
                error_message(None, SERVER_BUSY, refused.message, data),
                ((b"retry-after", b"%d" % (refused.retry_after,)),),
            )
        return None

    def leave(self, account: MailAccount) -> None:
        """Give back the place `enter` took."""
        self._admission.leave(account_key(account))

    def body(self, request: IRequest) -> Body | Answer:
        """The body, if within ``max_body`` (else ``413``), and whether it is large."""
        content = request.content
        if content is None:
            return Body(_empty, False)
        content.seek(0, 2)
        size = content.tell()
        content.seek(0)
        if size > self._max_body:
            return _rpc_refusal(
                413, f"Request body too large: /mcp accepts at most {self._max_body} bytes."
            )
        return Body(content.read, size > DECODE_ON_REACTOR_MAX)

    def routing_headers(self, request: IRequest) -> Headers:
        """The MCP routing headers, as the dispatcher reads them."""
        found: dict[str, list[str]] = {}
        for name in ROUTING_HEADERS:
            values = request.requestHeaders.getRawHeaders(name.encode("ascii"))
            if values:
                found[name] = [value.decode("latin-1") for value in values]
        return found

    # -- large bodies ------------------------------------------------------------

    async def admit_large_body(self, request: IRequest) -> Refusal | None:
        """
        Admit a body over the unauthenticated cap once the request's Bearer
        token is verified (from the headers, before the body is read),
        within the mailbox's share of large uploads; otherwise the answer
        `authenticate` gives (401 and its challenge) is sent at once.  The
        account is kept for `authenticate`.
        """
        account = await self.authenticate(request)
        if isinstance(account, Answer):
            body = write(request, account)
            # Written before the router sees the request: add the CORS
            # headers it would (a browser client must read the 401).
            self.cors.annotate(request)
            headers = tuple(
                (name, value)
                for name, values in request.responseHeaders.getAllRawHeaders()
                for value in values
            )
            return Refusal(account.status, body, headers)
        key = account_key(account)
        if self._uploads.get(key, 0) >= self._max_uploads:
            # Each large body waits on disk until it is all in: bound how
            # many one mailbox sends at once.
            message = (
                f"Too many large requests in progress for this account (at most "
                f"{self._max_uploads} over {SMALL_BODY} bytes at once); retry shortly."
            )
            data = {"retryAfter": 1, "reason": "account"}
            return Refusal(
                503,
                encode(error_message(None, SERVER_BUSY, message, data)),
                ((b"Retry-After", b"1"),),
            )
        self._uploads[key] = self._uploads.get(key, 0) + 1
        finished: Deferred[None] = request.notifyFinish()  # type: ignore[attr-defined]
        finished.addBoth(lambda _: self._upload_done(key))
        self.verified[request] = account
        return None

    def _upload_done(self, key: Hashable) -> None:
        count = self._uploads.get(key, 0) - 1
        if count > 0:
            self._uploads[key] = count
        else:
            self._uploads.pop(key, None)


def reply(request: IRequest, status: int, data: bytes) -> bytes:
    """Write the status and headers of a JSON answer of C{data} on C{request}; give C{data}."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", str(len(data)).encode("ascii"))
    return data


def write(request: IRequest, answer: Answer) -> bytes:
    """Write C{answer} (its headers, status, encoded body) on C{request}."""
    for name, value in answer.headers:
        request.setHeader(name, value)
    return reply(request, answer.status, encode(answer.body))
