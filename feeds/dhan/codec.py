"""Decode and encode Dhan v2 main-feed packets: bytes in, typed packets out, and back.

Sans-I/O: nothing here awaits, logs or touches a socket. ``encode`` is the exact inverse of
``decode``: ``decode_packet(encode(p)) == p`` for every packet, and ``encode(decode(b)) == b``
for every well-formed packet ``b`` (float32 prices widen to Python floats losslessly).

One WebSocket message may carry several packets back to back; they are split by the header
length (reference §4.10). A malformed packet raises ``DecodeError``; ``decode_into`` collects
those errors instead, skips the packet when its length is trustworthy and stops otherwise.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from feeds.errors import DecodeError
from feeds.dhan.packets import (
    DEPTH_FIELDS,
    DEPTH_LEVELS,
    DISCONNECT,
    FULL,
    HEADER,
    IST_OFFSET_S,
    MARKET_DEPTH,
    OI,
    PACKET_SIZE,
    PREV_CLOSE,
    QUOTE,
    TICKER,
    DisconnectPacket,
    FullPacket,
    MarketDepthPacket,
    MarketStatusPacket,
    OIPacket,
    Packet,
    PrevClosePacket,
    QuotePacket,
    ResponseCode,
    TickerPacket,
    UnknownPacket,
)

_HEADER_SIZE = HEADER.size
_MD_DEPTH_AT = 5
# Layouts that skip the code and length bytes ("3x"), so a parser's unpacked tuple is
# already the packet's fields: fewer Python-level copies per packet.
_OI_BODY = struct.Struct("<3xBII")
_PREV_CLOSE_BODY = struct.Struct("<3xBIfI")
# The whole Full packet in one unpack; its depth is the tail of the tuple, sliced off flat.
_FULL_ALL = struct.Struct("<3xBIfHIfIIIIIIffff" + "IIHHff" * DEPTH_LEVELS)


_DEPTH_LEN = DEPTH_LEVELS * DEPTH_FIELDS
# tuple.__new__ skips NamedTuple.__new__'s argument handling: the hot path builds one
# object per packet and nothing else.
_new = tuple.__new__


def _ticker(data: bytes, off: int) -> TickerPacket:
    _, _, seg, sid, ltp, ltt = TICKER.unpack_from(data, off)
    return _new(TickerPacket, (seg, sid, ltp, ltt - IST_OFFSET_S))


def _quote(data: bytes, off: int) -> QuotePacket:
    v = QUOTE.unpack_from(data, off)
    return _new(QuotePacket, (v[2], v[3], v[4], v[5], v[6] - IST_OFFSET_S, v[7], v[8], v[9], v[10], v[11], v[12], v[13], v[14]))


def _oi(data: bytes, off: int) -> OIPacket:
    return _new(OIPacket, _OI_BODY.unpack_from(data, off))


def _prev_close(data: bytes, off: int) -> PrevClosePacket:
    return _new(PrevClosePacket, _PREV_CLOSE_BODY.unpack_from(data, off))


def _full(data: bytes, off: int) -> FullPacket:
    v = _FULL_ALL.unpack_from(data, off)
    return _new(
        FullPacket,
        (v[0], v[1], v[2], v[3], v[4] - IST_OFFSET_S, v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13],
         v[14], v[15], v[16:]),
    )  # fmt: skip


def _market_depth(data: bytes, off: int) -> MarketDepthPacket:
    v = MARKET_DEPTH.unpack_from(data, off)
    return MarketDepthPacket(v[2], v[3], v[4], v[_MD_DEPTH_AT : _MD_DEPTH_AT + _DEPTH_LEN])


def _market_status(data: bytes, off: int) -> MarketStatusPacket:
    _, _, seg, sid = HEADER.unpack_from(data, off)
    return MarketStatusPacket(seg, sid)


def _disconnect(data: bytes, off: int) -> DisconnectPacket:
    _, _, seg, sid, reason = DISCONNECT.unpack_from(data, off)
    return DisconnectPacket(seg, sid, reason)


_PARSERS: dict[int, Callable[[bytes, int], Packet]] = {
    ResponseCode.TICKER: _ticker,
    ResponseCode.MARKET_DEPTH: _market_depth,
    ResponseCode.QUOTE: _quote,
    ResponseCode.OI: _oi,
    ResponseCode.PREV_CLOSE: _prev_close,
    ResponseCode.MARKET_STATUS: _market_status,
    ResponseCode.FULL: _full,
    ResponseCode.DISCONNECT: _disconnect,
}


# The decode loop's one lookup: plain-int code → (exact size, parser).
_FAST: dict[int, tuple[int, Callable[[bytes, int], Packet]]] = {
    int(code): (PACKET_SIZE[code], parser) for code, parser in _PARSERS.items()
}


_fast_get = _FAST.get


def _check(data: bytes, off: int) -> tuple[int, int]:
    """Validate the header at ``off``; return (code, length) or raise DecodeError."""
    remaining = len(data) - off
    if remaining < _HEADER_SIZE:
        raise DecodeError(f"truncated header: {remaining} bytes at offset {off}", offset=off)
    code, length, _, _ = HEADER.unpack_from(data, off)
    if length < _HEADER_SIZE:
        raise DecodeError(f"packet length {length} is shorter than the header (code {code})", code=code, offset=off)
    if length > remaining:
        raise DecodeError(
            f"truncated packet: code {code} declares {length} bytes, {remaining} remain", code=code, offset=off
        )
    return code, length


def decode_packet(data: bytes, offset: int = 0) -> tuple[Packet, int]:
    """Decode the packet at ``offset``; return it and the offset just past it."""
    code, length = _check(data, offset)
    parse = _PARSERS.get(code)
    if parse is None:
        _, _, seg, sid = HEADER.unpack_from(data, offset)
        return UnknownPacket(code, seg, sid, bytes(data[offset + _HEADER_SIZE : offset + length])), offset + length
    if length != PACKET_SIZE[code]:
        raise DecodeError(
            f"code {code} packet declares {length} bytes, expected {PACKET_SIZE[code]}", code=code, offset=offset
        )
    return parse(data, offset), offset + length


def decode_into(data: bytes, out: list[Packet], errors: list[DecodeError]) -> None:
    """Append every packet of one WebSocket message to ``out`` and every error to ``errors``.

    A packet whose declared length is within the message but wrong for its code is skipped
    and decoding goes on after it; a truncated tail or an impossible length ends the message.
    """
    end = len(data)
    # Dhan sends one packet per message: take that case before setting up the loop.
    fast = _fast_get(data[0]) if end >= _HEADER_SIZE else None
    if fast is not None and fast[0] == end and data[1] | (data[2] << 8) == end:
        out.append(fast[1](data, 0))
        return
    off = 0
    while off < end:
        # Fast path: a known code with its exact size (every packet Dhan sends).
        if end - off >= _HEADER_SIZE:
            fast = _fast_get(data[off])
            if fast is not None:
                size = fast[0]
                if end - off >= size and data[off + 1] | (data[off + 2] << 8) == size:
                    out.append(fast[1](data, off))
                    off += size
                    continue
        try:
            packet, off = decode_packet(data, off)
        except DecodeError as exc:
            errors.append(exc)
            code, length = _skippable(data, off)
            if length is None:
                return
            off += length
            continue
        out.append(packet)


def _skippable(data: bytes, off: int) -> tuple[int | None, int | None]:
    """The length to skip a bad packet by, or None when the header cannot be trusted."""
    if len(data) - off < _HEADER_SIZE:
        return None, None
    code, length, _, _ = HEADER.unpack_from(data, off)
    if length < _HEADER_SIZE or length > len(data) - off:
        return code, None
    return code, length


class DecodedMessage(NamedTuple):
    packets: list[Packet]
    errors: list[DecodeError]


def decode_message(data: bytes) -> DecodedMessage:
    """Every packet of one WebSocket message, and the errors met on the way."""
    packets: list[Packet] = []
    errors: list[DecodeError] = []
    decode_into(data, packets, errors)
    return DecodedMessage(packets, errors)


# --------------------------------------------------------------------------- encode


def _flat_depth(depth: tuple[float, ...]) -> tuple[float, ...]:
    if len(depth) != _DEPTH_LEN:
        raise ValueError(f"depth must hold {_DEPTH_LEN} values ({DEPTH_LEVELS} levels), got {len(depth)}")
    return depth


def encode(packet: Packet) -> bytes:
    """The exact wire bytes of ``packet`` (inverse of ``decode_packet``)."""
    match packet:
        case TickerPacket(seg, sid, ltp, ltt):
            return TICKER.pack(ResponseCode.TICKER, TICKER.size, seg, sid, ltp, ltt + IST_OFFSET_S)
        case QuotePacket():
            v = list(packet)
            v[4] += IST_OFFSET_S
            return QUOTE.pack(ResponseCode.QUOTE, QUOTE.size, *v)
        case OIPacket(seg, sid, oi):
            return OI.pack(ResponseCode.OI, OI.size, seg, sid, oi)
        case PrevClosePacket(seg, sid, close, oi):
            return PREV_CLOSE.pack(ResponseCode.PREV_CLOSE, PREV_CLOSE.size, seg, sid, close, oi)
        case FullPacket():
            v = list(packet[:-1])
            v[4] += IST_OFFSET_S
            return FULL.pack(ResponseCode.FULL, FULL.size, *v, *_flat_depth(packet.depth))
        case MarketDepthPacket(seg, sid, ltp, depth):
            return MARKET_DEPTH.pack(ResponseCode.MARKET_DEPTH, MARKET_DEPTH.size, seg, sid, ltp, *_flat_depth(depth))
        case MarketStatusPacket(seg, sid):
            return HEADER.pack(ResponseCode.MARKET_STATUS, HEADER.size, seg, sid)
        case DisconnectPacket(seg, sid, reason):
            return DISCONNECT.pack(ResponseCode.DISCONNECT, DISCONNECT.size, seg, sid, reason)
        case UnknownPacket(code, seg, sid, payload):
            if code in _PARSERS:
                raise ValueError(f"UnknownPacket cannot carry known response code {code}")
            return HEADER.pack(code, HEADER.size + len(payload), seg, sid) + payload
    raise TypeError(f"not a Dhan packet: {type(packet).__name__}")
