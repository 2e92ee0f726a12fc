"""
Provider sign-in on the login page and ``/oauth/provider/callback``
(issue 18), socket-free: the OAuth app on a `StubTreq`, the provider's
token/userinfo endpoints on another (`provider_fake.FakeProvider`), fake live
checkers that accept one mailbox's access token, and a `Clock`.

The page for a provider profile has "Continue with <label>" and no
email/password/server fields; its submission (CSRF-checked) sends the
browser to the provider with PKCE S256 and a fresh ``state``; the callback
is bound to the browser's sealed cookie and single use (OA-50; nothing
secret in pages or URLs: OA-51), and
finishes the MCP client's authorization exactly as a password login does.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred

from mailmcp.oauth._clients import (
    DEFAULT_REDIRECT_URIS,
    client_claims,
    provision_short_client,
    register_client,
)
from mailmcp.provider._login import PENDING_LIFETIME, ProviderLogin
from mailmcp.provider._options import profile_claims
from mailmcp.testing import FakeLoginChecker
from tests.unit.oauth_helpers import BASE, IMAP, REDIRECT, SMTP, make_server
from tests.unit.provider_fake import CLIENT_SECRET, FakeProvider, profile
from tests.unit.provider_flow import Flow, provider_query

EMAIL = "user@example.test"
CALLBACK = BASE + "/oauth/provider/callback"


@pytest.fixture
def flow(tmp_path) -> Flow:
    prof = profile()
    server = make_server(tmp_path, default_imap=IMAP, default_smtp=SMTP, provider=prof)
    fake = FakeProvider()
    fake.userinfo = (200, {"email": EMAIL, "email_verified": True})
    # The mail servers accept this mailbox with the first access token issued.
    server.imap = server.app.parts.imap = FakeLoginChecker("IMAP", {EMAIL: "CANARY-access-1"})
    server.smtp = server.app.parts.smtp = FakeLoginChecker("SMTP", {EMAIL: "CANARY-access-1"})
    server.app.provider_login = ProviderLogin(
        codec=server.codec, base_url=BASE, default_profile=prof, grants=server.grants,
        imap_checker=server.imap, smtp_checker=server.smtp, throttle=server.throttle,
        http=StubTreq(fake), clock=server.clock, record=server.app.parts.record,
        address_of=server.app.parts.client_address)
    # A registered client (RFC 7591): no servers of its own, so the default profile.
    claims = client_claims(None, None, [*DEFAULT_REDIRECT_URIS, REDIRECT], None, kind="registered")
    client_id = server.run(ensureDeferred(register_client(server.store, server.codec, claims)))
    return Flow(server, fake, client_id)


def test_page_offers_continue_and_no_password(flow: Flow) -> None:
    """The page: name field, scope checkboxes, 'Continue with Example'; no email, password or server field."""
    response, body = flow.page()
    assert response.code == 200
    assert b"Continue with Example" in body and b'id="provider"' in body
    assert b'name="full_name"' in body and body.count(b'name="scope"') == 5
    for absent in (b'type="password"', b'name="email"', b'name="imap_username"', b'name="imap_host"',
                   b"Your password is checked"):
        assert absent not in body
    # The POST's redirect to the provider must be allowed by form-action.
    csp = response.headers.getRawHeaders(b"content-security-policy")[0]
    assert b"form-action 'self' https://app.example https://provider.test;" in csp


def test_password_clients_keep_the_password_page(flow: Flow, tmp_path) -> None:
    """A provisioned client with its own servers still signs in with a password."""
    flow.client_id = flow.server.client_id
    _, body = flow.page()
    assert b'type="password"' in body and b"Continue with" not in body


def test_continue_redirects_to_provider_with_pkce_and_fresh_state(flow: Flow) -> None:
    """The submission goes to the provider: S256 challenge, fresh state, our callback; a sealed cookie."""
    response, _ = flow.submit()
    assert response.code == 303
    q = provider_query(response)
    assert q["code_challenge_method"] == "S256" and re.fullmatch(r"[A-Za-z0-9_-]{43}", q["code_challenge"])
    assert q["redirect_uri"] == CALLBACK and q["response_type"] == "code"
    assert q["client_id"] == "mailmcp-client-id" and q["scope"] == "openid email mail"
    assert len(q["state"]) >= 43 and q["state"] != "mcp-state-1"
    assert q["code_challenge"] != flow.challenge  # ours, not the MCP client's
    cookie = [h for h in response.headers.getRawHeaders(b"set-cookie") if h.startswith(b"__Host-mailmcp-provider=")]
    assert len(cookie) == 1
    attrs_ = cookie[0].lower()
    assert b"httponly" in attrs_ and b"secure" in attrs_ and b"samesite=lax" in attrs_ and b"path=/" in attrs_
    # Nothing of the MCP request is readable in the cookie.
    assert b"mcp-state-1" not in cookie[0] and REDIRECT.encode() not in cookie[0]
    # A second start gets another state.
    assert provider_query(flow.submit()[0])["state"] != q["state"]


def test_callback_finishes_the_mcp_authorization(flow: Flow) -> None:
    """Code exchanged with our verifier, address learnt, IMAP+SMTP checked with the token, code to the MCP client."""
    q = provider_query(flow.submit(scopes=["mail.read", "mail.send"])[0])
    response, _ = flow.callback(code="provider-code-1", state=q["state"])
    assert response.code == 303
    location = response.headers.getRawHeaders(b"location")[0].decode()
    assert location.startswith(REDIRECT + "?")
    back = parse_qs(urlsplit(location).query)
    assert back["state"] == ["mcp-state-1"] and back["iss"] == [BASE]
    # The provider saw our PKCE verifier and redirect URI.
    sent = flow.provider.requests[0]
    assert sent["grant_type"] == "authorization_code" and sent["code"] == "provider-code-1"
    digest = hashlib.sha256(sent["code_verifier"].encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == q["code_challenge"]
    assert sent["redirect_uri"] == CALLBACK
    # Live checks with the token (XOAUTH2), as the mailbox's address.
    assert flow.server.imap.calls == [(IMAP.host, IMAP.port, EMAIL)]
    assert flow.server.smtp.calls == [(SMTP.host, SMTP.port, EMAIL)]
    # The MCP code redeems as after a password login, with the scopes chosen.
    response, tokens = flow.server.redeem(back["code"][0], flow.verifier, client_id=flow.client_id,
                                          client_secret=None)
    assert response.code == 200, tokens
    assert set(tokens["scope"].split()) == {"mail.read", "mail.send"}
    account = flow.server.account(tokens["access_token"])
    assert account.imap_auth == "xoauth2" and account.email == EMAIL
    assert account.full_name == "Una User"
    # The cookie is gone.
    assert not any(k.endswith("mailmcp-provider") for k in flow.cookies)


def test_replayed_callback_is_refused(flow: Flow) -> None:
    """The same callback (same cookie and state) a second time: the 400 page, no second grant."""
    q = provider_query(flow.submit()[0])
    cookie = flow.cookie_header()
    assert flow.callback(code="c1", state=q["state"])[0].code == 303
    response, body = flow.callback(cookie=cookie, code="c1", state=q["state"])
    assert response.code == 400 and b"already used" in body
    assert response.headers.getRawHeaders(b"location") is None
    assert len(flow.provider.requests) == 1


def test_state_without_the_browser_cookie_is_refused(flow: Flow) -> None:
    """A state from the URL alone (another browser, a forged link) gets the 400 page; no exchange."""
    q = provider_query(flow.submit()[0])
    response, body = flow.callback(cookie="", code="c1", state=q["state"])
    assert response.code == 400 and b"not started in this browser" in body
    assert flow.provider.requests == []


def test_forged_state_is_refused(flow: Flow) -> None:
    """This browser's cookie with another state: 400; the real state still works afterwards."""
    q = provider_query(flow.submit()[0])
    assert flow.callback(code="c1", state="forged-" + q["state"][7:])[0].code == 400
    assert flow.provider.requests == []
    assert flow.callback(code="c1", state=q["state"])[0].code == 303


