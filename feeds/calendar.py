"""When the exchange is open: session hours in IST, weekends and a holiday list.

A feed that is silent while the market is closed is healthy; silent while it is open, it is
dead. The holiday list is data (``feeds/calendars/nse-holidays.toml``, shipped with the
package as ``NSE_HOLIDAYS``), not code: NSE publishes it once a year and sometimes amends it.
A year the list does not cover is not an error: every weekday of it is a session
(``covers_year`` lets the service say so at startup).
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from feeds.model import IST

# NSE's trading holidays (equity and equity derivatives), shipped inside the package.
NSE_HOLIDAYS: Traversable = files("feeds").joinpath("calendars", "nse-holidays.toml")


@dataclass(frozen=True, slots=True)
class MarketCalendar:
    open_time: dt.time = dt.time(9, 15)
    close_time: dt.time = dt.time(15, 30)
    holidays: frozenset[dt.date] = field(default_factory=frozenset)
    always_open: bool = False  # the simulator trades around the clock
    never_open: bool = False  # a replay: silence is never a dead feed
    # NSE's pre-open call auction (orders collected and matched before the session): 09:00–09:15.
    pre_open_time: dt.time = dt.time(9, 0)

    def __post_init__(self) -> None:
        if self.always_open and self.never_open:
            raise ValueError("a calendar cannot be both always and never open")
        if self.close_time <= self.open_time:
            raise ValueError("close_time must be after open_time")

    def covers_year(self, year: int) -> bool:
        """True when the holiday list has at least one date in ``year`` (NSE always has some):
        outside the years it covers, every weekday is treated as a session."""
        return any(day.year == year for day in self.holidays)

    def is_trading_day(self, day: dt.date) -> bool:
        return day.weekday() < 5 and day not in self.holidays

    def is_open(self, epoch_s: float) -> bool:
        """True while a session is in progress at the UTC instant ``epoch_s``."""
        if self.always_open or self.never_open:
            return self.always_open
        now = dt.datetime.fromtimestamp(epoch_s, IST)
        return self.is_trading_day(now.date()) and self.open_time <= now.time() < self.close_time

    def state(self, epoch_s: float) -> str:
        """``"pre_open"`` (a trading day from ``pre_open_time`` to ``open_time``), ``"open"`` or ``"closed"``."""
        if self.always_open or self.never_open:
            return "open" if self.always_open else "closed"
        now = dt.datetime.fromtimestamp(epoch_s, IST)
        if not self.is_trading_day(now.date()):
            return "closed"
        t = now.time()
        if self.open_time <= t < self.close_time:
            return "open"
        return "pre_open" if min(self.pre_open_time, self.open_time) <= t < self.open_time else "closed"

    def next_open(self, epoch_s: float, *, horizon_days: int = 31) -> dt.datetime | None:
        """The start of the next session that has not started yet at ``epoch_s`` (while a session
        runs: the following one); None for an always- or never-open calendar, or when no trading
        day falls within ``horizon_days``."""
        if self.always_open or self.never_open:
            return None
        now = dt.datetime.fromtimestamp(epoch_s, IST)
        day = now.date()
        for _ in range(horizon_days + 1):
            if self.is_trading_day(day):
                start = dt.datetime.combine(day, self.open_time, IST)
                if start > now:
                    return start
            day += dt.timedelta(days=1)
        return None

    def session_close(self, day: dt.date) -> dt.datetime:
        """The instant a day's session (and an expiry on that day) ends."""
        return dt.datetime.combine(day, self.close_time, IST)


def load_holidays(path: Path | Traversable = NSE_HOLIDAYS) -> frozenset[dt.date]:
    """Read ``holidays = [2026-01-26, ...]`` (TOML dates) from ``path`` (default: the packaged NSE list)."""
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    values = data.get("holidays")
    if not isinstance(values, list) or not all(isinstance(v, dt.date) for v in values):
        raise ValueError(f"{path}: expected 'holidays = [YYYY-MM-DD, ...]'")
    return frozenset(values)


def calendar_from(
    open_time: dt.time, close_time: dt.time, holidays: Iterable[dt.date], *, always_open: bool = False
) -> MarketCalendar:
    return MarketCalendar(open_time, close_time, frozenset(holidays), always_open)
