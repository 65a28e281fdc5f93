"""The Redis layout of the chain: key names, fields and encodings, shared by writer and readers.

Sans-I/O: nothing here talks to Redis. ``service.redis.mirror`` writes this layout, and
``service.redis.replica`` (or any other consumer) reads it. Every key starts with ``livechain:``;
``{chain}`` is ``UNDERLYING:YYYY-MM-DD`` (``NIFTY:2026-11-24``) and a leg's field is
``{strike}:{CE|PE}`` (``25850.0:CE``, the strike as JSON writes it)::

    livechain:catalog          string  JSON: the run id, the chain skeletons (underlyings,
                                       index security ids, expiries, lot sizes, strike rows) and
                                       the primary's staleness inputs: its market calendar and
                                       stale_after_s, so replicas apply the primary's rule
    livechain:run              string  the run id alone: the primary checks it every
                                       redis.verify_interval_s to notice a Redis that forgot
    livechain:chain:{chain}    hash    {strike}:{side} → the leg's JSON object, byte for byte
                                       as it appears in /options/live
    livechain:meta:{chain}     hash    version, updated_at (epoch s), underlying_ltp,
                                       stale_legs; a field that is absent is null; and
                                       analytics: the chain's analytics as JSON (see below)
    livechain:changes          stream  one entry per changed chain per flush (capped, MAXLEN ~):
                                       run, seq, chain, full, the meta fields, and legs: a JSON
                                       object {field: leg object} of the legs that changed;
                                       analytics when they were recomputed since the last entry
    livechain:changes:{chain}  channel one JSON message per changed chain per flush: the same
                                       entry as one JSON object

All of a flush is one MULTI/EXEC, so a reader never sees half a flush and the stream's last
entry always describes the state the hashes hold. ``run`` changes whenever the writer
rewrote the whole state (start-up, or reconnection after Redis was unreachable); within a
run ``seq`` grows by exactly one per entry, so a reader that sees a new run or a gap in
``seq`` knows it must reload rather than follow.

A stream entry carries its legs as one JSON field rather than one field per leg: encoding
arguments is most of the client's cost, and the pub/sub message embeds the same bytes.
orjson's output is canonical, so a reader that parses a leg and encodes it again with orjson
gets the writer's bytes back (``parse_change`` does, for the replica's byte-identical bodies).

A chain's analytics (``service.analytics.compute.ChainAnalytics.to_json``) are
``{"computed_at": epoch s, "chain": {"forward": …, "max_pain": …}, "legs": {"25850.0:CE":
[iv, delta, gamma, theta, vega, iv_source]}}`` (legs without any are left out). They depend
on the time, so readers take them as written rather than recompute them; they are written
only when recomputed (every ``analytics.interval_s`` at most, for chains that changed), not
with every flush, because they cover every leg of the chain.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from feeds.calendar import MarketCalendar

PREFIX = "livechain:"
CATALOG_KEY = PREFIX + "catalog"
RUN_KEY = PREFIX + "run"
STREAM_KEY = PREFIX + "changes"
CHANNEL_PATTERN = PREFIX + "changes:*"
LEGS_PATTERN = PREFIX + "chain:*"
META_PATTERN = PREFIX + "meta:*"

_RUN, _SEQ, _CHAIN, _FULL, _LEGS = b"run", b"seq", b"chain", b"full", b"legs"
_VERSION, _UPDATED_AT, _UNDERLYING_LTP, _STALE_LEGS = b"version", b"updated_at", b"underlying_ltp", b"stale_legs"
ANALYTICS_FIELD = "analytics"  # in the meta hash, a stream entry and a pub/sub message
_ANALYTICS = ANALYTICS_FIELD.encode()


def chain_id(underlying: str, expiry: dt.date) -> str:
    return f"{underlying}:{expiry.isoformat()}"


def legs_key(cid: str) -> str:
    return f"{PREFIX}chain:{cid}"


def meta_key(cid: str) -> str:
    return f"{PREFIX}meta:{cid}"


def channel(cid: str) -> str:
    return f"{PREFIX}changes:{cid}"


def leg_field(strike: float, side: str) -> str:
    """``25850.0:CE``: Python's shortest float repr, which is also what JSON shows for a strike."""
    return f"{strike!r}:{side}"


# --------------------------------------------------------------------------- chain meta


