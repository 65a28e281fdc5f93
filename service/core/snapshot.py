"""Immutable chain snapshots: the ``/options/live`` body, serialised once per (version, times).

``chain_snapshot`` is the one serialiser of a body: the primary renders its cache through it
and a read replica renders what it loaded from Redis (the same leg bytes, see
``service.redis.mirror``) through it, so equal state gives equal bytes and equal ETags, on any process.
The chain's analytics (``service.analytics.compute``) are one more input, computed on the primary and
carried to replicas through Redis, never recomputed by a reader: they depend on the time.

The body is the only copy of each leg's JSON that is kept (memory: one copy per leg, not three).
A snapshot records where each leg object lies in its body (``spans``), so

* a leg's JSON object is encoded only after that leg changed. The cache sets ``Leg.doc`` to
  None on every change; a render encodes the legs whose ``doc`` is not ``IN_BODY``, splices them
  into the previous body (the runs of unchanged strikes between them are copied as they are,
  analytics suffixes included) and sets their ``doc`` to ``IN_BODY``: "my current JSON is in my
  chain's rendered body". ``leg_json`` (the Redis mirror) reads it from there;
* readers that send parts of a body (``service.stream``) slice it (``ChainSnapshot.leg``).

A render's cost is the head, the changed legs and one copy of the body (plus its ETag), not
one per leg; a chain whose analytics were recomputed is rebuilt leg by leg (from the previous
body's leg objects, with the new analytics appended).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from feeds.model import IST
from service.analytics.compute import NULL_HEAD, NULL_LEG_SUFFIX, ChainAnalytics
from service.core.cache import Chain, Leg
from service.core.freshness import ChainTimes

_fromtimestamp = dt.datetime.fromtimestamp
_dumps_raw = orjson.dumps
_copysign = math.copysign

# ``Leg.doc`` of a leg whose current JSON object is in its chain's rendered body (not a copy of
# it): empty bytes, which no JSON object is. The cache replaces it with None on every change.
IN_BODY = b""

Row = tuple[float, bytes | None, bytes | None]  # strike, CE leg JSON, PE leg JSON
LegRows = Callable[[Sequence[Leg]], list[tuple[Any, ...]]]  # ChainCache.leg_rows

_NULL = b"null"
_blake2b = hashlib.blake2b
_crc32 = zlib.crc32
_U32 = np.dtype("<u4")  # digests: the same bytes on any machine
_PE = b',"pe":'
_STRIKE_END = b"}"


def _no_spans() -> np.ndarray:
    return np.zeros((0, 3), np.int32)


def _no_digests() -> np.ndarray:
    return np.zeros(0, _U32)


def _exact(raw: bytes) -> bytes:
    """An ``orjson.dumps`` result copied into an exactly sized object: orjson's own result keeps
    its whole growth buffer (~4 KB for a 400-byte leg), and a leg may keep its doc for a while."""
    return bytes(memoryview(raw))


@dataclass(frozen=True, slots=True)
class ChainSnapshot:
    underlying: str
    expiry: dt.date
    version: int
    stale: bool
    body: bytes
    etag: str
    # What the body was built from, for readers that send parts of it (service.stream):
    times: ChainTimes | None = None  # the clock-dependent inputs; a render is reused only while equal
    head: dict[str, Any] = field(default_factory=dict)  # every chain-level field (all but "strikes")
    strikes: tuple[float, ...] = ()  # ascending; leg slots are 2 per strike, CE then PE
    # Per leg slot, offsets into ``body``: its object's start, where its analytics suffix starts
    # (``,"iv":…``), its end. A slot without a contract spans the ``null`` written there.
    spans: np.ndarray = field(default_factory=_no_spans, repr=False, compare=False)
    analytics: ChainAnalytics | None = field(default=None, repr=False, compare=False)  # whose suffixes the body has
    legs: tuple[Leg | None, ...] = field(default=(), repr=False, compare=False)  # the primary's: cache leg per slot
    strikes_at: int = 0  # offset of the first strike object in ``body``
    # Per slot, the CRC-32 of its object (uint32; ``_etag``).
    digests: np.ndarray = field(default_factory=_no_digests, repr=False, compare=False)

    def leg(self, slot: int) -> bytes | None:
        """The leg object at ``slot`` (2 × strike index, + 1 for PE) exactly as in the body; None: no contract."""
        start, _, end = self.spans[slot].tolist()
        return None if self.body[start] == 0x6E else self.body[start:end]  # 0x6E: the n of null

    def leg_slots(self) -> list[bytes | None]:
        """Every slot's leg object (CE, PE per strike), as ``leg`` gives it."""
        body = self.body
        return [None if body[s] == 0x6E else body[s:e] for s, _, e in self.spans.tolist()]

    @property
    def rows(self) -> tuple[Row, ...]:
        """Per strike its CE and PE objects exactly as in the body (None: no contract)."""
        legs = self.leg_slots()
        return tuple((strike, legs[2 * i], legs[2 * i + 1]) for i, strike in enumerate(self.strikes))


