"""
Fault soak (docs/threat-model.rst, Reliability goals, "Fault isolation"): 1,000 injected IMAP failures
in a row through the real `IMAPPool`, in-process, against loopback: a port
with nothing listening, a scripted server that hangs up right after its
greeting, and one that logs in and then announces a giant literal.
Afterwards the process's open file descriptors are back to the baseline
(±5), its resident memory within 10 % of it, no connection is left in the
pool, and a normal read on the real Dovecot succeeds.

Bounded: 1,000 failures in batches of 20 concurrent calls (20 accounts),
a few seconds on loopback.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.logger import globalLogBeginner, globalLogPublisher

from mailmcp._tls import MailTLS
from mailmcp.mail._mailbox_api import IMAPError
from mailmcp.mail.imap import IMAPPool
from tests.harness import Services, free_port
from tests.hostile.imap_accounts import dovecot_account, read_message, scripted_account
from tests.hostile.scripted_imap import listen

pytestmark = pytest.mark.integration

FAILURES = 1000
BATCH = 20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest_twisted.ensureDeferred
async def test_thousand_failures_leave_no_fd_or_memory_behind(services: Services) -> None:
    """
    1,000 failed IMAP calls in a row (connection refused / closed after the
    greeting / giant literal after login, in turn) each raise IMAPError;
    afterwards fds are within 5 and RSS within 10 % of the baseline taken
    after a warm-up, the pool holds no connection, and a normal call works.
    """
    close_factory, close_port = await listen(reactor, "close")
    giant_factory, giant_port = await listen(reactor, "giant-literal")
    dead_port = free_port()  # nothing listens here
    ports = [dead_port, close_port.getHost().port, giant_port.getHost().port]
    pool = IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=5.0, wait_timeout=10)
    pool.startService()
    errors: dict[str, int] = {}
    failures = 0

    async def one(index: int) -> None:
        nonlocal failures
        account = scripted_account(ports[index % 3], user=f"soak{index % BATCH}@example.test")
        try:
            await pool.run(account, read_message, read_only=False)
        except IMAPError as e:
            failures += 1
            key = e.message.split(" (")[0][:60]
            errors[key] = errors.get(key, 0) + 1
        else:  # pragma: no cover - the assertion below reports it
            raise AssertionError("a scripted failure succeeded")

    async def run(count: int, start: int) -> None:
        deadline = time.monotonic() + 120
        for base in range(start, start + count, BATCH):
            assert time.monotonic() < deadline, "soak took too long"
            await gatherResults([_as_deferred(one(i)) for i in range(base, min(base + BATCH, start + count))])

    async def quiet() -> None:
        deadline = time.monotonic() + 5
        while (pool.open_connections or close_factory.open or giant_factory.open) and time.monotonic() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        await deferLater(reactor, 0.2, lambda: None)
        gc.collect()

    # A process that never began logging (pytest; twistd does begin) keeps
    # its first 65,536 log events in Twisted's start-up buffer: memory that
    # is the test runner's, not the pool's.  Detach that buffer meanwhile.
    buffer = getattr(globalLogBeginner, "_temporaryObserver", None)
    if buffer is not None:
        globalLogPublisher.removeObserver(buffer)
    for factory in (close_factory, giant_factory):
        factory.record = False
    try:
        await run(100, 0)  # warm-up: imports, TLS contexts, allocator arenas
        await quiet()
        fds, rss = open_fds(), rss_kib()
        failures = 0
        errors.clear()
        started = time.monotonic()
        await run(FAILURES, 100)
        print(f"soak: {FAILURES} failures in {time.monotonic() - started:.1f} s; fds {fds}->{open_fds()}, "
              f"rss {rss}->{rss_kib()} KiB")
        await quiet()
        assert failures == FAILURES, errors
        assert sorted(errors) == sorted([
            f"could not connect to the mail server 127.0.0.1:{dead_port}",
            "connection to the mail server lost",
            "the mail server announced a 99999999999-byte literal, over t",
        ]), errors
        assert pool.open_connections == 0
        assert open_fds() <= fds + 5, (fds, open_fds())
        assert rss_kib() <= rss * 1.10, (rss, rss_kib())
        state = await pool.run(dovecot_account(services), lambda s: s.examine("INBOX"), read_only=True)
        assert state.uidvalidity > 0
    finally:
        if buffer is not None:
            globalLogPublisher.addObserver(buffer)
        await pool.stopService()
        await close_port.stopListening()
        giant_factory.close_all()
        await giant_port.stopListening()


def _as_deferred(coro: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coro)
