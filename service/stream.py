"""Live push: ``GET /options/stream?underlying=…[&expiry=…]``, Server-Sent Events.

A client gets ``event: snapshot`` (exactly the ``/options/live`` body), then ``event: delta``
events: the chain-level fields that changed (``version`` always) and ``legs``, the changed
legs keyed ``"{strike}:{CE|PE}"``, each leg object byte for byte as in the snapshot. Every
event's ``id:`` is the chain ``version`` it brings the client to. Applying the deltas in order
to the snapshot (set each top-level field, replace each named leg) gives ``/options/live``.

One ``ChainFeed`` per chain follows a ``ChainSource`` — the primary's cache or a replica's
Redis-loaded store, the same code — by comparing each new snapshot with the last one
(``ChainStreams`` looks every ``http.stream_interval_s`` at the chains that have clients).
Each change becomes one delta, encoded once and written as the same bytes to every client
that is caught up. A feed keeps, per leg, the position of its last change and a ring of its
last ``stream_ring`` deltas, so:

* a slow client is never queued for: each client has at most one event in flight. After a
  write the handler waits until the event has left the process (the transport's buffer is
  empty) and the kernel holds at most ``UNSENT_BYTES`` of it not yet sent (TCP_NOTSENT_LOWAT),
  and only then builds the next one: one delta merging everything since what it was last sent,
  from the chain's latest state (the latest value of each leg; encoded once per set of changed
  legs and state, however many clients are that far behind); a client further behind than the
  ring gets a fresh snapshot;
* a reconnect with ``Last-Event-ID: v`` resumes with one delta of what changed since version
  ``v`` when ``v`` is within the ring (from this process or another one: versions are the
  primary's, so a replica resumes a primary's stream), else with a snapshot. A delta repeats
  fields the client may already hold; it never misses one (every value is absolute).

Idle streams get a comment line every ``http.stream_heartbeat_s``; at most ``http.max_streams``
are open (503 ``too_many_streams`` beyond). A chain that stops being served (the expiry roll)
ends its streams with ``event: end``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from service.core.chains import ChainSource
from service.core.snapshot import ChainSnapshot
from service.http import ApiError, HttpContext, Routes, resolve_chain
from service.settings import HttpSettings
from service.tasks import Child, Supervisor

log = logging.getLogger(__name__)

_F = orjson.Fragment
HEARTBEAT = b": heartbeat\n\n"
# A stream's kernel send buffer: small, so a client that does not keep up makes our writes wait
# (and get conflated) within ~a snapshot's worth of bytes, instead of the kernel queueing
# megabytes of stale deltas per client (Linux grows an unset buffer up to tcp_wmem's 4 MiB).
SEND_BUFFER_BYTES = 128 * 1024
# At most this much of an event may wait in the kernel not yet sent (TCP_NOTSENT_LOWAT): the
# socket is writable again only below it, so the next event is built from the state current when
# the client actually takes data, not when the previous write was queued.
UNSENT_BYTES = 16 * 1024
ChainKey = tuple[str, dt.date]


@dataclass(frozen=True, slots=True)
class StreamConfig:
    heartbeat_s: float = 15.0
    max_streams: int = 1000
    interval_s: float = 0.05
    ring: int = 256

    @classmethod
    def of(cls, http: HttpSettings) -> StreamConfig:
        return cls(http.stream_heartbeat_s, http.max_streams, http.stream_interval_s, http.stream_ring)


def event(kind: bytes, version: int, data: bytes) -> bytes:
    return b"event: " + kind + b"\nid: " + str(version).encode() + b"\ndata: " + data + b"\n\n"


def leg_fields(snap: ChainSnapshot) -> list[str]:
    """Per leg slot (2 per strike: CE, PE) its delta key, ``25850.0:CE`` (the strike as JSON writes it)."""
    return [f"{strike!r}:{side}" for strike in snap.strikes for side in ("CE", "PE")]


def leg_slots(snap: ChainSnapshot) -> list[bytes | None]:
    return snap.leg_slots()


class ChainFeed:
    """One chain as a sequence of states (positions 0, 1, …), each a snapshot; owned by the event loop."""

    def __init__(self, snap: ChainSnapshot, ring: int) -> None:
        self.snap = snap
        self.pos = 0
        self._fields = leg_fields(snap)
        self._legs = leg_slots(snap)
        self._strikes = snap.strikes
        self._leg_pos = [0] * len(self._legs)  # position at which each leg last changed
        self._ring: deque[bytes] = deque(maxlen=ring)  # the deltas to positions pos-len+1 … pos
        self._versions: deque[tuple[int, int]] = deque([(0, snap.version)], maxlen=ring + 1)
        self._merged: dict[int, bytes] = {}  # cursor → merged delta to the current position
        self._leg_changes: list[int] | None = None  # the distinct positions in _leg_pos, sorted (lazy)
        self.changed = asyncio.Event()  # replaced at every change: set means "look again"
        self.clients = 0
        self.ended = False
        self.deltas_encoded = 0

    # ------------------------------------------------------------------ the one writer: ChainStreams

    def update(self, snap: ChainSnapshot) -> bool:
        """Take the chain's current snapshot; publish a delta if it differs. True if it did."""
        old = self.snap
        if snap is old or (snap.etag == old.etag and snap.version == old.version):
            return False
        pos = self.pos + 1
        legs = leg_slots(snap)
        if snap.strikes != self._strikes:  # a new layout: nobody can follow it by delta
            self._fields, self._legs, self._strikes = leg_fields(snap), legs, snap.strikes
            self._leg_pos = [pos] * len(legs)
            self._ring.clear()  # base = pos: every client is sent a snapshot
            self._versions.clear()
            self._versions.append((pos, snap.version))
            self.snap, self.pos = snap, pos
            self._merged.clear()
            self._leg_changes = None
            self._wake()
            return True
        head = {"version": snap.version}
        for name, value in snap.head.items():
            if old.head.get(name) != value:
                head[name] = value
        changed = {}
        leg_pos = self._leg_pos
        fields = self._fields
        for i, (new, was) in enumerate(zip(legs, self._legs)):
            if new != was:
                leg_pos[i] = pos
                changed[fields[i]] = _F(new)
        self._ring.append(event(b"delta", snap.version, orjson.dumps({**head, "legs": changed})))
        self.deltas_encoded += 1
        self._versions.append((pos, snap.version))
        self.snap, self._legs, self.pos = snap, legs, pos
        self._merged.clear()
        self._leg_changes = None
        self._wake()
        return True

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    # ------------------------------------------------------------------ what a client is sent

    @property
    def base(self) -> int:
        """The oldest position a client can be brought forward from by a delta."""
        return self.pos - len(self._ring)

    def resume_from(self, last_event_id: str | None) -> int | None:
        """The position to send deltas from for a client that holds version ``last_event_id``;
        None: it needs a snapshot (no id, a bad one, older than the ring, or newer than us)."""
        if not last_event_id:
            return None
        try:
            version = int(last_event_id)
        except ValueError:
            return None
        if version > self.snap.version:
            return None
        cursor = None
        for pos, ver in self._versions:  # ascending; a few hundred at most
            if ver == version:
                return pos  # the first state at that version: later ones at it are resent (harmless)
            if ver > version:
                break
            cursor = pos  # the client is past this state: send what changed after it
        return cursor

    def delta_since(self, cursor: int) -> bytes:
        """The event bringing a client from position ``cursor`` (≥ ``base``) to the current one."""
        if cursor == self.pos - 1:
            return self._ring[-1]  # the shared bytes: encoded once for every caught-up client
        # Clients at cursors with no leg change between them are sent the same legs: key the cache
        # by the last position before the next leg change, so (under heavy ticking, where every leg
        # changed in the last few positions) every client that far behind shares one encoding.
        changes = self._leg_changes
        if changes is None:
            changes = self._leg_changes = sorted(set(self._leg_pos))
        i = bisect.bisect_right(changes, cursor)
        cursor = changes[i] - 1 if i < len(changes) else self.pos - 1
        merged = self._merged.get(cursor)
        if merged is None:
            legs = self._legs
            fields = self._fields
            changed = {fields[i]: _F(legs[i]) for i, p in enumerate(self._leg_pos) if p > cursor}
            # The whole head: it is small, and carries the clock-dependent fields (stale, market)
            # that can change without a new version.
            data = orjson.dumps({**self.snap.head, "legs": changed})
            merged = self._merged[cursor] = event(b"delta", self.snap.version, data)
            self.deltas_encoded += 1
        return merged


