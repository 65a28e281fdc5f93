"""The whole service against the simulator over real sockets: gate, HTTP, reconnects, failures.

The ``sim`` fixture is parametrised by broker: each test that takes it runs once through the
Dhan client against the Dhan simulator and once through the Kite client against the Kite
simulator (the same synthetic market), with the same assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator

import aiohttp
import pytest

from feeds.dhan.packets import FeedMode, ResponseCode
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.kite import KiteSimulatorServer
from feeds.simulator.server import SimulatorServer
from service.app import RunningService, running_service
from service.core.cache import ChainCache
from service.errors import ConfigError, FeedFatal, ReadinessTimeout
from service.core.lifecycle import Phase
from service.settings import Settings
from tests.helpers import UNIT_S, until

SIM = dict(underlyings=("NIFTY",), expiries=2, strikes_per_side=5, tick_interval_s=0.02, trades_per_step=10)


def settings_for(sim: SimulatorServer | None, **sections: dict) -> Settings:
    """Settings for a service on a free port; with ``sim``, feed.kind=dhan (or kite, for a Kite
    simulator) pointed at it."""
    base: dict[str, dict] = {
        "http": {"port": 0},
        "readiness": {"timeout_s": 4 * UNIT_S},
        "feed": {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.2},
        "simulator": {**SIM, "underlyings": ["NIFTY"]},
        "metrics": {"port": 0},  # never the fixed default: suites may run side by side
        "redis": {"enabled": False},  # hermetic: never a developer's Redis; tests/test_mirror.py starts its own
    }
    if isinstance(sim, KiteSimulatorServer):
        base["feed"].update(kind="kite", url=sim.feed_url)
        base["instruments"] = {"source": sim.instruments_url}
        base["analytics"] = {"seed": False}
    elif sim is not None:
        base["feed"].update(kind="dhan", url=sim.feed_url, rest_url=sim.rest_url)
        base["instruments"] = {"source": sim.scrip_master_url}
        # Seeding from the REST chain (on by default with kind=dhan) would fill in withheld legs;
        # tests/test_analytics_service.py turns it on where that is the point.
        base["analytics"] = {"seed": False}
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return Settings(**base)


def simulator_class(broker: str) -> type[SimulatorServer]:
    return KiteSimulatorServer if broker == "kite" else SimulatorServer


def broker_env(monkeypatch: pytest.MonkeyPatch, broker: str) -> None:
    """Credentials as a user of feed.kind = dhan / kite sets them. Kite gets the Dhan token's
    value when a test set one, so secret-leak checks written against it hold for both."""
    import os

    if broker == "kite":
        monkeypatch.setenv("KITE_API_KEY", "kite-api-key")
        monkeypatch.setenv("KITE_ACCESS_TOKEN", os.environ.get("DHAN_ACCESS_TOKEN", "kite-test-token"))


@pytest.fixture
async def sim(broker: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SimulatorServer]:
    broker_env(monkeypatch, broker)
    async with simulator_class(broker)(SimulatorConfig(**SIM)) as server:
        yield server


async def get_json(port: int, path: str, **params: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
        async with http.get(f"http://127.0.0.1:{port}{path}", params=params) as resp:
            return resp.status, await resp.json()


async def port_refuses(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def quiesce(server: SimulatorServer, svc: RunningService) -> None:
    """Stop the market and wait until the service has received every frame it was sent."""
    server.pause()
    await until(lambda: server.idle and sum(c.stats.frames for c in svc.feed.connections) == server.stats.frames_sent)
    await asyncio.sleep(0)  # let a scheduled batch flush run


def assert_cache_matches_simulator(cache: ChainCache, server: SimulatorServer) -> None:
    """Every instrument's cached values equal what the simulator last sent for it."""
    checked = 0
    kite = isinstance(server, KiteSimulatorServer)
    for key, leg in cache.legs.items():
        sent = server.market.last_sent[key]
        if kite:
            # Kite's previous close is the close field of the quote/full packets; no previous OI exists.
            close = sent[ResponseCode.QUOTE if leg.contract is None else ResponseCode.FULL].close
            assert leg.prev_close == round(close, 2) and leg.prev_oi is None, key
        else:
            prev = sent[ResponseCode.PREV_CLOSE]
            assert leg.prev_close == round(prev.prev_close, 2) and leg.prev_oi == prev.prev_oi, key
        if leg.contract is None:
            quote = sent[ResponseCode.QUOTE]
            assert leg.ltp == round(quote.ltp, 2) and leg.ltt == quote.ltt, key
        else:
            full = sent[ResponseCode.FULL]
            assert (leg.ltp, leg.ltq, leg.ltt, leg.volume, leg.oi) == (
                round(full.ltp, 2), full.ltq, full.ltt, full.volume, full.oi
            ), key
            assert (leg.bid, leg.bid_qty, leg.ask, leg.ask_qty) == (
                round(full.depth[4], 2), full.depth[0], round(full.depth[5], 2), full.depth[1]
            ), key
            assert (leg.open, leg.high, leg.low) == (round(full.open, 2), round(full.high, 2), round(full.low, 2)), key
        checked += 1
    assert checked == cache.subscribed


