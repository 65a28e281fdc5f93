"""The composition root: settings → instruments → feed → cache → readiness gate → HTTP.

Every resource is entered on one ``AsyncExitStack`` and closed in reverse. The HTTP port is
bound only after the readiness gate opens: until then nothing listens, so a load balancer
or a poller can never get an empty chain from us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any


from feeds.calendar import MarketCalendar
from feeds.clock import SYSTEM_CLOCK, Clock
from feeds.errors import FatalFeedError, InstrumentMasterError
from feeds.model import ChainSkeleton
from feeds.source import FeedSource
from feeds.replay import Recorder, ReplayServer
from feeds.simulator.server import SimulatorServer
from service.analytics.runner import AnalyticsRunner
from service.core.cache import ChainCache
from service.core.chains import CacheChains
from service.core.freshness import Freshness
from service.feed_source import FeedEndpoint, build_feed, load_master, open_endpoint, open_recorder, option_chain_client
from service.errors import ConfigError, FeedFatal, ReadinessTimeout
from service.core.health import Health
from service.auth import load_api_keys
from service.http import HttpContext, bind_http, make_app, serve_http
from service.stream import StreamConfig
from service.core.ingest import Ingest
from service.core.lifecycle import Lifecycle, Phase
from service.metrics import METRICS_MAX_CONNECTIONS, Metrics, metrics_server
from service.redis.mirror import MirrorStats, RedisMirror
from service.analytics.rest_seed import RestSeeder
from service.core.roll import ExpiryRoller, live_skeleton
from service.history.sampler import HistorySampler
from service.history.setup import open_store as open_history
from service.history.store import HistoryStore
from service.settings import Settings
from service.tasks import Supervisor, cancel_and_wait

log = logging.getLogger(__name__)



@dataclass
class RunningService:
    """What a caller (the CLI, a test) can see of a service that passed its readiness gate."""

    settings: Settings
    lifecycle: Lifecycle
    cache: ChainCache
    ingest: Ingest
    feed: FeedSource
    http_port: int
    feed_task: asyncio.Task[None]
    simulator: SimulatorServer | None = None
    replay: ReplayServer | None = None
    recorder: Recorder | None = None
    health: Health | None = None
    metrics: Metrics | None = None
    metrics_port: int | None = None  # None when metrics are disabled
    mirror: RedisMirror | None = None  # None when redis.enabled = false
    roller: ExpiryRoller | None = None
    analytics: AnalyticsRunner | None = None  # None when analytics.enabled = false
    seeder: RestSeeder | None = None  # None unless seeding from the REST option chain
    supervisor: Supervisor | None = None  # the background tasks (analytics, seeder, roller, mirror)
    history: HistoryStore | None = None  # None when history.enabled = false (service.history)
    sampler: HistorySampler | None = None


async def _load_master(settings: Settings, endpoint: FeedEndpoint, clock: Clock = SYSTEM_CLOCK) -> ChainSkeleton:
    """Every expiry the broker's instrument master lists for the configured underlyings
    (``service.feed_source.load_master``: Dhan's through the day's cached copy)."""
    return await load_master(settings, endpoint, clock)


async def _load_instruments(
    settings: Settings, endpoint: FeedEndpoint, calendar: MarketCalendar, clock: Clock
) -> tuple[ChainSkeleton, ChainSkeleton]:
    """(the full list, the live chains to serve now)."""
    try:
        full = await _load_master(settings, endpoint, clock)
    except InstrumentMasterError as exc:
        raise ConfigError(f"cannot load instruments (setting instruments.source): {exc}") from exc
    skeleton = live_skeleton(full, settings.instruments.max_expiries, clock.time(), calendar)
    empty = [s for s, u in skeleton.underlyings.items() if not u.expiries]
    if empty:
        raise ConfigError(f"no unexpired option expiries for: {', '.join(empty)}")
    r = skeleton.report
    log.info(
        "instruments loaded: %d underlyings, %d instruments (%d rows read, %d used, %d ignored, %d malformed)",
        len(skeleton.underlyings), skeleton.instrument_count(), r.rows_total, r.rows_used, r.rows_ignored,
        r.rows_malformed,
        extra={"underlyings": sorted(skeleton.underlyings), "instruments": skeleton.instrument_count()},
    )
    for sample in r.malformed_samples:
        log.warning("malformed scrip master row: %s", sample)
    return full, skeleton


async def _await_gate(settings: Settings, ingest: Ingest, feed_task: asyncio.Task[None]) -> None:
    """Wait for the coverage target, failing fast if the feed dies or time runs out."""
    cache = ingest.cache
    r = settings.readiness
    loop_time = asyncio.get_running_loop().time  # how long to wait is the event loop's business
    deadline = loop_time() + r.timeout_s
    gate = asyncio.ensure_future(ingest.gate.wait())
    try:
        while not ingest.gate.is_set():
            remaining = deadline - loop_time()
            if remaining <= 0:
                missing = cache.subscribed - cache.covered
                by_und = ", ".join(f"{s} ({n} missing)" for s, n in cache.missing_by_underlying().items())
                raise ReadinessTimeout(
                    f"readiness timeout after {r.timeout_s:g}s: {cache.covered}/{cache.subscribed} instruments "
                    f"have data, need {ingest.coverage_target} (min_coverage {r.min_coverage:g}); "
                    f"{missing} instruments without data in: {by_und or 'none'}"
                )
            done, _ = await asyncio.wait(
                {gate, feed_task}, timeout=min(remaining, r.progress_log_interval_s),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if feed_task in done:
                feed_task.result()  # raises the feed's error
                raise ReadinessTimeout("the feed stopped before the readiness gate opened")
            if not ingest.gate.is_set():
                log.info(
                    "warming: %d/%d instruments have data (%.1f%%, need %d)",
                    cache.covered, cache.subscribed, 100 * cache.coverage, ingest.coverage_target,
                    extra={"covered": cache.covered, "subscribed": cache.subscribed, "target": ingest.coverage_target},
                )
    finally:
        gate.cancel()


async def _start_metrics(
    settings: Settings, health: Health, stack: contextlib.AsyncExitStack, clock: Clock
) -> tuple[Metrics | None, int | None]:
    """Bind the metrics port first of all, so warm-up (and a failure during it) can be scraped."""
    m = settings.metrics
    if not m.enabled:
        return None, None
    metrics = Metrics(health, clock=clock)
    port = await stack.enter_async_context(metrics_server(metrics, m.host, m.port))
    return metrics, port


async def _start_mirror(
    settings: Settings, cache: ChainCache, freshness: Freshness, health: Health, stack: contextlib.AsyncExitStack,
    supervisor: Supervisor, history: HistoryStore | None = None,
) -> RedisMirror | None:
    """Mirror the cache into Redis from before the feed starts, so warm-up state is mirrored too.

    Entered before the feed task, it is closed after it: its last flush carries the last ticks.
    Health (and metrics) see the mirror from its first connection on: with redis.enabled =
    auto and no Redis around, the mirror is simply off, not a problem to report.
    """
    if settings.redis.enabled is False:
        return None

    def attach(stats: MirrorStats) -> None:
        health.mirror = stats

    return await stack.enter_async_context(
        RedisMirror(
            cache, settings.redis, freshness=freshness, on_connect=attach, clock=cache.clock, supervisor=supervisor,
            parts=(history.redis,) if history is not None else (),
        )
    )


def _analytics_runner(
    settings: Settings, cache: ChainCache, calendar: MarketCalendar, supervisor: Supervisor
) -> AnalyticsRunner | None:
    """The runner, not started: its passes begin once the readiness gate is open. During warm-up
    every chain changes between passes, so each would analyse them all again on the event loop
    that is reading the first packets (at 25k instruments, a pass costs ~0.2 s every 0.5 s)."""
    if not settings.analytics.enabled:
        return None
    return AnalyticsRunner(cache, settings.analytics, calendar=calendar, clock=cache.clock, supervisor=supervisor)


async def _start_seeder(
    settings: Settings, cache: ChainCache, endpoint: FeedEndpoint, stack: contextlib.AsyncExitStack,
    supervisor: Supervisor,
) -> RestSeeder | None:
    """Seed from the REST option chain in the background (``analytics.seed``; auto: with Dhan's feed)."""
    a = settings.analytics
    wanted = settings.feed.kind == "dhan" if a.seed == "auto" else a.seed
    if not wanted:
        return None
    client = option_chain_client(settings, endpoint)
    if client is None:
        log.warning("analytics.seed is on but feed.kind = %s has no option-chain REST API: not seeding",
                    settings.feed.kind)  # fmt: skip
        return None
    log.info("seeding option chains from the REST API at %s, reconciling every %gs", endpoint.rest_url,
             a.reconcile_s)  # fmt: skip
    return await stack.enter_async_context(RestSeeder(cache, client, a.reconcile_s, supervisor=supervisor))


@contextlib.asynccontextmanager
async def running_service(settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> AsyncIterator[RunningService]:
    """Start everything; yield once the HTTP port is bound; tear down in reverse on exit.

    ``clock`` is the one clock every part asks what time it is (tests pass their own)."""
    lifecycle = Lifecycle()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(lifecycle.stopped)
        supervisor = await stack.enter_async_context(Supervisor())  # exits last: every task is stopped
        health = Health(lifecycle, stale_after_s=settings.cache.stale_after_s, clock=clock)
        metrics, metrics_port = await _start_metrics(settings, health, stack, clock)
        http_sock = bind_http(settings.http)  # a port in use fails now (exit 2), not after warm-up
        api_keys = load_api_keys(settings.http.api_keys, settings.http.api_keys_file)
        stack.callback(http_sock.close)
        endpoint = await open_endpoint(settings, stack, clock)
        full, skeleton = await _load_instruments(settings, endpoint, endpoint.calendar, clock)
        cache = ChainCache(skeleton, clock=clock)
        freshness = Freshness(settings.cache.stale_after_s, endpoint.calendar, clock)
        feed = build_feed(settings, skeleton, endpoint, clock)
        cache.broker = feed.broker
        recorder = open_recorder(settings, skeleton, feed, clock)
        if recorder is not None:
            stack.callback(recorder.close)
        health.cache, health.feed = cache, feed
        history = await open_history(settings, clock)  # the day Redis holds, loaded before the mirror rewrites it
        mirror = await _start_mirror(settings, cache, freshness, health, stack, supervisor, history)
        cache.keep_changes = mirror is not None  # the mirror is the change log's only reader
        analytics = _analytics_runner(settings, cache, endpoint.calendar, supervisor)
        seeder = await _start_seeder(settings, cache, endpoint, stack, supervisor)
        ingest = Ingest(
            cache, lifecycle, min_coverage=settings.readiness.min_coverage, connections=len(feed.connections),
            latency=metrics.ingest_latency if metrics is not None else None, clock=clock,
        )
        if metrics is not None:
            metrics.attach_ingest(ingest)
            metrics.attach_tasks(supervisor)
            metrics.attach_analytics(analytics, seeder)
            metrics.attach_history(history)
        lifecycle.to(Phase.WARMING, f"waiting for data on {cache.subscribed} instruments")
        feed_task = asyncio.create_task(feed.run(ingest), name="feed")
        stack.push_async_callback(cancel_and_wait, feed_task)
        stack.callback(lifecycle.stopping)
        try:
            await _await_gate(settings, ingest, feed_task)
        except FatalFeedError as exc:
            raise FeedFatal(str(exc)) from exc
        if analytics is not None:
            analytics.run_once()  # the first body served carries analytics
            await stack.enter_async_context(analytics)  # then every analytics.interval_s

        app = make_app(
            HttpContext(
                CacheChains(cache, freshness), lifecycle,
                settings.http.cors_allow_origins,
                health=health,
                stream=StreamConfig.of(settings.http),
                api_keys=api_keys,
                history=history,
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
        lifecycle.to(Phase.READY, f"{cache.covered}/{cache.subscribed} instruments have data")
        sampler = None
        if history is not None:  # exits before the mirror: its last flush carries the last samples
            sampler = await stack.enter_async_context(
                HistorySampler(CacheChains(cache, freshness), history, calendar=endpoint.calendar, clock=clock,
                               supervisor=supervisor)
            )  # fmt: skip
        log.info("serving http://%s:%d/options/live", settings.http.host, port)
        roller = ExpiryRoller(
            settings, full, endpoint.calendar, cache, feed,
            reload=lambda: _load_master(settings, endpoint, clock), clock=clock,
        )
        stack.push_async_callback(supervisor.spawn("expiry-roll", roller.run).stop)
        yield RunningService(
            settings, lifecycle, cache, ingest, feed, port, feed_task, endpoint.simulator, endpoint.replay, recorder,
            health=health, metrics=metrics, metrics_port=metrics_port, mirror=mirror, roller=roller,
            analytics=analytics, seeder=seeder, supervisor=supervisor, history=history, sampler=sampler,
        )


async def _serve(settings: Settings) -> None:
    async with running_service(settings) as svc:
        assert svc.supervisor is not None
        await _until_failed(svc.feed_task, svc.supervisor)


async def _until_failed(feed_task: asyncio.Task[None], supervisor: Supervisor) -> None:
    """Run until cancelled (by a signal); raise what ended the feed task (FatalFeedError → exit
    4, anything else → exit 1), or the ``TaskFailed`` of a FATAL background task (exit 1)."""
    failed = asyncio.ensure_future(supervisor.wait_failed())
    try:
        await asyncio.wait({feed_task, failed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        failed.cancel()
    if feed_task.done():
        return await feed_task
    raise failed.result()


async def run_service(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; raise a ServiceError subclass on a failure with its exit code.

    A signal cancels the serving task wherever it is (warming included); the exit stack then
    tears everything down in reverse: HTTP port, feed (sending Dhan's disconnect), simulator.
    """
    await _until_signalled(_serve(settings))


async def run_replica(settings: Settings) -> None:
    """``livechain replica``: serve the HTTP API from Redis until SIGINT/SIGTERM."""
    from service.redis.replica import serve_replica

    await _until_signalled(serve_replica(settings))


async def _until_signalled(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` as a task that SIGINT/SIGTERM cancel; a signal is a clean stop, not an error."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(main, name="service")
    stopping = False

    def request_stop(sig: signal.Signals) -> None:
        nonlocal stopping
        log.info("%s received: stopping", sig.name)
        stopping = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop, sig)
    try:
        await task
    except asyncio.CancelledError:
        if not stopping:
            raise
    except FatalFeedError as exc:
        raise FeedFatal(str(exc)) from exc
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

