"""/options/stream over real HTTP: snapshot + deltas == /options/live, resume, conflation, limits, replicas."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from service.app import RunningService, running_service
from tests.helpers import UNIT_S, until
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401  (the fixture)
from tests.sse import Follower, SseReader, open_stream
from tests.test_replica import caught_up, frozen, primary_and_replica
from tests.test_metrics import scrape as scrape_metrics
from tests.test_service import settings_for


@contextlib.asynccontextmanager
async def service(**http: object) -> AsyncIterator[RunningService]:
    settings = settings_for(None, http={"stream_interval_s": 0.02, **http})
    async with running_service(settings) as svc:
        yield svc


async def freeze(svc: RunningService) -> None:
    """Stop the market, take in every frame sent, and give the chain its last analytics."""
    sim = svc.simulator
    assert sim is not None
    sim.pause()
    await until(lambda: sim.idle and sum(c.stats.frames for c in svc.feed.connections) == sim.stats.frames_sent)
    await asyncio.sleep(0)
    if svc.analytics is not None:
        svc.analytics.run_once()


async def live(http: aiohttp.ClientSession, port: int, **params: str) -> bytes:
    async with http.get(f"http://127.0.0.1:{port}/options/live", params=params) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_snapshot_then_deltas_applied_in_order_equal_live() -> None:
    """The first event is exactly /options/live; deltas (ids = versions, increasing) applied in order
    give /options/live byte for byte once the market stops; leg objects are the body's bytes."""
    async with service() as svc, aiohttp.ClientSession() as http:
        nearest = svc.cache.expiries["NIFTY"][0].isoformat()
        async with await open_stream(http, svc.http_port, underlying="NIFTY") as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
            follower = Follower(SseReader(resp.content))
            first = await follower.step()
            assert first.kind == "snapshot" and int(first.id or 0) == first.json()["version"]
            assert first.json()["expiry"] == nearest
            while sum(e.kind == "delta" for e in follower.events) < 10:
                await follower.step()
            await freeze(svc)
            body = await live(http, svc.http_port, underlying="NIFTY")
            version = orjson.loads(body)["version"]
            await follower.until_version(version)
        assert orjson.dumps(follower.state) == body
        ids = [int(e.id or 0) for e in follower.events]
        assert ids == sorted(ids) and len(set(ids)) > 5
        deltas = [e for e in follower.events if e.kind == "delta"]
        assert all(e.json()["version"] == int(e.id or 0) for e in deltas)
        # A leg in a delta is the snapshot's object byte for byte: orjson round-trips canonically,
        # so the delta's raw bytes contain each leg exactly as encoded in a body.
        last = deltas[-1]
        for leg in last.json()["legs"].values():
            assert orjson.dumps(leg) in body


async def test_resume_with_last_event_id() -> None:
    """A reconnect with Last-Event-ID gets one delta (not a snapshot) while the id is within the
    ring, and ends equal to /options/live; an unknown or too-old id gets a snapshot."""
    async with service(stream_ring=64) as svc, aiohttp.ClientSession() as http:
        async with await open_stream(http, svc.http_port, underlying="NIFTY") as resp:
            follower = Follower(SseReader(resp.content))
            for _ in range(3):
                await follower.step()
        state, last_id = follower.state, follower.last_id
        sim = svc.simulator
        assert sim is not None
        steps = sim.market.steps
        await until(lambda: sim.market.steps >= steps + 5)
        await freeze(svc)
        body = await live(http, svc.http_port, underlying="NIFTY")
        async with await open_stream(http, svc.http_port, headers={"Last-Event-ID": str(last_id)}, underlying="NIFTY") as resp:
            resumed = Follower(SseReader(resp.content))
            resumed.state = state
            first = await resumed.step()
            assert first.kind == "delta" and int(first.id or 0) > int(last_id or 0)
            await resumed.until_version(orjson.loads(body)["version"])
        assert orjson.dumps(resumed.state) == body
        for bad in ("12", "not-a-version", str(orjson.loads(body)["version"] + 10**9)):
            async with await open_stream(http, svc.http_port, headers={"Last-Event-ID": bad}, underlying="NIFTY") as resp:
                assert (await SseReader(resp.content).next()).kind == "snapshot"


