"""
Unit tests for the local attachment store, its download resource (through
StubTreq, no sockets) and its sweeper (a TimerService on a Clock), with a
synchronous stand-in for the thread pool.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from mailmcp.attachments import (
    AttachmentDownloads,
    AttachmentRefused,
    AttachmentTooLarge,
    Limits,
    LocalAttachmentStore,
    Sweeper,
)
from mailmcp.attachments._service import sweeper_service
from mailmcp.interfaces import IAttachmentStore
from mailmcp.oauth._keyring import KeyRing, new_master_key

T = TypeVar("T")
BASE = "http://127.0.0.1:8080"
START = 1_800_000_000.0


class SyncPool:
    """Runs 'thread pool' work at once, on the calling thread, and records where."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        self.calls.append(getattr(f, "__name__", repr(f)))
        try:
            result = f(*a, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class ClockReactor(Clock):
    """A Clock whose callFromThread runs at once (what deferToThreadPool needs)."""

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        f(*a, **kw)


def result_of(coro: Coroutine[Any, Any, T]) -> T:
    d = Deferred.fromCoroutine(coro)
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "did not complete synchronously"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]  # type: ignore[no-any-return]


@pytest.fixture
def env(tmp_path: Path) -> tuple[LocalAttachmentStore, ClockReactor, SyncPool]:
    reactor = ClockReactor()
    reactor.advance(START)
    pool = SyncPool()
    store = LocalAttachmentStore(
        tmp_path / "attachments", KeyRing([new_master_key()]), reactor, pool, BASE,  # type: ignore[arg-type]
        link_lifetime=600, limits=Limits(max_attachment_bytes=1000, max_message_bytes=1500),
    )
    return store, reactor, pool


def test_provides_interface(env: Any) -> None:
    """The local store provides IAttachmentStore."""
    assert verifyObject(IAttachmentStore, env[0])


def test_put_is_content_addressed_and_idempotent(env: Any, tmp_path: Path) -> None:
    """Storing the same bytes twice writes one file; the key has no filename in it."""
    store, _, pool = env
    first = result_of(store.put("grant-a", b"\x00\xffdata", "application/pdf"))
    second = result_of(store.put("grant-a", b"\x00\xffdata", "text/html"))
    assert first.created and not second.created and store.puts == 1
    assert first.key == second.key
    files = [p for p in (tmp_path / "attachments").rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].name == first.sha256
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"
    assert pool.calls == ["_write", "_write"]


def test_same_content_other_owner_is_another_object(env: Any) -> None:
    """Two owners storing the same bytes get separate objects."""
    store = env[0]
    a = result_of(store.put("grant-a", b"same", "text/plain"))
    b = result_of(store.put("grant-b", b"same", "text/plain"))
    assert a.key != b.key and a.sha256 == b.sha256


def test_put_over_cap_refused_before_any_io(env: Any) -> None:
    """An attachment over the cap is refused without touching the pool."""
    store, _, pool = env
    with pytest.raises(AttachmentTooLarge):
        result_of(store.put("grant-a", b"x" * 1001, "text/plain"))
    assert pool.calls == []


def test_resolve_round_trip_and_owner_binding(env: Any) -> None:
    """resolve returns the bytes for the owner, and refuses anyone else."""
    store = env[0]
    obj = result_of(store.put("grant-a", b"payload", "application/pdf"))
    url = store.link("grant-a", obj, "../r.pdf", "application/pdf")
    assert result_of(store.resolve("grant-a", url)) == (b"payload", "r.pdf", "application/pdf")
    with pytest.raises(AttachmentRefused):
        result_of(store.resolve("grant-b", url))


def test_link_lifetime_is_capped(env: Any) -> None:
    """Asking for a week gets the configured maximum (here 600 s)."""
    store, reactor, _ = env
    obj = result_of(store.put("grant-a", b"payload", "text/plain"))
    url = store.link("grant-a", obj, "a.txt", "text/plain", lifetime=7 * 86400)
    reactor.advance(601)
    with pytest.raises(AttachmentRefused):
        store.check("grant-a", url)


