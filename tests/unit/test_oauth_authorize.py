"""
Discovery documents and ``/oauth/authorize`` (GET and POST), without
sockets: `OAuthApp` on a StubTreq with fake IMAP/SMTP login checkers.
Case ids (OA-xx) refer to docs/threat-model.rst.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from mailmcp.oauth._clients import MailServer, provision_client
from mailmcp.oauth._keyring import KeyRing, new_master_key
from mailmcp.oauth._throttle import ThrottlePolicy
from mailmcp.oauth._tokens import TokenCodec
from tests.unit.oauth_helpers import BASE, LOOPBACK, REDIRECT, make_server, pkce


@pytest.fixture
def server(tmp_path: Path):
    return make_server(tmp_path)


def location(response) -> str:
    return response.headers.getRawHeaders(b"location")[0].decode()


def query(response) -> dict[str, list[str]]:
    return parse_qs(urlsplit(location(response)).query)


# -- discovery --------------------------------------------------------------


def test_protected_resource_metadata_at_both_paths(server) -> None:
    """Both well-known PRM paths name <base>/mcp and the issuer, identically."""
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        response, body = server.request("GET", path)
        assert response.code == 200
        doc = json.loads(body)
        assert doc["resource"] == BASE + "/mcp"
        assert doc["authorization_servers"] == [BASE]


def test_authorization_server_metadata(server) -> None:
    """The AS metadata carries every field the mcp client and Claude need, with the same issuer."""
    response, body = server.request("GET", "/.well-known/oauth-authorization-server")
    doc = json.loads(body)
    assert doc["issuer"] == BASE
    assert doc["authorization_endpoint"] == BASE + "/oauth/authorize"
    assert doc["token_endpoint"] == BASE + "/oauth/token"
    assert doc["revocation_endpoint"] == BASE + "/oauth/revoke"
    assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["response_types_supported"] == ["code"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_post", "client_secret_basic", "none"}
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert "registration_endpoint" not in doc


def test_metadata_ignores_host_header(server) -> None:
    """OA-23: a forged Host header changes neither issuer nor endpoints."""
    _, body = server.request("GET", "/.well-known/oauth-authorization-server",
                             headers={"Host": "evil.example"})
    assert b"evil.example" not in body
    assert json.loads(body)["issuer"] == BASE


# -- GET /oauth/authorize ---------------------------------------------------


def test_login_page_shows_hosts_and_security_headers(server) -> None:
    """OA-12: the login page names the servers and the redirect host and carries the hardening headers."""
    response, body, cookie, csrf = server.get_form(server.authorize_params())
    assert response.code == 200
    h = response.headers
    csp = h.getRawHeaders(b"content-security-policy")[0]
    assert b"frame-ancestors 'none'" in csp
    assert b"script-src 'none'" in csp
    assert b"default-src 'none'" in csp
    assert h.getRawHeaders(b"x-frame-options") == [b"DENY"]
    assert h.getRawHeaders(b"cache-control") == [b"no-store"]
    assert h.getRawHeaders(b"referrer-policy") == [b"no-referrer"]
    assert b"imap.example.test:993" in body and b"smtp.example.test:465" in body
    assert b"app.example" in body
    assert b"<script" not in body.lower() and b"style=" not in body
    assert cookie.startswith("__Host-mailmcp-csrf=") and csrf
    set_cookie = h.getRawHeaders(b"set-cookie")[0].lower()
    assert b"httponly" in set_cookie and b"secure" in set_cookie and b"samesite=lax" in set_cookie
    for name in ("email", "full_name", "imap_username", "imap_password", "use_same_credentials",
                 "smtp_username", "smtp_password"):
        assert f'name="{name}"'.encode() in body


@pytest.mark.parametrize("client_id", [None, "", "garbage", "a.b.c.d.e"])
def test_unknown_client_gets_error_page(server, client_id) -> None:
    """OA-01: a missing or garbage client id gets a 400 page, never a redirect."""
    response, body = server.request("GET", "/oauth/authorize",
                                    params=server.authorize_params(client_id=client_id))
    assert response.code == 400
    assert not response.headers.hasHeader(b"location")
    assert b"Unknown application" in body


def test_client_from_another_deployment_gets_error_page(server) -> None:
    """OA-01: a client id sealed under another key ring is unknown here."""
    other = TokenCodec(KeyRing([new_master_key()]), server.clock)
    foreign, _ = provision_client(other, MailServer("x", 993, "tls"), MailServer("x", 465, "tls"), [REDIRECT])
    response, _ = server.request("GET", "/oauth/authorize", params=server.authorize_params(client_id=foreign))
    assert response.code == 400 and not response.headers.hasHeader(b"location")


@pytest.mark.parametrize("uri", [
    None,
    "https://evil.example/cb",
    "http://claude.ai/api/mcp/auth_callback",
    "javascript:alert(1)",
    "data:text/html,hi",
    "https://claude.ai/api/mcp/auth_callback#frag",
    "https://claude.ai@evil.example/api/mcp/auth_callback",
    "https://claude.ai/api/mcp/auth_callback/",
    "https://CLAUDE.ai/api/mcp/auth_callback",
    "https://claude.ai/api%2Fmcp/auth_callback",
    "https://claude.ai/api/mcp/auth_callback?x=1",
    "http://127.0.0.1.evil.example/cb",
    "http://user@127.0.0.1:8000/cb",
])
def test_unregistered_redirect_uri_gets_error_page(server, uri) -> None:
    """OA-02/03/04: anything but an exactly registered redirect URI gets a 400 page, no redirect, no code."""
    response, body = server.request("GET", "/oauth/authorize", params=server.authorize_params(redirect_uri=uri))
    assert response.code == 400
    assert not response.headers.hasHeader(b"location")
    assert b"redirect" in body.lower()


def test_loopback_redirect_any_port_allowed(server) -> None:
    """RFC 8252: a registered loopback redirect admits any port."""
    response, _, _, _ = server.get_form(server.authorize_params(redirect_uri=LOOPBACK))
    assert response.code == 200


def test_repeated_parameters_refused(server) -> None:
    """OA-05: a repeated redirect_uri or client_id is an error page, not a guess."""
    params = list(server.authorize_params().items()) + [("redirect_uri", "https://evil.example/cb")]
    response, _ = server.request("GET", "/oauth/authorize", params=params)
    assert response.code == 400 and not response.headers.hasHeader(b"location")
    params = list(server.authorize_params().items()) + [("code_challenge", "x" * 43)]
    response, _ = server.request("GET", "/oauth/authorize", params=params)
    assert response.code == 303 and query(response)["error"] == ["invalid_request"]


@pytest.mark.parametrize("response_type", [None, "token", "code token"])
def test_unsupported_response_type_redirects_with_error(server, response_type) -> None:
    """OA-06: a wrong response_type goes back to the validated URI with state and iss."""
    response, _ = server.request("GET", "/oauth/authorize",
                                 params=server.authorize_params(response_type=response_type))
    assert response.code == 303
    assert location(response).startswith(REDIRECT + "?")
    q = query(response)
    assert q["error"] == ["unsupported_response_type"]
    assert q["state"] == ["st-123"] and q["iss"] == [BASE]


@pytest.mark.parametrize("over", [
    {"code_challenge": None},
    {"code_challenge_method": "plain"},
    {"code_challenge_method": None},
    {"code_challenge": "a" * 42},
    {"code_challenge": "a" * 129},
    {"code_challenge": "a+/=" * 11},
])
def test_pkce_required_at_authorize(server, over) -> None:
    """OA-07: PKCE S256 with a well-formed challenge is required at /authorize."""
    response, _ = server.request("GET", "/oauth/authorize", params=server.authorize_params(**over))
    assert response.code == 303
    assert query(response)["error"] == ["invalid_request"]


def test_foreign_resource_is_invalid_target(server) -> None:
    """OA-08: a resource other than this server's MCP URL is invalid_target."""
    response, _ = server.request("GET", "/oauth/authorize",
                                 params=server.authorize_params(resource="https://other.example/mcp"))
    assert query(response)["error"] == ["invalid_target"]


