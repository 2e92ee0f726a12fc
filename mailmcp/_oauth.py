"""
The OAuth 2.1 authorization server: discovery documents, the login page
(which checks IMAP and SMTP credentials live), the token endpoint and
revocation.

Clients are provisioned by ``twistd mailmcp-generate`` (they name their
mail servers), registered at ``/oauth/register`` (RFC 7591), or named by a
Client ID Metadata Document URL; the last two log in to the daemon's
default mail profile and are on only when it has one.  Finding a client by
id is `mailmcp._registration.ClientDirectory`'s job, fetching documents
`mailmcp._cimd`'s.

Everything public is derived from ``config.base_url``, never from ``Host`` or
``X-Forwarded-*``; the issuer string is identical in both metadata documents
and in the ``iss`` authorization-response parameter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import secrets
import sqlite3
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import attrs
from klein import Klein
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from twisted.web.iweb import IRequest
from twisted.web.template import Element, Tag, XMLFile, flattenString, renderer, tags

from ._audit import Audit
from ._cimd import PINNED_DIR as _PINNED_DIR
from ._cimd import ClientMetadataError, ClientMetadataResolver, MetadataFetcher, load_pinned
from ._clients import Client, MailServer
from ._config import Config
from ._grants import (
    AccountGrants,
    CodeRequest,
    Credentials,
    GrantService,
    OAuthError,
    canonical_resource,
    client_ref,
)
from ._http import json_body as _json_body
from ._mailcheck import LoginRejected, MailServerUnavailable
from ._paths import base_path, metadata_paths
from ._provider_login import (
    CallbackRefused,
    Finished,
    ProviderDirectory,
    ProviderLogin,
    http_client,
    provider_button,
)
from ._registration import ClientDirectory, Registration, open_registration
from ._scopes import ALL_SCOPES, LABELS, UnknownScope, format_scope, parse_scope
from ._templates import template_path
from ._throttle import Busy, LoginThrottle, Throttled, ThrottlePolicy, client_address
from ._tokens import InvalidToken, TokenCodec
from ._user_servers import (
    USER_SECURITY,
    ServerPolicy,
    ServerRefused,
    Suggestion,
    brings_servers,
    discover,
)
from .interfaces import ILoginChecker

log = Logger()

_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_EMAIL = re.compile(r"[^@\s<>()\[\]\",;:\\]{1,64}@[^@\s<>()\[\]\",;:\\]{1,253}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PARAM = 8192
MAX_STATE = 2048
MAX_TOKEN_BODY = 8192
MAX_FORM_BODY = 65536
OAUTH_PARAMS = (
    "client_id",
    "redirect_uri",
    "response_type",
    "state",
    "code_challenge",
    "code_challenge_method",
    "scope",
    "resource",
)
#: The login page's server fields, asked when the user names the servers.
SERVER_FIELDS = (
    "imap_host",
    "imap_port",
    "imap_security",
    "smtp_host",
    "smtp_port",
    "smtp_security",
)
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)+"
)
FORM_FIELDS = (
    "email",
    "full_name",
    "imap_username",
    "imap_password",
    "use_same_credentials",
    "smtp_username",
    "smtp_password",
    "csrf_token",
    "action",
    *SERVER_FIELDS,
)
#: The login form carries the scopes offered (what the client asked for,
#: after the caps) under this name; ``scope`` is the user's checkboxes.
OFFERED_SCOPE = "requested_scope"

UNAVAILABLE_TEXT = "Sign-in is temporarily unavailable. Please try again in a minute."
GENERIC_FAILURE = "Sign-in failed. Nothing was saved; please check the details below and try again."


class BadRequest(Exception):
    """A request we answer with the error page (never a redirect)."""

    def __init__(self, title: str, message: str, status: int = 400) -> None:
        super().__init__(title)
        self.title = title
        self.message = message
        self.status = status


UNAVAILABLE = BadRequest("Temporarily unavailable", UNAVAILABLE_TEXT, 503)


class RedirectError(Exception):
    """An authorization error sent back to the (validated) redirect URI."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(error)
        self.error = error
        self.description = description


@attrs.frozen
class AuthorizeRequest:
    """A validated authorization request."""

    client: Client
    redirect_uri: str
    state: str | None
    code_challenge: str
    resource: str
    #: What the login page offers: the requested scopes after the client's
    #: and the daemon's caps.  The user may only narrow it.
    scopes: frozenset[str]

    @property
    def scope(self) -> str:
        return format_scope(self.scopes)

    def hidden_fields(self) -> list[tuple[str, str]]:
        fields = [
            ("client_id", self.client.client_id),
            ("redirect_uri", self.redirect_uri),
            ("response_type", "code"),
            ("code_challenge", self.code_challenge),
            ("code_challenge_method", "S256"),
            (OFFERED_SCOPE, self.scope),
            ("resource", self.resource),
        ]
        if self.state is not None:
            fields.append(("state", self.state))
        return fields


