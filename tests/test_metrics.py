"""Observability over real sockets: the metrics port during warm-up and after, health reasons,
structured and rate-limited logs, and secrets kept out of all of them."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feeds.clock import ManualClock
from feeds.dhan.client import Credentials, DhanFeed, DhanFeedConfig
from feeds.dhan.packets import ResponseCode
from feeds.model import ChainSkeleton
from feeds.simulator.kite import KiteSimulatorServer
from feeds.simulator.server import SimulatorServer
from feeds.throttle import LogThrottle
from service.app import running_service
from service.core.cache import ChainCache
from service.feed_source import subscriptions_for
from service.core.health import Health
from service.core.lifecycle import Lifecycle, Phase
from service.logs import JsonFormatter
from service.metrics import Histogram, Metrics
from service.settings import Settings
from tests.conftest import free_port
from tests.test_service import UNIT_S, get_json, port_refuses, sim, starting, until  # noqa: F401
from tests.test_service import settings_for as service_settings_for

TOKEN = "eyJ-metrics-test-secret-token"
DASHBOARD = Path(__file__).resolve().parents[1] / "config" / "grafana-livechain.json"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("LIVECHAIN_", "DHAN_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DHAN_CLIENT_ID", "1000000001")
    monkeypatch.setenv("DHAN_ACCESS_TOKEN", TOKEN)


def settings_for(server: SimulatorServer, **sections: dict) -> Settings:
    """test_service's settings, without a Redis mirror unless a test asks for one."""
    return service_settings_for(server, **{"redis": {"enabled": False}, **sections})


class Scrape:
    """One parsed scrape: families by name and sample values by (name, labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)


async def scrape(port: int) -> Scrape:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            text = await resp.text()
    check_exposition(text)
    return Scrape(text)


def check_exposition(text: str) -> None:
    """The text parses, names are ours, counters end in _total; promtool agrees when installed."""
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("livechain_"), family.name
        assert family.documentation, family.name
        for s in family.samples:
            if family.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
    promtool = shutil.which("promtool")
    if promtool is not None:
        done = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=UNIT_S)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 2 * UNIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.02)


# A Kite packet's length is its type: the Kite simulator counts packets sent by length.
KITE_PACKET_NAMES = {8: "ltp", 28: "index_quote", 32: "index_full", 44: "quote", 184: "full"}


def packets_match_simulator(s: Scrape, server: SimulatorServer) -> bool:
    """Every packet type the simulator sent was counted exactly, and nothing else was."""
    if isinstance(server, KiteSimulatorServer):
        sent = {KITE_PACKET_NAMES[length]: n for length, n in server.stats.packets_sent.items()}
    else:
        sent = {ResponseCode(code).name.lower(): n for code, n in server.stats.packets_sent.items()}
    got = {dict(ls)["type"]: v for (n, ls), v in s.samples.items() if n == "livechain_feed_packets_total"}
    return sent == got


@dataclass
class MirrorStatsLike:
    """The fields of the Redis mirror's stats that metrics and health read (duck-typed)."""

    flushes: int = 3
    legs_written: int = 120
    commands: int = 6
    errors: int = 0
    connected: bool = True
    lag_s_last: float = 0.004
    queue_depth: int = 0
    last_error: str | None = "redis://:hunter2@10.0.0.5:6379 refused"


