"""Domain types shared by every feed: instrument keys, the option-chain skeleton and ticks.

Wire packets (``feeds.dhan.packets``, ``feeds.kite.packets``) are normalised into these by the broker adapter:
true UTC instants, prices rounded to the instrument's tick, keyed by ``(segment, security_id)``.
Tick types are ``NamedTuple``s: immutable, and the cheapest immutable object Python builds.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeAlias

import numpy as np

IST = dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")


class Segment(IntEnum):
    """Exchange segment; the value is Dhan's numeric code in binary headers (reference §3)."""

    IDX_I = 0
    NSE_EQ = 1
    NSE_FNO = 2
    NSE_CURRENCY = 3
    BSE_EQ = 4
    MCX_COMM = 5
    BSE_CURRENCY = 7
    BSE_FNO = 8


class OptionType(StrEnum):
    CE = "CE"
    PE = "PE"


# Security ids are unique only per segment, so everything is keyed by the pair.
InstrumentKey: TypeAlias = tuple[int, int]


# --------------------------------------------------------------------------- skeleton


@dataclass(frozen=True, slots=True)
class OptionContract:
    key: InstrumentKey
    underlying: str
    expiry: dt.date
    strike: float
    option_type: OptionType
    lot_size: int
    tick_size: float

    @property
    def security_id(self) -> int:
        return self.key[1]


@dataclass(frozen=True, slots=True)
class StrikeRow:
    strike: float
    ce: OptionContract | None
    pe: OptionContract | None


@dataclass(frozen=True, slots=True)
class ExpiryChain:
    expiry: dt.date
    lot_size: int
    strikes: tuple[StrikeRow, ...]  # ascending by strike

    def contracts(self) -> list[OptionContract]:
        return [c for row in self.strikes for c in (row.ce, row.pe) if c is not None]


