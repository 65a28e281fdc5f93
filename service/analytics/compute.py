"""Option analytics of one chain: forward, ATM, PCR, max pain, straddle, and per leg IV/greeks.

``analyse(chain, now, settings, calendar)`` reads a cache ``Chain`` (synchronously, on the event loop:
the owner's state cannot change under it) and returns an immutable ``ChainAnalytics``.
The math is ``service.analytics.greeks`` (Black-76, vectorized over the chain's legs).

Definitions (README "Option analytics"):

* Time to expiry: calendar time to the session close (15:30 IST, ``market.close_time``) on the
  expiry date, in years of 365 days.
* Forward: by put-call parity, F = K + (C − P)·e^{rT}, from the ``parity_strikes`` strikes
  where both legs have a last price and |C − P| is smallest (those nearest the forward),
  taking the median; without such a pair, the underlying's last price carried at the rate
  (S·e^{rT}); without that either, null. ``forward_source`` says which.
* ATM strike: the strike nearest the forward (the lower one on a tie); null without a forward,
  so never derived from a zero or missing price. ATM straddle: CE + PE last price there.
* PCR: Σ put OI / Σ call OI and the same for volume, over legs that reported one; null when
  nothing was reported or the call side sums to 0.
* Totals per side: Σ OI, Σ OI change (against the previous session, over legs with both) and
  Σ volume, in the feed's units (quantity); each null when no leg reported it.
* Max OI / max OI change per side: the strike with the largest call (put) OI — where call
  writers sit (resistance) and put writers sit (support) — and with the largest OI change
  (the biggest addition; the lowest strike on a tie); null without data.
* Max pain: the strike at which option holders' total intrinsic value at expiry,
  Σ OI_CE·max(S − K, 0) + OI_PE·max(K − S, 0), is smallest (lowest strike on a tie); null
  without open interest.
* Per leg: IV and greeks from the leg's last price (``iv_source`` "livechain"). Where we
  cannot try — the leg has no last price yet, or there is no forward — and Dhan's REST option
  chain gave its own, Dhan's five numbers are shown instead (``iv_source`` "dhan"). Where our
  attempt is undefined (a price below intrinsic value, expired) everything is null.

Published values are rounded (IV % to 4 decimals, delta 6, gamma 8, theta 4, vega 4; the
chain-level prices to 4): ``service.analytics.greeks`` itself is exact to ~1e-10, rounding is for the
wire. The result travels to read replicas through Redis (``to_json``/``from_json``) and is
spliced into the body by ``service.core.snapshot``; both ends derive the body's bytes from the same
values with the same code, so a replica's body is the primary's byte for byte.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson

from feeds.calendar import MarketCalendar
from feeds.model import IST
from service.core.cache import Chain, column_reader
from service.settings import AnalyticsSettings
from service.analytics.greeks import DAYS_PER_YEAR, black76, implied_vol

SECONDS_PER_YEAR = DAYS_PER_YEAR * 86_400
SOURCE_LIVECHAIN = "livechain"
SOURCE_DHAN = "dhan"

# Per leg, in the body and (as arrays, in this order) in Redis.
LEG_FIELDS = ("iv", "delta", "gamma", "theta", "vega", "iv_source")
# Per chain, in the body (``analytics_as_of`` is ``computed_at`` in IST).
CHAIN_FIELDS = (
    "forward", "forward_source", "atm_strike", "atm_straddle", "pcr_oi", "pcr_volume", "max_pain",
    "years_to_expiry", "totals", "max_oi", "max_oi_change", "analytics_as_of",
)  # fmt: skip
_LEG_DECIMALS = (4, 6, 8, 4, 4)  # iv (%), delta, gamma, theta, vega
_NAN = math.nan
_NO_LEG = SimpleNamespace(ltp=None, oi=None, prev_oi=None, volume=None, dhan=None)  # a strike without that side

LegValues = tuple[float | None, float | None, float | None, float | None, float | None, str | None]
LegKey = tuple[float, str]  # strike, "CE" | "PE"


@dataclass(frozen=True, slots=True)
class DhanGreeks:
    """Dhan's own numbers for a leg, from its REST option chain (reference §6.3)."""

    iv: float  # percent
    delta: float
    gamma: float
    theta: float
    vega: float


