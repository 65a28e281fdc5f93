"""Where the feed comes from: the embedded simulator, Dhan, Kite, or a replayed recording.

Each kind resolves to the same thing, a ``FeedEndpoint`` (broker, URL, credentials, instrument
master, market calendar), and ``build_feed`` turns it into a ``feeds.source.FeedSource``: the
Dhan client for the simulator, Dhan and replays, the Kite client for Kite (or a Kite simulator
it is pointed at). This is the one module of ``service`` that chooses a broker: everything
else sees only the ``FeedSource`` protocol (``load_master`` and ``option_chain_client`` are the
broker-specific pieces of startup it hands out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass

from feeds.clock import SYSTEM_CLOCK, Clock, ist_now
from feeds.calendar import NSE_HOLIDAYS, MarketCalendar, load_holidays
from feeds.dhan.client import Credentials, DhanFeed, plan_subscriptions
from feeds.dhan.instruments import write_scrip_master
from feeds.dhan.packets import FeedMode
from feeds.dhan.rest import OptionChainClient, UniqueRequestLimiter
from feeds.errors import SubscriptionError
from feeds.kite.client import KiteCredentials, KiteFeed
from feeds.kite.client import plan_subscriptions as kite_plan
from feeds.kite.instruments import load_instruments as load_kite_instruments
from feeds.model import ChainSkeleton
from feeds.simulator.kite import KiteSimulatorServer
from feeds.source import FeedSource
from feeds.replay import Recorder, RecordingError, ReplayServer, recording_metadata
from feeds.simulator.faults import Fault
from feeds.simulator.server import SimulatorServer, serve_forever
from service.errors import ConfigError
from service.scrip_cache import cache_for, load_instruments
from service.settings import (
    DHAN_FEED_URL,
    DHAN_SCRIP_MASTER_URL,
    KITE_FEED_URL,
    KITE_INSTRUMENTS_URL,
    Settings,
    SimulatorSettings,
    load_dhan_credentials,
    load_kite_api_key,
)
from service.token_source import rest_credentials, token_reader

log = logging.getLogger(__name__)

SIMULATOR_CLIENT_ID = "1000000001"
SIMULATOR_TOKEN = "simulator-token"
SIMULATE_DEFAULT_PORT = 8765


@dataclass(frozen=True, slots=True)
class FeedEndpoint:
    url: str
    credentials: Credentials | KiteCredentials
    scrip_master: str  # path or URL of the broker's instrument master
    calendar: MarketCalendar
    simulator: SimulatorServer | None = None
    replay: ReplayServer | None = None
    rest_url: str | None = None  # the option-chain REST API's base; None: there is none (replay)
    broker: str = "dhan"  # whose protocol the feed speaks: "dhan" or "kite"


def market_calendar(settings: Settings, clock: Clock = SYSTEM_CLOCK) -> MarketCalendar:
    """The calendar ``market.schedule`` asks for. An NSE calendar whose holiday list has no
    date in the clock's current year is used as it is (every weekday a session) and said so
    once, here, at startup."""
    m = settings.market
    schedule = m.schedule
    if schedule == "auto":
        schedule = {"dhan": "nse", "kite": "nse", "simulator": "always_open", "replay": "never_open"}[settings.feed.kind]
    if schedule == "always_open":
        return MarketCalendar(always_open=True)
    if schedule == "never_open":
        # Closed for good: the stall watchdog never fires (a replay that has ended is quiet).
        return MarketCalendar(never_open=True)
    source = m.holidays_file or NSE_HOLIDAYS
    try:
        holidays = load_holidays(source)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"market.holidays_file (env LIVECHAIN_MARKET__HOLIDAYS_FILE) {source}: {exc}") from None
    try:
        calendar = MarketCalendar(m.open_time, m.close_time, holidays)
    except ValueError as exc:
        raise ConfigError(f"market: {exc}") from None
    year = ist_now(clock).year
    if not calendar.covers_year(year):
        log.warning(
            "NSE holiday calendar has no dates for %d: every weekday is treated as a session; "
            "add that year's holidays to %s (or set market.holidays_file)", year, source,
        )
    return calendar


def dhan_credentials(settings: Settings) -> Credentials:
    """Client id from the environment; the token from ``feed.token_command``, ``feed.token_file``
    or ``DHAN_ACCESS_TOKEN`` (service.token_source), read again at every connect so a refreshed
    token is used without a restart."""
    f = settings.feed
    if f.token_file is None and f.token_command is None:
        load_dhan_credentials()  # names whichever of the two variables is missing
    client_id = os.environ.get("DHAN_CLIENT_ID", "").strip()
    if not client_id:
        raise ConfigError("feed.kind = dhan needs DHAN_CLIENT_ID in the environment")
    reader, source = token_reader(f.token_file, f.token_command, f.token_command_timeout_s, env_var="DHAN_ACCESS_TOKEN")
    return Credentials(client_id, reader, token_source=source)


def kite_credentials(settings: Settings) -> KiteCredentials:
    """``KITE_API_KEY`` from the environment; the token from ``feed.token_command``,
    ``feed.token_file`` or ``KITE_ACCESS_TOKEN``, read again at every connect and after a 403."""
    f = settings.feed
    api_key = load_kite_api_key(token_required=f.token_file is None and f.token_command is None)
    reader, source = token_reader(f.token_file, f.token_command, f.token_command_timeout_s, env_var="KITE_ACCESS_TOKEN")
    return KiteCredentials(api_key.get_secret_value(), reader, token_source=source)


async def open_endpoint(
    settings: Settings, stack: contextlib.AsyncExitStack, clock: Clock = SYSTEM_CLOCK
) -> FeedEndpoint:
    """Start what the feed kind needs (simulator or replay server) on ``stack``."""
    calendar = market_calendar(settings, clock)
    kind = settings.feed.kind
    if kind == "simulator":
        sim = settings.simulator
        missing = set(settings.instruments.underlyings) - set(sim.underlyings)
        if missing and settings.instruments.source is None:
            raise ConfigError(
                f"instruments.underlyings {sorted(missing)} are not simulated; "
                f"simulator.underlyings = {list(sim.underlyings)}"
            )
        if sim.broker == "kite":
            if settings.record.path is not None:
                raise ConfigError("record.path: recording is supported for Dhan's protocol only, not simulator.broker = kite")
            kite = await stack.enter_async_context(KiteSimulatorServer(sim, clock=clock.time))
            log.info("embedded Kite simulator listening on %s", kite.feed_url)
            kite_creds = KiteCredentials(SIMULATOR_CLIENT_ID, lambda: SIMULATOR_TOKEN, token_source="simulator")
            source = settings.instruments.source or kite.instruments_url
            return FeedEndpoint(kite.feed_url, kite_creds, source, calendar, simulator=kite, broker="kite")
        server = await stack.enter_async_context(SimulatorServer(sim, clock=clock.time))
        log.info("embedded simulator listening on %s", server.feed_url)
        credentials = Credentials(SIMULATOR_CLIENT_ID, lambda: SIMULATOR_TOKEN, token_source="simulator")
        source = settings.instruments.source or server.scrip_master_url
        return FeedEndpoint(server.feed_url, credentials, source, calendar, simulator=server, rest_url=server.rest_url)
    if kind == "replay":
        if settings.replay.file is None:
            raise ConfigError("feed.kind = replay needs replay.file (env LIVECHAIN_REPLAY__FILE)")
        try:
            replay = ReplayServer(settings.replay.file, speed=settings.replay.speed)
        except RecordingError as exc:
            raise ConfigError(f"replay.file: {exc}") from None
        await stack.enter_async_context(replay)
        credentials = Credentials(SIMULATOR_CLIENT_ID, lambda: SIMULATOR_TOKEN, token_source="replay")
        return FeedEndpoint(replay.feed_url, credentials, replay.scrip_master_url, calendar, replay=replay)
    if kind == "kite":
        if settings.record.path is not None:
            raise ConfigError("record.path: recording is supported for Dhan's protocol only, not feed.kind = kite")
        # feed.url's default is Dhan's: with kind = kite it means Kite's own.
        url = KITE_FEED_URL if settings.feed.url == DHAN_FEED_URL else settings.feed.url
        source = settings.instruments.source or KITE_INSTRUMENTS_URL
        return FeedEndpoint(url, kite_credentials(settings), source, calendar, broker="kite")
    return FeedEndpoint(
        settings.feed.url, dhan_credentials(settings), settings.instruments.source or DHAN_SCRIP_MASTER_URL, calendar,
        rest_url=settings.feed.rest_url,
    )


async def load_master(settings: Settings, endpoint: FeedEndpoint, clock: Clock = SYSTEM_CLOCK) -> ChainSkeleton:
    """Every expiry the broker's instrument master lists for the configured underlyings (Dhan's
    scrip master from a URL through the day's cached copy when ``instruments.cache_dir`` is
    set: service.scrip_cache; Kite's instruments CSV as it is)."""
    i = settings.instruments
    if endpoint.broker == "kite":
        return await load_kite_instruments(endpoint.scrip_master, i.underlyings, timeout_s=i.load_timeout_s)
    return await load_instruments(
        endpoint.scrip_master, i.underlyings, timeout_s=i.load_timeout_s,
        cache=cache_for(i.cache_dir, i.cache_keep_days, clock),
    )


