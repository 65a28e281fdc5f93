"""A broker's REST option chain into the cache: seeded at start, reconciled every ``reconcile_s``.

The chain comes from a ``feeds.source.ChainSeedSource`` that ``service.feed_source`` builds for
the broker (Dhan's option-chain API, below); Kite publishes none, so with Kite nothing is seeded.

The WebSocket feed carries prices, OI and depth but no IV or greeks; the REST chain
(reference §6) has Dhan's own IV and greeks and the previous session's close and OI. At
start, while the feed warms up, ``RestSeeder`` fetches each served underlying's expiry list,
then each served chain, and hands what they say to the cache's owner method ``seed``: OI,
previous close and previous OI where the feed has not sent them yet (live data always wins),
and Dhan's IV/greeks, which ``service.analytics.compute`` shows for legs we cannot price ourselves yet
(``iv_source`` "dhan"). Then it does it again every ``analytics.reconcile_s``.

It never blocks startup or serving: it runs in its own task, every request is bounded
(the source's own rate limit, timeout, bounded retries), and a failure is a warning —
the service carries on live-only and tries again at the next reconcile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from feeds.errors import RestAuthError, RestError
from feeds.source import ChainSeedSource, SeedChain, SeedQuote
from service.analytics.compute import DhanGreeks
from service.core.cache import Chain, ChainCache, LegSeed
from service.tasks import Child, Supervisor

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SeedStats:
    passes: int = 0  # reconcile passes completed
    chains_seeded: int = 0
    legs_changed: int = 0
    failures: int = 0  # requests given up (after their retries)
    mismatched: int = 0  # legs whose security id in Dhan's chain is not ours (skipped)
    last_error: str | None = None


def dhan_greeks(quote: SeedQuote) -> DhanGreeks | None:
    g, iv = quote.greeks, quote.implied_volatility
    if g is None or iv is None:
        return None
    return DhanGreeks(iv=iv, delta=g.delta, gamma=g.gamma, theta=g.theta, vega=g.vega)


def seeds_for(chain: Chain, oc: SeedChain, stats: SeedStats | None = None) -> Iterator[LegSeed]:
    """What the broker's chain says about each of our legs, matched by strike and side (and checked
    against Dhan's security id when it sends one, API v2.5+)."""
    by_strike = {round(row.strike, 4): row for row in oc.strikes}
    for strike, ce, pe in chain.rows:
        row = by_strike.get(round(strike, 4))
        if row is None:
            continue
        for leg, quote in ((ce, row.ce), (pe, row.pe)):
            if leg is None or quote is None:
                continue
            if quote.security_id is not None and quote.security_id != leg.key[1]:
                if stats is not None:
                    stats.mismatched += 1
                continue
            yield LegSeed(leg.key, quote.oi, quote.previous_close, quote.previous_oi, dhan_greeks(quote))


class RestSeeder:
    """Seeds and reconciles the cache from a broker's REST chain in its own task (async context manager).

    The task (``rest-seed``) runs under ``supervisor`` (a private one if None), which restarts
    it after a crash; a failed pass is this loop's own to report, and it tries again later.
    """

    def __init__(
        self, cache: ChainCache, client: ChainSeedSource, reconcile_s: float, *, supervisor: Supervisor | None = None
    ) -> None:
        self._cache = cache
        self.client = client
        self._reconcile_s = reconcile_s
        self._supervisor = supervisor
        self._child: Child | None = None
        self._missing_warned: set[tuple[str, object]] = set()
        self.stats = SeedStats()
        self.seeded = asyncio.Event()  # set after the first pass that seeded at least one chain

    async def __aenter__(self) -> RestSeeder:
        await self.client.__aenter__()
        self._child = (self._supervisor or Supervisor()).spawn("rest-seed", self._run)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._child is not None:
            await self._child.stop()
        await self.client.__aexit__(exc_type, exc, tb)

    async def _run(self) -> None:
        first = True
        while True:
            try:
                await self.reconcile(first=first)
            except RestAuthError as exc:
                self._failed(exc)
                log.warning(
                    "%s's option-chain API refused our credentials (%s): analytics carry on from the live feed "
                    "alone; trying again in %gs", self.client.name, exc, self._reconcile_s,
                )  # fmt: skip
            except Exception:  # a bug: the service carries on without REST data
                log.exception("option chain seeding failed unexpectedly; trying again in %gs", self._reconcile_s)
            first = False
            await asyncio.sleep(self._reconcile_s)

    def _failed(self, exc: RestError) -> None:
        self.stats.failures += 1
        self.stats.last_error = str(exc)

    async def reconcile(self, *, first: bool = False) -> int:
        """One pass over every served chain; returns how many chains were seeded."""
        cache, client = self._cache, self.client
        seeded = 0
        for symbol, index in list(cache.index_keys.items()):
            try:
                listed = set(await client.expiry_list(index))
            except RestAuthError:
                raise
            except RestError as exc:
                self._failed(exc)
                log.warning("option chain expiry list of %s unavailable (%s): %s stays live-only until the next "
                            "reconcile", symbol, exc, symbol)  # fmt: skip
                continue
            for expiry in list(cache.expiries.get(symbol, ())):
                if expiry not in listed:
                    if (symbol, expiry) not in self._missing_warned:
                        self._missing_warned.add((symbol, expiry))
                        log.warning("%s's expiry list for %s does not include %s: that chain is not seeded",
                                    client.name, symbol, expiry)  # fmt: skip
                    continue
                try:
                    oc = await client.option_chain(index, expiry)
                except RestAuthError:
                    raise
                except RestError as exc:
                    self._failed(exc)
                    log.warning("option chain %s %s unavailable (%s); trying again at the next reconcile",
                                symbol, expiry, exc)  # fmt: skip
                    continue
                chain = cache.chains.get((symbol, expiry))
                if chain is None:  # rolled away while we waited
                    continue
                changed = cache.seed(seeds_for(chain, oc, self.stats))
                seeded += 1
                self.stats.chains_seeded += 1
                self.stats.legs_changed += changed
                log.log(
                    logging.INFO if first else logging.DEBUG,
                    "option chain %s %s %s from %s's REST API: %d strikes, %d legs changed",
                    symbol, expiry, "seeded" if first else "reconciled", client.name, len(oc.strikes), changed,
                )  # fmt: skip
        self.stats.passes += 1
        if seeded:
            self.seeded.set()
        return seeded