def test_expired_pending_request_is_refused(flow: Flow) -> None:
    """Past the pending lifetime the cookie no longer opens: 400."""
    q = provider_query(flow.submit()[0])
    flow.server.clock.advance(PENDING_LIFETIME + 1)
    assert flow.callback(code="c1", state=q["state"])[0].code == 400


def test_provider_access_denied_shows_the_page_again(flow: Flow) -> None:
    """error=access_denied: the login page again with a clear line, name kept, nothing issued."""
    q = provider_query(flow.submit(full_name="Kept Name")[0])
    response, body = flow.callback(error="access_denied", error_description="<script>x</script>",
                                   state=q["state"])
    assert response.code == 400
    assert b"was cancelled or access was not allowed" in body
    assert b"Continue with Example" in body and b'value="Kept Name"' in body
    assert b"<script>" not in body and b'type="password"' not in body
    assert flow.provider.requests == [] and flow.server.imap.calls == []


def test_failed_live_check_shows_the_page_again(flow: Flow) -> None:
    """IMAP refuses the token: the page again, nothing issued, no token in the page."""
    flow.server.imap.accounts.clear()
    q = provider_query(flow.submit()[0])
    response, body = flow.callback(code="c1", state=q["state"])
    assert response.code == 400
    assert b"IMAP: the mail server did not accept the sign-in from Example" in body
    assert flow.server.smtp.calls == []