def download(store: LocalAttachmentStore, url: str, method: str = "GET") -> tuple[Any, bytes]:
    treq = StubTreq(AttachmentDownloads(store).app.resource())
    d = treq.request(method, url)
    treq.flush()
    box: list[Any] = []
    d.addBoth(box.append)
    response = box[0]
    body_box: list[Any] = []
    treq.content(response).addBoth(body_box.append)
    treq.flush()
    return response, body_box[0]


def test_download_headers_and_bytes(env: Any) -> None:
    """A download streams the exact bytes with safe, non-cacheable attachment headers."""
    store = env[0]
    data = bytes(range(256)) * 3
    obj = result_of(store.put("grant-a", data, "text/html"))
    url = store.link("grant-a", obj, "evil<script>.html", "text/html")
    response, body = download(store, url)
    assert response.code == 200
    assert body == data
    h = response.headers
    assert h.getRawHeaders("content-type") == ["application/octet-stream"]
    assert h.getRawHeaders("x-content-type-options") == ["nosniff"]
    assert "no-store" in h.getRawHeaders("cache-control")[0]
    disposition = h.getRawHeaders("content-disposition")[0]
    assert disposition.startswith("attachment;")
    assert unquote(disposition.split("''", 1)[1]) == "evil_script_.html"


def test_download_head(env: Any) -> None:
    """HEAD answers the headers without a body."""
    store = env[0]
    obj = result_of(store.put("grant-a", b"abc", "image/png"))
    response, body = download(store, store.link("grant-a", obj, "a.png", "image/png"), "HEAD")
    assert response.code == 200 and body == b""
    assert response.headers.getRawHeaders("content-type") == ["image/png"]


def test_download_refusals(env: Any) -> None:
    """Tampered links are 404, expired links and swept objects 410."""
    store, reactor, _ = env
    obj = result_of(store.put("grant-a", b"abc", "image/png"))
    url = store.link("grant-a", obj, "a.png", "image/png", lifetime=60)
    tampered = url[:-2] + ("BB" if url.endswith("AA") else "AA")  # always a different signature
    assert download(store, tampered)[0].code == 404
    assert download(store, url.split("?")[0])[0].code == 404
    assert download(store, BASE + "/attachments/nothing?sig=x")[0].code == 404
    reactor.advance(61)
    assert download(store, url)[0].code == 410
    fresh = store.link("grant-a", obj, "a.png", "image/png")
    (store.root / obj.key).unlink()
    assert download(store, fresh)[0].code == 410


def test_sweeper_removes_only_expired_objects(env: Any) -> None:
    """The timer removes objects older than the longest link lifetime plus grace, and no others."""
    store, reactor, pool = env
    old = result_of(store.put("grant-a", b"old", "text/plain"))
    reactor.advance(store.retention - 10)
    new = result_of(store.put("grant-b", b"new", "text/plain"))
    sweeper = Sweeper(store, reactor, pool)  # type: ignore[arg-type]
    service = sweeper_service(sweeper, interval=60, clock=reactor)
    service.startService()  # runs once at start
    assert sweeper.runs == 1 and (store.root / old.key).exists()
    reactor.advance(60)
    assert sweeper.runs == 2
    assert not (store.root / old.key).exists() and not (store.root / old.key).parent.exists()
    assert (store.root / new.key).exists()
    service.stopService()


def test_reading_again_keeps_object_alive(env: Any) -> None:
    """Storing an object again refreshes it, so the sweeper keeps it while links may live."""
    store, reactor, pool = env
    obj = result_of(store.put("grant-a", b"kept", "text/plain"))
    reactor.advance(store.retention - 5)
    result_of(store.put("grant-a", b"kept", "text/plain"))
    reactor.advance(10)
    assert store.sweep(reactor.seconds()) == 0
    assert (store.root / obj.key).exists()


