"""Read replicas: the primary's bytes served from Redis alone, through outages and restarts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from feeds.model import ChainSkeleton
from feeds.calendar import MarketCalendar
from feeds.clock import SYSTEM_CLOCK, Clock
from service.core.freshness import Freshness
from service.app import RunningService, running_service
from service.core.cache import ChainCache
from service.core.chains import CacheChains
from service.errors import ReadinessTimeout
from service.core.lifecycle import Lifecycle, Phase
from service.redis.mirror import RedisMirror
from service.redis.layout import STREAM_KEY, parse_change
from service.redis.replica import ReplicaFollower, ReplicaStore, RunningReplica, running_replica
from service.settings import Settings
from tests.helpers import UNIT_S, until
from tests.conftest import NOW, free_port, full_tick
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401  (the fixture)
from tests.test_mirror import assert_redis_equals_cache, redis_settings

SIM = dict(underlyings=["NIFTY"], expiries=2, strikes_per_side=5, tick_interval_s=0.02, trades_per_step=10)


def _redis_section(url: str) -> dict[str, Any]:
    return dict(
        url=url, enabled=True, flush_interval_s=0.01, reconnect_initial_s=0.02, reconnect_max_s=0.2,
        connect_timeout_s=1.0, timeout_s=UNIT_S, replica_block_s=0.2,
    )


def primary_settings(url: str, **sections: dict) -> Settings:
    base: dict[str, dict] = {
        "http": {"port": 0},
        "readiness": {"timeout_s": 4 * UNIT_S},
        "simulator": dict(SIM),
        "metrics": {"port": 0},
        "redis": _redis_section(url),
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return Settings(**base)


def replica_settings(url: str, **sections: dict) -> Settings:
    base: dict[str, dict] = {
        "http": {"port": 0}, "readiness": {"timeout_s": 4 * UNIT_S}, "redis": _redis_section(url),
        "metrics": {"port": 0},  # a replica has its metrics/probe port too: never the fixed default in tests
    }  # fmt: skip
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return Settings(**base)


async def get(port: int, path: str, **params: str) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
        async with http.get(f"http://127.0.0.1:{port}{path}", params=params) as resp:
            return resp.status, await resp.read(), {k.lower(): v for k, v in resp.headers.items()}


async def frozen(svc: RunningService) -> None:
    """Stop the market, let the primary take in every frame sent and write every change to Redis."""
    sim = svc.simulator
    assert sim is not None and svc.mirror is not None
    sim.pause()
    await until(lambda: sim.idle and sum(c.stats.frames for c in svc.feed.connections) == sim.stats.frames_sent)
    await asyncio.sleep(0)
    if svc.analytics is not None:
        svc.analytics.run_once()  # the last analytics pass now, not at the runner's next tick
    await until(lambda: svc.mirror.stats.connected and svc.mirror.pending == 0)


def caught_up(svc: RunningService, rep: RunningReplica) -> Callable[[], bool]:
    def check() -> bool:
        if not rep.store.following:  # what it holds is unconfirmed (reported stale) until it follows again
            return False
        for (u, e), chain in svc.cache.chains.items():
            snap = rep.store.snapshot(u, e)
            if snap is None or snap.version != chain.version:
                return False
        return True

    return check


async def assert_same_bytes(svc: RunningService, rep: RunningReplica) -> None:
    """Every chain's /options/live and /options/underlyings: same status, body bytes and ETag."""
    for underlying, expiries in svc.cache.expiries.items():
        for expiry in expiries:
            params = {"underlying": underlying, "expiry": expiry.isoformat()}
            p_status, p_body, p_headers = await get(svc.http_port, "/options/live", **params)
            r_status, r_body, r_headers = await get(rep.http_port, "/options/live", **params)
            assert p_status == r_status == 200
            assert r_body == p_body and r_headers["etag"] == p_headers["etag"], f"{underlying} {expiry}"
    assert (await get(svc.http_port, "/options/underlyings"))[1] == (await get(rep.http_port, "/options/underlyings"))[1]


@contextlib.asynccontextmanager
async def primary_and_replica(
    url: str, clock: Clock = SYSTEM_CLOCK, **primary: dict
) -> AsyncIterator[tuple[RunningService, RunningReplica]]:
    async with (
        running_service(primary_settings(url, **primary), clock=clock) as svc,
        running_replica(replica_settings(url), clock=clock) as rep,
    ):
        yield svc, rep


