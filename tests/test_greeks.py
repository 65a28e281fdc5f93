"""Black-76 IV and greeks (service.analytics.greeks) against an independent implementation, vollib.

vollib computes IV with Peter Jäckel's "Let's be rational" and Φ with Cody's erfc; we use
Halley's method and the C library's erfc: nothing is shared but the formulas' definitions.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from vollib.black import black
from vollib.black.greeks.analytical import delta, gamma, theta, vega
from vollib.black.implied_volatility import implied_volatility
from vollib.helpers.exceptions import PriceIsAboveMaximum, PriceIsBelowIntrinsic

from service.analytics.greeks import black76, implied_vol

TOLERANCE = 1e-6  # the bar, on σ as a fraction and on every greek
F = 25_000.0
R = 0.065
LOG_MONEYNESS = (-0.5, -0.2, -0.1, -0.05, -0.02, -0.005, 0.0, 0.005, 0.02, 0.05, 0.1, 0.2, 0.5)
DAYS = (5 / 1440, 1 / 24, 1.0, 2.5, 7.0, 30.0, 91.0, 365.0, 730.0)
VOLS = (0.01, 0.05, 0.1, 0.14, 0.3, 0.8, 2.0)
# Where the out-of-the-money price (the time value) is below this many rupees on a ₹25,000
# forward — 1/50,000 of the ₹0.05 tick — the price no longer pins σ to 1e-6 for anyone:
# vollib itself misses its own input vol by more there. Those prices cannot occur in a chain.
MIN_TIME_VALUE = 1e-6


def _reference_iv(price: float, strike: float, years: float, flag: str) -> float:
    """vollib's IV, NaN where it has none (it returns 0 or raises at or below intrinsic)."""
    try:
        sigma = implied_volatility(price, F, strike, R, years, flag)
    except (PriceIsBelowIntrinsic, PriceIsAboveMaximum):
        return math.nan
    return math.nan if sigma <= 0 else sigma


def _grid() -> list[tuple[float, float, float, str]]:
    return [
        (F * math.exp(m), days / 365, vol, flag)
        for m, days, vol, flag in itertools.product(LOG_MONEYNESS, DAYS, VOLS, "cp")
    ]


def test_greeks_and_value_agree_with_vollib_across_the_grid() -> None:
    """Value, delta, gamma, theta (per day) and vega (per vol point) to 1e-6 on 1,638 options."""
    grid = _grid()
    K, T, V = (np.array([g[i] for g in grid]) for i in range(3))
    is_call = np.array([g[3] == "c" for g in grid])
    ours = black76(F, K, T, R, V, is_call)
    for i, (strike, years, vol, flag) in enumerate(grid):
        reference = (
            black(flag, F, strike, years, R, vol), delta(flag, F, strike, years, R, vol),
            gamma(flag, F, strike, years, R, vol), theta(flag, F, strike, years, R, vol),
            vega(flag, F, strike, years, R, vol),
        )  # fmt: skip
        for name, ref, got in zip(ours._fields, reference, (a[i] for a in ours), strict=True):
            # Absolute for the greeks; relative for values (deep in the money they reach ₹10,000s).
            scale = max(1.0, abs(ref)) if name == "value" else 1.0
            assert abs(got - ref) <= TOLERANCE * scale, (name, strike / F, years * 365, vol, flag, got, ref)


def test_implied_vol_agrees_with_vollib_across_the_grid() -> None:
    """IV recovered from vollib's prices matches vollib's IV to 1e-6, and both find the input vol."""
    grid = _grid()
    K, T = (np.array([g[i] for g in grid]) for i in range(2))
    is_call = np.array([g[3] == "c" for g in grid])
    prices = np.array([black(flag, F, k, t, R, v) for k, t, v, flag in grid])
    ours = implied_vol(prices, F, K, T, R, is_call)
    intrinsic = np.where(is_call, np.maximum(F - K, 0.0), np.maximum(K - F, 0.0))
    time_value = prices * np.exp(R * T) - intrinsic
    compared = 0
    for i, (strike, years, vol, flag) in enumerate(grid):
        if time_value[i] < MIN_TIME_VALUE:
            continue
        reference = _reference_iv(prices[i], strike, years, flag)
        assert abs(ours[i] - reference) <= TOLERANCE, (strike / F, years * 365, vol, flag, prices[i], ours[i], reference)
        assert abs(ours[i] - vol) <= TOLERANCE, (strike / F, years * 365, vol, flag, ours[i])
        compared += 1
    assert compared > 1000  # the filter leaves most of the grid in: deep and tiny cases included