class Starting:
    """``running_service`` entered in a background task, so a test can watch it warm up."""

    def __init__(self, settings: Settings) -> None:
        self.ready = asyncio.Event()
        self._done = asyncio.Event()
        self.svc: RunningService | None = None
        self.task = asyncio.create_task(self._body(settings))

    async def _body(self, settings: Settings) -> None:
        async with running_service(settings) as svc:
            self.svc = svc
            self.ready.set()
            await self._done.wait()

    async def close(self) -> None:
        if self.ready.is_set():
            self._done.set()
        else:
            self.task.cancel()
        await asyncio.wait([self.task], timeout=4 * UNIT_S)


@contextlib.asynccontextmanager
async def starting(settings: Settings) -> AsyncIterator[Starting]:
    started = Starting(settings)
    try:
        yield started
    finally:
        await started.close()


async def test_embedded_simulator_serves_a_live_chain() -> None:
    """With no feed settings the service runs on its embedded simulator and serves NIFTY."""
    async with running_service(settings_for(None)) as svc:
        assert svc.lifecycle.phase is Phase.READY and svc.cache.coverage == 1.0
        status, body = await get_json(svc.http_port, "/options/live", underlying="NIFTY")
        assert status == 200 and body["underlying"] == "NIFTY"
        assert body["underlying_ltp"] is not None and body["stale"] is False
        assert len(body["strikes"]) == 11
        for row in body["strikes"]:
            for side in ("ce", "pe"):
                leg = row[side]
                assert leg["ltp"] is not None and leg["ltp"] > 0 and leg["prev_close"] is not None
                assert leg["bid"] is None or leg["bid"] <= leg["ask"]
        first_version = body["version"]
        await until(lambda: svc.cache.chains[(body["underlying"], dt.date.fromisoformat(body["expiry"]))].version > first_version)
        status, again = await get_json(svc.http_port, "/options/live", underlying="NIFTY")
        assert again["version"] > first_version
        status, unds = await get_json(svc.http_port, "/options/underlyings")
        assert [u["underlying"] for u in unds["underlyings"]] == ["NIFTY"]


async def test_client_against_simulator_reproduces_its_state(sim: SimulatorServer, dhan_env: None) -> None:
    """Through the real client path (Dhan's or Kite's), every cached value equals what the simulator last sent."""
    async with running_service(settings_for(sim)) as svc:
        await until(lambda: sim.market.steps >= 5)
        await quiesce(sim, svc)
        assert svc.feed.connections[0].stats.decode_errors == 0
        assert_cache_matches_simulator(svc.cache, sim)
        status, body = await get_json(svc.http_port, "/options/live", underlying="NIFTY")
        leg = svc.cache.legs[(2, body["strikes"][3]["ce"]["security_id"])]
        assert body["strikes"][3]["ce"]["ltp"] == leg.ltp and body["strikes"][3]["ce"]["oi"] == leg.oi
        if isinstance(sim, KiteSimulatorServer):
            assert body["strikes"][3]["ce"]["prev_oi"] is None and body["strikes"][3]["ce"]["oi_change"] is None
            assert svc.feed.broker == "kite" and svc.feed.connections[0].stats.heartbeats >= 0


async def test_port_stays_closed_until_the_chain_is_populated(sim: SimulatorServer, dhan_env: None) -> None:
    """While one instrument has no data nothing listens on the port; once it arrives the port opens."""
    from tests.conftest import free_port

    port = free_port()
    sim.pause()
    sim.withhold([sorted(sim.universe.contracts)[3]])
    async with starting(settings_for(sim, http={"port": port})) as started:
        await until(lambda: sim.connections_open == 1 and sim.stats.frames_sent > 0)
        # Everything but one instrument has been sent: give the gate many chances to open wrongly.
        for _ in range(20):
            await asyncio.sleep(0.02)
            assert not started.ready.is_set()
            assert await port_refuses(port)
        sim.release()
        await asyncio.wait_for(started.ready.wait(), 2 * UNIT_S)
        assert started.svc is not None and started.svc.cache.coverage == 1.0
        status, body = await get_json(port, "/options/live", underlying="NIFTY")
        assert status == 200 and all(r["ce"]["ltp"] is not None for r in body["strikes"])
        status, _ = await get_json(port, "/readyz")
        assert status == 200


async def test_readiness_timeout_names_what_is_missing(sim: SimulatorServer, dhan_env: None) -> None:
    """If coverage never comes, startup fails with the count and the underlyings missing."""
    sim.withhold(sorted(sim.universe.contracts)[:3])
    with pytest.raises(ReadinessTimeout) as info:
        async with running_service(settings_for(sim, readiness={"timeout_s": 0.5})):
            pytest.fail("the service must not become ready")
    message = str(info.value)
    assert "3 instruments without data" in message and "NIFTY (3 missing)" in message


