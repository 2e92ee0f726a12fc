"""
Provider sign-in on the login page: "Continue with Microsoft/Google/…"
(issue 18).

For a profile with ``--imap-auth xoauth2|oauthbearer`` the login page asks
for no password.  Its submission (CSRF-checked like any login) starts an
authorization-code flow with PKCE at the provider, mailmcp being the client;
``GET <base>/oauth/provider/callback`` finishes it: the code is exchanged,
the mailbox address learnt, IMAP and SMTP checked live with the token, and
the MCP client's own authorization completed exactly as after a password
login.

**Where the pending request waits.**  Between the two legs the MCP client's
request (client, redirect URI, its ``state`` and PKCE challenge, the scopes
the user chose, the name) and our PKCE verifier for the provider travel in a
cookie sealed with the key ring (`TokenCodec`, its own token kind, ten
minutes), not in the store: any process behind the balancer that has the key
ring can open it, an abandoned sign-in leaves nothing behind, and a flood of
"Continue" clicks cannot fill the store.  The cookie binds the flow to the
browser that started it: the provider's ``state`` must equal the one sealed
in the cookie (a ``state`` alone, from a URL, is worth nothing without it).
It is single use: finishing marks the ``state`` as used in the store (a
counter shared by every process on it, expiring with the cookie), so a
replayed callback is refused, and the cookie is cleared.

**Account-page sign-in.**  ``/account`` for a provider profile runs the same
flow (`ProviderLogin.begin_account`); its pending request is marked as an
account-page sign-in and names only the page's client.  The callback then
learns the mailbox address from the provider, checks it live at the IMAP
server with the token (as the password account page checks the password),
and answers `AccountSignedIn`: the account page opens its usual session for
that address.  Nothing is stored and no grant is made: the provider's tokens
are dropped once checked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.template import Tag, tags

from .._scopes import format_scope, parse_scope
from ..interfaces import ILoginChecker
from ..mail._mailcheck import LoginRejected, MailServerUnavailable, credentials_check
from ..oauth._clients import Client
from ..oauth._grants import CodeRequest, Credentials, GrantService
from ..oauth._throttle import Busy, LoginThrottle, Reservation, Throttled
from ..oauth._tokens import InvalidToken, TokenCodec
from ..oauth._user_servers import brings_servers
from ._client import (
    ProviderClient,
    ProviderProfile,
    ProviderRefused,
    ProviderTokens,
    ProviderUnavailable,
)

log = Logger()

#: Where the provider sends the browser back, under the base URL.
CALLBACK_PATH = "/oauth/provider/callback"
#: Seconds a started provider sign-in may take.
PENDING_LIFETIME = 600
#: The token kind (and key purpose) of the pending-request cookie.
_KIND = "provider-login"
#: Browsers keep cookies up to 4096 bytes; a request that would not fit
#: (a very long redirect URI) is refused rather than silently lost.
MAX_COOKIE = 3900
_ERROR_CODE = re.compile(r"[a-z_]{1,40}")

UNAVAILABLE_TEXT = "Sign-in is temporarily unavailable. Please try again in a minute."
START_AGAIN = (
    "This sign-in has expired, was already used, or was not started in this browser. "
    "Go back to your assistant and connect again."
)


class CallbackRefused(Exception):
    """A callback answered with the error page (never a redirect): forged, replayed, expired."""

    def __init__(self, message: str = START_AGAIN, status: int = 400) -> None:
        super().__init__(message)
        self.title = "Sign-in cannot continue"
        self.message = message
        self.status = status


@attrs.frozen
class Pending:
    """The MCP authorization request waiting for the provider, as sealed in the cookie."""

    client_id: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    resource: str
    #: What the login page offered, and what the user left ticked.
    offered: frozenset[str]
    chosen: frozenset[str]
    full_name: str
    #: Our ``state`` and PKCE verifier with the provider.
    provider_state: str = attrs.field(repr=False)
    verifier: str = attrs.field(repr=False)
    #: An account-page sign-in (no MCP request, no grant), not a login.
    account: bool = False

    def to_claims(self) -> dict[str, Any]:
        return {
            "cid": self.client_id,
            "ru": self.redirect_uri,
            "st": self.state,
            "cc": self.code_challenge,
            "res": self.resource,
            "off": format_scope(self.offered),
            "sc": format_scope(self.chosen),
            "fn": self.full_name,
            "ps": self.provider_state,
            "pv": self.verifier,
            "acc": self.account,
        }

    @classmethod
    def from_claims(cls, c: dict[str, Any]) -> Pending:
        texts = ("cid", "ru", "cc", "res", "off", "sc", "fn", "ps", "pv")
        if not all(isinstance(c.get(k), str) for k in texts):
            raise ValueError("bad pending request")
        if c.get("st") is not None and not isinstance(c["st"], str):
            raise ValueError("bad pending request")
        return cls(
            client_id=c["cid"],
            redirect_uri=c["ru"],
            state=c.get("st"),
            code_challenge=c["cc"],
            resource=c["res"],
            offered=parse_scope(c["off"]),
            chosen=parse_scope(c["sc"]) if c["sc"] else frozenset(),
            full_name=c["fn"],
            provider_state=c["ps"],
            verifier=c["pv"],
            account=c.get("acc") is True,
        )

    def code_request(self, client: Client) -> CodeRequest:
        return CodeRequest(
            client=client,
            redirect_uri=self.redirect_uri,
            code_challenge=self.code_challenge,
            resource=self.resource,
            scopes=self.chosen,
        )


@attrs.frozen
class _Lines:
    """What one kind of provider sign-in says (and logs) when the provider says no."""

    #: How the log lines name it ("provider sign-in", "account sign-in").
    what: str
    cancelled: str
    incomplete: str
    refused: str


_LOGIN_LINES = _Lines(
    what="provider sign-in",
    cancelled="Sign-in at {label} was cancelled or access was not allowed. Nothing was saved.",
    incomplete="{label} did not complete the sign-in ({code}). Nothing was saved; please try again.",
    refused="{label} did not accept the sign-in. Nothing was saved; please try again.",
)
_ACCOUNT_LINES = _Lines(
    what="account sign-in",
    cancelled="Sign-in at {label} was cancelled.",
    incomplete="{label} did not complete the sign-in ({code}). Please try again.",
    refused="{label} did not accept the sign-in. Please try again.",
)
_THROTTLED = "Too many sign-in attempts. Please wait a few minutes before trying again."
_BUSY = "The service is busy checking other sign-ins. Please try again in a moment."


@attrs.frozen
class _Stop:
    """A callback that ends before the grant (or the account page): the line to show."""

    message: str
    status: int = 400
    retry_after: int | None = None


@attrs.frozen
class _Identity:
    """Who the provider signed in: its tokens, the mailbox, the throttle reservation to settle."""

    tokens: ProviderTokens = attrs.field(repr=False)
    email: str
    reservation: Reservation


@attrs.frozen
class Finished:
    """The grant is made: send the browser to C{location} (the MCP client, with its code)."""

    location: str


@attrs.frozen
class TryAgain:
    """Show the login page again, for C{client} and C{pending}, with C{message}."""

    client: Client
    pending: Pending
    message: str
    status: int = 400
    retry_after: int | None = None


@attrs.frozen
class AccountSignedIn:
    """An account-page sign-in succeeded: show C{client}'s page for mailbox C{email}."""

    client: Client
    email: str


