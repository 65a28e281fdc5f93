"""Dhan v2 main-feed packets: the wire layout, declared once (reference §4).

Every packet starts with the 8-byte header ``'<BHBI'``::

    offset 0  uint8   response code
    offset 1  uint16  packet length, header included
    offset 3  uint8   exchange segment (numeric, reference §3)
    offset 4  uint32  security id

Packets are ``NamedTuple``s holding exactly what the wire holds, with two conversions
that the encoder undoes exactly: ``ltt`` is a true UTC epoch second (the wire carries IST
wall-clock seconds, reference §8.1) and float32 prices are widened to Python floats.
The header's code and length are implied by the type and not stored.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple, TypeAlias

# The wire counts seconds since 1970-01-01 00:00 IST: 5h30m ahead of the Unix epoch.
IST_OFFSET_S = 19_800


class ResponseCode(IntEnum):
    INDEX = 1  # listed in the annexure, layout undocumented: decoded as UnknownPacket
    TICKER = 2
    MARKET_DEPTH = 3  # v1 only
    QUOTE = 4
    OI = 5
    PREV_CLOSE = 6
    MARKET_STATUS = 7
    FULL = 8
    DISCONNECT = 50


class RequestCode(IntEnum):
    DISCONNECT = 12
    SUBSCRIBE_TICKER = 15
    UNSUBSCRIBE_TICKER = 16
    SUBSCRIBE_QUOTE = 17
    UNSUBSCRIBE_QUOTE = 18
    SUBSCRIBE_FULL = 21
    UNSUBSCRIBE_FULL = 22


class FeedMode(IntEnum):
    """Subscription mode; the value is its subscribe request code (unsubscribe = value + 1)."""

    TICKER = 15
    QUOTE = 17
    FULL = 21

    @property
    def unsubscribe_code(self) -> int:
        return self.value + 1


class DisconnectReason(IntEnum):
    """Reason codes carried by a code-50 packet (reference §4.9)."""

    INTERNAL_SERVER_ERROR = 800
    INSTRUMENTS_OVER_LIMIT = 804
    TOO_MANY_CONNECTIONS = 805
    DATA_API_NOT_SUBSCRIBED = 806
    ACCESS_TOKEN_EXPIRED = 807
    AUTHENTICATION_FAILED = 808
    ACCESS_TOKEN_INVALID = 809
    CLIENT_ID_INVALID = 810


HEADER = struct.Struct("<BHBI")
TICKER = struct.Struct("<BHBIfI")  # 16 bytes
QUOTE = struct.Struct("<BHBIfHIfIIIffff")  # 50 bytes
OI = struct.Struct("<BHBII")  # 12 bytes
PREV_CLOSE = struct.Struct("<BHBIfI")  # 16 bytes
FULL = struct.Struct("<BHBIfHIfIIIIIIffff" + "IIHHff" * 5)  # 162 bytes, depth flattened
FULL_TOP = struct.Struct("<BHBIfHIfIIIIIIffff")  # the 62 bytes before the depth
DEPTH_LEVEL = struct.Struct("<IIHHff")  # 20 bytes
MARKET_DEPTH = struct.Struct("<BHBIf" + "IIHHff" * 5)  # 112 bytes (v1 legacy)
DISCONNECT = struct.Struct("<BHBIH")  # 10 bytes
DEPTH_LEVELS = 5


class DepthLevel(NamedTuple):
    bid_qty: int
    ask_qty: int
    bid_orders: int
    ask_orders: int
    bid_price: float
    ask_price: float


DEPTH_FIELDS = len(DepthLevel._fields)


def depth_levels(flat: tuple[float, ...]) -> tuple[DepthLevel, ...]:
    """Five typed levels from the flat depth tuple of a Full or legacy depth packet."""
    return tuple(DepthLevel._make(flat[i : i + DEPTH_FIELDS]) for i in range(0, len(flat), DEPTH_FIELDS))


class TickerPacket(NamedTuple):
    segment: int
    security_id: int
    ltp: float
    ltt: int


class QuotePacket(NamedTuple):
    segment: int
    security_id: int
    ltp: float
    ltq: int
    ltt: int
    atp: float
    volume: int
    total_sell_qty: int
    total_buy_qty: int
    open: float
    close: float
    high: float
    low: float


class OIPacket(NamedTuple):
    segment: int
    security_id: int
    oi: int


class PrevClosePacket(NamedTuple):
    segment: int
    security_id: int
    prev_close: float
    prev_oi: int


class FullPacket(NamedTuple):
    segment: int
    security_id: int
    ltp: float
    ltq: int
    ltt: int
    atp: float
    volume: int
    total_sell_qty: int
    total_buy_qty: int
    oi: int
    oi_day_high: int
    oi_day_low: int
    open: float
    close: float
    high: float
    low: float
    # 5 levels x (bid_qty, ask_qty, bid_orders, ask_orders, bid_price, ask_price), best first,
    # kept flat as on the wire: building five objects per packet would halve decode speed.
    depth: tuple[float, ...]

    def levels(self) -> tuple[DepthLevel, ...]:
        return depth_levels(self.depth)


class MarketDepthPacket(NamedTuple):
    """v1 legacy code 3; not expected on v2 but decoded like the SDK does."""

    segment: int
    security_id: int
    ltp: float
    depth: tuple[float, ...]  # flat, as in FullPacket

    def levels(self) -> tuple[DepthLevel, ...]:
        return depth_levels(self.depth)


class MarketStatusPacket(NamedTuple):
    """Code 7: header only; its meaning is undocumented (reference §8.8)."""

    segment: int
    security_id: int


class DisconnectPacket(NamedTuple):
    segment: int
    security_id: int
    reason: int


class UnknownPacket(NamedTuple):
    """Any response code we do not know: kept whole so nothing is lost."""

    code: int
    segment: int
    security_id: int
    payload: bytes  # the bytes after the 8-byte header


Packet: TypeAlias = (
    TickerPacket
    | QuotePacket
    | OIPacket
    | PrevClosePacket
    | FullPacket
    | MarketDepthPacket
    | MarketStatusPacket
    | DisconnectPacket
    | UnknownPacket
)

# Total packet size per known response code.
PACKET_SIZE: dict[int, int] = {
    ResponseCode.TICKER: TICKER.size,
    ResponseCode.MARKET_DEPTH: MARKET_DEPTH.size,
    ResponseCode.QUOTE: QUOTE.size,
    ResponseCode.OI: OI.size,
    ResponseCode.PREV_CLOSE: PREV_CLOSE.size,
    ResponseCode.MARKET_STATUS: HEADER.size,
    ResponseCode.FULL: FULL.size,
    ResponseCode.DISCONNECT: DISCONNECT.size,
}
