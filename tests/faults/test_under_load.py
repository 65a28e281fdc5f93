"""The fault suite: while If-None-Match pollers and SSE followers read a primary and a read
replica (``livechain replica``, a subprocess), each fault is injected in turn — the feed
dropped, stalled, sent garbage; Redis killed and restarted empty (ticking and quiet), flushed;
the primary stopped as SIGTERM stops it and started again; the replica SIGKILLed and restarted.

After each fault, once recovered: no 5xx beyond the documented 503s; no value served (poll or
stream) that the feed did not send; every chain served fresh was fresh, and stale legs are
flagged; the primary's cache equals what the simulator last sent (nothing lost); Redis equals
the cache; the replica serves the primary's bytes; memory and descriptors stay bounded.
Recovery time is recorded per fault (``make test-long`` writes docs/reliability-faults.json).

Short form (``make test``): each fault once, a few clients. Long form (``make test-long``):
``RELIABILITY_FAULT_ROUNDS`` rounds (10) of every fault, more clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from feeds.simulator.config import SimulatorConfig
from feeds.simulator.server import SimulatorServer
from service.app import RunningService, running_service
from service.core.lifecycle import Phase
from service.redis.layout import RUN_KEY
from tests.conftest import free_port
from tests.faults.harness import Clients, ReplicaProcess, SentLog, Tally, proc_usage
from tests.helpers import UNIT_S, until
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401  (the fixture)
from tests.test_mirror import assert_redis_equals_cache
from tests.test_replica import _redis_section
from tests.test_service import SIM, assert_cache_matches_simulator, settings_for

pytestmark = pytest.mark.usefixtures("dhan_env")

LONG = bool(os.environ.get("RELIABILITY_LONG"))
ROUNDS = int(os.environ.get("RELIABILITY_FAULT_ROUNDS", "1"))
POLLERS, STREAMS = (20, 10) if LONG else (3, 2)  # per target (primary, replica)
STALE_AFTER_S = 1.0
STALL_TIMEOUT_S = 0.4
STALL_S = 1.2  # the feed stays silent this long: the stall is detected, clients see stale
TICKING_S = 0.4  # the market moves this long between faults, under the clients
FD_SLACK = 64  # descriptors over the baseline after recovery: bounded, not equal (pools, keep-alive)
RSS_SLACK_KIB = 160 * 1024  # RSS over the baseline (the test process also holds the clients and the SentLog)
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "reliability-faults.json"

FAULTS = (
    "feed drop", "feed stall", "feed garbage", "Redis killed, restarted empty (ticking)",
    "Redis killed, restarted empty (quiet)", "Redis FLUSHALL", "primary SIGTERM + restart",
    "replica SIGKILL + restart",
)  # fmt: skip


class Primary:
    """The primary in this process (``running_service``); ``stop()`` is what SIGTERM does in
    ``livechain run`` (the stop event closes the same exit stack), ``start()`` a new run."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.svc: RunningService | None = None
        self._cm: Any = None

    async def start(self) -> RunningService:
        self._cm = running_service(self.settings)
        self.svc = await self._cm.__aenter__()
        return self.svc

    async def stop(self) -> None:
        cm, self._cm, self.svc = self._cm, None, None
        if cm is not None:
            await cm.__aexit__(None, None, None)


async def _status(port: int, path: str) -> int | None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
            async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                await resp.read()
                return resp.status
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


async def _live(port: int, expiry: str) -> tuple[int, bytes, str | None] | None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
            params = {"underlying": "NIFTY", "expiry": expiry}
            async with http.get(f"http://127.0.0.1:{port}/options/live", params=params) as resp:
                return resp.status, await resp.read(), resp.headers.get("ETag")
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


async def _until_async(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not await check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s:g}s: {what}") from None


