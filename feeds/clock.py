"""The one clock: every "what time (or day) is it" in livechain asks a ``Clock``.

A clock has two faces: ``time()``, the wall clock as UTC epoch seconds (what market hours,
expiries, staleness, versions and timestamps on the wire are about), and ``monotonic()``,
for measuring intervals (backoff, lag, deadlines). Production passes ``SYSTEM_CLOCK``; tests
pass a ``ManualClock`` (time stands still until the test moves it) or a ``ShiftedClock``
(time runs at the real pace from a chosen instant), so no expectation depends on today's date.

``asyncio`` sleeps and timeouts keep using the event loop's own monotonic clock: a clock
decides *what time it is*, never how long to wait.
"""

from __future__ import annotations

import datetime as dt
import time as _time
from typing import Protocol

from feeds.model import IST


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock time, UTC epoch seconds."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for intervals."""


class SystemClock:
    """The machine's clocks."""

    __slots__ = ()

    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()


class ManualClock:
    """A clock that stands still until told: ``advance(s)`` moves both faces, ``set(epoch)`` the wall."""

    __slots__ = ("_wall", "_mono")

    def __init__(self, epoch_s: float) -> None:
        self._wall = float(epoch_s)
        self._mono = 0.0

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back; use set() to move the wall clock")
        self._wall += seconds
        self._mono += seconds

    def set(self, epoch_s: float) -> None:
        self._wall = float(epoch_s)

    def __repr__(self) -> str:
        return f"ManualClock({self._wall!r})"


class ShiftedClock:
    """The real clocks' pace, starting at ``epoch_s``: for runs against real sockets and timers
    that must believe it is a given day and hour."""

    __slots__ = ("_offset",)

    def __init__(self, epoch_s: float) -> None:
        self._offset = float(epoch_s) - _time.monotonic()

    def time(self) -> float:
        return _time.monotonic() + self._offset

    monotonic = staticmethod(_time.monotonic)

    def set(self, epoch_s: float) -> None:
        """Jump the wall clock to ``epoch_s``; it runs on from there (the monotonic face never jumps)."""
        self._offset = float(epoch_s) - _time.monotonic()

    def __repr__(self) -> str:
        return f"ShiftedClock(now={self.time()!r})"


def ist_now(clock: Clock) -> dt.datetime:
    """The clock's time as an aware IST datetime."""
    return dt.datetime.fromtimestamp(clock.time(), IST)


def ist_instant(day: dt.date, at: dt.time) -> float:
    """The UTC epoch seconds of ``at`` (IST wall clock) on ``day``."""
    return dt.datetime.combine(day, at, IST).timestamp()
