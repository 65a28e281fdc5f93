"""Dhan's option-chain REST API (reference §6), sans-I/O: request bodies, responses, errors.

``parse_expiry_list`` and ``parse_option_chain`` take an HTTP status and body bytes and return
typed values or raise a ``RestError`` subclass (``classify``); ``encode_option_chain`` and
``encode_expiry_list`` write the same shapes (the simulator serves them, and tests prove
``parse(encode(x)) == x``). The HTTP client is ``feeds.dhan.rest``.

Quirks handled (§6.3, §6.5, §8.10):

* both shapes: 12 keys per side before API v2.5, 14 after (``average_price``, ``security_id``);
* strikes keyed ``"%.6f"`` (``"23100.000000"``), ascending; a missing ``ce`` or ``pe`` side;
* whole-number floats written without a decimal point (``134``), negative zero (``-0``);
* zeros for "no value" (out of hours every field is 0): a price of 0 is ``None`` like on the
  feed, an IV of 0 means no IV and no greeks, and a side whose prices and OI are all 0 carries
  no data at all (``None``), so it never overwrites anything as a real 0;
* errors in Dhan's Data-API style ``{"status": "failed", "data": {"805": "Too many requests"}}``
  on HTTP 200, 400, 429 or 500, and in the trading style ``{"errorType", "errorCode",
  "errorMessage"}``; a non-JSON body (an HTML 502 on a holiday) is classified by status.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from feeds.errors import (
    RestAuthError,
    RestError,
    RestRateLimited,
    RestRequestError,
    RestServerError,
)

EXPIRY_LIST_PATH = "/optionchain/expirylist"
OPTION_CHAIN_PATH = "/optionchain"

# Dhan's codes (Data API annexure and trading errors) by what a client should do about them.
RATE_LIMIT_CODES = frozenset({"805", "DH-904"})
AUTH_CODES = frozenset({"806", "807", "808", "809", "810", "DH-901", "DH-902", "DH-903"})
SERVER_CODES = frozenset({"800", "DH-908", "DH-909"})
_MAX_MESSAGE = 200  # characters of a server's error text kept in our errors


@dataclass(frozen=True, slots=True)
class Greeks:
    delta: float
    theta: float
    gamma: float
    vega: float


@dataclass(frozen=True, slots=True)
class OptionQuote:
    """One side of one strike. Prices ``None`` where Dhan sent 0; quantities in units."""

    last_price: float | None
    oi: int
    previous_close: float | None
    previous_oi: int
    previous_volume: int
    volume: int
    implied_volatility: float | None  # percent; None (and no greeks) when Dhan sent 0
    greeks: Greeks | None
    bid: float | None
    bid_qty: int
    ask: float | None
    ask_qty: int
    average_price: float | None = None  # API v2.5+
    security_id: int | None = None  # API v2.5+


@dataclass(frozen=True, slots=True)
class StrikeQuotes:
    strike: float
    ce: OptionQuote | None
    pe: OptionQuote | None


@dataclass(frozen=True, slots=True)
class OptionChain:
    underlying_ltp: float | None  # Dhan's float32-widened value, e.g. 23092.19921875
    strikes: tuple[StrikeQuotes, ...]  # ascending by strike


# --------------------------------------------------------------------------- requests


def expiry_list_request(security_id: int, segment: str) -> bytes:
    return orjson.dumps({"UnderlyingScrip": security_id, "UnderlyingSeg": segment})


def option_chain_request(security_id: int, segment: str, expiry: dt.date) -> bytes:
    # The portal marks UnderlyingSeg and Expiry optional; always send all three (§6.3).
    return orjson.dumps({"UnderlyingScrip": security_id, "UnderlyingSeg": segment, "Expiry": expiry.isoformat()})


# --------------------------------------------------------------------------- errors


def _error_of(code: str | None, message: str, status: int, retry_after_s: float = 0.0) -> RestError:
    text = f"{code} {message}".strip() if code else message
    text = f"HTTP {status}: {text[:_MAX_MESSAGE]}"
    if code in RATE_LIMIT_CODES or (code is None and status == 429):
        cls: type[RestError] = RestRateLimited
    elif code in AUTH_CODES or (code is None and status in (401, 403)):
        cls = RestAuthError
    elif code in SERVER_CODES or (code is None and (status >= 500 or status in (200, 408))):
        cls = RestServerError
    else:
        cls = RestRequestError
    return cls(text, code=code, status=status, retry_after_s=retry_after_s)


def classify(status: int, doc: Any, retry_after_s: float = 0.0) -> RestError | None:
    """The error a response stands for, or None when it is a success.

    ``doc`` is the parsed body (``None`` if it was not JSON). A Data-API error names its code
    as the one key of ``data``; a trading-style one in ``errorCode``.
    """
    if isinstance(doc, dict):
        if doc.get("status") == "success" and 200 <= status < 300:
            return None
        data = doc.get("data")
        if doc.get("status") in ("failed", "failure", "error") and isinstance(data, dict) and data:
            code, message = next(iter(data.items()))
            return _error_of(str(code), str(message), status, retry_after_s)
        if "errorCode" in doc or "errorType" in doc:
            code = doc.get("errorCode")
            message = " ".join(str(doc.get(k) or "") for k in ("errorType", "errorMessage")).strip()
            return _error_of(None if code is None else str(code), message, status, retry_after_s)
        if 200 <= status < 300:
            return RestServerError(f"HTTP {status}: unexpected response {_snippet(doc)}", status=status)
    if status >= 400 or doc is None:
        return _error_of(None, "response body is not a Dhan JSON document", status, retry_after_s)
    return RestServerError(f"HTTP {status}: unexpected response {_snippet(doc)}", status=status)


def _snippet(doc: Any) -> str:
    return orjson.dumps(doc)[:_MAX_MESSAGE].decode(errors="replace")


def _load(status: int, body: bytes, retry_after_s: float) -> Any:
    """The body's ``data`` when the response is a success; else raise what it stands for."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    error = classify(status, doc, retry_after_s)
    if error is not None:
        raise error
    if "data" not in doc:
        raise RestServerError(f"HTTP {status}: a success without data: {_snippet(doc)}", status=status)
    return doc["data"]


