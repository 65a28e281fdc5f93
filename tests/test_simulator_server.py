"""The simulator's WebSocket server, over real sockets on 127.0.0.1.

No test asserts on timing: each waits for a condition with a generous bound (UNIT seconds)
and reads at most a fixed number of frames. "Nothing more arrives after X" is proved with a
sentinel: the server handles a client's messages in order and queues frames FIFO, so once
the reply to a later request arrives, every frame queued before it has arrived too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from feeds.dhan.codec import decode_message
from feeds.dhan.packets import (
    DisconnectPacket,
    FeedMode,
    FullPacket,
    OIPacket,
    Packet,
    PrevClosePacket,
    QuotePacket,
    ResponseCode,
    TickerPacket,
)
from feeds.dhan.requests import disconnect_message, subscribe_messages, unsubscribe_messages
from feeds.model import InstrumentKey, Segment
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.scrip_master import generate_scrip_master
from feeds.simulator.server import SimulatorServer, serve_forever
from feeds.simulator.universe import build_universe

UNIT = 10.0  # seconds: the bound on any single wait
MAX_FRAMES = 2_000  # the bound on any read loop

# One NIFTY expiry, 5 strikes a side: ids 35000..35021, ATM 25000 CE/PE = 35010/35011.
# A high trade rate makes every option trade nearly every step, so tests wait little.
FAST = SimulatorConfig(
    underlyings=("NIFTY",),
    expiries=1,
    strikes_per_side=5,
    today=dt.date(2026, 11, 20),
    trades_per_step=60,
    annual_vol=1.0,  # the index moves a tick or more almost every step
    tick_interval_s=0.02,
)
NIFTY: InstrumentKey = (int(Segment.IDX_I), 13)
ATM_CE: InstrumentKey = (int(Segment.NSE_FNO), 35010)
ATM_PE: InstrumentKey = (int(Segment.NSE_FNO), 35011)
OTM_CE: InstrumentKey = (int(Segment.NSE_FNO), 35012)


def feed_url(sim: SimulatorServer, token: str = "tok", client_id: str = "1000000001") -> str:
    return f"{sim.feed_url}?version=2&token={token}&clientId={client_id}&authType=2"


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(FAST) as server:
        yield server


async def subscribe(ws: ClientConnection, mode: FeedMode, keys: list[InstrumentKey]) -> None:
    for message in subscribe_messages(mode, keys):
        await ws.send(message)


async def frames(ws: ClientConnection) -> AsyncIterator[tuple[bytes, list[Packet]]]:
    """Binary frames with their decoded packets, bounded in count; decoding must be clean."""
    for _ in range(MAX_FRAMES):
        frame = await ws.recv()
        assert isinstance(frame, bytes)
        decoded = decode_message(frame)
        assert decoded.errors == []
        yield frame, decoded.packets
    raise AssertionError(f"condition not met within {MAX_FRAMES} frames")


async def collect_until(
    ws: ClientConnection, done: Callable[[list[Packet]], bool]
) -> tuple[list[bytes], list[Packet]]:
    """Read frames until ``done(all packets so far)``; return the frames and the packets."""
    got_frames: list[bytes] = []
    packets: list[Packet] = []
    async with asyncio.timeout(UNIT):
        async for frame, decoded in frames(ws):
            got_frames.append(frame)
            packets.extend(decoded)
            if done(packets):
                return got_frames, packets
    raise AssertionError("unreachable")


def key_of(p: Packet) -> InstrumentKey:
    return (p.segment, p.security_id)


def count(packets: list[Packet], kind: type, key: InstrumentKey | None = None) -> int:
    return sum(1 for p in packets if isinstance(p, kind) and (key is None or key_of(p) == key))


async def read_to_close(ws: ClientConnection) -> list[Packet]:
    """Every packet until the server closes the socket."""
    packets: list[Packet] = []
    async with asyncio.timeout(UNIT):
        try:
            async for _, decoded in frames(ws):
                packets.extend(decoded)
        except ConnectionClosed:
            return packets
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- handshake


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?token=t&clientId=c&authType=2",
        "?version=1&token=t&clientId=c&authType=2",
        "?version=2&token=t&clientId=c&authType=1",
        "?version=2&token=&clientId=c&authType=2",
        "?version=2&token=t&authType=2",
    ],
)
async def test_bad_query_is_refused_with_400(sim: SimulatorServer, query: str) -> None:
    """A handshake without version=2, authType=2, a token and a client id gets HTTP 400."""
    async with asyncio.timeout(UNIT):
        with pytest.raises(InvalidStatus) as info:
            async with connect(sim.feed_url + query):
                pass
    assert info.value.response.status_code == 400
    assert sim.stats.connections_rejected == 1 and sim.stats.connections_accepted == 0


async def test_plain_http_on_the_feed_path_is_refused(sim: SimulatorServer) -> None:
    """A GET without the upgrade headers is a 400, not a crash."""
    async with asyncio.timeout(UNIT), aiohttp.ClientSession() as http:
        async with http.get(feed_url(sim)) as response:
            assert response.status == 400


async def test_scrip_master_is_served(sim: SimulatorServer) -> None:
    """The detailed CSV for the server's universe is at Dhan's path."""
    assert sim.scrip_master_url.endswith("/api-data/api-scrip-master-detailed.csv")
    async with asyncio.timeout(UNIT), aiohttp.ClientSession() as http:
        async with http.get(sim.scrip_master_url) as response:
            assert response.status == 200
            assert response.content_type == "text/csv"
            assert await response.text() == generate_scrip_master(sim.universe)


@pytest.mark.parametrize(
    ("token", "client_id", "reason"),
    [("wrong", "1000000001", 809), ("secret", "1000000002", 810)],
)
async def test_bad_credentials_get_a_disconnect_packet_then_close(token: str, client_id: str, reason: int) -> None:
    """Dhan accepts the upgrade, then sends code 50 with 809 (token) or 810 (client id) and closes."""
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=1, expected_token="secret", expected_client_id="1000000001")
    async with SimulatorServer(config) as sim:
        async with asyncio.timeout(UNIT), connect(feed_url(sim, token, client_id)) as ws:
            first = await ws.recv()
            assert isinstance(first, bytes) and len(first) == 10
            assert decode_message(first).packets == [DisconnectPacket(0, 0, reason)]
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008
        assert sim.stats.disconnects_sent[reason] == 1


async def test_good_credentials_are_served() -> None:
    """With the expected token and client id, data flows."""
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=1, expected_token="secret", expected_client_id="42")
    async with SimulatorServer(config) as sim:
        async with connect(feed_url(sim, "secret", "42")) as ws:
            await subscribe(ws, FeedMode.TICKER, [NIFTY])
            _, packets = await collect_until(ws, lambda ps: count(ps, TickerPacket) >= 1)
            assert count(packets, DisconnectPacket) == 0


# --------------------------------------------------------------------------- modes


async def test_full_mode_sends_prev_close_then_162_byte_frames_for_subscribed_ids(sim: SimulatorServer) -> None:
    """Full: prev close on subscription, then one 162-byte code-8 packet per frame, only ours."""
    wanted = [ATM_CE, ATM_PE, OTM_CE]
    async with connect(feed_url(sim)) as ws:
        await subscribe(ws, FeedMode.FULL, wanted)
        got_frames, packets = await collect_until(
            ws, lambda ps: all(count(ps, FullPacket, k) >= 3 for k in wanted)
        )
    # The subscription reply: for each instrument its prev close, then its current Full packet.
    assert [(type(p), key_of(p)) for p in packets[:6]] == [
        (kind, key) for key in wanted for kind in (PrevClosePacket, FullPacket)
    ]
    for frame, p in zip(got_frames, packets, strict=True):  # one packet per frame
        assert key_of(p) in wanted
        if isinstance(p, FullPacket):
            assert len(frame) == 162 and frame[0] == ResponseCode.FULL
        else:
            assert isinstance(p, PrevClosePacket) and len(frame) == 16
    assert count(packets, PrevClosePacket) == 3
    assert sim.stats.subscribe_requests[FeedMode.FULL] == 1
    assert sim.stats.packets_sent[ResponseCode.FULL] >= count(packets, FullPacket)


async def test_quote_mode_sends_quote_and_oi_packets(sim: SimulatorServer) -> None:
    """Quote: codes 4 and 5 for an option; an index gets code 4 only."""
    async with connect(feed_url(sim)) as ws:
        await subscribe(ws, FeedMode.QUOTE, [ATM_CE, NIFTY])
        got_frames, packets = await collect_until(
            ws, lambda ps: count(ps, OIPacket, ATM_CE) >= 3 and count(ps, QuotePacket, NIFTY) >= 3
        )
    assert {type(p) for p in packets} == {PrevClosePacket, QuotePacket, OIPacket}
    # Each option Quote is followed by its OI packet, in its own frame.
    assert count(packets, OIPacket, NIFTY) == 0
    assert count(packets, OIPacket, ATM_CE) == count(packets, QuotePacket, ATM_CE)
    assert all(len(f) in (16, 50, 12) for f in got_frames)
    assert sim.stats.packets_sent[ResponseCode.OI] >= count(packets, OIPacket)


async def test_ticker_mode_sends_ticker_packets(sim: SimulatorServer) -> None:
    """Ticker: code 2 only (after the prev close)."""
    async with connect(feed_url(sim)) as ws:
        await subscribe(ws, FeedMode.TICKER, [ATM_PE, NIFTY])
        got_frames, packets = await collect_until(
            ws, lambda ps: count(ps, TickerPacket, ATM_PE) >= 3 and count(ps, TickerPacket, NIFTY) >= 3
        )
    assert {type(p) for p in packets} == {PrevClosePacket, TickerPacket}
    assert {len(f) for f in got_frames} == {16}


async def test_one_instrument_in_several_modes_gets_each_modes_packets(sim: SimulatorServer) -> None:
    """Subscriptions are per mode: Ticker and Full on one id yield codes 2 and 8."""
    async with connect(feed_url(sim)) as ws:
        await subscribe(ws, FeedMode.TICKER, [ATM_CE])
        await subscribe(ws, FeedMode.FULL, [ATM_CE])
        _, packets = await collect_until(
            ws, lambda ps: count(ps, TickerPacket, ATM_CE) >= 3 and count(ps, FullPacket, ATM_CE) >= 3
        )
    assert count(packets, PrevClosePacket, ATM_CE) == 2


async def test_unknown_ids_are_ignored(sim: SimulatorServer) -> None:
    """Ids outside the universe get nothing back, as on Dhan; the known ones are served."""
    unknown = [(int(Segment.NSE_FNO), 99), (int(Segment.NSE_EQ), 13)]
    async with connect(feed_url(sim)) as ws:
        await subscribe(ws, FeedMode.FULL, [*unknown, ATM_CE])
        _, packets = await collect_until(ws, lambda ps: count(ps, FullPacket, ATM_CE) >= 3)
    assert {key_of(p) for p in packets} == {ATM_CE}
    assert sim.stats.unknown_instruments == 2


async def test_unsubscribe_stops_data(sim: SimulatorServer) -> None:
    """After an unsubscribe is processed no packet for that id arrives; others keep flowing."""
    async with connect(feed_url(sim)) as ws:
        await subscribe(ws, FeedMode.FULL, [ATM_CE, ATM_PE])
        await collect_until(ws, lambda ps: count(ps, FullPacket, ATM_CE) >= 2)
        for message in unsubscribe_messages(FeedMode.FULL, [ATM_CE]):
            await ws.send(message)
        await subscribe(ws, FeedMode.TICKER, [NIFTY])  # the sentinel
        await collect_until(ws, lambda ps: count(ps, PrevClosePacket, NIFTY) == 1)
        _, after = await collect_until(
            ws, lambda ps: count(ps, TickerPacket, NIFTY) >= 10 and count(ps, FullPacket, ATM_PE) >= 3
        )
    assert count(after, FullPacket, ATM_CE) == 0 and count(after, PrevClosePacket, ATM_CE) == 0
    assert sim.stats.unsubscribe_requests[FeedMode.FULL] == 1


# --------------------------------------------------------------------------- limits and closing


async def test_more_than_100_instruments_in_one_message_is_804(sim: SimulatorServer) -> None:
    """A message listing 101 instruments gets a code-50 packet with reason 804, then a close."""
    items = [{"ExchangeSegment": "NSE_FNO", "SecurityId": str(35_000 + i)} for i in range(101)]
    message = orjson.dumps({"RequestCode": 21, "InstrumentCount": 101, "InstrumentList": items}).decode()
    async with connect(feed_url(sim)) as ws:
        await ws.send(message)
        packets = await read_to_close(ws)
        assert packets == [DisconnectPacket(0, 0, 804)]
        assert ws.close_code == 1008


async def test_more_instruments_than_a_connection_may_hold_is_804() -> None:
    """Crossing the per-connection limit (5000 on Dhan; 5 here) ends in reason 804."""
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=1, strikes_per_side=5, max_instruments_per_connection=5)
    keys = list(build_universe(config, FAST.today).contracts)[:6]
    async with SimulatorServer(config) as sim, connect(feed_url(sim)) as ws:
        await subscribe(ws, FeedMode.TICKER, keys[:5])
        await collect_until(ws, lambda ps: count(ps, PrevClosePacket) == 5)
        await subscribe(ws, FeedMode.QUOTE, keys[:5])  # the same instruments again: still 5
        await subscribe(ws, FeedMode.QUOTE, keys[5:])
        packets = await read_to_close(ws)
        assert packets[-1] == DisconnectPacket(0, 0, 804)
        assert sim.stats.disconnects_sent[804] == 1


async def test_disconnect_request_closes_the_socket(sim: SimulatorServer) -> None:
    """RequestCode 12 makes the server close the connection."""
    async with connect(feed_url(sim)) as ws:
        await subscribe(ws, FeedMode.FULL, [ATM_CE])
        await ws.send(disconnect_message())
        packets = await read_to_close(ws)
        assert count(packets, DisconnectPacket) == 0
        assert ws.close_code == 1000


async def test_a_sixth_connection_drops_the_oldest_with_805() -> None:
    """Over max_connections the oldest socket gets reason 805; the new one is served."""
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=1, strikes_per_side=2, max_connections=1)
    async with SimulatorServer(config) as sim:
        async with connect(feed_url(sim)) as old:
            await subscribe(old, FeedMode.TICKER, [NIFTY])
            await collect_until(old, lambda ps: count(ps, PrevClosePacket) == 1)
            async with connect(feed_url(sim)) as new:
                packets = await read_to_close(old)
                assert packets[-1] == DisconnectPacket(0, 0, 805)
                await subscribe(new, FeedMode.TICKER, [NIFTY])
                await collect_until(new, lambda ps: count(ps, PrevClosePacket) == 1)


async def test_a_client_that_cannot_keep_up_is_disconnected() -> None:
    """A full send queue drops that client (close 1013) instead of stalling the market."""
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=1, strikes_per_side=5, send_queue_frames=4)
    async with SimulatorServer(config) as sim, connect(feed_url(sim)) as ws:
        # 10 instruments → 20 frames queued at once, more than 4.
        await subscribe(ws, FeedMode.TICKER, list(sim.universe.contracts)[:10])
        await read_to_close(ws)
        assert ws.close_code == 1013
        assert sim.stats.slow_client_disconnects == 1
        steps = sim.market.steps
        sim.step()
        assert sim.market.steps == steps + 1


async def test_shutdown_closes_client_sockets() -> None:
    """Stopping the server closes every client with 1001 (going away)."""
    sim = SimulatorServer(FAST)
    await sim.start()
    try:
        async with connect(feed_url(sim)) as ws:
            await subscribe(ws, FeedMode.TICKER, [NIFTY])
            await collect_until(ws, lambda ps: count(ps, PrevClosePacket) == 1)
            async with asyncio.timeout(UNIT):
                await sim.stop()
            await read_to_close(ws)
            assert ws.close_code == 1001
    finally:
        await sim.stop()  # idempotent
    assert sim.connections_open == 0


# --------------------------------------------------------------------------- framing and state


async def test_stacked_mode_puts_several_packets_in_one_frame() -> None:
    """With stack_packets, frames carry several packets, split by the header length."""
    config = SimulatorConfig(
        underlyings=("NIFTY",), expiries=1, strikes_per_side=5, today=dt.date(2026, 11, 20),
        stack_packets=True, max_packets_per_frame=8,
    )  # fmt: skip
    keys = list(build_universe(config, FAST.today).contracts)
    async with SimulatorServer(config) as sim, connect(feed_url(sim)) as ws:
        await subscribe(ws, FeedMode.QUOTE, keys)
        got_frames, packets = await collect_until(ws, lambda ps: count(ps, QuotePacket) >= 3 * len(keys))
    sizes = {len(decode_message(f).packets) for f in got_frames}
    assert max(sizes) == 8  # the subscription reply is 3 packets x 22 instruments, in frames of 8
    assert sum(len(f) for f in got_frames) == sum({PrevClosePacket: 16, QuotePacket: 50, OIPacket: 12}[type(p)] for p in packets)


async def test_last_sent_matches_what_the_client_decoded(sim: SimulatorServer) -> None:
    """For every instrument and packet type, the last packet received equals market.last_sent."""
    full_keys = [ATM_CE, ATM_PE, OTM_CE]
    quote_keys = [ATM_CE, NIFTY]
    async with connect(feed_url(sim)) as ws:
        await subscribe(ws, FeedMode.FULL, full_keys)
        await subscribe(ws, FeedMode.QUOTE, quote_keys)
        _, packets = await collect_until(ws, lambda ps: all(count(ps, FullPacket, k) >= 5 for k in full_keys))
        sim.pause()
        await subscribe(ws, FeedMode.TICKER, [NIFTY])  # the sentinel: its reply is the last frame
        _, tail = await collect_until(ws, lambda ps: count(ps, TickerPacket, NIFTY) == 1)
    last: dict[InstrumentKey, dict[int, Packet]] = {}
    for p in packets + tail:
        code = {TickerPacket: 2, QuotePacket: 4, OIPacket: 5, PrevClosePacket: 6, FullPacket: 8}[type(p)]
        last.setdefault(key_of(p), {})[code] = p
    assert set(last) == {*full_keys, *quote_keys}
    for key, by_code in last.items():
        assert sim.market.last_sent[key] == by_code


async def test_serve_forever_logs_its_urls_serves_and_stops(caplog: pytest.LogCaptureFixture) -> None:
    """The CLI entry point logs the feed URL, serves on it, and returns once stop is set."""
    caplog.set_level("INFO", logger="feeds.simulator.server")
    stop = asyncio.Event()
    task = asyncio.create_task(serve_forever(FAST, "127.0.0.1", 0, stop))
    async with asyncio.timeout(UNIT):
        while not any(r.getMessage().startswith("Dhan simulator: feed ws://") for r in caplog.records):
            await asyncio.sleep(0.01)
        message = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Dhan simulator"))
        url = message.split()[3].rstrip(",")
        async with connect(f"{url}?version=2&token=t&clientId=c&authType=2") as ws:
            await subscribe(ws, FeedMode.TICKER, [NIFTY])
            await collect_until(ws, lambda ps: count(ps, TickerPacket, NIFTY) >= 1)
            stop.set()
            await task
            await read_to_close(ws)