def test_sweeper_logs_errors_and_keeps_running(env: Any) -> None:
    """A failing sweep is logged and the timer keeps firing."""
    store, reactor, pool = env
    calls: list[float] = []

    def broken(now: float) -> int:
        calls.append(now)
        raise OSError(5, "disk on fire")

    store.sweep = broken  # type: ignore[method-assign]
    service = sweeper_service(Sweeper(store, reactor, pool), interval=60, clock=reactor)  # type: ignore[arg-type]
    with capturedLogs() as events:
        service.startService()
        reactor.advance(60)
        reactor.advance(60)
    assert len(calls) == 3
    assert service.running and service._loop.running
    assert [e for e in events if e["log_level"] == LogLevel.critical]
    service.stopService()


def test_disk_work_runs_in_the_pool(env: Any) -> None:
    """put, resolve and sweep run their disk work through the pool, not inline."""
    store, _, pool = env
    obj = result_of(store.put("grant-a", b"z", "text/plain"))
    result_of(store.resolve("grant-a", store.link("grant-a", obj, "z", "text/plain")))
    assert pool.calls == ["_write", "_read"]


def test_real_pool_put_runs_off_the_calling_thread(tmp_path: Path) -> None:
    """With a real ThreadPool the file is written by a worker thread."""
    from twisted.python.threadpool import ThreadPool

    threads_seen: list[str] = []
    reactor = ClockReactor()
    pool = ThreadPool(1, 1, name="att-test")
    store = LocalAttachmentStore(tmp_path, KeyRing([new_master_key()]), reactor, pool, BASE)
    original = store._write

    def spy(*a: Any) -> Any:
        threads_seen.append(threading.current_thread().name)
        return original(*a)

    store._write = spy  # type: ignore[method-assign]
    pool.start()
    try:
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            d = Deferred.fromCoroutine(store.put("o", b"bytes", "text/plain"))
            d.addBoth(lambda r: (box.append(r), done.set()))

        run()
        assert done.wait(10)
    finally:
        pool.stop()
    assert threads_seen and threads_seen[0] != threading.current_thread().name
    assert os.path.exists(tmp_path / box[0].key)


# -- the same contract, run against the local store and the in-memory fake ----


@pytest.fixture(params=["local", "memory"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    from mailmcp.testing import MemoryAttachmentStore

    reactor = ClockReactor()
    reactor.advance(START)
    limits = Limits(max_attachment_bytes=1000, max_message_bytes=1500)
    if request.param == "memory":
        return MemoryAttachmentStore(reactor, link_lifetime=600, limits=limits), reactor
    return LocalAttachmentStore(tmp_path, KeyRing([new_master_key()]), reactor, SyncPool(), BASE,  # type: ignore[arg-type]
                                link_lifetime=600, limits=limits), reactor


def test_contract_round_trip_dedup_owner_expiry(any_store: Any) -> None:
    """Both implementations: idempotent put, owner-bound resolve, capped and expiring links."""
    store, reactor = any_store
    assert verifyObject(IAttachmentStore, store)
    a = result_of(store.put("o1", b"bytes", "text/plain"))
    b = result_of(store.put("o1", b"bytes", "text/plain"))
    assert a.created and not b.created and store.puts == 1
    url = store.link("o1", a, "a.txt", "text/plain", lifetime=10**9)
    assert result_of(store.resolve("o1", url)) == (b"bytes", "a.txt", "text/plain")
    with pytest.raises(AttachmentRefused):
        store.check("o2", url)
    with pytest.raises(AttachmentRefused):
        store.check("o1", "http://169.254.169.254/latest/meta-data/")
    with pytest.raises(AttachmentTooLarge):
        result_of(store.put("o1", b"x" * 1001, "text/plain"))
    reactor.advance(601)
    with pytest.raises(AttachmentRefused):
        store.check("o1", url)
