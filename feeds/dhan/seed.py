"""Dhan's REST option chain as a ``feeds.source.ChainSeedSource`` (what the service seeds from).

A thin adapter over ``feeds.dhan.rest.OptionChainClient``: the seeder names an underlying by
its index's instrument key, Dhan's API by security id and segment name. Dhan's
``OptionChain`` already has the shape ``feeds.source.SeedChain`` describes, so it is handed
over as it is.
"""

from __future__ import annotations

import datetime as dt
from types import TracebackType

from feeds.dhan.option_chain import OptionChain
from feeds.dhan.rest import OptionChainClient, RestStats
from feeds.model import InstrumentKey, Segment


class DhanChainSeed:
    name = "Dhan"

    def __init__(self, client: OptionChainClient) -> None:
        self.client = client

    @property
    def stats(self) -> RestStats:
        return self.client.stats

    async def __aenter__(self) -> DhanChainSeed:
        await self.client.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.client.__aexit__(exc_type, exc, tb)

    async def expiry_list(self, index: InstrumentKey) -> list[dt.date]:
        segment, security_id = index
        return await self.client.expiry_list(security_id, Segment(segment).name)

    async def option_chain(self, index: InstrumentKey, expiry: dt.date) -> OptionChain:
        segment, security_id = index
        return await self.client.option_chain(security_id, Segment(segment).name, expiry)
