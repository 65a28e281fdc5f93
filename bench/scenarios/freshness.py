"""Scenario "freshness": from a frame leaving the feed server to the change being visible.

Processes: a feed server (``bench.roles.feed.FeedServer``: scrip master + Dhan's
subscription protocol), the whole service (``running_service`` with ``feed.kind = dhan``
pointed at it, the Redis mirror on with its defaults), a probe (``bench.roles.service.
FreshnessProbe``), a bare receiver, and ``redis-server``. The chain is one NIFTY expiry of
251 strikes; the server streams 20,000 Full frames/s to it (a burst every millisecond), and
every 5 ms the last frame of a burst is a *marker*: the middle leg with a new sequence
number in ``volume``, its send time noted just before the write.

A marker counts as visible at the first moment the probe sees its sequence number or a later
one (the state shown is then at least that fresh):

* ``HTTP``: one connection polling ``/options/live`` back to back (each poll a full 200);
* ``Redis``: a subscriber on ``livechain:changes:NIFTY:<expiry>`` (flush every 25 ms by default, the
  default);
* SSE: not built, so not measured.

Baseline, in the same rounds: the same stream to a bare websockets client that stamps each
marker as it reads it: the one-way loopback WebSocket latency, the floor for any consumer.
Target: p99 under 50 ms at 20,000 ticks/s (the issue), shown as a row against that budget.
"""

from __future__ import annotations

import bisect
import statistics
import sys
from collections.abc import Mapping

from bench import redis_server
from bench.model import Budget, Row, Scenario
from bench.roles.service import DHAN_ENV, service_settings
from bench.timing import interleave, percentile
from bench.worker import Worker

NAME = "freshness"
RATE = 20_000
MARKER_EVERY_S = 0.005
BUDGET_MS = 50.0
SETTLE_S = 0.3  # after a stream, for the last markers to come through (> one mirror flush)
UNIVERSE = {"underlyings": ["NIFTY"], "expiries": 1, "strikes_per_side": 125}


def run(budget: Budget) -> list[Row]:
    seconds = 0.5 if budget.quick else 2.0
    if not redis_server.available():
        print("freshness: redis-server is not installed: Redis visibility is not measured", file=sys.stderr)
        return _run(budget, seconds, None)
    with redis_server.RedisServer() as redis:
        return _run(budget, seconds, redis.url)


def _run(budget: Budget, seconds: float, redis_url: str | None) -> list[Row]:
    with (
        Worker("bench.roles.feed:FeedServer", **UNIVERSE) as feed,
        Worker("bench.roles.service:Service", env=DHAN_ENV) as svc,
    ):
        port, expiry, marker = feed.info["port"], feed.info["expiry"], feed.info["marker_security_id"]
        settings = service_settings(
            f"ws://127.0.0.1:{port}/feed", f"http://127.0.0.1:{port}/scrip-master.csv", ["NIFTY"], 1, redis_url
        )
        started = svc.call("run", settings)
        path = f"/options/live?underlying=NIFTY&expiry={expiry}"
        with (
            Worker("bench.roles.service:FreshnessProbe", http_port=started["http_port"], path=path,
                   marker_security_id=marker, redis_url=redis_url, underlying="NIFTY", expiry=expiry) as probe,
            Worker("bench.roles.receivers:MarkerReceiver", port=port, marker_security_id=marker) as bare,
        ):  # fmt: skip
            sent: list[float] = []
            applied: list[float] = []
            polls: list[float] = []

            def ours() -> dict[str, list[float]]:
                probe.call("begin")
                before = svc.call("ticks")
                stream = feed.call("stream", "/feed", RATE, seconds, MARKER_EVERY_S)
                seen = probe.call("end", SETTLE_S)
                sent.append(stream["rate"])
                applied.append((svc.call("ticks") - before) / stream["sent"])
                polls.append(seen["polls"] / seconds)
                return {k: latencies(stream["markers"], v, seen["ended_at"]) for k, v in seen["seen"].items()}

            def baseline() -> dict[str, list[float]]:
                stream = feed.call("stream", "/bare", RATE, seconds, MARKER_EVERY_S)
                seen = bare.call("collect")
                return {"ws": latencies(stream["markers"], seen["seen"], float("inf"))}

            ours(), baseline()  # warm-up
            results = interleave({"ours": ours, "bare": baseline}, budget.rounds)
    floor = [r["ws"] for r in results["bare"]]
    note = (
        f"{RATE:,} frames/s asked, {statistics.median(sent):,.0f} sent, {100 * min(applied):.1f}% applied by the service; "
        f"a marker every {MARKER_EVERY_S * 1000:g} ms, {seconds:g} s per run; HTTP polled back to back "
        f"({statistics.median(polls):,.0f} polls/s); SSE not built, not measured"
    )
    rows = []
    for probe_name, label in (("http", "HTTP /options/live"), ("redis", "Redis pub/sub")):
        if probe_name == "redis" and redis_url is None:
            continue
        ours_lat = [r[probe_name] for r in results["ours"]]
        rows += _rows(label, ours_lat, floor, note if probe_name == "http" else "")
    return rows


def _rows(label: str, ours: list[list[float]], floor: list[list[float]], note: str) -> list[Row]:
    def pct(runs: list[list[float]], q: float) -> list[float]:
        return [1000 * percentile(r, q) for r in runs]

    name = "bare websockets one-way (same stream)"
    p99 = pct(ours, 99)
    return [
        Row.compare(NAME, f"{label}: p50", pct(ours, 50), pct(floor, 50), unit="ms", baseline_name=name,
                    higher_is_better=False, note=note),
        Row.compare(NAME, f"{label}: p99", p99, pct(floor, 99), unit="ms", baseline_name=name,
                    higher_is_better=False),
        Row.compare(NAME, f"{label}: max", pct(ours, 100), pct(floor, 100), unit="ms", baseline_name=name,
                    higher_is_better=False),
        Row.compare(NAME, f"{label}: p99 vs {BUDGET_MS:g} ms budget", p99, [BUDGET_MS] * len(p99), unit="ms",
                    baseline_name=f"{BUDGET_MS:g} ms target", target=1.0, higher_is_better=False),
    ]  # fmt: skip


def latencies(markers: Mapping[str, float], seen: Mapping[str, float], ended_at: float) -> list[float]:
    """Seconds from each marker's send to the first sight of it or of a later marker.

    A marker never seen (the probe stopped first) counts as seen when the probe stopped: a
    lower bound, so it can only make the figure worse, never better.
    """
    sends = sorted((int(k), t) for k, t in markers.items())
    if not sends:
        raise ValueError("no markers sent")
    first = sends[0][0]
    obs = sorted((int(k), t) for k, t in seen.items() if int(k) >= first)
    keys = [k for k, _ in obs]
    earliest = [0.0] * len(obs)  # earliest sight of this sequence number or any later one
    best = float("inf")
    for i in range(len(obs) - 1, -1, -1):
        best = min(best, obs[i][1])
        earliest[i] = best
    out = []
    for seq, sent_at in sends:
        i = bisect.bisect_left(keys, seq)
        out.append((earliest[i] if i < len(keys) else ended_at) - sent_at)
    if any(x == float("inf") for x in out):
        raise AssertionError("the bare receiver missed markers")
    return out


SCENARIO = Scenario(NAME, "frame sent → visible in /options/live and Redis at 20k ticks/s: p50/p99/max", run)
