"""
Provider sign-in (issue 18) through the public surface: a real daemon whose
default mail profile is ``--imap-auth xoauth2 --oauth-provider custom``,
pointing at the harness's test OAuth provider; the real Dovecot (``oauth2``
passdb) and Postfix; a real headless Chromium on the login page and the
provider's consent page; and the unmodified ``mcp`` client, which registers
itself (RFC 7591).

The user connects with "Continue with …" (no password field anywhere),
reads and sends mail with XOAUTH2 on the wire (Dovecot's log), keeps working
after the provider expires its access tokens, and gets a tool error telling
them to reconnect after the provider revokes consent.  No provider token or
client secret appears in the daemon's log, the pages or the URLs (LG-01,
OA-50, OA-51).
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Services
from tests.integration.test_scopes_browser import wait_for_subject

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("provider_mcp_client.py")
RECIPIENT, RECIPIENT_PASSWORD = "bob@example.test", "bobpw"
#: The test provider's token shapes (tests/oauth_provider.py) and any JWT.
TOKEN_SHAPES = re.compile(r"(?<![\w-])(?:at|rt|code)-[A-Za-z0-9_-]{32}|eyJ[\w-]+\.eyJ[\w-]+\.")


def provider_args(services: Services) -> list[str]:
    """The daemon's default profile: the test servers, signed in at the test provider."""
    op = services.oauth_provider
    return [
        "--imap-host", "localhost", "--imap-port", str(services.imaps_port),
        "--smtp-host", "localhost", "--smtp-port", str(services.smtps_port),
        "--imap-auth", "xoauth2", "--oauth-provider", "custom",
        "--oauth-client-id", op.client_id,
        "--oauth-client-secret-file", str(op.client_secret_file),
        "--oauth-authorize-url", op.authorize_url, "--oauth-token-url", op.token_url,
        "--oauth-scope", op.scope, "--oauth-userinfo-url", op.userinfo_url,
    ]


