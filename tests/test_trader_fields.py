"""The fields traders read first: OI change %, totals, max-OI strikes, days to expiry, market state."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from feeds.calendar import MarketCalendar
from feeds.clock import ManualClock, ist_instant
from feeds.model import IST, ChainSkeleton
from service.analytics.compute import analyse
from service.core.cache import ChainCache
from service.core.freshness import Freshness
from service.core.snapshot import render
from service.redis.layout import calendar_from_json, calendar_to_json
from service.settings import AnalyticsSettings
from tests.conftest import NOW, TODAY, full_tick, prev_close_tick

# Holidays around a weekend: Friday 2026-11-27 off, so after Thursday's close the next
# session is Monday 2026-11-30.
HOLIDAY = dt.date(2026, 11, 27)
CAL = MarketCalendar(holidays=frozenset({HOLIDAY}))


@pytest.mark.parametrize(
    ("day", "time", "state", "next_open"),
    [
        (dt.date(2026, 11, 26), dt.time(8, 59), "closed", dt.date(2026, 11, 26)),
        (dt.date(2026, 11, 26), dt.time(9, 0), "pre_open", dt.date(2026, 11, 26)),
        (dt.date(2026, 11, 26), dt.time(9, 14, 59), "pre_open", dt.date(2026, 11, 26)),
        (dt.date(2026, 11, 26), dt.time(9, 15), "open", dt.date(2026, 11, 30)),  # Friday is a holiday
        (dt.date(2026, 11, 26), dt.time(15, 30), "closed", dt.date(2026, 11, 30)),
        (HOLIDAY, dt.time(9, 5), "closed", dt.date(2026, 11, 30)),  # no pre-open on a holiday
        (dt.date(2026, 11, 28), dt.time(10, 0), "closed", dt.date(2026, 11, 30)),  # Saturday
    ],
)
def test_market_state_and_next_open(day: dt.date, time: dt.time, state: str, next_open: dt.date) -> None:
    """Pre-open 09:00–09:15, open to 15:30, closed otherwise; next_open skips weekends and holidays."""
    now = ist_instant(day, time)
    assert CAL.state(now) == state
    assert CAL.next_open(now) == dt.datetime.combine(next_open, dt.time(9, 15), IST)


def test_always_and_never_open_calendars_have_no_next_open() -> None:
    """The simulator's market is always open, a replay's never: there is no next session to name."""
    assert (MarketCalendar(always_open=True).state(NOW), MarketCalendar(always_open=True).next_open(NOW)) == ("open", None)
    assert (MarketCalendar(never_open=True).state(NOW), MarketCalendar(never_open=True).next_open(NOW)) == ("closed", None)


def test_calendar_travels_to_replicas_with_its_pre_open() -> None:
    """The catalog's calendar keeps the pre-open time; a catalog written without one gets NSE's."""
    cal = MarketCalendar(pre_open_time=dt.time(8, 45), holidays=frozenset({HOLIDAY}))
    doc = calendar_to_json(cal)
    assert calendar_from_json(doc) == cal
    del doc["pre_open_time"]
    assert calendar_from_json(doc).pre_open_time == dt.time(9, 0)


def test_body_market_and_days_to_expiry_follow_the_clock(skeleton: ChainSkeleton) -> None:
    """The same chain version renders anew when the market opens or the day turns; the days count
    down to 0 on expiry day."""
    clock = ManualClock(ist_instant(TODAY, dt.time(9, 10)))
    cache = ChainCache(skeleton, clock=clock)
    freshness = Freshness(30.0, CAL, clock)
    expiry = cache.expiries["NIFTY"][0]
    chain = cache.chains[("NIFTY", expiry)]
    cache.apply([full_tick(k, received_at=clock.time()) for k, leg in cache.legs.items() if leg.contract])

    def body() -> dict:
        return orjson.loads(render(chain, freshness.times(expiry, chain.stale_legs, chain.updated_at)).body)

    pre = body()
    assert pre["market"] == {"state": "pre_open", "next_open": dt.datetime.combine(TODAY, dt.time(9, 15), IST).isoformat()}
    assert pre["days_to_expiry"] == (expiry - TODAY).days == 1
    clock.set(ist_instant(TODAY, dt.time(9, 16)))
    opened = body()
    assert opened["version"] == pre["version"] and opened["market"]["state"] == "open"
    assert opened["market"]["next_open"] == dt.datetime.combine(TODAY + dt.timedelta(days=1), dt.time(9, 15), IST).isoformat()
    clock.set(ist_instant(expiry, dt.time(10, 0)))
    assert body()["days_to_expiry"] == 0


def test_oi_change_pct_totals_and_max_oi(skeleton: ChainSkeleton) -> None:
    """OI change % per leg against the previous session's OI (null without one); per side the
    totals and the strikes of the largest OI and OI addition."""
    cache = ChainCache(skeleton, clock=ManualClock(NOW))
    expiry = cache.expiries["NIFTY"][0]
    chain = cache.chains[("NIFTY", expiry)]
    strikes = [s for s, _, _ in chain.rows]
    ce_oi = [1000, 5000, 3000, 2000, 1000]
    pe_oi = [4000, 6000, 2000, 500, 100]
    ticks = []
    for i, (_, ce, pe) in enumerate(chain.rows):
        ticks += [full_tick(ce.key, oi=ce_oi[i], volume=10 * (i + 1)), full_tick(pe.key, oi=pe_oi[i], volume=20)]
    # Previous-session OI (28000 each, see prev_close_tick) for every leg but the first PE.
    ticks += [prev_close_tick(ce.key) for _, ce, _ in chain.rows] + [prev_close_tick(pe.key) for _, _, pe in chain.rows[1:]]
    cache.apply(ticks)
    body = orjson.loads(render(chain, Freshness(30.0, CAL, ManualClock(NOW)).times(expiry, 0, NOW)).body)
    first_pe = body["strikes"][0]["pe"]
    assert first_pe["prev_oi"] is None and first_pe["oi_change"] is None and first_pe["oi_change_pct"] is None
    assert body["strikes"][1]["ce"]["oi_change_pct"] == round(100 * (5000 - 28000) / 28000, 2)

    a = analyse(chain, NOW, AnalyticsSettings())
    assert a.chain["totals"] == {
        "ce": {"oi": 12000, "oi_change": 12000 - 5 * 28000, "volume": 150},
        "pe": {"oi": 12600, "oi_change": (12600 - 4000) - 4 * 28000, "volume": 100},
    }
    assert a.chain["max_oi"] == {"ce": strikes[1], "pe": strikes[1]}
    # The largest change (the least negative here) among legs with a previous OI.
    assert a.chain["max_oi_change"] == {"ce": strikes[1], "pe": strikes[1]}


def test_oi_summary_is_null_without_data(skeleton: ChainSkeleton) -> None:
    """No OI, no volume: every total and max-OI strike is null, never 0."""
    cache = ChainCache(skeleton, clock=ManualClock(NOW))
    chain = cache.chains[("NIFTY", cache.expiries["NIFTY"][0])]
    a = analyse(chain, NOW, AnalyticsSettings())
    none = {"oi": None, "oi_change": None, "volume": None}
    assert a.chain["totals"] == {"ce": none, "pe": none}
    assert a.chain["max_oi"] == a.chain["max_oi_change"] == {"ce": None, "pe": None}
