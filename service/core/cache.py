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

Every leg that changes is added to ``dirty`` (one ``set.add`` per tick), which the Redis
mirror drains with ``take_dirty``. The set holds legs, not values, so it is bounded by the
number of instruments and coalesces by construction: the mirror reads each leg's state at
flush time, so the latest value wins however many ticks came in between.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from feeds.clock import SYSTEM_CLOCK, Clock
from feeds.model import (
    ChainSkeleton,
    FullTick,
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


class Leg:
    """Latest known state of one instrument; ``None`` means never received."""

    __slots__ = (
        "key", "contract", "chains", "ltp", "ltq", "ltt", "atp", "volume", "oi", "prev_close", "prev_oi",
        "open", "high", "low", "close", "bid", "bid_qty", "ask", "ask_qty", "updated_at", "seen", "stale", "doc",
        "dhan",
    )

    def __init__(self, key: InstrumentKey, contract: OptionContract | None) -> None:
        self.key = key
        self.contract = contract
        self.chains: tuple[Chain, ...] = ()
        self.ltp = self.ltq = self.ltt = self.atp = self.volume = self.oi = None
        self.prev_close = self.prev_oi = self.open = self.high = self.low = self.close = None
        self.bid = self.bid_qty = self.ask = self.ask_qty = None
        self.updated_at: float | None = None
        self.seen = False
        self.stale = False
        self.doc: bytes | None = None  # the leg's JSON object (service.core.snapshot), dropped on every change
        self.dhan: Any = None  # Dhan's own IV and greeks from its REST chain (service.analytics.compute.DhanGreeks)


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


class _Slots(NamedTuple):
    """``ChainCache.apply_batch``'s lookup tables for one layout."""

    keys: Any  # int64 packed keys (feeds.model.pack_key), sorted
    legs: Any  # object array: the leg of each key
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
        self._underlying_of: dict[InstrumentKey, str] = {}
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
        # Legs never seen / stale now: what apply_batch checks with one set operation per batch.
        self._unseen: set[Leg] = set()
        self._stale: set[Leg] = set()
        self._slots: _Slots | None = None  # apply_batch's lookup tables, rebuilt after a layout change
        for symbol, und in skeleton.underlyings.items():
            index = Leg(und.key, None)
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
                    for row in exp.strikes:
                        ce = self._leg(row.ce, chain, symbol)
                        pe = self._leg(row.pe, chain, symbol)
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
        for key, leg in self.legs.items():
            symbol = self._underlying_of[key]
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
                        del self._underlying_of[leg.key]
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

    def _leg(self, contract: OptionContract | None, chain: Chain, symbol: str) -> Leg | None:
        if contract is None:
            return None
        leg = Leg(contract.key, contract)
        leg.chains = (chain,)
        self.legs[contract.key] = leg
        self._unseen.add(leg)
        self._underlying_of[contract.key] = symbol
        return leg

    # ------------------------------------------------------------------ owner-only writes

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def apply(self, ticks: Sequence[Tick]) -> None:
        """Apply a batch of ticks in order; every chain touched gets the batch's new version."""
        version = self._next_version()
        legs = self.legs
        changed = self.dirty.add
        for t in ticks:
            leg = legs.get(t[0])
            if leg is None:
                self.ticks_unknown += 1
                continue
            cls = type(t)
            if cls is FullTick:
                (_, leg.ltp, leg.ltq, leg.ltt, leg.atp, leg.volume, _, _, leg.oi, leg.open, leg.close, leg.high,
                 leg.low, leg.bid, leg.bid_qty, leg.ask, leg.ask_qty, leg.updated_at) = t
            elif cls is QuoteTick:
                (_, leg.ltp, leg.ltq, leg.ltt, leg.atp, leg.volume, _, _, leg.open, leg.close, leg.high, leg.low,
                 leg.updated_at) = t
            elif cls is TradeTick:
                _, leg.ltp, leg.ltt, leg.updated_at = t
            elif cls is OpenInterestTick:
                _, leg.oi, leg.updated_at = t
            elif cls is PrevCloseTick:
                _, leg.prev_close, leg.prev_oi, leg.updated_at = t
            else:
                raise TypeError(f"not a tick: {cls.__name__}")
            leg.doc = None
            changed(leg)
            if not leg.seen:
                self._first_data(leg)
            if leg.stale:
                self._set_stale(leg, False)
            for chain in leg.chains:
                chain.version = version
                chain.updated_at = leg.updated_at
        self.ticks_applied += len(ticks)
        self.batches_applied += 1
        if self.dirty_since is None and self.dirty:
            self.dirty_since = self._monotonic()

    def apply_batch(self, batch: FullTickBatch) -> int:
        """Apply a batch of Full ticks (``FullTickBatch``): the same result as ``apply(batch.ticks())``.

        Per tick this is one pass storing each column's value into the leg (no tick object);
        finding the legs, the chains to bump, first data and the end of staleness are done once
        per batch with numpy and set operations. Returns how many ticks were applied.
        """
        version = self._next_version()
        slots = self._slots or self._index_slots()
        keys = np.asarray(batch.keys, dtype=np.int64)
        columns = batch.columns
        pos = np.searchsorted(slots.keys, keys)
        if len(slots.keys):
            np.minimum(pos, len(slots.keys) - 1, out=pos)
        found = slots.keys[pos] == keys if len(slots.keys) else np.zeros(len(keys), dtype=bool)
        if not found.all():
            self.ticks_unknown += int(len(keys) - found.sum())
            rows = np.flatnonzero(found).tolist()
            columns = [[col[i] for i in rows] for col in columns]
            pos = pos[found]
        legs = slots.legs[pos].tolist()
        at = batch.received_at
        # Targets are assigned left to right, so each row's leg is bound before its fields.
        for (leg, leg.ltp, leg.ltq, leg.ltt, leg.atp, leg.volume, leg.oi, leg.open, leg.close, leg.high, leg.low,
             leg.bid, leg.bid_qty, leg.ask, leg.ask_qty) in zip(legs, *columns):  # fmt: skip
            leg.updated_at = at
            leg.doc = None
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
            if self.dirty_since is None:
                self.dirty_since = self._monotonic()
        self.ticks_applied += len(keys)  # as apply(): unknown instruments included
        self.batches_applied += 1
        return len(legs)

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
                self.dirty.add(leg)
                for chain in leg.chains:
                    chain.version = version
                marked += 1
        if marked and self.dirty_since is None:
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
            if leg.oi is None and seed.oi is not None:
                leg.oi, filled = seed.oi, True
            if leg.prev_close is None and seed.prev_close is not None:
                leg.prev_close, filled = seed.prev_close, True
            if leg.prev_oi is None and seed.prev_oi is not None:
                leg.prev_oi, filled = seed.prev_oi, True
            if not filled and seed.dhan == leg.dhan:
                continue
            leg.dhan = seed.dhan
            if filled:
                leg.doc = None
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
        self.covered += 1
        self.covered_by_underlying[self._underlying_of[leg.key]] += 1

    def _set_stale(self, leg: Leg, stale: bool) -> None:
        leg.stale = stale
        if stale:
            self._stale.add(leg)
        else:
            self._stale.discard(leg)
        leg.doc = None
        for chain in leg.chains:
            chain.stale_legs += 1 if stale else -1

    # ------------------------------------------------------------------ reads

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

