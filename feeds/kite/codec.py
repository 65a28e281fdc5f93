"""Decode and encode Kite ticker frames: bytes in, typed packets out, and back.

Sans-I/O: nothing here awaits, logs or touches a socket. The encoder is the exact inverse of
the decoder: ``decode_frame(encode_frame(ps)) == ps`` for every list of packets, and
``encode_frame(decode_frame(b)) == b`` for every well-formed frame whose depth padding is
zero (the 2 padding bytes of a depth entry carry nothing and are written as zeros).

Malformed input raises ``DecodeError`` from ``decode_frame``; ``decode_into`` collects the
error instead and keeps every packet before it. A packet whose declared length runs past the
end of the frame makes the rest of the frame unreadable (the next length would be read from
inside a packet), so decoding stops there. A packet of an unknown length is not an error: it
becomes an ``UnknownPacket`` for the caller to count and skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import orjson

from feeds.errors import DecodeError
from feeds.kite.packets import (
    COUNT,
    FULL,
    HEARTBEAT,
    INDEX_FULL,
    INDEX_QUOTE,
    LTP,
    QUOTE,
    FullPacket,
    IndexFullPacket,
    IndexQuotePacket,
    LtpPacket,
    Packet,
    QuotePacket,
    TextMessage,
    UnknownPacket,
)

_new = tuple.__new__  # skips NamedTuple.__new__'s argument handling: one object per packet
_u16 = COUNT.unpack_from
_ltp = LTP.unpack_from
_index_quote = INDEX_QUOTE.unpack_from
_index_full = INDEX_FULL.unpack_from
_quote = QUOTE.unpack_from
_full = FULL.unpack_from


def _parse_full(data: bytes, off: int) -> FullPacket:
    v = _full(data, off)
    return _new(FullPacket, (*v[:16], v[16:]))


_PARSERS: dict[int, Callable[[bytes, int], Packet]] = {
    LTP.size: lambda data, off: _new(LtpPacket, _ltp(data, off)),
    INDEX_QUOTE.size: lambda data, off: _new(IndexQuotePacket, _index_quote(data, off)),
    INDEX_FULL.size: lambda data, off: _new(IndexFullPacket, _index_full(data, off)),
    QUOTE.size: lambda data, off: _new(QuotePacket, _quote(data, off)),
    FULL.size: _parse_full,
}


def is_heartbeat(frame: bytes) -> bool:
    """A 1-byte binary frame: proof of life, not data."""
    return len(frame) == 1


def decode_packet(body: bytes) -> Packet:
    """One packet body (no length prefix), dispatched on its length."""
    parser = _PARSERS.get(len(body))
    if parser is None:
        return UnknownPacket(int.from_bytes(body[:4], "big") if len(body) >= 4 else 0, bytes(body))
    return parser(body, 0)


def decode_into(frame: bytes, out: list[Packet], errors: list[DecodeError]) -> None:
    """Append the frame's packets to ``out``; a malformed frame appends a ``DecodeError`` to
    ``errors`` and keeps the packets read before the fault. A heartbeat appends nothing."""
    end = len(frame)
    if end < 2:
        if end == 0:
            errors.append(DecodeError("empty binary frame"))
        return  # 1 byte: a heartbeat
    count = _u16(frame, 0)[0]
    off = 2
    parsers = _PARSERS
    for i in range(count):
        if off + 2 > end:
            errors.append(DecodeError(f"frame ends after {i} of {count} packets ({end} bytes)", offset=off))
            return
        length = _u16(frame, off)[0]
        off += 2
        stop = off + length
        if stop > end:
            errors.append(
                DecodeError(
                    f"packet {i + 1} of {count} declares {length} bytes but the frame has {end - off} left",
                    code=length, offset=off,
                )
            )
            return
        parser = parsers.get(length)
        if parser is None:
            out.append(UnknownPacket(int.from_bytes(frame[off : off + 4], "big") if length >= 4 else 0, frame[off:stop]))
        else:
            out.append(parser(frame, off))
        off = stop
    if off != end:
        errors.append(DecodeError(f"{end - off} bytes after the {count} packets the frame declares", offset=off))


class DecodedFrame(NamedTuple):
    packets: list[Packet]
    errors: list[DecodeError]


def decode_frame_lenient(frame: bytes) -> DecodedFrame:
    packets: list[Packet] = []
    errors: list[DecodeError] = []
    decode_into(frame, packets, errors)
    return DecodedFrame(packets, errors)


def decode_frame(frame: bytes) -> list[Packet]:
    """Every packet of a binary frame; raises ``DecodeError`` on a malformed one."""
    packets, errors = decode_frame_lenient(frame)
    if errors:
        raise errors[0]
    return packets


# --------------------------------------------------------------------------- encoding


def encode_packet(packet: Packet) -> bytes:
    """One packet body (no length prefix)."""
    cls = type(packet)
    if cls is FullPacket:
        return FULL.pack(*packet[:16], *packet[16])
    if cls is QuotePacket:
        return QUOTE.pack(*packet)
    if cls is IndexFullPacket:
        return INDEX_FULL.pack(*packet)
    if cls is IndexQuotePacket:
        return INDEX_QUOTE.pack(*packet)
    if cls is LtpPacket:
        return LTP.pack(*packet)
    if cls is UnknownPacket:
        return packet.body
    raise TypeError(f"not a Kite packet: {cls.__name__}")


def encode_bodies(bodies: Iterable[bytes]) -> bytes:
    """A container frame of already-encoded packet bodies (the simulator encodes each once)."""
    parts = []
    n = 0
    for body in bodies:
        parts.append(COUNT.pack(len(body)))
        parts.append(body)
        n += 1
    return COUNT.pack(n) + b"".join(parts)


def encode_frame(packets: Iterable[Packet]) -> bytes:
    """A binary frame carrying ``packets``."""
    return encode_bodies(encode_packet(p) for p in packets)


def encode_heartbeat() -> bytes:
    return HEARTBEAT


# --------------------------------------------------------------------------- text frames


def parse_text(text: str | bytes) -> TextMessage:
    """A server text frame; ``DecodeError`` when it is not a JSON object with a string ``type``."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"text frame is not JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise DecodeError("text frame is not an object with a string 'type'")
    return TextMessage(msg["type"], msg.get("data"))


def encode_text(message: TextMessage) -> str:
    return orjson.dumps({"type": message.type, "data": message.data}).decode()
