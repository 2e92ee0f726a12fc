"""
The daemon's HTTP plumbing, driven through a real `MailMCPSite` and
`HTTPChannel` over a `StringTransport` (no sockets): bodies over the cap get
413 before they are buffered, requests count as in flight from the moment
their headers are in, the access log never records query strings, no
tracebacks reach clients, and shutdown drains in-flight requests in order,
bounded by a timeout.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from klein import Klein
from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.web.iweb import IRequest

from mailmcp._service import DrainService, SequentialMultiService
from mailmcp.web._http import InFlight, MailMCPSite
from mailmcp.web._router import HealthApp, Router

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class Parts:
    """A small app: an echo of the body size, a slow route the test finishes, a crash."""

    app = Klein()

    def __init__(self) -> None:
        self.pending: list[Deferred[bytes]] = []
        self.bodies: list[bytes] = []

    @app.route("/echo", methods=["POST"])
    def echo(self, request: IRequest) -> bytes:
        body = request.content.read()
        self.bodies.append(body)
        return str(len(body)).encode()

    @app.route("/slow", methods=["GET", "POST"])
    def slow(self, request: IRequest) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.pending.append(d)
        return d

    @app.route("/crash")
    def crash(self, request: IRequest) -> bytes:
        raise RuntimeError("secret internal detail")


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def parts() -> Parts:
    return Parts()


@pytest.fixture
def site(reactor: MemoryReactorClock, parts: Parts) -> MailMCPSite:
    resource = parts.app.resource()
    router = Router([("/echo", resource), ("/slow", resource), ("/crash", resource),
                     ("/health", HealthApp("http://127.0.0.1:8080").app.resource())])
    return MailMCPSite(router, max_body=100, reactor=reactor)


class Connection:
    """One client connection to the site over a StringTransport."""

    def __init__(self, site: MailMCPSite) -> None:
        self.transport = StringTransport(peerAddress=PEER)
        self.protocol = site.buildProtocol(PEER)
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def response(self) -> bytes:
        return bytes(self.transport.value())


@pytest.fixture
def connect(site: MailMCPSite) -> Iterator[type[Connection]]:
    yield Connection


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def test_body_at_the_cap_is_served(site: MailMCPSite, parts: Parts) -> None:
    """A body of exactly max_body bytes reaches the handler."""
    conn = Connection(site)
    conn.send(post(b"/echo", b"a" * 100))
    assert conn.response().startswith(b"HTTP/1.1 200 ")
    assert conn.response().endswith(b"100") or b"\r\n100\r\n" in conn.response()
    assert parts.bodies == [b"a" * 100]


def test_content_length_over_the_cap_is_413(site: MailMCPSite, parts: Parts) -> None:
    """A declared Content-Length over the cap is refused at once with 413, connection closed."""
    conn = Connection(site)
    conn.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n")
    response = conn.response()
    assert response.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close\r\n" in response
    assert json.loads(response.split(b"\r\n\r\n", 1)[1]) == {
        "error": "request_too_large",
        "error_description": "Request body too large: /echo accepts at most 100 bytes",
    }
    assert site.in_flight.count == 0
    # Lingering close: the body still coming is read and dropped, then the
    # connection closes (a client still sending reads the 413, no reset).
    assert not conn.transport.disconnecting
    conn.send(b"a" * 101)
    assert conn.transport.disconnecting
    assert parts.bodies == []


def test_huge_content_length_is_413_without_buffering(
    site: MailMCPSite, parts: Parts, reactor: MemoryReactorClock
) -> None:
    """A 10 GB Content-Length is refused before a single body byte is read."""
    conn = Connection(site)
    conn.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
    assert conn.response().startswith(b"HTTP/1.1 413 ")
    conn.send(b"x" * 1000)
    assert parts.bodies == []
    assert not conn.transport.disconnecting
    reactor.advance(site.drain_seconds)  # the drain is bounded in time
    assert conn.transport.disconnecting


def test_chunked_body_over_the_cap_is_413(site: MailMCPSite, parts: Parts) -> None:
    """A chunked body (no length up front) is cut off with 413 once it passes the cap."""
    conn = Connection(site)
    conn.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.send(b"40\r\n" + b"a" * 64 + b"\r\n")
    assert conn.response() == b""
    conn.send(b"40\r\n" + b"b" * 64 + b"\r\n")
    assert conn.response().startswith(b"HTTP/1.1 413 ")
    conn.send(b"0\r\n\r\n")
    assert parts.bodies == []
    assert conn.transport.disconnecting


def test_chunked_body_under_the_cap(site: MailMCPSite, parts: Parts) -> None:
    """A small chunked body is served normally."""
    conn = Connection(site)
    conn.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n0\r\n\r\n")
    assert conn.response().startswith(b"HTTP/1.1 200 ")
    assert parts.bodies == [b"hello"]


def test_in_flight_from_headers_to_finish(site: MailMCPSite, parts: Parts) -> None:
    """
    A request counts as in flight as soon as its headers are in (its body may
    still be arriving) until its response is finished; when_idle fires then.
    """
    conn = Connection(site)
    assert site.in_flight.count == 0
    conn.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert site.in_flight.count == 1
    idle = site.in_flight.when_idle()
    assert not idle.called
    conn.send(b"defghij")
    assert site.in_flight.count == 1
    assert len(parts.pending) == 1
    parts.pending[0].callback(b"done")
    assert site.in_flight.count == 0
    assert idle.called
    assert conn.response().startswith(b"HTTP/1.1 200 ")


def test_in_flight_released_when_client_goes_away(site: MailMCPSite) -> None:
    """A client that disconnects mid-body does not hold shutdown up forever."""
    conn = Connection(site)
    conn.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert site.in_flight.count == 1
    conn.protocol.connectionLost(Exception("gone"))  # type: ignore[arg-type]
    assert site.in_flight.count == 0


def test_pipelined_requests_each_counted_once(site: MailMCPSite, parts: Parts) -> None:
    """Two requests on one keep-alive connection are each counted and released."""
    conn = Connection(site)
    conn.send(post(b"/echo", b"one") + post(b"/echo", b"two"))
    assert parts.bodies == [b"one", b"two"]
    assert site.in_flight.count == 0


def test_access_log_has_no_query_string(site: MailMCPSite) -> None:
    """
    The access line records method, path and status but never the query
    string (OAuth codes, states, tokens pasted into URLs) nor the referrer.
    """
    site.startFactory()
    try:
        with capturedLogs() as events:
            conn = Connection(site)
            conn.send(b"GET /health?code=SECRETCODE&access_token=SECRETTOKEN HTTP/1.1\r\n"
                      b"Host: x\r\nReferer: https://x/?state=SECRETSTATE\r\n"
                      b"User-Agent: test-agent\r\n\r\n")
        assert conn.response().startswith(b"HTTP/1.1 200 ")
    finally:
        site.stopFactory()
    lines = [str(e.get("log_io", e.get("message", e.get("log_format", "")))) for e in events]
    text = "\n".join(lines)
    access = [line for line in lines if "GET /health" in line]
    assert access, text
    assert '"GET /health HTTP/1.1" 200' in access[0]
    assert "test-agent" in access[0]
    assert "SECRET" not in text
    assert "?" not in access[0].split('"GET ')[1].split('"')[0]


def test_access_log_to_a_file(site: MailMCPSite) -> None:
    """With a log file set, the written line also has the path without its query."""
    log_file = io.BytesIO()
    site.logFile = log_file
    site._logDateTime = "[date]"
    conn = Connection(site)
    conn.send(b"GET /health?token=SECRET HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.response().startswith(b"HTTP/1.1 200 ")
    line = log_file.getvalue().decode()
    assert line.startswith('127.0.0.1 - - [date] "GET /health HTTP/1.1" 200 ')
    assert "SECRET" not in line


def test_no_traceback_to_clients(site: MailMCPSite) -> None:
    """A handler that raises gives a 500 without traceback or exception text."""
    conn = Connection(site)
    with capturedLogs():
        conn.send(b"GET /crash HTTP/1.1\r\nHost: x\r\n\r\n")
    response = conn.response()
    assert response.startswith(b"HTTP/1.1 500 ")
    assert b"Traceback" not in response
    assert b"secret internal detail" not in response
    assert b"RuntimeError" not in response


def test_unknown_path_is_json_404(site: MailMCPSite) -> None:
    """Paths no part owns get a JSON 404 from the router's fallback."""
    conn = Connection(site)
    conn.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    response = conn.response()
    assert response.startswith(b"HTTP/1.1 404 ")
    assert response.endswith(b'{"error":"not_found"}') or b'{"error":"not_found"}' in response


