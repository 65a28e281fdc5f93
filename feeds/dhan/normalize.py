"""Wire packets → domain ticks: true instants, prices on the instrument's tick, None for "not sent".

Dhan fills a field it has no value for with 0 (no trade yet, no bid, close before the
session ends). A price of 0 is never a real option or index price, so it becomes ``None``;
quantities of 0 are real (no volume yet) and stay 0, except the quantity beside a missing
bid or ask price, which is meaningless and becomes ``None`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from feeds.model import FullTick, InstrumentKey, OpenInterestTick, PrevCloseTick, QuoteTick, Tick, TradeTick
from feeds.dhan.packets import FullPacket, OIPacket, Packet, PrevClosePacket, QuotePacket, TickerPacket

_new = tuple.__new__


def tick_rounder(tick_size: float) -> Callable[[float], float | None]:
    """A function rounding a float32-widened price to the nearest multiple of ``tick_size``.

    When 1/tick is an integer n (0.05 → 20), ``round(p * n) / n`` is exact: IEEE division is
    correctly rounded, so 3046 / 20 is the same double as the literal 152.3.
    """
    if tick_size <= 0:
        raise ValueError(f"tick size must be positive, got {tick_size}")
    inverse = 1.0 / tick_size
    n = round(inverse)
    if abs(inverse - n) < 1e-9:

        def by_inverse(price: float) -> float | None:
            return round(price * n) / n if price > 0.0 else None

        return by_inverse
    decimals = max(0, -int(f"{tick_size:e}".split("e")[1])) + 2

    def by_multiple(price: float) -> float | None:
        return round(round(price / tick_size) * tick_size, decimals) if price > 0.0 else None

    return by_multiple


class Normalizer:
    """Turns packets of known instruments into ticks; packets of others are counted and dropped."""

    def __init__(self, tick_sizes: Mapping[InstrumentKey, float]) -> None:
        rounders: dict[float, Callable[[float], float | None]] = {}
        self._round = {key: rounders.setdefault(t, tick_rounder(t)) for key, t in tick_sizes.items()}
        self.unknown_instrument_packets = 0
        self.ignored_packets = 0

    def __call__(self, packets: list[Packet], received_at: float, out: list[Tick]) -> None:
        rounders = self._round
        for p in packets:
            cls = type(p)
            if cls is FullPacket:
                key = (p[0], p[1])
                r = rounders.get(key)
                if r is None:
                    self.unknown_instrument_packets += 1
                    continue
                d = p[16]
                bid, ask = r(d[4]), r(d[5])
                out.append(
                    _new(
                        FullTick,
                        (
                            key, r(p[2]), p[3], p[4] if p[4] > 0 else None, r(p[5]), p[6], p[7], p[8], p[9],
                            r(p[12]), r(p[13]), r(p[14]), r(p[15]),
                            bid, d[0] if bid is not None else None, ask, d[1] if ask is not None else None,
                            received_at,
                        ),
                    )
                )
            elif cls is QuotePacket:
                key = (p[0], p[1])
                r = rounders.get(key)
                if r is None:
                    self.unknown_instrument_packets += 1
                    continue
                out.append(
                    _new(
                        QuoteTick,
                        (
                            key, r(p[2]), p[3], p[4] if p[4] > 0 else None, r(p[5]), p[6], p[7], p[8],
                            r(p[9]), r(p[10]), r(p[11]), r(p[12]), received_at,
                        ),
                    )
                )
            elif cls is TickerPacket:
                key = (p[0], p[1])
                r = rounders.get(key)
                if r is None:
                    self.unknown_instrument_packets += 1
                    continue
                out.append(_new(TradeTick, (key, r(p[2]), p[3] if p[3] > 0 else None, received_at)))
            elif cls is OIPacket:
                key = (p[0], p[1])
                if key not in rounders:
                    self.unknown_instrument_packets += 1
                    continue
                out.append(_new(OpenInterestTick, (key, p[2], received_at)))
            elif cls is PrevClosePacket:
                key = (p[0], p[1])
                r = rounders.get(key)
                if r is None:
                    self.unknown_instrument_packets += 1
                    continue
                out.append(_new(PrevCloseTick, (key, r(p[2]), p[3], received_at)))
            else:
                # Market status, legacy depth, unknown codes: nothing for the chain. Disconnect
                # packets are handled by the client before normalisation.
                self.ignored_packets += 1
