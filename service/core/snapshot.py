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
body's leg objects, with the new analytics appended). The changed legs are encoded together,
column-wise from the cache's columns (``_column_objects``: numpy for the derived fields, one
orjson call per matrix, no Python work per field); ``encode_legs`` (a dict per leg) is the
reference it equals byte for byte and the fallback for whatever the column path does not cover.
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

from feeds.model import IST, MISSING_INT
from service.analytics.compute import NULL_HEAD, NULL_LEG_SUFFIX, ChainAnalytics
from service.core.cache import FLOAT_FIELDS, INT_FIELDS, Chain, Leg, leg_store, store_of
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
    # The primary's: where each slot's leg state is in the cache's columns (``_Columnar``), kept
    # from render to render with ``legs``; None until a render needs it.
    columnar: Any = field(default=None, repr=False, compare=False)

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


# ---------------------------------------------------------------- many legs from the cache's columns
#
# ``encode_legs`` costs a dict and its serialisation per leg (~4.5 µs). Legs that share the cache's
# columns are encoded column-wise instead: their state gathered as two matrices (one ``take`` each),
# the derived fields computed with numpy, each matrix written by ONE ``orjson.dumps`` (orjson writes
# a float64 element exactly as the same Python float, and NaN and inf as null, as it writes
# round()'s inf and nan) and split into tokens, and the tokens interleaved with the keys by list
# slice assignment and joined: no Python work per field. The result is byte for byte
# ``encode_legs``' (tests/test_snapshot.py); legs the column path does not cover exactly (detached
# from the cache's columns, a security id that is not an int64, OI beyond ±2^62) go to ``encode_legs``.

# The float matrix: change, change_pct, oi_change_pct, then the stored fields (FLOAT_FIELDS, whose
# last, updated_at, is written as text, not dumped).
_DERIVED = ("change", "change_pct", "oi_change_pct")
_F_ROWS = (*_DERIVED, *FLOAT_FIELDS)
_F_ROW = {name: r for r, name in enumerate(_F_ROWS)}
_F_DUMPED = len(_F_ROWS) - 1
# The int matrix: security_id, oi_change, then the stored fields (INT_FIELDS; ltt is written as text).
_I_ROWS = ("security_id", "oi_change", *INT_FIELDS)
_I_ROW = {name: r for r, name in enumerate(_I_ROWS)}
# Derived, rounded as ``_round4`` (change) and ``_round2`` (the percentages): their scales.
_SCALES = np.array([[10000.0], [100.0], [100.0]])
_ROUNDERS = (_round4, _round2, _round2)
_MISSING = np.int64(MISSING_INT)
_OI_LIMIT = np.int64(2**62)  # below it, oi − prev_oi is exact in int64 and is never MISSING_INT
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_BOOL_TOKENS = (b"false", b"true")

# One leg's object: a key fragment before each value token, then the closing brace (values at odd
# places). A trade time takes two places: its minute's text and its second's (``_ltt_text``).
_LEG_PARTS: list[bytes | None] = []
for _i, _name in enumerate(_LEG_KEYS):
    _LEG_PARTS += [(b"{" if _i == 0 else b",") + orjson.dumps(_name) + b":", None]
    if _name == "ltt":
        _LEG_PARTS.append(b"")
_LEG_PARTS.append(b"\0")  # in place of the closing brace: a byte no JSON text here has, to split on
_WIDTH = len(_LEG_PARTS)
_AT = {name: _LEG_PARTS.index((b"{" if i == 0 else b",") + orjson.dumps(name) + b":") + 1
       for i, name in enumerate(_LEG_KEYS)}  # fmt: skip
del _i, _name
# Which dumped rows go where: (row, place in _LEG_PARTS).
_F_PLACES = tuple((r, _AT[name]) for r, name in enumerate(_F_ROWS[:_F_DUMPED]))
_I_PLACES = tuple((r, _AT[name]) for r, name in enumerate(_I_ROWS) if name != "ltt")