def ist(epoch_s: float | None) -> dt.datetime | None:
    """A UTC epoch instant as an aware IST datetime (orjson writes it as ISO-8601 +05:30)."""
    return None if epoch_s is None else _fromtimestamp(epoch_s, IST)


# Instants as the JSON string of their IST datetime (what orjson writes for ``ist(epoch)``, without
# the quotes; every leg of a batch shares its receive time, and many their trade second): a
# bounded memo, cleared when full (each value is a pure function of its key).
_ist_memo: dict[float, str] = {}
_IST_MEMO_MAX = 4096


def _ist_text(epoch_s: float) -> str:
    found = _ist_memo.get(epoch_s)
    if found is None:
        if len(_ist_memo) >= _IST_MEMO_MAX:
            _ist_memo.clear()
        found = _ist_memo[epoch_s] = _dumps_raw(_fromtimestamp(epoch_s, IST))[1:-1].decode()
    return found


# A trade time (whole epoch seconds) as that text from its minute's (memoised: a minute has one
# prefix, and trades cluster in the last minutes) and its second: IST is UTC + 330 minutes.
_minute_memo: dict[int, str] = {}
_SECONDS = tuple(f"{s:02d}+05:30" for s in range(60))
_WHOLE_SECONDS_MAX = 253_402_300_799 - 19_800  # 9999-12-31T23:59:59 IST


def _ltt_text(epoch_s: float) -> str:
    if epoch_s.__class__ is not int or not 0 <= epoch_s <= _WHOLE_SECONDS_MAX:
        return _ist_text(epoch_s)
    minute, second = divmod(epoch_s, 60)
    prefix = _minute_memo.get(minute)
    if prefix is None:
        if len(_minute_memo) >= _IST_MEMO_MAX:
            _minute_memo.clear()
        prefix = _minute_memo[minute] = _ist_text(minute * 60)[:17]  # YYYY-MM-DDTHH:MM:
    return prefix + _SECONDS[second]


# Rounding exactly as ``round(x, digits)`` without its decimal conversion (~0.7 µs a call):
# n = x·10^digits rounded to the nearest integer k, then k / 10^digits. Both are the correctly
# rounded float of k/10^digits, so they are equal whenever k is the integer ``round`` picks: when
# |n| < 2^40 (n's own rounding error ≤ 2^-13) and n is at least 0.001 from a tie (x.5). Anything
# else (ties, huge, inf, nan, ints) goes to ``round`` itself. tests/test_snapshot.py checks it.
_ROUND_LIMIT = float(2**40)


def _round4(x: float) -> float:
    if x.__class__ is float:
        n = x * 10000.0
        if -_ROUND_LIMIT < n < _ROUND_LIMIT:
            k = round(n)
            if -0.499 < n - k < 0.499:
                return k / 10000.0 if k else _copysign(0.0, x)
    return round(x, 4)


def _round2(x: float) -> float:
    if x.__class__ is float:
        n = x * 100.0
        if -_ROUND_LIMIT < n < _ROUND_LIMIT:
            k = round(n)
            if -0.499 < n - k < 0.499:
                return k / 100.0 if k else _copysign(0.0, x)
    return round(x, 2)