@pytest.mark.parametrize("resource", [None, BASE + "/mcp/", BASE, BASE + "/"])
def test_resource_tolerated_forms(server, resource) -> None:
    """A missing, trailing-slash or origin-only resource means this server's MCP URL."""
    response, body, _, _ = server.get_form(server.authorize_params(resource=resource))
    assert response.code == 200
    assert f'name="resource" value="{BASE}/mcp"'.encode() in body


@pytest.mark.parametrize("scope", ["claudeai offline_access mail", "mail.read mail.everything", "MAIL.READ"])
def test_unknown_scope_is_invalid_scope(server, scope) -> None:
    """SC-01: an unknown scope value is refused with invalid_scope, sent to the (valid) redirect URI."""
    response, body, _, _ = server.get_form(server.authorize_params(scope=scope))
    assert response.code == 303
    q = query(response)
    assert q["error"] == ["invalid_scope"] and q["state"] == ["st-123"] and q["iss"] == [BASE]
    assert 'name="csrf_token"' not in body.decode()


def test_oversized_state_refused(server) -> None:
    """OA-09: a state over 2 KiB is an error page, never echoed."""
    response, body = server.request("GET", "/oauth/authorize", params=server.authorize_params(state="s" * 3000))
    assert response.code == 400
    assert b"s" * 3000 not in body


