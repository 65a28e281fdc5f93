"""``python -m bench``: run the scenarios, print the table, write bench/results/latest.json."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.machine import machine_info
from bench.model import Budget, Row
from bench.report import document, format_table, headline, write_json
from bench.scenarios import SCENARIOS

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:12} {s.summary}")
        return 0
    unknown = sorted(set(args.only or ()) - SCENARIOS.keys())
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    budget = Budget.smoke() if args.quick else Budget.default()
    if args.rounds:
        budget = replace(budget, rounds=args.rounds)

    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    machine = machine_info()  # before the run, so the load average is not our own
    start = time.perf_counter()
    rows: list[Row] = []
    for s in SCENARIOS.values():
        if args.only and s.name not in args.only:
            continue
        print(f"running {s.name}…", file=sys.stderr, flush=True)
        rows += s.run(budget)
    seconds = time.perf_counter() - start

    print(format_table(rows, machine))
    write_json(args.out, document(rows, machine, budget, started_at, seconds))
    top = headline(rows)
    met = f"; headline targets met: {sum(bool(r.passed) for r in top)} of {len(top)}" if top else ""
    print(f"{len(rows)} rows in {seconds:.1f} s{met}; wrote {args.out}", file=sys.stderr)
    missed = [r.case for r in rows if r.passed is False]
    return 1 if args.strict and missed else 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--only", action="append", metavar="NAME", help="run only this scenario (repeatable)")
    p.add_argument("--quick", action="store_true", help="short rounds and small workloads: a smoke test for CI")
    p.add_argument("--rounds", type=int, metavar="N", help="rounds per comparison (default 5, quick 3)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON (default: %(default)s)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--strict", action="store_true", help="exit 1 when a ratio misses its target")
    return p


if __name__ == "__main__":
    sys.exit(main())