def expiry_instant(day: dt.date, calendar: MarketCalendar = MarketCalendar()) -> float:
    """UTC epoch seconds of the instant an expiry on ``day`` ends: the session close (15:30 IST
    unless ``market.close_time`` says otherwise), ``MarketCalendar.session_close``."""
    return calendar.session_close(day).timestamp()


def years_to_expiry(expiry: dt.date, now: float, calendar: MarketCalendar = MarketCalendar()) -> float:
    """Calendar years (365 days) from ``now`` to the end of ``expiry``; ≤ 0 once expired."""
    return (expiry_instant(expiry, calendar) - now) / SECONDS_PER_YEAR


def _ist(epoch_s: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch_s, IST)


def _leg_suffixes(legs: Mapping[LegKey, LegValues]) -> dict[LegKey, bytes]:
    """Per leg ``,"iv":…,"iv_source":…}``: what turns a leg's base object into the body's (see
    ``service.core.snapshot``). One ``orjson.dumps`` for all legs, then split between objects: no
    value can contain ``},{`` (numbers, null, and the two source names)."""
    if not legs:
        return {}
    raw = orjson.dumps([dict(zip(LEG_FIELDS, values)) for values in legs.values()])
    pieces = raw[2:-2].split(b"},{")
    return {key: b"," + piece + b"}" for key, piece in zip(legs, pieces, strict=True)}


_SOURCES = (SOURCE_LIVECHAIN, SOURCE_DHAN)


class LegTable(Mapping[LegKey, LegValues]):
    """Per (strike, side) the ``LEG_FIELDS`` values, kept as arrays (a chain's analytics for
    every leg would otherwise be a dict of tuples of boxed floats: ~0.4 KB a leg): ``strikes``
    float64, ``puts`` bool, ``numbers`` float64 (legs, 5), ``sources`` uint8 (index into
    ``_SOURCES``). Read as the mapping it stands for; ``items()``/``values()`` are built in bulk."""

    __slots__ = ("strikes", "puts", "numbers", "sources", "_index")

    def __init__(self, strikes: np.ndarray, puts: np.ndarray, numbers: np.ndarray, sources: np.ndarray) -> None:
        self.strikes, self.puts, self.numbers, self.sources = strikes, puts, numbers, sources
        self._index: dict[LegKey, int] | None = None

    @classmethod
    def of(cls, legs: Mapping[LegKey, Any]) -> LegTable | None:
        """``legs`` as a table; None when a value is not what the table keeps exactly (a float, a known source)."""
        strikes, puts, numbers, sources = [], [], [], []
        for (strike, side), values in legs.items():
            if (type(strike) is not float or side not in ("CE", "PE") or len(values) != len(LEG_FIELDS)
                    or values[-1] not in _SOURCES or not all(type(v) is float for v in values[:-1])):  # fmt: skip
                return None
            strikes.append(strike)
            puts.append(side == "PE")
            numbers.append(values[:-1])
            sources.append(_SOURCES.index(values[-1]))
        return cls(
            np.array(strikes, dtype=np.float64), np.array(puts, dtype=bool),
            np.array(numbers, dtype=np.float64).reshape(len(strikes), len(LEG_FIELDS) - 1),
            np.array(sources, dtype=np.uint8),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.strikes)

    def __iter__(self) -> Iterator[LegKey]:
        return iter(self.keys())

    def keys(self) -> list[LegKey]:  # type: ignore[override]
        return [(s, "PE" if p else "CE") for s, p in zip(self.strikes.tolist(), self.puts.tolist())]

    def values(self) -> list[LegValues]:  # type: ignore[override]
        return [(*row, _SOURCES[c]) for row, c in zip(self.numbers.tolist(), self.sources.tolist())]

    def items(self) -> list[tuple[LegKey, LegValues]]:  # type: ignore[override]
        return list(zip(self.keys(), self.values()))

    def __getitem__(self, key: LegKey) -> LegValues:
        index = self._index
        if index is None:
            index = self._index = {k: i for i, k in enumerate(self.keys())}
        i = index[key]
        return (*self.numbers[i].tolist(), _SOURCES[int(self.sources[i])])  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True