# Trade times (whole epoch seconds, as ``_ltt_text`` writes them) as two tokens: ``"YYYY-MM-DDTHH:MM:``
# per minute (memoised) and ``SS+05:30"`` per second. Receive times (float epoch seconds) as their
# quoted text (memoised: the legs of a batch share one).
_minute_tokens: dict[int, bytes] = {}
_SECOND_TOKENS = tuple(f'{text}"'.encode() for text in _SECONDS)
_updated_tokens: dict[float, bytes] = {}


def _minute_token(minute: int) -> bytes:
    return f'"{_ist_text(minute * 60)[:17]}'.encode()  # ASCII: nothing to escape


def _updated_token(epoch_s: float) -> bytes:
    return f'"{_ist_text(epoch_s)}"'.encode()


def _ltt_tokens(ltt: np.ndarray) -> tuple[list[bytes], list[bytes]]:
    """Per leg its trade time's two tokens (null and b"" when missing)."""
    minute, second = np.divmod(ltt, 60)
    usual = (ltt >= 0) & (ltt <= _WHOLE_SECONDS_MAX)
    if usual.all():
        seconds = [_SECOND_TOKENS[s] for s in second.tolist()]
        return _memo_tokens(minute.tolist(), _minute_tokens, _minute_token), seconds
    minutes = _memo_tokens(np.where(usual, minute, 0).tolist(), _minute_tokens, _minute_token)
    seconds = [_SECOND_TOKENS[s] for s in second.tolist()]
    for j in np.flatnonzero(~usual).tolist():
        value = int(ltt[j])
        minutes[j] = _NULL if value == MISSING_INT else _dumps_raw(_ltt_text(value))  # the text in full
        seconds[j] = b""
    return minutes, seconds


def _memo_tokens(values: list[Any], memo: dict[Any, bytes], make: Callable[[Any], bytes]) -> list[bytes]:
    """Per value its token, ``make(v)``, memoised in ``memo`` (bounded: cleared when full); each new
    value made once (the legs of a batch share their receive time, many their trade minute). NaN: null."""
    get = memo.get
    found = [get(v) for v in values]
    if None in found:
        new = {v for v, token in zip(values, found) if token is None and v == v}
        if len(memo) + len(new) > _IST_MEMO_MAX:
            memo.clear()
        for v in new:
            memo[v] = make(v)
        found = [get(v, _NULL) if token is None else token for v, token in zip(values, found)]
    return found


def _derived(floats: np.ndarray, ints: np.ndarray) -> bool:
    """Fill in change, change_pct, oi_change_pct (floats) and oi_change (ints) as ``encode_legs``
    computes them. False when OI is beyond ±2^62 (Python's ints do not overflow; int64 may)."""
    out = floats[:3]  # change, change_pct, oi_change_pct
    ltp, prev_close = floats[_F_ROW["ltp"]], floats[_F_ROW["prev_close"]]
    oi, prev_oi = ints[_I_ROW["oi"]], ints[_I_ROW["prev_oi"]]
    with_oi = (oi != _MISSING) & (prev_oi != _MISSING)
    priced = not np.isnan(prev_close).all()
    counted = with_oi.any()
    with np.errstate(all="ignore"):
        if priced:
            np.subtract(ltp, prev_close, out=out[0])
            np.multiply(out[0], 100.0, out=out[1])  # 100.0 * (ltp - prev_close) / prev_close, in that order
            np.divide(out[1], np.where(prev_close > 0, prev_close, np.nan), out=out[1])  # else None: null
        else:
            out[:2] = np.nan
        if counted:
            if ((np.abs(oi) | np.abs(prev_oi)) >= _OI_LIMIT).any():  # abs(MISSING_INT) is negative: not counted
                return False
            oi_moved = oi - prev_oi  # exact: |oi|, |prev_oi| < 2^62
            ints[_I_ROW["oi_change"]] = np.where(with_oi, oi_moved, _MISSING)
            np.multiply(oi_moved, 100.0, out=out[2])  # int64 → float64 correctly rounded, as Python's int * float
            np.divide(out[2], np.where(with_oi & (prev_oi > 0), prev_oi, np.nan), out=out[2])
        else:
            ints[_I_ROW["oi_change"]] = _MISSING
            out[2] = np.nan
        # _round4 / _round2: k = rint(x · 10^d) (half to even, keeping the sign of zero, so k / 10^d
        # is copysign(0.0, x) when k is 0) where |x · 10^d| < 2^40 and it is at least 0.001 from a
        # tie; the scalar function for other finite values. Non-finite values stay non-finite: null,
        # as orjson writes round() of inf and nan.
        if priced or counted:
            lo, hi = (0 if priced else 2), (3 if counted else 2)
            x, scales = out[lo:hi], _SCALES[lo:hi]
            n = x * scales
            k = np.rint(n)
            fast = (np.abs(n) < _ROUND_LIMIT) & (np.abs(n - k) < 0.499)
            rounded = k / scales
            slow = ~fast
            slow &= np.isfinite(x)
            if slow.any():
                for r, j in zip(*(where.tolist() for where in np.nonzero(slow))):
                    rounded[r, j] = _ROUNDERS[lo + r](float(x[r, j]))
            x[...] = rounded
    return True


