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
from typing import Any, NamedTuple

from feeds.calendar import MarketCalendar
from feeds.clock import SYSTEM_CLOCK, Clock
from feeds.model import IST


class ChainTimes(NamedTuple):
    """The parts of a chain's body that depend on the clock alone (with ``stale``, on the clock and
    the chain's update time): a render is reused only while they are the same."""

    stale: bool
    days_to_expiry: int  # calendar days from today (IST) to the expiry date; 0 on the day
    market_state: str  # "pre_open" | "open" | "closed"
    next_open: dt.datetime | None  # the next session's start (IST); None: always / never open

    def head(self) -> dict[str, Any]:
        return {
            "days_to_expiry": self.days_to_expiry,
            "market": {"state": self.market_state, "next_open": self.next_open},
        }


@dataclass(frozen=True, slots=True)
class Freshness:
    stale_after_s: float
    calendar: MarketCalendar
    clock: Clock = SYSTEM_CLOCK

    def is_stale(self, stale_legs: int, updated_at: float | None) -> bool:
        """Stale: a leg lost its feed and has had no data since (``stale_legs``), nothing was ever
        received, or, while the market is open, nothing changed for ``stale_after_s`` (a closed
        market is quiet, not stale)."""
        return self._stale(stale_legs, updated_at, self.clock.time())

    def _stale(self, stale_legs: int, updated_at: float | None, now: float) -> bool:
        if stale_legs > 0 or updated_at is None:
            return True
        return now - updated_at > self.stale_after_s and self.calendar.is_open(now)

    def times(self, expiry: dt.date, stale_legs: int, updated_at: float | None) -> ChainTimes:
        """Everything time-dependent in a chain's body, at one reading of the clock."""
        now = self.clock.time()
        cal = self.calendar
        today = dt.datetime.fromtimestamp(now, IST).date()
        return ChainTimes(
            self._stale(stale_legs, updated_at, now), max((expiry - today).days, 0), cal.state(now), cal.next_open(now)
        )

    def nearest_expiry(self, expiries: Iterable[dt.date]) -> dt.date | None:
        """The first of ``expiries`` (ascending) that has not ended: an expiry ends at the close of
        its day's session (``MarketCalendar.session_close``), not at midnight."""
        now = self.clock.time()
        close = self.calendar.session_close
        return next((e for e in expiries if close(e).timestamp() > now), None)
