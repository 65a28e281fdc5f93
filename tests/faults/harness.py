"""The fault suite's moving parts: a recording simulator, a replica subprocess, and clients
(If-None-Match pollers and SSE followers) that check every answer as it arrives.

Every check is about what a client saw, not about timing:
- a status ≥ 500 other than the documented 503 (JSON error body) is a failure;
- every leg value served (poll bodies and stream events) must be one the simulator built and
  sent for that instrument (``SentLog``): nothing invented, nothing from another instrument;
- freshness: a chain served as not stale must have changed within ``stale_after_s`` of the
  request (the market is always open here), and a body with a stale leg must say ``stale``.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from feeds.dhan.packets import FullPacket, QuotePacket
from feeds.simulator.server import SimulatorServer
from tests.helpers import UNIT_S
from tests.sse import SseReader, apply
from tests.test_replica import _redis_section

# A leg as the feed sent it: the fields a client reads, normalised as the service does
# (a price of 0 is "not sent": null).
Sent = tuple[float | None, int, int, int, float | None, float | None]


def _price(x: float) -> float | None:
    return round(x, 2) if x > 0.0 else None


class SentLog:
    """Every value the simulator built for a client, by security id (wraps ``market.packet``)."""

    def __init__(self, sim: SimulatorServer) -> None:
        self.legs: dict[int, set[Sent]] = collections.defaultdict(set)
        self.index: dict[int, set[float | None]] = collections.defaultdict(set)
        market = sim.market
        original = market.packet

        def recording(key, mode):  # noqa: ANN001, ANN202
            out = original(key, mode)
            for p in out:
                if isinstance(p, FullPacket) and not market.is_index(key):
                    self.legs[key[1]].add(
                        (_price(p.ltp), p.ltq, p.volume, p.oi, _price(p.depth[4]), _price(p.depth[5]))
                    )
                elif isinstance(p, (FullPacket, QuotePacket)):
                    self.index[key[1]].add(_price(p.ltp))
            return out

        market.packet = recording  # type: ignore[method-assign]

    def unsent(self, leg: dict[str, Any]) -> str | None:
        """Why ``leg`` (a served leg object) is not something the feed sent, or None."""
        if leg.get("ltp") is None and leg.get("volume") is None:
            return None  # never received: all null, nothing invented
        value = (leg["ltp"], leg["ltq"], leg["volume"], leg["oi"], leg["bid"], leg["ask"])
        if value not in self.legs.get(leg["security_id"], ()):
            return f"security {leg['security_id']}: {value} was never sent"
        return None


def _epoch(iso: str | None) -> float | None:
    return None if iso is None else dt.datetime.fromisoformat(iso).timestamp()


@dataclass
class Tally:
    """What one target's clients saw during one fault window."""

    statuses: collections.Counter = field(default_factory=collections.Counter)
    connection_errors: int = 0  # refused / reset: only where the fault restarts that process
    bodies: int = 0
    stale_bodies: int = 0  # 200 bodies saying the chain is stale
    events: int = 0
    unsent: list[str] = field(default_factory=list)
    freshness: list[str] = field(default_factory=list)
    bad_errors: list[str] = field(default_factory=list)

    def merge(self, other: Tally) -> None:
        self.statuses.update(other.statuses)
        self.connection_errors += other.connection_errors
        self.bodies += other.bodies
        self.stale_bodies += other.stale_bodies
        self.events += other.events
        self.unsent += other.unsent
        self.freshness += other.freshness
        self.bad_errors += other.bad_errors


_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError, EOFError, TimeoutError)


