"""A Server-Sent Events reader for tests, and the client-side rule for applying deltas."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from tests.helpers import UNIT_S


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    id: str | None
    data: bytes

    def json(self) -> dict[str, Any]:
        return orjson.loads(self.data)


class SseReader:
    """Events from an ``text/event-stream`` body (any object with ``readline()``); comments counted."""

    def __init__(self, content: Any) -> None:
        self._content = content
        self.comments = 0

    async def next(self, timeout_s: float = 2 * UNIT_S) -> Event:
        kind, ident, data = "message", None, []
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self._content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.rstrip(b"\r\n")
                if not line:
                    if data:
                        return Event(kind, ident, b"\n".join(data))
                    continue
                if line.startswith(b":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(b":")
                value = value.removeprefix(b" ")
                if name == b"event":
                    kind = value.decode()
                elif name == b"id":
                    ident = value.decode()
                elif name == b"data":
                    data.append(value)


def apply(state: dict[str, Any], delta: dict[str, Any]) -> None:
    """What a client does with a delta: set each chain-level field, replace each named leg."""
    legs = delta.pop("legs")
    state.update(delta)
    rows = {row["strike"]: row for row in state["strikes"]}
    for key, leg in legs.items():
        strike, _, side = key.rpartition(":")
        rows[float(strike)][side.lower()] = leg


class Follower:
    """One stream's client state: the snapshot, then every delta applied in order."""

    def __init__(self, reader: SseReader) -> None:
        self.reader = reader
        self.state: dict[str, Any] | None = None
        self.last_id: str | None = None
        self.events: list[Event] = []

    async def step(self, timeout_s: float = 2 * UNIT_S) -> Event:
        ev = await self.reader.next(timeout_s)
        self.events.append(ev)
        if ev.kind == "snapshot":
            self.state = ev.json()
        elif ev.kind == "delta":
            assert self.state is not None, "a delta before any snapshot"
            apply(self.state, ev.json())
        self.last_id = ev.id
        return ev

    async def until_version(self, version: int, timeout_s: float = 2 * UNIT_S) -> None:
        async with asyncio.timeout(timeout_s):
            while self.last_id is None or int(self.last_id) < version:
                await self.step()


async def open_stream(
    http: aiohttp.ClientSession, port: int, *, headers: dict[str, str] | None = None, **params: str
) -> aiohttp.ClientResponse:
    return await http.get(f"http://127.0.0.1:{port}/options/stream", params=params, headers=headers or {})
