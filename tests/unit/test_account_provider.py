"""
``/account`` for a provider profile (issue 18), socket-free: the OAuth app
and the account page on `StubTreq`, the provider's token/userinfo endpoints
on another (`provider_fake.FakeProvider`), fake live checkers, a `Clock`.

The page asks for no password: "Continue with <label>" (CSRF-checked) runs
the provider flow with PKCE and a fresh ``state``, sealed in the same
single-use cookie as a login but marked as an account-page sign-in (OA-50);
the callback learns the address from the provider, checks it at IMAP with
the token, and shows the account page signed in, listing that mailbox's
grants with Disconnect working.  Nothing is stored, no token shows (OA-51).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred

from mailmcp.oauth._account_page import AccountApp
from mailmcp.oauth._clients import (
    DEFAULT_REDIRECT_URIS,
    client_claims,
    provision_short_client,
    register_client,
)
from mailmcp.oauth._grants import AccountGrants
from mailmcp.oauth._throttle import ThrottlePolicy
from mailmcp.oauth._tokens import InvalidToken
from mailmcp.provider._login import ProviderLogin
from mailmcp.provider._options import profile_claims
from mailmcp.testing import FakeLoginChecker
from tests.unit.oauth_helpers import BASE, IMAP, SMTP, Server, make_server
from tests.unit.provider_fake import FakeProvider, profile
from tests.unit.provider_flow import Flow, provider_query

EMAIL = "user@example.test"
CALLBACK = BASE + "/oauth/provider/callback"


@attrs.define
class AccountFlow:
    """A browser on the account page: its cookies across the page and the callback."""

    flow: Flow
    page: StubTreq
    cookies: dict[str, str] = attrs.Factory(dict)

    @property
    def server(self) -> Server:
        return self.flow.server

    def _keep(self, response: Any) -> None:
        for header in response.headers.getRawHeaders(b"set-cookie", []):
            name, _, rest = header.decode().partition("=")
            value = rest.split(";")[0]
            if value:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)

    def _cookie(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def account(self, method: str, **kw: Any) -> tuple[Any, bytes]:
        kw.setdefault("allow_redirects", False)
        kw.setdefault("headers", {})
        kw["headers"].setdefault("Cookie", self._cookie())
        response = self.server.run(self.page.request(method, BASE + "/account", **kw))
        body = self.server.run(response.content())
        self._keep(response)
        return response, body

    def show(self) -> tuple[Any, bytes]:
        return self.account("GET")

    def post(self, form: dict[str, str], csrf: str | None = None) -> tuple[Any, bytes]:
        handoff = self.cookies.pop("mailmcp-account", None)  # the form, not a signed-in page
        _, page = self.show()
        if handoff is not None:
            self.cookies["mailmcp-account"] = handoff
        found = re.search(rb'name="csrf_token" value="([^"]+)"', page)
        assert found is not None
        data = {"csrf_token": found.group(1).decode() if csrf is None else csrf, **form}
        return self.account(
            "POST",
            data=data,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": self._cookie()},
        )

    def callback(self, cookie: str | None = None, **query: str) -> tuple[Any, bytes]:
        response, body = self.server.request(
            "GET",
            "/oauth/provider/callback",
            params=query,
            headers={"Cookie": self._cookie() if cookie is None else cookie},
        )
        self._keep(response)
        return response, body


def account_flow(tmp_path: Path, policy: ThrottlePolicy | None = None) -> AccountFlow:
    prof = profile()
    server = make_server(
        tmp_path, policy=policy, default_imap=IMAP, default_smtp=SMTP, provider=prof
    )
    fake = FakeProvider()
    fake.userinfo = (200, {"email": EMAIL, "email_verified": True})
    server.imap = server.app.parts.imap = FakeLoginChecker("IMAP", {EMAIL: "CANARY-access-1"})
    server.smtp = server.app.parts.smtp = FakeLoginChecker("SMTP", {EMAIL: "CANARY-access-1"})
    server.app.provider_login = ProviderLogin(
        codec=server.codec,
        base_url=BASE,
        default_profile=prof,
        grants=server.grants,
        imap_checker=server.imap,
        smtp_checker=server.smtp,
        throttle=server.throttle,
        http=StubTreq(fake),
        clock=server.clock,
        record=server.app.parts.record,
        address_of=server.app.parts.client_address,
    )
    claims = client_claims(
        None, None, [*DEFAULT_REDIRECT_URIS, "https://app.example/cb"], None, kind="registered"
    )
    client_id = server.run(ensureDeferred(register_client(server.store, server.codec, claims)))
    page = StubTreq(
        AccountApp(server.app, AccountGrants(server.store, server.config.keyring)).app.resource()
    )
    return AccountFlow(Flow(server, fake, client_id), page)


@pytest.fixture
def acc(tmp_path: Path) -> AccountFlow:
    return account_flow(tmp_path)


def connect_app(acc: AccountFlow) -> dict[str, Any]:
    """The MCP client connects with "Continue with Example": its tokens."""
    flow = acc.flow
    q = provider_query(flow.submit(scopes=["mail.read", "mail.send"])[0])
    response, _ = flow.callback(code="provider-code-1", state=q["state"])
    assert response.code == 303
    location = response.headers.getRawHeaders(b"location")[0].decode()
    code = parse_qs(urlsplit(location).query)["code"][0]
    response, tokens = flow.server.redeem(
        code, flow.verifier, client_id=flow.client_id, client_secret=None
    )
    assert response.code == 200, tokens
    # The account page's sign-in gets the provider's next access token.
    flow.server.imap.accounts[EMAIL] = "CANARY-access-2"
    return tokens


def signed_in(acc: AccountFlow, state: str, code: str = "provider-code-2") -> tuple[Any, bytes]:
    """The callback's 303 to /account (no page at the callback URL), then that page."""
    response, body = acc.callback(code=code, state=state)
    assert response.code == 303, body
    assert response.headers.getRawHeaders(b"location") == [b"/account"]
    handoff = [
        h
        for h in response.headers.getRawHeaders(b"set-cookie")
        if h.startswith(b"mailmcp-account=")
    ]
    assert len(handoff) == 1 and b"httponly" in handoff[0].lower()
    assert b"path=/account" in handoff[0].lower() and b"CANARY" not in handoff[0]
    return acc.show()


