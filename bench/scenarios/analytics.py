"""Scenario "analytics": what option analytics cost per chain, and what they cost ingest.

Chain: one NIFTY expiry of 251 strikes (502 option legs), every leg priced by the simulator's
own model (its smile, tick-rounded, ₹0.05 at least, as far strikes quote), with OI and
volume, on the day before expiry (29¼ hours left): every leg gets an IV, the most work a
pass can have.

* ``pass, 251 strikes: vs scalar loop``: ``service.analytics.compute.analyse`` (forward, ATM, PCR,
  max pain, straddle, IV and greeks of every leg, the wire form) against the obvious first
  version: a Python loop per leg with a scalar safeguarded Newton IV and ``math.erf``, and
  max pain by the definition's double loop. Same chain, same answers (checked first, IV to
  1e-6), passes per second. The absolute cost of our pass is in the note.
* ``pass, 251 strikes: vs body render``: the same pass against one render of the chain's body
  with every leg re-encoded (what a chain in which every leg changed costs to serve): puts the
  cost of analytics in proportion. Informational.
* ``ingest, analytics every <interval>``: ticks applied flat out (batches of 250, yielding to
  the loop after each, as in the mirror scenario) with an ``AnalyticsRunner`` on the same
  loop, against the same ingest without one. At the default interval (0.5 s) and at the
  mirror's flush interval (0.05 s), the most often anyone would want it. Target ≥ 0.95
  at the default.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random

from bench.flat_out import INGEST_BATCH, flat_out
from bench.model import Budget, Row, Scenario
from bench.timing import Contestant, race
from feeds.clock import ManualClock
from feeds.model import IST, FullTick, QuoteTick, Tick
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.market import Market
from feeds.simulator.universe import build_universe
from service.analytics.compute import analyse, expiry_instant
from service.analytics.runner import AnalyticsRunner
from service.core.cache import Chain, ChainCache
from service.settings import AnalyticsSettings
from service.core.snapshot import render
from service.core.freshness import ChainTimes

NAME = "analytics"
STRIKES_PER_SIDE = 125  # 251 strikes
TODAY = dt.date(2026, 11, 23)
NOW = dt.datetime(2026, 11, 23, 10, 15, tzinfo=IST).timestamp()  # Monday 10:15; the expiry is Tuesday 15:30
RATE = 0.065
INTERVALS_S = (0.5, 0.05)
TARGET = 0.95


def run(budget: Budget) -> list[Row]:
    _, chain = _chain()
    params = AnalyticsSettings(rate=RATE)
    _check(chain, params)
    ours = Contestant("ours", lambda: (analyse(chain, NOW, params), 1)[1])
    scalar = Contestant("scalar", lambda: (_scalar_pass(chain, NOW, RATE), 1)[1])

    def render_all() -> int:
        for _, ce, pe in chain.rows:
            ce.doc = pe.doc = None
        chain.rendered = None
        render(chain, ChainTimes(False, 0, "open", None))
        return 1

    rates = race([ours, scalar, Contestant("render", render_all)], budget.rounds, budget.seconds_per_round)
    ours_us = 1e6 / sorted(rates["ours"])[len(rates["ours"]) // 2]
    rows = [
        Row.compare(NAME, "pass, 251 strikes: vs scalar loop", rates["ours"], rates["scalar"], unit="passes/s",
                    baseline_name="per-leg Python loop", note=f"one full pass: {ours_us:,.0f} µs for 502 legs"),
        Row.compare(NAME, "pass, 251 strikes: vs body render", rates["ours"], rates["render"], unit="passes/s",
                    baseline_name="render, every leg re-encoded"),
    ]  # fmt: skip
    seconds = 0.2 if budget.quick else max(0.6, 2 * budget.seconds_per_round)
    rows += asyncio.run(_ingest(budget.rounds, seconds))
    return rows


# --------------------------------------------------------------------------- the chain


def _chain() -> tuple[ChainCache, Chain]:
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=1, strikes_per_side=STRIKES_PER_SIDE, today=TODAY)
    universe = build_universe(config, TODAY)
    market = Market(universe, config, clock=lambda: NOW)
    cache = ChainCache(universe.skeleton)
    rng = random.Random(5)
    ticks: list[Tick] = []
    spot = market.spot("NIFTY")
    forward = spot * math.exp(config.rate * (expiry_instant(universe.skeleton.underlyings["NIFTY"].expiries[0].expiry)
                                             - NOW) / (365 * 86_400))  # fmt: skip
    for key, contract in universe.contracts.items():
        # At least a tick of time value: a deep in-the-money print below intrinsic has no IV,
        # and this chain is meant to give every leg one.
        intrinsic = max(0.0, forward - contract.strike if contract.option_type == "CE" else contract.strike - forward)
        ltp = max(1, round(market.theoretical_price(key) / 0.05), math.ceil(intrinsic / 0.05) + 1) * 0.05
        ticks.append(
            FullTick(key, round(ltp, 2), 75, int(NOW), round(ltp, 2), 75 * rng.randint(1, 5000), 0, 0,
                     75 * rng.randint(1, 40_000), ltp, ltp, ltp, ltp, round(max(0.05, ltp - 0.05), 2), 150,
                     round(ltp + 0.05, 2), 75, NOW)
        )  # fmt: skip
    ticks.append(QuoteTick(next(iter(universe.indices)), spot, 0, int(NOW), spot, 0, 0, 0, spot, spot, spot, spot, NOW))
    cache.apply(ticks)
    return cache, next(iter(cache.chains.values()))


def _check(chain: Chain, params: AnalyticsSettings) -> None:
    """Refuse to time two implementations that do not give the same answers."""
    ours = analyse(chain, NOW, params)
    theirs = _scalar_pass(chain, NOW, RATE)
    if len(ours.legs) != len(chain.rows) * 2:
        raise AssertionError(f"only {len(ours.legs)} of {2 * len(chain.rows)} legs got an IV: not the worst case")
    for key, values in ours.legs.items():
        iv = theirs["legs"][key][0]
        if abs(values[0] - iv * 100) > 1e-4 + 1e-6 * 100:  # ours is rounded to 4 decimals of a percent
            raise AssertionError(f"IV differs at {key}: {values[0]} vs {iv * 100}")
    for name in ("atm_strike", "max_pain"):
        if ours.chain[name] != theirs[name]:
            raise AssertionError(f"{name}: {ours.chain[name]} vs {theirs[name]}")


# --------------------------------------------------------------------------- the baseline: one leg at a time


def _cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _black(f: float, k: float, t: float, r: float, v: float, call: bool) -> tuple[float, float]:
    """Discounted Black-76 value and ∂V/∂σ."""
    s = v * math.sqrt(t)
    d1 = math.log(f / k) / s + 0.5 * s
    d2 = d1 - s
    df = math.exp(-r * t)
    value = df * (f * _cdf(d1) - k * _cdf(d2)) if call else df * (k * _cdf(-d2) - f * _cdf(-d1))
    return value, df * f * math.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi) * math.sqrt(t)


def _scalar_iv(price: float, f: float, k: float, t: float, r: float, call: bool) -> float | None:
    intrinsic = math.exp(-r * t) * max(0.0, (f - k) if call else (k - f))
    if not price > intrinsic:
        return None
    lo, hi, v = 1e-6, 10.0, 0.2
    for _ in range(100):
        value, vega = _black(f, k, t, r, v, call)
        if value > price:
            hi = v
        else:
            lo = v
        step = (value - price) / vega if vega > 1e-300 else math.inf
        nxt = v - step
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if abs(nxt - v) < 1e-12 * v:
            return nxt
        v = nxt
    return v


def _scalar_pass(chain: Chain, now: float, r: float) -> dict:
    t = (expiry_instant(chain.expiry) - now) / (365 * 86_400)
    growth = math.exp(r * t)
    pairs = sorted((abs(ce.ltp - pe.ltp), s + (ce.ltp - pe.ltp) * growth) for s, ce, pe in chain.rows
                   if ce.ltp is not None and pe.ltp is not None)  # fmt: skip
    near = sorted(f for _, f in pairs[:3])
    f = near[len(near) // 2]
    strikes = [s for s, _, _ in chain.rows]
    atm = min(strikes, key=lambda s: abs(s - f))
    pain = [sum((ce.oi or 0) * max(x - s, 0) + (pe.oi or 0) * max(s - x, 0) for s, ce, pe in chain.rows) for x in strikes]
    legs = {}
    for s, ce, pe in chain.rows:
        for leg, side, call in ((ce, "CE", True), (pe, "PE", False)):
            iv = _scalar_iv(leg.ltp, f, s, t, r, call)
            if iv is None:
                continue
            sqrt_t = math.sqrt(t)
            d1 = math.log(f / s) / (iv * sqrt_t) + 0.5 * iv * sqrt_t
            df = math.exp(-r * t)
            pdf = math.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi)
            value, _ = _black(f, s, t, r, iv, call)
            delta = df * _cdf(d1) if call else -df * _cdf(-d1)
            gamma = df * pdf / (f * iv * sqrt_t)
            theta = (-f * df * pdf * iv / (2 * sqrt_t) + r * value) / 365
            legs[(s, side)] = (iv, delta, gamma, theta, f * df * pdf * sqrt_t * 0.01)
    return {"forward": f, "atm_strike": atm, "max_pain": strikes[pain.index(min(pain))], "legs": legs}


# --------------------------------------------------------------------------- ingest with and without


async def _ingest(rounds: int, seconds: float) -> list[Row]:
    whos = ["off", *(f"{i:g}" for i in INTERVALS_S)]
    rates: dict[str, list[float]] = {who: [] for who in whos}
    passes: dict[str, int] = dict.fromkeys(whos, 0)
    busy: dict[str, float] = dict.fromkeys(whos, 0.0)
    for r in range(rounds):
        k = r % len(whos)
        for who in whos[k:] + whos[:k]:
            rate, n, spent = await _ingest_once(None if who == "off" else float(who), seconds)
            rates[who].append(rate)
            passes[who] += n
            busy[who] += spent
    rows = []
    for interval in INTERVALS_S:
        who = f"{interval:g}"
        note = (
            f"ticks applied back to back in batches of {INGEST_BATCH}, yielding after each; "
            f"{passes[who] / rounds:.0f} analytics passes per {seconds:g} s round, "
            f"{1e6 * busy[who] / max(1, passes[who]):,.0f} µs each ({100 * busy[who] / (rounds * seconds):.1f} % of the time)"
        )
        rows.append(
            Row.compare(NAME, f"ingest, analytics every {interval:g} s", rates[who], rates["off"], unit="ticks/s",
                        baseline_name="analytics off", target=TARGET if interval == INTERVALS_S[0] else None,
                        note=note)
        )  # fmt: skip
    return rows


async def _ingest_once(interval_s: float | None, seconds: float) -> tuple[float, int, float]:
    """Ticks/s, analytics passes, seconds spent in them."""
    cache, _ = _chain()
    ticks = _ticks(cache, 8192)
    if interval_s is None:
        return await flat_out(cache, ticks, seconds), 0, 0.0
    runner = AnalyticsRunner(cache, AnalyticsSettings(rate=RATE, interval_s=interval_s), clock=ManualClock(NOW))
    async with runner:
        rate = await flat_out(cache, ticks, seconds)
    return rate, runner.stats.passes, runner.stats.seconds_total


def _ticks(cache: ChainCache, n: int) -> list[Tick]:
    """Full ticks moving each leg's price by a tick or two around where it is."""
    rng = random.Random(1)
    legs = [leg for leg in cache.legs.values() if leg.contract is not None]
    out: list[Tick] = []
    for i in range(n):
        leg = rng.choice(legs)
        ltp = round(max(0.05, leg.ltp + 0.05 * rng.randint(-2, 2)), 2)
        out.append(
            FullTick(leg.key, ltp, 75, int(NOW) + i, ltp, 7500 + i, 1500, 2250, 30000 + i, ltp, ltp, ltp, ltp,
                     round(max(0.05, ltp - 0.05), 2), 150, round(ltp + 0.05, 2), 225, NOW + i / 1000)
        )  # fmt: skip
    return out


SCENARIO = Scenario(NAME, "option analytics: cost of a 251-strike pass, and ingest with analytics on vs off", run)
