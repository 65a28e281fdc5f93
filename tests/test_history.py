"""Intraday history (issue 14): samples every second against the simulator, at= bodies, Redis
(restart, replica), Parquet (shutdown, past days, write errors), the routes' errors and ETags."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import pytest

from feeds.clock import ManualClock, ShiftedClock, ist_instant
from feeds.calendar import MarketCalendar
from service.app import RunningService, running_service
from service.history.model import (
    HEAD_FIELDS, ChainDay, decode, encode, iso_of_us, layout_id, parse_instant, sample_of, us_of_epoch,
)  # fmt: skip
from service.history.parquet import ParquetArchive
from service.history.sampler import HistorySampler
from service.history.store import HistoryStore
from service.redis.layout import history_key
from tests.conftest import TODAY
from tests.helpers import UNIT_S, until
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401
from tests.test_replica import caught_up, frozen, primary_and_replica, primary_settings
from tests.test_service import settings_for

ELEVEN = ist_instant(TODAY, dt.time(11, 0))  # a Monday session, whatever today's date is
HISTORY = {"interval_s": 1}


async def get(port: int, path: str, headers: dict[str, str] | None = None, **params: str
              ) -> tuple[int, bytes, dict[str, str]]:  # fmt: skip
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
        async with http.get(f"http://127.0.0.1:{port}{path}", params=params, headers=headers or {}) as resp:
            return resp.status, await resp.read(), {k.lower(): v for k, v in resp.headers.items()}


def _samples(svc: RunningService) -> int:
    assert svc.history is not None
    return sum(len(cd.samples) for chains in svc.history.days.values() for cd in chains.values())


def _body(strikes: int = 3, base: float = 100.0, ltp: float = 24000.0) -> bytes:
    """A small /options/live-shaped body."""
    rows = [
        {"strike": 24000.0 + 50 * i,
         "ce": {"ltp": base + i, "oi": 1000 * i, "volume": 7 * i, "iv": 12.5 + i / 10},
         "pe": None if i == 0 else {"ltp": base - i, "oi": 900 * i, "volume": None, "iv": None}}
        for i in range(strikes)
    ]  # fmt: skip
    return orjson.dumps({
        "underlying": "NIFTY", "underlying_ltp": ltp, "forward": ltp + 10, "atm_strike": 24050.0, "atm_straddle": 200.0,
        "pcr_oi": 0.9, "pcr_volume": None, "max_pain": 24000.0,
        "totals": {"ce": {"oi": 3000, "oi_change": -5, "volume": 21}, "pe": {"oi": 2700, "oi_change": None, "volume": None}},
        "strikes": rows,
    })  # fmt: skip


def test_sample_reads_the_body_and_round_trips_through_redis_form() -> None:
    """A sample keeps the body's series values (null stays null) and its exact bytes; encode/decode is lossless."""
    body = _body()
    s = sample_of(body, us_of_epoch(ELEVEN))
    head = dict(zip(HEAD_FIELDS, s.head))
    assert head["underlying_ltp"] == 24000.0 and head["pcr_volume"] is None and head["pe_oi_change"] is None
    assert head["atm_iv"] == 12.6  # the ATM put has no IV: the call's alone
    assert s.body() == body
    assert s.strikes == (24000.0, 24050.0, 24100.0)
    assert math.isnan(s.legs[0, 1])  # no PE at the first strike
    back = decode(encode(s, layout_id(s.strikes)), {layout_id(s.strikes): s.strikes})
    assert back.t_us == s.t_us and back.head == s.head and back.body() == body
    assert np.array_equal(back.legs, s.legs, equal_nan=True)


def test_instants_parse_as_iso_with_ist_for_naive() -> None:
    """from/to/at: an offset is honoured, a naive time is IST, a '+' lost to URL decoding is taken back."""
    t = us_of_epoch(ELEVEN)
    assert parse_instant("2026-11-23T11:00:00+05:30") == t
    assert parse_instant("2026-11-23T11:00:00") == t
    assert parse_instant("2026-11-23T05:30:00Z") == t
    assert parse_instant("2026-11-23T11:00:00 05:30") == t
    assert iso_of_us(t) == "2026-11-23T11:00:00+05:30"
    for bad in ("", "yesterday", "2026-13-01T00:00", "2026-11-23T11:00:00+99:00"):
        with pytest.raises(ValueError):
            parse_instant(bad)


