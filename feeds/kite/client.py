"""The Kite Connect ticker client: the only code in ``feeds/kite`` that touches a socket.

``KiteFeed`` shards the subscription set over at most 3 connections of at most 3000
instruments (Kite's budget per API key, kite-protocol.md §1); a plan needing more fails at
startup with the numbers. Each connection opens ``<url>?api_key=…&access_token=…`` with the
``X-Kite-Version: 3`` header, subscribes its tokens and sets their mode (options and indices
in ``full``), decodes every frame and hands normalised ticks to the sink in batches.

Failures are classified as for Dhan (``feeds.dhan.client``), with Kite's signals:

* dropped socket or close → capped exponential backoff with full jitter (reset after a healthy
  session); every reconnect resubscribes the whole set: Kite keeps no subscriptions;
* silence while the market is open → the stall watchdog replaces the socket. Kite's 1-byte
  heartbeats are proof of life and count as frames; silence means not even those;
* HTTP 403 at the handshake → the token is invalid or expired (Kite's counterpart of Dhan's
  807): the token is read again from its source; a new one reconnects at once, the same one
  stops the feed (``FatalFeedError``, exit 4) naming the source. Never a loop on 403;
* HTTP 429 at the handshake → a cool-off of at least ``rate_limit_cooloff_s``;
* text ``error`` frames (e.g. a subscription over a limit) are logged (rate-limited) and
  counted; ``message`` frames are logged; ``order`` updates are counted and ignored.

The access token travels in the URL, so the URL is never logged and library errors that could
quote it are reduced to their type and status before they leave this module.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
from yarl import URL

from feeds.clock import SYSTEM_CLOCK, Clock
from feeds.connection import ConnectionStats, FeedConnectionConfig, backoff_delay
from feeds.errors import (
    DataStall,
    DecodeError,
    FatalFeedError,
    FeedConnectionError,
    RateLimited,
    SubscriptionError,
    TokenExpired,
)
from feeds.kite.codec import decode_into, parse_text
from feeds.kite.normalize import Normalizer
from feeds.kite.packets import (
    FullPacket,
    IndexFullPacket,
    IndexQuotePacket,
    LtpPacket,
    Mode,
    Packet,
    QuotePacket,
    TextType,
    UnknownPacket,
)
from feeds.kite.requests import (
    MAX_CONNECTIONS,
    MAX_INSTRUMENTS_PER_CONNECTION,
    check_budget,
    subscribe_messages,
    unsubscribe_messages,
)
from feeds.model import ChainSkeleton, InstrumentKey, Tick
from feeds.source import ConnectionDown, ConnectionUp, FeedSink
from feeds.throttle import LogThrottle

log = logging.getLogger(__name__)

KITE_URL = "wss://ws.kite.trade"
FORBIDDEN = 403  # Kite's answer to a bad or expired access token, at the upgrade
_BINARY = aiohttp.WSMsgType.BINARY
_TEXT = aiohttp.WSMsgType.TEXT

# Packet classes as metrics name them (livechain_feed_packets_total{type}).
PACKET_NAMES: Mapping[type, str] = {
    LtpPacket: "ltp",
    IndexQuotePacket: "index_quote",
    IndexFullPacket: "index_full",
    QuotePacket: "quote",
    FullPacket: "full",
    UnknownPacket: "unknown",
}

FrameTap = Callable[[int, float, bytes], None]


class KiteFeedConfig(FeedConnectionConfig):
    """The connection settings (declared once in ``feeds.connection.FeedConnectionConfig``); Kite
    adds no floors of its own (``too_many_connections_backoff_s`` is Dhan's 805 and unused here)."""


@dataclass(frozen=True, slots=True)
class KiteCredentials:
    api_key: str = field(repr=False)
    access_token: Callable[[], str] = field(repr=False)  # read at every connect: tokens expire daily
    token_source: str = "KITE_ACCESS_TOKEN"  # named in errors, e.g. a token file's path


@dataclass(frozen=True, slots=True)
class Subscription:
    key: InstrumentKey  # (segment, instrument token)
    mode: Mode
    tick_size: float

    @property
    def token(self) -> int:
        return self.key[1]


def plan_subscriptions(skeleton: ChainSkeleton) -> list[Subscription]:
    """Every underlying index and every option, all in ``full`` (OI and depth for options; the
    index's exchange timestamp)."""
    subs = [Subscription(u.key, Mode.FULL, u.tick_size) for u in skeleton.underlyings.values()]
    subs += [
        Subscription(c.key, Mode.FULL, c.tick_size)
        for u in skeleton.underlyings.values() for e in u.expiries for c in e.contracts()
    ]  # fmt: skip
    return subs


def _shard(subs: Sequence[Subscription]) -> list[list[Subscription]]:
    check_budget(len(subs))
    size = MAX_INSTRUMENTS_PER_CONNECTION
    return [list(subs[i : i + size]) for i in range(0, len(subs), size)] or [[]]


class KiteFeed:
    """A FeedSource over Kite's ticker (or anything speaking its protocol, e.g. the simulator)."""

    broker = "kite"
    packet_names = PACKET_NAMES

    def __init__(
        self,
        config: FeedConnectionConfig,
        credentials: KiteCredentials,
        subscriptions: Sequence[Subscription],
        *,
        is_market_open: Callable[[float], bool] = lambda now: True,
        tap: FrameTap | None = None,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.clock = clock
        self._credentials = credentials
        self._normalizer = Normalizer({s.key: s.tick_size for s in subscriptions})
        self._rng = rng or random.Random()
        self.is_market_open = is_market_open
        self.tap = tap
        self.connections = [_Connection(i, group, self) for i, group in enumerate(_shard(list(subscriptions)))]
        self._group: asyncio.TaskGroup | None = None
        self._sink: FeedSink | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def instruments(self) -> frozenset[InstrumentKey]:
        return frozenset(s.key for c in self.connections for s in c.subscriptions.values())

    @property
    def unknown_instrument_packets(self) -> int:
        return self._normalizer.unknown_instrument_packets

    @property
    def credentials(self) -> KiteCredentials:
        return self._credentials

    def url(self, token: str) -> str:
        query = urlencode({"api_key": self._credentials.api_key, "access_token": token})
        return f"{self.config.url.rstrip('/')}/?{query}"

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("KiteFeed.run() is not running")
        return self._http

    # ------------------------------------------------------------------ FeedSource

    def check_capacity(self, skeleton: ChainSkeleton) -> None:
        check_budget(len(plan_subscriptions(skeleton)))

    async def update_skeleton(self, skeleton: ChainSkeleton) -> tuple[int, int]:
        return await self.update_subscriptions(plan_subscriptions(skeleton))

    async def run(self, sink: FeedSink) -> None:
        """Run every connection until cancelled; a FatalFeedError from any one stops them all."""
        self._sink = sink
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=self.config.open_timeout_s))
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for conn in self.connections:
                    conn.start(group, sink)
        except ExceptionGroup as group_error:
            errors = group_error.exceptions
            fatal = [e for e in errors if isinstance(e, FatalFeedError)]
            for other in errors[1:]:
                log.error("feed connection failed as well: %r", other)
            raise (fatal or list(errors))[0] from None
        finally:
            self._group = None
            await self._http.close()
            self._http = None

    async def update_subscriptions(self, subscriptions: Sequence[Subscription]) -> tuple[int, int]:
        """Move to a new subscription set on the live sockets; (added, removed). Raises
        SubscriptionError, changing nothing, if the set cannot fit Kite's budget."""
        check_budget(len(subscriptions))
        wanted = {s.key: s for s in subscriptions}
        held = {s.key: s for c in self.connections for s in c.subscriptions.values()}
        removed = [held[k] for k in held.keys() - wanted.keys()]
        added = [wanted[k] for k in wanted.keys() - held.keys()]
        self._normalizer.update({s.key: s.tick_size for s in added}, [s.key for s in removed])
        for conn in self.connections:
            mine = [s for s in removed if s.key in conn.subscriptions]
            if mine:
                await conn.unsubscribe(mine)
        pending = list(added)
        for conn in self.connections:
            room = MAX_INSTRUMENTS_PER_CONNECTION - len(conn.subscriptions)
            if pending and room > 0:
                take, pending = pending[:room], pending[room:]
                await conn.subscribe(take)
        while pending:
            if len(self.connections) >= MAX_CONNECTIONS:  # unreachable after check_budget; kept as a guard
                raise SubscriptionError(f"no room for {len(pending)} subscriptions in {MAX_CONNECTIONS} connections")
            take, pending = pending[:MAX_INSTRUMENTS_PER_CONNECTION], pending[MAX_INSTRUMENTS_PER_CONNECTION:]
            conn = _Connection(len(self.connections), take, self)
            self.connections.append(conn)
            if self._group is not None and self._sink is not None:
                conn.start(self._group, self._sink)
        log.info("subscriptions updated: %d added, %d removed", len(added), len(removed))
        return len(added), len(removed)


