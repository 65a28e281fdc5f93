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

from feeds.clock import SYSTEM_CLOCK, Clock
from feeds.connection import (  # noqa: F401 - ConnectionStats, backoff_delay: shared by every broker
    ConnectionStats,
    FeedConnectionConfig,
    backoff_delay,
    check_connection_budget,
    split_connections,
)
from feeds.dhan.batch import FULL_SIZE, decode_full_frames
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
    DecodeError,
    FatalFeedError,
    FeedConnectionError,
    RateLimited,
    TokenExpired,
)
from feeds.feed_client import BrokerFeed, FeedConnection, FrameTap
from feeds.model import ChainSkeleton, FullTickBatch, InstrumentKey, Tick
from feeds.source import FeedSink, ServerDisconnect

log = logging.getLogger(__name__)

_BINARY = aiohttp.WSMsgType.BINARY
_TEXT = aiohttp.WSMsgType.TEXT
# Fewer gathered Full frames than this are decoded packet by packet: a numpy batch costs a fixed
# ~0.1-0.2 ms to decode and as much to apply, which a handful of packets does not repay. It
# matters when other frames interleave, as on subscription (prev close, then the Full packet,
# per instrument): there every batch would hold one frame, and at 25k instruments the first
# packets took seconds longer to apply than packet by packet (bench coldstart).
MIN_BATCH_FRAMES = 16

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
    check_connection_budget(count, "Dhan", MAX_CONNECTIONS, MAX_INSTRUMENTS_PER_CONNECTION)


def shard(subscriptions: Sequence[Subscription]) -> list[list[Subscription]]:
    """Pack subscriptions into at most 5 connections of at most 5000, or fail with the numbers."""
    check_budget(len(subscriptions))
    return split_connections(subscriptions, MAX_INSTRUMENTS_PER_CONNECTION)


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