# --------------------------------------------------------------------------- responses


def parse_expiry_list(status: int, body: bytes, *, retry_after_s: float = 0.0) -> list[dt.date]:
    """``{"data": ["2025-01-30", …], "status": "success"}`` → ascending dates."""
    data = _load(status, body, retry_after_s)
    try:
        return sorted(dt.date.fromisoformat(d) for d in data)
    except (TypeError, ValueError) as exc:
        raise RestServerError(f"HTTP {status}: malformed expiry list: {exc}", status=status) from exc


def _price(value: Any) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"not a number: {value!r}")
    return float(value) if value > 0 else None


def _qty(value: Any) -> int:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise TypeError(f"not a quantity: {value!r}")
    return int(value)


def _num(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"not a number: {value!r}")
    return float(value) + 0.0  # -0 → 0.0


def parse_side(side: Mapping[str, Any]) -> OptionQuote | None:
    """One ``ce``/``pe`` object; None when it carries no data (all prices and OI zero)."""
    last, prev_close = _price(side["last_price"]), _price(side["previous_close_price"])
    oi, prev_oi = _qty(side["oi"]), _qty(side["previous_oi"])
    if last is None and prev_close is None and oi == 0 and prev_oi == 0:
        return None
    iv = _price(side["implied_volatility"])
    greeks = None
    if iv is not None:
        g = side["greeks"]
        greeks = Greeks(_num(g["delta"]), _num(g["theta"]), _num(g["gamma"]), _num(g["vega"]))
    sid = side.get("security_id")
    avg = side.get("average_price")
    return OptionQuote(
        last_price=last,
        oi=oi,
        previous_close=prev_close,
        previous_oi=prev_oi,
        previous_volume=_qty(side["previous_volume"]),
        volume=_qty(side["volume"]),
        implied_volatility=iv,
        greeks=greeks,
        bid=_price(side["top_bid_price"]),
        bid_qty=_qty(side["top_bid_quantity"]),
        ask=_price(side["top_ask_price"]),
        ask_qty=_qty(side["top_ask_quantity"]),
        average_price=None if avg is None else _price(avg),
        security_id=None if not sid else int(sid),
    )


