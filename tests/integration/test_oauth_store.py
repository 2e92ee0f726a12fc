"""
One contract suite for every `IGrantStore`: the in-memory model, SQLite
(the default) and Redis (the real server from the ``services`` fixture).
Time comes from a `Clock` so expiry is tested without waiting.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from mailmcp._grants import GrantRecord, MemoryGrantStore
from mailmcp._store_redis import RedisGrantStore, parse_redis_url
from mailmcp._store_sqlite import SQLiteGrantStore
from mailmcp.interfaces import IGrantStore

pytestmark = pytest.mark.integration

NOW = 1_800_000_000


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_and_clock(request, tmp_path: Path):
    clock = Clock()
    clock.advance(NOW)
    if request.param == "memory":
        yield MemoryGrantStore(clock), clock
    elif request.param == "sqlite":
        store = SQLiteGrantStore(tmp_path / "grants.sqlite3", clock)
        yield store, clock
        store.close()
    else:
        services = request.getfixturevalue("services")
        store = RedisGrantStore(services.redis_url, clock, prefix=f"test-{secrets.token_hex(4)}:")
        store.connect()
        yield store, clock
        pytest_twisted.blockon(store.disconnect())


def record(grant_id: str | None = None, expires: int = NOW + 60, client: str = "c1") -> GrantRecord:
    return GrantRecord(grant_id=grant_id or secrets.token_hex(16), client_ref=client,
                       sealed=b"\x00\xffsealed" + secrets.token_bytes(20), created=NOW, expires=expires)


def test_provides_interface(store_and_clock) -> None:
    """Every store provides IGrantStore."""
    store, _ = store_and_clock
    assert verifyObject(IGrantStore, store)


@pytest_twisted.ensureDeferred
async def test_create_get_revoke(store_and_clock) -> None:
    """A grant reads back byte for byte; revoked it is gone."""
    store, _ = store_and_clock
    r = record()
    await store.create_grant(r)
    assert await store.get_grant(r.grant_id) == r
    assert await store.get_grant("missing") is None
    await store.revoke_grant(r.grant_id)
    assert await store.get_grant(r.grant_id) is None
    await store.revoke_grant(r.grant_id)


@pytest_twisted.ensureDeferred
async def test_grant_expires(store_and_clock) -> None:
    """A grant past its expiry reads as absent."""
    store, clock = store_and_clock
    r = record(expires=NOW + 10)
    await store.create_grant(r)
    clock.advance(11)
    assert await store.get_grant(r.grant_id) is None


@pytest_twisted.ensureDeferred
async def test_activate_is_single_use(store_and_clock) -> None:
    """A code activates its grant once (extending its life); a replay is refused."""
    store, clock = store_and_clock
    r = record(expires=NOW + 65)
    await store.create_grant(r)
    assert await store.activate_grant(r.grant_id, "code-1", NOW + 60, NOW + 1000) is True
    assert await store.activate_grant(r.grant_id, "code-1", NOW + 60, NOW + 1000) is False
    clock.advance(500)
    got = await store.get_grant(r.grant_id)
    assert got is not None and got.expires == NOW + 1000


@pytest_twisted.ensureDeferred
async def test_activate_concurrent_only_one_wins(store_and_clock) -> None:
    """Racing redemptions of one code: exactly one wins."""
    store, _ = store_and_clock
    r = record()
    await store.create_grant(r)
    results = await gatherResults([store.activate_grant(r.grant_id, "code-x", NOW + 60, NOW + 999)
                                   for _ in range(10)])
    assert sorted(results) == [False] * 9 + [True]


@pytest_twisted.ensureDeferred
async def test_activate_missing_or_expired_grant(store_and_clock) -> None:
    """Activating a grant that is gone fails."""
    store, clock = store_and_clock
    assert await store.activate_grant("nope", "code-2", NOW + 60, NOW + 999) is False
    r = record(expires=NOW + 5)
    await store.create_grant(r)
    clock.advance(6)
    assert await store.activate_grant(r.grant_id, "code-3", NOW + 60, NOW + 999) is False


@pytest_twisted.ensureDeferred
async def test_rotate_refresh(store_and_clock) -> None:
    """Rotation is compare-and-increment: the current generation advances once; stale ones fail."""
    store, _ = store_and_clock
    r = record()
    await store.create_grant(r)
    assert await store.rotate_refresh(r.grant_id, 0) is True
    assert await store.rotate_refresh(r.grant_id, 0) is False
    assert await store.rotate_refresh(r.grant_id, 1) is True
    assert (await store.get_grant(r.grant_id)).generation == 2
    assert await store.rotate_refresh("missing", 0) is False


@pytest_twisted.ensureDeferred
async def test_rotate_concurrent_only_one_wins(store_and_clock) -> None:
    """Two refreshes racing on one generation: one wins, so reuse detection triggers for the other."""
    store, _ = store_and_clock
    r = record()
    await store.create_grant(r)
    results = await gatherResults([store.rotate_refresh(r.grant_id, 0) for _ in range(8)])
    assert results.count(True) == 1


@pytest_twisted.ensureDeferred
async def test_rotate_expired_grant_fails(store_and_clock) -> None:
    """An expired grant cannot rotate."""
    store, clock = store_and_clock
    r = record(expires=NOW + 5)
    await store.create_grant(r)
    clock.advance(6)
    assert await store.rotate_refresh(r.grant_id, 0) is False


@pytest_twisted.ensureDeferred
async def test_counters_window(store_and_clock) -> None:
    """Counters count within their window and restart after it."""
    store, clock = store_and_clock
    assert await store.count("k") == 0
    assert [await store.hit("k", 60) for _ in range(3)] == [1, 2, 3]
    assert await store.count("k") == 3
    assert await store.count("other") == 0
    clock.advance(61)
    assert await store.count("k") == 0
    assert await store.hit("k", 60) == 1


@pytest_twisted.ensureDeferred
async def test_reserve_is_all_or_nothing(store_and_clock) -> None:
    """reserve takes one unit from every budget or, when one is full, from none."""
    store, clock = store_and_clock
    assert await store.reserve([("a", 2, 60), ("b", 1, 60)]) is None
    assert (await store.count("a"), await store.count("b")) == (1, 1)
    assert await store.reserve([("a", 2, 60), ("b", 1, 60)]) == "b"
    assert (await store.count("a"), await store.count("b")) == (1, 1)
    await store.release(["b"])
    assert await store.count("b") == 0
    assert await store.reserve([("a", 2, 60), ("b", 1, 60)]) is None
    assert await store.reserve([("c", 5, 60), ("a", 2, 60)]) == "a"
    assert await store.count("c") == 0
    clock.advance(61)
    assert await store.reserve([("a", 2, 60)]) is None
    assert await store.count("a") == 1


@pytest_twisted.ensureDeferred
async def test_release_never_below_zero_nor_revives(store_and_clock) -> None:
    """release stops at zero, ignores absent keys and leaves an expired counter expired."""
    store, clock = store_and_clock
    await store.release(["absent"])
    assert await store.count("absent") == 0
    assert await store.reserve([("k", 3, 10)]) is None
    await store.release(["k", "absent"])
    await store.release(["k"])
    assert await store.count("k") == 0
    assert await store.reserve([("k", 3, 10)]) is None
    clock.advance(11)
    await store.release(["k"])
    assert await store.count("k") == 0
    assert [await store.reserve([("k", 1, 10)]), await store.reserve([("k", 1, 10)])] == [None, "k"]


@pytest_twisted.ensureDeferred
async def test_concurrent_reservations_never_overshoot(store_and_clock) -> None:
    """30 reservations in flight at once against a limit of 5: exactly 5 are granted."""
    store, _ = store_and_clock
    results = await gatherResults([store.reserve([("user:x", 5, 300), ("global", 1000, 300)])
                                   for _ in range(30)])
    assert results.count(None) == 5
    assert results.count("user:x") == 25
    assert await store.count("user:x") == 5
    assert await store.count("global") == 5


_RESERVER = """
import sys
from twisted.internet.task import Clock
from mailmcp._store_sqlite import SQLiteGrantStore
clock = Clock()
clock.advance(float(sys.argv[2]))
store = SQLiteGrantStore(sys.argv[1], clock)
sys.stdin.readline()  # start together
won = []
for _ in range(300):
    store.reserve([("user:race", 500, 300)]).addCallback(won.append)
