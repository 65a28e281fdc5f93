"""The Kite ticker codec: Zerodha's mock packets, round trips, malformed frames, and the official SDK.

Golden vectors are Zerodha's published mocks (copied from the protocol reference into
tests/data/kite/): a packet body in base64 and the values it decodes to. The oracle is the
official ``kiteconnect`` SDK's own parser, ``KiteTicker._parse_binary``, fed our encoder's
frames without any connection.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeds.errors import DecodeError, SubscriptionError
from feeds.kite.codec import (
    decode_frame,
    decode_frame_lenient,
    decode_packet,
    encode_bodies,
    encode_frame,
    encode_packet,
    encode_text,
    is_heartbeat,
    parse_text,
)
from feeds.kite.normalize import Normalizer
from feeds.kite.packets import (
    FullPacket,
    IndexFullPacket,
    IndexQuotePacket,
    KiteSegment,
    LtpPacket,
    Mode,
    QuotePacket,
    TextMessage,
    UnknownPacket,
    depth_entries,
    instrument_key,
    price_divisor,
)
from feeds.kite.requests import (
    KiteRequest,
    check_budget,
    mode_messages,
    parse_request,
    shard,
    subscribe_messages,
    unsubscribe_messages,
)
from feeds.model import FullTick, PrevCloseTick, QuoteTick, Segment, TradeTick

DATA = Path(__file__).parent / "data" / "kite"
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))


def _mock(name: str) -> tuple[bytes, dict]:
    body = base64.b64decode((DATA / f"ticker_{name}.packet").read_text())
    return body, json.loads((DATA / f"ticker_{name}.json").read_text())


def _epoch(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp())


# --------------------------------------------------------------------------- golden


def test_mock_full_packet_decodes_to_zerodhas_values() -> None:
    """The 184-byte mock decodes to the published values, field by field."""
    body, want = _mock("full")
    assert len(body) == 184
    p = decode_packet(body)
    assert isinstance(p, FullPacket)
    div = price_divisor(p.token)
    assert div == 100 and p.token == want["instrument_token"]
    assert p.last_price / div == want["last_price"] and p.last_quantity == want["last_quantity"]
    assert p.average_price / div == want["average_price"] and p.volume == want["volume"]
    assert (p.buy_quantity, p.sell_quantity) == (want["buy_quantity"], want["sell_quantity"])
    assert [p.open / div, p.high / div, p.low / div, p.close / div] == [want["ohlc"][k] for k in ("open", "high", "low", "close")]
    assert p.last_trade_time == _epoch(want["last_trade_time"]) == 1625461887
    assert p.exchange_timestamp == _epoch(want["timestamp"])
    assert (p.oi, p.oi_day_high, p.oi_day_low) == (want["oi"], want["oi_day_high"], want["oi_day_low"])
    bids, asks = depth_entries(p.depth)
    for side, entries in (("buy", bids), ("sell", asks)):
        assert [{"price": e.price / div, "quantity": e.quantity, "orders": e.orders} for e in entries] == want["depth"][side]


def test_mock_quote_packet_decodes_to_zerodhas_values() -> None:
    """The 44-byte mock decodes to the published values."""
    body, want = _mock("quote")
    p = decode_packet(body)
    assert isinstance(p, QuotePacket) and p.token == want["instrument_token"]
    assert (p.last_price / 100, p.last_quantity, p.average_price / 100, p.volume) == (
        want["last_price"], want["last_quantity"], want["average_price"], want["volume"]
    )
    assert (p.buy_quantity, p.sell_quantity) == (want["buy_quantity"], want["sell_quantity"])
    assert [p.open / 100, p.high / 100, p.low / 100, p.close / 100] == [want["ohlc"][k] for k in ("open", "high", "low", "close")]


@pytest.mark.parametrize("name", ["full", "quote"])
def test_encoder_reproduces_the_mock_bytes(name: str) -> None:
    """encode(decode(mock)) is the mock, byte for byte, alone and inside a container."""
    body, _ = _mock(name)
    assert encode_packet(decode_packet(body)) == body
    frame = encode_bodies([body, body])
    assert frame[:4] == b"\x00\x02" + len(body).to_bytes(2, "big")
    assert encode_frame(decode_frame(frame)) == frame


def test_golden_values_normalise_into_broker_neutral_ticks() -> None:
    """The mock full packet becomes a FullTick in rupees on a 0.05 tick, plus the previous close once."""
    body, want = _mock("full")
    key = instrument_key(want["instrument_token"])
    assert key == (int(Segment.NSE_EQ), 408065)  # token & 0xFF = 1: NSE
    norm = Normalizer({key: 0.05})
    out: list = []
    norm([decode_packet(body)], 1.5, out)
    norm([decode_packet(body)], 2.5, out)
    full, prev, again = out
    assert isinstance(full, FullTick) and isinstance(prev, PrevCloseTick) and isinstance(again, FullTick)
    assert (full.ltp, full.ltq, full.ltt, full.atp, full.volume, full.oi) == (1573.7, 7, 1625461887, 1570.35, 1192471, 0)
    assert (full.total_buy_qty, full.total_sell_qty) == (256443, 363009)
    assert (full.open, full.high, full.low, full.close) == (1569.15, 1575.0, 1561.05, 1567.8)
    assert (full.bid, full.bid_qty, full.ask, full.ask_qty) == (1573.4, 5, 1573.7, 172)
    assert prev == PrevCloseTick(key, 1567.8, None, 1.5)  # Kite has no previous OI: null, never 0


# --------------------------------------------------------------------------- the official SDK as oracle

kiteconnect = pytest.importorskip("kiteconnect")


def _sdk_parse(frame: bytes) -> list[dict]:
    return kiteconnect.KiteTicker("api-key", "access-token")._parse_binary(frame)  # noqa: SLF001


def _sdk_epoch(value: dt.datetime) -> int:
    return int(value.timestamp())  # the SDK builds naive local datetimes: compare epochs, whatever TZ is


def _assert_sdk_agrees(p: object, d: dict) -> None:
    div = price_divisor(p[0])  # type: ignore[index]
    assert d["instrument_token"] == p[0]  # type: ignore[index]
    assert d["tradable"] is ((p[0] & 0xFF) != KiteSegment.INDICES)  # type: ignore[index]
    assert d["last_price"] == p[1] / div  # type: ignore[index]
    if isinstance(p, LtpPacket):
        assert d["mode"] == "ltp" and len(d) == 4
    elif isinstance(p, (IndexQuotePacket, IndexFullPacket)):
        assert d["mode"] == ("quote" if isinstance(p, IndexQuotePacket) else "full")
        assert d["ohlc"] == {"high": p.high / div, "low": p.low / div, "open": p.open / div, "close": p.close / div}
        if isinstance(p, IndexFullPacket):
            assert _sdk_epoch(d["exchange_timestamp"]) == p.exchange_timestamp
    else:
        assert isinstance(p, (QuotePacket, FullPacket))
        assert d["mode"] == ("quote" if isinstance(p, QuotePacket) else "full")
        assert (d["last_traded_quantity"], d["average_traded_price"], d["volume_traded"]) == (
            p.last_quantity, p.average_price / div, p.volume
        )
        assert (d["total_buy_quantity"], d["total_sell_quantity"]) == (p.buy_quantity, p.sell_quantity)
        assert d["ohlc"] == {"open": p.open / div, "high": p.high / div, "low": p.low / div, "close": p.close / div}
        if isinstance(p, FullPacket):
            assert _sdk_epoch(d["last_trade_time"]) == p.last_trade_time
            assert _sdk_epoch(d["exchange_timestamp"]) == p.exchange_timestamp
            assert (d["oi"], d["oi_day_high"], d["oi_day_low"]) == (p.oi, p.oi_day_high, p.oi_day_low)
            bids, asks = depth_entries(p.depth)
            for side, entries in (("buy", bids), ("sell", asks)):
                assert d["depth"][side] == [
                    {"quantity": e.quantity, "price": e.price / div, "orders": e.orders} for e in entries
                ]


def test_sdk_decodes_the_mock_packets_like_we_do() -> None:
    """The SDK and our decoder agree on Zerodha's own mock packets (and the LTP mock's values)."""
    full, _ = _mock("full")
    quote, _ = _mock("quote")
    ltp = json.loads((DATA / "ticker_ltp.json").read_text())
    ltp_packet = LtpPacket(ltp["instrument_token"], round(ltp["last_price"] * 100))
    frame = encode_bodies([full, quote, encode_packet(ltp_packet)])
    ours = decode_frame(frame)
    sdk = _sdk_parse(frame)
    assert len(sdk) == len(ours) == 3
    for p, d in zip(ours, sdk, strict=True):
        _assert_sdk_agrees(p, d)
    assert sdk[2]["last_price"] == ltp["last_price"]


_u32 = st.integers(0, 2**32 - 1)
# Tokens across segments, so every divisor (paise, CDS, BCD, NCO) and the index flag are exercised.
_tokens = st.builds(lambda exch, seg: exch * 256 + seg, st.integers(1, 2**24 - 1), st.sampled_from([1, 2, 3, 4, 5, 6, 7, 9, 12]))
# Times the SDK's datetime.fromtimestamp accepts everywhere (it turns 0 into 1970, fine too).
_times = st.integers(86_400, 2**31 - 1)
_ltp = st.builds(LtpPacket, _tokens, _u32)
_index_quote = st.builds(IndexQuotePacket, _tokens, _u32, _u32, _u32, _u32, _u32, _u32)
_index_full = st.builds(IndexFullPacket, _tokens, _u32, _u32, _u32, _u32, _u32, _u32, _times)
_quote = st.builds(QuotePacket, _tokens, *[_u32] * 10)
_depth = st.tuples(*[st.tuples(_u32, _u32, st.integers(0, 2**16 - 1))] * 10).map(lambda es: tuple(v for e in es for v in e))
_full = st.builds(FullPacket, _tokens, *[_u32] * 10, _times, _u32, _u32, _u32, _times, _depth)
_unknown = st.binary(min_size=0, max_size=60).filter(lambda b: len(b) not in (8, 28, 32, 44)).map(
    lambda b: UnknownPacket(int.from_bytes(b[:4], "big") if len(b) >= 4 else 0, b)
)
_packets = st.lists(st.one_of(_ltp, _index_quote, _index_full, _quote, _full), max_size=12)


@settings(max_examples=150, deadline=None)
@given(_packets)
def test_sdk_decodes_our_encoder_to_the_same_values(packets: list) -> None:
    """Any frame our encoder builds, the official SDK parses to the same values as our decoder."""
    frame = encode_frame(packets)
    ours = decode_frame(frame)
    sdk = _sdk_parse(frame)
    assert len(sdk) == len(ours) == len(packets)
    for p, d in zip(ours, sdk, strict=True):
        _assert_sdk_agrees(p, d)


# --------------------------------------------------------------------------- round trips and faults


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_ltp, _index_quote, _index_full, _quote, _full, _unknown), max_size=20))
def test_decode_is_the_exact_inverse_of_encode(packets: list) -> None:
    """decode(encode(packets)) == packets, and encode(decode(frame)) == frame."""
    frame = encode_frame(packets)
    assert decode_frame(frame) == packets
    assert encode_frame(decode_frame(frame)) == frame


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_our_error(frame: bytes) -> None:
    """Whatever arrives, the lenient decoder returns packets and DecodeErrors and never raises."""
    packets, errors = decode_frame_lenient(frame)
    assert len(errors) <= 1 and all(isinstance(e, DecodeError) for e in errors)
    if not errors and len(frame) > 1:
        assert encode_frame(packets) == frame  # a frame we accept is one we can write back


def test_length_past_the_frame_end_is_a_typed_error_keeping_earlier_packets() -> None:
    """A packet that declares more bytes than remain stops the frame with a DecodeError."""
    good = encode_packet(LtpPacket(256265, 2_412_345))
    frame = bytearray(encode_bodies([good, good]))
    frame[2 + 2 + 8 : 2 + 2 + 8 + 2] = (9).to_bytes(2, "big")  # the second packet claims 9 of its 8 bytes
    packets, errors = decode_frame_lenient(bytes(frame))
    assert packets == [LtpPacket(256265, 2_412_345)]
    assert len(errors) == 1 and "declares 9 bytes" in str(errors[0])
    with pytest.raises(DecodeError):
        decode_frame(bytes(frame))


def test_unknown_lengths_are_skipped_and_the_rest_decoded() -> None:
    """A packet of a length Kite never sends is an UnknownPacket; the packets after it still decode."""
    frame = encode_bodies([b"\x00\x00\x01\x09" + b"\x07" * 8, encode_packet(LtpPacket(256265, 100))])
    packets = decode_frame(frame)
    assert packets == [UnknownPacket(265, b"\x00\x00\x01\x09" + b"\x07" * 8), LtpPacket(256265, 100)]


def test_heartbeat_empty_truncated_and_trailing_frames() -> None:
    """A 1-byte frame is a heartbeat (no packets, no error); other short or long frames are errors."""
    assert is_heartbeat(b"\x00") and decode_frame(b"\x00") == []
    assert decode_frame(b"\x00\x00") == []  # zero packets
    for frame, text in ((b"", "empty"), (b"\x00\x02\x00\x08" + bytes(8), "after 1 of 2"),
                        (encode_frame([LtpPacket(1, 2)]) + b"\x01", "1 bytes after")):  # fmt: skip
        packets, errors = decode_frame_lenient(frame)
        assert len(errors) == 1 and text in str(errors[0]), frame


def test_segment_aware_price_divisors() -> None:
    """Paise by default, 10^7 for CDS, 10^4 for BCD (and NCO as the SDK does); indices are IDX_I keys."""
    assert [price_divisor(exch * 256 + seg) for exch, seg in ((1, 2), (1, 3), (1, 6), (1, 9), (1, 12))] == [
        100, 10_000_000, 10_000, 100, 10_000,
    ]
    assert instrument_key(256265) == (int(Segment.IDX_I), 256265)  # NIFTY 50
    norm = Normalizer({(int(Segment.NSE_CURRENCY), 3 * 256 + 3): 0.0025})
    out: list = []
    norm([LtpPacket(3 * 256 + 3, 832_525_000)], 0.0, out)  # 83.2525 rupees per dollar
    assert out == [TradeTick((int(Segment.NSE_CURRENCY), 771), 83.2525, None, 0.0)]


def test_index_packets_normalise_with_their_own_ohlc_order() -> None:
    """Index packets carry high, low, open, close in that order; their absent fields stay null."""
    key = instrument_key(256265)
    norm = Normalizer({key: 0.05})
    out: list = []
    norm([IndexFullPacket(256265, 2_500_005, 2_510_000, 2_490_000, 2_495_000, 2_480_000, 0, 1_795_000_000)], 9.0, out)
    tick, prev = out
    assert tick == QuoteTick(key, 25000.05, None, 1_795_000_000, None, None, None, None, 24950.0, 24800.0, 25100.0, 24900.0, 9.0)
    assert prev == PrevCloseTick(key, 24800.0, None, 9.0)
    norm([LtpPacket(999 * 256 + 2, 5)], 9.0, out)
    assert norm.unknown_instrument_packets == 1


# --------------------------------------------------------------------------- text frames and requests


def test_text_frames_parse_and_encode() -> None:
    """order / error / message frames are typed; anything that is not such an object is a DecodeError."""
    for kind, data in (("order", {"order_id": "1", "status": "COMPLETE"}), ("error", "too many instruments"),
                       ("message", "maintenance at 18:00")):  # fmt: skip
        msg = TextMessage(kind, data)
        assert parse_text(encode_text(msg)) == msg
    for bad in ("not json", "[1, 2]", '{"data": 1}'):
        with pytest.raises(DecodeError):
            parse_text(bad)


def test_subscribe_unsubscribe_and_mode_messages() -> None:
    """The exact JSON Kite documents; the server-side parser reads it back."""
    assert subscribe_messages(Mode.FULL, [408065, 884737]) == [
        '{"a":"subscribe","v":[408065,884737]}', '{"a":"mode","v":["full",[408065,884737]]}',
    ]
    assert unsubscribe_messages([408065]) == ['{"a":"unsubscribe","v":[408065]}']
    assert mode_messages(Mode.LTP, [1]) == ['{"a":"mode","v":["ltp",[1]]}']
    assert parse_request(subscribe_messages(Mode.QUOTE, [5])[1]) == KiteRequest("mode", (5,), Mode.QUOTE)
    assert parse_request('{"a": "unsubscribe", "v": [7]}') == KiteRequest("unsubscribe", (7,))
    assert len(subscribe_messages(Mode.FULL, range(1, 2501))) == 6  # chunks of 1000: subscribe + mode each
    for bad in ('{"a": "subscribe", "v": ["1"]}', '{"a": "mode", "v": ["deep", [1]]}', '{"a": "x"}', "nope"):
        with pytest.raises(SubscriptionError):
            parse_request(bad)


def test_connection_budget_is_three_by_three_thousand() -> None:
    """9000 instruments fit in 3 connections; one more fails with the numbers."""
    assert [len(c) for c in shard(list(range(1, 9001)))] == [3000, 3000, 3000]
    with pytest.raises(SubscriptionError, match="9001 subscriptions need 4 connections; Kite allows 3 x 3000 = 9000"):
        check_budget(9001)