def _row_of(leg: Leg) -> tuple[Any, ...]:
    """One leg's state as ``ChainCache.leg_rows`` gives it (for a leg encoded alone)."""
    return (leg.ltp, leg.ltq, leg.ltt, leg.atp, leg.volume, leg.oi, leg.prev_close, leg.prev_oi, leg.open, leg.high,
            leg.low, leg.close, leg.bid, leg.bid_qty, leg.ask, leg.ask_qty, leg.updated_at, leg.stale)  # fmt: skip


def _rows_of(legs: Sequence[Leg]) -> list[tuple[Any, ...]]:
    return [_row_of(leg) for leg in legs]


# Every key of a leg's object, in the body's order (``encode_legs`` fills a copy).
_LEG_KEYS: dict[str, None] = dict.fromkeys((
    "security_id", "ltp", "ltq", "ltt", "atp", "volume", "oi", "prev_close", "prev_oi", "open", "high", "low", "close",
    "bid", "bid_qty", "ask", "ask_qty", "updated_at", "stale", "oi_change", "oi_change_pct", "change", "change_pct",
    "two_sided",
))  # fmt: skip


def _encode(leg: Leg) -> bytes:
    """The leg's JSON object as it appears in the body (and in Redis), without the analytics."""
    blob, bounds = encode_legs((leg,), (_row_of(leg),))
    return bytes(blob[bounds[0] : bounds[1] + 1])


def encode_legs(legs: Sequence[Leg], rows: Sequence[tuple[Any, ...]]) -> tuple[memoryview, list[int]]:
    """Every leg's JSON object as it appears in the body (and in Redis), without the analytics,
    from one encoder call: the buffer and, per leg, the offsets where its object starts and where
    its closing brace is (``2 × len(legs)`` ints). ``rows``: as ``ChainCache.leg_rows`` gives them."""
    docs = []
    add_doc = docs.append
    ist, ltt_text, template = _ist_text, _ltt_text, _LEG_KEYS.copy
    for leg, (ltp, ltq, ltt, atp, volume, oi, prev_close, prev_oi, open_, high, low, close, bid, bid_qty, ask,
              ask_qty, updated_at, stale) in zip(legs, rows):  # fmt: skip
        if ltp is None or prev_close is None:
            change = change_pct = None
        else:
            change = _round4(ltp - prev_close)
            change_pct = None if prev_close <= 0 else _round2(100.0 * (ltp - prev_close) / prev_close)
        if oi is None or prev_oi is None:
            oi_change = oi_change_pct = None
        else:
            oi_change = oi - prev_oi
            oi_change_pct = None if prev_oi <= 0 else _round2(100.0 * (oi - prev_oi) / prev_oi)
        # A copy of a dict with every key, then set in place: a third of a 24-key dict literal's cost.
        doc = template()
        doc["security_id"] = leg.key[1]
        doc["ltp"] = ltp
        doc["ltq"] = ltq
        doc["ltt"] = None if ltt is None else ltt_text(ltt)
        doc["atp"] = atp
        doc["volume"] = volume
        doc["oi"] = oi
        doc["prev_close"] = prev_close
        doc["prev_oi"] = prev_oi
        doc["open"] = open_
        doc["high"] = high
        doc["low"] = low
        doc["close"] = close
        doc["bid"] = bid
        doc["bid_qty"] = bid_qty
        doc["ask"] = ask
        doc["ask_qty"] = ask_qty
        doc["updated_at"] = None if updated_at is None else ist(updated_at)
        doc["stale"] = stale
        # Derived from the leg alone, so they change with it (not on the analytics cadence).
        doc["oi_change"] = oi_change
        doc["oi_change_pct"] = oi_change_pct
        doc["change"] = change
        doc["change_pct"] = change_pct
        doc["two_sided"] = bid is not None and ask is not None
        add_doc(doc)
    blob = _dumps_raw(docs)
    # ``[{…},{…}]``: no value inside an object has a brace (numbers, null, booleans, ISO dates).
    bounds: list[int] = []
    add = bounds.append
    find = blob.find
    pos = 1
    for _ in range(len(docs) - 1):
        end = find(b"},{", pos)
        add(pos)
        add(end)
        pos = end + 2
    if docs:
        add(pos)
        add(len(blob) - 2)
    return memoryview(blob), bounds


