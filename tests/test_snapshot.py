"""Chain bodies rendered incrementally (changed legs spliced into the last body) equal full renders."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feeds.calendar import MarketCalendar
from feeds.clock import ManualClock
from feeds.model import ChainSkeleton, FullTick, OpenInterestTick, PrevCloseTick, StrikeRow, TradeTick
from service.analytics.compute import analyse
from service.core.cache import ROW_FIELDS, ChainCache
from service.core.freshness import ChainTimes
from feeds.model import IST
from service.core import snapshot
from service.core.snapshot import (
    IN_BODY,
    _objects,
    _round2,
    _round4,
    chain_snapshot,
    encode_legs,
    encode_many,
    leg_json,
    render,
)
from service.settings import AnalyticsSettings
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.universe import build_universe
from tests.conftest import NOW, TODAY, full_tick, prev_close_tick


def _with_missing_sides(skeleton: ChainSkeleton) -> ChainSkeleton:
    """The skeleton with one strike lacking its CE and another its PE (a scrip master may)."""
    und = skeleton.underlyings["NIFTY"]
    first = und.expiries[0]
    rows = list(first.strikes)
    rows[1] = StrikeRow(rows[1].strike, None, rows[1].pe)
    rows[-2] = StrikeRow(rows[-2].strike, rows[-2].ce, None)
    expiries = (dataclasses.replace(first, strikes=tuple(rows)), *und.expiries[1:])
    return dataclasses.replace(skeleton, underlyings={"NIFTY": dataclasses.replace(und, expiries=expiries)})


def test_incremental_renders_equal_full_renders() -> None:
    """Through ticks, analytics passes, stale flips and null slots, every render of a chain is byte for
    byte (and ETag for ETag) the body a from-scratch render of the same state gives."""
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=1, strikes_per_side=6, today=TODAY)
    skeleton = _with_missing_sides(build_universe(config, TODAY).skeleton)
    ours, twin = ChainCache(skeleton, clock=ManualClock(NOW)), ChainCache(skeleton, clock=ManualClock(NOW))
    chain, fresh = next(iter(ours.chains.values())), next(iter(twin.chains.values()))
    keys = [leg.key for leg in ours.legs.values() if leg.contract is not None]
    assert len(keys) == 2 * len(chain.rows) - 2
    rng = random.Random(16)
    params, calendar = AnalyticsSettings(), MarketCalendar(always_open=True)
    for step in range(120):
        at = NOW + step
        ticks = [full_tick(key, round(rng.uniform(1, 400), 2), received_at=at, oi=rng.randint(1, 10**6))
                 for key in rng.sample(keys, rng.randint(0, 8))]  # fmt: skip
        if step == 3:
            ticks += [prev_close_tick(key, received_at=at) for key in keys]
        for cache in (ours, twin):
            cache.apply(ticks)
        if step % 17 == 5:
            analytics = analyse(chain, at, params, calendar)
            ours.set_analytics(chain, analytics)
            twin.set_analytics(fresh, analytics)
        if step % 7 == 0:  # the Redis mirror reads legs between renders
            for key in rng.sample(keys, 3):
                assert orjson.loads(leg_json(ours.legs[key])) == orjson.loads(_fresh_leg(twin, key))
        times = ChainTimes(step % 11 == 10, 1, "open", None)
        snap = render(chain, times, ours.leg_rows)  # the cache's bulk read
        fresh.rendered = None
        expected = render(fresh, times)  # leg attributes
        assert snap.version == expected.version
        assert snap.body == expected.body, step
        assert snap.etag == expected.etag
        assert snap.rows == expected.rows
        assert all(leg.doc is IN_BODY for _, ce, pe in chain.rows for leg in (ce, pe) if leg is not None)
    doc = orjson.loads(snap.body)
    assert doc["strikes"][1]["ce"] is None and doc["strikes"][-2]["pe"] is None
    assert [s["strike"] for s in doc["strikes"]] == list(snap.strikes)


def _fresh_leg(cache: ChainCache, key: tuple[str, int]) -> bytes:
    leg = cache.legs[key]
    leg.doc = None
    return leg_json(leg)


def test_a_replica_render_equals_the_primary_body() -> None:
    """``chain_snapshot`` from the leg bytes the mirror writes (a replica's render) gives the primary's
    body and ETag, read back from the body by ``leg_json`` without keeping a copy per leg."""
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=1, strikes_per_side=4, today=TODAY)
    cache = ChainCache(_with_missing_sides(build_universe(config, TODAY).skeleton), clock=ManualClock(NOW))
    chain = next(iter(cache.chains.values()))
    cache.apply([full_tick(leg.key, 10.0 + i) for i, leg in enumerate(cache.legs.values()) if leg.contract])
    cache.set_analytics(chain, analyse(chain, NOW, AnalyticsSettings(), MarketCalendar(always_open=True)))
    times = ChainTimes(False, 1, "open", None)
    primary = render(chain, times)
    rows = [(s, None if ce is None else leg_json(ce), None if pe is None else leg_json(pe)) for s, ce, pe in chain.rows]
    assert all(leg.doc is IN_BODY for _, ce, pe in chain.rows for leg in (ce, pe) if leg is not None)
    replica = chain_snapshot(
        chain.underlying, chain.expiry, underlying_ltp=chain.index.ltp, lot_size=chain.lot_size,
        updated_at=chain.updated_at, version=chain.version, times=times, rows=rows, analytics=chain.analytics,
    )  # fmt: skip
    assert replica.body == primary.body
    assert replica.etag == primary.etag
    assert [replica.leg(i) for i in range(2 * len(rows))] == primary.leg_slots()


def _reference_leg(security_id: int, row: tuple) -> bytes:
    """A leg's JSON object the straightforward way (what the encoder must equal byte for byte)."""
    (ltp, ltq, ltt, atp, volume, oi, prev_close, prev_oi, open_, high, low, close, bid, bid_qty, ask, ask_qty,
     updated_at, stale) = row  # fmt: skip

    def pct(now: float | None, before: float | None) -> float | None:
        return None if now is None or before is None or before <= 0 else round(100.0 * (now - before) / before, 2)

    def ist(epoch: float | None) -> dt.datetime | None:
        return None if epoch is None else dt.datetime.fromtimestamp(epoch, IST)

    return orjson.dumps({
        "security_id": security_id, "ltp": ltp, "ltq": ltq, "ltt": ist(ltt), "atp": atp, "volume": volume, "oi": oi,
        "prev_close": prev_close, "prev_oi": prev_oi, "open": open_, "high": high, "low": low, "close": close,
        "bid": bid, "bid_qty": bid_qty, "ask": ask, "ask_qty": ask_qty, "updated_at": ist(updated_at), "stale": stale,
        "oi_change": None if oi is None or prev_oi is None else oi - prev_oi, "oi_change_pct": pct(oi, prev_oi),
        "change": None if ltp is None or prev_close is None else round(ltp - prev_close, 4),
        "change_pct": pct(ltp, prev_close), "two_sided": bid is not None and ask is not None,
    })  # fmt: skip


def _price(rng: random.Random) -> float | int | None:
    kind = rng.randrange(12)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([0.0, -0.0, 0, 1e300, -1e300, 1e15, 2.0**40 / 1e4, math.inf, -math.inf, math.nan, 5, -3])
    if kind == 2:  # dyadic: exact ties for round(…, 2) and round(…, 4)
        return rng.randint(-10**6, 10**6) / 2 ** rng.randint(1, 12)
    if kind == 3:  # next to a tie
        return math.nextafter(rng.randint(0, 10**6) / 2**5, rng.choice([math.inf, -math.inf]))
    if kind == 4:
        return rng.uniform(-1e9, 1e9)
    return round(rng.uniform(0.05, 30_000), rng.choice([1, 2, 2, 4]))


def _count(rng: random.Random) -> int | None:
    return rng.choice([None, 0, -5, 10**18, rng.randint(0, 10**7), rng.randint(-10**6, 10**6)])


def _instant(rng: random.Random) -> float | int | None:
    return rng.choice([None, NOW, NOW + rng.randint(0, 10**6), NOW + rng.random() * 10**5, 0, 1.5, -60, 59,
                       int(NOW) + rng.randint(-10**5, 10**5), rng.randint(0, 253_402_300_799 - 19_800)])


def test_the_leg_encoder_equals_a_plain_orjson_dump() -> None:
    """``encode_legs`` (one encoder call, memoised dates, exact fast rounding) gives, leg by leg, the bytes
    of ``orjson.dumps`` of the plain dict: missing values, zeros, negative changes, round()'s ties, -0.0,
    huge, infinite and NaN values, int-valued prices."""
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=1, strikes_per_side=6, today=TODAY)
    cache = ChainCache(build_universe(config, TODAY).skeleton, clock=ManualClock(NOW))
    legs = [leg for leg in cache.legs.values() if leg.contract is not None]
    rng = random.Random(1616)
    for _ in range(300):
        chosen = rng.choices(legs, k=rng.randint(0, 40))
        rows = [
            (_price(rng), _count(rng), _instant(rng), _price(rng), _count(rng), _count(rng), _price(rng), _count(rng),
             _price(rng), _price(rng), _price(rng), _price(rng), _price(rng), _count(rng), _price(rng), _count(rng),
             _instant(rng), rng.random() < 0.5)
            for _ in chosen
        ]  # fmt: skip
        blob, bounds = encode_legs(chosen, rows)
        assert len(bounds) == 2 * len(chosen)
        for i, (leg, row) in enumerate(zip(chosen, rows)):
            assert bytes(blob[bounds[2 * i] : bounds[2 * i + 1] + 1]) == _reference_leg(leg.key[1], row), row


