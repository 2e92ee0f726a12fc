"""
`IMAPPool`: logged-in IMAP connections kept per account.

A warm tool call leases a connection that is already logged in, usually
with the right folder already open, so it costs one IMAP round trip instead
of connect + TLS + LOGIN + SELECT + LOGOUT (docs/architecture.rst, IMAP and Targets).

- Connections are keyed by `MailAccount.imap_pool_key` (a hash: a changed
  password never reuses a connection logged in with the old one).  That key
  is derived from the password, so it never reaches the log: a connection's
  label is an HMAC of it under a secret drawn at random by each pool (plus a
  serial), which nobody can recompute from known credentials, and which
  differs between runs.
- At most ``pool_size`` connections per account; further callers wait at
  most ``wait_timeout`` seconds, then get "mailbox busy, try again".
  A global cap (``max_connections``) bounds the whole process; when it is
  reached the least recently used idle connection of any account is closed.
- Idle connections are logged out after ``idle_timeout`` seconds (driven by
  the injected clock); a connection whose transport went away is dropped
  at once, and one idle for over ``noop_after`` seconds is checked with a
  NOOP before reuse.
- A connection that broke during an operation is discarded; the operation
  is retried once on a fresh connection only when it is ``read_only`` and
  the failure is transient.  `IMAPAuthError` is never retried.
- At most ``connect_concurrency`` new connections (connect, TLS, LOGIN) are
  in progress at once; the rest wait their turn.  A burst of first calls
  from a thousand accounts would otherwise run a thousand TLS handshakes in
  the same reactor iterations and stall every warm call for seconds.  A slot
  is held for at most ``connect_slot_hold`` seconds, so a mail server that
  stalls its greeting cannot block other accounts' logins for long.
- ``connect_per_call=True`` disables pooling (connect, log in, run, log
  out), the baseline the benchmarks compare against.
"""

from __future__ import annotations

import hmac
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredSemaphore
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from ..._account import MailAccount
from ..._config import Config
from ..._logging import Logger
from ..._tls import MailTLS
from ...oauth._tokens import InvalidToken
from ...provider._client import ProviderUnavailable
from ...provider._refresh import GrantEnded
from .._mailbox_api import IMAPAuthError, IMAPError, IMAPGrantEnded, IMAPSession, IMAPTokenRejected
from ._client import DEFAULT_MAX_LINE, DEFAULT_MAX_LITERAL, IMAPClientProtocol
from ._session import Session

T = TypeVar("T")
log = Logger()

#: Seconds before its login token expires that a connection is retired.
TOKEN_SLACK = 60

#: An observer of every command sent: (connection label, command, arguments).
CommandObserver = Callable[[str, str, str], None]


@attrs.define(eq=False)
class _Connection:
    session: Session
    key: str
    label: str
    last_used: float
    leased: bool = True
    dropped: bool = False
    expiry: IDelayedCall | None = None
    #: When the provider access token this connection logged in with
    #: expires (token accounts only): it is not reused after that.
    token_expires: float | None = None


@attrs.define(eq=False)
class _Slots:
    """One account's connections: idle ones, how many exist, who waits."""

    idle: list[_Connection] = attrs.field(factory=list)
    count: int = 0
    waiters: deque[Deferred[_Connection | None]] = attrs.field(factory=deque)


class _QuietOneShot(Factory):
    """
    `connectProtocol`'s one-shot factory without its two log lines
    ("Starting factory", "Stopping factory") per connection: with thousands
    of pooled connections they were most of the log.
    """

    noisy = False

    def __init__(self, protocol: IMAPClientProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: object) -> IMAPClientProtocol:
        return self._protocol


