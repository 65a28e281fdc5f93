"""Rate-limited logging for problems that can repeat once per packet.

A malformed packet is worth a log line; a broker bug that sends a million of them is worth a
few, not a million. ``LogThrottle`` logs the first occurrence at once, then at most one line
per ``interval_s``, each saying how many occurrences there were in all and how many went
unlogged since the previous line, so a persistent problem stays visible at a bounded rate.
The exact count belongs in a metric; the log says that it is happening and what it looks like.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class LogThrottle:
    __slots__ = ("_logger", "_level", "_interval_s", "_clock", "_next_at", "count", "suppressed")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 60.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._logger = logger
        self._level = level
        self._interval_s = interval_s
        self._clock = clock
        self._next_at: float | None = None
        self.count = 0  # occurrences reported, logged or not
        self.suppressed = 0  # occurrences since the last line that was logged

    def __call__(self, msg: str, *args: object) -> bool:
        """Report one occurrence; log it unless a line was logged less than ``interval_s`` ago."""
        self.count += 1
        now = self._clock()
        if self._next_at is not None and now < self._next_at:
            self.suppressed += 1
            return False
        self._next_at = now + self._interval_s
        suppressed, self.suppressed = self.suppressed, 0
        self._logger.log(
            self._level,
            msg + " (%d so far, %d not logged since the previous line)",
            *args, self.count, suppressed,
            extra={"occurrences": self.count, "suppressed": suppressed},
        )
        return True
