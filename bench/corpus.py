"""Realistic Dhan main-feed packets for benchmarks, built with our own ``encode``.

Values look like NSE option legs during a session: prices on the 0.05 tick (as float32, like
the wire), lot-sized quantities, a five-level book around the last price, a last-trade time
between 09:15 and 15:30 IST. A few legs are illiquid (no trade yet, empty book levels), so the
"0 means not sent" branches of the normaliser run too. Everything is seeded: a corpus is the
same bytes on every run, so runs stay comparable.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Sequence

from feeds.dhan.codec import encode
from feeds.dhan.packets import (
    DEPTH_LEVELS,
    FullPacket,
    OIPacket,
    Packet,
    PrevClosePacket,
    QuotePacket,
    TickerPacket,
)
from feeds.model import InstrumentKey, Segment

TICK = 0.05
LOT = 75
SESSION_OPEN_UTC = int(dt.datetime(2026, 6, 10, 3, 45, tzinfo=dt.timezone.utc).timestamp())  # 09:15 IST
SESSION_S = 6 * 3600 + 15 * 60
ILLIQUID = 0.03  # share of legs with no trade yet and a thin book


def instrument_keys(count: int, seed: int = 1) -> list[InstrumentKey]:
    """Distinct NSE F&O keys with security ids in the range Dhan uses for options."""
    rng = random.Random(seed)
    return [(Segment.NSE_FNO.value, sid) for sid in rng.sample(range(35_000, 150_000), count)]


def packets(kind: str, count: int, keys: Sequence[InstrumentKey], seed: int) -> list[Packet]:
    """``count`` packets of one kind (``KINDS``), each for a random key of ``keys``."""
    rng = random.Random(seed)
    build = KINDS[kind]
    return [build(rng, rng.choice(keys)) for _ in range(count)]


def messages(items: Sequence[Packet], per_message: int = 1) -> list[bytes]:
    """WebSocket message payloads: ``per_message`` packets back to back (Dhan sends one)."""
    wire = [encode(p) for p in items]
    return [b"".join(wire[i : i + per_message]) for i in range(0, len(wire), per_message)]


# --------------------------------------------------------------------------- values


def _price(rng: random.Random, low: float = 0.05, high: float = 900.0) -> float:
    # Option premiums are skewed: many cheap far strikes, few expensive deep ones.
    ticks = round((low + (high - low) * rng.random() ** 3) / TICK)
    return max(1, ticks) * TICK


def _near(rng: random.Random, price: float, spread_ticks: int) -> float:
    return max(1, round(price / TICK) + rng.randint(-spread_ticks, spread_ticks)) * TICK


def _lots(rng: random.Random, most: int) -> int:
    return LOT * rng.randint(1, most)


def _ltt(rng: random.Random) -> int:
    return SESSION_OPEN_UTC + rng.randrange(SESSION_S)


def _session(rng: random.Random) -> tuple[float, int, int, float, int, int, int, float, float, float, float]:
    """ltp, ltq, ltt, atp, volume, sell qty, buy qty, open, close, high, low (shared by Quote/Full)."""
    if rng.random() < ILLIQUID:
        close = _price(rng)
        return 0.0, 0, 0, 0.0, 0, _lots(rng, 40), _lots(rng, 40), 0.0, close, 0.0, 0.0
    ltp = _price(rng)
    open_, close = _near(rng, ltp, 400), _near(rng, ltp, 400)
    high = max(ltp, open_) + rng.randint(0, 200) * TICK
    low = max(TICK, min(ltp, open_) - rng.randint(0, 200) * TICK)
    volume = _lots(rng, 100_000)
    return (
        ltp, _lots(rng, 20), _ltt(rng), _near(rng, ltp, 40), volume,
        _lots(rng, 20_000), _lots(rng, 20_000), open_, close, high, low,
    )  # fmt: skip


def _depth(rng: random.Random, ltp: float) -> tuple[float, ...]:
    """Five levels flattened as on the wire: bid qty, ask qty, bid orders, ask orders, bid, ask."""
    mid = round((ltp or _price(rng)) / TICK)
    levels = DEPTH_LEVELS if rng.random() >= ILLIQUID else rng.randint(0, DEPTH_LEVELS - 1)
    flat: list[float] = []
    for i in range(DEPTH_LEVELS):
        if i >= levels:
            flat += (0, 0, 0, 0, 0.0, 0.0)
            continue
        bid = max(1, mid - 1 - i * rng.randint(1, 3)) * TICK
        ask = (mid + 1 + i * rng.randint(1, 3)) * TICK
        flat += (_lots(rng, 200), _lots(rng, 200), rng.randint(1, 60), rng.randint(1, 60), bid, ask)
    return tuple(flat)


# --------------------------------------------------------------------------- packets


def _ticker(rng: random.Random, key: InstrumentKey) -> TickerPacket:
    return TickerPacket(*key, _price(rng), _ltt(rng))


def _quote(rng: random.Random, key: InstrumentKey) -> QuotePacket:
    return QuotePacket(*key, *_session(rng))


def _oi(rng: random.Random, key: InstrumentKey) -> OIPacket:
    return OIPacket(*key, _lots(rng, 200_000))


def _prev_close(rng: random.Random, key: InstrumentKey) -> PrevClosePacket:
    return PrevClosePacket(*key, _price(rng), _lots(rng, 200_000))


def _full(rng: random.Random, key: InstrumentKey) -> FullPacket:
    s = _session(rng)
    oi = _lots(rng, 200_000)
    oi_high, oi_low = oi + _lots(rng, 5_000), max(0, oi - _lots(rng, 5_000))
    return FullPacket(*key, *s[:7], oi, oi_high, oi_low, *s[7:], _depth(rng, s[0]))


# The packet types a session streams, by name; code 50 (disconnect) is deliberately absent.
KINDS: dict[str, Callable[[random.Random, InstrumentKey], Packet]] = {
    "ticker": _ticker,
    "quote": _quote,
    "oi": _oi,
    "prev_close": _prev_close,
    "full": _full,
}
