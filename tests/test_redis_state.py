"""Redis state that stays right outside the lab: a Redis that forgets, a roll during a flush,
and replicas that agree with the primary at any hour."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feeds.calendar import MarketCalendar
from feeds.clock import ShiftedClock, ist_instant
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.universe import build_universe
from service.core.cache import ChainCache
from service.core.roll import live_skeleton
from service.redis.layout import CATALOG_KEY, RUN_KEY, Catalog
from service.redis.mirror import RedisMirror
from service.redis.replica import running_replica
from tests.conftest import TODAY, full_tick
from tests.helpers import UNIT_S, until
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401  (the fixture)
from tests.test_mirror import assert_redis_equals_cache, redis_settings
from tests.test_replica import assert_same_bytes, caught_up, frozen, get, primary_and_replica, replica_settings

# A Monday with a session (11:00) and after its close (16:00), in IST.
MONDAY = dt.date(2026, 11, 23)
MONDAY_11AM = ist_instant(MONDAY, dt.time(11, 0))
MONDAY_4PM = ist_instant(MONDAY, dt.time(16, 0))
STATE_BACK_S = 2.0  # the bound: verify_interval_s (1 s) plus a reconnect and a rewrite


async def _metric(port: int | None, name: str) -> float | None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


async def _state_back(client, cache: ChainCache) -> bool:  # noqa: ANN001
    try:
        await assert_redis_equals_cache(client, cache)
    except (AssertionError, ValueError, TypeError):  # no catalog yet, or a partial state
        return False
    return True


@pytest.mark.parametrize("forget", ["restart", "flushall"])
async def test_redis_that_forgets_while_nothing_changes_is_rewritten(
    redis_server: RedisServer, forget: str  # noqa: F811
) -> None:
    """Redis restarted empty (or flushed) while no ticks flow: the primary notices by itself,
    rewrites the full state within 2 s, and a replica started afterwards loads it."""
    async with primary_and_replica(redis_server.url) as (svc, first_replica):
        await frozen(svc)  # no tick flows from here on
        await until(caught_up(svc, first_replica))
        mirror = svc.mirror
        assert mirror is not None
        lost = mirror.stats.state_lost
        if forget == "restart":
            await redis_server.stop()
            await redis_server.start()
        else:
            admin = redis_server.client()
            try:
                await admin.flushall()
            finally:
                await admin.aclose()
        gone_at = asyncio.get_running_loop().time()
        client = redis_server.client()
        try:
            async with asyncio.timeout(STATE_BACK_S):
                while not await _state_back(client, svc.cache):
                    await asyncio.sleep(0.02)
            took = asyncio.get_running_loop().time() - gone_at
            assert await client.get(RUN_KEY) == mirror.run.encode()
        finally:
            await client.aclose()
        assert took < STATE_BACK_S
        if forget == "flushall":  # the connection survived: only the check can have noticed
            assert mirror.stats.state_lost == lost + 1
            assert await _metric(svc.metrics_port, "livechain_mirror_state_lost_total") == lost + 1
        async with running_replica(replica_settings(redis_server.url)) as fresh:
            await until(caught_up(svc, fresh))
            await assert_same_bytes(svc, fresh)
        await until(caught_up(svc, first_replica))  # the running replica reloaded too
        await assert_same_bytes(svc, first_replica)


async def test_a_roll_during_an_in_flight_flush_is_not_lost(redis_server: RedisServer) -> None:  # noqa: F811
    """The cache's layout changes while a flush waits on Redis: the next write is a full rewrite
    with the new expiries (the old mirror overwrote the roll's request and kept the old ones)."""
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=3, strikes_per_side=2, today=TODAY)
    full = build_universe(config, TODAY).skeleton
    calendar = MarketCalendar()
    expiries = [e.expiry for e in full.underlyings["NIFTY"].expiries]
    cache = ChainCache(live_skeleton(full, 2, calendar.session_close(TODAY).timestamp() - 1, calendar))
    async with RedisMirror(cache, redis_settings(redis_server.url)) as mirror:
        await until(lambda: mirror.stats.connected and mirror.pending == 0)
        client = redis_server.client()
        try:
            # Writes wait while Redis is paused (reads do not): the next flush stays in flight.
            await client.execute_command("CLIENT", "PAUSE", int(UNIT_S * 100), "WRITE")
            leg = next(leg for leg in cache.legs.values() if leg.contract is not None)
            cache.apply([full_tick(leg.key)])
            await until(lambda: mirror._in_flight > 0)  # noqa: SLF001 - the interleaving under test
            rolled = live_skeleton(full, 2, calendar.session_close(expiries[0]).timestamp() + 1, calendar)
            cache.reconfigure(rolled)  # the expiry roll, while the flush waits
            await asyncio.sleep(0.1)
            assert mirror._in_flight > 0  # noqa: SLF001 - still waiting: the roll happened during the flush
            await client.execute_command("CLIENT", "UNPAUSE")
            await until(lambda: mirror.pending == 0 and mirror._in_flight == 0)  # noqa: SLF001
            catalog = Catalog.from_json(await client.get(CATALOG_KEY))
            assert [c.expiry for c in catalog.underlyings[0].chains] == expiries[1:]
            await assert_redis_equals_cache(client, cache)
        finally:
            await client.execute_command("CLIENT", "UNPAUSE")
            await client.aclose()


@pytest.mark.parametrize(("at", "stale"), [(MONDAY_11AM, True), (MONDAY_4PM, False)], ids=["11:00", "16:00"])
async def test_replica_equals_primary_at_any_hour(redis_server: RedisServer, at: float, stale: bool) -> None:  # noqa: F811
    """A quiet chain (no change for longer than stale_after_s) is stale while the market is open
    and not after the close — on the primary and on a replica alike, with the same bytes and ETag.
    The replica's own settings say "always open": it must apply the primary's calendar."""
    clock = ShiftedClock(at)
    primary = {"market": {"schedule": "nse"}, "cache": {"stale_after_s": 1.0}}
    async with primary_and_replica(redis_server.url, clock, **primary) as (svc, rep):
        await frozen(svc)
        await until(caught_up(svc, rep))
        clock.set(clock.time() + 2.0)  # quiet for longer than stale_after_s
        status, body, headers = await get(svc.http_port, "/options/live", underlying="NIFTY")
        assert status == 200 and (b'"stale":true' in body) is stale
        await assert_same_bytes(svc, rep)
        # The body's stale flag is the chain's: the same decision for every chain, in both processes.
        for underlying, expiry in svc.cache.chains:
            assert rep.store.snapshot(underlying, expiry).stale is stale  # type: ignore[union-attr]


def test_catalog_carries_the_primarys_staleness_inputs() -> None:
    """The catalog round-trips the calendar and stale_after_s; an older catalog without them reads as None."""
    calendar = MarketCalendar(dt.time(9, 15), dt.time(15, 30), frozenset({MONDAY}))
    catalog = Catalog("abc.1", (), calendar, 12.5)
    assert Catalog.from_json(catalog.to_json()) == catalog
    older = dataclasses.replace(catalog, calendar=None, stale_after_s=None)
    assert Catalog.from_json(older.to_json()) == older
