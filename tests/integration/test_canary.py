"""
Canary test (docs/threat-model.rst, LG-01): run the OAuth flows -- failed and
successful logins (IMAP and SMTP failures), code redemption and replay,
refresh rotation and reuse, bad client secrets, secrets in query strings,
tool calls that log in to IMAP and SMTP, revocation -- with recognisable
passwords, then prove that no password (nor its base64 or SASL PLAIN
form), client secret, code, access or refresh token appears in any line of
the daemon's log, and that no password appears in any page or error body.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from tests.harness import generate_client

pytestmark = pytest.mark.integration

USER = "canary@example.test"
PASSWORD = "PASSWORD-CANARY-9f3a71"
WRONG = "WRONGPW-CANARY-55aa02"
WRONG_SMTP = "SMTPPW-CANARY-77bb13"
REDIRECT = "http://127.0.0.1:9/callback"


def forms_of(secret: str, user: str = USER) -> list[str]:
    """A secret as it could leak: itself, base64, and the SASL PLAIN / LOGIN transcripts."""
    raw = secret.encode()
    out = [secret, base64.b64encode(raw).decode().rstrip("=")]
    for plain in (b"\0" + user.encode() + b"\0" + raw, user.encode() + b"\0" + user.encode() + b"\0" + raw):
        out.append(base64.b64encode(plain).decode().rstrip("="))
    return out


def add_canary_user(services) -> None:
    path = services.svc / "users"
    if USER not in path.read_text():
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        stamp = time.time() + 5
        os.utime(path, (stamp, stamp))


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class Recorder:
    """An HTTP client that keeps every response body it saw."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx2.Client(follow_redirects=False, timeout=30)
        self.bodies: list[tuple[str, str]] = []

    def __call__(self, method: str, path: str, **kw) -> httpx2.Response:
        response = self.http.request(method, self.base + path, **kw)
        self.bodies.append((f"{method} {path} {response.status_code}", response.text))
        return response


def login(rec: Recorder, client_id: str, password: str, smtp_password: str | None = None) -> httpx2.Response:
    verifier, challenge = pkce()
    params = {"client_id": client_id, "redirect_uri": REDIRECT, "response_type": "code",
              "state": "canary-state", "code_challenge": challenge, "code_challenge_method": "S256"}
    page = rec("GET", "/oauth/authorize", params=params)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    form = dict(params, csrf_token=csrf, email=USER, full_name="Canary", imap_username=USER,
                imap_password=password)
    if smtp_password is None:
        form["use_same_credentials"] = "1"
    else:
        form.update(smtp_username=USER, smtp_password=smtp_password)
    response = rec("POST", "/oauth/authorize", data=form)
    response.verifier = verifier  # type: ignore[attr-defined]
    return response