class _Connection(FeedConnection):
    """One Dhan socket; the reconnect loop, watchdog and batching are ``FeedConnection``'s."""

    _log = log
    name = "dhan"
    stale_token = (
        "Dhan closed the feed: 807 access token expired, and {source} "
        "still holds the same token; put a fresh token there and restart"
    )
    stale_token_code = DisconnectReason.ACCESS_TOKEN_EXPIRED
    renewed_token = "access token expired; reconnecting with the new token"

    @staticmethod
    def slot(sub: Subscription) -> tuple[InstrumentKey, FeedMode]:
        return (sub.key, sub.mode)

    @property
    def keys(self) -> tuple[InstrumentKey, ...]:
        return tuple(dict.fromkeys(key for key, _ in self.subscriptions))  # type: ignore[misc]

    @staticmethod
    def _messages(subs: Iterable[Subscription], subscribe: bool) -> list[str]:
        by_mode: dict[FeedMode, list[InstrumentKey]] = {}
        for s in subs:
            by_mode.setdefault(s.mode, []).append(s.key)
        encode = subscribe_messages if subscribe else unsubscribe_messages
        return [m for mode, keys in by_mode.items() for m in encode(mode, keys)]

    def _subscribe_messages(self, subs: Iterable[Subscription]) -> list[str]:
        return self._messages(subs, subscribe=True)

    def _unsubscribe_messages(self, subs: Iterable[Subscription]) -> list[str]:
        return self._messages(subs, subscribe=False)

    def _goodbye(self) -> str:
        return disconnect_message()

    async def _after_send_failure(self, ws: aiohttp.ClientWebSocketResponse, sink: FeedSink) -> None:
        # Dhan says why it hangs up in a code-50 packet sent before the close: read what is
        # buffered before reporting the close itself.
        await self._receive(ws, sink)

    def __init__(self, index: int, subscriptions: Iterable[Subscription], feed: BrokerFeed) -> None:
        super().__init__(index, subscriptions, feed)
        self._frames: list[bytes] = []  # one-Full-packet frames gathered for the batch path
        self._batch_at = 0.0  # when the batch being gathered began: every tick's received_at
        self._packets: list[Packet] = []
        self._errors: list[DecodeError] = []
        self._batches_pending = 0  # FullTickBatch items in _pending
        self._disconnect: DisconnectPacket | None = None  # found by a flush, raised by the loop

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, sink: FeedSink) -> None:
        """Read every frame until the socket closes (returns) or a code-50 packet ends it (raises).

        The hot path: a frame holding one Full packet (162 bytes, what every option in Full mode
        sends) is only appended to the batch being gathered; the batch is decoded, normalised and
        handed over column by column (``feeds.dhan.batch``) when this task next waits for the
        socket, or at ``max_batch_ticks`` frames. Any other frame is decoded at once, packet by
        packet, after the Full frames gathered before it, so arrival order is kept. Frames, bytes
        and packets are counted per batch; a batch's ticks carry the time its first frame was read.
        """
        stats = self.stats
        frames = self._frames
        limit = self._feed.config.max_batch_ticks
        receive = ws.receive
        full_size = FULL_SIZE
        while True:
            msg = await receive()
            if msg[0] is not _BINARY:
                if msg[0] is _TEXT:
                    stats.frames += 1
                    stats.text_frames += 1
                    continue
                self._raise_found_disconnect(sink)
                return  # CLOSE, CLOSING, CLOSED or ERROR: the caller says why
            data = msg[1]
            if len(data) == full_size:
                if not frames:
                    self._open_batch(sink)
                frames.append(data)
                if len(frames) >= limit:
                    self._flush()
            else:
                self._other_frame(data, sink)

    def _open_batch(self, sink: FeedSink) -> None:
        self._raise_found_disconnect(sink)
        if not self._flush_scheduled:
            # Frames already buffered are read without suspending; the flush runs when this task
            # next yields, so one batch holds everything that arrived together.
            self._batch_at = self._feed.clock.time()
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _other_frame(self, data: bytes, sink: FeedSink) -> None:
        """A frame that is not one Full packet: decoded now, after the Full frames gathered before it."""
        self._open_batch(sink)
        if self._frames:
            self._take_frames()
            self._raise_found_disconnect(sink)
        stats = self.stats
        stats.frames += 1
        stats.bytes += len(data)
        stats.last_frame_at = at = self._batch_at
        tap = self._feed.tap
        if tap is not None:
            tap(self.index, at, data)
        disconnect = self._decode(data)
        if disconnect is not None:
            self._flush()
            self._server_disconnect(disconnect, sink)
        if len(self._pending) >= self._feed.config.max_batch_ticks:
            self._flush()

    def _decode(self, data: bytes) -> DisconnectPacket | None:
        """Decode one frame packet by packet into ``_pending``; a code-50 packet stops it and is returned."""
        packets, errors = self._packets, self._errors
        decode_into(data, packets, errors)
        if errors:
            self._count_errors(errors)
        stats = self.stats
        stats.packets += len(packets)
        by_type = stats.packets_by_type
        for p in packets:
            cls = type(p)
            by_type[cls] += 1
            if cls is DisconnectPacket:
                packets.clear()
                return p  # type: ignore[return-value]
        self._feed._normalizer(packets, self._batch_at, self._pending)
        packets.clear()
        return None

    def _take_frames(self) -> None:
        """Decode the gathered Full frames into ``_pending``: as one batch, or one by one when few or malformed."""
        frames = self._frames
        n = len(frames)
        at = self._batch_at
        stats = self.stats
        stats.frames += n
        stats.bytes += n * FULL_SIZE
        stats.last_frame_at = at
        tap = self._feed.tap
        if tap is not None:
            for frame in frames:
                tap(self.index, at, frame)
        pending = self._pending
        batch = decode_full_frames(frames, self._feed._normalizer, at, pending) if n >= MIN_BATCH_FRAMES else None
        if batch is None:
            for frame in frames:
                disconnect = self._decode(frame)
                if disconnect is not None:
                    self._disconnect = disconnect  # raised by the receive loop, which owns the socket
                    break
        else:
            stats.packets += n
            stats.packets_by_type[FullPacket] += n
            if len(batch):
                # Slow-tick instruments' ticks were appended first; they are other instruments.
                pending.append(batch)  # type: ignore[arg-type]
                self._batches_pending += 1
        frames.clear()

    def _raise_found_disconnect(self, sink: FeedSink) -> None:
        disconnect, self._disconnect = self._disconnect, None
        if disconnect is not None:
            self._flush()
            self._server_disconnect(disconnect, sink)

    def _flush(self) -> None:
        if self._frames:
            self._take_frames()
        self._flush_scheduled = False
        pending, sink = self._pending, self._sink
        if not pending or sink is None:
            return
        items = pending[:]
        pending.clear()
        if not self._batches_pending:
            sink.on_ticks(items)
            return
        self._batches_pending = 0
        on_batch = getattr(sink, "on_batch", None)
        ticks: list[Tick] = []
        for item in items:
            if type(item) is FullTickBatch:
                if ticks:
                    sink.on_ticks(ticks)
                    ticks = []
                if on_batch is not None:
                    on_batch(item)
                else:
                    sink.on_ticks(item.ticks())
            else:
                ticks.append(item)
        if ticks:
            sink.on_ticks(ticks)

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


class DhanFeed(BrokerFeed):
    """A FeedSource over Dhan's live feed (or anything speaking its protocol, e.g. the simulator)."""

    broker = "dhan"
    packet_names = PACKET_NAMES
    connection_class = _Connection
    normalizer_class = Normalizer
    max_connections = MAX_CONNECTIONS
    max_instruments_per_connection = MAX_INSTRUMENTS_PER_CONNECTION
    check_budget = staticmethod(check_budget)
    _log = log

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
        """``index_mode`` is how ``update_skeleton`` subscribes underlying indices (options: Full)."""
        self.index_mode = index_mode
        super().__init__(
            config, credentials, subscriptions, is_market_open=is_market_open, tap=tap, rng=rng, clock=clock
        )

    @property
    def credentials(self) -> Credentials:
        return self._credentials  # type: ignore[no-any-return]

    def url(self, token: str) -> str:
        query = urlencode(
            {"version": "2", "token": token, "clientId": self._credentials.client_id, "authType": "2"}
        )
        return f"{self.config.url.rstrip('/')}?{query}"

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


def plan_subscriptions(
    options: Mapping[InstrumentKey, float], indices: Mapping[InstrumentKey, float], index_mode: FeedMode
) -> list[Subscription]:
    """Options in Full mode (depth, OI), underlying indices in ``index_mode``."""
    subs = [Subscription(key, index_mode, tick) for key, tick in indices.items()]
    subs += [Subscription(key, FeedMode.FULL, tick) for key, tick in options.items()]
    return subs
