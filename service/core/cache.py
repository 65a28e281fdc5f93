"""The option-chain cache: the process's only mutable market state, with one owner.

Only ``Ingest`` calls ``apply`` and ``mark_stale``; both are synchronous and run on the
event loop, so no reader ever sees a half-applied batch and no lock is needed. Readers get
immutable ``ChainSnapshot``s (see ``service.core.snapshot``), rendered at most once per version.
Two more writers run on the same loop, also through synchronous methods: ``seed`` (Dhan's
REST option chain, ``service.analytics.rest_seed``) and ``set_analytics`` (``service.analytics.runner``).

Versions come from one counter that starts at the (injected) clock in microseconds and grows
by one per applied batch, so a chain's ``version`` grows whenever it changes and keeps growing
across restarts.

The cache also owns the chain *layout* (which chains exist, their strikes and legs). Anything
that derives from the layout (the Redis mirror's keys and catalog, the analytics runner's
bookkeeping) follows ``layout_epoch``, which grows whenever the layout changes (the expiry
roll), instead of keeping a copy of its own that a roll could leave behind.

Leg state lives in columns the cache owns (``_Columns``: float64 prices and times with NaN for
never received, int64 quantities with ``MISSING_INT``), one row per leg, so a leg costs no boxed
value per field and a batch of Full ticks is a few numpy assignments (``apply_batch``). ``Leg``
keeps the identity (key, contract, chains, row) and flags, and reads its fields as properties
(exactly the Python values the ticks carried: None, int, float); ``leg_rows`` reads many at once.

Every leg that changes is added to ``dirty`` (one ``set.add`` per tick), which the Redis
mirror drains with ``take_dirty`` (``keep_changes = False`` when there is no mirror). The set holds legs, not values, so it is bounded by the
number of instruments and coalesces by construction: the mirror reads each leg's state at
flush time, so the latest value wins however many ticks came in between.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from feeds.clock import SYSTEM_CLOCK, Clock
from feeds.model import (
    BATCH_INTS,
    BATCH_PRICES,
    ChainSkeleton,
    FullTick,
    MISSING_INT,
    FullTickBatch,
    InstrumentKey,
    OpenInterestTick,
    OptionContract,
    PrevCloseTick,
    QuoteTick,
    Tick,
    TradeTick,
    pack_key,
)


class LegSeed(NamedTuple):
    """What Dhan's REST option chain says about one leg; ``None``: it says nothing."""

    key: InstrumentKey
    oi: int | None
    prev_close: float | None
    prev_oi: int | None
    dhan: Any  # service.analytics.compute.DhanGreeks | None


# The leg state the cache keeps in columns (``_Columns``), one row per leg: float fields as float64
# (NaN: never received), int fields as int64 (``MISSING_INT``: never received).
FLOAT_FIELDS = ("ltp", "atp", "open", "close", "high", "low", "bid", "ask", "prev_close", "updated_at")
INT_FIELDS = ("ltq", "ltt", "volume", "oi", "bid_qty", "ask_qty", "prev_oi")
# ``ChainCache.leg_rows``' tuple, in order (the last, ``stale``, is a Leg flag, not a column).
ROW_FIELDS = (
    "ltp", "ltq", "ltt", "atp", "volume", "oi", "prev_close", "prev_oi", "open", "high", "low", "close", "bid",
    "bid_qty", "ask", "ask_qty", "updated_at", "stale",
)  # fmt: skip
_ROW_F = [ROW_FIELDS.index(name) for name in FLOAT_FIELDS]
_ROW_I = [ROW_FIELDS.index(name) for name in INT_FIELDS]
_NAN = float("nan")
_MISSING = np.int64(MISSING_INT)
(_LTP, _ATP, _OPEN, _CLOSE, _HIGH, _LOW, _BID, _ASK, _PREV_CLOSE, _UPDATED_AT) = range(len(FLOAT_FIELDS))
(_LTQ, _LTT, _VOLUME, _OI, _BID_QTY, _ASK_QTY, _PREV_OI) = range(len(INT_FIELDS))


