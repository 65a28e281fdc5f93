"""The option-chain cache and its snapshots: apply, versions, coverage, staleness, rendering."""

from __future__ import annotations

import datetime as dt

import orjson

from feeds.calendar import MarketCalendar
from feeds.clock import ManualClock, ist_instant
from feeds.model import ChainSkeleton, OpenInterestTick, TradeTick
from service.core.cache import Chain, ChainCache
from service.core.freshness import Freshness
from service.core.snapshot import render
from service.core.freshness import ChainTimes
from tests.conftest import NOW, full_tick, index_tick, prev_close_tick


def _first_chain(cache: ChainCache):
    return next(iter(cache.chains.values()))


def test_skeleton_becomes_chains_with_index_and_legs(skeleton: ChainSkeleton) -> None:
    """Every contract and the underlying index get a leg; chains are per expiry."""
    cache = ChainCache(skeleton)
    assert cache.subscribed == skeleton.instrument_count()
    assert len(cache.chains) == 2
    chain = _first_chain(cache)
    assert [r[0] for r in chain.rows] == sorted(r[0] for r in chain.rows)
    assert cache.coverage == 0.0


def test_full_tick_sets_every_field_and_bumps_version(skeleton: ChainSkeleton) -> None:
    """A Full tick fills the leg; the chain's version grows; other chains do not move."""
    cache = ChainCache(skeleton)
    chain_a, chain_b = cache.chains.values()
    leg = chain_a.rows[0][1]
    before_a, before_b = chain_a.version, chain_b.version
    cache.apply([full_tick(leg.key)])
    assert (leg.ltp, leg.ltq, leg.oi, leg.bid, leg.ask_qty, leg.close) == (101.5, 75, 30000, 101.45, 225, 98.5)
    assert chain_a.version > before_a and chain_b.version == before_b
    assert cache.covered == 1


def test_partial_ticks_keep_other_fields(skeleton: ChainSkeleton) -> None:
    """OI, trade and prev-close ticks change only their own fields."""
    cache = ChainCache(skeleton)
    leg = _first_chain(cache).rows[1][2]
    cache.apply([full_tick(leg.key), OpenInterestTick(leg.key, 31000, NOW + 1), TradeTick(leg.key, 102.0, 5, NOW + 2)])
    cache.apply([prev_close_tick(leg.key, received_at=NOW + 3)])
    assert (leg.oi, leg.ltp, leg.ltt, leg.bid, leg.prev_close, leg.prev_oi) == (31000, 102.0, 5, 101.45, 95.0, 28000)
    assert leg.updated_at == NOW + 3


def test_index_tick_bumps_every_chain_of_the_underlying(skeleton: ChainSkeleton) -> None:
    """underlying_ltp is in every chain's body, so an index tick changes them all."""
    cache = ChainCache(skeleton)
    versions = [c.version for c in cache.chains.values()]
    cache.apply([index_tick(cache.index_keys["NIFTY"])])
    assert all(c.version > v for c, v in zip(cache.chains.values(), versions))
    assert all(c.index.ltp == 24000.05 for c in cache.chains.values())


def test_unknown_instrument_is_counted_not_applied(skeleton: ChainSkeleton) -> None:
    """Late packets for instruments we do not track are dropped and counted."""
    cache = ChainCache(skeleton)
    cache.apply([full_tick((2, 999_999))])
    assert cache.ticks_unknown == 1 and cache.covered == 0


def test_coverage_counts_each_instrument_once(skeleton: ChainSkeleton) -> None:
    """Coverage is the share of instruments that received any data, per underlying too."""
    cache = ChainCache(skeleton)
    keys = list(cache.legs)
    cache.apply([full_tick(keys[1]), full_tick(keys[1]), full_tick(keys[2])])
    assert cache.covered == 2
    assert cache.missing_by_underlying() == {"NIFTY": cache.subscribed - 2}
    cache.apply([full_tick(k) for k in keys])
    assert cache.coverage == 1.0 and cache.missing_by_underlying() == {}


