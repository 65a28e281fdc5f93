"""Scenario "ingest": frames over a real loopback WebSocket into the cache, vs a bare receiver.

Two processes, as in production (the broker is not the service): a feed server
(``bench.roles.feed.FeedServer``) and a client process (``bench.roles.receivers``). The
universe is NIFTY, BANKNIFTY and FINNIFTY, 3 expiries, 161 strikes each (2,901 instruments,
one connection). On a client's first subscription message the server hands every frame to
the socket at once: Full packets (162 B), one per frame as Dhan sends, pre-framed, so the
server costs almost nothing and the client is what is measured.

Contestants, timed from their first frame to their last (handshake and subscription apart):

* ``ours``: ``DhanFeed`` → ``Ingest`` → ``ChainCache`` (receive, batch, decode, normalise,
  apply, the ingest-latency histogram), done when every tick is applied.
* ``bare aiohttp``: aiohttp's WebSocket client (the one ours is built on, same options) doing
  nothing but ``async for`` and counting. The headline: ours ≥ 0.6x of it (issue 16), i.e. all
  our work per frame costs at most two thirds of one bare receive.
* ``bare websockets``: the same with the websockets library; informational (ours against it,
  and how much the choice of library alone is worth).
"""

from __future__ import annotations

from collections.abc import Callable

from bench.model import Budget, Row, Scenario
from bench.timing import interleave
from bench.worker import Worker

NAME = "ingest"
TARGET = 0.6  # ours vs bare aiohttp receive (issue 16)
UNIVERSE = {"underlyings": ["NIFTY", "BANKNIFTY", "FINNIFTY"], "expiries": 3, "strikes_per_side": 80,
            "today": "2026-11-23"}  # fmt: skip


def run(budget: Budget) -> list[Row]:
    frames = 20_000 if budget.quick else 150_000
    with (
        Worker("bench.roles.feed:FeedServer", blast_frames=frames, **UNIVERSE) as server,
        Worker("bench.roles.receivers:IngestClients", port=server.info["port"], **UNIVERSE) as client,
    ):
        for method in ("ours", "bare_websockets", "bare_aiohttp"):  # warm-up: imports, first connections
            client.call(method, frames)
        rates = interleave({m: _run(client, m, frames) for m in ("ours", "bare_websockets", "bare_aiohttp")},
                           budget.rounds)  # fmt: skip
    instruments = server.info["instruments"]
    note = (
        f"{frames:,} frames of {server.info['frame_bytes']} B (one Full packet each) per run, {instruments:,} "
        "instruments; server and client in separate processes; first frame → last frame (ours: → last tick applied)"
    )
    return [
        Row.compare(NAME, "ours vs bare aiohttp receive", rates["ours"], rates["bare_aiohttp"], unit="frames/s",
                    baseline_name="bare aiohttp WebSocket client (async for, count)", target=TARGET, note=note),
        Row.compare(NAME, "ours vs bare websockets receive", rates["ours"], rates["bare_websockets"],
                    unit="frames/s", baseline_name="bare websockets client (async for, count)"),
        Row.compare(NAME, "bare aiohttp vs bare websockets receive", rates["bare_aiohttp"],
                    rates["bare_websockets"], unit="frames/s",
                    baseline_name="bare websockets client (async for, count)"),
    ]  # fmt: skip


def _run(client: Worker, method: str, frames: int) -> Callable[[], float]:
    return lambda: float(client.call(method, frames))


SCENARIO = Scenario(NAME, "loopback WebSocket → DhanFeed → Ingest → cache, vs a bare websockets receiver", run)
