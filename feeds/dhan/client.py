"""The Dhan v2 live-feed client: the only code in ``feeds/dhan`` that touches a socket.

``DhanFeed`` shards the subscription set over at most 5 connections of at most 5000
instruments (Dhan's budget, reference §2.2); each ``_Connection`` connects to
``<url>?version=2&token=…&clientId=…&authType=2``, sends its subscriptions in messages of at
most 100, decodes every binary frame and hands normalised ticks to the sink in batches.
A dropped connection reconnects with capped exponential backoff and full jitter and
resubscribes its whole set, because Dhan keeps no subscription state across connections.

The access token travels in the URL, so the URL is never logged and library errors that
could quote it are reduced to their type and status before they leave this module.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection, connect

from feeds.errors import DecodeError, FatalFeedError, FeedConnectionError, SubscriptionError
from feeds.model import InstrumentKey, Tick
from feeds.source import ConnectionDown, ConnectionUp, FeedSink, ServerDisconnect
from feeds.dhan.codec import decode_into
from feeds.dhan.normalize import Normalizer
from feeds.dhan.packets import DisconnectPacket, DisconnectReason, FeedMode, Packet
from feeds.dhan.requests import (
    MAX_CONNECTIONS,
    MAX_INSTRUMENTS_PER_CONNECTION,
    disconnect_message,
    subscribe_messages,
)

log = logging.getLogger(__name__)

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


@dataclass(frozen=True, slots=True)
class Credentials:
    client_id: str
    access_token: Callable[[], str] = field(repr=False)  # read at every connect: tokens rotate


@dataclass(frozen=True, slots=True)
class DhanFeedConfig:
    url: str = "wss://api-feed.dhan.co"
    open_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    close_timeout_s: float = 2.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    # A session that stayed up this long resets the backoff to its initial delay.
    healthy_after_s: float = 30.0
    max_batch_ticks: int = 1024

    def __post_init__(self) -> None:
        for name in ("open_timeout_s", "close_timeout_s", "reconnect_initial_s", "reconnect_max_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")


@dataclass(frozen=True, slots=True)
class Subscription:
    key: InstrumentKey
    mode: FeedMode
    tick_size: float


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, initial·2^attempt)]."""
    return rng.uniform(0.0, min(max_s, initial_s * (2 ** min(attempt, 30))))