class ChainStreams:
    """Every stream of one HTTP app: the chains' feeds, the count of open streams, the looker."""

    def __init__(self, source: ChainSource, config: StreamConfig, cors_allow_origins: tuple[str, ...] = ()) -> None:
        self.source = source
        self.config = config
        self.cors = cors_allow_origins
        self.feeds: dict[ChainKey, ChainFeed] = {}
        self.open = 0
        self.refused = 0
        self._child: Child | None = None
        self._closing = False

    def feed(self, snap: ChainSnapshot) -> ChainFeed:
        key = (snap.underlying, snap.expiry)
        feed = self.feeds.get(key)
        if feed is None or feed.ended:
            feed = self.feeds[key] = ChainFeed(snap, self.config.ring)
        else:
            feed.update(snap)  # it may not have been looked at while it had no clients
        return feed

    def look(self) -> None:
        """Bring every feed that has clients to its chain's current snapshot."""
        snapshot = self.source.snapshot
        for key, feed in list(self.feeds.items()):
            if not feed.clients:
                continue
            snap = snapshot(*key)
            if snap is None:
                feed.end()
                del self.feeds[key]
            else:
                feed.update(snap)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            self.look()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self._child = Supervisor().spawn("http-stream", self._run)
        try:
            yield
        finally:
            self.close()
            await self._child.stop()

    def close(self) -> None:
        """The server is stopping: end every stream now rather than at the shutdown timeout."""
        self._closing = True
        for feed in self.feeds.values():
            feed.end()

    # ------------------------------------------------------------------ one client

    def _cors_headers(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        allow_any = "*" in self.cors
        if origin is None or not (allow_any or origin in self.cors):
            return {}
        headers = {"Access-Control-Allow-Origin": "*" if allow_any else origin}
        if not allow_any:
            headers["Vary"] = "Origin"
        return headers

    async def handle(self, request: web.Request) -> web.StreamResponse:
        snap = resolve_chain(request)  # 400 / 404 as JSON before anything is streamed
        if self.open >= self.config.max_streams or self._closing:
            self.refused += 1
            raise ApiError(503, "too_many_streams", f"at most {self.config.max_streams} streams are served at once; "
                           "retry later or poll /options/live with If-None-Match")  # fmt: skip
        feed = self.feed(snap)
        last_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        cursor = feed.resume_from(last_id)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
                **self._cors_headers(request),
            }
        )
        self.open += 1
        feed.clients += 1
        transport = request.transport
        limits = None if transport is None else transport.get_write_buffer_limits()
        try:
            if transport is not None:
                one_event_in_flight(transport)
            await resp.prepare(request)
            await self._serve(request, resp, feed, cursor)
        except ConnectionError:
            pass  # the client went away
        # A cancellation (the server stopping, aiohttp dropping the handler) is passed on: the
        # request is counted as 499 and whoever cancelled sees it done.
        finally:
            self.open -= 1
            feed.clients -= 1
            if limits is not None and transport is not None and not transport.is_closing():
                transport.set_write_buffer_limits(high=limits[1], low=limits[0])
        return resp

    async def _serve(self, request: web.Request, resp: web.StreamResponse, feed: ChainFeed, cursor: int | None) -> None:
        heartbeat_s = self.config.heartbeat_s
        transport = request.transport
        writer = request.writer

        async def send(data: bytes) -> None:
            await resp.write(data)
            await writer.drain()  # one event in flight: the next is built only once this one left

        while True:
            if feed.ended:
                await resp.write(b"event: end\ndata: {}\n\n")
                return
            if cursor is None or cursor < feed.base:
                snap, at = feed.snap, feed.pos
                await send(b"event: snapshot\nid: " + str(snap.version).encode() + b"\ndata: " + snap.body + b"\n\n")
                cursor = at
                continue
            if cursor < feed.pos:
                target = feed.pos
                await send(feed.delta_since(cursor))
                cursor = target
                continue
            if transport is not None and transport.is_closing():
                return
            changed = feed.changed
            try:
                async with asyncio.timeout(heartbeat_s):
                    await changed.wait()
            except TimeoutError:
                await send(HEARTBEAT)


