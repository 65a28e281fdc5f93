"""The seam between a feed and the service: a feed source pushes ticks and events into a sink.

Every feed (the Dhan client against Dhan or the simulator, a replay later) implements
``FeedSource``; the service implements ``FeedSink``. Calls into the sink are synchronous
and happen on the event loop, so the sink's owner can apply them without locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from feeds.model import InstrumentKey, Tick


@dataclass(frozen=True, slots=True)
class ConnectionUp:
    """A connection is open and its whole subscription set has been sent."""

    connection: int
    instruments: tuple[InstrumentKey, ...]
    reconnect: bool  # False on the first successful connect of this connection


@dataclass(frozen=True, slots=True)
class ConnectionDown:
    """A connection was lost; its instruments get no data until it is back."""

    connection: int
    instruments: tuple[InstrumentKey, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class ServerDisconnect:
    """The broker sent a disconnect packet (Dhan code 50) with this reason code."""

    connection: int
    reason_code: int
    description: str


FeedEvent: TypeAlias = ConnectionUp | ConnectionDown | ServerDisconnect


class FeedSink(Protocol):
    def on_ticks(self, ticks: Sequence[Tick]) -> None:
        """A batch of normalised ticks, in arrival order."""

    def on_event(self, event: FeedEvent) -> None:
        """A control event about a connection."""


class FeedSource(Protocol):
    @property
    def instruments(self) -> frozenset[InstrumentKey]:
        """Every instrument this source subscribes."""

    async def run(self, sink: FeedSink) -> None:
        """Stream into ``sink`` until cancelled; raise FatalFeedError when retrying cannot help."""