XSS = ['"><script>alert(1)</script>', "' onfocus=alert(1) autofocus '", "</textarea><img src=x onerror=alert(1)>"]


@pytest.mark.parametrize("payload", XSS)
def test_state_is_escaped(server, payload) -> None:
    """OA-10: hostile state is rendered only in escaped form."""
    response, body, _, _ = server.get_form(server.authorize_params(state=payload))
    assert response.code == 200
    if any(c in payload for c in '"<>'):
        assert payload.encode() not in body
    else:
        # Harmless inside a double-quoted attribute: the only place it appears.
        assert body.count(payload.encode()) == body.count(b'value="' + payload.encode() + b'"') == 1
    assert b"<script>" not in body and b"<img" not in body


@pytest.mark.parametrize("payload", XSS)
def test_form_values_are_escaped_on_rerender(server, payload) -> None:
    """OA-10: hostile email, name and username come back escaped after a failed login."""
    response, body = server.login(payload, "wrong", extra={"full_name": payload[:100], "email": payload})
    assert response.code == 400
    if any(c in payload for c in '"<>'):
        assert payload.encode() not in body
    else:
        assert body.count(payload.encode()) == body.count(b'value="' + payload.encode() + b'"')
    assert b"<script>" not in body and b"<img" not in body


def test_options_has_no_cors(server) -> None:
    """OA-16: no CORS headers on the authorization endpoint."""
    response, _ = server.request("OPTIONS", "/oauth/authorize", headers={"Origin": "https://evil.example"})
    assert not response.headers.hasHeader(b"access-control-allow-origin")


# -- POST /oauth/authorize --------------------------------------------------


def test_successful_login_redirects_303_with_code_state_iss(server) -> None:
    """OA-13/OA-15: success is a 303 to the registered URI with code, state and iss; no password in the body."""
    response, body = server.login()
    assert response.code == 303
    assert location(response).startswith(REDIRECT + "?")
    q = query(response)
    assert set(q) == {"code", "state", "iss"}
    assert q["state"] == ["st-123"] and q["iss"] == [BASE]
    assert len(q["code"][0]) < 2048
    assert b"alice-pw" not in body and "alice-pw" not in location(response)
    assert server.imap.calls == [("imap.example.test", 993, "alice@example.test")]
    assert server.smtp.calls == [("smtp.example.test", 465, "alice@example.test")]


def test_state_echoed_exactly(server) -> None:
    """The state comes back byte for byte, whatever its characters."""
    state = "a b&c=d/é?%"
    verifier, challenge = pkce()
    response, _ = server.login(params=server.authorize_params(state=state, code_challenge=challenge))
    assert query(response)["state"] == [state]


def test_loopback_redirect_keeps_port(server) -> None:
    """A loopback redirect goes to the port the client asked for."""
    response, _ = server.login(params=server.authorize_params(redirect_uri=LOOPBACK))
    assert location(response).startswith(LOOPBACK + "?")


@pytest.mark.parametrize("kind", ["missing", "wrong", "no-cookie", "origin"])
def test_csrf_failures_refused_without_contacting_mail(server, kind) -> None:
    """OA-11: no CSRF token, a wrong one, no cookie, or a cross-site Origin: 403 and no IMAP contact."""
    kw: dict = {}
    if kind == "missing":
        kw["csrf"] = ""
    elif kind == "wrong":
        kw["csrf"] = "A" * 43
    elif kind == "no-cookie":
        kw["cookie"] = ""
    else:
        kw["headers"] = {"Origin": "https://evil.example"}
    response, body = server.login(**kw)
    assert response.code == 403
    assert not response.headers.hasHeader(b"location")
    assert server.imap.calls == [] and server.smtp.calls == []


@pytest.mark.parametrize("origin", [BASE, "null"])
def test_same_site_or_null_origin_accepted(server, origin) -> None:
    """A same-origin Origin, or "null" (what browsers send under no-referrer), passes with a valid token."""
    response, _ = server.login(headers={"Origin": origin})
    assert response.code == 303


def test_wrong_password_rerenders_form(server) -> None:
    """OA-17: a rejected login re-renders the form: generic message, one line per error, username kept, password empty."""
    response, body = server.login("alice@example.test", "WRONG-PASSWORD-xyz")
    assert response.code == 400
    assert b"Sign-in failed" in body
    assert body.count(b'class="error-line"') == 1
    assert b"IMAP: the mail server rejected this username or password." in body
    assert b'value="alice@example.test"' in body
    assert b"WRONG-PASSWORD-xyz" not in body
    assert server.smtp.calls == []