print(won.count(None))
"""


def test_sqlite_reservations_are_atomic_across_processes(tmp_path: Path) -> None:
    """Four processes race 300 reservations each on one SQLite file, limit 500: 500 win in total."""
    import subprocess
    import sys

    path = tmp_path / "race.sqlite3"
    SQLiteGrantStore(path, Clock()).close()  # create the schema once
    procs = [subprocess.Popen([sys.executable, "-c", _RESERVER, str(path), str(NOW)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(int(out) for out in outputs) == 500


def test_sqlite_sweep_and_file_mode(tmp_path: Path) -> None:
    """The SQLite file is private (0600) and the sweep deletes expired rows."""
    clock = Clock()
    clock.advance(NOW)
    store = SQLiteGrantStore(tmp_path / "g.sqlite3", clock)
    try:
        assert (tmp_path / "g.sqlite3").stat().st_mode & 0o777 == 0o600
        store.create_grant(record("a" * 32, expires=NOW + 5))
        store.create_grant(record("b" * 32, expires=NOW + 500))
        store.hit("k", 5)
        clock.advance(10)
        assert store.sweep() == 2
    finally:
        store.close()


def test_parse_redis_url() -> None:
    """Redis URLs: host, port, db and password; unix sockets."""
    assert parse_redis_url("redis://:pw@h:7000/3") == {"host": "h", "port": 7000, "dbid": 3,
                                                       "password": "pw", "tls": False}
    assert parse_redis_url("redis://h")["port"] == 6379
    assert parse_redis_url("unix:///run/redis.sock?db=2") == {"path": "/run/redis.sock", "dbid": 2,
                                                              "password": None}


@pytest_twisted.ensureDeferred
async def test_redis_down_fails_fast() -> None:
    """With Redis unreachable, operations fail within the store's deadline instead of queueing forever."""
    import time

    from twisted.internet import reactor

    from tests.harness import free_port

    store = RedisGrantStore(f"redis://127.0.0.1:{free_port()}/0", reactor, timeout=1.0)
    store.connect()
    started = time.monotonic()
    try:
        with pytest.raises(Exception):
            await store.get_grant("x")
        assert time.monotonic() - started < 3
    finally:
        await store.disconnect()


def test_unopenable_sqlite_store_exits_with_one_line(tmp_path: Path) -> None:
    """A grant store path that cannot be opened stops the daemon with one line and status 1."""
    import os
    import subprocess

    from tests.harness import ROOT, TWISTD, free_port

    result = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "mailmcp", "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
         "--state-dir", str(tmp_path / "state"), "--store", "sqlite:/nonexistent/dir/x.sqlite3"],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 1
    assert "cannot open the grant store /nonexistent/dir/x.sqlite3" in result.stderr
    assert "Traceback" not in result.stderr


@pytest_twisted.ensureDeferred
async def test_sqlite_service_maintenance(tmp_path: Path) -> None:
    """As a service the SQLite store sweeps expired rows and checkpoints the WAL on its own thread."""
    from twisted.internet import reactor

    store = SQLiteGrantStore(tmp_path / "m.sqlite3", reactor, maintenance_interval=3600)
    store.startService()
    try:
        now = int(reactor.seconds())
        await store.create_grant(record("c" * 32, expires=now - 1))
        await store.create_grant(record("d" * 32, expires=now + 600))
        await store.maintain()
        assert await store.get_grant("d" * 32) is not None
        assert store.sweep() == 0
    finally:
        store.stopService()
