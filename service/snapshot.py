"""Immutable chain snapshots: the ``/options/live`` body, serialised once per (version, stale).

A leg's JSON object is rebuilt only after that leg changed (``Leg.doc`` is dropped by the
cache on every change), so a render costs one ``orjson.dumps`` plus the changed legs.
The ETag is a hash of the body: equal bodies get equal tags, on any process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from feeds.model import IST
from service.cache import Chain, Leg

_fromtimestamp = dt.datetime.fromtimestamp


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


def leg_doc(leg: Leg) -> dict[str, Any]:
    doc = leg.doc
    if doc is None:
        doc = leg.doc = {
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
    return doc


def render(chain: Chain, stale: bool) -> ChainSnapshot:
    """The chain's snapshot, reusing the last one when nothing changed."""
    last: ChainSnapshot | None = chain.rendered
    if last is not None and last.version == chain.version and last.stale == stale:
        return last
    body = orjson.dumps(
        {
            "underlying": chain.underlying,
            "expiry": chain.expiry,
            "underlying_ltp": chain.index.ltp,
            "lot_size": chain.lot_size,
            "as_of": ist(chain.updated_at),
            "version": chain.version,
            "stale": stale,
            "strikes": [
                {
                    "strike": strike,
                    "ce": None if ce is None else leg_doc(ce),
                    "pe": None if pe is None else leg_doc(pe),
                }
                for strike, ce, pe in chain.rows
            ],
        }
    )
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    snap = ChainSnapshot(chain.underlying, chain.expiry, chain.version, stale, body, etag)
    chain.rendered = snap
    return snap
