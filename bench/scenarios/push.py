"""Scenario "push": 1,000 SSE streams of one 251-strike chain at 20,000 ticks/s, vs 1,000 pollers.

Two processes: the service's HTTP stack (``bench.roles.push.PushApp``: ``make_app`` over
``CacheChains``, request counting, analytics, a ticker applying 20,000 Full ticks/s to the
chain) and the clients. Each round measures, for the same time with ticks flowing:

* streams: ``STREAMS`` connections to ``/options/stream`` (``bench.roles.push.StreamClients``);
  delivery latency per event (below), p99 against the ``BUDGET_MS`` budget; and the server's
  CPU (seconds of CPU per second of wall time, in %);
* the same streams with ``http.stream_interval_s`` at 1 s (at most one event per client per
  second: the pollers' cadence), for the server's CPU like for like;
* pollers: as many keep-alive clients asking ``/options/live`` once a second with
  ``If-None-Match`` (``PacedPollers``); the server's CPU the same way.

The clients run in ``CLIENT_PROCESSES`` processes, each socket with a ``CLIENT_RCVBUF_BYTES``
receive buffer (see there). Each event's latency is exact for the newest tick it carries: its
arrival minus the apply time of that tick, the ``as_of`` the event brings the client to (server
and clients read the same clock); the note also gives the bound for the oldest tick an event
may carry (arrival minus the ``as_of`` held before it), which adds the time between events.
"""

from __future__ import annotations

import contextlib
import statistics
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.model import Budget, Row
from bench.model import Scenario
from bench.timing import percentile
from bench.worker import Worker

NAME = "push"
RATE = 20_000
STREAMS = 1000
STRIKES_PER_SIDE = 125
BUDGET_MS = 100.0
TODAY = "2026-11-23"
# The clients stand for 1,000 browsers on as many machines: split them over processes so the
# clients' own CPU is not what is measured, and give each socket a receive buffer of about one
# event, as a client reading what arrives has (an overloaded client's kernel would otherwise
# take up to tcp_rmem's maximum, 32 MiB here, of events its process has not read yet).
CLIENT_PROCESSES = 2
CLIENT_RCVBUF_BYTES = 256 * 1024
# The same streams looking at the chain once a second: the pollers' cadence, for a like-for-like CPU figure.
PACED_INTERVAL_S = 1.0


def _parallel(workers: list[Worker], method: str, *args: Any, timeout_s: float = 120.0) -> list[Any]:
    with ThreadPoolExecutor(len(workers)) as pool:
        return list(pool.map(lambda w: w.call(method, *args, timeout_s=timeout_s), workers))


