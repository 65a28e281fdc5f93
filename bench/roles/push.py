"""Live push under load: the service's app streaming one chain to many SSE clients, and pollers.

``PushApp`` is ``bench.roles.http.ServingApp`` (the primary's HTTP stack on one 251-strike
NIFTY chain, 20,000 Full ticks/s applied through ``Ingest.on_ticks``) that also reports the
CPU time its process used. ``StreamClients`` holds ``n`` ``/options/stream`` connections on raw
asyncio protocols and times every event: from the apply time of the newest tick it carries
(the chain's ``as_of`` it brings the client to) to its arrival; and, as a bound for the oldest
tick it may carry, from the ``as_of`` the client held before. ``PacedPollers`` are ``n`` keep-alive
clients asking ``/options/live`` once a second each with ``If-None-Match``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import resource
import socket
import time
from typing import Any

from bench.roles.http import ServingApp
from service.stream import STREAMS

_AS_OF = b'"as_of":"'


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class PushApp(ServingApp):
    def cpu(self) -> float:
        return cpu_seconds()

    def stream_interval(self, seconds: float) -> float:
        """Set ``http.stream_interval_s`` (how often the streams look at the chain: at most one
        event per client per look) from now on; the previous value."""
        assert self._runner is not None
        streams = self._runner.app[STREAMS]
        before = streams.config.interval_s
        streams.config = dataclasses.replace(streams.config, interval_s=seconds)
        return before


def _as_of(data: bytes) -> float | None:
    i = data.find(_AS_OF)
    if i < 0:
        return None
    j = data.find(b'"', i + len(_AS_OF))
    if j < 0:
        return None
    return dt.datetime.fromisoformat(data[i + len(_AS_OF) : j].decode()).timestamp()


HEAD_BYTES = 400  # an event's first bytes: its kind, id and the chain-level fields, as_of among them


class _Stream(asyncio.Protocol):
    """One ``/options/stream`` connection: finds event boundaries as bytes arrive, keeping only
    each event's first ``HEAD_BYTES`` (a 250 kB delta is never copied), and times each event.

    ``exact``: arrival − the ``as_of`` the event brings the client to (the apply time of the
    newest tick in it: both processes read the same system clock). ``bound``: arrival − the
    ``as_of`` the client held before (every tick the event carries was applied after it: the
    worst case for the oldest one, which includes the time between events)."""

    def __init__(self, request: bytes, clients: StreamClients) -> None:
        self.request = request
        self.clients = clients
        self.transport: asyncio.Transport | None = None
        self.headers: bytearray | None = bytearray()  # None once the response head is read
        self.head = bytearray()
        self.size = 0
        self.last_nl = False  # the previous chunk ended with "\n" (an event end may straddle chunks)
        self.as_of: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.headers is not None:
            self.headers += data
            end = self.headers.find(b"\r\n\r\n")
            if end < 0:
                return
            data = bytes(self.headers[end + 4 :])
            self.headers = None
        pos, n = 0, len(data)
        if self.last_nl and n and data[0] == 10:
            self._event()
            pos = 1
        head = self.head
        while True:
            end = data.find(b"\n\n", pos)
            stop = n if end < 0 else end
            if len(head) < HEAD_BYTES:
                head += data[pos : min(stop, pos + HEAD_BYTES - len(head))]
            self.size += stop - pos
            if end < 0:
                self.last_nl = n > pos and data[-1] == 10
                return
            self._event()
            pos = end + 2

    def _event(self) -> None:
        head, size = bytes(self.head), self.size
        self.head.clear()
        self.size = 0
        self.last_nl = False
        if head.startswith(b":") or not head:
            return  # a heartbeat comment
        now = time.time()
        before = self.as_of
        as_of = _as_of(head)
        if as_of is not None:
            self.as_of = as_of
        clients = self.clients
        if clients.recording:
            clients.counts[0] += 1
            clients.counts[1] += size
            clients.counts[2] += head.startswith(b"event: snapshot")
            if self.as_of is not None:
                clients.exact.append(now - self.as_of)
            if before is not None:
                clients.bound.append(now - before)


class StreamClients:
    """``n`` stream connections in this process; ``rcvbuf_bytes`` caps each socket's receive buffer
    (0: the kernel's autotuning, up to ``net.ipv4.tcp_rmem``'s maximum)."""

    def __init__(self) -> None:
        self.streams: list[_Stream] = []
        self.exact: list[float] = []
        self.bound: list[float] = []
        self.counts = [0, 0, 0]  # events, bytes, snapshots
        self.recording = False

    async def open(self, port: int, path: str, n: int, rcvbuf_bytes: int = 0) -> int:
        loop = asyncio.get_running_loop()
        request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

        async def one() -> _Stream:
            sock = socket.socket()
            if rcvbuf_bytes:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            _, proto = await loop.create_connection(lambda: _Stream(request, self), sock=sock)
            return proto

        for i in range(0, n, 100):  # connect in waves: the server accepts between its writes
            self.streams += await asyncio.gather(*(one() for _ in range(min(100, n - i))))
        return len(self.streams)

    async def measure(self, seconds: float) -> dict[str, Any]:
        """Events for ``seconds``: their latencies (ms, every sample, for the caller to merge
        across processes) and counts, and this process's CPU in that time."""
        self.exact.clear()
        self.bound.clear()
        self.counts[:] = [0, 0, 0]
        cpu0 = cpu_seconds()
        self.recording = True
        await asyncio.sleep(seconds)
        self.recording = False
        return {
            "exact_ms": [round(1000 * x, 2) for x in self.exact], "bound_ms": [round(1000 * x, 2) for x in self.bound],
            "events": self.counts[0], "bytes": self.counts[1], "snapshots": self.counts[2],
            "cpu_pct": 100 * (cpu_seconds() - cpu0) / seconds,
            "open": sum(1 for s in self.streams if s.transport and not s.transport.is_closing()),
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