@dataclass(frozen=True, slots=True)
class ChainMeta:
    """The changing, chain-level part of a body (``as_of`` is ``updated_at`` shown in IST)."""

    version: int
    updated_at: float | None
    underlying_ltp: float | None
    stale_legs: int

    def fields(self) -> dict[str, str]:
        """As hash/stream fields: floats as their exact repr; None is an absent field."""
        out = {"version": str(self.version), "stale_legs": str(self.stale_legs)}
        if self.updated_at is not None:
            out["updated_at"] = repr(self.updated_at)
        if self.underlying_ltp is not None:
            out["underlying_ltp"] = repr(self.underlying_ltp)
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> ChainMeta:
        updated_at = fields.get(_UPDATED_AT)
        ltp = fields.get(_UNDERLYING_LTP)
        return cls(
            version=int(fields[_VERSION]),
            updated_at=None if updated_at is None else float(updated_at),
            underlying_ltp=None if ltp is None else float(ltp),
            stale_legs=int(fields[_STALE_LEGS]),
        )


# --------------------------------------------------------------------------- catalog

Strike = tuple[float, int | None, int | None]  # strike, CE security id, PE security id (None: no contract)


@dataclass(frozen=True, slots=True)
class CatalogChain:
    underlying: str
    expiry: dt.date
    lot_size: int
    strikes: tuple[Strike, ...]  # ascending

    @property
    def cid(self) -> str:
        return chain_id(self.underlying, self.expiry)


@dataclass(frozen=True, slots=True)
class CatalogUnderlying:
    underlying: str
    segment: int
    security_id: int  # the index's
    chains: tuple[CatalogChain, ...]  # ascending by expiry


def calendar_to_json(calendar: MarketCalendar) -> dict[str, Any]:
    return {
        "open_time": calendar.open_time.isoformat(),
        "close_time": calendar.close_time.isoformat(),
        "holidays": sorted(d.isoformat() for d in calendar.holidays),
        "always_open": calendar.always_open,
        "never_open": calendar.never_open,
        "pre_open_time": calendar.pre_open_time.isoformat(),
    }


def calendar_from_json(doc: Mapping[str, Any]) -> MarketCalendar:
    return MarketCalendar(
        open_time=dt.time.fromisoformat(doc["open_time"]),
        close_time=dt.time.fromisoformat(doc["close_time"]),
        holidays=frozenset(dt.date.fromisoformat(d) for d in doc["holidays"]),
        always_open=bool(doc["always_open"]),
        never_open=bool(doc["never_open"]),
        **({"pre_open_time": dt.time.fromisoformat(doc["pre_open_time"])} if "pre_open_time" in doc else {}),
    )