def test_health_is_json_and_shows_base_url(site: MailMCPSite) -> None:
    """
    /health answers 200 JSON with the status and the (public) base URL, and
    nothing an attacker could use: no version, key or mail-server detail
    (docs/threat-model.rst, LG-05).
    """
    conn = Connection(site)
    conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    response = conn.response()
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Type: application/json" in response
    assert b'"status":"ok"' in response
    assert b'"base_url":"http://127.0.0.1:8080"' in response
    body = json.loads(response.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[1])
    assert set(body) == {"status", "base_url"}


def test_in_flight_when_idle_cancel() -> None:
    """Cancelling a when_idle Deferred forgets it (the drain timeout path)."""
    tracker = InFlight()
    tracker.started()
    d = tracker.when_idle()
    d.cancel()
    d.addErrback(lambda _: None)
    tracker.finished()
    assert tracker.count == 0
    assert tracker.when_idle().called


def test_drain_waits_for_in_flight(reactor: MemoryReactorClock) -> None:
    """Stopping the drain service waits until in-flight requests finish."""
    tracker = InFlight()
    tracker.started()
    drain = DrainService(reactor, tracker, timeout=10)
    drain.startService()
    results: list[object] = []
    drain.stopService().addBoth(results.append)
    reactor.advance(5)
    assert results == []
    tracker.finished()
    assert results == [None]
    assert not reactor.getDelayedCalls()


