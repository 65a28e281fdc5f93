"""Where samples live: the primary's days in memory and in Redis, a replica's view of Redis.

``HistoryStore`` (the primary) owns the samples: one ``ChainDay`` per chain per IST day, the
sampler appending, everything else reading. Memory is bounded: today's session per chain,
plus past days only until they are written to Parquet (or at once when Parquet is off).

``RedisPart`` mirrors them into Redis through the Redis mirror's own flush (one MULTI/EXEC per
flush: a sample pass is one RPUSH per chain), and every full rewrite of the mirror (start, a
reconnect, a Redis that forgot: ``livechain:run`` changed) rewrites the days held too, so
history survives a Redis restart like the chains do. At start the store first loads what
Redis holds (``resume``): a restarted primary goes on with its day instead of starting blank.

``RedisHistory`` (a replica) reads the same keys on demand, keeping each chain's day it was
asked for and fetching only the samples appended since (``LLEN``, then ``LRANGE``).

Both answer ``HistorySource``, which the HTTP routes read; days they do not hold are read from
Parquet (``service.history.parquet``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence

import orjson
from dataclasses import dataclass
from typing import Any, Protocol

from feeds.clock import SYSTEM_CLOCK, Clock
from feeds.model import IST
from service.history import BadSample
from service.history.model import (
    ChainDay, Sample, day_of_us, decode, encode, layout_from_json, layout_id, layout_json, us_of_epoch,
)  # fmt: skip
from service.redis.layout import HISTORY_PREFIX, HISTORY_SETTINGS_KEY, chain_id, history_key, history_layouts_key

log = logging.getLogger(__name__)

ChainKey = tuple[str, dt.date]  # underlying, expiry


class HistorySource(Protocol):
    """What the HTTP routes read (the primary's ``HistoryStore``, a replica's ``RedisHistory``)."""

    interval_s: float
    max_query_days: int

    def today(self) -> dt.date:
        """The IST date of the clock's now."""

    async def sync(self) -> None:
        """Bring ``interval_s`` up to date (a replica reads the primary's)."""

    async def chain_day(self, underlying: str, expiry: dt.date, day: dt.date) -> ChainDay | None:
        """The chain's samples of ``day`` (None: none held anywhere)."""

    async def body_at(self, underlying: str, expiry: dt.date, t_us: int) -> tuple[int, bytes, str] | None:
        """(t, body, the ETag it was sent with) of the chain's last sample at or before ``t_us``
        (None: there is none)."""


@dataclass(slots=True)
class HistoryStats:
    samples: int = 0  # samples taken
    passes: int = 0  # sample passes
    seconds_total: float = 0.0  # time spent sampling
    parquet_writes: int = 0  # (day, underlying) files written
    parquet_errors: int = 0  # failed writes (the day is kept and retried)
    redis_samples_loaded: int = 0  # samples resumed from Redis at start
    bad_samples: int = 0  # stored samples that did not decode (skipped)


def expire_at(day: dt.date, keep_days: int) -> int:
    """Epoch seconds at which a day's Redis keys expire: its IST date's end plus ``keep_days``."""
    end = dt.datetime.combine(day + dt.timedelta(days=1 + keep_days), dt.time(0), IST)
    return int(end.timestamp())


def parse_history_key(key: str) -> tuple[dt.date, str, dt.date] | None:
    """``livechain:history:2026-11-23:NIFTY:2026-11-24`` → (day, underlying, expiry)."""
    try:
        day, underlying, expiry = key.removeprefix(HISTORY_PREFIX).split(":")
        return dt.date.fromisoformat(day), underlying, dt.date.fromisoformat(expiry)
    except ValueError:
        return None


async def _load_key(client: Any, day: dt.date, cid: str) -> tuple[list[bytes], dict[str, tuple[float, ...]]]:
    pipe = client.pipeline(transaction=True)
    pipe.lrange(history_key(day, cid), 0, -1)
    pipe.hgetall(history_layouts_key(day, cid))
    raws, layouts = await pipe.execute()
    return raws, {k.decode(): layout_from_json(v) for k, v in layouts.items()}