def test_fast_rounding_equals_round() -> None:
    """``_round4``/``_round2`` are ``round(x, 4)``/``round(x, 2)``: same value, same type, same sign of zero."""
    rng = random.Random(4)
    values: list[float] = [0.0, -0.0, 1e-9, -1e-9, 0.00005, -0.00005, 0.005, -0.005, 1e300, math.inf, math.nan, 7, -2]
    for _ in range(20_000):
        x = rng.randint(-10**7, 10**7) / 2 ** rng.randint(0, 14)  # dyadic: exact ties
        values += [x, math.nextafter(x, math.inf), math.nextafter(x, -math.inf), rng.uniform(-1e6, 1e6),
                   rng.randint(-10**6, 10**6) / 10**rng.randint(0, 6) + rng.choice([0.5e-4, 0.5e-2, 0.0]),
                   rng.uniform(-1, 1) * 10 ** rng.randint(-8, 14)]  # fmt: skip
    for x in values:
        for fast, digits in ((_round4, 4), (_round2, 2)):
            got, want = fast(x), round(x, digits)
            assert type(got) is type(want), x
            assert got == want or (math.isnan(got) and math.isnan(want)), x
            assert math.copysign(1, got) == math.copysign(1, want), x


# ---------------------------------------------------------------- the column encoder (encode_many)