class Clients:
    """``pollers`` If-None-Match pollers and ``streams`` SSE followers on one target port."""

    def __init__(self, name: str, port: Callable[[], int], sent: SentLog, stale_after_s: float,
                 *, pollers: int, streams: int, expiries: list[str]) -> None:  # fmt: skip
        self.name = name
        self._port = port
        self._sent = sent
        self._stale_after_s = stale_after_s
        self.tally = Tally()
        self._tasks: list[asyncio.Task[None]] = []
        self._n = (pollers, streams)
        self._expiries = expiries
        self._http: aiohttp.ClientSession | None = None

    def take(self) -> Tally:
        """The tally since the last call (one fault window)."""
        tally, self.tally = self.tally, Tally()
        return tally

    async def __aenter__(self) -> Clients:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2 * UNIT_S))
        pollers, streams = self._n
        for i in range(pollers):
            self._tasks.append(asyncio.create_task(self._poller(self._expiries[i % len(self._expiries)])))
        for i in range(streams):
            self._tasks.append(asyncio.create_task(self._streamer(self._expiries[i % len(self._expiries)])))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    def _check_status(self, status: int, body: bytes) -> None:
        self.tally.statuses[status] += 1
        if status >= 500:
            try:
                doc = orjson.loads(body)
                documented = status == 503 and set(doc["error"]) == {"code", "message"}
            except (orjson.JSONDecodeError, KeyError, TypeError):
                documented = False
            if not documented:
                self.tally.bad_errors.append(f"{self.name}: {status} {body[:200]!r}")

    def _check_body(self, doc: dict[str, Any], asked_at: float) -> None:
        """Values all sent by the feed; a chain served fresh changed within stale_after_s."""
        self.tally.bodies += 1
        any_stale = False
        for row in doc["strikes"]:
            for side in ("ce", "pe"):
                leg = row.get(side)
                if leg is None:
                    continue
                if not isinstance(leg.get("stale"), bool):
                    self.tally.freshness.append(f"{self.name}: a leg without a stale flag")
                any_stale |= bool(leg.get("stale"))
                if (why := self._sent.unsent(leg)) is not None:
                    self.tally.unsent.append(f"{self.name}: {why}")
        self._check_fresh(doc, asked_at, any_stale)

    def _check_fresh(self, doc: dict[str, Any], asked_at: float, any_stale: bool) -> None:
        if doc.get("stale") is True:
            self.tally.stale_bodies += 1
            return
        if any_stale:
            self.tally.freshness.append(f"{self.name}: a stale leg in a chain served as fresh")
        as_of = _epoch(doc.get("as_of"))
        if as_of is None or as_of < asked_at - self._stale_after_s:
            self.tally.freshness.append(f"{self.name}: served fresh at {asked_at:.3f} but as_of {doc.get('as_of')}")

    async def _poller(self, expiry: str) -> None:
        assert self._http is not None
        etag: str | None = None
        held: dict[str, Any] | None = None
        while True:
            asked_at = _now()
            url = f"http://127.0.0.1:{self._port()}/options/live"
            try:
                headers = {"If-None-Match": etag} if etag else {}
                async with self._http.get(url, params={"underlying": "NIFTY", "expiry": expiry},
                                          headers=headers) as resp:  # fmt: skip
                    body = await resp.read()
                    self._check_status(resp.status, body)
                    if resp.status == 200:
                        held, etag = orjson.loads(body), resp.headers.get("ETag")
                        self._check_body(held, asked_at)
                    elif resp.status == 304 and held is not None:
                        self.tally.bodies += 1
                        self._check_fresh(held, asked_at, False)  # still current: still fresh enough
            except _CONNECTION_ERRORS:
                self.tally.connection_errors += 1
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.02)

    async def _streamer(self, expiry: str) -> None:
        assert self._http is not None
        last_id: str | None = None
        state: dict[str, Any] | None = None  # kept across reconnects: a resume continues it
        while True:
            url = f"http://127.0.0.1:{self._port()}/options/stream"
            headers = {"Last-Event-ID": last_id} if last_id else {}
            asked_at = _now()
            try:
                async with self._http.get(url, params={"underlying": "NIFTY", "expiry": expiry}, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=None, sock_read=2 * UNIT_S)) as resp:  # fmt: skip
                    if resp.status != 200:
                        self._check_status(resp.status, await resp.read())
                        await asyncio.sleep(0.05)
                        continue
                    self.tally.statuses[200] += 1
                    reader = SseReader(resp.content)
                    while True:
                        ev = await reader.next(timeout_s=4 * UNIT_S)
                        self.tally.events += 1
                        if ev.kind == "snapshot":
                            state = ev.json()
                            self._check_body(state, asked_at)
                        elif ev.kind == "delta" and state is not None:
                            delta = ev.json()
                            for leg in delta["legs"].values():
                                if (why := self._sent.unsent(leg)) is not None:
                                    self.tally.unsent.append(f"{self.name} stream: {why}")
                            apply(state, delta)
                        elif ev.kind == "end":
                            break
                        last_id = ev.id or last_id
            except _CONNECTION_ERRORS:
                self.tally.connection_errors += 1
                await asyncio.sleep(0.05)


def _now() -> float:
    # The bodies' as_of are the service's wall instants (SYSTEM_CLOCK, in this process or a child
    # with the same environment, faketime included).
    return time.time()


def proc_usage(pid: int) -> tuple[int | None, int | None]:
    """(RSS KiB, open descriptors) of ``pid`` from /proc (None where /proc lacks them)."""
    rss = fds = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return rss, fds


class ReplicaProcess:
    """``livechain replica`` as a subprocess on a fixed port (so clients find it after a restart)."""

    def __init__(self, redis_url: str, port: int) -> None:
        self.port = port
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVECHAIN_", "DHAN_"))}
        env.update(LIVECHAIN_HTTP__PORT=str(port), LIVECHAIN_METRICS__PORT="0")
        for key, value in _redis_section(redis_url).items():
            env[f"LIVECHAIN_REDIS__{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        self._env = env
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self.log: collections.deque[bytes] = collections.deque(maxlen=200)
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "replica", env=self._env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.starts += 1
        assert self.proc.stderr is not None
        async with asyncio.timeout(6 * UNIT_S):
            while b"replica serving" not in (line := await self.proc.stderr.readline()):
                if not line:
                    raise AssertionError(f"the replica exited before serving: {b''.join(self.log)[-2000:]!r}")
                self.log.append(line)
        self._drain = asyncio.create_task(self._read_log(self.proc.stderr))

    async def _read_log(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.log.append(line)

    async def kill(self) -> None:
        """SIGKILL: no teardown at all."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        if self._drain is not None:
            await asyncio.wait([self._drain])

    async def stop(self) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(2 * UNIT_S):
                return await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()
        finally:
            if self._drain is not None:
                await asyncio.wait([self._drain])