NULL_LEG_SUFFIX = b"," + orjson.dumps(dict.fromkeys(LEG_FIELDS))[1:]
NULL_HEAD: dict[str, Any] = dict.fromkeys(CHAIN_FIELDS)


class ChainAnalytics:
    """One chain's analytics as of ``computed_at``; immutable once built."""

    __slots__ = ("_json", "_suffixes", "chain", "computed_at", "head", "legs")

    def __init__(self, computed_at: float, chain: Mapping[str, Any], legs: Mapping[LegKey, LegValues]) -> None:
        """``chain``: the chain-level values by name (``CHAIN_FIELDS`` but ``analytics_as_of``);
        ``legs``: per (strike, side) the ``LEG_FIELDS`` values; legs left out are all null."""
        self.computed_at = computed_at
        self.chain = {name: chain.get(name) for name in CHAIN_FIELDS[:-1]}
        table = legs if isinstance(legs, LegTable) else LegTable.of(legs)
        self.legs: Mapping[LegKey, LegValues] = table if table is not None else dict(legs)
        self.head: dict[str, Any] = {**self.chain, "analytics_as_of": _ist(computed_at)}
        self._suffixes: dict[LegKey, bytes] | None = None  # built at the first render: nobody may ask
        self._json: bytes | None = None

    def leg_suffix(self, strike: float, side: str) -> bytes:
        suffixes = self._suffixes
        if suffixes is None:
            suffixes = self._suffixes = _leg_suffixes(self.legs)
        return suffixes.get((strike, side), NULL_LEG_SUFFIX)

    def suffixes(self) -> dict[LegKey, bytes]:
        """Every leg's ``leg_suffix`` (legs without analytics left out), without keeping them here:
        for the primary's render, whose body keeps them (``service.core.snapshot``)."""
        return self._suffixes if self._suffixes is not None else _leg_suffixes(self.legs)

    def to_json(self) -> bytes:
        """The Redis form: ``{"computed_at", "chain": {...}, "legs": {"25850.0:CE": [iv, …, iv_source]}}``."""
        raw = self._json
        if raw is None:
            doc = orjson.dumps(
                {
                    "computed_at": self.computed_at,
                    "chain": self.chain,
                    "legs": {f"{strike!r}:{side}": list(values) for (strike, side), values in self.legs.items()},
                }
            )
            raw = self._json = bytes(memoryview(doc))  # exactly sized: orjson's result keeps its growth buffer
        return raw

    @classmethod
    def from_json(cls, raw: bytes) -> ChainAnalytics:
        """Inverse of ``to_json``; raises ValueError/KeyError/TypeError on a malformed document."""
        doc = orjson.loads(raw)
        legs: dict[LegKey, LegValues] = {}
        for field, values in doc["legs"].items():
            strike, _, side = field.rpartition(":")
            if side not in ("CE", "PE") or not isinstance(values, list) or len(values) != len(LEG_FIELDS):
                raise ValueError(f"malformed analytics leg {field!r}")
            legs[(float(strike), side)] = tuple(values)  # type: ignore[assignment]
        chain = doc["chain"]
        if not isinstance(chain, dict):
            raise TypeError("analytics 'chain' must be an object")
        analytics = cls(float(doc["computed_at"]), chain, legs)
        analytics._json = bytes(raw)
        return analytics

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChainAnalytics):
            return NotImplemented
        return (self.computed_at, self.chain, self.legs) == (other.computed_at, other.chain, other.legs)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ChainAnalytics(computed_at={self.computed_at!r}, chain={self.chain!r}, legs={len(self.legs)})"


# --------------------------------------------------------------------------- computation


def _round(value: float | None, decimals: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, decimals)


def implied_forward(strikes: np.ndarray, calls: np.ndarray, puts: np.ndarray, growth: float, n: int) -> float | None:
    """Median of K + (C − P)·growth over the ``n`` strikes with both prices and the smallest |C − P|."""
    both = np.isfinite(calls) & np.isfinite(puts)
    if not both.any():
        return None
    diff = calls[both] - puts[both]
    nearest = np.argsort(np.abs(diff), kind="stable")[:n]
    forward = float(np.median(strikes[both][nearest] + diff[nearest] * growth))
    return forward if forward > 0 else None


