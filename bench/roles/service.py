"""The whole service in a process of its own, and the probe that watches what it publishes.

``Service`` runs ``service.app.running_service`` (the composition root the CLI runs) with
``feed.kind = dhan`` pointed at a bench feed server or the simulator. Its RSS is read once
the imports are loaded and before anything is started (the baseline: "the same process
with the imports loaded but no instruments"), and again once it is ready. With ``timed``,
``Ingest`` is subclassed in ``service.app`` (in this process only) to note when the first
tick was read, so "first data → ready" can be measured without touching the service.

``FreshnessProbe`` is a user of the service: one HTTP connection polling ``/options/live``
back to back, and a Redis subscriber on the chain's change channel. Each reads the marker
leg's ``volume`` (the sequence number the feed server put there) out of the raw bytes and
notes when each sequence number was first visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from redis.asyncio import Redis

import service.app
from bench.roles import peak_rss_bytes, rss_bytes
from feeds.model import FullTickBatch, Tick
from service.app import running_service
from service.core.ingest import Ingest
from service.redis.layout import chain_id, channel
from service.settings import Settings
from service.core.snapshot import render
from service.core.freshness import ChainTimes

DHAN_ENV = {"DHAN_CLIENT_ID": "1000000001", "DHAN_ACCESS_TOKEN": "bench-token"}  # the feed servers accept any


def service_settings(
    feed_url: str, scrip_master_url: str, underlyings: list[str], max_expiries: int, redis_url: str | None
) -> dict[str, Any]:
    """Settings for the service on a bench feed server: defaults, except what points at the bench.

    ``feed.kind = dhan`` (the client that talks to Dhan), ports chosen by the OS, the market
    always open, the Redis mirror on ``redis_url`` (off without one). Nothing may reach the
    network: Dhan's REST option chain, which the analytics seed from with ``feed.kind = dhan``,
    is not served by the bench, so seeding is off (analytics themselves stay on, as by default).
    """
    settings: dict[str, Any] = {
        "feed": {"kind": "dhan", "url": feed_url},
        "instruments": {"source": scrip_master_url, "underlyings": underlyings, "max_expiries": max_expiries},
        "http": {"port": 0},
        "metrics": {"port": 0},
        "market": {"schedule": "always_open"},
        "readiness": {"timeout_s": 60.0},
        "redis": {"url": redis_url, "enabled": True} if redis_url else {"enabled": False},
    }
    if "analytics" in Settings.model_fields:
        settings["analytics"] = {"seed": False}
    if "rest_url" in Settings.model_fields["feed"].annotation.model_fields:  # type: ignore[union-attr]
        settings["feed"]["rest_url"] = "http://127.0.0.1:9"  # never Dhan's: nothing listens there
    return settings


class _TimedIngest(Ingest):
    first_read_at: float | None = None

    def on_ticks(self, ticks: Sequence[Tick]) -> None:
        if self.first_read_at is None and ticks:
            self.first_read_at = ticks[0].received_at
        super().on_ticks(ticks)

    def on_batch(self, batch: FullTickBatch) -> None:
        if self.first_read_at is None and len(batch):
            self.first_read_at = batch.received_at
        super().on_batch(batch)


def _load_lazy_imports() -> None:
    """Load what the service imports at startup rather than at import time (history's pyarrow
    codec, ``service.history.setup.open_store``): it is part of the imports-only baseline, so
    the per-instrument figure (scenario ``scale``) counts instruments, not libraries (~34 MB)."""
    with contextlib.suppress(ImportError):
        from service.history.model import compress

        compress(b"")


class Service:
    def __init__(self) -> None:
        _load_lazy_imports()
        gc.collect()
        self.rss_base = rss_bytes()
        self._stack: contextlib.AsyncExitStack | None = None
        self._svc: Any = None

    def start(self) -> dict[str, Any]:
        return {"rss_base": self.rss_base}

    async def run(self, settings: dict[str, Any], timed: bool = False) -> dict[str, Any]:
        """Start the service; return when it is ready, with its ports and timings (epoch s)."""
        if timed:
            service.app.Ingest = _TimedIngest  # type: ignore[misc]
        self._stack = contextlib.AsyncExitStack()
        started = time.time()
        svc = self._svc = await self._stack.enter_async_context(running_service(Settings(**settings)))
        ready = time.time()
        return {
            "rss_ready": rss_bytes(),  # before any chain is rendered
            "http_port": svc.http_port,
            "started_at": started,
            "ready_at": ready,
            "first_read_at": getattr(svc.ingest, "first_read_at", None),
            "instruments": svc.cache.subscribed,
            "connections": len(svc.feed.connections),
        }

    async def settle(self) -> dict[str, Any]:
        """Render every chain once (as pollers would), wait for the mirror's full write; RSS."""
        svc = self._svc
        for chain in svc.cache.chains.values():
            render(chain, ChainTimes(False, 0, "open", None))
        if svc.mirror is not None:
            async with asyncio.timeout(30):
                while not svc.mirror.stats.connected:
                    await asyncio.sleep(0.01)
        gc.collect()
        return {"rss": rss_bytes(), "rss_peak": peak_rss_bytes(), "mirror": svc.mirror is not None}

    def ticks(self) -> int:
        return self._svc.ingest.ticks

    async def stop(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()


class FreshnessProbe:
    def __init__(self, http_port: int, path: str, marker_security_id: int, redis_url: str | None,
                 underlying: str, expiry: str) -> None:  # fmt: skip
        import datetime as dt

        self.url = f"http://127.0.0.1:{http_port}{path}"
        self.needle = b'"security_id":%d,' % marker_security_id
        self.redis_url = redis_url
        self.channel = channel(chain_id(underlying, dt.date.fromisoformat(expiry)))
        self._tasks: list[asyncio.Task[None]] = []
        self._seen: dict[str, dict[str, float]] = {}
        self._polls = 0
        self._session: aiohttp.ClientSession | None = None
        self._redis: Redis | None = None
        self._pubsub: Any = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        if self.redis_url is not None:
            self._redis = Redis.from_url(self.redis_url)
            self._pubsub = self._redis.pubsub()
            await self._pubsub.subscribe(self.channel)
            await self._pubsub.get_message(timeout=1.0)  # the subscribe confirmation

    def begin(self) -> None:
        self._seen = {"http": {}, "redis": {}}
        self._polls = 0
        self._tasks = [asyncio.create_task(self._poll())]
        if self._pubsub is not None:
            self._tasks.append(asyncio.create_task(self._listen()))

    async def end(self, settle_s: float) -> dict[str, Any]:
        started = time.perf_counter()
        await asyncio.sleep(settle_s)  # the last markers' way through
        for t in self._tasks:
            t.cancel()
        await asyncio.wait(self._tasks)
        for t in self._tasks:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        polls, self._polls = self._polls, 0
        return {"seen": self._seen, "polls": polls, "ended_at": time.time(), "settle_s": time.perf_counter() - started}

    def _read(self, data: bytes) -> int | None:
        at = data.find(self.needle)
        if at < 0:
            return None
        v = data.find(b'"volume":', at)
        end = data.find(b",", v)
        return int(data[v + 9 : end])

    async def _poll(self) -> None:
        assert self._session is not None
        seen = self._seen["http"]
        get, read = self._session.get, self._read
        while True:
            async with get(self.url) as resp:
                body = await resp.read()
            now = time.time()
            self._polls += 1
            seq = read(body)
            if seq is not None and str(seq) not in seen:
                seen[str(seq)] = now

    async def _listen(self) -> None:
        seen = self._seen["redis"]
        while True:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            now = time.time()
            seq = self._read(message["data"])
            if seq is not None and str(seq) not in seen:
                seen[str(seq)] = now

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._pubsub is not None:
            await self._pubsub.aclose()
        if self._redis is not None:
            await self._redis.aclose()
