"""
Microbenchmark: the FETCH response path of `mailmcp.mail.imap` against Twisted's
stock ``IMAP4Client`` on the listing workload (a 20-message
``UID FETCH (UID FLAGS RFC822.SIZE ENVELOPE)`` response).

Both clients run on a ``StringTransport`` (no sockets): the scripted server
bytes are fed to ``dataReceived`` in 16 KiB chunks, as the reactor would,
and the time is measured from the command to the parsed result.

    .venv/bin/python benchmarks/imap_parser_bench.py [--rounds N]

Measured parts:

- ``stock``: ``IMAP4Client._fetch(..., envelope, flags, rfc822size)``
  (line receiver + ``parseNestedParens`` + ``_parseFetchPairs``);
- ``ours``: `Session.fetch` on `IMAPClientProtocol` (our receive loop +
  `parse_fetch`, including RFC 2047 decoding into `Envelope` objects,
  which the stock client does not even do);
- ``ours, parser only``: `parse_fetch` over the 20 raw lines (the memo of
  decoded names/address lists warm, as on a repeat listing);
- ``ours, parse_fetch, cold``: the same with that memo emptied each round;
- the listing's own line (``INTERNALDATE`` and ``BODYSTRUCTURE`` too, as
  ``list_mail_messages`` asks): CPU time per message of `parse_fetch`
  through the single-pass scanner and through the route it replaced (the
  ENVELOPE regex, then the general parser and ``convert_bodystructure``),
  side by side in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.mail import imap4  # noqa: E402

from mailmcp.mail.imap import _parser  # noqa: E402
from mailmcp.mail.imap._client import IMAPClientProtocol  # noqa: E402
from mailmcp.mail.imap._parser import parse_fetch  # noqa: E402
from mailmcp.mail.imap._session import Session  # noqa: E402


def fetch_response(count: int = 20, first_uid: int = 9981) -> list[bytes]:
    """The untagged lines a Dovecot-like server sends for the listing FETCH."""
    lines = []
    for i in range(count):
        uid = first_uid + i
        subject = (
            b'"=?utf-8?q?R=C3=A9union_du_lundi_' + str(i).encode() + b'?= - agenda and notes"'
            if i % 2
            else b'"Quarterly report ' + str(i).encode() + b' (draft v2) [internal]"'
        )
        envelope = (
            b'("Tue, 01 Jul 2025 13:30:'
            + b"%02d" % (i % 60)
            + b' +0000" '
            + subject
            + b' (("Alice Example" NIL "alice" "example.test")) (("Alice Example" NIL "alice" "example.test"))'
            b' (("Alice Example" NIL "alice" "example.test"))'
            b' (("Bob" NIL "bob" "example.test")("=?iso-8859-1?q?J=FCrgen_M=FCller?=" NIL "juergen" "example.test"))'
            b' (("Carol" NIL "carol" "example.test")) NIL'
            b' "<prev-' + str(i).encode() + b'@example.test>"'
            b' "<msg-' + str(uid).encode() + b'.1751376600@mail.example.test>")'
        )
        line = (
            b"* " + str(i + 1).encode() + b" FETCH (UID " + str(uid).encode()
            + b" FLAGS (\\Seen $Label1) RFC822.SIZE " + str(4000 + i * 37).encode()
            + b" ENVELOPE " + envelope + b")"
        )  # fmt: skip
        lines.append(line)
    return lines


def feed(protocol: Any, data: bytes) -> None:
    for start in range(0, len(data), 16384):
        protocol.dataReceived(data[start : start + 16384])


def bench_stock(payload: bytes, rounds: int) -> list[float]:
    client = imap4.IMAP4Client()
    client.makeConnection(StringTransport())
    client.dataReceived(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
    client.state = "auth"
    timings = []
    for _ in range(rounds):
        results: list[Any] = []
        start = time.perf_counter()
        d = client._fetch("9981:10000", useUID=1, uid=1, flags=1, rfc822size=1, envelope=1)
        d.addCallback(results.append)
        tag = b"%04X" % (client.tagID - 1)
        feed(client, payload + tag + b" OK Fetch completed.\r\n")
        timings.append(time.perf_counter() - start)
        assert len(results[0]) == 20, results
    return timings


def bench_ours(payload: bytes, rounds: int) -> list[float]:
    protocol = IMAPClientProtocol(Clock())
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
    session = Session(protocol)
    session._name = "INBOX"  # pretend the folder is open (no server round trip)
    session._encoded = b"INBOX"
    timings = []
    for _ in range(rounds):
        results: list[Any] = []
        start = time.perf_counter()
        coroutine = session.fetch("9981:10000", "(UID FLAGS RFC822.SIZE ENVELOPE)")
        d = _start(coroutine)
        d.addCallback(results.append)
        tag = b"%04X" % (protocol.tagID - 1)
        feed(protocol, payload + tag + b" OK Fetch completed.\r\n")
        timings.append(time.perf_counter() - start)
        assert len(results[0]) == 20 and results[0][1].envelope.subject.startswith("Réunion")
    return timings


def _start(coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


def bench_parser(lines: list[bytes], rounds: int, cold: bool = False) -> list[float]:
    raw = [(line[2:],) for line in lines]
    timings = []
    for _ in range(rounds):
        if cold:  # forget the memoised header texts and address lists
            _parser._DECODED.clear()
            _parser._ADDRESS_LISTS.clear()
        start = time.perf_counter()
        parsed = [parse_fetch(r) for r in raw]
        timings.append(time.perf_counter() - start)
        assert len(parsed) == 20
    return timings


def listing_lines(lines: list[bytes]) -> list[bytes]:
    """The lines of `fetch_response` as the listing FETCH returns them."""
    out = []
    for i, line in enumerate(lines):
        body = (
            b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 120 5 NIL NIL NIL NIL)'
            b'("text" "html" ("charset" "utf-8") NIL NIL "quoted-printable" 340 9 NIL NIL NIL NIL)'
            b' "alternative" ("boundary" "b1_%d") NIL NIL NIL)' % i
            if i % 5 == 0
            else b'("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 420 12 NIL NIL NIL NIL)'
        )
        line = line.replace(b" ENVELOPE ", b' INTERNALDATE "05-Dec-2026 10:00:%02d +0000" ENVELOPE ' % i)
        out.append(line[:-1] + b" BODYSTRUCTURE " + body + b")")
    return out


def cpu_per_message(lines: list[bytes], rounds: int, scanner: bool) -> float:
    """CPU microseconds per message of `parse_fetch` (process time: load on the machine barely moves it)."""
    raw = [(line[2:],) for line in lines]
    saved = _parser._scan_fetch
    if not scanner:
        _parser._scan_fetch = lambda *_: None  # type: ignore[assignment]
    try:
        assert all(parse_fetch(r) is not None for r in raw)
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            for _ in range(rounds):
                for r in raw:
                    parse_fetch(r)
            best = min(best, time.process_time() - start)
    finally:
        _parser._scan_fetch = saved
    return best / rounds / len(raw) * 1e6


def report(name: str, timings: list[float]) -> float:
    p50 = statistics.median(timings) * 1000
    p90 = sorted(timings)[int(len(timings) * 0.9)] * 1000
    print(f"{name:<28} p50 {p50:7.3f} ms   p90 {p90:7.3f} ms")
    return p50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    lines = fetch_response()
    payload = b"".join(line + b"\r\n" for line in lines)
    print(f"20-message ENVELOPE FETCH response: {len(payload)} bytes, {args.rounds} rounds")
    bench_stock(payload, 20)
    bench_ours(payload, 20)  # warm up
    stock = report("stock IMAP4Client", bench_stock(payload, args.rounds))
    ours = report("ours (Session.fetch)", bench_ours(payload, args.rounds))
    only = report("ours, parse_fetch only", bench_parser(lines, args.rounds))
    cold = report("ours, parse_fetch, cold", bench_parser(lines, args.rounds, cold=True))
    print(
        f"speed-up: {stock / ours:.1f}x end to end, {stock / only:.1f}x parser only, "
        f"{stock / cold:.1f}x parser with cold memo"
    )
    listing = listing_lines(lines)
    before = cpu_per_message(listing, args.rounds // 5 or 1, scanner=False)
    after = cpu_per_message(listing, args.rounds // 5 or 1, scanner=True)
    print(
        f"listing line (+INTERNALDATE, BODYSTRUCTURE), CPU per message: previous route {before:.1f} us, "
        f"single-pass scanner {after:.1f} us ({before / after:.2f}x)"
    )


if __name__ == "__main__":
    main()
