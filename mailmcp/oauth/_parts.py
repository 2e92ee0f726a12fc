"""
What the rooms of the authorization server share: the configuration, the
grant service, the client directory, the live login checks, the throttle,
the audit trail, and the CSRF tokens of the HTML forms (the login page's
and the account page's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import Any

import attrs
from twisted.web.iweb import IRequest

from .._audit import Audit
from .._config import Config
from .._paths import base_path
from ..interfaces import ILoginChecker
from ..provider._client import ProviderProfile
from ..provider._login import ProviderLogin
from ._clients import Client
from ._forms import origin_of
from ._grants import GrantService
from ._registration import ClientDirectory
from ._throttle import LoginThrottle, client_address
from ._tokens import TokenCodec


class CSRF:
    """
    The forms' CSRF protection: a random cookie per browser, and a token
    in each form that is a MAC of it (and, for the login form, of the
    scopes it offers, so the offer cannot be edited in the page).
    """

    def __init__(self, config: Config) -> None:
        self._issuer = config.base_url
        self._secure = config.base_url.startswith("https://")
        self._cookie = b"__Host-mailmcp-csrf" if self._secure else b"mailmcp-csrf"
        self._key = config.keyring.subkey(config.keyring.current_kid, "csrf")

    def token_for(self, cookie: str, scope: str | None = None) -> str:
        """A form's token for the browser's C{cookie} (and the offered C{scope})."""
        material = (cookie if scope is None else cookie + "\0" + scope).encode("ascii")
        mac = hmac.new(self._key, material, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def cookie_value(self, request: IRequest) -> str:
        """The browser's CSRF cookie, set now if it has none (or a bad one)."""
        current = request.getCookie(self._cookie)
        if current and re.fullmatch(rb"[A-Za-z0-9_-]{43}", current):
            return str(current.decode("ascii"))
        value = secrets.token_urlsafe(32)
        request.addCookie(  # type: ignore[call-arg]
            self._cookie,
            value.encode("ascii"),
            path=b"/",
            httpOnly=True,
            secure=self._secure,
            sameSite="lax",
        )
        return value

    def form_token(self, request: IRequest, scope: str | None = None) -> str:
        """The token to put in a form rendered for this browser."""
        return self.token_for(self.cookie_value(request), scope)

    def check(self, request: IRequest, token: str | None, scope: str | None = None) -> bool:
        """Whether a submitted form came from our page in this browser."""
        origin = request.getHeader(b"origin")
        # Under Referrer-Policy: no-referrer browsers send "Origin: null" on
        # the form POST; only a real foreign origin is refused outright.
        if origin not in (None, b"null") and origin.decode("ascii", "replace") != origin_of(
            self._issuer
        ):
            return False
        cookie = request.getCookie(self._cookie)
        if not cookie or not token:
            return False
        try:
            expected = self.token_for(cookie.decode("ascii"), scope)
        except UnicodeDecodeError:
            return False
        return hmac.compare_digest(expected.encode("ascii"), token.encode("utf-8", "replace"))


@attrs.define
class OAuthParts:
    """
    The authorization server's shared parts.  Mutable on purpose: the
    composing `mailmcp.oauth.OAuthApp` sets the audit trail after building,
    and every room sees the same record.
    """

    config: Config
    codec: TokenCodec
    grants: GrantService
    imap: ILoginChecker
    smtp: ILoginChecker
    throttle: LoginThrottle
    clients: ClientDirectory
    csrf: CSRF
    #: The audit trail (LG-06); None: none.
    audit: Audit | None = None
    #: Provider sign-in ("Continue with …", issue 18); None: passwords only.
    provider_login: ProviderLogin | None = None
    #: The ``/account`` page (`mailmcp.oauth._account_page.AccountApp`), which
    #: renders the provider callback of an account-page sign-in; None: no page.
    account_page: Any = None

    def provider_for(self, client: Client) -> ProviderProfile | None:
        """The `ProviderProfile` that signs C{client}'s users in, or None (passwords)."""
        if self.provider_login is None:
            return None
        found = self.provider_login.profile_for(client)
        return found[1] if found is not None else None

    @property
    def issuer(self) -> str:
        return self.config.base_url

    @property
    def base_path(self) -> str:
        return base_path(self.config.base_url)

    async def find_client(self, client_id: str) -> Client:
        """:raises InvalidToken, ClientMetadataError: see `ClientDirectory.find`."""
        return await self.clients.find(client_id)

    def client_address(self, request: IRequest) -> str:
        """The address throttling charges: see `client_address` for X-Forwarded-For."""
        peer = str(getattr(request.getClientAddress(), "host", "unknown"))
        forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
        return client_address(
            peer, forwarded, self.config.trusted_proxies, self.config.trust_forwarded
        )

    def record(
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