async def test_replica_serves_the_primarys_bytes(redis_server: RedisServer, broker: str) -> None:  # noqa: F811
    """For the same chain state the replica's body and ETag equal the primary's, byte for byte
    (the primary fed by Dhan's or Kite's protocol: the embedded simulator speaks either)."""
    async with primary_and_replica(redis_server.url, simulator={"broker": broker}) as (svc, rep):
        assert svc.feed.broker == broker
        assert rep.lifecycle.phase is Phase.READY
        sim = svc.simulator
        assert sim is not None
        steps = sim.market.steps
        await until(lambda: sim.market.steps >= steps + 10 and rep.store.changes_applied > 0)
        await frozen(svc)
        await until(caught_up(svc, rep))
        await assert_same_bytes(svc, rep)
        status, body, _ = await get(rep.http_port, "/options/underlyings")
        assert orjson.loads(body)["broker"] == broker  # named by the primary, served alike by the replica
        status, body, headers = await get(rep.http_port, "/options/live", underlying="NIFTY")
        primary_etag = (await get(svc.http_port, "/options/live", underlying="NIFTY"))[2]["etag"]
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"http://127.0.0.1:{rep.http_port}/options/live", params={"underlying": "NIFTY"},
                headers={"If-None-Match": primary_etag},
            ) as resp:
                assert resp.status == 304  # a poller can move between primary and replica freely
        status, ready, _ = await get(rep.http_port, "/readyz")
        assert status == 200 and b'"source":"redis"' in ready
        assert rep.store.loads == 1  # it followed the stream: one load, then entries
        assert (await get(rep.http_port, "/options/live", underlying="SENSEX"))[0] == 404


async def test_redis_outage_replica_unready_primary_carries_on_nothing_lost(
    redis_server: RedisServer, broker: str,  # noqa: F811
) -> None:
    """Redis down: the primary ingests every frame, the replica says 503; back: both converge again."""
    async with primary_and_replica(redis_server.url, simulator={"broker": broker}) as (svc, rep):
        sim = svc.simulator
        assert sim is not None and svc.mirror is not None
        await frozen(svc)  # a clean baseline: everything sent has been applied
        ticks_before = svc.ingest.ticks

        await redis_server.stop()
        sim.resume()
        steps = sim.market.steps
        await until(lambda: not svc.mirror.stats.connected and rep.lifecycle.phase is Phase.WARMING)
        status, body, _ = await get(rep.http_port, "/readyz")
        assert status == 503 and b"not following Redis" in body
        status, body, _ = await get(rep.http_port, "/options/live", underlying="NIFTY")
        assert status == 200 and b'"stale":true' in body  # last known state, honestly marked
        await until(lambda: sim.market.steps >= steps + 20 and svc.mirror.stats.errors >= 3)
        await frozen_feed(svc)
        # Every frame the market sent while Redis was down was received and applied.
        assert svc.ingest.ticks > ticks_before and svc.mirror.pending > 0
        assert (await get(svc.http_port, "/readyz"))[0] == 200

        await redis_server.start()  # empty: the mirror must rewrite everything
        sim.resume()
        await until(lambda: svc.mirror.stats.connected and rep.lifecycle.phase is Phase.READY, 4 * UNIT_S)
        assert rep.store.loads >= 2
        await frozen(svc)
        await until(caught_up(svc, rep))
        client = redis_server.client()
        try:
            await assert_redis_equals_cache(client, svc.cache)
        finally:
            await client.aclose()
        await assert_same_bytes(svc, rep)


async def frozen_feed(svc: RunningService) -> None:
    """Stop the market and wait until the primary has received every frame sent (Redis aside)."""
    sim = svc.simulator
    assert sim is not None
    sim.pause()
    await until(lambda: sim.idle and sum(c.stats.frames for c in svc.feed.connections) == sim.stats.frames_sent)


