"""The expiry roll: when an expiry ends (15:30 IST on its day) the chain set moves forward.

Every ``instruments.roll_check_s`` the roller asks which expiries are live now. When the set
changes, or once a day at ``instruments.reload_at`` (new contracts are listed overnight), it
reloads the scrip master, then applies the new set everywhere that depends on it, in order:
the cache (drops expired chains, adds new empty ones and bumps its ``layout_epoch``, which the
Redis mirror and the analytics runner follow: the mirror's next write is a full rewrite, so
replicas reload) and the feed (unsubscribe the expired instruments, subscribe the new ones on
the live sockets). Nothing is torn down; chains that stay keep their state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from feeds.calendar import MarketCalendar
from feeds.clock import SYSTEM_CLOCK, Clock, ist_now
from feeds.errors import FeedError, SubscriptionError
from feeds.model import ChainSkeleton
from feeds.source import FeedSource
from service.core.cache import ChainCache
from service.settings import Settings

log = logging.getLogger(__name__)


def live_skeleton(full: ChainSkeleton, max_expiries: int, now: float, calendar: MarketCalendar) -> ChainSkeleton:
    """The nearest ``max_expiries`` expiries per underlying that have not ended at ``now``."""
    out = {}
    for symbol, und in full.underlyings.items():
        live = [e for e in und.expiries if calendar.session_close(e.expiry).timestamp() > now]
        out[symbol] = dataclasses.replace(und, expiries=tuple(live[:max_expiries]))
    return ChainSkeleton(out, full.report)


def chain_keys(skeleton: ChainSkeleton) -> set[tuple[str, dt.date]]:
    return {(s, e.expiry) for s, u in skeleton.underlyings.items() for e in u.expiries}


class ExpiryRoller:
    def __init__(
        self,
        settings: Settings,
        full: ChainSkeleton,
        calendar: MarketCalendar,
        cache: ChainCache,
        feed: FeedSource,
        reload: Callable[[], Awaitable[ChainSkeleton]],
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.full = full
        self.calendar = calendar
        self.cache = cache
        self.feed = feed
        self.reload = reload
        self.clock = clock
        self.rolls = 0
        self._reloaded_on: dt.date | None = ist_now(clock).date()

    def current(self) -> ChainSkeleton:
        return live_skeleton(self.full, self.settings.instruments.max_expiries, self.clock.time(), self.calendar)

    def _reload_due(self) -> bool:
        now = ist_now(self.clock)
        return self._reloaded_on != now.date() and now.time() >= self.settings.instruments.reload_at

    async def roll_once(self) -> bool:
        """Check now; roll if the live chain set changed. True when it rolled."""
        expired = chain_keys(self.current()) != set(self.cache.chains)
        if expired or self._reload_due():
            try:
                self.full = await self.reload()
                self._reloaded_on = ist_now(self.clock).date()
            except (FeedError, OSError) as exc:
                log.warning("expiry roll: scrip master reload failed (%s); rolling with the list already loaded", exc)
        new = self.current()
        if chain_keys(new) == set(self.cache.chains):
            return False
        empty = [s for s, u in new.underlyings.items() if not u.expiries]
        if empty:
            log.error("expiry roll: no live expiries left for %s; keeping the current chains", ", ".join(empty))
            return False
        try:
            added_subs, removed_subs = await self._apply(new)
        except SubscriptionError as exc:
            log.error("expiry roll refused: %s", exc)
            return False
        self.rolls += 1
        log.info(
            "expiry roll: now serving %s; %d subscriptions added, %d removed",
            ", ".join(f"{s} {[e.expiry.isoformat() for e in u.expiries]}" for s, u in new.underlyings.items()),
            added_subs, removed_subs,
        )
        return True

    async def _apply(self, new: ChainSkeleton) -> tuple[int, int]:
        self.feed.check_capacity(new)  # before anything changes
        added, removed = self.cache.reconfigure(new)
        log.info("expiry roll: %d chains added, %d removed", len(added), len(removed))
        return await self.feed.update_skeleton(new)

    async def run(self) -> None:
        period = self.settings.instruments.roll_check_s
        while True:
            await asyncio.sleep(period)
            try:
                await self.roll_once()
            except Exception:  # a bug here must not end the roll for the rest of the day
                log.exception("expiry roll check failed; trying again in %gs", period)
