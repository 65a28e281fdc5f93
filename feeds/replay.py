"""Record raw feed frames to a compact file; replay a recording through the real client path.

File format (little-endian), one self-contained file per segment::

    b"LCREC1\\n"
    uint32 n, then n bytes of JSON metadata: {"format": 1, "created_at", "feed", "scrip_master_csv"}
    records: float64 receive time (UTC epoch s), uint8 connection, uint32 length, frame bytes

``Recorder`` rotates to a new segment (``NAME.0001.lcr``, ``NAME.0002.lcr``…) when one reaches
``max_bytes`` and deletes the oldest beyond ``max_files``, so a recording is bounded on disk.

``ReplayServer`` speaks the Dhan v2 feed protocol like the simulator, but its frames come from a
recording, at the recorded pace times ``speed`` (0 = as fast as the socket takes them). The
service connects to it with the same ``DhanFeed`` client it uses against Dhan, so a replay
exercises exactly the code an incident went through.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import orjson
from aiohttp import WSMsgType, web

from feeds.clock import SYSTEM_CLOCK, Clock
from feeds.dhan.packets import HEADER
from feeds.dhan.requests import DisconnectRequest, parse_request
from feeds.errors import FeedError, SubscriptionError
from feeds.model import InstrumentKey

log = logging.getLogger(__name__)

MAGIC = b"LCREC1\n"
_META_LEN = struct.Struct("<I")
_RECORD = struct.Struct("<dBI")
SCRIP_MASTER_PATH = "/api-data/api-scrip-master-detailed.csv"


class RecordingError(FeedError):
    """A recording is missing, truncated or not a recording."""


@dataclass(frozen=True, slots=True)
class Frame:
    received_at: float
    connection: int
    data: bytes


def segment_paths(base: Path) -> list[Path]:
    """The segments of a recording, oldest first (``base`` may be one segment or the base name)."""
    if base.is_file():
        return [base]
    stem = base.name.removesuffix(".lcr")
    found = sorted(base.parent.glob(f"{stem}.[0-9][0-9][0-9][0-9].lcr"))
    if not found:
        raise RecordingError(f"no recording at {base}")
    return found


class Recorder:
    """Writes frames as they arrive (a ``FrameTap``); buffered, rotating, bounded on disk."""

    def __init__(
        self, base: Path, metadata: dict[str, Any], *, max_bytes: int, max_files: int, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if max_bytes < 4096 or max_files < 1:
            raise ValueError("max_bytes must be >= 4096 and max_files >= 1")
        self.base = base
        created_at = dt.datetime.fromtimestamp(clock.time(), dt.UTC).isoformat()
        self._meta = orjson.dumps({"format": 1, "created_at": created_at, **metadata})
        self._max_bytes = max_bytes
        self._max_files = max_files
        self._index = 0
        self._file: BinaryIO | None = None
        self._size = 0
        self.frames = 0
        self.bytes = 0
        self.segments: list[Path] = []
        self._open_next()

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        self._index += 1
        path = self.base.parent / f"{self.base.name.removesuffix('.lcr')}.{self._index:04d}.lcr"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("wb")
        self._file.write(MAGIC + _META_LEN.pack(len(self._meta)) + self._meta)
        self._size = len(MAGIC) + _META_LEN.size + len(self._meta)
        self.segments.append(path)
        while len(self.segments) > self._max_files:
            oldest = self.segments.pop(0)
            oldest.unlink(missing_ok=True)
            log.info("recording: deleted oldest segment %s (max_files %d)", oldest.name, self._max_files)

    def __call__(self, connection: int, received_at: float, frame: bytes) -> None:
        if self._file is None:
            return
        if self._size + _RECORD.size + len(frame) > self._max_bytes and self._size > 0:
            self._open_next()
        self._file.write(_RECORD.pack(received_at, connection, len(frame)))
        self._file.write(frame)
        self._size += _RECORD.size + len(frame)
        self.frames += 1
        self.bytes += len(frame)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            log.info("recording closed: %d frames, %d bytes in %d segment(s)", self.frames, self.bytes, len(self.segments))


def read_segment(path: Path) -> tuple[dict[str, Any], Iterator[Frame]]:
    """The metadata and frames of one segment; a truncated tail ends the frames quietly
    (a recorder killed mid-write), anything else malformed raises RecordingError."""
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _META_LEN.size:
        raise RecordingError(f"{path} is not a livechain recording")
    (n,) = _META_LEN.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _META_LEN.size
    try:
        meta = orjson.loads(data[start : start + n])
    except orjson.JSONDecodeError as exc:
        raise RecordingError(f"{path}: bad metadata") from exc

    def frames() -> Iterator[Frame]:
        off = start + n
        while off + _RECORD.size <= len(data):
            ts, conn, length = _RECORD.unpack_from(data, off)
            off += _RECORD.size
            if off + length > len(data):
                log.warning("%s: truncated last frame ignored", path.name)
                return
            yield Frame(ts, conn, data[off : off + length])
            off += length

    return meta, frames()


def read_recording(base: Path) -> tuple[dict[str, Any], Iterator[Frame]]:
    """The first segment's metadata and every frame of every segment, read one segment at a time."""
    paths = segment_paths(base)
    meta, _ = read_segment(paths[0])

    def frames() -> Iterator[Frame]:
        for path in paths:
            yield from read_segment(path)[1]

    return meta, frames()


