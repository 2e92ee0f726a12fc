"""
Before/after on one machine: the same warm call against two daemons, one
running this tree's mailmcp and one running another checkout's (e.g. a
``git worktree`` of the commit before a change), in alternating blocks
(ABBA, so drift and the order of the two hit both alike), with the
daemons' CPU per call, and the median of the blocks' ratios with their
range (which says how far one block can be off: run 40 blocks for a 5 %
effect).

Why: on a shared 2-core machine latency moves 2x within an hour, and two
full benchmark runs minutes apart cannot tell a 10 % change from the
weather.  Measured side by side in one run, the CPU per call can.  Both
daemons share the services, the state directory and the tokens (the
daemons get the ``--base-url`` of a third that served the logins, as the
``cold`` item does, so neither holds more state than the other).

    git worktree add --detach /tmp/before HEAD~3
    .venv/bin/python -m benchmarks.compare_trees /tmp/before
    .venv/bin/python -m benchmarks.compare_trees /tmp/before --folder Large --fresh

``--fresh`` lists pages 2, 3, ... (each daemon its own, never one listed
before: every line is read for the first time) instead of page 1 again and
again.  ``--redis`` puts all three daemons on the run's Redis store, as the
processes of ``scale_out`` are (the default is the SQLite file).
``--concurrency N`` keeps N calls in flight (closed loop over the 8
throughput accounts, ``--seconds`` per block) instead of one at a time and
also prints calls/s: what a change does to a loaded daemon, where one
reactor turn serves many calls.  Quick sizes (a 2,000-message INBOX, a
10,000-message ``Large``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import _procs, _run
from benchmarks._clients import McpClient
from benchmarks._procs import cpu_seconds
from benchmarks._run import QUICK, Bench, closed_loop, listing, log, timed


async def compare(other_tree: Path, folder: str, fresh: bool, blocks: int, calls: int,
                  redis: bool = False, concurrency: int = 0, seconds: float = 3.0) -> None:
    from tests.harness import free_port

    workdir = Path(tempfile.mkdtemp(prefix="mailmcp-compare-"))
    workdir.chmod(0o755)
    bench = Bench(QUICK, True, workdir)
    bench.report["errors"] = {}
    daemons: list[_procs.Daemon] = []
    try:
        bench.start_services()
        await asyncio.to_thread(bench.seed)
        await bench.first_access()
        store = ("--store", bench.services.redis_url) if redis else ()
        bench.start_daemon(store)
        await bench.login_all()
        assert bench.daemon is not None and bench.state_dir is not None
        # Neither daemon is the one that served the logins: that one holds
        # every account's token and pool, so its garbage collector has more
        # to walk (~5 % more CPU per call in a run of a tree against itself).
        login_daemon = bench.daemon
        own_env = _procs._env_with_root
        base = ("--base-url", login_daemon.base_url, *store)

        def other_env() -> dict[str, str]:
            env = own_env()
            env["PYTHONPATH"] = str(other_tree) + os.pathsep + env["PYTHONPATH"]
            return env

        ours = _procs.Daemon(workdir, free_port(), bench.state_dir, bench.services.ca_file,
                             extra=base, name="ours")
        daemons.append(ours)
        _procs._env_with_root = other_env
        try:
            other = _procs.Daemon(workdir, free_port(), bench.state_dir, bench.services.ca_file,
                                  extra=base, name="other")
            daemons.append(other)
        finally:
            _procs._env_with_root = own_env
        token = bench.tokens[_run.BENCH_USER]
        sides = [("this tree", McpClient(ours.base_url, token), ours.pid, iter(range(2, 10**6, 2))),
                 (str(other_tree), McpClient(other.base_url, token), other.pid, iter(range(3, 10**6, 2)))]
        for _name, client, _pid, _pages in sides:
            for _ in range(200):
                await listing(client, folder)
        if concurrency:
            await _loaded(sides, [ours, other], bench, folder, blocks, concurrency, seconds,
                          ", Redis store" if redis else "")
            return
        results: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name, *_ in sides}
        per_block: dict[str, list[float]] = {name: [] for name, *_ in sides}
        for block in range(blocks):
            for name, client, pid, pages in (sides if block % 2 == 0 else sides[::-1]):
                latencies, used = results[name]
                before = cpu_seconds(pid) or 0.0
                for _ in range(calls):
                    page = next(pages) if fresh else 1
                    latencies.append(await timed(lambda c=client, p=page: listing(c, folder, page=p)))
                spent = (cpu_seconds(pid) or 0.0) - before
                results[name] = (latencies, used + spent)
                per_block[name].append(spent / calls)
        what = f"pages 2, 3, ... of {folder}" if fresh else f"page 1 of {folder} again and again"
        what += ", Redis store" if redis else ""
        print(f"list_mail_messages(per_page=20), {what}, {blocks} blocks of {calls} calls each (ABBA):")
        for name, (latencies, used) in results.items():
            print(f"  {name:30s} p50 {statistics.median(latencies) * 1000:6.3f} ms   "
                  f"daemon CPU {used / len(latencies) * 1000:6.3f} ms/call")
        mine, theirs = per_block.values()
        ratios = sorted(a / b for a, b in zip(mine, theirs, strict=True) if b > 0)
        if ratios:
            print(f"  CPU per call, this tree / other, block by block: median {statistics.median(ratios):.3f}"
                  f" (lowest {ratios[0]:.3f}, highest {ratios[-1]:.3f})")
    finally:
        for daemon in daemons:
            daemon.stop()
        bench.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def _loaded(sides: list[Any], daemons: list[_procs.Daemon], bench: Bench, folder: str,
                  blocks: int, concurrency: int, seconds: float, store: str = "") -> None:
    """`compare` with C{concurrency} calls in flight: calls/s and CPU per call, block by block."""
    tokens = [bench.tokens[bench.tp_user(i)] for i in range(_run.THROUGHPUT_ACCOUNTS)]
    clients = {name: [McpClient(daemon.base_url, tokens[i % len(tokens)]) for i in range(concurrency)]
               for (name, *_), daemon in zip(sides, daemons, strict=True)}
    for group in clients.values():  # every account's pool warm on both daemons
        await closed_loop(group, lambda c: listing(c, folder), 0.5)
    done: dict[str, list[tuple[int, float, float]]] = {name: [] for name, *_ in sides}
    for block in range(blocks):
        for name, _client, pid, _pages in (sides if block % 2 == 0 else sides[::-1]):
            before = cpu_seconds(pid) or 0.0
            r = await closed_loop(clients[name], lambda c: listing(c, folder), seconds, warmup=False)
            done[name].append((len(r["latencies"]), r["seconds"], (cpu_seconds(pid) or 0.0) - before))
    print(f"list_mail_messages(per_page=20), page 1 of {folder}{store}, {concurrency} calls in flight over "
          f"{_run.THROUGHPUT_ACCOUNTS} accounts, {blocks} blocks of {seconds:g} s (ABBA):")
    for name, rows in done.items():
        calls = sum(n for n, _, _ in rows)
        print(f"  {name:30s} {calls / sum(t for _, t, _ in rows):7.1f} calls/s   "
              f"daemon CPU {sum(c for _, _, c in rows) / max(calls, 1) * 1000:6.3f} ms/call")
    mine, theirs = done.values()
    rates = sorted((a[0] / a[1]) / (b[0] / b[1]) for a, b in zip(mine, theirs, strict=True) if b[0])
    if rates:
        print(f"  calls/s, this tree / other, block by block: median {statistics.median(rates):.3f}"
              f" (lowest {rates[0]:.3f}, highest {rates[-1]:.3f})")
    for group in clients.values():
        for c in group:
            c.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_trees", description=__doc__.split("\n\n")[0])
    parser.add_argument("other_tree", type=Path, help="a checkout of mailmcp (its top folder) to compare with")
    parser.add_argument("--folder", default="INBOX", help="INBOX (2,000 messages) or Large (10,000)")
    parser.add_argument("--fresh", action="store_true", help="pages never listed before instead of page 1")
    parser.add_argument("--blocks", type=int, default=0, help="blocks per side (default 8; 4 with --fresh)")
    parser.add_argument("--calls", type=int, default=0, help="calls per block (default 250; 60 with --fresh)")
    parser.add_argument("--redis", action="store_true", help="every daemon on the Redis store (as in scale_out)")
    parser.add_argument("--concurrency", type=int, default=0, help="calls in flight (closed loop; default 1 at a time)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per block with --concurrency")
    args = parser.parse_args(argv)
    if not (args.other_tree / "mailmcp" / "__init__.py").is_file():
        parser.error(f"{args.other_tree} is not a mailmcp checkout")
    calls = args.calls or (60 if args.fresh else 250)
    blocks = args.blocks or (4 if args.fresh else 8)
    pages = (10_000 if args.folder == "Large" else 2_000) // 20
    if args.fresh and blocks * calls > pages // 2 - 1:
        parser.error(f"--fresh needs blocks x calls <= {pages // 2 - 1} on {args.folder}")
    log(f"comparing this tree with {args.other_tree}")
    if args.concurrency and args.fresh:
        parser.error("--concurrency lists page 1 again and again; leave out --fresh")
    asyncio.run(compare(args.other_tree.resolve(), args.folder, args.fresh, blocks, calls, args.redis,
                        args.concurrency, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
