"""Rounding prices to an instrument's tick: shared by every broker's normaliser.

When 1/tick is an integer n (0.05 → 20), round(p * n) / n is exact, because IEEE division is
correctly rounded: 3046 / 20 is the same double as the literal 152.3. That covers every
NSE/BSE tick; other ticks fall back to rounding a multiple to the tick's decimals.
"""

from __future__ import annotations

from collections.abc import Callable

# Adding and subtracting 1.5 * 2**52 rounds a double to the nearest integer (ties to even,
# like round()) without creating an int: half the cost of round() per price. Exact for
# |price * n| < 2**51, i.e. any price below ₹10^13 at a ₹0.05 tick.
ROUNDER = 6755399441055744.0


def tick_inverse(tick_size: float) -> int | None:
    """n with tick = 1/n exactly enough to round by, or None."""
    inverse = 1.0 / tick_size
    n = round(inverse)
    return n if n >= 1 and abs(inverse - n) < 1e-9 else None


_INF = float("inf")


def tick_rounder(tick_size: float) -> Callable[[float], float | None]:
    """A function rounding a price to the nearest multiple of ``tick_size`` (None for <= 0)."""
    if not tick_size > 0:
        raise ValueError(f"tick size must be positive, got {tick_size}")
    n = tick_inverse(tick_size)
    if n is not None:
        return lambda price: (price * n + ROUNDER - ROUNDER) / n if price > 0.0 else None
    decimals = max(0, -int(f"{tick_size:e}".split("e")[1])) + 2
    # Only this path can overflow: an infinite price (a corrupt packet) becomes None, not an exception
    # that would end the receive loop.
    return lambda price: round(round(price / tick_size) * tick_size, decimals) if 0.0 < price < _INF else None
