"""Chain analytics (service.analytics.compute) on hand-made chains: PCR, max pain, forward, ATM, per-leg IV.

The fixture chain is NIFTY 2026-11-24, strikes 24900…25100 step 50; ``NOW`` is 2026-11-18
16:36:40 IST, 5.95 days before the 15:30 expiry.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import orjson
import pytest

from feeds.clock import ManualClock
from feeds.model import ChainSkeleton, OpenInterestTick, QuoteTick
from service.analytics.compute import (
    ChainAnalytics,
    DhanGreeks,
    analyse,
    atm_strike,
    expiry_instant,
    max_pain,
    years_to_expiry,
)
from service.analytics.runner import AnalyticsRunner
from service.core.cache import Chain, ChainCache, LegSeed
from service.analytics.greeks import black76
from service.settings import AnalyticsSettings
from service.core.snapshot import render
from service.core.freshness import ChainTimes
from tests.conftest import NOW, full_tick

R = 0.065
PARAMS = AnalyticsSettings(rate=R)
STRIKES = (24900.0, 24950.0, 25000.0, 25050.0, 25100.0)
EXPIRY = dt.date(2026, 11, 24)


@pytest.fixture
def cache(skeleton: ChainSkeleton) -> ChainCache:
    return ChainCache(skeleton, clock=ManualClock(NOW))


def near(cache: ChainCache) -> Chain:
    chain = cache.chains[("NIFTY", cache.expiries["NIFTY"][0])]
    assert tuple(s for s, _, _ in chain.rows) == STRIKES
    return chain


def fill(cache: ChainCache, chain: Chain, side: str, **columns: list) -> None:
    """Full ticks for every leg of one side, column values by strike (ascending)."""
    legs = [ce if side == "CE" else pe for _, ce, pe in chain.rows]
    ticks = []
    for i, leg in enumerate(legs):
        fields = {name: values[i] for name, values in columns.items()}
        ticks.append(full_tick(leg.key, **fields))
    cache.apply(ticks)


def index(cache: ChainCache, ltp: float | None) -> None:
    key = cache.index_keys["NIFTY"]
    cache.apply([QuoteTick(key, ltp, 0, int(NOW), None, 0, 0, 0, None, None, None, None, NOW)])


def body_of(cache: ChainCache, chain: Chain, analytics: ChainAnalytics) -> dict:
    cache.set_analytics(chain, analytics)
    return orjson.loads(render(chain, ChainTimes(False, 0, "open", None)).body)


# --------------------------------------------------------------------------- PCR and max pain


def test_pcr_and_max_pain_match_hand_computation(cache: ChainCache) -> None:
    """OI calls 1000/3000/6000/2000/500, puts 4000/2500/3000/1000/200 by strike.

    Holders' intrinsic value if NIFTY settles at each strike (calls + puts):
      24900:        0 + 125000+300000+150000+40000 =  615000
      24950:    50000 + 150000+100000+30000        =  330000
      25000:   250000 + 50000+20000                =  320000   ← least: max pain 25000
      25050:   750000 + 10000                      =  760000
      25100:  1350000 + 0                          = 1350000
    PCR(OI) = 10700 / 12500 = 0.856; PCR(volume) = 2250 / 1500 = 1.5.
    """
    chain = near(cache)
    fill(cache, chain, "CE", oi=[1000, 3000, 6000, 2000, 500], volume=[100, 200, 300, 400, 500])
    fill(cache, chain, "PE", oi=[4000, 2500, 3000, 1000, 200], volume=[150, 300, 450, 600, 750])
    a = analyse(chain, NOW, PARAMS)
    assert a.chain["pcr_oi"] == 0.856
    assert a.chain["pcr_volume"] == 1.5
    assert a.chain["max_pain"] == 25000.0


def test_max_pain_equals_the_definition_on_a_random_chain() -> None:
    """The linear-time max pain equals the quadratic definition, tie-break (lowest strike) included."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        strikes = np.cumsum(rng.integers(1, 4, n) * 50.0) + 20_000
        calls = rng.integers(0, 50, n).astype(float) * 75
        puts = rng.integers(0, 50, n).astype(float) * 75
        if calls.sum() + puts.sum() == 0:
            continue
        pain = [sum(c * max(s - k, 0) + p * max(k - s, 0) for k, c, p in zip(strikes, calls, puts)) for s in strikes]
        assert max_pain(strikes, calls, puts) == strikes[pain.index(min(pain))]