class _Columns:
    """The legs' market state, one row per leg: ``f`` float64 (len(FLOAT_FIELDS), capacity), ``i``
    int64 (len(INT_FIELDS), capacity), plus one memoryview per field (``fv``/``iv``) for reads
    and writes of one value without a numpy scalar. Rows of removed legs are reused."""

    __slots__ = ("f", "i", "fv", "iv", "size", "free")

    def __init__(self, capacity: int = 0) -> None:
        self.f = np.full((len(FLOAT_FIELDS), capacity), np.nan)
        self.i = np.full((len(INT_FIELDS), capacity), MISSING_INT, dtype=np.int64)
        self.size = 0
        self.free: list[int] = []
        self._views()

    def _views(self) -> None:
        self.fv = [memoryview(row) for row in self.f]
        self.iv = [memoryview(row) for row in self.i]

    def take(self) -> int:
        """A row with nothing received."""
        if self.free:
            row = self.free.pop()
            self.f[:, row] = np.nan
            self.i[:, row] = MISSING_INT
            return row
        if self.size == self.f.shape[1]:
            grown = max(64, 2 * self.size)
            f = np.full((len(FLOAT_FIELDS), grown), np.nan)
            i = np.full((len(INT_FIELDS), grown), MISSING_INT, dtype=np.int64)
            f[:, : self.size] = self.f
            i[:, : self.size] = self.i
            self.f, self.i = f, i
            self._views()
        self.size += 1
        return self.size - 1

    def detach(self, row: int) -> _Columns:
        """A one-row copy of ``row`` (for a leg leaving the cache: it keeps its last state), freeing ``row``."""
        alone = _Columns(1)
        alone.f[:, 0] = self.f[:, row]
        alone.i[:, 0] = self.i[:, row]
        alone.size = 1
        self.free.append(row)
        return alone


def _float_field(k: int) -> property:
    def get(leg: Leg) -> float | None:
        v = leg._c.fv[k][leg.row]
        return None if v != v else v

    return property(get, doc=f"{FLOAT_FIELDS[k]}: None when never received")


def _int_field(k: int) -> property:
    def get(leg: Leg) -> int | None:
        v = leg._c.iv[k][leg.row]
        return None if v == MISSING_INT else v

    return property(get, doc=f"{INT_FIELDS[k]}: None when never received")


class Leg:
    """One instrument: its identity, flags, and its row in the cache's columns.

    The market fields (``FLOAT_FIELDS``, ``INT_FIELDS``) are read-only properties over the
    cache's columns; ``None`` means never received. Only ``ChainCache`` writes them. A leg removed
    from the cache (the roll) keeps the last state it had.
    """

    __slots__ = ("key", "contract", "chains", "row", "_c", "seen", "stale", "doc", "dhan")

    def __init__(self, key: InstrumentKey, contract: OptionContract | None, columns: _Columns | None = None) -> None:
        self.key = key
        self.contract = contract
        self.chains: tuple[Chain, ...] = ()
        self._c = columns if columns is not None else _Columns(1)
        self.row = self._c.take()
        self.seen = False
        self.stale = False
        self.doc: bytes | None = None  # the leg's JSON object (service.core.snapshot), dropped on every change
        self.dhan: Any = None  # Dhan's own IV and greeks from its REST chain (service.analytics.compute.DhanGreeks)

    ltp = _float_field(_LTP)
    atp = _float_field(_ATP)
    open = _float_field(_OPEN)
    close = _float_field(_CLOSE)
    high = _float_field(_HIGH)
    low = _float_field(_LOW)
    bid = _float_field(_BID)
    ask = _float_field(_ASK)
    prev_close = _float_field(_PREV_CLOSE)
    updated_at = _float_field(_UPDATED_AT)
    ltq = _int_field(_LTQ)
    ltt = _int_field(_LTT)
    volume = _int_field(_VOLUME)
    oi = _int_field(_OI)
    bid_qty = _int_field(_BID_QTY)
    ask_qty = _int_field(_ASK_QTY)
    prev_oi = _int_field(_PREV_OI)


