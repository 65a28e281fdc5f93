"""The sampler: every chain's ``/options/live`` body, every ``history.interval_s``, on the boundary.

A pass runs on the event loop between batches, like the analytics runner, and never touches
ingest: for each served chain it asks the ``ChainSource`` for the current snapshot (rendered at
most once per version, the same object ``/options/live`` sends) and keeps a ``Sample`` of its
body (``service.history.model.sample_of``: the series values read from the body, the body
compressed). A 250-strike chain costs ~3 ms per pass (parse ~1.5 ms, compress ~1 ms): at the
default 60 s interval that is 0.005 % of the loop per chain.

Passes are aligned to the interval (a 60 s interval samples at each whole minute of the
injected clock) and are taken only while the market calendar has a session open. ``t`` is
the instant of the pass, so the sampled body's ``as_of`` is at or before it.

After a pass, and on shutdown, days whose session has ended (the calendar's session close;
on an always-open calendar, the end of the IST day) are written to Parquet in a thread; a
failed write is counted, logged, kept in memory and tried again at the next trigger.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from types import TracebackType

from feeds.calendar import MarketCalendar
from feeds.clock import SYSTEM_CLOCK, Clock
from service.core.chains import ChainSource
from service.history.model import day_of_us, sample_of, us_of_epoch
from service.history.store import HistoryStore
from service.tasks import Child, Supervisor

log = logging.getLogger(__name__)

RETRY_MIN_S = 60.0  # a failed Parquet write is tried again at most this often


class HistorySampler:
    """Samples ``chains`` into ``store`` from its own task (``history``); an async context manager."""

    def __init__(self, chains: ChainSource, store: HistoryStore, *, calendar: MarketCalendar = MarketCalendar(),
                 clock: Clock = SYSTEM_CLOCK, supervisor: Supervisor | None = None) -> None:  # fmt: skip
        self._chains = chains
        self.store = store
        self._calendar = calendar
        self._clock = clock
        self._supervisor = supervisor
        self._child: Child | None = None
        self._retry_after: float | None = None  # monotonic: no Parquet retry before this
        self._writing: asyncio.Task[None] | None = None

    def sample_once(self, now: float | None = None) -> int:
        """One pass at ``now`` (the clock's, by default): a sample of every chain. Returns how many."""
        store = self.store
        started = time.perf_counter()
        now = self._clock.time() if now is None else now
        t_us = us_of_epoch(now)
        taken = 0
        for info in self._chains.underlyings():
            for e in info.expiries:
                snap = self._chains.snapshot(info.underlying, e.expiry)
                if snap is None:
                    continue
                day = store.days.get(day_of_us(t_us), {}).get((info.underlying, e.expiry))
                cache = day._strikes if day is not None else None
                sample = sample_of(snap.body, t_us, etag=snap.etag, strikes_cache=cache)
                taken += store.add(info.underlying, e.expiry, sample)
        stats = store.stats
        stats.passes += 1
        stats.samples += taken
        stats.seconds_total += time.perf_counter() - started
        return taken

    def _session_over(self, day: dt.date, now: float) -> bool:
        """A day is over once its session closed (always open: once the IST day ended)."""
        today = day_of_us(us_of_epoch(now))
        if day < today:
            return True
        cal = self._calendar
        if cal.always_open or cal.never_open:
            return False
        return now >= cal.session_close(day).timestamp()

    async def write_due(self, *, shutdown: bool = False) -> int:
        """Write to Parquet every (day, underlying) with unwritten samples whose session is over
        (every one on shutdown). Returns how many files were written."""
        store = self.store
        if not store.parquet:
            store.drop_past_days(store.today())
            return 0
        now = self._clock.time()
        if not shutdown and self._retry_after is not None and self._clock.monotonic() < self._retry_after:
            return 0
        due = [(d, u) for d, u in store.unwritten() if shutdown or self._session_over(d, now)]
        written = 0
        for day, underlying in due:
            chains = {k: cd for k, cd in store.days.get(day, {}).items() if k[0] == underlying}
            counts = {k: len(cd.samples) for k, cd in chains.items()}
            snapshot = {k[1]: list(cd.samples) for k, cd in chains.items()}
            try:
                path = await asyncio.to_thread(store.archive.write_day, underlying, day, snapshot)
            except Exception as exc:  # noqa: BLE001 - any failure: keep the day, count, say, retry
                store.stats.parquet_errors += 1
                self._retry_after = self._clock.monotonic() + max(RETRY_MIN_S, store.interval_s)
                log.error("history: writing %s %s to Parquet failed (kept in memory, retried at the next trigger): %s",
                          underlying, day, exc)  # fmt: skip
                continue
            for k, n in counts.items():
                store.written[(day, k)] = n
            store.stats.parquet_writes += 1
            written += 1
            self._retry_after = None
            log.info("history: %s %s written to %s (%d samples)", underlying, day, path, sum(counts.values()))
        store.drop_past_days(store.today())
        return written

    async def __aenter__(self) -> HistorySampler:
        self._child = (self._supervisor or Supervisor()).spawn("history", self._run)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop sampling, then write every unwritten day (shutdown is a Parquet trigger)."""
        if self._child is not None:
            await self._child.stop()
        try:
            await self.write_due(shutdown=True)
        except Exception:  # noqa: BLE001 - shutdown goes on; write_due logged what it could
            log.exception("history: writing Parquet at shutdown failed")

    async def _run(self) -> None:
        interval = self.store.interval_s
        while True:
            now = self._clock.time()
            boundary = (now // interval + 1) * interval
            while now < boundary:  # a timer may fire a little early: never sample before the boundary
                await asyncio.sleep(boundary - now)
                now = self._clock.time()
            if self._calendar.is_open(now):
                self.sample_once(now)
            await self.write_due()
