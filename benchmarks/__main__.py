"""Runs the benchmarks and prints one table: ``python -m benchmarks [--quick] [KEY ...]``."""

from __future__ import annotations

import argparse
import importlib
import sys

from .common import Result

# Key -> module; each module's run(quick) returns a Result or a list of them.
BENCHMARKS = {
    "P1": "benchmarks.p1_create_task",
    "P2": "benchmarks.p2_enqueue_overhead",
    "P3": "benchmarks.p3_auth_throughput",
    "P4": "benchmarks.p4_cert_fetches",
    "P5": "benchmarks.p5_cold_start",
    "P6": "benchmarks.p6_bulk_enqueue",
    "P7": "benchmarks.p7_large_payloads",
    "P8": "benchmarks.p8_checked_decoding",
    "R1": "benchmarks.r1_load",
    "R2": "benchmarks.r2_reconnect",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("keys", nargs="*", metavar="KEY", help=f"any of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args(argv)
    unknown = set(args.keys) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark {', '.join(sorted(unknown))}")
    results: list[Result] = []
    for key in args.keys or list(BENCHMARKS):
        print(f"running {key}...", file=sys.stderr, flush=True)
        outcome = importlib.import_module(BENCHMARKS[key]).run(quick=args.quick)
        results.extend(outcome if isinstance(outcome, list) else [outcome])
    rows = [("", "benchmark", "measured", "target", "met"), *(r.row() for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print()
    for result in results:
        print(f"{result.key}: {result.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
