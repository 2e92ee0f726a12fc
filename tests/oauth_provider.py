"""
A small OAuth 2.0 / OpenID Connect provider for the test harness only.

It stands in for Microsoft's or Google's sign-in so that mailmcp's provider
sign-in (issue 18) can be tested against real Dovecot and Postfix: mailmcp
is its client (authorization code with PKCE, refresh tokens that rotate),
and Dovecot's ``oauth2`` passdb asks it whether an XOAUTH2/OAUTHBEARER token
is active (RFC 7662 introspection).  Tests steer it through ``/admin/...``
(add a user, shorten token lifetimes, expire tokens, revoke consent, read
counters); `tests.harness.OAuthProviderHandle` wraps those calls.

Everything is kept in memory; one process serves a whole test session.  It
must never be deployed: it has no password, anybody on loopback may consent
for any registered user.

Run: ``python -m tests.oauth_provider --port N --state-dir DIR``.  The client
secret is read from ``DIR/client-secret`` (created, mode 0600, when missing).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import html
import ipaddress
import json
import os
import secrets
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs
from jwcrypto import jwk, jwt
from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

CLIENT_ID = "mailmcp-test"
SCOPE = "openid email offline_access mail"
CALLBACK_SUFFIX = "/oauth/provider/callback"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
CODE_LIFETIME = 600
ID_TOKEN_LIFETIME = 3600

log = Logger()


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of C{verifier} (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def redirect_uri_allowed(uri: str) -> bool:
    """
    The registered redirect URIs: any plain-HTTP loopback URI whose path ends
    in ``/oauth/provider/callback`` (the daemon under test has a random port
    and may sit under a base path), without a fragment.
    """
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        return False
    return (
        parts.scheme == "http"
        and (parts.hostname or "") in LOOPBACK_HOSTS
        and parts.path.endswith(CALLBACK_SUFFIX)
        and not parts.fragment
        and "@" not in parts.netloc
    )


def add_query(uri: str, params: dict[str, str]) -> str:
    return uri + ("&" if urlsplit(uri).query else "?") + urlencode(params)


@attrs.define
class Account:
    email: str
    sub: str


@attrs.define
class AccessToken:
    email: str
    grant: str
    scope: str
    client_id: str
    expires_at: float
    revoked: bool = False


@attrs.define
class RefreshToken:
    email: str
    grant: str
    scope: str
    client_id: str
    used: bool = False
    revoked: bool = False


@attrs.define
class Code:
    email: str
    client_id: str
    redirect_uri: str
    scope: str
    challenge: str
    expires_at: float
    used: bool = False


@attrs.define
class Counters:
    code_exchanges: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    introspections: int = 0
    introspections_active: int = 0
    userinfo: int = 0
    refresh_tokens_seen: list[str] = attrs.Factory(list)
    refresh_tokens_issued: list[str] = attrs.Factory(list)

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class OAuthError(Exception):
    """An RFC 6749 §5.2 error answer."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@attrs.define(slots=False)  # Klein binds its app onto the instance
