"""Immutable chain snapshots: the ``/options/live`` body, serialised once per (version, stale).

A leg's JSON object is encoded only after that leg changed (``Leg.doc`` holds its bytes and
is dropped by the cache on every change) and embedded into the body as an ``orjson.Fragment``,
so a render costs one ``orjson.dumps`` of the chain's frame plus the changed legs.

``chain_snapshot`` is the one serialiser of a body: the primary renders its cache through it
and a read replica renders what it loaded from Redis (the same leg bytes, see
``service.redis.mirror``) through it, so equal state gives equal bytes and equal ETags, on any process.
The chain's analytics (``service.analytics.compute``) are one more input, computed on the primary and
carried to replicas through Redis, never recomputed by a reader: they depend on the time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from feeds.model import IST
from service.analytics.compute import NULL_HEAD, NULL_LEG_SUFFIX, ChainAnalytics
from service.core.cache import Chain, Leg
from service.core.freshness import ChainTimes

_fromtimestamp = dt.datetime.fromtimestamp
_F = orjson.Fragment


def _dumps(obj: object) -> bytes:
    """``orjson.dumps``, copied into an exactly sized object: orjson's own result keeps its
    whole growth buffer (~4 KB for a 400-byte leg), and we keep one per leg for the day."""
    return bytes(memoryview(orjson.dumps(obj)))


Row = tuple[float, bytes | None, bytes | None]  # strike, CE leg JSON, PE leg JSON


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
    rows: tuple[Row, ...] = ()  # per strike its CE and PE objects exactly as in the body (None: no contract)


def ist(epoch_s: float | None) -> dt.datetime | None:
    """A UTC epoch instant as an aware IST datetime (orjson writes it as ISO-8601 +05:30)."""
    return None if epoch_s is None else _fromtimestamp(epoch_s, IST)


def leg_json(leg: Leg) -> bytes:
    """The leg's JSON object as it appears in the body (and in Redis), encoded once per change."""
    doc = leg.doc
    if doc is None:
        doc = leg.doc = _dumps(
            {
                "security_id": leg.key[1],
                "ltp": leg.ltp,
                "ltq": leg.ltq,
                "ltt": ist(leg.ltt),
                "atp": leg.atp,
                "volume": leg.volume,
                "oi": leg.oi,
                "prev_close": leg.prev_close,
                "prev_oi": leg.prev_oi,
                "open": leg.open,
                "high": leg.high,
                "low": leg.low,
                "close": leg.close,
                "bid": leg.bid,
                "bid_qty": leg.bid_qty,
                "ask": leg.ask,
                "ask_qty": leg.ask_qty,
                "updated_at": ist(leg.updated_at),
                "stale": leg.stale,
                # Derived from the leg alone, so they change with it (not on the analytics cadence).
                "oi_change": None if leg.oi is None or leg.prev_oi is None else leg.oi - leg.prev_oi,
                "oi_change_pct": _change_pct(leg.oi, leg.prev_oi),
                "change": None if leg.ltp is None or leg.prev_close is None else round(leg.ltp - leg.prev_close, 4),
                "change_pct": _change_pct(leg.ltp, leg.prev_close),
                "two_sided": leg.bid is not None and leg.ask is not None,
            }
        )
    return doc


def _change_pct(ltp: float | None, prev_close: float | None) -> float | None:
    if ltp is None or prev_close is None or prev_close <= 0:
        return None
    return round(100.0 * (ltp - prev_close) / prev_close, 2)


def _null_suffix(strike: float, side: str) -> bytes:
    return NULL_LEG_SUFFIX


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
    """Serialise one chain's body and tag it: the only place a body is built.

    ``rows`` carry each leg's base JSON (``leg_json``); the body's leg object is that with the
    chain's per-leg analytics appended (``"iv"`` … ``"iv_source"``, null where there are none):
    spliced as bytes, so the base JSON is encoded once per leg change and the analytics once per
    analytics pass. ``times`` are the clock-dependent fields (``stale``, ``days_to_expiry``,
    ``market``: ``service.core.freshness``).
    """
    suffix = _null_suffix if analytics is None else analytics.leg_suffix
    legs = tuple(
        (
            strike,
            None if ce is None else ce[:-1] + suffix(strike, "CE"),
            None if pe is None else pe[:-1] + suffix(strike, "PE"),
        )
        for strike, ce, pe in rows
    )
    head = {
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
    body = _dumps(
        {
            **head,
            "strikes": [
                {"strike": strike, "ce": None if ce is None else _F(ce), "pe": None if pe is None else _F(pe)}
                for strike, ce, pe in legs
            ],
        }
    )
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    return ChainSnapshot(underlying, expiry, version, times.stale, body, etag, times, head, legs)


def render(chain: Chain, times: ChainTimes) -> ChainSnapshot:
    """The chain's snapshot, reusing the last one when nothing changed (version and ``times``)."""
    last: ChainSnapshot | None = chain.rendered
    if last is not None and last.version == chain.version and last.times == times:
        return last
    snap = chain_snapshot(
        chain.underlying,
        chain.expiry,
        underlying_ltp=chain.index.ltp,
        lot_size=chain.lot_size,
        updated_at=chain.updated_at,
        version=chain.version,
        times=times,
        rows=[
            (strike, None if ce is None else leg_json(ce), None if pe is None else leg_json(pe))
            for strike, ce, pe in chain.rows
        ],
        analytics=chain.analytics,
    )
    chain.rendered = snap
    return snap
