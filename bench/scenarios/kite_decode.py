"""Scenario "kite-decode": our Kite codec against the official kiteconnect SDK's parser, same frames.

Baseline: ``kiteconnect.KiteTicker._parse_binary`` (the SDK's whole-frame parser, called without
a connection). Frames are Kite containers built by our encoder over 3000 NFO option tokens (one
connection's worth) with market-like values, checked beforehand to decode to the same values
with both parsers. Per packet type, both race in the same rounds:

* ``decode``: ``decode_into`` per frame into a reused list, as the client calls it;
* ``decode+normalize``: the above, then the Kite ``Normalizer`` (tick 0.05) into domain ticks,
  the per-frame work the client really does (the SDK's dicts of floats are closer to ticks than
  our integer tuples are, so this is the fairer end-to-end figure).

Kite packs many packets per frame (one frame per tick cycle per connection): ``PER_FRAME``
packets per frame, and a 1-packet-per-frame case for Full. No target: the issue asks for the
figure, measured in one run.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from bench.model import Budget, Row, Scenario
from bench.timing import Contestant, race
from feeds.errors import DecodeError
from feeds.kite.codec import decode_frame, decode_into, encode_frame
from feeds.kite.normalize import Normalizer
from feeds.kite.packets import FullPacket, LtpPacket, Packet, QuotePacket, instrument_key
from feeds.model import Tick

NAME = "kite-decode"
UNIT = "packets/s"
SDK_NAME = "kiteconnect SDK"
TOKENS = 3_000
PER_FRAME = 50
RECEIVED_AT = 1_781_084_997.25


def _tokens() -> list[int]:
    return [(40_000 + i) * 256 + 2 for i in range(TOKENS)]


def _packets(kind: str, n: int, tokens: Sequence[int], seed: int) -> list[Packet]:
    rng = random.Random(seed)
    out: list[Packet] = []
    for i in range(n):
        token = tokens[i % len(tokens)]
        ltp = rng.randint(100, 50_000) * 5  # paise on a 0.05 tick
        if kind == "ltp":
            out.append(LtpPacket(token, ltp))
            continue
        close = 1_000 + 5 * (token >> 8) % 40_000  # the previous session's close: fixed per instrument
        q = (token, ltp, 75 * rng.randint(1, 20), ltp - 5, rng.randint(0, 10**7), rng.randint(0, 10**6),
             rng.randint(0, 10**6), ltp + 50, ltp + 100, ltp - 100, close)  # fmt: skip
        if kind == "quote":
            out.append(QuotePacket(*q))
            continue
        depth = tuple(v for lvl in range(5) for v in (75 * rng.randint(1, 60), ltp - 5 * (lvl + 1), rng.randint(1, 25)))
        depth += tuple(v for lvl in range(5) for v in (75 * rng.randint(1, 60), ltp + 5 * (lvl + 1), rng.randint(1, 25)))
        out.append(FullPacket(*q, 1_781_084_990, rng.randint(0, 10**7), 0, 0, 1_781_084_990, depth))
    return out


def _frames(packets: Sequence[Packet], per_frame: int) -> list[bytes]:
    return [encode_frame(packets[i : i + per_frame]) for i in range(0, len(packets), per_frame)]


def run(budget: Budget) -> list[Row]:
    from kiteconnect import KiteTicker  # test extra: the baseline

    parse = KiteTicker("api-key", "access-token")._parse_binary  # noqa: SLF001 - the SDK's own parser
    tokens = _tokens()
    normalizer = Normalizer({instrument_key(t): 0.05 for t in tokens})
    n = 3_000 if budget.quick else 15_000
    rows: list[Row] = []
    cases = [("full", PER_FRAME), ("quote", PER_FRAME), ("ltp", PER_FRAME), ("full", 1)]
    for seed, (kind, per_frame) in enumerate(cases, start=1):
        packets = _packets(kind, n, tokens, seed)
        frames = _frames(packets, per_frame)
        _check(frames, parse, normalizer)
        rates = race(
            [
                Contestant("sdk", _pass(parse, frames, len(packets))),
                Contestant("decode", _decode_pass(frames, len(packets))),
                Contestant("normalize", _normalize_pass(frames, len(packets), normalizer)),
            ],
            budget.rounds,
            budget.seconds_per_round,
        )
        label = f"{kind}, {per_frame}/frame"
        for what, key in (("decode", "decode"), ("decode+normalize", "normalize")):
            rows.append(Row.compare(NAME, f"{label}: {what}", rates[key], rates["sdk"], unit=UNIT, baseline_name=SDK_NAME))
    return rows


def _pass(parse: Callable[[bytes], Any], frames: Sequence[bytes], count: int) -> Callable[[], int]:
    def one_pass() -> int:
        for f in frames:
            parse(f)
        return count

    return one_pass


def _decode_pass(frames: Sequence[bytes], count: int) -> Callable[[], int]:
    def one_pass() -> int:
        decode = decode_into
        packets: list[Packet] = []
        errors: list[DecodeError] = []
        for f in frames:
            decode(f, packets, errors)
            packets.clear()
        return count

    return one_pass


def _normalize_pass(frames: Sequence[bytes], count: int, normalize: Normalizer) -> Callable[[], int]:
    def one_pass() -> int:
        decode = decode_into
        packets: list[Packet] = []
        errors: list[DecodeError] = []
        ticks: list[Tick] = []
        for f in frames:
            decode(f, packets, errors)
            normalize(packets, RECEIVED_AT, ticks)
            packets.clear()
            ticks.clear()
        return count

    return one_pass


def _check(frames: Sequence[bytes], parse: Callable[[bytes], Any], normalize: Normalizer) -> None:
    """Refuse to time parsers that disagree on the bytes, or a normaliser that drops packets."""
    for f in frames:
        ours = decode_frame(f)
        theirs = parse(f)
        if len(ours) != len(theirs):
            raise AssertionError(f"SDK read {len(theirs)} packets, we read {len(ours)}")
        for p, d in zip(ours, theirs, strict=True):
            if (d["instrument_token"], d["last_price"]) != (p[0], p[1] / 100):
                raise AssertionError(f"SDK read {d}, we read {p}")
        ticks: list[Tick] = []
        normalize(ours, RECEIVED_AT, ticks)
        if len([t for t in ticks if t[1] is not None]) < len(ours) or normalize.unknown_instrument_packets:
            raise AssertionError("the normaliser dropped packets")


SCENARIO = Scenario(NAME, "our Kite decoder (and decoder+normaliser) vs the kiteconnect SDK's parser", run)
