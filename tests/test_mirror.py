"""The Redis mirror against a real redis-server: state, pub/sub, stream, outages, modes, secrets."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from feeds.model import ChainSkeleton, Tick
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.universe import build_universe
from service.core.cache import ChainCache
from service.errors import RedisUnavailable
from service.redis.mirror import RedisMirror
from service.redis.layout import (
    CATALOG_KEY,
    CHANNEL_PATTERN,
    STREAM_KEY,
    Catalog,
    ChainMeta,
    chain_id,
    change_fields,
    leg_field,
    legs_json,
    legs_key,
    meta_key,
    parse_change,
)
from service.settings import RedisSettings
from service.core.snapshot import leg_json
from tests.helpers import UNIT_S, until
from tests.conftest import NOW, TODAY, free_port, full_tick, index_tick, prev_close_tick
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401  (the fixture)



def redis_settings(url: str, **overrides: Any) -> RedisSettings:
    values: dict[str, Any] = dict(
        url=url, enabled=True, flush_interval_s=0.01, reconnect_initial_s=0.02, reconnect_max_s=0.1,
        connect_timeout_s=1.0, timeout_s=UNIT_S,
    )
    values.update(overrides)
    return RedisSettings(**values)


@pytest.fixture
def wide_skeleton() -> ChainSkeleton:
    """Two underlyings, two expiries each: index changes must reach every chain of theirs only."""
    config = SimulatorConfig(underlyings=("NIFTY", "BANKNIFTY"), expiries=2, strikes_per_side=4, today=TODAY)
    return build_universe(config, TODAY).skeleton


async def written(mirror: RedisMirror) -> None:
    """Every change applied so far is confirmed by Redis."""
    await until(lambda: mirror.stats.connected and mirror.pending == 0)


def option_keys(cache: ChainCache) -> list:
    return [k for k, leg in cache.legs.items() if leg.contract is not None]


def random_round(cache: ChainCache, rng: random.Random, k: int, n: int) -> dict:
    """Apply a batch of ticks to ``n`` random option legs (and sometimes an index); return key → ltp."""
    keys = rng.sample(option_keys(cache), n)
    ticks: list[Tick] = []
    for i, key in enumerate(keys):
        ticks.append(full_tick(key, ltp=round(100 + k + i / 100, 2), received_at=NOW + k, oi=1000 * k + i))
    if k % 3 == 0:
        ticks.append(index_tick(rng.choice(list(cache.index_keys.values())), ltp=24000 + k, received_at=NOW + k))
    cache.apply(ticks)
    return {key: round(100 + k + i / 100, 2) for i, key in enumerate(keys)}


async def assert_redis_equals_cache(client: Redis, cache: ChainCache) -> None:
    """Catalog, every chain's legs and meta in Redis equal the cache, field by field and byte by byte."""
    catalog = Catalog.from_json(await client.get(CATALOG_KEY))
    assert [u.underlying for u in catalog.underlyings] == list(cache.expiries)
    for u in catalog.underlyings:
        assert [c.expiry for c in u.chains] == cache.expiries[u.underlying]
        assert u.security_id == cache.index_keys[u.underlying][1]
    for (underlying, expiry), chain in cache.chains.items():
        cid = chain_id(underlying, expiry)
        legs = await client.hgetall(legs_key(cid))
        expected = {}
        for strike, ce, pe in chain.rows:
            for leg, side in ((ce, "CE"), (pe, "PE")):
                if leg is not None:
                    expected[leg_field(strike, side).encode()] = leg_json(leg)
                    doc = orjson.loads(legs[leg_field(strike, side).encode()])
                    assert (doc["security_id"], doc["ltp"], doc["oi"], doc["stale"]) == (
                        leg.key[1], leg.ltp, leg.oi, leg.stale
                    ), (cid, strike, side)
        assert legs == expected, cid
        meta = ChainMeta.from_fields(await client.hgetall(meta_key(cid)))
        assert meta == ChainMeta(chain.version, chain.updated_at, chain.index.ltp, chain.stale_legs), cid


@pytest.mark.parametrize(
    "updated_at", [NOW, NOW + 0.317021, 1_795_000_000.1 + 0.2, None], ids=["whole", "micro", "inexact", "never"]
)
def test_a_stream_entry_gives_back_the_writers_leg_bytes(skeleton: ChainSkeleton, updated_at: float | None) -> None:
    """Legs and meta survive entry → Redis fields → parse byte for byte: the replica's bodies depend on it."""
    cache = ChainCache(skeleton)
    legs = [leg for leg in cache.legs.values() if leg.contract is not None]
    cache.apply([full_tick(legs[0].key, ltp=0.1 + 0.2, volume=2**53 + 1, bid=None, received_at=NOW + 0.000001)])
    cache.apply([prev_close_tick(legs[1].key)])
    cache.mark_stale([legs[2].key])
    docs = [(leg_field(100.0 * i + 0.5, "CE"), leg_json(leg)) for i, leg in enumerate(legs)]
    meta = ChainMeta(1_795_000_000_123_456, updated_at, None if updated_at is None else 24_000.05, 1)
    fields = change_fields("ab12.3", 7, "NIFTY:2026-11-24", False, meta.fields(), legs_json(docs))
    wire = {k.encode(): str(v).encode() if not isinstance(v, bytes) else v for k, v in fields.items()}
    change = parse_change(wire)
    assert change.legs == dict(docs) and change.meta == meta
    assert (change.run, change.seq, change.cid, change.full) == ("ab12.3", 7, "NIFTY:2026-11-24", False)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:  # noqa: F811
    client = redis_server.client()
    yield client
    await client.aclose()


