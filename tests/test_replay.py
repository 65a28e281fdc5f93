"""Record raw frames, rotate within bounds, and replay a session into the same cache state."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from feeds.replay import MAGIC, Recorder, RecordingError, read_recording, read_segment, segment_paths
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.server import SimulatorServer
from service.app import running_service
from service.core.cache import ChainCache
from tests.test_service import SIM, quiesce, settings_for, until

pytestmark = pytest.mark.usefixtures("dhan_env")

LEG_FIELDS = ("ltp", "ltq", "ltt", "atp", "volume", "oi", "prev_close", "prev_oi", "open", "high", "low", "close",
              "bid", "bid_qty", "ask", "ask_qty")


def test_recorder_round_trip(tmp_path: Path) -> None:
    """Frames come back with their receive times, connection and bytes, in order."""
    rec = Recorder(tmp_path / "s.lcr", {"scrip_master_csv": "x"}, max_bytes=1 << 20, max_files=2)
    frames = [(0, 1.5, b"\x02\x10" + bytes(14)), (1, 2.25, b"\x08" * 162)]
    for conn, ts, data in frames:
        rec(conn, ts, data)
    rec.close()
    meta, read = read_recording(tmp_path / "s.lcr")
    assert meta["scrip_master_csv"] == "x" and meta["format"] == 1
    assert [(f.connection, f.received_at, f.data) for f in read] == frames


def test_rotation_keeps_the_recording_bounded(tmp_path: Path) -> None:
    """Segments rotate at max_bytes and only the newest max_files are kept."""
    rec = Recorder(tmp_path / "r.lcr", {}, max_bytes=4096, max_files=3)
    for i in range(200):
        rec(0, float(i), bytes([i % 256]) * 162)
    rec.close()
    paths = segment_paths(tmp_path / "r.lcr")
    assert len(paths) == 3 and all(p.stat().st_size <= 4096 for p in paths)
    assert [p.name for p in paths] == [p.name for p in rec.segments]
    _, frames = read_recording(tmp_path / "r.lcr")
    times = [f.received_at for f in frames]
    assert times == sorted(times) and times[-1] == 199.0 and times[0] > 0  # oldest segments dropped


def test_truncated_tail_and_bad_files(tmp_path: Path) -> None:
    """A recorder killed mid-write loses only its last frame; a non-recording is refused."""
    rec = Recorder(tmp_path / "t.lcr", {}, max_bytes=1 << 20, max_files=1)
    rec(0, 1.0, b"a" * 50)
    rec(0, 2.0, b"b" * 50)
    rec.close()
    (path,) = rec.segments
    path.write_bytes(path.read_bytes()[:-10])
    _, frames = read_segment(path)
    assert [f.data for f in frames] == [b"a" * 50]
    bogus = tmp_path / "bogus.lcr"
    bogus.write_bytes(b"not a recording")
    with pytest.raises(RecordingError):
        read_segment(bogus)
    with pytest.raises(RecordingError):
        segment_paths(tmp_path / "missing.lcr")
    assert path.read_bytes().startswith(MAGIC)


def _state(cache: ChainCache) -> dict:
    return {key: tuple(getattr(leg, f) for f in LEG_FIELDS) for key, leg in cache.legs.items()}


async def test_replayed_session_gives_the_live_cache_state(tmp_path: Path) -> None:
    """A recorded live run, replayed through the Dhan client, ends in the same cache state."""
    base = tmp_path / "session.lcr"
    async with SimulatorServer(SimulatorConfig(**SIM)) as sim:
        async with running_service(settings_for(sim, record={"path": str(base)})) as live:
            await until(lambda: sim.market.steps >= 20)
            await quiesce(sim, live)
            expected = _state(live.cache)
            recorded = live.recorder.frames
    assert recorded == live.feed.connections[0].stats.frames
    settings = settings_for(None, feed={"kind": "replay"}, replay={"file": str(base), "speed": 0})
    async with running_service(settings) as replay:
        await asyncio.wait_for(replay.replay.finished.wait(), 10)
        await until(lambda: replay.feed.connections[0].stats.frames == replay.replay.frames_sent)
        await asyncio.sleep(0)
        assert replay.replay.frames_sent == recorded
        assert _state(replay.cache) == expected
