"""Kite packets → domain ticks: rupees on the instrument's tick, ``None`` for "not sent".

Prices arrive as integers in the segment's unit (``price_divisor``: paise on NSE/NFO); a price
of 0 is never a real option or index price, so it becomes ``None``, and so does the quantity
beside a missing bid or ask. Instruments are keyed ``instrument_key(token)``.

What Kite does not send stays ``None``: the quote packet has no trade time; index packets have
no quantities, volume or average price; previous-day OI is on no packet at all, so
``prev_oi`` (and the service's ``oi_change``) stay null. The previous session's close is the
``close`` field of every quote/full packet: it becomes a ``PrevCloseTick`` whenever it changes
for an instrument (once a day in practice), so the cache's ``prev_close`` (and ``change``) are
filled as from Dhan's prev-close packet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from feeds.kite.packets import (
    FullPacket,
    IndexFullPacket,
    IndexQuotePacket,
    LtpPacket,
    Packet,
    QuotePacket,
    UnknownPacket,
    price_divisor,
)
from feeds.model import FullTick, InstrumentKey, PrevCloseTick, QuoteTick, Tick, TradeTick
from feeds.prices import ROUNDER, tick_inverse, tick_rounder

_new = tuple.__new__


class Normalizer:
    """Turns packets of known tokens into ticks; packets of others are counted and dropped."""

    def __init__(self, tick_sizes: Mapping[InstrumentKey, float]) -> None:
        # token -> (key, n / divisor, n): a price in wire units p is on the tick as round(p * f) / n.
        self._fast: dict[int, tuple[InstrumentKey, float, float]] = {}
        self._slow: dict[int, tuple[InstrumentKey, int, Callable[[float], float | None]]] = {}
        self._close: dict[int, int] = {}  # the last close sent as a PrevCloseTick, per token
        self.unknown_instrument_packets = 0
        self.ignored_packets = 0
        self.update(tick_sizes, ())

    def update(self, added: Mapping[InstrumentKey, float], removed: Iterable[InstrumentKey]) -> None:
        """Track newly subscribed instruments and forget unsubscribed ones."""
        for key in removed:
            self._fast.pop(key[1], None)
            self._slow.pop(key[1], None)
            self._close.pop(key[1], None)
        for key, tick in added.items():
            token = key[1]
            divisor = price_divisor(token)
            n = tick_inverse(tick) if tick > 0 else None
            if n is not None:
                self._fast[token] = (key, n / divisor, float(n))
            else:
                self._slow[token] = (key, divisor, tick_rounder(tick))

    def __call__(self, packets: list[Packet], received_at: float, out: list[Tick]) -> None:
        fast = self._fast
        closes = self._close
        M = ROUNDER
        for p in packets:
            cls = type(p)
            entry = fast.get(p[0])
            if entry is None:
                if p[0] in self._slow and cls is not UnknownPacket:
                    self._slow_path(p, received_at, out)
                elif cls is UnknownPacket:
                    self.ignored_packets += 1
                else:
                    self.unknown_instrument_packets += 1
                continue
            key, f, n = entry
            if cls is FullPacket:
                (token, ltp, ltq, atp, volume, buy, sell, o, h, lo, c, ltt, oi, _, _, _, d) = p
                bid, ask = d[1], d[16]
                out.append(
                    _new(
                        FullTick,
                        (
                            key,
                            (ltp * f + M - M) / n if ltp else None,
                            ltq,
                            ltt or None,
                            (atp * f + M - M) / n if atp else None,
                            volume, sell, buy, oi,
                            (o * f + M - M) / n if o else None,
                            (c * f + M - M) / n if c else None,
                            (h * f + M - M) / n if h else None,
                            (lo * f + M - M) / n if lo else None,
                            (bid * f + M - M) / n if bid else None,
                            d[0] if bid else None,
                            (ask * f + M - M) / n if ask else None,
                            d[15] if ask else None,
                            received_at,
                        ),
                    )
                )
            elif cls is QuotePacket:
                (token, ltp, ltq, atp, volume, buy, sell, o, h, lo, c) = p
                out.append(
                    _new(
                        QuoteTick,
                        (
                            key,
                            (ltp * f + M - M) / n if ltp else None,
                            ltq, None,
                            (atp * f + M - M) / n if atp else None,
                            volume, sell, buy,
                            (o * f + M - M) / n if o else None,
                            (c * f + M - M) / n if c else None,
                            (h * f + M - M) / n if h else None,
                            (lo * f + M - M) / n if lo else None,
                            received_at,
                        ),
                    )
                )
            elif cls is IndexFullPacket or cls is IndexQuotePacket:
                token, ltp, h, lo, o, c = p[:6]
                ts = p[7] if cls is IndexFullPacket else 0
                out.append(
                    _new(
                        QuoteTick,
                        (
                            key,
                            (ltp * f + M - M) / n if ltp else None,
                            None, ts or None, None, None, None, None,
                            (o * f + M - M) / n if o else None,
                            (c * f + M - M) / n if c else None,
                            (h * f + M - M) / n if h else None,
                            (lo * f + M - M) / n if lo else None,
                            received_at,
                        ),
                    )
                )
            elif cls is LtpPacket:
                ltp = p[1]
                out.append(_new(TradeTick, (key, (ltp * f + M - M) / n if ltp else None, None, received_at)))
                continue
            else:
                self.ignored_packets += 1
                continue
            if c and closes.get(token) != c:
                closes[token] = c
                out.append(_new(PrevCloseTick, (key, (c * f + M - M) / n, None, received_at)))

    def _slow_path(self, p: Packet, received_at: float, out: list[Tick]) -> None:
        """Instruments whose tick has no integer inverse: the same mapping through a rounder."""
        key, divisor, rnd = self._slow[p[0]]

        def r(x: int) -> float | None:
            return rnd(x / divisor)

        if isinstance(p, FullPacket):
            d = p.depth
            bid, ask = r(d[1]), r(d[16])
            out.append(
                FullTick(
                    key, r(p.last_price), p.last_quantity, p.last_trade_time or None, r(p.average_price), p.volume,
                    p.sell_quantity, p.buy_quantity, p.oi, r(p.open), r(p.close), r(p.high), r(p.low),
                    bid, d[0] if bid is not None else None, ask, d[15] if ask is not None else None, received_at,
                )
            )
        elif isinstance(p, QuotePacket):
            out.append(
                QuoteTick(
                    key, r(p.last_price), p.last_quantity, None, r(p.average_price), p.volume, p.sell_quantity,
                    p.buy_quantity, r(p.open), r(p.close), r(p.high), r(p.low), received_at,
                )
            )
        elif isinstance(p, (IndexQuotePacket, IndexFullPacket)):
            ts = p.exchange_timestamp if isinstance(p, IndexFullPacket) else 0
            out.append(
                QuoteTick(
                    key, r(p.last_price), None, ts or None, None, None, None, None, r(p.open), r(p.close), r(p.high),
                    r(p.low), received_at,
                )
            )
        elif isinstance(p, LtpPacket):
            out.append(TradeTick(key, r(p.last_price), None, received_at))
            return
        else:
            self.ignored_packets += 1
            return
        if p.close and self._close.get(p.token) != p.close:
            self._close[p.token] = p.close
            out.append(PrevCloseTick(key, r(p.close), None, received_at))
