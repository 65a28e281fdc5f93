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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp

from feeds.connection import FeedConnectionConfig
from feeds.errors import DecodeError, FeedConnectionError, TokenExpired
from feeds.feed_client import BrokerFeed, FeedConnection
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
from feeds.model import ChainSkeleton, InstrumentKey
from feeds.source import FeedSink
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


class _Connection(FeedConnection):
    """One Kite socket; the reconnect loop, watchdog and batching are ``FeedConnection``'s."""

    _log = log
    name = "kite"
    headers = {"X-Kite-Version": "3"}
    max_msg_size = 2**22
    stall_what = "data or heartbeat"
    stale_token = (
        "Kite refused the access token (HTTP 403 at the handshake), and {source} "
        "still holds the same token; put a fresh token there and restart"
    )
    stale_token_code = FORBIDDEN
    renewed_token = "access token refused (HTTP 403); reconnecting with the new token"

    def __init__(self, index: int, subscriptions: Iterable[Subscription], feed: KiteFeed) -> None:
        super().__init__(index, subscriptions, feed)
        self._error_log = LogThrottle(log, level=logging.ERROR)
        self._message_log = LogThrottle(log, level=logging.INFO)

    @staticmethod
    def slot(sub: Subscription) -> InstrumentKey:
        return sub.key

    @property
    def keys(self) -> tuple[InstrumentKey, ...]:
        return tuple(self.subscriptions)  # type: ignore[arg-type]

    def _subscribe_messages(self, subs: Iterable[Subscription]) -> list[str]:
        by_mode: dict[Mode, list[int]] = {}
        for s in subs:
            by_mode.setdefault(s.mode, []).append(s.token)
        return [m for mode, tokens in by_mode.items() for m in subscribe_messages(mode, tokens)]

    def _unsubscribe_messages(self, subs: Iterable[Subscription]) -> list[str]:
        return unsubscribe_messages(s.token for s in subs)

    def _handshake_refused(self, status: int) -> FeedConnectionError | None:
        if status == FORBIDDEN:
            return TokenExpired("handshake refused with HTTP 403: access token invalid or expired")
        return None

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, sink: FeedSink) -> None:
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


class KiteFeed(BrokerFeed):
    """A FeedSource over Kite's ticker (or anything speaking its protocol, e.g. the simulator)."""

    broker = "kite"
    packet_names = PACKET_NAMES
    connection_class = _Connection
    normalizer_class = Normalizer
    max_connections = MAX_CONNECTIONS
    max_instruments_per_connection = MAX_INSTRUMENTS_PER_CONNECTION
    check_budget = staticmethod(check_budget)
    _log = log

    @property
    def credentials(self) -> KiteCredentials:
        return self._credentials  # type: ignore[no-any-return]

    def url(self, token: str) -> str:
        query = urlencode({"api_key": self._credentials.api_key, "access_token": token})
        return f"{self.config.url.rstrip('/')}/?{query}"

    # ------------------------------------------------------------------ FeedSource

    def check_capacity(self, skeleton: ChainSkeleton) -> None:
        check_budget(len(plan_subscriptions(skeleton)))

    async def update_skeleton(self, skeleton: ChainSkeleton) -> tuple[int, int]:
        return await self.update_subscriptions(plan_subscriptions(skeleton))
