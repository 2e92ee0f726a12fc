"""
HTTP plumbing shared by every part of the daemon: the Site with per-path
body caps (forms parsed only where expected, large bodies only past a gate,
refusals with a lingering close), in-flight request tracking for graceful
shutdown, an access log that never records query strings, and JSON helpers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http import _GenericHTTPChannelProtocol
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from zope.interface import Interface

from .._paths import strip_base_path
from ..mcp._jsonrpc import INVALID_REQUEST, encode, error_message, result_message, valid_id

log = Logger()

SHUTTING_DOWN = -32000
"""JSON-RPC error code (implementation-defined range) for a call cut short by shutdown."""

SHUTDOWN_MESSAGE = (
    "The server is shutting down (a restart or deploy) and this call did not finish in time, so "
    "it was stopped. Its outcome is unknown: what it was doing may or may not have taken effect "
    "(for send_mail_message, reply_mail_message and forward_mail_message: the message may or "
    "may not have gone out; look in Sent, or retry with the same idempotency_key). Try again "
    "in a moment."
)


class ShuttingDown(Exception):
    """Fired into a request's finish notifications when shutdown answered it early."""


#: Largest body accepted on every path but a gated one (``/mcp``), and on a
#: gated path until its gate admits the request: OAuth forms, DCR documents
#: and the rest are small.
SMALL_BODY = 64 * 1024

#: The paths whose ``POST`` bodies are forms: only these are parsed into
#: ``request.args``.  Anywhere else twisted.web would parse a form body (up
#: to the whole cap, on the reactor thread) before routing or authentication.
#: (``/account`` is the user's page, whose forms post back to it.)
FORM_PATHS = frozenset(
    {
        b"/oauth/authorize",
        b"/oauth/token",
        b"/oauth/revoke",
        b"/authorize",
        b"/token",
        b"/revoke",
        b"/account",
    }
)

#: Paths that take bodies up to the site's ``max_body``, once their gate
#: (`ILargeBodyGate`) admits the request.
LARGE_BODY_PATHS = frozenset({b"/mcp"})

#: A refused request's body is still read, and thrown away, up to this many
#: bytes and ...
DRAIN_BYTES = 64 * 1024 * 1024
#: ... this many seconds, so that a client still sending gets to read the
#: answer (closing with unread input makes the kernel send a reset, and the
#: client loses the answer with it); then the connection is closed.
DRAIN_SECONDS = 10.0


#: What all lingering drains together may read per second.  Reading and
#: dropping is cheap but not free (an anonymous client re-sending 32 MiB
#: bodies as fast as loopback allows made the reactor read ~750 MB/s); past
#: this, draining connections wait, paused, for the next tenth of a second.
DRAIN_RATE = 64 * 1024 * 1024


