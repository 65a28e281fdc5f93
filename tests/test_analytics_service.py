"""Option analytics in the running service: /options/live on the primary and a replica, and the
REST seed against the simulator's endpoints (feed.kind = dhan pointed at the simulator)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import orjson
import pytest

from feeds.dhan.option_chain import encode_trading_error
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.server import SimulatorServer
from service.analytics.compute import ChainAnalytics
from service.app import running_service
from service.redis.layout import STREAM_KEY, chain_id, meta_key
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401  (the fixture)
from tests.test_replica import (
    assert_same_bytes,
    caught_up,
    frozen,
    get,
    primary_and_replica,
    until,
)
from tests.test_service import SIM, settings_for

LEG_ANALYTICS = ("iv", "delta", "gamma", "theta", "vega", "iv_source")


async def test_primary_and_replica_serve_the_same_analytics(redis_server: RedisServer) -> None:  # noqa: F811
    """The body carries the analytics; a replica serves them byte for byte; our IV recovers the
    simulator's own volatility near the money."""
    async with primary_and_replica(redis_server.url) as (svc, rep):
        sim = svc.simulator
        assert sim is not None and svc.analytics is not None
        steps = sim.market.steps
        await until(lambda: sim.market.steps >= steps + 10 and svc.analytics.stats.passes >= 4)
        await frozen(svc)
        await until(caught_up(svc, rep))
        await assert_same_bytes(svc, rep)

        expiry = svc.cache.expiries["NIFTY"][0]
        _, raw, _ = await get(rep.http_port, "/options/live", underlying="NIFTY", expiry=expiry.isoformat())
        body = orjson.loads(raw)
        assert body["forward_source"] == "parity" and body["atm_strike"] is not None
        assert body["pcr_oi"] > 0 and body["max_pain"] is not None and body["analytics_as_of"].endswith("+05:30")
        near = [r for r in body["strikes"] if abs(r["strike"] - body["atm_strike"]) <= 150]
        assert len(near) >= 5
        for row in near:
            for side in ("ce", "pe"):
                leg = row[side]
                assert leg["iv_source"] == "livechain", (row["strike"], side)
                model = sim.market.model_iv((2, leg["security_id"])) * 100
                # Prices print on a ₹0.05 tick: IV recovered to a fraction of a vol point.
                assert abs(leg["iv"] - model) < 0.25, (row["strike"], side, leg["iv"], model)
                assert (leg["delta"] > 0) == (side == "ce") and leg["gamma"] > 0 and leg["theta"] < 0

        # In Redis: the meta hash holds the analytics the primary computed, as JSON.
        chain = svc.cache.chains[("NIFTY", expiry)]
        async with asyncio.timeout(5):
            client = redis_server.client()
            try:
                stored = await client.hget(meta_key(chain_id("NIFTY", expiry)), "analytics")
                entries = await client.xrevrange(STREAM_KEY, count=200)
            finally:
                await client.aclose()
        assert stored == chain.analytics.to_json() and ChainAnalytics.from_json(stored) == chain.analytics
        assert any(b"analytics" in fields for _, fields in entries)
        assert any(b"analytics" not in fields for _, fields in entries)  # only flushes after a recompute carry them


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(SimulatorConfig(**SIM)) as server:
        yield server


async def test_rest_seed_fills_a_leg_the_feed_has_not_priced(sim: SimulatorServer, dhan_env: None) -> None:
    """A leg with no feed data shows Dhan's OI, previous close and IV ("dhan"); once it trades,
    our own IV ("livechain") and the feed's values."""
    withheld = sorted(sim.universe.contracts)[4]  # NIFTY, nearest expiry, a CE
    sim.withhold([withheld])
    sim.pause()  # the spot must not move between the REST answer and the quote compared with it
    settings = settings_for(sim, readiness={"min_coverage": 0.9}, analytics={"seed": True})
    async with running_service(settings) as svc:
        assert svc.seeder is not None and svc.analytics is not None
        await until(lambda: svc.seeder.seeded.is_set())
        svc.analytics.run_once()
        leg = svc.cache.legs[withheld]
        expiry = leg.contract.expiry.isoformat()
        quote = sim.market.option_quote(withheld)  # what the REST chain said (the market is unchanged for it)
        _, raw, _ = await get(svc.http_port, "/options/live", underlying="NIFTY", expiry=expiry)
        row = next(r for r in orjson.loads(raw)["strikes"] if r["ce"]["security_id"] == withheld[1])
        ce = row["ce"]
        assert ce["ltp"] is None and ce["updated_at"] is None  # nothing from the feed
        assert (ce["oi"], ce["prev_close"], ce["prev_oi"]) == (quote.oi, quote.previous_close, quote.previous_oi)
        assert ce["iv_source"] == "dhan" and ce["iv"] == pytest.approx(quote.implied_volatility, abs=0.01)
        # Dhan's greeks move with the clock (time to expiry) between the two reads: compare closely.
        assert ce["delta"] == pytest.approx(quote.greeks.delta, abs=1e-4)
        assert ce["theta"] == pytest.approx(quote.greeks.theta, rel=1e-3)
        assert row["pe"]["iv_source"] == "livechain"
        assert svc.seeder.client.stats.requests == 1 + len(svc.cache.expiries["NIFTY"])  # expiry list + chains
        assert sim.rest.count(code="805") == 0

        sim.release()
        await until(lambda: leg.ltp is not None)
        svc.analytics.run_once()
        _, raw, _ = await get(svc.http_port, "/options/live", underlying="NIFTY", expiry=expiry)
        ce = next(r for r in orjson.loads(raw)["strikes"] if r["ce"]["security_id"] == withheld[1])["ce"]
        assert ce["iv_source"] == "livechain" and ce["ltp"] is not None


@pytest.mark.parametrize(
    ("status", "body", "expect", "requests"),
    [
        (502, b"<html>502 Bad Gateway</html>", "unavailable", 2),  # the expiry list, tried twice
        (401, encode_trading_error("Invalid_Authentication", "DH-901", "Invalid token"), "refused our credentials", 1),
    ],
    ids=["server-error", "auth"],
)
async def test_a_failing_rest_api_never_blocks_startup(
    sim: SimulatorServer, dhan_env: None, caplog: pytest.LogCaptureFixture, status: int, body: bytes, expect: str,
    requests: int,
) -> None:
    """Bounded retries, one warning, and the service serves live analytics without REST data."""
    caplog.set_level(logging.INFO)
    sim.rest.inject(status, body, count=1000)
    settings = settings_for(
        sim, analytics={"seed": True, "rest_max_attempts": 2, "rest_backoff_initial_s": 0.01, "rest_min_interval_s": 0}
    )
    async with running_service(settings) as svc:
        assert svc.seeder is not None
        await until(lambda: svc.seeder.stats.failures >= 1)
        _, raw, _ = await get(svc.http_port, "/options/live", underlying="NIFTY")
        body_doc = orjson.loads(raw)
        assert body_doc["forward_source"] == "parity"
        assert {r["ce"]["iv_source"] for r in body_doc["strikes"]} <= {"livechain", None}
        assert not svc.seeder.seeded.is_set()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(expect in m for m in warnings), warnings
    assert len(sim.rest.requests) == requests  # bounded: then nothing until the next reconcile (300 s)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "eyJ-test-token" not in text and "1000000001" not in text
