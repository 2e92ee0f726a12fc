"""
Scale-out with real processes (README.rst, "Scaling out"):

- SM-14 / SM-13: a daemon SIGKILLed between the end of ``DATA`` and the
  SMTP server's answer (a scripted ESMTP server on loopback holds the
  answer back until the kill); a second daemon on the same Redis gets the
  retry with the same ``idempotency_key``: first "in progress" (the dead
  owner's lease), then "Delivery status unknown" with what to check; the
  SMTP server saw exactly one ``DATA``, and nothing was filed in Sent.
- Two daemons behind a real HAProxy made from ``contrib/haproxy``: each
  account's calls stay on one process (only that one logs in to IMAP for
  it), a login at one process is honoured at the other, and SIGTERM to one
  while calls are in flight loses no call; the other keeps serving.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineReceiver

from tests.harness import (
    HAPROXY_CFG,
    ROOT,
    HAProxy,
    Services,
    free_port,
    generate_client,
    haproxy_config,
)
from tests.helpers import until
from tests.hostile import mcp_http
from tests.integration.test_send_limits import count
from tests.integration.test_smtp_live import fresh_users

pytestmark = pytest.mark.integration


class HoldingSMTP(LineReceiver):
    """ESMTP with AUTH PLAIN, no TLS; after the final dot it tells the test and never answers."""

    factory: HoldingFactory

    def connectionMade(self) -> None:
        self.in_data = False
        self.sendLine(b"220 holding.example ESMTP")

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.factory.transactions += 1
                if not self.factory.data_ended.called:
                    self.factory.data_ended.callback(None)
            return
        verb = line.split(b" ", 1)[0].upper()
        self.factory.commands.append(verb)
        if verb == b"EHLO":
            self.sendLine(b"250-holding.example")
            self.sendLine(b"250 AUTH PLAIN LOGIN")
        elif verb == b"AUTH":
            self.sendLine(b"235 2.7.0 ok")
        elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            self.sendLine(b"250 2.0.0 ok")
        elif verb == b"DATA":
            self.in_data = True
            self.sendLine(b"354 go ahead")
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"502 5.5.2 unknown")


class HoldingFactory(Factory):
    protocol = HoldingSMTP

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.transactions = 0
        self.data_ended: Deferred[None] = Deferred()


@pytest.fixture
def holding_smtp() -> Iterator[tuple[HoldingFactory, int]]:
    factory = HoldingFactory()
    port = free_port()
    listening = pytest_twisted.blockon(
        TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(factory)
    )
    yield factory, port
    pytest_twisted.blockon(listening.stopListening())


async def _call(base_url: str, token: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await threads.deferToThread(mcp_http.call, base_url, token, tool, arguments)
    return result


@pytest_twisted.ensureDeferred
async def test_a_daemon_killed_after_data_leaves_the_retry_unknown_on_another(
    services: Services, daemon_factory: Any, holding_smtp: tuple[HoldingFactory, int], tmp_path: Path
) -> None:
    """
    SM-14: A sends with key "k"; the scripted server receives the whole
    message and holds its answer; the test SIGKILLs A.  B (same Redis, same
    key ring) gets the retry: "already in progress" while A's lease runs
    (2 s SMTP timeout + 10 s), then "Delivery status unknown" naming Sent,
    the recipient and a new idempotency_key.  One DATA in all; Sent empty.
    """
    smtp, smtp_port = holding_smtp
    (me, pw), (bob, _) = fresh_users(services, 2)
    args = ("--store", services.redis_url, "--smtp-timeout", "2")
    first = daemon_factory(services, *args, state_dir=tmp_path / "a")
    second = daemon_factory(
        services, *args, "--key-file", str(first.state_dir / "keys.json"),
        "--base-url", first.base_url, state_dir=tmp_path / "b",
    )
    client = generate_client(
        first.state_dir, None,
        "--imap-host", "localhost", "--imap-port", str(services.imaps_port), "--imap-security", "tls",
        "--smtp-host", "127.0.0.1", "--smtp-port", str(smtp_port), "--smtp-security", "plain",
    )
    tokens = await threads.deferToThread(mcp_http.login, first.base_url, client, me, pw)
    token = tokens["access_token"]
    send = {"to": bob, "subject": "once", "text_body": "only once", "idempotency_key": "k"}

    doomed = threads.deferToThread(mcp_http.rpc, first.base_url, token, "tools/call",
                                   {"name": "send_mail_message", "arguments": send}, 30.0)
    doomed.addErrback(lambda _f: None)  # its connection dies with the daemon
    await smtp.data_ended.addTimeout(20, reactor)
    first.process.kill()
    first.process.wait(10)
    await doomed

    texts = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        result = await _call(second.base_url, token, "send_mail_message", send)
        assert result["isError"] is True, result
        texts.append(mcp_http.text_of(result))
        if texts[-1].startswith("Delivery status unknown"):
            break
        await deferLater(reactor, 1.0, lambda: None)
    assert "already in progress" in texts[0], texts
    final = texts[-1]
    assert final.startswith("Delivery status unknown"), texts
    assert "<mailmcp.k." in final and "Sent" in final and "new idempotency_key" in final, final
    assert "Nothing was sent this time" in final
    assert smtp.transactions == 1 and smtp.commands.count(b"DATA") == 1, smtp.commands
    assert await count(services, me, pw, "Sent") == 0


IMAP_LOGIN = re.compile(r"IMAP (\w+)(?:#\d+)?: logged in to")


def imap_logins(daemon: Any) -> list[str]:
    """The pool labels of the accounts this daemon logged in to IMAP for, one per connection."""
    return IMAP_LOGIN.findall(daemon.log_text())


def _guarded_call(base_url: str, token: str) -> str:
    """One list_mailboxes call; "ok" or what went wrong (so a failure names itself)."""
    try:
        status, body = mcp_http.rpc(base_url, token, "tools/call",
                                    {"name": "list_mailboxes", "arguments": {}}, 30.0)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    if status != 200 or body is None or "result" not in body or body["result"].get("isError"):
        return f"{status}: {body}"
    return "ok"


@pytest.fixture
def balanced(services: Services, daemon_factory: Any, tmp_path: Path) -> Iterator[tuple[Any, Any, HAProxy]]:
    """Two daemons on one Redis and one key ring behind a real HAProxy (its URL is the base URL)."""
    proxy_port = free_port()
    base = ("--store", services.redis_url, "--base-url", f"http://127.0.0.1:{proxy_port}")
    first = daemon_factory(services, *base, state_dir=tmp_path / "a")
    second = daemon_factory(services, *base, "--key-file", str(first.state_dir / "keys.json"),
                            state_dir=tmp_path / "b")
    proxy = HAProxy.start(tmp_path, [first.port, second.port], port=proxy_port)
    yield first, second, proxy
    proxy.stop()


@pytest_twisted.ensureDeferred
async def test_behind_haproxy_an_account_stays_on_one_process_and_survives_a_stop(
    services: Services, balanced: tuple[Any, Any, HAProxy]
) -> None:
    """
    Two daemons behind HAProxy (contrib/haproxy: hash of Authorization,
    consistent):

    - login through the balancer (its form GET and POST may reach either
      process) gives a token both processes accept when called directly;
    - ten calls of one account through the balancer: one process logged in
      to IMAP for it, once (its pool reused), the other not at all;
    - 24 calls of two accounts in flight, six at a time, and the process
      holding the first account gets SIGTERM after the first answers: every
      call answers successfully (the stopping one finishes its calls, HAProxy
      sends the rest to the other), the stopped one exits 0, and the other
      then serves the first account.
    """
    first, second, proxy = balanced
    (me, pw), (other, other_pw) = fresh_users(services, 2)
    client = generate_client(first.state_dir, services)
    token = (await threads.deferToThread(mcp_http.login, proxy.base_url, client, me, pw))["access_token"]
    token2 = (await threads.deferToThread(mcp_http.login, proxy.base_url, client, other, other_pw))[
        "access_token"
    ]

    for _ in range(10):
        assert await threads.deferToThread(_guarded_call, proxy.base_url, token) == "ok"
    logins = {d.port: imap_logins(d) for d in (first, second)}
    holder, spare = (first, second) if logins[first.port] else (second, first)
    assert len(logins[holder.port]) == 1 and logins[spare.port] == [], logins

    # Honoured at both processes, called directly (the spare logs in for it once).
    for daemon in (holder, spare):
        assert await threads.deferToThread(_guarded_call, daemon.base_url, token) == "ok"
    assert len(imap_logins(holder)) == 1 and len(imap_logins(spare)) == 1

    def run_all() -> list[str]:
        with ThreadPoolExecutor(6) as pool:
            futures = [
                pool.submit(_guarded_call, proxy.base_url, token if n % 2 == 0 else token2)
                for n in range(24)
            ]
            futures[0].result()
            holder.process.terminate()  # SIGTERM with calls in flight
            return [f.result() for f in futures]

    outcomes = await threads.deferToThread(run_all)
    assert outcomes == ["ok"] * 24, outcomes
    assert holder.process.wait(20) == 0
    for _ in range(5):
        assert await threads.deferToThread(_guarded_call, proxy.base_url, token) == "ok"

    # The balancer's log names the login's paths but never its query strings
    # (state, PKCE challenge, client and redirect URI; a provider's code).
    await until(lambda: '"POST /oauth/token HTTP/1.1"' in proxy.log_text(), "the balancer's log")
    log = proxy.log_text()
    assert '"GET /oauth/authorize HTTP/1.1"' in log
    for leak in ("/oauth/authorize?", "code_challenge", "state=", "redirect_uri", "client_id="):
        assert leak not in log, leak


def _unit(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_shipped_haproxy_config_is_valid_and_hashes_the_authorization_header(tmp_path: Path) -> None:
    """
    ``haproxy -c`` accepts contrib/haproxy/haproxy.cfg as shipped and as the
    tests and benchmark rewrite it; it hashes Authorization consistently,
    checks /health and forwards the client address.
    """
    shipped = HAPROXY_CFG.read_text()
    for needle in ("balance hdr(Authorization)", "hash-type consistent",
                   "http-check send meth GET uri /health", "option forwardfor"):
        assert needle in shipped, needle
    generated = tmp_path / "generated.cfg"
    generated.write_text(haproxy_config(free_port(), [free_port(), free_port()]))
    for config in (HAPROXY_CFG, generated):
        checked = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True,
                                 timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_systemd_template_runs_one_process_per_port() -> None:
    """
    mailmcp@.service: the instance name is the loopback port; each instance
    has its own state directory and shares the settings file (store, key
    ring); SIGTERM stops it gracefully.
    """
    unit = _unit(ROOT / "contrib" / "systemd" / "mailmcp@.service")
    assert unit["ExecStart"][0].split()[1:] == ["--nodaemon", "--pidfile=", "mailmcp"]
    assert "MAILMCP_LISTEN=tcp:%i:interface=127.0.0.1" in unit["Environment"]
    assert "MAILMCP_STATE_DIR=/var/lib/mailmcp/%i" in unit["Environment"]
    assert unit["StateDirectory"] == ["mailmcp/%i"]
    assert "/etc/mailmcp/mailmcp.env" in unit["EnvironmentFile"]
    assert unit["KillSignal"] == ["SIGTERM"] and unit["User"] == ["mailmcp"]