class Bench:
    """The parts under test and the checks run after each fault."""

    def __init__(self, sim: SimulatorServer, primary: Primary, replica: ReplicaProcess, redis: RedisServer,
                 sent: SentLog) -> None:  # fmt: skip
        self.sim, self.primary, self.replica, self.redis, self.sent = sim, primary, replica, redis, sent
        self.expiries: list[str] = []

    @property
    def svc(self) -> RunningService:
        assert self.primary.svc is not None
        return self.primary.svc

    async def recovered(self) -> bool:
        """Serving again end to end: primary ready with every feed socket up, its run in Redis,
        the replica following (ready)."""
        svc = self.primary.svc
        if svc is None or svc.lifecycle.phase is not Phase.READY or svc.mirror is None:
            return False
        if not all(c.stats.connected for c in svc.feed.connections) or not svc.mirror.stats.connected:
            return False
        client = self.redis.client()
        try:
            if await client.get(RUN_KEY) != svc.mirror.run.encode():
                return False
        except Exception:  # noqa: BLE001 - Redis still restarting
            return False
        finally:
            await client.aclose()
        return await _status(self.replica.port, "/readyz") == 200 and await _status(svc.http_port, "/readyz") == 200

    async def settle_and_check(self) -> None:
        """Market paused: nothing lost, Redis equals the cache, the replica serves the same bytes."""
        sim, svc = self.sim, self.svc
        sim.pause()
        # Frames sent to a socket that was then dropped never arrive (and a restarted primary
        # counts from zero): the cache must converge to what the simulator last sent instead.
        await until(lambda: sim.idle and _matches(svc, sim), what="the cache equal to what the simulator last sent")
        assert_cache_matches_simulator(svc.cache, sim)
        assert svc.mirror is not None
        await until(lambda: svc.mirror.stats.connected and svc.mirror.pending == 0, what="mirror flushed")
        client = self.redis.client()
        try:
            # Analytics passes still change the chains while the market is paused: equal at one instant.
            await _until_async(lambda: _redis_ok(client, svc), 2 * UNIT_S, "Redis equal to the cache")
        finally:
            await client.aclose()

        async def same_bytes() -> bool:
            for expiry in self.expiries:
                p, r = await _live(svc.http_port, expiry), await _live(self.replica.port, expiry)
                if p is None or r is None or p[0] != 200 or r[0] != 200 or p[1] != r[1] or p[2] != r[2]:
                    return False
            return True

        await _until_async(same_bytes, 2 * UNIT_S, "the replica serving the primary's bytes")


def _matches(svc: RunningService, sim: SimulatorServer) -> bool:
    try:
        assert_cache_matches_simulator(svc.cache, sim)
    except (AssertionError, KeyError):
        return False
    return True


async def _redis_ok(client: Any, svc: RunningService) -> bool:
    try:
        await assert_redis_equals_cache(client, svc.cache)
    except (AssertionError, ValueError, TypeError, KeyError):
        return False
    return True


async def _kill_redis(redis: RedisServer) -> None:
    """SIGKILL redis-server (no shutdown, no save) and start a new, empty one on the same port."""
    proc = redis._proc  # noqa: SLF001 - the fixture has stop() (SIGTERM); a fault is a kill
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    await redis.stop()
    await redis.start()