def leg_json(leg: Leg) -> bytes:
    """The leg's JSON object as it appears in the body (and in Redis), encoded once per change:
    kept in ``leg.doc`` until a render puts it into the body, then read from the body."""
    doc = leg.doc
    if doc is IN_BODY:
        found = _from_body(leg)
        if found is not None:
            return found
        doc = None
    if doc is None:
        doc = leg.doc = _exact(_encode(leg))
    return doc


def _from_body(leg: Leg) -> bytes | None:
    """The leg's object (without analytics) from its chain's rendered body; None if it is not there."""
    contract = leg.contract
    if contract is None or not leg.chains:
        return None
    snap: ChainSnapshot | None = leg.chains[0].rendered
    if snap is None or not snap.legs:
        return None
    slot = 2 * bisect_left(snap.strikes, contract.strike) + (contract.option_type == "PE")
    if slot >= len(snap.legs) or snap.legs[slot] is not leg:
        return None
    start, suffix_at, _ = snap.spans[slot].tolist()
    return snap.body[start:suffix_at] + b"}"


def _head(underlying: str, expiry: dt.date, underlying_ltp: float | None, lot_size: int, updated_at: float | None,
          version: int, times: ChainTimes, analytics: ChainAnalytics | None) -> dict[str, Any]:  # fmt: skip
    return {
        "underlying": underlying,
        "expiry": expiry,
        "underlying_ltp": underlying_ltp,
        "lot_size": lot_size,
        "as_of": ist(updated_at),
        "version": version,
        "stale": times.stale,
        **times.head(),
        **(NULL_HEAD if analytics is None else analytics.head),
    }


def _opening(head: dict[str, Any]) -> bytes:
    """The body up to its first strike object: ``{…head…,"strikes":[``."""
    return _dumps_raw(head)[:-1] + b',"strikes":['


def _assemble(
    opening: bytes, strikes: Sequence[float], pieces: Iterable[tuple[Any, Any] | None]
) -> tuple[bytes, np.ndarray]:
    """The body from its opening and per slot (CE, PE per strike) the leg object as (its base JSON
    without the closing brace, its analytics suffix), or None: no contract. The same bytes as
    ``orjson.dumps({**head, "strikes": [{"strike": s, "ce": …, "pe": …}, …]})``.

    ``pieces`` is consumed one at a time and each is copied into the body at once, so a freshly
    encoded leg is freed before the next is encoded: a chain's first render does not leave
    megabytes of freed encoder buffers under its body (resident memory the allocator keeps).
    """
    out = bytearray(opening)
    spans: list[int] = []
    span = spans.extend
    piece_of = iter(pieces)
    for i, strike in enumerate(strikes):
        out += b',{"strike":' if i else b'{"strike":'
        out += _dumps_raw(strike)
        out += b',"ce":'
        for tail in (_PE, _STRIKE_END):
            piece = next(piece_of)
            pos = len(out)
            if piece is None:
                out += _NULL
                span((pos, pos + 4, pos + 4))
            else:
                base, suffix = piece
                out += base
                at = len(out)
                out += suffix
                span((pos, at, len(out)))
            out += tail
    out += b"]}"
    return bytes(out), np.array(spans, np.int32).reshape(-1, 3)


def _snapshot(underlying: str, expiry: dt.date, version: int, times: ChainTimes, head: dict[str, Any], body: bytes,
              strikes: tuple[float, ...], spans: np.ndarray, analytics: ChainAnalytics | None,
              legs: tuple[Leg | None, ...], strikes_at: int, digests: np.ndarray) -> ChainSnapshot:  # fmt: skip
    return ChainSnapshot(underlying, expiry, version, times.stale, body, _etag(body, strikes_at, strikes, digests), times,
                         head, strikes, spans, analytics, legs, strikes_at, digests)  # fmt: skip


def _etag(body: bytes, strikes_at: int, strikes: tuple[float, ...], digests: np.ndarray) -> str:
    """A strong ETag, a hash of the body: of its head, its strikes and each leg object's CRC-32
    (``digests``, little-endian), so a render checksums only the legs that changed, not the whole
    body. Equal bodies have equal parts, hence equal tags, on any process. The head is hashed in
    full and carries the chain's version (new with every change), so two states of a chain never
    share a tag through the checksums alone."""
    h = _blake2b(memoryview(body)[:strikes_at], digest_size=12)
    h.update(_dumps_raw(strikes))
    h.update(digests)
    return '"' + h.hexdigest() + '"'


