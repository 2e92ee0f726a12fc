"""
`Admission`: how many ``/mcp`` requests are worked on at once, adapted to
the reactor's lag.

One process multiplexes every user on one reactor, so the work a burst puts
into one reactor iteration is what everyone else waits for (docs/architecture.rst, Targets: lag
p99 < 100 ms with 1,000 accounts).  Requests beyond the limit wait, already
parsed and cheap, in arrival order.  The limit follows the lag probe
(`mailmcp._metrics.ReactorLagProbe`): every sample above the target cuts it
by a quarter, every sample below raises it by one, between a floor and a
ceiling.  A call waiting on a slow mail server costs no CPU, so the lag
stays low and the limit grows past it: slow providers do not starve the
others, which a fixed limit (or a fixed hold time) would let them do.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred, succeed


class Admission:
    """
    An adaptive limit on requests in progress (an AIMD controller fed by
    reactor-lag samples through `observe_lag`).
    """

    def __init__(
        self,
        initial: int = 16,
        minimum: int = 4,
        maximum: int = 4096,
        target_lag: float = 0.04,
    ) -> None:
        if not 1 <= minimum <= initial <= maximum:
            raise ValueError("need 1 <= minimum <= initial <= maximum")
        self.limit = float(initial)
        self.minimum = minimum
        self.maximum = maximum
        self.target_lag = target_lag
        self.working = 0
        self.waited = 0
        self._waiting: deque[Deferred[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def observe_lag(self, lag: float) -> None:
        """One reactor-lag sample: adapt the limit, then let in whom it now allows."""
        if lag > self.target_lag:
            self.limit = max(float(self.minimum), self.limit * 0.75)
        else:
            self.limit = min(float(self.maximum), self.limit + 1.0)
        self._admit()

    def enter(self) -> Deferred[None]:
        """
        Fires when this request may be worked on; call `leave` once it is
        answered.  Cancelling the wait gives up the place in the queue.
        """
        if not self._waiting and self.working < int(self.limit):
            self.working += 1
            return succeed(None)
        self.waited += 1

        def give_up(d: Deferred[None]) -> None:
            try:
                self._waiting.remove(d)
            except ValueError:
                pass

        d: Deferred[None] = Deferred(give_up)
        self._waiting.append(d)
        return d

    def leave(self) -> None:
        self.working -= 1
        self._admit()

    def _admit(self) -> None:
        while self._waiting and self.working < int(self.limit):
            self.working += 1
            self._waiting.popleft().callback(None)


def fixed(limit: int) -> Admission:
    """An `Admission` that never adapts (no lag feed): a plain concurrency limit."""
    return Admission(initial=limit, minimum=limit, maximum=limit)
