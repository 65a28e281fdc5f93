"""HTTP serving: the service's app on a chain under ticks, a bare aiohttp handler, a load client.

``ServingApp`` is the primary's HTTP stack as ``service.app`` composes it (``make_app`` over
``CacheChains``, its request counting, access log off, the option-analytics runner
where the service has one) on one NIFTY expiry of 251 strikes, with a ticker on the same
event loop applying Full ticks to random legs of that chain, in a batch every 5 ms, as the
Dhan feed hands them over: a ``FullTickBatch`` (the decoder's columns) to ``Ingest.on_batch``.

``BareServer`` is the floor: one aiohttp handler returning pre-built bytes of the same
length with the same headers (and a 304 when ``If-None-Match`` is the ETag), no middleware.

``LoadClient`` is a keep-alive HTTP/1.1 client on raw asyncio protocols (aiohttp's client
would be slower than the servers it measures): ``connections`` sockets, each sending its
next request as soon as the previous response is complete, for a fixed time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import re
import time
from typing import Any

import numpy as np
from aiohttp import web

from bench.roles.feed import universe_config
from bench.timing import percentile
from feeds.model import FULL_BATCH_COLUMNS, FullTick, FullTickBatch, pack_key
from feeds.simulator.universe import build_universe
from service.core.cache import ChainCache
from service.core.chains import CacheChains
from service.core.freshness import Freshness
from feeds.calendar import MarketCalendar
from service.core.health import Health
from service.http import HttpContext, make_app
from service.core.ingest import Ingest
from service.core.lifecycle import Lifecycle, Phase
from service.metrics import Metrics

BATCH_EVERY_S = 0.005
# Long enough that a quiet chain does not turn stale (and change its ETag) during a run.
STALE_AFTER_S = 3600.0


def _ticks(keys: list[Any], n: int, seed: int) -> list[FullTick]:
    rng = random.Random(seed)
    now = time.time()
    out = []
    for i in range(n):
        ltp = round(round(rng.uniform(1, 500) / 0.05) * 0.05, 2)
        out.append(
            FullTick(rng.choice(keys), ltp, 75, int(now) + i, ltp, 7500 + i, 1500, 2250, 30000 + i, 99.0, 98.5,
                     103.0, 97.0, round(ltp - 0.05, 2), 150, round(ltp + 0.05, 2), 225, now)
        )  # fmt: skip
    return out


class ServingApp:
    def __init__(self, strikes_per_side: int, rate: float, today: str) -> None:
        config = universe_config(["NIFTY"], 1, strikes_per_side, today)
        universe = build_universe(config, dt.date.fromisoformat(today))
        self.lifecycle = Lifecycle()
        self.lifecycle.to(Phase.WARMING, "bench")
        self.cache = ChainCache(universe.skeleton)
        self.health = Health(self.lifecycle, stale_after_s=STALE_AFTER_S, cache=self.cache)
        self.metrics = Metrics(self.health)
        self.ingest = Ingest(self.cache, self.lifecycle, min_coverage=1.0, connections=1,
                             latency=self.metrics.ingest_latency)  # fmt: skip
        self.metrics.attach_ingest(self.ingest)
        keys = [k for k, leg in self.cache.legs.items() if leg.contract is not None]
        index = next(k for k, leg in self.cache.legs.items() if leg.contract is None)
        # Every leg gets data (the readiness gate), then the ticker picks legs at random.
        self.ingest.on_ticks([t._replace(key=k) for t, k in zip(_ticks(keys, len(keys), 1), keys)])
        self.ingest.on_ticks([_ticks([index], 1, 2)[0]])
        assert self.ingest.gate.is_set()
        self.lifecycle.to(Phase.READY, "bench")
        pool = _ticks(keys, 8192, 3)
        columns = [[getattr(t, name) for t in pool] for name in FULL_BATCH_COLUMNS]
        self.pool = FullTickBatch([pack_key(t.key) for t in pool], columns, [t.total_sell_qty for t in pool],
                                  [t.total_buy_qty for t in pool], 0.0)  # fmt: skip
        self.rate = rate
        self.expiry = next(iter(self.cache.chains))[1]
        self.chains = CacheChains(self.cache, Freshness(STALE_AFTER_S, MarketCalendar(always_open=True)))
        self._ticker: asyncio.Task[None] | None = None
        self._applied = 0
        self._ticking_since = 0.0
        self._runner: web.AppRunner | None = None
        self._analytics: Any = None

    async def start(self) -> dict[str, Any]:
        try:  # option analytics, where the service has them (on by default): they re-version the chain
            from service.analytics.runner import AnalyticsRunner
            from service.settings import AnalyticsSettings
        except ImportError:
            pass
        else:
            self._analytics = await AnalyticsRunner(self.cache, AnalyticsSettings()).__aenter__()
        app = make_app(
            HttpContext(self.chains, self.lifecycle, health=self.health),
            http_metrics=self.metrics.http,
        )
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return {"port": self._runner.addresses[0][1], "path": f"/options/live?underlying=NIFTY&expiry={self.expiry}",
                **self.snapshot()}  # fmt: skip

    async def quiet(self, seconds: float = 0.6) -> dict[str, Any]:
        """Wait until the chain's version has not moved for ``seconds`` (analytics included); its snapshot."""
        while True:
            version = self.snapshot()["version"]
            await asyncio.sleep(seconds)
            snap = self.snapshot()
            if snap["version"] == version:
                return snap

    def snapshot(self) -> dict[str, Any]:
        snap = self.chains.snapshot("NIFTY", self.expiry)
        assert snap is not None
        return {"bytes": len(snap.body), "etag": snap.etag, "version": snap.version}

    def ticking(self, on: bool) -> float | None:
        """Start the ticker, or stop it and return the ticks/s it achieved."""
        if on:
            if self._ticker is None:
                self._applied = 0
                self._ticking_since = time.perf_counter()
                self._ticker = asyncio.create_task(self._tick())
            return None
        if self._ticker is None:
            return None
        self._ticker.cancel()
        self._ticker = None
        return self._applied / (time.perf_counter() - self._ticking_since)

    async def _tick(self) -> None:
        pool, n, on_batch = self.pool, len(self.pool), self.ingest.on_batch
        sell, buy = np.asarray(pool.total_sell_qty), np.asarray(pool.total_buy_qty)
        i = 0
        start = time.perf_counter()
        while True:
            await asyncio.sleep(BATCH_EVERY_S)
            due = int(self.rate * (time.perf_counter() - start)) - self._applied
            if due <= 0:
                continue
            at = (i + np.arange(due)) % n
            i = (i + due) % n
            on_batch(FullTickBatch.from_arrays(pool.keys[at], pool.prices[:, at], pool.ints[:, at], sell[at], buy[at],
                                               time.time()))  # fmt: skip
            self._applied += due

    async def stop(self) -> None:
        self.ticking(False)
        if self._analytics is not None:
            await self._analytics.__aexit__(None, None, None)
        if self._runner is not None:
            await self._runner.cleanup()


