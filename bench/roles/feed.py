"""What stands in for Dhan: a loopback feed server that sends prepared frames, and the simulator.

``FeedServer`` is one aiohttp app (the framework the simulator uses) for a universe built
by ``feeds.simulator.universe``:

* ``GET /scrip-master.csv``: the detailed scrip master of that universe, so the real
  service can load its instruments from here.
* ``GET /blast`` (WebSocket): on the client's first text message, every prepared frame is
  handed to the socket at once: ``blast_frames`` Full packets, one per binary frame as Dhan
  sends, framed once in advance so the server costs nearly nothing per frame and the client
  is what gets measured. Clients under comparison connect to the same path.
* ``GET /feed`` and ``GET /bare`` (WebSocket): Dhan's subscription protocol (each subscribed
  instrument gets one packet at once, so a service's readiness gate opens), then
  ``stream()`` sends Full frames to the connections of one path at a fixed rate, with
  *marker* frames whose ``volume`` carries a sequence number; ``stream`` returns when each
  marker was handed to the kernel (``time.time()``, comparable across processes).

Frames are written straight to the transport, bypassing aiohttp's per-frame writer: server
frames are unmasked and uncompressed, so the bytes are the same, prepared once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from typing import Any

from aiohttp import WSMsgType, web

from bench import corpus
from bench.roles import ist_today, ws_frame
from feeds.dhan.codec import encode
from feeds.dhan.requests import SubscriptionRequest, parse_request
from feeds.errors import SubscriptionError
from feeds.model import InstrumentKey, Segment
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.scrip_master import generate_scrip_master
from feeds.simulator.server import SimulatorServer
from feeds.simulator.universe import build_universe

DISTINCT_PACKETS = 20_000  # the blast cycles through these
SCRIP_MASTER_PATH = "/scrip-master.csv"
MARKER_BASE = 3_000_000_000  # below 2**32: volume is a uint32 on the wire


def universe_config(underlyings: list[str], expiries: int, strikes_per_side: int, today: str | None) -> SimulatorConfig:
    return SimulatorConfig(
        underlyings=tuple(underlyings), expiries=expiries, strikes_per_side=strikes_per_side,
        today=None if today is None else dt.date.fromisoformat(today), max_connections=None,
    )  # fmt: skip


def marker_key(universe_keys: list[InstrumentKey]) -> InstrumentKey:
    """The option leg whose ``volume`` carries marker sequence numbers: the middle one."""
    options = [k for k in universe_keys if k[0] == Segment.NSE_FNO]
    return options[len(options) // 2]


class _Peer:
    __slots__ = ("blasted", "path", "transport")

    def __init__(self, path: str, transport: asyncio.Transport) -> None:
        self.path = path
        self.transport = transport
        self.blasted = False


class FeedServer:
    def __init__(
        self,
        underlyings: list[str],
        expiries: int,
        strikes_per_side: int,
        today: str | None = None,
        blast_frames: int = 0,
        seed: int = 1,
    ) -> None:
        config = universe_config(underlyings, expiries, strikes_per_side, today)
        self.universe = build_universe(config, config.today or ist_today())
        keys = list(self.universe.keys())
        self.marker = marker_key(keys)
        options = [k for k in keys if k[0] == Segment.NSE_FNO and k != self.marker]
        distinct = corpus.packets("full", min(DISTINCT_PACKETS, max(blast_frames, 4 * len(options))), options, seed)
        self._frames = [ws_frame(encode(p)) for p in distinct]
        self._blob = b"".join(itertools.islice(itertools.cycle(self._frames), blast_frames))
        self._blast_frames = blast_frames
        # The first answer to a subscription: one packet per instrument, as the simulator does.
        self._initial = {
            key[1]: ws_frame(encode(corpus.packets("full", 1, [key], seed + i)[0])) for i, key in enumerate(keys)
        }
        self._marker_packet = corpus.packets("full", 1, [self.marker], seed + 2)[0]
        # Marker sequence numbers start far above any volume the corpus holds, so a probe
        # cannot take the marker leg's first (random) volume for a marker.
        self._seq = MARKER_BASE
        self._peers: set[_Peer] = set()
        self._runner: web.AppRunner | None = None

    async def start(self) -> dict[str, Any]:
        app = web.Application()
        app.router.add_get(SCRIP_MASTER_PATH, self._scrip_master)
        for path in ("/blast", "/feed", "/bare"):
            app.router.add_get(path, self._feed)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        chain = next(iter(self.universe.skeleton.underlyings.values())).expiries[0]
        return {
            "port": self._runner.addresses[0][1],
            "instruments": len(self.universe),
            "marker_security_id": self.marker[1],
            "expiry": chain.expiry.isoformat(),
            "frame_bytes": len(self._frames[0]),
        }

    async def stop(self) -> None:
        for peer in list(self._peers):
            peer.transport.abort()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _scrip_master(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_scrip_master(self.universe).encode(), content_type="text/csv")

    async def _feed(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        peer = _Peer(request.path, transport)  # type: ignore[arg-type]
        self._peers.add(peer)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                if peer.path == "/blast":
                    if not peer.blasted:
                        peer.blasted = True
                        transport.write(self._blob)
                    continue
                try:
                    request_ = parse_request(msg.data)
                except SubscriptionError:
                    continue
                if isinstance(request_, SubscriptionRequest) and request_.subscribe:
                    initial = self._initial
                    transport.write(b"".join(initial[sid] for _, sid in request_.instruments if sid in initial))
        finally:
            self._peers.discard(peer)
        return ws

    async def stream(self, path: str, rate: float, seconds: float, marker_every_s: float) -> dict[str, Any]:
        """Send ``rate`` frames/s for ``seconds`` to every peer on ``path``; marker send times back.

        Frames go out in bursts every millisecond; a marker (a Full packet of the marker leg
        whose ``volume`` is a fresh sequence number) closes the burst it falls in, so it is
        the last of its burst to be read.
        """
        peers = [p for p in self._peers if p.path == path]
        if not peers:
            raise RuntimeError(f"nobody is connected on {path}")
        frames = self._frames
        n = len(frames)
        i = sent = 0
        markers: dict[str, float] = {}
        start = time.perf_counter()
        next_marker = start
        most_buffered = 0
        while (now := time.perf_counter()) - start < seconds:
            due = int(rate * (now - start)) - sent
            if due > 0:
                burst = [frames[(i + k) % n] for k in range(due)]
                i = (i + due) % n
                if now >= next_marker:
                    self._seq += 1
                    burst[-1] = ws_frame(encode(self._marker_packet._replace(volume=self._seq)))
                    next_marker += marker_every_s
                    markers[str(self._seq)] = time.time()
                data = b"".join(burst)
                for peer in peers:
                    peer.transport.write(data)
                    most_buffered = max(most_buffered, peer.transport.get_write_buffer_size())
                sent += due
            await asyncio.sleep(0.001)
        return {"markers": markers, "sent": sent, "rate": sent / (time.perf_counter() - start),
                "most_buffered_bytes": most_buffered}  # fmt: skip


class Simulator:
    """The project's Dhan simulator (``feeds.simulator.server``), alone in its process."""

    def __init__(self, underlyings: list[str], expiries: int, strikes_per_side: int) -> None:
        self.server = SimulatorServer(universe_config(underlyings, expiries, strikes_per_side, None))

    async def start(self) -> dict[str, Any]:
        await self.server.start()
        return {"feed_url": self.server.feed_url, "scrip_master_url": self.server.scrip_master_url,
                "instruments": len(self.server.universe)}  # fmt: skip

    async def stop(self) -> None:
        await self.server.stop()

    def idle(self) -> bool:
        """Every frame queued for a client is on the wire (between contestants)."""
        return self.server.idle and self.server.connections_open == 0
