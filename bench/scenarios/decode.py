"""Scenario "decode": our codec against the official SDK's decoder, on the same bytes.

Baseline: dhanhq's ``MarketFeed.process_data`` (see ``bench.sdk``), one packet per message as
Dhan sends. For each packet type the SDK, our bare decoder and our decoder plus normaliser
race in the same rounds:

* ``decode``: ``decode_into`` per message into a reused list, as the client calls it.
  Informational, like every row here: for 12–16-byte packets a ratio to the SDK says little
  (its OI and previous-close paths are one ``struct.unpack`` and a small dict, and 10x of those
  would be less than one Python call per packet), so the per-packet-type "≥ 10x the SDK"
  targets were retired (issue 16). The target that matters is end to end: ``ingest``.
* ``decode+normalize``: the above, then ``Normalizer`` (tick 0.05 for every instrument) into
  domain ticks: the per-frame work the client really does. The SDK's output (dicts of
  formatted strings) is closer to ticks than to our wire tuples, so this is the fairer
  end-to-end figure.
* ``full, 10/msg``: ten Full packets per message through ``decode_into``. The SDK decodes
  only the first packet of a message, so its figure is the packets it delivers (one per
  message) and the ratio is not a like-for-like speed-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bench import corpus
from bench.model import Budget, Row, Scenario
from bench.sdk import NAME as SDK_NAME
from bench.sdk import sdk_decoder
from bench.timing import Contestant, race
from feeds.dhan.codec import decode_into, decode_message
from feeds.dhan.normalize import Normalizer
from feeds.dhan.packets import Packet
from feeds.errors import DecodeError
from feeds.model import Tick

NAME = "decode"
UNIT = "packets/s"
INSTRUMENTS = 5_000
STACKED = 10
RECEIVED_AT = 1_781_084_997.25  # constant: the clock read belongs to the receive loop, not here

# For each kind, the SDK dict key and the same value formatted from our packet: a cheap proof
# that both decoders read the same thing out of the bytes before we time them.
_SAME_VALUE: dict[str, tuple[str, Callable[[Any], object]]] = {
    "ticker": ("LTP", lambda p: f"{p.ltp:.2f}"),
    "quote": ("LTP", lambda p: f"{p.ltp:.2f}"),
    "oi": ("OI", lambda p: p.oi),
    "prev_close": ("prev_close", lambda p: f"{p.prev_close:.2f}"),
    "full": ("LTP", lambda p: f"{p.ltp:.2f}"),
}


def run(budget: Budget) -> list[Row]:
    per_kind = 2_000 if budget.quick else 10_000
    keys = corpus.instrument_keys(INSTRUMENTS)
    normalizer = Normalizer({key: corpus.TICK for key in keys})
    sdk = sdk_decoder()
    rows: list[Row] = []
    full: list[Packet] = []
    for seed, kind in enumerate(corpus.KINDS, start=1):
        items = corpus.packets(kind, per_kind, keys, seed)
        messages = corpus.messages(items)
        _check(kind, messages, 1, sdk, normalizer)
        rates = race(
            [
                Contestant("sdk", _sdk_pass(sdk, messages)),
                Contestant("decode", _decode_pass(messages, len(items))),
                Contestant("normalize", _normalize_pass(messages, len(items), normalizer)),
            ],
            budget.rounds,
            budget.seconds_per_round,
        )
        rows.append(_row(kind, "decode", rates["decode"], rates["sdk"]))
        rows.append(_row(kind, "decode+normalize", rates["normalize"], rates["sdk"]))
        if kind == "full":
            full = items

    stacked = corpus.messages(full, STACKED)
    _check("full", stacked, STACKED, sdk, normalizer)
    rates = race(
        [Contestant("sdk", _sdk_pass(sdk, stacked)), Contestant("decode", _decode_pass(stacked, len(full)))],
        budget.rounds,
        budget.seconds_per_round,
    )
    note = f"SDK decodes only the 1st of {STACKED} packets per message; its figure counts those"
    rows.append(_row(f"full, {STACKED}/msg", "decode", rates["decode"], rates["sdk"], note))
    return rows


def _row(kind: str, what: str, ours: list[float], sdk: list[float], note: str = "") -> Row:
    """An informational row (no target): see the module doc."""
    return Row.compare(NAME, f"{kind}: {what}", ours, sdk, unit=UNIT, baseline_name=SDK_NAME, note=note)


# --------------------------------------------------------------------------- contestants
# Each returns one pass over the messages. The loops are as bare as the client's: names bound
# to locals, lists reused and cleared, nothing counted per message (``_check`` proved the
# counts beforehand).


def _sdk_pass(process: Callable[[bytes], Any], messages: Sequence[bytes]) -> Callable[[], int]:
    def one_pass() -> int:
        for m in messages:
            process(m)
        return len(messages)  # one decoded packet per message, whatever the message holds

    return one_pass


def _decode_pass(messages: Sequence[bytes], count: int) -> Callable[[], int]:
    def one_pass() -> int:
        decode = decode_into
        packets: list[Packet] = []
        errors: list[DecodeError] = []
        for m in messages:
            decode(m, packets, errors)
            packets.clear()
        return count

    return one_pass


def _normalize_pass(messages: Sequence[bytes], count: int, normalize: Normalizer) -> Callable[[], int]:
    def one_pass() -> int:
        decode = decode_into
        packets: list[Packet] = []
        errors: list[DecodeError] = []
        ticks: list[Tick] = []
        for m in messages:
            decode(m, packets, errors)
            normalize(packets, RECEIVED_AT, ticks)
            packets.clear()
            ticks.clear()
        return count

    return one_pass


def _check(
    kind: str, messages: Sequence[bytes], per_message: int, sdk: Callable[[bytes], Any], normalize: Normalizer
) -> None:
    """Refuse to time decoders that disagree, drop packets or normalise nothing."""
    key, ours_value = _SAME_VALUE[kind]
    unknown_before = normalize.unknown_instrument_packets
    for m in messages:
        decoded = decode_message(m)
        if decoded.errors or len(decoded.packets) != per_message:
            raise AssertionError(f"{kind}: decoded {len(decoded.packets)} packets, errors {decoded.errors}")
        first = decoded.packets[0]
        theirs = sdk(m)
        if (theirs["security_id"], theirs[key]) != (first.security_id, ours_value(first)):
            raise AssertionError(f"{kind}: SDK read {theirs}, we read {first}")
        ticks: list[Tick] = []
        normalize(decoded.packets, RECEIVED_AT, ticks)
        if len(ticks) != per_message:
            raise AssertionError(f"{kind}: {len(ticks)} ticks from {per_message} packets")
    if normalize.unknown_instrument_packets != unknown_before:
        raise AssertionError(f"{kind}: packets for instruments the normaliser does not know")


SCENARIO = Scenario(NAME, "our decoder (and decoder+normaliser) vs the dhanhq SDK's, per packet type", run)
