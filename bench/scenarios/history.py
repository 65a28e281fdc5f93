"""Scenario "history": what intraday history costs ingest, and what a chain's day costs memory.

Chain: the analytics scenario's 251-strike NIFTY expiry, every leg priced (``analytics._chain``).

* ``ingest, history every 1 s``: ticks applied flat out (batches of 250, yielding after each)
  with a ``HistorySampler`` on the same loop sampling the chain every second — 60 times the
  default ``history.interval_s`` — against the same ingest without one. Every pass renders the
  chain's body anew (every leg changed since the last), reads the series from it and
  compresses it. Target ≥ 0.95 (the issue: "ingest keeps ≥ 0.95× of its rate with history
  on"); at the default 60 s the share of the loop is the note's per-pass cost ÷ 60 s.
* ``a chain's day held``: 375 samples (a 09:15–15:30 session at 60 s) of the chain, every leg
  changed between samples, held as the sampler holds them (series columns + zstd bodies),
  against the same bodies kept raw. Informational: the bytes per chain per day are in the note.
"""

from __future__ import annotations

import asyncio
import random
import time

from bench.flat_out import INGEST_BATCH, flat_out
from bench.model import Budget, Row, Scenario
from bench.scenarios.analytics import NOW, _chain, _ticks
from feeds.calendar import MarketCalendar
from feeds.clock import ManualClock, ShiftedClock
from service.analytics.compute import analyse
from service.core.chains import CacheChains
from service.core.freshness import Freshness
from service.history.sampler import HistorySampler
from service.history.store import HistoryStore
from service.settings import AnalyticsSettings

NAME = "history"
TARGET = 0.95
SESSION_SAMPLES = 375  # 09:15-15:30 at 60 s


def run(budget: Budget) -> list[Row]:
    seconds = 1.1 if budget.quick else max(2.0, 2 * budget.seconds_per_round)  # a round spans a boundary
    rows = asyncio.run(_ingest(budget.rounds, seconds))
    rows.append(_day(60 if budget.quick else SESSION_SAMPLES))
    return rows


async def _ingest(rounds: int, seconds: float) -> list[Row]:
    rates: dict[str, list[float]] = {"off": [], "on": []}
    passes = 0
    busy = 0.0
    for r in range(rounds):
        for who in (("off", "on") if r % 2 == 0 else ("on", "off")):
            rate, n, spent = await _ingest_once(who == "on", seconds)
            rates[who].append(rate)
            passes += n
            busy += spent
    per_pass_us = 1e6 * busy / max(1, passes)
    note = (
        f"ticks applied back to back in batches of {INGEST_BATCH}, yielding after each; {passes / rounds:.1f} "
        f"passes per {seconds:g} s round, {per_pass_us:,.0f} µs each for the 251-strike chain "
        f"(at the default 60 s: {100 * per_pass_us / 60e6:.4f} % of the loop)"
    )
    return [Row.compare(NAME, "ingest, history every 1 s (60x the default)", rates["on"], rates["off"],
                        unit="ticks/s", baseline_name="history off", target=TARGET, note=note)]  # fmt: skip


async def _ingest_once(on: bool, seconds: float) -> tuple[float, int, float]:
    cache, chain = _chain()
    cache.set_analytics(chain, analyse(chain, NOW, AnalyticsSettings()))
    ticks = _ticks(cache, 8192)
    if not on:
        return await flat_out(cache, ticks, seconds), 0, 0.0
    clock = ShiftedClock(NOW)
    calendar = MarketCalendar(always_open=True)
    store = HistoryStore(interval_s=1.0, clock=clock, archive=None, parquet=False)
    chains = CacheChains(cache, Freshness(30.0, calendar, clock))
    async with HistorySampler(chains, store, calendar=calendar, clock=clock) as sampler:
        del sampler
        rate = await flat_out(cache, ticks, seconds)
    return rate, store.stats.passes, store.stats.seconds_total


def _day(samples: int) -> Row:
    """A session of samples held, against the raw bodies."""
    cache, chain = _chain()
    ticks = _ticks(cache, 4096)
    rng = random.Random(3)
    clock = ManualClock(NOW)
    calendar = MarketCalendar(always_open=True)
    store = HistoryStore(interval_s=60.0, clock=clock, archive=None, parquet=False)
    chains = CacheChains(cache, Freshness(30.0, calendar, clock))
    sampler = HistorySampler(chains, store, calendar=calendar, clock=clock)
    raw = 0
    started = time.perf_counter()
    for _ in range(samples):
        for i in range(0, len(ticks), INGEST_BATCH):  # every leg moves between two samples
            cache.apply(ticks[i : i + INGEST_BATCH])
        rng.shuffle(ticks)
        cache.set_analytics(chain, analyse(chain, clock.time(), AnalyticsSettings()))
        sampler.sample_once()
        raw += len(chains.snapshot(chain.underlying, chain.expiry).body)  # type: ignore[union-attr]
        clock.advance(60.0)
    elapsed = time.perf_counter() - started
    held = store.nbytes
    per_day = held * SESSION_SAMPLES / samples
    held_samples = [x for chains_ in store.days.values() for cd in chains_.values() for x in cd.samples]
    cols = sum(len(x.legs_z) for x in held_samples) / samples
    bodies = sum(len(x.body_z) for x in held_samples) / samples
    note = (f"{samples} samples of a 251-strike chain: {held / samples / 1024:.1f} KiB per sample held "
            f"(leg columns {cols / 1024:.1f} KiB, body {bodies / 1024:.1f} KiB of {raw / samples / 1024:.0f}, both zstd); "
            f"{per_day / 2**20:.1f} MiB per chain per day at 60 s; built in {elapsed:.1f} s")  # fmt: skip
    return Row.compare(NAME, "a chain's day held vs its raw bodies", [held], [raw], unit="bytes",
                       baseline_name="the raw bodies", higher_is_better=False, note=note)  # fmt: skip


SCENARIO = Scenario(NAME, "intraday history: ingest with the sampler on vs off; a chain's day in memory", run)
