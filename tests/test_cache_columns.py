"""The cache keeps leg state in numpy columns (``service.core.cache``): every way of writing it
(``apply`` of each tick type, ``apply_batch``, ``seed``, ``mark_stale``, the roll's ``reconfigure``)
must leave exactly what a plain per-leg model of the same operations holds, read through the
leg's attributes and through ``ChainCache.leg_rows``: None stays None, 0 stays 0 (not None,
not 0.0), -0.0 stays -0.0, ints stay ints and floats floats."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feeds.calendar import MarketCalendar
from feeds.clock import ManualClock
from feeds.model import (
    FULL_BATCH_COLUMNS,
    ChainSkeleton,
    FullTick,
    FullTickBatch,
    InstrumentKey,
    OpenInterestTick,
    PrevCloseTick,
    QuoteTick,
    TradeTick,
    pack_key,
)
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.universe import build_universe
from service.core.cache import ROW_FIELDS, ChainCache, LegSeed
from service.core.roll import live_skeleton
from tests.conftest import NOW, TODAY

STATE = ROW_FIELDS[:-1]  # the column fields (the last, stale, is a flag)
UNKNOWN: InstrumentKey = (2, 999_999)


def _price(rng: random.Random) -> float | None:
    return rng.choice([None, 0.0, -0.0, 0.05, 101.25, math.inf, rng.randint(1, 10**7) / 20, rng.random() * 1e6])


def _qty(rng: random.Random) -> int | None:
    return rng.choice([None, 0, 1, 75, 2**32 - 1, rng.randint(0, 2**40)])


def _tick(rng: random.Random, key: InstrumentKey, at: float) -> Any:
    p, q = lambda: _price(rng), lambda: _qty(rng)  # noqa: E731
    kind = rng.randrange(5)
    if kind == 0:
        return FullTick(key, p(), q(), q(), p(), q(), 1, 2, q(), p(), p(), p(), p(), p(), q(), p(), q(), at)
    if kind == 1:
        return QuoteTick(key, p(), q(), q(), p(), q(), 1, 2, p(), p(), p(), p(), at)
    if kind == 2:
        return TradeTick(key, p(), q(), at)
    if kind == 3:
        return OpenInterestTick(key, q(), at)
    return PrevCloseTick(key, p(), q(), at)


# What each tick type sets, besides updated_at (FullTick's total_sell/buy_qty are not kept).
_SETS = {
    FullTick: ("ltp", "ltq", "ltt", "atp", "volume", "oi", "open", "close", "high", "low", "bid", "bid_qty", "ask",
               "ask_qty"),
    QuoteTick: ("ltp", "ltq", "ltt", "atp", "volume", "open", "close", "high", "low"),
    TradeTick: ("ltp", "ltt"),
    OpenInterestTick: ("oi",),
    PrevCloseTick: ("prev_close", "prev_oi"),
}  # fmt: skip


class Model:
    """The cache's leg state as plain dicts: the reference."""

    def __init__(self, keys: set[InstrumentKey]) -> None:
        self.state: dict[InstrumentKey, dict[str, Any]] = {k: self._empty() for k in keys}

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {**dict.fromkeys(STATE), "stale": False, "seen": False}

    def apply(self, tick: Any) -> None:
        leg = self.state.get(tick[0])
        if leg is None:
            return
        for name in _SETS[type(tick)]:
            leg[name] = getattr(tick, name)
        leg["updated_at"] = tick.received_at
        leg["seen"], leg["stale"] = True, False

    def relayout(self, keys: set[InstrumentKey]) -> None:
        self.state = {k: self.state.get(k) or self._empty() for k in keys}


def _exact(values: Any) -> str:
    """repr tells None from 0 from 0.0 from -0.0, and int from float."""
    return repr(values)


def _check(cache: ChainCache, model: Model) -> None:
    assert set(cache.legs) == set(model.state)
    legs = list(cache.legs.values())
    expected = [tuple(model.state[leg.key][name] for name in ROW_FIELDS) for leg in legs]
    assert _exact([tuple(getattr(leg, name) for name in ROW_FIELDS) for leg in legs]) == _exact(expected)
    assert _exact(cache.leg_rows(legs)) == _exact(expected)
    assert [leg.seen for leg in legs] == [model.state[leg.key]["seen"] for leg in legs]
    assert cache.covered == sum(s["seen"] for s in model.state.values())
    reversed_legs = legs[::-1]  # any order, any subset
    assert _exact(cache.leg_rows(reversed_legs[::2])) == _exact(expected[::-1][::2])