def one_event_in_flight(transport: asyncio.Transport) -> None:
    """Make a stream's writes wait until each event has left the process and (nearly) the kernel.

    The transport pauses its protocol whenever anything is buffered (high water 0), so
    ``drain()`` returns only once the whole event was handed to the kernel; the kernel takes it
    only while less than ``UNSENT_BYTES`` of it is waiting to be sent (TCP_NOTSENT_LOWAT, Linux
    and macOS) within a small send buffer. What a client has not taken yet is never more than
    about one event, so what it gets next is the newest state, merged."""
    transport.set_write_buffer_limits(high=0)
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    lowat = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if lowat is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, lowat, UNSENT_BYTES)


STREAMS = web.AppKey("streams", ChainStreams)


async def options_stream(request: web.Request) -> web.StreamResponse:
    return await request.app[STREAMS].handle(request)


def add_routes(routes: Routes, context: HttpContext) -> ChainStreams:
    """Register ``/options/stream`` and the looker's lifetime on the API's app."""
    app = routes.app
    streams = ChainStreams(context.chains, context.stream or StreamConfig(), context.cors_allow_origins)
    app[STREAMS] = streams

    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        async with streams.running():
            yield

    async def on_shutdown(_app: web.Application) -> None:
        streams.close()

    app.cleanup_ctx.append(lifetime)
    app.on_shutdown.append(on_shutdown)
    routes.get("/options/stream", options_stream)  # counted when the stream ends
    return streams


def stream_stats(app: web.Application) -> dict[str, Any]:
    streams = app[STREAMS]
    return {"open": streams.open, "refused": streams.refused, "chains": len(streams.feeds)}