def test_pcr_and_max_pain_are_null_without_data(cache: ChainCache) -> None:
    """Nothing reported: null, never 0. Calls' OI all zero: the OI ratio is undefined (null)."""
    chain = near(cache)
    a = analyse(chain, NOW, PARAMS)
    assert (a.chain["pcr_oi"], a.chain["pcr_volume"], a.chain["max_pain"]) == (None, None, None)
    fill(cache, chain, "CE", oi=[0] * 5)
    fill(cache, chain, "PE", oi=[75] * 5)
    a = analyse(chain, NOW, PARAMS)
    assert a.chain["pcr_oi"] is None
    assert a.chain["max_pain"] == 25100.0  # puts alone: worthless if it settles at the highest strike


# --------------------------------------------------------------------------- forward, ATM, straddle


def parity_prices(forward: float, vol: float) -> tuple[list[float], list[float], float]:
    """Black-76 call and put prices at every strike for ``forward`` (C − P = e^{−rT}(F − K))."""
    years = years_to_expiry(EXPIRY, NOW)
    k = np.array(STRIKES)
    calls = black76(forward, k, years, R, vol, True).value
    puts = black76(forward, k, years, R, vol, False).value
    return calls.tolist(), puts.tolist(), years


def test_forward_from_parity_atm_straddle_and_iv(cache: ChainCache) -> None:
    """F from put-call parity beats the spot; ATM is the strike nearest F; IV recovers the vol."""
    chain = near(cache)
    calls, puts, years = parity_prices(25_012.5, 0.12)
    calls[0] = 500.0  # a stale far print: |C − P| is large there, so it is not used
    fill(cache, chain, "CE", ltp=calls)
    fill(cache, chain, "PE", ltp=puts)
    index(cache, 24_990.0)  # the spot disagrees with the options: parity wins
    a = analyse(chain, NOW, PARAMS)
    assert a.chain["forward"] == 25012.5 and a.chain["forward_source"] == "parity"
    assert a.chain["atm_strike"] == 25000.0
    assert a.chain["atm_straddle"] == round(calls[2] + puts[2], 4)
    assert a.chain["years_to_expiry"] == round(years, 8)
    for strike, side in [(s, side) for s in STRIKES[1:] for side in ("CE", "PE")] + [(24900.0, "PE")]:
        iv, dlt, gam, th, veg, source = a.legs[(strike, side)]
        assert source == "livechain"
        assert abs(iv - 12.0) <= 1e-4, (strike, side, iv)
        g = black76(25_012.5, strike, years, R, 0.12, side == "CE")
        assert (dlt, gam, th, veg) == pytest.approx([float(x) for x in g[1:]], abs=1e-4)
    assert a.legs[(24900.0, "CE")][0] is not None  # the stale print still gets its own (wrong-looking) IV


def test_forward_falls_back_to_the_spot_carried_at_the_rate(cache: ChainCache) -> None:
    """No strike with both prices: F = S·e^{rT}, said so; ATM from that forward."""
    chain = near(cache)
    fill(cache, chain, "CE", ltp=[150.0, 120.0, 90.0, 70.0, 50.0])
    index(cache, 25_020.0)
    a = analyse(chain, NOW, PARAMS)
    forward = 25_020.0 * math.exp(R * years_to_expiry(EXPIRY, NOW))
    assert a.chain["forward"] == round(forward, 4) and a.chain["forward_source"] == "spot"
    assert a.chain["atm_strike"] == 25050.0  # 25,046.6: carried past 25,025
    assert a.chain["atm_straddle"] is None  # no PE price at the ATM strike
    assert PARAMS.forward == "parity"
    spot_only = analyse(chain, NOW, AnalyticsSettings(rate=R, forward="spot"))
    assert spot_only.chain["forward_source"] == "spot"


@pytest.mark.parametrize("spot", [None, 0.0], ids=["missing", "zero"])
def test_atm_is_null_not_the_lowest_strike_without_a_price(cache: ChainCache, spot: float | None) -> None:
    """Out of hours (§8.10): OI but no option prices, and the underlying's price missing or 0."""
    chain = near(cache)
    cache.apply([OpenInterestTick(leg.key, 7500, NOW) for _, ce, pe in chain.rows for leg in (ce, pe)])
    index(cache, spot)
    if spot == 0.0:  # the normaliser never lets a 0 through; the cache must not trust one either
        assert chain.index.ltp == 0.0
    a = analyse(chain, NOW, PARAMS)
    assert a.chain["forward"] is None and a.chain["forward_source"] is None
    assert a.chain["atm_strike"] is None and a.chain["atm_straddle"] is None
    assert a.chain["pcr_oi"] == 1.0  # what does not need a price is still there
    assert a.legs == {}  # no leg has an IV: every per-leg analytic is null
    body = body_of(cache, chain, a)
    assert body["atm_strike"] is None and body["forward"] is None
    assert all(row[s]["iv"] is None and row[s]["iv_source"] is None for row in body["strikes"] for s in ("ce", "pe"))