def test_smtp_failure_reported_after_imap(server) -> None:
    """IMAP passes, SMTP is rejected: the SMTP line shows; no code is issued."""
    response, body = server.login(same=False, extra={"smtp_username": "alice@example.test",
                                                     "smtp_password": "bad-smtp"})
    assert response.code == 400
    assert b"SMTP: the mail server rejected" in body
    assert b"bad-smtp" not in body
    assert server.store.grants == {}


def test_separate_smtp_credentials_used(server) -> None:
    """Without use_same_credentials, SMTP is checked with its own username."""
    response, _ = server.login(same=False, extra={"smtp_username": "bob@example.test", "smtp_password": "bob-pw"})
    assert response.code == 303
    assert server.smtp.calls == [("smtp.example.test", 465, "bob@example.test")]


def test_server_unreachable_message_is_generic(server) -> None:
    """OA-18: an unreachable server gives a generic line, no exception text."""
    server.imap.down = True
    response, body = server.login()
    assert response.code == 400
    assert b"could not be reached" in body
    assert b"Traceback" not in body and b"Error" not in body.replace(b"error", b"")


@pytest.mark.parametrize("field,value", [
    ("imap_username", "alice\r\nX1 DELETE INBOX"),
    ("imap_password", "pw\nX"),
    ("imap_password", "pw\x00"),
    ("imap_password", "p" * 1025),
    ("full_name", "n" * 129),
    ("email", "not-an-address"),
    ("email", "a@b\r\nBcc: x@evil"),
])
def test_bad_fields_refused_before_mail_contact(server, field, value) -> None:
    """OA-21: control characters, oversized values and a bad email are field errors; no IMAP contact."""
    username = value if field == "imap_username" else "alice@example.test"
    password = value if field == "imap_password" else "alice-pw"
    extra = {field: value} if field in ("full_name", "email") else {}
    response, body = server.login(username, password, extra=extra)
    assert response.code == 400
    assert server.imap.calls == []
    assert b"error-line" in body


def test_multiple_field_errors_each_on_own_line(server) -> None:
    """Each field error is its own line."""
    response, body = server.login("", "", same=False, extra={"email": "", "smtp_username": "", "smtp_password": ""})
    assert body.count(b'class="error-line"') == 5


def test_username_throttle(server) -> None:
    """OA-19: after N failures for one username, the next attempt is 429 with Retry-After and no IMAP contact."""
    server.throttle.policy = ThrottlePolicy(user_failures=3, user_window=60, ip_attempts=100)
    for _ in range(3):
        assert server.login("alice@example.test", "nope")[0].code == 400
    calls = len(server.imap.calls)
    response, body = server.login("alice@example.test", "alice-pw")
    assert response.code == 429
    assert response.headers.getRawHeaders(b"retry-after") == [b"60"]
    assert b"Too many sign-in attempts" in body
    assert len(server.imap.calls) == calls
    server.clock.advance(61)
    assert server.login("alice@example.test", "alice-pw")[0].code == 303


def test_address_throttle(server) -> None:
    """OA-19: more than N attempts from one address (any usernames) is 429 without IMAP contact."""
    server.throttle.policy = ThrottlePolicy(ip_attempts=20, ip_window=60, user_failures=100)
    for i in range(20):
        assert server.login(f"user{i}@example.test", "nope")[0].code == 400
    calls = len(server.imap.calls)
    response, _ = server.login("alice@example.test", "alice-pw")
    assert response.code == 429
    assert len(server.imap.calls) == calls


def test_concurrency_cap(tmp_path) -> None:
    """OA-20: when the cap of live checks is reached, further attempts get 503 at once."""
    server = make_server(tmp_path, concurrency=2)
    server.imap.stall = True
    pending = []
    for _ in range(2):
        params = server.authorize_params()
        _, _, cookie, csrf = server.get_form(params)
        form = dict(params, email="alice@example.test", imap_username="alice@example.test",
                    imap_password="alice-pw", use_same_credentials="1", csrf_token=csrf)
        pending.append(server.treq.request(
            "POST", BASE + "/oauth/authorize", data=form, allow_redirects=False,
            headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}))
    server.treq.flush()
    assert server.throttle.in_flight == 2
    response, body = server.login()
    assert response.code == 503
    assert len(server.imap.calls) == 2
    for d in server.imap.pending:
        d.callback(None)
    for d in pending:
        assert server.run(d).code == 303
    assert server.throttle.in_flight == 0


def test_grant_row_holds_no_plaintext_password(server) -> None:
    """Split knowledge: neither the grant row nor the code carries the password in clear."""
    response, _ = server.login()
    (record,) = server.store.grants.values()
    assert b"alice-pw" not in record.sealed
    code = query(response)["code"][0]
    claims = server.codec.open("code", code)
    assert "alice-pw" not in json.dumps(claims)
