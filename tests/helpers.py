"""Waiting in tests: one ``until`` and one time unit, so every wait is bounded the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

UNIT_S = 5.0  # the unit every wait in the suite is a multiple of (a busy 2-core machine)
POLL_S = 0.005


async def until(predicate: Callable[[], bool], timeout_s: float = 2 * UNIT_S, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` (or the predicate) after ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s:g}s: {what or getattr(predicate, '__qualname__', predicate)}") from None