def parse_option_chain(status: int, body: bytes, *, retry_after_s: float = 0.0) -> OptionChain:
    """``{"data": {"last_price", "oc": {"23100.000000": {"ce", "pe"}}}, "status": "success"}``."""
    data = _load(status, body, retry_after_s)
    try:
        ltp = _price(data["last_price"])
        strikes = []
        for key, row in (data["oc"] or {}).items():  # out of hours the chain may be empty
            ce, pe = row.get("ce"), row.get("pe")
            strikes.append(
                StrikeQuotes(
                    float(key), None if ce is None else parse_side(ce), None if pe is None else parse_side(pe)
                )
            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RestServerError(f"HTTP {status}: malformed option chain: {exc!r}", status=status) from exc
    strikes.sort(key=lambda s: s.strike)
    return OptionChain(ltp, tuple(strikes))


# --------------------------------------------------------------------------- encoding (the simulator's side)


def _wire(value: float | None) -> float | int:
    """As Dhan writes a number: 0 for none, whole numbers without a decimal point."""
    if value is None:
        return 0
    return int(value) if float(value).is_integer() else value


def encode_side(q: OptionQuote, *, v25: bool = True) -> dict[str, Any]:
    """One side in Dhan's alphabetical key order; ``v25`` adds average_price and security_id."""
    g = q.greeks
    out: dict[str, Any] = {}
    if v25:
        out["average_price"] = _wire(q.average_price)
    out["greeks"] = {
        "delta": _wire(g.delta if g else 0.0),
        "theta": _wire(g.theta if g else 0.0),
        "gamma": _wire(g.gamma if g else 0.0),
        "vega": _wire(g.vega if g else 0.0),
    }
    out["implied_volatility"] = _wire(q.implied_volatility)
    out["last_price"] = _wire(q.last_price)
    out["oi"] = q.oi
    out["previous_close_price"] = _wire(q.previous_close)
    out["previous_oi"] = q.previous_oi
    out["previous_volume"] = q.previous_volume
    if v25:
        out["security_id"] = q.security_id or 0
    out["top_ask_price"] = _wire(q.ask)
    out["top_ask_quantity"] = q.ask_qty
    out["top_bid_price"] = _wire(q.bid)
    out["top_bid_quantity"] = q.bid_qty
    out["volume"] = q.volume
    return out


def encode_option_chain(chain: OptionChain, *, v25: bool = True) -> bytes:
    oc: dict[str, Any] = {}
    for row in sorted(chain.strikes, key=lambda s: s.strike):
        sides: dict[str, Any] = {}
        if row.ce is not None:
            sides["ce"] = encode_side(row.ce, v25=v25)
        if row.pe is not None:
            sides["pe"] = encode_side(row.pe, v25=v25)
        oc[f"{row.strike:.6f}"] = sides
    return orjson.dumps({"data": {"last_price": _wire(chain.underlying_ltp), "oc": oc}, "status": "success"})


def encode_expiry_list(expiries: list[dt.date]) -> bytes:
    return orjson.dumps({"data": [e.isoformat() for e in sorted(expiries)], "status": "success"})


def encode_data_error(code: str, message: str) -> bytes:
    """``{"status": "failed", "data": {"805": "Too many requests"}}`` (§6.5)."""
    return orjson.dumps({"status": "failed", "data": {code: message}})


def encode_trading_error(error_type: str, code: str, message: str) -> bytes:
    return orjson.dumps({"errorType": error_type, "errorCode": code, "errorMessage": message})
