"""Kite Connect v3 ticker packets: the wire layout, declared once (kite-protocol.md §3-4).

A binary market-data frame is a container, every integer big-endian and unsigned::

    offset 0      uint16  number of packets N
    offset 2      uint16  length L1 of packet 1
    offset 4      L1 bytes, packet 1
    offset 4+L1   uint16  length L2 of packet 2 ... N times

There is no type byte: the packet's length is its type.

    length  packet         layout (byte offset: field)
    8       LTP            0 token · 4 last price
    28      index quote    0 token · 4 last price · 8 high · 12 low · 16 open · 20 close · 24 change
    32      index full     index quote · 28 exchange timestamp
    44      quote          0 token · 4 last price · 8 last qty · 12 average price · 16 volume ·
                           20 total buy qty · 24 total sell qty · 28 open · 32 high · 36 low · 40 close
    184     full           quote · 44 last trade time · 48 OI · 52 OI day high · 56 OI day low ·
                           60 exchange timestamp · 64 five bids · 124 five asks, each entry
                           u32 quantity · u32 price · u16 orders · 2 bytes padding

Packets are ``NamedTuple``s holding exactly the wire's integers: prices stay in the segment's
integer unit (paise for NSE/NFO/BSE/BFO/INDICES), converted by ``price_divisor`` only when
normalised, so ``decode(encode(p)) == p`` holds bit for bit. Note the index packets' order
(high, low, open, close) differs from the tradable ones' (open, high, low, close). Times are
plain UNIX epoch seconds (unlike Dhan's IST-anchored ones). A 1-byte binary frame is a heartbeat.
"""

from __future__ import annotations

import struct
from enum import IntEnum, StrEnum
from typing import Any, NamedTuple, TypeAlias

from feeds.model import InstrumentKey, Segment

COUNT = struct.Struct(">H")  # the packet count, and each packet's length
LTP = struct.Struct(">II")
INDEX_QUOTE = struct.Struct(">7I")
INDEX_FULL = struct.Struct(">8I")
QUOTE = struct.Struct(">11I")
DEPTH_ENTRY = "IIH2x"
DEPTH_ENTRIES = 10  # five bids, then five asks
DEPTH_FIELDS = 3  # quantity, price, orders
FULL = struct.Struct(">16I" + DEPTH_ENTRY * DEPTH_ENTRIES)
HEARTBEAT = b"\x00"  # any 1-byte binary frame; its value carries nothing

assert (LTP.size, INDEX_QUOTE.size, INDEX_FULL.size, QUOTE.size, FULL.size) == (8, 28, 32, 44, 184)


class KiteSegment(IntEnum):
    """``instrument_token & 0xFF`` (the SDK's ``EXCHANGE_MAP``)."""

    NSE = 1
    NFO = 2
    CDS = 3
    BSE = 4
    BFO = 5
    BCD = 6
    MCX = 7
    MCXSX = 8
    INDICES = 9
    NCO = 12  # in the Python SDK's map, not in Kite's documentation


# Prices are integers in 1/divisor rupees: paise everywhere but currency (and NCO, per the SDK).
PRICE_DIVISORS: dict[int, int] = {KiteSegment.CDS: 10_000_000, KiteSegment.BCD: 10_000, KiteSegment.NCO: 10_000}
DEFAULT_DIVISOR = 100

# The broker-neutral segment an instrument is keyed by in the cache (feeds.model.Segment).
MODEL_SEGMENT: dict[int, Segment] = {
    KiteSegment.NSE: Segment.NSE_EQ,
    KiteSegment.NFO: Segment.NSE_FNO,
    KiteSegment.CDS: Segment.NSE_CURRENCY,
    KiteSegment.BSE: Segment.BSE_EQ,
    KiteSegment.BFO: Segment.BSE_FNO,
    KiteSegment.BCD: Segment.BSE_CURRENCY,
    KiteSegment.MCX: Segment.MCX_COMM,
    KiteSegment.INDICES: Segment.IDX_I,
}


def segment_of(token: int) -> int:
    return token & 0xFF


def price_divisor(token: int) -> int:
    """What a price of ``token``'s segment is divided by to get rupees."""
    return PRICE_DIVISORS.get(token & 0xFF, DEFAULT_DIVISOR)


def instrument_key(token: int) -> InstrumentKey:
    """The cache's key of a Kite instrument: (its neutral segment, the instrument token).

    Tokens are unique across Kite, so the token alone is the id; the segment is derived from
    its low byte so that keys read the same way as Dhan's ((IDX_I, …) for an index).
    """
    segment = MODEL_SEGMENT.get(token & 0xFF)
    return (int(segment) if segment is not None else 100 + (token & 0xFF), token)


class Mode(StrEnum):
    LTP = "ltp"
    QUOTE = "quote"
    FULL = "full"


class LtpPacket(NamedTuple):
    token: int
    last_price: int


class IndexQuotePacket(NamedTuple):
    token: int
    last_price: int
    high: int
    low: int
    open: int
    close: int
    change: int  # read by neither SDK; its scale is unverified: kept raw


class IndexFullPacket(NamedTuple):
    token: int
    last_price: int
    high: int
    low: int
    open: int
    close: int
    change: int
    exchange_timestamp: int


class QuotePacket(NamedTuple):
    token: int
    last_price: int
    last_quantity: int
    average_price: int
    volume: int
    buy_quantity: int
    sell_quantity: int
    open: int
    high: int
    low: int
    close: int  # the previous session's close


class FullPacket(NamedTuple):
    token: int
    last_price: int
    last_quantity: int
    average_price: int
    volume: int
    buy_quantity: int
    sell_quantity: int
    open: int
    high: int
    low: int
    close: int
    last_trade_time: int
    oi: int
    oi_day_high: int
    oi_day_low: int
    exchange_timestamp: int
    # Flat (quantity, price, orders) × 10: bids best first, then asks best first.
    depth: tuple[int, ...]


class UnknownPacket(NamedTuple):
    """A packet of a length we do not know: counted and skipped."""

    token: int  # the first 4 bytes when there are that many, else 0
    body: bytes


Packet: TypeAlias = LtpPacket | IndexQuotePacket | IndexFullPacket | QuotePacket | FullPacket | UnknownPacket


class DepthEntry(NamedTuple):
    quantity: int
    price: int
    orders: int


def depth_entries(flat: tuple[int, ...]) -> tuple[tuple[DepthEntry, ...], tuple[DepthEntry, ...]]:
    """(bids, asks) of a Full packet's flat depth."""
    entries = tuple(DepthEntry(*flat[i : i + DEPTH_FIELDS]) for i in range(0, len(flat), DEPTH_FIELDS))
    return entries[:5], entries[5:]


class TextType(StrEnum):
    ORDER = "order"
    ERROR = "error"
    MESSAGE = "message"


class TextMessage(NamedTuple):
    """A server text frame: ``{"type": "order" | "error" | "message", "data": ...}``."""

    type: str  # one of TextType, or whatever else the server invents (kept, not rejected)
    data: Any
