"""The seam between a feed and the service: a feed source pushes ticks and events into a sink.

Every feed (the Dhan or Kite client, against the broker, the simulator or a replay) implements
``FeedSource``; the service implements ``FeedSink``. Calls into the sink are synchronous
and happen on the event loop, so the sink's owner can apply them without locks.

A broker that publishes a whole option chain over REST (Dhan, reference §6) can also be a
``ChainSeedSource``: the service seeds and reconciles its cache from it
(``service.analytics.rest_seed``). Kite has none, so with Kite nothing is seeded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeAlias

from feeds.connection import ConnectionStats
from feeds.model import ChainSkeleton, InstrumentKey, Tick


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

    # Optional: ``on_batch(batch: FullTickBatch) -> None``, Full ticks decoded together, column by
    # column (Dhan's batch path). A feed calls it where the sink has it and ``on_ticks(batch.ticks())``
    # where not; either way ticks reach the sink in arrival order per instrument.

    def on_event(self, event: FeedEvent) -> None:
        """A control event about a connection."""


class FeedConnection(Protocol):
    """One broker socket as the service sees it: an index, plain stats, what it subscribes."""

    index: int
    stats: ConnectionStats
    subscriptions: Mapping[Any, Any]  # one entry per subscription held on this socket


class FeedSource(Protocol):
    """A live feed as the service sees it, whatever the broker (``DhanFeed``, ``KiteFeed``).

    The service never imports a broker package except where it chooses the source
    (``service/feed_source.py``); everything else goes through this."""

    broker: str  # "dhan", "kite": named in /options/underlyings and in metrics
    packet_names: Mapping[type, str]  # packet class -> the name counted in metrics
    connections: Sequence[FeedConnection]
    is_market_open: Callable[[float], bool]

    @property
    def instruments(self) -> frozenset[InstrumentKey]:
        """Every instrument this source subscribes."""

    @property
    def unknown_instrument_packets(self) -> int:
        """Packets received for instruments not subscribed."""

    def check_capacity(self, skeleton: ChainSkeleton) -> None:
        """Raise SubscriptionError, with the numbers, if ``skeleton`` cannot fit the broker's limits."""

    async def update_skeleton(self, skeleton: ChainSkeleton) -> tuple[int, int]:
        """Subscribe ``skeleton``'s instruments on the live sockets, unsubscribing the rest;
        (added, removed)."""

    async def run(self, sink: FeedSink) -> None:
        """Stream into ``sink`` until cancelled; raise FatalFeedError when retrying cannot help."""


# --------------------------------------------------------------------------- chain seeding


class SeedGreeks(Protocol):
    @property
    def delta(self) -> float: ...
    @property
    def gamma(self) -> float: ...
    @property
    def theta(self) -> float: ...
    @property
    def vega(self) -> float: ...


class SeedQuote(Protocol):
    """What a broker's chain says about one leg (quantities in units, prices in rupees)."""

    @property
    def security_id(self) -> int | None: ...  # the leg's instrument id, when the broker sends it
    @property
    def oi(self) -> int | None: ...
    @property
    def previous_close(self) -> float | None: ...
    @property
    def previous_oi(self) -> int | None: ...
    @property
    def implied_volatility(self) -> float | None: ...  # percent; None: no IV and no greeks
    @property
    def greeks(self) -> SeedGreeks | None: ...


class SeedStrike(Protocol):
    @property
    def strike(self) -> float: ...
    @property
    def ce(self) -> SeedQuote | None: ...
    @property
    def pe(self) -> SeedQuote | None: ...


class SeedChain(Protocol):
    @property
    def strikes(self) -> Sequence[SeedStrike]: ...


class ChainSeedSource(Protocol):
    """A broker's REST option chain, as the seeder sees it (an async context manager).

    Every request is bounded (rate limit, timeout, bounded retries) by the implementation; a
    failure raises ``feeds.errors.RestError`` (``RestAuthError`` for refused credentials)."""

    name: str  # whose chain, in logs: "Dhan"
    stats: Any  # request counters for metrics: requests, retries, failures, rate_limited

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def expiry_list(self, index: InstrumentKey) -> Sequence[dt.date]:
        """The expiries the broker lists for the underlying whose index is ``index``."""

    async def option_chain(self, index: InstrumentKey, expiry: dt.date) -> SeedChain:
        """The whole chain of one expiry."""