def run_script(cfg: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run([sys.executable, str(SCRIPT), json.dumps(cfg)], capture_output=True,
                            text=True, timeout=300, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr[-4000:]
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def dovecot_log(services: Services) -> str:
    return (services.svc / "dovecot" / "dovecot.log").read_text(errors="replace")


def test_continue_with_provider_read_send_expire_revoke(services, daemon_factory, artifacts) -> None:
    """
    One user, start to end: "Continue with …" in Chromium, read and send
    with XOAUTH2, survive access-token expiry, "reconnect" after revocation;
    nothing secret in logs, pages or URLs.
    """
    op = services.oauth_provider
    user = f"p18-{secrets.token_hex(4)}@example.test"
    op.add_user(user)
    daemon = daemon_factory(services, *provider_args(services), "--log-level", "debug")
    subjects = [f"xoauth2-{i}-{secrets.token_hex(3)}" for i in range(3)]
    out = run_script({"base": daemon.base_url, "provider": op.issuer, "user": user,
                      "recipient": RECIPIENT, "subjects": subjects, "artifacts": str(artifacts)})

    # 1. One sign-in, through "Continue with …", never a password field.
    assert len(out["logins"]) == 1 and out["registered"]
    login = out["logins"][0]
    assert login["button"] == "Continue with 127.0.0.1"
    assert login["password_inputs"] == 0 and login["email_inputs"] == 0 and login["scope_boxes"] == 5
    sent = login["provider_query"]
    assert sent["redirect_uri"] == daemon.base_url + "/oauth/provider/callback"
    assert sent["code_challenge_method"] == "S256" and sent["client_id"] == op.client_id
    assert login["got"]["iss"] == daemon.base_url and login["got"]["code"]

    # 2. Read and send, with XOAUTH2 on the wire.
    calls = out["calls"]
    assert "send_mail_message" in out["tools"]
    for name in ("list_mailboxes", "read", "send"):
        assert calls[name]["is_error"] is False, calls[name]
    assert subjects[0] in wait_for_subject(services, RECIPIENT, RECIPIENT_PASSWORD, subjects[0])
    log = dovecot_log(services)
    assert re.search(rf"imap-login: (?:Info: )?Login: user=<{re.escape(user)}>, method=XOAUTH2", log)

    # 3. Across the provider's access-token expiry: refreshed, still working.
    assert calls["send_after_expiry"]["is_error"] is False, calls["send_after_expiry"]
    assert calls["read_after_expiry"]["is_error"] is False, calls["read_after_expiry"]
    assert subjects[1] in wait_for_subject(services, RECIPIENT, RECIPIENT_PASSWORD, subjects[1])
    stats = op.stats()[user]
    assert stats["code_exchanges"] == 1 and stats["refreshes"] >= 1

    # 4. After revocation: a tool error saying to reconnect, not a new sign-in.
    revoked = calls["send_after_revocation"]
    assert revoked["is_error"] is True, revoked
    assert re.search(r"reconnect|sign in again", revoked["text"], re.IGNORECASE), revoked
    assert out["logins_before_end"] == 1
    assert subjects[2] not in wait_for_subject(services, RECIPIENT, RECIPIENT_PASSWORD, subjects[2],
                                               timeout=2)

    # Canary: no provider token nor the client secret in the daemon's log,
    # the pages the browser saw, or the URLs it went through.
    issued = [*stats.get("refresh_tokens_issued", []), op.client_secret]
    seen = daemon.log_text() + login["login_page"] + login["provider_url"] + login["final_url"]
    for secret in issued:
        assert secret not in seen
    assert TOKEN_SHAPES.findall(daemon.log_text()) == []
    assert TOKEN_SHAPES.findall(login["login_page"] + login["final_url"]) == []
    assert "Traceback" not in daemon.log_text()


def test_provisioned_client_with_its_own_provider(services, daemon_factory) -> None:
    """
    ``mailmcp-generate`` with the provider options: a daemon without any
    default profile offers that client's provider, and the sign-in ends with
    a code that redeems for tokens whose tool calls read the mailbox.
    """
    import base64
    import hashlib

    import httpx2

    from tests.harness import generate_client
    from tests.hostile import mcp_http

    op = services.oauth_provider
    user = f"p18-gen-{secrets.token_hex(4)}@example.test"
    op.add_user(user)
    daemon = daemon_factory(services)
    provider_options = provider_args(services)[8:]  # everything after the servers
    client = generate_client(daemon.state_dir, services, "--public", *provider_options)
    assert client["client_id"].startswith("mc_") and client["imap_auth"] == "xoauth2"
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    redirect = "http://127.0.0.1:9/callback"
    params = {"client_id": client["client_id"], "redirect_uri": redirect, "response_type": "code",
              "state": "gen-state", "code_challenge": challenge, "code_challenge_method": "S256"}
    with httpx2.Client(base_url=daemon.base_url, follow_redirects=False, timeout=30) as browser:
        page = browser.get("/oauth/authorize", params=params)
        assert "Continue with 127.0.0.1" in page.text and 'type="password"' not in page.text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        offered = re.search(r'name="requested_scope" value="([^"]*)"', page.text).group(1)
        started = browser.post("/oauth/authorize", data=dict(
            params, csrf_token=csrf, requested_scope=offered, scope=offered.split(),
            full_name="Gen User", action="provider"))
        assert started.status_code == 303 and started.headers["location"].startswith(op.authorize_url)
        back = op.approve(started.headers["location"], user)
        assert back.startswith(daemon.base_url + "/oauth/provider/callback?")
        done = browser.get(back.split(daemon.base_url, 1)[1])
        assert done.status_code == 303, done.text
        location = done.headers["location"]
        assert location.startswith(redirect + "?") and "state=gen-state" in location
        code = re.search(r"[?&]code=([^&]+)", location).group(1)
        tokens = browser.post("/oauth/token", data={
            "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
            "redirect_uri": redirect, "client_id": client["client_id"]}).json()
    result = mcp_http.call(daemon.base_url, tokens["access_token"], "list_mailboxes")
    assert result.get("isError") is not True, result
    assert re.search(rf"Login: user=<{re.escape(user)}>, method=XOAUTH2", dovecot_log(services))


def test_any_process_finishes_the_sign_in_once(services, daemon_factory, tmp_path) -> None:
    """
    Two daemons behind one base URL, sharing the key ring and a Redis store:
    "Continue" at one, the provider's callback at the other (as a balancer
    may route it) finishes the sign-in; the same callback replayed at the
    first is refused (single use across processes, OA-50).
    """
    import httpx2

    op = services.oauth_provider
    user = f"p18-two-{secrets.token_hex(4)}@example.test"
    op.add_user(user)
    state = tmp_path / "shared-state"
    one = daemon_factory(services, *provider_args(services), "--store", services.redis_url,
                         state_dir=state)
    two = daemon_factory(services, *provider_args(services), "--store", services.redis_url,
                         "--base-url", one.base_url, state_dir=state)
    redirect = "http://127.0.0.1:9/callback"
    params = {"client_id": "", "redirect_uri": redirect, "response_type": "code", "state": "two-state",
              "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
              "code_challenge_method": "S256"}
    with httpx2.Client(follow_redirects=False, timeout=30) as browser:
        params["client_id"] = browser.post(one.base_url + "/oauth/register", json={
            "redirect_uris": [redirect], "token_endpoint_auth_method": "none"}).json()["client_id"]
        page = browser.get(one.base_url + "/oauth/authorize", params=params)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        offered = re.search(r'name="requested_scope" value="([^"]*)"', page.text).group(1)
        started = browser.post(one.base_url + "/oauth/authorize", data=dict(
            params, csrf_token=csrf, requested_scope=offered, scope=offered.split(),
            full_name="Two Processes", action="provider"))
        assert started.status_code == 303, started.text
        back = op.approve(started.headers["location"], user)
        path = back.split(one.base_url, 1)[1]
        assert path.startswith("/oauth/provider/callback?")
        done = browser.get(two.base_url + path)  # the other process
        assert done.status_code == 303, done.text
        assert done.headers["location"].startswith(redirect + "?code=")
        # The cookie is cleared by then; a replay with it kept is refused too.
        replay = httpx2.get(one.base_url + path, cookies=dict(started.cookies), timeout=30)
        assert replay.status_code == 400 and "already used" in replay.text
    assert op.stats()[user]["code_exchanges"] == 1