async def test_scrape_during_warm_up_and_after_ready(sim: SimulatorServer) -> None:
    """The metrics port answers while warming (API port closed); counters follow the simulator's traffic."""
    http_port, metrics_port = free_port(), free_port()
    sim.withhold([sorted(sim.universe.contracts)[3]])  # holds the service in warm-up
    settings = settings_for(
        sim, http={"port": http_port}, metrics={"port": metrics_port}, market={"schedule": "always_open"}
    )
    async with starting(settings) as started:
        await until(lambda: sim.connections_open == 1 and sim.stats.frames_sent > 0)
        # Warming: the phase, partial coverage, and the feed's packets, exactly as the simulator sent them.
        sim.pause()
        frames = 0.0

        async def all_received() -> bool:
            nonlocal frames
            s = await scrape(metrics_port)
            frames = s.total("livechain_feed_frames_total")
            return sim.idle and frames == sim.stats.frames_sent

        await eventually(all_received)
        warm = await scrape(metrics_port)
        assert not started.ready.is_set() and await port_refuses(http_port)
        assert warm.value("livechain_lifecycle_phase", phase="warming") == 1
        assert warm.value("livechain_lifecycle_phase", phase="ready") == 0
        assert warm.value("livechain_ready") == 0
        assert 0 < warm.value("livechain_coverage_ratio") < 1
        subscribed = warm.value("livechain_instruments_subscribed", underlying="NIFTY")
        assert warm.value("livechain_instruments_covered", underlying="NIFTY") == subscribed - 1
        assert packets_match_simulator(warm, sim)
        assert warm.value("livechain_feed_connection_up", connection="0") == 1
        assert warm.value("livechain_feed_decode_errors_total", connection="0") == 0
        status, body = await get_json(metrics_port, "/readyz")
        assert status == 503 and body["phase"] == "warming" and body["covered"] == subscribed - 1

        # More traffic moves the counters, still in step with the simulator.
        sim.resume()
        await until(lambda: sim.stats.frames_sent > frames + 50)
        sim.pause()
        await eventually(all_received)
        later = await scrape(metrics_port)
        assert later.total("livechain_feed_packets_total") > warm.total("livechain_feed_packets_total")
        assert packets_match_simulator(later, sim)
        assert later.value("livechain_ingest_ticks_total") > warm.value("livechain_ingest_ticks_total")

        sim.release()
        await asyncio.wait_for(started.ready.wait(), 2 * UNIT_S)
        svc = started.svc
        assert svc is not None and svc.metrics_port == metrics_port
        await eventually(all_received)  # market paused: the chain cannot change between requests

        status, body = await get_json(http_port, "/options/live", underlying="NIFTY")
        assert status == 200
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
            url = f"http://127.0.0.1:{http_port}"
            async with http.get(f"{url}/options/live", params={"underlying": "NIFTY"}) as resp:
                etag = resp.headers["ETag"]
            async with http.get(
                f"{url}/options/live", params={"underlying": "NIFTY"}, headers={"If-None-Match": etag}
            ) as resp:
                conditional = resp.status
            async with http.get(f"{url}/no/such/path") as resp:
                assert resp.status == 404
        svc.health.mirror = MirrorStatsLike()  # what the Redis mirror will attach
        ready = await scrape(metrics_port)

    assert ready.value("livechain_lifecycle_phase", phase="ready") == 1
    assert ready.value("livechain_ready") == 1 and ready.value("livechain_degraded") == 0
    assert ready.value("livechain_coverage_ratio") == 1.0
    assert ready.value("livechain_health_check_ok", check="feed_fresh") == 1
    assert conditional == 304
    assert ready.value("livechain_http_requests_total", route="/options/live", status="200") == 2
    assert ready.value("livechain_http_requests_total", route="/options/live", status="304") == 1
    assert ready.value("livechain_http_requests_total", route="unmatched", status="404") == 1
    assert ready.value("livechain_http_request_duration_seconds_count", route="/options/live") == 3
    assert ready.value("livechain_http_not_modified_ratio") == pytest.approx(1 / 3)
    # One latency observation per applied batch.
    assert ready.value("livechain_ingest_latency_seconds_count") == ready.value("livechain_ingest_batches_total") > 0
    assert ready.value("livechain_ingest_latency_seconds_bucket", le="+Inf") == ready.value(
        "livechain_ingest_latency_seconds_count"
    )
    expiries = {dict(ls)["expiry"] for (n, ls) in ready.samples if n == "livechain_chain_version"}
    assert len(expiries) == 2
    for expiry in expiries:
        assert ready.value("livechain_chain_version", underlying="NIFTY", expiry=expiry) > 1.7e15
        assert ready.value("livechain_chain_age_seconds", underlying="NIFTY", expiry=expiry) >= 0
    assert ready.value("livechain_mirror_connected") == 1 and ready.value("livechain_mirror_legs_written_total") == 120
    assert "hunter2" not in ready.text and TOKEN not in ready.text

    # Every metric the Grafana dashboard queries exists.
    queried = set(re.findall(r"livechain_[a-z0-9_]+", DASHBOARD.read_text()))
    exposed = {s for (s, _) in ready.samples} | {f"{n}_total" for n, f in ready.families.items() if f.type == "counter"}
    assert queried and queried <= exposed, sorted(queried - exposed)


