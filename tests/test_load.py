"""Bounded loopback load: pollers (GET /options/live with If-None-Match) and stream clients
(/options/stream) against a real ``livechain run`` process; zero errors, p50/p99, memory and
descriptors reported.

Short form in ``make test`` (50 + 50 clients for 3 s). ``make test-long`` runs the long form
(1,000 pollers + 1,000 stream clients for 60 s) and writes its results to
``docs/reliability-load.json`` (summarised in docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port, hermetic_environ
from tests.helpers import UNIT_S, until

LONG = bool(os.environ.get("RELIABILITY_LONG"))
POLLERS = 1000 if LONG else 50
STREAMS = 1000 if LONG else 50
DURATION_S = 60.0 if LONG else 3.0
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "reliability-load.json"


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.slow
async def test_pollers_and_streams_under_load_see_no_errors() -> None:
    """Pollers and stream clients together for a bounded time: no errors, no 5xx, bounded memory."""
    port, metrics_port = free_port(), free_port()
    env = hermetic_environ(
        LIVECHAIN_HTTP__PORT=str(port), LIVECHAIN_METRICS__PORT=str(metrics_port),
        LIVECHAIN_REDIS__ENABLED="false", LIVECHAIN_SIMULATOR__STRIKES_PER_SIDE="10",
        LIVECHAIN_SIMULATOR__EXPIRIES="1", LIVECHAIN_HTTP__MAX_CONNECTIONS=str(POLLERS + STREAMS + 100),
        LIVECHAIN_HTTP__MAX_STREAMS=str(STREAMS + 10),
    )  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "run", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    log: list[str] = []

    async def drain() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            log.append(line.decode())

    reader = asyncio.create_task(drain())
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    events = 0
    try:
        await until(lambda: any("serving http://" in line for line in log), 6 * UNIT_S, "the service serving")
        base = f"http://127.0.0.1:{port}"
        rss_start = _rss_kib(proc.pid)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
            loop = asyncio.get_running_loop()
            end = loop.time() + DURATION_S

            async def poller() -> None:
                etag = None
                while loop.time() < end:
                    t0 = time.perf_counter()
                    try:
                        headers = {"If-None-Match": etag} if etag else {}
                        async with http.get(f"{base}/options/live?underlying=NIFTY", headers=headers) as resp:
                            await resp.read()
                            statuses[resp.status] = statuses.get(resp.status, 0) + 1
                            etag = resp.headers.get("ETag", etag)
                            if resp.status not in (200, 304):
                                errors.append(f"poll {resp.status}")
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        errors.append(f"poll {type(exc).__name__}")
                    latencies.append(time.perf_counter() - t0)
                    await asyncio.sleep(0.1)

            async def streamer() -> None:
                nonlocal events
                try:
                    async with http.get(f"{base}/options/stream?underlying=NIFTY") as resp:
                        if resp.status != 200:
                            errors.append(f"stream {resp.status}")
                            return
                        while loop.time() < end:
                            try:
                                async with asyncio.timeout(max(0.01, end - loop.time())):
                                    line = await resp.content.readline()
                            except TimeoutError:
                                return
                            if not line:
                                errors.append("stream ended early")
                                return
                            if line.startswith(b"data:"):
                                events += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors.append(f"stream {type(exc).__name__}")

            async with asyncio.timeout(DURATION_S + 6 * UNIT_S):
                await asyncio.gather(*(poller() for _ in range(POLLERS)), *(streamer() for _ in range(STREAMS)))
        rss_end, fds_end = _rss_kib(proc.pid), _fds(proc.pid)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(2 * UNIT_S):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await reader
    result = {
        "pollers": POLLERS, "streams": STREAMS, "duration_s": DURATION_S, "requests": len(latencies),
        "statuses": statuses, "errors": len(errors), "stream_events": events,
        "p50_ms": round(1000 * (_percentile(latencies, 0.5) or 0), 2),
        "p99_ms": round(1000 * (_percentile(latencies, 0.99) or 0), 2),
        "rss_start_mib": rss_start and round(rss_start / 1024, 1), "rss_end_mib": rss_end and round(rss_end / 1024, 1),
        "fds_end": fds_end,
    }  # fmt: skip
    print(json.dumps(result))
    if LONG:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    assert not errors, errors[:10]
    assert statuses.get(200, 0) >= 1 and events >= STREAMS
    assert "Traceback" not in "".join(log)
