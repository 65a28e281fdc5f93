"""NSE's own option-chain JSON, for dashboards written against nseindia.com (README "NSE-compatible output").

Routes: ``/options/live?…&format=nse`` (one expiry), and the drop-in paths
``/api/option-chain-indices?symbol=NIFTY`` (legacy: every expiry in ``records``, the nearest in
``filtered``), ``/api/option-chain-contract-info?symbol=NIFTY`` and
``/api/option-chain-v3?type=Indices&symbol=NIFTY&expiry=09-Dec-2025``. Shapes and units follow
``shared/nse-option-chain.md``:

* ``openInterest``, ``changeinOpenInterest`` and ``totalTradedVolume`` in **contracts** (the
  feed's quantity / lot size; an integer when it divides, else a float);
  ``changeinOpenInterest`` against the previous session's OI, ``pchangeinOpenInterest`` its
  percentage; ``bidQty``/``askQty`` (and v3's ``buyQuantity1``/``sellQuantity1``) in quantity.
* Top of book under both spellings (legacy ``bidQty``/``bidprice``/``askQty``/``askPrice`` and
  v3 ``buyQuantity1``/``buyPrice1``/``sellQuantity1``/``sellPrice1``).
* What has no source here is ``null``, never NSE's ``0``: ``totalBuyQuantity`` and
  ``totalSellQuantity`` (the cache keeps no book totals), ``impliedVolatility`` where there is
  no IV, and any value the feed has not sent yet.

Everything is derived from the chain's ``/options/live`` snapshot (so a replica answers the
same), converted once per snapshot and cached by its ETag.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from service.core.snapshot import ChainSnapshot
from service.http import CONTEXT, ApiError, Routes, not_modified, resolve_chain, symbol_param

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = {m.lower(): i + 1 for i, m in enumerate(MONTHS)}


def nse_date(day: dt.date) -> str:
    """``09-Dec-2025`` (English month names whatever the locale)."""
    return f"{day.day:02d}-{MONTHS[day.month - 1]}-{day.year}"


def parse_nse_date(text: str) -> dt.date:
    """Inverse of ``nse_date``; ValueError on anything else."""
    day, month, year = text.split("-")
    if len(day) != 2 or len(year) != 4:
        raise ValueError(text)
    return dt.date(int(year), _MONTH[month.lower()], int(day))


def nse_timestamp(iso: str | None) -> str | None:
    """``13-Jun-2025 15:30:00`` (IST) from the body's ISO ``as_of``."""
    if iso is None:
        return None
    t = dt.datetime.fromisoformat(iso)
    return f"{nse_date(t.date())} {t:%H:%M:%S}"


def contracts(quantity: float | None, lot_size: int) -> float | int | None:
    """Quantity (shares, the broker's unit) in contracts; an int when the lot divides it."""
    if quantity is None:
        return None
    whole, rest = divmod(quantity, lot_size)
    return int(whole) if rest == 0 else quantity / lot_size


def _pct(now: float | None, before: float | None) -> float | None:
    if now is None or before is None or before <= 0:
        return None
    return (now - before) / before * 100.0


def nse_leg(leg: dict[str, Any], side: str, strike: float, expiry: dt.date, underlying: str, lot: int,
            underlying_value: float | None) -> dict[str, Any]:  # fmt: skip
    oi, prev_oi = leg["oi"], leg["prev_oi"]
    change = None if oi is None or prev_oi is None else oi - prev_oi
    return {
        "strikePrice": strike,
        "expiryDate": nse_date(expiry),
        "underlying": underlying,
        "identifier": f"OPTIDX{underlying}{expiry:%d-%m-%Y}{side}{strike:.2f}",
        "openInterest": contracts(oi, lot),
        "changeinOpenInterest": contracts(change, lot),
        "pchangeinOpenInterest": _pct(oi, prev_oi),
        "totalTradedVolume": contracts(leg["volume"], lot),
        "impliedVolatility": leg.get("iv"),
        "lastPrice": leg["ltp"],
        "change": leg["change"],
        "pChange": _pct(leg["ltp"], leg["prev_close"]),
        "totalBuyQuantity": None,  # no source: the cache keeps no book totals
        "totalSellQuantity": None,
        "bidQty": leg["bid_qty"],
        "bidprice": leg["bid"],
        "askQty": leg["ask_qty"],
        "askPrice": leg["ask"],
        "buyQuantity1": leg["bid_qty"],
        "buyPrice1": leg["bid"],
        "sellQuantity1": leg["ask_qty"],
        "sellPrice1": leg["ask"],
        "underlyingValue": underlying_value,
    }


