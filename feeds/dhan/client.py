"""The Dhan v2 live-feed client: the only code in ``feeds/dhan`` that touches a socket.

``DhanFeed`` shards the subscription set over at most 5 connections of at most 5000
instruments (Dhan's budget, reference §2.2); each ``_Connection`` connects to
``<url>?version=2&token=…&clientId=…&authType=2``, sends its subscriptions in messages of at
most 100, decodes every binary frame and hands normalised ticks to the sink in batches.

Failures are classified, not retried blindly (reference §4.9, §8.3, §8.9):

* dropped socket, close without reason, 800 → capped exponential backoff with full jitter,
  reset after a healthy session; every reconnect resubscribes the connection's whole set,
  because Dhan keeps no subscription state across connections;
* silence while the market is open (a socket that stays up but sends nothing) → the
  watchdog closes it and it reconnects; silence while the market is closed is expected;
* HTTP 429 on the handshake → a cool-off of at least ``rate_limit_cooloff_s`` (≥ 60 s);
* 805 (too many connections: another session is using this account) → a long backoff and a
  loud warning, because reconnecting at once would kick the other session in turn;
* 807 (token expired) → the token is read again from its source; a new one reconnects at
  once, the same one stops the feed with a clear error;
* 806/808/809/810 → ``FatalFeedError``: credentials or plan must change, retrying cannot help.

The access token travels in the URL, so the URL is never logged and library errors that
could quote it are reduced to their type and status before they leave this module.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlencode

import aiohttp
from yarl import URL

from feeds.clock import SYSTEM_CLOCK, Clock
from feeds.connection import ConnectionStats, FeedConnectionConfig, backoff_delay  # noqa: F401 - shared by every broker
from feeds.dhan.codec import decode_into
from feeds.dhan.normalize import Normalizer
from feeds.dhan.packets import (
    DisconnectPacket,
    DisconnectReason,
    FeedMode,
    FullPacket,
    MarketDepthPacket,
    MarketStatusPacket,
    OIPacket,
    Packet,
    PrevClosePacket,
    QuotePacket,
    TickerPacket,
    UnknownPacket,
)
from feeds.dhan.requests import (
    MAX_CONNECTIONS,
    MAX_INSTRUMENTS_PER_CONNECTION,
    disconnect_message,
    subscribe_messages,
    unsubscribe_messages,
)
from feeds.errors import (
    DataStall,
    DecodeError,
    FatalFeedError,
    FeedConnectionError,
    RateLimited,
    SubscriptionError,
    TokenExpired,
)
from feeds.model import ChainSkeleton, InstrumentKey, Tick
from feeds.source import ConnectionDown, ConnectionUp, FeedSink, ServerDisconnect
from feeds.throttle import LogThrottle

log = logging.getLogger(__name__)

_BINARY = aiohttp.WSMsgType.BINARY
_TEXT = aiohttp.WSMsgType.TEXT

# Reasons a reconnect cannot cure: the plan, the client id or the token must change first.
FATAL_REASONS = frozenset(
    {
        DisconnectReason.DATA_API_NOT_SUBSCRIBED,
        DisconnectReason.AUTHENTICATION_FAILED,
        DisconnectReason.ACCESS_TOKEN_INVALID,
        DisconnectReason.CLIENT_ID_INVALID,
    }
)
REASON_TEXT = {
    800: "internal server error",
    804: "requested number of instruments exceeds limit",
    805: "too many requests or connections (another session may be using this account)",
    806: "Data APIs not subscribed on this account",
    807: "access token expired",
    808: "authentication failed: client id or access token invalid",
    809: "access token invalid",
    810: "client id invalid",
}

# A frame tap (e.g. the recorder) sees every raw frame: (connection index, receive time, frame).
FrameTap = Callable[[int, float, bytes], None]


@dataclass(frozen=True, slots=True)
class Credentials:
    client_id: str
    access_token: Callable[[], str] = field(repr=False)  # read at every connect: tokens rotate
    token_source: str = "DHAN_ACCESS_TOKEN"  # named in errors, e.g. a token file's path


class DhanFeedConfig(FeedConnectionConfig):
    """The connection settings (declared once in ``feeds.connection.FeedConnectionConfig``) with
    Dhan's floors: its API wants at least 60 s after an HTTP 429 (reference §8.9) and a long
    wait after an 805, lest reconnecting kick the account's other session."""

    FLOORS: ClassVar[Mapping[str, tuple[float, str]]] = {
        "rate_limit_cooloff_s": (60.0, "Dhan wants at least 60 s after an HTTP 429, reference §8.9"),
        "too_many_connections_backoff_s": (30.0, "after Dhan's 805, at least 30 s"),
    }


