"""A seeded synthetic market over the universe, producing the packets Dhan would send.

All randomness comes from one ``random.Random(config.seed)`` and is consumed only by
construction and ``step()``, in a fixed order; building packets consumes none. Two markets
with the same universe, config and clock readings therefore produce identical packets,
whoever subscribes to what.

Model:

* Each underlying follows geometric Brownian motion with ``config.annual_vol``; one step lasts
  ``tick_interval_s`` of trading time (a 252-day year of 6h15m sessions). The index prints
  at the 0.05 tick and counts as changed whenever that printed value moves.
* Options are priced with Black-Scholes on the spot (no dividends) to 15:30 IST on the
  expiry day, with a smile ``iv = atm_iv + iv_skew*m + iv_curvature*m^2``, ``m = ln(K/F)``.
  Only instruments that trade get a new price: a trade picks an option (weighted towards
  near-the-money strikes and near expiries), rebuilds its 5-level book around the model
  price and prints at the bid or the ask.
* Prices live as integer ticks and are emitted as float32-exact rupees, so an encode/decode
  round trip reproduces a packet exactly and ``last_sent`` can be compared with ``==``.
* The Quote/Full ``close`` field carries the previous session's close during the day. The
  docs say it is only filled after the close; Dhan support told one user it carries the
  previous close live (reference §8.6). We chose the latter: it is what a client must cope
  with during market hours, and it equals the instrument's ``PrevClosePacket.prev_close``.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from feeds.dhan.packets import (
    DEPTH_LEVELS,
    FeedMode,
    FullPacket,
    OIPacket,
    Packet,
    PrevClosePacket,
    QuotePacket,
    ResponseCode,
    TickerPacket,
)
from feeds.dhan.option_chain import Greeks, OptionQuote
from feeds.model import IST, InstrumentKey, OptionContract, OptionType
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.universe import INDEX_TICK, OPTION_TICK, Universe

TRADING_YEAR_S = 252 * 6.25 * 3600  # time unit of the random walk
CALENDAR_YEAR_S = 365 * 86_400  # time unit of option expiry, as NSE's own IV calculations use
EXPIRY_TIME_IST = dt.time(15, 30)
_MIN_T = 60 / CALENDAR_YEAR_S  # past expiry an option is worth ~intrinsic, never undefined
_MIN_IV = 0.03
_UINT32_MAX = 2**32 - 1
_MAX_LTQ_LOTS = 20  # LTQ is uint16 on the wire: 20 lots of 75 stays far below 65535
_ZERO_DEPTH: tuple[float, ...] = (0, 0, 0, 0, 0.0, 0.0) * DEPTH_LEVELS

_F32 = struct.Struct("<f")


def f32(x: float) -> float:
    """``x`` rounded to the nearest float32, as the wire will carry it."""
    return _F32.unpack(_F32.pack(x))[0]


@functools.lru_cache(maxsize=1 << 16)
def _price(ticks: int, tick: float) -> float:
    """``ticks`` of ``tick`` rupees as the wire carries it. ``round(x, 2)`` of a float goes
    through its decimal digits (~1 µs); a packet needs up to 16 prices, mostly recurring ones."""
    return f32(round(ticks * tick, 2))


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def black_scholes(spot: float, strike: float, years: float, vol: float, rate: float, call: bool) -> float:
    """European option value (no dividends)."""
    if years <= 0 or vol <= 0:
        return max(0.0, spot - strike) if call else max(0.0, strike - spot)
    vol_t = vol * math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate + 0.5 * vol * vol) * years) / vol_t
    d2 = d1 - vol_t
    discounted = strike * math.exp(-rate * years)
    if call:
        return spot * _norm_cdf(d1) - discounted * _norm_cdf(d2)
    return discounted * _norm_cdf(-d2) - spot * _norm_cdf(-d1)


def expiry_instant(day: dt.date) -> float:
    """UTC epoch seconds of 15:30 IST on ``day``, when NSE options expire."""
    return dt.datetime.combine(day, EXPIRY_TIME_IST, tzinfo=IST).timestamp()


@dataclass(slots=True)
class _State:
    """Everything the wire says about one instrument; prices in integer ticks."""

    key: InstrumentKey
    tick: float
    lot: int  # 0 for an index
    ltp: int
    ltq: int
    ltt: int
    volume: int
    turnover: float  # rupees, for the ATP
    total_buy: int
    total_sell: int
    oi: int
    oi_high: int
    oi_low: int
    open: int
    high: int
    low: int
    prev_close: int
    prev_oi: int
    depth: tuple[float, ...]

    def price(self, ticks: int) -> float:
        return _price(ticks, self.tick)

    def print_at(self, ticks: int) -> None:
        self.ltp = ticks
        self.high = max(self.high, ticks)
        self.low = min(self.low, ticks)


@dataclass(frozen=True, slots=True)
class _OptionModel:
    """The constant inputs of one option's price."""

    contract: OptionContract
    expires_at: float
    call: bool