def test_atm_strike_guards() -> None:
    strikes = np.array(STRIKES)
    for forward in (None, 0.0, -5.0, math.nan, math.inf):
        assert atm_strike(strikes, forward) is None
    assert atm_strike(strikes, 25_025.0) == 25000.0  # a tie goes to the lower strike
    assert atm_strike(strikes, 30_000.0) == 25100.0
    assert atm_strike(np.array([]), 25_000.0) is None


# --------------------------------------------------------------------------- per-leg sources and edge cases


def test_dhan_iv_only_where_we_cannot_price_the_leg(cache: ChainCache) -> None:
    """A leg without a price shows Dhan's numbers ("dhan"); once it trades, ours ("livechain");
    a price below intrinsic is null, not Dhan's."""
    chain = near(cache)
    calls, puts, _ = parity_prices(25_000.0, 0.12)
    fill(cache, chain, "CE", ltp=calls)
    fill(cache, chain, "PE", ltp=[*puts[:4], None])  # the 25100 put has not traded yet
    dhan = DhanGreeks(iv=14.11, delta=-0.6, gamma=0.00099, theta=-17.76, vega=11.29)
    pe_25100 = chain.rows[4][2]
    ce_24900 = chain.rows[0][1]
    assert cache.seed([LegSeed(pe_25100.key, None, None, None, dhan), LegSeed(ce_24900.key, None, None, None, dhan)]) == 2
    a = analyse(chain, NOW, PARAMS)
    assert a.legs[(25100.0, "PE")] == (14.11, -0.6, 0.00099, -17.76, 11.29, "dhan")
    assert a.legs[(24900.0, "CE")][5] == "livechain"  # it has a price: ours wins
    cache.apply([full_tick(pe_25100.key, ltp=puts[4])])
    assert analyse(chain, NOW, PARAMS).legs[(25100.0, "PE")][5] == "livechain"
    cache.apply([full_tick(ce_24900.key, ltp=50.0)])  # 24900 call worth ≥ 100 intrinsic: no IV
    a = analyse(chain, NOW, PARAMS)
    assert (24900.0, "CE") not in a.legs
    body = body_of(cache, chain, a)
    ce = body["strikes"][0]["ce"]
    assert [ce[k] for k in ("iv", "delta", "gamma", "theta", "vega", "iv_source")] == [None] * 6


def test_expired_chain_has_no_iv_but_keeps_what_needs_no_time(cache: ChainCache) -> None:
    chain = near(cache)
    calls, puts, _ = parity_prices(25_000.0, 0.12)
    fill(cache, chain, "CE", ltp=calls, oi=[100] * 5)
    fill(cache, chain, "PE", ltp=puts, oi=[200] * 5)
    cache.seed([LegSeed(chain.rows[2][1].key, None, None, None, DhanGreeks(14.0, 0.5, 0.001, -10.0, 5.0))])
    after = expiry_instant(EXPIRY) + 1
    a = analyse(chain, after, PARAMS)
    assert a.chain["years_to_expiry"] == 0.0
    assert a.legs == {}  # not ours, not Dhan's: an expired option has no IV
    assert a.chain["pcr_oi"] == 2.0 and a.chain["atm_strike"] == 25000.0


# --------------------------------------------------------------------------- transport and body


def test_analytics_travel_through_json_unchanged(cache: ChainCache) -> None:
    """What a replica rebuilds from Redis is equal, down to every leg's body bytes."""
    chain = near(cache)
    calls, puts, _ = parity_prices(25_000.0, 0.12)
    fill(cache, chain, "CE", ltp=calls)
    fill(cache, chain, "PE", ltp=[*puts[:4], None])
    cache.seed([LegSeed(chain.rows[4][2].key, None, None, None, DhanGreeks(14.11, -0.6, 0.00099, -17.76, 11.29))])
    a = analyse(chain, NOW, PARAMS)
    b = ChainAnalytics.from_json(a.to_json())
    assert b == a and b.head == a.head
    for strike in STRIKES:
        for side in ("CE", "PE"):
            assert b.leg_suffix(strike, side) == a.leg_suffix(strike, side)
    with pytest.raises((ValueError, KeyError, TypeError)):
        ChainAnalytics.from_json(b'{"computed_at": 1, "chain": {}, "legs": {"25000.0:XX": [1,2,3,4,5,"x"]}}')


