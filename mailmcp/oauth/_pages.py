"""
The HTML the authorization server shows: the login form and the error
page (`twisted.web.template`, auto-escaping), with the headers every page
carries and the 303 that ends a login.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.python.filepath import FilePath
from twisted.web.iweb import IRequest
from twisted.web.template import Element, Tag, XMLFile, flattenString, renderer, tags

from .._scopes import ALL_SCOPES, LABELS
from .._templates import template_path
from ..provider._login import provider_button
from ._errors import BadRequest
from ._forms import AuthorizeRequest, host_of, origin_of

#: Where the pages' stylesheet is served (`mailmcp.oauth._static`).
STYLESHEET = "/oauth/static/login.css"


class LoginForm(Element):
    """The login page."""

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
        """ "Continue with <provider>" (`mailmcp.provider._login`)."""
        if self._provider_label is None:
            return ""
        return provider_button(self._provider_label)

    @renderer
    def server_fields(self, request: IRequest, tag: Tag) -> Tag | str:
        """The user's servers (host, port, security each), prefilled (`mailmcp.oauth._user_servers`)."""
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
            "stylesheet": self._base_path + STYLESHEET,
            "client_name": client.name or "Your AI assistant",
            "redirect_host": host_of(self._request.redirect_uri),
            "imap_host": f"{client.imap.host}:{client.imap.port}",
            "smtp_host": f"{client.smtp.host}:{client.smtp.port}",
            "email": self._values.get("email", ""),
            "full_name": self._values.get("full_name", ""),
            "imap_username": self._values.get("imap_username", ""),
            "smtp_username": self._values.get("smtp_username", ""),
        }


class ErrorPage(Element):
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
            stylesheet=self._base_path + STYLESHEET,
        )


async def flatten(element: Element) -> bytes:
    """An element as a whole HTML document."""
    body: bytes = await flattenString(None, element)
    return b"<!DOCTYPE html>\n" + body


def page_headers(
    request: IRequest, redirect_uri: str | None = None, provider_url: str | None = None
) -> None:
    """What every page carries: no caching, no framing, no scripts, no referrer."""
    form_action = "'self'"
    if redirect_uri is not None:
        # Browsers apply form-action to the redirect that follows the POST.
        form_action += " " + origin_of(redirect_uri)
    if provider_url is not None:
        # ... and "Continue with …" redirects to the provider.
        form_action += " " + origin_of(provider_url)
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


async def error_page(request: IRequest, error: BadRequest, base_path: str = "") -> bytes:
    """The error page for C{error}, with its status."""
    request.setResponseCode(error.status)
    page_headers(request)
    return await flatten(ErrorPage(error.title, error.message, base_path))


def redirect(request: IRequest, uri: str) -> bytes:
    """A 303 to C{uri}: the browser must not re-POST the credentials (RFC 9700 §4.12)."""
    request.setResponseCode(303)
    request.setHeader(b"location", uri.encode("utf-8"))
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"Redirecting.\n"
