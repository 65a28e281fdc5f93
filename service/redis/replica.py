"""A read replica: the HTTP API served from Redis alone, with no broker connection.

``ReplicaFollower`` loads the whole state in one MULTI/EXEC (catalog, every chain's meta and
legs, and the stream's last entry, so the snapshot and the stream position agree), then
follows ``livechain:changes`` with XREAD BLOCK. A new ``run`` (the primary rewrote everything)
or a gap in ``seq`` (entries trimmed before we read them) means reload; a lost connection
means not ready (503 on /readyz, chains reported stale) until Redis answers and a reload
succeeds. ``ReplicaStore`` keeps what the body needs — each leg's JSON bytes as the primary
wrote them, and each chain's analytics as the primary computed them (never recomputed here:
they depend on the time) — and renders through ``service.core.snapshot.chain_snapshot``, so for the same chain
state the replica's body and ETag are the primary's, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson

from service.analytics.compute import ChainAnalytics
from service.core.chains import ExpiryInfo, UnderlyingInfo
from feeds.clock import SYSTEM_CLOCK, Clock
from service.core.freshness import Freshness
from service.errors import ReadinessTimeout
from service.feed_source import market_calendar
from service.auth import load_api_keys
from service.core.health import Health
from service.http import HttpContext, bind_http, make_app, serve_http
from service.stream import StreamConfig
from service.metrics import METRICS_MAX_CONNECTIONS, Metrics, metrics_server
from service.core.lifecycle import Lifecycle, Phase
from service.redis.client import (
    REDIS_ERRORS,
    Backoff,
    close_client,
    describe,
    make_client,
    masked_url,
)
from service.redis.layout import (
    CATALOG_KEY,
    STREAM_KEY,
    Catalog,
    ChainMeta,
    Change,
    leg_field,
    legs_key,
    meta_analytics,
    meta_key,
    parse_change,
)
from service.settings import RedisSettings, Settings
from service.core.snapshot import ChainSnapshot, chain_snapshot
from service.tasks import Child, Supervisor

log = logging.getLogger(__name__)

XREAD_COUNT = 1000  # entries per read: bounds one read's memory and one apply's time


class StateUnavailable(Exception):
    """Redis answers but holds no complete livechain state (no primary yet, or a bad one)."""


# What malformed JSON or a missing or non-numeric field raises while decoding our layout.
_MALFORMED = (KeyError, ValueError, TypeError, orjson.JSONDecodeError)


def _parse(entry_id: bytes, fields: Mapping[bytes, bytes]) -> Change:
    try:
        return parse_change(fields)
    except _MALFORMED as exc:
        raise StateUnavailable(f"unreadable stream entry {entry_id.decode()}: {exc!r}") from exc


class ReplicaChain:
    __slots__ = ("underlying", "expiry", "lot_size", "rows", "legs", "meta", "analytics", "rendered")

    def __init__(
        self, underlying: str, expiry: dt.date, lot_size: int, rows: list[tuple[float, str | None, str | None]],
        legs: dict[str, bytes], meta: ChainMeta, analytics: ChainAnalytics | None = None,
    ) -> None:  # fmt: skip
        self.underlying = underlying
        self.expiry = expiry
        self.lot_size = lot_size
        self.rows = rows  # strike, CE leg field, PE leg field (None: no contract)
        self.legs = legs  # leg field → the leg's JSON object, as the primary wrote it
        self.meta = meta
        self.analytics = analytics  # as the primary computed them: they depend on the time
        self.rendered: ChainSnapshot | None = None


@dataclass(frozen=True, slots=True)
class _Loaded:
    catalog: Catalog
    chains: dict[str, ReplicaChain]
    last_id: bytes
    seq: int | None


class ReplicaStore:
    """The replica's chains, read-only to HTTP; a ``ChainSource`` like the primary's cache.

    Staleness and the nearest expiry follow the primary's rule with the primary's inputs: the
    catalog carries its market calendar and ``stale_after_s``; ``fallback`` (this process's
    settings) is used only with a catalog from a writer that sent none.
    """

    def __init__(self, fallback: Freshness) -> None:
        self._fallback = fallback
        self.freshness = fallback
        self.run: str | None = None
        self.seq: int | None = None  # the last entry applied; None: follow whatever comes next
        self.last_id = b"0-0"
        self.following = False  # loaded and reading the stream; false while Redis is lost
        self.loads = 0
        self.changes_applied = 0
        self._by_cid: dict[str, ReplicaChain] = {}
        self._chains: dict[tuple[str, dt.date], ReplicaChain] = {}
        self._expiries: dict[str, list[dt.date]] = {}
        self._underlyings: list[UnderlyingInfo] = []
        self.broker: str | None = None  # the primary's, from the catalog

    def install(self, loaded: _Loaded) -> None:
        """Swap in a freshly loaded state, all at once."""
        cat = loaded.catalog
        self._by_cid = loaded.chains
        self._chains = {(c.underlying, c.expiry): c for c in loaded.chains.values()}
        self._expiries = {u.underlying: [c.expiry for c in u.chains] for u in cat.underlyings}
        self._underlyings = [
            UnderlyingInfo(
                u.underlying, u.security_id, tuple(ExpiryInfo(c.expiry, c.lot_size, len(c.strikes)) for c in u.chains)
            )
            for u in cat.underlyings
        ]
        f = self._fallback
        self.freshness = Freshness(
            f.stale_after_s if cat.stale_after_s is None else cat.stale_after_s,
            f.calendar if cat.calendar is None else cat.calendar,
            f.clock,
        )
        self.run = cat.run
        self.broker = cat.broker
        self.seq = loaded.seq
        self.last_id = loaded.last_id
        self.loads += 1

    def apply(self, entry_id: bytes, change: Change) -> str | None:
        """Apply one stream entry; or, without changing anything, say why a reload is needed."""
        if change.run != self.run:
            return f"the primary rewrote its state (run {self.run} → {change.run})"
        if self.seq is not None and change.seq != self.seq + 1:
            return f"gap in the change stream (seq {self.seq} → {change.seq}): entries were trimmed before we read them"
        chain = self._by_cid.get(change.cid)
        if chain is None or not change.legs.keys() <= chain.legs.keys():
            return f"change for a chain or strike not in the loaded catalog ({change.cid})"
        if change.analytics is not None:
            try:
                chain.analytics = ChainAnalytics.from_json(change.analytics)
            except _MALFORMED as exc:
                return f"unreadable analytics in stream entry {entry_id.decode()}: {exc!r}"
        chain.legs.update(change.legs)
        chain.meta = change.meta
        self.seq = change.seq
        self.last_id = entry_id
        self.changes_applied += 1
        return None

    # ------------------------------------------------------------------ ChainSource

    def expiries(self, underlying: str) -> Sequence[dt.date] | None:
        return self._expiries.get(underlying)

    def nearest_expiry(self, underlying: str) -> dt.date | None:
        return self.freshness.nearest_expiry(self._expiries.get(underlying, ()))

    def snapshot(self, underlying: str, expiry: dt.date) -> ChainSnapshot | None:
        chain = self._chains.get((underlying, expiry))
        if chain is None:
            return None
        meta = chain.meta
        # The primary's rule, plus: what we hold is unconfirmed while Redis is lost.
        times = self.freshness.times(chain.expiry, meta.stale_legs, meta.updated_at)
        if not self.following and not times.stale:
            times = times._replace(stale=True)
        last = chain.rendered
        if last is not None and last.version == meta.version and last.times == times:
            return last
        legs = chain.legs
        snap = chain_snapshot(
            chain.underlying,
            chain.expiry,
            underlying_ltp=meta.underlying_ltp,
            lot_size=chain.lot_size,
            updated_at=meta.updated_at,
            version=meta.version,
            times=times,
            rows=[(s, None if ce is None else legs[ce], None if pe is None else legs[pe]) for s, ce, pe in chain.rows],
            analytics=chain.analytics,
        )
        chain.rendered = snap
        return snap

    def underlyings(self) -> list[UnderlyingInfo]:
        return self._underlyings

    @property
    def chain_count(self) -> int:
        return len(self._by_cid)

    def readiness(self) -> dict[str, Any]:
        return {
            "source": "redis",
            "following": self.following,
            "run": self.run,
            "stream_id": self.last_id.decode(),
            "chains": self.chain_count,
            "loads": self.loads,
            "changes_applied": self.changes_applied,
        }


def _build(catalog: Catalog, replies: Sequence[Any], last: list[tuple[bytes, Mapping[bytes, bytes]]]) -> _Loaded:
    """The loaded state from one MULTI/EXEC's replies: HGETALL meta, HGETALL legs, per chain."""
    chains: dict[str, ReplicaChain] = {}
    i = 0
    for u in catalog.underlyings:
        for c in u.chains:
            meta_raw, legs_raw = replies[i], replies[i + 1]
            i += 2
            if not meta_raw:
                raise StateUnavailable(f"chain {c.cid} is in the catalog but has no meta")
            legs = {k.decode(): v for k, v in legs_raw.items()}
            rows = []
            for strike, ce, pe in c.strikes:
                ce_f = None if ce is None else leg_field(strike, "CE")
                pe_f = None if pe is None else leg_field(strike, "PE")
                missing = [f for f in (ce_f, pe_f) if f is not None and f not in legs]
                if missing:
                    raise StateUnavailable(f"chain {c.cid} lacks legs {missing}")
                rows.append((strike, ce_f, pe_f))
            raw = meta_analytics(meta_raw)
            analytics = None if raw is None else ChainAnalytics.from_json(raw)
            chains[c.cid] = ReplicaChain(
                c.underlying, c.expiry, c.lot_size, rows, legs, ChainMeta.from_fields(meta_raw), analytics
            )
    if last:
        entry_id, fields = last[0]
        change = _parse(entry_id, fields)
        if change.run != catalog.run:
            raise StateUnavailable(f"the stream's last entry (run {change.run}) is not the catalog's run {catalog.run}")
        return _Loaded(catalog, chains, entry_id, change.seq)
    return _Loaded(catalog, chains, b"0-0", None)


