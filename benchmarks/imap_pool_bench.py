"""
Live benchmark of the IMAP layer against the harness's real Dovecot
(loopback, implicit TLS): the listing workload of docs/architecture.rst
(Targets), i.e. the 20 newest messages' ``UID FLAGS RFC822.SIZE ENVELOPE``
of one folder.

    .venv/bin/python benchmarks/imap_pool_bench.py [--messages 2000] [--rounds 200]

Rows (p50 / p90 of sequential calls):

- ``floor``: the FETCH alone on a logged-in connection with the folder open,
  response lines received but not parsed (our receive loop only);
- ``stock IMAP4Client``: the same FETCH through Twisted's parser;
- ``pool, warm``: `IMAPPool.run` with examine (cached: one NOOP) + fetch,
  fully parsed into `FetchedMessage` objects;
- ``connect-per-call``: the same operation with pooling disabled
  (connect + TLS + LOGIN + EXAMINE + FETCH + LOGOUT).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS  # noqa: E402
from twisted.mail import imap4  # noqa: E402

from mailmcp._account import MailAccount  # noqa: E402
from mailmcp._tls import MailTLS  # noqa: E402
from mailmcp.mail.imap import IMAPPool  # noqa: E402
from mailmcp.mail.imap._client import RawCommand  # noqa: E402
from mailmcp.oauth._clients import MailServer  # noqa: E402
from tests.harness import Services  # noqa: E402

ITEMS = "(UID FLAGS RFC822.SIZE ENVELOPE)"


def make_message(i: int) -> bytes:
    return (
        f"From: Sender {i} <sender{i}@example.test>\r\nTo: Alice <alice@example.test>, bob@example.test\r\n"
        f"Cc: =?utf-8?q?J=C3=BCrgen?= <j@example.test>\r\nSubject: =?utf-8?q?R=C3=A9union?= number {i}\r\n"
        f"Date: Tue, 01 Jul 2025 13:30:00 +0000\r\nMessage-ID: <{uuid.uuid4().hex}@example.test>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBody {i}\r\n"
    ).encode()


def stats(name: str, samples: list[float]) -> float:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1000
    p90 = ordered[int(len(ordered) * 0.9)] * 1000
    print(f"{name:<24} p50 {p50:8.3f} ms   p90 {p90:8.3f} ms")
    return p50


async def main(reactor: Any, messages: int, rounds: int) -> None:
    services = Services.start()
    try:
        email, password = f"bench{uuid.uuid4().hex[:6]}@example.test", "benchpw"
        services.add_user(email, password)
        await task.deferLater(reactor, 1.2, lambda: None)  # Dovecot re-reads users once a second
        account = MailAccount(
            owner="bench", email=email, full_name="",
            imap=MailServer("localhost", services.imaps_port, "tls"),
            imap_username=email, imap_password=password,
            smtp=MailServer("localhost", 465, "tls"), smtp_username=email, smtp_password=password,
        )  # fmt: skip
        tls = MailTLS(services.ca_file)
        pool = IMAPPool(reactor, tls)

        async def fill(session: Any) -> None:
            await session.create_mailbox("Bench")
            for i in range(messages):
                await session.append("Bench", make_message(i))

        started = time.perf_counter()
        await pool.run(account, fill, read_only=False)
        print(f"appended {messages} messages in {time.perf_counter() - started:.1f} s")

        async def listing(session: Any) -> Any:
            state = await session.examine("Bench")
            low = max(1, state.exists - 19)
            return await session.fetch(f"{low}:{state.exists}", ITEMS, uid=False)

        # floor: the FETCH alone, unparsed, on the pool's open connection
        async def floor(session: Any) -> list[float]:
            state = await session.examine("Bench")
            low = max(1, state.exists - 19)
            samples = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                response = await session.protocol.send(
                    RawCommand(b"FETCH", [b" %d:%d " % (low, state.exists), ITEMS.encode()])
                )
                samples.append(time.perf_counter() - t0)
                assert len(response.lines) == 20
            return samples

        floor_samples = await pool.run(account, floor, read_only=True)
        warm = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            result = await pool.run(account, listing, read_only=True)
            warm.append(time.perf_counter() - t0)
            assert len(result) == 20
        stock_samples = await stock(reactor, services, tls, email, password, rounds)
        per_call = IMAPPool(reactor, tls, connect_per_call=True)
        cold = []
        for _ in range(max(20, rounds // 5)):
            t0 = time.perf_counter()
            await per_call.run(account, listing, read_only=True)
            cold.append(time.perf_counter() - t0)
        print(f"folder of {messages} messages, {rounds} rounds")
        f = stats("floor (FETCH, unparsed)", floor_samples)
        s = stats("stock IMAP4Client FETCH", stock_samples)
        w = stats("pool, warm (NOOP+FETCH)", warm)
        c = stats("connect-per-call", cold)
        print(
            f"warm/floor {w / f:.2f}x   stock/floor {s / f:.2f}x   connect-per-call/warm {c / w:.1f}x"
        )
        await pool.stopService()
    finally:
        services.stop()


async def stock(
    reactor: Any, services: Services, tls: MailTLS, email: str, password: str, rounds: int
) -> list[float]:
    client = imap4.IMAP4Client(tls.options_for("localhost"))
    greeted: defer.Deferred[Any] = defer.Deferred()
    client.serverGreeting = greeted.callback  # type: ignore[method-assign]
    endpoint = wrapClientTLS(
        tls.options_for("localhost"), HostnameEndpoint(reactor, "localhost", services.imaps_port)
    )
    await connectProtocol(endpoint, client)
    await greeted
    await client.login(email.encode(), password.encode())
    state = await client.examine("Bench")
    exists = state["EXISTS"]
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = await client._fetch(
            f"{exists - 19}:{exists}", useUID=0, uid=1, flags=1, rfc822size=1, envelope=1
        )
        samples.append(time.perf_counter() - t0)
        assert len(result) == 20
    await client.logout()
    return samples


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    task.react(
        lambda reactor: defer.Deferred.fromCoroutine(main(reactor, args.messages, args.rounds))
    )
