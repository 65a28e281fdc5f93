"""The time-dependent rules of serving a chain, in one place: is it stale, which expiry is "nearest".

Both depend on the clock and the market calendar, and nothing else that a reader could
disagree about. The primary (``CacheChains``) and every read replica (``ReplicaStore``) ask
the same ``Freshness`` built from the same inputs — the replica gets the primary's calendar
and ``stale_after_s`` through Redis (``service.redis.layout.Catalog``) — so the same chain
state gives the same ``stale`` flag, the same body and the same ETag on any process, at any hour.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from feeds.calendar import MarketCalendar
from feeds.clock import SYSTEM_CLOCK, Clock


@dataclass(frozen=True, slots=True)
class Freshness:
    stale_after_s: float
    calendar: MarketCalendar
    clock: Clock = SYSTEM_CLOCK

    def is_stale(self, stale_legs: int, updated_at: float | None) -> bool:
        """Stale: a leg lost its feed and has had no data since (``stale_legs``), nothing was ever
        received, or, while the market is open, nothing changed for ``stale_after_s`` (a closed
        market is quiet, not stale)."""
        if stale_legs > 0 or updated_at is None:
            return True
        now = self.clock.time()
        return now - updated_at > self.stale_after_s and self.calendar.is_open(now)

    def nearest_expiry(self, expiries: Iterable[dt.date]) -> dt.date | None:
        """The first of ``expiries`` (ascending) that has not ended: an expiry ends at the close of
        its day's session (``MarketCalendar.session_close``), not at midnight."""
        now = self.clock.time()
        close = self.calendar.session_close
        return next((e for e in expiries if close(e).timestamp() > now), None)