_TIES = [0.005, -0.005, 0.00005, 1.125, 2.675, 1e16, 0.00001, 2.0**40 / 1e4, 2.0**40 / 1e2, 1e300, 5e-324]
_prices = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),  # any double: -0.0, subnormal, huge, inf, nan
    st.sampled_from([0.0, -0.0, *_TIES, *(-x for x in _TIES)]),
    st.builds(lambda k, e: k / 2**e, st.integers(-10**7, 10**7), st.integers(0, 14)),  # exact ties
    st.builds(lambda c: c / 100, st.integers(1, 3_000_000)),  # ordinary prices
)
_INT64 = 2**63 - 1
_counts = st.one_of(
    st.none(),
    st.integers(-10**6, 10**7),
    st.sampled_from([0, 1, -1, 2**53 - 1, 2**53, 2**53 + 1, 2**62 - 1, -(2**62) + 1, 2**62, _INT64, -_INT64]),
    st.integers(-_INT64, _INT64),  # -2**63 is the columns' "missing"
)
_trade_times = st.one_of(st.none(), st.integers(-10**10, 253_402_300_799 - 19_800), st.just(int(NOW)))
_received = st.one_of(st.none(), st.floats(0, 2.5e11), st.just(NOW), st.just(NOW + 0.123456))
_leg_state = st.tuples(
    st.tuples(*[_prices if kind == "p" else _counts for kind in "pcpccpppppcpc"]),  # FullTick's fields, in order
    _trade_times, _received, st.none() | st.tuples(_prices, _counts), st.booleans(),
)