async def test_degraded_reasons_in_readyz_and_metrics(sim: SimulatorServer) -> None:
    """A silent feed while the market is open: still ready (200), degraded, with the reason."""
    settings = settings_for(
        sim, market={"schedule": "always_open"}, cache={"stale_after_s": 0.3},
        feed={"stall_timeout_s": 60.0},  # the watchdog stays out of it: the socket stays up, silent
    )
    async with running_service(settings) as svc:
        status, body = await get_json(svc.http_port, "/readyz")
        assert status == 200 and body["status"] == "ready" and body["problems"] == []
        sim.silence()
        await until(lambda: svc.health.report().status == "degraded")
        status, body = await get_json(svc.http_port, "/readyz")
        assert status == 200 and body["ready"] is True and body["status"] == "degraded"
        assert body["checks"] == {"feed_connections": True, "feed_fresh": False}
        assert "no feed data" in body["problems"][0] and "market is open" in body["problems"][0]
        s = await scrape(svc.metrics_port)
        assert s.value("livechain_degraded") == 1 and s.value("livechain_ready") == 1
        assert s.value("livechain_health_check_ok", check="feed_fresh") == 0
        assert s.value("livechain_feed_last_frame_age_seconds", connection="0") > 0.3
        sim.silence(False)
        await until(lambda: svc.health.report().status == "ready")


def _unrun_feed(skeleton: ChainSkeleton, *, market_open: bool) -> DhanFeed:
    subs = subscriptions_for(Settings(), skeleton)
    return DhanFeed(
        DhanFeedConfig(url="ws://127.0.0.1:9"), Credentials("1", lambda: TOKEN), subs,
        is_market_open=lambda now: market_open,
    )


def test_health_checks_each_part(skeleton: ChainSkeleton) -> None:
    """Feed down, feed silent in market hours, Redis down: each a named problem; closed market is fine."""
    now = 1_800_000_000.0
    lifecycle = Lifecycle()
    cache = ChainCache(skeleton)
    feed = _unrun_feed(skeleton, market_open=True)
    health = Health(lifecycle, stale_after_s=30.0, cache=cache, feed=feed, clock=ManualClock(now))
    conn = feed.connections[0].stats
    assert health.report().status == "starting" and health.report().checks["feed_connections"] is False
    lifecycle.to(Phase.WARMING, "waiting")
    lifecycle.to(Phase.READY, "gate passed")
    conn.connected, conn.last_frame_at = True, now - 1
    report = health.report()
    assert (report.ready, report.status, report.problems) == (True, "ready", ())

    conn.last_frame_at = now - 31
    report = health.report()
    assert report.status == "degraded" and report.checks == {"feed_connections": True, "feed_fresh": False}
    assert report.problems == ("no feed data for over 30s while the market is open on connection(s) 0 (31s)",)

    health.feed = _unrun_feed(skeleton, market_open=False)
    health.feed.connections[0].stats.connected = True
    assert health.report().status == "ready" and health.report().market_open is False

    health.mirror = MirrorStatsLike(connected=False, errors=4)
    report = health.report()
    assert report.status == "degraded" and report.checks["redis"] is False
    assert report.problems == ("redis mirror disconnected (4 errors so far)",)
    assert "hunter2" not in json.dumps(report.as_dict())

    lifecycle.to(Phase.STOPPING, "shutting down")
    assert health.report().ready is False and health.report().status == "stopping"