async def inject(bench: Bench, fault: str, pollers: Clients) -> Callable[[], bool]:
    """Inject ``fault``; returns a predicate that holds once the service has seen the fault
    (awaited before recovery is: a fault that did not happen fails the test)."""
    sim, svc = bench.sim, bench.svc
    conns = svc.feed.connections
    before = [dict(c.stats.disconnects_by_reason) for c in conns]
    mirror = svc.mirror
    assert mirror is not None
    lost, errors_before = mirror.stats.state_lost, sum(c.stats.decode_errors for c in conns)
    if fault == "feed drop":
        assert sim.drop_connections() >= 1
        ended = sum(sum(b.values()) for b in before)
        return lambda: sum(sum(c.stats.disconnects_by_reason.values()) for c in conns) > ended
    if fault == "feed stall":
        sim.silence()
        await until(lambda: sum(c.stats.disconnects_by_reason.get("stall", 0) for c in conns)
                    > sum(b.get("stall", 0) for b in before), what="stall detected")  # fmt: skip
        stale_seen = pollers.tally.stale_bodies
        await until(lambda: pollers.tally.stale_bodies > stale_seen, what="a poller served a stale chain in the stall")
        await asyncio.sleep(max(0.0, STALL_S - STALL_TIMEOUT_S))
        sim.silence(False)
        return lambda: True  # the stall's detection was awaited above
    if fault == "feed garbage":
        sim.send_garbage()
        return lambda: sum(c.stats.decode_errors for c in conns) > errors_before
    if fault.startswith("Redis killed"):
        if "quiet" in fault:
            await bench.settle_and_check()  # nothing ticks: only the mirror's own check can notice
        # Counted before the kill: the mirror may reconnect and rewrite before the new Redis has
        # answered the fixture's own start-up ping.
        rewrites = mirror.stats.full_rewrites
        await _kill_redis(bench.redis)
        return lambda: mirror.stats.full_rewrites > rewrites
    if fault == "Redis FLUSHALL":
        client = bench.redis.client()
        try:
            await client.flushall()
        finally:
            await client.aclose()
        return lambda: mirror.stats.state_lost > lost
    if fault == "primary SIGTERM + restart":
        run = mirror.run
        await bench.primary.stop()
        new = await bench.primary.start()
        return lambda: new.mirror is not None and new.mirror.run != run
    if fault == "replica SIGKILL + restart":
        pid = bench.replica.pid
        await bench.replica.kill()
        await bench.replica.start()
        return lambda: bench.replica.pid != pid
    raise AssertionError(fault)


@contextlib.asynccontextmanager
async def bench_running(redis: RedisServer) -> AsyncIterator[Bench]:
    async with SimulatorServer(SimulatorConfig(**SIM)) as sim:
        sent = SentLog(sim)  # before anything is sent
        settings = settings_for(
            sim, http={"port": free_port()}, redis=_redis_section(redis.url),
            feed={"stall_timeout_s": STALL_TIMEOUT_S}, market={"schedule": "always_open"},
            cache={"stale_after_s": STALE_AFTER_S},
        )  # fmt: skip
        primary = Primary(settings)
        replica = ReplicaProcess(redis.url, free_port())
        bench = Bench(sim, primary, replica, redis, sent)
        try:
            await primary.start()
            await replica.start()
            bench.expiries = [e.isoformat() for e in bench.svc.cache.expiries["NIFTY"]]
            yield bench
        finally:
            rc = await replica.stop()
            await primary.stop()
        assert rc == 0, f"the replica did not stop cleanly on SIGTERM: {b''.join(replica.log)[-2000:]!r}"