def column_reader(legs: Sequence[Any]) -> Callable[[str], np.ndarray]:
    """For columns of one field over ``legs`` (``Leg``s, or stand-ins such as ``None`` for a side
    a strike lacks): ``read(name)`` is a float64 array, NaN where never received or not a Leg.
    One gather per field instead of one attribute read per leg (``service.analytics.compute``)."""
    real = [j for j, leg in enumerate(legs) if type(leg) is Leg]
    stores = {id(legs[j]._c) for j in real}
    n = len(legs)
    if len(stores) > 1:  # legs the roll removed keep their own columns: read them one by one
        def read_each(name: str) -> np.ndarray:
            values = [getattr(leg, name) if type(leg) is Leg else None for leg in legs]
            return np.array([_NAN if v is None else v for v in values], dtype=np.float64)

        return read_each
    where = np.array(real, dtype=np.int64)
    rows = np.array([legs[j].row for j in real], dtype=np.int64)
    columns = legs[real[0]]._c if real else None

    def read(name: str) -> np.ndarray:
        out = np.full(n, np.nan)
        if columns is None:
            return out
        if name in _FLOAT_AT:
            out[where] = columns.f[_FLOAT_AT[name], rows]
        else:
            values = columns.i[_INT_AT[name], rows]
            out[where] = np.where(values == _MISSING, np.nan, values)
        return out

    return read


_FLOAT_AT = {name: k for k, name in enumerate(FLOAT_FIELDS)}
_INT_AT = {name: k for k, name in enumerate(INT_FIELDS)}


def leg_store(legs: Sequence[Leg]) -> tuple[_Columns, np.ndarray] | None:
    """Where the state of ``legs`` is, for bulk reads (``service.core.snapshot``): the column store
    they all share (its ``f``, float64 ``(len(FLOAT_FIELDS), capacity)`` with NaN for never received,
    and ``i``, int64 ``(len(INT_FIELDS), capacity)`` with ``MISSING_INT``; read only) and each leg's
    column in it. None when they do not all share one (legs the roll removed keep their own: read
    them with ``ChainCache.leg_rows``)."""
    if not legs:
        return None
    columns = legs[0]._c
    if not all(leg._c is columns for leg in legs):
        return None
    return columns, np.array([leg.row for leg in legs], np.intp)


def store_of(leg: Leg) -> _Columns:
    """The column store holding ``leg``'s state (``leg_store``): the cache's, until the roll
    removes the leg's chain (then all of that chain's legs get their own, together)."""
    return leg._c


class Chain:
    """One underlying/expiry: its strikes, its index leg, and its version."""

    __slots__ = (
        "underlying", "expiry", "lot_size", "index", "rows", "version", "updated_at", "stale_legs", "rendered",
        "analytics",
    )

    def __init__(self, underlying: str, expiry: dt.date, lot_size: int, index: Leg) -> None:
        self.underlying = underlying
        self.expiry = expiry
        self.lot_size = lot_size
        self.index = index
        self.rows: list[tuple[float, Leg | None, Leg | None]] = []
        self.version = 0
        self.updated_at: float | None = None
        self.stale_legs = 0
        self.rendered: Any = None  # the last ChainSnapshot, owned by service.core.snapshot
        self.analytics: Any = None  # the last ChainAnalytics, computed by service.analytics.runner


def _ignore(leg: Leg) -> None:
    pass


def _rows_one_by_one(columns: _Columns, legs: Sequence[Leg]) -> list[tuple[Any, ...]]:
    """``ChainCache.leg_rows`` through the memoryviews, leg by leg (NaN and MISSING_INT read None)."""
    ltp_, atp_, open_, close_, high_, low_, bid_, ask_, prev_close_, updated_ = columns.fv
    ltq_, ltt_, volume_, oi_, bid_qty_, ask_qty_, prev_oi_ = columns.iv
    M = MISSING_INT
    out = []
    for leg in legs:
        r = leg.row
        ltp, ltq, ltt, atp, volume, oi = ltp_[r], ltq_[r], ltt_[r], atp_[r], volume_[r], oi_[r]
        pc, po, o, h, lo, c = prev_close_[r], prev_oi_[r], open_[r], high_[r], low_[r], close_[r]
        bid, bq, ask, aq, at = bid_[r], bid_qty_[r], ask_[r], ask_qty_[r], updated_[r]
        out.append((
            ltp if ltp == ltp else None, ltq if ltq != M else None, ltt if ltt != M else None,
            atp if atp == atp else None, volume if volume != M else None, oi if oi != M else None,
            pc if pc == pc else None, po if po != M else None, o if o == o else None, h if h == h else None,
            lo if lo == lo else None, c if c == c else None, bid if bid == bid else None, bq if bq != M else None,
            ask if ask == ask else None, aq if aq != M else None, at if at == at else None, leg.stale,
        ))  # fmt: skip
    return out