class DrainBudget:
    """
    A token bucket shared by the drains of one site: `spend` what was read;
    when the bucket is empty, `wait` pauses a drain until the next refill.
    """

    TICK = 0.1

    def __init__(self, clock: IReactorTime, rate: int) -> None:
        self._clock = clock
        self._per_tick = max(1, int(rate * self.TICK))
        self._tokens = self._per_tick
        self._waiting: list[Callable[[], None]] = []
        self._timer: IDelayedCall | None = None

    def spend(self, size: int) -> bool:
        """Take C{size} bytes; False when the bucket is now empty (pause until `wait` fires)."""
        self._tokens -= size
        if self._timer is None:
            self._timer = self._clock.callLater(self.TICK, self._refill)
        return self._tokens > 0

    def wait(self, resume: Callable[[], None]) -> None:
        self._waiting.append(resume)

    def _refill(self) -> None:
        self._timer = None
        self._tokens = min(self._per_tick, self._tokens + self._per_tick)
        if self._tokens > 0:
            # Each resumed drain reads up to one socket read (64 KiB) before
            # it spends: resume only as many as the bucket holds reads.
            count = max(1, self._tokens // 65536)
            resumed, self._waiting = self._waiting[:count], self._waiting[count:]
            for resume in resumed:
                resume()
        if self._waiting or self._tokens < self._per_tick:
            self._timer = self._clock.callLater(self.TICK, self._refill)


@attrs.frozen
class Refusal:
    """A complete answer to a request whose body is not wanted."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


class ILargeBodyGate(Interface):
    """
    Decides, from a request's headers alone, whether it may send a body
    larger than `SMALL_BODY` (up to the site's ``max_body``).  ``/mcp``
    admits a request once its Bearer token is verified.
    """

    def admit_large_body(request: IRequest) -> Deferred[Refusal | None]:
        """
        Fire with L{None} to admit the body, or with the `Refusal` to answer
        instead.  The body waits (unread past `SMALL_BODY`) until then.
        """


_UNAVAILABLE = Refusal(
    503,
    encode({"error": "temporarily_unavailable", "error_description": "Try again shortly"}),
    ((b"Retry-After", b"5"),),
)


def raw_response(refusal: Refusal) -> bytes:
    """The bytes of C{refusal} as a complete HTTP/1.1 response that closes the connection."""
    reason = http.RESPONSES.get(refusal.status, b"Error")
    lines = [b"HTTP/1.1 %d %s" % (refusal.status, reason)]
    names = {b"content-type", b"content-length", b"connection", b"cache-control"}
    for name, value in refusal.headers:
        if name.lower() not in names and b"\r" not in value and b"\n" not in value:
            lines.append(name + b": " + value)
    lines += [
        b"Content-Type: application/json",
        b"Content-Length: %d" % (len(refusal.body),),
        b"Cache-Control: no-store",
        b"Connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + refusal.body


def too_large(path: bytes, limit: int) -> Refusal:
    """
    The 413 for a body over C{limit} bytes on C{path}: a JSON-RPC error
    (id null) on ``/mcp``, an RFC 6749-style error document elsewhere.
    """
    size = f"{limit} bytes" if limit < 1024 else f"{limit} bytes ({_human(limit)})"
    text = f"Request body too large: {path.decode('ascii', 'replace')[:64]} accepts at most {size}"
    if path == b"/mcp":
        return Refusal(413, encode(error_message(None, INVALID_REQUEST, text + ".")))
    return Refusal(413, encode({"error": "request_too_large", "error_description": text}))


def _human(size: int) -> str:
    if size >= 1 << 20 and size % (1 << 20) == 0:
        return f"{size >> 20} MiB"
    return f"{size / 1024:.0f} KiB"


class InFlight:
    """
    Counts requests being served, so that shutdown can wait for them, and
    knows the open connections, so that shutdown can close them gracefully.
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle: list[Deferred[None]] = []
        self.requests: set[MailMCPRequest] = set()
        self.connections: set[ITransport] = set()
        self._all_closed: list[Deferred[None]] = []
        #: Set when shutdown begins: answers from then on close their connection.
        self.draining = False

    def start_draining(self) -> None:
        """From now on, and for the requests already in progress, no keep-alive."""
        self.draining = True
        for request in list(self.requests):
            request.close_after_response()

    def connection_opened(self, transport: ITransport) -> None:
        self.connections.add(transport)

    def connection_closed(self, transport: ITransport) -> None:
        self.connections.discard(transport)
        if not self.connections:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def close_connections(self) -> Deferred[None]:
        """
        Close every open connection once its pending output is written, and
        fire when all are closed.  (At reactor shutdown connections are
        dropped without writing what is still buffered: a response that
        finished a moment ago would be lost.)
        """
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred(
            lambda d: self._all_closed.remove(d) if d in self._all_closed else None
        )
        self._all_closed.append(d)
        for transport in list(self.connections):
            transport.loseConnection()
        return d

    def started(self, request: MailMCPRequest | None = None) -> None:
        self.count += 1
        if request is not None:
            self.requests.add(request)

    def finished(self, request: MailMCPRequest | None = None) -> None:
        self.count -= 1
        if request is not None:
            self.requests.discard(request)
        if self.count == 0:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def answer_unfinished(self) -> int:
        """
        Give every request still being served a clean "shutting down"
        answer now and stop the work behind it (see
        L{MailMCPRequest.answer_shutting_down}).  Returns how many were
        answered.
        """
        answered = 0
        for request in list(self.requests):
            if request.answer_shutting_down():
                answered += 1
        return answered

    def when_idle(self) -> Deferred[None]:
        if self.count == 0:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._idle.remove(d) if d in self._idle else None)
        self._idle.append(d)
        return d


class MailMCPRequest(server.Request):
    """
    A request that keeps its body within its path's cap, parses forms only
    where forms are expected, and reports itself to the site's L{InFlight}
    counter.

    Caps: a gated path (``/mcp``, see `ILargeBodyGate`) takes up to the
    site's ``max_body`` once its gate admits it and `SMALL_BODY` until then;
    every other path takes `SMALL_BODY` (never more than ``max_body``).  A
    declared ``Content-Length`` over the cap is refused before a byte of the
    body is read; a chunked body as soon as it passes the cap.  While a gate
    is still deciding, a body past `SMALL_BODY` is not read on (the
    transport is paused) and a ``100 Continue`` is held back.

    A refused request is answered at once (413, or the gate's refusal) and
    its connection closed after a lingering drain: the rest of the body is
    read and thrown away (at most `DRAIN_BYTES`, `DRAIN_SECONDS`), so that a
    client still sending reads the answer instead of a reset.
    """

    _received = 0
    _cap = SMALL_BODY
    _refused = False
    _gate_pending = False
    _paused = False
    _hold_continue = False
    _complete: tuple[bytes, bytes, bytes] | None = None
    #: The path as the client sent it, before the base path was taken off.
    full_path: bytes | None = None
    _drained = 0
    _drain_timer: IDelayedCall | None = None

    def _site(self) -> Any:
        return getattr(self.channel, "site", None)

    def gotLength(self, length: int | None) -> None:
        site = self._site()
        max_body = self._site_max()
        small = min(int(getattr(site, "small_body", SMALL_BODY)), max_body)
        # The request line is in, but Request.requestReceived sets method
        # and path only once the body is complete: read them off the channel.
        method = getattr(self.channel, "_command", b"") or b""
        path = strip_base_path(
            getattr(self.channel, "_path", b"") or b"", getattr(site, "base_path", b"")
        ).split(b"?", 1)[0]
        self._path_seen = path
        gates: dict[bytes, ILargeBodyGate] = getattr(site, "large_body_gates", {})
        gate = gates.get(path) if path in gates and method.upper() == b"POST" else None
        if path in LARGE_BODY_PATHS and path not in gates:
            # No gate to verify the caller early (a site built without one):
            # the plain cap, as before gates existed.
            small = max_body
        self._cap = small
        super().gotLength(length)  # type: ignore[no-untyped-call]
        limit = max_body if gate is not None else small
        if length is not None and length > limit:
            self._refuse(too_large(path, limit))
            return
        # In flight from the moment its headers are in: a request whose body
        # is still arriving when SIGTERM comes must be allowed to finish too.
        self._track()
        if gate is not None and (length is None or length > small):
            self._ask_gate(gate, max_body)

    def _ask_gate(self, gate: ILargeBodyGate, max_body: int) -> None:
        self._gate_pending = True
        if self.requestHeaders.hasHeader(b"expect"):
            # Answer 100 Continue only once admitted: a client that waits for
            # it never sends a body that would be refused.
            self.requestHeaders.removeHeader(b"expect")
            self._hold_continue = getattr(self.channel, "_version", b"") == b"HTTP/1.1"

        def decided(refusal: Refusal | None) -> None:
            self._gate_pending = False
            if self._refused or self.channel is None or self._disconnected:
                return
            if refusal is not None:
                # What the endpoint would answer anyway (401 for a bad
                # token), only sooner, before the body is read.
                self._refuse(refusal)
                return
            self._cap = max_body
            transport = self.channel.transport
            if self._hold_continue and transport is not None:
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._hold_continue = False
            self._resume()
            if self._complete is not None:
                command, path, version = self._complete
                self._complete = None
                self.requestReceived(command, path, version)

        def failed(reason: Failure) -> None:
            log.failure("deciding on a large request body failed", reason)
            decided(_UNAVAILABLE)

        gate.admit_large_body(self).addCallbacks(decided, failed)

    _tracker: InFlight | None = None
    _untracked = False
    _path_seen = b""

    def _track(self) -> None:
        if self._tracker is not None:
            return
        tracker: InFlight | None = getattr(self._site(), "in_flight", None)
        if tracker is None:
            return
        self._tracker = tracker
        tracker.started(self)
        self.notifyFinish().addBoth(lambda _: self._untrack())
        if tracker.draining:
            self.close_after_response()

    def close_after_response(self) -> None:
        """
        No keep-alive after this answer (``Connection: close``): the server
        is stopping.  A balancer then sends its next request on a new
        connection, which goes to another process, instead of on this one,
        where it could cross the close at the end of the drain and be lost.
        """
        if self.channel is not None:
            self.channel.persistent = False
        if not self.startedWriting:
            self.setHeader(b"connection", b"close")

    def _untrack(self) -> None:
        if self._tracker is None or self._untracked:
            return
        self._untracked = True
        self._tracker.finished(self)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            self._drained += len(data)
            site = self._site()
            if self._drained > int(getattr(site, "drain_bytes", DRAIN_BYTES)):
                self._end_drain()
                return
            budget: DrainBudget | None = getattr(site, "drain_budget", None)
            if budget is not None and not budget.spend(len(data)):
                self._pause()
                budget.wait(self._resume)
            return
        self._received += len(data)
        if self._received > self._cap:
            if self._gate_pending:
                # Keep what came (at most one read past the cap) and read no
                # further until the gate has decided.
                self._pause()
            else:
                self._refuse(too_large(self._path_seen, self._cap))
                return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def _site_max(self) -> int:
        return int(getattr(self._site(), "max_body", 1 << 20))

    def _producer(self) -> IPushProducer | None:
        transport = self.channel.transport if self.channel is not None else None
        if getattr(transport, "disconnecting", False):
            return None  # closing: nothing more to read
        producer: IPushProducer | None = IPushProducer(transport, None)
        return producer

    def _pause(self) -> None:
        producer = self._producer()
        if not self._paused and producer is not None:
            self._paused = True
            producer.pauseProducing()

    def _resume(self) -> None:
        if self._disconnected:
            return
        producer = self._producer()
        if self._paused and producer is not None:
            self._paused = False
            producer.resumeProducing()

    def _refuse(self, refusal: Refusal) -> None:
        """Answer C{refusal} now, then drain the rest of the body (bounded) and close."""
        self._refused = True
        self._untrack()
        # No "100 Continue" after the answer (HTTPChannel sends one after gotLength).
        self.requestHeaders.removeHeader(b"expect")
        content: Any = getattr(self, "content", None)
        if content is not None:
            # Drop what was kept of the body (a temporary file past 100 KB).
            content.close()
            self.content = None
        channel = self.channel
        transport = channel.transport if channel is not None else None
        if transport is None:
            return
        transport.write(raw_response(refusal))
        self._resume()
        if self._complete is not None:
            self._end_drain()
            return
        site = self._site()
        clock = getattr(site, "reactor", None)
        if clock is not None:
            self._drain_timer = clock.callLater(
                float(getattr(site, "drain_seconds", DRAIN_SECONDS)), self._end_drain
            )

    def _end_drain(self) -> None:
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        self._drain_timer = None
        channel = self.channel
        if channel is not None and channel.transport is not None:
            channel.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        self._drain_timer = None
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            # The refused body is all in: the answer is out, close now.
            self._complete = (command, path, version)
            self._end_drain()
            return
        if self._gate_pending:
            # Complete before the gate decided: process once it has.
            self._complete = (command, path, version)
            return
        # Under a --base-url with a path, everything below routes on the
        # path without it (see mailmcp._paths); the log keeps the original.
        self.full_path = path.split(b"?", 1)[0]
        path = strip_base_path(path, getattr(self._site(), "base_path", b""))
        # Forms are parsed only where a form is expected.
        self._parsePOSTFormSubmission = path.split(b"?", 1)[0] in FORM_PATHS
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    _processing = False
    _answered_at_shutdown = False

    def process(self) -> None:
        if self._refused:
            return
        self._track()
        self._processing = True
        super().process()  # type: ignore[no-untyped-call]

    def answer_shutting_down(self) -> bool:
        """
        Answer this unfinished request at once, because the server is
        stopping and its time is up, and stop the work behind it.  Returns
        False when there was nothing left to answer.

        ``/mcp`` gets a JSON-RPC answer with the request's id: for
        ``tools/call`` an ``isError`` result (HTTP 200), which the model
        reads and which no proxy or client retries on its own, since the
        interrupted call (a send, a move) may have taken effect; for
        anything else HTTP 503 with a JSON-RPC error.  Other paths get a
        503 JSON error.  Either way the connection is closed afterwards.

        The request's finish notifications are fired as a failure rather
        than a success: that is how the resource (Klein) learns to cancel
        the handler instead of writing into a finished request.
        """
        if self.finished or self._disconnected or self.channel is None:
            return False
        if not self._processing:
            # The body is still arriving: no handler runs yet, nothing to
            # cancel; say so and close, as for an oversized body.
            transport = self.channel.transport
            if transport is None:
                return False
            body = encode(error_message(None, SHUTTING_DOWN, SHUTDOWN_MESSAGE))
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nRetry-After: 5\r\nConnection: close\r\n\r\n"
                % (len(body),)
                + body
            )
            transport.loseConnection()
            return True
        if self.startedWriting:
            # A response is already on its way; closing the connection
            # (later, gracefully) is all that is left.
            return False
        status, body = self._shutdown_answer()
        waiting, self.notifications = self.notifications, []
        self.setResponseCode(status)
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"cache-control", b"no-store")
        self.setHeader(b"content-length", b"%d" % (len(body),))
        self.setHeader(b"connection", b"close")
        if status == 503:
            self.setHeader(b"retry-after", b"5")
        channel = self.channel
        self.write(body)
        self.finish()
        self._answered_at_shutdown = True
        # As the header says: no further request on this connection.
        channel.loseConnection()
        for d in waiting:
            d.errback(Failure(ShuttingDown()))
        return True

    def write(self, data: bytes) -> None:
        if self._answered_at_shutdown:
            # The handler finished anyway (something on its way swallowed the
            # cancellation): its answer comes too late and is dropped.
            return
        super().write(data)  # type: ignore[no-untyped-call]

    def finish(self) -> None:
        if self._answered_at_shutdown:
            return
        super().finish()  # type: ignore[no-untyped-call]

    def _shutdown_answer(self) -> tuple[int, bytes]:
        """The status and body of a "shutting down" answer to this request."""
        if self.path != b"/mcp":
            return 503, encode(
                {"error": "temporarily_unavailable", "error_description": "server shutting down"}
            )
        request_id: Any = None
        method: Any = None
        content: Any = getattr(self, "content", None)
        try:
            content.seek(0)
            message = json.loads(content.read())
        except (AttributeError, OSError, ValueError):
            message = None
        if isinstance(message, dict):
            method = message.get("method")
            if valid_id(message.get("id")):
                request_id = message["id"]
        if method == "tools/call" and request_id is not None:
            result = {"content": [{"type": "text", "text": SHUTDOWN_MESSAGE}], "isError": True}
            return 200, encode(result_message(request_id, result))
        return 503, encode(error_message(request_id, SHUTTING_DOWN, SHUTDOWN_MESSAGE))


