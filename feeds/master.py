"""Reading an instrument master from a path or an http(s) URL, for any broker's loader.

``InstrumentMaster`` is how one broker's master is loaded (and, for a day's cached copy,
fetched and parsed apart); ``service.feed_source`` picks the broker's, and the service's
cache (``service.scrip_cache``) sees only this.

A URL may carry a token in its query string: errors and logs show it without credentials,
query or fragment, and errors whose text quotes the URL are not chained.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
from yarl import URL

from feeds.errors import InstrumentMasterError
from feeds.model import ChainSkeleton

class LoadMaster(Protocol):
    def __call__(self, source: str, underlyings: Sequence[str], *, timeout_s: float) -> Awaitable[ChainSkeleton]: ...


class FetchMaster(Protocol):
    def __call__(self, source: str, *, timeout_s: float) -> Awaitable[bytes]: ...


class ParseMaster(Protocol):
    def __call__(self, body: bytes, underlyings: Sequence[str], *, shown: str) -> Awaitable[ChainSkeleton]: ...


@dataclass(frozen=True, slots=True)
class InstrumentMaster:
    """One broker's instrument master: ``load`` a path or URL into the chain skeleton; ``fetch``
    and ``parse`` are the same in two steps, so the body can be kept as a day's copy (None: the
    master is always read as it is)."""

    name: str  # in messages: "scrip master", "instruments CSV"
    load: LoadMaster
    fetch: FetchMaster | None = None
    parse: ParseMaster | None = None


# aiohttp puts the full URL, query included, into the text of these errors.
_URL_BEARING_ERRORS = (aiohttp.ClientResponseError, aiohttp.InvalidURL)


def is_url(source: str) -> bool:
    return source[:8].lower().startswith(("http://", "https://"))


def shown_source(source: str) -> str:
    """The source as it may be logged: a URL without credentials, query or fragment."""
    if not is_url(source):
        return source
    return str(URL(source).with_user(None).with_query(None).with_fragment(None))


async def fetch_source(source: str, timeout_s: float, *, what: str = "instrument master") -> bytes:
    """The bytes of a file or of an http(s) URL; ``InstrumentMasterError`` naming the cause."""
    if not is_url(source):
        try:
            return await asyncio.to_thread(Path(source).read_bytes)
        except OSError as exc:
            raise InstrumentMasterError(f"cannot read {what} {source}: {exc.strerror or exc}") from exc
    url = URL(source)
    shown = shown_source(source)
    if not url.host:
        raise InstrumentMasterError(f"{what} URL has no host: {shown}")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(url) as resp:
                if resp.status != 200:
                    raise InstrumentMasterError(f"{what} {shown}: HTTP {resp.status} {resp.reason or ''}".rstrip())
                return await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        cause = type(exc).__name__ + (f" after {timeout_s:g} s" if isinstance(exc, TimeoutError) else "")
        if isinstance(exc, _URL_BEARING_ERRORS):
            raise InstrumentMasterError(f"cannot fetch {what} {shown}: {cause}") from None
        raise InstrumentMasterError(f"cannot fetch {what} {shown}: {cause} {exc}".rstrip()) from exc
