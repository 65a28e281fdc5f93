"""The expiry roll: expired chains leave the cache, Redis and the feed; the next expiry joins."""

from __future__ import annotations

import datetime as dt

import pytest

from feeds.calendar import MarketCalendar
from feeds.clock import ShiftedClock, ist_instant
from feeds.dhan.packets import FeedMode
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.server import SimulatorServer
from feeds.simulator.universe import build_universe
from service.app import running_service
from service.core.roll import live_skeleton
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401  (the fixture)
from tests.test_service import get_json, quiesce, assert_cache_matches_simulator, settings_for, until

pytestmark = pytest.mark.usefixtures("dhan_env")

SIM3 = dict(underlyings=("NIFTY",), expiries=3, strikes_per_side=3, tick_interval_s=0.02, trades_per_step=10)


def _close(day: dt.date) -> float:
    return MarketCalendar().session_close(day).timestamp()


def test_live_skeleton_drops_expiries_at_1530_ist() -> None:
    """An expiry is live until 15:30 IST on its day, then the next one takes its place."""
    config = SimulatorConfig(**SIM3, today=dt.date(2026, 11, 23))
    full = build_universe(config, dt.date(2026, 11, 23)).skeleton
    first, second, third = (e.expiry for e in full.underlyings["NIFTY"].expiries)
    calendar = MarketCalendar()
    before = live_skeleton(full, 2, _close(first) - 1, calendar)
    after = live_skeleton(full, 2, _close(first) + 1, calendar)
    assert [e.expiry for e in before.underlyings["NIFTY"].expiries] == [first, second]
    assert [e.expiry for e in after.underlyings["NIFTY"].expiries] == [second, third]


MONDAY_11AM = ist_instant(dt.date(2026, 11, 23), dt.time(11, 0))  # NIFTY's weekly expiry is the next day


async def test_roll_moves_chains_subscriptions_and_http() -> None:
    """After the first expiry ends, its chain is gone everywhere and the third expiry streams."""
    clock = ShiftedClock(MONDAY_11AM)
    async with SimulatorServer(SimulatorConfig(**SIM3), clock=clock.time) as sim:
        async with running_service(settings_for(sim), clock=clock) as svc:
            expiries = [e.expiry for e in sim.universe.skeleton.underlyings["NIFTY"].expiries]
            assert svc.cache.expiries["NIFTY"] == expiries[:2]
            roller = svc.roller
            assert await roller.roll_once() is False  # nothing has ended yet
            clock.set(_close(expiries[0]) + 60)
            unsubscribes = sim.stats.unsubscribe_requests[FeedMode.FULL]
            assert await roller.roll_once() is True
            assert svc.cache.expiries["NIFTY"] == expiries[1:]
            old_keys = {c.key for c in sim.universe.skeleton.underlyings["NIFTY"].expiries[0].contracts()}
            assert not old_keys & set(svc.cache.legs)
            await until(lambda: sim.stats.unsubscribe_requests[FeedMode.FULL] > unsubscribes)
            await until(lambda: svc.cache.coverage == 1.0)  # the new chain has data
            status, body = await get_json(svc.http_port, "/options/underlyings")
            assert [e["expiry"] for e in body["underlyings"][0]["expiries"]] == [d.isoformat() for d in expiries[1:]]
            status, _ = await get_json(svc.http_port, "/options/live", underlying="NIFTY", expiry=expiries[0].isoformat())
            assert status == 404
            status, live = await get_json(svc.http_port, "/options/live", underlying="NIFTY", expiry=expiries[2].isoformat())
            assert status == 200 and all(r["ce"]["ltp"] is not None for r in live["strikes"])
            assert await roller.roll_once() is False  # nothing more to do
            await quiesce(sim, svc)
            assert_cache_matches_simulator(svc.cache, sim)



async def test_roll_rewrites_redis(redis_server: RedisServer) -> None:  # noqa: F811
    """The mirror drops the expired chain's keys and writes the new one under a new run."""
    from service.redis.layout import CATALOG_KEY, Catalog, chain_id, legs_key

    clock = ShiftedClock(MONDAY_11AM)
    async with SimulatorServer(SimulatorConfig(**SIM3), clock=clock.time) as sim:
        settings = settings_for(sim, redis={"enabled": True, "url": redis_server.url})
        async with running_service(settings, clock=clock) as svc:
            expiries = [e.expiry for e in sim.universe.skeleton.underlyings["NIFTY"].expiries]
            client = redis_server.client()
            try:
                await until(lambda: svc.mirror.stats.flushes > 0)
                run = svc.mirror.run
                assert await client.exists(legs_key(chain_id("NIFTY", expiries[0])))
                clock.set(_close(expiries[0]) + 60)
                assert await svc.roller.roll_once()
                await until(lambda: svc.mirror.run != run)  # the full rewrite has been written
                assert not await client.exists(legs_key(chain_id("NIFTY", expiries[0])))
                assert await client.exists(legs_key(chain_id("NIFTY", expiries[2])))
                catalog = Catalog.from_json(await client.get(CATALOG_KEY))
                assert [c.expiry for c in catalog.underlyings[0].chains] == expiries[1:]
            finally:
                await client.aclose()
