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

from tests.harness import HAProxy, Services, free_port, generate_client
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