@dataclass(frozen=True, slots=True)
class UnderlyingChain:
    symbol: str
    key: InstrumentKey  # the underlying index, e.g. (IDX_I, 13) for NIFTY
    tick_size: float
    expiries: tuple[ExpiryChain, ...]  # ascending by expiry

    def expiry(self, when: dt.date) -> ExpiryChain | None:
        for chain in self.expiries:
            if chain.expiry == when:
                return chain
        return None


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What the instrument loader saw: rows read, used, ignored and malformed (with samples)."""

    rows_total: int = 0
    rows_used: int = 0
    rows_ignored: int = 0
    rows_malformed: int = 0
    malformed_samples: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChainSkeleton:
    underlyings: dict[str, UnderlyingChain]
    report: LoadReport = field(default_factory=LoadReport)

    def limit_expiries(self, max_expiries: int, today: dt.date | None = None) -> ChainSkeleton:
        """The same skeleton keeping only the nearest ``max_expiries`` unexpired expiries."""
        out = {}
        for sym, chain in self.underlyings.items():
            live = [e for e in chain.expiries if today is None or e.expiry >= today]
            out[sym] = UnderlyingChain(chain.symbol, chain.key, chain.tick_size, tuple(live[:max_expiries]))
        return ChainSkeleton(out, self.report)

    def instrument_count(self) -> int:
        return sum(1 + sum(len(e.contracts()) for e in u.expiries) for u in self.underlyings.values())


# --------------------------------------------------------------------------- ticks
# ``received_at`` is the local receive time (UTC epoch seconds, float); ``ltt`` is the
# exchange's last-trade instant as a true UTC epoch second (int). ``None`` = not sent.


class TradeTick(NamedTuple):
    """Last trade only (Dhan Ticker)."""

    key: InstrumentKey
    ltp: float | None
    ltt: int | None
    received_at: float


class QuoteTick(NamedTuple):
    """Trade, volume and day OHLC without depth (Dhan Quote; Kite quote and index packets,
    which leave the fields they do not carry ``None``)."""

    key: InstrumentKey
    ltp: float | None
    ltq: int
    ltt: int | None
    atp: float | None
    volume: int
    total_sell_qty: int
    total_buy_qty: int
    open: float | None
    close: float | None
    high: float | None
    low: float | None
    received_at: float


class FullTick(NamedTuple):
    """Quote plus open interest and level-1 depth (Dhan Full)."""

    key: InstrumentKey
    ltp: float | None
    ltq: int
    ltt: int | None
    atp: float | None
    volume: int
    total_sell_qty: int
    total_buy_qty: int
    oi: int
    open: float | None
    close: float | None
    high: float | None
    low: float | None
    bid: float | None
    bid_qty: int | None
    ask: float | None
    ask_qty: int | None
    received_at: float


class OpenInterestTick(NamedTuple):
    key: InstrumentKey
    oi: int
    received_at: float


class PrevCloseTick(NamedTuple):
    key: InstrumentKey
    prev_close: float | None
    prev_oi: int | None  # None: the broker does not send it (Kite)
    received_at: float


Tick: TypeAlias = TradeTick | QuoteTick | FullTick | OpenInterestTick | PrevCloseTick


# --------------------------------------------------------------------------- batches
# A broker adapter that decodes many Full packets at once (Dhan's batch path, feeds.dhan.batch)
# hands them over column by column instead of one FullTick per packet: numpy columns that the
# cache assigns into its own columns (service.core.cache) with no Python object per value.


def pack_key(key: InstrumentKey) -> int:
    """One int per instrument key (segment in the high 32 bits), the key of batch columns."""
    return (key[0] << 32) | key[1]


def unpack_key(packed: int) -> InstrumentKey:
    return (packed >> 32, packed & 0xFFFF_FFFF)


# The columns of a FullTickBatch, in order: FullTick's fields without key, total_sell_qty,
# total_buy_qty (the cache keeps neither; the batch holds them apart) and received_at.
FULL_BATCH_COLUMNS = (
    "ltp", "ltq", "ltt", "atp", "volume", "oi", "open", "close", "high", "low", "bid", "bid_qty", "ask", "ask_qty",
)  # fmt: skip
# The same columns as the batch keeps them: prices as float64 (NaN: not sent), quantities and
# times as int64 (MISSING_INT: not sent).
BATCH_PRICES = ("ltp", "atp", "open", "close", "high", "low", "bid", "ask")
BATCH_INTS = ("ltq", "ltt", "volume", "oi", "bid_qty", "ask_qty")
MISSING_INT = -(2**63)  # an int64 no feed sends: "not sent" in int64 columns
_PRICE_AT = [FULL_BATCH_COLUMNS.index(name) for name in BATCH_PRICES]
_INT_AT = [FULL_BATCH_COLUMNS.index(name) for name in BATCH_INTS]


def _int_column(values: Sequence[Any]) -> Any:
    return np.array([MISSING_INT if v is None else v for v in values], dtype=np.int64)


class FullTickBatch:
    """Full ticks received together: tick i is column i of ``prices`` and ``ints``, all received at ``received_at``.

    ``keys`` holds ``pack_key`` of each tick's instrument (int64 array); ``prices`` is a float64
    array of shape (8, n) in ``BATCH_PRICES`` order, NaN where not sent; ``ints`` an int64 array
    (6, n) in ``BATCH_INTS`` order, ``MISSING_INT`` where not sent. ``ticks()`` turns the batch
    into the FullTicks it stands for (Python floats and ints, ``None`` for not sent), for sinks
    that want ticks. The constructor also takes ``columns`` as Python lists in
    ``FULL_BATCH_COLUMNS`` order (``None`` for not sent); ``from_arrays`` takes the arrays as they are.
    """

    __slots__ = ("keys", "prices", "ints", "total_sell_qty", "total_buy_qty", "received_at")

    def __init__(
        self,
        keys: Sequence[int],
        columns: Sequence[Sequence[Any]],
        total_sell_qty: Sequence[int],
        total_buy_qty: Sequence[int],
        received_at: float,
    ) -> None:
        if len(columns) != len(FULL_BATCH_COLUMNS) or any(len(c) != len(keys) for c in columns):
            raise ValueError(f"a FullTickBatch needs {len(FULL_BATCH_COLUMNS)} columns of {len(keys)} values")
        self.keys = np.asarray(keys, dtype=np.int64)
        self.prices = np.array([list(columns[i]) for i in _PRICE_AT], dtype=np.float64).reshape(8, len(keys))
        self.ints = np.array([_int_column(columns[i]) for i in _INT_AT], dtype=np.int64).reshape(6, len(keys))
        self.total_sell_qty = total_sell_qty
        self.total_buy_qty = total_buy_qty
        self.received_at = received_at

    @classmethod
    def from_arrays(cls, keys: Any, prices: Any, ints: Any, total_sell_qty: Any, total_buy_qty: Any,
                    received_at: float) -> FullTickBatch:  # fmt: skip
        """A batch over the decoder's arrays (no copy): see the class docstring for their shapes."""
        if prices.shape != (len(BATCH_PRICES), len(keys)) or ints.shape != (len(BATCH_INTS), len(keys)):
            raise ValueError(f"a FullTickBatch needs (8, {len(keys)}) prices and (6, {len(keys)}) ints")
        batch = cls.__new__(cls)
        batch.keys, batch.prices, batch.ints = keys, prices, ints
        batch.total_sell_qty, batch.total_buy_qty, batch.received_at = total_sell_qty, total_buy_qty, received_at
        return batch

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def columns(self) -> list[list[Any]]:
        """The columns as Python lists in ``FULL_BATCH_COLUMNS`` order, ``None`` for not sent."""
        prices = self.prices.astype(object)
        prices[np.isnan(self.prices)] = None
        ints = self.ints.astype(object)
        ints[self.ints == MISSING_INT] = None
        ltp, atp, o, c, h, lo, bid, ask = prices.tolist()
        ltq, ltt, volume, oi, bid_qty, ask_qty = ints.tolist()
        return [ltp, ltq, ltt, atp, volume, oi, o, c, h, lo, bid, bid_qty, ask, ask_qty]

    def ticks(self) -> list[FullTick]:
        """The FullTicks this batch stands for, in order."""
        (ltp, ltq, ltt, atp, volume, oi, o, c, h, lo, bid, bid_qty, ask, ask_qty) = self.columns
        at = self.received_at
        sell = list(self.total_sell_qty)
        buy = list(self.total_buy_qty)
        return [
            FullTick(unpack_key(int(k)), ltp[i], ltq[i], ltt[i], atp[i], volume[i], int(sell[i]), int(buy[i]), oi[i],
                     o[i], c[i], h[i], lo[i], bid[i], bid_qty[i], ask[i], ask_qty[i], at)
            for i, k in enumerate(self.keys.tolist())
        ]  # fmt: skip