def test_provider_refusal_at_the_token_endpoint(flow: Flow) -> None:
    """invalid_grant from the provider: the page again with a line naming the provider."""
    flow.provider.queue(400, {"error": "invalid_grant", "error_description": "CANARY-desc"})
    q = provider_query(flow.submit()[0])
    response, body = flow.callback(code="c1", state=q["state"])
    assert response.code == 400 and b"Example did not accept the sign-in" in body
    assert b"CANARY-desc" not in body


def test_wrong_csrf_never_reaches_the_provider(flow: Flow) -> None:
    """A submission without the right CSRF token: 403, no redirect, no cookie."""
    response, _ = flow.submit(csrf="x" * 43)
    assert response.code == 403 and response.headers.getRawHeaders(b"location") is None
    assert not any(k.endswith("mailmcp-provider") for k in flow.cookies)


def test_no_scope_ticked_stays_on_the_page(flow: Flow) -> None:
    """Nothing ticked: the page again with the access line, no redirect."""
    response, body = flow.submit(scopes=[])
    assert response.code == 400 and b"choose at least one thing" in body


def test_no_provider_secret_in_pages_or_urls(flow: Flow) -> None:
    """Provider tokens and the client secret appear in no page, Location or cookie of the whole flow."""
    q = provider_query(flow.submit()[0])
    flow.callback(code="c1", state=q["state"])
    flow.callback(code="c1", state=q["state"])
    seen = b"\n".join(flow.pages) + "\n".join(flow.locations).encode() + str(flow.cookies).encode()
    for secret in (b"CANARY-access-1", b"CANARY-refresh-1", CLIENT_SECRET.encode()):
        assert secret not in seen


def test_provisioned_client_with_its_own_provider(flow: Flow) -> None:
    """A client from ``mailmcp-generate --oauth-provider google``: its page offers Google, the grant names the client."""
    own = profile("google")
    _, sealed, _ = provision_short_client(flow.server.codec, IMAP, SMTP, [REDIRECT], public=True,
                                          provider=profile_claims(own))
    flow.client_id = "mc_" + "G" * 22
    flow.server.run(ensureDeferred(flow.server.store.put_client(flow.client_id, sealed)))
    _, body = flow.page()
    assert b"Continue with Google" in body and b'type="password"' not in body
    response, _ = flow.submit()
    location = response.headers.getRawHeaders(b"location")[0].decode()
    assert location.startswith("https://accounts.google.com/o/oauth2/v2/auth?")
    assert flow.server.app.provider_login.profile_for(flow.server.run(ensureDeferred(
        flow.server.app.parts.find_client(flow.client_id)))) == (flow.client_id, own)