class _Columnar:
    """Per leg slot of a chain's body, where its state is in the cache's column store (``rows``,
    -1: no contract) and its security id (``ids``): what the column path reads per render without
    touching the legs. Built once per chain layout (again if its legs moved to another store);
    ``usable`` False: the legs are not all in ``store`` or an id is not an int64 (``encode_legs``)."""

    __slots__ = ("store", "rows", "ids", "usable")

    def __init__(self, store: Any, rows: np.ndarray, ids: np.ndarray, usable: bool) -> None:
        self.store, self.rows, self.ids, self.usable = store, rows, ids, usable


def _int64_ids(ids: list[Any]) -> bool:
    """Security ids the int matrix writes as ``encode_legs`` does (MISSING_INT would read as null)."""
    return all(id_.__class__ is int and MISSING_INT < id_ <= _INT64_MAX for id_ in ids)


_INT64_MAX = 2**63 - 1


def _columnar(legs: tuple[Leg | None, ...]) -> _Columnar:
    real = [leg for leg in legs if leg is not None]
    found = leg_store(real)
    ids = [leg.key[1] for leg in real]
    store = store_of(real[0]) if real else None
    if found is None or not _int64_ids(ids):
        return _Columnar(store, np.zeros(0, np.intp), np.zeros(0, np.int64), False)
    where = np.array([slot for slot, leg in enumerate(legs) if leg is not None], np.intp)
    rows = np.full(len(legs), -1, np.intp)
    rows[where] = found[1]
    slot_ids = np.zeros(len(legs), np.int64)
    slot_ids[where] = ids
    return _Columnar(store, rows, slot_ids, True)


