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

log = Logger()

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

    def started(self) -> None:
        self.count += 1

    def finished(self) -> None:
        self.count -= 1
        if self.count == 0:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

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
        tracker.started()
        self.notifyFinish().addBoth(lambda _: tracker.finished())

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

    def process(self) -> None:
        if self._too_large:
            return
        self._track()
        super().process()


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
