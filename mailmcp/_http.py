"""
HTTP plumbing shared by every part of the daemon: the Site with a body-size
cap, in-flight request tracking for graceful shutdown, an access log that
never records query strings, and JSON helpers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http import _GenericHTTPChannelProtocol
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from ._jsonrpc import encode, error_message, result_message, valid_id

log = Logger()

SHUTTING_DOWN = -32000
"""JSON-RPC error code (implementation-defined range) for a call cut short by shutdown."""

SHUTDOWN_MESSAGE = (
    "The server is shutting down (a restart or deploy) and this call did not finish in time, so "
    "it was stopped. Its outcome is unknown: what it was doing may or may not have taken effect "
    "(for send_mail_message: the message may or may not have gone out; look in Sent, or retry "
    "with the same idempotency_key). Try again in a moment."
)


class ShuttingDown(Exception):
    """Fired into a request's finish notifications when shutdown answered it early."""


_TOO_LARGE = (
    b"HTTP/1.1 413 Payload Too Large\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 29\r\n"
    b"Connection: close\r\n\r\n"
    b'{"error":"request_too_large"}'
)


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
    A request that refuses bodies over the site's cap before buffering them,
    and reports itself to the site's L{InFlight} counter.
    """

    _received = 0
    _too_large = False

    def _max_body(self) -> int:
        site = getattr(self.channel, "site", None)
        return int(getattr(site, "max_body", 1 << 20))

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._max_body():
            self._refuse_too_large()
            return
        # In flight from the moment its headers are in: a request whose body
        # is still arriving when SIGTERM comes must be allowed to finish too.
        self._track()
        super().gotLength(length)

    _tracked = False

    def _track(self) -> None:
        if self._tracked:
            return
        tracker: InFlight | None = getattr(getattr(self.channel, "site", None), "in_flight", None)
        if tracker is None:
            return
        self._tracked = True
        tracker.started(self)
        self.notifyFinish().addBoth(lambda _: tracker.finished(self))

    def handleContentChunk(self, data: bytes) -> None:
        if self._too_large:
            return
        self._received += len(data)
        if self._received > self._max_body():
            self._refuse_too_large()
            return
        super().handleContentChunk(data)

    def _refuse_too_large(self) -> None:
        self._too_large = True
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.write(_TOO_LARGE)
            transport.loseConnection()

    _processing = False
    _answered_at_shutdown = False

    def process(self) -> None:
        if self._too_large:
            return
        self._track()
        self._processing = True
        super().process()

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
        super().write(data)

    def finish(self) -> None:
        if self._answered_at_shutdown:
            return
        super().finish()

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
    path = (request.path or b"").decode("ascii", "replace")[:200]
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

    def __init__(self, resource: IResource, max_body: int, reactor: IReactorTime) -> None:
        super().__init__(resource, logFormatter=_safe_log_formatter, reactor=reactor)
        self.max_body = max_body
        self.in_flight = InFlight()

    def buildProtocol(self, addr: IAddress | None) -> _GenericHTTPChannelProtocol | None:
        protocol: _GenericHTTPChannelProtocol | None = super().buildProtocol(addr)
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


def log_failure_safely(message: str) -> Callable[[Failure], None]:
    """An errback that logs C{message} with the failure's type only."""

    def errback(failure: Failure) -> None:
        log.error(message + " ({kind})", kind=failure.type.__name__ if failure.type else "?")

    return errback


__all__ = ["InFlight", "MailMCPSite", "json_body", "http"]
