"""What the HTTP layer reads: a ``ChainSource`` of chain snapshots and their catalogue.

Two implementations serve the same handlers: ``CacheChains`` (the primary, over its
in-memory ``ChainCache``) and ``service.redis.replica.ReplicaStore`` (a read replica, over the state
it loaded from Redis). Both build bodies with ``service.core.snapshot.chain_snapshot``, so the same
chain state gives the same bytes and ETag whichever process answers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from service.core.cache import ChainCache
from service.core.freshness import Freshness
from service.core.snapshot import ChainSnapshot, render


@dataclass(frozen=True, slots=True)
class ExpiryInfo:
    expiry: dt.date
    lot_size: int
    strikes: int


@dataclass(frozen=True, slots=True)
class UnderlyingInfo:
    underlying: str
    security_id: int  # the underlying index's
    expiries: tuple[ExpiryInfo, ...]  # ascending


class ChainSource(Protocol):
    def expiries(self, underlying: str) -> Sequence[dt.date] | None:
        """The underlying's expiries, ascending; None when it is not served."""

    def nearest_expiry(self, underlying: str) -> dt.date | None:
        """The underlying's nearest expiry that has not ended; None when there is none (or no underlying)."""

    def snapshot(self, underlying: str, expiry: dt.date) -> ChainSnapshot | None:
        """The chain's current snapshot; None when there is no such chain."""

    def underlyings(self) -> list[UnderlyingInfo]:
        """Every underlying served, in a stable order."""

    @property
    def broker(self) -> str | None:
        """Whose feed the data comes from ("dhan", "kite"); None when unknown."""

    def readiness(self) -> dict[str, Any]:
        """Source-specific fields for ``/readyz`` (coverage for the primary, Redis for a replica)."""


_SERVED_MAX = 4096  # CacheChains._served: more chains than any instrument master lists


class CacheChains:
    """The primary's chains: snapshots rendered from the cache at most once per version."""

    def __init__(self, cache: ChainCache, freshness: Freshness) -> None:
        self.cache = cache
        self.freshness = freshness
        # Per chain, its last snapshot from here and what it was rendered from: (snapshot, the
        # chain's stale_legs and updated_at then, the instant until which its times hold). A
        # poller's request between changes returns it after one clock read and a few compares.
        self._served: dict[tuple[str, dt.date], tuple[ChainSnapshot, int, float | None, float]] = {}

    def expiries(self, underlying: str) -> Sequence[dt.date] | None:
        return self.cache.expiries.get(underlying)

    def nearest_expiry(self, underlying: str) -> dt.date | None:
        return self.freshness.nearest_expiry(self.cache.expiries.get(underlying, ()))

    def snapshot(self, underlying: str, expiry: dt.date) -> ChainSnapshot | None:
        key = (underlying, expiry)
        chain = self.cache.chains.get(key)
        if chain is None:
            return None
        served = self._served.get(key)
        if served is not None:
            snap, stale_legs, updated_at, until = served
            if (
                snap is chain.rendered
                and snap.version == chain.version
                and stale_legs == chain.stale_legs
                and updated_at == chain.updated_at
                and self.freshness.clock.time() < until
            ):
                return snap  # what render() would return: same version, same times
        times, until = self.freshness.times_until(chain.expiry, chain.stale_legs, chain.updated_at)
        snap = render(chain, times, self.cache.leg_rows)
        if len(self._served) >= _SERVED_MAX and key not in self._served:
            self._served.clear()  # chains roll in and out for ever: stay bounded
        self._served[key] = (snap, chain.stale_legs, chain.updated_at, until)
        return snap

    @property
    def broker(self) -> str | None:
        return self.cache.broker

    def underlyings(self) -> list[UnderlyingInfo]:
        cache = self.cache
        return [
            UnderlyingInfo(
                symbol,
                cache.index_keys[symbol][1],
                tuple(
                    ExpiryInfo(e, cache.chains[(symbol, e)].lot_size, len(cache.chains[(symbol, e)].rows))
                    for e in expiries
                ),
            )
            for symbol, expiries in cache.expiries.items()
        ]

    def readiness(self) -> dict[str, Any]:
        cache = self.cache
        return {"coverage": round(cache.coverage, 6), "instruments": cache.subscribed, "covered": cache.covered}