def test_drain_is_bounded(reactor: MemoryReactorClock) -> None:
    """A request that never finishes holds shutdown only for the timeout."""
    tracker = InFlight()
    tracker.started()
    drain = DrainService(reactor, tracker, timeout=3)
    drain.startService()
    results: list[object] = []
    with capturedLogs() as events:
        drain.stopService().addBoth(results.append)
        reactor.advance(2.9)
        assert results == []
        reactor.advance(0.1)
    assert results == [None]
    assert any("did not finish in time" in str(e.get("log_format")) for e in events)
    assert not reactor.getDelayedCalls()


def test_drain_idle_is_immediate(reactor: MemoryReactorClock) -> None:
    """With nothing in flight and no connection, stopping is immediate and leaves no timer."""
    drain = DrainService(reactor, InFlight(), timeout=3)
    drain.startService()
    results: list[object] = []
    drain.stopService().addBoth(results.append)
    assert results == [None]
    assert not reactor.getDelayedCalls()


def test_drain_closes_connections_after_responses(
    site: MailMCPSite, parts: Parts, reactor: MemoryReactorClock
) -> None:
    """
    After the last in-flight request finishes, every open connection (busy
    or idle keep-alive) is closed with loseConnection, which writes pending
    output first; the drain completes once they are all gone.
    """
    idle = Connection(site)
    idle.send(post(b"/echo", b"x"))
    busy = Connection(site)
    busy.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(site.in_flight.connections) == 2
    drain = DrainService(reactor, site.in_flight, timeout=10)
    drain.startService()
    results: list[object] = []
    drain.stopService().addBoth(results.append)
    assert not idle.transport.disconnecting
    parts.pending[0].callback(b"slow answer")
    assert busy.response().startswith(b"HTTP/1.1 200 ")
    assert idle.transport.disconnecting and busy.transport.disconnecting
    assert results == []
    idle.protocol.connectionLost(Exception("closed"))  # type: ignore[arg-type]
    assert results == []
    busy.protocol.connectionLost(Exception("closed"))  # type: ignore[arg-type]
    assert results == [None]
    assert site.in_flight.connections == set()
    assert not reactor.getDelayedCalls()


