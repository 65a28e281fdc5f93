"""Chain bodies rendered incrementally (changed legs spliced into the last body) equal full renders."""

from __future__ import annotations

import dataclasses
import random

import orjson

from feeds.calendar import MarketCalendar
from feeds.clock import ManualClock
from feeds.model import ChainSkeleton, StrikeRow
from service.analytics.compute import analyse
from service.core.cache import ChainCache
from service.core.freshness import ChainTimes
from service.core.snapshot import IN_BODY, chain_snapshot, leg_json, render
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
        snap = render(chain, times)
        fresh.rendered = None
        expected = render(fresh, times)
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