def _safe_log_formatter(timestamp: str, request: server.Request) -> str:
    """
    Like Twisted's combined log format, but the URL is logged without its
    query string (OAuth parameters, or a token someone put there by mistake)
    and no referrer.
    """
    path = (getattr(request, "full_path", None) or request.path or b"").decode("ascii", "replace")[
        :200
    ]
    agent = (request.getHeader(b"user-agent") or b"-").decode("ascii", "replace")[:120]
    return '{ip} - - {ts} "{method} {path} {proto}" {code} {length} "{agent}"'.format(
        ip=request.getClientAddress().host if hasattr(request.getClientAddress(), "host") else "-",
        ts=timestamp,
        method=(request.method or b"-").decode("ascii", "replace"),
        path=path.replace('"', "%22"),
        proto=(request.clientproto or b"-").decode("ascii", "replace"),
        code=request.code,
        length=request.sentLength or "-",
        agent=agent.replace('"', "'"),
    )


class MailMCPSite(server.Site):
    """The daemon's Site: no tracebacks, capped bodies, tracked requests."""

    displayTracebacks = False
    requestFactory = MailMCPRequest

    def __init__(
        self,
        resource: IResource,
        max_body: int,
        reactor: IReactorTime,
        *,
        small_body: int = SMALL_BODY,
        drain_bytes: int = DRAIN_BYTES,
        drain_seconds: float = DRAIN_SECONDS,
        drain_rate: int = DRAIN_RATE,
        base_path: bytes = b"",
    ) -> None:
        super().__init__(resource, logFormatter=_safe_log_formatter, reactor=reactor)  # type: ignore[no-untyped-call]
        self.max_body = max_body
        self.small_body = small_body
        self.drain_bytes = drain_bytes
        self.drain_seconds = drain_seconds
        self.drain_budget = DrainBudget(reactor, drain_rate)
        #: Gates of the paths in `LARGE_BODY_PATHS`, by path (see `gate`).
        self.large_body_gates: dict[bytes, ILargeBodyGate] = {}
        self.in_flight = InFlight()
        #: The --base-url's path (``b"/mail"``), taken off request paths.
        self.base_path = base_path

    def gate(self, path: bytes, gate: ILargeBodyGate) -> None:
        """Let C{path} take bodies up to ``max_body`` from requests C{gate} admits."""
        self.large_body_gates[path] = gate

    def buildProtocol(self, addr: IAddress | None) -> _GenericHTTPChannelProtocol | None:
        protocol: _GenericHTTPChannelProtocol | None = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        if protocol is None:
            return None
        # Know each connection's transport while it is open, so that
        # shutdown can close it gracefully (see InFlight.close_connections).
        tracker = self.in_flight
        made, lost = protocol.makeConnection, protocol.connectionLost
        transports: list[ITransport] = []

        def make_connection(transport: ITransport) -> None:
            transports.append(transport)
            tracker.connection_opened(transport)
            made(transport)

        def connection_lost(reason: Failure) -> None:
            for transport in transports:
                tracker.connection_closed(transport)
            lost(reason)

        protocol.makeConnection = make_connection
        protocol.connectionLost = connection_lost
        return protocol


def json_body(request: IRequest, status: int, body: Any, *, no_store: bool = True) -> bytes:
    """
    Set C{status} and JSON headers on C{request} and return the encoded body.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    if no_store:
        request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


__all__ = ["ILargeBodyGate", "InFlight", "MailMCPSite", "Refusal", "json_body", "http"]
