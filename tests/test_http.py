"""The HTTP contract of /options/live, /options/underlyings, /healthz and /readyz over real HTTP."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from feeds.calendar import MarketCalendar
from feeds.clock import ManualClock, ist_instant
from feeds.model import IST, ChainSkeleton
from service.core.cache import ChainCache
from service.core.chains import CacheChains
from service.core.freshness import Freshness
from service.http import HttpContext, make_app
from service.core.lifecycle import Lifecycle, Phase
from tests.conftest import NOW, full_tick, priced_cache

LEG_FIELDS = {
    "security_id", "ltp", "ltq", "ltt", "atp", "volume", "oi", "prev_close", "prev_oi", "open", "high", "low",
    "close", "bid", "bid_qty", "ask", "ask_qty", "updated_at", "stale",
    "oi_change", "oi_change_pct", "change", "change_pct", "two_sided",  # derived from the leg
    "iv", "delta", "gamma", "theta", "vega", "iv_source",  # the chain's analytics (service.analytics.compute)
}
CHAIN_ANALYTICS_FIELDS = {
    "forward", "forward_source", "atm_strike", "atm_straddle", "pcr_oi", "pcr_volume", "max_pain", "years_to_expiry",
    "totals", "max_oi", "max_oi_change", "analytics_as_of",
}
CLOCK_FIELDS = {"days_to_expiry", "market"}  # from the calendar and the clock (service.core.freshness)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def cache(skeleton: ChainSkeleton, clock: ManualClock) -> ChainCache:
    return priced_cache(skeleton, clock)


@pytest.fixture
def lifecycle() -> Lifecycle:
    lc = Lifecycle()
    lc.to(Phase.WARMING, "test")
    lc.to(Phase.READY, "test")
    return lc


@pytest.fixture
async def client(cache: ChainCache, lifecycle: Lifecycle, clock: ManualClock) -> AsyncIterator[TestClient]:
    freshness = Freshness(30.0, MarketCalendar(always_open=True), clock)
    app = make_app(HttpContext(CacheChains(cache, freshness), lifecycle, ("http://dash.example",)))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def _expiries(cache: ChainCache) -> list[dt.date]:
    return cache.expiries["NIFTY"]


async def test_live_chain_contract(client: TestClient, cache: ChainCache) -> None:
    """200 with every contract field; strikes ascending; legs complete; ETag set."""
    resp = await client.get("/options/live", params={"underlying": "NIFTY", "expiry": _expiries(cache)[1].isoformat()})
    assert resp.status == 200
    assert resp.headers["ETag"].startswith('"')
    body = await resp.json()
    assert set(body) == {
        "underlying", "expiry", "underlying_ltp", "lot_size", "as_of", "version", "stale", "strikes",
        *CLOCK_FIELDS, *CHAIN_ANALYTICS_FIELDS,
    }
    # No analytics pass has run on this cache: every analytic is null, never 0 or a guess.
    assert all(body[name] is None for name in CHAIN_ANALYTICS_FIELDS)
    assert body["underlying"] == "NIFTY" and body["expiry"] == _expiries(cache)[1].isoformat()
    assert body["underlying_ltp"] == 24000.05 and body["lot_size"] == 75
    assert isinstance(body["version"], int) and body["stale"] is False
    assert body["as_of"].endswith("+05:30")
    strikes = [row["strike"] for row in body["strikes"]]
    assert strikes == sorted(strikes) and len(strikes) == 5
    for row in body["strikes"]:
        for side in ("ce", "pe"):
            assert set(row[side]) == LEG_FIELDS
            assert row[side]["ltt"].endswith("+05:30") and row[side]["updated_at"].endswith("+05:30")
    ce = body["strikes"][0]["ce"]
    assert (ce["bid"], ce["bid_qty"], ce["ask"], ce["ask_qty"], ce["prev_close"]) == (101.45, 150, 101.55, 225, 95.0)
    # Versus the previous session: OI 30000 vs 28000, LTP 101.5 vs 95.0.
    assert (ce["oi_change"], ce["change"], ce["change_pct"], ce["two_sided"]) == (2000, 6.5, 6.84, True)
    assert ce["oi_change_pct"] == 7.14  # 2000 / 28000
    # The calendar here is always open (the simulator's): open, no next session to wait for.
    assert body["market"] == {"state": "open", "next_open": None}
    assert body["days_to_expiry"] == (_expiries(cache)[1] - dt.datetime.fromtimestamp(NOW, IST).date()).days
    assert [ce[k] for k in ("iv", "delta", "gamma", "theta", "vega", "iv_source")] == [None] * 6


async def test_expiry_defaults_to_nearest(client: TestClient, cache: ChainCache, clock: ManualClock) -> None:
    """Without expiry the nearest one not yet ended (at its day's close) is served, by the injected
    clock; lowercase symbols are accepted; with every expiry ended, a 404 says so."""
    first, second = _expiries(cache)
    for now, expected in (
        (ist_instant(first, dt.time(15, 29)), first),
        (ist_instant(first, dt.time(15, 30)), second),
        (ist_instant(second, dt.time(9, 0)), second),
    ):
        clock.set(now)
        resp = await client.get("/options/live", params={"underlying": "nifty"})
        assert resp.status == 200
        assert (await resp.json())["expiry"] == expected.isoformat()
    clock.set(ist_instant(second, dt.time(15, 30)))
    resp = await client.get("/options/live", params={"underlying": "NIFTY"})
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "no_expiry"


async def test_if_none_match_gives_304_until_the_chain_changes(client: TestClient, cache: ChainCache) -> None:
    """The current ETag revalidates to 304; after a tick the same tag gets a new 200."""
    params = {"underlying": "NIFTY", "expiry": _expiries(cache)[0].isoformat()}
    first = await client.get("/options/live", params=params)
    etag = first.headers["ETag"]
    again = await client.get("/options/live", params=params, headers={"If-None-Match": etag})
    assert again.status == 304 and again.headers["ETag"] == etag
    assert await again.read() == b""
    weak = await client.get("/options/live", params=params, headers={"If-None-Match": f'"x", W/{etag}'})
    assert weak.status == 304
    chain = cache.chains[("NIFTY", _expiries(cache)[0])]
    cache.apply([full_tick(chain.rows[0][1].key, ltp=150.0, received_at=NOW + 1)])
    changed = await client.get("/options/live", params=params, headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    assert (await changed.json())["version"] > (await first.json())["version"]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({}, 400, "missing_parameter"),
        ({"underlying": ""}, 400, "missing_parameter"),
        ({"underlying": "NIFTY;DROP"}, 400, "bad_parameter"),
        ({"underlying": "NIFTY", "expiry": "2026-13-01"}, 400, "bad_parameter"),
        ({"underlying": "NIFTY", "expiry": "20261124"}, 400, "bad_parameter"),
        ({"underlying": "SENSEX"}, 404, "unknown_underlying"),
        ({"underlying": "NIFTY", "expiry": "2031-01-01"}, 404, "unknown_expiry"),
    ],
)
async def test_bad_requests_get_json_errors(client: TestClient, params: dict[str, str], status: int, code: str) -> None:
    """Bad parameters → 400, unknown underlying or expiry → 404, both as {"error": {code, message}}."""
    resp = await client.get("/options/live", params=params)
    assert resp.status == status
    body = await resp.json()
    assert body["error"]["code"] == code and body["error"]["message"]


async def test_unknown_route_is_json_404(client: TestClient) -> None:
    """Even unrouted paths answer with the JSON error shape."""
    resp = await client.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


async def test_underlyings_lists_expiries(client: TestClient, cache: ChainCache) -> None:
    """/options/underlyings lists each underlying with its expiries and lot sizes."""
    body = await (await client.get("/options/underlyings")).json()
    (nifty,) = body["underlyings"]
    assert nifty["underlying"] == "NIFTY" and nifty["security_id"] == 13
    assert [e["expiry"] for e in nifty["expiries"]] == [e.isoformat() for e in _expiries(cache)]
    assert all(e["lot_size"] == 75 and e["strikes"] == 5 for e in nifty["expiries"])


async def test_health_and_readiness(client: TestClient, lifecycle: Lifecycle) -> None:
    """/healthz is alive always; /readyz is 200 when serving and 503 with a reason when stopping."""
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["ready"] is True
    lifecycle.to(Phase.DEGRADED, "feed connection 0 down")
    degraded = await (await client.get("/readyz")).json()
    assert degraded["phase"] == "degraded" and degraded["ready"] is True
    lifecycle.to(Phase.STOPPING, "shutting down")
    stopping = await client.get("/readyz")
    assert stopping.status == 503 and (await stopping.json())["reason"] == "shutting down"


async def test_stale_chain_is_reported(client: TestClient, cache: ChainCache) -> None:
    """A lost leg makes the body say stale, per chain and per leg."""
    chain = cache.chains[("NIFTY", _expiries(cache)[0])]
    cache.mark_stale([chain.rows[2][2].key])
    body = await (await client.get("/options/live", params={"underlying": "NIFTY", "expiry": _expiries(cache)[0].isoformat()})).json()
    assert body["stale"] is True and body["strikes"][2]["pe"]["stale"] is True and body["strikes"][2]["ce"]["stale"] is False


async def test_cors_for_allowed_origins_only(client: TestClient) -> None:
    """Configured origins get CORS headers and preflight answers; others get none."""
    ok = await client.get("/options/underlyings", headers={"Origin": "http://dash.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "http://dash.example"
    assert "ETag" in ok.headers["Access-Control-Expose-Headers"]
    other = await client.get("/options/underlyings", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    pre = await client.options(
        "/options/live", headers={"Origin": "http://dash.example", "Access-Control-Request-Method": "GET"}
    )
    assert pre.status == 204 and "GET" in pre.headers["Access-Control-Allow-Methods"]
