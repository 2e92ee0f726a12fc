"""
The daemon's service tree.  Objects are built here; no socket is opened and
no I/O happens until `startService`.

Children start in the order added and stop in reverse: the listeners stop
accepting first, then `DrainService` waits (bounded) for in-flight requests,
then the pools and stores behind them close.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import IResource

from ._audit import Audit, build_audit
from ._config import Config
from ._paths import base_path
from ._tls import MailTLS
from ._toolkit import ToolServices
from .attachments import ThreadPoolService, build_attachments
from .attachments._helpers import StoredPartIndex
from .interfaces import ISendBudget, ISendIntentStore, ISendTokenStore
from .mail._sendintent import LEASE_MARGIN, SendIntents
from .mail._sendrate import SendRateLimiter, SharedSendRateLimiter
from .mail._smtp import SMTPSender
from .mail.imap import IMAPPool
from .mcp._app import MCPApp
from .oauth._app import build_authorization_server
from .tools import all_tools
from .web._admission import Admission
from .web._cors import CORSPolicy
from .web._http import ILargeBodyGate, InFlight, MailMCPSite
from .web._metrics import GCTuning, MetricsApp, ReactorLagProbe
from .web._router import HealthApp, Router

log = Logger()


class ListenFailed(SystemExit, Exception):
    """
    Raised out of ``(privileged)startService`` so twistd exits 1 with one
    line and no traceback.

    A SystemExit, so the interpreter exits quietly; also an Exception, so
    that a daemonizing twistd reports it through its status pipe (the
    waiting parent otherwise blocks forever) and removes its pid file.
    """

    def __init__(self, message: str) -> None:
        super().__init__(1)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ListeningService(Service):
    """
    Listen on one endpoint string.  A failure to listen (port in use, bad
    endpoint) prints one line to stderr and ends the process with status 1,
    because a daemon that silently listens on nothing helps nobody.
    """

    def __init__(
        self, reactor: Any, description: str, site: MailMCPSite, option: str = "--listen"
    ) -> None:
        self._reactor = reactor
        self._description = description
        self._site = site
        self._option = option
        self._attempted = False
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        # twistd calls this on the whole tree before any startService (and
        # before dropping privileges): binding here means a port in use ends
        # the process before any part has started a thread pool or
        # connection that would keep the interpreter from exiting.
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._listen()

    def _listen(self) -> None:
        if self._attempted:
            return
        self._attempted = True
        try:
            endpoint = serverFromString(self._reactor, self._description)
        except IndexError:
            # systemd:...:index=N with fewer sockets passed in (LISTEN_FDS).
            self._fail(
                f"bad {self._option} endpoint {self._description!r}: no such socket was passed "
                "in by systemd (is the process started by its .socket unit?)"
            )
            return
        except (ValueError, TypeError, KeyError) as e:
            self._fail(f"bad {self._option} endpoint {self._description!r}: {e}")
            return
        outcome: list[Any] = []
        endpoint.listen(self._site).addBoth(outcome.append)
        if not outcome:
            log.warn("listening on {endpoint} is still pending", endpoint=self._description)
            return
        result = outcome[0]
        if isinstance(result, Failure):
            self._fail(f"cannot listen on {self._description}: {result.getErrorMessage()}")
            return
        self.port = result
        log.info(
            "mailmcp listening on {endpoint}{what}",
            endpoint=self._description,
            what=" (metrics)" if self._option == "--metrics-listen" else "",
        )

    def _fail(self, message: str) -> None:
        # Under twistd, sys.stderr is already redirected into the log; the
        # operator's terminal (or journald) is the original stream.
        log.error("{message}", message=message)
        stream = sys.__stderr__ or sys.stderr
        stream.write(f"mailmcp: {message}\n")
        stream.flush()
        raise ListenFailed(message)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self.port is None:
            return None
        port, self.port = self.port, None
        d = port.stopListening()
        return d if isinstance(d, Deferred) else None


class DrainService(Service):
    """
    On stop, wait until in-flight requests finish, within C{timeout}
    seconds; answer those still running then with a clean "shutting down"
    (and stop their work); then close every open connection gracefully
    (pending output written first), allowing C{close_grace} more seconds
    for that.

    The last steps matter: once shutdown goes on, the reactor drops every
    connection without writing what is still buffered, so a response that
    finished a moment earlier would never reach its client, and a call cut
    off with no answer at all leaves its client guessing.
    """

    def __init__(
        self, reactor: Any, in_flight: InFlight, timeout: float, close_grace: float = 5.0
    ) -> None:
        self._reactor = reactor
        self._in_flight = in_flight
        self._timeout = timeout
        self._close_grace = close_grace

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        # SIGTERM is how service managers ask for an orderly stop, and this
        # is one: report success.  (twistd would otherwise re-raise the
        # signal once the reactor stopped, so the exit status would be
        # "killed by SIGTERM" and buffered log output would be lost.)
        if getattr(self._reactor, "_exitSignal", None) == signal.SIGTERM:
            self._reactor._exitSignal = None
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        deadline = self._reactor.seconds() + self._timeout
        self._in_flight.start_draining()
        if self._in_flight.count:
            log.info("waiting for {count} in-flight requests", count=self._in_flight.count)
        if not await self._within(self._in_flight.when_idle(), deadline):
            count = self._in_flight.count
            answered = self._in_flight.answer_unfinished()
            log.warn(
                "shutdown: {count} requests did not finish in time; {answered} answered "
                "'server shutting down' and stopped",
                count=count,
                answered=answered,
            )
            # The answers just written need a moment to leave.
            deadline = max(deadline, self._reactor.seconds() + self._close_grace)
        if not await self._within(self._in_flight.close_connections(), deadline):
            log.warn(
                "shutdown: {count} connections did not close in time",
                count=len(self._in_flight.connections),
            )

    async def _within(self, d: Deferred[None], deadline: float) -> bool:
        """Wait for C{d} until C{deadline}; False (and C{d} cancelled) if it is not done by then."""
        timer = self._reactor.callLater(max(0.0, deadline - self._reactor.seconds()), d.cancel)
        try:
            await d
        except CancelledError:
            return False
        finally:
            if timer.active():
                timer.cancel()
        return True


class SequentialMultiService(MultiService):
    """
    A MultiService that stops its children one after another, in reverse
    order, each only once the previous one has finished stopping (Twisted's
    own stops them all at once): listeners close, then in-flight requests
    drain, and only then do the pools and stores they use shut down.
    """

    def __init__(self, clock: Any = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._clock = clock

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_in_turn())

    async def _stop_in_turn(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {name} failed", name=child.name)
        if self._clock is not None:
            # The last child may finish inside a protocol callback (the IMAP
            # pool's last LOGOUT answer); the reactor's shutdown goes on from
            # here at once and drops every connection, which a TLS transport
            # in the middle of dataReceived cannot survive (AttributeError
            # on _tlsConnection).  Finish on a fresh reactor turn instead.
            await deferLater(self._clock, 0, lambda: None)


def build_send_limiter(config: Config, reactor: Any, parent: MultiService) -> ISendBudget:
    """
    Recipients per account: --send-burst at once, then --sends-per-hour
    (SM-12).  Kept in the grant store when it can share them (Redis: every
    daemon on it has one budget per account), else in this process.
    """
    store = parent.getServiceNamed("grant-store") if "grant-store" in parent.namedServices else None
    if ISendTokenStore.providedBy(store):
        return SharedSendRateLimiter(store, config.send_burst, config.sends_per_hour)
    return SendRateLimiter(reactor, config.send_burst, config.sends_per_hour)


def build_send_intents(config: Config, parent: MultiService) -> SendIntents | None:
    """
    Keyed sends record their intent in the grant store before ``DATA``
    (SM-13, SM-14), so every daemon sharing it sends a key at most once.
    """
    store = parent.getServiceNamed("grant-store") if "grant-store" in parent.namedServices else None
    if not ISendIntentStore.providedBy(store):
        return None
    return SendIntents(store, lease=config.smtp_timeout + LEASE_MARGIN)


def build_tool_services(
    config: Config, reactor: Any, parent: MultiService, audit: Audit | None
) -> tuple[ToolServices, list[tuple[str, IResource]]]:
    """
    Every part the tools use, built complete in this one place, and the
    routes of the attachment store (``/attachments/`` for a local one).
    Parts that own long-lived resources (the IMAP pool, the attachment
    thread pool) are added to C{parent} as services.
    """
    # Logged-in IMAP connections per account; as a child service it logs
    # them all out when the daemon stops.
    imap_pool = IMAPPool.from_config(config, reactor)
    imap_pool.setName("imap-pool")
    imap_pool.setServiceParent(parent)
    attachments = build_attachments(config, reactor)
    attachments.service.setServiceParent(parent)
    services = ToolServices(
        reactor=reactor,
        imap=imap_pool,
        # One connection per message; TLS verified with the operator's extra CA.
        smtp=SMTPSender(reactor, MailTLS(config.mail_ca_file), timeout=config.smtp_timeout),
        attachments=attachments.store,
        limits=attachments.store.limits,
        attachment_index=StoredPartIndex(),
        send_limiter=build_send_limiter(config, reactor, parent),
        send_intents=build_send_intents(config, parent),
        audit=audit,
        send_allow_domains=config.send_allow_domains,
        trusted_authserv_id=config.trusted_authserv_id,
    )
    return services, attachments.routes


def build_routes(
    config: Config,
    reactor: Any,
    parent: MultiService,
    gates: dict[bytes, ILargeBodyGate] | None = None,
) -> list[tuple[str, IResource]]:
    """
    Build the daemon's parts and return their path prefixes.  Parts that own
    long-lived resources (pools, stores, thread pools) are added to
    C{parent} as services.  The parts that take large bodies put their
    gates (see `mailmcp.web._http.ILargeBodyGate`) into C{gates}.
    """
    routes: list[tuple[str, IResource]] = [("/health", HealthApp(config.base_url).app.resource())]
    # The raw samples (for the JSON of /metrics) are kept only when there is
    # a metrics listener to serve them; admission needs none.
    lag_probe = ReactorLagProbe(reactor, keep=20000 if config.metrics_listen else 0)
    lag_probe.setName("reactor-lag")
    lag_probe.setServiceParent(parent)
    # /mcp requests in progress at once, adapted to the lag (docs/architecture.rst, Targets),
    # with each mailbox's share and a bounded queue (issue 12).
    admission = Admission(
        per_account=config.max_requests_per_account, max_queued=config.max_queued_requests
    )
    lag_probe.observers.append(admission.observe_lag)
    # /metrics only on its own, private listener (--metrics-listen), if any:
    # on the public one it would be an anonymous traffic amplifier.
    if config.metrics_listen is not None:
        metrics = MetricsApp(lag_probe, admission=admission)
        metrics_site = MailMCPSite(
            Router([("/metrics", metrics.app.resource())]), max_body=4096, reactor=reactor
        )
        metrics_listener = ListeningService(
            reactor, config.metrics_listen, metrics_site, option="--metrics-listen"
        )
        metrics_listener.setName("metrics-listen")
        metrics_listener.setServiceParent(parent)
    audit = build_audit(config.audit_log, reactor, parent)
    extra: dict[str, IResource] = {}
    oauth_resource, verifier = build_authorization_server(config, reactor, parent, extra, audit)
    routes += [("/.well-known/", oauth_resource), ("/oauth/", oauth_resource)]
    # The user's page: connected apps and their revocation (issue 15).
    routes.append(("/account", extra["account"]))
    # MCP part: /mcp, gated by the OAuth part's verifier.
    tool_services, attachment_routes = build_tool_services(config, reactor, parent, audit)
    routes += attachment_routes
    # Large /mcp bodies are decoded here, off the reactor thread; two
    # threads, so at most two such bodies are being decoded (and held as
    # Python objects) at once.
    decode = ThreadPoolService(ThreadPool(minthreads=0, maxthreads=2, name="mailmcp-json"))
    decode.setName("json-decode")
    decode.setServiceParent(parent)
    mcp = MCPApp(
        config,
        verifier,
        tool_services,
        all_tools(),
        admission=admission,
        decode_pool=decode.pool,
        reactor=reactor,
    )
    routes.append(("/mcp", mcp.resource()))
    if gates is not None:
        # /mcp takes --max-request-body only once its token is verified.
        gates[b"/mcp"] = mcp
    return routes


def build_service(config: Config, reactor: Any) -> IService:
    top = SequentialMultiService(reactor)
    parts = MultiService()
    parts.setName("parts")
    parts.setServiceParent(top)
    gates: dict[bytes, ILargeBodyGate] = {}
    routes = build_routes(config, reactor, parts, gates)
    # Last of the parts: freezes what they built (see GCTuning).
    gc_tuning = GCTuning()
    gc_tuning.setName("gc-tuning")
    gc_tuning.setServiceParent(parts)
    site = MailMCPSite(
        Router(routes, cors=CORSPolicy.from_config(config)),
        max_body=config.max_request_body,
        reactor=reactor,
        base_path=base_path(config.base_url).encode("ascii"),
    )
    for path, gate in gates.items():
        site.gate(path, gate)
    drain = DrainService(reactor, site.in_flight, config.shutdown_timeout)
    drain.setName("drain")
    drain.setServiceParent(top)
    for index, description in enumerate(config.listen):
        listener = ListeningService(reactor, description, site)
        listener.setName(f"listen-{index}")
        listener.setServiceParent(top)
    log.info(
        "mailmcp starting: base URL {base_url}, state {state_dir}",
        base_url=config.base_url,
        state_dir=str(config.state_dir),
    )
    return top