class Market:
    """The synthetic market; ``step()`` moves it, ``packet()`` renders what Dhan would send."""

    def __init__(self, universe: Universe, config: SimulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.universe = universe
        self.config = config
        self._clock = clock
        self._rng = random.Random(config.seed)
        self._state: dict[InstrumentKey, _State] = {}
        self._spot: dict[str, float] = {}
        self._index_of: dict[str, InstrumentKey] = {}
        self._models: dict[InstrumentKey, _OptionModel] = {}
        self._prev_volume: dict[InstrumentKey, int] = {}  # the REST chain's previous_volume
        # What packet() last rendered, per instrument and response code. The server renders
        # only packets it sends, so this is "what the simulator last sent".
        self.last_sent: dict[InstrumentKey, dict[int, Packet]] = {}
        self.steps = 0
        self._walk_dt = config.tick_interval_s / TRADING_YEAR_S

        now = clock()
        ltt = int(now)
        rng = self._rng
        prev_spot: dict[str, float] = {}
        for key, spec in universe.indices.items():
            spot = spec.spot
            self._spot[spec.symbol] = spot
            self._index_of[spec.symbol] = key
            prev_spot[spec.symbol] = spot * math.exp(rng.gauss(0.0, 0.006))
            ticks = round(spot / INDEX_TICK)
            self._state[key] = _State(
                key, INDEX_TICK, 0, ticks, 0, ltt, 0, 0.0, 0, 0, 0, 0, 0,
                ticks, ticks, ticks, round(prev_spot[spec.symbol] / INDEX_TICK), 0, _ZERO_DEPTH,
            )  # fmt: skip

        expiry_rank = {
            (symbol, e.expiry): rank
            for symbol, chain in universe.skeleton.underlyings.items()
            for rank, e in enumerate(chain.expiries)
        }
        keys: list[InstrumentKey] = []
        weights: list[float] = []
        for key, contract in universe.contracts.items():
            model = _OptionModel(contract, expiry_instant(contract.expiry), contract.option_type == OptionType.CE)
            self._models[key] = model
            spec = universe.spec(contract.underlying)
            rank = expiry_rank[(spec.symbol, contract.expiry)]
            # Activity concentrates near the money and in the nearest expiry, as on NSE.
            weight = (math.exp(-abs(math.log(contract.strike / spec.spot)) / 0.015) + 0.01) / (1 + rank)
            keys.append(key)
            weights.append(weight)

            fair = self._ticks(self._fair(model, self._spot[spec.symbol], now))
            prev = self._ticks(self._fair(model, prev_spot[spec.symbol], now - 86_400))
            lot = contract.lot_size
            volume = lot * int(weight * 200_000 * rng.random() + 1)
            self._prev_volume[key] = volume  # yesterday looked like this morning: no extra randomness
            oi = lot * int(weight * 80_000 * (0.5 + rng.random()) + 10)
            prev_oi = max(lot, lot * round(oi / lot * (1 + rng.gauss(0.0, 0.05))))
            state = _State(
                key, OPTION_TICK, lot, fair, lot, ltt, volume, volume * fair * OPTION_TICK, 0, 0,
                oi, oi, oi, fair, fair, fair, prev, prev_oi, _ZERO_DEPTH,
            )  # fmt: skip
            self._requote(state, fair)
            self._state[key] = state

        self._trade_keys = keys
        cumulative = 0.0
        self._cum_weights = []
        for weight in weights:
            cumulative += weight
            self._cum_weights.append(cumulative)

    # ------------------------------------------------------------------ model

    def spot(self, symbol: str) -> float:
        """The underlying's current (unrounded) value."""
        return self._spot[symbol]

    def _smile(self, model: _OptionModel, spot: float, now: float) -> tuple[float, float]:
        """(years to expiry, the smile's IV) of an option at ``spot`` and ``now``."""
        config = self.config
        years = max(_MIN_T, (model.expires_at - now) / CALENDAR_YEAR_S)
        forward = spot * math.exp(config.rate * years)
        m = math.log(model.contract.strike / forward)
        return years, max(_MIN_IV, config.atm_iv + config.iv_skew * m + config.iv_curvature * m * m)

    def _fair(self, model: _OptionModel, spot: float, now: float) -> float:
        years, iv = self._smile(model, spot, now)
        return black_scholes(spot, model.contract.strike, years, iv, self.config.rate, model.call)

    def model_iv(self, key: InstrumentKey) -> float:
        """The volatility (a fraction) the option is priced with at the current spot and clock."""
        model = self._models[key]
        return self._smile(model, self._spot[model.contract.underlying], self._clock())[1]

    def option_quote(self, key: InstrumentKey) -> OptionQuote:
        """What Dhan's REST option chain says about an option now (reference §6.3): its state,
        and IV and greeks from our model as Dhan publishes them (Black-Scholes on the spot:
        delta ∂V/∂S, theta per day, vega per 1 % of IV)."""
        s = self._state[key]
        model = self._models[key]
        strike, spot = model.contract.strike, self._spot[model.contract.underlying]
        years, iv = self._smile(model, spot, self._clock())
        rate = self.config.rate
        root = math.sqrt(years)
        d1 = (math.log(spot / strike) + (rate + 0.5 * iv * iv) * years) / (iv * root)
        d2 = d1 - iv * root
        pdf = math.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi)
        carry = rate * strike * math.exp(-rate * years)
        if model.call:
            delta, theta = _norm_cdf(d1), -spot * pdf * iv / (2 * root) - carry * _norm_cdf(d2)
        else:
            delta, theta = _norm_cdf(d1) - 1.0, -spot * pdf * iv / (2 * root) + carry * _norm_cdf(-d2)
        greeks = Greeks(round(delta, 5), round(theta / 365, 5), round(pdf / (spot * iv * root), 5),
                        round(spot * pdf * root / 100, 5))  # fmt: skip

        def rupees(ticks: int) -> float | None:  # REST prices are clean decimals, not float32
            return round(ticks * s.tick, 2) if ticks > 0 else None

        d = s.depth
        return OptionQuote(
            last_price=rupees(s.ltp), oi=s.oi, previous_close=rupees(s.prev_close), previous_oi=s.prev_oi,
            previous_volume=self._prev_volume[key], volume=s.volume, implied_volatility=round(iv * 100, 3),
            greeks=greeks, bid=round(d[4], 2) if d[4] else None, bid_qty=int(d[0]) if d[4] else 0,
            ask=round(d[5], 2) if d[5] else None, ask_qty=int(d[1]) if d[5] else 0,
            average_price=round(s.turnover / s.volume, 2) if s.volume else None, security_id=key[1],
        )  # fmt: skip

    def index_price(self, symbol: str) -> float:
        """The underlying's printed value as Dhan's REST chain sends it (float32-widened, §6.3)."""
        state = self._state[self._index_of[symbol]]
        return f32(round(state.ltp * state.tick, 2))

    def theoretical_price(self, key: InstrumentKey) -> float:
        """The model value of an option at the current spot and clock (not rounded)."""
        model = self._models[key]
        return self._fair(model, self._spot[model.contract.underlying], self._clock())

    @staticmethod
    def _ticks(price: float) -> int:
        return max(1, round(price / OPTION_TICK))

    def _requote(self, state: _State, fair: int) -> None:
        """Rebuild the 5-level book around ``fair`` ticks; totals follow the book."""
        rng = self._rng
        spread = max(1, round(fair * 0.0004)) + rng.randint(0, 1)  # wider for pricier options
        bid = max(1, fair - spread // 2)
        ask = bid + spread
        lot = state.lot
        depth: list[float] = []
        bid_total = ask_total = 0
        for level in range(DEPTH_LEVELS):
            bid_qty = lot * rng.randint(1, 60)
            ask_qty = lot * rng.randint(1, 60)
            bid_orders = rng.randint(1, min(bid_qty // lot, 25))
            ask_orders = rng.randint(1, min(ask_qty // lot, 25))
            bid_ticks = bid - level
            if bid_ticks < 1:  # nothing bids below one tick
                bid_qty = bid_orders = 0
                bid_price = 0.0
            else:
                bid_price = state.price(bid_ticks)
            bid_total += bid_qty
            ask_total += ask_qty
            depth += (bid_qty, ask_qty, bid_orders, ask_orders, bid_price, state.price(ask + level))
        state.depth = tuple(depth)
        state.total_buy = bid_total * rng.randint(5, 40)
        state.total_sell = ask_total * rng.randint(5, 40)

    # ------------------------------------------------------------------ time

    def step(self, n_trades: int) -> list[InstrumentKey]:
        """Advance every underlying one step and let ``n_trades`` options trade.

        Returns the keys whose packets changed, each once, indices first.
        """
        rng = self._rng
        now = self._clock()
        ltt = int(now)
        vol = self.config.annual_vol
        drift = -0.5 * vol * vol * self._walk_dt
        shock = vol * math.sqrt(self._walk_dt)
        changed: list[InstrumentKey] = []
        for symbol, key in self._index_of.items():
            spot = self._spot[symbol] * math.exp(drift + shock * rng.gauss(0.0, 1.0))
            self._spot[symbol] = spot
            state = self._state[key]
            ticks = round(spot / INDEX_TICK)
            if ticks != state.ltp:
                state.print_at(ticks)
                state.ltt = ltt
                changed.append(key)
        seen: set[InstrumentKey] = set()
        if n_trades:
            for key in rng.choices(self._trade_keys, cum_weights=self._cum_weights, k=n_trades):
                self._trade(key, now, ltt)
                if key not in seen:
                    seen.add(key)
                    changed.append(key)
        self.steps += 1
        return changed

    def _trade(self, key: InstrumentKey, now: float, ltt: int) -> None:
        rng = self._rng
        model = self._models[key]
        state = self._state[key]
        self._requote(state, self._ticks(self._fair(model, self._spot[model.contract.underlying], now)))
        # Best bid and ask sit at depth positions 4 and 5; an aggressive buyer lifts the ask.
        best = state.depth[5] if rng.random() < 0.5 or state.depth[4] == 0.0 else state.depth[4]
        lot = state.lot
        qty = lot * rng.randint(1, _MAX_LTQ_LOTS)
        state.print_at(round(best / OPTION_TICK))
        state.ltq = qty
        state.ltt = ltt
        # Volume is uint32 on the wire; a session never gets near it, a simulator left running
        # for days could, so it saturates instead of breaking the encoder.
        state.volume = min(_UINT32_MAX, state.volume + qty)
        state.turnover += qty * best
        # Open interest drifts by up to half the traded lots either way, never below one lot.
        half = qty // lot // 2
        state.oi = max(lot, state.oi + lot * rng.randint(-half, half))
        state.oi_high = max(state.oi_high, state.oi)
        state.oi_low = min(state.oi_low, state.oi)

    # ------------------------------------------------------------------ packets

    def is_index(self, key: InstrumentKey) -> bool:
        return key in self.universe.indices

    def packet(self, key: InstrumentKey, mode: FeedMode) -> list[Packet]:
        """What Dhan sends for ``key`` in ``mode`` now; recorded in ``last_sent``.

        TICKER → [Ticker]; QUOTE → [Quote, OI] ([Quote] for an index); FULL → [Full] (an index
        gets a Full packet with zero OI and zero depth: reference §8.7 leaves it open, and a
        client must dispatch on the response code anyway).
        """
        s = self._state[key]
        seg, sid = key
        ltp = s.price(s.ltp)
        out: list[Packet]
        if mode == FeedMode.TICKER:
            out = [TickerPacket(seg, sid, ltp, s.ltt)]
        else:
            atp = f32(round(s.turnover / s.volume, 2)) if s.volume else 0.0
            ohlc = (s.price(s.open), s.price(s.prev_close), s.price(s.high), s.price(s.low))
            if mode == FeedMode.QUOTE:
                out = [QuotePacket(seg, sid, ltp, s.ltq, s.ltt, atp, s.volume, s.total_sell, s.total_buy, *ohlc)]
                if not self.is_index(key):
                    out.append(OIPacket(seg, sid, s.oi))
            else:
                out = [
                    FullPacket(
                        seg, sid, ltp, s.ltq, s.ltt, atp, s.volume, s.total_sell, s.total_buy,
                        s.oi, s.oi_high, s.oi_low, *ohlc, s.depth,
                    )  # fmt: skip
                ]
        sent = self.last_sent.setdefault(key, {})
        for p in out:
            sent[_code(p)] = p
        return out

    def prev_close_packet(self, key: InstrumentKey) -> PrevClosePacket:
        """The code-6 packet Dhan sends on subscription; recorded in ``last_sent``."""
        s = self._state[key]
        p = PrevClosePacket(key[0], key[1], s.price(s.prev_close), s.prev_oi)
        self.last_sent.setdefault(key, {})[ResponseCode.PREV_CLOSE] = p
        return p


_CODES: dict[type, int] = {
    TickerPacket: ResponseCode.TICKER,
    QuotePacket: ResponseCode.QUOTE,
    OIPacket: ResponseCode.OI,
    FullPacket: ResponseCode.FULL,
    PrevClosePacket: ResponseCode.PREV_CLOSE,
}


def _code(packet: Packet) -> int:
    return _CODES[type(packet)]

