"""Ingest flat out: ticks applied to a cache back to back, yielding to the loop after each batch,
so a background task (the Redis mirror, the analytics runner) gets its share as in production."""

from __future__ import annotations

import asyncio
import time

from feeds.model import Tick
from service.core.cache import ChainCache

INGEST_BATCH = 250


async def flat_out(cache: ChainCache, ticks: list[Tick], seconds: float) -> float:
    """Ticks per second applied to ``cache`` over ``seconds``, cycling through ``ticks``."""
    batches = [ticks[i : i + INGEST_BATCH] for i in range(0, len(ticks), INGEST_BATCH)]
    applied = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for batch in batches:
            cache.apply(batch)
            applied += len(batch)
            await asyncio.sleep(0)
    return applied / (time.perf_counter() - start)