def test_no_secret_in_logs_or_pages(services, daemon_factory) -> None:
    """
    No password, secret, code or token appears in the daemon log; no
    password in any page or error.  The daemon runs at ``--log-level debug``,
    the most verbose level, which also traces every IMAP command.
    """
    add_canary_user(services)
    daemon = daemon_factory(services, "--log-level", "debug")
    client = generate_client(daemon.state_dir, services)
    cid, secret = client["client_id"], client["client_secret"]
    rec = Recorder(daemon.base_url)
    issued: list[str] = [secret]

    # Failed logins: wrong IMAP password; right IMAP, wrong SMTP password.
    assert login(rec, cid, WRONG).status_code == 400
    for _ in range(4):  # Dovecot notices the new passwd-file entry asynchronously
        response = login(rec, cid, PASSWORD, smtp_password=WRONG_SMTP)
        if b"SMTP:" in response.content:
            break
        time.sleep(1)
    assert b"SMTP: the mail server rejected" in response.content

    # A successful login and the token endpoint, good and bad.
    response = login(rec, cid, PASSWORD)
    assert response.status_code == 303, response.text
    code = parse_qs(urlsplit(response.headers["location"]).query)["code"][0]
    issued.append(code)
    redeem = {"grant_type": "authorization_code", "code": code, "code_verifier": response.verifier,
              "redirect_uri": REDIRECT, "client_id": cid}
    bad = rec("POST", "/oauth/token", data=dict(redeem, client_secret=secret[:-2] + "xx"))
    assert bad.status_code == 401
    query = rec("POST", "/oauth/token?client_secret=" + secret + "&code=" + code, data=redeem)
    assert query.status_code == 400
    tokens = rec("POST", "/oauth/token", data=dict(redeem, client_secret=secret)).json()
    issued += [tokens["access_token"], tokens["refresh_token"]]
    refreshed = rec("POST", "/oauth/token", data={"grant_type": "refresh_token", "client_id": cid,
                                                  "client_secret": secret,
                                                  "refresh_token": tokens["refresh_token"]}).json()
    issued += [refreshed["access_token"], refreshed["refresh_token"]]

    # Tool calls that log in to IMAP and SMTP with the canary password.
    bearer = {"authorization": "Bearer " + refreshed["access_token"],
              "accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}
    for name, arguments in (("list_mailboxes", {}),
                            ("send_mail_message", {"to": ["bob@example.test"], "subject": "canary",
                                                   "text_body": "hello"})):
        call = rec("POST", "/mcp", headers=bearer, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
        assert call.status_code == 200, call.text
        assert call.json()["result"].get("isError") is not True, call.text
    rec("POST", "/mcp?access_token=" + refreshed["access_token"],
        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})

    # Replays and revocation.
    assert rec("POST", "/oauth/token", data=dict(redeem, client_secret=secret)).status_code == 400
    assert rec("POST", "/oauth/token", data={"grant_type": "refresh_token", "client_id": cid,
                                             "client_secret": secret,
                                             "refresh_token": tokens["refresh_token"]}).status_code == 400
    assert rec("POST", "/oauth/revoke", data={"token": refreshed["refresh_token"], "client_id": cid,
                                              "client_secret": secret}).status_code == 200
    dead = rec("POST", "/mcp", headers=bearer, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    assert dead.status_code == 401

    time.sleep(0.5)  # let the log file catch up
    log = daemon.log_text()
    assert len(log) > 1000
    assert " C: " in log and "LOGIN <credentials redacted>" in log, "the debug IMAP trace is missing"
    for value in forms_of(PASSWORD) + forms_of(WRONG) + forms_of(WRONG_SMTP):
        assert value not in log, f"a password form leaked into the log: {value[:12]}..."
        for where, body in rec.bodies:
            assert value not in body, f"a password form leaked into {where}"
    for value in issued:
        assert value not in log, "a secret, code or token leaked into the log"
    assert "Authorization" not in log and "authorization: Bearer" not in log.lower()


def old_pool_label(services, password: str) -> str:
    """The label the pool logged before: 48 bits of an unsalted SHA-256 over the credentials."""
    material = "\0".join(["localhost", str(services.imaps_port), "tls", USER, password])
    return hashlib.sha256(material.encode()).hexdigest()


def run_once(services, daemon_factory, state_dir) -> str:
    """One daemon run: a login and two tool calls (IMAP pool and SMTP); returns its log."""
    daemon = daemon_factory(services, "--log-level", "debug", state_dir=state_dir)
    client = generate_client(daemon.state_dir, services)
    rec = Recorder(daemon.base_url)
    response = login(rec, client["client_id"], PASSWORD)
    assert response.status_code == 303, response.text
    code = parse_qs(urlsplit(response.headers["location"]).query)["code"][0]
    tokens = rec("POST", "/oauth/token", data={
        "grant_type": "authorization_code", "code": code, "code_verifier": response.verifier,
        "redirect_uri": REDIRECT, "client_id": client["client_id"],
        "client_secret": client["client_secret"]}).json()
    bearer = {"authorization": "Bearer " + tokens["access_token"],
              "accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}
    for name in ("list_mailboxes", "list_mail_messages"):
        call = rec("POST", "/mcp", headers=bearer, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}}})
        assert call.status_code == 200 and call.json()["result"].get("isError") is not True, call.text
    time.sleep(0.5)  # let the log file catch up
    return daemon.log_text()


def test_no_password_fingerprint_in_logs(services, daemon_factory, tmp_path) -> None:
    """
    The IMAP pool's connection label is no password fingerprint: the old
    unsalted hash of host, port, security, user and password (which a
    dictionary attack could test offline from the log alone) appears nowhere,
    not even in part, and the same account gets different labels in two
    daemon runs; more generally no hex string of 12+ digits (any stable hash)
    appears in the logs of both runs.
    """
    add_canary_user(services)
    logs = [run_once(services, daemon_factory, tmp_path / f"run{i}" / "state") for i in range(2)]
    labels = []
    for log in logs:
        found = set(re.findall(r"IMAP ([0-9a-f]{12})#\d+: logged in to", log))
        assert found, "no pooled IMAP login was logged"
        labels.append(found)
        old = old_pool_label(services, PASSWORD)
        for i in range(len(old) - 11):
            assert old[i:i + 12] not in log, "part of the unsalted credential hash is in the log"
    assert not labels[0] & labels[1], "one account has the same label in two runs"
    stable = set(re.findall(r"[0-9a-f]{12,}", logs[0])) & set(re.findall(r"[0-9a-f]{12,}", logs[1]))
    assert not stable, f"a stable hash appears in both runs: {sorted(stable)[:3]}"


