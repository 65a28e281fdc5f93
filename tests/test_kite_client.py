"""The Kite client against the Kite simulator over real sockets: heartbeats, stalls, error frames,
a refused token, garbage, the 3 x 3000 budget and live subscription changes."""

from __future__ import annotations

import asyncio
import contextlib
import random
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from feeds.errors import SubscriptionError
from feeds.kite.client import KiteCredentials, KiteFeed, KiteFeedConfig, Subscription, plan_subscriptions
from feeds.kite.codec import decode_frame
from feeds.kite.packets import Mode, UnknownPacket
from feeds.model import Tick
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.kite import KiteSimulatorServer
from feeds.source import ConnectionDown, ConnectionUp, FeedEvent
from service.app import running_service
from service.errors import ConfigError
from tests.helpers import UNIT_S, until
from tests.test_service import SIM, settings_for

TOKEN = "kite-client-test-token"


class Sink:
    def __init__(self) -> None:
        self.ticks: list[Tick] = []
        self.events: list[FeedEvent] = []

    def on_ticks(self, ticks: Sequence[Tick]) -> None:
        self.ticks.extend(ticks)

    def on_event(self, event: FeedEvent) -> None:
        self.events.append(event)


def _config(url: str, **overrides: float) -> KiteFeedConfig:
    # The service hands the Kite client feed.*'s connection keys as this model (service.feed_source).
    values = dict(url=url, reconnect_initial_s=0.02, reconnect_max_s=0.05, stall_timeout_s=5.0) | overrides
    return KiteFeedConfig(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(
    sim: KiteSimulatorServer, tap: Callable[[int, float, bytes], None] | None = None, **overrides: float
) -> AsyncIterator[tuple[KiteFeed, Sink]]:
    feed = KiteFeed(
        _config(sim.feed_url, **overrides), KiteCredentials("api-key", lambda: TOKEN),
        plan_subscriptions(sim.universe.skeleton), rng=random.Random(0), tap=tap,
    )  # fmt: skip
    sink = Sink()
    task = asyncio.create_task(feed.run(sink))
    try:
        await until(lambda: feed.connections[0].stats.connected)
        yield feed, sink
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=UNIT_S)


@pytest.fixture
async def sim() -> AsyncIterator[KiteSimulatorServer]:
    async with KiteSimulatorServer(SimulatorConfig(**SIM)) as server:
        server.heartbeat_interval_s = 0.05
        yield server


async def test_heartbeats_keep_a_quiet_socket_alive_and_silence_is_a_stall(sim: KiteSimulatorServer) -> None:
    """With the market paused only heartbeats arrive: no stall. With nothing at all: the watchdog reconnects."""
    async with running(sim, stall_timeout_s=1.0) as (feed, sink):
        conn = feed.connections[0]
        sim.pause()
        beats = conn.stats.heartbeats
        # 1.5 s of heartbeats only (one every 0.05 s): longer than the stall timeout, 20 beats within it.
        await until(lambda: conn.stats.heartbeats >= beats + 30)
        assert conn.stats.disconnects_by_reason == {} and conn.stats.connected
        sim.silence()
        await until(lambda: conn.stats.disconnects_by_reason.get("stall") == 1)
        assert any(isinstance(e, ConnectionDown) and "heartbeat" in e.reason for e in sink.events)
        sim.silence(False)
        await until(lambda: conn.stats.reconnects == 1 and conn.stats.connected)


async def test_error_frames_are_logged_and_counted(sim: KiteSimulatorServer, caplog: pytest.LogCaptureFixture) -> None:
    """Text frames: errors counted and logged (rate-limited), messages logged, orders ignored; the socket stays up."""
    async with running(sim) as (feed, _):
        conn = feed.connections[0]
        for _ in range(3):
            sim.send_text("error", "subscription over the limit")
        sim.send_text("order", {"order_id": "1"})
        sim.send_text("message", "maintenance tonight")
        await until(lambda: conn.stats.server_errors == 3 and conn.stats.text_frames >= 5)
        assert conn.stats.connected and conn.stats.decode_errors == 0
    errors = [r for r in caplog.records if "Kite sent an error" in r.getMessage()]
    assert len(errors) == 1 and "subscription over the limit" in errors[0].getMessage()


async def test_garbage_is_counted_and_the_rest_still_decoded(sim: KiteSimulatorServer) -> None:
    """Malformed frames move decode_errors; data keeps flowing on the same socket."""
    async with running(sim) as (feed, sink):
        conn = feed.connections[0]
        assert sim.send_garbage() == 4
        # An overrun, trailing bytes and an empty frame are errors; a packet of unknown length is skipped.
        await until(lambda: conn.stats.decode_errors == 3 and conn.stats.packets_by_type[UnknownPacket] == 1)
        seen = len(sink.ticks)
        await until(lambda: len(sink.ticks) > seen + 10)
        assert conn.stats.connects == 1 and feed.unknown_instrument_packets == 1  # the trailing-bytes frame's LTP