class BareServer:
    def __init__(self, body_bytes: int, etag: str, path: str) -> None:
        self.body = b'{"strikes":"' + b"x" * (body_bytes - 14) + b'"}'
        assert len(self.body) == body_bytes
        self.etag = etag
        self.path = path
        self._runner: web.AppRunner | None = None

    async def start(self) -> dict[str, Any]:
        body, etag = self.body, self.etag
        headers = {"ETag": etag, "Cache-Control": "no-cache"}

        async def live(request: web.Request) -> web.Response:
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers=headers)
            return web.Response(body=body, headers=headers, content_type="application/json")

        app = web.Application()
        app.router.add_get("/options/live", live)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return {"port": self._runner.addresses[0][1], "path": self.path}

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class _Poller(asyncio.Protocol):
    """One keep-alive connection sending the same request back to back until a deadline."""

    def __init__(self, request: bytes, deadline: float, latencies: list[float], statuses: dict[int, int],
                 closed: asyncio.Future[None]) -> None:  # fmt: skip
        self.request = request
        self.deadline = deadline
        self.latencies = latencies
        self.statuses = statuses
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need: int | None = None  # bytes of the current response (headers + body), once known
        self.sent_at = 0.0
        self.bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        if self.sent_at >= self.deadline:
            self.transport.close()
            return
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                status = int(buf[9:12])
                length = 0
                if status not in (204, 304):
                    m = _CONTENT_LENGTH.search(buf, 0, end + 2)
                    if m is None:
                        raise RuntimeError("response without Content-Length")
                    length = int(m.group(1))
                self.need = end + 4 + length
                self.statuses[status] = self.statuses.get(status, 0) + 1
            if len(buf) < self.need:
                return
            done = time.perf_counter()
            self.latencies.append(done - self.sent_at)
            self.bytes += self.need
            del buf[: self.need]
            self.need = None
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class LoadClient:
    async def run(
        self, port: int, path: str, seconds: float, connections: int, if_none_match: str | None = None
    ) -> dict[str, Any]:
        """Requests/s, latency percentiles (ms) and status counts over ``seconds``."""
        loop = asyncio.get_running_loop()
        extra = f"If-None-Match: {if_none_match}\r\n" if if_none_match else ""
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        start = time.perf_counter()
        deadline = start + seconds
        closed = [loop.create_future() for _ in range(connections)]
        pollers = []
        for fut in closed:
            _, poller = await loop.create_connection(
                lambda fut=fut: _Poller(request, deadline, latencies, statuses, fut), "127.0.0.1", port
            )
            pollers.append(poller)
        await asyncio.wait_for(asyncio.gather(*closed), seconds + 30)
        elapsed = time.perf_counter() - start
        return {
            "rps": len(latencies) / elapsed,
            "p50_ms": 1000 * percentile(latencies, 50),
            "p99_ms": 1000 * percentile(latencies, 99),
            "max_ms": 1000 * max(latencies),
            "requests": len(latencies),
            "statuses": {str(k): v for k, v in statuses.items()},
            "mb_per_s": sum(p.bytes for p in pollers) / elapsed / 1e6,
        }