#: The test provider's token shapes (tests/oauth_provider.py: ``at-``,
#: ``rt-``, ``code-`` and 32 characters) and any JWT (its ID tokens).
PROVIDER_TOKEN = re.compile(r"(?<![\w-])(?:at|rt|code)-[A-Za-z0-9_-]{32}|eyJ[\w-]+\.eyJ[\w-]+\.")


def test_no_provider_token_or_client_secret_in_logs_pages_or_urls(services, daemon_factory) -> None:
    """
    Provider sign-in (issue 18, OA-51) at ``--log-level debug``: a sign-in
    refused at the provider, a successful one, a replayed callback, tool
    calls with XOAUTH2, an access-token expiry (refresh, rotation) and a
    revocation.  No provider access, refresh or ID token, provider code nor
    the client secret appears in the daemon's log, in any page or error
    body, or in any Location or Set-Cookie header mailmcp sent.
    """
    from tests.integration.test_provider_signin import provider_args

    op = services.oauth_provider
    user = f"canary-{secrets.token_hex(4)}@example.test"
    op.add_user(user)
    daemon = daemon_factory(services, *provider_args(services), "--log-level", "debug")
    rec = Recorder(daemon.base_url)
    headers: list[str] = []
    cid = rec("POST", "/oauth/register", json={"redirect_uris": [REDIRECT],
                                               "token_endpoint_auth_method": "none"}).json()["client_id"]

    def start() -> tuple[str, str]:
        verifier, challenge = pkce()
        params = {"client_id": cid, "redirect_uri": REDIRECT, "response_type": "code",
                  "state": "canary-state", "code_challenge": challenge, "code_challenge_method": "S256"}
        page = rec("GET", "/oauth/authorize", params=params)
        assert 'type="password"' not in page.text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        offered = re.search(r'name="requested_scope" value="([^"]*)"', page.text).group(1)
        answer = rec("POST", "/oauth/authorize", data=dict(
            params, csrf_token=csrf, requested_scope=offered, scope=offered.split(),
            full_name="Canary", action="provider"))
        assert answer.status_code == 303, answer.text
        headers.extend(answer.headers.get_list("location") + answer.headers.get_list("set-cookie"))
        return answer.headers["location"], verifier

    def back(location: str) -> httpx2.Response:
        path = location.split(daemon.base_url, 1)[1]
        answer = rec("GET", path)
        headers.extend(answer.headers.get_list("location") + answer.headers.get_list("set-cookie"))
        return answer

    # Refused at the provider: the login page again.
    authorize, _ = start()
    denied = back(op.approve(authorize, user, decision="deny"))
    assert denied.status_code == 400 and "cancelled" in denied.text

    # Signed in; the callback replayed.
    authorize, verifier = start()
    callback = op.approve(authorize, user)
    done = back(callback)
    assert done.status_code == 303, done.text
    assert back(callback).status_code == 400
    code = parse_qs(urlsplit(done.headers["location"]).query)["code"][0]
    tokens = rec("POST", "/oauth/token", data={
        "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
        "redirect_uri": REDIRECT, "client_id": cid}).json()
    bearer = {"authorization": "Bearer " + tokens["access_token"],
              "accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}

    def tool(name: str, arguments: dict) -> dict:
        answer = rec("POST", "/mcp", headers=bearer, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": arguments}})
        assert answer.status_code == 200, answer.text
        return answer.json()["result"]

    send = {"to": ["bob@example.test"], "subject": "provider canary", "text_body": "hello"}
    assert tool("list_mailboxes", {}).get("isError") is not True
    assert tool("send_mail_message", send).get("isError") is not True
    op.expire_access_tokens(user)
    assert tool("send_mail_message", send).get("isError") is not True
    op.revoke_consent(user)
    assert tool("send_mail_message", send).get("isError") is True

    time.sleep(0.5)  # let the log file catch up
    log = daemon.log_text()
    stats = op.stats()[user]
    assert stats["code_exchanges"] == 1 and stats["refreshes"] >= 1
    secrets_seen = [*stats["refresh_tokens_issued"], *stats["refresh_tokens_seen"], op.client_secret]
    where = [("log", log), *rec.bodies, ("headers", "\n".join(headers))]
    for name, text in where:
        for value in secrets_seen:
            assert value not in text, f"a provider token or the client secret leaked into {name}"
        assert PROVIDER_TOKEN.findall(text) == [], f"a provider token or code leaked into {name}"
    assert "Traceback" not in log