async def test_a_refused_token_is_reread_and_a_fresh_one_reconnects_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """HTTP 403 at the handshake re-reads the token (here from feed.token_command); a new one connects."""
    counter = tmp_path / "runs"
    script = tmp_path / "token.sh"
    # Startup and the first connect get the stale token; the re-read after the 403 gets the fresh one.
    script.write_text(
        f'#!/bin/sh\nn=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n'
        'if [ $n -le 2 ]; then echo stale-token; else echo fresh-token; fi\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("KITE_API_KEY", "api-key")
    async with KiteSimulatorServer(SimulatorConfig(**SIM, expected_token="fresh-token")) as server:
        settings = settings_for(server, feed={"token_command": str(script)})
        async with running_service(settings) as svc:
            conn = svc.feed.connections[0]
            assert conn.stats.disconnects_by_reason == {"token_expired": 1} and conn.stats.connects == 1
            assert server.handshakes_forbidden == 1 and server.last_token == "fresh-token"


def test_more_than_three_by_three_thousand_fails_at_startup_with_the_numbers() -> None:
    """A plan of 9001 instruments cannot start; 9000 can."""
    subs = [Subscription((2, i * 256 + 2), Mode.FULL, 0.05) for i in range(1, 9002)]
    creds = KiteCredentials("k", lambda: TOKEN)
    feed = KiteFeed(_config("ws://127.0.0.1:9"), creds, subs[:9000])
    assert [len(c.subscriptions) for c in feed.connections] == [3000, 3000, 3000]
    with pytest.raises(SubscriptionError, match="9001 subscriptions need 4 connections; Kite allows 3 x 3000 = 9000"):
        KiteFeed(_config("ws://127.0.0.1:9"), creds, subs)


async def test_service_refuses_a_kite_plan_over_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the service: the startup error names the numbers (exit 2), before any connection."""
    monkeypatch.setenv("KITE_API_KEY", "api-key")
    monkeypatch.setenv("KITE_ACCESS_TOKEN", TOKEN)
    big = {**SIM, "expiries": 10, "strikes_per_side": 230}  # 10 x 461 x 2 options + 1 index = 9221
    async with KiteSimulatorServer(SimulatorConfig(**big)) as server:
        with pytest.raises(ConfigError, match="9221 subscriptions need 4 connections; Kite allows 3 x 3000"):
            async with running_service(settings_for(server, instruments={"max_expiries": 10})):
                pytest.fail("must not start")
        assert server.stats.connections_accepted == 0


async def test_update_skeleton_unsubscribes_and_subscribes_on_the_live_socket(sim: KiteSimulatorServer) -> None:
    """A roll: the dropped expiry's tokens are unsubscribed, no reconnect, the kept ones still tick."""
    async with running(sim) as (feed, sink):
        skeleton = sim.universe.skeleton
        nearest = skeleton.limit_expiries(1)
        added, removed = await feed.update_skeleton(nearest)
        assert (added, removed) == (0, len(skeleton.underlyings["NIFTY"].expiries[1].contracts()))
        dropped = {c.key for c in skeleton.underlyings["NIFTY"].expiries[1].contracts()}
        await until(lambda: sim.stats.unsubscribe_requests and not any(
            k in c.subs[m] for c in sim._connections.values() for m in c.subs for k in dropped  # noqa: SLF001
        ))  # fmt: skip
        sink.ticks.clear()
        await until(lambda: len(sink.ticks) > 20)
        assert not {t[0] for t in sink.ticks} & dropped
        assert feed.connections[0].stats.connects == 1
        assert any(isinstance(e, ConnectionUp) for e in sink.events)


async def test_the_official_sdk_parses_the_simulators_frames_like_we_do(sim: KiteSimulatorServer) -> None:
    """Every frame the Kite simulator sent (captured by the client's tap) parses the same with the SDK's parser."""
    kiteconnect = pytest.importorskip("kiteconnect")
    from tests.test_kite_codec import _assert_sdk_agrees

    frames: list[bytes] = []
    async with running(sim, tap=lambda _conn, _at, frame: frames.append(frame)):
        await until(lambda: len(frames) >= 100)
    parse = kiteconnect.KiteTicker("api-key", "access-token")._parse_binary  # noqa: SLF001
    kinds = set()
    for frame in frames:
        if len(frame) == 1:
            continue  # a heartbeat: the SDK ignores it too
        ours = decode_frame(frame)
        theirs = parse(frame)
        assert len(ours) == len(theirs) > 0
        for p, d in zip(ours, theirs, strict=True):
            _assert_sdk_agrees(p, d)
            kinds.add(type(p).__name__)
    assert {"FullPacket", "IndexFullPacket"} <= kinds


async def test_kite_endpoint_defaults_and_missing_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """feed.kind = kite: Kite's URL and instruments CSV by default; without KITE_* the start stops naming them."""
    from service.feed_source import open_endpoint
    from service.settings import Settings

    with pytest.raises(ConfigError, match="missing: KITE_API_KEY, KITE_ACCESS_TOKEN"):
        async with running_service(settings_for(None, feed={"kind": "kite"})):
            pytest.fail("must not start")
    monkeypatch.setenv("KITE_API_KEY", "api-key")
    monkeypatch.setenv("KITE_ACCESS_TOKEN", TOKEN)
    async with contextlib.AsyncExitStack() as stack:
        endpoint = await open_endpoint(Settings(feed={"kind": "kite"}), stack)  # type: ignore[arg-type]
        assert (endpoint.broker, endpoint.url, endpoint.scrip_master) == (
            "kite", "wss://ws.kite.trade", "https://api.kite.trade/instruments"
        )
        assert endpoint.credentials.access_token() == TOKEN and TOKEN not in repr(endpoint.credentials)
        custom = await open_endpoint(Settings(feed={"kind": "kite", "url": "wss://example.test"}), stack)  # type: ignore[arg-type]
        assert custom.url == "wss://example.test"