def _digests(body: bytes, spans: np.ndarray) -> np.ndarray:
    """Per leg slot the CRC-32 of its object (or null) in ``body``."""
    mv = memoryview(body)
    return np.array([_crc32(mv[start:end]) for start, _, end in spans.tolist()], _U32)


def chain_snapshot(
    underlying: str,
    expiry: dt.date,
    *,
    underlying_ltp: float | None,
    lot_size: int,
    updated_at: float | None,
    version: int,
    times: ChainTimes,
    rows: Iterable[Row],
    analytics: ChainAnalytics | None = None,
) -> ChainSnapshot:
    """Serialise one chain's body and tag it: the only serialiser of a body (a read replica's).

    ``rows`` carry each leg's base JSON (``leg_json``); the body's leg object is that with the
    chain's per-leg analytics appended (``"iv"`` … ``"iv_source"``, null where there are none):
    spliced as bytes, so the base JSON is encoded once per leg change and the analytics once per
    analytics pass. ``times`` are the clock-dependent fields (``stale``, ``days_to_expiry``,
    ``market``: ``service.core.freshness``).
    """
    rows = list(rows)
    strikes = tuple(strike for strike, _, _ in rows)
    suffix = _null_suffix if analytics is None else analytics.leg_suffix
    pieces = (
        None if doc is None else (memoryview(doc)[:-1], suffix(strike, side))
        for strike, ce, pe in rows
        for doc, side in ((ce, "CE"), (pe, "PE"))
    )
    head = _head(underlying, expiry, underlying_ltp, lot_size, updated_at, version, times, analytics)
    opening = _opening(head)
    body, spans = _assemble(opening, strikes, pieces)
    return _snapshot(underlying, expiry, version, times, head, body, strikes, spans, analytics, (), len(opening),
                     _digests(body, spans))  # fmt: skip


def _null_suffix(strike: float, side: str) -> bytes:
    return NULL_LEG_SUFFIX


def render(chain: Chain, times: ChainTimes, leg_rows: LegRows | None = None) -> ChainSnapshot:
    """The chain's snapshot, reusing the last one when nothing changed (version and ``times``);
    else the last body with the changed legs spliced in (or rebuilt, when the analytics changed).
    ``leg_rows``: the cache's bulk read of leg state (``ChainCache.leg_rows``); None: leg attributes."""
    if leg_rows is None:
        leg_rows = _rows_of
    last: ChainSnapshot | None = chain.rendered
    if last is not None and last.version == chain.version and last.times == times:
        return last
    analytics = chain.analytics
    head = _head(chain.underlying, chain.expiry, chain.index.ltp, chain.lot_size, chain.updated_at, chain.version,
                 times, analytics)  # fmt: skip
    opening = _opening(head)
    if last is not None and last.legs:
        legs, strikes = last.legs, last.strikes
    else:
        legs = tuple(leg for _, ce, pe in chain.rows for leg in (ce, pe))
        strikes = tuple(strike for strike, _, _ in chain.rows)
    if last is not None and last.legs and last.analytics is analytics:
        body, spans, digests, taken = _patch(last, opening, legs, leg_rows)
    else:
        body, spans = _rebuild(last if last is not None and last.legs else None, opening, strikes, legs, analytics,
                               leg_rows)  # fmt: skip
        digests = _digests(body, spans)
        taken = [leg for leg in legs if leg is not None]
    snap = _snapshot(chain.underlying, chain.expiry, chain.version, times, head, body, strikes, spans, analytics,
                     legs, len(opening), digests)  # fmt: skip
    chain.rendered = snap
    for leg in taken:
        leg.doc = IN_BODY  # its current JSON is in snap.body now
    return snap


_BULK_MAX = 128  # _rebuild: at most this many legs encoded in one call


