"""A WebSocket server that speaks Dhan's v2 market feed, fed by the synthetic market.

One aiohttp application serves both things a Dhan client fetches:

* ``GET /?version=2&token=..&clientId=..&authType=2`` — the market feed (reference §1-4).
  Client text frames are parsed with ``feeds.dhan.requests.parse_request``; binary packets
  are built with ``feeds.dhan.codec.encode``, the same encoder the tests decode against.
* ``GET /api-data/api-scrip-master-detailed.csv`` — the instrument master for the universe.
* ``POST /v2/optionchain/expirylist`` and ``POST /v2/optionchain`` — Dhan's option-chain REST
  API over the same market (``feeds.simulator.rest``).

Behaviour copied from Dhan: a ping every 10 s; a code-50 packet before a server-side close
(804 over a limit, 805 too many sockets, 809/810 bad credentials — sent after accepting the
upgrade, as Dhan does); unknown instruments ignored without a reply; a prev-close packet on
subscription; one packet per binary frame (``stack_packets`` stacks them instead).

Slow clients: every connection has a bounded queue of frames, filled synchronously by the
market loop and drained by that connection's writer task, so a slow socket never stalls the
market. When a queue is full the client is disconnected (WebSocket close 1013) and counted in
``stats.slow_client_disconnects``. We disconnect rather than drop the oldest frames because a
silent gap would leave the client's state different from what the simulator believes it sent;
a disconnect is visible, and the client's reconnect-and-resubscribe path repairs it, as it
would against a real server whose socket buffer overflowed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import NoReturn

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from feeds.dhan.codec import encode
from feeds.dhan.packets import (
    HEADER,
    DisconnectPacket,
    DisconnectReason,
    FeedMode,
    FullPacket,
    ResponseCode,
    TickerPacket,
)
from feeds.dhan.requests import MAX_INSTRUMENTS_PER_MESSAGE, DisconnectRequest, SubscriptionRequest, parse_request
from feeds.errors import SubscriptionError
from feeds.model import IST, InstrumentKey
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.faults import Fault, run_faults
from feeds.simulator.market import Market
from feeds.simulator.rest import OptionChainApi
from feeds.simulator.scrip_master import generate_scrip_master
from feeds.simulator.universe import Universe, build_universe

log = logging.getLogger(__name__)

SCRIP_MASTER_PATH = "/api-data/api-scrip-master-detailed.csv"
_CLOSE_WAIT_S = 5.0  # how long shutdown waits for clients to acknowledge a close


@dataclass(slots=True)
class SimulatorStats:
    """Counters; the hot path only increments them."""

    connections_accepted: int = 0  # WebSocket upgrades completed
    connections_rejected: int = 0  # handshakes refused with HTTP 400
    messages_received: int = 0  # client frames of any type
    invalid_requests: int = 0  # unparseable or binary client messages (ignored)
    unknown_instruments: int = 0  # requested ids outside the universe (ignored, like Dhan)
    subscribe_requests: Counter[FeedMode] = field(default_factory=Counter)
    unsubscribe_requests: Counter[FeedMode] = field(default_factory=Counter)
    frames_sent: int = 0
    packets_sent: Counter[int] = field(default_factory=Counter)  # by response code
    frames_discarded: int = 0  # queued frames dropped because their connection was closing
    disconnects_sent: Counter[int] = field(default_factory=Counter)  # code-50 packets, by reason
    slow_client_disconnects: int = 0
    send_errors: int = 0  # the peer vanished while we wrote
    handshakes_refused: Counter[int] = field(default_factory=Counter)  # injected HTTP errors, by status
    disconnect_requests: int = 0  # {"RequestCode": 12} received


@dataclass(frozen=True, slots=True)
class _Close:
    """Queue item telling a writer to (optionally) send a code-50 packet and close."""

    reason: int | None
    ws_code: int


class _Connection:
    """One client socket: its subscriptions per mode and its bounded outbound queue."""

    __slots__ = ("id", "ws", "transport", "queue", "subs", "closing", "writer", "writing")

    def __init__(
        self, conn_id: int, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, queue_frames: int
    ) -> None:
        self.id = conn_id
        self.ws = ws
        self.transport = transport
        self.queue: asyncio.Queue[bytes | str | _Close] = asyncio.Queue(maxsize=queue_frames)
        self.subs: dict[FeedMode, set[InstrumentKey]] = {mode: set() for mode in FeedMode}
        self.closing = False
        self.writer: asyncio.Task[None] | None = None
        self.writing = False  # a frame is taken from the queue but not yet handed to the socket

    def instruments(self) -> set[InstrumentKey]:
        """Distinct instruments held in any mode (what the 5000 limit counts)."""
        return set().union(*self.subs.values())


def _query_problem(query: Mapping[str, str]) -> str | None:
    if query.get("version") != "2":
        return "query parameter version must be 2"
    if query.get("authType") != "2":
        return "query parameter authType must be 2"
    if not query.get("token"):
        return "query parameter token is required"
    if not query.get("clientId"):
        return "query parameter clientId is required"
    return None


def _listed_count(text: str) -> int:
    """How many instruments a rejected request lists (0 if it is not even a list)."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        return 0
    items = msg.get("InstrumentList") if isinstance(msg, dict) else None
    return len(items) if isinstance(items, list) else 0