def _is_stale(freshness: Freshness, chain: Chain) -> bool:
    return freshness.is_stale(chain.stale_legs, chain.updated_at)


def test_mark_stale_until_fresh_data(skeleton: ChainSkeleton) -> None:
    """Lost instruments make their chain stale until every one of them has new data."""
    clock = ManualClock(NOW)
    cache = ChainCache(skeleton, clock=clock)
    freshness = Freshness(30.0, MarketCalendar(always_open=True), clock)
    chain = _first_chain(cache)
    legs = [leg for row in chain.rows for leg in row[1:]]
    cache.apply([full_tick(leg.key) for leg in legs] + [index_tick(chain.index.key)])
    assert not _is_stale(freshness, chain)
    version = chain.version
    cache.mark_stale([legs[0].key, legs[1].key])
    assert _is_stale(freshness, chain) and chain.version > version
    cache.apply([full_tick(legs[0].key)])
    assert _is_stale(freshness, chain)
    cache.apply([full_tick(legs[1].key)])
    assert not _is_stale(freshness, chain)


def test_chain_without_recent_updates_is_stale_only_while_open(skeleton: ChainSkeleton) -> None:
    """No update for longer than stale_after_s makes the chain stale while the market is open;
    after the close the same quiet chain is not stale."""
    tuesday_11am = ist_instant(dt.date(2026, 11, 17), dt.time(11, 0))
    clock = ManualClock(tuesday_11am)
    cache = ChainCache(skeleton, clock=clock)
    freshness = Freshness(30.0, MarketCalendar(), clock)
    chain = _first_chain(cache)
    cache.apply([full_tick(chain.rows[0][1].key, received_at=tuesday_11am)])
    assert not _is_stale(freshness, chain)
    clock.advance(31)
    assert _is_stale(freshness, chain)
    clock.set(ist_instant(dt.date(2026, 11, 17), dt.time(16, 0)))
    assert not _is_stale(freshness, chain)


def test_a_served_snapshot_follows_the_clock_between_changes(skeleton: ChainSkeleton) -> None:
    """``CacheChains`` hands a poller its last snapshot while nothing changed; whenever the clock
    alone changes the body (turning stale by age, the session's close, pre-open, midnight's
    days_to_expiry), it is the snapshot a fresh reader renders at that instant, boundaries included."""
    from service.core.chains import CacheChains

    day = dt.date(2026, 11, 17)  # a Tuesday session
    clock = ManualClock(ist_instant(day, dt.time(10, 59, 59)) + 0.25)
    cache = ChainCache(skeleton, clock=clock)
    chain = _first_chain(cache)
    cache.apply([full_tick(chain.rows[0][1].key, received_at=clock.time())])
    cache.apply([index_tick(chain.index.key, received_at=clock.time())])
    updated = clock.time()
    served = CacheChains(cache, Freshness(30.0, MarketCalendar(), clock))
    instants = [updated + d for d in (0.0, 0.5, 0.75, 1.0, 29.0, 29.998, 29.999, 30.0, 30.0001, 30.5, 31.0, 95.0)]
    instants += [ist_instant(day, t) + d for t in (dt.time(15, 30), dt.time(23, 59, 59)) for d in (-0.001, 0.0, 0.5)]
    instants += [ist_instant(day + dt.timedelta(days=1), t) + d for t in (dt.time(0, 0), dt.time(9, 0), dt.time(9, 15))
                 for d in (-0.0001, 0.0, 0.9999, 1.0)]  # fmt: skip
    seen = set()
    for at in instants:
        clock.set(at)
        for _ in range(2):  # the second read is the poller's repeat: the kept snapshot
            snap = served.snapshot(chain.underlying, chain.expiry)
            fresh = CacheChains(cache, Freshness(30.0, MarketCalendar(), clock))
            chain.rendered = None  # the fresh reader renders anew
            expected = fresh.snapshot(chain.underlying, chain.expiry)
            chain.rendered = snap
            assert snap is not None and expected is not None
            assert (snap.body, snap.etag) == (expected.body, expected.etag), at
        seen.add((snap.stale, orjson.loads(snap.body)["days_to_expiry"], orjson.loads(snap.body)["market"]["state"]))
    assert {s for s, _, _ in seen} == {True, False}  # the walk crossed the boundaries it is about
    assert len({d for _, d, _ in seen}) == 2 and {m for _, _, m in seen} == {"open", "closed", "pre_open"}