def _decode_all(raws: Sequence[bytes], layouts: dict[str, tuple[float, ...]], stats: HistoryStats) -> list[Sample]:
    out = []
    for raw in raws:
        try:
            out.append(decode(raw, layouts))
        except BadSample as exc:
            stats.bad_samples += 1
            log.warning("%s (skipped)", exc)
    return out


class HistoryStore:
    """The primary's samples; a ``HistorySource``."""

    def __init__(self, *, interval_s: float, max_query_days: int = 7, keep_days: int = 2, clock: Clock = SYSTEM_CLOCK,
                 archive: Any = None, parquet: bool = True) -> None:  # fmt: skip
        """``archive``: the Parquet archive (``service.history.parquet.ParquetArchive``) past days
        are read from and written to; None: none. ``parquet`` false: days are never written (and
        dropped from memory when the day changes)."""
        self.interval_s = interval_s
        self.max_query_days = max_query_days
        self.clock = clock
        self.archive = archive
        self.parquet = parquet and archive is not None
        self.days: dict[dt.date, dict[ChainKey, ChainDay]] = {}
        self.written: dict[tuple[dt.date, ChainKey], int] = {}  # samples of a chain's day already in Parquet
        self.stats = HistoryStats()
        self.redis = RedisPart(self, keep_days)

    def today(self) -> dt.date:
        return day_of_us(us_of_epoch(self.clock.time()))

    async def sync(self) -> None:
        return None

    def add(self, underlying: str, expiry: dt.date, sample: Sample) -> bool:
        day = day_of_us(sample.t_us)
        chains = self.days.setdefault(day, {})
        cd = chains.get((underlying, expiry))
        if cd is None:
            cd = chains[(underlying, expiry)] = ChainDay(underlying, expiry, day)
        if not cd.add(sample):
            return False
        self.redis.queue(day, underlying, expiry, sample)
        return True

    @property
    def nbytes(self) -> int:
        return sum(cd.nbytes for chains in self.days.values() for cd in chains.values())

    def unwritten(self) -> list[tuple[dt.date, str]]:
        """(day, underlying) with samples not yet in Parquet."""
        out = set()
        for day, chains in self.days.items():
            for key, cd in chains.items():
                if len(cd.samples) > self.written.get((day, key), 0):
                    out.add((day, key[0]))
        return sorted(out)

    def drop_past_days(self, today: dt.date) -> None:
        """Forget days before ``today`` that are safely written (or need not be)."""
        for day in [d for d in self.days if d < today]:
            if not self.parquet or not any(u for d, u in self.unwritten() if d == day):
                del self.days[day]
                self.written = {k: v for k, v in self.written.items() if k[0] != day}
                log.info("history of %s dropped from memory", day)

    # ------------------------------------------------------------------ HistorySource

    async def chain_day(self, underlying: str, expiry: dt.date, day: dt.date) -> ChainDay | None:
        cd = self.days.get(day, {}).get((underlying, expiry))
        if cd is not None:
            return cd
        if self.archive is not None:
            return await self.archive.chain_day(underlying, expiry, day)
        return None

    async def body_at(self, underlying: str, expiry: dt.date, t_us: int) -> tuple[int, bytes, str] | None:
        return await _body_at(self, underlying, expiry, t_us)

    # ------------------------------------------------------------------ resume

    async def resume(self, client: Any, timeout_s: float) -> int:
        """Load every day Redis holds (today's, and past days not yet dropped by their TTL, which
        are then written to Parquet like any unwritten day). Returns the samples loaded."""
        loaded = 0
        async with asyncio.timeout(timeout_s):
            keys = [k.decode() async for k in client.scan_iter(match=HISTORY_PREFIX + "*", count=1000)]
            for key in sorted(keys):
                parsed = parse_history_key(key)
                if parsed is None:
                    continue
                day, underlying, expiry = parsed
                raws, layouts = await _load_key(client, day, chain_id(underlying, expiry))
                for sample in _decode_all(raws, layouts, self.stats):
                    chains = self.days.setdefault(day, {})
                    cd = chains.setdefault((underlying, expiry), ChainDay(underlying, expiry, day))
                    loaded += cd.add(sample)
        self.stats.redis_samples_loaded += loaded
        return loaded


