"""The simulator speaking Kite Connect's ticker, from the same synthetic market as the Dhan one.

``KiteSimulatorServer`` is the Dhan ``SimulatorServer`` (market loop, per-connection bounded
queues, slow-client disconnects, pause/withhold/silence/drop/reject faults) with Kite's side of
the wire:

* ``GET /?api_key=..&access_token=..`` — the ticker. A wrong ``expected_token`` is refused at
  the upgrade with HTTP 403, as Kite refuses a bad or expired token. Client messages are
  ``feeds.kite.requests``; a subscribe without a mode gets ``quote``; a subscription past
  3000 instruments on one connection gets a text ``error`` frame and is not taken.
* binary frames are containers of packets built by ``feeds.kite.codec`` (one frame per market
  step per connection, at most ``max_packets_per_frame`` packets), and a 1-byte heartbeat every
  ``heartbeat_interval_s`` while the connection is not silenced;
* ``GET /instruments`` — Kite's instruments CSV for the universe (``write_instruments``).

The universe is the Dhan one re-keyed (``kite_universe``): each option's Kite token is its Dhan
id × 256 + 2 (NFO), each index gets its real Kite token (NIFTY 50 is 256265). The market,
keyed by those keys, renders Dhan packets (recorded in ``market.last_sent`` exactly as for the
Dhan server) which are converted here to Kite's integer units: both brokers' clients are checked
against the same record of what was sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from aiohttp import WSCloseCode, web

from feeds.dhan.packets import FeedMode
from feeds.dhan.packets import FullPacket as DhanFull
from feeds.dhan.packets import QuotePacket as DhanQuote
from feeds.errors import SubscriptionError
from feeds.kite.codec import encode_bodies, encode_packet, encode_text
from feeds.kite.instruments import write_instruments
from feeds.kite.packets import (
    COUNT,
    HEARTBEAT,
    FullPacket,
    IndexFullPacket,
    IndexQuotePacket,
    KiteSegment,
    LtpPacket,
    Mode,
    QuotePacket,
    TextMessage,
    price_divisor,
)
from feeds.kite.requests import MAX_INSTRUMENTS_PER_CONNECTION, KiteRequest, parse_request
from feeds.model import ChainSkeleton, ExpiryChain, InstrumentKey, Segment, StrikeRow, UnderlyingChain
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.server import SimulatorServer, _Connection
from feeds.simulator.universe import Universe, build_universe

log = logging.getLogger(__name__)

INSTRUMENTS_PATH = "/instruments"
# Kite's tokens for the indices the simulator knows (exchange token × 256 + 9).
INDEX_TOKENS = {"NIFTY": 256265, "BANKNIFTY": 260105, "FINNIFTY": 257801}
_MODES = {Mode.LTP: FeedMode.TICKER, Mode.QUOTE: FeedMode.QUOTE, Mode.FULL: FeedMode.FULL}


def option_token(dhan_id: int) -> int:
    return dhan_id * 256 + KiteSegment.NFO


def kite_universe(universe: Universe) -> Universe:
    """The same instruments keyed the way the Kite client keys them: (segment, Kite token)."""
    rekey: dict[InstrumentKey, InstrumentKey] = {}
    specs = []
    for spec in universe.specs:
        token = INDEX_TOKENS[spec.symbol]
        rekey[spec.key] = (int(Segment.IDX_I), token)
        specs.append(dataclasses.replace(spec, security_id=token))
    for key in universe.contracts:
        rekey[key] = (int(Segment.NSE_FNO), option_token(key[1]))
    chains = {}
    contracts = {}
    for symbol, und in universe.skeleton.underlyings.items():
        expiries = []
        for e in und.expiries:
            rows = []
            for row in e.strikes:
                ce = dataclasses.replace(row.ce, key=rekey[row.ce.key]) if row.ce else None
                pe = dataclasses.replace(row.pe, key=rekey[row.pe.key]) if row.pe else None
                for c in (ce, pe):
                    if c is not None:
                        contracts[c.key] = c
                rows.append(StrikeRow(row.strike, ce, pe))
            expiries.append(ExpiryChain(e.expiry, e.lot_size, tuple(rows)))
        chains[symbol] = UnderlyingChain(symbol, rekey[und.key], und.tick_size, tuple(expiries))
    return Universe(
        today=universe.today,
        specs=tuple(specs),
        skeleton=ChainSkeleton(chains),
        contracts=MappingProxyType(dict(sorted(contracts.items(), key=lambda kv: kv[0][1]))),
        indices=MappingProxyType({s.key: s for s in specs}),
    )


def _units(x: float, divisor: int) -> int:
    return round(x * divisor)


def _kite_codes(frame: bytes) -> Iterable[int]:
    """Packet lengths of a container frame (a Kite packet's length is its type)."""
    if len(frame) < 2:
        return
    off, end = 2, len(frame)
    for _ in range(COUNT.unpack_from(frame, 0)[0]):
        if off + 2 > end:
            return
        length = COUNT.unpack_from(frame, off)[0]
        yield length
        off += 2 + length


class KiteSimulatorServer(SimulatorServer):
    """The fake Kite: ``async with KiteSimulatorServer(config) as sim:``, then ``sim.feed_url``."""

    heartbeat_interval_s = 1.0
    _task_prefix = "kite-simulator"
    _token_param = "access_token"

    def __init__(self, config: SimulatorConfig | None = None, host: str | None = None, port: int | None = None,
                 **kwargs: object) -> None:  # fmt: skip
        super().__init__(config, host, port, **kwargs)  # type: ignore[arg-type]
        self._instruments = write_instruments(self.universe.skeleton).encode()
        self.text_frames_sent = 0
        self.handshakes_forbidden = 0
        self._heartbeat_task: asyncio.Task[None] | None = None

    def _make_universe(self, config: SimulatorConfig, today: dt.date) -> Universe:
        return kite_universe(build_universe(config, today))

    _packet_codes = staticmethod(_kite_codes)

    @property
    def instruments_url(self) -> str:
        return f"http://{self._netloc()}{INSTRUMENTS_PATH}"

    @property
    def scrip_master_url(self) -> str:  # the name the Dhan server's callers use
        return self.instruments_url

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get(INSTRUMENTS_PATH, self._handle_instruments)

    def _announce(self) -> None:
        self._heartbeat_task = asyncio.create_task(self._heartbeats(), name="kite-simulator-heartbeat")
        log.info("Kite simulator: ticker %s, instruments %s, %d instruments (seed %d)",
                 self.feed_url, self.instruments_url, len(self.universe), self.config.seed)  # fmt: skip

    async def stop(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.wait([self._heartbeat_task])
            self._heartbeat_task = None
        await super().stop()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            if self._silent:
                continue
            for conn in list(self._connections.values()):
                self._send(conn, [HEARTBEAT], force=True)

    async def _handle_instruments(self, request: web.Request) -> web.Response:
        return web.Response(body=self._instruments, content_type="text/csv", charset="utf-8")

    # ------------------------------------------------------------------ rendering

    def render(self, key: InstrumentKey, mode: FeedMode) -> list[bytes]:
        """What Kite sends for ``key`` in ``mode`` now, as packet bodies (recorded in last_sent)."""
        market = self.market
        token = key[1]
        div = price_divisor(token)
        if mode == FeedMode.TICKER:
            t = market.packet(key, FeedMode.TICKER)[0]
            return [encode_packet(LtpPacket(token, _units(t.ltp, div)))]
        if market.is_index(key):
            q = market.packet(key, FeedMode.QUOTE)[0]
            assert isinstance(q, DhanQuote)
            # The change field is read by no SDK and its scale is unverified: sent as 0.
            values = (token, *(_units(x, div) for x in (q.ltp, q.high, q.low, q.open, q.close)), 0)
            packet = IndexQuotePacket(*values) if mode == FeedMode.QUOTE else IndexFullPacket(*values, q.ltt)
            return [encode_packet(packet)]
        if mode == FeedMode.QUOTE:
            q = market.packet(key, FeedMode.QUOTE)[0]
            assert isinstance(q, DhanQuote)
            return [encode_packet(QuotePacket(
                token, _units(q.ltp, div), q.ltq, _units(q.atp, div), q.volume, q.total_buy_qty, q.total_sell_qty,
                _units(q.open, div), _units(q.high, div), _units(q.low, div), _units(q.close, div),
            ))]  # fmt: skip
        f = market.packet(key, FeedMode.FULL)[0]
        assert isinstance(f, DhanFull)
        d = f.depth
        bids = [v for i in range(0, 30, 6) for v in (int(d[i]), _units(d[i + 4], div), int(d[i + 2]))]
        asks = [v for i in range(0, 30, 6) for v in (int(d[i + 1]), _units(d[i + 5], div), int(d[i + 3]))]
        return [encode_packet(FullPacket(
            token, _units(f.ltp, div), f.ltq, _units(f.atp, div), f.volume, f.total_buy_qty, f.total_sell_qty,
            _units(f.open, div), _units(f.high, div), _units(f.low, div), _units(f.close, div),
            f.ltt, f.oi, f.oi_day_high, f.oi_day_low, f.ltt, (*bids, *asks),
        ))]  # fmt: skip

    def _initial(self, key: InstrumentKey, mode: FeedMode) -> list[bytes]:
        return self.render(key, mode)  # Kite sends no prev-close packet: the quote carries close

    def _send(self, conn: _Connection, packets: list[bytes], *, force: bool = False) -> None:
        """Packet bodies go out as containers; ``force`` sends the items as they are (heartbeats,
        garbage, text frames) and ignores silence."""
        if not packets or (self._silent and not force):
            return
        if not force:
            n = self.config.max_packets_per_frame
            packets = [encode_bodies(packets[i : i + n]) for i in range(0, len(packets), n)]
        super()._send(conn, packets, force=True)

    # ------------------------------------------------------------------ faults

    @staticmethod
    def _garbage_frames() -> list[bytes]:
        return kite_garbage_frames()

    def send_text(self, kind: str, data: object) -> int:
        """Send every client a text frame ``{"type": kind, "data": data}`` (error, message, order)."""
        text = encode_text(TextMessage(kind, data))
        conns = [c for c in self._connections.values() if not c.closing]
        for conn in conns:
            self._send(conn, [text], force=True)  # type: ignore[list-item]
            self.text_frames_sent += 1
        return len(conns)

    def disconnect_all(self, reason: int = 0) -> int:
        """Kite has no disconnect packet: close every socket with a normal close frame."""
        conns = [c for c in self._connections.values() if not c.closing]
        for conn in conns:
            self._close(conn, None, WSCloseCode.GOING_AWAY)
        return len(conns)

    def _admit(self, conn: _Connection) -> None:
        # Kite's 3-connection cap is soft and its enforcement undocumented: not simulated.
        self._connections[conn.id] = conn

    # ------------------------------------------------------------------ connections

    def _check_query(self, query: Mapping[str, str]) -> None:
        if not query.get("api_key") or not query.get("access_token"):
            self._refuse("api_key and access_token are required")
        expected = self.config.expected_token
        if expected is not None and query["access_token"] != expected:
            # Kite refuses a bad or expired token at the upgrade, before any WebSocket frame.
            self.stats.connections_rejected += 1
            self.handshakes_forbidden += 1
            self.last_token = query["access_token"]
            raise web.HTTPForbidden(text="invalid access token")

    def _credential_problem(self, query: Mapping[str, str]) -> None:
        return None  # checked at the upgrade (_check_query): Kite sends no disconnect packet

    def _on_text(self, conn: _Connection, text: str) -> None:
        if conn.closing:
            return
        try:
            request = parse_request(text)
        except SubscriptionError as exc:
            self.stats.invalid_requests += 1
            self._send(conn, [encode_text(TextMessage("error", f"invalid message: {exc}"))], force=True)  # type: ignore[list-item]
            return
        if request.action == "unsubscribe":
            self._unsubscribe_tokens(conn, request)
        else:
            self._subscribe_tokens(conn, request)

    def _held_mode(self, conn: _Connection, key: InstrumentKey) -> FeedMode | None:
        for mode, keys in conn.subs.items():
            if key in keys:
                return mode
        return None

    def _move(self, conn: _Connection, key: InstrumentKey, old: FeedMode | None, new: FeedMode | None) -> None:
        if old is not None:
            conn.subs[old].discard(key)
            conns = self._subscribers[old].get(key)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self._subscribers[old][key]
        if new is not None:
            conn.subs[new].add(key)
            self._subscribers[new].setdefault(key, set()).add(conn)

    def _subscribe_tokens(self, conn: _Connection, request: KiteRequest) -> None:
        mode = _MODES[request.mode] if request.mode is not None else None
        self.stats.subscribe_requests[mode if mode is not None else FeedMode.QUOTE] += 1
        keys = self._keys(request.tokens)
        held = conn.instruments()
        if request.action == "subscribe":
            new = [k for k in keys if k not in held]
            if len(held) + len(new) > MAX_INSTRUMENTS_PER_CONNECTION:
                self._send(conn, [encode_text(TextMessage(
                    "error", f"subscription over the limit of {MAX_INSTRUMENTS_PER_CONNECTION} instruments"
                ))], force=True)  # type: ignore[list-item]  # fmt: skip
                return
            changed = [(k, FeedMode.QUOTE) for k in new]
            for k in new:
                self._move(conn, k, None, FeedMode.QUOTE)
        else:
            assert mode is not None
            changed = []
            for k in keys:
                old = self._held_mode(conn, k)
                if old is not None and old != mode:
                    self._move(conn, k, old, mode)
                    changed.append((k, mode))
        packets = []
        for key, m in changed:
            if key not in self._withheld and not self._silent:
                packets.extend(self.render(key, m))
        self._send(conn, packets)

    def _unsubscribe_tokens(self, conn: _Connection, request: KiteRequest) -> None:
        self.stats.unsubscribe_requests[FeedMode.QUOTE] += 1
        for key in self._keys(request.tokens):
            self._move(conn, key, self._held_mode(conn, key), None)

    def _keys(self, tokens: Iterable[int]) -> list[InstrumentKey]:
        keys = []
        index_keys: Mapping[int, InstrumentKey] = {k[1]: k for k in self.universe.indices}
        for token in dict.fromkeys(tokens):
            key = index_keys.get(token) or (int(Segment.NSE_FNO), token)
            if key in self.universe:
                keys.append(key)
            else:
                self.stats.unknown_instruments += 1
        return keys


def kite_garbage_frames() -> list[bytes]:
    """Frames a correct Kite decoder counts and skips: a packet longer than its frame, a packet of
    an unknown length (skipped, the next one still read), trailing bytes, and an empty frame."""
    ltp = encode_packet(LtpPacket(999 * 256 + KiteSegment.INDICES, 2_500_000))  # a token no one subscribes
    overrun = bytearray(encode_bodies([ltp]))
    overrun[2:4] = (40).to_bytes(2, "big")
    return [
        bytes(overrun),
        encode_bodies([b"\x00\x00\x01\x09" + bytes(8)]),  # 12 bytes: no Kite packet has that length
        encode_bodies([ltp]) + b"\x01\x02",
        b"",
    ]

