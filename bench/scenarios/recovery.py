"""Scenario "recovery": how long each feed fault takes to heal, against a cold start.

Each fault is injected into a running client (``DhanFeed`` + the real cache) fed by the
simulator over loopback; recovery ends when the connection is up again and every instrument
has had fresh data since the fault (no leg left stale). The baseline, measured in the same
rounds, is a cold start: connect, subscribe and receive data for every instrument.

Meanwhile a user polling ``/options/live`` keeps getting the last known values with
``stale: true`` on the chain and on each affected leg, and ``/readyz`` says ``degraded`` with
the reason; garbage packets are counted and skipped with no visible effect.

Waits are scaled down so a run takes seconds: the stall timeout is 1 s (30 s by default),
the 429 cool-off and the 805 backoff are 1 s (60 s and 120 s by default, which add to the
figures below in production).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Mapping
from typing import ClassVar

import websockets
from pydantic import Field

from bench.model import Budget, Row, Scenario
from feeds.dhan.client import (
    Credentials,
    DhanFeed,
    DhanFeedConfig,
    Subscription,
    plan_subscriptions,
)
from feeds.dhan.packets import FeedMode
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.server import SimulatorServer
from service.core.cache import ChainCache
from service.core.ingest import Ingest
from service.core.lifecycle import Lifecycle, Phase

NAME = "recovery"
UNIT = "s"
FAULTS = ("drop", "silence", "garbage", "disconnect 800", "token 807", "http 429", "805 sixth socket")


class _ScaledDownConfig(DhanFeedConfig):
    """The client's config without Dhan's floors (≥ 60 s after a 429, ≥ 30 s after an 805)."""

    FLOORS: ClassVar[Mapping[str, tuple[float, str]]] = {}
    rate_limit_cooloff_s: float = Field(1.0, gt=0)
    too_many_connections_backoff_s: float = Field(1.0, gt=0)


CONFIG = _ScaledDownConfig(
    url="ws://127.0.0.1:9",  # set per run
    reconnect_initial_s=0.25,
    reconnect_max_s=2.0,
    stall_timeout_s=1.0,
)


def _subscriptions(sim: SimulatorServer) -> list[Subscription]:
    skeleton = sim.universe.skeleton
    options = {c.key: c.tick_size for u in skeleton.underlyings.values() for e in u.expiries for c in e.contracts()}
    indices = {u.key: u.tick_size for u in skeleton.underlyings.values()}
    return plan_subscriptions(options, indices, FeedMode.QUOTE)


async def _wait(predicate, timeout_s: float = 30.0) -> None:  # noqa: ANN001
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.002)


async def _one(fault: str) -> tuple[float, float]:
    """(cold start seconds, recovery seconds) for one injection of ``fault``."""
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=2, strikes_per_side=20, tick_interval_s=0.02)
    async with SimulatorServer(config) as sim:
        tokens = ["eyJ-first"]
        feed = DhanFeed(
            CONFIG.model_copy(update={"url": sim.feed_url}),
            Credentials("1000000001", lambda: tokens[-1]),
            _subscriptions(sim),
        )
        lifecycle = Lifecycle()
        lifecycle.to(Phase.WARMING, "bench")
        cache = ChainCache(sim.universe.skeleton)
        ingest = Ingest(cache, lifecycle, min_coverage=1.0, connections=len(feed.connections))
        started = time.perf_counter()
        task = asyncio.create_task(feed.run(ingest))
        extra = []
        try:
            await asyncio.wait_for(ingest.gate.wait(), 30)
            cold = time.perf_counter() - started
            lifecycle.to(Phase.READY, "bench")
            conn = feed.connections[0]
            before = conn.stats.connects
            t0 = time.perf_counter()
            if fault == "drop":
                sim.drop_connections()
            elif fault == "silence":
                sim.silence()
            elif fault == "garbage":
                sim.send_garbage()
            elif fault == "disconnect 800":
                sim.disconnect_all(800)
            elif fault == "token 807":
                tokens.append("eyJ-second")
                sim.disconnect_all(807)
            elif fault == "http 429":
                sim.reject_handshakes(429, 1)
                sim.drop_connections()
            elif fault == "805 sixth socket":
                for _ in range(5):  # another program on the account opens five sockets
                    extra.append(await websockets.connect(f"{sim.feed_url}?version=2&token=t&clientId=c&authType=2"))
            if fault == "garbage":
                await _wait(lambda: conn.stats.decode_errors >= 4)
            else:
                if fault == "silence":
                    # The watchdog replaces the silent socket; the fresh one is healthy.
                    await _wait(lambda: conn.stats.disconnects_by_reason.get("stall", 0) >= 1)
                    sim.silence(False)
                await _wait(lambda: conn.stats.connected and conn.stats.connects > before)
                await _wait(lambda: all(c.stale_legs == 0 for c in cache.chains.values()))
            return cold, time.perf_counter() - t0
        finally:
            for ws in extra:
                await ws.close()
            task.cancel()
            await asyncio.wait([task])


def run(budget: Budget) -> list[Row]:
    rounds = 1 if budget.quick else min(budget.rounds, 3)
    rows = []
    for fault in FAULTS:
        cold, heal = [], []
        for _ in range(rounds):
            c, h = asyncio.run(_one(fault))
            cold.append(c)
            heal.append(max(h, 1e-6))
        rows.append(
            Row.compare(
                NAME, fault, heal, cold, unit=UNIT, baseline_name="cold start to full coverage",
                higher_is_better=False,
                note=f"median recovery {statistics.median(heal):.3f}s; ratio = cold start / recovery",
            )
        )
    return rows


SCENARIO = Scenario(NAME, "time to heal each injected feed fault, vs a cold start", run)
