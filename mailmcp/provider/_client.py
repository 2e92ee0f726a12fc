"""
Provider sign-in: mailmcp as an OAuth client of the user's mail provider
(Microsoft, Google, or a custom one), for mail servers that take SASL
XOAUTH2/OAUTHBEARER tokens instead of passwords.

`ProviderProfile` names the provider's endpoints and mailmcp's registration
there; `ProviderClient` runs the token-endpoint calls (code exchange,
refresh) and learns the mailbox address.  Its two exceptions carry fixed,
safe messages: never a token, never the client secret, never the provider's
response body beyond the RFC 6749 error code.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

#: How SASL mechanisms are named in a profile (``--imap-auth``).
TOKEN_MECHANISMS = ("xoauth2", "oauthbearer")

#: Seconds assumed when a token response has no ``expires_in``.
DEFAULT_EXPIRES_IN = 3600

#: Largest token-endpoint or userinfo response read (bytes).
MAX_RESPONSE = 256 * 1024

_ERROR_CODE = re.compile(r"[a-z_]{1,64}")

_MICROSOFT = "https://login.microsoftonline.com/common/oauth2/v2.0"
_BUILTIN: dict[str, dict[str, Any]] = {
    "microsoft": {
        "label": "Microsoft",
        "authorize_url": f"{_MICROSOFT}/authorize",
        "token_url": f"{_MICROSOFT}/token",
        # IMAP and SMTP on Exchange Online, plus a refresh token and the
        # email claim in the ID token.
        "scope": (
            "openid email offline_access "
            "https://outlook.office.com/IMAP.AccessAsUser.All "
            "https://outlook.office.com/SMTP.Send"
        ),
        "userinfo_url": None,
        "extra_authorize_params": {},
    },
    "google": {
        "label": "Google",
        "authorize_url": "https://accounts.google.com/o/oauth2/v2/auth",
        "token_url": "https://oauth2.googleapis.com/token",
        # https://mail.google.com/ is the one scope Gmail's IMAP and SMTP take.
        "scope": "openid email https://mail.google.com/",
        "userinfo_url": "https://openidconnect.googleapis.com/v1/userinfo",
        # Google sends a refresh token only with offline access, and again
        # on a later sign-in only when consent is asked for again.
        "extra_authorize_params": {"access_type": "offline", "prompt": "consent"},
    },
}


class ProviderError(Exception):
    """A failed call to the provider; C{str()} is safe to show and log."""

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: The RFC 6749 error code the provider sent, if any (validated).
        self.error = error


class ProviderRefused(ProviderError):
    """
    The provider refused the grant (``invalid_grant``): the user revoked
    consent, the refresh token expired or was used up.  Only signing in
    again helps.
    """


class ProviderUnavailable(ProviderError):
    """Network failure, timeout, 5xx, a malformed answer, or mailmcp's own registration refused."""


def _hidden(value: object) -> str:
    return "***" if value else "''"


def _copied(params: Mapping[str, str]) -> dict[str, str]:
    return dict(params)


@attrs.frozen
class ProviderProfile:
    """
    One OAuth provider and mailmcp's registration with it.  The repr never
    shows the client secret.
    """

    name: str
    label: str
    authorize_url: str
    token_url: str
    scope: str
    userinfo_url: str | None
    client_id: str
    client_secret: str = attrs.field(repr=_hidden)
    imap_auth: str = "xoauth2"
    extra_authorize_params: Mapping[str, str] = attrs.field(factory=dict, converter=_copied)

    def __attrs_post_init__(self) -> None:
        if self.imap_auth not in TOKEN_MECHANISMS:
            raise ValueError(f"imap_auth must be one of {', '.join(TOKEN_MECHANISMS)}")
        for url in (self.authorize_url, self.token_url, self.userinfo_url):
            if url is not None and not url.startswith(("https://", "http://")):
                raise ValueError("provider URLs must be http(s) URLs")

    @classmethod
    def builtin(
        cls, name: str, client_id: str, client_secret: str, imap_auth: str = "xoauth2"
    ) -> ProviderProfile:
        """The profile of a built-in provider (``microsoft`` or ``google``)."""
        try:
            known = _BUILTIN[name]
        except KeyError:
            raise ValueError(f"unknown provider {name!r}") from None
        return cls(
            name=name,
            client_id=client_id,
            client_secret=client_secret,
            imap_auth=imap_auth,
            **known,
        )

    @classmethod
    def custom(
        cls,
        *,
        label: str,
        authorize_url: str,
        token_url: str,
        scope: str,
        client_id: str,
        client_secret: str,
        userinfo_url: str | None = None,
        imap_auth: str = "xoauth2",
        extra_authorize_params: Mapping[str, str] | None = None,
    ) -> ProviderProfile:
        """A provider given by its endpoints (``--oauth-provider custom``)."""
        return cls(
            name="custom",
            label=label,
            authorize_url=authorize_url,
            token_url=token_url,
            scope=scope,
            userinfo_url=userinfo_url,
            client_id=client_id,
            client_secret=client_secret,
            imap_auth=imap_auth,
            extra_authorize_params=dict(extra_authorize_params or {}),
        )


