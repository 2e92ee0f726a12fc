"""
Per-account send rate limit (docs/threat-model.rst, SM-12): a model stuck in a loop,
or a stolen token, must not turn a user's mailbox into a spam cannon and get
the account blocked by its provider.

Each account has a token bucket: C{burst} sends at once, refilled at
C{per_hour} sends per hour.  A send takes a token before the SMTP server is
contacted; with none left it is refused and nothing is sent.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

from ._account import MailAccount


def send_key(account: MailAccount) -> str:
    """
    The bucket an account's sends count against: the SMTP server and login
    that actually send, so several logins (grants) of one mailbox share one
    budget, and a changed password does not reset it.  Hashed, so no
    username sits in memory as a dict key.
    """
    material = "\0".join(
        [account.smtp.host.lower(), str(account.smtp.port), account.smtp_username.lower()]
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class SendRateLimiter:
    """
    Token buckets per account key, on an injected clock.

    The buckets live in memory, per process: a restart refills them all, and
    N processes behind a load balancer allow up to N times the rate.  That
    is deliberate; the limit is a brake on runaway sending, not accounting,
    and needs no shared store on the send path.

    Memory stays bounded: a bucket that has refilled to capacity is the same
    as no bucket, so full buckets are dropped.  Buckets are kept in order of
    last use; each call drops full ones from the old end, so what remains is
    only accounts that sent recently.
    """

    def __init__(self, clock: IReactorTime, burst: int, per_hour: float) -> None:
        if burst < 1 or not per_hour > 0 or not math.isfinite(per_hour):
            raise ValueError("burst must be >= 1 and per_hour a positive number")
        self._clock = clock
        self.burst = burst
        self.per_hour = per_hour
        self._rate = per_hour / 3600.0
        # key -> (tokens at stamp, stamp)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.burst)
        tokens, stamp = entry
        return min(float(self.burst), tokens + max(0.0, now - stamp) * self._rate)

    def _prune(self, now: float) -> None:
        while self._buckets:
            oldest = next(iter(self._buckets))
            if self._level(oldest, now) < self.burst:
                return
            del self._buckets[oldest]

    def acquire(self, key: str) -> float:
        """
        Take one send token for C{key}.  Returns 0 when taken, else the
        number of seconds until one will be available (nothing is taken).
        """
        now = self._clock.seconds()
        self._prune(now)
        tokens = self._level(key, now)
        if tokens < 1.0:
            return (1.0 - tokens) / self._rate
        self._buckets[key] = (tokens - 1.0, now)
        self._buckets.move_to_end(key)
        return 0.0

    def available(self, key: str) -> int:
        """Whole send tokens C{key} has now."""
        return int(self._level(key, self._clock.seconds()))

    def __len__(self) -> int:
        """Buckets held (accounts that sent recently)."""
        return len(self._buckets)