async def test_series_grow_match_the_chain_and_at_returns_the_served_body(tmp_path: Path) -> None:
    """Against the simulator, every second: points grow in time order; with the market paused the
    last sample's values equal the live body's, and at=<t> returns the served body byte for byte;
    the Parquet files written at shutdown read back equal with pyarrow and DuckDB."""
    clock = ShiftedClock(ELEVEN)
    settings = settings_for(None, history={**HISTORY, "path": str(tmp_path)})
    async with running_service(settings, clock=clock) as svc:
        port = svc.http_port
        await until(lambda: _samples(svc) >= 4, what="4 samples")
        status, raw, _ = await get(port, "/options/history", underlying="NIFTY")
        first = orjson.loads(raw)
        assert status == 200 and first["interval_s"] == 1 and first["underlying"] == "NIFTY"
        times = [p["t"] for p in first["points"]]
        assert len(times) >= 2 and times == sorted(times) and all(t.endswith("+05:30") for t in times)
        await until(lambda: _samples(svc) >= len(times) * 2 + 2, what="more samples")
        status, raw, _ = await get(port, "/options/history", underlying="NIFTY")
        assert len(orjson.loads(raw)["points"]) > len(times)  # the series grows

        # Freeze the market; the next sample is of exactly what /options/live serves now.
        sim = svc.simulator
        assert sim is not None
        sim.pause()
        await until(lambda: sim.idle and sum(c.stats.frames for c in svc.feed.connections) == sim.stats.frames_sent)
        await asyncio.sleep(0)  # a scheduled batch flush
        assert svc.analytics is not None
        while svc.analytics.run_once():  # analytics of the last batch, now rather than at the runner's tick
            pass
        status, live, live_headers = await get(port, "/options/live", underlying="NIFTY")
        n = _samples(svc)
        await until(lambda: _samples(svc) >= n + 2, what="two samples of the frozen chain")
        assert (await get(port, "/options/live", underlying="NIFTY"))[1] == live  # frozen all along
        _, raw, _ = await get(port, "/options/history/times", underlying="NIFTY")
        t = orjson.loads(raw)["t"][-1]
        status, at_body, at_headers = await get(port, "/options/live", underlying="NIFTY", at=t)
        assert status == 200 and at_body == live and at_headers["etag"] == live_headers["etag"]
        doc = orjson.loads(live)
        assert doc["as_of"] <= t
        _, raw, _ = await get(port, "/options/history", underlying="NIFTY", **{"from": t})
        (last,) = orjson.loads(raw)["points"]
        assert last["t"] == t
        for name in ("underlying_ltp", "forward", "atm_strike", "atm_straddle", "pcr_oi", "pcr_volume", "max_pain"):
            assert last[name] == doc[name], name
        for side in ("ce", "pe"):
            assert last[side] == doc["totals"][side]
        atm = next(r for r in doc["strikes"] if r["strike"] == doc["atm_strike"])
        ivs = [atm[s]["iv"] for s in ("ce", "pe") if atm[s] and atm[s]["iv"] is not None]
        assert last["atm_iv"] == (round(sum(ivs) / len(ivs), 4) if ivs else None)
        strikes = [r["strike"] for r in doc["strikes"][:2]]
        status, raw, _ = await get(port, "/options/history/legs", underlying="NIFTY", expiry=doc["expiry"],
                                   strikes=",".join(map(str, strikes)), **{"from": t})  # fmt: skip
        legs = orjson.loads(raw)
        assert status == 200 and legs["t"] == [t] and legs["fields"] == ["ltp", "oi", "volume", "iv"]
        for row in doc["strikes"][:2]:
            for side in ("ce", "pe"):
                series = legs["legs"][f"{row['strike']!r}:{side.upper()}"]
                leg = row[side] or {}
                assert {f: series[f][0] for f in series} == {f: leg.get(f) for f in series}
        expiry = doc["expiry"]
        held = {k: list(cd.samples) for k, cd in svc.history.days[TODAY].items()}  # type: ignore[union-attr]

    # Shutdown wrote the day: read back with pyarrow and DuckDB, equal to what was held.
    import duckdb
    import pyarrow.dataset as ds

    table = ds.dataset(tmp_path / "chains", partitioning="hive").to_table()
    written = {(r["expiry"], r["t"].timestamp()): r for r in table.to_pylist()}
    assert {r["underlying"] for r in written.values()} == {"NIFTY"}
    count = 0
    for (underlying, exp), samples in held.items():
        for s in samples:
            row = written[(exp, s.t_us / 1e6)]
            assert row["body"].encode() == s.body()
            assert tuple(row[name] for name in HEAD_FIELDS) == s.head
            count += 1
    assert count == len(written)
    path = (tmp_path / "chains").as_posix()
    got = duckdb.sql(
        f"select body from read_parquet('{path}/*/*/*.parquet', hive_partitioning=true) "
        f"where expiry = '{expiry}' order by t desc limit 1"
    ).fetchall()
    assert got[0][0].encode() == live
    legs_path = (tmp_path / "legs").as_posix()
    n_legs = duckdb.sql(f"select count(*) from read_parquet('{legs_path}/*/*/*.parquet', hive_partitioning=true)").fetchall()
    assert n_legs[0][0] == sum(2 * len(s.strikes) for v in held.values() for s in v)


