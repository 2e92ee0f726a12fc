"""
The audit trail and the send allow-list through a real ``twistd mailmcp``
(docs/threat-model.rst LG-06, LG-07, SM-15): an OAuth login (one failed
first), token refresh and revocation, tool calls over ``/mcp``, Postfix
delivering and Dovecot holding the mail; the audit file is read as an
operator would, then rotated with a rename and SIGHUP.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx2
import pytest
import pytest_twisted
from twisted.internet import threads

from tests.harness import Services, generate_client
from tests.hostile import mcp_http
from tests.integration.test_send_limits import count
from tests.integration.test_smtp_live import fresh_users, wait_for_mail

pytestmark = pytest.mark.integration


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def _call(daemon: Any, token: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await threads.deferToThread(
        mcp_http.call, daemon.base_url, token, tool, arguments)
    return result


async def _post(daemon: Any, path: str, form: dict[str, str]) -> httpx2.Response:
    response: httpx2.Response = await threads.deferToThread(
        httpx2.post, daemon.base_url + path, data=form, timeout=30)
    return response


async def _wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await threads.deferToThread(time.sleep, 0.1)


@pytest_twisted.ensureDeferred
async def test_audit_lines_policy_and_sighup_reopen(
    services: Services, daemon_factory: Any, tmp_path: Path
) -> None:
    """
    One line per login (failed and ok), token issue, tool call, refresh and
    revocation, with client, account, targets and outcome; no subject, body,
    password or token in the file.  A send to a domain outside
    MAILMCP_SEND_ALLOW_DOMAINS is refused and nothing goes out or into Sent.
    After a rename and SIGHUP the daemon writes to a fresh file.
    """
    (me, pw), (bob, bob_pw) = fresh_users(services, 2)
    tag = uuid.uuid4().hex[:10]
    subject, body, bad_password = f"Canary-Subject-{tag}", f"Canary-Body-{tag}", f"Canary-Pw-{tag}"
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "Anna <anna@example.test>", me, subject
    message.set_content(body + "\n")
    services.deliver(me, message.as_bytes())
    audit = tmp_path / "audit.jsonl"
    daemon = daemon_factory(services, "--audit-log", str(audit),
                            env={"MAILMCP_SEND_ALLOW_DOMAINS": "example.test"})
    client = generate_client(daemon.state_dir, services)

    with pytest.raises(Exception, match="POST /oauth/authorize: 400"):
        await threads.deferToThread(mcp_http.login, daemon.base_url, client, me, bad_password)
    tokens = await threads.deferToThread(mcp_http.login, daemon.base_url, client, me, pw)
    token = tokens["access_token"]

    listing = await _call(daemon, token, "list_mail_messages", {"folder": "INBOX"})
    uid = listing["structuredContent"]["messages"][0]["uid"]
    read = await _call(daemon, token, "get_mail_message", {"folder": "INBOX", "uid": uid})
    assert body in read["structuredContent"]["body"]
    refused = await _call(daemon, token, "send_mail_message", {
        "to": [bob], "bcc": ["x@evil.test"], "subject": subject, "text_body": body})
    assert refused["isError"] is True and "x@evil.test" in mcp_http.text_of(refused)
    sent = await _call(daemon, token, "send_mail_message", {
        "to": [bob], "subject": subject, "text_body": body})
    assert sent["structuredContent"]["status"] == "sent"
    assert len(await wait_for_mail(services, bob, bob_pw, count=1)) == 1
    assert await count(services, me, pw, "Sent") == 1

    credentials = {"client_id": client["client_id"], "client_secret": client.get("client_secret") or ""}
    refreshed = await _post(daemon, "/oauth/token", {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], **credentials})
    assert refreshed.status_code == 200
    new_tokens = refreshed.json()

    entries = _lines(audit)
    events = [(e["event"], e["outcome"]) for e in entries]
    assert events == [
        ("login", "error"), ("login", "ok"), ("token", "ok"),
        ("tool", "ok"), ("tool", "ok"), ("tool", "error"), ("tool", "ok"),
        ("refresh", "ok"),
    ], events
    logins = entries[:3]
    assert {e["client"]["id"] for e in logins} == {entries[7]["client"]["id"]}
    assert logins[0]["account"] == logins[1]["account"] == me
    # The token issue and the refresh name the grant's mailbox as the login does.
    assert entries[2]["account"] == entries[7]["account"] == me
    tools = entries[3:7]
    assert [e["tool"] for e in tools] == ["list_mail_messages", "get_mail_message",
                                          "send_mail_message", "send_mail_message"]
    assert all(e["account"] == me and e["client"]["id"] == logins[0]["client"]["id"] for e in tools)
    assert tools[1]["targets"] == {"folder": "INBOX", "uid": uid}
    assert tools[2]["targets"] == {"recipients": 2, "recipient_domains": ["evil.test", "example.test"]}
    assert tools[3]["targets"] == {"recipients": 1, "recipient_domains": ["example.test"]}
    text = audit.read_text(encoding="utf-8")
    secrets = [subject, body, bad_password, pw, token, tokens["refresh_token"],
               new_tokens["access_token"], new_tokens["refresh_token"]]
    secrets += [client["client_secret"]] if client.get("client_secret") else []
    assert [s for s in secrets if s in text] == []
    assert audit.stat().st_mode & 0o777 == 0o600

    # logrotate: move the file away, then SIGHUP; new lines go to a new file.
    audit.rename(tmp_path / "audit.jsonl.1")
    os.kill(daemon.process.pid, signal.SIGHUP)
    await _wait_until(audit.exists)
    again = await _call(daemon, new_tokens["access_token"], "list_mailboxes", {})
    assert again.get("isError") is not True
    revoked = await _post(daemon, "/oauth/revoke", {"token": new_tokens["refresh_token"], **credentials})
    assert revoked.status_code == 200
    rotated = _lines(audit)
    assert [(e["event"], e.get("tool"), e["outcome"]) for e in rotated] == [
        ("tool", "list_mailboxes", "ok"), ("revoke", None, "ok")]
    assert rotated[1]["client"]["id"] == logins[0]["client"]["id"]
    assert new_tokens["refresh_token"] not in audit.read_text(encoding="utf-8")
    assert len(_lines(tmp_path / "audit.jsonl.1")) == len(entries)
    assert daemon.process.poll() is None and "Traceback" not in daemon.log_text()
    assert "audit log" in daemon.log_text() and "reopened" in daemon.log_text()