@dataclass(frozen=True, slots=True)
class Subscription:
    key: InstrumentKey
    mode: FeedMode
    tick_size: float


def check_budget(count: int) -> None:
    """Fail with the numbers when ``count`` subscriptions cannot fit Dhan's connection budget."""
    budget = MAX_CONNECTIONS * MAX_INSTRUMENTS_PER_CONNECTION
    if count > budget:
        needed = -(-count // MAX_INSTRUMENTS_PER_CONNECTION)
        raise SubscriptionError(
            f"{count} subscriptions need {needed} connections; Dhan allows {MAX_CONNECTIONS} x "
            f"{MAX_INSTRUMENTS_PER_CONNECTION} = {budget}. Subscribe fewer underlyings or expiries."
        )


def shard(subscriptions: Sequence[Subscription]) -> list[list[Subscription]]:
    """Pack subscriptions into at most 5 connections of at most 5000, or fail with the numbers."""
    check_budget(len(subscriptions))
    size = MAX_INSTRUMENTS_PER_CONNECTION
    return [list(subscriptions[i : i + size]) for i in range(0, len(subscriptions), size)] or [[]]


# Packet classes as Dhan's response codes name them (reference §4), for metrics.
PACKET_NAMES: Mapping[type, str] = {
    TickerPacket: "ticker",
    MarketDepthPacket: "market_depth",
    QuotePacket: "quote",
    OIPacket: "oi",
    PrevClosePacket: "prev_close",
    MarketStatusPacket: "market_status",
    FullPacket: "full",
    DisconnectPacket: "disconnect",
    UnknownPacket: "unknown",
}


class DhanFeed:
    """A FeedSource over Dhan's live feed (or anything speaking its protocol, e.g. the simulator)."""

    broker = "dhan"
    packet_names = PACKET_NAMES

    def __init__(
        self,
        config: DhanFeedConfig,
        credentials: Credentials,
        subscriptions: Sequence[Subscription],
        *,
        is_market_open: Callable[[float], bool] = lambda now: True,
        tap: FrameTap | None = None,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
        index_mode: FeedMode = FeedMode.QUOTE,
    ) -> None:
        """``clock`` stamps every frame's receive time and tells the stall watchdog what time it is;
        ``index_mode`` is how ``update_skeleton`` subscribes underlying indices (options: Full)."""
        self.config = config
        self.index_mode = index_mode
        self.clock = clock
        self._credentials = credentials
        self._normalizer = Normalizer({s.key: s.tick_size for s in subscriptions})
        self._rng = rng or random.Random()
        self.is_market_open = is_market_open
        self.tap = tap
        self.connections = [_Connection(i, group, self) for i, group in enumerate(shard(list(subscriptions)))]
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
    def credentials(self) -> Credentials:
        return self._credentials

    def url(self, token: str) -> str:
        query = urlencode(
            {"version": "2", "token": token, "clientId": self._credentials.client_id, "authType": "2"}
        )
        return f"{self.config.url.rstrip('/')}?{query}"

    def http(self) -> aiohttp.ClientSession:
        """The HTTP session every connection's WebSocket is opened from (one per run)."""
        if self._http is None:
            raise RuntimeError("DhanFeed.run() is not running")
        return self._http

    async def run(self, sink: FeedSink) -> None:
        """Run every connection until cancelled; a FatalFeedError from any one stops them all."""
        self._sink = sink
        # aiohttp's WebSocket client, not the websockets library: per frame it costs a third
        # as much (perf-notes; bench "ingest"), and one session serves all five sockets.
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=self.config.open_timeout_s))
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for conn in self.connections:
                    conn.start(group, sink)
        except ExceptionGroup as group_error:
            # Callers handle one error, not a group: a fatal broker refusal first, else the first.
            errors = group_error.exceptions
            fatal = [e for e in errors if isinstance(e, FatalFeedError)]
            for other in errors[1:]:
                log.error("feed connection failed as well: %r", other)
            raise (fatal or list(errors))[0] from None
        finally:
            self._group = None
            await self._http.close()
            self._http = None

    def plan(self, skeleton: ChainSkeleton) -> list[Subscription]:
        """Options in Full mode, each underlying index in ``index_mode``."""
        indices = {u.key: u.tick_size for u in skeleton.underlyings.values()}
        options = {c.key: c.tick_size for u in skeleton.underlyings.values() for e in u.expiries for c in e.contracts()}
        return plan_subscriptions(options, indices, self.index_mode)

    def check_capacity(self, skeleton: ChainSkeleton) -> None:
        """FeedSource: SubscriptionError with the numbers if ``skeleton`` exceeds 5 x 5000."""
        check_budget(len(self.plan(skeleton)))

    async def update_skeleton(self, skeleton: ChainSkeleton) -> tuple[int, int]:
        """FeedSource: subscribe ``skeleton`` on the live sockets (see update_subscriptions)."""
        return await self.update_subscriptions(self.plan(skeleton))

    async def update_subscriptions(self, subscriptions: Sequence[Subscription]) -> tuple[int, int]:
        """Move to a new subscription set with unsubscribe/subscribe messages on live sockets.

        Removed instruments are unsubscribed where they are held; added ones go to the
        connections with room, opening a new connection only when all are full. Returns
        (added, removed). Raises SubscriptionError, changing nothing, if the set cannot fit.
        """
        check_budget(len(subscriptions))
        wanted = {(s.key, s.mode): s for s in subscriptions}
        held = {(s.key, s.mode): s for c in self.connections for s in c.subscriptions.values()}
        removed = [held[k] for k in held.keys() - wanted.keys()]
        added = [wanted[k] for k in wanted.keys() - held.keys()]
        self._normalizer.update({s.key: s.tick_size for s in added}, {s.key for s in removed} - {s.key for s in subscriptions})
        for conn in self.connections:
            mine = [s for s in removed if (s.key, s.mode) in conn.subscriptions]
            if mine:
                await conn.unsubscribe(mine)
        pending = list(added)
        for conn in self.connections:
            room = MAX_INSTRUMENTS_PER_CONNECTION - len(conn.subscriptions)
            if pending and room > 0:
                take, pending = pending[:room], pending[room:]
                await conn.subscribe(take)
        while pending:
            take, pending = pending[:MAX_INSTRUMENTS_PER_CONNECTION], pending[MAX_INSTRUMENTS_PER_CONNECTION:]
            conn = _Connection(len(self.connections), take, self)
            self.connections.append(conn)
            if self._group is not None and self._sink is not None:
                conn.start(self._group, self._sink)
        log.info("subscriptions updated: %d added, %d removed", len(added), len(removed))
        return len(added), len(removed)