def test_the_body_carries_chain_and_leg_analytics(cache: ChainCache) -> None:
    chain = near(cache)
    calls, puts, _ = parity_prices(25_000.0, 0.12)
    fill(cache, chain, "CE", ltp=calls, oi=[1000] * 5)
    fill(cache, chain, "PE", ltp=puts, oi=[2000] * 5)
    version = chain.version
    a = analyse(chain, NOW, PARAMS)
    body = body_of(cache, chain, a)
    assert chain.version > version and body["version"] == chain.version  # new analytics, new version
    assert (body["forward"], body["forward_source"], body["atm_strike"], body["pcr_oi"]) == (25000.0, "parity", 25000.0, 2.0)
    assert body["analytics_as_of"].endswith("+05:30")
    ce = body["strikes"][2]["ce"]
    assert ce["iv_source"] == "livechain" and abs(ce["iv"] - 12.0) <= 1e-4
    assert list(ce)[-6:] == ["iv", "delta", "gamma", "theta", "vega", "iv_source"]  # after the leg's own fields


# --------------------------------------------------------------------------- the runner and the cache's owner methods


def test_runner_recomputes_only_chains_that_changed(cache: ChainCache) -> None:
    runner = AnalyticsRunner(cache, AnalyticsSettings(rate=R), clock=ManualClock(NOW))
    assert runner.run_once() == 2  # both expiries, first time
    assert runner.run_once() == 0  # nothing changed: nothing recomputed
    chain = near(cache)
    cache.apply([full_tick(chain.rows[0][1].key)])
    assert runner.run_once() == 1  # only the chain that ticked
    index(cache, 25_000.0)
    assert runner.run_once() == 2  # the index is in every chain of its underlying
    assert runner.stats.passes == 5 and set(runner.stats.last_seconds) == {
        ("NIFTY", e.isoformat()) for e in cache.expiries["NIFTY"]
    }


def test_seed_fills_only_what_the_feed_has_not_sent(cache: ChainCache) -> None:
    chain = near(cache)
    leg, other = chain.rows[0][1], chain.rows[1][1]
    cache.apply([full_tick(leg.key, oi=30000)])  # live OI and no previous close yet
    covered, version = cache.covered, chain.version
    changed = cache.seed([LegSeed(leg.key, 99, 95.5, 28000, None), LegSeed(other.key, 750, 80.0, 600, None)])
    assert changed == 2 and chain.version > version
    assert (leg.oi, leg.prev_close, leg.prev_oi) == (30000, 95.5, 28000)  # live OI kept
    assert (other.oi, other.prev_close, other.prev_oi) == (750, 80.0, 600)
    assert cache.covered == covered and not other.seen  # REST is not feed coverage
    assert leg in cache.dirty and other in cache.dirty
    version = chain.version
    assert cache.seed([LegSeed(other.key, 1, 1.0, 1, None)]) == 0 and chain.version == version  # nothing new


def test_leg_values_kept_as_arrays_read_as_the_mapping_they_stand_for() -> None:
    """Float values with a known source are kept as arrays (``LegTable``); anything else (None,
    an int, another source) stays the dict it was given. Both read, compare and serialise alike."""
    from service.analytics.compute import LegTable

    legs = {(24900.0, "CE"): (12.5, 0.61, 0.0012, -8.25, 9.5, "livechain"),
            (24900.0, "PE"): (13.0, -0.39, 0.0012, -7.0, -0.0, "dhan"),
            (25000.0, "PE"): (1e-300, -1.0, 0.0, -0.0, 1e300, "livechain")}  # fmt: skip
    table = ChainAnalytics(NOW, {}, legs)
    assert isinstance(table.legs, LegTable)
    assert repr(list(table.legs.items())) == repr(list(legs.items()))
    assert table.legs == legs and dict(table.legs) == legs and len(table.legs) == 3
    assert table.legs[(24900.0, "PE")] == legs[(24900.0, "PE")] and (25000.0, "CE") not in table.legs
    with pytest.raises(KeyError):
        table.legs[(25000.0, "CE")]
    assert ChainAnalytics.from_json(table.to_json()) == table
    for odd in ((None, 0.5, 0.1, -1.0, 2.0, "livechain"), (12, 0.5, 0.1, -1.0, 2.0, "dhan"),
                (12.0, 0.5, 0.1, -1.0, 2.0, "other")):  # fmt: skip
        kept = ChainAnalytics(NOW, {}, {**legs, (25100.0, "CE"): odd})
        assert type(kept.legs) is dict and kept.legs[(25100.0, "CE")] == odd
        assert repr(list(orjson.loads(kept.to_json())["legs"].values())[-1]) == repr(list(odd))
