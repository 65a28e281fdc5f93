"""The broker-neutral half of a live-feed client: what ``feeds.dhan.client`` and
``feeds.kite.client`` do alike, written once.

``BrokerFeed`` shards the subscription set over connections, runs them in one task group on one
aiohttp session and moves live sockets to a new subscription set. ``FeedConnection`` owns one
socket's life: the reconnect loop (classified failures, backoff with full jitter reset after a
healthy session, the token read again after a refusal), the handshake's HTTP statuses, the
initial subscription, the stall watchdog, the close, live subscribe/unsubscribe and the
batching of ticks to the sink.

A broker supplies small hooks: the URL and handshake headers, its subscription messages, what a
refused handshake means, a goodbye message, the texts of a refused token, and its receive loop
(``_receive``). The receive loop stays in the broker's module on purpose: it is the hot path and
the protocols differ inside it (Dhan's code-50 packets, Kite's heartbeats and text frames), so
each keeps its own loop with no extra call per frame; it uses ``_flush`` and ``_count_errors``
from here.

Logging goes to the broker module's logger (``_log``), so log names stay per broker.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import aiohttp
from yarl import URL

from feeds.clock import SYSTEM_CLOCK, Clock
from feeds.connection import ConnectionStats, FeedConnectionConfig, backoff_delay, split_connections
from feeds.errors import DataStall, DecodeError, FatalFeedError, FeedConnectionError, RateLimited, SubscriptionError, TokenExpired
from feeds.model import InstrumentKey, Tick
from feeds.source import ConnectionDown, ConnectionUp, FeedSink
from feeds.throttle import LogThrottle

# A frame tap (e.g. the recorder) sees every raw frame: (connection index, receive time, frame).
FrameTap = Callable[[int, float, bytes], None]


class FeedConnection:
    """One socket of a ``BrokerFeed``: connects, subscribes, receives, and reconnects."""

    _log: ClassVar[logging.Logger]  # the broker module's logger
    name: ClassVar[str]  # task names: "<name>-feed-<i>", "<name>-watchdog-<i>"
    headers: ClassVar[Mapping[str, str] | None] = None  # sent with the WebSocket upgrade
    max_msg_size: ClassVar[int] = 2**20
    stall_what: ClassVar[str] = "data"  # "no <stall_what> for …s while the market is open"
    # A refused token read again and unchanged ends the feed: FatalFeedError(stale_token.format(source=…)).
    stale_token: ClassVar[str]
    stale_token_code: ClassVar[int]
    renewed_token: ClassVar[str]  # why the connection went down when a new token was found

    def __init__(self, index: int, subscriptions: Iterable[Any], feed: BrokerFeed) -> None:
        self.index = index
        self.subscriptions: dict[Hashable, Any] = {self.slot(s): s for s in subscriptions}
        self.stats = ConnectionStats()
        self._feed = feed
        self._pending: list[Tick] = []
        self._flush_scheduled = False
        self._sink: FeedSink | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stall: str | None = None
        self._decode_log = LogThrottle(self._log)

    # ------------------------------------------------------------------ broker hooks

    @staticmethod
    def slot(sub: Any) -> Hashable:
        """Where a subscription is held in ``subscriptions`` (Dhan: key and mode; Kite: key)."""
        raise NotImplementedError

    @property
    def keys(self) -> tuple[InstrumentKey, ...]:
        raise NotImplementedError

    def _subscribe_messages(self, subs: Iterable[Any]) -> list[str]:
        raise NotImplementedError

    def _unsubscribe_messages(self, subs: Iterable[Any]) -> list[str]:
        raise NotImplementedError

    def _handshake_refused(self, status: int) -> FeedConnectionError | None:
        """A broker's own meaning of an HTTP status at the upgrade (429 and others are shared)."""
        return None

    def _goodbye(self) -> str | None:
        """A message sent before closing at shutdown (Dhan's disconnect request), if any."""
        return None

    async def _after_send_failure(self, ws: aiohttp.ClientWebSocketResponse, sink: FeedSink) -> None:
        """The socket closed while subscribing: a broker may read what is buffered first."""

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, sink: FeedSink) -> None:
        """Decode every frame until the socket closes (returns) or the broker ends it (raises)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared

    def start(self, group: asyncio.TaskGroup, sink: FeedSink) -> None:
        group.create_task(self.run(sink), name=f"{self.name}-feed-{self.index}")

    async def subscribe(self, subs: list[Any]) -> None:
        for s in subs:
            self.subscriptions[self.slot(s)] = s
        await self._send_live(self._subscribe_messages(subs))

    async def unsubscribe(self, subs: list[Any]) -> None:
        for s in subs:
            self.subscriptions.pop(self.slot(s), None)
        await self._send_live(self._unsubscribe_messages(subs))

    async def _send_live(self, messages: list[str]) -> None:
        """Send on the open socket; when closed, the next connect sends the whole set anyway."""
        ws = self._ws
        if ws is None or not self.stats.connected:
            return
        try:
            for message in messages:
                await ws.send_str(message)
        except (ConnectionError, aiohttp.ClientError):
            self._log.info("feed connection %d closed while changing subscriptions; the reconnect resends them", self.index)

    async def run(self, sink: FeedSink) -> None:
        self._sink = sink
        log = self._log
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
            except FatalFeedError as exc:
                self.stats.count_end("fatal")
                raise exc from None
            except TokenExpired:
                kind = "token_expired"
                fresh = await asyncio.to_thread(credentials.access_token)
                if fresh == token:
                    self.stats.count_end(kind)
                    raise FatalFeedError(
                        self.stale_token.format(source=credentials.token_source), reason_code=self.stale_token_code
                    ) from None
                reason = self.renewed_token
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
                headers=self.headers,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=cfg.close_timeout_s),
                # Our own pings; the broker's (Dhan's every 10 s) are answered automatically (autoping).
                heartbeat=cfg.ping_interval_s,
                compress=0,
                max_msg_size=self.max_msg_size,
            )
        except aiohttp.WSServerHandshakeError as exc:
            refused = self._handshake_refused(exc.status)
            if refused is not None:
                raise refused from None
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
        watchdog = asyncio.create_task(self._watch(ws), name=f"{self.name}-watchdog-{self.index}")
        try:
            try:
                for message in self._subscribe_messages(list(self.subscriptions.values())):
                    await ws.send_str(message)
            except (ConnectionError, aiohttp.ClientError):
                await self._after_send_failure(ws, sink)
                raise self._closed(ws) from None
            self.stats.connects += 1
            reconnect = self.stats.connects > 1
            self.stats.reconnects += int(reconnect)
            self.stats.connected = True
            self._log.info(
                "feed connection %d %s: %d instruments subscribed",
                self.index, "reconnected" if reconnect else "open", len(self.subscriptions),
                extra={"connection": self.index, "instruments": len(self.subscriptions), "reconnect": reconnect},
            )
            sink.on_event(ConnectionUp(self.index, self.keys, reconnect))
            await self._receive(ws, sink)
            raise self._closed(ws)
        except asyncio.CancelledError:
            await self._close(ws, send_goodbye=True)
            raise
        finally:
            watchdog.cancel()
            if not ws.closed:
                await self._close(ws, send_goodbye=False)

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
                self._stall = f"no {self.stall_what} for {now - last:.1f}s while the market is open"
                self._log.warning("feed connection %d: %s; reconnecting", self.index, self._stall)
                await self._close(ws, send_goodbye=False)
                return

    async def _close(self, ws: aiohttp.ClientWebSocketResponse, *, send_goodbye: bool) -> None:
        try:
            async with asyncio.timeout(self._feed.config.close_timeout_s):
                goodbye = self._goodbye() if send_goodbye else None
                if goodbye is not None and not ws.closed:
                    await ws.send_str(goodbye)
                await ws.close()
        except (TimeoutError, ConnectionError, aiohttp.ClientError) as exc:
            self._log.info("feed connection %d did not close cleanly: %s", self.index, type(exc).__name__)

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


class BrokerFeed:
    """A FeedSource over one broker's live feed, sharded over ``connection_class`` sockets."""

    broker: ClassVar[str]
    packet_names: ClassVar[Mapping[type, str]]
    connection_class: ClassVar[type[FeedConnection]]
    normalizer_class: ClassVar[Callable[[Any], Any]]  # built from {instrument key: tick size}
    max_connections: ClassVar[int]
    max_instruments_per_connection: ClassVar[int]
    _log: ClassVar[logging.Logger]

    def __init__(
        self,
        config: FeedConnectionConfig,
        credentials: Any,
        subscriptions: Sequence[Any],
        *,
        is_market_open: Callable[[float], bool] = lambda now: True,
        tap: FrameTap | None = None,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """``clock`` stamps every frame's receive time and tells the stall watchdog what time it is."""
        self.config = config
        self.clock = clock
        self._credentials = credentials
        self._normalizer = self.normalizer_class({s.key: s.tick_size for s in subscriptions})
        self._rng = rng or random.Random()
        self.is_market_open = is_market_open
        self.tap = tap
        self.connections: list[Any] = [
            self.connection_class(i, group, self) for i, group in enumerate(self._shard(list(subscriptions)))
        ]
        self._group: asyncio.TaskGroup | None = None
        self._sink: FeedSink | None = None
        self._http: aiohttp.ClientSession | None = None

    @staticmethod
    def check_budget(count: int) -> None:
        """Fail with the numbers when ``count`` subscriptions cannot fit the broker's budget."""
        raise NotImplementedError

    def url(self, token: str) -> str:
        raise NotImplementedError

    def _shard(self, subscriptions: Sequence[Any]) -> list[list[Any]]:
        self.check_budget(len(subscriptions))
        return split_connections(subscriptions, self.max_instruments_per_connection)

    @property
    def instruments(self) -> frozenset[InstrumentKey]:
        return frozenset(s.key for c in self.connections for s in c.subscriptions.values())

    @property
    def unknown_instrument_packets(self) -> int:
        return self._normalizer.unknown_instrument_packets  # type: ignore[no-any-return]

    @property
    def credentials(self) -> Any:
        return self._credentials

    def http(self) -> aiohttp.ClientSession:
        """The HTTP session every connection's WebSocket is opened from (one per run)."""
        if self._http is None:
            raise RuntimeError(f"{type(self).__name__}.run() is not running")
        return self._http

    async def run(self, sink: FeedSink) -> None:
        """Run every connection until cancelled; a FatalFeedError from any one stops them all."""
        self._sink = sink
        # aiohttp's WebSocket client, not the websockets library: per frame it costs a third
        # as much (perf-notes; bench "ingest"), and one session serves all the sockets.
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
                self._log.error("feed connection failed as well: %r", other)
            raise (fatal or list(errors))[0] from None
        finally:
            self._group = None
            await self._http.close()
            self._http = None

    async def update_subscriptions(self, subscriptions: Sequence[Any]) -> tuple[int, int]:
        """Move to a new subscription set with unsubscribe/subscribe messages on live sockets.

        Removed instruments are unsubscribed where they are held; added ones go to the
        connections with room, opening a new connection only when all are full. Returns
        (added, removed). Raises SubscriptionError, changing nothing, if the set cannot fit.
        """
        self.check_budget(len(subscriptions))
        slot = self.connection_class.slot
        wanted = {slot(s): s for s in subscriptions}
        held = {slot(s): s for c in self.connections for s in c.subscriptions.values()}
        removed = [held[k] for k in held.keys() - wanted.keys()]
        added = [wanted[k] for k in wanted.keys() - held.keys()]
        self._normalizer.update({s.key: s.tick_size for s in added}, {s.key for s in removed} - {s.key for s in subscriptions})
        for conn in self.connections:
            mine = [s for s in removed if slot(s) in conn.subscriptions]
            if mine:
                await conn.unsubscribe(mine)
        per_connection = self.max_instruments_per_connection
        pending = list(added)
        for conn in self.connections:
            room = per_connection - len(conn.subscriptions)
            if pending and room > 0:
                take, pending = pending[:room], pending[room:]
                await conn.subscribe(take)
        while pending:
            if len(self.connections) >= self.max_connections:  # unreachable after check_budget; kept as a guard
                raise SubscriptionError(f"no room for {len(pending)} subscriptions in {self.max_connections} connections")
            take, pending = pending[:per_connection], pending[per_connection:]
            conn = self.connection_class(len(self.connections), take, self)
            self.connections.append(conn)
            if self._group is not None and self._sink is not None:
                conn.start(self._group, self._sink)
        self._log.info("subscriptions updated: %d added, %d removed", len(added), len(removed))
        return len(added), len(removed)
