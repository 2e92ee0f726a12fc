"""
The login room: ``GET``/``POST /oauth/authorize``.  The page asks for the
mailbox's credentials (and, with ``--allow-user-servers``, its servers),
checks them live against IMAP and SMTP under the login throttle, and
redirects back to the client with a code.  For a provider profile
(``--imap-auth xoauth2``) it offers "Continue with <provider>" instead, and
``GET /oauth/provider/callback`` finishes that sign-in
(`mailmcp.provider._login`).

Errors are mapped in one place (`LoginRoom`'s ``handle_errors``): a
`BadRequest` is the error page, a `RedirectError` goes back to the
client's (validated) redirect URI, anything else is logged and shown as
"temporarily unavailable".  Validation and rendering live in
`mailmcp.oauth._forms` and `mailmcp.oauth._pages`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from ..mail._mailcheck import LoginRejected, MailServerUnavailable
from ..provider._login import AccountSignedIn, AccountTryAgain, CallbackRefused, Finished
from ._cimd import ClientMetadataError
from ._clients import Client, MailServer
from ._errors import UNAVAILABLE, BadRequest, RedirectError
from ._forms import (
    CONTROL,
    EMAIL,
    FORM_FIELDS,
    MAX_FORM_BODY,
    MAX_STATE,
    AuthorizeRequest,
    add_query,
    body_size,
    chosen_scopes,
    field_errors,
    parse_servers,
    server_values,
    single,
    validate_authorize,
)
from ._grants import CodeRequest, Credentials, client_ref
from ._pages import LoginForm, error_page, flatten, page_headers, redirect
from ._parts import OAuthParts
from ._throttle import Busy, Throttled
from ._tokens import InvalidToken
from ._user_servers import ServerPolicy, ServerRefused, Suggestion, brings_servers, discover

log = Logger()

GENERIC_FAILURE = "Sign-in failed. Nothing was saved; please check the details below and try again."
THROTTLED_TEXT = "Too many sign-in attempts. Please wait a few minutes before trying again."
BUSY_TEXT = "The service is busy checking other sign-ins. Please try again in a moment."


@attrs.frozen
class _Refusal:
    """Why a sign-in was refused: the status, the line to show, and when to retry."""

    status: int
    line: str
    retry_after: int | None = None


class LoginRoom:
    """
    The login page.

    :param parts: what the rooms share (`OAuthParts`).
    :param resolver: with ``--allow-user-servers``, DNS (`twisted.names`)
        for the SRV prefill and the address check of user-named servers.
    """

    app = Klein()

    def __init__(self, parts: OAuthParts, resolver: Any = None) -> None:
        self._parts = parts
        self._resolver = resolver
        config = parts.config
        self._server_policy = (
            ServerPolicy(config.user_servers_allow, resolver)
            if config.allow_user_servers and resolver is not None
            else None
        )

    # -- the one error mapping of the page ---------------------------------

    @app.handle_errors(BadRequest)
    def _bad_request(self, request: IRequest, failure: Failure) -> Deferred[bytes]:
        error = failure.value
        assert isinstance(error, BadRequest)
        return Deferred.fromCoroutine(error_page(request, error, self._parts.base_path))

    @app.handle_errors(RedirectError)
    def _redirect_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, RedirectError)
        log.info("authorization request refused: {error}", error=error.error)
        params = [("error", error.error), ("error_description", error.description)]
        if error.state is not None:
            params.append(("state", error.state))
        params.append(("iss", self._parts.issuer))
        return redirect(request, add_query(error.redirect_uri, params))

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> Deferred[bytes]:
        if failure.check(HTTPException):
            failure.raiseException()  # no route here: Klein's own 404 or 405
        # The store is down or similar: say so, keep details in the log.
        log.failure("login could not be completed", failure)
        return Deferred.fromCoroutine(error_page(request, UNAVAILABLE, self._parts.base_path))

    # -- the authorization request ----------------------------------------

    async def _validate_client(
        self, args: Mapping[bytes, list[bytes]]
    ) -> tuple[Client, str, str | None]:
        client_id = single(args, "client_id")
        if not client_id:
            raise BadRequest("Unknown application", "The request does not name a client.")
        try:
            client = await self._parts.find_client(client_id)
        except InvalidToken:
            raise BadRequest(
                "Unknown application", "This client ID was not issued by this server."
            ) from None
        except ClientMetadataError as e:
            raise BadRequest("Unknown application", str(e)) from None
        except Exception:
            # The store is down or similar: say so, keep details in the log.
            log.failure("client {client} could not be looked up", client=client_id[:100])
            raise UNAVAILABLE from None
        redirect_uri = single(args, "redirect_uri")
        if not redirect_uri or not client.allows_redirect(redirect_uri):
            raise BadRequest(
                "Unregistered redirect address",
                "The redirect address is not registered for this client, so sign-in cannot continue.",
            )
        state = single(args, "state", MAX_STATE)
        return client, redirect_uri, state

    async def _authorize_request(self, request: IRequest, form: bool = False) -> AuthorizeRequest:
        """
        The validated request.

        :raises BadRequest: no known client or redirect URI, or a revoked client.
        :raises RedirectError: anything else wrong with it.
        """
        args: Mapping[bytes, list[bytes]] = request.args or {}
        client, redirect_uri, state = await self._validate_client(args)
        config = self._parts.config
        areq = validate_authorize(
            args, client, redirect_uri, state, config.mcp_url, config.max_scope, form
        )
        # Showing the form does not depend on the store (a store that is
        # down answers the submission); creating a grant does.
        await self._refuse_denied(areq.client, fail_open=request.method != b"POST")
        return areq

    async def _refuse_denied(self, client: Client, fail_open: bool = False) -> None:
        """
        :raises BadRequest: when the operator revoked C{client} (issue 15),
            or (unless C{fail_open}) when the deny-list cannot be read.
        """
        try:
            denied = await self._parts.grants.store.client_denied(client_ref(client.client_id))
        except Exception as e:
            log.error("deny-list check failed: {kind}", kind=type(e).__name__)
            if fail_open:
                return
            raise UNAVAILABLE from None
        if denied:
            log.info(
                "authorization refused: client {client} revoked",
                client=client_ref(client.client_id),
            )
            raise BadRequest(
                "Application revoked",
                "The operator of this server has revoked this application's access.",
                403,
            )

    async def _login_page(
        self,
        request: IRequest,
        areq: AuthorizeRequest,
        status: int = 200,
        values: Mapping[str, str] | None = None,
        same: bool = True,
        errors: list[str] | None = None,
        message: str | None = None,
        chosen: frozenset[str] | None = None,
        servers: Mapping[str, str] | None = None,
    ) -> bytes:
        csrf = self._parts.csrf.form_token(request, areq.scope)
        request.setResponseCode(status)
        provider = self._parts.provider_for(areq.client)
        page_headers(
            request, areq.redirect_uri, provider.authorize_url if provider is not None else None
        )
        if servers is None and self._asks_servers(areq.client):
            servers = server_values(values or {}, Suggestion(), self._parts.config)
        return await flatten(
            LoginForm(
                areq,
                csrf,
                values or {},
                same,
                errors or [],
                message,
                chosen,
                base_path=self._parts.base_path,
                servers=servers,
                provider_label=provider.label if provider is not None else None,
            )
        )

    # -- user-named servers (--allow-user-servers) -------------------------

    def _asks_servers(self, client: Client) -> bool:
        """Whether the user names the mail servers: allowed, and the client brings none."""
        return (
            self._server_policy is not None
            and not brings_servers(client)
            and self._parts.provider_for(client) is None
        )

    async def _discovered(self, request: IRequest, email: str) -> Suggestion:
        """
        The SRV suggestion for C{email}.  Each lookup spends one of the
        client address's login attempts, so the page cannot be made to send
        DNS queries without bound; past the budget the page just comes
        unfilled.
        """
        email = email.strip()
        if not EMAIL.fullmatch(email) or len(email) > 254 or self._resolver is None:
            return Suggestion()
        throttle = self._parts.throttle
        try:
            reservation = await throttle.admit(self._parts.client_address(request), [])
        except Throttled:
            return Suggestion()
        await throttle.settle(reservation, None)
        return await discover(self._resolver, email)

    # -- routes -----------------------------------------------------------

    @app.route("/oauth/authorize", methods=["GET", "HEAD"])
    async def authorize_form(self, request: IRequest) -> bytes:
        areq = await self._authorize_request(request)
        hint = single(request.args or {}, "login_hint", 254)
        if hint and self._asks_servers(areq.client):
            # Rendered with an email: prefill its domain's servers (RFC 6186).
            values = {"email": hint.strip()}
            found = await self._discovered(request, hint)
            return await self._login_page(
                request,
                areq,
                values=values,
                servers=server_values(values, found, self._parts.config),
            )
        return await self._login_page(request, areq)

    @app.route("/oauth/authorize", methods=["POST"])
    async def authorize_submit(self, request: IRequest) -> bytes:
        if body_size(request) > MAX_FORM_BODY:
            raise BadRequest("Request too large", "The form was too large.", 413)
        areq = await self._authorize_request(request, form=True)
        args: Mapping[bytes, list[bytes]] = request.args or {}
        values: dict[str, str] = {}
        for name in FORM_FIELDS:
            values[name] = single(args, name, 4096) or ""
        if not self._parts.csrf.check(request, values["csrf_token"], areq.scope):
            log.info("login form refused: missing or wrong CSRF token")
            raise BadRequest(
                "Session expired",
                "This sign-in form has expired or was not sent from this site. "
                "Go back to your assistant and start again.",
                403,
            )
        chosen = chosen_scopes(args, areq)
        if self._parts.provider_for(areq.client) is not None:
            return await self._provider_submit(request, areq, values, chosen)
        same = values["use_same_credentials"] == "1"
        if same:
            values["smtp_username"] = values["imap_username"]
            values["smtp_password"] = values["imap_password"]
        kept = {k: v for k, v in values.items() if "password" not in k and k != "csrf_token"}
        if same:
            kept["smtp_username"] = ""

        async def again(status: int, errors: list[str]) -> bytes:
            """The form once more, as the user filled it (without passwords)."""
            return await self._login_page(
                request, areq, status, kept, same, errors, GENERIC_FAILURE, chosen
            )

        imap, smtp = areq.client.imap, areq.client.smtp
        asks = self._asks_servers(areq.client)
        if asks and values["action"] == "discover":
            # "Find my servers": look the domain up, sign nobody in.
            found = await self._discovered(request, values["email"])
            shown = server_values({"email": values["email"]}, found, self._parts.config)
            return await self._login_page(
                request, areq, 200, kept, same, chosen=chosen, servers=shown
            )
        errors = field_errors(values, same)
        if asks:
            server_errors, named = parse_servers(values)
            errors += server_errors
            if not errors:
                imap, smtp = named
        if not chosen:
            errors.append("Access: choose at least one thing the assistant may do.")
        if errors:
            return await again(400, errors)

        email = values["email"].strip()
        refusal = await self._sign_in_check(request, areq.client, email, values, imap, smtp, asks)
        if refusal is not None:
            if refusal.retry_after is not None:
                request.setHeader(b"retry-after", str(refusal.retry_after).encode("ascii"))
            return await again(refusal.status, [refusal.line])

        credentials = Credentials(
            email=email,
            full_name=values["full_name"].strip(),
            imap=imap,
            imap_username=values["imap_username"],
            imap_password=values["imap_password"],
            smtp=smtp,
            smtp_username=values["smtp_username"],
            smtp_password=values["smtp_password"],
        )
        code = await self._parts.grants.login(
            CodeRequest(
                client=areq.client,
                redirect_uri=areq.redirect_uri,
                code_challenge=areq.code_challenge,
                resource=areq.resource,
                scopes=chosen,
            ),
            credentials,
        )
        params = [("code", code)]
        if areq.state is not None:
            params.append(("state", areq.state))
        params.append(("iss", self._parts.issuer))
        return redirect(request, add_query(areq.redirect_uri, params))

    # -- provider sign-in ("Continue with …", issue 18) ---------------------

    async def _provider_submit(
        self,
        request: IRequest,
        areq: AuthorizeRequest,
        values: Mapping[str, str],
        chosen: frozenset[str],
    ) -> bytes:
        """ "Continue with <provider>": the name and scopes checked, off to the provider."""
        provider_login = self._parts.provider_login
        assert provider_login is not None
        kept = {"full_name": values["full_name"]}
        errors = []
        if len(values["full_name"]) > 128 or CONTROL.search(values["full_name"]):
            errors.append("Your name: at most 128 characters, no control characters.")
        if not chosen:
            errors.append("Access: choose at least one thing the assistant may do.")
        if errors:
            return await self._login_page(
                request, areq, 400, kept, errors=errors, message=GENERIC_FAILURE, chosen=chosen
            )
        try:
            location = provider_login.begin(
                request,
                areq.client,
                redirect_uri=areq.redirect_uri,
                state=areq.state,
                code_challenge=areq.code_challenge,
                resource=areq.resource,
                offered=areq.scopes,
                chosen=chosen,
                full_name=values["full_name"].strip(),
            )
        except CallbackRefused as e:
            raise BadRequest(e.title, e.message, e.status) from None
        return redirect(request, location)

    @app.route("/oauth/provider/callback", methods=["GET"])
    async def provider_callback(self, request: IRequest) -> bytes:
        """The provider sends the browser back here (`mailmcp.provider._login`)."""
        provider_login = self._parts.provider_login
        if provider_login is None or request.method != b"GET":
            # Klein answers HEAD with GET's route; a prefetch must not use the sign-in up.
            raise BadRequest("Not found", "There is nothing here.", 404)

        async def find(client_id: str) -> Client:
            # A client the operator revoked meanwhile finishes nothing.
            client = await self._parts.find_client(client_id)
            await self._refuse_denied(client)
            return client

        account_page = self._parts.account_page
        try:
            outcome = await provider_login.finish(
                request, find, None if account_page is None else account_page.find_client
            )
        except CallbackRefused as e:
            raise BadRequest(e.title, e.message, e.status) from None
        if isinstance(outcome, (AccountSignedIn, AccountTryAgain)):
            # An account-page sign-in: that page answers, signed in or not.
            page: bytes = await account_page.provider_outcome(request, outcome)
            return page
        if isinstance(outcome, Finished):
            return redirect(request, outcome.location)
        pending = outcome.pending
        areq = AuthorizeRequest(
            client=outcome.client,
            redirect_uri=pending.redirect_uri,
            state=pending.state,
            code_challenge=pending.code_challenge,
            resource=pending.resource,
            scopes=pending.offered,
        )
        if outcome.retry_after is not None:
            request.setHeader(b"retry-after", str(outcome.retry_after).encode("ascii"))
        return await self._login_page(
            request,
            areq,
            outcome.status,
            {"full_name": pending.full_name},
            message=outcome.message,
            chosen=pending.chosen,
        )

    # -- the live checks ----------------------------------------------------

    async def _sign_in_check(
        self,
        request: IRequest,
        client: Client,
        email: str,
        values: Mapping[str, str],
        imap: MailServer,
        smtp: MailServer,
        asks: bool,
    ) -> _Refusal | None:
        """
        The throttle, the server policy (user-named servers) and the live
        IMAP and SMTP checks, in that order, each audited.  None: signed in.
        """
        throttle = self._parts.throttle
        try:
            # Every username tried spends from its budget: guessing the SMTP
            # password behind a valid IMAP login is throttled like IMAP.
            reservation = await throttle.admit(
                self._parts.client_address(request),
                [values["imap_username"], values["smtp_username"]],
            )
        except Throttled as e:
            self._parts.record("login", client, "error", email, "throttled")
            return _Refusal(429, THROTTLED_TEXT, e.retry_after)
        if asks:
            # Before any connection, and throttled like one: only where the
            # policy allows (OA-32).
            refused = await self._servers_refused(imap, smtp)
            if refused is not None:
                self._parts.record("login", client, "error", email, "server not allowed")
                await throttle.settle(reservation, None)
                return _Refusal(400, refused)
        try:
            with throttle.slot():
                problem = await self._check_mail(imap, smtp, values)
        except Busy:
            self._parts.record("login", client, "error", email, "busy")
            await throttle.settle(reservation, None)
            return _Refusal(503, BUSY_TEXT, 5)
        # The username whose check failed keeps its charge, and so do the
        # failure budgets; the rest is handed back.  (Should the check itself
        # raise, nothing is handed back.)
        await throttle.settle(reservation, problem[0] if problem else None)
        self._parts.record("login", client, "error" if problem else "ok", email)
        return None if problem is None else _Refusal(400, problem[1])

    async def _servers_refused(self, imap: MailServer, smtp: MailServer) -> str | None:
        """Why the policy refuses the user's servers (`ServerRefused`), or None."""
        assert self._server_policy is not None
        try:
            await self._server_policy.check("IMAP", imap)
            await self._server_policy.check("SMTP", smtp)
        except ServerRefused as e:
            return str(e)
        return None

    async def _check_mail(
        self, imap: MailServer, smtp: MailServer, values: Mapping[str, str]
    ) -> tuple[str, str] | None:
        """
        IMAP first, then SMTP (only when IMAP accepted).  Returns None, or
        (the username to count a failure against, the line to show).  A
        server that could not be reached counts as a failure too: what it
        would have said about the password is unknown.
        """
        checks = [
            ("IMAP", self._parts.imap, imap, values["imap_username"], values["imap_password"]),
            ("SMTP", self._parts.smtp, smtp, values["smtp_username"], values["smtp_password"]),
        ]
        for label, checker, server, user, password in checks:
            try:
                await checker.check(server, user, password)
            except LoginRejected:
                log.info("{protocol} login rejected by {host}", protocol=label, host=server.host)
                return user, f"{label}: the mail server rejected this username or password."
            except MailServerUnavailable as e:
                log.warn(
                    "{protocol} server {host} unavailable: {reason}",
                    protocol=label,
                    host=server.host,
                    reason=e.reason,
                )
                return (
                    user,
                    f"{label}: the mail server could not be reached securely. Please try again later.",
                )
        return None