@pytest.fixture
def layouts() -> tuple[ChainSkeleton, ChainSkeleton]:
    config = SimulatorConfig(underlyings=("NIFTY", "BANKNIFTY"), expiries=3, strikes_per_side=3, today=TODAY)
    full = build_universe(config, TODAY).skeleton
    calendar = MarketCalendar()
    first = full.underlyings["NIFTY"].expiries[0].expiry
    before = live_skeleton(full, 2, calendar.session_close(TODAY).timestamp() - 1, calendar)
    after = live_skeleton(full, 2, calendar.session_close(first).timestamp() + 1, calendar)
    return before, after


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # immutable
@given(seed=st.integers(0, 2**32 - 1))
def test_columns_equal_a_per_leg_model(layouts: tuple[ChainSkeleton, ChainSkeleton], seed: int) -> None:
    rng = random.Random(seed)
    cache = ChainCache(layouts[0], clock=ManualClock(NOW))
    model = Model(set(cache.legs))
    every_key = sorted({*cache.legs, *ChainCache(layouts[1]).legs, UNKNOWN})
    at, layout = NOW, 0
    removed: list[tuple[Any, dict[str, Any]]] = []
    for _ in range(25):
        at += rng.choice([0.0, 0.5, 1.0])
        op = rng.randrange(10)
        if op < 4:
            ticks = [_tick(rng, rng.choice(every_key), at) for _ in range(rng.randint(0, 30))]
            cache.apply(ticks)
            for t in ticks:
                model.apply(t)
        elif op < 7:  # a batch, legs repeated: the last tick of a leg wins
            keys = [rng.choice(every_key) for _ in range(rng.randint(0, 40))]
            ticks = [_tick(random.Random(rng.random()), k, at) for k in keys]
            full = [FullTick(*t[:-1], at) if type(t) is FullTick else
                    FullTick(t[0], _price(rng), 0, None, None, 1, 0, 0, 0, None, None, None, None, None, None,
                             _price(rng), 5, at) for t in ticks]  # fmt: skip
            batch = FullTickBatch([pack_key(t.key) for t in full],
                                  [[getattr(t, name) for t in full] for name in FULL_BATCH_COLUMNS],
                                  [t.total_sell_qty for t in full], [t.total_buy_qty for t in full], at)  # fmt: skip
            assert _exact(batch.ticks()) == _exact(full)
            assert cache.apply_batch(batch) == sum(k in model.state for k in keys)
            for t in full:
                model.apply(t)
        elif op == 7:
            keys = rng.sample(every_key, rng.randint(0, 8))
            cache.mark_stale(keys)
            for k in keys:
                if k in model.state:
                    model.state[k]["stale"] = True
        elif op == 8:
            seeds = [LegSeed(k, _qty(rng), _price(rng), _qty(rng), None) for k in rng.sample(every_key, 8)]
            cache.seed(seeds)
            for s in seeds:
                leg = cache.legs.get(s.key)
                if leg is None or leg.contract is None:
                    continue
                state = model.state[s.key]
                for name, value in (("oi", s.oi), ("prev_close", s.prev_close), ("prev_oi", s.prev_oi)):
                    if state[name] is None and value is not None:
                        state[name] = value
        else:  # the roll, and back: legs of dropped chains leave, new ones start empty
            layout = 1 - layout
            before = dict(cache.legs)
            cache.reconfigure(layouts[layout])
            model_before = {k: dict(v) for k, v in model.state.items()}
            model.relayout(set(cache.legs))
            removed += [(leg, model_before[k]) for k, leg in before.items() if k not in cache.legs]
        _check(cache, model)
    # A leg the roll removed keeps the state it had, whatever the reused rows hold now.
    for leg, state in removed:
        assert _exact(tuple(getattr(leg, name) for name in STATE)) == _exact(tuple(state[n] for n in STATE))
        assert _exact(cache.leg_rows([leg])) == _exact([tuple(state[n] for n in ROW_FIELDS)])


def test_missing_is_not_zero(skeleton: ChainSkeleton) -> None:
    """0 and 0.0 received are values, not 'missing'; never received reads None everywhere."""
    cache = ChainCache(skeleton, clock=ManualClock(NOW))
    legs = [leg for leg in cache.legs.values() if leg.contract is not None]
    zero, untouched = legs[0], legs[1]
    cache.apply([FullTick(zero.key, 0.0, 0, 0, 0.0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, -0.0, 0, 0.0, 0, NOW)])
    row = dict(zip(ROW_FIELDS, cache.leg_rows([zero])[0]))
    assert _exact(row) == _exact({**dict.fromkeys(STATE, 0), "ltp": 0.0, "atp": 0.0, "open": 0.0, "close": 0.0,
                                  "high": 0.0, "low": 0.0, "bid": -0.0, "ask": 0.0, "prev_close": None,
                                  "prev_oi": None, "updated_at": NOW, "stale": False})  # fmt: skip
    assert cache.leg_rows([untouched]) == [(None,) * len(STATE) + (False,)]
    assert untouched.ltp is None and untouched.oi is None and zero.oi == 0 and type(zero.oi) is int


def test_without_a_change_log_reader_nothing_is_kept(skeleton: ChainSkeleton) -> None:
    """``keep_changes = False`` (no Redis mirror): the same state, versions and coverage, but no
    dirty set growing to every leg."""
    kept, unkept = ChainCache(skeleton, clock=ManualClock(NOW)), ChainCache(skeleton, clock=ManualClock(NOW))
    unkept.keep_changes = False
    keys = sorted(kept.legs)
    for cache in (kept, unkept):
        cache.apply([PrevCloseTick(k, 95.0, 28000, NOW) for k in keys[::2]])
        cache.apply_batch(FullTickBatch([pack_key(k) for k in keys], [[None if i % 3 else 1.5 for i in range(len(keys))]
                                        if name not in ("ltq", "volume", "oi") else [7] * len(keys)
                                        for name in FULL_BATCH_COLUMNS], [0] * len(keys), [0] * len(keys), NOW))
        cache.mark_stale(keys[:3])
        cache.seed([LegSeed(k, 5, 1.0, 6, None) for k in keys])
    assert kept.dirty and kept.dirty_since is not None
    assert not unkept.dirty and unkept.dirty_since is None
    assert kept.leg_rows(list(kept.legs.values())) == unkept.leg_rows(list(unkept.legs.values()))
    assert [(c.version, c.stale_legs) for c in kept.chains.values()] == [
        (c.version, c.stale_legs) for c in unkept.chains.values()]
    assert kept.covered == unkept.covered == len(keys)
