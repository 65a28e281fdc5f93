"""Building history for a process: the primary's store (resumed from Redis), a replica's reader."""

from __future__ import annotations

import logging

from feeds.clock import SYSTEM_CLOCK, Clock
from service.history.model import compress
from service.history.store import HistoryStore, RedisHistory
from service.redis.client import REDIS_ERRORS, close_client, describe, make_client, masked_url
from service.settings import Settings

log = logging.getLogger(__name__)


def _archive(settings: Settings):  # noqa: ANN202
    h = settings.history
    if not h.parquet:
        return None
    from service.history.parquet import ParquetArchive

    return ParquetArchive(h.path)


async def open_store(settings: Settings, clock: Clock = SYSTEM_CLOCK) -> HistoryStore | None:
    """The primary's history store (None with ``history.enabled = false``), with the days Redis
    holds loaded first (a restart resumes the day). Redis unavailable: an empty start, said once."""
    h = settings.history
    if not h.enabled:
        return None
    archive = _archive(settings)
    compress(b"")  # loads pyarrow's codec now, not at the first sample on the event loop
    store = HistoryStore(interval_s=h.interval_s, max_query_days=h.max_query_days, keep_days=h.redis_keep_days,
                         clock=clock, archive=archive, parquet=h.parquet)  # fmt: skip
    if settings.redis.enabled is not False:
        client = make_client(settings.redis, name="livechain-history")
        try:
            n = await store.resume(client, settings.redis.timeout_s + settings.redis.connect_timeout_s)
            if n:
                log.info("history: %d samples resumed from Redis", n)
        except (TimeoutError, *REDIS_ERRORS) as exc:
            log.warning("history: nothing resumed from Redis at %s (%s); starting the day blank",
                        masked_url(settings.redis.url.get_secret_value()), describe(exc))  # fmt: skip
        finally:
            await close_client(client, settings.redis.timeout_s, "history resume")
    store.redis.ready = True
    if archive is not None:
        log.info("history: sampling every %gs; days written to %s", h.interval_s, archive.root)
    return store


def open_replica_history(settings: Settings, clock: Clock = SYSTEM_CLOCK) -> tuple[RedisHistory, object] | None:
    """A replica's history (and its Redis client, to close) read from the primary's Redis keys."""
    h = settings.history
    if not h.enabled:
        return None
    client = make_client(settings.redis, name="livechain-replica-history")
    return RedisHistory(client, interval_s=h.interval_s, max_query_days=h.max_query_days, clock=clock,
                        archive=_archive(settings), timeout_s=settings.redis.timeout_s), client  # fmt: skip
