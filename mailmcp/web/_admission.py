"""
`Admission`: how many ``/mcp`` requests are worked on at once, adapted to
the reactor's lag, shared fairly between accounts, with a bounded queue.

One process multiplexes every user on one reactor, so the work a burst puts
into one reactor iteration is what everyone else waits for (docs/architecture.rst, Targets: lag
p99 < 100 ms with 1,000 accounts).  Requests beyond the limit wait, already
authenticated and cheap.  The limit follows the lag probe
(`mailmcp.web._metrics.ReactorLagProbe`): every sample above the target cuts it
by a quarter, every sample below raises it by one, between a floor and a
ceiling.  A call waiting on a slow mail server costs no CPU, so the lag
stays low and the limit grows past it: slow providers do not starve the
others, which a fixed limit (or a fixed hold time) would let them do.

Fairness and bounds (issue 12): one account may have at most
``per_account`` requests at work or waiting; past that it is refused at once
(`Refused`, which ``/mcp`` answers with 503 and ``Retry-After``) instead of
growing the queue.  Waiting requests are let in account by account, in turn
(round robin), so an account with hundreds of calls queued delays another
account's single call by at most one admission per busier account.  The
queue as a whole holds at most ``max_queued`` requests; past that, 503 too.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable

from twisted.internet.defer import Deferred, succeed


class Refused(Exception):
    """
    The request cannot be admitted now; answer 503 and ask the client to
    come back after C{retry_after} seconds.

    :ivar reason: ``"account"`` (this account has too many requests in
        flight) or ``"queue"`` (the server-wide queue is full).
    """

    def __init__(self, reason: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class Admission:
    """
    An adaptive limit on requests in progress (an AIMD controller fed by
    reactor-lag samples through `observe_lag`), with a per-account share
    and a bounded, round-robin queue.

    :param per_account: most requests one account may have at work or
        waiting at once.
    :param max_queued: most requests waiting, all accounts together.
    """

    def __init__(
        self,
        initial: int = 16,
        minimum: int = 4,
        maximum: int = 4096,
        target_lag: float = 0.04,
        *,
        per_account: int = 16,
        max_queued: int = 1024,
    ) -> None:
        if not 1 <= minimum <= initial <= maximum:
            raise ValueError("need 1 <= minimum <= initial <= maximum")
        if per_account < 1 or max_queued < 0:
            raise ValueError("need per_account >= 1 and max_queued >= 0")
        self.limit = float(initial)
        self.minimum = minimum
        self.maximum = maximum
        self.target_lag = target_lag
        self.per_account = per_account
        self.max_queued = max_queued
        self.working = 0
        self.waited = 0
        #: Requests refused, by reason (``account``, ``queue``).
        self.refused: dict[str, int] = {"account": 0, "queue": 0}
        self._queued = 0
        #: Requests at work or waiting, per account (accounts with none are dropped).
        self._in_flight: dict[Hashable, int] = {}
        #: Waiting requests per account; the order is the round-robin turn.
        self._waiting: OrderedDict[Hashable, deque[Deferred[None]]] = OrderedDict()

    @property
    def queued(self) -> int:
        return self._queued

    def in_flight(self, account: Hashable) -> int:
        """Requests of C{account} at work or waiting."""
        return self._in_flight.get(account, 0)

    def observe_lag(self, lag: float) -> None:
        """One reactor-lag sample: adapt the limit, then let in whom it now allows."""
        if lag > self.target_lag:
            self.limit = max(float(self.minimum), self.limit * 0.75)
        else:
            self.limit = min(float(self.maximum), self.limit + 1.0)
        self._admit()

    def enter(self, account: Hashable = None) -> Deferred[None]:
        """
        Fires when this request of C{account} may be worked on; call `leave`
        (with the same account) once it is answered.  Cancelling the wait
        gives up the place in the queue (and then no `leave` is due).

        C{account} L{None} is not subject to the per-account share.

        :raises Refused: when the account already has its share in flight or
            the queue is full; nothing was taken then.
        """
        if account is not None and self.in_flight(account) >= self.per_account:
            self.refused["account"] += 1
            raise Refused(
                "account",
                f"Too many requests in progress for this account (at most {self.per_account} "
                "at once); wait for some to finish, then retry.",
                1,
            )
        if not self._queued and self.working < int(self.limit):
            self._count(account, 1)
            self.working += 1
            return succeed(None)
        if self._queued >= self.max_queued:
            self.refused["queue"] += 1
            raise Refused(
                "queue",
                "The server is busy (its request queue is full); retry in a few seconds.",
                2,
            )
        self.waited += 1

        def give_up(d: Deferred[None]) -> None:
            waiting = self._waiting.get(account)
            if waiting is None or d not in waiting:
                return
            waiting.remove(d)
            if not waiting:
                del self._waiting[account]
            self._queued -= 1
            self._count(account, -1)

        d: Deferred[None] = Deferred(give_up)
        self._waiting.setdefault(account, deque()).append(d)
        self._queued += 1
        self._count(account, 1)
        return d

    def leave(self, account: Hashable = None) -> None:
        self.working -= 1
        self._count(account, -1)
        self._admit()

    def _count(self, account: Hashable, delta: int) -> None:
        if account is None:
            return
        count = self._in_flight.get(account, 0) + delta
        if count > 0:
            self._in_flight[account] = count
        else:
            self._in_flight.pop(account, None)

    def _admit(self) -> None:
        while self._waiting and self.working < int(self.limit):
            # The account whose turn it is goes to the back of the line
            # if it still has requests waiting.
            account, waiting = next(iter(self._waiting.items()))
            d = waiting.popleft()
            if waiting:
                self._waiting.move_to_end(account)
            else:
                del self._waiting[account]
            self._queued -= 1
            self.working += 1
            d.callback(None)


def fixed(limit: int, *, per_account: int = 16, max_queued: int = 1024) -> Admission:
    """An `Admission` that never adapts (no lag feed): a plain concurrency limit."""
    return Admission(
        initial=limit,
        minimum=limit,
        maximum=limit,
        per_account=per_account,
        max_queued=max_queued,
    )