async def test_redis_state_equals_the_cache_after_ticks(
    redis_server: RedisServer, redis: Redis, wide_skeleton: ChainSkeleton  # noqa: F811
) -> None:
    """After ticks, index moves and stale marks, Redis holds exactly the cache: legs, meta, catalog."""
    cache = ChainCache(wide_skeleton)
    rng = random.Random(1)
    async with RedisMirror(cache, redis_settings(redis_server.url)) as mirror:
        await written(mirror)
        await assert_redis_equals_cache(redis, cache)  # the initial full write: every leg, all null
        for k in range(1, 31):
            random_round(cache, rng, k, 12)
            if k % 10 == 0:
                await written(mirror)  # some rounds coalesce into one flush, some do not
        cache.mark_stale(rng.sample(option_keys(cache), 3))
        await written(mirror)
        await assert_redis_equals_cache(redis, cache)
        # An index-only batch changes no leg, yet every chain of that underlying (its price, version).
        cache.apply([index_tick(cache.index_keys["BANKNIFTY"], ltp=51234.5, received_at=NOW + 99)])
        await written(mirror)
        await assert_redis_equals_cache(redis, cache)
        assert mirror.stats.errors == 0 and mirror.stats.full_rewrites == 1
        assert mirror.stats.lag_s_last is not None and mirror.stats.commands > 0


async def test_subscribers_receive_every_change(
    redis_server: RedisServer, redis: Redis, wide_skeleton: ChainSkeleton  # noqa: F811
) -> None:
    """Each flush publishes exactly the legs that changed, with their new values, in seq order."""
    cache = ChainCache(wide_skeleton)
    rng = random.Random(2)
    pubsub = redis.pubsub()
    await pubsub.psubscribe(CHANNEL_PATTERN)
    seqs: list[int] = []

    async def messages_until(done: Callable[[dict], bool]) -> dict:
        """Collect leg field → doc per chain from messages until ``done(collected)``."""
        got: dict[tuple[str, str], dict] = {}
        async with asyncio.timeout(2 * UNIT_S):
            while not done(got):
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=UNIT_S)
                if msg is None:
                    continue
                body = orjson.loads(msg["data"])
                assert msg["channel"].decode() == f"livechain:changes:{body['underlying']}:{body['expiry']}"
                seqs.append(body["seq"])
                for field, doc in body["legs"].items():
                    got[(f"{body['underlying']}:{body['expiry']}", field)] = doc
        return got

    async with RedisMirror(cache, redis_settings(redis_server.url)) as mirror:
        await written(mirror)
        total = sum(1 for _ in option_keys(cache))
        full = await messages_until(lambda got: len(got) == total)  # the initial full state
        assert all(doc["ltp"] is None for doc in full.values())
        where = {
            leg.key: (chain_id(u, e), leg_field(strike, side))
            for (u, e), chain in cache.chains.items()
            for strike, ce, pe in chain.rows
            for leg, side in ((ce, "CE"), (pe, "PE"))
            if leg is not None
        }
        for k in range(1, 11):
            changed = random_round(cache, rng, k, 5 + k)
            await written(mirror)
            wanted = {where[key]: ltp for key, ltp in changed.items()}
            got = await messages_until(lambda got: wanted.keys() <= got.keys())
            assert got.keys() == wanted.keys(), f"round {k}: published legs differ from changed legs"
            assert {f: doc["ltp"] for f, doc in got.items()} == wanted
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    await pubsub.aclose()


async def test_a_stream_consumer_catches_up_from_an_id(
    redis_server: RedisServer, redis: Redis, wide_skeleton: ChainSkeleton  # noqa: F811
) -> None:
    """Reading the stream from a remembered ID and applying entries in order reproduces the state."""
    cache = ChainCache(wide_skeleton)
    rng = random.Random(3)
    async with RedisMirror(cache, redis_settings(redis_server.url)) as mirror:
        for k in range(1, 6):
            random_round(cache, rng, k, 10)
            await written(mirror)
        # A consumer that read everything up to here and then went away ...
        [(last_id, last_fields)] = await redis.xrevrange(STREAM_KEY, count=1)
        mirror_copy = {
            (u, e): {f: v for f, v in (await redis.hgetall(legs_key(chain_id(u, e)))).items()}
            for (u, e) in cache.chains
        }
        seen_changed: set = set()
        for k in range(6, 26):
            seen_changed |= random_round(cache, rng, k, 7).keys()
            if k % 4 == 0:
                await written(mirror)
        await written(mirror)
        # ... comes back and reads only what it missed.
        entries = await redis.xrange(STREAM_KEY, min=f"({last_id.decode()}")
        seq = parse_change(last_fields).seq
        for _, fields in entries:
            change = parse_change(fields)
            assert change.seq == seq + 1 and not change.full
            seq = change.seq
            underlying, expiry = change.cid.split(":")
            key = next(k for k in cache.chains if k[0] == underlying and k[1].isoformat() == expiry)
            mirror_copy[key].update({f.encode(): v for f, v in change.legs.items()})
        for (u, e), chain in cache.chains.items():
            assert mirror_copy[(u, e)] == await redis.hgetall(legs_key(chain_id(u, e)))
        changed_legs = {cache.legs[k] for k in seen_changed}
        for (u, e), legs in mirror_copy.items():
            for strike, ce, pe in cache.chains[(u, e)].rows:
                for leg, side in ((ce, "CE"), (pe, "PE")):
                    if leg in changed_legs:
                        assert legs[leg_field(strike, side).encode()] == leg_json(leg)