async def test_min_coverage_below_one_serves_nulls_for_missing(sim: SimulatorServer, dhan_env: None) -> None:
    """With min_coverage < 1 the port opens without every leg; missing legs show null, not 0."""
    withheld = sorted(sim.universe.contracts)[0]
    sim.withhold([withheld])
    async with running_service(settings_for(sim, readiness={"min_coverage": 0.9})) as svc:
        leg = svc.cache.legs[withheld]
        chain = leg.chains[0]
        status, body = await get_json(svc.http_port, "/options/live", underlying="NIFTY", expiry=chain.expiry.isoformat())
        side = "ce" if leg.contract.option_type == "CE" else "pe"
        row = next(r for r in body["strikes"] if r[side] and r[side]["security_id"] == withheld[1])
        assert all(row[side][f] is None for f in ("ltp", "oi", "volume", "bid", "prev_close", "updated_at"))


async def test_dropped_feed_reconnects_resubscribes_and_recovers(sim: SimulatorServer, dhan_env: None) -> None:
    """A reset socket marks data stale and degrades; the client reconnects, resubscribes, recovers."""
    async with running_service(settings_for(sim)) as svc:
        conn = svc.feed.connections[0]
        subscribes = sim.stats.subscribe_requests[FeedMode.FULL]
        await quiesce(sim, svc)  # nothing in flight: every frame counted as sent is received
        assert sim.drop_connections() == 1
        await until(lambda: conn.stats.reconnects == 1 and sim.connections_open == 1)
        # The client counts the reconnect once its messages are sent; the server reads them a moment later.
        await until(lambda: sim.stats.subscribe_requests[FeedMode.FULL] >= 2 * subscribes)
        assert sim.stats.subscribe_requests[FeedMode.FULL] == 2 * subscribes
        await until(lambda: svc.lifecycle.phase is Phase.READY)
        sim.resume()
        await until(lambda: sim.market.steps >= 3)
        await quiesce(sim, svc)
        assert all(c.stale_legs == 0 for c in svc.cache.chains.values())
        assert_cache_matches_simulator(svc.cache, sim)


async def test_stale_while_disconnected(sim: SimulatorServer, dhan_env: None) -> None:
    """While the feed is down the chain says stale and /readyz says degraded."""
    settings = settings_for(sim, feed={"reconnect_initial_s": 5.0, "reconnect_max_s": 5.0})
    async with running_service(settings) as svc:
        sim.pause()
        svc.feed._rng.seed(0)  # noqa: SLF001 - make the first backoff delay deterministic (> 0.5 s)
        sim.drop_connections()
        await until(lambda: svc.lifecycle.phase is Phase.DEGRADED)
        status, body = await get_json(svc.http_port, "/options/live", underlying="NIFTY")
        assert status == 200 and body["stale"] is True
        assert all(row["ce"]["stale"] for row in body["strikes"])
        status, ready = await get_json(svc.http_port, "/readyz")
        assert status == 200 and ready["phase"] == "degraded" and "down" in ready["reason"]


async def test_rejected_credentials_stop_the_service(broker: str, dhan_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused token is fatal once re-reading it gives the same one: Dhan's code-50 809 after the
    upgrade, Kite's HTTP 403 at the upgrade; no reconnect storm, a FeedFatal naming the reason."""
    broker_env(monkeypatch, broker)
    async with simulator_class(broker)(SimulatorConfig(**SIM, expected_token="the-right-token")) as server:
        match = "HTTP 403.*KITE_ACCESS_TOKEN still holds the same token" if broker == "kite" else "809"
        with pytest.raises(FeedFatal, match=match):
            async with running_service(settings_for(server)):
                pytest.fail("must not become ready")
        if broker == "kite":
            assert server.stats.connections_accepted == 0 and server.handshakes_forbidden == 1
        else:
            assert server.stats.connections_accepted == 1


async def test_dhan_feed_without_credentials_fails_fast() -> None:
    """feed.kind=dhan without DHAN_* variables stops before connecting, naming them."""
    with pytest.raises(ConfigError, match="DHAN_CLIENT_ID, DHAN_ACCESS_TOKEN"):
        async with running_service(settings_for(None, feed={"kind": "dhan"})):
            pytest.fail("must not start")


async def test_unreachable_instrument_master_fails_fast(dhan_env: None) -> None:
    """A scrip master that cannot be fetched stops startup with the cause."""
    from tests.conftest import free_port

    settings = settings_for(
        None, feed={"kind": "dhan", "url": "ws://127.0.0.1:9"},
        instruments={"source": f"http://127.0.0.1:{free_port()}/master.csv", "load_timeout_s": UNIT_S},
    )
    with pytest.raises(ConfigError, match="cannot load instruments"):
        async with running_service(settings):
            pytest.fail("must not start")