def start(acc: AccountFlow) -> dict[str, str]:
    response, _ = acc.post({"action": "provider"})
    assert response.code == 303, response.code
    return provider_query(response)


def test_page_offers_continue_and_no_password(acc: AccountFlow) -> None:
    """No password, username or email field; 'Continue with Example'; form-action allows the provider."""
    response, body = acc.show()
    assert response.code == 200
    assert b"Continue with Example" in body and b'id="provider"' in body
    assert b'name="action" value="provider"' in body
    for absent in (b'type="password"', b'name="imap_username"', b'name="email"'):
        assert absent not in body
    csp = response.headers.getRawHeaders(b"content-security-policy")[0]
    assert b"form-action 'self' https://provider.test;" in csp


def test_sign_in_lists_the_mailbox_apps_and_disconnects(acc: AccountFlow) -> None:
    """Continue → provider (PKCE, fresh state) → callback: the app listed; Disconnect ends its token."""
    tokens = connect_app(acc)
    grants_before = dict(acc.server.store.grants)
    acc.server.smtp.calls.clear()
    q = start(acc)
    assert q["code_challenge_method"] == "S256" and q["redirect_uri"] == CALLBACK
    assert len(q["state"]) >= 43
    response, body = signed_in(acc, q["state"])
    assert response.code == 200, body
    # Signed in exactly as after a password sign-in: the app and its Disconnect form.
    assert b"Test client" not in body  # (the registered client has no name)
    assert body.count(b'class="app"') == 1 and b'name="session"' in body
    assert b'type="password"' not in body and b"Continue with" not in body
    # Our verifier went to the provider; IMAP was checked with the token, SMTP not at all.
    sent = acc.flow.provider.requests[-1]
    assert sent["code"] == "provider-code-2" and sent["redirect_uri"] == CALLBACK
    assert acc.server.imap.calls[-1] == (IMAP.host, IMAP.port, EMAIL)
    assert acc.server.smtp.calls == []
    # Nothing stored: no new grant, and no provider token on the page.
    assert dict(acc.server.store.grants).keys() == grants_before.keys()
    assert b"CANARY" not in body and q["state"].encode() not in body
    # The pending cookie and the handoff are gone: a reload shows the sign-in again.
    assert not any(k.endswith("mailmcp-provider") or k == "mailmcp-account" for k in acc.cookies)
    # Disconnect, from the page's own form.
    grant = re.search(rb'name="grant" value="([^"]+)"', body).group(1).decode()
    session = re.search(rb'name="session" value="([^"]+)"', body).group(1).decode()
    response, body = acc.post({"action": "revoke", "session": session, "grant": grant})
    assert response.code == 200
    assert b"The app was disconnected." in body and b'id="no-apps"' in body
    with pytest.raises(InvalidToken):
        acc.server.account(tokens["access_token"])


def test_replayed_or_forged_callbacks_get_the_400_page(acc: AccountFlow) -> None:
    """Single use; state bound to this browser's cookie; no session for either."""
    connect_app(acc)
    q = start(acc)
    kept = dict(acc.cookies)
    response, body = acc.callback(code="provider-code-2", state="forged-" + q["state"][7:])
    assert response.code == 400 and b'name="session"' not in body
    response, body = acc.callback(cookie="", code="provider-code-2", state=q["state"])
    assert response.code == 400 and b'name="session"' not in body
    response, body = signed_in(acc, q["state"])
    assert response.code == 200 and b'name="session"' in body
    acc.cookies = kept
    response, body = acc.callback(code="provider-code-2", state=q["state"])
    assert response.code == 400 and b'name="session"' not in body
    assert b"already used" in body