@attrs.frozen(repr=False)
class ProviderTokens:
    """What the provider's token endpoint gave us; the repr shows no token."""

    access_token: str
    refresh_token: str
    expires_at: int
    id_token: str | None = None

    def __repr__(self) -> str:
        return f"<ProviderTokens expires_at={self.expires_at} access=*** refresh=***>"

    def to_claims(self) -> dict[str, Any]:
        return {
            "at": self.access_token,
            "rt": self.refresh_token,
            "exp": self.expires_at,
            "id": self.id_token,
        }

    @classmethod
    def from_claims(cls, d: Mapping[str, Any]) -> ProviderTokens:
        access, refresh, exp, id_token = d["at"], d["rt"], d["exp"], d.get("id")
        if (
            not isinstance(access, str)
            or not isinstance(refresh, str)
            or type(exp) is not int
            or not (id_token is None or isinstance(id_token, str))
        ):
            raise ValueError("malformed provider tokens")
        return cls(access, refresh, exp, id_token)


def _claims_of(id_token: str) -> dict[str, Any]:
    """
    The payload of a JWT without checking its signature: only for an ID
    token received directly from the token endpoint over TLS (OIDC Core
    §3.1.3.7, point 6).
    """
    parts = id_token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValueError("not a JWT") from None
    if not isinstance(claims, dict):
        raise ValueError("not a JWT")
    return claims


_ADDRESS = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]{1,255}")


def _address(claims: Mapping[str, Any], allow_username: bool) -> str | None:
    if claims.get("email_verified") is False:
        return None
    value = claims.get("email")
    if not isinstance(value, str) and allow_username:
        # Microsoft leaves ``email`` out for some work accounts; their
        # sign-in name is the mailbox's address (UPN) there.
        value = claims.get("preferred_username")
    if isinstance(value, str) and _ADDRESS.fullmatch(value.strip()):
        return value.strip()
    return None


