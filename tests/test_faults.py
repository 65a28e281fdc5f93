"""Every feed fault the simulator can inject: the client recovers (or stops, when fatal) and
never serves wrong data — after recovery the cache equals what the simulator last sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import ClassVar

import pytest
import websockets

from feeds.dhan.client import Credentials, DhanFeed, DhanFeedConfig
from feeds.dhan.packets import FeedMode
from feeds.errors import FatalFeedError
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.server import SimulatorServer
from service.app import running_service
from service.core.cache import ChainCache
from service.feed_source import subscriptions_for
from service.core.ingest import Ingest
from service.core.lifecycle import Lifecycle, Phase
from tests.test_service import SIM, assert_cache_matches_simulator, get_json, quiesce, settings_for, until

pytestmark = pytest.mark.usefixtures("dhan_env")



@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(SimulatorConfig(**SIM)) as server:
        yield server


async def test_silent_socket_is_detected_and_replaced(sim: SimulatorServer) -> None:
    """A socket that stays open but sends nothing while the market is open is reconnected."""
    settings = settings_for(sim, feed={"stall_timeout_s": 0.3}, market={"schedule": "always_open"})
    async with running_service(settings) as svc:
        conn = svc.feed.connections[0]
        sim.silence()
        await until(lambda: conn.stats.disconnects_by_reason.get("stall", 0) >= 1)
        # Still silent: whatever the socket's state now, the user is told the data is stale.
        assert all(svc.cache.legs[key].stale for key in conn.keys)
        status, body = await get_json(svc.http_port, "/options/live", underlying="NIFTY")
        assert status == 200 and body["stale"] is True
        assert all(row[side]["stale"] for row in body["strikes"] for side in ("ce", "pe") if row[side])
        sim.silence(False)
        await until(lambda: conn.stats.connected and svc.lifecycle.phase is Phase.READY)
        await quiesce(sim, svc)
        assert_cache_matches_simulator(svc.cache, sim)


async def test_silence_while_the_market_is_closed_is_not_a_fault(sim: SimulatorServer) -> None:
    """Outside market hours silence is expected: no reconnect."""
    settings = settings_for(sim, feed={"stall_timeout_s": 0.2}, market={"schedule": "never_open"})
    async with running_service(settings) as svc:
        conn = svc.feed.connections[0]
        sim.silence()
        await asyncio.sleep(1.0)  # five stall timeouts
        assert conn.stats.reconnects == 0 and conn.stats.connected
        assert svc.lifecycle.phase is Phase.READY


async def test_garbage_and_truncated_packets_are_counted_and_skipped(sim: SimulatorServer) -> None:
    """Malformed frames are counted as decode errors; the connection stays up; data stays right."""
    async with running_service(settings_for(sim)) as svc:
        conn = svc.feed.connections[0]
        for _ in range(3):
            sim.send_garbage()
        await until(lambda: conn.stats.decode_errors == 12)
        assert conn.stats.reconnects == 0 and svc.feed.connections[0].stats.connected
        await quiesce(sim, svc)
        assert_cache_matches_simulator(svc.cache, sim)


async def test_server_error_800_reconnects(sim: SimulatorServer) -> None:
    """A code-50 800 (internal error) is retried like a drop, and the state recovers."""
    async with running_service(settings_for(sim)) as svc:
        conn = svc.feed.connections[0]
        assert sim.disconnect_all(800) == 1
        await until(lambda: conn.stats.reconnects == 1 and conn.stats.connected)
        assert conn.stats.server_disconnect_codes == {800: 1}
        await quiesce(sim, svc)
        assert_cache_matches_simulator(svc.cache, sim)


@pytest.mark.parametrize("reason", [806, 808, 809, 810])
async def test_fatal_reasons_stop_without_retrying(sim: SimulatorServer, reason: int) -> None:
    """806/808/809/810 stop the feed with the reason; no second connection is attempted."""
    async with running_service(settings_for(sim)) as svc:
        sim.disconnect_all(reason)
        with pytest.raises(FatalFeedError, match=str(reason)):
            async with asyncio.timeout(5):
                await svc.feed_task
        assert sim.stats.connections_accepted == 1


async def test_token_expired_rereads_the_token_file(sim: SimulatorServer, tmp_path: Path) -> None:
    """807 with a fresh token in the token file reconnects at once with the new token."""
    token_file = tmp_path / "token"
    token_file.write_text("eyJ-first-token\n")
    async with running_service(settings_for(sim, feed={"token_file": str(token_file)})) as svc:
        assert sim.last_token == "eyJ-first-token"
        token_file.write_text("eyJ-second-token\n")
        sim.disconnect_all(807)
        conn = svc.feed.connections[0]
        await until(lambda: conn.stats.reconnects == 1 and conn.stats.connected)
        assert sim.last_token == "eyJ-second-token"
        await quiesce(sim, svc)
        assert_cache_matches_simulator(svc.cache, sim)


async def test_token_expired_without_a_new_token_stops_clearly(sim: SimulatorServer, tmp_path: Path) -> None:
    """807 when the token source still holds the same token stops, naming the source."""
    token_file = tmp_path / "token"
    token_file.write_text("eyJ-only-token")
    async with running_service(settings_for(sim, feed={"token_file": str(token_file)})) as svc:
        sim.disconnect_all(807)
        with pytest.raises(FatalFeedError, match=f"807.*{token_file}"):
            async with asyncio.timeout(5):
                await svc.feed_task


class _ShortWaits(DhanFeedConfig):
    """The client's config without Dhan's floors (≥ 60 s after a 429, ≥ 30 s after an 805)."""

    FLOORS: ClassVar[Mapping[str, tuple[float, str]]] = {}


def _feed_for(sim: SimulatorServer, settings_overrides: dict | None = None, **config: float) -> tuple[DhanFeed, Ingest]:
    settings = settings_for(sim)
    cache = ChainCache(sim.universe.skeleton.limit_expiries(settings.instruments.max_expiries))
    subs = subscriptions_for(settings, sim.universe.skeleton.limit_expiries(settings.instruments.max_expiries))
    feed = DhanFeed(
        _ShortWaits(url=sim.feed_url, reconnect_initial_s=0.05, reconnect_max_s=0.1, **config),
        Credentials("1000000001", lambda: "eyJ-token"),
        subs,
    )
    lifecycle = Lifecycle()
    lifecycle.to(Phase.WARMING, "test")
    return feed, Ingest(cache, lifecycle, min_coverage=1.0, connections=len(feed.connections))


async def test_http_429_on_the_handshake_cools_off(sim: SimulatorServer) -> None:
    """A 429 handshake makes the client wait at least the cool-off before trying again."""
    feed, ingest = _feed_for(sim, rate_limit_cooloff_s=0.5)
    task = asyncio.create_task(feed.run(ingest))
    try:
        conn = feed.connections[0]
        await until(lambda: conn.stats.connected)
        await quiesce_feed(sim, feed)
        sim.reject_handshakes(429, 1)
        dropped_at = time.monotonic()
        sim.drop_connections()
        await until(lambda: conn.stats.reconnects == 1 and conn.stats.connected)
        assert time.monotonic() - dropped_at >= 0.5
        assert sim.stats.handshakes_refused[429] == 1
        assert conn.stats.disconnects_by_reason.get("rate_limited") == 1
        await quiesce_feed(sim, feed)
        assert_cache_matches_simulator(ingest.cache, sim)
    finally:
        task.cancel()
        await asyncio.wait([task])


async def test_sixth_connection_kicks_the_oldest_with_805(sim: SimulatorServer) -> None:
    """Dhan's 5-socket rule: our socket is the oldest, gets 805, backs off long, then recovers."""
    feed, ingest = _feed_for(sim, too_many_connections_backoff_s=0.5)
    task = asyncio.create_task(feed.run(ingest))
    others = []
    try:
        conn = feed.connections[0]
        await until(lambda: conn.stats.connected)
        await quiesce_feed(sim, feed)
        for _ in range(5):  # another program on the same account opens five sockets
            others.append(await websockets.connect(f"{sim.feed_url}?version=2&token=t&clientId=c&authType=2"))
        await until(lambda: conn.stats.server_disconnect_codes.get(805) == 1)
        await until(lambda: conn.stats.reconnects == 1 and conn.stats.connected, timeout_s=10)
        assert conn.stats.disconnects_by_reason.get("rate_limited") == 1
        # Our reconnect was the 6th socket in turn: the other program's oldest got an 805 frame.
        await quiesce_feed(sim, feed, not_ours=lambda: sim.stats.disconnects_sent[805] - 1)
        assert_cache_matches_simulator(ingest.cache, sim)
    finally:
        for ws in others:
            await ws.close()
        task.cancel()
        await asyncio.wait([task])


