"""Live push under load: the service's app streaming one chain to many SSE clients, and pollers.

``PushApp`` is ``bench.roles.http.ServingApp`` (the primary's HTTP stack on one 251-strike
NIFTY chain, 20,000 Full ticks/s applied through ``Ingest.on_ticks``) that also reports the
CPU time its process used. ``StreamClients`` holds ``n`` ``/options/stream`` connections on raw
asyncio protocols and times every event: its delivery latency is the time from the chain's
``as_of`` before the event (every tick the event delivers was applied after it) to the event's
arrival, an upper bound for each tick it carries. ``PacedPollers`` are ``n`` keep-alive
clients asking ``/options/live`` once a second each with ``If-None-Match``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import resource
import time
from typing import Any

from bench.roles.http import ServingApp
from bench.timing import percentile

_AS_OF = b'"as_of":"'


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class PushApp(ServingApp):
    def cpu(self) -> float:
        return cpu_seconds()


def _as_of(data: bytes) -> float | None:
    i = data.find(_AS_OF)
    if i < 0:
        return None
    j = data.index(b'"', i + len(_AS_OF))
    return dt.datetime.fromisoformat(data[i + len(_AS_OF) : j].decode()).timestamp()


class _Stream(asyncio.Protocol):
    def __init__(self, request: bytes, sink: list[float], counts: list[int]) -> None:
        self.request = request
        self.sink = sink
        self.counts = counts  # events, bytes, snapshots
        self.buf = bytearray()
        self.headers_done = False
        self.prev_as_of: float | None = None
        self.transport: asyncio.Transport | None = None
        self.recording = False
        self.scan = 0  # where to resume looking for the end of the current event

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.headers_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            del buf[: end + 4]
            self.headers_done = True
            self.scan = 0
        start = 0
        while True:
            end = buf.find(b"\n\n", max(start, self.scan))
            if end < 0:
                del buf[:start]
                self.scan = max(0, len(buf) - 1)
                return
            head = bytes(buf[start : min(end, start + 400)])
            size = end - start
            start = end + 2
            self.scan = 0
            if head.startswith(b":"):
                continue
            now = time.time()
            as_of = _as_of(head)
            if self.recording:
                self.counts[0] += 1
                self.counts[1] += size
                self.counts[2] += head.startswith(b"event: snapshot")
                if self.prev_as_of is not None:
                    self.sink.append(now - self.prev_as_of)
            if as_of is not None:
                self.prev_as_of = as_of


class StreamClients:
    def __init__(self) -> None:
        self.streams: list[_Stream] = []
        self.latencies: list[float] = []
        self.counts = [0, 0, 0]

    async def open(self, port: int, path: str, n: int) -> int:
        loop = asyncio.get_running_loop()
        request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        async def one() -> _Stream:
            _, proto = await loop.create_connection(
                lambda: _Stream(request, self.latencies, self.counts), "127.0.0.1", port
            )
            return proto

        for i in range(0, n, 100):  # connect in waves: the server accepts between its writes
            self.streams += await asyncio.gather(*(one() for _ in range(min(100, n - i))))
        return len(self.streams)

    async def measure(self, seconds: float) -> dict[str, Any]:
        self.latencies.clear()
        self.counts[:] = [0, 0, 0]
        for s in self.streams:
            s.recording = True
        await asyncio.sleep(seconds)
        for s in self.streams:
            s.recording = False
        lat = self.latencies or [float("nan")]
        return {
            "p50_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99),
            "events_per_s": self.counts[0] / seconds, "mb_per_s": self.counts[1] / seconds / 1e6,
            "snapshots": self.counts[2], "open": sum(1 for s in self.streams if s.transport and not s.transport.is_closing()),
        }  # fmt: skip

    async def close(self) -> None:
        for s in self.streams:
            if s.transport is not None:
                s.transport.close()
        self.streams.clear()


class _PacedPoller(asyncio.Protocol):
    def __init__(self, path: str, port: int, counts: list[int]) -> None:
        self.path, self.port, self.counts = path, port, counts
        self.etag: str | None = None
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        extra = f"If-None-Match: {self.etag}\r\n" if self.etag else ""
        assert self.transport is not None
        self.transport.write(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{extra}\r\n".encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            status = int(head[9:12])
            length = 0
            if status == 200:
                i = head.find(b"content-length:")
                length = int(head[i + 15 : head.index(b"\r\n", i) if b"\r\n" in head[i:] else None])
            if len(buf) < end + 4 + length:
                return
            i = head.find(b"etag:")
            if i >= 0:
                self.etag = bytes(buf[i + 5 : buf.index(b"\r\n", i)]).decode().strip()
            self.counts[0 if status == 200 else 1] += 1
            self.counts[2] += end + 4 + length
            del buf[: end + 4 + length]


class PacedPollers:
    def __init__(self) -> None:
        self.pollers: list[_PacedPoller] = []
        self.counts = [0, 0, 0]  # 200s, 304s, bytes
        self._task: asyncio.Task[None] | None = None

    async def open(self, port: int, path: str, n: int, interval_s: float = 1.0) -> int:
        loop = asyncio.get_running_loop()
        for _ in range(n):
            _, proto = await loop.create_connection(lambda: _PacedPoller(path, port, self.counts), "127.0.0.1", port)
            self.pollers.append(proto)
        self._task = asyncio.create_task(self._pace(interval_s))
        return len(self.pollers)

    async def _pace(self, interval_s: float) -> None:
        n = len(self.pollers)
        while True:  # spread evenly over each interval
            for p in self.pollers:
                p.send()
                await asyncio.sleep(interval_s / n)

    async def measure(self, seconds: float) -> dict[str, Any]:
        self.counts[:] = [0, 0, 0]
        await asyncio.sleep(seconds)
        return {"ok_per_s": self.counts[0] / seconds, "not_modified_per_s": self.counts[1] / seconds,
                "mb_per_s": self.counts[2] / seconds / 1e6}  # fmt: skip

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for p in self.pollers:
            if p.transport is not None:
                p.transport.close()
        self.pollers.clear()
