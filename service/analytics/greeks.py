"""Black-76 on the forward, vectorized: option value, implied volatility and greeks.

Pure functions over numpy arrays (sans-I/O, no state). Conventions, the same as
``vollib.black`` so that an independent implementation can check every number:

* ``forward`` F, ``strike`` K, ``years`` T (calendar years: seconds / (365 × 86400)),
  ``rate`` r (annual, continuously compounded), ``vol`` σ as a fraction (0.14 = 14 %);
* the value is discounted: ``e^(−rT) · Black(F, K, σ, T)``;
* delta and gamma are with respect to the forward (∂V/∂F, ∂²V/∂F²); theta is ∂V/∂t per
  calendar day (negative: value lost per day); vega is per 1 volatility point (σ + 0.01).

Undefined is NaN, never 0: no price, a price at or below intrinsic value or above the
no-arbitrage maximum, T ≤ 0 (expired), σ ≤ 0, F or K not positive.

Implied volatility is solved on the normalised, out-of-the-money form of the problem (the
time value of either option equals the out-of-the-money option's price by put-call parity,
so deep in-the-money prices lose no precision to their intrinsic value). With
x = −|ln(F/K)| and s = σ√T the normalised price is

    b(x, s) = e^{x/2} Φ(x/s + s/2) − e^{−x/2} Φ(x/s − s/2),   0 < b < e^{x/2},

and we solve ln b(s) = ln β with Halley's method from a closed-form start, inside a
bracket that every step narrows (bisection when a step leaves it). ln b is concave in s, so
the iteration cannot wander; deep out-of-the-money prices, where b falls like e^{−x²/2s²},
converge as fast as at-the-money ones because ln b is nearly linear in 1/s² there.
Every element is iterated only until it converges (the active set shrinks each step).

Φ is evaluated with the C library's ``erfc`` (one C-level ``map`` per call), accurate to
the last bits in both tails; numpy has no error function of its own.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]

DAYS_PER_YEAR = 365.0  # theta per calendar day, and T in calendar years
VOL_POINT = 0.01  # vega per one volatility point
_MAX_ITERATIONS = 64
# A step this small (relative to s) ends the iteration: Halley's error after it is of the order
# of its cube, Newton's of its square, both below 1e-13 relative.
_TOLERANCE = 1e-7
_BRACKET = 1e-13  # or a bracket this narrow (relative)
_NOISE = 64 * np.finfo(np.float64).eps  # rounding in price·e^{rT} − (F − K), relative to the operands
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_MINUS_INV_SQRT2 = -1.0 / math.sqrt(2.0)
_erfc = math.erfc


class Greeks(NamedTuple):
    """Per option: discounted value, ∂V/∂F, ∂²V/∂F², per-day theta, per-vol-point vega."""

    value: Array
    delta: Array
    gamma: Array
    theta: Array
    vega: Array


def norm_cdf(x: Array) -> Array:
    """Φ(x) = erfc(−x/√2) / 2: no cancellation in the lower tail, NaN in → NaN out."""
    flat = (x * _MINUS_INV_SQRT2).ravel().tolist()
    return 0.5 * np.fromiter(map(_erfc, flat), np.float64, len(flat)).reshape(np.shape(x))


def norm_pdf(x: Array) -> Array:
    return _INV_SQRT_2PI * np.exp(-0.5 * x * x)


def _arrays(*values: ArrayLike) -> list[Array]:
    return [np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(*values)]


def _defined(forward: Array, strike: Array, years: Array, vol: Array) -> Array:
    with np.errstate(invalid="ignore"):
        return (forward > 0) & (strike > 0) & (years > 0) & (vol > 0) & np.isfinite(forward * strike * years * vol)


def black76(forward: ArrayLike, strike: ArrayLike, years: ArrayLike, rate: ArrayLike, vol: ArrayLike,
            is_call: ArrayLike) -> Greeks:  # fmt: skip
    """Value and greeks of calls (``is_call`` true) and puts; NaN where undefined."""
    F, K, T, r, sigma, call = _arrays(forward, strike, years, rate, vol, is_call)
    call = call.astype(bool)
    ok = _defined(F, K, T, sigma)
    nan = np.full(F.shape, np.nan)
    F, K, T, sigma = (np.where(ok, a, 1.0) for a in (F, K, T, sigma))  # keep logs and roots finite
    r = np.where(ok, r, 0.0)
    sqrt_t = np.sqrt(T)
    s = sigma * sqrt_t
    d1 = np.log(F / K) / s + 0.5 * s
    d2 = d1 - s
    df = np.exp(-r * T)
    sign = np.where(call, 1.0, -1.0)
    n1 = norm_cdf(sign * d1)  # Φ(d1) for calls, Φ(−d1) for puts
    n2 = norm_cdf(sign * d2)
    pdf1 = norm_pdf(d1)
    value = sign * df * (F * n1 - K * n2)
    delta = sign * df * n1
    gamma = df * pdf1 / (F * s)
    decay = -F * df * pdf1 * sigma / (2.0 * sqrt_t)
    theta = (decay + r * value) / DAYS_PER_YEAR  # ∂V/∂t = −∂V/∂T; the rT in e^{−rT} gives r·V
    vega = F * df * pdf1 * sqrt_t * VOL_POINT
    return Greeks(*(np.where(ok, a, nan) for a in (value, delta, gamma, theta, vega)))


def implied_vol(price: ArrayLike, forward: ArrayLike, strike: ArrayLike, years: ArrayLike, rate: ArrayLike,
                is_call: ArrayLike) -> Array:  # fmt: skip
    """σ (a fraction) that reprices each discounted ``price``; NaN where no σ does."""
    p, F, K, T, r, call = _arrays(price, forward, strike, years, rate, is_call)
    call = call.astype(bool)
    out = np.full(p.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ok = (p > 0) & np.isfinite(p) & _defined(F, K, T, np.ones_like(p)) & np.isfinite(r)
        if not ok.any():
            return out
        idx = np.flatnonzero(ok)
        p, F, K, T, r, call = (a.ravel()[idx] for a in (p, F, K, T, r, call))
        undiscounted = p * np.exp(r * T)
        intrinsic = np.where(call, np.maximum(F - K, 0.0), np.maximum(K - F, 0.0))
        time_value = undiscounted - intrinsic  # = the out-of-the-money option's price
        x = -np.abs(np.log(F / K))
        beta = time_value / np.sqrt(F * K)
        # A time value within rounding of zero is no time value: the price is intrinsic value.
        noise = np.where(intrinsic > 0, _NOISE * np.maximum(np.maximum(F, K), undiscounted), 0.0)
        solvable = (time_value > noise) & (beta < np.exp(0.5 * x))
        s = np.full(p.shape, np.nan)
        if solvable.any():
            s[solvable] = _solve(x[solvable], beta[solvable])
        out.ravel()[idx] = s / np.sqrt(T)
    return out


def normalised_black(x: Array, s: Array) -> Array:
    """b(x, s) for x ≤ 0: the out-of-the-money option's price over √(FK)."""
    return np.exp(0.5 * x) * norm_cdf(x / s + 0.5 * s) - np.exp(-0.5 * x) * norm_cdf(x / s - 0.5 * s)


