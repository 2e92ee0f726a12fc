"""
One contract suite for every `IGrantStore`: the in-memory model, SQLite
(the default) and Redis (the real server from the ``services`` fixture).
Time comes from a `Clock` so expiry is tested without waiting.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from mailmcp.interfaces import IGrantStore
from mailmcp.oauth._grants import REFRESH_GRACE, USED_CODE_MARGIN
from mailmcp.oauth._tokens import InvalidToken
from mailmcp.store._redis import RedisGrantStore, parse_redis_url
from mailmcp.store._sqlite import SQLiteGrantStore
from tests.integration.grant_records import NOW, record
from tests.unit.oauth_helpers import BASE, REDIRECT, Server, make_server, pkce

pytestmark = pytest.mark.integration


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
    """
    Rotation is compare-and-increment: the current generation advances once
    and the store answers with the successor it was given; older generations
    get None.
    """
    store, clock = store_and_clock
    r = record(expires=NOW + 1000)
    await store.create_grant(r)
    assert await store.rotate_refresh(r.grant_id, 0, b"succ-1", 60) == b"succ-1"
    clock.advance(61)
    assert await store.rotate_refresh(r.grant_id, 0, b"other", 60) is None
    assert await store.rotate_refresh(r.grant_id, 1, b"succ-2", 60) == b"succ-2"
    assert (await store.get_grant(r.grant_id)).generation == 2
    assert await store.rotate_refresh(r.grant_id, 0, b"other", 60) is None
    assert await store.rotate_refresh("missing", 0, b"other", 60) is None


@pytest_twisted.ensureDeferred
async def test_rotate_grace_returns_the_same_successor(store_and_clock) -> None:
    """
    Within the grace after a rotation, the previous generation gets the
    remembered successor again and nothing changes; at the end of the grace
    (exactly, by the store's clock) it gets None.
    """
    store, clock = store_and_clock
    r = record(expires=NOW + 1000)
    await store.create_grant(r)
    assert await store.rotate_refresh(r.grant_id, 0, b"winner", 60) == b"winner"
    clock.advance(59)
    assert await store.rotate_refresh(r.grant_id, 0, b"late", 60) == b"winner"
    assert await store.rotate_refresh(r.grant_id, 0, b"later", 60) == b"winner"
    assert (await store.get_grant(r.grant_id)).generation == 1
    clock.advance(1)
    assert await store.rotate_refresh(r.grant_id, 0, b"too-late", 60) is None
    assert (await store.get_grant(r.grant_id)).generation == 1


@pytest_twisted.ensureDeferred
async def test_rotate_grace_only_for_the_previous_generation(store_and_clock) -> None:
    """Two generations back is reuse even within the grace."""
    store, _ = store_and_clock
    r = record()
    await store.create_grant(r)
    assert await store.rotate_refresh(r.grant_id, 0, b"one", 60) == b"one"
    assert await store.rotate_refresh(r.grant_id, 1, b"two", 60) == b"two"
    assert await store.rotate_refresh(r.grant_id, 0, b"x", 60) is None
    assert await store.rotate_refresh(r.grant_id, 1, b"y", 60) == b"two"


@pytest_twisted.ensureDeferred
async def test_rotate_concurrent_one_successor(store_and_clock) -> None:
    """Refreshes racing on one generation: one rotates, and every one of them gets its successor."""
    store, _ = store_and_clock
    r = record()
    await store.create_grant(r)
    results = await gatherResults([store.rotate_refresh(r.grant_id, 0, b"s%d" % i, 60)
                                   for i in range(8)])
    assert len(set(results)) == 1 and results[0] in {b"s%d" % i for i in range(8)}
    assert (await store.get_grant(r.grant_id)).generation == 1


@pytest_twisted.ensureDeferred
async def test_rotate_expired_grant_fails(store_and_clock) -> None:
    """An expired grant cannot rotate, nor answer within the grace."""
    store, clock = store_and_clock
    r = record(expires=NOW + 5)
    await store.create_grant(r)
    assert await store.rotate_refresh(r.grant_id, 0, b"one", 60) == b"one"
    clock.advance(6)
    assert await store.rotate_refresh(r.grant_id, 1, b"two", 60) is None
    assert await store.rotate_refresh(r.grant_id, 0, b"one", 60) is None


@pytest_twisted.ensureDeferred
async def test_rotate_after_revoke_fails(store_and_clock) -> None:
    """A revoked grant has no grace either."""
    store, _ = store_and_clock
    r = record()
    await store.create_grant(r)
    assert await store.rotate_refresh(r.grant_id, 0, b"one", 60) == b"one"
    await store.revoke_grant(r.grant_id)
    assert await store.rotate_refresh(r.grant_id, 0, b"one", 60) is None


@pytest_twisted.ensureDeferred
async def test_replace_sealed_is_compare_and_swap(store_and_clock) -> None:
    """The sealed credentials change only from the value the caller read; the rest stays."""
    store, _ = store_and_clock
    r = record()
    await store.create_grant(r)
    await store.rotate_refresh(r.grant_id, 0, b"succ", 60)
    new = b"\x00new-sealed" + secrets.token_bytes(20)
    assert await store.replace_sealed(r.grant_id, b"not-the-current-value", new) is False
    assert (await store.get_grant(r.grant_id)).sealed == r.sealed
    assert await store.replace_sealed(r.grant_id, r.sealed, new) is True
    got = await store.get_grant(r.grant_id)
    assert got.sealed == new
    assert (got.generation, got.expires, got.client_ref) == (1, r.expires, r.client_ref)
    # The old value no longer matches: a second writer that read it loses.
    assert await store.replace_sealed(r.grant_id, r.sealed, b"other") is False
    assert (await store.get_grant(r.grant_id)).sealed == new


@pytest_twisted.ensureDeferred
async def test_replace_sealed_concurrent_only_one_wins(store_and_clock) -> None:
    """Ten writers that all read the same value: exactly one replaces it."""
    store, _ = store_and_clock
    r = record()
    await store.create_grant(r)
    results = await gatherResults([store.replace_sealed(r.grant_id, r.sealed, b"w%d" % i)
                                   for i in range(10)])
    assert sorted(results) == [False] * 9 + [True]
    assert (await store.get_grant(r.grant_id)).sealed == b"w%d" % results.index(True)


@pytest_twisted.ensureDeferred
async def test_replace_sealed_never_revives(store_and_clock) -> None:
    """A revoked, expired or missing grant is not (re)created by a replace."""
    store, clock = store_and_clock
    assert await store.replace_sealed("missing", b"a", b"b") is False
    assert await store.get_grant("missing") is None
    gone = record()
    await store.create_grant(gone)
    await store.revoke_grant(gone.grant_id)
    assert await store.replace_sealed(gone.grant_id, gone.sealed, b"b") is False
    assert await store.get_grant(gone.grant_id) is None
    old = record(expires=NOW + 5)
    await store.create_grant(old)
    clock.advance(6)
    assert await store.replace_sealed(old.grant_id, old.sealed, b"b") is False
    assert await store.get_grant(old.grant_id) is None


@pytest_twisted.ensureDeferred
async def test_used_code_marker_outlives_the_code(store_and_clock) -> None:
    """
    A used code stays used minutes past its own expiry (a replica whose clock
    runs 5 minutes behind still finds it unexpired): replayed then, it is refused.
    """
    store, clock = store_and_clock
    r = record(expires=NOW + 100_000)
    await store.create_grant(r)
    assert await store.activate_grant(r.grant_id, "code-skew", NOW + 60, NOW + 100_000) is True
    clock.advance(60 + 5 * 60)
    if isinstance(store, SQLiteGrantStore):
        store.sweep()
    assert await store.activate_grant(r.grant_id, "code-skew", NOW + 60, NOW + 100_000) is False


@pytest_twisted.ensureDeferred
async def test_redis_used_code_marker_ttl(services) -> None:
    """In Redis the used-code marker's TTL is the code's remaining life plus the margin, not 1 s."""
    clock = Clock()
    clock.advance(NOW)
    prefix = f"test-{secrets.token_hex(4)}:"
    store = RedisGrantStore(services.redis_url, clock, prefix=prefix)
    store.connect()
    try:
        r = record(expires=NOW + 1000)
        await store.create_grant(r)
        assert await store.activate_grant(r.grant_id, "code-ttl", NOW + 60, NOW + 1000) is True
        ttl = await store._redis.execute_command("TTL", f"{prefix}code:code-ttl")
        assert 60 + 5 * 60 <= ttl <= 60 + USED_CODE_MARGIN + 1
    finally:
        await store.disconnect()


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
from mailmcp.store._sqlite import SQLiteGrantStore
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
    """With Redis unreachable, operations fail at the store's deadline instead of queueing forever."""
    from twisted.internet.defer import TimeoutError
    from twisted.internet.task import Clock

    from tests.harness import free_port

    clock = Clock()
    store = RedisGrantStore(f"redis://127.0.0.1:{free_port()}/0", clock, timeout=1.0)
    store.connect()
    try:
        pending = store.get_grant("x")
        clock.advance(0.9)
        assert not pending.called
        clock.advance(0.1)
        with pytest.raises(TimeoutError):
            await pending
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


# -- the refresh grace at the token endpoint, on each real store ------------------------------


async def settle(server: Server, d: Deferred[Any]) -> Any:
    """Pump the in-memory HTTP connection until C{d} fires (the store may wait on real I/O)."""
    out: list[Any] = []
    d.addBoth(out.append)
    for _ in range(2000):
        server.treq.flush()
        if out:
            break
        await deferLater(reactor, 0.002, lambda: None)
    assert out, "the request did not finish"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


async def post(server: Server, path: str, form: dict[str, str], **kw: Any) -> tuple[int, Any, bytes]:
    response = await settle(server, server.treq.post(BASE + path, data=form, allow_redirects=False, **kw))
    body = await settle(server, response.content())
    return response.code, response, body


async def login_tokens(server: Server) -> dict[str, Any]:
    """The real login over HTTP: the form, the CSRF cookie, the 303 with the code, POST /oauth/token."""
    verifier, challenge = pkce()
    params = server.authorize_params(code_challenge=challenge)
    response = await settle(server, server.treq.get(BASE + "/oauth/authorize", params=params,
                                                    allow_redirects=False))
    page = await settle(server, response.content())
    cookie = response.headers.getRawHeaders(b"set-cookie")[0].split(b";")[0].decode()
    csrf = re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()
    form = dict(params, email="alice@example.test", full_name="Alice Example",
                imap_username="alice@example.test", imap_password="alice-pw", csrf_token=csrf,
                use_same_credentials="1")
    code, response, body = await post(server, "/oauth/authorize", form, headers={"Cookie": cookie})
    assert code == 303, body
    location = response.headers.getRawHeaders(b"location")[0].decode()
    auth_code = parse_qs(urlsplit(location).query)["code"][0]
    code, _, body = await post(server, "/oauth/token", {
        "grant_type": "authorization_code", "code": auth_code, "code_verifier": verifier,
        "redirect_uri": REDIRECT, "client_id": server.client_id,
        "client_secret": server.client_secret, "resource": BASE + "/mcp"})
    assert code == 200, body
    tokens: dict[str, Any] = json.loads(body)
    return tokens


async def refresh(server: Server, refresh_token: str) -> tuple[int, dict[str, Any]]:
    code, _, body = await post(server, "/oauth/token", {
        "grant_type": "refresh_token", "refresh_token": refresh_token,
        "client_id": server.client_id, "client_secret": server.client_secret})
    return code, json.loads(body)


async def owner(server: Server, access_token: str) -> str | None:
    """The grant behind C{access_token}, or None when the token is dead."""
    try:
        account = await server.verifier.verify(access_token)
    except InvalidToken:
        return None
    return str(account.owner)


@pytest.fixture(params=["sqlite", "redis"])
def http(request, tmp_path: Path) -> Iterator[Server]:
    """The OAuth app over HTTP (StubTreq) on a real store, time from a `Clock`."""
    opened: list[Any] = []

    def factory(clock: Clock) -> Any:
        if request.param == "sqlite":
            store: Any = SQLiteGrantStore(tmp_path / "http.sqlite3", clock)
        else:
            services = request.getfixturevalue("services")
            store = RedisGrantStore(services.redis_url, clock, prefix=f"test-{secrets.token_hex(4)}:")
            store.connect()
        opened.append(store)
        return store

    yield make_server(tmp_path, store_factory=factory)
    for store in opened:
        if isinstance(store, SQLiteGrantStore):
            store.close()
        else:
            pytest_twisted.blockon(store.disconnect())


@pytest_twisted.ensureDeferred
async def test_refresh_grace_returns_the_same_successor(http: Server) -> None:
    """
    POST /oauth/token with the refresh token just rotated, 59 s later (a lost
    response): 200 with the SAME refresh token and a working access token for
    the same grant.  The successor then rotates normally, and the original
    (now two generations old) is reuse: the whole family is revoked.
    """
    tokens = await login_tokens(http)
    code, first = await refresh(http, tokens["refresh_token"])
    assert code == 200, first
    http.clock.advance(59)
    code, again = await refresh(http, tokens["refresh_token"])
    assert code == 200, again
    assert again["refresh_token"] == first["refresh_token"]
    assert again["access_token"] != first["access_token"]
    grant = await owner(http, first["access_token"])
    assert grant is not None and await owner(http, again["access_token"]) == grant
    code, second = await refresh(http, first["refresh_token"])
    assert code == 200 and second["refresh_token"] != first["refresh_token"]
    code, body = await refresh(http, tokens["refresh_token"])
    assert (code, body["error"]) == (400, "invalid_grant")
    assert await owner(http, second["access_token"]) is None
    assert (await refresh(http, second["refresh_token"]))[1]["error"] == "invalid_grant"


@pytest_twisted.ensureDeferred
async def test_refresh_reuse_after_grace_revokes_the_family(http: Server) -> None:
    """OT-12 at the grace boundary: the previous refresh token 60 s after rotation revokes the family."""
    assert REFRESH_GRACE == 60
    tokens = await login_tokens(http)
    code, first = await refresh(http, tokens["refresh_token"])
    assert code == 200
    http.clock.advance(60)
    code, body = await refresh(http, tokens["refresh_token"])
    assert (code, body["error"]) == (400, "invalid_grant")
    assert await owner(http, first["access_token"]) is None
    assert (await refresh(http, first["refresh_token"]))[1]["error"] == "invalid_grant"


@pytest_twisted.ensureDeferred
async def test_refresh_concurrent_requests_share_one_successor(http: Server) -> None:
    """Five refreshes of one token in flight together: all 200, one successor, all access tokens live."""
    tokens = await login_tokens(http)
    answers = await gatherResults([Deferred.fromCoroutine(refresh(http, tokens["refresh_token"]))
                                   for _ in range(5)])
    assert [code for code, _ in answers] == [200] * 5, answers
    assert len({body["refresh_token"] for _, body in answers}) == 1
    grants = {await owner(http, body["access_token"]) for _, body in answers}
    assert len(grants) == 1 and None not in grants
    code, body = await refresh(http, answers[0][1]["refresh_token"])
    assert code == 200, body


@pytest_twisted.ensureDeferred
async def test_sqlite_file_from_an_older_version_gains_the_rotation_columns(tmp_path: Path) -> None:
    """A grants table without the successor/rotated columns is upgraded in place; its grants rotate with the grace."""
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE grants (grant_id TEXT PRIMARY KEY, client_ref TEXT NOT NULL, sealed BLOB NOT NULL,
                             created INTEGER NOT NULL, expires INTEGER NOT NULL,
                             generation INTEGER NOT NULL DEFAULT 0);
        INSERT INTO grants VALUES ('old-grant', 'c1', x'00', 1, 1900000000, 3);
    """)
    db.close()
    clock = Clock()
    clock.advance(NOW)
    store = SQLiteGrantStore(path, clock)
    try:
        assert await store.rotate_refresh("old-grant", 3, b"next", 60) == b"next"
        assert await store.rotate_refresh("old-grant", 3, b"late", 60) == b"next"
        assert (await store.get_grant("old-grant")).generation == 4
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_rotation_winner_gets_its_successor_even_without_grace(store_and_clock) -> None:
    """With a grace of 0 the rotating call still gets its own successor; a replay gets nothing."""
    store, _ = store_and_clock
    r = record()
    await store.create_grant(r)
    assert await store.rotate_refresh(r.grant_id, 0, b"mine", 0) == b"mine"
    assert await store.rotate_refresh(r.grant_id, 0, b"again", 0) is None


@pytest_twisted.ensureDeferred
async def test_redis_tls_check_says_why(services) -> None:
    """
    The start-up TLS check of a rediss:// store: verified with the right CA
    (info), refused with another CA or a certificate for another name (one
    error line saying which), and an unreachable server is a warning, not a
    verdict on its certificate.
    """
    from twisted.logger import formatEvent, globalLogPublisher

    from tests.harness import free_port

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    cases = [
        (services.rediss_url(), services.ca_file, True, "info", "TLS certificate verified"),
        (services.rediss_url(), services.other_ca_file, False, "error", "not signed by a trusted CA"),
        (services.rediss_other_name_url(), services.ca_file, False, "error", "does not name this host"),
        (f"rediss://127.0.0.1:{free_port()}/0", services.ca_file, False, "warn", "not reachable at start"),
    ]
    try:
        for url, ca_file, ok, level, text in cases:
            events.clear()
            store = RedisGrantStore(url, reactor, ca_file=ca_file, reactor=reactor)
            assert await store.check_tls() is ok, url
            mine = [e for e in events if e.get("log_namespace") == "mailmcp.store._redis"]
            assert len(mine) == 1, mine
            assert mine[0]["log_level"].name == level
            assert text in formatEvent(mine[0]), formatEvent(mine[0])
    finally:
        globalLogPublisher.removeObserver(events.append)