async def quiesce_feed(server: SimulatorServer, feed: DhanFeed, not_ours=lambda: 0) -> None:  # noqa: ANN001
    """Pause and wait until ``feed`` has every frame sent to it (``not_ours()``: frames sent to others)."""
    server.pause()

    def settled() -> bool:
        received = sum(c.stats.frames for c in feed.connections)
        return server.idle and received == server.stats.frames_sent - not_ours()

    await until(settled)
    await asyncio.sleep(0)


async def test_more_than_5000_instruments_are_sharded_within_limits() -> None:
    """12,000+ instruments go over 3 connections of ≤ 5000 in messages of ≤ 100, all with data."""
    config = SimulatorConfig(underlyings=("NIFTY", "BANKNIFTY", "FINNIFTY"), expiries=10, strikes_per_side=100,
                             tick_interval_s=0.05, trades_per_step=5)
    async with SimulatorServer(config) as server:
        server.pause()
        skeleton = server.universe.skeleton
        total = skeleton.instrument_count()
        assert total > 10_000
        settings = settings_for(server, instruments={"max_expiries": 10, "underlyings": ["NIFTY", "BANKNIFTY", "FINNIFTY"]})
        feed = DhanFeed(
            DhanFeedConfig(url=server.feed_url), Credentials("1000000001", lambda: "eyJ-token"),
            subscriptions_for(settings, skeleton),
        )
        assert [len(c.subscriptions) for c in feed.connections] == [5000, 5000, total - 10_000]
        lifecycle = Lifecycle()
        lifecycle.to(Phase.WARMING, "test")
        ingest = Ingest(ChainCache(skeleton), lifecycle, min_coverage=1.0, connections=3)
        task = asyncio.create_task(feed.run(ingest))
        try:
            await asyncio.wait_for(ingest.gate.wait(), 30)
            assert server.connections_open == 3
            # The simulator enforces Dhan's limits: over 100 per message or 5000 per socket → 804.
            assert server.stats.disconnects_sent == {}
            expected_messages = sum(-(-len(c.subscriptions) // 100) for c in feed.connections) + 0
            assert sum(server.stats.subscribe_requests.values()) >= expected_messages
            assert ingest.cache.coverage == 1.0
        finally:
            task.cancel()
            await asyncio.wait([task])


async def test_subscription_changes_use_unsubscribe_and_subscribe(sim: SimulatorServer) -> None:
    """Rolling from one expiry to the next sends unsubscribe and subscribe messages; nothing leaks."""
    from feeds.dhan.client import Subscription

    first, second = sim.universe.skeleton.underlyings["NIFTY"].expiries[:2]
    index = Subscription((0, 13), FeedMode.QUOTE, 0.05)
    before = [index] + [Subscription(c.key, FeedMode.FULL, c.tick_size) for c in first.contracts()]
    after = [index] + [Subscription(c.key, FeedMode.FULL, c.tick_size) for c in second.contracts()]
    feed = DhanFeed(DhanFeedConfig(url=sim.feed_url), Credentials("1000000001", lambda: "eyJ-token"), before)
    sink = _Collector()
    task = asyncio.create_task(feed.run(sink))
    try:
        conn = feed.connections[0]
        await until(lambda: conn.stats.connected)
        assert await feed.update_subscriptions(after) == (len(second.contracts()), len(first.contracts()))
        expected = -(-len(first.contracts()) // 100)
        await until(lambda: sim.stats.unsubscribe_requests[FeedMode.FULL] == expected)
        await until(lambda: sim.stats.subscribe_requests[FeedMode.FULL] == 2 * expected)
        await quiesce_feed(sim, feed)
        sink.keys.clear()
        sim.resume()
        await until(lambda: len(sink.keys) > 20)
        sim.pause()
        assert not sink.keys & {c.key for c in first.contracts()}  # the old expiry no longer streams
        assert {s.key for s in conn.subscriptions.values()} == {s.key for s in after}
    finally:
        task.cancel()
        await asyncio.wait([task])


class _Collector:
    """A sink remembering which instruments sent data."""

    def __init__(self) -> None:
        self.keys: set = set()

    def on_ticks(self, ticks) -> None:  # noqa: ANN001
        self.keys.update(t.key for t in ticks)

    def on_event(self, event) -> None:  # noqa: ANN001
        pass
