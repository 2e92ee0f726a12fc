"""
``/account``: the user's own page, to see and disconnect connected apps.

Signing in uses the login page's parts unchanged: the same CSRF cookie and
token, the same login throttle (a wrong password here spends the same
budgets as there) and the same live IMAP check.  The mailbox's server comes
from a client id this server issued (``?client_id=``, as in the link the
assistant's connector uses) or, without one, from the daemon's default mail
profile (``--imap-host`` ...), so the page never logs in to a server the
operator did not provision.

After a successful check, the page is stateless: the forms carry a sealed,
short-lived account session (the IMAP server and username, never the
password), opened again on each revocation.  Grants are found through their
account index (`mailmcp.oauth._grants.account_index`).

For a provider profile (``--imap-auth xoauth2|oauthbearer``) the page asks
for no password: "Continue with <provider>" runs provider sign-in
(`mailmcp.provider._login.ProviderLogin.begin_account`), and the provider
callback hands the mailbox address back here (`provider_outcome`), which
opens the same session as a password sign-in and hands it to ``GET
/account`` in a one-use cookie (a 303, so the browser does not stay at the
callback URL with the provider's code in it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.web.iweb import IRequest
from twisted.web.template import Element, Tag, XMLFile, renderer, tags
from werkzeug.exceptions import HTTPException

from .._scopes import ALL_SCOPES, FULL, LABELS
from .._templates import template_path
from ..mail._mailcheck import LoginRejected, MailServerUnavailable
from ..provider._login import AccountSignedIn, AccountTryAgain, CallbackRefused
from ._app import OAuthApp
from ._cimd import ClientMetadataError
from ._clients import Client, MailServer
from ._errors import BadRequest
from ._forms import CONTROL, MAX_FORM_BODY, body_size, single
from ._grants import AccountGrants, GrantRecord
from ._pages import error_page, flatten, page_headers, redirect
from ._throttle import Busy, Throttled
from ._tokens import InvalidToken

log = Logger()

#: Seconds an account session (the sealed hidden field) stays usable.
SESSION_LIFETIME = 600
_SESSION_KIND = "account"
FULL_ACCESS = "full access"
NO_ACCESS = "no access (sign in again from your assistant)"

#: The one-use cookie carrying a provider sign-in's session to GET /account.
HANDOFF_COOKIE = b"mailmcp-account"

SIGN_IN_FAILED = "Sign-in failed. Please check your username and password."


def _when(seconds: int) -> str:
    if not seconds:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def _scopes(record: GrantRecord, max_scope: frozenset[str]) -> Tag | str:
    """
    What the grant may do now, in the login page's words: what it was
    granted (grants from before scopes: everything), within ``--max-scope``
    (which also narrows grants made before it was lowered).
    """
    allowed = record.scopes & max_scope
    if allowed == FULL:
        return FULL_ACCESS
    if not allowed:
        return NO_ACCESS
    return tags.ul(
        [tags.li(LABELS[s], class_="app-scope") for s in ALL_SCOPES if s in allowed],
        class_="app-scope-list",
    )


class _AccountPage(Element):
    loader = XMLFile(FilePath(str(template_path("account.xhtml"))))

    def __init__(
        self,
        server: MailServer,
        csrf: str,
        client_id: str,
        values: Mapping[str, str] | None = None,
        errors: list[str] | None = None,
        notice: str | None = None,
        session: str | None = None,
        apps: list[GrantRecord] | None = None,
        max_scope: frozenset[str] = FULL,
        base_path: str = "",
        provider_label: str | None = None,
    ) -> None:
        super().__init__()
        #: "Continue with <label>" instead of the password form; None: passwords.
        self._provider_label = provider_label
        #: The --base-url's path: the page's own URLs live under it.
        self._base_path = base_path
        self._server = server
        self._csrf = csrf
        self._client_id = client_id
        self._values = values or {}
        self._errors = errors or []
        self._notice = notice
        self._session = session
        self._apps = apps or []
        self._max_scope = max_scope

    @renderer
    def page(self, request: IRequest, tag: Tag) -> Tag:
        return tag.fillSlots(
            stylesheet=self._base_path + "/oauth/static/login.css",
            form_action=self._base_path + "/account",
            imap_host=f"{self._server.host}:{self._server.port}",
            email=self._values.get("email", ""),
            imap_username=self._values.get("imap_username", ""),
        )

    @renderer
    def errors(self, request: IRequest, tag: Tag) -> Tag | str:
        if not self._errors:
            return ""
        return tags.div(
            tags.ul([tags.li(e, class_="error-line") for e in self._errors]),
            class_="errors",
            role="alert",
        )

    @renderer
    def notice(self, request: IRequest, tag: Tag) -> Tag | str:
        if not self._notice:
            return ""
        return tags.p(self._notice, class_="notice", role="status", id="notice")

    @renderer
    def signin(self, request: IRequest, tag: Tag) -> Tag | str:
        return "" if self._session is not None else tag

    @renderer
    def password_signin(self, request: IRequest, tag: Tag) -> Tag | str:
        return "" if self._provider_label is not None else tag

    @renderer
    def provider_signin(self, request: IRequest, tag: Tag) -> Tag | str:
        """A provider profile's sign-in: one button, no password field."""
        label = self._provider_label
        if label is None:
            return ""
        fields = [
            ("action", "provider"),
            ("client_id", self._client_id),
            ("csrf_token", self._csrf),
        ]
        return tag(
            tags.p(
                f"Sign in at {label} to see which assistants can use your mail, and to "
                "disconnect them. This server never sees your password, and nothing is saved "
                "by signing in here.",
                class_="intro",
            ),
            tags.form(
                [tags.input(type="hidden", name=n, value=v) for n, v in fields if v],
                tags.button(
                    f"Continue with {label}",
                    type="submit",
                    id="provider",
                    class_="provider-button",
                ),
                method="post",
                id="signin",
                action=self._base_path + "/account",
            ),
        )

    @renderer
    def signin_hidden(self, request: IRequest, tag: Tag) -> list[Tag]:
        fields = [("action", "sign_in"), ("client_id", self._client_id), ("csrf_token", self._csrf)]
        return [tags.input(type="hidden", name=n, value=v) for n, v in fields if v]

    def _form(self, action: str, label: str, button_id: str, grant: str | None = None) -> Tag:
        assert self._session is not None
        fields = [
            ("action", action),
            ("client_id", self._client_id),
            ("session", self._session),
            ("csrf_token", self._csrf),
        ]
        if grant is not None:
            fields.append(("grant", grant))
        return tags.form(
            [tags.input(type="hidden", name=n, value=v) for n, v in fields if v],
            tags.button(label, type="submit", id=button_id, class_="revoke"),
            method="post",
            action=self._base_path + "/account",
        )

    @renderer
    def apps(self, request: IRequest, tag: Tag) -> Tag | str:
        if self._session is None:
            return ""
        if not self._apps:
            return tags.p("No app is connected to this mailbox.", class_="intro", id="no-apps")
        rows = []
        for record in self._apps:
            rows.append(
                tags.li(
                    tags.div(record.client_name or "Unnamed app", class_="app-name"),
                    tags.dl(
                        tags.dt("Access"),
                        tags.dd(_scopes(record, self._max_scope), class_="app-scopes"),
                        tags.dt("Connected"),
                        tags.dd(_when(record.created), class_="app-connected"),
                        tags.dt("Last used"),
                        tags.dd(_when(record.last_used), class_="app-last-used"),
                    ),
                    self._form(
                        "revoke", "Disconnect", f"revoke-{record.grant_id}", record.grant_id
                    ),
                    class_="app",
                    id=f"app-{record.grant_id}",
                )
            )
        return tags.div(
            tags.ul(rows, class_="apps"),
            tags.div(
                self._form("revoke_all", "Disconnect all apps", "revoke-all"), class_="revoke-all"
            ),
        )


