"""Connecting to Redis: one client factory, the errors that mean "Redis unavailable", backoff.

The client does no retrying of its own (``Retry(NoBackoff(), 0)``): the mirror and the
replica each own one loop that backs off with redis-py's ``FullJitterBackoff``
(exponential, full jitter, capped) and then rebuilds its state, so a command never hides an outage
behind silent retries. The URL may carry a password: only ``masked_url`` is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import FullJitterBackoff, NoBackoff
from redis.exceptions import RedisError

from service.settings import RedisSettings

# What an unreachable, restarting or misbehaving Redis raises through redis.asyncio
# (builtin TimeoutError and ConnectionError are both OSErrors).
log = logging.getLogger(__name__)

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)


def masked_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs and /readyz."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def describe(exc: BaseException) -> str:
    """A one-line reason for logs. redis-py messages name host:port, never the password."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def make_client(settings: RedisSettings, *, name: str, extra_read_timeout_s: float = 0.0) -> Redis:
    """A client for ``settings.url`` (redis://, rediss:// with TLS, unix://), no hidden retries.

    ``extra_read_timeout_s`` lengthens the socket timeout for a caller that blocks on
    purpose (a replica's XREAD BLOCK), so a quiet stream is not taken for a dead socket.
    """
    return Redis.from_url(
        settings.url.get_secret_value(),
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.timeout_s + extra_read_timeout_s,
        retry=Retry(NoBackoff(), 0),
        client_name=name,
    )


class Backoff:
    """Delay after the n-th consecutive failure: uniform in [0, min(max, initial * 2**n)]."""

    def __init__(self, settings: RedisSettings) -> None:
        self._policy = FullJitterBackoff(cap=settings.reconnect_max_s, base=settings.reconnect_initial_s)

    def delay(self, failures: int) -> float:
        # The exponent is capped so that a days-long outage cannot overflow 2**n into a float.
        return self._policy.compute(min(failures, 32))


async def close_client(client: Redis, timeout_s: float, what: str) -> None:
    """Close ``client`` within ``timeout_s``: shutdown must not wait on a peer that is gone."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.aclose()
    except (TimeoutError, *REDIS_ERRORS) as exc:
        log.warning("%s: Redis connection not closed cleanly (%s)", what, type(exc).__name__)