def _initial(x: Array, beta: Array) -> Array:
    """A start for s within a few percent in most of the plane, so that two to four steps do.

    Near the money, Corrado and Miller's quadratic approximation in the normalised units
    (F' = e^{x/2}, K' = e^{−x/2}): within ~25 % while |x|/s < 2. Far out of the money, the
    Mills-ratio asymptote of Φ, ln b ≈ −x²/2s² − s²/8 + 3 ln s − 2 ln|x| − ½ ln 2π, solved for s
    by three fixed-point steps: within ~1 % once |x|/s > 3.
    """
    half = np.sinh(0.5 * x)  # (F' − K') / 2
    h = beta - half
    near = _SQRT_2PI / (2.0 * np.cosh(0.5 * x)) * (h + np.sqrt(np.maximum(h * h - 4.0 * half * half / math.pi, 0.0)))
    ax = -x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_beta = np.log(beta)
        far = ax / np.sqrt(-2.0 * log_beta)
        for _ in range(3):
            far = ax / np.sqrt(-2.0 * (log_beta - 3.0 * np.log(far) + 2.0 * np.log(ax) + _HALF_LOG_2PI + far * far / 8.0))
        use_far = np.isfinite(far) & (far > 0) & (ax > 2.5 * far)
    return np.maximum(np.where(use_far, far, near), 1e-12)


def _solve(x: Array, beta: Array) -> Array:
    """s > 0 with b(x, s) = β, for x ≤ 0 and 0 < β < e^{x/2}, elementwise."""
    s = _initial(x, beta)
    lo = np.zeros_like(s)
    hi = np.full_like(s, np.inf)
    target = np.log(beta)
    result = np.full_like(s, np.nan)
    active = np.arange(s.size)
    for _ in range(_MAX_ITERATIONS):
        xa, sa, ta = x[active], s[active], target[active]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            b = normalised_black(xa, sa)
            vega = np.exp(0.5 * xa) * norm_pdf(xa / sa + 0.5 * sa)  # ∂b/∂s
            f = np.log(b) - ta
            below = ~(f > 0)  # f < 0, or b underflowed to 0 (ln b = −inf): the root is above
            lo[active] = np.where(below, np.maximum(lo[active], sa), lo[active])
            hi[active] = np.where(below, hi[active], np.minimum(hi[active], sa))
            fp = vega / b  # (ln b)'
            fpp = fp * (xa * xa / (sa * sa * sa) - 0.25 * sa) - fp * fp  # (ln b)''
            newton = -f / fp
            halley = newton / (1.0 + 0.5 * newton * fpp / fp)  # x − 2ff'/(2f'² − ff'')
            step = np.where(np.isfinite(halley) & (np.abs(halley) <= 2 * np.abs(newton)), halley, newton)
            stepped = sa + step
            la, ha = lo[active], hi[active]
            inside = np.isfinite(stepped) & (stepped > la) & (stepped < ha)
            bounded = np.isfinite(ha)
            nxt = np.where(inside, stepped, np.where(bounded, 0.5 * (la + ha), 2.0 * np.maximum(sa, la)))
            # Converged: on the root, a step below the tolerance, or a bracket that narrow. A step
            # too small to leave the bracket's edge (rounding) means s itself is the answer.
            done = (f == 0) | (np.abs(step) <= _TOLERANCE * sa) | (ha - la <= _BRACKET * la)
            final = np.where(f == 0, sa, np.where(inside, stepped, np.where(bounded & ~(ha - la > 0), la, sa)))
        s[active] = nxt
        finished = active[done]
        result[finished] = final[done]
        active = active[~done]
        if active.size == 0:
            break
    else:  # not converged in the iterations allowed: the bracket is what we know
        result[active] = s[active]
    return result
