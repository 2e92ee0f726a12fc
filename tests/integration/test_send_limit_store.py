"""
The shared send budget in the real Redis (`RedisGrantStore.take_send_tokens`,
one Lua script) on a `Clock`: the same token bucket as the in-memory one,
shared by two store instances (two daemons), and atomic when they race.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from mailmcp.interfaces import ISendTokenStore
from mailmcp.mail._sendrate import SharedSendRateLimiter
from mailmcp.store._redis import RedisGrantStore
from tests.harness import Services

pytestmark = pytest.mark.integration

HOUR = 3600.0


@pytest.fixture
def stores(services: Services) -> Iterator[tuple[RedisGrantStore, RedisGrantStore, Clock]]:
    """Two stores on one Redis (one prefix: two daemons of one deployment) and their clock."""
    clock = Clock()
    clock.advance(1_800_000_000)
    prefix = f"test-{secrets.token_hex(4)}:"
    made = [RedisGrantStore(services.redis_url, clock, prefix=prefix) for _ in range(2)]
    for store in made:
        store.connect()
    yield made[0], made[1], clock
    for store in made:
        pytest_twisted.blockon(store.disconnect())


@pytest_twisted.ensureDeferred
async def test_bucket_refills_on_the_clock(stores: tuple[RedisGrantStore, RedisGrantStore, Clock]) -> None:
    """Burst 5 at 1/hour: 3 + 2 taken, then 1 waits an hour; after 3599 s still 1 s; after 3600 s taken."""
    store, _, clock = stores
    assert verifyObject(ISendTokenStore, store)
    assert await store.take_send_tokens("k", 3, 5, 1) == 0.0
    assert await store.take_send_tokens("k", 3, 5, 1) == pytest.approx(HOUR)  # only 2 left
    assert await store.take_send_tokens("k", 2, 5, 1) == 0.0
    assert await store.take_send_tokens("k", 1, 5, 1) == pytest.approx(HOUR)
    clock.advance(HOUR - 1)
    assert await store.take_send_tokens("k", 1, 5, 1) == pytest.approx(1.0, abs=1e-3)
    clock.advance(1)
    assert await store.take_send_tokens("k", 1, 5, 1) == 0.0
    clock.advance(24 * HOUR)  # refills to the burst, not beyond
    assert await store.take_send_tokens("k", 5, 5, 1) == 0.0
    assert await store.take_send_tokens("k", 1, 5, 1) > 0
    assert await store.take_send_tokens("other", 5, 5, 1) == 0.0  # keys are separate


@pytest_twisted.ensureDeferred
async def test_two_stores_share_one_budget_and_racing_takes_are_atomic(
    stores: tuple[RedisGrantStore, RedisGrantStore, Clock],
) -> None:
    """
    Burst 10: 40 one-recipient takes fired at once, half through each store
    instance, let exactly 10 through; the limiter on either then refuses.
    """
    first, second, _ = stores
    limiters = [SharedSendRateLimiter(s, burst=10, per_hour=1) for s in (first, second)]
    results = await gatherResults([limiters[n % 2].take("shared", 1) for n in range(40)])
    assert sum(1 for wait in results if wait == 0.0) == 10
    assert all(wait > 0 for wait in results if wait != 0.0)
    for limiter in limiters:
        assert await limiter.take("shared", 1) > 0
        assert await limiter.take("shared", 11) == math.inf
