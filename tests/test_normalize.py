"""Packets → ticks: tick rounding, true instants, zeros that mean "not sent" become None."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feeds.dhan.normalize import Normalizer, tick_rounder
from feeds.dhan.packets import (
    DisconnectPacket,
    FullPacket,
    MarketStatusPacket,
    OIPacket,
    PrevClosePacket,
    QuotePacket,
    TickerPacket,
)
from feeds.model import FullTick, OpenInterestTick, PrevCloseTick, QuoteTick, TradeTick

KEY = (2, 35000)


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


@given(st.integers(1, 4_000_000), st.sampled_from([0.05, 0.1, 0.01, 0.25, 1.0, 0.0025]))
def test_float32_prices_round_back_to_the_exact_tick(ticks: int, tick: float) -> None:
    """A price that was a tick multiple before float32 comes back as that exact decimal."""
    true = round(ticks * tick, 4)
    if true >= 131_072:  # beyond this float32 spacing (1/64) exceeds a 0.01 tick: not representable
        return
    assert tick_rounder(tick)(f32(true)) == true


def test_odd_tick_uses_the_fallback() -> None:
    """A tick with no integer inverse still rounds to its decimals."""
    assert tick_rounder(0.03)(f32(1.2)) == 1.2
    with pytest.raises(ValueError):
        tick_rounder(0)


def _full(**kw: object) -> FullPacket:
    values = dict(
        segment=2, security_id=35000, ltp=f32(152.3), ltq=75, ltt=1_781_064_997, atp=f32(150.1), volume=7500,
        total_sell_qty=100, total_buy_qty=200, oi=3000, oi_day_high=3100, oi_day_low=2900, open=f32(149.95),
        close=0.0, high=f32(155.0), low=f32(148.55),
        depth=(150, 225, 3, 4, f32(152.1), f32(152.8)) + (0, 0, 0, 0, 0.0, 0.0) * 4,
    )
    values.update(kw)
    return FullPacket(**values)  # type: ignore[arg-type]


def test_full_packet_becomes_a_full_tick() -> None:
    """Prices rounded to the tick; level-1 depth kept; a zero close becomes None."""
    out: list = []
    Normalizer({KEY: 0.05})([_full()], 1.5, out)
    assert out == [
        FullTick(KEY, 152.3, 75, 1_781_064_997, 150.1, 7500, 100, 200, 3000, 149.95, None, 155.0, 148.55,
                 152.1, 150, 152.8, 225, 1.5)
    ]


def test_missing_prices_and_their_quantities_are_none() -> None:
    """No trade yet, no bid: prices 0 on the wire become None, and so do their quantities."""
    depth = (0, 225, 0, 4, 0.0, f32(1.05)) + (0, 0, 0, 0, 0.0, 0.0) * 4
    out: list = []
    Normalizer({KEY: 0.05})([_full(ltp=0.0, ltt=-19_800, atp=0.0, depth=depth)], 1.0, out)
    (tick,) = out
    assert (tick.ltp, tick.ltt, tick.atp, tick.bid, tick.bid_qty, tick.ask, tick.ask_qty) == (
        None, None, None, None, None, 1.05, 225
    )
    assert tick.volume == 7500  # quantities of 0 or more are real values


def test_other_packet_types() -> None:
    """Ticker, Quote, OI and prev close map to their ticks; status packets are ignored."""
    norm = Normalizer({KEY: 0.05, (0, 13): 0.05})
    out: list = []
    packets = [
        TickerPacket(0, 13, f32(25012.35), 1_781_064_997),
        QuotePacket(0, 13, f32(25012.35), 0, 1_781_064_997, 0.0, 0, 0, 0, f32(25000.0), f32(24990.5), f32(25020.0), f32(24980.05)),
        OIPacket(2, 35000, 4500),
        PrevClosePacket(2, 35000, f32(140.2), 4000),
        MarketStatusPacket(0, 0),
        DisconnectPacket(0, 0, 805),
    ]
    norm(packets, 2.0, out)
    assert out == [
        TradeTick((0, 13), 25012.35, 1_781_064_997, 2.0),
        QuoteTick((0, 13), 25012.35, 0, 1_781_064_997, None, 0, 0, 0, 25000.0, 24990.5, 25020.0, 24980.05, 2.0),
        OpenInterestTick(KEY, 4500, 2.0),
        PrevCloseTick(KEY, 140.2, 4000, 2.0),
    ]
    assert norm.ignored_packets == 2


def test_unknown_instruments_are_counted_and_dropped() -> None:
    """Late packets for instruments we never subscribed are dropped (reference §8.5)."""
    norm = Normalizer({KEY: 0.05})
    out: list = []
    norm([_full(security_id=1), OIPacket(2, 1, 5)], 1.0, out)
    assert out == [] and norm.unknown_instrument_packets == 2


def test_slow_path_matches_fast_path_semantics() -> None:
    """An instrument with an odd tick gets the same None rules through the fallback."""
    out: list = []
    Normalizer({KEY: 0.03})([_full(ltp=f32(1.2), close=0.0), OIPacket(2, 35000, 7)], 1.0, out)
    assert out[0].ltp == 1.2 and out[0].close is None and out[1] == OpenInterestTick(KEY, 7, 1.0)