def _column_objects(store: Any, rows: np.ndarray, ids: np.ndarray, legs: Sequence[Leg]) -> list[bytes] | None:
    """The objects of ``legs`` (their columns ``rows`` in ``store``, their security ``ids``: int64)
    without their closing brace; None when the column path does not cover them exactly (OI beyond ±2^62)."""
    n = len(legs)
    floats = np.empty((len(_F_ROWS), n))
    ints = np.empty((len(_I_ROWS), n), np.int64)
    store.f.take(rows, axis=1, out=floats[len(_DERIVED) :])
    store.i.take(rows, axis=1, out=ints[2:])
    ints[0] = ids
    if not _derived(floats, ints):
        return None
    parts = _LEG_PARTS * n
    nulls = [_NULL] * n
    # Rows with nothing in them (a field no leg has, e.g. prev_close before its packet) are null
    # without being written; the others are written by one orjson call per matrix.
    dumped = floats[:_F_DUMPED]
    empty = np.isnan(dumped).all(axis=1).tolist()
    if any(empty):
        full = [r for r, nothing in enumerate(empty) if not nothing]
        dumped = dumped[full]
    tokens = _dumps_raw(dumped.ravel(), option=_NUMPY)[1:-1].split(b",")
    k = 0
    for r, at in _F_PLACES:
        if empty[r]:
            parts[at::_WIDTH] = nulls
        else:
            parts[at::_WIDTH] = tokens[k * n : (k + 1) * n]
            k += 1
    missing = ints == _MISSING
    counts = np.count_nonzero(missing, axis=1).tolist()
    full = [r for r, at in _I_PLACES if counts[r] < n]
    tokens = _dumps_raw(ints[full].ravel(), option=_NUMPY)[1:-1].split(b",") if full else []
    k = 0
    for r, at in _I_PLACES:
        if counts[r] == n:
            parts[at::_WIDTH] = nulls
            continue
        row = tokens[k * n : (k + 1) * n]
        k += 1
        if counts[r]:
            for j in np.flatnonzero(missing[r]).tolist():
                row[j] = _NULL
        parts[at::_WIDTH] = row
    at = _AT["ltt"]
    parts[at::_WIDTH], parts[at + 1 :: _WIDTH] = _ltt_tokens(ints[_I_ROW["ltt"]])
    updated = floats[_F_ROW["updated_at"]]
    if updated[0] == updated[-1] and (updated == updated[0]).all():  # one batch's legs: one receive time
        parts[_AT["updated_at"] :: _WIDTH] = _memo_tokens(updated[:1].tolist(), _updated_tokens, _updated_token) * n
    else:
        parts[_AT["updated_at"] :: _WIDTH] = _memo_tokens(updated.tolist(), _updated_tokens, _updated_token)
    parts[_AT["stale"] :: _WIDTH] = [_BOOL_TOKENS[leg.stale] for leg in legs]
    one_sided = np.isnan(floats[_F_ROW["bid"]]) | np.isnan(floats[_F_ROW["ask"]])
    parts[_AT["two_sided"] :: _WIDTH] = [_BOOL_TOKENS[not b] for b in one_sided.tolist()]
    bases = b"".join(parts).split(b"\0")
    bases.pop()  # after the last separator
    return bases


_COLUMNS_MIN = 40  # fewer legs: encode_legs is cheaper than the column path's fixed cost (~100 µs of numpy calls)


