"""
Graceful shutdown with calls that do not finish (docs/threat-model.rst, Reliability goals): a real
``twistd mailmcp`` daemon with a short ``--shutdown-timeout`` gets SIGTERM
while a ``tools/call`` is stuck on a scripted IMAP server that never answers
its mailbox command, and while another request's body is still arriving.
Each gets a clean answer instead of a closed connection, and the process
exits 0.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from tests.harness import Services, scripted_imap_client
from tests.hostile import mcp_http
from tests.hostile.scripted_imap import ScriptedIMAPFactory, listen

pytestmark = pytest.mark.integration


@pytest.fixture
def stalling_imap() -> Iterator[Any]:
    """A scripted IMAP server that logs in and then never answers a mailbox command."""
    started: list[tuple[ScriptedIMAPFactory, Any]] = []

    async def start() -> tuple[ScriptedIMAPFactory, int]:
        factory, port = await listen(reactor, "stall")
        started.append((factory, port))
        return factory, port.getHost().port

    yield start
    for factory, port in started:
        factory.close_all()
        pytest_twisted.blockon(port.stopListening())


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (the socket's timeout is the hang guard)."""
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


async def until(condition: Any, what: str, timeout: float = 30.0) -> None:
    """Poll C{condition} on the reactor; the deadline is only a hang guard."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_stalled_calls_get_a_clean_answer_and_exit_is_0(
    services: Services, daemon_factory: Any, stalling_imap: Any
) -> None:
    """
    ``--shutdown-timeout 1`` and ``--imap-timeout 120`` (so only shutdown can
    end the call): after SIGTERM the stalled ``list_mail_messages`` call is
    answered HTTP 200 with its own JSON-RPC id and an ``isError`` result
    saying the server is shutting down and the outcome is unknown; a POST to
    /mcp whose body never completes gets HTTP 503 with a JSON-RPC error;
    the daemon exits 0 and logs that both were answered, with no traceback.
    """
    factory, port = await stalling_imap()
    daemon = daemon_factory(services, "--shutdown-timeout", "1", "--imap-timeout", "120")
    client = scripted_imap_client(daemon.state_dir, port, services)
    tokens = await threads.deferToThread(
        mcp_http.login, daemon.base_url, client, "alice@example.test", "alicepw"
    )
    verbs_at_login = len(factory.verbs)

    stalled = threads.deferToThread(
        mcp_http.rpc,
        daemon.base_url,
        tokens["access_token"],
        "tools/call",
        {"name": "list_mail_messages", "arguments": {"folder": "INBOX"}},
        120.0,
    )
    await until(
        lambda: any(v in (b"EXAMINE", b"SELECT") for v in factory.verbs[verbs_at_login:]),
        "the call to reach the stalling mailbox command",
    )

    partial = socket.create_connection(("127.0.0.1", daemon.port), timeout=60)
    with closing(partial):
        partial.sendall(
            b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + tokens["access_token"].encode() + b"\r\n"
            b'Content-Length: 1000\r\n\r\n{"jsonrpc":"2.0"'
        )
        await deferLater(reactor, 0.3, lambda: None)  # only lets the headers arrive first
        assert not stalled.called
        daemon.process.terminate()
        status, body = await stalled
        raw = await threads.deferToThread(_read_all, partial)

    assert status == 200, (status, body)
    assert body is not None and body.get("id") is not None
    result = body["result"]
    assert result["isError"] is True
    text = mcp_http.text_of(result)
    assert "shutting down" in text and "outcome is unknown" in text, text
    # Every sending tool has the same unknown-outcome semantics, and the text says so.
    for tool in ("send_mail_message", "reply_mail_message", "forward_mail_message"):
        assert tool in text, text

    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), raw[:300]
    error = json.loads(payload)
    assert error["jsonrpc"] == "2.0" and "shutting down" in error["error"]["message"]

    code = await threads.deferToThread(daemon.process.wait, 60)
    assert code == 0
    log = daemon.log_text()
    assert "2 answered 'server shutting down'" in log, log[-3000:]
    assert "Traceback" not in log and "#critical]" not in log, log[-3000:]


def _post(port: int, path: bytes, body: bytes) -> bytes:
    with closing(socket.create_connection(("127.0.0.1", port), timeout=60)) as sock:
        sock.sendall(
            b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        return _read_all(sock)


@pytest_twisted.ensureDeferred
async def test_answer_unfinished_cancels_the_handler_and_answers_503() -> None:
    """
    In process, on a loopback port: a JSON-RPC request other than
    ``tools/call`` whose handler never finishes gets HTTP 503 with a
    JSON-RPC error carrying its id, its handler is cancelled (Klein is told
    through the finish notification), and the in-flight count is back to 0.
    """
    from klein import Klein
    from twisted.internet.defer import CancelledError, Deferred
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from mailmcp.web._http import SHUTTING_DOWN, MailMCPSite

    app = Klein()
    cancelled: list[bool] = []

    @app.route("/mcp", methods=["POST"])
    async def never(request: Any) -> bytes:
        try:
            await Deferred()
        except CancelledError:
            cancelled.append(True)
            raise
        return b"unreachable"

    site = MailMCPSite(app.resource(), max_body=1 << 20, reactor=reactor)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    try:
        body = json.dumps({"jsonrpc": "2.0", "id": "abc", "method": "resources/list"}).encode()
        answer = threads.deferToThread(_post, port.getHost().port, b"/mcp", body)
        await until(lambda: site.in_flight.count == 1, "the request to be in flight")
        assert site.in_flight.answer_unfinished() == 1
        raw = await answer
    finally:
        await port.stopListening()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), raw[:300]
    error = json.loads(payload)
    assert error["id"] == "abc" and error["error"]["code"] == SHUTTING_DOWN
    assert cancelled == [True]
    assert site.in_flight.count == 0 and not site.in_flight.requests


@pytest_twisted.ensureDeferred
async def test_a_handler_that_finishes_after_the_shutdown_answer_is_dropped_quietly() -> None:
    """
    A handler that swallows its cancellation and returns anyway (any
    ``except Exception`` on its way does that: Twisted's CancelledError is
    an Exception) must not write into the answered request: its late answer
    is dropped, the client keeps the shutdown answer, nothing is logged as
    an error (found by the SIGTERM-under-load test).
    """
    from klein import Klein
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.logger import globalLogPublisher

    from mailmcp.web._http import MailMCPSite

    app = Klein()

    @app.route("/mcp", methods=["POST"])
    async def stubborn(request: Any) -> bytes:
        try:
            await Deferred()
        except Exception:  # noqa: BLE001 - the mistake under test
            pass
        return b'{"late": true}'

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    site = MailMCPSite(app.resource(), max_body=1 << 20, reactor=reactor)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    try:
        body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call"}).encode()
        answer = threads.deferToThread(_post, port.getHost().port, b"/mcp", body)
        await until(lambda: site.in_flight.count == 1, "the request to be in flight")
        assert site.in_flight.answer_unfinished() == 1
        raw = await answer
    finally:
        await port.stopListening()
        globalLogPublisher.removeObserver(events.append)
    assert b"late" not in raw and b"shutting down" in raw
    assert [e for e in events if e.get("log_failure") is not None or e.get("isError")] == []
