"""Scenario "mirror": the Redis mirror's lag and cost at a stated tick rate, and what it costs ingest.

A real ``redis-server`` on a free loopback port (skipped, with a message, when it is not
installed: ``make bench`` installs it). The chain is one 251-strike NIFTY expiry (502 option
legs plus the index). A ticker coroutine applies Full ticks to random legs in batches every
5 ms, at a fixed rate, on the same event loop as the mirror (flush every 50 ms, the default),
as the feed would. Per rate and per round:

* ``lag p50`` / ``lag p99``: from the oldest change in a flush to that flush's completion, over
  the round's flushes. Baseline: the flush interval, the floor for a periodic writer (its
  oldest change waits a whole interval at a steady rate). Ratio ≈ 1: writing adds little.
* ``commands/tick``: Redis commands sent (MULTI/EXEC included) per tick applied. Baseline:
  1, a writer that sends one HSET per tick and nothing else.
* ``legs written/s``: legs per second of flush time (render + encode + round trip; HSET,
  XADD and PUBLISH each carry every changed leg). Baseline: redis-py pipelining one HSET of
  the same leg documents, timed in the same round: the raw client ceiling for those fields.

Then ingest at full speed (ticks applied back to back, yielding to the loop after every
batch of 250), without a mirror, with the mirror writing to Redis, and with the mirror while
Redis is stopped: ``ingest, mirror on`` and ``ingest, Redis down`` against ``no mirror``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bench.flat_out import INGEST_BATCH, flat_out
from bench.model import Budget, Row, Scenario
from feeds.model import FullTick, Tick
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.universe import build_universe
from service.core.cache import ChainCache
from service.redis.mirror import FlushReport, RedisMirror
from service.settings import RedisSettings
from service.core.snapshot import leg_json

NAME = "mirror"
STRIKES_PER_SIDE = 125  # 251 strikes, 502 option legs
RATES = (50_000, 5_000)  # ticks/s
BATCH_EVERY_S = 0.005
FLUSH_INTERVAL_S = RedisSettings.model_fields["flush_interval_s"].default  # as shipped
NOW = 1_795_000_000.0
TODAY = dt.date(2026, 11, 23)


def run(budget: Budget) -> list[Row]:
    if shutil.which("redis-server") is None:
        print("mirror: skipped, redis-server is not installed (make bench installs it)", file=sys.stderr)
        return []
    return asyncio.run(_run(budget))


async def _run(budget: Budget) -> list[Row]:
    round_s = 0.5 if budget.quick else max(1.5, 6 * budget.seconds_per_round)
    with tempfile.TemporaryDirectory(prefix="livechain-bench-redis-") as workdir:
        server = _RedisServer(workdir)
        await server.start()
        try:
            rows: list[Row] = []
            for rate in RATES:
                rows += await _at_rate(server, rate, budget.rounds, round_s)
            rows += await _ingest(server, budget.rounds, round_s / 3)
            return rows
        finally:
            await server.stop()


# --------------------------------------------------------------------------- lag and cost at a rate


async def _at_rate(server: _RedisServer, rate: int, rounds: int, round_s: float) -> list[Row]:
    p50: list[float] = []
    p99: list[float] = []
    per_tick: list[float] = []
    ours_legs: list[float] = []
    raw_legs: list[float] = []
    achieved: list[float] = []
    for _ in range(rounds):
        cache = _cache()
        ticks = _ticks(cache, 8192, seed=rate)
        reports: list[FlushReport] = []
        async with RedisMirror(cache, _settings(server.url), observer=reports.append) as mirror:
            await _until(lambda: mirror.stats.connected)
            reports.clear()  # the initial full write is not a steady-state flush
            applied, elapsed = await _tick_at(cache, ticks, rate, round_s)
            await _until(lambda: mirror.pending == 0)
        lags = sorted(r.lag_s for r in reports if r.lag_s is not None)
        p50.append(1000 * statistics.median(lags))
        p99.append(1000 * lags[min(len(lags) - 1, round(0.99 * (len(lags) - 1)))])
        per_tick.append(sum(r.commands for r in reports) / applied)
        ours_legs.append(sum(r.legs for r in reports) / sum(r.duration_s for r in reports))
        raw_legs.append(await _raw_hset(server.url, cache))
        achieved.append(applied / elapsed)
    note = (
        f"{rate:,} ticks/s asked, {statistics.median(achieved):,.0f} achieved; 251 strikes (502 legs); "
        f"flush every {FLUSH_INTERVAL_S * 1000:g} ms"
    )
    interval = [FLUSH_INTERVAL_S * 1000] * rounds
    case = f"{rate // 1000}k ticks/s"
    return [
        Row.compare(NAME, f"{case}: lag p50", p50, interval, unit="ms", baseline_name="flush interval",
                    higher_is_better=False, note=note),
        Row.compare(NAME, f"{case}: lag p99", p99, interval, unit="ms", baseline_name="flush interval",
                    higher_is_better=False),
        Row.compare(NAME, f"{case}: commands/tick", per_tick, [1.0] * rounds, unit="cmd/tick",
                    baseline_name="one HSET per tick", higher_is_better=False),
        Row.compare(NAME, f"{case}: legs written/s", ours_legs, raw_legs, unit="legs/s",
                    baseline_name="redis-py pipelined HSET"),
    ]  # fmt: skip


async def _tick_at(cache: ChainCache, ticks: list[Tick], rate: int, seconds: float) -> tuple[int, float]:
    """Apply ``rate`` ticks/s in batches every 5 ms, on schedule; return ticks applied and time taken."""
    per_batch = max(1, round(rate * BATCH_EVERY_S))
    n = len(ticks)
    i = applied = 0
    start = time.perf_counter()
    batches = round(seconds / BATCH_EVERY_S)
    for b in range(batches):
        batch = ticks[i : i + per_batch] if i + per_batch <= n else ticks[i:] + ticks[: i + per_batch - n]
        i = (i + per_batch) % n
        cache.apply(batch)
        applied += len(batch)
        delay = start + (b + 1) * BATCH_EVERY_S - time.perf_counter()
        await asyncio.sleep(max(0.0, delay))
    return applied, time.perf_counter() - start


async def _raw_hset(url: str, cache: ChainCache) -> float:
    """Fields/s of one pipelined HSET of every leg document: the client's raw ceiling."""
    fields = {f"{leg.key[1]}": leg_json(leg) for leg in cache.legs.values() if leg.contract is not None}
    client = Redis.from_url(url)
    try:
        best = 0.0
        for _ in range(5):
            start = time.perf_counter()
            pipe = client.pipeline(transaction=False)
            pipe.hset("bench:raw", mapping=fields)
            await pipe.execute()
            best = max(best, len(fields) / (time.perf_counter() - start))
        await client.delete("bench:raw")
        return best
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- ingest with and without


