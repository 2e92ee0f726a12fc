"""
Request bodies at the HTTP layer (issue 12), through a real `MailMCPSite`
and `HTTPChannel` over a `StringTransport`: forms are parsed only on the
OAuth form paths, per-path caps (small everywhere, large on ``/mcp`` only
once its gate admits the request), the gate deciding from the headers while
the body waits, and the lingering close after a refusal.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from klein import Klein
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.iweb import IRequest
from zope.interface import implementer

from mailmcp.web._http import ILargeBodyGate, MailMCPSite, Refusal
from mailmcp.web._router import Router

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
SMALL, LARGE = 100, 1000


class Parts:
    """Echoes what a handler sees: the body size and the parsed args."""

    app = Klein()

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, int, dict[str, list[str]]]] = []

    @app.route("/<path:rest>", methods=["GET", "POST"])
    def echo(self, request: IRequest, rest: str) -> bytes:
        body = request.content.read()
        args = {k.decode(): [v.decode() for v in vs] for k, vs in (request.args or {}).items()}
        self.seen.append((request.path, len(body), args))
        answer = json.dumps({"size": len(body), "args": args}).encode()
        request.setHeader(b"content-length", b"%d" % len(answer))
        return answer


@implementer(ILargeBodyGate)
class Gate:
    """A gate the test answers by hand."""

    def __init__(self) -> None:
        self.asked: list[Deferred[Refusal | None]] = []
        self.answer: Refusal | None | str = "pending"

    def admit_large_body(self, request: IRequest) -> Deferred[Refusal | None]:
        if self.answer != "pending":
            assert not isinstance(self.answer, str)
            return succeed(self.answer)
        d: Deferred[Refusal | None] = Deferred()
        self.asked.append(d)
        return d


UNAUTHORIZED = Refusal(401, b'{"error":"invalid_token"}', ((b"WWW-Authenticate", b"Bearer x"),))


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def parts() -> Parts:
    return Parts()


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def site(reactor: MemoryReactorClock, parts: Parts, gate: Gate) -> MailMCPSite:
    site = MailMCPSite(Router([("/", parts.app.resource())]), max_body=LARGE, reactor=reactor,
                       small_body=SMALL, drain_bytes=5000, drain_seconds=3)
    site.gate(b"/mcp", gate)
    return site


class Connection:
    def __init__(self, site: MailMCPSite) -> None:
        self.transport = StringTransport(peerAddress=PEER)
        self.protocol = site.buildProtocol(PEER)
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def response(self) -> bytes:
        return bytes(self.transport.value())

    def json(self) -> Any:
        return json.loads(self.response().split(b"\r\n\r\n")[-1])


def post(path: bytes, body: bytes, ctype: bytes = b"application/json", extra: bytes = b"") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype
            + b"\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body)


# -- forms -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [b"/mcp", b"/health", b"/oauth/register", b"/attachments/x"])
def test_form_bodies_are_not_parsed_outside_the_form_paths(site: MailMCPSite, parts: Parts, path: bytes) -> None:
    """
    A urlencoded or multipart POST to a path that takes no form leaves
    request.args to the query string alone (twisted.web would otherwise
    parse the whole body on the reactor before routing or authentication).
    """
    multipart = (b"--B\r\nContent-Disposition: form-data; name=\"m\"\r\n\r\nv\r\n--B--\r\n")
    for ctype, body in ((b"application/x-www-form-urlencoded", b"a=1&b=2"),
                        (b"multipart/form-data; boundary=B", multipart)):
        conn = Connection(site)
        conn.send(post(path + b"?q=1", body, ctype))
        assert conn.response().startswith(b"HTTP/1.1 200 "), conn.response()[:100]
        assert conn.json() == {"size": len(body), "args": {"q": ["1"]}}


@pytest.mark.parametrize("path", [b"/oauth/authorize", b"/oauth/token", b"/oauth/revoke"])
def test_form_bodies_are_parsed_on_the_form_paths(site: MailMCPSite, path: bytes) -> None:
    conn = Connection(site)
    conn.send(post(path, b"a=1&b=2", b"application/x-www-form-urlencoded"))
    assert conn.json()["args"] == {"a": ["1"], "b": ["2"]}


def test_query_string_args_work_everywhere(site: MailMCPSite) -> None:
    conn = Connection(site)
    conn.send(b"GET /attachments/x?sig=abc&sig=def HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.json()["args"] == {"sig": ["abc", "def"]}


# -- per-path caps ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [b"/oauth/token", b"/health", b"/mcp/x"])
def test_other_paths_take_the_small_cap(site: MailMCPSite, parts: Parts, path: bytes) -> None:
    """Everywhere but /mcp the small cap applies, by Content-Length and while chunked."""
    conn = Connection(site)
    conn.send(post(path, b"a" * SMALL))
    assert conn.response().startswith(b"HTTP/1.1 200 ")
    conn = Connection(site)
    conn.send(post(path, b"a" * (SMALL + 1)))
    assert conn.response().startswith(b"HTTP/1.1 413 ")
    assert conn.json()["error"] == "request_too_large"
    assert f"at most {SMALL} bytes" in conn.json()["error_description"]
    conn = Connection(site)
    conn.send(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.send(b"64\r\n" + b"a" * 100 + b"\r\n")
    assert conn.response() == b""
    conn.send(b"1\r\na\r\n")
    assert conn.response().startswith(b"HTTP/1.1 413 ")
    assert [p for p, _, _ in parts.seen] == [path]


def test_a_small_mcp_body_does_not_ask_the_gate(site: MailMCPSite, gate: Gate, parts: Parts) -> None:
    conn = Connection(site)
    conn.send(post(b"/mcp", b"{" * SMALL))
    assert gate.asked == [] and parts.seen[0][1] == SMALL


def test_mcp_body_over_the_large_cap_is_refused_without_asking(site: MailMCPSite, gate: Gate) -> None:
    """
    Over max_body by Content-Length: 413 at once with a JSON-RPC error
    (id null) naming the limit; the gate is not consulted.
    """
    conn = Connection(site)
    conn.send(post(b"/mcp", b"", extra=b"Content-Length: %d\r\n" % (LARGE + 1))
              .replace(b"Content-Length: 0\r\n", b""))
    assert conn.response().startswith(b"HTTP/1.1 413 ")
    assert conn.json() == {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32600, "message": f"Request body too large: /mcp accepts at most {LARGE} bytes."}}
    assert gate.asked == []


def test_a_large_mcp_body_waits_for_the_gate_then_is_served(site: MailMCPSite, gate: Gate,
                                                            parts: Parts) -> None:
    """
    Over the small cap, the gate is asked at headers time; past the small
    cap nothing more is read (the transport is paused) until it admits;
    then the body is read on, up to the large cap, and served.
    """
    conn = Connection(site)
    body = b"b" * 600
    conn.send(post(b"/mcp", b"")[:-len(b"Content-Length: 0\r\n\r\n")] + b"Content-Length: 600\r\n\r\n")
    assert len(gate.asked) == 1
    conn.send(body[:SMALL])
    assert conn.transport.producerState == "producing"
    conn.send(body[SMALL:300])
    assert conn.transport.producerState == "paused"
    gate.asked[0].callback(None)
    assert conn.transport.producerState == "producing"
    conn.send(body[300:])
    assert conn.response().startswith(b"HTTP/1.1 200 ")
    assert parts.seen == [(b"/mcp", 600, {})]


def test_a_body_complete_before_the_gate_decides_waits_for_it(site: MailMCPSite, gate: Gate,
                                                               parts: Parts) -> None:
    conn = Connection(site)
    conn.send(post(b"/mcp", b"c" * 300))
    assert parts.seen == [] and conn.response() == b""
    gate.asked[0].callback(None)
    assert parts.seen == [(b"/mcp", 300, {})]


def test_a_refusing_gate_answers_at_once_and_the_body_is_drained(site: MailMCPSite, gate: Gate,
                                                                 parts: Parts) -> None:
    """
    The gate's refusal (a 401 challenge) is written before the body is
    read; the rest of the body is read and dropped, and the connection
    closes once it is all in: the client reads the 401, not a reset.
    """
    gate.answer = UNAUTHORIZED
    conn = Connection(site)
    conn.send(post(b"/mcp", b"")[:-len(b"Content-Length: 0\r\n\r\n")] + b"Content-Length: 900\r\n\r\n")
    response = conn.response()
    assert response.startswith(b"HTTP/1.1 401 ")
    assert b"WWW-Authenticate: Bearer x\r\n" in response and b"Connection: close\r\n" in response
    assert response.endswith(b'{"error":"invalid_token"}')
    conn.send(b"d" * 899)
    assert not conn.transport.disconnecting
    conn.send(b"d")
    assert conn.transport.disconnecting
    assert parts.seen == [] and site.in_flight.count == 0


def test_expect_100_continue_is_held_until_the_gate_admits(site: MailMCPSite, gate: Gate) -> None:
    conn = Connection(site)
    conn.send(post(b"/mcp", b"")[:-len(b"Content-Length: 0\r\n\r\n")]
              + b"Content-Length: 500\r\nExpect: 100-continue\r\n\r\n")
    assert conn.response() == b""
    gate.asked[0].callback(None)
    assert conn.response() == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_expect_100_continue_refused_gets_no_continue(site: MailMCPSite, gate: Gate) -> None:
    gate.answer = UNAUTHORIZED
    conn = Connection(site)
    conn.send(post(b"/mcp", b"")[:-len(b"Content-Length: 0\r\n\r\n")]
              + b"Content-Length: 500\r\nExpect: 100-continue\r\n\r\n")
    assert conn.response().startswith(b"HTTP/1.1 401 ")
    assert b"100 Continue" not in conn.response()
    conn = Connection(site)
    conn.send(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
    assert conn.response().startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in conn.response()


def test_chunked_mcp_body_admitted_takes_the_large_cap(site: MailMCPSite, gate: Gate, parts: Parts) -> None:
    conn = Connection(site)
    conn.send(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    gate.asked[0].callback(None)
    for _ in range(9):
        conn.send(b"64\r\n" + b"e" * 100 + b"\r\n")
    conn.send(b"0\r\n\r\n")
    assert parts.seen == [(b"/mcp", 900, {})]
    conn = Connection(site)
    conn.send(b"POST /mcp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    gate.asked[1].callback(None)
    for _ in range(10):
        conn.send(b"64\r\n" + b"e" * 100 + b"\r\n")
    assert not conn.response().startswith(b"HTTP/1.1 413 ")
    conn.send(b"1\r\ne\r\n")
    assert conn.response().startswith(b"HTTP/1.1 413 ")
    assert len(parts.seen) == 1


def test_a_failing_gate_is_a_503_not_a_crash(site: MailMCPSite, gate: Gate) -> None:
    from twisted.logger import capturedLogs

    conn = Connection(site)
    conn.send(post(b"/mcp", b"")[:-len(b"Content-Length: 0\r\n\r\n")] + b"Content-Length: 500\r\n\r\n")
    with capturedLogs():
        gate.asked[0].errback(RuntimeError("store down"))
    assert conn.response().startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: 5\r\n" in conn.response()
    assert b"store down" not in conn.response()


# -- lingering close ------------------------------------------------------------------------


def test_drain_is_bounded_in_bytes(site: MailMCPSite) -> None:
    conn = Connection(site)
    conn.send(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    assert conn.response().startswith(b"HTTP/1.1 413 ")
    conn.send(b"x" * 5000)
    assert not conn.transport.disconnecting
    conn.send(b"x")
    assert conn.transport.disconnecting


def test_drain_is_bounded_in_time(site: MailMCPSite, reactor: MemoryReactorClock) -> None:
    conn = Connection(site)
    conn.send(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    reactor.advance(2.9)
    assert not conn.transport.disconnecting
    reactor.advance(0.1)
    assert conn.transport.disconnecting


def test_drain_timer_is_cancelled_when_the_client_goes(site: MailMCPSite, reactor: MemoryReactorClock) -> None:
    conn = Connection(site)
    conn.send(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    assert reactor.getDelayedCalls()
    conn.protocol.connectionLost(Exception("gone"))  # type: ignore[arg-type]
    assert [c for c in reactor.getDelayedCalls() if c.active() and c.func.__name__ == "_end_drain"] == []


def test_no_gate_means_the_plain_cap_on_mcp(reactor: MemoryReactorClock, parts: Parts) -> None:
    """A site built without a gate for /mcp (tests, embedding) keeps max_body there."""
    site = MailMCPSite(Router([("/", parts.app.resource())]), max_body=LARGE, reactor=reactor,
                       small_body=SMALL)
    conn = Connection(site)
    conn.send(post(b"/mcp", b"f" * LARGE))
    assert parts.seen == [(b"/mcp", LARGE, {})]


def test_drains_share_a_rate_budget(reactor: MemoryReactorClock, parts: Parts) -> None:
    """
    All lingering drains together read at most drain_rate bytes a second:
    past the budget a draining connection is paused until the next tenth of
    a second; within its own bounds it then goes on to the end of the body.
    """
    site = MailMCPSite(Router([("/", parts.app.resource())]), max_body=LARGE, reactor=reactor,
                       small_body=SMALL, drain_bytes=100_000, drain_seconds=10, drain_rate=10_000)
    conns = [Connection(site) for _ in range(2)]
    for conn in conns:
        conn.send(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\n")
        assert conn.response().startswith(b"HTTP/1.1 413 ")
    conns[0].send(b"x" * 600)  # 1,000 bytes a tick: within it
    assert conns[0].transport.producerState == "producing"
    conns[1].send(b"x" * 600)  # now over it
    assert conns[1].transport.producerState == "paused"
    reactor.advance(0.1)
    assert conns[1].transport.producerState == "producing"
    conns[1].send(b"x" * 2400)
    assert conns[1].transport.disconnecting  # the body is complete: closed
    conns[0].protocol.connectionLost(Exception("gone"))  # type: ignore[arg-type]
    for _ in range(10):  # the bucket fills up again, then its timer stops
        reactor.advance(0.1)
    assert not [c for c in reactor.getDelayedCalls() if c.active() and c.func.__name__ == "_refill"]


# -- a base URL with a path -------------------------------------------------------------------


@pytest.fixture
def mail_site(reactor: MemoryReactorClock, parts: Parts, gate: Gate) -> MailMCPSite:
    """The site of --base-url https://host/mail."""
    site = MailMCPSite(Router([("/", parts.app.resource())]), max_body=LARGE, reactor=reactor,
                       small_body=SMALL, base_path=b"/mail")
    site.gate(b"/mcp", gate)
    return site


def test_base_path_is_taken_off_before_routing_forms_and_gates(mail_site: MailMCPSite, gate: Gate,
                                                               parts: Parts) -> None:
    """
    Under /mail the parts see /oauth/token (its form parsed) and /mcp (its
    gate asked for a large body); paths outside /mail are left alone.
    """
    conn = Connection(mail_site)
    conn.send(post(b"/mail/oauth/token?x=1", b"a=1", b"application/x-www-form-urlencoded"))
    assert conn.json()["args"] == {"a": ["1"], "x": ["1"]}
    conn = Connection(mail_site)
    conn.send(post(b"/mail/mcp", b"b" * 600))
    assert len(gate.asked) == 1
    conn = Connection(mail_site)
    conn.send(post(b"/mailbox/oauth/token", b"a=1", b"application/x-www-form-urlencoded"))
    assert conn.json()["args"] == {}
    assert [p for p, _, _ in parts.seen] == [b"/oauth/token", b"/mailbox/oauth/token"]
