"""Where the feed comes from: the embedded simulator, Dhan, or a replayed recording.

Each kind resolves to the same thing, a ``FeedEndpoint`` (URL, credentials, scrip master,
market calendar), so the rest of the service runs the one Dhan client against any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from feeds.clock import SYSTEM_CLOCK, Clock, ist_now
from feeds.calendar import NSE_HOLIDAYS, MarketCalendar, load_holidays
from feeds.dhan.client import Credentials, DhanFeed, plan_subscriptions
from feeds.dhan.instruments import write_scrip_master
from feeds.dhan.packets import FeedMode
from feeds.errors import SubscriptionError
from feeds.model import ChainSkeleton
from feeds.replay import Recorder, RecordingError, ReplayServer, recording_metadata
from feeds.simulator.faults import Fault
from feeds.simulator.server import SimulatorServer, serve_forever
from service.errors import ConfigError
from service.settings import DHAN_SCRIP_MASTER_URL, Settings, SimulatorSettings, load_dhan_credentials

log = logging.getLogger(__name__)

SIMULATOR_CLIENT_ID = "1000000001"
SIMULATOR_TOKEN = "simulator-token"
SIMULATE_DEFAULT_PORT = 8765


@dataclass(frozen=True, slots=True)
class FeedEndpoint:
    url: str
    credentials: Credentials
    scrip_master: str  # path or URL
    calendar: MarketCalendar
    simulator: SimulatorServer | None = None
    replay: ReplayServer | None = None
    rest_url: str | None = None  # the option-chain REST API's base; None: there is none (replay)


def market_calendar(settings: Settings, clock: Clock = SYSTEM_CLOCK) -> MarketCalendar:
    """The calendar ``market.schedule`` asks for. An NSE calendar whose holiday list has no
    date in the clock's current year is used as it is (every weekday a session) and said so
    once, here, at startup."""
    m = settings.market
    schedule = m.schedule
    if schedule == "auto":
        schedule = {"dhan": "nse", "simulator": "always_open", "replay": "never_open"}[settings.feed.kind]
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


def _token_from_file(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"feed.token_file {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"feed.token_file {path} is empty")
    return token


def dhan_credentials(settings: Settings) -> Credentials:
    """Client id from the environment; the token from ``feed.token_file`` or the environment,
    read again at every connect so a refreshed token is used without a restart."""
    creds = load_dhan_credentials() if settings.feed.token_file is None else None
    client_id = creds.client_id.get_secret_value() if creds else os.environ.get("DHAN_CLIENT_ID", "").strip()
    if not client_id:
        raise ConfigError("feed.kind = dhan needs DHAN_CLIENT_ID in the environment")
    path = settings.feed.token_file
    if path is not None:
        _token_from_file(path)  # fail fast now, not at the first connect
        return Credentials(client_id, lambda: _token_from_file(path), token_source=f"token file {path}")

    def from_env() -> str:
        return os.environ.get("DHAN_ACCESS_TOKEN", "").strip()

    return Credentials(client_id, from_env, token_source="DHAN_ACCESS_TOKEN")


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
    return FeedEndpoint(
        settings.feed.url, dhan_credentials(settings), settings.instruments.source or DHAN_SCRIP_MASTER_URL, calendar,
        rest_url=settings.feed.rest_url,
    )


def build_feed(
    settings: Settings, skeleton: ChainSkeleton, endpoint: FeedEndpoint, clock: Clock = SYSTEM_CLOCK
) -> DhanFeed:
    # feed.* is the client's config (FeedSettings extends DhanFeedConfig); only the URL is the endpoint's.
    config = settings.feed.model_copy(update={"url": endpoint.url})
    try:
        return DhanFeed(
            config, endpoint.credentials, subscriptions_for(settings, skeleton), is_market_open=endpoint.calendar.is_open,
            clock=clock,
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
    settings: Settings, skeleton: ChainSkeleton, feed: DhanFeed, clock: Clock = SYSTEM_CLOCK
) -> Recorder | None:
    """A recorder tapped into ``feed`` when ``record.path`` is set."""
    r = settings.record
    if r.path is None:
        return None
    subs = [(s.key[0], s.key[1], int(s.mode)) for c in feed.connections for s in c.subscriptions.values()]
    meta = recording_metadata(feed.config.url, write_scrip_master(skeleton), subs)
    recorder = Recorder(r.path, meta, max_bytes=r.max_bytes, max_files=r.max_files, clock=clock)
    feed.tap = recorder
    log.info("recording raw frames to %s (segments of %d bytes, at most %d)", r.path, r.max_bytes, r.max_files)
    return recorder


async def simulate(sim: SimulatorSettings, *, host: str | None, port: int | None, faults: tuple[Fault, ...] = ()) -> None:
    """``livechain simulate``: the simulator alone, until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = port if port is not None else (sim.port or SIMULATE_DEFAULT_PORT)
    await serve_forever(sim, host or sim.host, port, stop, faults)
