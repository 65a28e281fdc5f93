"""Chain bodies rendered incrementally (changed legs spliced into the last body) equal full renders."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random

import orjson

from feeds.calendar import MarketCalendar
from feeds.clock import ManualClock
from feeds.model import ChainSkeleton, StrikeRow
from service.analytics.compute import analyse
from service.core.cache import ChainCache
from service.core.freshness import ChainTimes
from feeds.model import IST
from service.core.snapshot import IN_BODY, _round2, _round4, chain_snapshot, encode_legs, leg_json, render
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