class IMAPPool(Service):
    """
    The process's pool of logged-in IMAP connections; implements
    `IMAPPoolAPI`.  As a service it logs every idle connection out on stop.

    :param reactor: provides `IReactorTCP` (and `IReactorTime`, injected).
    :param clock: the `IReactorTime` for deadlines and idle expiry
        (defaults to C{reactor}; tests pass a ``Clock``).
    :param tls: builds verifying TLS options per host.
    :param endpoint_factory: optional replacement for the TCP endpoint
        (tests); it gets the account and returns an unconnected endpoint.
    """

    def __init__(
        self,
        reactor: Any,
        tls: MailTLS,
        *,
        pool_size: int = 4,
        wait_timeout: float = 15.0,
        idle_timeout: float = 300.0,
        command_timeout: float = 30.0,
        max_connections: int = 5000,
        connect_per_call: bool = False,
        noop_after: float = 60.0,
        max_line: int = DEFAULT_MAX_LINE,
        max_literal: int = DEFAULT_MAX_LITERAL,
        endpoint_factory: Callable[[Any], IStreamClientEndpoint] | None = None,
        clock: IReactorTime | None = None,
        logout_timeout: float = 2.0,
        connect_concurrency: int = 16,
        connect_slot_hold: float = 1.0,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if connect_concurrency < 1:
            raise ValueError("connect_concurrency must be at least 1")
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.tls = tls
        self.pool_size = pool_size
        self.wait_timeout = wait_timeout
        self.idle_timeout = idle_timeout
        self.command_timeout = command_timeout
        self.max_connections = max_connections
        self.connect_per_call = connect_per_call
        self.noop_after = noop_after
        self.logout_timeout = logout_timeout
        self.max_line = max_line
        self.max_literal = max_literal
        self.endpoint_factory = endpoint_factory
        self.command_observers: list[CommandObserver] = []
        self.connect_slot_hold = connect_slot_hold
        self._connect_gate = DeferredSemaphore(connect_concurrency)
        self.stats: dict[str, int] = {
            "connections": 0, "leases": 0, "reused": 0, "discarded": 0, "expired": 0,
            "retries": 0, "evicted": 0, "busy": 0, "connect_waits": 0,
            "token_aged_out": 0, "token_renewals": 0,
        }  # fmt: skip
        self._slots: dict[str, _Slots] = {}
        self._lru: dict[_Connection, None] = {}
        self._total = 0
        self._global_waiters: deque[Deferred[_Connection | None]] = deque()
        self._closing = False
        self._serial = 0
        self._label_secret = secrets.token_bytes(32)

    @classmethod
    def from_config(cls, config: Config, reactor: Any, **overrides: Any) -> IMAPPool:
        """A pool configured from the daemon's `Config`."""
        settings: dict[str, Any] = {
            "max_connections": default_max_connections(),
            "pool_size": config.pool_size,
            "wait_timeout": config.pool_wait_timeout,
            "idle_timeout": config.pool_idle_timeout,
            "command_timeout": config.imap_timeout,
            "connect_per_call": config.imap_connect_per_call,
            "connect_concurrency": config.imap_connect_concurrency,
        }
        settings.update(overrides)
        return cls(reactor, MailTLS(config.mail_ca_file), **settings)

    # -- public -----------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """Connections that exist now (idle, leased or being opened)."""
        return self._total

    def idle_count(self, account: Any) -> int:
        slots = self._slots.get(account.imap_pool_key)
        return len(slots.idle) if slots is not None else 0

    async def run(
        self,
        account: MailAccount,
        operation: Callable[[IMAPSession], Awaitable[T]],
        *,
        read_only: bool,
    ) -> T:
        """
        Lease a logged-in connection for C{account}, run C{operation} on its
        session and give it back (see `IMAPPoolAPI.run`).  Cancelling the
        call discards a connection left mid-command and is never retried.
        """
        attempts = 2 if read_only else 1
        for attempt in range(attempts):
            conn: _Connection | None = None
            try:
                conn = await self._acquire(account)
                result = await operation(conn.session)
            except IMAPError as e:
                broken = conn is None or not conn.session.usable
                if conn is not None:
                    self._release(conn)
                if (
                    attempt + 1 < attempts
                    and e.transient
                    and broken
                    and not isinstance(e, IMAPAuthError)
                ):
                    self.stats["retries"] += 1
                    log.info(
                        "IMAP {label}: retrying a read after: {error}",
                        label=self._label(account.imap_pool_key),
                        error=e.message,
                    )
                    continue
                raise
            except BaseException:
                if conn is not None:
                    self._release(conn)
                raise
            self._release(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def stopService(self) -> Deferred[Any]:
        super().stopService()  # type: ignore[no-untyped-call]
        self._closing = True
        error = IMAPError("the server is shutting down")
        for slots in self._slots.values():
            while slots.waiters:
                d = slots.waiters.popleft()
                if not d.called:
                    d.errback(Failure(error))
        while self._global_waiters:
            d = self._global_waiters.popleft()
            if not d.called:
                d.errback(Failure(error))
        idle = list(self._lru)
        done: Deferred[Any] = DeferredList([self._close(conn) for conn in idle], consumeErrors=True)

        def abort_stragglers() -> None:
            for conn in idle:
                conn.session.protocol.fail(IMAPError("the server is shutting down"))

        # LOGOUT is a courtesy: a server that does not answer it promptly
        # must not hold up the daemon's shutdown.
        timer = self.clock.callLater(self.logout_timeout, abort_stragglers)

        def stop_timer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(stop_timer)

    # -- leasing -----------------------------------------------------------------------

    async def _acquire(self, account: Any) -> _Connection:
        key = account.imap_pool_key
        deadline = self.clock.seconds() + self.wait_timeout
        renewed = False
        while True:
            if self._closing:
                raise IMAPError("the server is shutting down")
            # Looked up afresh after every wait: an account's slots are
            # forgotten whenever it has no connection and nobody waits.
            slots = self._slots.get(key)
            if slots is None:
                slots = self._slots[key] = _Slots()
            conn = self._pop_idle(slots)
            if conn is not None:
                if self.clock.seconds() - conn.last_used > self.noop_after:
                    try:
                        await conn.session.noop()
                    except IMAPError:
                        self._release(conn)
                        continue
                self.stats["leases"] += 1
                self.stats["reused"] += 1
                return conn
            if slots.count < self.pool_size:
                if self._total < self.max_connections or self._evict_one():
                    try:
                        return await self._open(account, key, slots)
                    except IMAPTokenRejected:
                        if renewed or getattr(account, "renew", None) is None:
                            raise
                    # The server refused the access token (it may have been
                    # revoked or expired early): one fresh token, one retry.
                    account = await _renewed(account)
                    renewed = True
                    self.stats["token_renewals"] += 1
                    continue
                waiters = self._global_waiters
            else:
                waiters = slots.waiters
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                self.stats["busy"] += 1
                raise IMAPError("mailbox busy, try again")
            handed = await self._wait(waiters, remaining)
            if handed is not None:
                self.stats["leases"] += 1
                self.stats["reused"] += 1
                return handed

    def _wait(
        self, waiters: deque[Deferred[_Connection | None]], timeout: float
    ) -> Deferred[_Connection | None]:
        def cancel(d: Deferred[_Connection | None]) -> None:
            try:
                waiters.remove(d)
            except ValueError:
                pass

        d: Deferred[_Connection | None] = Deferred(cancel)
        waiters.append(d)

        def expired() -> None:
            if not d.called:
                cancel(d)
                self.stats["busy"] += 1
                d.errback(Failure(IMAPError("mailbox busy, try again")))

        timer = self.clock.callLater(timeout, expired)

        def stop_timer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(stop_timer)
        return d

    def _pop_idle(self, slots: _Slots) -> _Connection | None:
        while slots.idle:
            conn = slots.idle.pop()
            self._lru.pop(conn, None)
            if conn.expiry is not None and conn.expiry.active():
                conn.expiry.cancel()
            conn.expiry = None
            conn.leased = True
            if self._token_aged_out(conn):
                self._close(conn)
                continue
            if conn.session.usable:
                return conn
            self._drop(conn)
        return None

    def _token_aged_out(self, conn: _Connection) -> bool:
        """
        Whether C{conn}'s login token has (nearly) expired: some servers end
        such sessions, so a fresh connection logs in with the fresh token.
        """
        if conn.token_expires is None:
            return False
        if conn.token_expires - TOKEN_SLACK > self.clock.seconds():
            return False
        self.stats["token_aged_out"] += 1
        log.debug("IMAP {label}: its sign-in token aged out, logging out", label=conn.label)
        return True

    async def _open(self, account: Any, key: str, slots: _Slots) -> _Connection:
        slots.count += 1
        self._total += 1
        self._serial += 1
        label = f"{self._label(key)}#{self._serial}"
        protocol = IMAPClientProtocol(
            self.clock,
            timeout=self.command_timeout,
            max_line=self.max_line,
            max_literal=self.max_literal,
            label=label,
            observer=self._observer(label),
        )
        session = Session(protocol)
        tokens = getattr(account, "oauth", None) if getattr(account, "uses_token", False) else None
        conn = _Connection(
            session=session,
            key=key,
            label=label,
            last_used=self.clock.seconds(),
            token_expires=None if tokens is None else float(tokens.expires_at),
        )
        try:
            await self._gated_login(account, protocol, session)
        except BaseException:
            self._close(conn)
            raise
        protocol.lost_callbacks.append(lambda _p: self._lost(conn))
        self.stats["connections"] += 1
        self.stats["leases"] += 1
        log.info(
            "IMAP {label}: logged in to {host}:{port} ({security})",
            label=label,
            host=account.imap.host,
            port=account.imap.port,
            security=account.imap.security,
        )
        return conn

    async def _gated_login(
        self, account: Any, protocol: IMAPClientProtocol, session: Session
    ) -> None:
        """Connect and log in holding a slot of the connect gate (see the module docstring)."""
        gate = self._connect_gate
        if gate.tokens == 0:
            self.stats["connect_waits"] += 1
        waiting = gate.acquire()
        # A login burst is paced by the mail server's login rate, so a turn
        # may take longer than a free pooled connection would: wait as long
        # as a call may wait for one plus what one connect may take.
        waiting.addTimeout(self.wait_timeout + self.command_timeout, self.clock)
        try:
            await waiting
        except DeferredTimeoutError:
            self.stats["busy"] += 1
            raise IMAPError("the server is busy logging in to other mailboxes, try again") from None
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                gate.release()

        timer = self.clock.callLater(self.connect_slot_hold, release)
        try:
            if self._closing:
                raise IMAPError("the server is shutting down")
            await self._connect(account, protocol)
            await session.open(account, self.tls.options_for(account.imap.host))
        finally:
            if timer.active():
                timer.cancel()
            release()

    async def _connect(self, account: Any, protocol: IMAPClientProtocol) -> None:
        server = account.imap
        if self.endpoint_factory is not None:
            endpoint = self.endpoint_factory(account)
        else:
            endpoint = HostnameEndpoint(
                self.reactor, server.host, server.port, timeout=max(1, int(self.command_timeout))
            )
        if server.security == "tls":
            endpoint = wrapClientTLS(self.tls.options_for(server.host), endpoint)
        d = endpoint.connect(_QuietOneShot(protocol))
        d.addTimeout(self.command_timeout, self.clock)
        try:
            await d
        except (ConnectTimeoutError, DeferredTimeoutError):
            raise IMAPError(
                f"could not connect to the mail server {server.host}:{server.port} "
                f"within {self.command_timeout:g} s",
                transient=True,
            ) from None
        except (IMAPError, CancelledError):
            raise
        except Exception as e:  # noqa: BLE001 - every connect failure maps to one message
            raise IMAPError(
                f"could not connect to the mail server {server.host}:{server.port} "
                f"({type(e).__name__})",
                transient=True,
            ) from None

    def _label(self, key: str) -> str:
        """An account's name in the log: keyed, so no password fingerprint."""
        return hmac.new(self._label_secret, key.encode("ascii"), "sha256").hexdigest()[:12]

    def _observer(self, label: str) -> Callable[[str, str], None]:
        def observe(command: str, arguments: str) -> None:
            for observer in self.command_observers:
                observer(label, command, arguments)

        return observe

    # -- giving back ----------------------------------------------------------------

    def _release(self, conn: _Connection) -> None:
        conn.leased = False
        if conn.dropped:
            return
        if (
            self._closing
            or self.connect_per_call
            or not conn.session.usable
            or self._token_aged_out(conn)
        ):
            if not conn.session.usable:
                self.stats["discarded"] += 1
            self._close(conn)
            return
        conn.last_used = self.clock.seconds()
        slots = self._slots.get(conn.key)
        if slots is None:  # pragma: no cover - a leased connection keeps its slots
            slots = self._slots[conn.key] = _Slots()
            slots.count = 1
        while slots.waiters:
            waiter = slots.waiters.popleft()
            if not waiter.called:
                conn.leased = True
                waiter.callback(conn)
                return
        slots.idle.append(conn)
        self._lru[conn] = None
        conn.expiry = self.clock.callLater(self.idle_timeout, self._expire, conn)
        # A caller held back by the global cap may now evict this one.
        self._wake(self._global_waiters)

    def _expire(self, conn: _Connection) -> None:
        conn.expiry = None
        if conn.leased or conn.dropped:
            return
        self.stats["expired"] += 1
        log.debug(
            "IMAP {label}: idle for {seconds:g} s, logging out",
            label=conn.label,
            seconds=self.idle_timeout,
        )
        self._close(conn)

    def _evict_one(self) -> bool:
        """Close the least recently used idle connection of any account."""
        for conn in self._lru:
            self.stats["evicted"] += 1
            self._close(conn)
            return True
        return False

    def _lost(self, conn: _Connection) -> None:
        """The transport went away; an idle connection is dropped at once."""
        if not conn.leased:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        """Forget C{conn} and hand its slot to whoever waits."""
        if conn.dropped:
            return
        conn.dropped = True
        if conn.expiry is not None and conn.expiry.active():
            conn.expiry.cancel()
        conn.expiry = None
        self._lru.pop(conn, None)
        slots = self._slots.get(conn.key)
        if slots is not None:
            if conn in slots.idle:
                slots.idle.remove(conn)
            slots.count -= 1
            self._wake(slots.waiters)
            if slots.count == 0 and not slots.idle and not slots.waiters:
                del self._slots[conn.key]
        self._total -= 1
        self._wake(self._global_waiters)

    @staticmethod
    def _wake(waiters: deque[Deferred[_Connection | None]]) -> None:
        while waiters:
            waiter = waiters.popleft()
            if not waiter.called:
                waiter.callback(None)
                return

    def _close(self, conn: _Connection) -> Deferred[None]:
        """Drop C{conn} and log it out (or abort it if it is not usable)."""
        self._drop(conn)
        session = conn.session
        if session.usable:
            return Deferred.fromCoroutine(session.logout())
        session.protocol.fail(IMAPError("connection discarded", transient=True))
        # Nobody may ever await the greeting of a connection that failed
        # early; its failure is already reported through the operation.
        session.protocol.greeting.addErrback(lambda _: None)
        return Deferred.fromCoroutine(_nothing())


async def _renewed(account: Any) -> Any:
    """C{account} with a fresh provider token, its failures as `IMAPError`s."""
    try:
        return await account.renew()
    except GrantEnded as e:
        raise IMAPGrantEnded(e.message) from None
    except ProviderUnavailable as e:
        raise IMAPError(f"the sign-in could not be renewed: {e.message}") from None
    except InvalidToken:
        raise IMAPGrantEnded("this sign-in has ended; sign in again") from None


def default_max_connections() -> int:
    """
    Three quarters of the process's file-descriptor limit (the rest is for
    HTTP clients, files and the store), at most 5,000.
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 5000
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 5000
    return max(16, min(5000, soft * 3 // 4))


async def _nothing() -> None:
    return None
