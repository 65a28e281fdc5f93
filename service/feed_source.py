"""Where the feed comes from: the embedded simulator, Dhan, Kite, or a replayed recording.

Each kind resolves to the same thing, a ``FeedEndpoint`` (broker, URL, credentials, instrument
master, market calendar), and ``build_feed`` turns it into a ``feeds.source.FeedSource``: the
Dhan client for the simulator, Dhan and replays, the Kite client for Kite (or a Kite simulator
it is pointed at). This is the one module of ``service`` that imports a broker's package:
everything else sees broker-neutral interfaces it hands out — the ``FeedSource`` protocol, the
client config built from ``feed.*`` (``client_config``: a broker's floors are checked there),
the broker's instrument master (``instrument_master``, ``load_master``: Dhan's through the day's
cache), the option chain to seed from (``option_chain_client``: a ``ChainSeedSource`` for Dhan,
none for Kite), and what ``livechain doctor`` checks (``broker_credentials``,
``subscription_budget``, ``probe_feed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass

from pydantic import ValidationError

from feeds.clock import SYSTEM_CLOCK, Clock, ist_now
from feeds.calendar import NSE_HOLIDAYS, MarketCalendar, load_holidays
from feeds.connection import FeedConnectionConfig
from feeds.dhan import requests as dhan_requests
from feeds.dhan.client import Credentials, DhanFeed, DhanFeedConfig, Subscription, check_budget, plan_subscriptions
from feeds.dhan.instruments import fetch_scrip_master, load_scrip_master, parse_scrip_master_bytes, write_scrip_master
from feeds.dhan.packets import FeedMode
from feeds.dhan.rest import OptionChainClient, UniqueRequestLimiter
from feeds.dhan.seed import DhanChainSeed
from feeds.errors import SubscriptionError
from feeds.kite import requests as kite_requests
from feeds.kite.client import KiteCredentials, KiteFeed, KiteFeedConfig
from feeds.kite.client import Subscription as KiteSubscription
from feeds.kite.client import plan_subscriptions as kite_plan
from feeds.kite.instruments import load_instruments as load_kite_instruments
from feeds.kite.packets import Mode as KiteMode
from feeds.master import InstrumentMaster
from feeds.model import ChainSkeleton
from feeds.simulator.kite import KiteSimulatorServer
from feeds.source import ChainSeedSource, FeedSource
from feeds.replay import Recorder, RecordingError, ReplayServer, recording_metadata
from feeds.simulator.faults import Fault
from feeds.simulator.server import SimulatorServer, serve_forever
from service.errors import ConfigError
from service.scrip_cache import ScripMasterCache, cache_for, load_instruments
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


BROKER_NAMES = {"dhan": "Dhan", "kite": "Kite"}  # as messages name them
DHAN_MASTER = InstrumentMaster(
    "scrip master", load=load_scrip_master, fetch=fetch_scrip_master, parse=parse_scrip_master_bytes
)
KITE_MASTER = InstrumentMaster("instruments CSV", load=load_kite_instruments)  # read as it is: no day's copy


def broker_of(settings: Settings) -> str:
    """Whose protocol the feed speaks: "dhan" or "kite" (the simulator's ``simulator.broker``;
    a replay is Dhan's)."""
    kind = settings.feed.kind
    if kind == "simulator":
        return settings.simulator.broker
    return "kite" if kind == "kite" else "dhan"


def client_config(settings: Settings, url: str | None = None, broker: str | None = None) -> FeedConnectionConfig:
    """``feed.*``'s connection keys as the broker's client config (``url``: the endpoint's).
    A value below the broker's floor (Dhan: ``rate_limit_cooloff_s`` ≥ 60) raises pydantic's
    ValidationError naming the key; ``load_settings`` reports it as a ConfigError."""
    cls = KiteFeedConfig if (broker or broker_of(settings)) == "kite" else DhanFeedConfig
    values = settings.feed.connection_values()
    if url is not None:
        values["url"] = url
    return cls(**values)


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


def broker_credentials(settings: Settings) -> Credentials | KiteCredentials:
    """The live broker's credentials (``feed.kind`` dhan or kite); a ConfigError naming what is
    missing. A token command is run once here (call it off the event loop)."""
    return kite_credentials(settings) if settings.feed.kind == "kite" else dhan_credentials(settings)


def describe_credentials(credentials: Credentials | KiteCredentials) -> str:
    """What was found, never the values: for ``livechain doctor``."""
    ident = "KITE_API_KEY" if isinstance(credentials, KiteCredentials) else "DHAN_CLIENT_ID"
    return f"{ident} set; access token read from {credentials.token_source}"


def live_endpoint(
    settings: Settings, credentials: Credentials | KiteCredentials, calendar: MarketCalendar
) -> FeedEndpoint:
    """The endpoint of a live broker (feed.kind dhan or kite) with these credentials."""
    source = settings.instruments.source
    if isinstance(credentials, KiteCredentials):
        # feed.url's default is Dhan's: with kind = kite it means Kite's own.
        url = KITE_FEED_URL if settings.feed.url == DHAN_FEED_URL else settings.feed.url
        return FeedEndpoint(url, credentials, source or KITE_INSTRUMENTS_URL, calendar, broker="kite")
    return FeedEndpoint(
        settings.feed.url, credentials, source or DHAN_SCRIP_MASTER_URL, calendar, rest_url=settings.feed.rest_url
    )


def master_source(settings: Settings) -> str:
    """The instrument master a live broker's feed loads (``instruments.source`` or its public URL)."""
    default = KITE_INSTRUMENTS_URL if broker_of(settings) == "kite" else DHAN_SCRIP_MASTER_URL
    return settings.instruments.source or default


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
    if kind == "kite" and settings.record.path is not None:
        raise ConfigError("record.path: recording is supported for Dhan's protocol only, not feed.kind = kite")
    return live_endpoint(settings, broker_credentials(settings), calendar)


def instrument_master(broker: str) -> InstrumentMaster:
    """The broker's instrument master format (Dhan's detailed scrip master, Kite's instruments CSV)."""
    return KITE_MASTER if broker == "kite" else DHAN_MASTER


def master_cache(settings: Settings, broker: str, clock: Clock = SYSTEM_CLOCK) -> ScripMasterCache | None:
    """The day's cached copy of the master (``instruments.cache_dir``): Dhan's scrip master only;
    Kite's instruments CSV is read as it is."""
    if instrument_master(broker).fetch is None:
        return None
    i = settings.instruments
    return cache_for(i.cache_dir, i.cache_keep_days, clock)


async def load_master(settings: Settings, endpoint: FeedEndpoint, clock: Clock = SYSTEM_CLOCK) -> ChainSkeleton:
    """Every expiry the broker's instrument master lists for the configured underlyings (Dhan's
    scrip master from a URL through the day's cached copy when ``instruments.cache_dir`` is
    set: service.scrip_cache; Kite's instruments CSV as it is)."""
    i = settings.instruments
    return await load_instruments(
        endpoint.scrip_master, i.underlyings, timeout_s=i.load_timeout_s,
        cache=master_cache(settings, endpoint.broker, clock), master=instrument_master(endpoint.broker),
    )


def option_chain_client(settings: Settings, endpoint: FeedEndpoint) -> ChainSeedSource | None:
    """The broker's REST option chain to seed from, as a ``ChainSeedSource``: Dhan's (a
    ``DhanChainSeed`` over ``OptionChainClient``); None when the endpoint has none (replays,
    and Kite, which publishes no option chain with OI and greeks: seeding is off)."""
    if endpoint.rest_url is None or not isinstance(endpoint.credentials, Credentials):
        return None
    a = settings.analytics
    return DhanChainSeed(OptionChainClient(
        endpoint.rest_url, rest_credentials(endpoint.credentials), limiter=UniqueRequestLimiter(a.rest_min_interval_s),
        timeout_s=a.rest_timeout_s, max_attempts=a.rest_max_attempts, backoff_initial_s=a.rest_backoff_initial_s,
        backoff_max_s=a.rest_backoff_max_s,
    ))


def build_feed(
    settings: Settings, skeleton: ChainSkeleton, endpoint: FeedEndpoint, clock: Clock = SYSTEM_CLOCK
) -> FeedSource:
    # feed.*'s connection keys are the client's config (both extend FeedConnectionConfig); only
    # the URL is the endpoint's.
    try:
        config = client_config(settings, endpoint.url, endpoint.broker)
    except ValidationError as exc:
        raise ConfigError("feed: " + "; ".join(e["msg"] for e in exc.errors())) from None
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


def subscription_budget(settings: Settings, skeleton: ChainSkeleton, broker: str) -> tuple[int, int]:
    """(the subscriptions ``skeleton`` needs on ``broker``'s feed, the broker's budget)."""
    if broker == "kite":
        return len(kite_plan(skeleton)), kite_requests.MAX_CONNECTIONS * kite_requests.MAX_INSTRUMENTS_PER_CONNECTION
    return (
        len(subscriptions_for(settings, skeleton)),
        dhan_requests.MAX_CONNECTIONS * dhan_requests.MAX_INSTRUMENTS_PER_CONNECTION,
    )


def check_subscription_budget(broker: str, count: int) -> None:
    """SubscriptionError, with the numbers, when ``count`` subscriptions exceed ``broker``'s budget."""
    (kite_requests.check_budget if broker == "kite" else check_budget)(count)


def probe_feed(
    settings: Settings, endpoint: FeedEndpoint, skeleton: ChainSkeleton, clock: Clock = SYSTEM_CLOCK
) -> tuple[FeedSource, str]:
    """A feed on ``endpoint`` subscribing only the first underlying's index (``livechain
    doctor``'s one short connection), and that underlying's symbol."""
    symbol, und = next(iter(skeleton.underlyings.items()))
    config = client_config(settings, endpoint.url, endpoint.broker)
    feed: FeedSource
    if isinstance(endpoint.credentials, KiteCredentials):
        sub = KiteSubscription(und.key, KiteMode.FULL, und.tick_size)
        feed = KiteFeed(config, endpoint.credentials, [sub], is_market_open=endpoint.calendar.is_open, clock=clock)
    else:
        dhan_sub = Subscription(und.key, FeedMode.QUOTE, und.tick_size)
        feed = DhanFeed(config, endpoint.credentials, [dhan_sub], is_market_open=endpoint.calendar.is_open, clock=clock)
    return feed, symbol


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
