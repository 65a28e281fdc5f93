"""The downloaded scrip master, kept on disk one copy per IST day (``instruments.cache_dir``).

Dhan publishes a new scrip master every morning; downloading it is the one step of a start
that depends on a third party's web server. So a URL source is fetched through this cache:

* a copy of today (IST, by the injected clock) is reused: a restart the same day downloads
  nothing;
* otherwise the file is downloaded and, once it parses, written as today's copy (atomically:
  a reader never sees half a file); copies older than ``instruments.cache_keep_days`` go;
* a download that fails, or a body that does not parse, falls back to the newest good copy
  with a WARNING naming its date; only when there is none does the load fail (exit 2).

A filesystem source is read as it is, and with no ``cache_dir`` nothing is cached. The file's
format is the broker's (``feeds.master.InstrumentMaster``, chosen by ``service.feed_source``):
this module parses nothing itself.
Failing to write the cache is a WARNING, never a failed start.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from feeds.clock import SYSTEM_CLOCK, Clock, ist_now
from feeds.errors import InstrumentMasterError
from feeds.master import InstrumentMaster, is_url, shown_source
from feeds.model import ChainSkeleton

log = logging.getLogger(__name__)

_NAME = re.compile(r"^scrip-master-(\d{4}-\d{2}-\d{2})\.csv$")


class ScripMasterCache:
    """Dated copies in one directory: ``scrip-master-YYYY-MM-DD.csv``."""

    def __init__(self, directory: Path, *, keep_days: int = 7, clock: Clock = SYSTEM_CLOCK) -> None:
        self.directory = directory
        self.keep_days = keep_days
        self.clock = clock

    def today(self) -> dt.date:
        return ist_now(self.clock).date()

    def path_for(self, day: dt.date) -> Path:
        return self.directory / f"scrip-master-{day.isoformat()}.csv"

    def copies(self) -> list[tuple[dt.date, Path]]:
        """Every dated copy, newest first (none when the directory does not exist)."""
        found: list[tuple[dt.date, Path]] = []
        try:
            entries = list(self.directory.iterdir())
        except OSError:
            return []
        for path in entries:
            m = _NAME.match(path.name)
            if m and path.is_file():
                try:
                    found.append((dt.date.fromisoformat(m.group(1)), path))
                except ValueError:
                    continue
        return sorted(found, reverse=True)

    def store(self, day: dt.date, body: bytes) -> Path | None:
        """Write ``body`` as the copy of ``day`` (atomically) and prune old copies; None, with a
        WARNING, when the directory cannot be written."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".scrip-master-", suffix=".tmp", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(body)
                os.replace(tmp, self.path_for(day))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("cannot cache the scrip master in %s (instruments.cache_dir): %s", self.directory,
                        exc.strerror or exc)  # fmt: skip
            return None
        self.prune(day)
        return self.path_for(day)

    def prune(self, today: dt.date) -> None:
        oldest = today - dt.timedelta(days=self.keep_days)
        for day, path in self.copies():
            if day < oldest:
                path.unlink(missing_ok=True)


async def load_instruments(
    source: str,
    underlyings: Sequence[str],
    *,
    timeout_s: float,
    cache: ScripMasterCache | None = None,
    master: InstrumentMaster,
) -> ChainSkeleton:
    """The skeleton from ``source`` in ``master``'s format, through ``cache`` when it is a URL
    (see the module doc) and the master can be fetched and parsed apart."""
    if cache is None or not is_url(source) or master.fetch is None or master.parse is None:
        return await master.load(source, underlyings, timeout_s=timeout_s)
    today = cache.today()
    todays = cache.path_for(today)
    if todays.is_file():
        try:
            skeleton = await master.load(str(todays), underlyings, timeout_s=timeout_s)
        except InstrumentMasterError as exc:
            log.warning("today's cached scrip master is unusable (%s): downloading it again", exc)
        else:
            log.info("scrip master: today's copy reused from %s", todays)
            return skeleton
    shown = shown_source(source)
    try:
        body = await master.fetch(source, timeout_s=timeout_s)
        skeleton = await master.parse(body, underlyings, shown=shown)
    except InstrumentMasterError as failure:
        return await _fallback(cache, master, underlyings, timeout_s, failure, skip=todays)
    if cache.store(today, body) is not None:
        log.info("scrip master cached as %s", todays)
    return skeleton


async def _fallback(
    cache: ScripMasterCache, master: InstrumentMaster, underlyings: Sequence[str], timeout_s: float,
    failure: InstrumentMasterError, *, skip: Path,
) -> ChainSkeleton:
    """The newest cached copy that loads, with a WARNING naming its date; else the failure."""
    today = cache.today()
    for day, path in cache.copies():
        if path == skip:
            continue
        try:
            skeleton = await master.load(str(path), underlyings, timeout_s=timeout_s)
        except InstrumentMasterError as exc:
            log.warning("cached scrip master of %s is unusable: %s", day.isoformat(), exc)
            continue
        age = (today - day).days
        log.warning(
            "scrip master download failed (%s); using the cached copy of %s (%d day%s old) from %s: contracts "
            "listed since then are missing until a download succeeds",
            failure, day.isoformat(), age, "" if age == 1 else "s", path,
            extra={"cached_day": day.isoformat()},
        )
        return skeleton
    raise InstrumentMasterError(f"{failure}; and no usable cached copy in {cache.directory} (instruments.cache_dir)") from failure


def cache_for(cache_dir: Path | None, keep_days: int, clock: Clock = SYSTEM_CLOCK) -> ScripMasterCache | None:
    return None if cache_dir is None else ScripMasterCache(cache_dir, keep_days=keep_days, clock=clock)