class _Connection:
    def __init__(self, index: int, subscriptions: Iterable[Subscription], feed: DhanFeed) -> None:
        self.index = index
        self.subscriptions: dict[tuple[InstrumentKey, FeedMode], Subscription] = {
            (s.key, s.mode): s for s in subscriptions
        }
        self.stats = ConnectionStats()
        self._feed = feed
        self._pending: list[Tick] = []
        self._flush_scheduled = False
        self._sink: FeedSink | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stall: str | None = None
        self._decode_log = LogThrottle(log)

    @property
    def keys(self) -> tuple[InstrumentKey, ...]:
        return tuple(dict.fromkeys(key for key, _ in self.subscriptions))

    def start(self, group: asyncio.TaskGroup, sink: FeedSink) -> None:
        group.create_task(self.run(sink), name=f"dhan-feed-{self.index}")

    def _messages(self, subs: Iterable[Subscription], subscribe: bool) -> list[str]:
        by_mode: dict[FeedMode, list[InstrumentKey]] = {}
        for s in subs:
            by_mode.setdefault(s.mode, []).append(s.key)
        encode = subscribe_messages if subscribe else unsubscribe_messages
        return [m for mode, keys in by_mode.items() for m in encode(mode, keys)]

    async def subscribe(self, subs: list[Subscription]) -> None:
        for s in subs:
            self.subscriptions[(s.key, s.mode)] = s
        await self._send_live(self._messages(subs, subscribe=True))

    async def unsubscribe(self, subs: list[Subscription]) -> None:
        for s in subs:
            self.subscriptions.pop((s.key, s.mode), None)
        await self._send_live(self._messages(subs, subscribe=False))

    async def _send_live(self, messages: list[str]) -> None:
        """Send on the open socket; when closed, the next connect sends the whole set anyway."""
        ws = self._ws
        if ws is None or not self.stats.connected:
            return
        try:
            for message in messages:
                await ws.send_str(message)
        except (ConnectionError, aiohttp.ClientError):
            log.info("feed connection %d closed while changing subscriptions; the reconnect resends them", self.index)

    async def run(self, sink: FeedSink) -> None:
        self._sink = sink
        cfg = self._feed.config
        rng = self._feed._rng
        attempt = 0
        monotonic = self._feed.clock.monotonic
        while True:
            started = monotonic()
            # In a worker thread: a token source may be a file or a desk's renewal command.
            token = await asyncio.to_thread(self._feed.credentials.access_token)
            floor = 0.0
            try:
                await self._session(sink, token)
                reason, kind = "closed by server", "closed"
            except FatalFeedError as exc:
                self.stats.count_end("fatal")
                raise exc from None
            except TokenExpired:
                kind = "token_expired"
                fresh = await asyncio.to_thread(self._feed.credentials.access_token)
                if fresh == token:
                    self.stats.count_end(kind)
                    raise FatalFeedError(
                        f"Dhan closed the feed: 807 access token expired, and {self._feed.credentials.token_source} "
                        "still holds the same token; put a fresh token there and restart",
                        reason_code=DisconnectReason.ACCESS_TOKEN_EXPIRED,
                    ) from None
                reason = "access token expired; reconnecting with the new token"
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
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=cfg.close_timeout_s),
                # Our own pings; Dhan's (every 10 s) are answered automatically (autoping).
                heartbeat=cfg.ping_interval_s,
                compress=0,
                max_msg_size=2**20,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 429:
                raise RateLimited(
                    f"handshake refused with HTTP 429 (too many requests); cooling off {cfg.rate_limit_cooloff_s:g}s",
                    retry_after_s=cfg.rate_limit_cooloff_s,
                ) from None
            raise FeedConnectionError(f"handshake refused with HTTP {exc.status}") from None
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            # str(exc) of some aiohttp errors quotes the URL, which holds the token.
            raise FeedConnectionError(f"connect failed: {type(exc).__name__}") from None
        self._ws = ws
        self._stall = None
        watchdog = asyncio.create_task(self._watch(ws), name=f"dhan-watchdog-{self.index}")
        try:
            try:
                for message in self._messages(list(self.subscriptions.values()), subscribe=True):
                    await ws.send_str(message)
            except (ConnectionError, aiohttp.ClientError):
                # Dhan says why it hangs up in a code-50 packet sent before the close: read
                # what is buffered before reporting the close itself.
                await self._receive(ws, sink)
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
            await self._receive(ws, sink)
            raise self._closed(ws)
        except asyncio.CancelledError:
            await self._close(ws, send_disconnect=True)
            raise
        finally:
            watchdog.cancel()
            if not ws.closed:
                await self._close(ws, send_disconnect=False)

    def _closed(self, ws: aiohttp.ClientWebSocketResponse) -> FeedConnectionError:
        """Why the socket ended: our watchdog, or the peer (with its close code, 1006 if none)."""
        if self._stall:
            return DataStall(self._stall)
        return FeedConnectionError(f"connection closed (code {ws.close_code or 1006})")

    async def _watch(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Close a socket that stays open but silent while the market is open."""
        cfg = self._feed.config
        wall = self._feed.clock.time
        opened = wall()
        period = min(1.0, cfg.stall_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = wall()
            last = max(self.stats.last_frame_at or 0.0, opened)
            if now - last > cfg.stall_timeout_s and self._feed.is_market_open(now):
                self._stall = f"no data for {now - last:.1f}s while the market is open"
                log.warning("feed connection %d: %s; reconnecting", self.index, self._stall)
                await self._close(ws, send_disconnect=False)
                return

    async def _close(self, ws: aiohttp.ClientWebSocketResponse, *, send_disconnect: bool) -> None:
        try:
            async with asyncio.timeout(self._feed.config.close_timeout_s):
                if send_disconnect and not ws.closed:
                    await ws.send_str(disconnect_message())
                await ws.close()
        except (TimeoutError, ConnectionError, aiohttp.ClientError) as exc:
            log.info("feed connection %d did not close cleanly: %s", self.index, type(exc).__name__)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, sink: FeedSink) -> None:
        """Decode every frame until the socket closes (returns) or a code-50 packet ends it (raises)."""
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
                    continue
                return  # CLOSE, CLOSING, CLOSED or ERROR: the caller says why
            frame = msg.data
            now = wall()
            stats.frames += 1
            stats.last_frame_at = now
            if tap is not None:
                tap(self.index, now, frame)
            stats.bytes += len(frame)
            decode_into(frame, packets, errors)
            if errors:
                self._count_errors(errors)
            stats.packets += len(packets)
            for p in packets:
                cls = type(p)
                by_type[cls] += 1
                if cls is DisconnectPacket:
                    self._flush()
                    self._server_disconnect(p, sink)
            normalize(packets, now, pending)
            packets.clear()
            if len(pending) >= limit:
                self._flush()
            elif pending and not self._flush_scheduled:
                # Frames already buffered are read without suspending; the flush runs when
                # this task next yields, so one batch holds everything that arrived together.
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending and self._sink is not None:
            batch = self._pending[:]
            self._pending.clear()
            self._sink.on_ticks(batch)

    def _count_errors(self, errors: list[DecodeError]) -> None:
        self.stats.decode_errors += len(errors)
        for err in errors:
            # Throttled: a broker sending garbage must not flood the log (the metric has the count).
            self._decode_log("feed connection %d: malformed packet skipped: %s", self.index, err)
        errors.clear()

    def _server_disconnect(self, packet: DisconnectPacket, sink: FeedSink) -> None:
        code = packet.reason
        text = REASON_TEXT.get(code, "unknown reason")
        self.stats.server_disconnect_codes[code] = self.stats.server_disconnect_codes.get(code, 0) + 1
        sink.on_event(ServerDisconnect(self.index, code, text))
        if code in FATAL_REASONS:
            raise FatalFeedError(f"Dhan closed the feed: {code} {text}", reason_code=code)
        if code == DisconnectReason.ACCESS_TOKEN_EXPIRED:
            raise TokenExpired(f"server disconnect {code}: {text}")
        if code == DisconnectReason.TOO_MANY_CONNECTIONS:
            wait = self._feed.config.too_many_connections_backoff_s
            log.error(
                "Dhan disconnected feed connection %d with 805: more than 5 feed connections are open on this "
                "account — another program or session is using it. Waiting %.0fs before reconnecting.",
                self.index, wait,
            )
            raise RateLimited(f"server disconnect 805: {text}", retry_after_s=wait)
        raise FeedConnectionError(f"server disconnect {code}: {text}")


def plan_subscriptions(
    options: Mapping[InstrumentKey, float], indices: Mapping[InstrumentKey, float], index_mode: FeedMode
) -> list[Subscription]:
    """Options in Full mode (depth, OI), underlying indices in ``index_mode``."""
    subs = [Subscription(key, index_mode, tick) for key, tick in indices.items()]
    subs += [Subscription(key, FeedMode.FULL, tick) for key, tick in options.items()]
    return subs