def nse_rows(body: dict[str, Any], *, v3: bool = False) -> list[dict[str, Any]]:
    """A body's strikes as NSE rows (``CE``/``PE`` absent where there is no contract)."""
    expiry = dt.date.fromisoformat(body["expiry"])
    underlying, lot, value = body["underlying"], body["lot_size"], body["underlying_ltp"]
    rows = []
    for row in body["strikes"]:
        strike = row["strike"]
        out: dict[str, Any] = {"strikePrice": strike, ("expiryDates" if v3 else "expiryDate"): nse_date(expiry)}
        for side in ("CE", "PE"):
            leg = row[side.lower()]
            if leg is not None:
                out[side] = nse_leg(leg, side, strike, expiry, underlying, lot, value)
        rows.append(out)
    return rows


def _side_totals(rows: Sequence[dict[str, Any]], side: str) -> dict[str, Any]:
    def total(field: str) -> float | int | None:
        values = [row[side][field] for row in rows if side in row and row[side][field] is not None]
        return sum(values) if values else None

    return {"totOI": total("openInterest"), "totVol": total("totalTradedVolume")}


def nse_chain(bodies: Sequence[dict[str, Any]], selected: int, expiries: Sequence[dt.date], *,
              v3: bool = False) -> dict[str, Any]:  # fmt: skip
    """``{"records": …, "filtered": …}``: ``records`` has the rows of ``bodies`` (one per expiry
    served in this answer), ``filtered`` those of ``bodies[selected]`` with per-side totals."""
    rows = [nse_rows(b, v3=v3) for b in bodies]
    chosen = bodies[selected]
    filtered = rows[selected]
    return {
        "records": {
            "expiryDates": [nse_date(e) for e in expiries],
            "data": [row for expiry_rows in rows for row in expiry_rows],
            "timestamp": nse_timestamp(chosen["as_of"]),
            "underlyingValue": chosen["underlying_ltp"],
            "strikePrices": sorted({row["strike"] for b in bodies for row in b["strikes"]}),
        },
        "filtered": {"data": filtered, "CE": _side_totals(filtered, "CE"), "PE": _side_totals(filtered, "PE")},
    }


# --------------------------------------------------------------------------- HTTP


class NseCache:
    """The last NSE rendering per route and chain, reused while the source snapshots are unchanged."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], tuple[tuple[str, ...], bytes, str]] = {}

    def get(self, key: tuple[Any, ...], snaps: Sequence[ChainSnapshot], build: Any) -> tuple[bytes, str]:
        etags = tuple(s.etag for s in snaps)
        hit = self._entries.get(key)
        if hit is not None and hit[0] == etags:
            return hit[1], hit[2]
        body = orjson.dumps(build([orjson.loads(s.body) for s in snaps]))
        etag = '"nse-' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        self._entries[key] = (etags, body, etag)
        return body, etag


NSE_CACHE = web.AppKey("nse_cache", NseCache)


def _respond(request: web.Request, body: bytes, etag: str) -> web.Response:
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if not_modified(request, etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers, content_type="application/json")


def _symbol(request: web.Request) -> tuple[str, list[dt.date]]:
    symbol = symbol_param(request, "symbol")  # the same strict ASCII check as /options/live
    expiries = request.app[CONTEXT].chains.expiries(symbol)
    if expiries is None:
        raise ApiError(404, "unknown_underlying", f"underlying {symbol!r} is not served; see /options/underlyings")
    return symbol, list(expiries)


def _snapshots(request: web.Request, symbol: str, expiries: Sequence[dt.date]) -> list[ChainSnapshot]:
    chains = request.app[CONTEXT].chains
    snaps = [chains.snapshot(symbol, e) for e in expiries]
    return [s for s in snaps if s is not None]


async def options_live_nse(request: web.Request) -> web.StreamResponse:
    """``/options/live?…&format=nse``: the one chain asked for, in NSE's legacy shape."""
    if request.query.get("format") != "nse":
        raise ApiError(400, "bad_parameter", "'format' must be 'json' (the default) or 'nse'")
    snap = resolve_chain(request)
    body, etag = request.app[NSE_CACHE].get(
        ("live", snap.underlying, snap.expiry), [snap], lambda b: nse_chain(b, 0, [snap.expiry])
    )
    return _respond(request, body, etag)