@pytest.mark.parametrize(
    ("strike", "days", "vol", "flag"),
    [
        (F * math.exp(-0.1), 7.0, 0.3, "c"),  # 2,400 points in the money: time value ~0.1 % of the price
        (F * math.exp(0.1), 7.0, 0.3, "p"),
        (F * math.exp(0.12), 7.0, 0.25, "c"),  # 3,200 points out of the money: a price of a few paise
        (F * math.exp(-0.12), 7.0, 0.25, "p"),
        (F * 1.002, 1.0, 0.01, "c"),  # tiny vol, one day
        (F * 0.998, 1 / 24, 0.01, "p"),  # tiny vol, one hour
        (F, 5 / 1440, 0.14, "c"),  # five minutes before expiry, at the money
        (F * 1.05, 730.0, 3.0, "c"),  # enormous vol, long-dated
    ],
    ids=["deep-itm-call", "deep-itm-put", "deep-otm-call", "deep-otm-put", "tiny-vol-1d", "tiny-vol-1h",
         "atm-5min", "huge-vol"],
)
def test_edge_cases_agree_with_vollib(strike: float, days: float, vol: float, flag: str) -> None:
    """The corners a chain really has: deep ITM/OTM, minutes to expiry, tiny and huge vol."""
    years = days / 365
    price = black(flag, F, strike, years, R, vol)
    reference = _reference_iv(price, strike, years, flag)
    ours = float(implied_vol(price, F, strike, years, R, flag == "c"))
    assert not math.isnan(reference)
    assert abs(ours - reference) <= TOLERANCE and abs(ours - vol) <= TOLERANCE


@pytest.mark.parametrize(
    ("price", "strike", "years", "is_call", "why"),
    [
        (math.nan, F, 0.02, True, "no price"),
        (0.0, F, 0.02, True, "zero price"),
        (-1.0, F, 0.02, True, "negative price"),
        (400.0, F - 500, 0.02, True, "call below intrinsic (F − K = 500)"),
        (400.0, F + 500, 0.02, False, "put below intrinsic (K − F = 500)"),
        (500.0 * math.exp(-R * 0.02), F - 500, 0.02, True, "exactly intrinsic: no time value"),
        (F, F - 500, 0.02, True, "call at the forward: above any Black price"),
        (150.0, F, 0.0, True, "expired"),
        (150.0, F, -0.01, True, "past expiry"),
        (150.0, 0.0, 0.02, True, "zero strike"),
    ],
)
def test_undefined_is_nan_never_zero(price: float, strike: float, years: float, is_call: bool, why: str) -> None:
    """No σ reprices these: NaN (null in the body), and the greeks of a NaN vol are NaN too."""
    sigma = implied_vol(price, F, strike, years, R, is_call)
    assert math.isnan(float(sigma)), why
    assert all(math.isnan(float(a)) for a in black76(F, strike, years, R, sigma, is_call)), why


def test_expired_or_zero_vol_greeks_are_nan() -> None:
    assert all(math.isnan(float(a)) for a in black76(F, F, 0.0, R, 0.14, True))
    assert all(math.isnan(float(a)) for a in black76(F, F, 0.02, R, 0.0, False))


def test_call_and_put_at_one_strike_share_an_iv() -> None:
    """Parity-consistent call and put prices give the same σ (both solved via the OTM side)."""
    strikes = np.array([24_000.0, 25_000.0, 26_000.0])
    years = 9 / 365
    calls = black76(F, strikes, years, R, 0.17, True).value
    puts = calls - math.exp(-R * years) * (F - strikes)  # C − P = e^{−rT}(F − K)
    assert np.allclose(implied_vol(calls, F, strikes, years, R, True), 0.17, atol=1e-9, rtol=0)
    assert np.allclose(implied_vol(puts, F, strikes, years, R, False), 0.17, atol=1e-9, rtol=0)


def test_shapes_broadcast_and_nan_stays_in_place() -> None:
    """Arrays of mixed validity: each element's answer lands in its own place."""
    prices = np.array([100.0, np.nan, 0.0, 250.0])
    strikes = np.array([25_100.0, 25_000.0, 25_000.0, 24_900.0])
    sigma = implied_vol(prices, F, strikes, 7 / 365, R, np.array([True, True, False, True]))
    assert sigma.shape == (4,)
    assert math.isnan(sigma[1]) and math.isnan(sigma[2])
    for i in (0, 3):
        assert abs(sigma[i] - _reference_iv(prices[i], strikes[i], 7 / 365, "c")) <= TOLERANCE
