"""Health: is the process serving, and if it is, what is wrong with what it serves.

``ready`` means the readiness gate passed and we are not stopping (lifecycle READY or
DEGRADED). A ready process can still be *degraded*; the reasons are assessed when asked (a
``/readyz`` request, a scrape) from state its owners already keep, so nothing is polled:

* ``feed_connections``: every feed connection is up (a lost one marks its instruments stale);
* ``feed_fresh``: while the market is open, every connection received data within
  ``stale_after_s``; outside market hours silence is normal and the check passes;
* ``redis``: a Redis mirror is configured and connected (omitted when there is no mirror).

Parts are attached as startup creates them (``cache``, ``feed``, ``mirror``); whatever is
not there yet is simply not assessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from feeds.clock import SYSTEM_CLOCK, Clock
from service.core.cache import ChainCache
from service.core.lifecycle import Lifecycle, Phase


class _Stats(Protocol):
    connected: bool
    last_frame_at: float | None
    last_error: str | None


class _Connection(Protocol):
    index: int
    stats: _Stats


class FeedLike(Protocol):
    """What health reads of a feed: its connections' plain stats and its market calendar."""

    @property
    def connections(self) -> Sequence[_Connection]: ...

    def is_market_open(self, now: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class HealthReport:
    phase: Phase
    reason: str  # why the lifecycle is where it is
    ready: bool
    status: str  # the phase, except "degraded" for a ready process with problems
    problems: tuple[str, ...]
    checks: dict[str, bool] = field(default_factory=dict)
    market_open: bool | None = None
    subscribed: int | None = None
    covered: int | None = None

    def verdict(self) -> dict[str, Any]:
        """The assessment's fields of a /readyz body (the lifecycle's are added by the caller)."""
        return {
            "status": self.status,
            "problems": list(self.problems),
            "checks": self.checks,
            "market_open": self.market_open,
        }

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ready": self.ready,
            "phase": self.phase.value,
            "reason": self.reason,
            **self.verdict(),
        }
        if self.subscribed is not None and self.covered is not None:
            body["coverage"] = round(self.covered / self.subscribed, 6) if self.subscribed else 1.0
            body["instruments"] = self.subscribed
            body["covered"] = self.covered
        return body


class Health:
    def __init__(
        self,
        lifecycle: Lifecycle,
        *,
        stale_after_s: float,
        cache: ChainCache | None = None,
        feed: FeedLike | None = None,
        mirror: object | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.lifecycle = lifecycle
        self.stale_after_s = stale_after_s
        self.cache = cache
        self.feed = feed
        # Duck-typed Redis mirror stats: only ``connected`` (and ``errors``) are read.
        self.mirror = mirror
        self._clock = clock

    def report(self) -> HealthReport:
        lc = self.lifecycle
        now = self._clock.time()
        checks: dict[str, bool] = {}
        problems: list[str] = []
        market_open: bool | None = None
        feed = self.feed
        if feed is not None:
            down = [c for c in feed.connections if not c.stats.connected]
            checks["feed_connections"] = not down
            for c in down:
                problems.append(f"feed connection {c.index} down: {c.stats.last_error or 'not connected yet'}")
            market_open = feed.is_market_open(now)
            silent = []
            if market_open:
                for c in feed.connections:
                    last = c.stats.last_frame_at
                    if c.stats.connected and (last is None or now - last > self.stale_after_s):
                        silent.append(f"{c.index} ({'never' if last is None else f'{now - last:.0f}s'})")
            checks["feed_fresh"] = not silent
            if silent:
                problems.append(
                    f"no feed data for over {self.stale_after_s:g}s while the market is open on connection(s) "
                    + ", ".join(silent)
                )
        mirror = self.mirror
        if mirror is not None:
            connected = bool(getattr(mirror, "connected", False))
            checks["redis"] = connected
            if not connected:
                # The mirror's last error text is not shown: it may quote a URL with a password.
                problems.append(f"redis mirror disconnected ({getattr(mirror, 'errors', 0)} errors so far)")
        # The lifecycle's reason for a lost feed connection is the feed check's problem in other
        # words (ingest's reason vs the connection's last error): list each problem once.
        reported = feed is not None and lc.reason.startswith("feed connection ")
        if lc.phase is Phase.DEGRADED and lc.reason not in problems and not reported:
            problems.insert(0, lc.reason)
        ready = lc.serving
        status = "degraded" if ready and problems else lc.phase.value
        cache = self.cache
        return HealthReport(
            phase=lc.phase,
            reason=lc.reason,
            ready=ready,
            status=status,
            problems=tuple(problems),
            checks=checks,
            market_open=market_open,
            subscribed=cache.subscribed if cache is not None else None,
            covered=cache.covered if cache is not None else None,
        )
