"""
The send-intent contract (SM-13, SM-14) of every grant store: the memory
double, SQLite (two connections on one file) and the real Redis (two store
instances on one prefix: two daemons of one deployment), on a `Clock`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from mailmcp.interfaces import ISendIntentStore
from mailmcp.store._redis import RedisGrantStore
from mailmcp.store._sqlite import SQLiteGrantStore
from mailmcp.testing import MemoryGrantStore

pytestmark = pytest.mark.integration

LEASE = 70.0
KEEP = 7 * 24 * 3600


@pytest.fixture(params=["memory", "sqlite", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any, Clock]]:
    """Two handles on one store (two daemons sharing it) and their clock."""
    clock = Clock()
    clock.advance(1_800_000_000)
    if request.param == "memory":
        one = MemoryGrantStore(clock)
        yield one, one, clock
    elif request.param == "sqlite":
        made = [SQLiteGrantStore(tmp_path / "grants.sqlite3", clock) for _ in range(2)]
        yield made[0], made[1], clock
        for store in made:
            store.close()
    else:
        services = request.getfixturevalue("services")
        prefix = f"test-{secrets.token_hex(4)}:"
        redis = [RedisGrantStore(services.redis_url, clock, prefix=prefix) for _ in range(2)]
        for store in redis:
            store.connect()
        yield redis[0], redis[1], clock
        for store in redis:
            pytest_twisted.blockon(store.disconnect())


@pytest_twisted.ensureDeferred
async def test_claim_is_held_then_abandoned_after_the_lease(stores: tuple[Any, Any, Clock]) -> None:
    """
    One owner claims; the other store sees "sending" until the lease runs
    out, then "unknown" (the owner died mid-send), and never a second claim.
    """
    first, second, clock = stores
    assert verifyObject(ISendIntentStore, first)
    assert await first.begin_send("k1", "acct", "owner-a", LEASE, KEEP) == "claimed"
    assert await second.begin_send("k1", "acct", "owner-b", LEASE, KEEP) == "sending"
    clock.advance(LEASE - 1)
    assert await second.begin_send("k1", "acct", "owner-b", LEASE, KEEP) == "sending"
    clock.advance(1)
    assert await second.begin_send("k1", "acct", "owner-b", LEASE, KEEP) == "unknown"
    assert await first.begin_send("k1", "acct", "owner-a", LEASE, KEEP) == "unknown"
    assert await second.begin_send("other", "acct", "owner-b", LEASE, KEEP) == "claimed"


@pytest_twisted.ensureDeferred
async def test_outcomes_sent_unknown_and_failed(stores: tuple[Any, Any, Clock]) -> None:
    """
    "sent" and "unknown" are final for the record's lifetime; "failed"
    (nothing went out) lets the next call claim it; only the owner can
    end a record; after C{keep} seconds it is gone.
    """
    first, second, clock = stores
    for key, outcome in (("s", "sent"), ("u", "unknown"), ("f", "failed")):
        assert await first.begin_send(key, "acct", "owner-a", LEASE, KEEP) == "claimed"
        await second.end_send(key, "owner-b", "failed", KEEP)  # not its record: ignored
        assert await second.begin_send(key, "acct", "owner-b", LEASE, KEEP) == "sending"
        await first.end_send(key, "owner-a", outcome, KEEP)
    assert await second.begin_send("s", "acct", "owner-b", LEASE, KEEP) == "sent"
    assert await second.begin_send("u", "acct", "owner-b", LEASE, KEEP) == "unknown"
    assert await second.begin_send("f", "acct", "owner-b", LEASE, KEEP) == "claimed"
    clock.advance(KEEP + 1)
    assert await second.begin_send("s", "acct", "owner-b", LEASE, KEEP) == "claimed"


@pytest_twisted.ensureDeferred
async def test_racing_claims_have_one_winner(stores: tuple[Any, Any, Clock]) -> None:
    """Twenty claims of one key fired at once, half through each handle: exactly one wins."""
    first, second, _ = stores
    results = await gatherResults(
        [
            (first if n % 2 else second).begin_send("race", "acct", f"owner-{n}", LEASE, KEEP)
            for n in range(20)
        ]
    )
    assert sorted(results) == ["claimed"] + ["sending"] * 19
