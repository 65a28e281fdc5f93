"""The interleaved race: every contestant of a comparison runs in every round.

Noise on these VMs comes in bursts lasting seconds (a neighbour's job, frequency changes), so
timing ours for five seconds and then the baseline for five would compare two different
machines. Instead each round runs every contestant once, back to back, rotating who goes first
so that no one always inherits a warm or cold start; a scenario then takes medians.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Contestant:
    name: str
    run: Callable[[], int]  # one pass over the workload; returns the number of items it handled


def race(contestants: Sequence[Contestant], rounds: int, seconds_per_round: float) -> dict[str, list[float]]:
    """Items per second of each contestant, one figure per round."""
    passes = {c.name: _calibrate(c, seconds_per_round) for c in contestants}
    rates: dict[str, list[float]] = {c.name: [] for c in contestants}
    for r in range(rounds):
        k = r % len(contestants)
        for c in (*contestants[k:], *contestants[:k]):
            rates[c.name].append(_rate(c, passes[c.name]))
    return rates


def _calibrate(c: Contestant, seconds: float) -> int:
    """How many passes fill ``seconds``; the first pass is a warm-up and is not timed."""
    c.run()
    start = time.perf_counter()
    c.run()
    one = time.perf_counter() - start
    return max(1, round(seconds / one))


def _rate(c: Contestant, passes: int) -> float:
    # Collect the previous contestant's garbage now, so it is not charged to this one. The
    # collector stays enabled while timing: the service runs with it, and allocation-heavy
    # code (the SDK's dicts, our tuples) should pay for its own collections.
    gc.collect()
    items = 0
    start = time.perf_counter()
    for _ in range(passes):
        items += c.run()
    return items / (time.perf_counter() - start)


def interleave(contestants: Mapping[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """``race`` for contestants that measure themselves (across processes, over sockets).

    Each call runs one contestant once and returns its own figure (a rate, latency
    percentiles…); every round calls each contestant, rotating who goes first.
    """
    names = list(contestants)
    out: dict[str, list[T]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in (*names[k:], *names[:k]):
            out[name].append(contestants[name]())
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) by nearest rank: a value that was really observed."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]