async def test_every_fault_under_pollers_and_streams(redis_server: RedisServer) -> None:  # noqa: F811
    """Each fault in turn under load: nothing unsent served, nothing lost, no undocumented 5xx,
    Redis equal to the cache, replica equal to the primary, memory and descriptors bounded."""
    results: dict[str, dict[str, Any]] = {f: {"tried": 0, "recovery_s": [], "lost": 0} for f in FAULTS}
    async with bench_running(redis_server) as bench:
        sent = bench.sent
        port = bench.svc.http_port
        kw = dict(sent=sent, stale_after_s=STALE_AFTER_S, pollers=POLLERS, streams=STREAMS, expiries=bench.expiries)
        async with Clients("primary", lambda: port, **kw) as on_primary, \
                Clients("replica", lambda: bench.replica.port, **kw) as on_replica:  # fmt: skip
            await asyncio.sleep(TICKING_S)
            await bench.settle_and_check()
            bench.sim.resume()
            base_primary = proc_usage(os.getpid())
            base_replica = proc_usage(bench.replica.pid)
            usage: list[dict[str, Any]] = []
            for _ in range(ROUNDS):
                for fault in FAULTS:
                    on_primary.take(), on_replica.take()
                    await asyncio.sleep(TICKING_S)  # ticking, under the clients
                    started = time.monotonic()
                    seen = await inject(bench, fault, on_primary)
                    if fault == "feed stall":  # the silence itself is the fault: recovery counts from its end
                        started = time.monotonic()
                    await until(seen, 2 * UNIT_S, what=f"the service saw the fault: {fault}")
                    await _until_async(bench.recovered, 6 * UNIT_S, f"recovered from {fault}")
                    took = time.monotonic() - started
                    await asyncio.sleep(TICKING_S / 2)  # clients read the recovered state while it ticks
                    await bench.settle_and_check()
                    tallies = {"primary": on_primary.take(), "replica": on_replica.take()}
                    _check_tallies(fault, tallies)
                    p_rss, p_fds = proc_usage(os.getpid())
                    r_rss, r_fds = proc_usage(bench.replica.pid)
                    usage.append({"fault": fault, "test_process_rss_kib": p_rss, "test_process_fds": p_fds,
                                  "replica_rss_kib": r_rss, "replica_fds": r_fds})  # fmt: skip
                    _check_bounded(fault, (p_rss, p_fds), base_primary, "primary (test process)")
                    if fault != "replica SIGKILL + restart":  # a new process: a new baseline
                        _check_bounded(fault, (r_rss, r_fds), base_replica, "replica")
                    else:
                        base_replica = (r_rss, r_fds)
                    results[fault]["tried"] += 1
                    results[fault]["recovery_s"].append(round(took, 3))
                    for name, tally in tallies.items():
                        results[fault].setdefault(f"{name}_answers", 0)
                        results[fault][f"{name}_answers"] += tally.bodies + tally.events
                        results[fault].setdefault(f"{name}_connection_errors", 0)
                        results[fault][f"{name}_connection_errors"] += tally.connection_errors
                        results[fault].setdefault(f"{name}_503", 0)
                        results[fault][f"{name}_503"] += tally.statuses.get(503, 0)
                    bench.sim.resume()
    _report(results, usage)


def _check_tallies(fault: str, tallies: dict[str, Tally]) -> None:
    for name, tally in tallies.items():
        assert not tally.bad_errors, f"{fault}: undocumented 5xx on the {name}: {tally.bad_errors[:3]}"
        assert not tally.unsent, f"{fault}: served values the feed never sent: {tally.unsent[:3]}"
        assert not tally.freshness, f"{fault}: freshness: {tally.freshness[:3]}"
        assert tally.bodies + tally.events > 0, f"{fault}: the {name}'s clients got nothing at all"
        restarted = (name == "primary" and fault.startswith("primary")) or (name == "replica" and fault.startswith("replica"))
        if not restarted:
            assert tally.connection_errors == 0, f"{fault}: {tally.connection_errors} failed connections to the {name}"


def _check_bounded(fault: str, now: tuple[int | None, int | None], base: tuple[int | None, int | None], who: str) -> None:
    rss, fds = now
    if rss is not None and base[0] is not None:
        assert rss <= base[0] + RSS_SLACK_KIB, f"{fault}: {who} RSS {base[0]} → {rss} KiB"
    if fds is not None and base[1] is not None:
        assert fds <= base[1] + FD_SLACK, f"{fault}: {who} descriptors {base[1]} → {fds}"


def _report(results: dict[str, dict[str, Any]], usage: list[dict[str, Any]]) -> None:
    rows = []
    for fault, r in results.items():
        rec = r["recovery_s"]
        rows.append({"fault": fault, **r, "recovery_median_s": round(statistics.median(rec), 3) if rec else None,
                     "recovery_max_s": max(rec) if rec else None})  # fmt: skip
    for row in rows:
        print(f"{row['fault']}: tried {row['tried']}, lost {row['lost']}, recovery median {row['recovery_median_s']} s"
              f" max {row['recovery_max_s']} s; answers checked primary {row.get('primary_answers')} replica"
              f" {row.get('replica_answers')}; 503s {row.get('primary_503')}/{row.get('replica_503')}; failed connections"
              f" {row.get('primary_connection_errors')}/{row.get('replica_connection_errors')}")  # fmt: skip
    first, last = usage[0], usage[-1]
    print(f"usage after the first / last fault: {first} / {last}")
    if LONG:
        doc = {"rounds": ROUNDS, "pollers_per_target": POLLERS, "streams_per_target": STREAMS,
               "faults": rows, "usage_after_each_fault": usage}  # fmt: skip
        RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