class ProviderClient:
    """
    The token-endpoint side of provider sign-in for one `ProviderProfile`.

    :param http: a treq-like client (the ``treq`` module, a
        ``treq.client.HTTPClient``, or ``treq.testing.StubTreq``): its
        ``request`` answers a response with a ``content()`` method.
    :param clock: for the timeout and for turning ``expires_in`` into an
        absolute time.
    :param timeout: seconds one call to the provider may take.
    """

    def __init__(
        self, profile: ProviderProfile, http: Any, clock: IReactorTime, timeout: float = 20.0
    ) -> None:
        self.profile = profile
        self._http = http
        self._clock = clock
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"<ProviderClient {self.profile.name} {self.profile.client_id!r}>"

    def authorization_url(
        self,
        *,
        redirect_uri: str,
        state: str,
        code_challenge: str,
        login_hint: str | None = None,
    ) -> str:
        """Where to send the browser: an authorization-code request with PKCE (S256)."""
        params: dict[str, str] = {
            "response_type": "code",
            "client_id": self.profile.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.profile.scope,
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        params.update(self.profile.extra_authorize_params)
        if login_hint:
            params["login_hint"] = login_hint
        sep = "&" if "?" in self.profile.authorize_url else "?"
        return self.profile.authorize_url + sep + urlencode(params)

    async def exchange_code(
        self, code: str, code_verifier: str, redirect_uri: str
    ) -> ProviderTokens:
        """The ``authorization_code`` grant."""
        answer = await self._token_call(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            }
        )
        return self._tokens(answer, previous_refresh=None)

    async def refresh(self, refresh_token: str) -> ProviderTokens:
        """
        The ``refresh_token`` grant.  A provider that does not rotate
        refresh tokens sends none back: the old one is kept.
        """
        answer = await self._token_call(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )
        return self._tokens(answer, previous_refresh=refresh_token)

    async def mailbox_address(self, tokens: ProviderTokens) -> str:
        """
        The mailbox's address: the ID token's ``email`` claim, else the
        profile's userinfo endpoint.

        :raises ProviderUnavailable: when neither names a (verified) address.
        """
        allow_username = self.profile.name == "microsoft"
        if tokens.id_token:
            try:
                claims = _claims_of(tokens.id_token)
            except ValueError:
                claims = {}
            aud = claims.get("aud")
            audiences = aud if isinstance(aud, list) else [aud]
            if claims and self.profile.client_id in audiences:
                found = _address(claims, allow_username)
                if found is not None:
                    return found
        if self.profile.userinfo_url:
            claims = await self._call(
                "GET",
                self.profile.userinfo_url,
                headers={"Authorization": f"Bearer {tokens.access_token}"},
                what="userinfo",
            )
            found = _address(claims, allow_username)
            if found is not None:
                return found
        raise ProviderUnavailable(
            f"{self.profile.label} did not tell mailmcp the mailbox's (verified) email address"
        )

    # -- plumbing ----------------------------------------------------------------

    async def _token_call(self, form: dict[str, str]) -> dict[str, Any]:
        form = dict(form)
        # client_secret_post: Microsoft, Google and RFC 6749 §2.3.1 all take it.
        form["client_id"] = self.profile.client_id
        form["client_secret"] = self.profile.client_secret
        return await self._call("POST", self.profile.token_url, data=form, what="token")

    async def _call(self, method: str, url: str, *, what: str, **kw: Any) -> dict[str, Any]:
        label = self.profile.label
        headers = {"Accept": "application/json", **kw.pop("headers", {})}
        try:
            d: Deferred[Any] = self._http.request(method, url, headers=headers, **kw)
            d.addTimeout(self._timeout, self._clock)
            response = await d
            body_d: Deferred[bytes] = response.content()
            body_d.addTimeout(self._timeout, self._clock)
            body = await body_d
        except (CancelledError, DeferredTimeoutError):
            raise ProviderUnavailable(f"{label} did not answer in time; try again") from None
        except Exception as e:  # noqa: BLE001 - every transport failure is one message
            log.info(
                "{what} call to {provider} failed: {kind}",
                what=what,
                provider=self.profile.name,
                kind=type(e).__name__,
            )
            raise ProviderUnavailable(f"{label} could not be reached; try again") from None
        code = int(response.code)
        data: Any = None
        if len(body) <= MAX_RESPONSE:
            try:
                data = json.loads(body)
            except ValueError:
                data = None
        if 200 <= code < 300 and isinstance(data, dict):
            return data
        error = data.get("error") if isinstance(data, dict) else None
        error = error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else None
        log.info(
            "{what} call to {provider} answered {code} {error}",
            what=what,
            provider=self.profile.name,
            code=code,
            error=error or "-",
        )
        if error == "invalid_grant" or (what == "userinfo" and code == 401):
            raise ProviderRefused(
                f"{label} no longer accepts mailmcp's access to this mailbox "
                "(consent revoked or expired); sign in again",
                error="invalid_grant",
            )
        if error is not None and code < 500:
            raise ProviderUnavailable(
                f"{label} refused mailmcp's request ({error}); the operator should check "
                "mailmcp's registration with the provider",
                error=error,
            )
        if 200 <= code < 300:
            raise ProviderUnavailable(f"{label} sent a malformed answer; try again")
        raise ProviderUnavailable(f"{label} answered HTTP {code}; try again")

    def _tokens(self, answer: Mapping[str, Any], previous_refresh: str | None) -> ProviderTokens:
        access = answer.get("access_token")
        refresh = answer.get("refresh_token") or previous_refresh
        expires_in = answer.get("expires_in", DEFAULT_EXPIRES_IN)
        id_token = answer.get("id_token")
        token_type = answer.get("token_type", "Bearer")
        if isinstance(expires_in, str) and expires_in.isdigit():
            expires_in = int(expires_in)  # some providers send a string
        if (
            not isinstance(access, str)
            or not access
            or not isinstance(refresh, str)
            or not refresh
            or type(expires_in) is not int
            or expires_in <= 0
            or not (id_token is None or isinstance(id_token, str))
            or not isinstance(token_type, str)
            or token_type.lower() != "bearer"
        ):
            raise ProviderUnavailable(
                f"{self.profile.label} sent a token response without a usable access and "
                "refresh token" + ("" if previous_refresh else " (is offline access granted?)")
            )
        return ProviderTokens(
            access_token=access,
            refresh_token=refresh,
            expires_at=int(self._clock.seconds()) + expires_in,
            id_token=id_token,
        )
