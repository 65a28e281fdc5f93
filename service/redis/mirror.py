"""The Redis mirror: the chain written to Redis, its changes published, off the hot path.

Ingest never waits on Redis. The cache adds each changed leg to its ``dirty`` set (one
``set.add`` per tick); every ``flush_interval_s`` this task drains the set and writes the
legs' *current* state, so the buffer is bounded by the number of instruments and the latest
value per leg wins. One flush is one pipelined MULTI/EXEC (layout: ``service.redis.layout``):
per changed chain an HSET of its changed legs, an HSET of its meta, an XADD to the capped
``livechain:changes`` stream and a PUBLISH on ``livechain:changes:{chain}`` (the last two
carry the changed legs as one JSON object, encoded once). A chain whose analytics were
recomputed since the last flush (``service.analytics.runner``) is written too, with the
analytics JSON in its meta hash, stream entry and message; other flushes leave them out.
Other state can ride in the same transactions (``MirrorPart``: the history's samples,
``service.history.store.RedisPart``), rewritten whole with every full rewrite.

If a write fails the legs go back into the dirty set, the task backs off (exponential, full
jitter, capped) and, once Redis answers again, rewrites the whole state under a new ``run``:
nothing is lost, nothing is left stale, and readers know to reload.

A Redis that forgets without failing a command (restarted empty between two quiet flushes,
``FLUSHALL``, a failover to an empty node) is noticed too: at least every
``redis.verify_interval_s``, changes or not, the mirror reads ``livechain:run`` and rewrites
everything when it is not the run it wrote.

The mirror keeps no copy of the chain layout: each flush reads it from the cache, and a
change of the cache's ``layout_epoch`` (the expiry roll) since the last write makes the next
write a full rewrite. The epoch a write carried is recorded only once it succeeded, so a roll
that happens while a flush is in flight is never lost. Lag is measured from the
moment the oldest change in a flush was applied to the cache until that flush completed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from feeds.clock import SYSTEM_CLOCK, Clock
from service.core.cache import Chain, ChainCache, Leg
from service.core.freshness import Freshness
from service.errors import RedisUnavailable
from service.redis.client import REDIS_ERRORS, Backoff, close_client, describe, make_client, masked_url
from service.redis.layout import (
    ANALYTICS_FIELD,
    CATALOG_KEY,
    LEGS_PATTERN,
    META_PATTERN,
    RUN_KEY,
    STREAM_KEY,
    Catalog,
    CatalogChain,
    CatalogUnderlying,
    ChainMeta,
    chain_id,
    change_fields,
    change_message,
    channel,
    leg_field,
    legs_json,
    legs_key,
    meta_key,
)
from service.settings import RedisSettings
from service.core.snapshot import ist, leg_json
from service.tasks import Child, Supervisor

log = logging.getLogger(__name__)


class MirrorPart(Protocol):
    """More state the mirror writes in its transactions (``service.history.store.RedisPart``)."""

    @property
    def pending(self) -> int:
        """How much is waiting to be written (0: nothing)."""

    def stage(self, pipe: Any, full: bool) -> object | None:
        """Add commands to the flush's pipeline (everything when ``full``); a token, or None if none."""

    def failed(self, token: object) -> None:
        """The transaction carrying ``token`` failed: write everything next time."""


@dataclass(slots=True)
class MirrorStats:
    """Plain counters and gauges, read at scrape time (``service.core.health``, metrics)."""

    connected: bool = False
    flushes: int = 0  # successful writes, full rewrites included
    full_rewrites: int = 0
    legs_written: int = 0
    chains_written: int = 0
    commands: int = 0  # Redis commands sent in successful flushes, MULTI/EXEC included
    errors: int = 0  # failed connects and writes
    queue_depth: int = 0  # legs changed and not yet written, as of the last attempt
    lag_s_last: float | None = None  # oldest change → flush done, for the last flush that carried changes
    lag_s_max: float | None = None
    last_flush_at: float | None = None  # epoch seconds
    last_error: str | None = None
    verifications: int = 0  # checks that Redis still holds our run
    state_lost: int = 0  # times Redis was found without our run (restart, FLUSHALL, failover): rewritten


@dataclass(frozen=True, slots=True)
class FlushReport:
    """One successful flush, for an observer (a histogram, the benchmark)."""

    legs: int
    chains: int
    commands: int
    full: bool
    lag_s: float | None  # None when nothing had changed (a full rewrite of unchanged state)
    duration_s: float