class ReplicaFollower:
    """Loads the state from Redis and follows its stream, from its own task, until closed.

    The task (``replica-follower``) runs under ``supervisor`` (a private one if None), which
    restarts it after a crash (a bug: Redis errors are the loop's own to retry).
    """

    def __init__(
        self, store: ReplicaStore, settings: RedisSettings, lifecycle: Lifecycle, *,
        supervisor: Supervisor | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self._settings = settings
        self._lifecycle = lifecycle
        self.url = masked_url(settings.url.get_secret_value())
        self._client = make_client(settings, name="livechain-replica", extra_read_timeout_s=settings.replica_block_s)
        self._backoff = Backoff(settings)
        self.loaded = asyncio.Event()  # set by the first successful load
        self.problem: str | None = "not loaded yet"
        self.errors = 0
        self._serving = False
        self._supervisor = supervisor
        self._child: Child | None = None

    async def __aenter__(self) -> ReplicaFollower:
        self._child = (self._supervisor or Supervisor()).spawn("replica-follower", self._run)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._child is not None:
            await self._child.stop(timeout_s=self._settings.timeout_s)
        await close_client(self._client, self._settings.timeout_s, "replica")

    def serve(self) -> None:
        """The port is open: from now on readiness follows the state of the load."""
        self._serving = True
        if self.store.following:
            self._lifecycle.to(Phase.READY, self._ready_reason())

    def _ready_reason(self) -> str:
        return f"state loaded from Redis at {self.url} (run {self.store.run}) and following its stream"

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._load()
                failures = 0
                reason = await self._follow()
                log.info("replica reloading from Redis: %s", reason)
            except (*REDIS_ERRORS, StateUnavailable) as exc:
                failures += 1
                self._lost(exc)
                await asyncio.sleep(self._backoff.delay(failures))

    async def _load(self) -> None:
        client = self._client
        for _ in range(3):  # the catalog can change between our two reads only if a primary just restarted
            raw = await client.get(CATALOG_KEY)
            if raw is None:
                raise StateUnavailable(f"no livechain state in Redis at {self.url} (is a primary with a mirror running?)")
            try:
                catalog = Catalog.from_json(raw)
            except _MALFORMED as exc:
                raise StateUnavailable(f"unreadable {CATALOG_KEY}: {exc!r}") from exc
            pipe = client.pipeline(transaction=True)
            pipe.get(CATALOG_KEY)
            pipe.xrevrange(STREAM_KEY, count=1)
            for u in catalog.underlyings:
                for c in u.chains:
                    pipe.hgetall(meta_key(c.cid))
                    pipe.hgetall(legs_key(c.cid))
            replies = await pipe.execute()
            if replies[0] == raw:
                break
        else:
            raise StateUnavailable("the catalog kept changing while loading")
        try:
            loaded = _build(catalog, replies[2:], replies[1])
        except _MALFORMED as exc:
            raise StateUnavailable(f"unreadable chain state: {exc!r}") from exc
        self.store.install(loaded)
        was_following = self.store.following
        self.store.following = True
        self.problem = None
        self.loaded.set()
        if self._serving and self._lifecycle.phase is Phase.WARMING:
            self._lifecycle.to(Phase.READY, self._ready_reason())
        log.log(
            logging.DEBUG if was_following else logging.INFO,
            "replica loaded %d chains from Redis at %s (run %s, stream at %s)",
            self.store.chain_count, self.url, self.store.run, self.store.last_id.decode(),
        )

    async def _follow(self) -> str:
        """Apply stream entries as they come; return why a reload is needed."""
        client = self._client
        store = self.store
        block_ms = max(1, int(self._settings.replica_block_s * 1000))
        while True:
            replies = await client.xread({STREAM_KEY: store.last_id}, count=XREAD_COUNT, block=block_ms)
            for _stream, entries in replies or ():
                for entry_id, fields in entries:
                    try:
                        change = _parse(entry_id, fields)
                    except StateUnavailable as exc:
                        return str(exc)
                    reason = store.apply(entry_id, change)
                    if reason is not None:
                        return reason

    def _lost(self, exc: BaseException) -> None:
        self.errors += 1
        self.problem = describe(exc)
        was_following = self.store.following
        self.store.following = False
        reason = f"not following Redis at {self.url}: {self.problem}; reloading when it answers"
        if self._lifecycle.phase in (Phase.READY, Phase.WARMING):
            self._lifecycle.to(Phase.WARMING, reason)
        # Once per outage (and once at start-up); the retries that follow are quiet.
        log.log(logging.WARNING if was_following or self.errors == 1 else logging.DEBUG, "replica: %s", reason)


# --------------------------------------------------------------------------- composition


@dataclass
class RunningReplica:
    settings: Settings
    lifecycle: Lifecycle
    store: ReplicaStore
    follower: ReplicaFollower
    http_port: int
    supervisor: Supervisor | None = None  # the replica's background tasks
    metrics_port: int | None = None  # the metrics/probe port; None when metrics are disabled


@contextlib.asynccontextmanager
async def running_replica(settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> AsyncIterator[RunningReplica]:
    """Load from Redis, then bind the HTTP port; tear down in reverse on exit.

    Like the primary, nothing listens until there is a chain to serve: the first load must
    succeed within ``readiness.timeout_s``.
    """
    lifecycle = Lifecycle()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(lifecycle.stopped)
        supervisor = await stack.enter_async_context(Supervisor())
        # Like the primary: the metrics/probe port first (warm-up observable), the API port bound
        # now (in use → exit 2 at once) and listening only once a chain is loaded.
        health = Health(lifecycle, stale_after_s=settings.cache.stale_after_s, clock=clock)
        metrics = Metrics(health, clock=clock) if settings.metrics.enabled else None
        metrics_port = None
        if metrics is not None:
            metrics.attach_tasks(supervisor)
            metrics_port = await stack.enter_async_context(
                metrics_server(metrics, settings.metrics.host, settings.metrics.port)
            )
        http_sock = bind_http(settings.http)
        stack.callback(http_sock.close)
        api_keys = load_api_keys(settings.http.api_keys, settings.http.api_keys_file)
        store = ReplicaStore(Freshness(settings.cache.stale_after_s, market_calendar(settings, clock), clock))
        follower = ReplicaFollower(store, settings.redis, lifecycle, supervisor=supervisor)
        lifecycle.to(Phase.WARMING, f"loading the chain from Redis at {follower.url}")
        await stack.enter_async_context(follower)
        stack.callback(lifecycle.stopping)
        try:
            async with asyncio.timeout(settings.readiness.timeout_s):
                await follower.loaded.wait()
        except TimeoutError:
            raise ReadinessTimeout(
                f"readiness timeout after {settings.readiness.timeout_s:g}s: the replica could not load the chain "
                f"from Redis: {follower.problem}"
            ) from None

        from service.history.setup import open_replica_history  # the primary's samples, read from Redis

        opened = open_replica_history(settings, clock)
        if opened is not None:
            stack.push_async_callback(close_client, opened[1], settings.redis.timeout_s, "replica history")
        app = make_app(
            HttpContext(
                store, lifecycle, settings.http.cors_allow_origins, stream=StreamConfig.of(settings.http),
                api_keys=api_keys, history=opened[0] if opened is not None else None,
            ),
            http_metrics=metrics.http if metrics is not None else None,
        )
        if metrics is not None:
            metrics.attach_connections("api", app)
            metrics.attach_streams(app)
        port = await serve_http(
            app, settings.http, stack, lifecycle, sock=http_sock,
            reserve_connections=METRICS_MAX_CONNECTIONS if metrics is not None else 0,
        )  # fmt: skip
        follower.serve()
        log.info("replica serving http://%s:%d/options/live from Redis", settings.http.host, port)
        yield RunningReplica(
            settings, lifecycle, store, follower, port, supervisor=supervisor, metrics_port=metrics_port
        )


async def serve_replica(settings: Settings) -> None:
    """``livechain replica``: serve until cancelled (by a signal), or a FATAL task crashed (exit 1)."""
    async with running_replica(settings) as rep:
        assert rep.supervisor is not None
        raise await rep.supervisor.wait_failed()
