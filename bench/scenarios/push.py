"""Scenario "push": 1,000 SSE streams of one 251-strike chain at 20,000 ticks/s, vs 1,000 pollers.

Two processes: the service's HTTP stack (``bench.roles.push.PushApp``: ``make_app`` over
``CacheChains``, metrics middleware, analytics, a ticker applying 20,000 Full ticks/s to the
chain) and the clients. Each round measures, for the same time with ticks flowing:

* streams: ``STREAMS`` connections to ``/options/stream`` (``bench.roles.push.StreamClients``);
  delivery latency per event = arrival − the chain's ``as_of`` before it (every tick the event
  carries was applied after that instant), p99 against the ``BUDGET_MS`` budget; and the
  server's CPU (seconds of CPU per second of wall time, in %);
* pollers: as many keep-alive clients asking ``/options/live`` once a second with
  ``If-None-Match`` (``PacedPollers``); the server's CPU the same way.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.model import Budget, Row
from bench.model import Scenario
from bench.worker import Worker

NAME = "push"
RATE = 20_000
STREAMS = 1000
STRIKES_PER_SIDE = 125
BUDGET_MS = 100.0
TODAY = "2026-11-23"


def run(budget: Budget) -> list[Row]:
    seconds = 1.0 if budget.quick else 4.0
    clients_n = 100 if budget.quick else STREAMS
    push: list[dict[str, Any]] = []
    poll: list[dict[str, Any]] = []
    with Worker("bench.roles.push:PushApp", strikes_per_side=STRIKES_PER_SIDE, rate=RATE, today=TODAY) as app:
        info = app.info
        stream_path = info["path"].replace("/options/live", "/options/stream")
        app.call("ticking", True)
        try:
            for _ in range(budget.rounds):
                with Worker("bench.roles.push:StreamClients") as clients:
                    clients.call("open", info["port"], stream_path, clients_n, timeout_s=600)
                    clients.call("measure", 2.0)  # every client past its snapshot
                    cpu0 = app.call("cpu")
                    result = clients.call("measure", seconds)
                    result["cpu_pct"] = 100 * (app.call("cpu") - cpu0) / seconds
                    push.append(result)
                    clients.call("close")
                with Worker("bench.roles.push:PacedPollers") as pollers:
                    pollers.call("open", info["port"], info["path"], clients_n, 1.0)
                    pollers.call("measure", 1.0)
                    cpu0 = app.call("cpu")
                    result = pollers.call("measure", seconds)
                    result["cpu_pct"] = 100 * (app.call("cpu") - cpu0) / seconds
                    poll.append(result)
                    pollers.call("close")
        finally:
            achieved = app.call("ticking", False)
    note = (
        f"{clients_n} clients, {seconds:g} s per round, 251 strikes, {RATE:,} ticks/s asked, "
        f"{achieved or 0:,.0f} achieved; streams got {statistics.median(r['events_per_s'] for r in push):,.0f} "
        f"events/s ({statistics.median(r['mb_per_s'] for r in push):,.0f} MB/s, "
        f"{statistics.median(r['snapshots'] for r in push):g} catch-up snapshots per round), "
        f"pollers {statistics.median(r['ok_per_s'] for r in poll):,.0f} 200s/s + "
        f"{statistics.median(r['not_modified_per_s'] for r in poll):,.0f} 304s/s "
        f"({statistics.median(r['mb_per_s'] for r in poll):,.0f} MB/s)"
    )
    return [
        Row.compare(NAME, "stream delivery p99 (tick applied → event received)", [r["p99_ms"] for r in push],
                    [BUDGET_MS] * len(push), unit="ms", baseline_name=f"the {BUDGET_MS:g} ms budget", target=1.0,
                    higher_is_better=False, note=note),
        Row.compare(NAME, "stream delivery p50", [r["p50_ms"] for r in push], [BUDGET_MS] * len(push), unit="ms",
                    baseline_name=f"the {BUDGET_MS:g} ms budget", higher_is_better=False),
        Row.compare(NAME, "server CPU: streams vs pollers at 1/s", [r["cpu_pct"] for r in push],
                    [r["cpu_pct"] for r in poll], unit="% of a core", baseline_name="as many If-None-Match pollers, 1/s each",
                    higher_is_better=False),
    ]  # fmt: skip


SCENARIO = Scenario(NAME, "1,000 SSE streams of a 251-strike chain at 20k ticks/s: delivery p99, CPU vs pollers", run)
