"""The simulator's universe, scrip master and market, without a network."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math

import pytest

from feeds.dhan.codec import decode_packet, encode
from feeds.dhan.packets import (
    FeedMode,
    FullPacket,
    OIPacket,
    PrevClosePacket,
    QuotePacket,
    ResponseCode,
    TickerPacket,
    depth_levels,
)
from feeds.model import OptionType, Segment
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.market import Market, f32
from feeds.simulator.scrip_master import HEADER, generate_scrip_master
from feeds.simulator.universe import FIRST_OPTION_ID, build_universe, is_monthly_expiry

FRIDAY = dt.date(2026, 11, 20)
TUESDAY = dt.date(2026, 11, 24)  # also the last Tuesday of November 2026
NOW = dt.datetime(2026, 11, 20, 5, 30, tzinfo=dt.UTC).timestamp()  # 11:00 IST


def fixed_clock() -> float:
    return NOW


def is_tick_multiple(price: float) -> bool:
    """``price`` is exactly the float32 nearest to a multiple of 0.05."""
    return f32(round(round(price / 0.05) * 0.05, 2)) == price


def price_fields(p: QuotePacket | FullPacket) -> list[float]:
    """The fields that sit on the tick (ATP is an average: 2 decimals only)."""
    return [p.ltp, p.open, p.close, p.high, p.low]


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("underlyings", ("NIFTY", "SENSEX")),
        ("underlyings", ()),
        ("expiries", 0),
        ("strikes_per_side", -1),
        ("tick_interval_s", 0.0),
        ("annual_vol", float("nan")),
        ("trades_per_step", -5),
        ("send_queue_frames", 0),
        ("expected_token", ""),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    """An invalid setting raises ValueError that names the setting."""
    with pytest.raises(ValueError, match=field):
        SimulatorConfig(**{field: value})


# --------------------------------------------------------------------------- universe


def test_universe_is_deterministic() -> None:
    """The same config and day give the same contracts and ids."""
    config = SimulatorConfig()
    a, b = build_universe(config, FRIDAY), build_universe(config, FRIDAY)
    assert list(a.contracts.values()) == list(b.contracts.values())
    assert a.skeleton == b.skeleton


def test_universe_uses_real_index_ids_lots_and_strike_steps() -> None:
    """NIFTY/BANKNIFTY/FINNIFTY are IDX_I 13/25/27 with their lot sizes and strike spacing."""
    u = build_universe(SimulatorConfig(), FRIDAY)
    expected = {"NIFTY": (13, 75, 50), "BANKNIFTY": (25, 35, 100), "FINNIFTY": (27, 65, 50)}
    assert set(u.skeleton.underlyings) == set(expected)
    for symbol, (sid, lot, step) in expected.items():
        chain = u.skeleton.underlyings[symbol]
        assert chain.key == (Segment.IDX_I, sid)
        assert chain.tick_size == 0.05
        assert len(chain.expiries) == 3
        for expiry in chain.expiries:
            assert expiry.lot_size == lot
            strikes = [row.strike for row in expiry.strikes]
            assert len(strikes) == 41
            assert all(b - a == step for a, b in zip(strikes, strikes[1:]))
            spot = u.spec(symbol).spot
            assert strikes[0] < spot < strikes[-1]
            for row in expiry.strikes:
                assert row.ce is not None and row.pe is not None
                assert (row.ce.option_type, row.pe.option_type) == (OptionType.CE, OptionType.PE)
                for c in (row.ce, row.pe):
                    assert c.key[0] == Segment.NSE_FNO
                    assert (c.lot_size, c.tick_size, c.underlying, c.expiry) == (lot, 0.05, symbol, expiry.expiry)
    ids = [key[1] for key in u.contracts]
    assert ids == list(range(FIRST_OPTION_ID, FIRST_OPTION_ID + 3 * 3 * 41 * 2))
    assert len(u) == len(ids) + 3
    assert u.skeleton.instrument_count() == len(u)
    assert (Segment.IDX_I, 13) in u and (Segment.NSE_FNO, FIRST_OPTION_ID) in u and (Segment.NSE_EQ, 13) not in u


def test_nifty_expires_weekly_on_tuesdays_and_the_others_monthly() -> None:
    """NIFTY has consecutive Tuesdays; BANKNIFTY and FINNIFTY the last Tuesday of each month."""
    u = build_universe(SimulatorConfig(expiries=4), FRIDAY)
    nifty = [e.expiry for e in u.skeleton.underlyings["NIFTY"].expiries]
    assert nifty == [TUESDAY + dt.timedelta(weeks=i) for i in range(4)]
    for symbol in ("BANKNIFTY", "FINNIFTY"):
        monthly = [e.expiry for e in u.skeleton.underlyings[symbol].expiries]
        assert monthly == [dt.date(2026, 11, 24), dt.date(2026, 12, 29), dt.date(2027, 1, 26), dt.date(2027, 2, 23)]
        assert all(d.weekday() == 1 and is_monthly_expiry(d) and (d + dt.timedelta(7)).month != d.month for d in monthly)


def test_an_expiry_day_is_still_listed_and_a_past_month_end_is_skipped() -> None:
    """On expiry Tuesday that expiry is live; after the month's last Tuesday the next month's comes."""
    u = build_universe(SimulatorConfig(expiries=1), TUESDAY)
    assert u.skeleton.underlyings["NIFTY"].expiries[0].expiry == TUESDAY
    later = build_universe(SimulatorConfig(expiries=1), dt.date(2026, 11, 25))
    assert later.skeleton.underlyings["BANKNIFTY"].expiries[0].expiry == dt.date(2026, 12, 29)


# --------------------------------------------------------------------------- scrip master


def test_scrip_master_has_dhans_detailed_header_and_rows() -> None:
    """Header, index rows and option rows follow the detailed format, one row per contract."""
    u = build_universe(SimulatorConfig(), FRIDAY)
    text = generate_scrip_master(u)
    assert text.splitlines()[0] == ",".join(HEADER)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert all(len(row) == len(HEADER) and None not in row for row in rows)

    nifty = next(r for r in rows if r["SEGMENT"] == "I" and r["SECURITY_ID"] == "13")
    assert (nifty["EXCH_ID"], nifty["INSTRUMENT"], nifty["UNDERLYING_SYMBOL"], nifty["DISPLAY_NAME"]) == (
        "NSE", "INDEX", "NIFTY", "Nifty 50",
    )  # fmt: skip
    assert nifty["INSTRUMENT_TYPE"] == "INDEX"
    indices = {r["SECURITY_ID"]: r["UNDERLYING_SYMBOL"] for r in rows if r["INSTRUMENT"] == "INDEX"}
    assert indices == {"13": "NIFTY", "25": "BANKNIFTY", "27": "FINNIFTY", "21": "INDIA VIX"}

    options = {int(r["SECURITY_ID"]): r for r in rows if r["INSTRUMENT"] == "OPTIDX"}
    assert set(options) == {key[1] for key in u.contracts}
    for key, contract in u.contracts.items():
        row = options[key[1]]
        spec = u.spec(contract.underlying)
        assert row["EXCH_ID"] == "NSE" and row["SEGMENT"] == "D" and row["ISIN"] == "NA"
        assert row["UNDERLYING_SECURITY_ID"] == str(spec.security_id)
        assert row["UNDERLYING_SYMBOL"] == contract.underlying
        assert row["INSTRUMENT_TYPE"] == "OP"
        assert row["LOT_SIZE"] == f"{contract.lot_size}.0"
        assert row["SM_EXPIRY_DATE"] == contract.expiry.isoformat()
        assert row["STRIKE_PRICE"] == f"{contract.strike:.5f}"
        assert row["OPTION_TYPE"] == contract.option_type
        assert row["TICK_SIZE"] == "0.0500"
        assert row["EXPIRY_FLAG"] == ("M" if is_monthly_expiry(contract.expiry) else "W")

    sample = options[FIRST_OPTION_ID + 20 * 2]  # first NIFTY expiry, ATM call
    assert sample["DISPLAY_NAME"] == "NIFTY 24 NOV 25000 CALL"
    assert sample["STRIKE_PRICE"] == "25000.00000"
    assert sample["LOT_SIZE"] == "75.0"
    assert sample["EXPIRY_FLAG"] == "M"
    assert options[FIRST_OPTION_ID + 82]["EXPIRY_FLAG"] == "W"  # NIFTY 1 Dec


def test_scrip_master_carries_rows_a_chain_loader_must_skip() -> None:
    """An equity, INDIA VIX, an index future and a stock option are present, with no id clashes."""
    u = build_universe(SimulatorConfig(), FRIDAY)
    rows = list(csv.DictReader(io.StringIO(generate_scrip_master(u))))
    kinds = {r["INSTRUMENT"] for r in rows}
    assert {"EQUITY", "INDEX", "FUTIDX", "OPTIDX", "OPTSTK"} <= kinds
    equity = next(r for r in rows if r["INSTRUMENT"] == "EQUITY")
    assert (equity["SEGMENT"], equity["SECURITY_ID"], equity["UNDERLYING_SYMBOL"]) == ("E", "2885", "")
    assert next(r for r in rows if r["INSTRUMENT"] == "FUTIDX")["STRIKE_PRICE"] == "-0.01000"
    derivative_ids = [r["SECURITY_ID"] for r in rows if r["SEGMENT"] == "D"]
    assert len(derivative_ids) == len(set(derivative_ids))


# --------------------------------------------------------------------------- market


def small_market(seed: int = 7, clock=fixed_clock) -> Market:
    config = SimulatorConfig(seed=seed, expiries=2, strikes_per_side=10)
    return Market(build_universe(config, FRIDAY), config, clock)


def run(market: Market, steps: int, trades: int = 40) -> list[list]:
    out = []
    for _ in range(steps):
        for key in market.step(trades):
            out.append(market.packet(key, FeedMode.FULL))
    return out


def test_market_is_deterministic_for_a_seed() -> None:
    """Same seed and clock readings give identical packets; another seed does not."""
    assert run(small_market(), 50) == run(small_market(), 50)
    assert run(small_market(), 50) != run(small_market(seed=8), 50)


def test_rendering_packets_does_not_disturb_the_random_stream() -> None:
    """Asking for packets (what subscribers do) never changes the market's path."""
    quiet, busy = small_market(), small_market()
    for _ in range(30):
        quiet.step(20)
        for key in busy.step(20):
            for mode in FeedMode:
                busy.packet(key, mode)
    keys = list(quiet.universe.contracts)
    assert [quiet.packet(k, FeedMode.FULL) for k in keys] == [busy.packet(k, FeedMode.FULL) for k in keys]


