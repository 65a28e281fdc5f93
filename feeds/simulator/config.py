"""Simulator settings: one frozen dataclass, validated on construction."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from feeds.dhan.requests import MAX_INSTRUMENTS_PER_CONNECTION
from feeds.simulator.universe import DEFAULT_SPECS


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Everything that shapes the synthetic market and the fake Dhan server.

    Volatilities and the rate are annualised fractions (0.13 = 13 %).
    """

    seed: int = 7
    underlyings: tuple[str, ...] = ("NIFTY", "BANKNIFTY", "FINNIFTY")
    expiries: int = 3
    strikes_per_side: int = 20
    # Pin the universe's "today"; None = the IST date of the clock when the server starts.
    today: dt.date | None = None

    # --- market model
    annual_vol: float = 0.13  # of the underlying's random walk
    atm_iv: float = 0.12  # smile: iv = atm_iv + iv_skew*m + iv_curvature*m^2, m = ln(K/F)
    iv_skew: float = -0.25
    iv_curvature: float = 1.5
    rate: float = 0.065

    # --- server loop
    tick_interval_s: float = 0.05
    # ~600 trades/s over the default 738 options, weighted to near-ATM and near expiries:
    # the nearest NIFTY chain sees ~100 updates/s, its ATM strikes several per second each.
    trades_per_step: int = 30
    stack_packets: bool = False  # False: one packet per WebSocket frame, as Dhan sends
    max_packets_per_frame: int = 64  # only with stack_packets
    send_queue_frames: int = 20_000  # per connection; overflow disconnects that client
    ping_interval_s: float = 10.0  # Dhan pings every 10 s (reference §1.3)
    max_instruments_per_connection: int = MAX_INSTRUMENTS_PER_CONNECTION
    # Dhan allows 5 sockets per user; the 6th makes it drop the oldest with reason 805.
    # None disables the check.
    max_connections: int | None = 5

    # --- option-chain REST endpoints (feeds.simulator.rest)
    rest_min_interval_s: float = 3.0  # per unique request, like Dhan (reference §6.4)
    rest_rate_limit_status: int = 429  # HTTP status of an 805 answer (Dhan's is unverified: 200/400/429/500 seen)
    rest_v25: bool = True  # the API v2.5 shape (average_price, security_id); False: the older 12-key one

    # --- credentials: None accepts any non-empty value
    expected_token: str | None = None
    expected_client_id: str | None = None

    def __post_init__(self) -> None:
        if not self.underlyings:
            raise ValueError("underlyings must name at least one underlying")
        for symbol in self.underlyings:
            if symbol not in DEFAULT_SPECS:
                raise ValueError(f"underlyings: unknown symbol {symbol!r}; known: {sorted(DEFAULT_SPECS)}")
        if len(set(self.underlyings)) != len(self.underlyings):
            raise ValueError(f"underlyings has duplicates: {self.underlyings}")
        _positive_int("expiries", self.expiries)
        _non_negative_int("strikes_per_side", self.strikes_per_side)
        for name in ("annual_vol", "atm_iv", "tick_interval_s", "ping_interval_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("iv_skew", "iv_curvature", "rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        _non_negative_int("trades_per_step", self.trades_per_step)
        if not (isinstance(self.rest_min_interval_s, (int, float)) and self.rest_min_interval_s >= 0):
            raise ValueError(f"rest_min_interval_s must be >= 0, got {self.rest_min_interval_s!r}")
        if self.rest_rate_limit_status not in (200, 400, 429, 500):
            raise ValueError(f"rest_rate_limit_status must be 200, 400, 429 or 500, got {self.rest_rate_limit_status!r}")
        _positive_int("max_packets_per_frame", self.max_packets_per_frame)
        _positive_int("send_queue_frames", self.send_queue_frames)
        _positive_int("max_instruments_per_connection", self.max_instruments_per_connection)
        if self.max_connections is not None:
            _positive_int("max_connections", self.max_connections)
        for name in ("expected_token", "expected_client_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be None or a non-empty string")


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _non_negative_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
