"""Feed events → cache: the cache's one owner, and the keeper of the readiness gate.

``Ingest`` is the ``FeedSink`` every feed source pushes into. ``on_ticks`` (and ``on_batch``,
for Full ticks decoded together) applies a batch synchronously; the only per-batch extra work is one comparison for the gate while warming
and, with metrics on, one clock read and one histogram observation of the batch's
receive-to-applied latency (never anything per tick).
Connection events mark instruments stale and move the lifecycle between ready and degraded.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Protocol

from feeds.clock import SYSTEM_CLOCK, Clock
from feeds.model import FullTickBatch, Tick
from feeds.source import ConnectionDown, ConnectionUp, FeedEvent, ServerDisconnect
from service.core.cache import ChainCache
from service.core.lifecycle import Lifecycle, Phase

log = logging.getLogger(__name__)


class Observer(Protocol):
    def observe(self, value: float) -> None: ...


class Ingest:
    def __init__(
        self,
        cache: ChainCache,
        lifecycle: Lifecycle,
        *,
        min_coverage: float,
        connections: int,
        latency: Observer | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.cache = cache
        self.latency = latency  # receive-to-applied seconds, observed once per batch
        self._now = clock.time  # the feed stamps received_at with the same clock
        self.lifecycle = lifecycle
        self.gate = asyncio.Event()
        # Integer target so the per-batch check is one int comparison.
        self._target = max(1, math.ceil(min_coverage * cache.subscribed - 1e-9))
        self._connections = connections
        self._down: set[int] = set()
        self.batches = 0
        self.ticks = 0
        self.server_disconnects: dict[int, int] = {}

    @property
    def coverage_target(self) -> int:
        return self._target

    def on_ticks(self, ticks: Sequence[Tick]) -> None:
        self.cache.apply(ticks)
        self.batches += 1
        self.ticks += len(ticks)
        if self.latency is not None and ticks:
            # The oldest tick of the batch: its wait is the batch's worst.
            self.latency.observe(self._now() - ticks[0].received_at)
        if not self.gate.is_set() and self.cache.covered >= self._target:
            self.gate.set()

    def on_batch(self, batch: FullTickBatch) -> None:
        """Full ticks decoded together (``FeedSink.on_batch``): the same as ``on_ticks(batch.ticks())``."""
        self.cache.apply_batch(batch)
        self.batches += 1
        self.ticks += len(batch)
        if self.latency is not None and len(batch):
            self.latency.observe(self._now() - batch.received_at)
        if not self.gate.is_set() and self.cache.covered >= self._target:
            self.gate.set()

    def on_event(self, event: FeedEvent) -> None:
        if isinstance(event, ConnectionDown):
            self._down.add(event.connection)
            marked = self.cache.mark_stale(event.instruments)
            log.warning(
                "feed connection %d down (%s): %d instruments marked stale", event.connection, event.reason, marked
            )
            if self.lifecycle.phase is Phase.READY:
                self.lifecycle.to(Phase.DEGRADED, f"feed connection {event.connection} down: {event.reason}")
        elif isinstance(event, ConnectionUp):
            self._down.discard(event.connection)
            if self.lifecycle.phase is Phase.DEGRADED and not self._down:
                self.lifecycle.to(Phase.READY, "all feed connections up")
        elif isinstance(event, ServerDisconnect):
            self.server_disconnects[event.reason_code] = self.server_disconnects.get(event.reason_code, 0) + 1
            log.warning(
                "broker disconnected feed connection %d: %d %s",
                event.connection, event.reason_code, event.description,
            )
