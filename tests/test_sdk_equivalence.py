"""Proof that the simulator speaks the real protocol: Dhan's own SDK decodes what it sends.

The official ``dhanhq`` SDK connects to the simulator exactly as it connects to Dhan (only
its class-level URL is pointed at us), subscribes in Ticker, Quote and Full mode, and decodes
every frame with its own parser. Each raw frame is also decoded by our decoder; both must
agree on every field the SDK exposes, formatted the SDK's way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import AsyncIterator

import pytest

from feeds.dhan.codec import decode_message
from feeds.dhan.packets import (
    FullPacket,
    IST_OFFSET_S,
    OIPacket,
    PrevClosePacket,
    QuotePacket,
    TickerPacket,
    depth_levels,
)
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.server import SimulatorServer

dhanhq = pytest.importorskip("dhanhq")
from dhanhq import DhanContext, MarketFeed  # noqa: E402

FRAMES = 400


def _price(x: float) -> str:
    return f"{x:.2f}"


def _sdk_clock(true_epoch: int) -> str:
    # The SDK formats the wire's IST-wall-clock seconds as if they were UTC.
    return dt.datetime.fromtimestamp(true_epoch + IST_OFFSET_S, dt.timezone.utc).strftime("%H:%M:%S")


class RecordingFeed(MarketFeed):
    """The SDK's feed, keeping each raw frame beside the SDK's own decoding of it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.pairs: list[tuple[bytes, object]] = []

    async def get_instrument_data(self):  # type: ignore[override]
        raw = await self.ws.recv()
        self.data = self.process_data(raw)
        self.pairs.append((raw, self.data))
        return self.data


def _run_sdk(url: str, instruments: list[tuple[int, str, int]], frames: int, out: list, errors: list) -> None:
    """Drive the SDK in its own thread and event loop (it creates and owns one)."""
    saved = MarketFeed.market_feed_wss
    MarketFeed.market_feed_wss = url
    feed = None
    try:
        feed = RecordingFeed(DhanContext("1000000001", "eyJ-test"), instruments, version="v2")
        feed.run_forever()  # connects and subscribes
        while len(feed.pairs) < frames:
            feed.get_data()
        out.extend(feed.pairs)
    except Exception as exc:  # noqa: BLE001 - handed to the test thread, which raises it
        errors.append(exc)
    finally:
        MarketFeed.market_feed_wss = saved
        if feed is not None:
            if feed.ws is not None:
                feed.loop.run_until_complete(feed.ws.close())
            feed.loop.close()


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=1, strikes_per_side=4, tick_interval_s=0.01, trades_per_step=10)
    async with SimulatorServer(config) as server:
        yield server


def _assert_same(raw: bytes, sdk: dict) -> str:
    packets, errors = decode_message(raw)
    assert not errors and len(packets) == 1
    p = packets[0]
    assert (sdk["exchange_segment"], sdk["security_id"]) == (p.segment, p.security_id)
    kind = sdk["type"]
    if isinstance(p, TickerPacket):
        assert kind == "Ticker Data"
        assert (sdk["LTP"], sdk["LTT"]) == (_price(p.ltp), _sdk_clock(p.ltt))
    elif isinstance(p, PrevClosePacket):
        assert kind == "Previous Close"
        assert (sdk["prev_close"], sdk["prev_OI"]) == (_price(p.prev_close), p.prev_oi)
    elif isinstance(p, OIPacket):
        assert kind == "OI Data" and sdk["OI"] == p.oi
    elif isinstance(p, (QuotePacket, FullPacket)):
        assert kind == ("Quote Data" if isinstance(p, QuotePacket) else "Full Data")
        assert sdk["LTP"] == _price(p.ltp) and sdk["LTQ"] == p.ltq and sdk["LTT"] == _sdk_clock(p.ltt)
        assert sdk["avg_price"] == _price(p.atp) and sdk["volume"] == p.volume
        assert (sdk["total_sell_quantity"], sdk["total_buy_quantity"]) == (p.total_sell_qty, p.total_buy_qty)
        assert [sdk[k] for k in ("open", "close", "high", "low")] == [_price(v) for v in (p.open, p.close, p.high, p.low)]
        if isinstance(p, FullPacket):
            assert (sdk["OI"], sdk["oi_day_high"], sdk["oi_day_low"]) == (p.oi, p.oi_day_high, p.oi_day_low)
            ours = [
                {"bid_quantity": lv.bid_qty, "ask_quantity": lv.ask_qty, "bid_orders": lv.bid_orders,
                 "ask_orders": lv.ask_orders, "bid_price": _price(lv.bid_price), "ask_price": _price(lv.ask_price)}
                for lv in depth_levels(p.depth)
            ]
            assert sdk["depth"] == ours
    else:
        raise AssertionError(f"unexpected packet {p!r}")
    return kind


async def test_official_sdk_decodes_the_simulator_like_we_do(sim: SimulatorServer) -> None:
    """Every frame the SDK receives decodes to the same values with our decoder."""
    options = sorted(sim.universe.contracts)
    instruments = [(2, str(sid), 21) for _, sid in options[:-2]]  # Full
    instruments += [(2, str(sid), 17) for _, sid in options[-2:]]  # Quote (+ OI packets)
    instruments += [(0, "13", 15)]  # the index in Ticker mode
    pairs: list[tuple[bytes, object]] = []
    errors: list[BaseException] = []
    thread = threading.Thread(target=_run_sdk, args=(sim.feed_url, instruments, FRAMES, pairs, errors), daemon=True)
    thread.start()
    async with asyncio.timeout(30):
        while thread.is_alive():
            await asyncio.sleep(0.05)
    if errors:
        raise errors[0]
    assert len(pairs) >= FRAMES
    kinds = {_assert_same(raw, sdk) for raw, sdk in pairs}  # type: ignore[arg-type]
    assert kinds == {"Ticker Data", "Previous Close", "OI Data", "Quote Data", "Full Data"}