class _Connection:
    def __init__(self, index: int, subscriptions: Iterable[Subscription], feed: KiteFeed) -> None:
        self.index = index
        self.subscriptions: dict[InstrumentKey, Subscription] = {s.key: s for s in subscriptions}
        self.stats = ConnectionStats()
        self._feed = feed
        self._pending: list[Tick] = []
        self._flush_scheduled = False
        self._sink: FeedSink | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stall: str | None = None
        self._decode_log = LogThrottle(log)
        self._error_log = LogThrottle(log, level=logging.ERROR)
        self._message_log = LogThrottle(log, level=logging.INFO)

    @property
    def keys(self) -> tuple[InstrumentKey, ...]:
        return tuple(self.subscriptions)

    def start(self, group: asyncio.TaskGroup, sink: FeedSink) -> None:
        group.create_task(self.run(sink), name=f"kite-feed-{self.index}")

    @staticmethod
    def _messages(subs: Iterable[Subscription]) -> list[str]:
        by_mode: dict[Mode, list[int]] = {}
        for s in subs:
            by_mode.setdefault(s.mode, []).append(s.token)
        return [m for mode, tokens in by_mode.items() for m in subscribe_messages(mode, tokens)]

    async def subscribe(self, subs: list[Subscription]) -> None:
        for s in subs:
            self.subscriptions[s.key] = s
        await self._send_live(self._messages(subs))

    async def unsubscribe(self, subs: list[Subscription]) -> None:
        for s in subs:
            self.subscriptions.pop(s.key, None)
        await self._send_live(unsubscribe_messages(s.token for s in subs))

    async def _send_live(self, messages: list[str]) -> None:
        ws = self._ws
        if ws is None or not self.stats.connected:
            return  # the next connect sends the whole set anyway
        try:
            for message in messages:
                await ws.send_str(message)
        except (ConnectionError, aiohttp.ClientError):
            log.info("feed connection %d closed while changing subscriptions; the reconnect resends them", self.index)

    async def run(self, sink: FeedSink) -> None:
        self._sink = sink
        cfg = self._feed.config
        rng = self._feed._rng
        credentials = self._feed.credentials
        attempt = 0
        monotonic = self._feed.clock.monotonic
        while True:
            started = monotonic()
            # In a worker thread: a token source may be a file or a desk's renewal command.
            token = await asyncio.to_thread(credentials.access_token)
            floor = 0.0
            try:
                await self._session(sink, token)
                reason, kind = "closed by server", "closed"
            except FatalFeedError:
                self.stats.count_end("fatal")
                raise
            except TokenExpired:
                kind = "token_expired"
                fresh = await asyncio.to_thread(credentials.access_token)
                if fresh == token:
                    self.stats.count_end(kind)
                    raise FatalFeedError(
                        f"Kite refused the access token (HTTP 403 at the handshake), and {credentials.token_source} "
                        "still holds the same token; put a fresh token there and restart",
                        reason_code=FORBIDDEN,
                    ) from None
                reason = "access token refused (HTTP 403); reconnecting with the new token"
                attempt = 0
                floor = -1.0  # reconnect at once
            except RateLimited as exc:
                reason, kind, floor = str(exc), "rate_limited", exc.retry_after_s
            except DataStall as exc:
                reason, kind = str(exc), "stall"
            except FeedConnectionError as exc:
                reason, kind = str(exc), "dropped"
            finally:
                self._flush()
                self.stats.connected = False
                self._ws = None
            self.stats.count_end(kind)
            self.stats.last_error = reason
            sink.on_event(ConnectionDown(self.index, self.keys, reason))
            if monotonic() - started >= cfg.healthy_after_s:
                attempt = 0
            delay = 0.0 if floor < 0 else max(floor, backoff_delay(attempt, cfg.reconnect_initial_s, cfg.reconnect_max_s, rng))
            attempt += 1
            level = logging.ERROR if kind == "rate_limited" else logging.WARNING
            log.log(level, "feed connection %d lost (%s); reconnecting in %.2fs", self.index, reason, delay)
            await asyncio.sleep(delay)

    async def _session(self, sink: FeedSink, token: str) -> None:
        cfg = self._feed.config
        try:
            ws = await self._feed.http().ws_connect(
                URL(self._feed.url(token), encoded=True),
                headers={"X-Kite-Version": "3"},
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=cfg.close_timeout_s),
                heartbeat=cfg.ping_interval_s,
                compress=0,
                max_msg_size=2**22,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == FORBIDDEN:
                raise TokenExpired("handshake refused with HTTP 403: access token invalid or expired") from None
            if exc.status == 429:
                raise RateLimited(
                    f"handshake refused with HTTP 429 (too many requests); cooling off {cfg.rate_limit_cooloff_s:g}s",
                    retry_after_s=cfg.rate_limit_cooloff_s,
                ) from None
            raise FeedConnectionError(f"handshake refused with HTTP {exc.status}") from None
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            raise FeedConnectionError(f"connect failed: {type(exc).__name__}") from None
        self._ws = ws
        self._stall = None
        watchdog = asyncio.create_task(self._watch(ws), name=f"kite-watchdog-{self.index}")
        try:
            try:
                for message in self._messages(list(self.subscriptions.values())):
                    await ws.send_str(message)
            except (ConnectionError, aiohttp.ClientError):
                raise self._closed(ws) from None
            self.stats.connects += 1
            reconnect = self.stats.connects > 1
            self.stats.reconnects += int(reconnect)
            self.stats.connected = True
            log.info(
                "feed connection %d %s: %d instruments subscribed",
                self.index, "reconnected" if reconnect else "open", len(self.subscriptions),
                extra={"connection": self.index, "instruments": len(self.subscriptions), "reconnect": reconnect},
            )
            sink.on_event(ConnectionUp(self.index, self.keys, reconnect))
            await self._receive(ws)
            raise self._closed(ws)
        finally:
            watchdog.cancel()
            if not ws.closed:
                await self._close(ws)

    def _closed(self, ws: aiohttp.ClientWebSocketResponse) -> FeedConnectionError:
        if self._stall:
            return DataStall(self._stall)
        return FeedConnectionError(f"connection closed (code {ws.close_code or 1006})")

    async def _watch(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Close a socket that stays open but silent (no data, no heartbeat) while the market is open."""
        cfg = self._feed.config
        wall = self._feed.clock.time
        opened = wall()
        period = min(1.0, cfg.stall_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = wall()
            last = max(self.stats.last_frame_at or 0.0, opened)
            if now - last > cfg.stall_timeout_s and self._feed.is_market_open(now):
                self._stall = f"no data or heartbeat for {now - last:.1f}s while the market is open"
                log.warning("feed connection %d: %s; reconnecting", self.index, self._stall)
                await self._close(ws)
                return

    async def _close(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async with asyncio.timeout(self._feed.config.close_timeout_s):
                await ws.close()
        except (TimeoutError, ConnectionError, aiohttp.ClientError) as exc:
            log.info("feed connection %d did not close cleanly: %s", self.index, type(exc).__name__)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Decode every frame until the socket closes."""
        stats = self.stats
        normalize = self._feed._normalizer
        tap = self._feed.tap
        pending = self._pending
        limit = self._feed.config.max_batch_ticks
        packets: list[Packet] = []
        errors: list[DecodeError] = []
        by_type = stats.packets_by_type
        receive = ws.receive
        wall = self._feed.clock.time
        while True:
            msg = await receive()
            kind = msg.type
            if kind is not _BINARY:
                if kind is _TEXT:
                    stats.frames += 1
                    stats.text_frames += 1
                    stats.last_frame_at = wall()
                    self._text(msg.data)
                    continue
                return  # CLOSE, CLOSING, CLOSED or ERROR: the caller says why
            frame = msg.data
            now = wall()
            stats.frames += 1
            stats.last_frame_at = now
            stats.bytes += len(frame)
            if tap is not None:
                tap(self.index, now, frame)
            if len(frame) == 1:
                stats.heartbeats += 1
                continue
            decode_into(frame, packets, errors)
            if errors:
                self._count_errors(errors)
            stats.packets += len(packets)
            for p in packets:
                by_type[type(p)] += 1
            normalize(packets, now, pending)
            packets.clear()
            if len(pending) >= limit:
                self._flush()
            elif pending and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _text(self, data: str) -> None:
        try:
            message = parse_text(data)
        except DecodeError as exc:
            self._count_errors([exc])
            return
        if message.type == TextType.ERROR:
            self.stats.server_errors += 1
            self._error_log("feed connection %d: Kite sent an error: %s", self.index, str(message.data)[:200])
        elif message.type == TextType.MESSAGE:
            self._message_log("feed connection %d: Kite says: %s", self.index, str(message.data)[:200])
        # order updates concern trading, not market data: counted as text frames, nothing more

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending and self._sink is not None:
            batch = self._pending[:]
            self._pending.clear()
            self._sink.on_ticks(batch)

    def _count_errors(self, errors: list[DecodeError]) -> None:
        self.stats.decode_errors += len(errors)
        for err in errors:
            self._decode_log("feed connection %d: malformed packet skipped: %s", self.index, err)
        errors.clear()
