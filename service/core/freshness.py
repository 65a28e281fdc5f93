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
from dataclasses import dataclass, field
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
    # Calendar facts are asked on every request; they change only at whole seconds (session
    # boundaries, midnight IST), so they are computed once per second of the clock and once per
    # expiry — the same values as computing them every time, at a fraction of the cost.
    _memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

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
        return self.times_until(expiry, stale_legs, updated_at)[0]

    def times_until(self, expiry: dt.date, stale_legs: int, updated_at: float | None) -> tuple[ChainTimes, float]:
        """``times``, and an instant before which the same arguments give the same times: the end of
        the clock's current second (calendar facts change only at whole seconds), or, for a chain
        that would turn stale by age before then, a millisecond before it does (a margin for the
        rounding of ``now - updated_at``). Lets a reader skip recomputing them per request."""
        now = self.clock.time()
        second = int(now)
        today, state, next_open = self._calendar_at(second)
        stale = self._stale(stale_legs, updated_at, now)
        until = second + 1.0
        if not stale and updated_at is not None:
            until = min(until, updated_at + self.stale_after_s - 0.001)
        return ChainTimes(stale, max((expiry - today).days, 0), state, next_open), until

    def _calendar_at(self, second: int) -> tuple[dt.date, str, dt.datetime | None]:
        """(today in IST, market state, next open) at the whole second ``second``: every boundary
        is a whole second, so this is what ``now`` itself would give."""
        memo = self._memo
        if memo.get("second") != second:
            cal = self.calendar
            memo["facts"] = (dt.datetime.fromtimestamp(second, IST).date(), cal.state(second), cal.next_open(second))
            memo["second"] = second
        return memo["facts"]

    def nearest_expiry(self, expiries: Iterable[dt.date]) -> dt.date | None:
        """The first of ``expiries`` (ascending) that has not ended: an expiry ends at the close of
        its day's session (``MarketCalendar.session_close``), not at midnight."""
        now = self.clock.time()
        return next((e for e in expiries if self._expiry_end(e) > now), None)

    def _expiry_end(self, expiry: dt.date) -> float:
        key = ("end", expiry)
        end = self._memo.get(key)
        if end is None:
            if len(self._memo) > 1024:  # expiries roll forward for ever: keep the memo bounded
                self._memo.clear()
            end = self._memo[key] = self.calendar.session_close(expiry).timestamp()
        return end