@attrs.frozen
class AccountTryAgain:
    """An account-page sign-in failed: show C{client}'s account page with C{message}."""

    client: Client
    message: str
    status: int = 400
    retry_after: int | None = None


def provider_button(label: str) -> Tag:
    """
    The login page's fragment for provider sign-in: what happens, and the
    "Continue with <label>" submit button (the form's CSRF token and scope
    choice go with it).
    """
    return tags.div(class_="provider")(
        tags.p(
            f"You sign in at {label}; this server never sees your password. It checks that it "
            "can read and send your mail with the access you allow there, and keeps that "
            "access encrypted: only the connected assistant's tokens can unlock it.",
            class_="hint",
        ),
        tags.button(
            f"Continue with {label}",
            type="submit",
            id="provider",
            name="action",
            value="provider",
            class_="provider-button",
        ),
    )


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _single(request: IRequest, name: str, limit: int = 4096) -> str | None:
    values = (request.args or {}).get(name.encode("ascii")) or []
    if len(values) != 1 or len(values[0]) > limit:
        return None
    try:
        return str(values[0].decode("utf-8"))
    except UnicodeDecodeError:
        return None


class ProviderDirectory:
    """
    The `ProviderClient` of a grant's profile key, for refreshing its
    provider token (`mailmcp.oauth._grants.GrantService`'s C{provider_for}): ""
    is the daemon's default profile, anything else the id of a provisioned
    client carrying its own (read again from its id or the client store).
    """

    def __init__(
        self, default_profile: ProviderProfile | None, http: Any, clock: IReactorTime
    ) -> None:
        self.default_profile = default_profile
        self.http = http
        self.clock = clock
        #: The client directory (`mailmcp.oauth._registration.ClientDirectory`),
        #: set once it exists.
        self.clients: Any = None

    def client(self, profile: ProviderProfile) -> ProviderClient:
        return ProviderClient(profile, self.http, self.clock)

    async def client_for(self, key: str) -> ProviderClient | None:
        if key == "":
            return None if self.default_profile is None else self.client(self.default_profile)
        if self.clients is None:
            return None
        try:
            found = await self.clients.find(key)
        except Exception:
            log.info("provider profile of client {client} not found", client=key[:40])
            return None
        own = getattr(found, "provider", None)
        return self.client(own) if isinstance(own, ProviderProfile) else None