class ProviderApp:
    """
    The provider's state and HTTP routes.

    C{clock} decides expiry (a L{twisted.internet.task.Clock} in unit tests);
    C{issuer} is the base URL the process answers on.
    """

    clock: IReactorTime
    issuer: str
    client_secret: str
    client_id: str = CLIENT_ID
    scope: str = SCOPE
    access_token_lifetime: int = 3600
    key: jwk.JWK = attrs.Factory(lambda: jwk.JWK.generate(kty="RSA", size=2048, kid="test-1"))
    accounts: dict[str, Account] = attrs.Factory(dict)
    codes: dict[str, Code] = attrs.Factory(dict)
    access_tokens: dict[str, AccessToken] = attrs.Factory(dict)
    refresh_tokens: dict[str, RefreshToken] = attrs.Factory(dict)
    counters: dict[str, Counters] = attrs.Factory(dict)

    app = Klein()

    # -- state ---------------------------------------------------------------

    def add_account(self, email: str) -> Account:
        email = email.strip()
        if email not in self.accounts:
            sub = hashlib.sha256(email.lower().encode()).hexdigest()[:24]
            self.accounts[email] = Account(email=email, sub=sub)
            self.counters[email] = Counters()
        return self.accounts[email]

    def _now(self) -> float:
        return self.clock.seconds()

    def _issue(self, email: str, grant: str, scope: str, client_id: str) -> dict[str, Any]:
        now = self._now()
        access = "at-" + secrets.token_urlsafe(24)
        refresh = "rt-" + secrets.token_urlsafe(24)
        self.access_tokens[access] = AccessToken(
            email=email, grant=grant, scope=scope, client_id=client_id,
            expires_at=now + self.access_token_lifetime,
        )
        self.refresh_tokens[refresh] = RefreshToken(
            email=email, grant=grant, scope=scope, client_id=client_id
        )
        self.counters[email].refresh_tokens_issued.append(refresh)
        account = self.accounts[email]
        claims = {
            "iss": self.issuer,
            "aud": client_id,
            "sub": account.sub,
            "email": email,
            "email_verified": True,
            "iat": int(now),
            "exp": int(now) + ID_TOKEN_LIFETIME,
        }
        token = jwt.JWT(header={"alg": "RS256", "kid": self.key.get("kid")}, claims=claims)
        token.make_signed_token(self.key)
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime,
            "refresh_token": refresh,
            "scope": scope,
            "id_token": token.serialize(),
        }

    def active_token(self, token: str) -> AccessToken | None:
        record = self.access_tokens.get(token)
        if record is None or record.revoked or record.expires_at <= self._now():
            return None
        return record

    def expire(self, email: str) -> int:
        now = self._now()
        count = 0
        for record in self.access_tokens.values():
            if record.email == email and record.expires_at > now:
                record.expires_at = now
                count += 1
        return count

    def revoke_user(self, email: str) -> None:
        for access in self.access_tokens.values():
            if access.email == email:
                access.revoked = True
        for refresh in self.refresh_tokens.values():
            if refresh.email == email:
                refresh.revoked = True
        for code in self.codes.values():
            if code.email == email:
                code.used = True

    def revoke_grant(self, grant: str) -> None:
        for access in self.access_tokens.values():
            if access.grant == grant:
                access.revoked = True
        for refresh in self.refresh_tokens.values():
            if refresh.grant == grant:
                refresh.revoked = True

    # -- request helpers -------------------------------------------------------

    @staticmethod
    def _form(request: IRequest) -> dict[str, str]:
        body = request.content.read().decode("utf-8", "replace")  # type: ignore[attr-defined]
        return dict(parse_qsl(body, keep_blank_values=True))

    @staticmethod
    def _json_body(request: IRequest) -> dict[str, Any]:
        try:
            value = json.loads(request.content.read() or b"{}")  # type: ignore[attr-defined]
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise OAuthError("invalid_request", "the body must be a JSON object")
        return value

    @staticmethod
    def _json(request: IRequest, value: object, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(value).encode()

    def _error(self, request: IRequest, error: OAuthError) -> bytes:
        if error.status == 401:
            request.setHeader(b"www-authenticate", b'Basic realm="test provider"')
        return self._json(
            request, {"error": error.error, "error_description": error.description}, error.status
        )

    def _client(self, request: IRequest, form: dict[str, str]) -> str:
        """The authenticated client id (HTTP Basic, or form fields; RFC 6749 §2.3.1)."""
        header = request.getHeader(b"authorization")
        client_id = secret = None
        if header and header[:6].lower() == b"basic ":
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise OAuthError("invalid_client", "malformed Basic credentials", 401) from None
            user, sep, password = decoded.partition(":")
            if not sep:
                raise OAuthError("invalid_client", "malformed Basic credentials", 401)
            client_id = dict(parse_qsl("u=" + user)).get("u", "")
            secret = dict(parse_qsl("p=" + password)).get("p", "")
        elif "client_secret" in form:
            client_id, secret = form.get("client_id", ""), form["client_secret"]
        if client_id is None or secret is None:
            raise OAuthError("invalid_client", "client authentication is required", 401)
        if client_id != self.client_id or not secrets.compare_digest(
            secret.encode(), self.client_secret.encode()
        ):
            raise OAuthError("invalid_client", "unknown client or wrong secret", 401)
        return client_id

    def _page(self, request: IRequest, status: int, title: str, body: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1>{body}</body></html>"
        ).encode()

    # -- /authorize ------------------------------------------------------------

    def _check_client_and_redirect(self, params: dict[str, str]) -> str | None:
        """An error text when no redirect may be made (unknown client or redirect URI)."""
        if params.get("client_id") != self.client_id:
            return "Unknown client."
        if not redirect_uri_allowed(params.get("redirect_uri", "")):
            return "This redirect URI is not registered for the client."
        return None

    def _check_request(self, params: dict[str, str]) -> tuple[str, str] | None:
        """An RFC 6749 §4.1.2.1 error (sent back to the client) or None."""
        if params.get("response_type") != "code":
            return "unsupported_response_type", "response_type must be code"
        if not params.get("code_challenge"):
            return "invalid_request", "PKCE is required: code_challenge is missing"
        if params.get("code_challenge_method") != "S256":
            return "invalid_request", "code_challenge_method must be S256"
        return None

    def _consent_form(self, request: IRequest, params: dict[str, str], email: str,
                      message: str = "", status: int = 200) -> bytes:
        hidden = "".join(
            f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(params[k])}'>"
            for k in ("response_type", "client_id", "redirect_uri", "scope", "state",
                      "code_challenge", "code_challenge_method")
            if k in params
        )
        note = f"<p id='message'>{html.escape(message)}</p>" if message else ""
        body = (
            f"{note}<p>Test provider: <b>{html.escape(self.client_id)}</b> asks for "
            f"<code>{html.escape(params.get('scope', ''))}</code>.</p>"
            "<form method='post' action='/authorize'>"
            f"{hidden}<label>Email <input name='email' type='email' "
            f"value='{html.escape(email)}'></label>"
            "<button type='submit' id='approve' name='decision' value='approve'>Allow</button>"
            "<button type='submit' id='deny' name='decision' value='deny'>Deny</button>"
            "</form>"
        )
        return self._page(request, status, "Test provider sign-in", body)

    @app.route("/authorize", methods=["GET"])
    def authorize_page(self, request: IRequest) -> bytes:
        params = {k.decode("utf-8", "replace"): v[-1].decode("utf-8", "replace")
                  for k, v in request.args.items()}  # type: ignore[attr-defined]
        problem = self._check_client_and_redirect(params)
        if problem is not None:
            return self._page(request, 400, "Sign-in request refused", f"<p>{problem}</p>")
        error = self._check_request(params)
        if error is not None:
            return self._redirect(request, params, {"error": error[0],
                                                    "error_description": error[1]})
        return self._consent_form(request, params, params.get("login_hint", ""))

    @app.route("/authorize", methods=["POST"])
    def authorize_decision(self, request: IRequest) -> bytes:
        params = self._form(request)
        problem = self._check_client_and_redirect(params)
        if problem is not None:
            return self._page(request, 400, "Sign-in request refused", f"<p>{problem}</p>")
        error = self._check_request(params)
        if error is not None:
            return self._redirect(request, params, {"error": error[0],
                                                    "error_description": error[1]})
        if params.get("decision") != "approve":
            return self._redirect(request, params, {"error": "access_denied"})
        email = params.get("email", "").strip()
        if email not in self.accounts:
            return self._consent_form(request, params, email,
                                      "No account with this address at the test provider.", 400)
        code = "code-" + secrets.token_urlsafe(24)
        self.codes[code] = Code(
            email=email, client_id=params["client_id"], redirect_uri=params["redirect_uri"],
            scope=params.get("scope") or self.scope, challenge=params["code_challenge"],
            expires_at=self._now() + CODE_LIFETIME,
        )
        return self._redirect(request, params, {"code": code})

    def _redirect(self, request: IRequest, params: dict[str, str], answer: dict[str, str]) -> bytes:
        if "state" in params:
            answer["state"] = params["state"]
        request.setResponseCode(302)
        request.setHeader(b"location", add_query(params["redirect_uri"], answer).encode())
        return b""

    # -- /token ----------------------------------------------------------------

    @app.route("/token", methods=["POST"])
    def token(self, request: IRequest) -> bytes:
        form = self._form(request)
        try:
            client_id = self._client(request, form)
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                answer = self._exchange_code(form, client_id)
            elif grant_type == "refresh_token":
                answer = self._refresh(form, client_id)
            else:
                raise OAuthError("unsupported_grant_type", "unsupported grant_type")
        except OAuthError as e:
            return self._error(request, e)
        return self._json(request, answer)

    def _exchange_code(self, form: dict[str, str], client_id: str) -> dict[str, Any]:
        code = self.codes.get(form.get("code", ""))
        if code is None or code.used or code.expires_at <= self._now():
            raise OAuthError("invalid_grant", "unknown, used or expired authorization code")
        code.used = True  # one attempt per code, right or wrong
        if code.client_id != client_id:
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if form.get("redirect_uri") != code.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization")
        verifier = form.get("code_verifier", "")
        if not verifier or not secrets.compare_digest(s256(verifier), code.challenge):
            raise OAuthError("invalid_grant", "PKCE verification failed")
        self.counters[code.email].code_exchanges += 1
        return self._issue(code.email, secrets.token_hex(8), code.scope, client_id)

    def _refresh(self, form: dict[str, str], client_id: str) -> dict[str, Any]:
        presented = form.get("refresh_token", "")
        record = self.refresh_tokens.get(presented)
        if record is None:
            raise OAuthError("invalid_grant", "unknown refresh token")
        counters = self.counters[record.email]
        counters.refresh_tokens_seen.append(presented)
        if record.used or record.revoked or record.client_id != client_id:
            counters.refresh_failures += 1
            raise OAuthError("invalid_grant", "the refresh token is used, revoked or not yours")
        record.used = True  # rotation: a refresh token works once
        counters.refreshes += 1
        return self._issue(record.email, record.grant, record.scope, client_id)

    # -- resource server side ------------------------------------------------------

    @app.route("/userinfo", methods=["GET", "POST"])
    def userinfo(self, request: IRequest) -> bytes:
        header = request.getHeader(b"authorization") or b""
        token = header[7:].strip().decode("ascii", "replace") if header[:7].lower() == b"bearer " else ""
        record = self.active_token(token)
        if record is None:
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Bearer error="invalid_token"')
            return self._json(request, {"error": "invalid_token"}, 401)
        self.counters[record.email].userinfo += 1
        account = self.accounts[record.email]
        return self._json(request, {"sub": account.sub, "email": account.email,
                                    "email_verified": True})

    @app.route("/introspect", methods=["POST"])
    def introspect(self, request: IRequest) -> bytes:
        form = self._form(request)
        try:
            self._client(request, form)
        except OAuthError as e:
            return self._error(request, e)
        token = form.get("token", "")
        access = self.access_tokens.get(token)
        if access is not None:
            counters = self.counters[access.email]
            counters.introspections += 1
            if self.active_token(token) is not None:
                counters.introspections_active += 1
                return self._json(request, {
                    "active": True,
                    "email": access.email,
                    "sub": self.accounts[access.email].sub,
                    "username": access.email,
                    "exp": int(access.expires_at),
                    "scope": access.scope,
                    "client_id": access.client_id,
                    "token_type": "Bearer",
                })
        return self._json(request, {"active": False})

    @app.route("/revoke", methods=["POST"])
    def revoke(self, request: IRequest) -> bytes:
        form = self._form(request)
        try:
            client_id = self._client(request, form)
        except OAuthError as e:
            return self._error(request, e)
        token = form.get("token", "")
        refresh = self.refresh_tokens.get(token)
        if refresh is not None and refresh.client_id == client_id:
            self.revoke_grant(refresh.grant)
        access = self.access_tokens.get(token)
        if access is not None and access.client_id == client_id:
            access.revoked = True
        request.setResponseCode(200)
        return b""

    @app.route("/.well-known/openid-configuration", methods=["GET"])
    def discovery(self, request: IRequest) -> bytes:
        return self._json(request, {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "userinfo_endpoint": self.issuer + "/userinfo",
            "revocation_endpoint": self.issuer + "/revoke",
            "introspection_endpoint": self.issuer + "/introspect",
            "jwks_uri": self.issuer + "/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": self.scope.split(),
        })

    @app.route("/jwks", methods=["GET"])
    def jwks(self, request: IRequest) -> bytes:
        return self._json(request, {"keys": [self.key.export_public(as_dict=True)]})

    # -- test control ------------------------------------------------------------

    def _admin(self, request: IRequest) -> dict[str, Any]:
        peer = request.getClientAddress()
        host = getattr(peer, "host", "")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise OAuthError("access_denied", "admin calls only from loopback", 403)
        return self._json_body(request) if request.method == b"POST" else {}

    def _email(self, body: dict[str, Any]) -> str:
        email = body.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise OAuthError("invalid_request", "email is required")
        return email.strip()

    @app.route("/admin/users", methods=["POST"])
    def admin_users(self, request: IRequest) -> bytes:
        try:
            account = self.add_account(self._email(self._admin(request)))
        except OAuthError as e:
            return self._error(request, e)
        return self._json(request, {"email": account.email, "sub": account.sub})

    @app.route("/admin/lifetime", methods=["POST"])
    def admin_lifetime(self, request: IRequest) -> bytes:
        try:
            seconds = self._admin(request).get("seconds")
            if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0:
                raise OAuthError("invalid_request", "seconds must be a whole number >= 0")
        except OAuthError as e:
            return self._error(request, e)
        self.access_token_lifetime = seconds
        return self._json(request, {"seconds": seconds})

    def _known(self, email: str) -> str:
        if email not in self.accounts:
            raise OAuthError("invalid_request", "unknown user", 404)
        return email

    @app.route("/admin/expire", methods=["POST"])
    def admin_expire(self, request: IRequest) -> bytes:
        try:
            email = self._known(self._email(self._admin(request)))
        except OAuthError as e:
            return self._error(request, e)
        return self._json(request, {"expired": self.expire(email)})

    @app.route("/admin/revoke", methods=["POST"])
    def admin_revoke(self, request: IRequest) -> bytes:
        try:
            email = self._known(self._email(self._admin(request)))
        except OAuthError as e:
            return self._error(request, e)
        self.revoke_user(email)
        return self._json(request, {"revoked": email})

    @app.route("/admin/stats", methods=["GET"])
    def admin_stats(self, request: IRequest) -> bytes:
        try:
            self._admin(request)
        except OAuthError as e:
            return self._error(request, e)
        return self._json(request, {email: c.as_json() for email, c in self.counters.items()})


def client_secret(state_dir: Path) -> str:
    """The client secret in C{state_dir}/client-secret, created (0600) when missing."""
    path = state_dir / "client-secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.oauth_provider", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(list(argv) if argv is not None else None)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.server import Site

    args.state_dir.mkdir(parents=True, exist_ok=True)
    # For services.sh stop, should the harness that started us be gone.
    (args.state_dir / "provider.pid").write_text(f"{os.getpid()}\n")
    logfile = open(args.state_dir / "provider.log", "a")  # noqa: SIM115  (lives as long as the process)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(logfile)], redirectStandardIO=False)
    provider = ProviderApp(
        clock=reactor,  # type: ignore[arg-type]
        issuer=f"http://127.0.0.1:{args.port}",
        client_secret=client_secret(args.state_dir),
    )
    reactor.listenTCP(args.port, Site(provider.app.resource()), interface="127.0.0.1")  # type: ignore[attr-defined]
    log.info("test OAuth provider on {issuer}", issuer=provider.issuer)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
