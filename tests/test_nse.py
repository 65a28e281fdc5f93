"""NSE-compatible output: field names and units against shared/nse-option-chain.md (a golden test).

The reference's captured leg (NIFTY 14000 PE, 2021) is rebuilt from what a broker sends —
OI and volume in quantity (lot 75) — and must come out in NSE's units and numbers:
``openInterest 41673``, ``changeinOpenInterest -1017``, ``pchangeinOpenInterest -2.38229…``,
``totalTradedVolume 1254092``, ``lastPrice 76.65``, ``change 48.75``, ``pChange 174.73…``,
``bidQty 675``, ``bidprice 75.8``, ``askQty 675``, ``askPrice 76.8``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from feeds.calendar import MarketCalendar
from feeds.clock import ManualClock
from feeds.model import ChainSkeleton, PrevCloseTick
from service.analytics.compute import ChainAnalytics
from service.core.cache import ChainCache
from service.core.chains import CacheChains
from service.core.freshness import Freshness
from service.core.lifecycle import Lifecycle, Phase
from service.http import HttpContext, make_app
from service.nse import nse_date, parse_nse_date
from tests.conftest import NOW, full_tick, index_tick

LOT = 75
# The reference's leg field names (§2), with v3's top of book (§3) emitted too.
LEGACY_LEG = {
    "strikePrice", "expiryDate", "underlying", "identifier",
    "openInterest", "changeinOpenInterest", "pchangeinOpenInterest",
    "totalTradedVolume", "impliedVolatility",
    "lastPrice", "change", "pChange",
    "totalBuyQuantity", "totalSellQuantity",
    "bidQty", "bidprice", "askQty", "askPrice",
    "underlyingValue",
}  # fmt: skip
V3_BOOK = {"buyQuantity1", "buyPrice1", "sellQuantity1", "sellPrice1"}


@pytest.fixture
async def client(skeleton: ChainSkeleton) -> AsyncIterator[tuple[TestClient, ChainCache]]:
    clock = ManualClock(NOW)
    cache = ChainCache(skeleton, clock=clock)
    ticks = [index_tick(cache.index_keys["NIFTY"], 13967.5)]
    for _key, leg in cache.legs.items():
        if leg.contract is None:
            continue
        ticks.append(
            full_tick(leg.key, ltp=76.65, oi=41673 * LOT, volume=1254092 * LOT, bid=75.8, bid_qty=675, ask=76.8,
                      ask_qty=675)  # fmt: skip
        )
    cache.apply(ticks)
    cache.apply([PrevCloseTick(k, 27.9, (41673 + 1017) * LOT, NOW) for k, leg in cache.legs.items() if leg.contract])
    chain = cache.chains[("NIFTY", cache.expiries["NIFTY"][0])]
    strike = chain.rows[0][0]
    cache.set_analytics(chain, ChainAnalytics(NOW, {}, {(strike, "PE"): (19.0, -0.3, 0.001, -5.0, 10.0, "livechain")}))
    lifecycle = Lifecycle()
    lifecycle.to(Phase.WARMING, "test")
    lifecycle.to(Phase.READY, "test")
    chains = CacheChains(cache, Freshness(30.0, MarketCalendar(always_open=True), clock))
    async with TestClient(TestServer(make_app(HttpContext(chains, lifecycle)), host="127.0.0.1")) as http:
        yield http, cache


async def test_golden_legacy_shape_and_units(client: tuple[TestClient, ChainCache]) -> None:
    """/api/option-chain-indices: NSE's names, contracts for OI and volume, the reference's numbers."""
    http, cache = client
    resp = await http.get("/api/option-chain-indices", params={"symbol": "nifty"})
    assert resp.status == 200 and resp.headers["ETag"]
    doc = await resp.json()
    assert set(doc) == {"records", "filtered"}
    records, filtered = doc["records"], doc["filtered"]
    assert set(records) == {"expiryDates", "data", "timestamp", "underlyingValue", "strikePrices"}
    assert set(filtered) == {"data", "CE", "PE"}
    first, second = cache.expiries["NIFTY"]
    assert records["expiryDates"] == [nse_date(first), nse_date(second)]
    assert dt.datetime.strptime(records["timestamp"], "%d-%b-%Y %H:%M:%S")  # 13-Jun-2025 15:30:00
    assert records["underlyingValue"] == 13967.5
    assert len(records["data"]) == 10 and len(filtered["data"]) == 5  # both expiries / the nearest
    row = filtered["data"][0]
    assert set(row) == {"strikePrice", "expiryDate", "CE", "PE"}
    pe = row["PE"]
    assert set(pe) == LEGACY_LEG | V3_BOOK
    strike = row["strikePrice"]
    assert pe["identifier"] == f"OPTIDXNIFTY{first:%d-%m-%Y}PE{strike:.2f}"
    assert pe["expiryDate"] == nse_date(first) and pe["underlying"] == "NIFTY"
    assert (pe["openInterest"], pe["changeinOpenInterest"], pe["totalTradedVolume"]) == (41673, -1017, 1254092)
    assert pe["pchangeinOpenInterest"] == pytest.approx(-2.38229, abs=1e-5)
    assert (pe["lastPrice"], pe["change"]) == (76.65, 48.75)
    assert pe["pChange"] == pytest.approx(174.73, abs=0.01)
    assert (pe["bidQty"], pe["bidprice"], pe["askQty"], pe["askPrice"]) == (675, 75.8, 675, 76.8)
    assert (pe["buyQuantity1"], pe["buyPrice1"], pe["sellQuantity1"], pe["sellPrice1"]) == (675, 75.8, 675, 76.8)
    assert pe["impliedVolatility"] == 19.0 and pe["underlyingValue"] == 13967.5
    # No source here: null, never NSE's 0.
    assert pe["totalBuyQuantity"] is None and pe["totalSellQuantity"] is None
    assert row["CE"]["impliedVolatility"] is None
    # Totals of the selected expiry, in contracts.
    assert filtered["PE"] == {"totOI": 5 * 41673, "totVol": 5 * 1254092}


async def test_v3_contract_info_and_format_nse(client: tuple[TestClient, ChainCache]) -> None:
    """v3 rows carry ``expiryDates``; contract-info lists expiries and strikes; format=nse on
    /options/live is the legacy shape of that expiry; bad input gets our JSON errors."""
    http, cache = client
    first, second = cache.expiries["NIFTY"]
    info = await (await http.get("/api/option-chain-contract-info", params={"symbol": "NIFTY"})).json()
    assert info["expiryDates"] == [nse_date(first), nse_date(second)]
    assert info["strikePrice"] == sorted(info["strikePrice"]) and len(info["strikePrice"]) >= 5
    v3 = await (await http.get("/api/option-chain-v3", params={"type": "Indices", "symbol": "NIFTY",
                                                               "expiry": nse_date(second)})).json()  # fmt: skip
    row = v3["records"]["data"][0]
    assert row["expiryDates"] == nse_date(second) and row["PE"]["expiryDate"] == nse_date(second)
    assert "expiryDate" not in row
    live = await http.get("/options/live", params={"underlying": "NIFTY", "expiry": second.isoformat(), "format": "nse"})
    doc = await live.json()
    assert {r["expiryDate"] for r in doc["filtered"]["data"]} == {nse_date(second)}
    again = await http.get("/options/live", params={"underlying": "NIFTY", "expiry": second.isoformat(), "format": "nse"},
                           headers={"If-None-Match": live.headers["ETag"]})  # fmt: skip
    assert again.status == 304
    for path, params, status, code in (
        ("/api/option-chain-v3", {"symbol": "NIFTY", "expiry": "2026-12-09"}, 400, "bad_parameter"),
        ("/api/option-chain-v3", {"symbol": "NIFTY", "expiry": "09-Dec-2031"}, 404, "unknown_expiry"),
        ("/api/option-chain-indices", {}, 400, "missing_parameter"),
        ("/api/option-chain-indices", {"symbol": "SENSEX"}, 404, "unknown_underlying"),
        ("/options/live", {"underlying": "NIFTY", "format": "xml"}, 400, "bad_parameter"),
    ):
        resp = await http.get(path, params=params)
        assert resp.status == status and (await resp.json())["error"]["code"] == code, (path, params)


def test_nse_dates_round_trip() -> None:
    """DD-Mon-YYYY with English months, whatever the locale."""
    assert nse_date(dt.date(2025, 12, 9)) == "09-Dec-2025"
    assert parse_nse_date("09-Dec-2025") == parse_nse_date("09-dec-2025") == dt.date(2025, 12, 9)
    for bad in ("2025-12-09", "9-Dec-2025", "09-Dex-2025"):
        with pytest.raises((ValueError, KeyError)):
            parse_nse_date(bad)
