"""
SMTP failures at each stage (docs/threat-model.rst, SM) through the real
``send_mail_message`` tool handler: a scripted ESMTP server (a real Twisted
protocol on 127.0.0.1, ``plain`` security) that fails at one stage, the
real IMAP pool against Dovecot for the Drafts copy.

Only the stages the other suites do not already drive over a real socket
through the tool: connection refused, ``421`` greeting, ``5xx`` EHLO (and
HELO), ``5xx`` MAIL FROM, partial RCPT (``250``/``550``/``452``), ``554``
to DATA itself, ``451`` and ``552`` after the final dot.  (Wrong AUTH
password, refused recipient at Postfix, drop after DATA: see
``tests/integration/test_writing_tools_live.py``; StringTransport versions:
``tests/unit/test_smtp.py``.)

Each: the call fails with a clear reason naming the stage, the server saw
exactly one connection (no retry) and at most one DATA transaction, the
message waits in Drafts with ``\\Draft``, and Sent stays empty.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols.basic import LineReceiver

from mailmcp._toolkit import ToolError
from mailmcp.tools._writing import SEND_MAIL_MESSAGE, SendInput
from tests.harness import Services, free_port
from tests.helpers import ClockedReactor, until
from tests.integration.mail_live import account, folder, fresh_users

pytestmark = pytest.mark.integration


ENDLESS = b"250-" + b"x" * 1020 + b"\r\n"
ENDLESS = ENDLESS * ((1 << 20) // len(ENDLESS))


class StageSMTP(LineReceiver):
    """ESMTP with AUTH PLAIN and no TLS that fails at ``factory.stage``; records everything."""

    factory: StageFactory

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.in_data = False
        self.data: list[bytes] = []
        self.rcpts = 0
        if self.factory.stage == "endless-reply":
            from twisted.internet.task import LoopingCall

            self.streamer = LoopingCall(self.stream)
        if self.factory.stage == "greeting-421":
            self.sendLine(b"421 4.3.2 scripted: service not available")
            self.transport.loseConnection()
            return
        self.sendLine(b"220 scripted.example ESMTP")

    def stream(self) -> None:
        """An EHLO reply that never ends: 1 MiB of "250-" lines every 10 ms (at most 256 MiB)."""
        if self.factory.streamed >= 256 << 20:
            self.streamer.stop()
            return
        self.factory.streamed += len(ENDLESS)
        self.transport.write(ENDLESS)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.closed += 1
        streamer = getattr(self, "streamer", None)
        if streamer is not None and streamer.running:
            streamer.stop()

    def lineReceived(self, line: bytes) -> None:
        stage = self.factory.stage
        if stage == "endless-reply":
            self.factory.commands.append(line.split(b" ", 1)[0].upper())
            if line.upper().startswith(b"EHLO") and not self.streamer.running:
                self.streamer.start(0.01)
            return
        if self.in_data:
            if line != b".":
                self.data.append(line)
                return
            self.in_data = False
            self.factory.transactions.append(b"\r\n".join(self.data))
            reply = {"after-dot-451": b"451 4.3.0 scripted: try later",
                     "after-dot-552": b"552 5.3.4 scripted: message too big"}.get(stage, b"250 2.0.0 queued")
            self.sendLine(reply)
            return
        self.factory.commands.append(line.split(b" ", 1)[0].upper())
        verb = self.factory.commands[-1]
        if verb in (b"EHLO", b"HELO"):
            if stage == "ehlo-5xx":
                self.sendLine(b"550 5.7.1 scripted: go away")
            elif verb == b"EHLO":
                self.sendLine(b"250-scripted.example")
                self.sendLine(b"250 AUTH PLAIN LOGIN")
            else:
                self.sendLine(b"250 scripted.example")
        elif verb == b"AUTH":
            self.sendLine(b"235 2.7.0 ok")
        elif verb == b"MAIL":
            self.sendLine(b"553 5.7.1 scripted: sender refused" if stage == "mail-5xx" else b"250 2.1.0 ok")
        elif verb == b"RCPT":
            self.rcpts += 1
            replies = [b"250 2.1.5 ok", b"550 5.1.1 scripted: no such user", b"452 4.5.3 scripted: too many"]
            self.sendLine(replies[self.rcpts - 1] if stage == "rcpt-partial" else b"250 2.1.5 ok")
        elif verb == b"DATA":
            if stage == "data-554":
                self.sendLine(b"554 5.7.0 scripted: no DATA for you")
            else:
                self.in_data = True
                self.data = []
                self.sendLine(b"354 go ahead")
        elif verb == b"RSET":
            self.sendLine(b"250 2.0.0 ok")
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"502 5.5.2 unknown")


class StageFactory(Factory):
    protocol = StageSMTP

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.connections = 0
        self.closed = 0
        self.commands: list[bytes] = []
        self.transactions: list[bytes] = []
        self.streamed = 0


@pytest.fixture
def stage_server() -> Iterator[Any]:
    ports: list[Any] = []

    async def start(stage: str) -> tuple[StageFactory | None, int]:
        if stage == "refused":
            return None, free_port()
        factory = StageFactory(stage)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        ports.append(port)
        return factory, port.getHost().port

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


_users: list[tuple[str, str]] = []


def a_user(services: Services) -> tuple[str, str]:
    """A fresh Dovecot user (made in one batch, one re-read pause for the module)."""
    if not _users:
        _users.extend(fresh_users(services, len(STAGES)))
    return _users.pop()


STAGES = {
    # stage: (text the error must contain, DATA transactions the server may have)
    "refused": ("cannot connect to the SMTP server", 0),
    "greeting-421": ("421", 0),
    "ehlo-5xx": ("refused EHLO: 550", 0),
    "mail-5xx": ("553", 0),
    "rcpt-partial": ("c@example.test (452)", 0),
    "data-554": ("554", 0),
    "after-dot-451": ("451", 1),
    "after-dot-552": ("552", 1),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest_twisted.ensureDeferred
async def test_failed_stage_is_clear_kept_in_drafts_never_retried(
    services: Services, tools: Any, stage_server: Any, stage: str
) -> None:
    """
    SM-01/03/04/06 and the connect/EHLO/MAIL/DATA stages: the send fails
    with the server's reason, within the SMTP timeout; one connection, at
    most one DATA transaction, the message is in Drafts (flagged \\Draft),
    Sent is empty, and the partial-RCPT case names each refused recipient
    with its code and sends to nobody.
    """
    expected, transactions = STAGES[stage]
    me, pw = a_user(services)
    factory, port = await stage_server(stage)
    clock = Clock()  # never advanced: each stage fails on the server's answer, not on a deadline
    ctx = tools(account(services, me, pw, "plain", smtp_port=port), smtp_timeout=5.0, smtp_clock=clock)
    subject = f"stage {stage}"
    with pytest.raises(ToolError) as info:
        await SEND_MAIL_MESSAGE.handler(ctx, SendInput(
            to=["a@example.test", "b@example.test", "c@example.test"], subject=subject, text_body="hello"))
    assert clock.seconds() == 0
    text = info.value.message
    assert text.startswith("Not sent:") and expected in text, text
    assert "'Drafts'" in text, text
    assert pw not in text
    if stage == "rcpt-partial":
        assert "b@example.test (550)" in text and "a@example.test (" not in text.split("Refused")[1]
    if factory is not None:
        await until(lambda: factory.closed == factory.connections, "the server side to close")
        assert factory.connections == 1, factory.commands
        assert len(factory.transactions) == transactions
        assert factory.commands.count(b"AUTH") <= 1 and factory.commands.count(b"MAIL") <= 1
    drafts = await folder(services, me, pw, "Drafts")
    assert len(drafts) == 1
    [(flags, raw)] = drafts.values()
    assert b"\\Draft" in flags and f"Subject: {subject}".encode() in raw
    assert await folder(services, me, pw, "Sent") == {}


@pytest_twisted.ensureDeferred
async def test_endless_multiline_reply_is_cut_off(stage_server: Any) -> None:
    """
    A server whose EHLO reply never ends ("250-" lines forever) is cut off
    after a bounded number of lines -- the client never holds the stream in
    memory until its deadline -- and the send fails cleanly before AUTH.
    """
    from mailmcp._tls import MailTLS
    from mailmcp.mail._smtp import SMTPSender, SMTPSendFailed
    from tests.integration.mail_live import smtp_account_plain

    factory, port = await stage_server("endless-reply")
    clock = Clock()  # never advanced: the send's 10 s deadline cannot be what ends it
    with pytest.raises(SMTPSendFailed) as info:
        await SMTPSender(ClockedReactor(reactor, clock), MailTLS(None), timeout=10).send(
            smtp_account_plain(port), "alice@example.test", ["bob@example.test"], b"Subject: s\r\n\r\nx\r\n")
    assert clock.seconds() == 0
    assert "nothing was sent" in info.value.message
    await until(lambda: factory.closed == factory.connections, "the server side to close")
    assert factory.streamed < 64 << 20, factory.streamed
    assert b"AUTH" not in factory.commands



@pytest_twisted.ensureDeferred
async def test_login_check_cuts_off_an_endless_smtp_reply(
    services: Services, daemon_factory: Any, stage_server: Any
) -> None:
    """
    The login page's live SMTP check against a server whose EHLO reply never
    ends: the login fails within seconds (not at the 20 s deadline) and
    the daemon stops reading after a bounded amount.
    """
    from twisted.internet.threads import deferToThread

    from benchmarks._clients import LoginFailed
    from tests.harness import generate_client
    from tests.hostile import mcp_http

    factory, port = await stage_server("endless-reply")
    daemon = daemon_factory(services)
    client = generate_client(
        daemon.state_dir, None, "--imap-host", "localhost", "--imap-port", str(services.imaps_port),
        "--imap-security", "tls", "--smtp-host", "127.0.0.1", "--smtp-port", str(port),
        "--smtp-security", "plain")
    started = time.monotonic()
    with pytest.raises(LoginFailed):
        await deferToThread(mcp_http.login, daemon.base_url, client, "alice@example.test", "alicepw", "127.6.0.1")
    assert time.monotonic() - started < 5  # a real daemon: its 20 s deadline is wall-clock
    await until(lambda: factory.closed == factory.connections, "the server side to close")
    assert factory.streamed < 64 << 20, factory.streamed
    assert b"AUTH" not in factory.commands
