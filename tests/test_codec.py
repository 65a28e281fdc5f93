"""Main-feed codec: golden captures, every packet layout, malformed input and round trips.

Expected bytes are packed here with explicit struct formats taken from the reference (§4), not
with the structs in ``feeds.dhan.packets``, so a wrong layout there cannot hide itself.
"""

from __future__ import annotations

import datetime as dt
import math
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from feeds.dhan.codec import decode_into, decode_message, decode_packet, encode
from feeds.dhan.packets import (
    IST_OFFSET_S,
    PACKET_SIZE,
    DisconnectPacket,
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
from feeds.errors import DecodeError

UTC = dt.timezone.utc
HYPOTHESIS = settings(max_examples=200, deadline=None)

# Reference §4.7: the first bytes and the last 8 bytes of a real 162-byte Full frame
# (DhanHQ-py #90, NIFTY 31-JUL-2025 24900 options).
CAPTURE_1_HEAD = bytes.fromhex("08 a2 00 02 f4 d9 00 00 cd 4c 18 43 4b 00")
CAPTURE_1_TAIL = bytes.fromhex("9a 19 18 43 cd cc 18 43")
CAPTURE_2_HEAD = bytes.fromhex("08 a2 00 02 f3 d9 00 00 cd cc bf 42 2c 01")

# LTT from the reference §8.1 support ticket: received at 09:49:57 IST on 2026-06-10.
LTT_RAW = 1_781_084_997
LTT_UTC = dt.datetime(2026, 6, 10, 4, 19, 57, tzinfo=UTC)


def f32(x: float) -> float:
    """``x`` rounded to the nearest float32, as the wire carries it."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def capture_1() -> bytes:
    # Only the head and tail were published: the middle (LTT … level-4 quantities) is zero
    # filler, so LTT decodes as raw 0 and every middle field as 0.
    return CAPTURE_1_HEAD + bytes(162 - len(CAPTURE_1_HEAD) - len(CAPTURE_1_TAIL)) + CAPTURE_1_TAIL


def capture_2() -> bytes:
    # Only the head was published; the rest is zero filler.
    return CAPTURE_2_HEAD + bytes(162 - len(CAPTURE_2_HEAD))


# Hand-packed depth: level i has bid qty 100+i, ask qty 200+i, 10+i / 20+i orders,
# bid 150.0 - 0.05i, ask 150.5 + 0.05i.
DEPTH_FMT = "IIHHff" * 5
DEPTH_VALUES = [v for i in range(5) for v in (100 + i, 200 + i, 10 + i, 20 + i, 150.0 - 0.05 * i, 150.5 + 0.05 * i)]

TICKER_BYTES = struct.pack("<BHBIfI", 2, 16, 1, 1333, 2885.5, LTT_RAW)
QUOTE_BYTES = struct.pack(
    "<BHBIfHIfIIIffff", 4, 50, 2, 55796, 152.25, 75, LTT_RAW, 150.5, 123456, 1000, 2000, 140.0, 138.5, 160.75, 130.25
)
OI_BYTES = struct.pack("<BHBII", 5, 12, 2, 55796, 4_200_000)
PREV_CLOSE_BYTES = struct.pack("<BHBIfI", 6, 16, 0, 13, 24850.5, 0)
MARKET_STATUS_BYTES = struct.pack("<BHBI", 7, 8, 0, 0)
FULL_BYTES = struct.pack(
    "<BHBIfHIfIIIIIIffff" + DEPTH_FMT,
    8, 162, 2, 55796, 152.25, 75, LTT_RAW, 150.5, 123456, 1000, 2000, 4_200_000, 4_500_000, 3_900_000,
    140.0, 138.5, 160.75, 130.25, *DEPTH_VALUES,
)  # fmt: skip
MARKET_DEPTH_BYTES = struct.pack("<BHBIf" + DEPTH_FMT, 3, 112, 1, 1333, 2885.5, *DEPTH_VALUES)
DISCONNECT_BYTES = struct.pack("<BHBIH", 50, 10, 0, 0, 805)

HAND_PACKED = {
    2: TICKER_BYTES,
    3: MARKET_DEPTH_BYTES,
    4: QUOTE_BYTES,
    5: OI_BYTES,
    6: PREV_CLOSE_BYTES,
    7: MARKET_STATUS_BYTES,
    8: FULL_BYTES,
    50: DISCONNECT_BYTES,
}


# --------------------------------------------------------------------------- golden captures


def test_capture_full_frame() -> None:
    """The real Full frame decodes to NSE_FNO 55796, LTP 152.30, LTQ 75, level-4 152.10/152.80."""
    frame = capture_1()
    packet, end = decode_packet(frame)
    assert end == 162
    assert isinstance(packet, FullPacket)
    assert packet.segment == 2
    assert packet.security_id == 55796
    assert packet.ltp == 152.3000030517578
    assert packet.ltq == 75
    assert packet.ltt == -IST_OFFSET_S  # zero filler: raw LTT 0
    level4 = packet.levels()[4]
    assert level4.bid_price == f32(152.10)
    assert level4.ask_price == f32(152.80)
    assert round(level4.bid_price, 2) == 152.10 and round(level4.ask_price, 2) == 152.80
    assert encode(packet) == frame


def test_capture_second_frame() -> None:
    """The second captured frame: id 55795, LTP 95.90, LTQ 300."""
    packet, _ = decode_packet(capture_2())
    assert isinstance(packet, FullPacket)
    assert packet.security_id == 55795
    assert packet.ltp == f32(95.9)
    assert packet.ltq == 300
    assert encode(packet) == capture_2()


def test_capture_frames_stacked() -> None:
    """Both captured frames in one message decode in order."""
    packets, errors = decode_message(capture_1() + capture_2())
    assert errors == []
    assert [p.security_id for p in packets] == [55796, 55795]


def test_header_length_is_little_endian_total() -> None:
    """Header bytes 1-2 are the whole packet length, little-endian: a2 00 = 162."""
    code, length, segment, sid = struct.unpack_from("<BHBI", capture_1())
    assert (code, length, segment, sid) == (8, 162, 2, 55796)
    assert PACKET_SIZE[8] == length
    # Read big-endian the same bytes would claim 41472 bytes: the codec must not accept that.
    wrong = capture_1()[:1] + (162).to_bytes(2, "big") + capture_1()[3:]
    packets, errors = decode_message(wrong)
    assert packets == [] and len(errors) == 1


# --------------------------------------------------------------------------- every packet type


def test_packet_sizes() -> None:
    """Known codes and their exact sizes (reference §4.2)."""
    assert PACKET_SIZE == {2: 16, 3: 112, 4: 50, 5: 12, 6: 16, 7: 8, 8: 162, 50: 10}
    for code, data in HAND_PACKED.items():
        assert len(data) == PACKET_SIZE[code]


def test_ticker() -> None:
    """Ticker: LTP and LTT, LTT converted from IST wall-clock to a true UTC epoch."""
    packet, end = decode_packet(TICKER_BYTES)
    assert packet == TickerPacket(1, 1333, 2885.5, LTT_RAW - 19_800)
    assert end == 16
    assert dt.datetime.fromtimestamp(packet.ltt, UTC) == LTT_UTC
    # Read naively as UTC the raw value shows the IST wall clock, 09:49:57.
    assert dt.datetime.fromtimestamp(LTT_RAW, UTC).time() == dt.time(9, 49, 57)


def test_quote_field_order() -> None:
    """Quote: total sell before total buy, and open, close, high, low in that order."""
    packet, _ = decode_packet(QUOTE_BYTES)
    assert isinstance(packet, QuotePacket)
    assert (packet.segment, packet.security_id) == (2, 55796)
    assert (packet.ltp, packet.ltq, packet.atp, packet.volume) == (152.25, 75, 150.5, 123456)
    assert dt.datetime.fromtimestamp(packet.ltt, UTC) == LTT_UTC
    assert packet.total_sell_qty == 1000
    assert packet.total_buy_qty == 2000
    assert (packet.open, packet.close, packet.high, packet.low) == (140.0, 138.5, 160.75, 130.25)


def test_full_fields_and_depth() -> None:
    """Full: OI trio, open-close-high-low, and five depth levels best first."""
    packet, _ = decode_packet(FULL_BYTES)
    assert isinstance(packet, FullPacket)
    assert (packet.ltp, packet.ltq, packet.atp, packet.volume) == (152.25, 75, 150.5, 123456)
    assert dt.datetime.fromtimestamp(packet.ltt, UTC) == LTT_UTC
    assert (packet.total_sell_qty, packet.total_buy_qty) == (1000, 2000)
    assert (packet.oi, packet.oi_day_high, packet.oi_day_low) == (4_200_000, 4_500_000, 3_900_000)
    assert (packet.open, packet.close, packet.high, packet.low) == (140.0, 138.5, 160.75, 130.25)
    levels = packet.levels()
    assert len(levels) == 5
    for i, level in enumerate(levels):
        assert (level.bid_qty, level.ask_qty, level.bid_orders, level.ask_orders) == (100 + i, 200 + i, 10 + i, 20 + i)
        assert level.bid_price == f32(150.0 - 0.05 * i)
        assert level.ask_price == f32(150.5 + 0.05 * i)


def test_market_depth_legacy() -> None:
    """Code 3 (v1): LTP then five levels at offset 12."""
    packet, _ = decode_packet(MARKET_DEPTH_BYTES)
    assert isinstance(packet, MarketDepthPacket)
    assert (packet.segment, packet.security_id, packet.ltp) == (1, 1333, 2885.5)
    assert packet.levels()[0].bid_qty == 100
    assert packet.levels()[4].ask_price == f32(150.7)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (OI_BYTES, OIPacket(2, 55796, 4_200_000)),
        (PREV_CLOSE_BYTES, PrevClosePacket(0, 13, 24850.5, 0)),
        (MARKET_STATUS_BYTES, MarketStatusPacket(0, 0)),
        (DISCONNECT_BYTES, DisconnectPacket(0, 0, 805)),
    ],
)
def test_small_packets(data: bytes, expected: Packet) -> None:
    """OI, prev close, market status and disconnect decode field by field."""
    assert decode_packet(data) == (expected, len(data))


@pytest.mark.parametrize("code", sorted(HAND_PACKED))
def test_fast_and_slow_paths_agree(code: int) -> None:
    """decode_message (fast path) and decode_packet give the same packet, and encode inverts both."""
    data = HAND_PACKED[code]
    packet, _ = decode_packet(data)
    assert decode_message(data) == ([packet], [])
    assert encode(packet) == data


def test_decode_packet_at_offset() -> None:
    """decode_packet reads at an offset and returns the offset after the packet."""
    data = OI_BYTES + TICKER_BYTES
    packet, end = decode_packet(data, len(OI_BYTES))
    assert isinstance(packet, TickerPacket)
    assert end == len(data)


# --------------------------------------------------------------------------- unknown and malformed


@pytest.mark.parametrize("code", [0, 1, 99, 41])
def test_unknown_codes(code: int) -> None:
    """Unknown response codes decode whole as UnknownPacket and encode back to the same bytes."""
    payload = bytes(range(1, 13))
    data = struct.pack("<BHBI", code, 8 + len(payload), 2, 4242) + payload
    packet, end = decode_packet(data)
    assert packet == UnknownPacket(code, 2, 4242, payload)
    assert end == len(data)
    assert encode(packet) == data
    assert decode_message(OI_BYTES + data + TICKER_BYTES).packets == [decode_packet(OI_BYTES)[0], packet,
                                                                       decode_packet(TICKER_BYTES)[0]]


def test_unknown_packet_cannot_carry_known_code() -> None:
    """encode refuses an UnknownPacket with a known code: it would not decode back to itself."""
    with pytest.raises(ValueError):
        encode(UnknownPacket(2, 0, 0, b""))


def test_stacked_mixed_types_in_order() -> None:
    """Several packet types in one message all decode, in order, appended to the caller's lists."""
    unknown = struct.pack("<BHBI", 99, 10, 0, 1) + b"\x01\x02"
    order = [TICKER_BYTES, QUOTE_BYTES, OI_BYTES, unknown, FULL_BYTES, PREV_CLOSE_BYTES, DISCONNECT_BYTES]
    out: list[Packet] = [MarketStatusPacket(0, 0)]
    errors: list[DecodeError] = []
    decode_into(b"".join(order), out, errors)
    assert errors == []
    assert out[1:] == [decode_packet(p)[0] for p in order]
    assert [type(p) for p in out[1:]] == [
        TickerPacket, QuotePacket, OIPacket, UnknownPacket, FullPacket, PrevClosePacket, DisconnectPacket,
    ]  # fmt: skip


@pytest.mark.parametrize("tail_len", [3, 8, 100])
def test_truncated_tail(tail_len: int) -> None:
    """A truncated last packet keeps the packets before it and yields one DecodeError."""
    data = TICKER_BYTES + QUOTE_BYTES + FULL_BYTES[:tail_len]
    packets, errors = decode_message(data)
    assert [type(p) for p in packets] == [TickerPacket, QuotePacket]
    assert len(errors) == 1
    assert isinstance(errors[0], DecodeError)
    assert errors[0].offset == len(TICKER_BYTES) + len(QUOTE_BYTES)
    assert "truncated" in str(errors[0])


def test_wrong_length_for_known_code_is_skipped() -> None:
    """A known code declaring a wrong (but present) length is skipped; decoding continues."""
    bad = struct.pack("<BHBIfI", 2, 20, 1, 1333, 1.0, 0) + b"\x00" * 4  # a ticker claiming 20 bytes
    with pytest.raises(DecodeError, match="expected 16") as info:
        decode_packet(bad)
    assert info.value.code == 2
    packets, errors = decode_message(OI_BYTES + bad + TICKER_BYTES)
    assert [type(p) for p in packets] == [OIPacket, TickerPacket]
    assert len(errors) == 1 and errors[0].code == 2 and errors[0].offset == len(OI_BYTES)


@pytest.mark.parametrize("length", [0, 4, 7])
def test_length_shorter_than_header_stops(length: int) -> None:
    """A declared length under 8 cannot be skipped over: one error and the message ends."""
    bad = struct.pack("<BHBI", 2, length, 1, 1333)
    with pytest.raises(DecodeError, match="shorter than the header"):
        decode_packet(bad)
    packets, errors = decode_message(TICKER_BYTES + bad + TICKER_BYTES)
    assert len(packets) == 1 and len(errors) == 1


def test_length_beyond_message_stops() -> None:
    """A declared length beyond the message's end: one error and the message ends."""
    bad = struct.pack("<BHBI", 99, 500, 1, 1333) + bytes(20)
    with pytest.raises(DecodeError, match="truncated packet"):
        decode_packet(bad)
    packets, errors = decode_message(TICKER_BYTES + bad)
    assert len(packets) == 1 and len(errors) == 1


def test_empty_message() -> None:
    """An empty message holds nothing and no error."""
    assert decode_message(b"") == ([], [])


# --------------------------------------------------------------------------- round trips

u8 = st.integers(0, 2**8 - 1)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
price = st.floats(width=32, allow_nan=False)  # float32-representable, infinities included
ltt = st.integers(-IST_OFFSET_S, 2**32 - 1 - IST_OFFSET_S)
depth = st.tuples(*[s for _ in range(5) for s in (u32, u32, u16, u16, price, price)])
unknown_code = u8.filter(lambda c: c not in PACKET_SIZE)

packets = st.one_of(
    st.builds(TickerPacket, u8, u32, price, ltt),
    st.builds(QuotePacket, u8, u32, price, u16, ltt, price, u32, u32, u32, price, price, price, price),
    st.builds(OIPacket, u8, u32, u32),
    st.builds(PrevClosePacket, u8, u32, price, u32),
    st.builds(
        FullPacket, u8, u32, price, u16, ltt, price, u32, u32, u32, u32, u32, u32, price, price, price, price, depth
    ),
    st.builds(MarketDepthPacket, u8, u32, price, depth),
    st.builds(MarketStatusPacket, u8, u32),
    st.builds(DisconnectPacket, u8, u32, u16),
    st.builds(UnknownPacket, unknown_code, u8, u32, st.binary(max_size=300)),
)


@HYPOTHESIS
@given(packets)
def test_decode_inverts_encode(packet: Packet) -> None:
    """decode_packet(encode(p)) == p for every packet type."""
    data = encode(packet)
    assert decode_packet(data) == (packet, len(data))


def _has_nan(packet: Packet) -> bool:
    values = [v for v in packet if not isinstance(v, (tuple, bytes))]
    values += [v for v in getattr(packet, "depth", ())]
    return any(isinstance(v, float) and math.isnan(v) for v in values)


@HYPOTHESIS
@given(st.sampled_from(sorted(PACKET_SIZE)), u8, u32, st.data())
def test_encode_inverts_decode(code: int, segment: int, sid: int, data: st.DataObject) -> None:
    """encode(decode(b)) == b for random well-formed packets of every known size."""
    size = PACKET_SIZE[code]
    body = data.draw(st.binary(min_size=size - 8, max_size=size - 8))
    raw = struct.pack("<BHBI", code, size, segment, sid) + body
    packet, _ = decode_packet(raw)
    # A signalling NaN float32 comes back quieted from float32→float64→float32, so NaN bit
    # patterns cannot round-trip byte for byte; Dhan never sends NaN prices.
    assume(not _has_nan(packet))
    assert encode(packet) == raw


@HYPOTHESIS
@given(st.lists(packets, max_size=8))
def test_stacked_round_trip(items: list[Packet]) -> None:
    """Any sequence of packets concatenated into one message decodes back to the same sequence."""
    assert decode_message(b"".join(encode(p) for p in items)) == (items, [])


@HYPOTHESIS
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    """Arbitrary bytes yield packets and DecodeErrors, never another exception."""
    packets, errors = decode_message(data)
    assert all(isinstance(e, DecodeError) for e in errors)
    assert sum(len(encode(p)) for p in packets) <= len(data)
