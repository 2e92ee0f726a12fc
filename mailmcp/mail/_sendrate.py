"""
Per-account send limit (docs/threat-model.rst, SM-12): a model stuck in a
loop, or a stolen token, must not turn a user's mailbox into a spam cannon
and get the account blocked by its provider.

The budget counts recipients, not messages: one message to 50 addresses
costs what 50 messages to one address cost, which is what a provider's
limits (and a spam run) count.  Each account has a token bucket: C{burst}
recipients at once (``--send-burst``), refilled at C{per_hour} recipients
per hour (``--sends-per-hour``).  A send takes one token per envelope
recipient (to + cc + bcc, each address once) before the SMTP server is
contacted; when there are not enough it is refused whole and nothing is
sent.  A message with more recipients than the burst can never be sent and
is refused at once, saying so.

Where the buckets live: with a Redis store (``--store redis://``) in Redis,
taken atomically by one Lua script, so every daemon on that Redis shares one
budget per account (`SharedSendRateLimiter`); with SQLite, in the process's
memory (`SendRateLimiter`): a restart refills them, and N processes allow N
times the rate.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from .._account import MailAccount
from ..interfaces import ISendBudget


def send_key(account: MailAccount) -> str:
    """
    The bucket an account's sends count against: the SMTP server and login
    that actually send, so several logins (grants) of one mailbox share one
    budget, and a changed password does not reset it.  Hashed, so no
    username sits in memory (or in Redis) as a key.
    """
    material = "\0".join(
        [account.smtp.host.lower(), str(account.smtp.port), account.smtp_username.lower()]
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def _check_settings(burst: int, per_hour: float) -> None:
    if burst < 1 or not per_hour > 0 or not math.isfinite(per_hour):
        raise ValueError("burst must be >= 1 and per_hour a positive number")


@implementer(ISendBudget)
class SendRateLimiter:
    """
    Token buckets per account key, in this process's memory, on an injected
    clock.

    Memory stays bounded: a bucket that has refilled to capacity is the same
    as no bucket, so full buckets are dropped.  Buckets are kept in order of
    last use; each call drops full ones from the old end, so what remains is
    only accounts that sent recently.
    """

    def __init__(self, clock: IReactorTime, burst: int, per_hour: float) -> None:
        _check_settings(burst, per_hour)
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

    def acquire(self, key: str, count: int = 1) -> float:
        """
        Take C{count} tokens for C{key}.  Returns 0 when taken, else the
        number of seconds until that many will be available (nothing is
        taken; never, as C{math.inf}, when C{count} exceeds the burst).
        """
        if count > self.burst:
            return math.inf
        now = self._clock.seconds()
        self._prune(now)
        tokens = self._level(key, now)
        if tokens < count:
            return (count - tokens) / self._rate
        self._buckets[key] = (tokens - count, now)
        self._buckets.move_to_end(key)
        return 0.0

    def take(self, key: str, count: int) -> Deferred[float]:
        return succeed(self.acquire(key, count))

    def available(self, key: str) -> int:
        """Whole tokens C{key} has now."""
        return int(self._level(key, self._clock.seconds()))

    def __len__(self) -> int:
        """Buckets held (accounts that sent recently)."""
        return len(self._buckets)


@implementer(ISendBudget)
class SharedSendRateLimiter:
    """
    The same token buckets, kept in a store every daemon shares (an
    `ISendTokenStore`: the Redis grant store), so two daemons behind one
    load balancer allow one budget per account, not two.

    The store's clock is the daemon's; daemons sharing a store should keep
    their clocks in sync (NTP), or a fast one refills buckets early.
    """

    def __init__(self, store: Any, burst: int, per_hour: float) -> None:
        _check_settings(burst, per_hour)
        self._store = store
        self.burst = burst
        self.per_hour = per_hour

    def take(self, key: str, count: int) -> Deferred[float]:
        if count > self.burst:
            return succeed(math.inf)
        d: Deferred[float] = self._store.take_send_tokens(key, count, self.burst, self.per_hour)
        return d
