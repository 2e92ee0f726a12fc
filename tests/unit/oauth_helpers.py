"""
A socket-free OAuth server for unit tests: `OAuthApp` on a `StubTreq`, a
memory grant store, fake login checkers and a `Clock`.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mailmcp._config import Config
from mailmcp.oauth._app import OAuthApp
from mailmcp.oauth._clients import DEFAULT_REDIRECT_URIS, MailServer, provision_client
from mailmcp.oauth._grants import GrantService
from mailmcp.oauth._keyring import KeyRing, new_master_key
from mailmcp.oauth._throttle import LoginThrottle, ThrottlePolicy
from mailmcp.oauth._tokens import TokenCodec
from mailmcp.oauth._verifier import GrantTokenVerifier
from mailmcp.testing import FakeLoginChecker, MemoryGrantStore
from mailmcp.web._cors import CORSPolicy
from mailmcp.web._router import Router

BASE = "https://mail.example.test"
REDIRECT = "https://app.example/cb"
LOOPBACK = "http://127.0.0.1:33333/callback"
USERS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}
IMAP = MailServer("imap.example.test", 993, "tls")
SMTP = MailServer("smtp.example.test", 465, "tls")


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@attrs.define
class Server:
    clock: Clock
    config: Config
    codec: TokenCodec
    store: MemoryGrantStore
    grants: GrantService
    imap: FakeLoginChecker
    smtp: FakeLoginChecker
    throttle: LoginThrottle
    app: OAuthApp
    treq: StubTreq
    verifier: GrantTokenVerifier
    client_id: str = ""
    client_secret: str = ""
    public_id: str = ""
    cookie: str = ""

    # -- plumbing ---------------------------------------------------------

    def run(self, d: Deferred[Any]) -> Any:
        out: list[Any] = []
        d.addBoth(out.append)
        self.treq.flush()
        assert out, "the request did not finish"
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    def request(self, method: str, path: str, **kw: Any) -> tuple[Any, bytes]:
        kw.setdefault("allow_redirects", False)
        response = self.run(self.treq.request(method, BASE + path, **kw))
        body = self.run(response.content())
        return response, body

    # -- the OAuth dance --------------------------------------------------

    def authorize_params(self, **over: Any) -> dict[str, str]:
        _, challenge = pkce()
        params = {
            "client_id": self.client_id,
            "redirect_uri": REDIRECT,
            "response_type": "code",
            "state": "st-123",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": BASE + "/mcp",
            "scope": "mail",
        }
        params.update(over)
        return {k: v for k, v in params.items() if v is not None}

    def get_form(self, params: dict[str, str]) -> tuple[Any, bytes, str, str]:
        response, body = self.request("GET", "/oauth/authorize", params=params)
        cookie = self.cookie
        for header in response.headers.getRawHeaders(b"set-cookie", []):
            cookie = self.cookie = header.split(b";")[0].decode()
        m = re.search(rb'name="csrf_token" value="([^"]+)"', body)
        csrf = m.group(1).decode() if m else ""
        return response, body, cookie, csrf

    def login(
        self,
        username: str = "alice@example.test",
        password: str = "alice-pw",
        *,
        params: dict[str, str] | None = None,
        same: bool = True,
        extra: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        csrf: str | None = None,
        cookie: str | None = None,
    ) -> tuple[Any, bytes]:
        params = params or self.authorize_params()
        _, page, got_cookie, got_csrf = self.get_form(params)
        form = dict(params)
        # What a browser posts: the offer (hidden) and the ticked checkboxes,
        # not the request's own scope parameter.
        form.pop("scope", None)
        offered = re.search(rb'name="requested_scope" value="([^"]*)"', page)
        if offered is not None:
            form["requested_scope"] = offered.group(1).decode()
        form["scope"] = " ".join(
            v.decode() for v in re.findall(rb'name="scope" value="([^"]+)"[^>]* checked="checked"', page))
        form.update(
            email=username if "@" in username else username + "@example.test",
            full_name="Alice Example",
            imap_username=username,
            imap_password=password,
            csrf_token=got_csrf if csrf is None else csrf,
        )
        if same:
            form["use_same_credentials"] = "1"
        if extra:
            form.update(extra)
        all_headers = {"Cookie": got_cookie if cookie is None else cookie,
                       "Content-Type": "application/x-www-form-urlencoded"}
        all_headers.update(headers or {})
        return self.request("POST", "/oauth/authorize", data=form, headers=all_headers)

    def code_for(self, verifier_challenge: tuple[str, str] | None = None, **over: Any) -> tuple[str, str]:
        verifier, challenge = verifier_challenge or pkce()
        params = self.authorize_params(code_challenge=challenge, **over)
        response, body = self.login(params=params)
        assert response.code == 303, body
        location = response.headers.getRawHeaders(b"location")[0].decode()
        query = parse_qs(urlsplit(location).query)
        return query["code"][0], verifier

    def token(self, form: dict[str, str], *, auth: tuple[str, str] | None = None,
              path: str = "/oauth/token", headers: dict[str, str] | None = None,
              **kw: Any) -> tuple[Any, dict[str, Any]]:
        import json

        headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        if auth is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        response, body = self.request("POST", path, data=form, headers=headers, **kw)
        return response, json.loads(body) if body else {}

    def redeem(self, code: str, verifier: str, **over: Any) -> tuple[Any, dict[str, Any]]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": REDIRECT,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "resource": BASE + "/mcp",
        }
        form.update(over)
        return self.token({k: v for k, v in form.items() if v is not None})

    def tokens(self) -> dict[str, Any]:
        code, verifier = self.code_for()
        response, body = self.redeem(code, verifier)
        assert response.code == 200, body
        return body

    def refresh(self, refresh_token: str, **over: Any) -> tuple[Any, dict[str, Any]]:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
                "client_id": self.client_id, "client_secret": self.client_secret}
        form.update(over)
        return self.token({k: v for k, v in form.items() if v is not None})

    def account(self, access_token: str) -> Any:
        return self.run(self.verifier.verify(access_token))


def make_config(tmp_path: Path, **kw: Any) -> Config:
    return Config(
        listen=("tcp:0",),
        base_url=BASE,
        state_dir=tmp_path,
        store=f"sqlite:{tmp_path / 'x.sqlite3'}",
        attachments="local",
        mail_ca_file=None,
        keyring=KeyRing([new_master_key()]),
        **kw,
    )


def routed(app: OAuthApp, config: Config) -> Router:
    """The app behind the daemon's router: its root aliases and CORS policy apply."""
    resource = app.app.resource()
    return Router([("/.well-known/", resource), ("/oauth/", resource)],
                  cors=CORSPolicy.from_config(config))