def http_client(reactor: Any) -> Any:
    """treq on its own connection pool, for the provider's token and userinfo endpoints."""
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    return treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor)))


class ProviderLogin:
    """
    The two legs of provider sign-in; `mailmcp.oauth._app.OAuthApp` renders what
    they answer.

    :param default_profile: ``--imap-auth``/``--oauth-*`` of the daemon's
        default mail profile, for clients that bring no servers.
    :param http: a treq-like client for the provider's endpoints.
    :param record: the audit hook, ``(event, client, outcome, account, error)``.
    :param address_of: the client address throttling charges.
    """

    def __init__(
        self,
        *,
        codec: TokenCodec,
        base_url: str,
        default_profile: ProviderProfile | None,
        grants: GrantService,
        imap_checker: ILoginChecker,
        smtp_checker: ILoginChecker,
        throttle: LoginThrottle,
        http: Any,
        clock: IReactorTime,
        record: Callable[..., None],
        address_of: Callable[[IRequest], str],
    ) -> None:
        self._codec = codec
        self._default = default_profile
        self._grants = grants
        self._imap = imap_checker
        self._smtp = smtp_checker
        self._throttle = throttle
        self._http = http
        self._clock = clock
        self._record = record
        self._address_of = address_of
        self._issuer = base_url
        self.redirect_uri = base_url + CALLBACK_PATH
        self._secure = base_url.startswith("https://")
        self._cookie = b"__Host-mailmcp-provider" if self._secure else b"mailmcp-provider"

    def profile_for(self, client: Client) -> tuple[str, ProviderProfile] | None:
        """
        The provider that signs C{client}'s users in, and its key in the
        grant ("" the default profile, else the client's id), or None for
        password sign-in.
        """
        own = getattr(client, "provider", None)
        if isinstance(own, ProviderProfile):
            return client.client_id, own
        if self._default is not None and not brings_servers(client):
            return "", self._default
        return None

    def provider_client(self, profile: ProviderProfile) -> ProviderClient:
        return ProviderClient(profile, self._http, self._clock)

    # -- first leg: the login page's "Continue with …" ----------------------

    def begin(
        self,
        request: IRequest,
        client: Client,
        *,
        redirect_uri: str,
        state: str | None,
        code_challenge: str,
        resource: str,
        offered: frozenset[str],
        chosen: frozenset[str],
        full_name: str,
    ) -> str:
        """
        Seal the pending request into the browser's cookie and return the
        provider's authorization URL to send the browser to.

        :raises CallbackRefused: when the request is too large for a cookie.
        """
        found = self.profile_for(client)
        assert found is not None
        pending = Pending(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            state=state,
            code_challenge=code_challenge,
            resource=resource,
            offered=offered,
            chosen=chosen,
            full_name=full_name,
            provider_state=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(48),
        )
        return self._start(request, client, found[1], pending)

    def begin_account(self, request: IRequest, client: Client) -> str:
        """
        The account page's "Continue with …": seal an account-page sign-in
        for C{client} (the page's client, "" for the default profile) into
        the browser's cookie and return the provider's authorization URL.
        """
        found = self.profile_for(client)
        assert found is not None
        pending = Pending(
            client_id=client.client_id,
            redirect_uri="",
            state=None,
            code_challenge="",
            resource="",
            offered=frozenset(),
            chosen=frozenset(),
            full_name="",
            provider_state=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(48),
            account=True,
        )
        return self._start(request, client, found[1], pending)

    def _start(
        self, request: IRequest, client: Client, profile: ProviderProfile, pending: Pending
    ) -> str:
        sealed = self._codec.seal(_KIND, pending.to_claims(), PENDING_LIFETIME)
        if len(sealed) > MAX_COOKIE:
            raise CallbackRefused("This sign-in request is too large to continue.", 400)
        self._set_cookie(request, sealed.encode("ascii"), PENDING_LIFETIME)
        log.info(
            "provider sign-in started with {provider} for {what} {client}",
            provider=profile.name,
            what="the account page of" if pending.account else "client",
            client=client.client_id[:40] or "(default profile)",
        )
        return self.provider_client(profile).authorization_url(
            redirect_uri=self.redirect_uri,
            state=pending.provider_state,
            code_challenge=_challenge(pending.verifier),
        )

    def _set_cookie(self, request: IRequest, value: bytes, max_age: int) -> None:
        request.addCookie(  # type: ignore[call-arg]
            self._cookie,
            value,
            path=b"/",
            max_age=str(max_age).encode("ascii"),
            httpOnly=True,
            secure=self._secure,
            # Lax: sent on the provider's top-level GET redirect back to us.
            sameSite="lax",
        )

    # -- second leg: GET /oauth/provider/callback ----------------------------

    async def _pending(self, request: IRequest) -> Pending:
        """
        The pending request this browser started, bound to the ``state`` in
        the URL and used at most once.

        :raises CallbackRefused: for anything else.
        """
        state = _single(request, "state", 256)
        cookie = request.getCookie(self._cookie)
        if not state or not cookie:
            log.info("provider callback refused: no state or no sign-in cookie")
            raise CallbackRefused()
        try:
            pending = Pending.from_claims(self._codec.open(_KIND, cookie))
        except (InvalidToken, ValueError):
            log.info("provider callback refused: the sign-in cookie is invalid or expired")
            raise CallbackRefused() from None
        if not hmac.compare_digest(pending.provider_state.encode(), state.encode()):
            log.info("provider callback refused: state does not match this browser's sign-in")
            raise CallbackRefused()
        # Single use, across every process on the store.
        marker = "provider-login:" + hashlib.sha256(state.encode()).hexdigest()[:32]
        if await self._grants.store.hit(marker, PENDING_LIFETIME + 60) != 1:
            log.info("provider callback refused: this sign-in was already used")
            raise CallbackRefused()
        self._set_cookie(request, b"", 0)
        return pending

    async def finish(
        self,
        request: IRequest,
        find_client: Callable[[str], Awaitable[Client]],
        find_account_client: Callable[[str], Awaitable[Client]] | None = None,
    ) -> Finished | TryAgain | AccountSignedIn | AccountTryAgain:
        """
        Check and finish a provider callback: a login (C{find_client} finds
        its MCP client) or an account-page sign-in (C{find_account_client}
        finds the page's client, "" the default profile).

        :raises CallbackRefused: forged, replayed or expired callbacks.
        """
        pending = await self._pending(request)
        if pending.account:
            if find_account_client is None:
                raise CallbackRefused()
            return await self._finish_account(request, pending, find_account_client)
        try:
            client = await find_client(pending.client_id)
        except Exception:
            log.info("provider callback refused: the client is no longer known")
            raise CallbackRefused() from None
        found = self.profile_for(client)
        if found is None:
            raise CallbackRefused()
        key, profile = found
        label = profile.label
        signed = await self._sign_in_at_provider(request, pending, profile, client, _LOGIN_LINES)
        if isinstance(signed, _Stop):
            return TryAgain(client, pending, signed.message, signed.status, signed.retry_after)
        credentials = _provider_credentials(signed, client, profile, key, pending.full_name)
        refused = await self._check_and_settle(
            credentials, label, signed.reservation, client, ("IMAP", "SMTP")
        )
        if refused is not None:
            return TryAgain(client, pending, refused.message, refused.status, refused.retry_after)
        code = await self._grants.login(pending.code_request(client), credentials)
        log.info("provider sign-in completed with {provider}", provider=profile.name)
        return Finished(self._location(pending, code))

    async def _sign_in_at_provider(
        self,
        request: IRequest,
        pending: Pending,
        profile: ProviderProfile,
        audited: Client | None,
        lines: _Lines,
    ) -> _Identity | _Stop:
        """
        The part of a callback that a login and an account-page sign-in
        share: the provider's answer, the throttle, the code exchange and
        the mailbox address.  A refusal is recorded and logged here; the
        caller turns the `_Stop` into its own page.  On success the
        throttle reservation is the caller's to settle.
        """
        label = profile.label
        error = _single(request, "error", 256)
        if error is not None:
            code = error if _ERROR_CODE.fullmatch(error) else "unknown"
            log.info(
                "{what} not completed: {provider} said {error}",
                what=lines.what,
                provider=profile.name,
                error=code,
            )
            self._record("login", audited, "error", None, "provider " + code)
            if code == "access_denied":
                return _Stop(lines.cancelled.format(label=label))
            return _Stop(lines.incomplete.format(label=label, code=code))
        code_param = _single(request, "code")
        if not code_param:
            raise CallbackRefused()
        try:
            reservation = await self._throttle.admit(self._address_of(request), [])
        except Throttled as e:
            self._record("login", audited, "error", None, "throttled")
            return _Stop(_THROTTLED, 429, e.retry_after)
        provider = self.provider_client(profile)
        try:
            tokens = await provider.exchange_code(code_param, pending.verifier, self.redirect_uri)
            email = await provider.mailbox_address(tokens)
        except ProviderRefused as e:
            await self._throttle.settle(reservation, None)
            log.info(
                "{what} refused by {provider}: {reason}",
                what=lines.what,
                provider=profile.name,
                reason=str(e),
            )
            self._record("login", audited, "error", None, "provider refused")
            return _Stop(lines.refused.format(label=label))
        except ProviderUnavailable as e:
            await self._throttle.settle(reservation, None)
            log.warn(
                "provider {provider} unavailable: {reason}", provider=profile.name, reason=str(e)
            )
            self._record("login", audited, "error", None, "provider unavailable")
            return _Stop(f"{label} could not be reached. Please try again in a minute.", 503)
        return _Identity(tokens, email, reservation)

    async def _check_and_settle(
        self,
        credentials: Credentials,
        label: str,
        reservation: Reservation,
        audited: Client | None,
        protocols: Sequence[str],
        where: str = "",
    ) -> _Stop | None:
        """
        The live check with the provider's token under the throttle's slot,
        then the reservation settled and the outcome recorded: None when
        every server accepted the token.
        """
        try:
            with self._throttle.slot():
                problem = await self._check_mail(credentials, label, protocols, where)
        except Busy:
            await self._throttle.settle(reservation, None)
            self._record("login", audited, "error", credentials.email, "busy")
            return _Stop(_BUSY, 503, 5)
        await self._throttle.settle(reservation, None)
        self._record("login", audited, "error" if problem else "ok", credentials.email)
        return None if problem is None else _Stop(problem)

    def _location(self, pending: Pending, code: str) -> str:
        """The MCP client's redirect URI with the code, exactly as after a password login."""
        params = [("code", code)]
        if pending.state is not None:
            params.append(("state", pending.state))
        params.append(("iss", self._issuer))
        uri = pending.redirect_uri
        return uri + ("&" if urlsplit(uri).query else "?") + urlencode(params)

    async def _check_mail(
        self, credentials: Credentials, label: str, protocols: Sequence[str], where: str = ""
    ) -> str | None:
        """
        C{protocols} (IMAP, then SMTP) with the provider's token: None, or the
        line to show.  C{where} prefixes the log lines.
        """
        checkers = {"IMAP": self._imap, "SMTP": self._smtp}
        for protocol in protocols:
            server, username, secret, mechanism = credentials_check(credentials, protocol)
            try:
                await checkers[protocol].check(server, username, secret, mechanism=mechanism)
            except LoginRejected:
                log.info(
                    "{where}{protocol} {mechanism} login rejected by {host}",
                    where=where,
                    protocol=protocol,
                    mechanism=mechanism,
                    host=server.host,
                )
                return (
                    f"{protocol}: the mail server did not accept the sign-in from {label} "
                    "for this mailbox."
                )
            except MailServerUnavailable as e:
                log.warn(
                    "{where}{protocol} server {host} unavailable: {reason}",
                    where=where,
                    protocol=protocol,
                    host=server.host,
                    reason=e.reason,
                )
                return f"{protocol}: the mail server could not be reached securely. Please try again later."
        return None

    async def _finish_account(
        self,
        request: IRequest,
        pending: Pending,
        find_client: Callable[[str], Awaitable[Client]],
    ) -> AccountSignedIn | AccountTryAgain:
        """
        An account-page sign-in: the provider's identity, then a live IMAP
        login with its token (the proof the password page asks for: this
        token opens this mailbox on this server).  Throttled and audited
        like the page's password sign-in; nothing is stored.
        """
        try:
            client = await find_client(pending.client_id)
        except Exception:
            log.info("account sign-in refused: the client is no longer known")
            raise CallbackRefused() from None
        found = self.profile_for(client)
        if found is None:
            raise CallbackRefused()
        key, profile = found
        audited = client if client.client_id else None
        signed = await self._sign_in_at_provider(request, pending, profile, audited, _ACCOUNT_LINES)
        if isinstance(signed, _Stop):
            return AccountTryAgain(client, signed.message, signed.status, signed.retry_after)
        credentials = _provider_credentials(signed, client, profile, key, "")
        refused = await self._check_and_settle(
            credentials, profile.label, signed.reservation, audited, ("IMAP",), "account page: "
        )
        if refused is not None:
            return AccountTryAgain(client, refused.message, refused.status, refused.retry_after)
        # The tokens go out of scope here: an account-page sign-in is no grant.
        log.info("account sign-in completed with {provider}", provider=profile.name)
        return AccountSignedIn(client, signed.email)


def _provider_credentials(
    signed: _Identity, client: Client, profile: ProviderProfile, key: str, full_name: str
) -> Credentials:
    """The mail credentials of a provider sign-in: the token stands for both passwords."""
    return Credentials(
        email=signed.email,
        full_name=full_name,
        imap=client.imap,
        imap_username=signed.email,
        imap_password="",
        smtp=client.smtp,
        smtp_username=signed.email,
        smtp_password="",
        imap_auth=profile.imap_auth,
        provider=key,
        oauth=signed.tokens,
    )
