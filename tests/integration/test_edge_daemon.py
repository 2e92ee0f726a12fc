"""
What clients trip on, against a real ``twistd mailmcp`` with the real
Dovecot/Postfix: root aliases of the OAuth endpoints, a base URL with a path
(through the real ``mcp`` client completing a login and calling a tool),
CORS for browser clients, and ``initialize`` declaring 2026-07-28.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from tests.harness import free_port, generate_client
from tests.integration.oauth_mcp_run import run_client

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice@example.test", "alicepw"
REDIRECT = "http://127.0.0.1:9/cb"
INSPECTOR = "http://localhost:6274"
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "edge test", "version": "1"}}}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def log_in(http: httpx2.Client, prefix: str, client: dict[str, Any]) -> tuple[str, str]:
    """Authorize through C{prefix}/authorize (GET the page, POST the form); the code and verifier."""
    verifier, challenge = pkce()
    params = {"client_id": client["client_id"], "redirect_uri": REDIRECT, "response_type": "code",
              "state": "s", "code_challenge": challenge, "code_challenge_method": "S256"}
    page = http.get(prefix + "/authorize", params=params)
    assert page.status_code == 200, page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    answer = http.post(prefix + "/authorize", data=dict(
        params, csrf_token=csrf, email=USER, full_name="Edge", imap_username=USER,
        imap_password=PASSWORD, use_same_credentials="1"), headers={"origin": str(http.base_url).rstrip("/")})
    assert answer.status_code == 303, answer.text
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    return query["code"][0], verifier


def test_root_aliases_serve_the_oauth_endpoints(services, daemon_factory) -> None:
    """
    /authorize and /token at the root complete a login (page, form, code,
    tokens) that /mcp accepts; /register answers exactly what
    /oauth/register answers; errors are the same as under /oauth/.
    """
    daemon = daemon_factory(services)
    client = generate_client(daemon.state_dir, services)
    with httpx2.Client(base_url=daemon.base_url, follow_redirects=False, timeout=30) as http:
        code, verifier = log_in(http, "", client)
        tokens = http.post("/token", data={
            "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
            "redirect_uri": REDIRECT, "client_id": client["client_id"],
            "client_secret": client["client_secret"]})
        assert tokens.status_code == 200, tokens.text
        access = tokens.json()["access_token"]
        listed = http.post("/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                           headers={**MCP_HEADERS, "authorization": "Bearer " + access})
        assert listed.status_code == 200
        assert "list_mailboxes" in listed.text
        for alias, target, method, kwargs in (
            ("/authorize", "/oauth/authorize", "GET", {"params": {"client_id": "nope"}}),
            ("/token", "/oauth/token", "POST", {"data": {"grant_type": "authorization_code"}}),
            ("/register", "/oauth/register", "POST", {"json": {"redirect_uris": [REDIRECT]}}),
            ("/register", "/oauth/register", "GET", {}),
        ):
            a, b = http.request(method, alias, **kwargs), http.request(method, target, **kwargs)
            assert (a.status_code, a.headers.get("content-type"), a.content) == (
                b.status_code, b.headers.get("content-type"), b.content), alias


def test_base_url_with_path_mcp_client_logs_in_and_calls_a_tool(services, daemon_factory) -> None:
    """
    --base-url http://127.0.0.1:PORT/mail: every route under /mail, metadata
    at the RFC 8414 / RFC 9728 path-inserted URLs (and the plain ones),
    issuer and resource with the path, the 401 challenge pointing at the
    inserted URL; the real mcp client logs in and calls a tool.
    """
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    base = origin + "/mail"
    daemon = daemon_factory(services, "--listen", f"tcp:{port}:interface=127.0.0.1", "--base-url", base)
    client = generate_client(daemon.state_dir, services)
    with httpx2.Client(timeout=30, follow_redirects=False) as http:
        for url in (origin + "/.well-known/oauth-authorization-server/mail",
                    origin + "/.well-known/oauth-authorization-server",
                    base + "/.well-known/oauth-authorization-server"):
            document = http.get(url)
            assert document.status_code == 200, url
            assert document.json()["issuer"] == base
            assert document.json()["token_endpoint"] == base + "/oauth/token"
            assert document.json()["authorization_endpoint"] == base + "/oauth/authorize"
        for url in (origin + "/.well-known/oauth-protected-resource/mail/mcp",
                    origin + "/.well-known/oauth-protected-resource/mcp",
                    base + "/.well-known/oauth-protected-resource/mcp"):
            document = http.get(url)
            assert document.status_code == 200, url
            assert document.json()["resource"] == base + "/mcp"
            assert document.json()["authorization_servers"] == [base]
        refused = http.post(base + "/mcp", json=INITIALIZE, headers=MCP_HEADERS)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith(
            f'Bearer resource_metadata="{origin}/.well-known/oauth-protected-resource/mail/mcp"')
        verifier, challenge = pkce()
        page = http.get(base + "/oauth/authorize", params={
            "client_id": client["client_id"], "redirect_uri": REDIRECT, "response_type": "code",
            "code_challenge": challenge, "code_challenge_method": "S256"})
        assert page.status_code == 200
        assert 'action="/mail/oauth/authorize"' in page.text
        assert 'href="/mail/oauth/static/login.css"' in page.text
        assert http.get(base + "/oauth/static/login.css").status_code == 200
        account = http.get(base + "/account", params={"client_id": client["client_id"]})
        assert account.status_code == 200
        assert 'action="/mail/account"' in account.text
        assert 'href="/mail/oauth/static/login.css"' in account.text
    out = run_client({
        "base": base,
        "client_id": client["client_id"],
        "client_secret": client["client_secret"],
        "auth_method": "client_secret_post",
        "redirect_uri": "http://127.0.0.1:9/callback",
        "user": USER,
        "password": PASSWORD,
        "call_tool": "list_mailboxes",
    })
    assert out["registered_dynamically"] is False
    assert (out["form_status"], out["login_status"]) == (200, 303)
    assert out["call_is_error"] is False, out["call_text"]
    assert "INBOX" in out["call_text"]
    assert out["refresh_status"] == 200 and out["fresh_access_status"] == 200
    assert out["after_reuse_www_authenticate"].startswith(
        f'Bearer resource_metadata="{origin}/.well-known/oauth-protected-resource/mail/mcp"')


def test_cors_for_an_allowed_browser_origin(services, daemon_factory) -> None:
    """
    --allowed-origins: preflights of /mcp, the metadata, /oauth/token and
    /oauth/register are answered without a token, the origin echoed (never
    *); a 401 from /mcp carries it and exposes WWW-Authenticate; another
    origin gets no CORS header and /mcp refuses it.
    """
    daemon = daemon_factory(services, "--allowed-origins", INSPECTOR)
    with httpx2.Client(base_url=daemon.base_url, timeout=30) as http:
        for path, method in (("/mcp", "POST"), ("/.well-known/oauth-protected-resource/mcp", "GET"),
                             ("/.well-known/oauth-authorization-server", "GET"),
                             ("/oauth/token", "POST"), ("/oauth/register", "POST"), ("/token", "POST")):
            answer = http.options(path, headers={
                "origin": INSPECTOR, "access-control-request-method": method,
                "access-control-request-headers": "authorization, content-type, mcp-protocol-version"})
            assert answer.status_code == 204, path
            assert answer.headers["access-control-allow-origin"] == INSPECTOR
            assert method in answer.headers["access-control-allow-methods"]
            assert "mcp-protocol-version" in answer.headers["access-control-allow-headers"]
            assert answer.headers["vary"] == "Origin"
        document = http.get("/.well-known/oauth-authorization-server", headers={"origin": INSPECTOR})
        assert document.headers["access-control-allow-origin"] == INSPECTOR
        refused = http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "origin": INSPECTOR})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == INSPECTOR
        assert "WWW-Authenticate" in refused.headers["access-control-expose-headers"]
        evil = "https://evil.example"
        answer = http.options("/mcp", headers={"origin": evil, "access-control-request-method": "POST"})
        assert answer.status_code == 403
        assert "access-control-allow-origin" not in answer.headers
        document = http.get("/.well-known/oauth-authorization-server", headers={"origin": evil})
        assert document.status_code == 200
        assert "access-control-allow-origin" not in document.headers
        page = http.options("/oauth/authorize", headers={"origin": INSPECTOR,
                                                         "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in page.headers


def test_initialize_declaring_2026_is_404_through_the_daemon(services, daemon_factory) -> None:
    """With a valid token, initialize declaring 2026-07-28 is 404 -32601; without it, the handshake."""
    daemon = daemon_factory(services)
    client = generate_client(daemon.state_dir, services)
    with httpx2.Client(base_url=daemon.base_url, follow_redirects=False, timeout=30) as http:
        code, verifier = log_in(http, "/oauth", client)
        tokens = http.post("/oauth/token", data={
            "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
            "redirect_uri": REDIRECT, "client_id": client["client_id"],
            "client_secret": client["client_secret"]}).json()
        auth = {**MCP_HEADERS, "authorization": "Bearer " + tokens["access_token"]}
        modern = http.post("/mcp", json=INITIALIZE, headers={**auth, "mcp-protocol-version": "2026-07-28"})
        assert modern.status_code == 404
        assert modern.json()["error"]["code"] == -32601
        legacy = http.post("/mcp", json=INITIALIZE, headers=auth)
        assert legacy.status_code == 200
        assert legacy.json()["result"]["protocolVersion"] == "2025-11-25"