def measure_streams(port: int, path: str, n: int, seconds: float, app: Worker, *,
                    processes: int = CLIENT_PROCESSES, rcvbuf_bytes: int = CLIENT_RCVBUF_BYTES) -> dict[str, Any]:  # fmt: skip
    """``n`` streams split over ``processes`` client processes, measured together for ``seconds``."""
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(Worker("bench.roles.push:StreamClients")) for _ in range(processes)]
        shares = [n // processes + (i < n % processes) for i in range(processes)]
        with ThreadPoolExecutor(processes) as pool:
            list(pool.map(lambda cs: cs[0].call("open", port, path, cs[1], rcvbuf_bytes, timeout_s=600), zip(clients, shares)))
        _parallel(clients, "measure", 2.0)  # every client past its snapshot
        cpu0 = app.call("cpu")
        parts = _parallel(clients, "measure", seconds)
        cpu = 100 * (app.call("cpu") - cpu0) / seconds
        _parallel(clients, "close")
    exact = [x for p in parts for x in p["exact_ms"]] or [float("nan")]
    bound = [x for p in parts for x in p["bound_ms"]] or [float("nan")]
    return {
        "p50_ms": percentile(exact, 50), "p99_ms": percentile(exact, 99),
        "bound_p50_ms": percentile(bound, 50), "bound_p99_ms": percentile(bound, 99),
        "events_per_s": sum(p["events"] for p in parts) / seconds,
        "mb_per_s": sum(p["bytes"] for p in parts) / seconds / 1e6,
        "snapshots": sum(p["snapshots"] for p in parts), "open": sum(p["open"] for p in parts),
        "cpu_pct": cpu, "client_cpu_pct": [round(p["cpu_pct"]) for p in parts],
    }  # fmt: skip


def run(budget: Budget) -> list[Row]:
    seconds = 1.0 if budget.quick else 4.0
    clients_n = 100 if budget.quick else STREAMS
    push: list[dict[str, Any]] = []
    paced: list[dict[str, Any]] = []
    poll: list[dict[str, Any]] = []
    with Worker("bench.roles.push:PushApp", strikes_per_side=STRIKES_PER_SIDE, rate=RATE, today=TODAY) as app:
        info = app.info
        stream_path = info["path"].replace("/options/live", "/options/stream")
        app.call("ticking", True)
        try:
            for _ in range(budget.rounds):
                push.append(measure_streams(info["port"], stream_path, clients_n, seconds, app))
                default_interval = app.call("stream_interval", PACED_INTERVAL_S)
                paced.append(measure_streams(info["port"], stream_path, clients_n, seconds, app))
                app.call("stream_interval", default_interval)
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
    med = statistics.median
    note = (
        f"{clients_n} clients in {CLIENT_PROCESSES} processes (receive buffer {CLIENT_RCVBUF_BYTES // 1024} KiB), "
        f"{seconds:g} s per round, 251 strikes, {RATE:,} ticks/s asked, {achieved or 0:,.0f} achieved; "
        f"streams got {med(r['events_per_s'] for r in push):,.0f} events/s ({med(r['mb_per_s'] for r in push):,.0f} MB/s, "
        f"{med(r['snapshots'] for r in push):g} catch-up snapshots per round; client CPU % per process "
        f"{push[len(push) // 2]['client_cpu_pct']}); bound for the oldest tick an event carries (arrival − the "
        f"as_of held before): p50 {med(r['bound_p50_ms'] for r in push):,.0f} ms, p99 {med(r['bound_p99_ms'] for r in push):,.0f} ms; "
        f"pollers {med(r['ok_per_s'] for r in poll):,.0f} 200s/s + {med(r['not_modified_per_s'] for r in poll):,.0f} 304s/s "
        f"({med(r['mb_per_s'] for r in poll):,.0f} MB/s)"
    )
    paced_note = (
        f"streams paced at one look per {PACED_INTERVAL_S:g} s (http.stream_interval_s) got "
        f"{med(r['events_per_s'] for r in paced):,.0f} events/s ({med(r['mb_per_s'] for r in paced):,.0f} MB/s), "
        f"delivery p50 {med(r['p50_ms'] for r in paced):,.0f} ms, p99 {med(r['p99_ms'] for r in paced):,.0f} ms"
    )
    return [
        Row.compare(NAME, "stream delivery p99 (newest tick applied → event received)", [r["p99_ms"] for r in push],
                    [BUDGET_MS] * len(push), unit="ms", baseline_name=f"the {BUDGET_MS:g} ms budget", target=1.0,
                    higher_is_better=False, note=note),
        Row.compare(NAME, "stream delivery p50", [r["p50_ms"] for r in push], [BUDGET_MS] * len(push), unit="ms",
                    baseline_name=f"the {BUDGET_MS:g} ms budget", higher_is_better=False),
        Row.compare(NAME, "server CPU: streams vs pollers at 1/s", [r["cpu_pct"] for r in push],
                    [r["cpu_pct"] for r in poll], unit="% of a core", baseline_name="as many If-None-Match pollers, 1/s each",
                    higher_is_better=False),
        Row.compare(NAME, "server CPU: streams at ≤ 1 event/s vs pollers at 1/s", [r["cpu_pct"] for r in paced],
                    [r["cpu_pct"] for r in poll], unit="% of a core", baseline_name="as many If-None-Match pollers, 1/s each",
                    higher_is_better=False, note=paced_note),
    ]  # fmt: skip


SCENARIO = Scenario(NAME, "1,000 SSE streams of a 251-strike chain at 20k ticks/s: delivery p99, CPU vs pollers", run)