class RedisMirror:
    """Mirrors ``cache`` into Redis from its own task; enter it as an async context manager."""

    def __init__(
        self,
        cache: ChainCache,
        settings: RedisSettings,
        *,
        freshness: Freshness | None = None,
        observer: Callable[[FlushReport], None] | None = None,
        on_connect: Callable[[MirrorStats], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        supervisor: Supervisor | None = None,
        parts: Sequence[MirrorPart] = (),
    ) -> None:
        """``parts``: more state written in the same transactions (the history's samples,
        ``service.history.store.RedisPart``), rewritten whole with every full rewrite.
        ``freshness``: the staleness inputs written into the catalog for replicas; ``observer``
        sees every successful flush; ``on_connect`` every (re)connection. The loop (task
        ``redis-mirror``) runs under ``supervisor`` (a private one if None), which restarts it
        after a crash (a bug: Redis errors are the loop's own to retry)."""
        self._cache = cache
        self._settings = settings
        self._freshness = freshness
        self._clock = clock
        self._required = settings.enabled is True
        self._observer = observer
        self._on_connect = on_connect
        self.url = masked_url(settings.url.get_secret_value())
        self.stats = MirrorStats()
        self._client = make_client(settings, name="livechain-mirror")
        self._backoff = Backoff(settings)
        self._stop = asyncio.Event()
        self._supervisor = supervisor
        self._child: Child | None = None
        self._token = secrets.token_hex(4)
        self._generation = 0
        self._seq = 0
        self._full = True  # the next write rewrites everything
        self._ever_connected = False
        self._down_since: float | None = None
        self._in_flight = 0
        self._analytics_sent: dict[Chain, object] = {}  # per chain, the analytics Redis holds
        self._epoch_written: int | None = None  # the cache's layout_epoch as of the last successful write
        self._verified_at: float | None = None  # monotonic: when Redis last confirmed our run
        self._parts = tuple(parts)

    def _catalog(self, run: str) -> Catalog:
        """The catalog of the cache's current layout (written with every full rewrite)."""
        cache = self._cache
        underlyings = []
        for symbol, expiries in cache.expiries.items():
            chains = tuple(
                CatalogChain(
                    symbol, expiry, chain.lot_size,
                    tuple((s, None if ce is None else ce.key[1], None if pe is None else pe.key[1])
                          for s, ce, pe in chain.rows),
                )
                for expiry in expiries
                for chain in (cache.chains[(symbol, expiry)],)
            )  # fmt: skip
            key = cache.index_keys[symbol]
            underlyings.append(CatalogUnderlying(symbol, key[0], key[1], chains))
        f = self._freshness
        return Catalog(
            run, tuple(underlyings), f.calendar if f else None, f.stale_after_s if f else None, broker=cache.broker
        )

    @property
    def run(self) -> str:
        """Names the current full rewrite: readers reload when it changes."""
        return f"{self._token}.{self._generation}"

    def _analytics_changed(self) -> bool:
        sent = self._analytics_sent
        return any(chain.analytics is not sent.get(chain) for chain in self._cache.chains.values())

    @property
    def pending(self) -> int:
        """Legs changed and not yet confirmed written by Redis, now (in-flight ones included),
        plus chains whose recomputed analytics are not yet confirmed written, plus one for a new
        layout (an expiry roll) not yet written."""
        cache = self._cache
        sent = self._analytics_sent
        unsent = sum(1 for chain in cache.chains.values() if chain.analytics is not sent.get(chain))
        written = self._epoch_written
        relayout = written is not None and written != cache.layout_epoch
        return len(cache.dirty) + self._in_flight + unsent + relayout + sum(p.pending for p in self._parts)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> RedisMirror:
        if self._required:
            try:
                await self._connect()
            except REDIS_ERRORS as exc:
                await self._client.aclose()
                raise RedisUnavailable(
                    f"redis.enabled = true but Redis at {self.url} is unavailable: {describe(exc)}"
                ) from exc
        self._child = (self._supervisor or Supervisor()).spawn("redis-mirror", self._run)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop after one last flush (bounded by ``timeout_s``), then close the connection."""
        self._stop.set()  # the loop flushes once more and returns
        if self._child is not None:
            await self._child.stop(grace_s=self._settings.timeout_s + self._settings.connect_timeout_s)
        await close_client(self._client, self._settings.timeout_s, "Redis mirror")

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self.stats.connected:
                    await self.step()
                else:
                    await self._connect()
                failures = 0
                delay = self._settings.flush_interval_s
            except REDIS_ERRORS as exc:
                failures += 1
                self._failed(exc)
                delay = self._backoff.delay(failures)
            if await self._stopped_within(delay):
                break
        if self.stats.connected:  # the last changes before shutdown
            try:
                await self.flush()
            except REDIS_ERRORS as exc:
                self._failed(exc)

    async def _stopped_within(self, delay_s: float) -> bool:
        try:
            async with asyncio.timeout(delay_s):
                await self._stop.wait()
        except TimeoutError:
            return False
        return True

    async def _connect(self) -> None:
        await self._client.ping()
        report = await self.flush()  # a full rewrite: self._full is set while disconnected
        self.stats.connected = True
        if self._on_connect is not None:
            self._on_connect(self.stats)
        legs = report.legs if report is not None else 0
        if not self._ever_connected:
            self._ever_connected = True
            log.info("Redis mirror connected to %s: full state written (%d legs)", self.url, legs)
        else:
            down_s = self._clock.monotonic() - self._down_since if self._down_since is not None else 0.0
            log.info(
                "Redis mirror reconnected to %s after %.1fs: full state rewritten (%d legs), run %s",
                self.url, down_s, legs, self.run,
            )
        self._down_since = None

    def _failed(self, exc: BaseException) -> None:
        stats = self.stats
        stats.errors += 1
        stats.last_error = describe(exc)
        stats.queue_depth = len(self._cache.dirty)
        self._full = True  # whatever Redis holds now, the next successful write replaces it
        if stats.connected:
            stats.connected = False
            self._down_since = self._clock.monotonic()
            log.warning(
                "Redis mirror lost %s (%s): ingest and HTTP carry on; retrying with backoff (at most %gs apart), "
                "then the full state is rewritten", self.url, stats.last_error, self._settings.reconnect_max_s,
            )
        elif stats.errors == 1 and not self._ever_connected:
            log.warning(
                "Redis mirror: Redis at %s is not available (%s); running without it and retrying quietly "
                "(at most %gs apart). Set redis.enabled = false to turn the mirror off.",
                self.url, stats.last_error, self._settings.reconnect_max_s,
            )
        else:
            log.debug("Redis mirror still unavailable at %s: %s", self.url, stats.last_error)

    # ------------------------------------------------------------------ one step

    async def step(self) -> FlushReport | None:
        """One turn of the mirror's loop: check Redis still holds our run when that is due, then flush."""
        due = self._verified_at is None or self._clock.monotonic() - self._verified_at >= self._settings.verify_interval_s
        if due:
            await self.verify()
        return await self.flush()

    async def verify(self) -> bool:
        """Ask Redis whether it still holds our run; if not, the next flush rewrites everything.

        Between two writes Redis may have been restarted empty, flushed or failed over to a
        node that never saw us, without any command of ours failing. Returns True when it
        holds our run (or a full rewrite is already due)."""
        async with asyncio.timeout(self._settings.timeout_s):
            held = await self._client.get(RUN_KEY)
        self._verified_at = self._clock.monotonic()
        self.stats.verifications += 1
        if self._full or held == self.run.encode():
            return True
        self.stats.state_lost += 1
        self._full = True
        log.warning(
            "Redis at %s no longer holds this mirror's state (run %s; Redis has %s): restarted, flushed or "
            "failed over; rewriting the full state", self.url, self.run, "none" if held is None else "another run",
        )
        return False

    async def flush(self) -> FlushReport | None:
        """Write what changed (everything after a failure, a lost state or a new layout) in one
        MULTI/EXEC; None if nothing to do."""
        cache = self._cache
        epoch = cache.layout_epoch
        full = self._full or epoch != self._epoch_written
        taken, since = cache.take_dirty()
        if not taken and not full and not self._analytics_changed() and not any(p.pending for p in self._parts):
            return None
        monotonic = self._clock.monotonic
        started = monotonic()
        self._in_flight = len(taken)
        # Cleared before the write: a request for a full rewrite made while it is in flight
        # (verify, a failure) survives it; a failure sets it again (_failed).
        self._full = False
        try:
            legs, chains, commands = await self._write(taken, full)
        except BaseException:
            cache.restore_dirty(taken, since)  # written again, with whatever came later
            self._full = self._full or full
            raise
        finally:
            self._in_flight = 0
        done = monotonic()
        # The layout this write carried; a roll during the write left layout_epoch ahead of it.
        self._epoch_written = epoch
        if full:
            self._verified_at = done  # the same transaction wrote our run
        stats = self.stats
        stats.flushes += 1
        stats.full_rewrites += full
        stats.legs_written += legs
        stats.chains_written += chains
        stats.commands += commands
        stats.queue_depth = len(cache.dirty)
        stats.last_flush_at = self._clock.time()
        lag = None if since is None else done - since
        if lag is not None:
            stats.lag_s_last = lag
            if stats.lag_s_max is None or lag > stats.lag_s_max:
                stats.lag_s_max = lag
        report = FlushReport(legs, chains, commands, full, lag, done - started)
        if self._observer is not None:
            self._observer(report)
        return report

    async def _write(self, taken: set[Leg], full: bool) -> tuple[int, int, int]:
        client = self._client
        current = self._cache.chains.values()
        by_chain: dict[Chain, list[tuple[str, bytes]]] = {}
        obsolete: list[str] = []
        if full:
            # Read before the first await: the layout this write carries is the cache's now.
            catalog = self._catalog(f"{self._token}.{self._generation + 1}")
            for chain in current:
                by_chain[chain] = [
                    (leg_field(strike, side), leg_json(leg))
                    for strike, ce, pe in chain.rows
                    for leg, side in ((ce, "CE"), (pe, "PE"))
                    if leg is not None
                ]
        else:
            for leg in taken:
                contract = leg.contract
                if contract is None:  # the underlying index: its price is in every chain's meta
                    for chain in leg.chains:
                        by_chain.setdefault(chain, [])
                else:
                    by_chain.setdefault(leg.chains[0], []).append(
                        (leg_field(contract.strike, contract.option_type.value), leg_json(leg))
                    )

        # Analytics recomputed since they were last written (every chain's, on a full rewrite).
        sent = self._analytics_sent
        analytics: dict[Chain, bytes] = {}
        for chain in current:
            current = chain.analytics
            if current is not None and (full or current is not sent.get(chain)):
                analytics[chain] = current.to_json()
                by_chain.setdefault(chain, [])
        written = {chain: chain.analytics for chain in analytics}
        cids = {chain: chain_id(chain.underlying, chain.expiry) for chain in by_chain}
        if full:
            # Keys of chains a previous run wrote and this one does not serve must go too.
            async for key in client.scan_iter(match=LEGS_PATTERN, count=1000):
                obsolete.append(key)
            async for key in client.scan_iter(match=META_PATTERN, count=1000):
                obsolete.append(key)

        generation = self._generation + 1 if full else self._generation
        run = f"{self._token}.{generation}"
        seq = 0 if full else self._seq
        maxlen = self._settings.stream_maxlen
        pipe = client.pipeline(transaction=True)
        if full:
            ours = [k for c in cids.values() for k in (legs_key(c), meta_key(c))]
            pipe.delete(*{*obsolete, *ours})
            pipe.set(CATALOG_KEY, catalog.to_json())
            pipe.set(RUN_KEY, run)
        legs_n = 0
        for chain, legs in by_chain.items():
            cid = cids[chain]
            meta = ChainMeta(chain.version, chain.updated_at, chain.index.ltp, chain.stale_legs)
            meta_fields = meta.fields()
            changed = legs_json(legs)
            raw = analytics.get(chain)
            seq += 1
            if legs:
                pipe.hset(legs_key(cid), mapping=dict(legs))
                legs_n += len(legs)
            pipe.hset(meta_key(cid), mapping=meta_fields if raw is None else {**meta_fields, ANALYTICS_FIELD: raw})
            pipe.xadd(
                STREAM_KEY, change_fields(run, seq, cid, full, meta_fields, changed, raw), maxlen=maxlen,
                approximate=True,
            )
            pipe.publish(
                channel(cid),
                change_message(
                    run, seq, chain.underlying, chain.expiry, full, meta, ist(chain.updated_at), changed, raw
                ),
            )
        staged = [(part, part.stage(pipe, full)) for part in self._parts]
        commands = len(pipe) + 2  # MULTI and EXEC
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                await pipe.execute()
        except BaseException:
            for part, token in staged:
                if token is not None:
                    part.failed(token)
            raise
        self._generation, self._seq = generation, seq
        self._analytics_sent = written if full else {**self._analytics_sent, **written}
        return legs_n, len(by_chain), commands