def test_client_revoked_meanwhile_finishes_nothing(flow: Flow) -> None:
    """The operator revokes the client between 'Continue' and the callback: the 400 page, no exchange."""
    from mailmcp.oauth._grants import client_ref

    q = provider_query(flow.submit()[0])
    flow.server.run(ensureDeferred(flow.server.store.deny_client(client_ref(flow.client_id))))
    response, _ = flow.callback(code="c1", state=q["state"])
    assert response.code == 400 and flow.provider.requests == []


def test_callback_is_get_only(flow: Flow) -> None:
    """HEAD (a link prefetch) does not consume the sign-in."""
    q = provider_query(flow.submit()[0])
    response, _ = flow.server.request("HEAD", "/oauth/provider/callback",
                                      params={"code": "c1", "state": q["state"]},
                                      headers={"Cookie": flow.cookie_header()})
    assert response.code in (404, 405) and response.headers.getRawHeaders(b"location") is None
    assert flow.callback(code="c1", state=q["state"])[0].code == 303


def test_provider_directory_finds_the_profile_of_a_grant(flow: Flow) -> None:
    """The refresh side's lookup: "" the default profile, a client id its own, anything else none."""
    from mailmcp.provider._login import ProviderDirectory

    default = profile()
    directory = ProviderDirectory(default, StubTreq(flow.provider), flow.server.clock)
    run = flow.server.run
    assert run(ensureDeferred(directory.client_for(""))).profile == default
    assert run(ensureDeferred(directory.client_for(flow.client_id))) is None  # no directory yet
    directory.clients = flow.server.app.parts.clients
    own = profile("google")
    _, sealed, _ = provision_short_client(flow.server.codec, IMAP, SMTP, [REDIRECT], public=True,
                                          provider=profile_claims(own))
    run(ensureDeferred(flow.server.store.put_client("mc_" + "D" * 22, sealed)))
    assert run(ensureDeferred(directory.client_for("mc_" + "D" * 22))).profile == own
    assert run(ensureDeferred(directory.client_for(flow.client_id))) is None  # default-profile client
    assert run(ensureDeferred(directory.client_for("mc_" + "X" * 22))) is None  # unknown
    assert run(ensureDeferred(ProviderDirectory(None, None, flow.server.clock).client_for(""))) is None


def test_callback_is_audited_like_a_password_login(flow: Flow) -> None:
    """A refused and a completed provider sign-in each leave one login audit entry, the address on success."""
    seen: list[tuple[Any, ...]] = []
    flow.server.app.provider_login._record = lambda *entry: seen.append(entry)  # type: ignore[union-attr]
    q = provider_query(flow.submit()[0])
    flow.callback(error="access_denied", state=q["state"])
    q = provider_query(flow.submit()[0])
    flow.callback(code="c1", state=q["state"])
    assert [(e[0], e[2], e[3]) for e in seen] == [("login", "error", None), ("login", "ok", EMAIL)]
    assert seen[0][4] == "provider access_denied"


@pytest.mark.parametrize("query", [
    {"code": "c1"},
    {"code": "c1", "state": ["a", "b"]},
    {"code": "c1", "state": "x" * 5000},
    {"state": "\udcff"},
])
def test_junk_callbacks_get_the_error_page(flow: Flow, query: dict[str, Any]) -> None:
    """No, repeated, oversized or undecodable state: the 400 page, nothing exchanged, no traceback."""
    provider_query(flow.submit()[0])
    params = {k: (v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v)
              for k, v in query.items()}
    response, body = flow.callback(**params)
    assert response.code == 400 and b"Sign-in cannot continue" in body
    assert b"Traceback" not in body and flow.provider.requests == []