def _key_of(frame: bytes) -> InstrumentKey | None:
    if len(frame) < HEADER.size:
        return None
    _, _, segment, security_id = HEADER.unpack_from(frame, 0)
    return (segment, security_id)


class ReplayServer:
    """A Dhan-protocol server whose frames come from a recording."""

    def __init__(self, base: Path, *, speed: float = 1.0, host: str = "127.0.0.1", port: int = 0) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0 (0 = as fast as possible)")
        self.meta, self._frames = read_recording(base)
        if "scrip_master_csv" not in self.meta:
            raise RecordingError(f"{base}: recording has no instrument list")
        self.speed = speed
        self.host = host
        self.port = 0
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._clients: dict[int, tuple[web.WebSocketResponse, set[InstrumentKey]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()
        self.frames_sent = 0

    @property
    def feed_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def scrip_master_url(self) -> str:
        return f"http://{self.host}:{self.port}{SCRIP_MASTER_PATH}"

    async def __aenter__(self) -> ReplayServer:
        app = web.Application()
        app.router.add_get("/", self._feed)
        app.router.add_get(SCRIP_MASTER_PATH, self._scrip_master)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self._requested_port).start()
        self.port = self._runner.addresses[0][1]
        log.info("replay server on %s at speed %g", self.feed_url, self.speed)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        for ws, _ in list(self._clients.values()):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _scrip_master(self, request: web.Request) -> web.Response:
        return web.Response(text=self.meta["scrip_master_csv"], content_type="text/csv")

    async def _feed(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        if q.get("version") != "2" or q.get("authType") != "2" or not q.get("token") or not q.get("clientId"):
            raise web.HTTPBadRequest(text="expected ?version=2&token=..&clientId=..&authType=2")
        ws = web.WebSocketResponse(heartbeat=10.0, compress=False)
        await ws.prepare(request)
        subs: set[InstrumentKey] = set()
        self._clients[id(ws)] = (ws, subs)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    req = parse_request(msg.data)
                except SubscriptionError as exc:
                    log.info("replay: ignoring invalid request: %s", exc)
                    continue
                if isinstance(req, DisconnectRequest):
                    await ws.close()
                    break
                (subs.update if req.subscribe else subs.difference_update)(req.instruments)
                if self._task is None:
                    # Start once the first client has subscribed; later clients join mid-stream.
                    self._task = asyncio.create_task(self._play(), name="replay")
        finally:
            self._clients.pop(id(ws), None)
        return ws

    async def _play(self) -> None:
        await asyncio.sleep(0.05)  # let the client's remaining subscribe messages arrive
        loop = asyncio.get_running_loop()
        start = loop.time()
        first: float | None = None
        for frame in self._frames:
            if first is None:
                first = frame.received_at
            if self.speed > 0:
                delay = start + (frame.received_at - first) / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            key = _key_of(frame.data)
            for ws, subs in list(self._clients.values()):
                if key is None or key in subs:
                    await ws.send_bytes(frame.data)
                    self.frames_sent += 1
        self.finished.set()
        log.info("replay finished: %d frames sent", self.frames_sent)


def recording_metadata(feed_url: str, scrip_master_csv: str, subscriptions: Sequence[tuple[int, int, int]]) -> dict[str, Any]:
    """What a recording needs besides frames: where it came from and which instruments it covers."""
    return {"feed": feed_url, "subscriptions": [list(s) for s in subscriptions], "scrip_master_csv": scrip_master_csv}