def shard(subscriptions: Sequence[Subscription]) -> list[list[Subscription]]:
    """Pack subscriptions into at most 5 connections of at most 5000, or fail with the numbers."""
    needed = -(-len(subscriptions) // MAX_INSTRUMENTS_PER_CONNECTION)
    if needed > MAX_CONNECTIONS:
        raise SubscriptionError(
            f"{len(subscriptions)} subscriptions need {needed} connections; Dhan allows "
            f"{MAX_CONNECTIONS} x {MAX_INSTRUMENTS_PER_CONNECTION} = "
            f"{MAX_CONNECTIONS * MAX_INSTRUMENTS_PER_CONNECTION}. Subscribe fewer underlyings or expiries."
        )
    size = MAX_INSTRUMENTS_PER_CONNECTION
    return [list(subscriptions[i : i + size]) for i in range(0, len(subscriptions), size)]


@dataclass(slots=True)
class ConnectionStats:
    """Plain counters, incremented per frame; metrics read them at scrape time."""

    connects: int = 0
    reconnects: int = 0
    frames: int = 0
    bytes: int = 0
    packets: int = 0
    decode_errors: int = 0
    text_frames: int = 0
    last_frame_at: float | None = None
    connected: bool = False
    last_error: str | None = None


class DhanFeed:
    """A FeedSource over Dhan's live feed (or anything speaking its protocol, e.g. the simulator)."""

    def __init__(
        self,
        config: DhanFeedConfig,
        credentials: Credentials,
        subscriptions: Sequence[Subscription],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._credentials = credentials
        self._normalizer = Normalizer({s.key: s.tick_size for s in subscriptions})
        self._rng = rng or random.Random()
        self.connections = [
            _Connection(i, group, self) for i, group in enumerate(shard(list(subscriptions)))
        ]

    @property
    def instruments(self) -> frozenset[InstrumentKey]:
        return frozenset(s.key for c in self.connections for s in c.subscriptions)

    @property
    def unknown_instrument_packets(self) -> int:
        return self._normalizer.unknown_instrument_packets

    def url(self) -> str:
        query = urlencode(
            {
                "version": "2",
                "token": self._credentials.access_token(),
                "clientId": self._credentials.client_id,
                "authType": "2",
            }
        )
        return f"{self.config.url.rstrip('/')}?{query}"

    async def run(self, sink: FeedSink) -> None:
        """Run every connection until cancelled; a FatalFeedError from any one stops them all."""
        try:
            async with asyncio.TaskGroup() as group:
                for conn in self.connections:
                    group.create_task(conn.run(sink), name=f"dhan-feed-{conn.index}")
        except ExceptionGroup as group_error:
            # Callers handle one error, not a group: a fatal broker refusal first, else the first.
            errors = group_error.exceptions
            fatal = [e for e in errors if isinstance(e, FatalFeedError)]
            for other in errors[1:]:
                log.error("feed connection failed as well: %r", other)
            raise (fatal or list(errors))[0] from None


class _Connection:
    def __init__(self, index: int, subscriptions: list[Subscription], feed: DhanFeed) -> None:
        self.index = index
        self.subscriptions = subscriptions
        self.keys = tuple(dict.fromkeys(s.key for s in subscriptions))
        self.stats = ConnectionStats()
        self._feed = feed
        self._pending: list[Tick] = []
        self._flush_scheduled = False
        self._sink: FeedSink | None = None

    def _messages(self) -> list[str]:
        by_mode: dict[FeedMode, list[InstrumentKey]] = {}
        for s in self.subscriptions:
            by_mode.setdefault(s.mode, []).append(s.key)
        return [m for mode, keys in by_mode.items() for m in subscribe_messages(mode, keys)]

    async def run(self, sink: FeedSink) -> None:
        self._sink = sink
        cfg = self._feed.config
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._session(sink)
                reason = "closed by server"
            except FatalFeedError:
                raise
            except FeedConnectionError as exc:
                reason = str(exc)
            finally:
                self._flush()
                if self.stats.connected:
                    self.stats.connected = False
            self.stats.last_error = reason
            sink.on_event(ConnectionDown(self.index, self.keys, reason))
            if time.monotonic() - started >= cfg.healthy_after_s:
                attempt = 0
            delay = backoff_delay(attempt, cfg.reconnect_initial_s, cfg.reconnect_max_s, self._feed._rng)
            attempt += 1
            log.warning("feed connection %d lost (%s); reconnecting in %.2fs", self.index, reason, delay)
            await asyncio.sleep(delay)

    async def _session(self, sink: FeedSink) -> None:
        cfg = self._feed.config
        try:
            ws = await connect(
                self._feed.url(),
                open_timeout=cfg.open_timeout_s,
                ping_interval=cfg.ping_interval_s,
                ping_timeout=cfg.ping_timeout_s,
                close_timeout=cfg.close_timeout_s,
                compression=None,
                max_size=2**20,
            )
        except websockets.InvalidStatus as exc:
            raise FeedConnectionError(f"handshake refused with HTTP {exc.response.status_code}") from None
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            # str(exc) of some websockets errors quotes the URL, which holds the token.
            raise FeedConnectionError(f"connect failed: {type(exc).__name__}") from None
        try:
            try:
                for message in self._messages():
                    await ws.send(message)
            except websockets.ConnectionClosed:
                # Dhan says why it hangs up in a code-50 packet sent before the close: read
                # what is buffered before reporting the close itself.
                await self._receive(ws, sink)
                raise
            self.stats.connects += 1
            reconnect = self.stats.connects > 1
            self.stats.reconnects += int(reconnect)
            self.stats.connected = True
            log.info(
                "feed connection %d %s: %d instruments subscribed",
                self.index, "reconnected" if reconnect else "open", len(self.keys),
            )
            sink.on_event(ConnectionUp(self.index, self.keys, reconnect))
            await self._receive(ws, sink)
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            raise FeedConnectionError(f"connection closed (code {code})") from None
        except asyncio.CancelledError:
            await self._close(ws, send_disconnect=True)
            raise
        finally:
            if ws.state is not websockets.State.CLOSED:
                await self._close(ws, send_disconnect=False)

    async def _close(self, ws: ClientConnection, *, send_disconnect: bool) -> None:
        try:
            async with asyncio.timeout(self._feed.config.close_timeout_s):
                if send_disconnect:
                    await ws.send(disconnect_message())
                await ws.close()
        except (TimeoutError, websockets.WebSocketException, OSError) as exc:
            log.info("feed connection %d did not close cleanly: %s", self.index, type(exc).__name__)

    async def _receive(self, ws: ClientConnection, sink: FeedSink) -> None:
        stats = self.stats
        normalize = self._feed._normalizer
        pending = self._pending
        limit = self._feed.config.max_batch_ticks
        packets: list[Packet] = []
        errors: list[DecodeError] = []
        async for frame in ws:
            now = time.time()
            stats.frames += 1
            stats.last_frame_at = now
            if type(frame) is str:
                stats.text_frames += 1
                continue
            stats.bytes += len(frame)
            decode_into(frame, packets, errors)
            if errors:
                self._count_errors(errors)
            stats.packets += len(packets)
            for p in packets:
                if type(p) is DisconnectPacket:
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
        for err in errors:
            self.stats.decode_errors += 1
            n = self.stats.decode_errors
            if n & (n - 1) == 0:  # log the 1st, 2nd, 4th, 8th… so a flood cannot fill the log
                log.warning("feed connection %d: malformed packet skipped (%d so far): %s", self.index, n, err)
        errors.clear()

    def _server_disconnect(self, packet: DisconnectPacket, sink: FeedSink) -> None:
        text = REASON_TEXT.get(packet.reason, "unknown reason")
        sink.on_event(ServerDisconnect(self.index, packet.reason, text))
        if packet.reason in FATAL_REASONS:
            raise FatalFeedError(f"Dhan closed the feed: {packet.reason} {text}", reason_code=packet.reason)
        raise FeedConnectionError(f"server disconnect {packet.reason}: {text}")


def plan_subscriptions(
    options: Mapping[InstrumentKey, float], indices: Mapping[InstrumentKey, float], index_mode: FeedMode
) -> list[Subscription]:
    """Options in Full mode (depth, OI), underlying indices in ``index_mode``."""
    subs = [Subscription(key, index_mode, tick) for key, tick in indices.items()]
    subs += [Subscription(key, FeedMode.FULL, tick) for key, tick in options.items()]
    return subs