def atm_strike(strikes: np.ndarray, forward: float | None) -> float | None:
    """The strike nearest ``forward`` (the lower on a tie); None without a usable forward."""
    if forward is None or not math.isfinite(forward) or forward <= 0 or strikes.size == 0:
        return None
    return float(strikes[int(np.argmin(np.abs(strikes - forward)))])


def put_call_ratio(calls: np.ndarray, puts: np.ndarray) -> float | None:
    """Σ puts / Σ calls over reported values (NaN = not reported); None when undefined."""
    if not (np.isfinite(calls).any() and np.isfinite(puts).any()):
        return None
    call_sum = float(np.nansum(calls))
    return None if call_sum <= 0 else float(np.nansum(puts)) / call_sum


def max_pain(strikes: np.ndarray, call_oi: np.ndarray, put_oi: np.ndarray) -> float | None:
    """The settlement strike minimising option holders' total intrinsic value; None without OI.

    ``strikes`` ascending. At S = K_j calls pay Σ_{i≤j} c_i (K_j − K_i) and puts
    Σ_{i≥j} p_i (K_i − K_j): prefix and suffix sums make it linear in the strike count.
    """
    c = np.nan_to_num(call_oi, nan=0.0)
    p = np.nan_to_num(put_oi, nan=0.0)
    if strikes.size == 0 or c.sum() + p.sum() <= 0:
        return None
    calls = strikes * np.cumsum(c) - np.cumsum(c * strikes)
    puts = np.cumsum((p * strikes)[::-1])[::-1] - strikes * np.cumsum(p[::-1])[::-1]
    return float(strikes[int(np.argmin(calls + puts))])


def _total(values: np.ndarray) -> int | None:
    """Σ of the reported (finite) values as an integer; None when none was reported."""
    finite = np.isfinite(values)
    return int(values[finite].sum()) if finite.any() else None


def strike_of_max(strikes: np.ndarray, values: np.ndarray) -> float | None:
    """The strike with the largest reported value (the lowest on a tie); None when none was reported."""
    finite = np.isfinite(values)
    if not finite.any():
        return None
    return float(strikes[int(np.argmax(np.where(finite, values, -np.inf)))])