async def _ingest(server: _RedisServer, rounds: int, seconds: float) -> list[Row]:
    rates: dict[str, list[float]] = {"none": [], "on": [], "down": []}
    order = list(rates)
    for r in range(rounds):
        k = r % len(order)
        for who in order[k:] + order[:k]:
            rates[who].append(await _ingest_once(server, who, seconds))
    if not server.running:
        await server.start()
    return [
        Row.compare(NAME, "ingest, mirror on", rates["on"], rates["none"], unit="ticks/s", baseline_name="no mirror",
                    note=f"ticks applied back to back in batches of {INGEST_BATCH}, yielding after each"),
        Row.compare(NAME, "ingest, Redis down", rates["down"], rates["none"], unit="ticks/s",
                    baseline_name="no mirror"),
    ]  # fmt: skip


async def _ingest_once(server: _RedisServer, who: str, seconds: float) -> float:
    cache = _cache()
    ticks = _ticks(cache, 8192, seed=1)
    if who == "none":
        return await flat_out(cache, ticks, seconds)
    if who == "down" and server.running:
        await server.stop()
    if who == "on" and not server.running:
        await server.start()
    settings = _settings(server.url, enabled="auto" if who == "down" else True)
    quiet = logging.getLogger("service.redis.mirror")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "Redis is not available" is the point of this round, not news
    try:
        async with RedisMirror(cache, settings) as mirror:
            if who == "on":
                await _until(lambda: mirror.stats.connected)
            return await flat_out(cache, ticks, seconds)
    finally:
        quiet.setLevel(level)


# --------------------------------------------------------------------------- fixtures


def _cache() -> ChainCache:
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=1, strikes_per_side=STRIKES_PER_SIDE, today=TODAY)
    skeleton = build_universe(config, TODAY).skeleton
    return ChainCache(skeleton)


def _ticks(cache: ChainCache, n: int, seed: int) -> list[Tick]:
    rng = random.Random(seed)
    keys = [k for k, leg in cache.legs.items() if leg.contract is not None]
    out: list[Tick] = []
    for i in range(n):
        ltp = round(rng.uniform(1, 500) / 0.05) * 0.05
        out.append(
            FullTick(rng.choice(keys), round(ltp, 2), 75, int(NOW) + i, round(ltp, 2), 7500 + i, 1500, 2250,
                     30000 + i, 99.0, 98.5, 103.0, 97.0, round(ltp - 0.05, 2), 150, round(ltp + 0.05, 2), 225,
                     NOW + i / 1000)
        )  # fmt: skip
    return out


def _settings(url: str, enabled: object = True) -> RedisSettings:
    return RedisSettings(
        url=url, enabled=enabled, flush_interval_s=FLUSH_INTERVAL_S, reconnect_initial_s=0.05, reconnect_max_s=0.5
    )  # type: ignore[arg-type]


async def _until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


class _RedisServer:
    """redis-server on a free loopback port, no persistence; stoppable and restartable."""

    def __init__(self, workdir: str) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._workdir = workdir
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", self._workdir, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    try:
                        await client.ping()
                        return
                    except RedisConnectionError:
                        await asyncio.sleep(0.01)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await proc.wait()


SCENARIO = Scenario(NAME, "Redis mirror: lag p50/p99 and commands per tick at 50k and 5k ticks/s; ingest cost", run)
