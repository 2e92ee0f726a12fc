"""
Where CPU-heavy steps of a large request run: decoding and validating a
body of tens of megabytes takes tens of milliseconds to seconds, which the
reactor must not spend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

_T = TypeVar("_T")


class Offload(Protocol):
    """Run C{work()} and give its result; off the reactor if C{large}."""

    async def __call__(self, large: bool, work: Callable[[], _T]) -> _T: ...


async def on_reactor(large: bool, work: Callable[[], _T]) -> _T:
    """An `Offload` that runs everything in place (no decode pool)."""
    return work()


class OffReactor:
    """
    An `Offload` on a started thread pool: large work goes there, small
    work runs in place.  Without a pool everything runs in place.
    """

    def __init__(self, pool: ThreadPool | None, reactor: Any) -> None:
        self._pool = pool
        self._reactor = reactor

    async def __call__(self, large: bool, work: Callable[[], _T]) -> _T:
        if not large or self._pool is None:
            return work()
        result: _T = await deferToThreadPool(self._reactor, self._pool, work)
        return result