def oi_summary(strikes: np.ndarray, oi: tuple[np.ndarray, np.ndarray], prev_oi: tuple[np.ndarray, np.ndarray],
               volume: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:  # fmt: skip
    """``totals``, ``max_oi`` and ``max_oi_change`` of a chain from its (CE, PE) columns."""
    totals: dict[str, Any] = {}
    max_oi: dict[str, Any] = {}
    max_change: dict[str, Any] = {}
    for side, o, p, v in zip(("ce", "pe"), oi, prev_oi, volume):
        change = o - p  # NaN unless both are known
        totals[side] = {"oi": _total(o), "oi_change": _total(change), "volume": _total(v)}
        max_oi[side] = strike_of_max(strikes, o)
        max_change[side] = strike_of_max(strikes, change)
    return {"totals": totals, "max_oi": max_oi, "max_oi_change": max_change}


def analyse(
    chain: Chain, now: float, params: AnalyticsSettings, calendar: MarketCalendar = MarketCalendar()
) -> ChainAnalytics:
    """The chain's analytics at the instant ``now`` (UTC epoch seconds), with the model's
    settings (``analytics.rate``, ``forward``, ``parity_strikes``); an expiry ends at
    ``calendar``'s session close."""
    rows = chain.rows
    strikes = np.fromiter((s for s, _, _ in rows), np.float64, len(rows))
    ce = [_NO_LEG if c is None else c for _, c, _ in rows]
    pe = [_NO_LEG if p is None else p for _, _, p in rows]
    ce_col, pe_col = column_reader(ce), column_reader(pe)
    ce_ltp, pe_ltp = ce_col("ltp"), pe_col("ltp")
    years = years_to_expiry(chain.expiry, now, calendar)
    live = years > 0
    growth = math.exp(params.rate * years) if live else 1.0  # e^{rT}: undiscounts a premium

    forward: float | None = None
    source: str | None = None
    if params.forward == "parity":
        forward = implied_forward(strikes, ce_ltp, pe_ltp, growth, params.parity_strikes)
        source = "parity" if forward is not None else None
    if forward is None:
        spot = chain.index.ltp
        if spot is not None and spot > 0:
            forward, source = spot * growth, "spot"
    atm = atm_strike(strikes, forward)
    straddle = None
    if atm is not None:
        i = int(np.searchsorted(strikes, atm))
        if math.isfinite(ce_ltp[i]) and math.isfinite(pe_ltp[i]):
            straddle = float(ce_ltp[i] + pe_ltp[i])
    ce_oi, pe_oi = ce_col("oi"), pe_col("oi")
    ce_vol, pe_vol = ce_col("volume"), pe_col("volume")
    head = {
        "forward": _round(forward, 4),
        "forward_source": source,
        "atm_strike": atm,
        "atm_straddle": _round(straddle, 4),
        "pcr_oi": _round(put_call_ratio(ce_oi, pe_oi), 4),
        "pcr_volume": _round(put_call_ratio(ce_vol, pe_vol), 4),
        "max_pain": max_pain(strikes, ce_oi, pe_oi),
        "years_to_expiry": round(max(years, 0.0), 8),
        **oi_summary(strikes, (ce_oi, pe_oi), (ce_col("prev_oi"), pe_col("prev_oi")), (ce_vol, pe_vol)),
    }

    # Both sides in one vectorized pass: calls then puts.
    legs = ce + pe
    prices = np.concatenate([ce_ltp, pe_ltp])
    strike2 = np.concatenate([strikes, strikes])
    is_call = np.concatenate([np.ones(len(rows), bool), np.zeros(len(rows), bool)])
    n = len(rows)
    ours = np.zeros(2 * n, bool)
    table: np.ndarray | None = None
    if forward is not None and live:
        iv = implied_vol(prices, forward, strike2, years, params.rate, is_call)
        ours = np.isfinite(iv)
        if ours.any():
            greeks = black76(forward, strike2[ours], years, params.rate, iv[ours], is_call[ours])
            columns = [np.round(iv[ours] * 100.0, _LEG_DECIMALS[0])]
            columns += [np.round(a, d) for a, d in zip(greeks[1:], _LEG_DECIMALS[1:])]
            table = np.column_stack(columns)
    numbers = np.full((2 * n, len(LEG_FIELDS) - 1), _NAN)
    sources = np.full(2 * n, 255, dtype=np.uint8)  # 255: no analytics for that leg
    if table is not None:
        numbers[ours] = table
        sources[ours] = 0  # SOURCE_LIVECHAIN
    if live:  # Dhan's numbers only where we could not even try: no last price yet, or no forward
        for j, leg in enumerate(legs):
            d: DhanGreeks | None = leg.dhan
            if d is not None and (forward is None or leg.ltp is None):
                dhan = (d.iv, d.delta, d.gamma, d.theta, d.vega)
                if not all(type(v) is float for v in dhan):  # the table keeps floats: keep the value as it is
                    return _as_dict(now, head, rows, numbers, sources, {j: (*dhan, SOURCE_DHAN)})
                numbers[j] = dhan
                sources[j] = 1  # SOURCE_DHAN
    order = np.arange(2 * n).reshape(2, n).T.ravel()  # in strike order, CE before PE
    order = order[sources[order] != 255]
    return ChainAnalytics(now, head, LegTable(strike2[order], order >= n, numbers[order], sources[order]))


def _as_dict(now: float, head: dict[str, Any], rows: list[Any], numbers: np.ndarray, sources: np.ndarray,
             others: dict[int, LegValues]) -> ChainAnalytics:  # fmt: skip
    """``analyse``'s result as a dict, for values the table cannot keep exactly."""
    n = len(rows)
    table = numbers.tolist()
    out: dict[LegKey, LegValues] = {}  # in strike order, CE before PE
    for i, (strike, _, _) in enumerate(rows):
        for j, side in ((i, "CE"), (n + i, "PE")):
            if j in others:
                out[(strike, side)] = others[j]
            elif sources[j] != 255:
                out[(strike, side)] = (*table[j], _SOURCES[sources[j]])  # type: ignore[assignment]
    return ChainAnalytics(now, head, out)