def _rebuild(last: ChainSnapshot | None, opening: bytes, strikes: tuple[float, ...], legs: tuple[Leg | None, ...],
             analytics: ChainAnalytics | None, leg_rows: LegRows) -> tuple[bytes, np.ndarray]:  # fmt: skip
    """Every leg object anew (the first render, or new analytics): unchanged legs' base JSON
    from the last body, changed ones encoded."""
    suffixes = {} if analytics is None else analytics.suffixes()
    old = None if last is None else memoryview(last.body)
    old_spans = None if last is None else last.spans.tolist()
    null = NULL_LEG_SUFFIX
    # A few changed legs (new analytics on a chain that was rendered): one encoder call for them;
    # many (a first render): one at a time, so no large encoder buffer is freed under the body.
    unencoded = [leg for leg in legs if leg is not None and (leg.doc is None or (leg.doc is IN_BODY and old is None))]
    fresh: dict[Leg, memoryview] = {}
    if len(unencoded) <= _BULK_MAX:
        blob, bounds = encode_legs(unencoded, leg_rows(unencoded))
        fresh = {leg: blob[bounds[2 * i] : bounds[2 * i + 1]] for i, leg in enumerate(unencoded)}

    def pieces() -> Iterator[tuple[Any, Any] | None]:
        for slot, leg in enumerate(legs):
            if leg is None:
                yield None
                continue
            doc = leg.doc
            if doc is IN_BODY and old is not None:
                start, suffix_at, _ = old_spans[slot]  # type: ignore[index]
                base = old[start:suffix_at]
            elif leg in fresh:
                base = fresh.pop(leg)
            else:
                if doc is None or doc is IN_BODY:
                    doc = _encode(leg)
                base = memoryview(doc)[:-1]
            yield base, suffixes.get((strikes[slot >> 1], "PE" if slot & 1 else "CE"), null)
            del base, doc  # freed before the next leg is encoded

    return _assemble(opening, strikes, pieces())


def _patch(
    last: ChainSnapshot, opening: bytes, legs: tuple[Leg | None, ...], leg_rows: LegRows
) -> tuple[bytes, np.ndarray, np.ndarray, list[Leg]]:
    """The last body with a new opening and the changed legs' objects replaced (same analytics):
    the runs between changed legs are copied as one piece each. Also returns the digests and
    the changed legs."""
    changed = [slot for slot, leg in enumerate(legs) if leg is not None and leg.doc is not IN_BODY]
    old = memoryview(last.body)
    spans = last.spans
    cursor = last.strikes_at
    shift = len(opening) - cursor
    parts: list[Any] = [opening]
    append = parts.append
    if not changed:
        append(old[cursor:])
        return b"".join(parts), spans + shift if shift else spans, last.digests, []
    taken: list[Leg] = [legs[slot] for slot in changed]  # type: ignore[misc]
    # Every changed leg's new object from one encoder call (legs the mirror already encoded keep theirs).
    unencoded = [leg for leg in taken if leg.doc is None]
    blob, bounds = encode_legs(unencoded, leg_rows(unencoded))
    fresh = iter(range(0, len(bounds), 2))
    at = np.array(changed, np.intp)
    base_lens: list[int] = []
    deltas: list[int] = []
    for leg, (start, suffix_at, end) in zip(taken, spans[at].tolist()):
        doc = leg.doc
        if doc is None:
            i = next(fresh)
            base = blob[bounds[i] : bounds[i + 1]]
        else:
            base = memoryview(doc)[:-1]
        n = len(base)
        append(old[cursor:start])
        append(base)
        append(old[suffix_at:end])  # the analytics suffix, unchanged
        cursor = end
        base_lens.append(n)
        deltas.append(n - (suffix_at - start))
    append(old[cursor:])
    body = b"".join(parts)
    step = np.zeros(len(legs) + 1, np.int32)
    step[at + 1] = deltas
    moved = spans + (np.cumsum(step[:-1], dtype=np.int32) + shift)[:, None]
    suffix_lens = spans[at, 2] - spans[at, 1]
    moved[at, 1] = moved[at, 0] + np.array(base_lens, np.int32)
    moved[at, 2] = moved[at, 1] + suffix_lens
    digests = last.digests.copy()
    new = memoryview(body)
    digests[at] = [_crc32(new[start:end]) for start, _, end in moved[at].tolist()]
    return body, moved, digests, taken