def _objects(legs: Sequence[Leg], leg_rows: LegRows, columnar: _Columnar | None = None,
             slots: np.ndarray | None = None) -> list[Any]:  # fmt: skip
    """Per leg its ``encode_legs`` object without the closing brace (bytes or a memoryview),
    column-wise where it can. ``columnar`` and the legs' ``slots`` in it: their rows and ids, else
    read from the legs."""
    if len(legs) >= _COLUMNS_MIN:
        found = None
        if columnar is not None and slots is not None:
            if columnar.usable and store_of(legs[0]) is columnar.store:  # a chain's legs move together
                found = _column_objects(columnar.store, columnar.rows[slots], columnar.ids[slots], legs)
        else:
            store = leg_store(legs)
            ids = [leg.key[1] for leg in legs]
            if store is not None and _int64_ids(ids):
                found = _column_objects(store[0], store[1], np.array(ids, np.int64), legs)
        if found is not None:
            return found
    view, bounds = encode_legs(legs, leg_rows(legs))
    return [view[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]


def encode_many(legs: Sequence[Leg], leg_rows: LegRows | None = None) -> tuple[bytes, list[int]]:
    """``encode_legs(legs, leg_rows(legs))``: the same objects, one after another in a buffer of its
    own, and per leg where its object starts and where its closing brace is. Column-wise where the
    legs share the cache's columns."""
    bases = _objects(legs, _rows_of if leg_rows is None else leg_rows)
    bounds: list[int] = []
    at = 0
    for base in bases:
        at += len(base)
        bounds += (at - len(base), at)
        at += 1
    return b"}".join(bases) + b"}" if bases else b"", bounds


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
              legs: tuple[Leg | None, ...], strikes_at: int, digests: np.ndarray,
              columnar: Any = None) -> ChainSnapshot:  # fmt: skip
    return ChainSnapshot(underlying, expiry, version, times.stale, body, _etag(body, strikes_at, strikes, digests), times,
                         head, strikes, spans, analytics, legs, strikes_at, digests, columnar)  # fmt: skip


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
    columnar = last.columnar if last is not None and last.legs else None
    if last is not None and last.legs and last.analytics is analytics:
        body, spans, digests, taken, columnar = _patch(last, opening, legs, leg_rows, columnar)
    else:
        body, spans = _rebuild(last if last is not None and last.legs else None, opening, strikes, legs, analytics,
                               leg_rows)  # fmt: skip
        digests = _digests(body, spans)
        taken = [leg for leg in legs if leg is not None]
    snap = _snapshot(chain.underlying, chain.expiry, chain.version, times, head, body, strikes, spans, analytics,
                     legs, len(opening), digests, columnar)  # fmt: skip
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
        fresh = dict(zip(unencoded, _objects(unencoded, leg_rows)))

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
    last: ChainSnapshot, opening: bytes, legs: tuple[Leg | None, ...], leg_rows: LegRows, columnar: _Columnar | None
) -> tuple[bytes, np.ndarray, np.ndarray, list[Leg], _Columnar | None]:
    """The last body with a new opening and the changed legs' objects replaced (same analytics):
    the runs between changed legs are copied as one piece each. Also returns the digests, the
    changed legs and the slots' ``_Columnar`` (built on first need, rebuilt if the legs moved)."""
    changed = [slot for slot, leg in enumerate(legs) if leg is not None and leg.doc is not IN_BODY]
    old = memoryview(last.body)
    spans = last.spans
    cursor = last.strikes_at
    shift = len(opening) - cursor
    if not changed:
        return b"".join((opening, old[cursor:])), spans + shift if shift else spans, last.digests, [], columnar
    taken: list[Leg] = [legs[slot] for slot in changed]  # type: ignore[misc]
    at = np.array(changed, np.intp)
    # Every changed leg's new object without its closing brace, from one encoder call (legs the
    # mirror already encoded keep theirs).
    kept = [leg.doc for leg in taken]
    mixed = kept.count(None) != len(kept)
    unencoded = [leg for leg, doc in zip(taken, kept) if doc is None] if mixed else taken
    slots = at[[doc is None for doc in kept]] if mixed else at
    if len(unencoded) >= _COLUMNS_MIN and (columnar is None or store_of(unencoded[0]) is not columnar.store):
        columnar = _columnar(legs)
    bases = _objects(unencoded, leg_rows, columnar, slots)
    if mixed:
        fresh = iter(bases)
        bases = [next(fresh) if doc is None else memoryview(doc)[:-1] for doc in kept]
    base_lens = np.array([len(base) for base in bases], np.intp)
    start, suffix_at, end = spans.take(at, axis=0).T
    # The body: the opening, then per changed leg the unchanged run before it (from the previous
    # changed leg's analytics suffix on) and its new base, then the rest.
    parts: list[Any] = [opening] * (2 * len(changed) + 2)
    parts[1::2] = [old[a:b] for a, b in zip([cursor, *suffix_at.tolist()], [*start.tolist(), len(old)])]
    parts[2::2] = bases
    body = b"".join(parts)
    step = np.zeros(len(legs) + 1, np.int32)
    step[at + 1] = base_lens - (suffix_at - start)  # what each changed leg adds to the offsets after it
    moved = spans + (np.add.accumulate(step[:-1]) + shift)[:, None]
    new_start = moved[at, 0]
    new_suffix_at = new_start + base_lens
    new_end = new_suffix_at + (end - suffix_at)
    moved[at, 1] = new_suffix_at
    moved[at, 2] = new_end
    digests = last.digests.copy()
    new = memoryview(body)
    digests[at] = [_crc32(new[a:b]) for a, b in zip(new_start.tolist(), new_end.tolist())]
    return body, moved, digests, taken, columnar