async def test_replica_reloads_when_the_primary_restarts_with_another_universe(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """A new primary run (here with fewer expiries) makes the replica reload; old keys are gone."""
    async with running_replica_after(redis_server.url, expiries=2) as rep:
        assert len(rep.store.underlyings()[0].expiries) == 2
        async with running_service(primary_settings(redis_server.url, simulator={"expiries": 1, "seed": 11})) as svc:
            await until(lambda: rep.store.run == svc.mirror.run if svc.mirror else False)
            await frozen(svc)
            await until(caught_up(svc, rep))
            await assert_same_bytes(svc, rep)
            assert len(rep.store.underlyings()[0].expiries) == 1
            client = redis_server.client()
            try:
                assert len(await client.keys("livechain:chain:*")) == 1
            finally:
                await client.aclose()


@contextlib.asynccontextmanager
async def running_replica_after(url: str, expiries: int) -> AsyncIterator[RunningReplica]:
    """A replica started against the state a first primary left in Redis (that primary has stopped)."""
    async with running_service(primary_settings(url, simulator={"expiries": expiries})):
        pass
    async with running_replica(replica_settings(url)) as rep:
        yield rep


@pytest.mark.parametrize(
    ("run_suffix", "seq_step", "raw_legs"),
    [("", 5, None), ("-rewritten", 1, None), ("", 1, b"{not json")],
    ids=["seq-gap", "new-run", "unreadable"],
)
async def test_a_gap_a_new_run_or_garbage_in_the_stream_makes_the_replica_reload(
    redis_server: RedisServer, skeleton: ChainSkeleton, run_suffix: str, seq_step: int, raw_legs: bytes | None,  # noqa: F811
) -> None:
    """An entry that skips seq (trimmed unread), comes from another run or is unreadable is not applied: reload."""
    cache = ChainCache(skeleton)
    freshness = Freshness(30.0, MarketCalendar(always_open=True))
    primary = CacheChains(cache, freshness)
    store = ReplicaStore(freshness)
    lifecycle = Lifecycle()
    lifecycle.to(Phase.WARMING, "test")
    async with RedisMirror(cache, redis_settings(redis_server.url)) as mirror, ReplicaFollower(
        store, redis_settings(redis_server.url, replica_block_s=0.1), lifecycle
    ) as follower:
        await asyncio.wait_for(follower.loaded.wait(), UNIT_S)
        follower.serve()
        legs = [leg for leg in cache.legs.values() if leg.contract is not None]
        cache.apply([full_tick(leg.key, ltp=111.05, received_at=NOW) for leg in legs])
        await until(lambda: mirror.pending == 0 and store.seq == mirror_seq(mirror))
        client = redis_server.client()
        try:
            [(_, fields)] = await client.xrevrange(STREAM_KEY, count=1)
            last = parse_change(fields)
            forged = dict(fields)
            forged[b"seq"] = str(last.seq + seq_step).encode()  # +5: as if four entries were trimmed unread
            forged[b"run"] = (last.run + run_suffix).encode()  # another run: the state was rewritten
            forged[b"legs"] = raw_legs or orjson.dumps({next(iter(last.legs)): {"bogus": True}})
            forged_id = await client.xadd(STREAM_KEY, forged)
        finally:
            await client.aclose()
        await until(lambda: store.last_id == forged_id or store.loads >= 2 or not store.following)
        assert all(b"bogus" not in store.snapshot(u, e).body for u, e in cache.chains)  # type: ignore[union-attr]
        cache.apply([full_tick(legs[0].key, ltp=222.1, received_at=NOW + 1)])  # a genuine entry follows
        await until(
            lambda: store.loads >= 2 and store.following and store.run == mirror.run
            and store.seq == mirror_seq(mirror) and mirror.pending == 0
        )
        for (u, e) in cache.chains:
            assert store.snapshot(u, e).body == primary.snapshot(u, e).body  # type: ignore[union-attr]
        assert lifecycle.phase is Phase.READY


def mirror_seq(mirror: RedisMirror) -> int:
    return mirror._seq  # noqa: SLF001 - the writer's last seq: the replica has applied everything when equal


async def test_replica_start_names_what_is_missing(redis_server: RedisServer) -> None:  # noqa: F811
    """An empty Redis, or none at all: the replica never binds its port and says why."""
    with pytest.raises(ReadinessTimeout, match="no livechain state in Redis"):
        async with running_replica(replica_settings(redis_server.url, readiness={"timeout_s": 0.5})):
            pytest.fail("must not serve")
    url = f"redis://:pw-hidden@127.0.0.1:{free_port()}/0"
    with pytest.raises(ReadinessTimeout, match="ConnectionError") as info:
        async with running_replica(replica_settings(url, readiness={"timeout_s": 0.5})):
            pytest.fail("must not serve")
    assert "pw-hidden" not in str(info.value)


@pytest.mark.slow
async def test_livechain_replica_command(redis_server: RedisServer) -> None:  # noqa: F811
    """`livechain replica` serves the primary's chains from Redis and stops cleanly on SIGTERM."""
    async with running_service(primary_settings(redis_server.url)) as svc:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVECHAIN_", "DHAN_"))}
        env.update(LIVECHAIN_REDIS__URL=redis_server.url, LIVECHAIN_HTTP__PORT=str(port), LIVECHAIN_METRICS__PORT="0")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "replica", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(6 * UNIT_S):
                while b"replica serving" not in (line := await proc.stderr.readline()):  # type: ignore[union-attr]
                    assert line, "the replica exited before serving"
            status, body, _ = await get(port, "/options/underlyings")
            assert status == 200 and body == (await get(svc.http_port, "/options/underlyings"))[1]
            assert (await get(port, "/options/live", underlying="NIFTY"))[0] == 200
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(2 * UNIT_S):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_replica_has_a_metrics_and_probe_port(redis_server: RedisServer) -> None:  # noqa: F811
    """`livechain replica` serves /metrics, /healthz and /readyz on metrics.port, like the primary."""
    async with primary_and_replica(redis_server.url) as (_svc, rep):
        assert rep.metrics_port is not None and rep.metrics_port != rep.http_port
        status, body, _ = await get(rep.metrics_port, "/readyz")
        assert status == 200 and orjson.loads(body)["ready"] is True
        assert (await get(rep.metrics_port, "/healthz"))[0] == 200
        await get(rep.http_port, "/options/live", underlying="NIFTY")
        status, text, _ = await get(rep.metrics_port, "/metrics")
        assert status == 200 and b'livechain_http_requests_total{route="/options/live",status="200"}' in text
