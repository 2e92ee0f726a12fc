"""
Reading the authorization request and the login form: single-valued
parameters, the request's own checks (PKCE, resource, scopes), the user's
fields and servers.  Pure functions: no I/O, nothing rendered.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import attrs
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from .._scopes import UnknownScope, format_scope, parse_scope
from ._clients import Client, MailServer
from ._errors import BadRequest, RedirectError
from ._grants import canonical_resource
from ._user_servers import USER_SECURITY, Suggestion

log = Logger()

CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
EMAIL = re.compile(r"[^@\s<>()\[\]\",;:\\]{1,64}@[^@\s<>()\[\]\",;:\\]{1,253}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PARAM = 8192
MAX_STATE = 2048
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
HOSTNAME = re.compile(
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


def single(args: Mapping[bytes, list[bytes]], name: str, limit: int = MAX_PARAM) -> str | None:
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


def body_size(request: IRequest) -> int:
    """The request body's size, without reading it."""
    content = request.content
    if content is None:
        return 0
    position = content.tell()
    content.seek(0, 2)
    size = content.tell()
    content.seek(position)
    return int(size)


def host_of(uri: str) -> str:
    parts = urlsplit(uri)
    return parts.netloc.rsplit("@", 1)[-1]


def origin_of(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.scheme}://{host_of(uri)}"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def add_query(uri: str, params: list[tuple[str, str]]) -> str:
    return uri + ("&" if urlsplit(uri).query else "?") + urlencode(params)


def validate_authorize(
    args: Mapping[bytes, list[bytes]],
    client: Client,
    redirect_uri: str,
    state: str | None,
    mcp_url: str,
    max_scope: frozenset[str],
    form: bool = False,
) -> AuthorizeRequest:
    """
    The rest of an authorization request, once its client and redirect
    URI are known good.

    :param form: C{args} come from the login form, where the requested
        scopes travel as `OFFERED_SCOPE` and ``scope`` is the user's choice.
    :raises RedirectError: for anything wrong (sent to the redirect URI).
    """

    def refuse(error: str, description: str) -> RedirectError:
        return RedirectError(error, description, redirect_uri, state)

    scope_param = OFFERED_SCOPE if form else "scope"
    try:
        for name in OAUTH_PARAMS:
            if name != "scope":
                single(args, name)
        requested_scope = single(args, scope_param)
    except BadRequest as e:
        raise refuse("invalid_request", e.message) from None
    response_type = single(args, "response_type")
    if response_type != "code":
        raise refuse("unsupported_response_type", "response_type must be code")
    challenge = single(args, "code_challenge")
    if not challenge or not CHALLENGE.fullmatch(challenge):
        raise refuse("invalid_request", "a PKCE S256 code_challenge is required")
    if single(args, "code_challenge_method") != "S256":
        raise refuse("invalid_request", "code_challenge_method must be S256")
    resource = canonical_resource(single(args, "resource"), mcp_url)
    if resource is None:
        raise refuse("invalid_target", "unknown resource")
    try:
        requested = parse_scope(requested_scope)
    except UnknownScope:
        raise refuse("invalid_scope", "unknown scope requested") from None
    # The caps narrow a request rather than refuse it; only a request
    # left with nothing at all is refused.
    offered = requested & client.scopes & max_scope
    if not offered:
        raise refuse("invalid_scope", "none of the requested scopes can be granted")
    return AuthorizeRequest(
        client=client,
        redirect_uri=redirect_uri,
        state=state,
        code_challenge=challenge,
        resource=resource,
        scopes=offered,
    )


def chosen_scopes(args: Mapping[bytes, list[bytes]], areq: AuthorizeRequest) -> frozenset[str]:
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


def field_errors(values: Mapping[str, str], same: bool) -> list[str]:
    """The lines saying what is wrong with the user's own fields."""
    errors: list[str] = []
    email = values["email"].strip()
    if not email:
        errors.append("Email address: please enter your email address.")
    elif len(email) > 254 or CONTROL.search(email) or not EMAIL.fullmatch(email):
        errors.append("Email address: this does not look like an email address.")
    if len(values["full_name"]) > 128 or CONTROL.search(values["full_name"]):
        errors.append("Your name: at most 128 characters, no control characters.")
    groups = [("IMAP", "imap")] + ([] if same else [("SMTP", "smtp")])
    for label, prefix in groups:
        user, password = values[f"{prefix}_username"], values[f"{prefix}_password"]
        if not user:
            errors.append(f"{label} username: please enter your username.")
        elif len(user) > 256 or CONTROL.search(user):
            errors.append(f"{label} username: at most 256 characters, no control characters.")
        if not password:
            errors.append(f"{label} password: please enter your password.")
        elif len(password.encode("utf-8")) > 1024 or CONTROL.search(password):
            errors.append(f"{label} password: at most 1024 bytes, no control characters.")
    return errors


def parse_servers(values: Mapping[str, str]) -> tuple[list[str], list[MailServer]]:
    """The user's two servers from the form, or the lines saying what is wrong."""
    errors: list[str] = []
    servers: list[MailServer] = []
    for kind, label in (("imap", "IMAP"), ("smtp", "SMTP")):
        host = values[f"{kind}_host"].strip().lower().rstrip(".")
        port_text = values[f"{kind}_port"].strip()
        security = values[f"{kind}_security"] or "tls"
        if not host:
            errors.append(f"{label} server: please enter the server's name.")
        elif not (HOSTNAME.fullmatch(host) or is_ip(host)):
            errors.append(f"{label} server: this does not look like a server name.")
        port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else 0
        if not 0 < port < 65536:
            errors.append(f"{label} port: a number from 1 to 65535.")
        if security not in USER_SECURITY:
            errors.append(f"{label} security: choose SSL/TLS or STARTTLS.")
        if not errors:
            servers.append(MailServer(host=host, port=port, security=security))  # type: ignore[arg-type]
    return errors, servers


def server_values(values: Mapping[str, str], found: Suggestion, config: Any) -> dict[str, str]:
    """
    The server fields to show: what the user typed, else what the email
    domain's SRV records say, else the default mail profile, else the
    usual ports over TLS.
    """
    shown: dict[str, str] = {}
    for kind, suggested, default in (
        ("imap", found.imap, getattr(config, "default_imap", None)),
        ("smtp", found.smtp, getattr(config, "default_smtp", None)),
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
