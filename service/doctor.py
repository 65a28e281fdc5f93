"""``livechain doctor``: check what a start needs, before starting, and say what is wrong.

Each check prints one line, ``ok``, ``warn`` or ``FAIL`` with what it found; the command exits
1 when any check fails (2 when the settings themselves are invalid), else 0. It checks, in the
order a start meets them:

* settings: they load (the CLI reports a failure to load);
* credentials (``feed.kind = dhan`` or ``kite``): ``DHAN_CLIENT_ID`` (``KITE_API_KEY``) and a
  token from its source (``DHAN_ACCESS_TOKEN`` / ``KITE_ACCESS_TOKEN``, ``feed.token_file`` or
  ``feed.token_command``, which is run once);
* market calendar: the session hours and that the holiday list covers this year;
* scrip master: the broker's instrument master downloaded (or today's cached copy) and parsed
  for the configured underlyings, the subscription count against the broker's budget (Dhan
  5 × 5000, Kite 3 × 3000);
* feed: one short connection subscribing one index, reporting a disconnect code in words
  (Dhan's 808 → authentication failed; Kite's HTTP 403). It is one of the account's sockets:
  with a service already running on all of them, skip it (``--no-feed``);
* Redis (unless ``redis.enabled = false``): PING and the server version;
* ports: ``http.port`` and ``metrics.port`` can be bound.

The access token never appears in the output: it is not in any message, and the report is
scrubbed of it all the same. Whatever is broker-specific (credentials, master format, budget,
the probe connection) comes from ``service.feed_source``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from feeds.calendar import MarketCalendar
from feeds.clock import SYSTEM_CLOCK, Clock, ist_now
from feeds.errors import FatalFeedError, FeedError, InstrumentMasterError, SubscriptionError
from feeds.master import shown_source
from feeds.model import ChainSkeleton, Tick
from feeds.source import ConnectionDown, ConnectionUp, FeedEvent, ServerDisconnect
from service.core.roll import live_skeleton
from service.errors import ConfigError
from service.feed_source import (
    BROKER_NAMES,
    FeedEndpoint,
    broker_credentials,
    broker_of,
    check_subscription_budget,
    describe_credentials,
    instrument_master,
    live_endpoint,
    market_calendar,
    master_cache,
    master_source,
    open_endpoint,
    probe_feed,
    subscription_budget,
)
from service.redis.client import REDIS_ERRORS, close_client, describe, make_client, masked_url
from service.scrip_cache import load_instruments
from service.settings import Settings
from service.tasks import cancel_and_wait

Status = Literal["ok", "warn", "FAIL", "skip"]
FEED_WAIT_S = 5.0  # after the subscription: how long to wait for data (or a disconnect)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"  {self.status:<4}  {self.name:<14} {self.detail}"


class _Probe:
    """A FeedSink that only notes what happened."""

    def __init__(self) -> None:
        self.up = False
        self.data = False
        self.down: str | None = None
        self.codes: list[str] = []
        self.changed = asyncio.Event()

    def on_ticks(self, ticks: Sequence[Tick]) -> None:
        if ticks:
            self.data = True
            self.changed.set()

    def on_event(self, event: FeedEvent) -> None:
        if isinstance(event, ConnectionUp):
            self.up = True
        elif isinstance(event, ConnectionDown):
            self.down = event.reason
        elif isinstance(event, ServerDisconnect):
            self.codes.append(f"{event.reason_code} {event.description}")
        self.changed.set()


async def diagnose(
    settings: Settings, *, clock: Clock = SYSTEM_CLOCK, check_feed: bool = True, feed_wait_s: float = FEED_WAIT_S,
    settings_origin: str = "packaged defaults + LIVECHAIN_* environment", secrets: list[str] | None = None,
) -> list[Check]:
    """Run every check; never raises for what it finds. The token read is appended to
    ``secrets``, so the caller can scrub the report of it."""
    checks = [Check("settings", "ok", f"valid ({settings_origin}); feed.kind = {settings.feed.kind}")]
    async with contextlib.AsyncExitStack() as stack:
        calendar = _check_calendar(settings, clock, checks)
        endpoint = await _endpoint(settings, calendar, stack, clock, checks)
        if endpoint is not None and secrets is not None:
            reader = endpoint.credentials.access_token
            secrets.append(getattr(reader, "latest", reader)())
        skeleton = await _check_instruments(settings, endpoint, calendar, clock, checks)
        if not check_feed:
            checks.append(Check("feed", "skip", "--no-feed"))
        elif endpoint is None or skeleton is None:
            checks.append(Check("feed", "skip", "needs credentials and instruments"))
        else:
            checks.append(await _check_feed(settings, endpoint, skeleton, clock, feed_wait_s))
        checks.append(await _check_redis(settings))
        checks.extend(_check_ports(settings))
    return checks


def _check_calendar(settings: Settings, clock: Clock, checks: list[Check]) -> MarketCalendar | None:
    try:
        calendar = market_calendar(settings, clock)
    except ConfigError as exc:
        checks.append(Check("calendar", "FAIL", str(exc)))
        return None
    if calendar.always_open or calendar.never_open:
        checks.append(Check("calendar", "ok", f"market always {'open' if calendar.always_open else 'closed'} "
                                              f"(market.schedule = {settings.market.schedule}, feed.kind = {settings.feed.kind})"))
        return calendar
    m = settings.market
    year = ist_now(clock).year
    now = "open" if calendar.is_open(clock.time()) else "closed"
    hours = f"NSE {m.open_time:%H:%M}-{m.close_time:%H:%M} IST, market {now} now"
    if calendar.covers_year(year):
        checks.append(Check("calendar", "ok", f"{hours}; holidays of {year} listed"))
    else:
        checks.append(Check(
            "calendar", "warn",
            f"{hours}; the holiday list has no dates for {year}: every weekday counts as a session "
            "(set market.holidays_file to a list with this year's holidays)",
        ))
    return calendar


async def _endpoint(
    settings: Settings, calendar: MarketCalendar | None, stack: contextlib.AsyncExitStack, clock: Clock,
    checks: list[Check],
) -> FeedEndpoint | None:
    if settings.feed.kind not in ("dhan", "kite"):
        checks.append(Check("credentials", "skip", f"not needed with feed.kind = {settings.feed.kind}"))
        try:
            return await open_endpoint(settings, stack, clock)
        except (ConfigError, OSError, FeedError) as exc:
            checks.append(Check("feed", "FAIL", f"cannot start the {settings.feed.kind} source: {exc}"))
            return None
    try:
        credentials = await asyncio.to_thread(broker_credentials, settings)  # a token command may take a while
    except ConfigError as exc:
        checks.append(Check("credentials", "FAIL", str(exc)))
        return None
    checks.append(Check("credentials", "ok", describe_credentials(credentials)))
    if calendar is None:
        return None
    return live_endpoint(settings, credentials, calendar)


async def _check_instruments(
    settings: Settings, endpoint: FeedEndpoint | None, calendar: MarketCalendar | None, clock: Clock,
    checks: list[Check],
) -> ChainSkeleton | None:
    i = settings.instruments
    broker = endpoint.broker if endpoint is not None else broker_of(settings)
    source = endpoint.scrip_master if endpoint is not None else master_source(settings)
    cache = master_cache(settings, broker, clock)
    try:
        full = await load_instruments(
            source, i.underlyings, timeout_s=i.load_timeout_s, cache=cache, master=instrument_master(broker)
        )
    except (InstrumentMasterError, ValueError) as exc:
        checks.append(Check("scrip master", "FAIL", f"{shown_source(source)}: {exc}"))
        return None
    if calendar is None:
        return None
    skeleton = live_skeleton(full, i.max_expiries, clock.time(), calendar)
    parts = [
        f"{s}: {len(u.expiries)} expiries ({', '.join(e.expiry.isoformat() for e in u.expiries) or 'none unexpired'})"
        for s, u in skeleton.underlyings.items()
    ]
    count, budget = subscription_budget(settings, skeleton, broker)
    detail = f"{shown_source(source)}: {'; '.join(parts)}; {count} of {budget} subscriptions"
    if cache is not None:
        copies = cache.copies()
        detail += f"; cache {cache.directory}: " + (f"newest copy {copies[0][0].isoformat()}" if copies else "empty")
    elif settings.feed.kind == "dhan":
        detail += "; instruments.cache_dir unset: a failed download at start stops the service"
    empty = [s for s, u in skeleton.underlyings.items() if not u.expiries]
    try:
        check_subscription_budget(broker, count)
    except SubscriptionError as exc:
        checks.append(Check("scrip master", "FAIL", f"{detail}: {exc}"))
        return None
    if empty:
        checks.append(Check("scrip master", "FAIL", f"{detail}: no unexpired expiries for {', '.join(empty)}"))
        return None
    status: Status = "warn" if cache is None and settings.feed.kind == "dhan" else "ok"
    checks.append(Check("scrip master", status, detail))
    return skeleton


async def _check_feed(
    settings: Settings, endpoint: FeedEndpoint, skeleton: ChainSkeleton, clock: Clock, wait_s: float
) -> Check:
    feed, symbol = probe_feed(settings, endpoint, skeleton, clock)
    broker = BROKER_NAMES.get(feed.broker, feed.broker)
    probe = _Probe()
    task = asyncio.create_task(feed.run(probe), name="doctor-feed")
    shown = endpoint.url
    loop = asyncio.get_running_loop()
    open_timeout_s = settings.feed.open_timeout_s
    deadline = loop.time() + open_timeout_s + wait_s
    try:
        while not (probe.data or probe.down or task.done()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            probe.changed.clear()
            waiter = asyncio.ensure_future(probe.changed.wait())
            try:
                await asyncio.wait({task, waiter}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            if isinstance(exc, FatalFeedError):
                return Check("feed", "FAIL", f"{shown}: {exc}")
            return Check("feed", "FAIL", f"{shown}: {type(exc).__name__}: {exc}")
        if probe.data:
            return Check("feed", "ok", f"{shown}: connected, {symbol} index subscribed, data received")
        if probe.down is not None:
            why = f"; {broker} said {', '.join(probe.codes)}" if probe.codes else (
                f"; no reason given ({broker} drops a stale or invalid token that way)"
            )
            return Check("feed", "FAIL", f"{shown}: connection lost: {probe.down}{why}")
        if not probe.up:
            return Check("feed", "FAIL", f"{shown}: no connection within {open_timeout_s + wait_s:g}s")
        if endpoint.calendar.is_open(clock.time()):
            return Check("feed", "warn", f"{shown}: connected and subscribed, but no data within {wait_s:g}s "
                                         "while the market is open")  # fmt: skip
        return Check("feed", "ok", f"{shown}: connected and subscribed; no data (the market is closed: normal)")
    finally:
        await cancel_and_wait(task)


async def _check_redis(settings: Settings) -> Check:
    r = settings.redis
    if r.enabled is False:
        return Check("redis", "skip", "redis.enabled = false")
    shown = masked_url(r.url.get_secret_value())
    client = make_client(r, name="livechain-doctor")
    try:
        info = await client.info("server")
    except REDIS_ERRORS as exc:
        if r.enabled is True:
            return Check("redis", "FAIL", f"{shown}: {describe(exc)} (redis.enabled = true: the service would exit 5)")
        return Check("redis", "warn", f"{shown}: {describe(exc)} (redis.enabled = auto: the service runs without a mirror)")
    finally:
        await close_client(client, r.timeout_s, "doctor")
    return Check("redis", "ok", f"{shown}: Redis {info.get('redis_version', '?')} answers")


def _check_ports(settings: Settings) -> list[Check]:
    wanted = [("http", "http.port", settings.http.host, settings.http.port)]
    if settings.metrics.enabled:
        wanted.append(("metrics", "metrics.port", settings.metrics.host, settings.metrics.port))
    out = []
    for name, key, host, port in wanted:
        if port == 0:
            out.append(Check(f"{name} port", "ok", f"{key} = 0: a free port is chosen at start"))
            continue
        problem = _bind_problem(host, port)
        if problem is None:
            out.append(Check(f"{name} port", "ok", f"{host}:{port} is free"))
        else:
            out.append(Check(f"{name} port", "FAIL", f"{host}:{port} ({key}): {problem}"))
    return out


def _bind_problem(host: str, port: int) -> str | None:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve the host: {exc.strerror}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the service binds
            try:
                s.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return "in use (another livechain, or another program)"
                return exc.strerror or str(exc)
    return None


def render(checks: Sequence[Check], *, secrets: Sequence[str] = ()) -> tuple[str, int]:
    """(the report, the exit code: 1 when a check failed, else 0). ``secrets`` are scrubbed."""
    failed = [c.name for c in checks if c.status == "FAIL"]
    lines = ["livechain doctor", *(c.line() for c in checks)]
    lines.append(f"FAILED: {', '.join(failed)}" if failed else "all checks passed")
    text = "\n".join(lines) + "\n"
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[secret]")
    return text, 1 if failed else 0


def run_doctor(settings: Settings, *, config: object = None, check_feed: bool = True) -> tuple[str, int]:
    """``livechain doctor``: the checklist (the command line prints it) and the exit code."""
    origin = f"--config {config}" if config else (
        f"LIVECHAIN_CONFIG {os.environ['LIVECHAIN_CONFIG']}" if os.environ.get("LIVECHAIN_CONFIG") else "packaged defaults"
    )
    secrets = [os.environ.get(name, "").strip() for name in ("DHAN_ACCESS_TOKEN", "KITE_ACCESS_TOKEN")]
    checks = asyncio.run(
        diagnose(settings, check_feed=check_feed, settings_origin=f"{origin} + LIVECHAIN_* environment", secrets=secrets)
    )
    return render(checks, secrets=secrets)