def test_option_prices_are_sane() -> None:
    """Ticks, float32 exactness, bid < ask, lots, and call/put ordering across strikes."""
    market = small_market()
    run(market, 100)
    u = market.universe
    for key, contract in u.contracts.items():
        (full,) = market.packet(key, FeedMode.FULL)
        assert full.ltp >= 0.05
        assert f32(full.atp) == full.atp and full.atp == f32(round(full.atp, 2))
        for price in (*price_fields(full), *(p for lvl in full.levels() for p in (lvl.bid_price, lvl.ask_price))):
            assert f32(price) == price
            assert is_tick_multiple(price)
        assert full.close == market.prev_close_packet(key).prev_close
        assert full.low <= full.ltp <= full.high
        assert full.oi_day_low <= full.oi <= full.oi_day_high
        lot = contract.lot_size
        assert full.ltq % lot == 0 and full.oi % lot == 0 and full.volume % lot == 0
        assert 0 < full.ltq <= 65_535
        best = full.levels()[0]
        assert best.ask_price > best.bid_price or best.bid_qty == 0
        asks = [lvl.ask_price for lvl in full.levels()]
        assert asks == sorted(asks) and len(set(asks)) == 5
        assert all(lvl.ask_qty % lot == 0 and 1 <= lvl.ask_orders <= lvl.ask_qty // lot for lvl in full.levels())

    for chain in u.skeleton.underlyings.values():
        spot = market.spot(chain.symbol)
        for expiry in chain.expiries:
            calls = [market.theoretical_price(r.ce.key) for r in expiry.strikes]
            puts = [market.theoretical_price(r.pe.key) for r in expiry.strikes]
            assert calls == sorted(calls, reverse=True) and puts == sorted(puts)
            deep_itm_call = expiry.strikes[0]  # lowest strike
            ltp_call = market.packet(deep_itm_call.ce.key, FeedMode.TICKER)[0].ltp
            ltp_put = market.packet(deep_itm_call.pe.key, FeedMode.TICKER)[0].ltp
            assert ltp_call > ltp_put
            assert ltp_call >= spot - deep_itm_call.strike - 5  # roughly intrinsic or more
            deep_itm_put = expiry.strikes[-1]
            assert (
                market.packet(deep_itm_put.pe.key, FeedMode.TICKER)[0].ltp
                > market.packet(deep_itm_put.ce.key, FeedMode.TICKER)[0].ltp
            )


def test_volume_grows_and_ltt_is_a_true_utc_second() -> None:
    """Day volume never falls; LTT is the clock's UTC epoch second, not IST wall-clock."""
    now = [NOW]
    market = small_market(clock=lambda: now[0])
    key = next(iter(market.universe.contracts))
    volumes = []
    for i in range(200):
        now[0] = NOW + i
        if key in market.step(40):
            (quote, _) = market.packet(key, FeedMode.QUOTE)
            volumes.append(quote.volume)
            assert quote.ltt == int(now[0])
    assert len(volumes) > 1 and volumes == sorted(volumes) and volumes[-1] > volumes[0]


def test_index_moves_on_the_tick_and_packets_match_its_mode() -> None:
    """An index prints on the 0.05 tick; Quote has no OI packet; Full has zero depth and OI."""
    market = small_market()
    nifty = (int(Segment.IDX_I), 13)
    seen = {market.packet(nifty, FeedMode.TICKER)[0].ltp}
    for _ in range(100):
        if nifty in market.step(0):
            seen.add(market.packet(nifty, FeedMode.TICKER)[0].ltp)
    assert len(seen) > 10
    assert all(is_tick_multiple(p) and 24_000 < p < 26_000 for p in seen)
    assert [type(p) for p in market.packet(nifty, FeedMode.QUOTE)] == [QuotePacket]
    (full,) = market.packet(nifty, FeedMode.FULL)
    assert full.oi == 0 and all(v == 0 for v in full.depth)
    assert isinstance(market.prev_close_packet(nifty), PrevClosePacket)
    assert math.isclose(market.prev_close_packet(nifty).prev_close, 25_000, rel_tol=0.05)


def test_packets_round_trip_through_the_codec_and_are_recorded() -> None:
    """Every packet survives encode→decode unchanged and is what last_sent holds."""
    market = small_market()
    run(market, 20)
    option = next(iter(market.universe.contracts))
    expected_types = {
        FeedMode.TICKER: [TickerPacket],
        FeedMode.QUOTE: [QuotePacket, OIPacket],
        FeedMode.FULL: [FullPacket],
    }
    for mode, types in expected_types.items():
        packets = market.packet(option, mode)
        assert [type(p) for p in packets] == types
        for p in packets:
            assert decode_packet(encode(p)) == (p, len(encode(p)))
    sent = market.last_sent[option]
    assert set(sent) == {ResponseCode.TICKER, ResponseCode.QUOTE, ResponseCode.OI, ResponseCode.FULL}
    assert sent[ResponseCode.FULL] == market.packet(option, FeedMode.FULL)[0]
    prev = market.prev_close_packet(option)
    assert sent[ResponseCode.PREV_CLOSE] == prev == decode_packet(encode(prev))[0]
    assert len(depth_levels(sent[ResponseCode.FULL].depth)) == 5
