"""Immutable chain snapshots: the ``/options/live`` body, serialised once per (version, stale).

A leg's JSON object is encoded only after that leg changed (``Leg.doc`` holds its bytes and
is dropped by the cache on every change) and embedded into the body as an ``orjson.Fragment``,
so a render costs one ``orjson.dumps`` of the chain's frame plus the changed legs.

``chain_snapshot`` is the one serialiser of a body: the primary renders its cache through it
and a read replica renders what it loaded from Redis (the same leg bytes, see
``service.mirror``) through it, so equal state gives equal bytes and equal ETags, on any process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from feeds.model import IST
from service.cache import Chain, Leg

_fromtimestamp = dt.datetime.fromtimestamp
_dumps = orjson.dumps
_F = orjson.Fragment


@dataclass(frozen=True, slots=True)
class ChainSnapshot:
    underlying: str
    expiry: dt.date
    version: int
    stale: bool
    body: bytes
    etag: str


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
            }
        )
    return doc


Row = tuple[float, bytes | None, bytes | None]  # strike, CE leg JSON, PE leg JSON


def chain_snapshot(
    underlying: str,
    expiry: dt.date,
    *,
    underlying_ltp: float | None,
    lot_size: int,
    updated_at: float | None,
    version: int,
    stale: bool,
    rows: Iterable[Row],
) -> ChainSnapshot:
    """Serialise one chain's body and tag it: the only place a body is built."""
    body = _dumps(
        {
            "underlying": underlying,
            "expiry": expiry,
            "underlying_ltp": underlying_ltp,
            "lot_size": lot_size,
            "as_of": ist(updated_at),
            "version": version,
            "stale": stale,
            "strikes": [
                {"strike": strike, "ce": None if ce is None else _F(ce), "pe": None if pe is None else _F(pe)}
                for strike, ce, pe in rows
            ],
        }
    )
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    return ChainSnapshot(underlying, expiry, version, stale, body, etag)


def render(chain: Chain, stale: bool) -> ChainSnapshot:
    """The chain's snapshot, reusing the last one when nothing changed."""
    last: ChainSnapshot | None = chain.rendered
    if last is not None and last.version == chain.version and last.stale == stale:
        return last
    snap = chain_snapshot(
        chain.underlying,
        chain.expiry,
        underlying_ltp=chain.index.ltp,
        lot_size=chain.lot_size,
        updated_at=chain.updated_at,
        version=chain.version,
        stale=stale,
        rows=[
            (strike, None if ce is None else leg_json(ce), None if pe is None else leg_json(pe))
            for strike, ce, pe in chain.rows
        ],
    )
    chain.rendered = snap
    return snap