def test_collector_exports_what_exists_during_startup() -> None:
    """Before instruments load there is no cache or feed: the scrape still parses and shows the phase."""
    metrics = Metrics(Health(Lifecycle(), stale_after_s=30.0))
    text = metrics.render().decode()
    check_exposition(text)
    s = Scrape(text)
    assert s.value("livechain_lifecycle_phase", phase="starting") == 1 and s.value("livechain_ready") == 0
    assert not any(name.startswith(("livechain_feed_", "livechain_chain_")) for name in s.families)


def test_histogram_buckets_are_cumulative_with_inclusive_bounds() -> None:
    """A value equal to a bound counts in that bucket (Prometheus' le); +Inf holds everything."""
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert h.count == 5 and h.sum == pytest.approx(8.65)


def test_log_throttle_bounds_repeats_and_counts_them(caplog: pytest.LogCaptureFixture) -> None:
    """The first occurrence is logged, repeats within the interval are not, the next line counts them."""
    now = [0.0]
    throttle = LogThrottle(logging.getLogger("t"), interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        assert throttle("bad packet %d", 1) is True
        assert [throttle("bad packet %d", i) for i in range(2, 6)] == [False] * 4
        now[0] = 10.0
        assert throttle("bad packet %d", 6) is True
    assert [r.getMessage() for r in caplog.records] == [
        "bad packet 1 (1 so far, 0 not logged since the previous line)",
        "bad packet 6 (6 so far, 4 not logged since the previous line)",
    ]
    assert caplog.records[1].suppressed == 4  # type: ignore[attr-defined]


async def test_malformed_packets_are_counted_and_logged_sparingly(
    sim: SimulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage from the broker moves the decode-error counter; the log gets one line, not one per packet."""
    caplog.set_level(logging.WARNING, logger="feeds.dhan.client")
    caplog.set_level(logging.WARNING, logger="feeds.kite.client")
    async with running_service(settings_for(sim)) as svc:
        conn = svc.feed.connections[0]
        for _ in range(3):
            sim.send_garbage()
        await until(lambda: conn.stats.decode_errors >= 9)
        s = await scrape(svc.metrics_port)
        assert s.value("livechain_feed_decode_errors_total", connection="0") == conn.stats.decode_errors
    lines = [r for r in caplog.records if "malformed packet skipped" in r.getMessage()]
    assert len(lines) == 1


async def test_logs_tell_the_lifecycle_as_json_without_secrets(
    sim: SimulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON lines carry ts/level/logger/message and structured fields; the token appears nowhere."""
    caplog.set_level(logging.DEBUG)
    websockets_log = logging.getLogger("websockets")
    level = websockets_log.level
    websockets_log.setLevel(logging.WARNING)  # as configure_logging sets it
    try:
        async with running_service(settings_for(sim)) as svc:
            _, ready = await get_json(svc.http_port, "/readyz")
            _, ready_on_metrics_port = await get_json(svc.metrics_port, "/readyz")
            text = (await scrape(svc.metrics_port)).text
    finally:
        websockets_log.setLevel(level)
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    phases = [line["phase"] for line in lines if line["logger"] == "service.core.lifecycle"]
    assert phases == ["warming", "ready", "stopping", "stopped"]
    messages = "\n".join(line["message"] for line in lines)
    for step in ("metrics on http://", "instruments loaded", "feed connection 0 open", "serving http://"):
        assert step in messages
    subscribed = next(line for line in lines if "feed connection 0 open" in line["message"])
    assert subscribed["connection"] == 0 and subscribed["instruments"] > 0
    assert ready["status"] == ready_on_metrics_port["status"] == "ready"
    for output in (json.dumps(lines), text, json.dumps(ready), json.dumps(ready_on_metrics_port)):
        assert TOKEN not in output


async def test_metrics_can_be_disabled(sim: SimulatorServer) -> None:
    """metrics.enabled = false: no metrics port, no latency observation, the API unchanged."""
    async with running_service(settings_for(sim, metrics={"enabled": False})) as svc:
        assert svc.metrics is None and svc.metrics_port is None and svc.ingest.latency is None
        status, _ = await get_json(svc.http_port, "/options/live", underlying="NIFTY")
        assert status == 200