def _single(args: Mapping[bytes, list[bytes]], name: str, limit: int = MAX_PARAM) -> str | None:
    """One parameter: absent → None; repeated, oversized or not UTF-8 → BadRequest."""
    values = args.get(name.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest("Invalid request", f"The parameter {name} was given more than once.")
    raw = values[0]
    if len(raw) > limit:
        raise BadRequest("Invalid request", f"The parameter {name} is too long.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("Invalid request", f"The parameter {name} is not valid text.") from None


def _host_of(uri: str) -> str:
    parts = urlsplit(uri)
    return parts.netloc.rsplit("@", 1)[-1]


def _origin_of(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.scheme}://{_host_of(uri)}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _add_query(uri: str, params: list[tuple[str, str]]) -> str:
    return uri + ("&" if urlsplit(uri).query else "?") + urlencode(params)


class _Page(Element):
    """The login page, rendered with twisted.web.template (auto-escaping)."""

    loader = XMLFile(FilePath(str(template_path("login.xhtml"))))

    def __init__(
        self,
        request: AuthorizeRequest,
        csrf: str,
        values: Mapping[str, str],
        same: bool,
        errors: list[str],
        message: str | None,
        chosen: frozenset[str] | None = None,
        base_path: str = "",
        servers: Mapping[str, str] | None = None,
        provider_label: str | None = None,
    ) -> None:
        super().__init__()
        #: With provider sign-in: "Continue with <label>", no password fields.
        self._provider_label = provider_label
        self._chosen = request.scopes if chosen is None else chosen
        self._base_path = base_path
        self._servers = servers
        self._request = request
        self._csrf = csrf
        self._values = values
        self._same = same
        self._errors = errors
        self._message = message

    @renderer
    def hidden(self, request: IRequest, tag: Tag) -> list[Tag]:
        fields = [*self._request.hidden_fields(), ("csrf_token", self._csrf)]
        return [tags.input(type="hidden", name=name, value=value) for name, value in fields]

    @renderer
    def errors(self, request: IRequest, tag: Tag) -> Tag | str:
        if not self._errors and not self._message:
            return ""
        box = tags.div(class_="errors", role="alert")
        if self._message:
            box(tags.p(self._message, class_="error-generic"))
        if self._errors:
            box(tags.ul([tags.li(e, class_="error-line") for e in self._errors]))
        return box

    @renderer
    def scopes(self, request: IRequest, tag: Tag) -> list[Tag]:
        """One checkbox per offered scope, in plain words, checked unless unticked."""
        boxes = []
        for scope in ALL_SCOPES:
            if scope not in self._request.scopes:
                continue
            box = tags.input(
                type="checkbox", name="scope", value=scope, id="scope-" + scope.replace(".", "-")
            )
            if scope in self._chosen:
                box(checked="checked")
            boxes.append(
                tags.li(
                    box,
                    tags.label(LABELS[scope], for_="scope-" + scope.replace(".", "-")),
                    class_="scope",
                )
            )
        return boxes

    @renderer
    def same_checkbox(self, request: IRequest, tag: Tag) -> Tag:
        box = tags.input(
            type="checkbox", id="use_same_credentials", name="use_same_credentials", value="1"
        )
        if self._same:
            box(checked="checked")
        return box

    @renderer
    def page(self, request: IRequest, tag: Tag) -> Tag:
        return tag.fillSlots(**self.slots())

    @renderer
    def fixed_servers(self, request: IRequest, tag: Tag) -> Tag | str:
        """The client's own servers, named; nothing when the user names them."""
        return tag if self._servers is None and self._provider_label is None else ""

    @renderer
    def password_fields(self, request: IRequest, tag: Tag) -> Tag | str:
        """Email, usernames and passwords: not with provider sign-in."""
        return tag if self._provider_label is None else ""

    @renderer
    def provider_button(self, request: IRequest, tag: Tag) -> Tag | str:
        """ "Continue with <provider>" (`mailmcp._provider_login`)."""
        if self._provider_label is None:
            return ""
        return provider_button(self._provider_label)

    @renderer
    def server_fields(self, request: IRequest, tag: Tag) -> Tag | str:
        """The user's servers (host, port, security each), prefilled (`mailmcp._user_servers`)."""
        if self._servers is None:
            return ""
        values = self._servers
        box = tags.fieldset(class_="user-servers")(
            tags.legend("Your mail servers"),
            tags.p(
                "Filled in from your email address where its domain publishes them; "
                "check them with your mail provider's settings.",
                class_="hint",
            ),
        )
        for kind, label in (
            ("imap", "IMAP server (reading mail)"),
            ("smtp", "SMTP server (sending mail)"),
        ):
            security = tags.select(id=f"{kind}_security", name=f"{kind}_security")
            for value, text in (("tls", "SSL/TLS"), ("starttls", "STARTTLS")):
                option = tags.option(text, value=value)
                if values.get(f"{kind}_security", "tls") == value:
                    option(selected="selected")
                security(option)
            box(
                tags.label(label, for_=f"{kind}_host"),
                tags.input(
                    id=f"{kind}_host",
                    name=f"{kind}_host",
                    type="text",
                    maxlength="253",
                    autocomplete="off",
                    value=values.get(f"{kind}_host", ""),
                ),
                tags.label("Port", for_=f"{kind}_port"),
                tags.input(
                    id=f"{kind}_port",
                    name=f"{kind}_port",
                    type="number",
                    min="1",
                    max="65535",
                    value=values.get(f"{kind}_port", ""),
                ),
                tags.label("Security", for_=f"{kind}_security"),
                security,
            )
        box(
            tags.button(
                "Find my servers",
                type="submit",
                id="discover",
                name="action",
                value="discover",
                formnovalidate="formnovalidate",
            )
        )
        return box

    def slots(self) -> dict[str, str]:
        client = self._request.client
        return {
            "form_action": self._base_path + "/oauth/authorize",
            "stylesheet": self._base_path + "/oauth/static/login.css",
            "client_name": client.name or "Your AI assistant",
            "redirect_host": _host_of(self._request.redirect_uri),
            "imap_host": f"{client.imap.host}:{client.imap.port}",
            "smtp_host": f"{client.smtp.host}:{client.smtp.port}",
            "email": self._values.get("email", ""),
            "full_name": self._values.get("full_name", ""),
            "imap_username": self._values.get("imap_username", ""),
            "smtp_username": self._values.get("smtp_username", ""),
        }


class _ErrorPage(Element):
    """The error page: never a redirect, never an echo of the request."""

    loader = XMLFile(FilePath(str(template_path("error.xhtml"))))

    def __init__(self, title: str, message: str, base_path: str = "") -> None:
        super().__init__()
        self._title = title
        self._message = message
        self._base_path = base_path

    @renderer
    def page(self, request: IRequest, tag: Tag) -> Tag:
        return tag.fillSlots(
            title=self._title,
            message=self._message,
            stylesheet=self._base_path + "/oauth/static/login.css",
        )


def json_body(request: IRequest, status: int, body: Any, *, no_store: bool = True) -> bytes:
    encoded: bytes = _json_body(request, status, body, no_store=no_store)
    return encoded


async def _flatten(element: Element) -> bytes:
    body: bytes = await flattenString(None, element)
    return b"<!DOCTYPE html>\n" + body


def _body_size(request: IRequest) -> int:
    content = request.content
    if content is None:
        return 0
    position = content.tell()
    content.seek(0, 2)
    size = content.tell()
    content.seek(position)
    return int(size)


class OAuthApp:
    """
    The authorization server's routes.

    :param config: issuer, lifetimes, proxy trust.
    :param codec: opens client ids.
    :param grants: creates grants and mints tokens.
    :param imap_checker, smtp_checker: live credential checks (`ILoginChecker`).
    :param throttle: login throttling.
    """

    app = Klein()
    #: The audit trail (LG-06), set by `build_authorization_server`; None: none.
    audit: Audit | None = None
    #: Provider sign-in ("Continue with …", issue 18), set by
    #: `build_authorization_server`; None: passwords only.
    provider_login: ProviderLogin | None = None

    def __init__(
        self,
        config: Config,
        codec: TokenCodec,
        grants: GrantService,
        imap_checker: ILoginChecker,
        smtp_checker: ILoginChecker,
        throttle: LoginThrottle,
        clients: ClientDirectory | None = None,
        resolver: Any = None,
    ) -> None:
        self._config = config
        self._clients = clients or ClientDirectory(config, codec, grants.store, None)
        self._registration = Registration(config, codec, grants.store, self._client_address)
        #: With --allow-user-servers: DNS (`twisted.names`) for the SRV
        #: prefill and the address check of user-named servers.
        self._resolver = resolver
        self._server_policy = (
            ServerPolicy(config.user_servers_allow, resolver)
            if config.allow_user_servers and resolver is not None
            else None
        )
        self._codec = codec
        self._grants = grants
        self._imap = imap_checker
        self._smtp = smtp_checker
        self._throttle = throttle
        self._issuer = config.base_url
        self._secure_cookie = config.base_url.startswith("https://")
        self._csrf_cookie = b"__Host-mailmcp-csrf" if self._secure_cookie else b"mailmcp-csrf"
        self._csrf_key = config.keyring.subkey(config.keyring.current_kid, "csrf")
        self._css: bytes = template_path("login.css").read_bytes()
        self._base_path = base_path(config.base_url)
        self._metadata_paths = {
            path.encode("ascii"): kind for path, kind in metadata_paths(config.base_url).items()
        }

    # -- discovery --------------------------------------------------------

    def resource_metadata(self) -> dict[str, Any]:
        return {
            "resource": self._config.mcp_url,
            "authorization_servers": [self._issuer],
            "scopes_supported": list(ALL_SCOPES),
            "bearer_methods_supported": ["header"],
            "resource_name": "Mail MCP",
        }

    def server_metadata(self) -> dict[str, Any]:
        base = self._issuer
        return {
            "issuer": base,
            "authorization_endpoint": base + "/oauth/authorize",
            "token_endpoint": base + "/oauth/token",
            "revocation_endpoint": base + "/oauth/revoke",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "client_secret_basic",
                "none",
            ],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_post",
                "client_secret_basic",
                "none",
            ],
            "scopes_supported": list(ALL_SCOPES),
            "authorization_response_iss_parameter_supported": True,
            **self._client_kinds_metadata(),
        }

    def _client_kinds_metadata(self) -> dict[str, Any]:
        """CIMD and DCR, advertised only when clients may come without mail servers."""
        if not open_registration(self._config):
            return {}
        return {
            "client_id_metadata_document_supported": True,
            "registration_endpoint": self._issuer + "/oauth/register",
        }

    def _metadata(self, request: IRequest, document: dict[str, Any]) -> bytes:
        # CORS (for browser clients) is added by the router: mailmcp._cors.
        request.setHeader(b"cache-control", b"public, max-age=3600")
        return json_body(request, 200, document, no_store=False)

    @app.route("/.well-known/oauth-protected-resource", methods=["GET", "HEAD"])
    def prm_root(self, request: IRequest) -> bytes:
        return self._metadata(request, self.resource_metadata())

    @app.route("/.well-known/oauth-protected-resource/mcp", methods=["GET", "HEAD"])
    def prm_mcp(self, request: IRequest) -> bytes:
        return self._metadata(request, self.resource_metadata())

    @app.route("/.well-known/oauth-authorization-server", methods=["GET", "HEAD"])
    def asm(self, request: IRequest) -> bytes:
        return self._metadata(request, self.server_metadata())

    @app.route("/.well-known/", branch=True)
    def well_known_other(self, request: IRequest) -> bytes:
        """The path-inserted metadata locations of a base URL with a path (`mailmcp._paths`)."""
        if request.method in (b"GET", b"HEAD"):
            kind = self._metadata_paths.get(request.path or b"")
            if kind == "resource":
                return self._metadata(request, self.resource_metadata())
            if kind == "server":
                return self._metadata(request, self.server_metadata())
        return json_body(request, 404, {"error": "not_found"})

    @app.route("/oauth/static/login.css", methods=["GET", "HEAD"])
    def css(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/css; charset=utf-8")
        request.setHeader(b"cache-control", b"public, max-age=3600")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return self._css

    @app.route("/oauth/", branch=True)
    def oauth_other(self, request: IRequest) -> bytes:
        return json_body(request, 404, {"error": "not_found"})

    # -- pages ------------------------------------------------------------

    def _page_headers(
        self, request: IRequest, redirect_uri: str | None = None, provider_url: str | None = None
    ) -> None:
        form_action = "'self'"
        if redirect_uri is not None:
            # Browsers apply form-action to the redirect that follows the POST.
            form_action += " " + _origin_of(redirect_uri)
        if provider_url is not None:
            # ... and "Continue with …" redirects to the provider.
            form_action += " " + _origin_of(provider_url)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(
            b"content-security-policy",
            (
                "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'none'; "
                f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
            ).encode(),
        )
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"pragma", b"no-cache")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-content-type-options", b"nosniff")

    async def _error_page(self, request: IRequest, error: BadRequest) -> bytes:
        request.setResponseCode(error.status)
        self._page_headers(request)
        return await _flatten(_ErrorPage(error.title, error.message, self._base_path))

    def _csrf_for(self, cookie: str, scope: str | None = None) -> str:
        """
        A form's CSRF token: bound to the browser's cookie and, for the
        login form, to the scopes it offers, so the offer cannot be edited in
        the page.  (The account page's forms offer none.)
        """
        material = (cookie if scope is None else cookie + "\0" + scope).encode("ascii")
        mac = hmac.new(self._csrf_key, material, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def _csrf_cookie_value(self, request: IRequest) -> str:
        """The browser's CSRF cookie, set now if it has none (or a bad one)."""
        current = request.getCookie(self._csrf_cookie)
        if current and re.fullmatch(rb"[A-Za-z0-9_-]{43}", current):
            return str(current.decode("ascii"))
        value = secrets.token_urlsafe(32)
        request.addCookie(  # type: ignore[call-arg]
            self._csrf_cookie,
            value.encode("ascii"),
            path=b"/",
            httpOnly=True,
            secure=self._secure_cookie,
            sameSite="lax",
        )
        return value

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
        csrf = self._csrf_for(self._csrf_cookie_value(request), areq.scope)
        request.setResponseCode(status)
        provider = self._provider_for(areq.client)
        self._page_headers(
            request, areq.redirect_uri, provider.authorize_url if provider is not None else None
        )
        if servers is None and self._asks_servers(areq.client):
            servers = self._server_values(values or {}, Suggestion())
        return await _flatten(
            _Page(
                areq,
                csrf,
                values or {},
                same,
                errors or [],
                message,
                chosen,
                base_path=self._base_path,
                servers=servers,
                provider_label=provider.label if provider is not None else None,
            )
        )

    def _provider_for(self, client: Client) -> Any:
        """The `ProviderProfile` that signs C{client}'s users in, or None (passwords)."""
        if self.provider_login is None:
            return None
        found = self.provider_login.profile_for(client)
        return found[1] if found is not None else None

    # -- user-named servers (--allow-user-servers) -------------------------

    def _asks_servers(self, client: Client) -> bool:
        """Whether the user names the mail servers: allowed, and the client brings none."""
        return (
            self._server_policy is not None
            and not brings_servers(client)
            and self._provider_for(client) is None
        )

    def _server_values(self, values: Mapping[str, str], found: Suggestion) -> dict[str, str]:
        """
        The server fields to show: what the user typed, else what the email
        domain's SRV records say, else the default mail profile, else the
        usual ports over TLS.
        """
        shown: dict[str, str] = {}
        for kind, suggested, default in (
            ("imap", found.imap, getattr(self._config, "default_imap", None)),
            ("smtp", found.smtp, getattr(self._config, "default_smtp", None)),
        ):
            server = suggested or default
            typed = values.get(f"{kind}_host", "")
            if typed:
                for field in ("host", "port", "security"):
                    shown[f"{kind}_{field}"] = values.get(f"{kind}_{field}", "")
            elif server is not None:
                shown[f"{kind}_host"] = server.host
                shown[f"{kind}_port"] = str(server.port)
                shown[f"{kind}_security"] = server.security
            else:
                shown[f"{kind}_host"] = ""
                shown[f"{kind}_port"] = "993" if kind == "imap" else "465"
                shown[f"{kind}_security"] = "tls"
        return shown

    async def _discovered(self, request: IRequest, email: str) -> Suggestion:
        """
        The SRV suggestion for C{email}.  Each lookup spends one of the
        client address's login attempts, so the page cannot be made to send
        DNS queries without bound; past the budget the page just comes
        unfilled.
        """
        email = email.strip()
        if not _EMAIL.fullmatch(email) or len(email) > 254 or self._resolver is None:
            return Suggestion()
        try:
            reservation = await self._throttle.admit(self._client_address(request), [])
        except Throttled:
            return Suggestion()
        await self._throttle.settle(reservation, None)
        return await discover(self._resolver, email)

    def _parse_servers(self, values: Mapping[str, str]) -> tuple[list[str], list[MailServer]]:
        """The user's two servers from the form, or the lines saying what is wrong."""
        errors: list[str] = []
        servers: list[MailServer] = []
        for kind, label in (("imap", "IMAP"), ("smtp", "SMTP")):
            host = values[f"{kind}_host"].strip().lower().rstrip(".")
            port_text = values[f"{kind}_port"].strip()
            security = values[f"{kind}_security"] or "tls"
            if not host:
                errors.append(f"{label} server: please enter the server's name.")
            elif not (_HOSTNAME.fullmatch(host) or _is_ip(host)):
                errors.append(f"{label} server: this does not look like a server name.")
            port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else 0
            if not 0 < port < 65536:
                errors.append(f"{label} port: a number from 1 to 65535.")
            if security not in USER_SECURITY:
                errors.append(f"{label} security: choose SSL/TLS or STARTTLS.")
            if not errors:
                servers.append(MailServer(host=host, port=port, security=security))  # type: ignore[arg-type]
        return errors, servers

    def _redirect(self, request: IRequest, uri: str) -> bytes:
        # 303: the browser must not re-POST the credentials (RFC 9700 §4.12).
        request.setResponseCode(303)
        request.setHeader(b"location", uri.encode("utf-8"))
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Redirecting.\n"

    def _error_redirect(
        self, request: IRequest, redirect_uri: str, state: str | None, error: RedirectError
    ) -> bytes:
        params = [("error", error.error), ("error_description", error.description)]
        if state is not None:
            params.append(("state", state))
        params.append(("iss", self._issuer))
        return self._redirect(request, _add_query(redirect_uri, params))

    async def _find_client(self, client_id: str) -> Client:
        """:raises InvalidToken, ClientMetadataError: see `ClientDirectory.find`."""
        return await self._clients.find(client_id)

    async def _validate_client(
        self, args: Mapping[bytes, list[bytes]]
    ) -> tuple[Client, str, str | None]:
        client_id = _single(args, "client_id")
        if not client_id:
            raise BadRequest("Unknown application", "The request does not name a client.")
        try:
            client = await self._find_client(client_id)
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
        redirect_uri = _single(args, "redirect_uri")
        if not redirect_uri or not client.allows_redirect(redirect_uri):
            raise BadRequest(
                "Unregistered redirect address",
                "The redirect address is not registered for this client, so sign-in cannot continue.",
            )
        state = _single(args, "state", MAX_STATE)
        return client, redirect_uri, state

    def _validate_authorize(
        self,
        args: Mapping[bytes, list[bytes]],
        client: Client,
        redirect_uri: str,
        state: str | None,
        form: bool = False,
    ) -> AuthorizeRequest:
        """
        The rest of an authorization request, once its client and redirect
        URI are known good.

        :param form: C{args} come from the login form, where the requested
            scopes travel as `OFFERED_SCOPE` and ``scope`` is the user's choice.
        :raises RedirectError: for anything wrong (sent to the redirect URI).
        """
        scope_param = OFFERED_SCOPE if form else "scope"
        try:
            for name in OAUTH_PARAMS:
                if name != "scope":
                    _single(args, name)
            requested_scope = _single(args, scope_param)
        except BadRequest as e:
            raise RedirectError("invalid_request", e.message) from None
        response_type = _single(args, "response_type")
        if response_type != "code":
            raise RedirectError("unsupported_response_type", "response_type must be code")
        challenge = _single(args, "code_challenge")
        if not challenge or not _CHALLENGE.fullmatch(challenge):
            raise RedirectError("invalid_request", "a PKCE S256 code_challenge is required")
        if _single(args, "code_challenge_method") != "S256":
            raise RedirectError("invalid_request", "code_challenge_method must be S256")
        resource = canonical_resource(_single(args, "resource"), self._config.mcp_url)
        if resource is None:
            raise RedirectError("invalid_target", "unknown resource")
        try:
            requested = parse_scope(requested_scope)
        except UnknownScope:
            raise RedirectError("invalid_scope", "unknown scope requested") from None
        # The caps narrow a request rather than refuse it; only a request
        # left with nothing at all is refused.
        offered = requested & client.scopes & self._config.max_scope
        if not offered:
            raise RedirectError("invalid_scope", "none of the requested scopes can be granted")
        return AuthorizeRequest(
            client=client,
            redirect_uri=redirect_uri,
            state=state,
            code_challenge=challenge,
            resource=resource,
            scopes=offered,
        )

    async def _authorize_common(
        self, request: IRequest, form: bool = False
    ) -> tuple[AuthorizeRequest | None, bytes | None]:
        args: Mapping[bytes, list[bytes]] = request.args or {}
        try:
            client, redirect_uri, state = await self._validate_client(args)
        except BadRequest as e:
            return None, await self._error_page(request, e)
        try:
            areq = self._validate_authorize(args, client, redirect_uri, state, form)
        except RedirectError as e:
            log.info("authorization request refused: {error}", error=e.error)
            return None, self._error_redirect(request, redirect_uri, state, e)
        try:
            # Showing the form does not depend on the store (a store that is
            # down answers the submission); creating a grant does.
            await self._refuse_denied(areq.client, fail_open=request.method != b"POST")
        except BadRequest as e:
            return None, await self._error_page(request, e)
        return areq, None

    @app.route("/oauth/authorize", methods=["GET", "HEAD"])
    async def authorize_form(self, request: IRequest) -> bytes:
        try:
            areq, answer = await self._authorize_common(request)
        except BadRequest as e:
            return await self._error_page(request, e)
        if areq is None:
            assert answer is not None
            return answer
        hint = _single(request.args or {}, "login_hint", 254)
        if hint and self._asks_servers(areq.client):
            # Rendered with an email: prefill its domain's servers (RFC 6186).
            values = {"email": hint.strip()}
            found = await self._discovered(request, hint)
            return await self._login_page(
                request, areq, values=values, servers=self._server_values(values, found)
            )
        return await self._login_page(request, areq)

    async def _refuse_denied(self, client: Client, fail_open: bool = False) -> None:
        """
        :raises BadRequest: when the operator revoked C{client} (issue 15),
            or (unless C{fail_open}) when the deny-list cannot be read.
        """
        try:
            denied = await self._grants.store.client_denied(client_ref(client.client_id))
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

    def _client_address(self, request: IRequest) -> str:
        """The address throttling charges: see `client_address` for X-Forwarded-For."""
        peer = str(getattr(request.getClientAddress(), "host", "unknown"))
        forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
        return client_address(
            peer, forwarded, self._config.trusted_proxies, self._config.trust_forwarded
        )

    def _check_csrf(self, request: IRequest, token: str | None, scope: str | None = None) -> bool:
        origin = request.getHeader(b"origin")
        # Under Referrer-Policy: no-referrer browsers send "Origin: null" on
        # the form POST; only a real foreign origin is refused outright.
        if origin not in (None, b"null") and origin.decode("ascii", "replace") != _origin_of(
            self._issuer
        ):
            return False
        cookie = request.getCookie(self._csrf_cookie)
        if not cookie or not token:
            return False
        try:
            expected = self._csrf_for(cookie.decode("ascii"), scope)
        except UnicodeDecodeError:
            return False
        return hmac.compare_digest(expected.encode("ascii"), token.encode("utf-8", "replace"))

    @app.route("/oauth/authorize", methods=["POST"])
    async def authorize_submit(self, request: IRequest) -> bytes:
        try:
            return await self._authorize_submit(request)
        except BadRequest as e:
            return await self._error_page(request, e)
        except Exception:
            # The store is down or similar: say so, keep details in the log.
            log.failure("login could not be completed")
            return await self._error_page(request, UNAVAILABLE)

    async def _authorize_submit(self, request: IRequest) -> bytes:
        if _body_size(request) > MAX_FORM_BODY:
            raise BadRequest("Request too large", "The form was too large.", 413)
        areq, answer = await self._authorize_common(request, form=True)
        if areq is None:
            assert answer is not None
            return answer
        args: Mapping[bytes, list[bytes]] = request.args or {}
        values: dict[str, str] = {}
        for name in FORM_FIELDS:
            values[name] = _single(args, name, 4096) or ""
        if not self._check_csrf(request, values["csrf_token"], areq.scope):
            log.info("login form refused: missing or wrong CSRF token")
            raise BadRequest(
                "Session expired",
                "This sign-in form has expired or was not sent from this site. "
                "Go back to your assistant and start again.",
                403,
            )
        chosen = self._chosen_scopes(args, areq)
        if self._provider_for(areq.client) is not None:
            return await self._provider_submit(request, areq, values, chosen)
        same = values["use_same_credentials"] == "1"
        if same:
            values["smtp_username"] = values["imap_username"]
            values["smtp_password"] = values["imap_password"]
        kept = {k: v for k, v in values.items() if "password" not in k and k != "csrf_token"}
        if same:
            kept["smtp_username"] = ""

        imap, smtp = areq.client.imap, areq.client.smtp
        asks = self._asks_servers(areq.client)
        if asks and values["action"] == "discover":
            # "Find my servers": look the domain up, sign nobody in.
            found = await self._discovered(request, values["email"])
            shown = self._server_values({"email": values["email"]}, found)
            return await self._login_page(
                request, areq, 200, kept, same, chosen=chosen, servers=shown
            )
        errors = self._field_errors(values, same)
        if asks:
            server_errors, named = self._parse_servers(values)
            errors += server_errors
            if not errors:
                imap, smtp = named
        if not chosen:
            errors.append("Access: choose at least one thing the assistant may do.")
        if errors:
            return await self._login_page(
                request, areq, 400, kept, same, errors, GENERIC_FAILURE, chosen
            )

        address = self._client_address(request)
        try:
            # Every username tried spends from its budget: guessing the SMTP
            # password behind a valid IMAP login is throttled like IMAP.
            reservation = await self._throttle.admit(
                address, [values["imap_username"], values["smtp_username"]]
            )
        except Throttled as e:
            self._record("login", areq.client, "error", values["email"].strip(), "throttled")
            request.setHeader(b"retry-after", str(e.retry_after).encode("ascii"))
            return await self._login_page(
                request,
                areq,
                429,
                kept,
                same,
                ["Too many sign-in attempts. Please wait a few minutes before trying again."],
                GENERIC_FAILURE,
                chosen,
            )
        if asks:
            # Before any connection, and throttled like one: only where the
            # policy allows (OA-32).
            try:
                await self._server_policy_check("IMAP", imap)
                await self._server_policy_check("SMTP", smtp)
            except ServerRefused as e:
                self._record(
                    "login", areq.client, "error", values["email"].strip(), "server not allowed"
                )
                await self._throttle.settle(reservation, None)
                return await self._login_page(
                    request, areq, 400, kept, same, [str(e)], GENERIC_FAILURE, chosen
                )
        try:
            with self._throttle.slot():
                problem = await self._check_mail(imap, smtp, values)
        except Busy:
            self._record("login", areq.client, "error", values["email"].strip(), "busy")
            await self._throttle.settle(reservation, None)
            request.setHeader(b"retry-after", b"5")
            return await self._login_page(
                request,
                areq,
                503,
                kept,
                same,
                ["The service is busy checking other sign-ins. Please try again in a moment."],
                GENERIC_FAILURE,
                chosen,
            )
        # The username whose check failed keeps its charge, and so do the
        # failure budgets; the rest is handed back.  (Should the check itself
        # raise, nothing is handed back.)
        await self._throttle.settle(reservation, problem[0] if problem else None)
        self._record("login", areq.client, "error" if problem else "ok", values["email"].strip())
        if problem is not None:
            return await self._login_page(
                request, areq, 400, kept, same, [problem[1]], GENERIC_FAILURE, chosen
            )

        credentials = Credentials(
            email=values["email"].strip(),
            full_name=values["full_name"].strip(),
            imap=imap,
            imap_username=values["imap_username"],
            imap_password=values["imap_password"],
            smtp=smtp,
            smtp_username=values["smtp_username"],
            smtp_password=values["smtp_password"],
        )
        code = await self._grants.login(
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
        params.append(("iss", self._issuer))
        return self._redirect(request, _add_query(areq.redirect_uri, params))

    async def _provider_submit(
        self,
        request: IRequest,
        areq: AuthorizeRequest,
        values: Mapping[str, str],
        chosen: frozenset[str],
    ) -> bytes:
        """ "Continue with <provider>": the name and scopes checked, off to the provider."""
        assert self.provider_login is not None
        kept = {"full_name": values["full_name"]}
        errors = []
        if len(values["full_name"]) > 128 or _CONTROL.search(values["full_name"]):
            errors.append("Your name: at most 128 characters, no control characters.")
        if not chosen:
            errors.append("Access: choose at least one thing the assistant may do.")
        if errors:
            return await self._login_page(
                request, areq, 400, kept, errors=errors, message=GENERIC_FAILURE, chosen=chosen
            )
        try:
            location = self.provider_login.begin(
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
        return self._redirect(request, location)

    @app.route("/oauth/provider/callback", methods=["GET"])
    async def provider_callback(self, request: IRequest) -> bytes:
        """The provider sends the browser back here (`mailmcp._provider_login`)."""
        if self.provider_login is None:
            return json_body(request, 404, {"error": "not_found"})
        if request.method != b"GET":
            # Klein answers HEAD with GET's route; a prefetch must not use the sign-in up.
            request.setHeader(b"allow", b"GET")
            return json_body(request, 405, {"error": "method_not_allowed"})

        async def find(client_id: str) -> Client:
            # A client the operator revoked meanwhile finishes nothing.
            client = await self._find_client(client_id)
            await self._refuse_denied(client)
            return client

        try:
            outcome = await self.provider_login.finish(request, find)
        except CallbackRefused as e:
            return await self._error_page(request, BadRequest(e.title, e.message, e.status))
        except Exception:
            log.failure("provider sign-in could not be completed")
            return await self._error_page(request, UNAVAILABLE)
        if isinstance(outcome, Finished):
            return self._redirect(request, outcome.location)
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

    async def _server_policy_check(self, label: str, server: MailServer) -> None:
        assert self._server_policy is not None
        await self._server_policy.check(label, server)

    def _chosen_scopes(
        self, args: Mapping[bytes, list[bytes]], areq: AuthorizeRequest
    ) -> frozenset[str]:
        """
        The scopes the user left ticked (empty: none).  A submission may only
        narrow what the page offered: an unknown or unoffered value (an
        edited form) is the error page, and nothing is issued.  A form that
        carries neither the offer nor a choice predates the choice (a page
        rendered before it existed, or a scripted login) and takes the
        whole offer; its CSRF token is bound to that offer.
        """
        values = args.get(b"scope", [])
        if not values and OFFERED_SCOPE.encode("ascii") not in args:
            return areq.scopes
        chosen: set[str] = set()
        for raw in values:
            try:
                chosen.update(parse_scope(raw.decode("utf-8")) if raw.strip() else ())
            except (UnicodeDecodeError, UnknownScope):
                chosen.add("?")
        if not chosen <= areq.scopes:
            log.info("login form refused: a scope that was not offered")
            raise BadRequest(
                "Invalid request",
                "The form asked for access that was not offered, so nothing was granted. "
                "Go back to your assistant and start again.",
            )
        return frozenset(chosen)

    def _field_errors(self, values: Mapping[str, str], same: bool) -> list[str]:
        errors: list[str] = []
        email = values["email"].strip()
        if not email:
            errors.append("Email address: please enter your email address.")
        elif len(email) > 254 or _CONTROL.search(email) or not _EMAIL.fullmatch(email):
            errors.append("Email address: this does not look like an email address.")
        if len(values["full_name"]) > 128 or _CONTROL.search(values["full_name"]):
            errors.append("Your name: at most 128 characters, no control characters.")
        groups = [("IMAP", "imap")] + ([] if same else [("SMTP", "smtp")])
        for label, prefix in groups:
            user, password = values[f"{prefix}_username"], values[f"{prefix}_password"]
            if not user:
                errors.append(f"{label} username: please enter your username.")
            elif len(user) > 256 or _CONTROL.search(user):
                errors.append(f"{label} username: at most 256 characters, no control characters.")
            if not password:
                errors.append(f"{label} password: please enter your password.")
            elif len(password.encode("utf-8")) > 1024 or _CONTROL.search(password):
                errors.append(f"{label} password: at most 1024 bytes, no control characters.")
        return errors

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
            ("IMAP", self._imap, imap, values["imap_username"], values["imap_password"]),
            ("SMTP", self._smtp, smtp, values["smtp_username"], values["smtp_password"]),
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

    def _record(
        self,
        event: str,
        client: Client | None,
        outcome: str,
        account: str | None = None,
        error: str | None = None,
    ) -> None:
        """One audit entry (LG-06), when there is an audit trail."""
        if self.audit is not None:
            self.audit.oauth(event, client, outcome, account, error)

    # -- token endpoint ---------------------------------------------------

    def _token_error(self, request: IRequest, error: OAuthError, basic: bool = False) -> bytes:
        if error.status == 401 and basic:
            request.setHeader(b"www-authenticate", b'Basic realm="mailmcp"')
        request.setHeader(b"pragma", b"no-cache")
        body: dict[str, str] = {"error": error.error}
        if error.description:
            body["error_description"] = error.description
        return json_body(request, error.status, body)

    def _form(self, request: IRequest) -> dict[str, str]:
        """
        The token request body as single-valued parameters.

        :raises OAuthError: for a query string, a wrong content type, a
            body too large, or a repeated parameter.
        """
        if b"?" in (request.uri or b""):
            raise OAuthError("invalid_request", "URL query parameters are not allowed")
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != b"application/x-www-form-urlencoded":
            raise OAuthError(
                "invalid_request", "the body must be application/x-www-form-urlencoded"
            )
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

    async def _authenticate_client(
        self, request: IRequest, form: Mapping[str, str]
    ) -> tuple[Client, bool]:
        """
        client_secret_basic, client_secret_post, or none (public clients).

        :return: the client and whether Basic was used.
        :raises OAuthError: ``invalid_client`` (401) or ``invalid_request``.
        """
        headers = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(headers) > 1:
            raise OAuthError("invalid_request", "more than one Authorization header")
        basic = False
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
            basic = True
            if secret is not None or (client_id is not None and client_id != unquote(raw_id)):
                raise OAuthError("invalid_request", "use one client authentication method")
            client_id, secret = unquote(raw_id), unquote(raw_secret)
        if not client_id:
            raise OAuthError("invalid_client", "client authentication failed", 401)
        try:
            client = await self._find_client(client_id)
        except (InvalidToken, ClientMetadataError):
            # Unknown (or from a key ring since replaced): Claude re-registers on 401.
            raise OAuthError("invalid_client", "client authentication failed", 401) from None
        if client.is_public:
            if secret:
                raise OAuthError("invalid_client", "client authentication failed", 401)
        elif not client.check_secret(secret):
            raise OAuthError("invalid_client", "client authentication failed", 401)
        return client, basic

    @app.route("/oauth/token", methods=["POST"])
    async def token(self, request: IRequest) -> bytes:
        basic = request.getHeader(b"authorization") is not None
        client, grant_type = None, None
        try:
            form = self._form(request)
            client, _ = await self._authenticate_client(request, form)
            if await self._grants.store.client_denied(client_ref(client.client_id)):
                raise OAuthError("invalid_client", "this client has been revoked", 401)
            grant_type = form.get("grant_type")
            if not grant_type:
                raise OAuthError("invalid_request", "grant_type is required")
            if grant_type == "authorization_code":
                tokens = await self._grants.redeem_code(
                    client,
                    form.get("code"),
                    form.get("redirect_uri"),
                    form.get("code_verifier"),
                    form.get("resource"),
                )
            elif grant_type == "refresh_token":
                tokens = await self._grants.refresh(
                    client, form.get("refresh_token"), form.get("resource")
                )
            else:
                raise OAuthError(
                    "unsupported_grant_type", "use authorization_code or refresh_token"
                )
        except OAuthError as e:
            log.info("token request refused: {error}", error=e.error)
            self._record(
                _TOKEN_EVENTS.get(grant_type or "", "token"), client, "error", error=e.error
            )
            return self._token_error(request, e, basic)
        except Exception:
            log.failure("token request failed")
            self._record(_TOKEN_EVENTS.get(grant_type or "", "token"), client, "error")
            return self._token_error(
                request, OAuthError("temporarily_unavailable", "try again later", 503)
            )
        self._record(_TOKEN_EVENTS.get(grant_type or "", "token"), client, "ok")
        request.setHeader(b"pragma", b"no-cache")
        return json_body(request, 200, tokens.to_json())

    @app.route("/oauth/register", methods=["POST"])
    async def register(self, request: IRequest) -> bytes:
        """RFC 7591 dynamic client registration (see `Registration`)."""
        return await self._registration.handle(request)

    # CORS preflights of the token, revocation and registration endpoints
    # (browser clients such as the Inspector) are answered by the router,
    # for the origins the operator allowed: see mailmcp._cors.

    @app.route("/oauth/token", methods=["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"])
    def token_wrong_method(self, request: IRequest) -> bytes:
        request.setHeader(b"allow", b"POST")
        return self._token_error(request, OAuthError("invalid_request", "use POST", 405))

    @app.route("/oauth/revoke", methods=["POST"])
    async def revoke(self, request: IRequest) -> bytes:
        basic = request.getHeader(b"authorization") is not None
        client = None
        try:
            form = self._form(request)
            client, _ = await self._authenticate_client(request, form)
            await self._grants.revoke(client, form.get("token"))
        except OAuthError as e:
            self._record("revoke", client, "error", error=e.error)
            return self._token_error(request, e, basic)
        except Exception:
            log.failure("revocation failed")
            self._record("revoke", client, "error")
            return self._token_error(
                request, OAuthError("temporarily_unavailable", "try again later", 503)
            )
        self._record("revoke", client, "ok")
        request.setHeader(b"pragma", b"no-cache")
        return json_body(request, 200, {})

    @app.route("/oauth/revoke", methods=["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"])
    def revoke_wrong_method(self, request: IRequest) -> bytes:
        request.setHeader(b"allow", b"POST")
        return self._token_error(request, OAuthError("invalid_request", "use POST", 405))


def open_store(config: Config, reactor: Any) -> Any:
    """The `IGrantStore` named by ``--store`` (a service to start and stop)."""
    from ._store_redis import RedisGrantStore
    from ._store_sqlite import SQLiteGrantStore

    if config.store.startswith("sqlite:"):
        path = config.store[len("sqlite:") :]
        try:
            return SQLiteGrantStore(path, reactor)
        except (sqlite3.Error, OSError) as e:
            # One line and exit status 1, not a traceback.
            raise SystemExit(f"mailmcp: cannot open the grant store {path}: {e}") from None
    return RedisGrantStore(config.store, reactor, ca_file=config.store_ca_file, reactor=reactor)


#: The audit event of each token grant type.
_TOKEN_EVENTS = {"authorization_code": "token", "refresh_token": "refresh"}


def _provider_login(
    config: Config,
    providers: ProviderDirectory,
    oauth: OAuthApp,
    codec: TokenCodec,
    grants: GrantService,
) -> ProviderLogin:
    """Provider sign-in ("Continue with …") for the default profile and provisioned clients."""
    return ProviderLogin(
        codec=codec,
        base_url=config.base_url,
        default_profile=config.provider,
        grants=grants,
        imap_checker=oauth._imap,
        smtp_checker=oauth._smtp,
        throttle=oauth._throttle,
        http=providers.http,
        clock=providers.clock,
        record=oauth._record,
        address_of=oauth._client_address,
    )


def build_authorization_server(
    config: Config,
    reactor: Any,
    parent: Any,
    extra: dict[str, Any] | None = None,
    audit: Audit | None = None,
) -> tuple[Any, Any]:
    """
    Build the grant store (added to C{parent} as a service), the OAuth app and
    the access-token verifier.  Returns ``(oauth_resource, verifier)``; with
    C{extra}, puts the ``/account`` resource there under ``"account"``.
    """
    from ._mailcheck import IMAPLoginChecker, SMTPLoginChecker
    from ._tls import MailTLS
    from ._verifier import GrantTokenVerifier

    store = open_store(config, reactor)
    store.setName("grant-store")
    store.setServiceParent(parent)
    codec = TokenCodec(config.keyring, reactor)
    providers = ProviderDirectory(config.provider, http_client(reactor), reactor)
    grants = GrantService(
        store,
        codec,
        config.mcp_url,
        code_lifetime=config.code_lifetime,
        access_lifetime=config.access_token_lifetime,
        refresh_lifetime=config.refresh_token_lifetime,
        max_scope=config.max_scope,
        provider_for=providers.client_for,
    )
    tls = MailTLS(config.mail_ca_file)
    identity = urlsplit(config.base_url).hostname or "localhost"
    metadata = None
    if open_registration(config):
        pinned_dirs = [_PINNED_DIR]
        if config.client_metadata_dir is not None:
            pinned_dirs.append(config.client_metadata_dir)
        try:
            pinned = load_pinned(pinned_dirs)
        except ValueError as e:
            raise SystemExit(f"mailmcp: {e}") from None
        metadata = ClientMetadataResolver(
            reactor, MetadataFetcher(reactor), pinned, config.client_metadata_allow
        )
    resolver = None
    if config.allow_user_servers:
        from twisted.names import client as dns_client

        resolver = dns_client.createResolver()
    oauth = OAuthApp(
        config,
        codec,
        grants,
        IMAPLoginChecker(reactor, tls, timeout=min(config.imap_timeout, 20.0)),
        SMTPLoginChecker(reactor, tls, timeout=min(config.smtp_timeout, 20.0), identity=identity),
        LoginThrottle(
            store,
            config.login_concurrency,
            ThrottlePolicy(
                ip_attempts=config.login_attempts_per_address,
                user_failures=config.login_failures_per_user,
                ip_failures=config.login_failures_per_address,
                global_failures=config.login_failures_global,
            ),
        ),
        clients=ClientDirectory(config, codec, store, metadata),
        resolver=resolver,
    )
    oauth.audit = audit
    providers.clients = oauth._clients
    oauth.provider_login = _provider_login(config, providers, oauth, codec, grants)
    if extra is not None:
        from ._account_page import AccountApp

        extra["account"] = AccountApp(oauth, AccountGrants(store, config.keyring)).app.resource()
    return oauth.app.resource(), GrantTokenVerifier(grants)