async def option_chain_indices(request: web.Request) -> web.StreamResponse:
    """Legacy ``/api/option-chain-indices``: every served expiry in ``records``, the nearest in ``filtered``."""
    symbol, expiries = _symbol(request)
    chains = request.app[CONTEXT].chains
    nearest = chains.nearest_expiry(symbol)
    live = [e for e in expiries if nearest is not None and e >= nearest]
    snaps = _snapshots(request, symbol, live)
    if not snaps:
        raise ApiError(404, "no_expiry", f"{symbol} has no unexpired expiry loaded")
    served = [s.expiry for s in snaps]
    body, etag = request.app[NSE_CACHE].get(("indices", symbol), snaps, lambda b: nse_chain(b, 0, served))
    return _respond(request, body, etag)


async def option_chain_contract_info(request: web.Request) -> web.StreamResponse:
    """``/api/option-chain-contract-info``: ``{"expiryDates": [...], "strikePrice": [...]}``."""
    symbol, expiries = _symbol(request)
    nearest = request.app[CONTEXT].chains.nearest_expiry(symbol)
    live = [e for e in expiries if nearest is not None and e >= nearest]
    snaps = _snapshots(request, symbol, live)

    def build(bodies: list[dict[str, Any]]) -> dict[str, Any]:
        strikes = sorted({row["strike"] for b in bodies for row in b["strikes"]})
        return {"expiryDates": [nse_date(s.expiry) for s in snaps], "strikePrice": strikes}

    body, etag = request.app[NSE_CACHE].get(("contract-info", symbol), snaps, build)
    return _respond(request, body, etag)


async def option_chain_v3(request: web.Request) -> web.StreamResponse:
    """``/api/option-chain-v3?type=Indices&symbol=NIFTY&expiry=09-Dec-2025`` (expiry: default the nearest)."""
    symbol, expiries = _symbol(request)
    chains = request.app[CONTEXT].chains
    raw = request.query.get("expiry", "").strip()
    if raw:
        try:
            expiry = parse_nse_date(raw)
        except (ValueError, KeyError):
            raise ApiError(400, "bad_parameter", "'expiry' must be a date as DD-Mon-YYYY, e.g. 09-Dec-2025") from None
    else:
        nearest = chains.nearest_expiry(symbol)
        if nearest is None:
            raise ApiError(404, "no_expiry", f"{symbol} has no unexpired expiry loaded")
        expiry = nearest
    snap = chains.snapshot(symbol, expiry)
    if snap is None:
        listed = ", ".join(nse_date(d) for d in expiries)
        raise ApiError(404, "unknown_expiry", f"{symbol} has no expiry {nse_date(expiry)}; expiries: {listed}")
    nearest = chains.nearest_expiry(symbol)
    listed_expiries = [e for e in expiries if nearest is None or e >= nearest]
    body, etag = request.app[NSE_CACHE].get(
        ("v3", symbol, expiry, *listed_expiries), [snap], lambda b: nse_chain(b, 0, listed_expiries, v3=True)
    )
    return _respond(request, body, etag)


def add_routes(routes: Routes) -> None:
    routes.app[NSE_CACHE] = NseCache()
    routes.get("/api/option-chain-indices", option_chain_indices)
    routes.get("/api/option-chain-contract-info", option_chain_contract_info)
    routes.get("/api/option-chain-v3", option_chain_v3)
