"""The composition root: settings → instruments → feed → cache → readiness gate → HTTP.

Every resource is entered on one ``AsyncExitStack`` and closed in reverse. The HTTP port is
bound only after the readiness gate opens: until then nothing listens, so a load balancer
or a poller can never get an empty chain from us.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from feeds.dhan.client import Credentials, DhanFeed, DhanFeedConfig, plan_subscriptions
from feeds.dhan.instruments import load_scrip_master
from feeds.dhan.packets import FeedMode
from feeds.errors import FatalFeedError, InstrumentMasterError, SubscriptionError
from feeds.model import IST, ChainSkeleton
from service.cache import ChainCache
from service.errors import ConfigError, FeedFatal, ReadinessTimeout
from service.http import HttpContext, make_app
from service.ingest import Ingest
from service.lifecycle import Lifecycle, Phase
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.server import SimulatorServer
from service.settings import DHAN_SCRIP_MASTER_URL, Settings, SimulatorSettings, load_dhan_credentials

log = logging.getLogger(__name__)

SIMULATOR_CLIENT_ID = "1000000001"
SIMULATOR_TOKEN = "simulator-token"


@dataclass
class RunningService:
    """What a caller (the CLI, a test) can see of a service that passed its readiness gate."""

    settings: Settings
    lifecycle: Lifecycle
    cache: ChainCache
    ingest: Ingest
    feed: DhanFeed
    http_port: int
    feed_task: asyncio.Task[None]
    simulator: SimulatorServer | None = None


def today_ist() -> dt.date:
    return dt.datetime.now(IST).date()


def simulator_config(sim: SimulatorSettings) -> SimulatorConfig:
    try:
        return SimulatorConfig(
            seed=sim.seed,
            underlyings=tuple(sim.underlyings),
            expiries=sim.expiries,
            strikes_per_side=sim.strikes_per_side,
            tick_interval_s=sim.tick_interval_s,
            trades_per_step=sim.trades_per_step,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid simulator settings: {exc}") from None


async def _start_simulator(settings: Settings, stack: contextlib.AsyncExitStack) -> SimulatorServer:
    sim = settings.simulator
    missing = set(settings.instruments.underlyings) - set(sim.underlyings)
    if missing and settings.instruments.source is None:
        raise ConfigError(
            f"instruments.underlyings {sorted(missing)} are not simulated; simulator.underlyings = {list(sim.underlyings)}"
        )
    server = await stack.enter_async_context(SimulatorServer(simulator_config(sim), host=sim.host, port=sim.port))
    log.info("embedded simulator listening on %s", server.feed_url)
    return server


async def _load_instruments(settings: Settings, source: str) -> ChainSkeleton:
    try:
        skeleton = await load_scrip_master(
            source, settings.instruments.underlyings, timeout_s=settings.instruments.load_timeout_s
        )
    except InstrumentMasterError as exc:
        raise ConfigError(f"cannot load instruments: {exc}") from exc
    skeleton = skeleton.limit_expiries(settings.instruments.max_expiries, today_ist())
    empty = [s for s, u in skeleton.underlyings.items() if not u.expiries]
    if empty:
        raise ConfigError(f"no unexpired option expiries for: {', '.join(empty)}")
    r = skeleton.report
    log.info(
        "instruments loaded: %d underlyings, %d instruments (%d rows read, %d used, %d ignored, %d malformed)",
        len(skeleton.underlyings), skeleton.instrument_count(), r.rows_total, r.rows_used, r.rows_ignored,
        r.rows_malformed,
    )
    for sample in r.malformed_samples:
        log.warning("malformed scrip master row: %s", sample)
    return skeleton


def _build_feed(settings: Settings, skeleton: ChainSkeleton, credentials: Credentials, url: str) -> DhanFeed:
    f = settings.feed
    config = DhanFeedConfig(
        url=url,
        open_timeout_s=f.open_timeout_s,
        ping_interval_s=f.ping_interval_s,
        ping_timeout_s=f.ping_timeout_s,
        close_timeout_s=f.close_timeout_s,
        reconnect_initial_s=f.reconnect_initial_s,
        reconnect_max_s=f.reconnect_max_s,
        healthy_after_s=f.healthy_after_s,
    )
    indices = {u.key: u.tick_size for u in skeleton.underlyings.values()}
    options = {
        c.key: c.tick_size for u in skeleton.underlyings.values() for e in u.expiries for c in e.contracts()
    }
    mode = FeedMode.TICKER if f.index_mode == "ticker" else FeedMode.QUOTE
    try:
        return DhanFeed(config, credentials, plan_subscriptions(options, indices, mode))
    except SubscriptionError as exc:
        raise ConfigError(str(exc)) from exc


async def _await_gate(settings: Settings, ingest: Ingest, feed_task: asyncio.Task[None]) -> None:
    """Wait for the coverage target, failing fast if the feed dies or time runs out."""
    cache = ingest.cache
    r = settings.readiness
    deadline = time.monotonic() + r.timeout_s
    gate = asyncio.ensure_future(ingest.gate.wait())
    try:
        while not ingest.gate.is_set():
            remaining = deadline - time.monotonic()
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
                )
    finally:
        gate.cancel()


async def _cancel(task: asyncio.Task[None]) -> None:
    """Stop ``task`` and wait for it; an error it ended with has already been raised elsewhere."""
    task.cancel()
    await asyncio.wait([task])


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[RunningService]:
    """Start everything; yield once the HTTP port is bound; tear down in reverse on exit."""
    lifecycle = Lifecycle()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(lifecycle.stopped)
        simulator = None
        if settings.feed.kind == "simulator":
            simulator = await _start_simulator(settings, stack)
            credentials = Credentials(SIMULATOR_CLIENT_ID, lambda: SIMULATOR_TOKEN)
            feed_url = simulator.feed_url
            source = settings.instruments.source or simulator.scrip_master_url
        else:
            creds = load_dhan_credentials()
            credentials = Credentials(creds.client_id.get_secret_value(), creds.access_token.get_secret_value)
            feed_url = settings.feed.url
            source = settings.instruments.source or DHAN_SCRIP_MASTER_URL

        skeleton = await _load_instruments(settings, source)
        cache = ChainCache(skeleton)
        feed = _build_feed(settings, skeleton, credentials, feed_url)
        ingest = Ingest(
            cache, lifecycle, min_coverage=settings.readiness.min_coverage, connections=len(feed.connections)
        )
        lifecycle.to(Phase.WARMING, f"waiting for data on {cache.subscribed} instruments")
        feed_task = asyncio.create_task(feed.run(ingest), name="feed")
        stack.push_async_callback(_cancel, feed_task)
        stack.callback(lifecycle.stopping)
        try:
            await _await_gate(settings, ingest, feed_task)
        except FatalFeedError as exc:
            raise FeedFatal(str(exc)) from exc

        app = make_app(
            HttpContext(cache, lifecycle, settings.cache.stale_after_s, settings.http.cors_allow_origins)
        )
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=settings.http.shutdown_timeout_s,
                               access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        stack.callback(lifecycle.stopping)  # before the port closes: /readyz says stopping
        site = web.TCPSite(runner, settings.http.host, settings.http.port)
        await site.start()
        port = runner.addresses[0][1]
        lifecycle.to(Phase.READY, f"{cache.covered}/{cache.subscribed} instruments have data")
        log.info("serving http://%s:%d/options/live", settings.http.host, port)
        yield RunningService(settings, lifecycle, cache, ingest, feed, port, feed_task, simulator)


async def _serve(settings: Settings) -> None:
    async with running_service(settings) as svc:
        await svc.feed_task  # runs until cancelled by a signal, or raises the feed's fatal error


async def run_service(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; raise a ServiceError subclass on a failure with its exit code.

    A signal cancels the serving task wherever it is (warming included); the exit stack then
    tears everything down in reverse: HTTP port, feed (sending Dhan's disconnect), simulator.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(_serve(settings), name="service")
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


SIMULATE_DEFAULT_PORT = 8765


async def simulate(sim: SimulatorSettings, *, host: str | None, port: int | None) -> None:
    """``livechain simulate``: the simulator alone, until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from feeds.simulator.server import serve_forever

    port = port if port is not None else (sim.port or SIMULATE_DEFAULT_PORT)
    await serve_forever(simulator_config(sim), host or sim.host, port, stop)