async def test_redis_outage_loses_nothing_and_ingest_carries_on(
    redis_server: RedisServer, redis: Redis, wide_skeleton: ChainSkeleton  # noqa: F811
) -> None:
    """Ticks keep being applied while Redis is down; once it is back the full state is rewritten."""
    cache = ChainCache(wide_skeleton)
    rng = random.Random(4)
    async with RedisMirror(cache, redis_settings(redis_server.url)) as mirror:
        for k in range(1, 11):
            random_round(cache, rng, k, 10)
            await asyncio.sleep(0.005)
        await written(mirror)
        applied_before, batches_before = cache.ticks_applied, cache.batches_applied
        run_before = mirror.run

        await redis_server.stop()
        for k in range(11, 21):  # the same ten rounds of ticks, now with Redis gone
            random_round(cache, rng, k, 10)
            await asyncio.sleep(0.005)
        await until(lambda: not mirror.stats.connected and mirror.stats.errors >= 3)
        for k in range(21, 31):  # and ten more while the mirror is retrying
            random_round(cache, rng, k, 10)
            await asyncio.sleep(0.005)
        # Every tick of the twenty rounds was applied at once: 10 legs, plus an index every 3rd round.
        assert cache.ticks_applied - applied_before == sum(10 + (k % 3 == 0) for k in range(11, 31))
        assert cache.batches_applied == batches_before + 20
        assert 0 < mirror.pending <= len(cache.legs)  # buffered, bounded by the instruments

        await redis_server.start()  # a new, empty Redis on the same port
        await written(mirror)
        assert mirror.run != run_before and mirror.stats.full_rewrites == 2
        client = redis_server.client()
        try:
            await assert_redis_equals_cache(client, cache)
            [(_, fields)] = await client.xrevrange(STREAM_KEY, count=1)
            assert parse_change(fields).full
        finally:
            await client.aclose()


async def test_auto_mode_without_redis_says_so_once_and_hides_the_password(
    skeleton: ChainSkeleton, caplog: pytest.LogCaptureFixture
) -> None:
    """No Redis: one clear warning (password masked), quiet retries with backoff, ingest unaffected."""
    caplog.set_level(logging.DEBUG, logger="service")
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    cache = ChainCache(skeleton)
    async with RedisMirror(cache, redis_settings(url, enabled="auto")) as mirror:
        await until(lambda: mirror.stats.errors >= 4)
        cache.apply([full_tick(k) for k in option_keys(cache)])
        assert not mirror.stats.connected and mirror.pending == len(option_keys(cache))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "not available" in warnings[0].getMessage() and ":***@127.0.0.1" in warnings[0].getMessage()
    assert all("hunter2" not in r.getMessage() for r in caplog.records)


async def test_required_mode_fails_fast_without_redis(skeleton: ChainSkeleton) -> None:
    """redis.enabled = true and nothing listening: RedisUnavailable, naming the masked URL."""
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailable) as info:
        async with RedisMirror(ChainCache(skeleton), redis_settings(url)):
            pytest.fail("must not start")
    assert ":***@127.0.0.1" in str(info.value) and "hunter2" not in str(info.value)


async def test_password_protected_redis(skeleton: ChainSkeleton, tmp_path: Any) -> None:
    """A password in the URL authenticates; a wrong one is refused without being echoed."""
    from tests.redis_fixture import require_redis_server

    require_redis_server()
    server = RedisServer(free_port(), str(tmp_path), password="s3cret-pw")
    await server.start()
    try:
        cache = ChainCache(skeleton)
        async with RedisMirror(cache, redis_settings(server.url)) as mirror:
            cache.apply([prev_close_tick(k) for k in option_keys(cache)])
            await written(mirror)
            client = server.client()
            try:
                await assert_redis_equals_cache(client, cache)
            finally:
                await client.aclose()
        wrong = server.url.replace("s3cret-pw", "wrong-pw")
        with pytest.raises(RedisUnavailable) as info:
            async with RedisMirror(cache, redis_settings(wrong)):
                pytest.fail("must not start")
        assert "wrong-pw" not in str(info.value) and "s3cret" not in str(info.value)
    finally:
        await server.stop()
