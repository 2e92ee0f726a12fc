"""
``python -m benchmarks run [--quick] [--json FILE] [--plot FILE] [--keep]``

A full run writes ``benchmarks/results/report.json`` and
``benchmarks/results/latency-vs-concurrency.png`` unless told otherwise;
``--quick`` writes only what ``--json``/``--plot`` name.  Must run as root on
Debian 12 with Dovecot and Postfix installed (``bash tests/services.sh install``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="set up Dovecot and mailmcp, measure, report")
    run.add_argument("--quick", action="store_true", help="small folders and few iterations (< 3 min, for CI)")
    run.add_argument("--json", type=Path, help="write the JSON report here")
    run.add_argument("--plot", type=Path, help="write the latency-vs-concurrency PNG here")
    run.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, mail store)")
    run.add_argument("--profile", type=Path, metavar="FILE",
                     help="also sample the daemon with py-spy under warm load; raw stacks go to FILE "
                          "and a summary into the report's 'profile'")
    table = sub.add_parser("table", help="print the summary table of a JSON report (RST)")
    table.add_argument("report", type=Path)
    args = parser.parse_args(argv)

    if args.command == "table":
        from benchmarks import _report

        document = json.loads(args.report.read_text())
        print(_report.rst_table(document))
        print()
        print(_report.targets_text(document))
        return 0

    from benchmarks import _report
    from benchmarks._run import run as run_bench

    report = asyncio.run(run_bench(quick=args.quick, keep=args.keep, profile=args.profile))
    json_path = args.json or (None if args.quick else RESULTS / "report.json")
    plot_path = args.plot or (None if args.quick else RESULTS / "latency-vs-concurrency.png")
    text = json.dumps(report, indent=2, sort_keys=False)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text + "\n")
    if plot_path is not None:
        _report.plot(report, plot_path)
    print(_report.rst_table(report))
    print("targets (docs/architecture.rst, Targets):")
    print(_report.targets_text(report))
    if report.get("errors"):
        print("errors:", json.dumps(report["errors"], indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
