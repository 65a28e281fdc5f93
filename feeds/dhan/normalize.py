"""Wire packets → domain ticks: true instants, prices on the instrument's tick, None for "not sent".

Dhan fills a field it has no value for with 0 (no trade yet, no bid, close before the
session ends). A price of 0 is never a real option or index price, so it becomes ``None``;
quantities of 0 are real (no volume yet) and stay 0, except the quantity beside a missing
bid or ask price, which is meaningless and becomes ``None`` too.

Rounding: when 1/tick is an integer n (0.05 → 20), round(p * n) / n is exact, because
IEEE division is correctly rounded: 3046 / 20 is the same double as the literal 152.3. That
covers every NSE/BSE tick; other ticks fall back to rounding a multiple to the tick's decimals.
The arithmetic is written inline in the hot loop: a function call per price would cost more
than the decode of the whole packet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from feeds.model import FullTick, InstrumentKey, OpenInterestTick, PrevCloseTick, QuoteTick, Tick, TradeTick
from feeds.dhan.packets import FullPacket, OIPacket, Packet, PrevClosePacket, QuotePacket, TickerPacket

_new = tuple.__new__
# Adding and subtracting 1.5 * 2**52 rounds a double to the nearest integer (ties to even,
# like round()) without creating an int: half the cost of round() per price. Exact for
# |price * n| < 2**51, i.e. any price below ₹10^13 at a ₹0.05 tick.
_ROUNDER = 6755399441055744.0


def _inverse(tick_size: float) -> int | None:
    """n with tick = 1/n exactly enough to round by, or None."""
    inverse = 1.0 / tick_size
    n = round(inverse)
    return n if n >= 1 and abs(inverse - n) < 1e-9 else None


def tick_rounder(tick_size: float) -> Callable[[float], float | None]:
    """A function rounding a float32-widened price to the nearest multiple of ``tick_size``."""
    if not tick_size > 0:
        raise ValueError(f"tick size must be positive, got {tick_size}")
    n = _inverse(tick_size)
    if n is not None:
        return lambda price: (price * n + _ROUNDER - _ROUNDER) / n if price > 0.0 else None
    decimals = max(0, -int(f"{tick_size:e}".split("e")[1])) + 2
    return lambda price: round(round(price / tick_size) * tick_size, decimals) if price > 0.0 else None


class Normalizer:
    """Turns packets of known instruments into ticks; packets of others are counted and dropped."""

    def __init__(self, tick_sizes: Mapping[InstrumentKey, float]) -> None:
        self._fast: dict[InstrumentKey, float] = {}
        self._slow: dict[InstrumentKey, Callable[[float], float | None]] = {}
        self.update(tick_sizes, ())
        self.unknown_instrument_packets = 0
        self.ignored_packets = 0

    def update(self, added: Mapping[InstrumentKey, float], removed: Iterable[InstrumentKey]) -> None:
        """Track newly subscribed instruments and forget unsubscribed ones."""
        for key in removed:
            self._fast.pop(key, None)
            self._slow.pop(key, None)
        for key, tick in added.items():
            n = _inverse(tick) if tick > 0 else None
            if n is not None:
                self._fast[key] = float(n)
            else:
                self._slow[key] = tick_rounder(tick)

    def __call__(self, packets: list[Packet], received_at: float, out: list[Tick]) -> None:
        fast = self._fast
        M = _ROUNDER  # local: read once per batch, not per price
        for p in packets:
            cls = type(p)
            key = (p[0], p[1])
            n = fast.get(key)
            if n is None:
                if key in self._slow:
                    self._slow_path(p, received_at, out)
                elif cls in _MARKET_DATA:
                    self.unknown_instrument_packets += 1
                else:
                    self.ignored_packets += 1
                continue
            if cls is FullPacket:
                (_, _, ltp, ltq, ltt, atp, volume, sell, buy, oi, _, _, o, c, h, lo, d) = p
                bid, ask = d[4], d[5]
                out.append(
                    _new(
                        FullTick,
                        (
                            key,
                            (ltp * n + M - M) / n if ltp > 0.0 else None,
                            ltq,
                            ltt if ltt > 0 else None,
                            (atp * n + M - M) / n if atp > 0.0 else None,
                            volume, sell, buy, oi,
                            (o * n + M - M) / n if o > 0.0 else None,
                            (c * n + M - M) / n if c > 0.0 else None,
                            (h * n + M - M) / n if h > 0.0 else None,
                            (lo * n + M - M) / n if lo > 0.0 else None,
                            (bid * n + M - M) / n if bid > 0.0 else None,
                            d[0] if bid > 0.0 else None,
                            (ask * n + M - M) / n if ask > 0.0 else None,
                            d[1] if ask > 0.0 else None,
                            received_at,
                        ),
                    )
                )
            elif cls is QuotePacket:
                (_, _, ltp, ltq, ltt, atp, volume, sell, buy, o, c, h, lo) = p
                out.append(
                    _new(
                        QuoteTick,
                        (
                            key,
                            (ltp * n + M - M) / n if ltp > 0.0 else None,
                            ltq,
                            ltt if ltt > 0 else None,
                            (atp * n + M - M) / n if atp > 0.0 else None,
                            volume, sell, buy,
                            (o * n + M - M) / n if o > 0.0 else None,
                            (c * n + M - M) / n if c > 0.0 else None,
                            (h * n + M - M) / n if h > 0.0 else None,
                            (lo * n + M - M) / n if lo > 0.0 else None,
                            received_at,
                        ),
                    )
                )
            elif cls is TickerPacket:
                ltp, ltt = p[2], p[3]
                out.append(
                    _new(TradeTick, (key, (ltp * n + M - M) / n if ltp > 0.0 else None, ltt if ltt > 0 else None, received_at))
                )
            elif cls is OIPacket:
                out.append(_new(OpenInterestTick, (key, p[2], received_at)))
            elif cls is PrevClosePacket:
                pc = p[2]
                out.append(_new(PrevCloseTick, (key, (pc * n + M - M) / n if pc > 0.0 else None, p[3], received_at)))
            else:
                # Market status, legacy depth, unknown codes: nothing for the chain. Disconnect
                # packets are handled by the client before normalisation.
                self.ignored_packets += 1

    def _slow_path(self, p: Packet, received_at: float, out: list[Tick]) -> None:
        """Instruments whose tick has no integer inverse: the same mapping via a rounder."""
        r = self._slow[(p[0], p[1])]
        key = (p[0], p[1])
        if isinstance(p, FullPacket):
            d = p.depth
            bid, ask = r(d[4]), r(d[5])
            out.append(
                FullTick(
                    key, r(p.ltp), p.ltq, p.ltt if p.ltt > 0 else None, r(p.atp), p.volume, p.total_sell_qty,
                    p.total_buy_qty, p.oi, r(p.open), r(p.close), r(p.high), r(p.low),
                    bid, d[0] if bid is not None else None, ask, d[1] if ask is not None else None, received_at,
                )
            )
        elif isinstance(p, QuotePacket):
            out.append(
                QuoteTick(
                    key, r(p.ltp), p.ltq, p.ltt if p.ltt > 0 else None, r(p.atp), p.volume, p.total_sell_qty,
                    p.total_buy_qty, r(p.open), r(p.close), r(p.high), r(p.low), received_at,
                )
            )
        elif isinstance(p, TickerPacket):
            out.append(TradeTick(key, r(p.ltp), p.ltt if p.ltt > 0 else None, received_at))
        elif isinstance(p, OIPacket):
            out.append(OpenInterestTick(key, p.oi, received_at))
        elif isinstance(p, PrevClosePacket):
            out.append(PrevCloseTick(key, r(p.prev_close), p.prev_oi, received_at))
        else:
            self.ignored_packets += 1


_MARKET_DATA = frozenset({FullPacket, QuotePacket, TickerPacket, OIPacket, PrevClosePacket})