def option_chain_client(settings: Settings, endpoint: FeedEndpoint) -> OptionChainClient | None:
    """Dhan's REST option chain for seeding (None when the endpoint has none: replays, Kite)."""
    if endpoint.rest_url is None or not isinstance(endpoint.credentials, Credentials):
        return None
    a = settings.analytics
    return OptionChainClient(
        endpoint.rest_url, rest_credentials(endpoint.credentials), limiter=UniqueRequestLimiter(a.rest_min_interval_s),
        timeout_s=a.rest_timeout_s, max_attempts=a.rest_max_attempts, backoff_initial_s=a.rest_backoff_initial_s,
        backoff_max_s=a.rest_backoff_max_s,
    )


def build_feed(
    settings: Settings, skeleton: ChainSkeleton, endpoint: FeedEndpoint, clock: Clock = SYSTEM_CLOCK
) -> FeedSource:
    # feed.* is the client's config (FeedSettings extends DhanFeedConfig); only the URL is the endpoint's.
    config = settings.feed.model_copy(update={"url": endpoint.url})
    try:
        if isinstance(endpoint.credentials, KiteCredentials):
            return KiteFeed(
                config, endpoint.credentials, kite_plan(skeleton), is_market_open=endpoint.calendar.is_open, clock=clock
            )
        return DhanFeed(
            config, endpoint.credentials, subscriptions_for(settings, skeleton), is_market_open=endpoint.calendar.is_open,
            clock=clock, index_mode=FeedMode.TICKER if settings.feed.index_mode == "ticker" else FeedMode.QUOTE,
        )
    except SubscriptionError as exc:
        raise ConfigError(str(exc)) from exc


