"""Reading an instrument master from a path or an http(s) URL, and building the chain skeleton
from its rows, for any broker's loader (``feeds.dhan.instruments``, ``feeds.kite.instruments``).

``InstrumentMaster`` is how one broker's master is loaded (and, for a day's cached copy,
fetched and parsed apart); ``service.feed_source`` picks the broker's, and the service's
cache (``service.scrip_cache``) sees only this.

A URL may carry a token in its query string: errors and logs show it without credentials,
query or fragment, and errors whose text quotes the URL are not chained.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
from yarl import URL

from feeds.errors import InstrumentMasterError
from feeds.model import ChainSkeleton, ExpiryChain, InstrumentKey, OptionContract, OptionType, StrikeRow, UnderlyingChain

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


# --------------------------------------------------------------------------- building the skeleton


class BadRow(ValueError):
    """A row of a configured underlying that cannot be used; its message is the sample text."""


def header_columns(header: list[str], required: Sequence[str], what: str) -> dict[str, int]:
    """Column positions by header name (order and extra columns vary between files); an
    ``InstrumentMasterError`` naming the ``required`` columns that are missing."""
    names: dict[str, int] = {}
    for i, name in enumerate(header):
        # lstrip drops a UTF-8 byte-order mark, which str.strip() keeps; first column wins.
        names.setdefault(name.lstrip("\ufeff").strip(), i)
    missing = [c for c in required if c not in names]
    if missing:
        raise InstrumentMasterError(f"{what} lacks required column(s): {', '.join(missing)}")
    return names


def underlying_symbols(underlyings: Sequence[str]) -> list[str]:
    """The configured underlyings, upper-cased and de-duplicated; fails on none or a blank one."""
    if isinstance(underlyings, str):
        # A bare "NIFTY" would otherwise be read as the symbols N, I, F, T, Y.
        raise TypeError("underlyings must be a sequence of symbols, not a string")
    symbols = list(dict.fromkeys(s.strip().upper() for s in underlyings))
    if not symbols or "" in symbols:
        raise InstrumentMasterError(f"no usable underlying symbols configured: {list(underlyings)!r}")
    return symbols


def positive_number(value: str, column: str, show: Callable[[str], str] = repr) -> float:
    """``value`` as a finite number above zero, else a ``BadRow`` naming ``column`` and the value
    as ``show`` quotes it (a broker's loader shortens long values its own way)."""
    try:
        number = float(value)
    except ValueError:
        raise BadRow(f"bad {column} {show(value)}") from None
    # float() accepts "nan" and "inf"; neither is a price, a lot or a tick.
    if not math.isfinite(number) or number <= 0:
        raise BadRow(f"bad {column} {show(value)}")
    return number


Slots = dict[tuple[dt.date, float, OptionType], OptionContract]  # one underlying's contracts by (expiry, strike, side)


def place_contract(slots: Slots, contract: OptionContract, ids: str) -> None:
    """File ``contract`` by (expiry, strike, side): two contracts there cannot both be real, so a
    second one is a ``BadRow`` naming both (``ids``: what the broker calls its ids) and the first is kept."""
    slot = (contract.expiry, contract.strike, contract.option_type)
    first = slots.get(slot)
    if first is not None:
        raise BadRow(
            f"{contract.option_type} {contract.strike:g} {contract.expiry} listed twice"
            f" ({ids} {first.key[1]}, {contract.key[1]}); keeping {first.key[1]}"
        )
    slots[slot] = contract


def build_chain(symbol: str, index: InstrumentKey, tick_size: float, contracts: Iterable[OptionContract]) -> UnderlyingChain:
    """One underlying's chain: its contracts as strike rows, per expiry in date order."""
    by_expiry: dict[dt.date, dict[float, dict[OptionType, OptionContract]]] = {}
    for c in contracts:
        by_expiry.setdefault(c.expiry, {}).setdefault(c.strike, {})[c.option_type] = c
    expiries = []
    for expiry in sorted(by_expiry):
        strikes = by_expiry[expiry]
        rows = tuple(
            StrikeRow(strike, sides.get(OptionType.CE), sides.get(OptionType.PE))
            for strike, sides in sorted(strikes.items())
        )
        # Every contract of one expiry should share a lot size; if the exchange revised it
        # mid-series, the majority wins here and each contract still keeps its own.
        lots = Counter(c.lot_size for sides in strikes.values() for c in sides.values())
        expiries.append(ExpiryChain(expiry, lots.most_common(1)[0][0], rows))
    return UnderlyingChain(symbol, index, tick_size, tuple(expiries))