async def raw_stream(port: int, query: str) -> socket.socket:
    """A client that asks for a stream and then does not read: a tiny receive window fills at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    sock.send(f"GET /options/stream?{query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


@pytest.mark.parametrize("ring", [256, 4])
async def test_slow_client_is_conflated_not_queued(ring: int) -> None:
    """A client that stops reading gets, once it reads again, the latest value of every leg in far
    fewer events than a client that kept up — no backlog of stale deltas, one merged event; past
    the ring it is sent a fresh snapshot. Either way it ends equal to /options/live."""
    settings = settings_for(None, http={"stream_interval_s": 0.02, "stream_ring": ring},
                            simulator={"strikes_per_side": 40})  # fmt: skip
    async with running_service(settings) as svc, aiohttp.ClientSession() as http:
        sock = await raw_stream(svc.http_port, "underlying=NIFTY")
        async with await open_stream(http, svc.http_port, underlying="NIFTY") as resp:
            fast = Follower(SseReader(resp.content))
            # ~100 positions while the slow one reads nothing (each several KB: far past its buffers).
            while len(fast.events) < 100:
                await fast.step()
            await freeze(svc)
            body = await live(http, svc.http_port, underlying="NIFTY")
            version = orjson.loads(body)["version"]
            await fast.until_version(version)
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**24)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
            slow = Follower(SseReader(reader))
            await slow.until_version(version)
        finally:
            writer.close()
        assert orjson.dumps(slow.state) == orjson.dumps(fast.state) == body
        assert len(slow.events) < len(fast.events) / 2, (len(slow.events), len(fast.events))
        # One event in flight: what was queued for it while it stalled is at most the event being
        # written then (and one the kernel took whole before that); the rest is one merged event.
        # (Without the bound, the buffers held ~20 stale deltas here.)
        assert len(slow.events) <= 3, [e.kind for e in slow.events]
        snapshots = sum(e.kind == "snapshot" for e in slow.events)
        if ring == 4:
            assert snapshots >= 2  # fell behind the ring: a fresh snapshot, not a backlog
        else:
            assert snapshots == 1  # within the ring: merged deltas


async def test_stream_limit_heartbeats_and_cors() -> None:
    """Beyond http.max_streams a 503 JSON error; a closed stream frees its slot; idle streams get
    heartbeat comments; allowed origins get CORS headers on the stream."""
    settings = settings_for(
        None, http={"max_streams": 2, "stream_heartbeat_s": 0.05, "cors_allow_origins": ["http://dash.example"]}
    )
    async with running_service(settings) as svc, aiohttp.ClientSession() as http:
        port = svc.http_port
        one = await open_stream(http, port, headers={"Origin": "http://dash.example"}, underlying="NIFTY")
        two = await open_stream(http, port, underlying="NIFTY")
        assert one.status == two.status == 200
        assert one.headers["Access-Control-Allow-Origin"] == "http://dash.example"
        three = await open_stream(http, port, underlying="NIFTY")
        assert three.status == 503 and (await three.json())["error"]["code"] == "too_many_streams"
        scrape = await scrape_metrics(svc.metrics_port)  # what an operator sees of it
        assert scrape.value("livechain_stream_clients") == 2 and scrape.value("livechain_stream_refused_total") == 1
        assert scrape.value("livechain_stream_chains") == 1
        bad = await open_stream(http, port, underlying="SENSEX")
        assert bad.status == 404 and (await bad.json())["error"]["code"] == "unknown_underlying"
        await freeze(svc)  # nothing changes: only heartbeats flow
        reader = SseReader(one.content)
        assert (await reader.next()).kind == "snapshot"
        await asyncio.wait_for(_comments(reader, 2), 2 * UNIT_S)
        two.close()
        async def reopened() -> int:
            resp = await open_stream(http, port, underlying="NIFTY")
            status = resp.status
            resp.close()
            return status
        # The server notices the closed stream at its next write (a heartbeat at the latest).
        for _ in range(100):
            if await reopened() == 200:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("a closed stream's slot was never freed")
        one.close()


async def _comments(reader: SseReader, n: int) -> None:
    """Read lines until ``n`` comment lines (heartbeats) arrived."""
    seen = 0
    content = reader._content  # noqa: SLF001
    while seen < n:
        line = await content.readline()
        assert line, "the stream ended"
        seen += line.startswith(b": heartbeat")


async def test_replica_serves_the_same_stream(redis_server: RedisServer) -> None:  # noqa: F811
    """A replica's stream: the primary's snapshot bytes and ids; a client of the primary resumes
    on the replica with its Last-Event-ID (one delta), and both end equal to /options/live."""
    async with primary_and_replica(redis_server.url) as (svc, rep), aiohttp.ClientSession() as http:
        await frozen(svc)
        await until(caught_up(svc, rep))
        firsts = []
        streams = []
        for port in (svc.http_port, rep.http_port):
            resp = await open_stream(http, port, underlying="NIFTY")
            streams.append(resp)
            firsts.append(await SseReader(resp.content).next())
        assert firsts[0] == firsts[1]  # same kind, same id, same bytes
        primary = Follower(SseReader(streams[0].content))
        primary.state, primary.last_id = firsts[0].json(), firsts[0].id
        replica = Follower(SseReader(streams[1].content))
        replica.state, replica.last_id = firsts[1].json(), firsts[1].id
        sim = svc.simulator
        assert sim is not None
        sim.resume()
        for _ in range(5):
            await primary.step()
        streams[0].close()
        await frozen(svc)
        await until(caught_up(svc, rep))
        body = await live(http, svc.http_port, underlying="NIFTY")
        assert await live(http, rep.http_port, underlying="NIFTY") == body
        version = orjson.loads(body)["version"]
        await replica.until_version(version)
        streams[1].close()
        async with await open_stream(
            http, rep.http_port, headers={"Last-Event-ID": str(primary.last_id)}, underlying="NIFTY"
        ) as resp:
            moved = Follower(SseReader(resp.content))
            moved.state = primary.state
            assert (await moved.step()).kind == "delta"
            await moved.until_version(version)
        assert orjson.dumps(replica.state) == orjson.dumps(moved.state) == body