def _set_state(cache: ChainCache, leg: Any, state: tuple) -> None:
    fields, ltt, at, prev, stale = state
    ltp, ltq, atp, volume, oi, open_, close, high, low, bid, bid_qty, ask, ask_qty = fields[:13]
    cache.apply([FullTick(leg.key, ltp, ltq, ltt, atp, volume, 1, 2, oi, open_, close, high, low, bid, bid_qty, ask,
                          ask_qty, at)])  # fmt: skip
    if prev is not None:
        cache.apply([PrevCloseTick(leg.key, prev[0], prev[1], at)])
    if stale:
        cache.mark_stale([leg.key])


def _objects_of(view: Any, bounds: list[int]) -> list[bytes]:
    return [bytes(view[bounds[2 * i] : bounds[2 * i + 1] + 1]) for i in range(len(bounds) // 2)]


def _reference_or_error(legs: list[Any], cache: ChainCache) -> list[bytes] | type[BaseException]:
    try:
        return _objects_of(*encode_legs(legs, cache.leg_rows(legs)))
    except (ValueError, OverflowError, OSError, TypeError) as exc:  # a trade time no datetime holds, an
        return type(exc)  # oi_change beyond 64 bits (orjson's ints)


@pytest.fixture(scope="module")
def small_skeleton() -> ChainSkeleton:
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=2, strikes_per_side=4, today=TODAY)
    return build_universe(config, TODAY).skeleton


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # immutable
@given(states=st.lists(_leg_state, min_size=1, max_size=16), data=st.data())
def test_the_column_encoder_equals_encode_legs(
    small_skeleton: ChainSkeleton, monkeypatch: pytest.MonkeyPatch, states: list, data: Any
) -> None:
    """``encode_many`` (column-wise: numpy for the derived fields, one orjson call per matrix) gives,
    leg by leg, ``encode_legs``' bytes for any leg state the cache can hold: missing fields, zeros,
    -0.0, round()'s ties, huge, infinite and NaN prices, prev_close ≤ 0, prev_oi 0, ints around 2^53
    and beyond 2^62 (Python's exact ints), stale legs; and it takes the column path for all but the last."""
    monkeypatch.setattr(snapshot, "_COLUMNS_MIN", 1)  # the column path for any number of legs
    cache = ChainCache(small_skeleton, clock=ManualClock(NOW))
    legs = [leg for leg in cache.legs.values() if leg.contract is not None]
    chosen = data.draw(st.lists(st.sampled_from(legs), min_size=len(states), max_size=len(states), unique=True))
    for leg, state in zip(chosen, states):
        _set_state(cache, leg, state)
    order = data.draw(st.permutations(chosen))
    expected = _reference_or_error(order, cache)
    if not isinstance(expected, list):
        with pytest.raises(expected):
            encode_many(order, cache.leg_rows)
        return
    view, bounds = encode_many(order, cache.leg_rows)
    assert _objects_of(view, bounds) == expected
    oi_fits = all(abs(v) < 2**62 for leg in order for v in (leg.oi, leg.prev_oi) if v is not None)
    if oi_fits:  # the column path (bytes), not encode_legs' (memoryviews of its buffer)
        assert all(type(base) is bytes for base in _objects(order, cache.leg_rows))


def test_legs_the_roll_removed_are_encoded_from_their_own_state(small_skeleton: ChainSkeleton) -> None:
    """Legs detached from the cache's columns (their chain rolled out) keep their last state and
    encode as before: through ``encode_legs``, alone or mixed with attached legs."""
    cache = ChainCache(small_skeleton, clock=ManualClock(NOW))
    rng = random.Random(7)
    for leg in cache.legs.values():
        cache.apply([full_tick(leg.key, round(rng.uniform(1, 400), 2), oi=rng.randint(1, 10**6))])
        cache.apply([prev_close_tick(leg.key)])
    und = small_skeleton.underlyings["NIFTY"]
    first, kept = und.expiries[0].expiry, und.expiries[1].expiry
    removed = [leg for _, ce, pe in cache.chains[("NIFTY", first)].rows for leg in (ce, pe) if leg is not None]
    before = _objects_of(*encode_legs(removed, cache.leg_rows(removed)))
    cache.reconfigure(dataclasses.replace(small_skeleton, underlyings={
        "NIFTY": dataclasses.replace(und, expiries=und.expiries[1:])}))  # fmt: skip
    attached = [leg for _, ce, pe in cache.chains[("NIFTY", kept)].rows for leg in (ce, pe) if leg is not None]
    for legs in (removed, removed[:3] + attached[:5]):
        assert _objects_of(*encode_many(legs, cache.leg_rows)) == _objects_of(*encode_legs(legs, cache.leg_rows(legs)))
    assert _objects_of(*encode_many(removed, cache.leg_rows)) == before


def _rebuilt(chain: Any, times: ChainTimes) -> Any:
    """The chain's body from scratch, the replica's way, from ``encode_legs`` of each leg alone."""

    def doc(leg: Any) -> bytes | None:
        if leg is None:
            return None
        blob, bounds = encode_legs([leg], [tuple(getattr(leg, name) for name in ROW_FIELDS)])
        return bytes(blob[bounds[0] : bounds[1] + 1])

    return chain_snapshot(
        chain.underlying, chain.expiry, underlying_ltp=chain.index.ltp, lot_size=chain.lot_size,
        updated_at=chain.updated_at, version=chain.version, times=times,
        rows=[(strike, doc(ce), doc(pe)) for strike, ce, pe in chain.rows], analytics=chain.analytics,
    )  # fmt: skip


@pytest.mark.parametrize("column_min", [1, snapshot._COLUMNS_MIN])  # the column path for every render, or as tuned
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # restored
@given(seed=st.integers(0, 2**32 - 1))
def test_patched_renders_equal_a_rebuild(column_min: int, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """After random batches (many legs or few, full and partial ticks, stale flips, the mirror
    reading legs, new analytics), every render spliced from the last one has the body, spans,
    per-leg digests and ETag of a from-scratch build of the same state from ``encode_legs``."""
    monkeypatch.setattr(snapshot, "_COLUMNS_MIN", column_min)
    rng = random.Random(seed)
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=1, strikes_per_side=20, today=TODAY)
    skeleton = _with_missing_sides(build_universe(config, TODAY).skeleton)
    cache = ChainCache(skeleton, clock=ManualClock(NOW))
    chain = next(iter(cache.chains.values()))
    keys = [leg.key for leg in cache.legs.values() if leg.contract is not None]
    params, calendar = AnalyticsSettings(), MarketCalendar(always_open=True)

    def price() -> float | None:
        return rng.choice([None, 0.0, -0.0, 1e16, math.inf, round(rng.uniform(0.05, 500), 2),
                           rng.randint(0, 10**5) / 2**rng.randint(0, 10)])  # fmt: skip

    for step in range(40):
        at = NOW + step + rng.random()
        chosen = rng.sample(keys, rng.choice([0, 1, 3, 4, 5, 20, len(keys) // 2, len(keys)]))
        ticks: list[Any] = []
        for key in chosen:
            kind = rng.randrange(4)
            if kind == 0:
                ticks.append(full_tick(key, price(), received_at=at, oi=rng.choice([None, 0, rng.randint(1, 10**6)]),
                                       bid=price(), ask=price(), ltt=rng.choice([None, int(at), int(at) - 3600])))
            elif kind == 1:
                ticks.append(PrevCloseTick(key, price(), rng.choice([None, 0, rng.randint(1, 10**6)]), at))
            elif kind == 2:
                ticks.append(TradeTick(key, price(), int(at), at))
            else:
                ticks.append(OpenInterestTick(key, rng.randint(0, 10**6), at))
        cache.apply(ticks)
        if rng.random() < 0.15:
            cache.mark_stale(rng.sample(keys, 6))
        if rng.random() < 0.1:
            cache.set_analytics(chain, analyse(chain, at, params, calendar))
        if rng.random() < 0.3:  # the Redis mirror reads legs between renders
            for key in rng.sample(keys, 5):
                leg_json(cache.legs[key])
        times = ChainTimes(step % 9 == 8, 1, "open", None)
        snap = render(chain, times, cache.leg_rows)
        expected = _rebuilt(chain, times)
        assert snap.body == expected.body, step
        assert snap.etag == expected.etag
        assert snap.spans.tolist() == expected.spans.tolist()
        assert snap.digests.tolist() == expected.digests.tolist()
        assert snap.strikes_at == expected.strikes_at
        assert all(leg.doc is IN_BODY for _, ce, pe in chain.rows for leg in (ce, pe) if leg is not None)


def test_the_encoders_memos_stay_bounded_and_exact(
    small_skeleton: ChainSkeleton, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The column path's memoised time texts (receive times, trade minutes) are cleared when full,
    mid-batch included, without a leg losing its text: every batch equals ``encode_legs``."""
    monkeypatch.setattr(snapshot, "_COLUMNS_MIN", 1)
    cache = ChainCache(small_skeleton, clock=ManualClock(NOW))
    legs = [leg for leg in cache.legs.values() if leg.contract is not None]
    rng = random.Random(44)
    for step in range(400):  # 16 new receive times and ~16 new minutes per batch: the memos fill many times
        for leg in legs:
            at = NOW + rng.random() * 10**7 if rng.random() < 0.9 else NOW
            cache.apply([full_tick(leg.key, received_at=at, ltt=int(at) - rng.choice([0, 60 * rng.randint(1, 10**5)]))])
        chosen = rng.sample(legs, 16)
        view, bounds = encode_many(chosen, cache.leg_rows)
        assert all(type(base) is bytes for base in _objects(chosen, cache.leg_rows))  # the column path
        assert _objects_of(view, bounds) == _objects_of(*encode_legs(chosen, cache.leg_rows(chosen))), step


def test_the_column_encoder_rounds_like_round_next_to_ties(
    small_skeleton: ChainSkeleton, monkeypatch: pytest.MonkeyPatch
) -> None:
    """change (4 places), change_pct and oi_change_pct (2 places) next to decimal ties (x.xxxx5,
    x.xx5: never exact in binary, so their products with 10^d fall either side of .5) are what
    round() gives, as in ``encode_legs``: the numpy form takes only values it is exact for."""
    monkeypatch.setattr(snapshot, "_COLUMNS_MIN", 1)
    cache = ChainCache(small_skeleton, clock=ManualClock(NOW))
    legs = [leg for leg in cache.legs.values() if leg.contract is not None]
    rng = random.Random(2675)
    for _ in range(150):
        for leg in legs:
            prev_close = rng.choice([0.0, 100.0, 50.0, 1.0, 3.0])
            ltp = prev_close + rng.choice([(2 * rng.randint(0, 10**7) + 1) * 5 / 10**5,  # x.xxxx5 away: change
                                           (2 * rng.randint(0, 10**5) + 1) * 5 / 10**3 * prev_close / 100])  # pct
            prev_oi = rng.choice([100_000, 200, 1_000_000, 3])
            oi = prev_oi + rng.choice([(2 * rng.randint(0, 10**5) + 1) * 5, rng.randint(-10**4, 10**4)])
            cache.apply([full_tick(leg.key, ltp, oi=oi), PrevCloseTick(leg.key, prev_close, prev_oi, NOW)])
        view, bounds = encode_many(legs, cache.leg_rows)
        assert _objects_of(view, bounds) == _objects_of(*encode_legs(legs, cache.leg_rows(legs)))