def make_server(tmp_path: Path, policy: ThrottlePolicy | None = None, concurrency: int = 4,
                store_factory: Any = MemoryGrantStore, server_class: type[Server] = Server,
                resolver: Any = None, **config_kw: Any) -> Server:
    """
    The app on a `StubTreq`, with a `Clock`; C{store_factory(clock)} makes
    the grant store (memory by default), C{server_class} may pump real I/O.
    """
    clock = Clock()
    clock.advance(1_800_000_000)
    config = make_config(tmp_path, **config_kw)
    codec = TokenCodec(config.keyring, clock)
    store = store_factory(clock)
    grants = GrantService(store, codec, config.mcp_url, config.code_lifetime,
                          config.access_token_lifetime, config.refresh_token_lifetime,
                          max_scope=config.max_scope)
    imap = FakeLoginChecker("IMAP", USERS)
    smtp = FakeLoginChecker("SMTP", USERS)
    throttle = LoginThrottle(store, concurrency, policy, clock=clock)
    app = OAuthApp(config, codec, grants, imap, smtp, throttle, resolver=resolver)
    server = server_class(clock=clock, config=config, codec=codec, store=store, grants=grants,
                    imap=imap, smtp=smtp, throttle=throttle, app=app,
                    treq=StubTreq(routed(app, config)), verifier=GrantTokenVerifier(grants))
    uris = (*DEFAULT_REDIRECT_URIS, REDIRECT)
    server.client_id, secret = provision_client(codec, IMAP, SMTP, uris, name="Test client")
    assert secret is not None
    server.client_secret = secret
    server.public_id, _ = provision_client(codec, IMAP, SMTP, uris, public=True)
    return server