async def _body_at(source: HistorySource, underlying: str, expiry: dt.date, t_us: int
                   ) -> tuple[int, bytes, str] | None:  # fmt: skip
    """The last sample at or before ``t_us``: that day's, else the last of an earlier day (within
    ``max_query_days``)."""
    day = day_of_us(t_us)
    archive = getattr(source, "archive", None)
    for back in range(source.max_query_days):
        d = day - dt.timedelta(days=back)
        cd = await source.chain_day(underlying, expiry, d)
        if cd is not None and cd.samples:
            sample = cd.at(t_us)
            if sample is not None:
                if sample.body_len < 0 and archive is not None:  # a day read from Parquet: bodies stay on disk
                    body = await archive.body(underlying, expiry, d, sample.t_us)
                    return None if body is None else (sample.t_us, body, sample.etag)
                return sample.t_us, sample.body(), sample.etag
    return None


class RedisPart:
    """The history's share of the Redis mirror's flush (``service.redis.mirror.MirrorPart``)."""

    def __init__(self, store: HistoryStore, keep_days: int) -> None:
        self._store = store
        self._keep_days = keep_days
        self._queue: list[tuple[dt.date, str, Sample, bytes, str]] = []
        self._layouts_sent: set[tuple[dt.date, str, str]] = set()
        self._full = True  # the first write rewrites the days held (after resume)
        self.ready = False  # set once resume was tried: until then a rewrite would erase the day
        self.bytes_written = 0

    def queue(self, day: dt.date, underlying: str, expiry: dt.date, sample: Sample) -> None:
        if not self.ready:
            return  # the first full rewrite carries it
        lid = layout_id(sample.strikes)
        self._queue.append((day, chain_id(underlying, expiry), sample, encode(sample, lid), lid))

    @property
    def pending(self) -> int:
        """Samples not yet handed to a write, plus one while a full rewrite is due."""
        return len(self._queue) + (1 if self._full and self.ready else 0)

    def stage(self, pipe: Any, full: bool) -> object | None:
        """Add this part's commands to the mirror's transaction; returns a token for ``done``."""
        if not self.ready:
            return None
        full = full or self._full
        if full or self._queue:
            pipe.set(HISTORY_SETTINGS_KEY, orjson.dumps({"interval_s": self._store.interval_s}))
        if full:
            self._queue.clear()
            self._layouts_sent.clear()
            for day, chains in self._store.days.items():
                for (underlying, expiry), cd in chains.items():
                    if not cd.samples:
                        continue
                    cid = chain_id(underlying, expiry)
                    key, lkey = history_key(day, cid), history_layouts_key(day, cid)
                    layouts = {layout_id(s): layout_json(s) for s in {x.strikes for x in cd.samples}}
                    encoded = [encode(x, layout_id(x.strikes)) for x in cd.samples]
                    pipe.delete(key, lkey)
                    pipe.hset(lkey, mapping=layouts)
                    pipe.rpush(key, *encoded)
                    pipe.expire(key, self._ttl(day))
                    pipe.expire(lkey, self._ttl(day))
                    self._layouts_sent.update((day, cid, lid) for lid in layouts)
                    self.bytes_written += sum(map(len, encoded))
            self._full = False
            return ("full",)
        if not self._queue:
            return None
        taken, self._queue = self._queue, []
        by_key: dict[tuple[dt.date, str], list[bytes]] = {}
        for day, cid, sample, raw, lid in taken:
            if (day, cid, lid) not in self._layouts_sent:
                pipe.hset(history_layouts_key(day, cid), lid, layout_json(sample.strikes))
                pipe.expire(history_layouts_key(day, cid), self._ttl(day))
                self._layouts_sent.add((day, cid, lid))
            by_key.setdefault((day, cid), []).append(raw)
        for (day, cid), raws in by_key.items():
            pipe.rpush(history_key(day, cid), *raws)
            pipe.expire(history_key(day, cid), self._ttl(day))
            self.bytes_written += sum(map(len, raws))
        return ("append", taken)

    def _ttl(self, day: dt.date) -> int:
        """Seconds from the (injected) clock's now to the day's expiry: a relative TTL, so Redis's own
        clock never has to agree with ours."""
        return max(1, expire_at(day, self._keep_days) - int(self._store.clock.time()))

    def failed(self, token: object) -> None:
        """The transaction failed: whatever Redis holds now, rewrite the days held next time."""
        self._full = True
        self._layouts_sent.clear()