class AccountApp:
    """
    The ``/account`` routes, sharing the login page's CSRF, throttle and
    IMAP check (C{oauth}'s `mailmcp.oauth.OAuthParts`).  Page errors
    (`BadRequest`) are mapped to the error page in one place.
    """

    app = Klein()

    def __init__(self, oauth: OAuthApp, accounts: AccountGrants) -> None:
        self._parts = oauth.parts
        self._accounts = accounts
        self._codec = oauth.parts.codec
        # The provider callback hands account-page sign-ins back here.
        oauth.parts.account_page = self

    @app.handle_errors(BadRequest)
    def _bad_request(self, request: IRequest, failure: Failure) -> Deferred[bytes]:
        error = failure.value
        assert isinstance(error, BadRequest)
        return Deferred.fromCoroutine(error_page(request, error, self._parts.base_path))

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> Deferred[bytes]:
        if failure.check(HTTPException):
            failure.raiseException()  # no route here: Klein's own 404 or 405
        log.failure("account page request failed", failure)
        unavailable = BadRequest(
            "Temporarily unavailable",
            "This page is temporarily unavailable. Please try again in a minute.",
            503,
        )
        return Deferred.fromCoroutine(error_page(request, unavailable, self._parts.base_path))

    async def _client(self, args: Mapping[bytes, list[bytes]]) -> Client:
        """
        The client whose mail server the page signs in against: the one
        ``client_id`` names or, without one, the default mail profile (as a
        client with no id).
        """
        return await self.find_client(single(args, "client_id") or "")

    async def find_client(self, client_id: str) -> Client:
        """The page's client for C{client_id} ("": the default mail profile)."""
        if not client_id:
            config = self._parts.config
            if config.default_imap is not None and config.default_smtp is not None:
                return Client(
                    client_id="",
                    imap=config.default_imap,
                    smtp=config.default_smtp,
                    redirect_uris=(),
                    secret_hash=None,
                    kind="default",
                )
            raise BadRequest(
                "Which mailbox?",
                "This server has no default mail server, so this page needs the client_id "
                "parameter: open it as /account?client_id=... with your connector's client ID "
                "(ask whoever set up the connector for the link).",
            )
        try:
            # Any kind of client id: compact, stored (mc_...), metadata URL, long.
            return await self._parts.find_client(client_id)
        except InvalidToken:
            raise BadRequest(
                "Unknown application", "This client ID was not issued by this server."
            ) from None
        except ClientMetadataError as e:
            raise BadRequest("Unknown application", str(e)) from None

    async def _render(
        self, request: IRequest, client: Client, status: int = 200, **kw: Any
    ) -> bytes:
        parts = self._parts
        csrf = parts.csrf.form_token(request)
        request.setResponseCode(status)
        provider = parts.provider_for(client)
        # form-action must let "Continue with …" redirect to the provider.
        page_headers(request, None, provider.authorize_url if provider is not None else None)
        return await flatten(
            _AccountPage(
                client.imap,
                csrf,
                client.client_id,
                max_scope=parts.config.max_scope,
                base_path=parts.base_path,
                provider_label=provider.label if provider is not None else None,
                **kw,
            )
        )

    @app.route("/account", methods=["GET", "HEAD"])
    async def show(self, request: IRequest) -> bytes:
        client = await self._client(request.args or {})
        # Only a GET uses the handoff up: a HEAD (prefetch) must not.
        handed = self._handed_off(request, client) if request.method == b"GET" else None
        if handed is not None:
            return await self._show_apps(request, client, *handed)
        return await self._render(request, client)

    @app.route("/account", methods=["PUT", "DELETE", "PATCH"])
    def wrong_method(self, request: IRequest) -> bytes:
        request.setHeader(b"allow", b"GET, HEAD, POST")
        raise BadRequest("Invalid request", "Use the form on this page.", 405)

    @app.route("/account", methods=["POST"])
    async def submit(self, request: IRequest) -> bytes:
        if body_size(request) > MAX_FORM_BODY:
            raise BadRequest("Request too large", "The form was too large.", 413)
        args: Mapping[bytes, list[bytes]] = request.args or {}
        client = await self._client(args)
        if not self._parts.csrf.check(request, single(args, "csrf_token")):
            log.info("account form refused: missing or wrong CSRF token")
            raise BadRequest(
                "Session expired",
                "This form has expired or was not sent from this site. Reload the page and "
                "sign in again.",
                403,
            )
        action = single(args, "action")
        provider = self._parts.provider_for(client)
        if action == "provider" and provider is not None:
            return self._provider_begin(request, client)
        if action == "sign_in" and provider is not None:
            # A provider mailbox has no password here: say what to use.
            return await self._render(
                request,
                client,
                400,
                errors=[f"This mailbox signs in with {provider.label}: use the button below."],
            )
        if action == "sign_in":
            return await self._sign_in(request, client, args)
        if action in ("revoke", "revoke_all"):
            return await self._revoke(request, client, args, action)
        raise BadRequest("Invalid request", "Use the form on this page.")

    def _provider_begin(self, request: IRequest, client: Client) -> bytes:
        """ "Continue with <provider>": off to the provider, marked as an account-page sign-in."""
        provider_login = self._parts.provider_login
        assert provider_login is not None
        try:
            location = provider_login.begin_account(request, client)
        except CallbackRefused as e:
            raise BadRequest(e.title, e.message, e.status) from None
        return redirect(request, location)

    async def provider_outcome(
        self, request: IRequest, outcome: AccountSignedIn | AccountTryAgain
    ) -> bytes:
        """
        The provider callback of an account-page sign-in: signed in, the
        same session as after a password sign-in; else the page with the
        one-line reason.
        """
        client = outcome.client
        if isinstance(outcome, AccountTryAgain):
            if outcome.retry_after is not None:
                request.setHeader(b"retry-after", str(outcome.retry_after).encode("ascii"))
            return await self._render(request, client, outcome.status, errors=[outcome.message])
        session = self._codec.seal(
            _SESSION_KIND,
            {"srv": client.imap.to_claims(), "u": outcome.email},
            SESSION_LIFETIME,
        )
        # Hand the session to GET /account in a one-use cookie, so the page
        # (and the browser's history) does not stay at the callback URL with
        # the provider's code in it.
        self._handoff_cookie(request, session.encode("ascii"), SESSION_LIFETIME)
        where = self._parts.base_path + "/account"
        if client.client_id:
            where += "?" + urlencode({"client_id": client.client_id})
        return redirect(request, where)

    def _handoff_cookie(self, request: IRequest, value: bytes, max_age: int) -> None:
        secure = self._parts.issuer.startswith("https://")
        request.addCookie(  # type: ignore[call-arg]
            HANDOFF_COOKIE,
            value,
            path=(self._parts.base_path + "/account").encode("utf-8"),
            max_age=str(max_age).encode("ascii"),
            httpOnly=True,
            secure=secure,
            # Lax: sent on the 303 that follows the provider's top-level redirect.
            sameSite="lax",
        )

    def _handed_off(self, request: IRequest, client: Client) -> tuple[str, str] | None:
        """The session a provider sign-in handed over, used up; None: none (or not this mailbox)."""
        cookie = request.getCookie(HANDOFF_COOKIE)
        if not cookie:
            return None
        self._handoff_cookie(request, b"", 0)
        try:
            session = cookie.decode("ascii")
            claims = self._codec.open(_SESSION_KIND, session)
            server = MailServer.from_claims(claims.get("srv"))
            username = claims["u"]
            if not isinstance(username, str) or server != client.imap:
                return None
        except (InvalidToken, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        return session, username

    async def _sign_in(
        self, request: IRequest, client: Client, args: Mapping[bytes, list[bytes]]
    ) -> bytes:
        values = {n: single(args, n, 4096) or "" for n in ("email", "imap_username")}
        password = single(args, "imap_password", 4096) or ""
        username = values["imap_username"]
        errors = []
        if not username or len(username) > 256 or CONTROL.search(username):
            errors.append("Username: please enter your mailbox username.")
        if not password or len(password.encode("utf-8")) > 1024 or CONTROL.search(password):
            errors.append("Password: please enter your mailbox password.")
        if errors:
            return await self._render(request, client, 400, values=values, errors=errors)
        throttle = self._parts.throttle
        try:
            reservation = await throttle.admit(self._parts.client_address(request), [username])
        except Throttled as e:
            request.setHeader(b"retry-after", str(e.retry_after).encode("ascii"))
            return await self._render(
                request,
                client,
                429,
                values=values,
                errors=[
                    "Too many sign-in attempts. Please wait a few minutes before trying again."
                ],
            )
        failed: str | None = None
        try:
            with throttle.slot():
                await self._parts.imap.check(client.imap, username, password)
        except Busy:
            await throttle.settle(reservation, None)
            request.setHeader(b"retry-after", b"5")
            return await self._render(
                request,
                client,
                503,
                values=values,
                errors=[
                    "The service is busy checking other sign-ins. Please try again in a moment."
                ],
            )
        except LoginRejected:
            log.info("account page: IMAP login rejected by {host}", host=client.imap.host)
            failed = "IMAP: the mail server rejected this username or password."
        except MailServerUnavailable as e:
            log.warn(
                "account page: IMAP server {host} unavailable: {reason}",
                host=client.imap.host,
                reason=e.reason,
            )
            failed = "IMAP: the mail server could not be reached securely. Please try again later."
        await throttle.settle(reservation, username if failed else None)
        if failed is not None:
            return await self._render(request, client, 400, values=values, errors=[failed])
        session = self._codec.seal(
            _SESSION_KIND,
            {"srv": client.imap.to_claims(), "u": username},
            SESSION_LIFETIME,
        )
        return await self._show_apps(request, client, session, username)

    async def _show_apps(
        self,
        request: IRequest,
        client: Client,
        session: str,
        username: str,
        notice: str | None = None,
    ) -> bytes:
        apps = await self._accounts.grants(client.imap, username)
        return await self._render(request, client, session=session, apps=apps, notice=notice)

    async def _revoke(
        self, request: IRequest, client: Client, args: Mapping[bytes, list[bytes]], action: str
    ) -> bytes:
        session = single(args, "session") or ""
        try:
            claims = self._codec.open(_SESSION_KIND, session)
            server = MailServer.from_claims(claims.get("srv"))
            username = claims["u"]
            if not isinstance(username, str) or server != client.imap:
                raise InvalidToken()
        except (InvalidToken, ValueError, KeyError, TypeError):
            return await self._render(
                request,
                client,
                403,
                errors=["Your session on this page has expired. Please sign in again."],
            )
        if action == "revoke_all":
            count = await self._accounts.revoke_all(server, username)
            notice = f"Disconnected {count} app{'s' if count != 1 else ''}."
        else:
            done = await self._accounts.revoke_one(server, username, single(args, "grant") or "")
            notice = "The app was disconnected." if done else "That app was already disconnected."
        # The audit trail (LG-06); the default profile is no client.
        self._parts.record("revoke", client if client.client_id else None, "ok", username)
        return await self._show_apps(request, client, session, username, notice)
