"""When analytics are computed: every ``analytics.interval_s``, for the chains that changed.

Analytics depend on every leg of a chain and on the time, so they are never computed per tick
(``ChainCache.apply`` stays as cheap as it was): a pass runs on the event loop, between
batches, over each chain whose version moved since its last analytics, and hands the result
to the cache's owner method ``set_analytics`` (which gives the chain a new version, so the
next render and the next mirror flush carry it). A quiet chain keeps its analytics and their
``analytics_as_of``.

The cost of every chain's pass is kept (plain numbers, read at scrape time by
``service.metrics``), so the price of analytics per chain is visible in production.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from types import TracebackType

from feeds.throttle import LogThrottle
from feeds.calendar import MarketCalendar
from feeds.clock import SYSTEM_CLOCK, Clock
from service.analytics.compute import analyse
from service.core.cache import Chain, ChainCache
from service.settings import AnalyticsSettings
from service.tasks import Child, Supervisor

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AnalyticsStats:
    passes: int = 0  # chains computed
    seconds_total: float = 0.0  # time spent computing them
    errors: int = 0
    last_seconds: dict[tuple[str, str], float] = field(default_factory=dict)  # (underlying, expiry) → last pass


class AnalyticsRunner:
    """Computes the analytics of changed chains from its own task; enter it as an async context manager."""

    def __init__(
        self,
        cache: ChainCache,
        settings: AnalyticsSettings,
        *,
        calendar: MarketCalendar = MarketCalendar(),
        clock: Clock = SYSTEM_CLOCK,
        supervisor: Supervisor | None = None,
    ) -> None:
        """The task (``analytics``) runs under ``supervisor`` (a private one if None), which
        restarts it after a crash; an error analysing one chain is counted, not a crash."""
        self._cache = cache
        self._interval_s = settings.interval_s
        self._settings = settings
        self._calendar = calendar
        self._clock = clock
        self._seen: dict[Chain, int] = {}  # chain → its version right after its analytics were installed
        self._epoch = cache.layout_epoch  # the cache layout _seen was kept for
        self._supervisor = supervisor
        self._child: Child | None = None
        self._errors = LogThrottle(log, level=logging.ERROR)
        self.stats = AnalyticsStats()

    def run_once(self) -> int:
        """One pass: analyse every chain that changed since its last analytics. Returns how many."""
        cache = self._cache
        seen = self._seen
        now = self._clock.time()
        done = 0
        current = list(cache.chains.values())
        if self._epoch != cache.layout_epoch:  # the expiry roll removed chains: forget them
            self._epoch = cache.layout_epoch
            alive = set(current)
            self._seen = seen = {c: v for c, v in seen.items() if c in alive}
            names = {(c.underlying, c.expiry.isoformat()) for c in current}
            self.stats.last_seconds = {k: v for k, v in self.stats.last_seconds.items() if k in names}
        for chain in current:
            if seen.get(chain) == chain.version:
                continue
            started = time.perf_counter()
            try:
                result = analyse(chain, now, self._settings, self._calendar)
            except Exception as exc:  # a bug: keep serving (without fresh analytics), say so loudly
                self.stats.errors += 1
                if self.stats.errors == 1:
                    log.exception("analytics of %s %s failed; the chain keeps its last analytics", chain.underlying,
                                  chain.expiry)  # fmt: skip
                else:
                    self._errors("analytics of %s %s failed: %r", chain.underlying, chain.expiry, exc)
                seen[chain] = chain.version  # not again until the chain changes
                continue
            elapsed = time.perf_counter() - started
            cache.set_analytics(chain, result)
            seen[chain] = chain.version
            stats = self.stats
            stats.passes += 1
            stats.seconds_total += elapsed
            stats.last_seconds[(chain.underlying, chain.expiry.isoformat())] = elapsed
            done += 1
        return done

    async def __aenter__(self) -> AnalyticsRunner:
        self._child = (self._supervisor or Supervisor()).spawn("analytics", self._run)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._child is not None:
            await self._child.stop()

    async def _run(self) -> None:
        while True:
            self.run_once()
            await asyncio.sleep(self._interval_s)
