"""Scenario "serve": ``/options/live`` under load while ticks flow, vs a bare aiohttp handler.

Three processes: the server under test, the bare server, and a load client (a keep-alive
HTTP/1.1 client on raw asyncio protocols, ``bench.roles.http.LoadClient``) with
``CONNECTIONS`` sockets each sending its next request as soon as the last response is
complete, for a fixed time per run. The OS spreads the three over the two cores.

* ours: the service's HTTP stack (``make_app`` over ``CacheChains``, request counting) on
  one NIFTY expiry of 251 strikes (502 legs + the index), while a ticker on the same event
  loop applies 20,000 Full ticks/s to random legs of that chain through ``Ingest.on_batch``
  as the Dhan client hands them over (a batch every 5 ms, so the chain has a new version every 5 ms and is re-rendered on the
  next request after each).
* baseline: one aiohttp handler returning pre-built bytes of the same length with the same
  headers, no middleware, no ticks.

Rows: requests/s (target ≥ 0.8x of bare, issue 16) and p99/p50 latency under that load; then
revalidation, every request carrying ``If-None-Match`` with the current ETag of a quiet
chain (ticker stopped), so every answer is a 304; against the bare handler's 304 (target
≥ 0.85x) and its p99.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from bench.model import Budget, Row, Scenario
from bench.timing import interleave
from bench.worker import Worker

NAME = "serve"
TARGET = 0.8  # 200s under 20k ticks/s vs the bare handler (issue 16)
TARGET_304 = 0.85  # 304 revalidation vs the bare handler's 304 (issue 16)
RATE = 20_000  # ticks/s into the served chain
CONNECTIONS = 32
STRIKES_PER_SIDE = 125
TODAY = "2026-11-23"


def run(budget: Budget) -> list[Row]:
    seconds = 0.3 if budget.quick else 2.0
    with (
        Worker("bench.roles.http:ServingApp", strikes_per_side=STRIKES_PER_SIDE, rate=RATE, today=TODAY) as ours,
        Worker("bench.roles.http:LoadClient") as load,
    ):
        info = ours.info
        with Worker(
            "bench.roles.http:BareServer", body_bytes=info["bytes"], etag=info["etag"], path=info["path"]
        ) as bare:
            achieved: list[float] = []

            def ours_200() -> dict[str, Any]:
                ours.call("ticking", True)
                try:
                    return load.call("run", info["port"], info["path"], seconds, CONNECTIONS)
                finally:
                    achieved.append(ours.call("ticking", False))

            def ours_304() -> dict[str, Any]:
                etag = ours.call("quiet")["etag"]
                return load.call("run", info["port"], info["path"], seconds / 2, CONNECTIONS, etag)

            def bare_run(etag: str | None, s: float) -> Callable[[], dict[str, Any]]:
                return lambda: load.call("run", bare.info["port"], bare.info["path"], s, CONNECTIONS, etag)

            ours_200(), bare_run(None, seconds)()  # warm-up
            full = interleave({"ours": ours_200, "bare": bare_run(None, seconds)}, budget.rounds)
            revalidate = interleave({"ours": ours_304, "bare": bare_run(info["etag"], seconds / 2)}, budget.rounds)
    _check(full, "200")
    _check(revalidate, "304")
    note = (
        f"{CONNECTIONS} keep-alive connections, {seconds:g} s per run; body {info['bytes'] / 1000:.0f} kB "
        f"(251 strikes); ours under {RATE:,} ticks/s asked, {statistics.median(achieved):,.0f} achieved"
    )
    return [
        _row("200: requests/s", full, "rps", "req/s", TARGET, True, note),
        _row("200: p99 latency", full, "p99_ms", "ms", None, False),
        _row("200: p50 latency", full, "p50_ms", "ms", None, False),
        _row("304 revalidation: requests/s", revalidate, "rps", "req/s", TARGET_304, True,
             "If-None-Match with the current ETag of a quiet chain (ticker stopped): every answer a 304"),
        _row("304 revalidation: p99 latency", revalidate, "p99_ms", "ms", None, False),
    ]  # fmt: skip


def _row(case: str, runs: dict[str, list[dict[str, Any]]], key: str, unit: str, target: float | None,
         higher: bool, note: str = "") -> Row:  # fmt: skip
    return Row.compare(
        NAME, case, [r[key] for r in runs["ours"]], [r[key] for r in runs["bare"]], unit=unit,
        baseline_name="bare aiohttp handler, same bytes", target=target, higher_is_better=higher, note=note,
    )  # fmt: skip


def _check(runs: dict[str, list[dict[str, Any]]], status: str) -> None:
    """Refuse figures from runs that answered anything but ``status``."""
    for who, results in runs.items():
        for r in results:
            if set(r["statuses"]) != {status}:
                raise AssertionError(f"serve: {who} answered {r['statuses']}, expected only {status}")


SCENARIO = Scenario(NAME, "/options/live under load at 20k ticks/s (and 304s), vs a bare aiohttp handler", run)