@dataclass(frozen=True, slots=True)
class Catalog:
    run: str
    underlyings: tuple[CatalogUnderlying, ...]
    # The primary's staleness inputs (service.core.freshness); None from a writer that sent none.
    calendar: MarketCalendar | None = None
    stale_after_s: float | None = None
    broker: str | None = None  # whose feed the primary reads ("dhan", "kite"); None from an older writer

    def to_json(self) -> bytes:
        extra: dict[str, Any] = {}
        if self.broker is not None:
            extra["broker"] = self.broker
        if self.calendar is not None:
            extra["market"] = calendar_to_json(self.calendar)
        if self.stale_after_s is not None:
            extra["stale_after_s"] = self.stale_after_s
        return orjson.dumps(
            {
                "run": self.run,
                **extra,
                "underlyings": [
                    {
                        "underlying": u.underlying,
                        "segment": u.segment,
                        "security_id": u.security_id,
                        "expiries": [
                            {"expiry": c.expiry, "lot_size": c.lot_size, "strikes": [list(s) for s in c.strikes]}
                            for c in u.chains
                        ],
                    }
                    for u in self.underlyings
                ],
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Catalog:
        doc: dict[str, Any] = orjson.loads(raw)
        market = doc.get("market")
        stale_after_s = doc.get("stale_after_s")
        return cls(
            run=doc["run"],
            calendar=None if market is None else calendar_from_json(market),
            stale_after_s=None if stale_after_s is None else float(stale_after_s),
            broker=doc.get("broker"),
            underlyings=tuple(
                CatalogUnderlying(
                    u["underlying"],
                    u["segment"],
                    u["security_id"],
                    tuple(
                        CatalogChain(
                            u["underlying"],
                            dt.date.fromisoformat(e["expiry"]),
                            e["lot_size"],
                            tuple((float(s), ce, pe) for s, ce, pe in e["strikes"]),
                        )
                        for e in u["expiries"]
                    ),
                )
                for u in doc["underlyings"]
            ),
        )


# --------------------------------------------------------------------------- changes


@dataclass(frozen=True, slots=True)
class Change:
    """One stream entry: a chain's meta and the legs that changed (all of them when ``full``)."""

    run: str
    seq: int
    cid: str
    full: bool
    meta: ChainMeta
    legs: dict[str, bytes]
    analytics: bytes | None = None  # the chain's analytics JSON, when recomputed since the last entry


def legs_json(legs: Sequence[tuple[str, bytes]]) -> bytes:
    """``{"25850.0:CE": {...}, ...}`` from each leg's field and JSON bytes, encoded once per flush."""
    return orjson.dumps({field: orjson.Fragment(doc) for field, doc in legs})


def change_fields(
    run: str, seq: int, cid: str, full: bool, meta: dict[str, str], legs: bytes, analytics: bytes | None = None
) -> dict:
    """A stream entry's fields; ``legs`` is ``legs_json(...)``."""
    fields = {"run": run, "seq": seq, "chain": cid, "full": int(full), **meta, "legs": legs}
    if analytics is not None:
        fields[ANALYTICS_FIELD] = analytics
    return fields


def meta_analytics(fields: Mapping[bytes, bytes]) -> bytes | None:
    """The analytics JSON held in a chain's meta hash, if any."""
    return fields.get(_ANALYTICS)


def parse_change(fields: Mapping[bytes, bytes]) -> Change:
    dumps = orjson.dumps
    return Change(
        run=fields[_RUN].decode(),
        seq=int(fields[_SEQ]),
        cid=fields[_CHAIN].decode(),
        full=fields.get(_FULL) == b"1",
        meta=ChainMeta.from_fields(fields),
        legs={field: dumps(doc) for field, doc in orjson.loads(fields[_LEGS]).items()},
        analytics=fields.get(_ANALYTICS),
    )


def change_message(
    run: str, seq: int, underlying: str, expiry: dt.date, full: bool, meta: ChainMeta, as_of: dt.datetime | None,
    legs: bytes,
    analytics: bytes | None = None,
) -> bytes:
    """The pub/sub message: the stream entry as one JSON object (``legs`` is ``legs_json(...)``)."""
    message = {
        "run": run,
        "seq": seq,
        "underlying": underlying,
        "expiry": expiry,
        "version": meta.version,
        "as_of": as_of,
        "underlying_ltp": meta.underlying_ltp,
        "stale_legs": meta.stale_legs,
        "full": full,
        "legs": orjson.Fragment(legs),
    }
    if analytics is not None:
        message[ANALYTICS_FIELD] = orjson.Fragment(analytics)
    return orjson.dumps(message)


# --------------------------------------------------------------------------- history (issue 14)
#
#     livechain:history:{day}:{chain}          list    the chain's samples of that IST day, oldest
#                                                      first, one element per sample (binary:
#                                                      service.history.model.encode: a JSON header
#                                                      with t (UTC µs), the chain-level series and
#                                                      its layout id, the leg columns, the body
#                                                      zstd-compressed)
#     livechain:history-layouts:{day}:{chain}  hash    layout id → JSON list of the strikes that
#                                                      sample's columns follow
#     livechain:history-settings               string  JSON {"interval_s": …}: the primary's sampling
#                                                      interval, so replicas answer with the same
#
# Both expire at the end of the day's IST date plus history.redis_keep_days: a relative EXPIRE
# from the primary's clock, set with every write. The primary appends each sample pass in its
# mirror's MULTI/EXEC and rewrites the whole day with every full rewrite (new run), like the
# chains; it loads the days back at start, before its first write.

HISTORY_PREFIX = PREFIX + "history:"
HISTORY_SETTINGS_KEY = PREFIX + "history-settings"


def history_key(day: dt.date, cid: str) -> str:
    return f"{HISTORY_PREFIX}{day.isoformat()}:{cid}"


def history_layouts_key(day: dt.date, cid: str) -> str:
    return f"{PREFIX}history-layouts:{day.isoformat()}:{cid}"