def test_nearest_expiry_ends_at_the_session_close(skeleton: ChainSkeleton) -> None:
    """An expiry is the nearest until its day's close (market.close_time), then the next one is."""
    expiries = ChainCache(skeleton).expiries["NIFTY"]
    clock = ManualClock(ist_instant(expiries[0], dt.time(15, 29)))
    freshness = Freshness(30.0, MarketCalendar(), clock)
    assert freshness.nearest_expiry(expiries) == expiries[0]
    clock.advance(60)
    assert freshness.nearest_expiry(expiries) == expiries[1]
    late_close = Freshness(30.0, MarketCalendar(close_time=dt.time(17, 0)), clock)
    assert late_close.nearest_expiry(expiries) == expiries[0]
    clock.set(ist_instant(expiries[-1], dt.time(18, 0)))
    assert freshness.nearest_expiry(expiries) is None


def test_render_nulls_for_never_received_values(skeleton: ChainSkeleton) -> None:
    """A leg with only a prev-close packet shows nulls, never zeros, for everything else."""
    cache = ChainCache(skeleton)
    chain = _first_chain(cache)
    leg = chain.rows[0][1]
    cache.apply([prev_close_tick(leg.key)])
    doc = orjson.loads(render(chain, ChainTimes(False, 0, "open", None)).body)
    ce = doc["strikes"][0]["ce"]
    assert ce["prev_close"] == 95.0 and ce["prev_oi"] == 28000
    for field in ("ltp", "ltq", "ltt", "atp", "volume", "oi", "open", "high", "low", "close", "bid", "ask"):
        assert ce[field] is None, field
    assert doc["underlying_ltp"] is None
    assert doc["strikes"][1]["ce"]["updated_at"] is None


def test_render_is_reused_until_the_chain_changes(skeleton: ChainSkeleton) -> None:
    """Same version and staleness → the very same snapshot; a change → a new body and ETag."""
    cache = ChainCache(skeleton)
    chain = _first_chain(cache)
    leg = chain.rows[0][1]
    cache.apply([full_tick(leg.key)])
    first = render(chain, ChainTimes(False, 0, "open", None))
    assert render(chain, ChainTimes(False, 0, "open", None)) is first
    assert render(chain, ChainTimes(True, 0, "open", None)).etag != first.etag
    cache.apply([full_tick(leg.key, ltp=102.0)])
    second = render(chain, ChainTimes(False, 0, "open", None))
    assert second.version > first.version and second.etag != first.etag
    assert orjson.loads(second.body)["strikes"][0]["ce"]["ltp"] == 102.0


def test_times_are_ist_iso8601(skeleton: ChainSkeleton) -> None:
    """ltt, updated_at and as_of are ISO-8601 with +05:30."""
    cache = ChainCache(skeleton)
    chain = _first_chain(cache)
    leg = chain.rows[0][1]
    cache.apply([full_tick(leg.key, ltt=1_781_064_197, received_at=1_781_064_197.25)])
    doc = orjson.loads(render(chain, ChainTimes(False, 0, "open", None)).body)
    assert doc["strikes"][0]["ce"]["ltt"] == "2026-06-10T09:33:17+05:30"
    assert doc["strikes"][0]["ce"]["updated_at"] == "2026-06-10T09:33:17.250000+05:30"
    assert doc["as_of"] == "2026-06-10T09:33:17.250000+05:30"