class RedisHistory:
    """A replica's history, read from the primary's Redis keys on demand; a ``HistorySource``."""

    def __init__(self, client: Any, *, interval_s: float, max_query_days: int = 7, clock: Clock = SYSTEM_CLOCK,
                 archive: Any = None, timeout_s: float = 5.0) -> None:  # fmt: skip
        self.client = client
        self.interval_s = interval_s
        self.max_query_days = max_query_days
        self.clock = clock
        self.archive = archive
        self.timeout_s = timeout_s
        self.stats = HistoryStats()
        self._days: dict[tuple[dt.date, ChainKey], ChainDay] = {}
        self._layouts: dict[tuple[dt.date, str], dict[str, tuple[float, ...]]] = {}

    def today(self) -> dt.date:
        return day_of_us(us_of_epoch(self.clock.time()))

    async def sync(self) -> None:
        """The primary's interval (its own setting until the primary has written one)."""
        async with asyncio.timeout(self.timeout_s):
            raw = await self.client.get(HISTORY_SETTINGS_KEY)
        if raw:
            try:
                self.interval_s = float(orjson.loads(raw)["interval_s"])
            except (ValueError, KeyError, TypeError):
                pass

    async def chain_day(self, underlying: str, expiry: dt.date, day: dt.date) -> ChainDay | None:
        key = (day, (underlying, expiry))
        cid = chain_id(underlying, expiry)
        today = self.today()
        # Bounded: today's chains and the day last asked for.
        for old in [k for k in self._days if k[0] not in (day, today)]:
            del self._days[old]
            self._layouts.pop((old[0], chain_id(*old[1])), None)
        cd = self._days.get(key)
        async with asyncio.timeout(self.timeout_s):
            n = await self.client.llen(history_key(day, cid))
            if n == 0:
                self._days.pop(key, None)
                if self.archive is not None and day != today:
                    return await self.archive.chain_day(underlying, expiry, day)
                return None
            if cd is None or n < len(cd.samples):  # new, or rewritten shorter: load whole
                raws, layouts = await _load_key(self.client, day, cid)
                self._layouts[(day, cid)] = layouts
                cd = ChainDay(underlying, expiry, day)
                for s in _decode_all(raws, layouts, self.stats):
                    cd.add(cd_sample(cd, s))
                self._days[key] = cd
                return cd
            if n > len(cd.samples):
                raws = await self.client.lrange(history_key(day, cid), len(cd.samples), -1)
                layouts = self._layouts.setdefault((day, cid), {})
                if any(_layout_of(r) not in layouts for r in raws):
                    layouts.update(
                        {k.decode(): layout_from_json(v)
                         for k, v in (await self.client.hgetall(history_layouts_key(day, cid))).items()}
                    )  # fmt: skip
                for s in _decode_all(raws, layouts, self.stats):
                    cd.add(cd_sample(cd, s))
        return cd

    async def body_at(self, underlying: str, expiry: dt.date, t_us: int) -> tuple[int, bytes, str] | None:
        return await _body_at(self, underlying, expiry, t_us)


def cd_sample(cd: ChainDay, sample: Sample) -> Sample:
    """The sample with its strikes tuple shared with the day's others of the same layout."""
    strikes = cd.layout(sample.strikes)
    if strikes is sample.strikes:
        return sample
    return Sample(sample.t_us, sample.head, strikes, sample.legs_z, sample.body_z, sample.body_len, sample.etag)


def _layout_of(raw: bytes) -> str | None:
    import orjson
    import struct

    try:
        hlen, _ = struct.unpack_from("<II", raw)
        return orjson.loads(raw[8 : 8 + hlen]).get("layout")
    except (struct.error, orjson.JSONDecodeError, AttributeError):
        return None
