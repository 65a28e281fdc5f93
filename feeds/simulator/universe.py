"""The simulator's instrument universe: index underlyings and their option contracts.

Everything is derived from ``(config, today)`` alone, so the same inputs always give the same
contracts and the same security ids: a test can name an id and the simulator will know it.
Ids are handed out by a counter from ``FIRST_OPTION_ID`` in a stable order (underlying in
config order, expiry ascending, strike ascending, CE before PE).
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from feeds.model import (
    ChainSkeleton,
    ExpiryChain,
    InstrumentKey,
    OptionContract,
    OptionType,
    Segment,
    StrikeRow,
    UnderlyingChain,
)

if TYPE_CHECKING:
    from feeds.simulator.config import SimulatorConfig

FIRST_OPTION_ID = 35_000
OPTION_TICK = 0.05
INDEX_TICK = 0.05
_TUESDAY = 1  # date.weekday()


@dataclass(frozen=True, slots=True)
class UnderlyingSpec:
    """One index underlying; ``spot`` is where the day starts and where strikes are centred."""

    symbol: str
    security_id: int  # in IDX_I (reference §7.6)
    spot: float
    strike_step: int
    lot_size: int
    weekly: bool  # weekly expiries every Tuesday, else monthly only (last Tuesday)
    display_name: str = ""

    def __post_init__(self) -> None:
        if self.spot <= 0:
            raise ValueError(f"spot must be positive, got {self.spot}")
        if self.strike_step <= 0:
            raise ValueError(f"strike_step must be positive, got {self.strike_step}")
        if self.lot_size <= 0:
            raise ValueError(f"lot_size must be positive, got {self.lot_size}")

    @property
    def key(self) -> InstrumentKey:
        return (int(Segment.IDX_I), self.security_id)


# Real IDX_I ids; lot sizes as NSE set them for 2025-26.
DEFAULT_SPECS: Mapping[str, UnderlyingSpec] = MappingProxyType(
    {
        "NIFTY": UnderlyingSpec("NIFTY", 13, 25_000.0, 50, 75, weekly=True, display_name="Nifty 50"),
        "BANKNIFTY": UnderlyingSpec("BANKNIFTY", 25, 54_000.0, 100, 35, weekly=False, display_name="Nifty Bank"),
        "FINNIFTY": UnderlyingSpec("FINNIFTY", 27, 25_300.0, 50, 65, weekly=False, display_name="Nifty Fin Service"),
    }
)


def last_tuesday(year: int, month: int) -> dt.date:
    last = dt.date(year, month, calendar.monthrange(year, month)[1])
    return last - dt.timedelta(days=(last.weekday() - _TUESDAY) % 7)


def is_monthly_expiry(day: dt.date) -> bool:
    """True for the last Tuesday of a month (scrip master EXPIRY_FLAG ``M``, else ``W``)."""
    return day == last_tuesday(day.year, day.month)


def _tuesdays(today: dt.date) -> Iterator[dt.date]:
    day = today + dt.timedelta(days=(_TUESDAY - today.weekday()) % 7)
    while True:
        yield day
        day += dt.timedelta(days=7)


def _month_ends(today: dt.date) -> Iterator[dt.date]:
    year, month = today.year, today.month
    while True:
        day = last_tuesday(year, month)
        if day >= today:
            yield day
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def expiries_for(spec: UnderlyingSpec, today: dt.date, count: int) -> tuple[dt.date, ...]:
    """The next ``count`` expiries on or after ``today`` (an expiry day is live until 15:30).

    Holidays are ignored: a Tuesday expiry that falls on an NSE holiday is not moved.
    """
    source = _tuesdays(today) if spec.weekly else _month_ends(today)
    return tuple(next(source) for _ in range(count))


@dataclass(frozen=True, slots=True)
class Universe:
    """The instruments the simulator knows: a chain skeleton plus flat lookups by key."""

    today: dt.date
    specs: tuple[UnderlyingSpec, ...]
    skeleton: ChainSkeleton
    contracts: Mapping[InstrumentKey, OptionContract]  # options only, in id order
    indices: Mapping[InstrumentKey, UnderlyingSpec]

    def __contains__(self, key: object) -> bool:
        return key in self.contracts or key in self.indices

    def __len__(self) -> int:
        return len(self.contracts) + len(self.indices)

    def keys(self) -> list[InstrumentKey]:
        """Every known key: indices first, then options in id order."""
        return [*self.indices, *self.contracts]

    def spec(self, symbol: str) -> UnderlyingSpec:
        for spec in self.specs:
            if spec.symbol == symbol:
                return spec
        raise KeyError(symbol)


def build_universe(config: SimulatorConfig, today: dt.date) -> Universe:
    """Deterministic contracts for ``config.underlyings``: same config and day, same ids."""
    next_id = FIRST_OPTION_ID
    specs = tuple(DEFAULT_SPECS[symbol] for symbol in config.underlyings)
    chains: dict[str, UnderlyingChain] = {}
    contracts: dict[InstrumentKey, OptionContract] = {}
    for spec in specs:
        atm = round(spec.spot / spec.strike_step) * spec.strike_step
        strikes = [float(atm + i * spec.strike_step) for i in range(-config.strikes_per_side, config.strikes_per_side + 1)]
        expiry_chains = []
        for expiry in expiries_for(spec, today, config.expiries):
            rows = []
            for strike in strikes:
                pair = []
                for option_type in (OptionType.CE, OptionType.PE):
                    key = (int(Segment.NSE_FNO), next_id)
                    next_id += 1
                    contract = OptionContract(key, spec.symbol, expiry, strike, option_type, spec.lot_size, OPTION_TICK)
                    contracts[key] = contract
                    pair.append(contract)
                rows.append(StrikeRow(strike, pair[0], pair[1]))
            expiry_chains.append(ExpiryChain(expiry, spec.lot_size, tuple(rows)))
        chains[spec.symbol] = UnderlyingChain(spec.symbol, spec.key, INDEX_TICK, tuple(expiry_chains))
    return Universe(
        today=today,
        specs=specs,
        skeleton=ChainSkeleton(chains),
        contracts=MappingProxyType(contracts),
        indices=MappingProxyType({spec.key: spec for spec in specs}),
    )
