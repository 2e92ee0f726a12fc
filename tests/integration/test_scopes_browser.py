"""
Scopes through the public surface: a real daemon, the real Dovecot/Postfix,
a real headless Chromium on the login page and the unmodified ``mcp``
client.  A read-only grant lists only the read tools; its send is the 403
step-up challenge and delivers nothing; the client's step-up widens the
grant; legacy requests and tokens keep everything; unknown scopes are
``invalid_scope``; ``mailmcp-generate --scope`` and ``--max-scope`` cap the
page and the grant.  Case ids (SC-xx) refer to docs/threat-model.rst.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from mailmcp.oauth._keyring import load_or_create_keyring
from mailmcp.oauth._tokens import TokenCodec
from mailmcp.tools import all_tools
from tests.harness import generate_client
from tests.hostile import mcp_http
from tests.integration.mail_live import _subjects, fresh_users, wait_for_subject

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("scopes_mcp_client.py")
ALL = "mail.read mail.organize mail.draft mail.send mail.delete"
READ_TOOLS = ["get_mail_attachment_link", "get_mail_message", "get_mail_thread", "get_mailbox_changes",
              "list_mail_messages", "list_mailboxes", "search_mail_messages"]


def run_script(cfg: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run([sys.executable, str(SCRIPT), json.dumps(cfg)], capture_output=True,
                            text=True, timeout=240, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr[-4000:]
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_read_only_grant_steps_up_to_send(services, daemon_factory, artifacts) -> None:
    """
    SC-03/SC-04: the user unticks all but reading in Chromium; the mcp
    client lists only read tools; send with that token is 403
    insufficient_scope (scope = mail.read mail.send) and delivers nothing;
    the client's step-up re-authorization (in the browser) widens the grant
    to mail.read mail.send, and the retried send delivers exactly once.
    """
    daemon = daemon_factory(services)
    client = generate_client(daemon.state_dir, services, "--name", "Scopes test")
    (user, password), (recipient, recipient_password) = fresh_users(services, 2)
    tag = secrets.token_hex(4)
    cfg = {
        "base": daemon.base_url, "client_id": client["client_id"],
        "client_secret": client["client_secret"], "auth_method": "client_secret_post",
        "redirect_uri": "http://127.0.0.1/callback",  # the script's callback port replaces it
        "user": user, "password": password, "recipient": recipient,
        "refused_subject": f"refused {tag}", "sent_subject": f"stepped up {tag}",
        "artifacts": str(artifacts),
    }
    out = run_script(cfg)

    first, step_up = out["logins"]
    assert first["offered"] == dict.fromkeys(ALL.split(), True)
    assert "Read and search your mail" in first["labels"]
    assert out["scope_first"] == "mail.read"
    assert out["tools_first"] == READ_TOOLS

    prm = f"{daemon.base_url}/.well-known/oauth-protected-resource/mcp"
    challenge = f'Bearer error="insufficient_scope", scope="mail.read mail.send", resource_metadata="{prm}"'
    status, header, body = out["raw_refusal"]
    assert status == 403 and header.startswith(challenge)
    assert body["error"] == "insufficient_scope"
    # The client's own call met the same challenge before re-authorizing.
    assert [403, header] in out["mcp_answers"]

    assert set(step_up["requested_scope"].split()) >= {"mail.read", "mail.send"}
    assert step_up["offered"]["mail.send"] is True
    assert out["scope_after"] == "mail.read mail.send"
    assert out["send_is_error"] is False, out["send_text"]
    assert set(out["tools_after"]) == {*READ_TOOLS, "send_mail_message", "reply_mail_message",
                                       "forward_mail_message"}

    # Dovecot: the stepped-up send arrived exactly once, the refused one never
    # (it was tried first, through the same Postfix).
    subjects = wait_for_subject(services, recipient, recipient_password, cfg["sent_subject"])
    time.sleep(1.0)
    subjects = _subjects(services, recipient, recipient_password)
    assert subjects.count(cfg["sent_subject"]) == 1
    assert cfg["refused_subject"] not in subjects
    assert cfg["refused_subject"] not in _subjects(services, user, password, "Sent")


def login_in_browser(driver: webdriver.Chrome, daemon: Any, client: dict[str, Any], redirect: str,
                     user: str, password: str, scope: str | None) -> tuple[dict[str, bool], dict[str, Any]]:
    """
    The login page for C{scope} in Chromium, signed in as offered: what it
    offered, and the token response for the code it landed with.
    """
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {"client_id": client["client_id"], "redirect_uri": redirect, "response_type": "code",
              "state": "st", "code_challenge": challenge, "code_challenge_method": "S256"}
    if scope is not None:
        params["scope"] = scope
    driver.get(daemon.base_url + "/oauth/authorize?" + urllib.parse.urlencode(params))
    offered = {b.get_attribute("value"): b.is_selected()
               for b in driver.find_elements(By.CSS_SELECTOR, "input[type=checkbox][name=scope]")}
    driver.find_element(By.ID, "email").send_keys(user)
    driver.find_element(By.ID, "imap_username").send_keys(user)
    driver.find_element(By.ID, "imap_password").send_keys(password)
    driver.find_element(By.ID, "submit").click()
    deadline = time.monotonic() + 30
    while not driver.current_url.startswith(redirect) and time.monotonic() < deadline:
        time.sleep(0.1)
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query)["code"][0]
    tokens = httpx2.post(daemon.base_url + "/oauth/token", data={
        "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
        "redirect_uri": redirect, "client_id": client["client_id"],
        "client_secret": client["client_secret"]}, timeout=30)
    assert tokens.status_code == 200, tokens.text
    return offered, tokens.json()


def listed(daemon: Any, token: str) -> list[str]:
    status, body = mcp_http.rpc(daemon.base_url, token, "tools/list")
    assert status == 200, body
    assert body is not None
    return sorted(t["name"] for t in body["result"]["tools"])


@pytest.fixture
def user(services) -> Iterator[tuple[str, str]]:
    yield fresh_users(services, 1)[0]


def test_legacy_requests_and_tokens_keep_everything(services, daemon_factory, browser,
                                                    callback_server, user) -> None:
    """
    SC-06: scope=mail (the old single scope) pre-ticks all five in Chromium
    and grants all five; an access token sealed as before (sc="mail") lists
    every tool.
    """
    daemon = daemon_factory(services)
    client = generate_client(daemon.state_dir, services)
    offered, tokens = login_in_browser(browser, daemon, client, callback_server, *user, scope="mail")
    assert offered == dict.fromkeys(ALL.split(), True)
    assert tokens["scope"] == ALL
    everything = listed(daemon, tokens["access_token"])
    assert everything == sorted(t.name for t in all_tools())
    codec = TokenCodec(load_or_create_keyring(daemon.state_dir, None, {}), _WallClock())
    claims = codec.open("access", tokens["access_token"])
    claims["sc"] = "mail"
    for name in ("typ", "iat", "exp"):
        del claims[name]
    assert listed(daemon, codec.seal("access", claims, 600)) == everything


class _WallClock:
    def seconds(self) -> float:
        return time.time()


def test_unknown_scope_is_invalid_scope(services, daemon_factory, browser, callback_server) -> None:
    """SC-01: an unknown scope lands the browser on the redirect URI with error=invalid_scope, no form shown."""
    daemon = daemon_factory(services)
    client = generate_client(daemon.state_dir, services)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(b"x" * 43).digest()).rstrip(b"=").decode()
    params = {"client_id": client["client_id"], "redirect_uri": callback_server, "response_type": "code",
              "state": "st", "code_challenge": challenge, "code_challenge_method": "S256",
              "scope": "mail.read mail.admin"}
    browser.get(daemon.base_url + "/oauth/authorize?" + urllib.parse.urlencode(params))
    final = urllib.parse.urlsplit(browser.current_url)
    assert f"{final.scheme}://{final.netloc}{final.path}" == callback_server
    query = urllib.parse.parse_qs(final.query)
    assert query["error"] == ["invalid_scope"] and query["state"] == ["st"]


def test_generate_scope_caps_a_client(services, daemon_factory, browser, callback_server,
                                      user, artifacts) -> None:
    """SC-05: a client made with mailmcp-generate --scope mail.read is offered only reading, whatever it asks; its grant lists read tools only."""
    daemon = daemon_factory(services)
    client = generate_client(daemon.state_dir, services, "--scope", "mail.read")
    assert client["scope"] == "mail.read"
    offered, tokens = login_in_browser(browser, daemon, client, callback_server, *user, scope=None)
    assert offered == {"mail.read": True}
    assert tokens["scope"] == "mail.read"
    assert listed(daemon, tokens["access_token"]) == READ_TOOLS
    status, body = mcp_http.rpc(daemon.base_url, tokens["access_token"], "tools/call",
                                {"name": "delete_mail_message",
                                 "arguments": {"folder": "INBOX", "uid": 1, "uidvalidity": 1}})
    assert status == 403 and body == {
        "error": "insufficient_scope",
        "error_description": "delete_mail_message needs mail.delete; authorize again to allow it"}


def test_max_scope_caps_every_grant(services, daemon_factory, browser, callback_server,
                                    user) -> None:
    """SC-05: under --max-scope mail.read,mail.draft a request for everything is narrowed (not refused): the page shows two scopes, the grant has two."""
    daemon = daemon_factory(services, "--max-scope", "mail.read,mail.draft")
    client = generate_client(daemon.state_dir, services)
    offered, tokens = login_in_browser(browser, daemon, client, callback_server, *user, scope=ALL)
    assert offered == {"mail.read": True, "mail.draft": True}
    assert tokens["scope"] == "mail.read mail.draft"
    assert listed(daemon, tokens["access_token"]) == sorted(
        [*READ_TOOLS, "create_draft_mail_message", "reply_mail_message", "forward_mail_message"])