def subscriptions_for(settings: Settings, skeleton: ChainSkeleton):  # noqa: ANN201 - list[Subscription]
    """Options in Full mode, each underlying index in ``feed.index_mode``."""
    indices = {u.key: u.tick_size for u in skeleton.underlyings.values()}
    options = {c.key: c.tick_size for u in skeleton.underlyings.values() for e in u.expiries for c in e.contracts()}
    mode = FeedMode.TICKER if settings.feed.index_mode == "ticker" else FeedMode.QUOTE
    return plan_subscriptions(options, indices, mode)


def open_recorder(
    settings: Settings, skeleton: ChainSkeleton, feed: FeedSource, clock: Clock = SYSTEM_CLOCK
) -> Recorder | None:
    """A recorder tapped into ``feed`` when ``record.path`` is set (Dhan's protocol only)."""
    r = settings.record
    if r.path is None or not isinstance(feed, DhanFeed):
        return None
    subs = [(s.key[0], s.key[1], int(s.mode)) for c in feed.connections for s in c.subscriptions.values()]
    meta = recording_metadata(feed.config.url, write_scrip_master(skeleton), subs)
    recorder = Recorder(r.path, meta, max_bytes=r.max_bytes, max_files=r.max_files, clock=clock)
    feed.tap = recorder
    log.info("recording raw frames to %s (segments of %d bytes, at most %d)", r.path, r.max_bytes, r.max_files)
    return recorder


async def simulate(
    sim: SimulatorSettings, *, host: str | None, port: int | None, faults: tuple[Fault, ...] = (), broker: str = "dhan"
) -> None:
    """``livechain simulate [--broker kite]``: the simulator alone, until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = port if port is not None else (sim.port or SIMULATE_DEFAULT_PORT)
    server_class = KiteSimulatorServer if "kite" in (broker, sim.broker) else SimulatorServer
    await serve_forever(sim, host or sim.host, port, stop, faults, server_class=server_class)
