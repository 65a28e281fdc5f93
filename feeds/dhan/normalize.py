"""Wire packets → domain ticks: true instants, prices on the instrument's tick, None for "not sent".

Dhan fills a field it has no value for with 0 (no trade yet, no bid, close before the
session ends). A price of 0 is never a real option or index price, so it becomes ``None``;
quantities of 0 are real (no volume yet) and stay 0, except the quantity beside a missing
bid or ask price, which is meaningless and becomes ``None`` too.

Rounding (``feeds.prices``, shared with the Kite normaliser): round(p * n) / n for a tick of
1/n, exact for every NSE/BSE tick. The arithmetic is written inline in the hot loop: a
function call per price would cost more than the decode of the whole packet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from feeds.model import FullTick, InstrumentKey, OpenInterestTick, PrevCloseTick, QuoteTick, Tick, TradeTick, pack_key
from feeds.dhan.packets import FullPacket, OIPacket, Packet, PrevClosePacket, QuotePacket, TickerPacket
from feeds.prices import ROUNDER, tick_inverse, tick_rounder  # noqa: F401 - tick_rounder re-exported

_new = tuple.__new__
_ROUNDER = ROUNDER
_inverse = tick_inverse


class Normalizer:
    """Turns packets of known instruments into ticks; packets of others are counted and dropped."""

    def __init__(self, tick_sizes: Mapping[InstrumentKey, float]) -> None:
        self._fast: dict[InstrumentKey, float] = {}
        self._slow: dict[InstrumentKey, Callable[[float], float | None]] = {}
        self._arrays: tuple[Any, Any] | None = None  # fast_arrays(), rebuilt after update()
        self.update(tick_sizes, ())
        self.unknown_instrument_packets = 0
        self.ignored_packets = 0

    def update(self, added: Mapping[InstrumentKey, float], removed: Iterable[InstrumentKey]) -> None:
        """Track newly subscribed instruments and forget unsubscribed ones."""
        self._arrays = None
        for key in removed:
            self._fast.pop(key, None)
            self._slow.pop(key, None)
        inverses: dict[int, float] = {}  # one float object per distinct inverse, not one per instrument
        for key, tick in added.items():
            n = _inverse(tick) if tick > 0 else None
            if n is not None:
                self._fast[key] = inverses.setdefault(n, float(n))
            else:
                self._slow[key] = tick_rounder(tick)

    def fast_arrays(self) -> tuple[Any, Any]:
        """For the batch path (``feeds.dhan.batch``): the packed keys of the instruments with an
        integer tick inverse, sorted (numpy int64), and each one's inverse (float64)."""
        if self._arrays is None:
            keys = sorted((pack_key(k), n) for k, n in self._fast.items())
            self._arrays = (
                np.array([k for k, _ in keys], dtype=np.int64),
                np.array([n for _, n in keys], dtype=np.float64),
            )
        return self._arrays

    def is_slow(self, key: InstrumentKey) -> bool:
        """Subscribed, but its tick has no integer inverse (rounded by the per-packet path)."""
        return key in self._slow

    def count_unknown(self, count: int) -> None:
        self.unknown_instrument_packets += count

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