def test_csrf_is_required_to_start(acc: AccountFlow) -> None:
    """A cross-site POST does not start a sign-in: 403, no redirect, no cookie."""
    response, body = acc.post({"action": "provider"}, csrf="wrong")
    assert response.code == 403 and not response.headers.getRawHeaders(b"location")
    assert not any(k.endswith("mailmcp-provider") for k in acc.cookies)


def test_password_sign_in_is_refused_for_a_provider_mailbox(acc: AccountFlow) -> None:
    """A hand-made password form: one clear line, nothing checked at IMAP."""
    response, body = acc.post(
        {"action": "sign_in", "email": EMAIL, "imap_username": EMAIL, "imap_password": "guess"}
    )
    assert response.code == 400
    assert b"This mailbox signs in with Example: use the button below." in body
    assert acc.server.imap.calls == [] and b"guess" not in body


def test_cancelled_or_refused_sign_in_shows_one_line(acc: AccountFlow) -> None:
    """access_denied, and a token IMAP does not take: the page again, one error line, no session."""
    q = start(acc)
    response, body = acc.callback(error="access_denied", state=q["state"])
    assert response.code == 400 and b"Sign-in at Example was cancelled." in body
    assert b'name="session"' not in body and b"Continue with Example" in body
    q = start(acc)
    acc.server.imap.accounts[EMAIL] = "other"
    response, body = acc.callback(code="provider-code-9", state=q["state"])
    assert response.code == 400
    assert b"IMAP: the mail server did not accept the sign-in from Example" in body
    assert b'name="session"' not in body and b"CANARY" not in body


def test_throttled_like_the_password_page(tmp_path: Path) -> None:
    """Past the address's attempts: 429 with Retry-After, nothing exchanged at the provider."""
    acc = account_flow(tmp_path, policy=ThrottlePolicy(ip_attempts=1))
    q = start(acc)
    assert acc.callback(error="server_error", state=q["state"])[0].code == 400
    q = start(acc)
    acc.callback(code="provider-code-1", state=q["state"])  # spends the one attempt
    q = start(acc)
    response, body = acc.callback(code="provider-code-2", state=q["state"])
    assert response.code == 429 and response.headers.getRawHeaders(b"retry-after")
    assert b"Too many sign-in attempts" in body
    assert [r["code"] for r in acc.flow.provider.requests] == ["provider-code-1"]


def test_a_login_pending_request_never_opens_the_account_page(acc: AccountFlow) -> None:
    """The login's cookie finishes a login (redirect with a code), not an account session."""
    q = provider_query(acc.flow.submit()[0])
    response, body = acc.flow.callback(code="provider-code-1", state=q["state"])
    assert response.code == 303 and b'name="session"' not in body


def test_the_handoff_is_one_use_and_cannot_be_forged(acc: AccountFlow) -> None:
    """A HEAD leaves it; the first GET uses it up (a reload is the sign-in page); forged ones show nothing."""
    connect_app(acc)
    q = start(acc)
    acc.callback(code="provider-code-2", state=q["state"])
    handoff = acc.cookies["mailmcp-account"]
    assert acc.account("HEAD")[0].code == 200 and acc.cookies["mailmcp-account"] == handoff
    assert b'name="session"' in acc.show()[1]
    assert "mailmcp-account" not in acc.cookies
    _, body = acc.show()
    assert b'name="session"' not in body and b"Continue with Example" in body
    for forged in (handoff[:-4] + ("AAAA" if not handoff.endswith("AAAA") else "BBBB"), "junk"):
        acc.cookies["mailmcp-account"] = forged
        response, body = acc.show()
        assert response.code == 200 and b'name="session"' not in body


def test_provisioned_client_with_its_own_provider(acc: AccountFlow) -> None:
    """/account?client_id= of a client with its own provider: that provider, and back to that page."""
    own = profile("google")
    _, sealed, _ = provision_short_client(
        acc.server.codec,
        IMAP,
        SMTP,
        ["https://app.example/cb"],
        public=True,
        provider=profile_claims(own),
    )
    client_id = "mc_" + "G" * 22
    acc.server.run(ensureDeferred(acc.server.store.put_client(client_id, sealed)))
    response, body = acc.account("GET", params={"client_id": client_id})
    assert b"Continue with Google" in body and b'type="password"' not in body
    assert f'name="client_id" value="{client_id}"'.encode() in body
    response, _ = acc.post({"action": "provider", "client_id": client_id})
    assert response.code == 303
    location = response.headers.getRawHeaders(b"location")[0].decode()
    assert location.startswith("https://accounts.google.com/o/oauth2/v2/auth?")
    state = parse_qs(urlsplit(location).query)["state"][0]
    acc.server.imap.accounts[EMAIL] = "CANARY-access-1"
    response, body = acc.callback(code="google-code", state=state)
    assert response.code == 303, body
    assert response.headers.getRawHeaders(b"location") == [
        f"/account?client_id={client_id}".encode()
    ]
    _, body = acc.account("GET", params={"client_id": client_id})
    # Signed in for this mailbox (no app connected yet), not the sign-in page.
    assert b'id="no-apps"' in body and b"Continue with" not in body