class _Slots(NamedTuple):
    """``ChainCache.apply_batch``'s lookup tables for one layout."""

    keys: Any  # int64 packed keys (feeds.model.pack_key), sorted
    legs: Any  # object array: the leg of each key
    rows: Any  # int64: the leg's row in the columns
    chain_of: Any  # int64: the number of the leg's only chain in ``chains``, -1 for several or none
    chains: list[Chain]


class ChainCache:
    def __init__(self, skeleton: ChainSkeleton, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._monotonic = clock.monotonic
        self._version = int(clock.time() * 1_000_000)
        self.layout_epoch = 0  # grows whenever chains are added or removed (reconfigure)
        # Whose feed fills the cache ("dhan", "kite"): named in /options/underlyings and the Redis catalog.
        self.broker: str | None = None
        self.legs: dict[InstrumentKey, Leg] = {}
        self.chains: dict[tuple[str, dt.date], Chain] = {}
        self.expiries: dict[str, list[dt.date]] = {}
        self.index_keys: dict[str, InstrumentKey] = {}
        self._underlying_of: dict[InstrumentKey, str] = {}  # of the index legs; an option's is its chain's
        self.covered = 0
        self.covered_by_underlying: dict[str, int] = {}
        self.subscribed_by_underlying: dict[str, int] = {}
        self.ticks_applied = 0
        self.ticks_unknown = 0
        self.batches_applied = 0
        # Legs changed since the mirror last drained them, and when the oldest of those changes
        # was applied (monotonic seconds): the start of the mirror's lag.
        self.dirty: set[Leg] = set()
        self.dirty_since: float | None = None
        # False when nothing drains the change log (no Redis mirror): ``dirty`` then stays empty
        # instead of growing to every leg.
        self.keep_changes = True
        # Legs never seen / stale now: what apply_batch checks with one set operation per batch.
        self._unseen: set[Leg] = set()
        self._stale: set[Leg] = set()
        self._slots: _Slots | None = None  # apply_batch's lookup tables, rebuilt after a layout change
        self._columns = _Columns(sum(2 * len(e.strikes) for u in skeleton.underlyings.values() for e in u.expiries)
                                 + len(skeleton.underlyings))  # fmt: skip
        for symbol, und in skeleton.underlyings.items():
            index = Leg(und.key, None, self._columns)
            self.legs[und.key] = index
            self._unseen.add(index)
            self.index_keys[symbol] = und.key
            self._underlying_of[und.key] = symbol
        self._build_chains(skeleton)

    def _build_chains(self, skeleton: ChainSkeleton) -> list[Chain]:
        """Create the chains of ``skeleton`` that do not exist yet; index links and counts follow."""
        added = []
        for symbol, und in skeleton.underlyings.items():
            index = self.legs[und.key]
            chains = []
            for exp in und.expiries:
                chain = self.chains.get((symbol, exp.expiry))
                if chain is None:
                    chain = Chain(symbol, exp.expiry, exp.lot_size, index)
                    only = (chain,)  # every leg's chains: one tuple shared by them all
                    for row in exp.strikes:
                        ce = self._leg(row.ce, only)
                        pe = self._leg(row.pe, only)
                        chain.rows.append((row.strike, ce, pe))
                    self.chains[(symbol, exp.expiry)] = chain
                    added.append(chain)
                chains.append(chain)
            index.chains = tuple(chains)
            self.expiries[symbol] = [c.expiry for c in chains]
        self._recount()
        return added

    def _recount(self) -> None:
        subscribed = dict.fromkeys(self.index_keys, 0)
        covered = dict.fromkeys(self.index_keys, 0)
        for leg in self.legs.values():
            symbol = self._underlying(leg)
            subscribed[symbol] += 1
            covered[symbol] += leg.seen
        self.subscribed_by_underlying = subscribed
        self.covered_by_underlying = covered
        self.covered = sum(covered.values())

    def reconfigure(self, skeleton: ChainSkeleton) -> tuple[list[Chain], list[Chain]]:
        """Serve ``skeleton``'s chains from now on (the daily expiry roll): chains it lacks are
        dropped with their legs, new ones start empty, the rest keep their state untouched.
        Returns (added, removed). The underlyings themselves must not change."""
        if set(skeleton.underlyings) != set(self.index_keys):
            raise ValueError("reconfigure changes expiries, not underlyings")
        wanted = {(s, e.expiry) for s, u in skeleton.underlyings.items() for e in u.expiries}
        removed = [chain for key, chain in self.chains.items() if key not in wanted]
        for chain in removed:
            del self.chains[(chain.underlying, chain.expiry)]
            for _, ce, pe in chain.rows:
                for leg in (ce, pe):
                    if leg is not None:
                        del self.legs[leg.key]
                        leg._c, leg.row = self._columns.detach(leg.row), 0
                        self.dirty.discard(leg)
                        self._unseen.discard(leg)
                        self._stale.discard(leg)
        added = self._build_chains(skeleton)
        if added or removed:
            self.layout_epoch += 1
            self._slots = None
        version = self._next_version()
        for chain in added:
            chain.version = version
        return added, removed

    def _leg(self, contract: OptionContract | None, chains: tuple[Chain]) -> Leg | None:
        if contract is None:
            return None
        leg = Leg(contract.key, contract, self._columns)
        leg.chains = chains
        self.legs[contract.key] = leg
        self._unseen.add(leg)
        return leg

    # ------------------------------------------------------------------ owner-only writes

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def apply(self, ticks: Sequence[Tick]) -> None:
        """Apply a batch of ticks in order; every chain touched gets the batch's new version."""
        version = self._next_version()
        legs = self.legs
        changed = self.dirty.add if self.keep_changes else _ignore
        fv, iv = self._columns.fv, self._columns.iv
        ltp_, atp_, open_, close_, high_, low_, bid_, ask_, prev_close_, updated_ = fv
        ltq_, ltt_, volume_, oi_, bid_qty_, ask_qty_, prev_oi_ = iv
        N, M = _NAN, MISSING_INT
        for t in ticks:
            leg = legs.get(t[0])
            if leg is None:
                self.ticks_unknown += 1
                continue
            r = leg.row
            cls = type(t)
            if cls is FullTick:
                (_, ltp, ltq, ltt, atp, volume, _, _, oi, o, c, h, lo, bid, bid_qty, ask, ask_qty, at) = t
                ltp_[r] = N if ltp is None else ltp
                ltq_[r] = M if ltq is None else ltq
                ltt_[r] = M if ltt is None else ltt
                atp_[r] = N if atp is None else atp
                volume_[r] = M if volume is None else volume
                oi_[r] = M if oi is None else oi
                open_[r] = N if o is None else o
                close_[r] = N if c is None else c
                high_[r] = N if h is None else h
                low_[r] = N if lo is None else lo
                bid_[r] = N if bid is None else bid
                bid_qty_[r] = M if bid_qty is None else bid_qty
                ask_[r] = N if ask is None else ask
                ask_qty_[r] = M if ask_qty is None else ask_qty
            elif cls is QuoteTick:
                (_, ltp, ltq, ltt, atp, volume, _, _, o, c, h, lo, at) = t
                ltp_[r] = N if ltp is None else ltp
                ltq_[r] = M if ltq is None else ltq
                ltt_[r] = M if ltt is None else ltt
                atp_[r] = N if atp is None else atp
                volume_[r] = M if volume is None else volume
                open_[r] = N if o is None else o
                close_[r] = N if c is None else c
                high_[r] = N if h is None else h
                low_[r] = N if lo is None else lo
            elif cls is TradeTick:
                _, ltp, ltt, at = t
                ltp_[r] = N if ltp is None else ltp
                ltt_[r] = M if ltt is None else ltt
            elif cls is OpenInterestTick:
                _, oi, at = t
                oi_[r] = M if oi is None else oi
            elif cls is PrevCloseTick:
                _, prev_close, prev_oi, at = t
                prev_close_[r] = N if prev_close is None else prev_close
                prev_oi_[r] = M if prev_oi is None else prev_oi
            else:
                raise TypeError(f"not a tick: {cls.__name__}")
            updated_[r] = N if at is None else at
            leg.doc = None
            changed(leg)
            if not leg.seen:
                self._first_data(leg)
            if leg.stale:
                self._set_stale(leg, False)
            for chain in leg.chains:
                chain.version = version
                chain.updated_at = at
        self.ticks_applied += len(ticks)
        self.batches_applied += 1
        if self.dirty_since is None and self.dirty:
            self.dirty_since = self._monotonic()

    def apply_batch(self, batch: FullTickBatch) -> int:
        """Apply a batch of Full ticks (``FullTickBatch``): the same result as ``apply(batch.ticks())``.

        The batch's columns are assigned into the cache's columns with numpy (the last tick of a
        leg wins, as in order); finding the legs, the chains to bump, first data and the end of
        staleness are done once per batch with numpy and set operations. The only Python work per
        tick is dropping the leg's JSON (``doc``). Returns how many ticks were applied.
        """
        version = self._next_version()
        slots = self._slots or self._index_slots()
        keys = np.asarray(batch.keys, dtype=np.int64)
        prices, ints = batch.prices, batch.ints
        pos = np.searchsorted(slots.keys, keys)
        if len(slots.keys):
            np.minimum(pos, len(slots.keys) - 1, out=pos)
        found = slots.keys[pos] == keys if len(slots.keys) else np.zeros(len(keys), dtype=bool)
        if not found.all():
            self.ticks_unknown += int(len(keys) - found.sum())
            pos = pos[found]
            prices, ints = prices[:, found], ints[:, found]
        applied = len(pos)
        rows = slots.rows[pos]
        if applied > 1:  # a leg twice in the batch: its last tick wins (fancy assignment promises no order)
            once, last = np.unique(rows[::-1], return_index=True)
            if len(once) < applied:
                keep = applied - 1 - last
                pos, rows, prices, ints = pos[keep], rows[keep], prices[:, keep], ints[:, keep]
        at = batch.received_at
        columns = self._columns
        columns.f[: len(BATCH_PRICES), rows] = prices
        columns.f[_UPDATED_AT, rows] = np.nan if at is None else at
        columns.i[: len(BATCH_INTS), rows] = ints
        legs = slots.legs[pos].tolist()
        for leg in legs:
            leg.doc = None
        if self.keep_changes:
            self.dirty.update(legs)
        if self._unseen:
            for leg in self._unseen.intersection(legs):
                self._first_data(leg)
        if self._stale:
            for leg in self._stale.intersection(legs):
                self._set_stale(leg, False)
        if legs:
            chain_ids = slots.chain_of[pos]
            chains = slots.chains
            for cid in np.unique(chain_ids).tolist():
                if cid >= 0:
                    chain = chains[cid]
                    chain.version = version
                    chain.updated_at = at
            if chain_ids.min() < 0:  # legs in several chains (an underlying's index)
                for leg in slots.legs[pos[chain_ids < 0]].tolist():
                    for chain in leg.chains:
                        chain.version = version
                        chain.updated_at = at
            if self.dirty_since is None and self.keep_changes:
                self.dirty_since = self._monotonic()
        self.ticks_applied += len(keys)  # as apply(): unknown instruments included
        self.batches_applied += 1
        return applied

    def _index_slots(self) -> _Slots:
        """Legs sorted by packed key, each with its only chain's number (-1: several or none)."""
        chains = list(self.chains.values())
        number = {id(chain): i for i, chain in enumerate(chains)}
        ordered = sorted(self.legs.items(), key=lambda item: pack_key(item[0]))
        legs = np.empty(len(ordered), dtype=object)
        legs[:] = [leg for _, leg in ordered]
        self._slots = _Slots(
            np.array([pack_key(key) for key, _ in ordered], dtype=np.int64),
            legs,
            np.array([leg.row for _, leg in ordered], dtype=np.int64),
            np.array([number[id(leg.chains[0])] if len(leg.chains) == 1 else -1 for _, leg in ordered], dtype=np.int64),
            chains,
        )
        return self._slots

    def mark_stale(self, keys: Iterable[InstrumentKey]) -> int:
        """Mark instruments stale until fresh data arrives (their feed connection was lost)."""
        version = self._next_version()
        marked = 0
        for key in keys:
            leg = self.legs.get(key)
            if leg is not None and not leg.stale:
                self._set_stale(leg, True)
                if self.keep_changes:
                    self.dirty.add(leg)
                for chain in leg.chains:
                    chain.version = version
                marked += 1
        if marked and self.dirty_since is None and self.keep_changes:
            self.dirty_since = self._monotonic()
        return marked

    def seed(self, seeds: Iterable[LegSeed]) -> int:
        """Fill in what the feed has not sent yet from Dhan's REST chain, and keep Dhan's IV/greeks.

        Live data wins: OI, previous close and previous OI are filled only where the feed has
        sent none, because the REST chain is as old as the last reconcile. Seeding is not feed
        coverage (the readiness gate still waits for the feed). Returns how many legs changed.
        """
        version = 0
        changed = 0
        for seed in seeds:
            leg = self.legs.get(seed.key)
            if leg is None or leg.contract is None:
                continue
            filled = False
            r, fv, iv = leg.row, self._columns.fv, self._columns.iv
            if leg.oi is None and seed.oi is not None:
                iv[_OI][r], filled = seed.oi, True
            if leg.prev_close is None and seed.prev_close is not None:
                fv[_PREV_CLOSE][r], filled = seed.prev_close, True
            if leg.prev_oi is None and seed.prev_oi is not None:
                iv[_PREV_OI][r], filled = seed.prev_oi, True
            if not filled and seed.dhan == leg.dhan:
                continue
            leg.dhan = seed.dhan
            if filled:
                leg.doc = None
                if self.keep_changes:
                    self.dirty.add(leg)
            version = version or self._next_version()
            for chain in leg.chains:
                chain.version = version
            changed += 1
        if self.dirty and self.dirty_since is None:
            self.dirty_since = self._monotonic()
        return changed

    def set_analytics(self, chain: Chain, analytics: Any) -> None:
        """Install a chain's freshly computed analytics: its body changes, so it gets a new version."""
        chain.analytics = analytics
        chain.version = self._next_version()

    # ------------------------------------------------------------------ the change log's one reader

    def take_dirty(self) -> tuple[set[Leg], float | None]:
        """The legs changed since the last call and when the oldest change was applied; resets both."""
        taken, since = self.dirty, self.dirty_since
        self.dirty = set()
        self.dirty_since = None
        return taken, since

    def restore_dirty(self, legs: Iterable[Leg], since: float | None) -> None:
        """Give back legs whose write failed, so they are written again with whatever came later."""
        self.dirty.update(legs)
        if since is not None and (self.dirty_since is None or since < self.dirty_since):
            self.dirty_since = since

    def _first_data(self, leg: Leg) -> None:
        leg.seen = True
        self._unseen.discard(leg)
        if not self._unseen:
            self._unseen = set()  # a set keeps its table when emptied: every leg's worth of slots
        self.covered += 1
        self.covered_by_underlying[self._underlying(leg)] += 1

    def _underlying(self, leg: Leg) -> str:
        return leg.chains[0].underlying if leg.contract is not None else self._underlying_of[leg.key]

    def _set_stale(self, leg: Leg, stale: bool) -> None:
        leg.stale = stale
        if stale:
            self._stale.add(leg)
        else:
            self._stale.discard(leg)
            if not self._stale:
                self._stale = set()  # give back the table of a whole connection's legs
        leg.doc = None
        for chain in leg.chains:
            chain.stale_legs += 1 if stale else -1

    # ------------------------------------------------------------------ reads

    def leg_rows(self, legs: Sequence[Leg]) -> list[tuple[Any, ...]]:
        """Per leg, its state as the tuple ``ROW_FIELDS`` names (the renderer's bulk read,
        ``service.core.snapshot``), with the values its attributes read (None for never received,
        ints as int, floats as float): one bulk read of the columns."""
        n = len(legs)
        if not n:
            return []
        columns = self._columns
        if not all(leg._c is columns for leg in legs):  # legs the roll removed keep their own columns
            return [tuple(getattr(leg, name) for name in ROW_FIELDS) for leg in legs]
        if n < 32:  # a few legs: numpy's fixed cost per call is more than reading them one by one
            return _rows_one_by_one(columns, legs)
        rows = np.fromiter((leg.row for leg in legs), np.int64, n)
        f = columns.f[:, rows].T
        i = columns.i[:, rows].T
        out = np.empty((n, len(ROW_FIELDS)), dtype=object)
        missing = np.zeros((n, len(ROW_FIELDS)), dtype=bool)
        out[:, _ROW_F] = f
        out[:, _ROW_I] = i
        missing[:, _ROW_F] = np.isnan(f)
        missing[:, _ROW_I] = i == _MISSING
        out[missing] = None
        out[:, -1] = [leg.stale for leg in legs]
        return list(map(tuple, out.tolist()))

    @property
    def subscribed(self) -> int:
        return len(self.legs)

    @property
    def coverage(self) -> float:
        return self.covered / len(self.legs) if self.legs else 1.0

    def missing_by_underlying(self) -> dict[str, int]:
        return {
            sym: self.subscribed_by_underlying[sym] - self.covered_by_underlying[sym]
            for sym in self.subscribed_by_underlying
            if self.subscribed_by_underlying[sym] > self.covered_by_underlying[sym]
        }