def _codes(frame: bytes) -> Iterable[int]:
    """Response codes of the packets stacked in one frame (walks the header lengths)."""
    off, end, header = 0, len(frame), HEADER.size
    while end - off >= header:
        yield frame[off]
        length = frame[off + 1] | (frame[off + 2] << 8)
        if length < header:
            return
        off += length


class SimulatorServer:
    """The fake Dhan: ``async with SimulatorServer(config) as sim:`` then connect to ``sim.feed_url``.

    A broker's own server (``feeds.simulator.kite``) reuses the market loop, the connections,
    their writers and the faults, and overrides the protocol hooks: ``_make_universe``,
    ``_packet_codes``, ``_add_routes``, ``_announce``, ``render``, ``_initial``,
    ``_garbage_frames``, ``_check_query``, ``_credential_problem``, ``_admit``, ``_on_text``.
    """

    _task_prefix = "simulator"  # task names: "<prefix>-market", "<prefix>-writer-<id>"
    _token_param = "token"  # the query parameter holding the access token

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        host: str | None = None,
        port: int | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config = config if config is not None else SimulatorConfig()
        self.host = host if host is not None else config.host  # None: the config's (127.0.0.1, a free port)
        self._requested_port = port if port is not None else config.port
        self.port = 0
        self.stats = SimulatorStats()
        today = config.today or dt.datetime.fromtimestamp(clock(), IST).date()
        self.universe: Universe = self._make_universe(config, today)
        self.market = Market(self.universe, config, clock)
        self.rest = OptionChainApi(self.universe, self.market, config)
        self._scrip_master = generate_scrip_master(self.universe).encode()
        self._connections: dict[int, _Connection] = {}  # insertion order = oldest first
        self._subscribers: dict[FeedMode, dict[InstrumentKey, set[_Connection]]] = {m: {} for m in FeedMode}
        self._next_id = 0
        self._paused = False
        # Instruments the server accepts but never sends anything for (see withhold()).
        self._withheld: set[InstrumentKey] = set()
        # Fault injection (see feeds.simulator.faults for a scheduled plan).
        self._silent = False
        self._reject_status: int | None = None
        self.last_token: str | None = None  # the token of the newest connection (tests of 807)
        self._reject_left = 0
        self._runner: web.AppRunner | None = None
        self._market_task: asyncio.Task[None] | None = None
        self._market_error: BaseException | None = None

    def _make_universe(self, config: SimulatorConfig, today: dt.date) -> Universe:
        """The instruments served (a broker's own server re-keys them: feeds.simulator.kite)."""
        return build_universe(config, today)

    @staticmethod
    def _packet_codes(frame: bytes) -> Iterable[int]:
        """What ``stats.packets_sent`` counts for one frame written: Dhan's response codes."""
        return _codes(frame)

    @staticmethod
    def _garbage_frames() -> list[bytes]:
        """What ``send_garbage()`` sends."""
        return garbage_frames()

    def render(self, key: InstrumentKey, mode: FeedMode) -> list[bytes]:
        """What the server sends for ``key`` in ``mode`` now (recorded in ``market.last_sent``)."""
        return [encode(p) for p in self.market.packet(key, mode)]

    def _initial(self, key: InstrumentKey, mode: FeedMode) -> list[bytes]:
        """What a new subscriber (or a released instrument's) gets: Dhan sends prev close on
        subscription; the current state follows at once so a client's coverage fills without
        waiting for the instrument to trade."""
        return [encode(self.market.prev_close_packet(key)), *self.render(key, mode)]

    # ------------------------------------------------------------------ lifecycle

    @property
    def feed_url(self) -> str:
        """Base URL; a client appends ``?version=2&token=..&clientId=..&authType=2``."""
        return f"ws://{self._netloc()}"

    @property
    def scrip_master_url(self) -> str:
        return f"http://{self._netloc()}{SCRIP_MASTER_PATH}"

    @property
    def rest_url(self) -> str:
        """Base URL of the REST API, as ``https://api.dhan.co/v2`` is Dhan's."""
        return f"http://{self._netloc()}/v2"

    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def connections_open(self) -> int:
        return len(self._connections)

    @property
    def idle(self) -> bool:
        """Nothing queued or being written on any connection: all that was sent is on the wire."""
        return all(c.queue.empty() and not c.writing for c in self._connections.values())

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the port and start the market loop."""
        app = web.Application()
        app.router.add_get("/", self._handle_feed)
        self._add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_CLOSE_WAIT_S)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        self._market_task = asyncio.create_task(self._run_market(), name=f"{self._task_prefix}-market")
        self._market_task.add_done_callback(self._market_done)
        self._announce()

    def _add_routes(self, app: web.Application) -> None:
        """Everything but the feed itself: the scrip master and the option-chain REST API."""
        app.router.add_get(SCRIP_MASTER_PATH, self._handle_scrip_master)
        app.router.add_routes(self.rest.routes())

    def _announce(self) -> None:
        """Log what the started server serves (a broker's server also starts its own tasks here)."""
        log.info(
            "Dhan simulator: feed %s, scrip master %s, %d instruments (seed %d)",
            self.feed_url, self.scrip_master_url, len(self.universe), self.config.seed,
        )  # fmt: skip

    async def stop(self) -> None:
        """Stop the market, close every client socket, then the runner; reverse of start."""
        if self._market_task is not None:
            self._market_task.cancel()
            await asyncio.wait([self._market_task])
            self._market_task = None
        writers = []
        for conn in list(self._connections.values()):
            self._close(conn, None, WSCloseCode.GOING_AWAY)
            if conn.writer is not None:
                writers.append(conn.writer)
        if writers:
            _, stuck = await asyncio.wait(writers, timeout=_CLOSE_WAIT_S)
            for writer in stuck:  # a client that never answers the close: stop waiting for it
                writer.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._market_error is not None:
            raise RuntimeError("the simulator's market loop failed") from self._market_error

    def _market_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._market_error = task.exception()
            log.error("simulator market loop failed", exc_info=self._market_error)

    # ------------------------------------------------------------------ market

    def pause(self) -> None:
        """Stop stepping the market (subscriptions are still served); takes effect at once."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def withhold(self, keys: Iterable[InstrumentKey]) -> None:
        """Accept subscriptions for ``keys`` but send nothing for them, like an instrument that
        Dhan lists but never quotes; ``release()`` sends their current state to subscribers."""
        self._withheld.update(keys)

    def release(self) -> None:
        keys, self._withheld = self._withheld, set()
        for mode, subscribers in self._subscribers.items():
            outgoing: dict[_Connection, list[bytes]] = {}
            for key in keys:
                for conn in subscribers.get(key, ()):
                    outgoing.setdefault(conn, []).extend(self._initial(key, mode))
            for conn, data in outgoing.items():
                self._send(conn, data)

    # ------------------------------------------------------------------ fault injection

    def silence(self, silent: bool = True) -> None:
        """Keep sockets open (and answering pings) but send no data: a dead feed that looks alive.
        The market keeps moving; what is not sent is not recorded in ``market.last_sent``."""
        self._silent = silent

    def reject_handshakes(self, status: int = 429, count: int = 1) -> None:
        """Answer the next ``count`` WebSocket handshakes with HTTP ``status`` (e.g. 429)."""
        self._reject_status, self._reject_left = status, count

    def send_garbage(self) -> int:
        """Send every client frames a decoder must reject or skip: a truncated Full packet, a
        header longer than its frame, a Ticker with a wrong length, a length below the header
        size, and an unknown response code. Returns the frames sent per client."""
        frames = self._garbage_frames()
        for conn in list(self._connections.values()):
            self._send(conn, frames, force=True)
        return len(frames)

    def disconnect_all(self, reason: int) -> int:
        """Send every client a code-50 packet with ``reason`` and close, as Dhan does."""
        conns = [c for c in self._connections.values() if not c.closing]
        for conn in conns:
            self._disconnect(conn, DisconnectReason(reason))
        return len(conns)

    def drop_connections(self) -> int:
        """Reset every client's TCP connection with no close frame and no code-50 packet, the
        way Dhan's feed is seen to drop sockets (reference §8.3). Returns how many."""
        dropped = 0
        for conn in list(self._connections.values()):
            if conn.transport is not None and not conn.transport.is_closing():
                # The handler sees the socket end and retires the connection and its writer.
                conn.transport.abort()
                dropped += 1
        return dropped

    def step(self, n_trades: int | None = None) -> list[InstrumentKey]:
        """Advance the market one step now and send the changes; returns the changed keys."""
        changed = self.market.step(self.config.trades_per_step if n_trades is None else n_trades)
        self._broadcast(changed)
        return changed

    async def _run_market(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.tick_interval_s
        deadline = loop.time()
        while True:
            if not self._paused:
                self.step()
            deadline += interval
            delay = deadline - loop.time()
            if delay < 0:  # fell behind (busy machine): skip the missed steps, never burst
                deadline = loop.time()
                delay = 0.0
            await asyncio.sleep(delay)

    def _broadcast(self, changed: list[InstrumentKey]) -> None:
        if self._silent:
            return  # nothing is built, so last_sent stays what clients really received
        outgoing: dict[_Connection, list[bytes]] = {}
        for mode, subscribers in self._subscribers.items():
            if not subscribers:
                continue
            for key in changed:
                conns = subscribers.get(key)
                if not conns or key in self._withheld:
                    continue
                # Only to connections still open: rendering records the packet in last_sent,
                # which must hold what clients really received (a closing socket gets nothing).
                live = [conn for conn in conns if not conn.closing]
                if not live:
                    continue
                data = self.render(key, mode)  # encoded once per mode, however many clients get it
                for conn in live:
                    outgoing.setdefault(conn, []).extend(data)
        for conn, data in outgoing.items():
            self._send(conn, data)

    def _send(self, conn: _Connection, packets: list[bytes], *, force: bool = False) -> None:
        if conn.closing or not packets or (self._silent and not force):
            return
        if self.config.stack_packets and not force:
            n = self.config.max_packets_per_frame
            frames = [b"".join(packets[i : i + n]) for i in range(0, len(packets), n)]
        else:
            frames = packets
        for frame in frames:
            try:
                conn.queue.put_nowait(frame)
            except asyncio.QueueFull:
                self.stats.slow_client_disconnects += 1
                log.warning("connection %d: send queue full (%d frames): disconnecting", conn.id, conn.queue.maxsize)
                self._close(conn, None, WSCloseCode.TRY_AGAIN_LATER)
                return

    # ------------------------------------------------------------------ connections

    def _close(self, conn: _Connection, reason: int | None, ws_code: int) -> None:
        """Discard the connection's pending data and have its writer close it."""
        if conn.closing:
            return
        conn.closing = True
        while not conn.queue.empty():
            conn.queue.get_nowait()
            self.stats.frames_discarded += 1
        conn.queue.put_nowait(_Close(reason, ws_code))

    def _disconnect(self, conn: _Connection, reason: DisconnectReason) -> None:
        log.info("connection %d: disconnecting with reason %d (%s)", conn.id, reason, reason.name)
        self._close(conn, reason, WSCloseCode.POLICY_VIOLATION)

    def _forget(self, conn: _Connection) -> None:
        self._connections.pop(conn.id, None)
        for mode, keys in conn.subs.items():
            subscribers = self._subscribers[mode]
            for key in keys:
                conns = subscribers.get(key)
                if conns is not None:
                    conns.discard(conn)
                    if not conns:
                        del subscribers[key]
            keys.clear()

    def _admit(self, conn: _Connection) -> None:
        limit = self.config.max_connections
        if limit is not None:
            live = [c for c in self._connections.values() if not c.closing]
            # Dhan drops the oldest socket, not the new one (reference §2.2).
            for oldest in live[: max(0, len(live) - limit + 1)]:
                self._disconnect(oldest, DisconnectReason.TOO_MANY_CONNECTIONS)
        self._connections[conn.id] = conn

    def _refuse(self, problem: str) -> NoReturn:
        """Refuse the upgrade with HTTP 400 saying why."""
        self.stats.connections_rejected += 1
        log.info("handshake refused: %s", problem)
        raise web.HTTPBadRequest(text=problem)

    def _check_query(self, query: Mapping[str, str]) -> None:
        """Refuse (raise an HTTP error) a handshake whose query the broker would refuse."""
        problem = _query_problem(query)
        if problem is not None:
            self._refuse(problem)

    def _credential_problem(self, query: Mapping[str, str]) -> DisconnectReason | None:
        """Credentials Dhan accepts the upgrade for, then hangs up on with a code-50 packet."""
        if self.config.expected_token is not None and query["token"] != self.config.expected_token:
            return DisconnectReason.ACCESS_TOKEN_INVALID
        if self.config.expected_client_id is not None and query["clientId"] != self.config.expected_client_id:
            return DisconnectReason.CLIENT_ID_INVALID
        return None

    async def _handle_scrip_master(self, request: web.Request) -> web.Response:
        return web.Response(body=self._scrip_master, content_type="text/csv", charset="utf-8")

    async def _handle_feed(self, request: web.Request) -> web.StreamResponse:
        if self._reject_left > 0 and self._reject_status is not None:
            self._reject_left -= 1
            self.stats.connections_rejected += 1
            self.stats.handshakes_refused[self._reject_status] += 1
            log.info("handshake refused with injected HTTP %d", self._reject_status)
            return web.Response(status=self._reject_status, text=f"injected HTTP {self._reject_status}")
        self._check_query(request.query)
        ws = web.WebSocketResponse(heartbeat=self.config.ping_interval_s, compress=False, max_msg_size=1 << 20)
        if not ws.can_prepare(request).ok:
            self._refuse("expected a WebSocket upgrade")
        await ws.prepare(request)
        self.stats.connections_accepted += 1
        self.last_token = request.query[self._token_param]
        self._next_id += 1
        conn = _Connection(self._next_id, ws, request.transport, self.config.send_queue_frames)
        conn.writer = asyncio.create_task(self._write(conn), name=f"{self._task_prefix}-writer-{conn.id}")
        conn.writer.add_done_callback(_log_failure)
        reason = self._credential_problem(request.query)
        if reason is not None:
            self._disconnect(conn, reason)  # Dhan accepts the upgrade, then says why it hangs up
        else:
            self._admit(conn)
        log.debug("connection %d accepted from %s", conn.id, request.remote)
        try:
            async for msg in ws:
                self.stats.messages_received += 1
                if msg.type == WSMsgType.TEXT:
                    self._on_text(conn, msg.data)
                else:
                    self.stats.invalid_requests += 1
                    log.info("connection %d: ignoring a %s frame (requests are JSON text)", conn.id, msg.type.name)
        finally:
            self._forget(conn)
            if not conn.closing:
                conn.closing = True
                conn.writer.cancel()
            # A closing writer finishes its close handshake; ws.close() bounds that wait.
            await asyncio.wait([conn.writer])
            log.debug("connection %d gone", conn.id)
        return ws

    def _on_text(self, conn: _Connection, text: str) -> None:
        if conn.closing:
            return
        try:
            request = parse_request(text)
        except SubscriptionError as exc:
            if _listed_count(text) > MAX_INSTRUMENTS_PER_MESSAGE:
                self._disconnect(conn, DisconnectReason.INSTRUMENTS_OVER_LIMIT)
                return
            self.stats.invalid_requests += 1
            log.info("connection %d: ignoring an invalid request: %s", conn.id, exc)
            return
        if isinstance(request, DisconnectRequest):
            self.stats.disconnect_requests += 1
            log.debug("connection %d asked to disconnect", conn.id)
            self._close(conn, None, WSCloseCode.OK)
        elif request.subscribe:
            self._subscribe(conn, request)
        else:
            self._unsubscribe(conn, request)

    def _subscribe(self, conn: _Connection, request: SubscriptionRequest) -> None:
        mode = request.mode
        self.stats.subscribe_requests[mode] += 1
        known = [key for key in dict.fromkeys(request.instruments) if key in self.universe]
        self.stats.unknown_instruments += len(request.instruments) - len(known)
        held = conn.subs[mode]
        new = [key for key in known if key not in held]
        if len(conn.instruments().union(new)) > self.config.max_instruments_per_connection:
            self._disconnect(conn, DisconnectReason.INSTRUMENTS_OVER_LIMIT)
            return
        subscribers = self._subscribers[mode]
        packets = []
        for key in new:
            held.add(key)
            subscribers.setdefault(key, set()).add(conn)
            if key in self._withheld or self._silent:
                continue
            packets.extend(self._initial(key, mode))
        self._send(conn, packets)

    def _unsubscribe(self, conn: _Connection, request: SubscriptionRequest) -> None:
        mode = request.mode
        self.stats.unsubscribe_requests[mode] += 1
        held = conn.subs[mode]
        subscribers = self._subscribers[mode]
        for key in request.instruments:
            if key in held:
                held.discard(key)
                conns = subscribers[key]
                conns.discard(conn)
                if not conns:
                    del subscribers[key]

    async def _write(self, conn: _Connection) -> None:
        """Drain one connection's queue into its socket; ends after a close or a dead peer.

        Binary frames waiting in the queue are written together: each one its own WebSocket
        frame, byte for byte what aiohttp's writer makes of ``send_bytes`` (FIN, unmasked, no
        compression: the feed is prepared with ``compress=False``), handed to the transport in
        one write rather than one system call each. After a write the writer waits while the
        transport is over its high-water mark, so a client that does not read still fills its
        queue and is disconnected (see the module doc).
        """
        ws, stats = conn.ws, self.stats
        queue, codes, counted = conn.queue, self._packet_codes, stats.packets_sent
        transport = conn.transport
        item: bytes | str | _Close | None = None
        try:
            while True:
                if item is None:
                    item = await queue.get()
                if isinstance(item, _Close):
                    if item.reason is not None:
                        await ws.send_bytes(encode(DisconnectPacket(0, 0, item.reason)))
                        stats.frames_sent += 1
                        stats.disconnects_sent[item.reason] += 1
                        stats.packets_sent[ResponseCode.DISCONNECT] += 1
                    await ws.close(code=item.ws_code)
                    return
                conn.writing = True
                if isinstance(item, str):  # a text frame (Kite's error/message frames)
                    await ws.send_str(item)
                    conn.writing = False
                    stats.frames_sent += 1
                    item = None
                    continue
                batch = [item]
                item = None
                while not queue.empty() and len(batch) < _WRITE_BATCH_FRAMES:
                    nxt = queue.get_nowait()
                    if type(nxt) is not bytes:
                        item = nxt  # a close or a text frame: after this batch
                        break
                    batch.append(nxt)
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("Cannot write to closing transport")
                transport.write(b"".join([part for frame in batch for part in (_ws_header(len(frame)), frame)]))
                stats.frames_sent += len(batch)
                counted.update([code for frame in batch for code in codes(frame)])
                await _drained(conn)
                conn.writing = False
        except ConnectionResetError as exc:
            # The peer vanished mid-write; the handler sees the socket end and cleans up.
            stats.send_errors += 1
            conn.closing = True
            log.info("connection %d: write failed: %s", conn.id, exc)


_WRITE_BATCH_FRAMES = 512  # frames joined into one transport write, at most (~85 KB of Full packets)
_DRAIN_POLL_S = 0.002


def _ws_header(length: int) -> bytes:
    """The header of an unmasked binary WebSocket frame with FIN set, as aiohttp's writer builds it."""
    header = _HEADERS.get(length)
    if header is None:
        if length < 126:
            header = bytes((0x82, length))
        elif length < 1 << 16:
            header = bytes((0x82, 126)) + length.to_bytes(2, "big")
        else:
            header = bytes((0x82, 127)) + length.to_bytes(8, "big")
        if length < 1 << 16:
            _HEADERS[length] = header
    return header


_HEADERS: dict[int, bytes] = {}


async def _drained(conn: _Connection) -> None:
    """Wait while the connection's transport is over its high-water mark (the peer is slow)."""
    transport = conn.transport
    while (
        transport is not None
        and not transport.is_closing()
        and transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
    ):
        await asyncio.sleep(_DRAIN_POLL_S)


def garbage_frames() -> list[bytes]:
    """Malformed frames, each of which a correct decoder counts and skips without misreading."""
    full = encode(FullPacket(2, 35000, 100.0, 75, 1_790_000_000, 100.0, 75, 0, 0, 10, 10, 10, 100.0, 0.0, 100.0, 100.0, (0, 0, 0, 0, 0.0, 0.0) * 5))
    ticker = bytearray(encode(TickerPacket(2, 35000, 100.0, 1_790_000_000)))
    ticker[1] = 20  # a Ticker that claims 20 bytes inside a 24-byte frame
    return [
        full[:100],  # truncated: declares 162, carries 100
        bytes(ticker) + b"\x00" * 8,
        bytes([8, 4, 0, 2, 0, 0, 0, 0]),  # length 4, below the 8-byte header
        bytes([99, 12, 0, 2, 1, 0, 0, 0]) + b"\xde\xad\xbe\xef",  # unknown response code 99
    ]


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", task.get_name(), exc_info=task.exception())


async def serve_forever(
    config: SimulatorConfig, host: str, port: int, stop: asyncio.Event, faults: tuple[Fault, ...] = (),
    *, server_class: type[SimulatorServer] | None = None,
) -> None:
    """Run the simulator until ``stop`` is set (the ``livechain simulate`` command); ``server_class``
    picks the protocol (``feeds.simulator.kite.KiteSimulatorServer`` for Kite's)."""
    async with (server_class or SimulatorServer)(config, host, port) as sim:
        if type(sim) is SimulatorServer:
            log.info("simulator ready: connect to %s?version=2&token=..&clientId=..&authType=2", sim.feed_url)
        else:
            log.info("simulator ready: feed %s, instruments %s", sim.feed_url, sim.scrip_master_url)
        injector = asyncio.create_task(run_faults(sim, faults), name="simulator-faults")
        try:
            await stop.wait()
        finally:
            injector.cancel()
            await asyncio.wait([injector])
        log.info("simulator stopping: %s", sim.stats)
