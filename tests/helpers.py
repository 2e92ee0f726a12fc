"""Small helpers shared by test modules."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """
    Drive a coroutine that never really waits (the synchronous fakes answer
    at once) and return its result, or raise its exception.
    """
    outcome: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(outcome.append)
    assert outcome, "the coroutine waited on something the synchronous fakes never fire"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]  # type: ignore[no-any-return]