def test_answers_during_the_drain_close_their_connection(
    site: MailMCPSite, parts: Parts, reactor: MemoryReactorClock
) -> None:
    """
    Once shutdown begins, a request already in progress and one that comes
    on an open keep-alive connection are answered with ``Connection: close``
    and their connection closed after the answer, so a balancer sends its
    next request on a new connection (to another process) instead of on one
    the drain is about to close.  Before shutdown, keep-alive as usual.
    """
    before = Connection(site)
    before.send(post(b"/echo", b"x"))
    assert b"\r\nConnection: close" not in before.response() and not before.transport.disconnecting
    busy = Connection(site)
    busy.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    drain = DrainService(reactor, site.in_flight, timeout=10)
    drain.startService()
    drain.stopService()
    before.transport.clear()
    before.send(post(b"/echo", b"yy"))  # the next request on the kept-alive connection
    assert before.response().startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close\r\n" in before.response() and before.transport.disconnecting
    parts.pending[0].callback(b"slow answer")
    assert busy.response().startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close\r\n" in busy.response() and busy.transport.disconnecting


def test_drain_connection_close_is_bounded(site: MailMCPSite, reactor: MemoryReactorClock) -> None:
    """A client that never lets its connection close holds shutdown only until the timeout."""
    conn = Connection(site)
    conn.send(post(b"/echo", b"x"))
    drain = DrainService(reactor, site.in_flight, timeout=2)
    drain.startService()
    results: list[object] = []
    with capturedLogs() as events:
        drain.stopService().addBoth(results.append)
        assert conn.transport.disconnecting
        reactor.advance(2)
    assert results == [None]
    assert any("did not close in time" in str(e.get("log_format")) for e in events)


def test_connections_are_tracked(site: MailMCPSite) -> None:
    """The site knows its open connections and forgets them when they close."""
    conn = Connection(site)
    assert site.in_flight.connections == {conn.transport}
    conn.protocol.connectionLost(Exception("gone"))  # type: ignore[arg-type]
    assert site.in_flight.connections == set()


class Recorder(Service):
    def __init__(self, name: str, log: list[str], gate: Deferred[None] | None = None) -> None:
        self.setName(name)
        self._log = log
        self._gate = gate

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._log.append("stop " + self.name)
        return self._gate


def test_children_stop_one_after_another() -> None:
    """
    The top service stops children in reverse order, each after the previous
    one has finished: pools close only after requests drained.
    """
    log: list[str] = []
    gate: Deferred[None] = Deferred()
    top = SequentialMultiService()
    Recorder("pools", log).setServiceParent(top)
    Recorder("drain", log, gate).setServiceParent(top)
    Recorder("listen", log).setServiceParent(top)
    top.startService()
    stopped = top.stopService()
    assert log == ["stop listen", "stop drain"]
    assert not stopped.called
    gate.callback(None)
    assert log == ["stop listen", "stop drain", "stop pools"]
    assert stopped.called


def test_failing_child_does_not_block_the_rest() -> None:
    """A child whose stop fails is logged, and the others still stop."""
    log: list[str] = []
    top = SequentialMultiService()
    Recorder("first", log).setServiceParent(top)
    failing: Deferred[None] = Deferred()
    Recorder("second", log, failing).setServiceParent(top)
    top.startService()
    with capturedLogs() as events:
        stopped = top.stopService()
        failing.errback(RuntimeError("boom"))
    assert log == ["stop second", "stop first"]
    assert stopped.called
    assert any(e.get("log_failure") is not None for e in events)
