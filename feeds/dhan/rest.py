"""Dhan's option-chain REST client: the only code in ``feeds/dhan`` that makes HTTP calls.

Requests and responses are ``feeds.dhan.option_chain`` (sans-I/O); this module adds what
needs a socket and a clock:

* headers ``access-token`` and ``client-id`` (reference §6.1), the token read again for every
  request so a rotated one is used; neither is ever logged nor put in an error message;
* Dhan's limit of one request per *unique* request every 3 s (§6.4): a shared
  ``UniqueRequestLimiter`` keyed by (underlying, segment, expiry) — and (underlying, segment)
  for the expiry list, which is under the same limit — spaces every attempt, retries included;
* bounded retries: rate limiting (805, DH-904, HTTP 429), server errors, network errors and
  unreadable bodies are retried ``max_attempts`` times in all with full-jitter exponential
  backoff (never sooner than a ``Retry-After``); credentials and bad requests fail at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import aiohttp

from feeds.dhan.client import Credentials, backoff_delay
from feeds.dhan.option_chain import (
    EXPIRY_LIST_PATH,
    OPTION_CHAIN_PATH,
    OptionChain,
    expiry_list_request,
    option_chain_request,
    parse_expiry_list,
    parse_option_chain,
)
from feeds.errors import RestError, RestServerError

log = logging.getLogger(__name__)

DHAN_REST_URL = "https://api.dhan.co/v2"
DHAN_UNIQUE_REQUEST_INTERVAL_S = 3.0  # §6.4

T = TypeVar("T")


class UniqueRequestLimiter:
    """At most one request per key every ``interval_s``; requests with other keys do not wait.

    Callers of the same key queue on a lock, so concurrent requests for one chain go out one
    at a time, ``interval_s`` apart (measured from when each was let through).
    """

    def __init__(self, interval_s: float = DHAN_UNIQUE_REQUEST_INTERVAL_S, *,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        if interval_s < 0:
            raise ValueError("interval_s must be >= 0")
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self.waits = 0  # requests that had to wait their turn

    async def wait(self, key: Hashable) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            last = self._last.get(key)
            if last is not None:
                delay = last + self.interval_s - self._clock()
                if delay > 0:
                    self.waits += 1
                    await asyncio.sleep(delay)
            self._last[key] = self._clock()


@dataclass(slots=True)
class RestStats:
    requests: int = 0  # HTTP requests sent (attempts)
    retries: int = 0
    rate_limited: int = 0  # responses that said "too many requests"
    failures: int = 0  # calls given up (after their retries, or at once when not retryable)


class OptionChainClient:
    """``async with OptionChainClient(base_url, credentials) as client:``, then ``expiry_list``
    and ``option_chain``. Share one ``limiter`` between every client of one Dhan account."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        limiter: UniqueRequestLimiter | None = None,
        timeout_s: float = 10.0,
        max_attempts: int = 4,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.base_url = base_url.rstrip("/")
        self._credentials = credentials
        self.limiter = limiter if limiter is not None else UniqueRequestLimiter()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_attempts = max_attempts
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self.stats = RestStats()

    async def __aenter__(self) -> OptionChainClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def expiry_list(self, security_id: int, segment: str) -> list[dt.date]:
        """The underlying's expiries, ascending (``POST /optionchain/expirylist``)."""
        return await self._call(
            EXPIRY_LIST_PATH, ("expirylist", security_id, segment), expiry_list_request(security_id, segment),
            parse_expiry_list,
        )

    async def option_chain(self, security_id: int, segment: str, expiry: dt.date) -> OptionChain:
        """One expiry's chain (``POST /optionchain``)."""
        return await self._call(
            OPTION_CHAIN_PATH, ("optionchain", security_id, segment, expiry),
            option_chain_request(security_id, segment, expiry), parse_option_chain,
        )

    async def _call(self, path: str, key: Hashable, body: bytes, parse: Callable[..., T]) -> T:
        stats = self.stats
        for attempt in range(1, self._max_attempts + 1):
            await self.limiter.wait(key)
            try:
                status, raw, retry_after = await self._post(path, body)
                return parse(status, raw, retry_after_s=retry_after)
            except RestError as exc:
                if exc.code == "805" or exc.code == "DH-904" or exc.status == 429:
                    stats.rate_limited += 1
                if not exc.retryable or attempt == self._max_attempts:
                    stats.failures += 1
                    raise
                delay = max(backoff_delay(attempt - 1, *self._backoff, self._rng), exc.retry_after_s)
                stats.retries += 1
                log.info("option chain %s: %s; retry %d/%d in %.1fs", path, exc, attempt, self._max_attempts - 1,
                         delay)  # fmt: skip
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, path: str, body: bytes) -> tuple[int, bytes, float]:
        session = self._session
        if session is None:
            raise RuntimeError("OptionChainClient used outside 'async with'")
        creds = self._credentials
        headers = {
            "access-token": creds.access_token(),
            "client-id": creds.client_id,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.stats.requests += 1
        try:
            async with session.post(self.base_url + path, data=body, headers=headers) as resp:
                raw = await resp.read()
                return resp.status, raw, _retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # Connection-level errors quote the host at most; the credentials are only in headers.
            raise RestServerError(f"{path}: {type(exc).__name__}: {str(exc)[:200]}") from exc


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0
