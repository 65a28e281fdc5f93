"""WebSocket clients: ours (the Dhan client into the real ingest and cache) and bare receivers.

``IngestClients`` holds the contestants of the ingest scenario, all reading the same
``/blast`` of one-packet frames from ``bench.roles.feed.FeedServer``:

* ``ours``: ``DhanFeed`` (its receive loop: counters, decode, normalise, batch) feeding the
  real ``Ingest`` into the real ``ChainCache``, with the ingest-latency histogram that
  metrics attach in production. Done when ``Ingest`` has applied every tick.
* ``bare_websockets``: the library ours is built on, with the same connect options, doing
  nothing but ``async for frame in ws`` and counting.
* ``bare_aiohttp``: the same with aiohttp's WebSocket client, for comparison.

Every contestant sends the same subscription messages first and is timed from its first
frame (ours: the first tick's ``received_at``, stamped when its frame was read) to its last,
so the handshake and the subscription are not part of the rate.

``MarkerReceiver`` is the freshness baseline: a bare client that stamps the arrival of each
marker frame. ``CoverageReceiver`` is the scale baseline: bare clients subscribing the
service's instruments on the simulator, timed from the first frame until every instrument
has had one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from websockets.asyncio.client import connect

from bench.roles import ist_today
from bench.roles.feed import universe_config
from feeds.dhan.client import (
    Credentials,
    DhanFeed,
    DhanFeedConfig,
    Subscription,
    plan_subscriptions,
    shard,
)
from feeds.dhan.codec import decode_packet
from feeds.dhan.packets import FeedMode
from feeds.dhan.requests import subscribe_messages
from feeds.model import FullTickBatch, Tick
from feeds.simulator.universe import Universe, build_universe
from service.core.cache import ChainCache
from service.core.health import Health
from service.core.ingest import Ingest
from service.core.lifecycle import Lifecycle, Phase
from service.metrics import Metrics

QUERY = "?version=2&token=bench-token&clientId=1000000001&authType=2"
WS_OPTIONS = {"compression": None, "max_size": 2**20}  # what DhanFeed passes (pings aside)


def subscriptions(universe: Universe) -> list[Subscription]:
    """What the service subscribes for ``universe``: options Full, indices Quote."""
    options = {key: c.tick_size for key, c in universe.contracts.items()}
    indices = {u.key: u.tick_size for u in universe.skeleton.underlyings.values()}
    return plan_subscriptions(options, indices, FeedMode.QUOTE)


def messages(subs: Sequence[Subscription]) -> list[str]:
    by_mode: dict[FeedMode, list[Any]] = {}
    for s in subs:
        by_mode.setdefault(s.mode, []).append(s.key)
    return [m for mode, keys in by_mode.items() for m in subscribe_messages(mode, keys)]


class _CountingIngest(Ingest):
    """The real ``Ingest``, noting when its first tick was read and when the n-th was applied."""

    def __init__(self, cache: ChainCache, lifecycle: Lifecycle, want: int, latency: Any) -> None:
        super().__init__(cache, lifecycle, min_coverage=1.0, connections=1, latency=latency)
        self.want = want
        self.first_read_at: float | None = None
        self.done_at: float | None = None
        self.done = asyncio.Event()

    def on_ticks(self, ticks: Sequence[Tick]) -> None:
        super().on_ticks(ticks)
        if self.first_read_at is None and ticks:
            self.first_read_at = ticks[0].received_at
        self._check_done()

    def on_batch(self, batch: FullTickBatch) -> None:
        super().on_batch(batch)
        if self.first_read_at is None and len(batch):
            self.first_read_at = batch.received_at
        self._check_done()

    def _check_done(self) -> None:
        if self.ticks >= self.want and self.done_at is None:
            self.done_at = time.time()
            self.done.set()


class IngestClients:
    def __init__(self, port: int, underlyings: list[str], expiries: int, strikes_per_side: int, today: str) -> None:
        config = universe_config(underlyings, expiries, strikes_per_side, today)
        self.universe = build_universe(config, config.today or ist_today())
        self.subs = subscriptions(self.universe)
        self.messages = messages(self.subs)
        self.url = f"ws://127.0.0.1:{port}/blast"

    async def ours(self, frames: int, timeout_s: float = 60.0) -> float:
        lifecycle = Lifecycle()
        lifecycle.to(Phase.WARMING, "bench")
        cache = ChainCache(self.universe.skeleton)
        metrics = Metrics(Health(lifecycle, stale_after_s=30.0, cache=cache))
        ingest = _CountingIngest(cache, lifecycle, frames, metrics.ingest_latency)
        metrics.attach_ingest(ingest)
        feed = DhanFeed(DhanFeedConfig(url=self.url), Credentials("1000000001", lambda: "bench-token"), self.subs)
        task = asyncio.create_task(feed.run(ingest))
        try:
            async with asyncio.timeout(timeout_s):
                await ingest.done.wait()
        finally:
            task.cancel()
            await asyncio.wait([task])
        stats = feed.connections[0].stats
        if stats.decode_errors or feed.unknown_instrument_packets or cache.ticks_unknown:
            raise AssertionError(f"frames did not all decode and apply: {stats}")
        assert ingest.first_read_at is not None and ingest.done_at is not None
        return (frames - 1) / (ingest.done_at - ingest.first_read_at)

    async def bare_websockets(self, frames: int) -> float:
        async with connect(self.url + QUERY, **WS_OPTIONS) as ws:  # type: ignore[arg-type]
            for m in self.messages:
                await ws.send(m)
            count = 0
            first = 0.0
            async for _ in ws:
                count += 1
                if count == 1:
                    first = time.time()
                elif count == frames:
                    break
            last = time.time()
        return (frames - 1) / (last - first)

    async def bare_aiohttp(self, frames: int) -> float:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(self.url + QUERY, compress=0, max_msg_size=2**20) as ws,
        ):
            for m in self.messages:
                await ws.send_str(m)
            count = 0
            first = 0.0
            async for _ in ws:
                count += 1
                if count == 1:
                    first = time.time()
                elif count == frames:
                    break
            last = time.time()
        return (frames - 1) / (last - first)


class MarkerReceiver:
    """A bare websockets client on ``/bare`` stamping each marker frame as it is read."""

    def __init__(self, port: int, marker_security_id: int) -> None:
        self.url = f"ws://127.0.0.1:{port}/bare{QUERY}"
        self.marker = marker_security_id.to_bytes(4, "little")
        self.seen: dict[str, float] = {}
        self.frames = 0
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._receive())
        async with asyncio.timeout(10):
            await self._connected.wait()

    async def _receive(self) -> None:
        async with connect(self.url, **WS_OPTIONS) as ws:  # type: ignore[arg-type]
            self._connected.set()
            marker, seen = self.marker, self.seen
            async for frame in ws:
                self.frames += 1
                if frame[4:8] == marker:
                    now = time.time()
                    seen[str(decode_packet(frame)[0].volume)] = now  # type: ignore[union-attr, arg-type]

    def collect(self) -> dict[str, Any]:
        seen = dict(self.seen)
        self.seen.clear()
        frames, self.frames = self.frames, 0
        return {"seen": seen, "frames": frames}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])


class CoverageReceiver:
    """Bare websockets clients subscribing the service's instruments, sharded as ``DhanFeed`` does."""

    def __init__(self, feed_url: str, underlyings: list[str], expiries: int, strikes_per_side: int) -> None:
        config = universe_config(underlyings, expiries, strikes_per_side, None)
        self.universe = build_universe(config, ist_today())
        self.url = feed_url + QUERY

    async def run(self, timeout_s: float = 60.0) -> dict[str, float]:
        groups = shard(subscriptions(self.universe))
        wanted = len(self.universe)
        seen: set[bytes] = set()
        first: list[float] = []
        done = asyncio.Event()
        done_at: list[float] = []

        async def one(group: list[Subscription]) -> None:
            async with connect(self.url, **WS_OPTIONS) as ws:  # type: ignore[arg-type]
                for m in messages(group):
                    await ws.send(m)
                async for frame in ws:
                    if not first:
                        first.append(time.time())
                    seen.add(frame[4:8])  # a connection's frames carry one packet each
                    if len(seen) >= wanted and not done_at:
                        done_at.append(time.time())
                        done.set()
                    if done.is_set():
                        return

        tasks = [asyncio.create_task(one(g)) for g in groups]
        try:
            async with asyncio.timeout(timeout_s):
                await done.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks)
        return {"first_to_covered_s": done_at[0] - first[0], "connections": len(groups)}
