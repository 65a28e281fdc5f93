"""Scenario "scale": memory and time to ready for 1,000 / 5,000 / 25,000 instruments.

Per size, the project's simulator (``feeds.simulator.server``) runs alone in a process with
NIFTY, BANKNIFTY and FINNIFTY, 5 expiries each and enough strikes for the size (25,000 is
Dhan's budget: 5 connections × 5,000). On subscription it sends two frames per instrument
(previous close, then the current Full packet): 50,000 frames at 25,000 instruments.

Each run starts the whole service (``running_service``, ``feed.kind = dhan``, scrip master
fetched from the simulator, Redis mirror off) in a fresh process and measures:

* RSS above the baseline: RSS once ready (after every chain was rendered once, as pollers
  would, and a garbage collection) minus RSS of the same process with its imports loaded
  and nothing started, per instrument. Target < 2 KB (the issue): a row against that budget.
* first data → ready: from the first tick read off a socket to the readiness gate open and
  the HTTP port bound. Baseline, in the same rounds: bare websockets clients subscribing the
  same instruments on the same simulator (sharded the same way), from their first frame
  until every instrument had one: the simulator and the sockets' floor. At 25,000, also a
  row against the issue's 3 s budget.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.model import Budget, Row, Scenario
from bench.roles.service import DHAN_ENV, service_settings
from bench.timing import interleave
from bench.worker import Worker

NAME = "scale"
UNDERLYINGS = ["NIFTY", "BANKNIFTY", "FINNIFTY"]
EXPIRIES = 5
SIZES = {1_000: 16, 5_000: 83, 25_000: 416}  # instruments → strikes per side (3 × 5 × 2 × (2s+1) + 3)
RSS_BUDGET_B = 2048.0
READY_BUDGET_S = 3.0


def run(budget: Budget) -> list[Row]:
    sizes = [1_000] if budget.quick else list(SIZES)
    rounds = 1 if budget.quick else min(budget.rounds, 2)
    rows: list[Row] = []
    for size in sizes:
        rows += _size(size, rounds)
    return rows


def _size(size: int, rounds: int) -> list[Row]:
    universe = {"underlyings": UNDERLYINGS, "expiries": EXPIRIES, "strikes_per_side": SIZES[size]}
    with Worker("bench.roles.feed:Simulator", **universe) as sim:
        settings = service_settings(sim.info["feed_url"], sim.info["scrip_master_url"], UNDERLYINGS, EXPIRIES, None)

        def ours() -> dict[str, Any]:
            with Worker("bench.roles.service:Service", env=DHAN_ENV) as svc:
                started = svc.call("run", settings, True)
                settled = svc.call("settle")
            n = started["instruments"]
            return {
                "instruments": n,
                "rss_base": svc.info["rss_base"],
                "rss": settled["rss"],
                "rss_ready": started["rss_ready"],
                "per_instrument": (settled["rss"] - svc.info["rss_base"]) / n,
                "first_to_ready": started["ready_at"] - started["first_read_at"],
                "start_to_ready": started["ready_at"] - started["started_at"],
                "connections": started["connections"],
            }

        def bare() -> dict[str, Any]:
            with Worker("bench.roles.receivers:CoverageReceiver", feed_url=sim.info["feed_url"], **universe) as cov:
                return cov.call("run")

        results = interleave({"ours": ours, "bare": bare}, rounds)
    o = results["ours"]
    n = o[0]["instruments"]
    med = statistics.median
    note = (
        f"{n:,} instruments on {o[0]['connections']} connection(s): RSS {med(r['rss_base'] for r in o) / 1e6:.0f} MB "
        f"with imports only → {med(r['rss_ready'] for r in o) / 1e6:.0f} MB at ready → "
        f"{med(r['rss'] for r in o) / 1e6:.0f} MB once every chain was rendered (the figure); start of the service "
        f"(instruments fetched and parsed, sockets opened) → ready {med(r['start_to_ready'] for r in o):.2f} s"
    )
    label = f"{size // 1000}k"
    first_to_ready = [r["first_to_ready"] for r in o]
    rows = [
        Row.compare(NAME, f"{label}: RSS per instrument vs 2 KB budget", [r["per_instrument"] for r in o],
                    [RSS_BUDGET_B] * rounds, unit="B", baseline_name="2 KB/instrument target",
                    # The budget is per instrument at 25k (issue 16); at 1k/5k the process's fixed
                    # costs dominate, so those rows are information.
                    target=1.0 if size == 25_000 else None,
                    higher_is_better=False, note=note),
        Row.compare(NAME, f"{label}: first data → ready", first_to_ready,
                    [r["first_to_covered_s"] for r in results["bare"]], unit="s",
                    baseline_name="bare websockets clients: first frame → every instrument seen",
                    higher_is_better=False),
    ]  # fmt: skip
    if size == 25_000:
        rows.append(
            Row.compare(NAME, f"{label}: first data → ready vs 3 s budget", first_to_ready,
                        [READY_BUDGET_S] * rounds, unit="s", baseline_name="3 s target", target=1.0,
                        higher_is_better=False)
        )  # fmt: skip
    return rows


SCENARIO = Scenario(NAME, "RSS per instrument and first data → ready at 1k / 5k / 25k instruments", run)