async def test_history_errors_are_json_and_etags_revalidate(tmp_path: Path) -> None:
    """Bad parameters → 400, unknown strike → 404 no_strike, nothing at or before at= → 404
    no_history; ETag + If-None-Match → 304; interval aggregates to the last sample per bucket."""
    clock = ShiftedClock(ELEVEN)
    async with running_service(settings_for(None, history={**HISTORY, "parquet": False}), clock=clock) as svc:
        port = svc.http_port
        await until(lambda: _samples(svc) >= 6, what="6 samples")
        q = {"underlying": "NIFTY"}
        cases = [
            ("/options/history", {**q, "from": "soon"}, 400, "bad_parameter"),
            ("/options/history", {**q, "interval": "1500ms"}, 400, "bad_parameter"),
            ("/options/history", {**q, "interval": "0"}, 400, "bad_parameter"),
            ("/options/history", {**q, "from": "2026-11-23T12:00", "to": "2026-11-23T11:00"}, 400, "bad_parameter"),
            ("/options/history", {**q, "from": "2026-10-01T12:00", "to": "2026-11-23T11:00"}, 400, "bad_parameter"),
            ("/options/history", {**q, "expiry": "2026-W50-2"}, 400, "bad_parameter"),
            ("/options/history", {"underlying": "SENSEX"}, 404, "unknown_underlying"),
            ("/options/history", {}, 400, "missing_parameter"),
            ("/options/history/legs", q, 400, "missing_parameter"),
            ("/options/history/legs", {**q, "strikes": "abc"}, 400, "bad_parameter"),
            ("/options/history/legs", {**q, "strikes": "1.5"}, 404, "no_strike"),
            ("/options/history/legs", {**q, "strikes": "25000", "fields": "oi,gamma"}, 400, "bad_parameter"),
            ("/options/live", {**q, "at": "10:30"}, 400, "bad_parameter"),
            ("/options/live", {**q, "at": "2026-11-23T11:00:00+05:30", "format": "nse"}, 400, "bad_parameter"),
            ("/options/live", {**q, "at": "2026-11-23T09:00:00+05:30"}, 404, "no_history"),
        ]
        for path, params, status, code in cases:
            got, raw, headers = await get(port, path, **params)
            assert (got, orjson.loads(raw)["error"]["code"]) == (status, code), (path, params)
            assert headers["content-type"].startswith("application/json")

        status, raw, headers = await get(port, "/options/history", **q, to=iso_of_us(us_of_epoch(clock.time())))
        assert status == 200
        again, _, _ = await get(port, "/options/history", {"If-None-Match": headers["etag"]}, **q,
                                to=iso_of_us(us_of_epoch(clock.time() - 30)))  # fmt: skip
        assert again == 200  # a different answer: a different tag
        _, raw, headers = await get(port, "/options/history", **q, to=orjson.loads(raw)["points"][-1]["t"])
        status, body, _ = await get(port, "/options/history", {"If-None-Match": headers["etag"]}, **q,
                                    to=orjson.loads(raw)["points"][-1]["t"])  # fmt: skip
        assert status == 304 and body == b""
        t = orjson.loads(raw)["points"][-1]["t"]
        _, _, at_headers = await get(port, "/options/live", **q, at=t)
        status, _, _ = await get(port, "/options/live", {"If-None-Match": at_headers["etag"]}, **q, at=t)
        assert status == 304

        _, raw, _ = await get(port, "/options/history", **q, to=t)
        points = orjson.loads(raw)["points"]
        _, raw, _ = await get(port, "/options/history", **q, to=t, interval="2s")
        agg = orjson.loads(raw)
        assert agg["interval_s"] == 2
        buckets: dict[int, str] = {}
        for p in points:
            buckets[int(parse_instant(p["t"]) // 2_000_000)] = p["t"]
        assert [p["t"] for p in agg["points"]] == list(buckets.values())

        assert svc.metrics_port is not None
        _, text, _ = await get(svc.metrics_port, "/metrics")
        samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.decode().splitlines()
                   if line.startswith("livechain_history_")}  # fmt: skip
        assert samples["livechain_history_samples_total"] >= 6 and samples["livechain_history_bytes"] > 0
        assert samples["livechain_history_parquet_errors_total"] == 0


async def test_primary_restart_keeps_the_day_and_replica_serves_the_same(redis_server: RedisServer) -> None:  # noqa: F811
    """History goes to Redis: a replica serves the primary's history and at= bodies byte for byte; a
    restarted primary resumes the day; after FLUSHALL the mirror's rewrite puts the day back."""
    clock = ShiftedClock(ELEVEN)
    history = {**HISTORY, "parquet": False}
    async with primary_and_replica(redis_server.url, clock, history=history) as (svc, rep):
        await until(lambda: _samples(svc) >= 4, what="4 samples")
        await frozen(svc)
        await until(caught_up(svc, rep))
        n = _samples(svc)
        await until(lambda: _samples(svc) >= n + 1, what="a sample of the frozen chain")
        await until(lambda: svc.mirror is not None and svc.mirror.pending == 0)
        _, raw, _ = await get(svc.http_port, "/options/history/times", underlying="NIFTY")
        times = orjson.loads(raw)["t"]
        to = times[-1]
        for path, extra in [("/options/history", {}), ("/options/history/times", {}),
                            ("/options/history/legs", {"strikes": "25000,24950"})]:  # fmt: skip
            p = await get(svc.http_port, path, underlying="NIFTY", to=to, **extra)
            r = await get(rep.http_port, path, underlying="NIFTY", to=to, **extra)
            assert p[0] == r[0] == 200 and p[1] == r[1] and p[2]["etag"] == r[2]["etag"], path
        p_at = await get(svc.http_port, "/options/live", underlying="NIFTY", at=to)
        r_at = await get(rep.http_port, "/options/live", underlying="NIFTY", at=to)
        assert p_at[0] == r_at[0] == 200 and p_at[1] == r_at[1] and p_at[2]["etag"] == r_at[2]["etag"]
        assert svc.history is not None
        redis_bytes = 0
        client = redis_server.client()
        try:
            for (u, e), cd in svc.history.days[TODAY].items():
                key = history_key(TODAY, f"{u}:{e.isoformat()}")
                assert await client.llen(key) == len(cd.samples)
                redis_bytes += await client.memory_usage(key) or 0
                assert await client.ttl(key) > 0
        finally:
            await client.aclose()
        assert redis_bytes > 0

    async with running_service(primary_settings(redis_server.url, history=history), clock=clock) as again:
        await until(lambda: again.history is not None and again.history.stats.redis_samples_loaded > 0)
        _, raw, _ = await get(again.http_port, "/options/history/times", underlying="NIFTY")
        resumed = orjson.loads(raw)["t"]
        assert resumed[: len(times)] == times  # the day goes on from where it was
        status, body, _ = await get(again.http_port, "/options/live", underlying="NIFTY", at=to)
        assert status == 200 and body == p_at[1]
        client = redis_server.client()
        try:
            await client.flushall()
            key = history_key(TODAY, f"NIFTY:{again.cache.expiries['NIFTY'][0].isoformat()}")

            async def back() -> bool:
                return await client.llen(key) >= len(times)

            for _ in range(int(4 * UNIT_S / 0.05)):
                if await back():
                    break
                await asyncio.sleep(0.05)
            assert await back(), "the day is rewritten into Redis after FLUSHALL"
        finally:
            await client.aclose()


def _store_with_day(archive: ParquetArchive | None, clock: ManualClock, days: int = 1) -> HistoryStore:
    store = HistoryStore(interval_s=60, clock=clock, archive=archive, parquet=archive is not None)
    store.redis.ready = True
    for k in range(3):
        store.add("NIFTY", TODAY + dt.timedelta(days=1),
                  sample_of(_body(base=100 + k), us_of_epoch(ELEVEN + 60 * k)))  # fmt: skip
    return store


async def test_parquet_write_error_keeps_the_day_and_retries(tmp_path: Path) -> None:
    """A failed write is counted and the day kept in memory; the next trigger writes it; written
    past days leave memory and at= for them reads the Parquet file."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    clock = ManualClock(ist_instant(TODAY, dt.time(15, 31)))  # after the session close
    store = _store_with_day(ParquetArchive(str(blocker)), clock)
    sampler = HistorySampler(_NoChains(), store, calendar=MarketCalendar(), clock=clock)
    assert await sampler.write_due() == 0
    assert store.stats.parquet_errors == 1 and store.unwritten() == [(TODAY, "NIFTY")]
    store.archive = ParquetArchive(str(tmp_path / "ok"))
    clock.advance(61)  # the next trigger, after the retry delay
    assert await sampler.write_due() == 1
    assert store.unwritten() == [] and TODAY in store.days  # today's stays in memory
    clock.set(ist_instant(TODAY + dt.timedelta(days=1), dt.time(9, 0)))
    await sampler.write_due()
    assert TODAY not in store.days  # written and past: dropped
    expiry = TODAY + dt.timedelta(days=1)
    got = await store.body_at("NIFTY", expiry, us_of_epoch(ELEVEN + 90))
    assert got is not None and got[:2] == (us_of_epoch(ELEVEN + 60), _body(base=101))
    cd = await store.chain_day("NIFTY", expiry, TODAY)
    assert isinstance(cd, ChainDay) and [s.head for s in cd.samples] == [
        sample_of(_body(base=100 + k), 0).head for k in range(3)
    ]
    # A second write of the same day merges with the file: nothing it held is lost.
    fresh = _store_with_day(ParquetArchive(str(tmp_path / "ok")), clock)
    fresh.days[TODAY][("NIFTY", expiry)].samples[:] = fresh.days[TODAY][("NIFTY", expiry)].samples[2:]
    fresh.archive.write_day("NIFTY", TODAY, {expiry: fresh.days[TODAY][("NIFTY", expiry)].samples})
    cd = await fresh.archive.chain_day("NIFTY", expiry, TODAY)
    assert cd is not None and len(cd.samples) == 3


class _NoChains:
    def underlyings(self) -> list:
        return []


def test_s3_path_is_accepted_without_touching_the_network() -> None:
    """history.path = s3://… is taken as is (pyarrow's S3 filesystem, opened at the first write)."""
    from service.settings import Settings

    settings = Settings(history={"path": "s3://bucket/livechain/history"})
    archive = ParquetArchive(settings.history.path)
    assert archive.root == "s3://bucket/livechain/history" and archive._fs is None  # noqa: SLF001


async def test_history_off_says_so() -> None:
    """history.enabled = false: every history route and at= answer 404 history_off (not no_history,
    which means "no sample for that time"), while the live body is served as usual."""
    async with running_service(settings_for(None, history={"enabled": False}), clock=ShiftedClock(ELEVEN)) as svc:
        q = {"underlying": "NIFTY"}
        for path, params in [
            ("/options/history", q),
            ("/options/history/legs", {**q, "strikes": "25000"}),
            ("/options/history/times", q),
            ("/options/live", {**q, "at": "2026-11-23T11:00:00+05:30"}),
        ]:
            status, raw, _ = await get(svc.http_port, path, **params)
            assert (status, orjson.loads(raw)["error"]["code"]) == (404, "history_off"), path
        status, _, _ = await get(svc.http_port, "/options/live", **q)
        assert status == 200
