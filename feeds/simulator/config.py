"""Simulator settings: one frozen pydantic model, validated on construction.

It is also the service's ``[simulator]`` settings section (``LIVECHAIN_SIMULATOR__<KEY>``):
``service.settings`` uses this model as it is, so every key is declared here only.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from feeds.dhan.requests import MAX_INSTRUMENTS_PER_CONNECTION
from feeds.simulator.universe import DEFAULT_SPECS

_REST_RATE_LIMIT_STATUSES = (200, 400, 429, 500)


class SimulatorConfig(BaseModel):
    """Everything that shapes the synthetic market and the fake Dhan server.

    Volatilities and the rate are annualised fractions (0.13 = 13 %).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- where the server listens (SimulatorServer's defaults; ``livechain simulate`` uses 8765 for 0)
    host: str = "127.0.0.1"  # address the simulator listens on
    port: int = Field(0, ge=0, le=65535)  # 0: a free port, for the embedded simulator
    # The protocol spoken: Dhan v2 (SimulatorServer) or Zerodha Kite's ticker (KiteSimulatorServer);
    # the embedded simulator is then read through that broker's client.
    broker: Literal["dhan", "kite"] = "dhan"

    # --- universe
    seed: int = 7  # random seed: the same seed gives the same market
    underlyings: tuple[str, ...] = ("NIFTY", "BANKNIFTY", "FINNIFTY")  # symbols simulated (of NIFTY, BANKNIFTY, FINNIFTY…)
    expiries: int = Field(3, ge=1, le=20)
    strikes_per_side: int = Field(20, ge=0, le=1000)  # strikes above and below the money per expiry
    # Pin the universe's "today"; None = the IST date of the clock when the server starts.
    today: dt.date | None = None

    # --- market model
    annual_vol: float = Field(0.13, gt=0, allow_inf_nan=False)  # of the underlying's random walk
    atm_iv: float = Field(0.12, gt=0, allow_inf_nan=False)  # smile: iv = atm_iv + iv_skew*m + iv_curvature*m^2, m = ln(K/F)
    iv_skew: float = Field(-0.25, allow_inf_nan=False)
    iv_curvature: float = Field(1.5, allow_inf_nan=False)
    rate: float = Field(0.065, allow_inf_nan=False)  # annual rate of the market model

    # --- server loop
    tick_interval_s: float = Field(0.05, gt=0, allow_inf_nan=False)  # one market step (and its packets) this often
    # ~600 trades/s over the default 738 options, weighted to near-ATM and near expiries:
    # the nearest NIFTY chain sees ~100 updates/s, its ATM strikes several per second each.
    trades_per_step: int = Field(30, ge=0)
    stack_packets: bool = False  # False: one packet per WebSocket frame, as Dhan sends
    max_packets_per_frame: int = Field(64, ge=1)  # only with stack_packets
    send_queue_frames: int = Field(20_000, ge=1)  # per connection; overflow disconnects that client
    ping_interval_s: float = Field(10.0, gt=0, allow_inf_nan=False)  # Dhan pings every 10 s (reference §1.3)
    max_instruments_per_connection: int = Field(MAX_INSTRUMENTS_PER_CONNECTION, ge=1)  # Dhan's limit per socket (804 beyond)
    # Dhan allows 5 sockets per user; the 6th makes it drop the oldest with reason 805.
    # None disables the check.
    max_connections: int | None = Field(5, ge=1)

    # --- option-chain REST endpoints (feeds.simulator.rest)
    rest_min_interval_s: float = Field(3.0, ge=0, allow_inf_nan=False)  # per unique request, like Dhan (reference §6.4)
    rest_rate_limit_status: int = 429  # HTTP status of an 805 answer (Dhan's is unverified: 200/400/429/500 seen)
    rest_v25: bool = True  # the API v2.5 shape (average_price, security_id); False: the older 12-key one

    # --- credentials: None accepts any non-empty value
    expected_token: str | None = Field(None, min_length=1)  # the token the server accepts (809 otherwise)
    expected_client_id: str | None = Field(None, min_length=1)  # the client id the server accepts (810 otherwise)

    @field_validator("underlyings")
    @classmethod
    def _known_underlyings(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("must name at least one underlying")
        unknown = [s for s in v if s not in DEFAULT_SPECS]
        if unknown:
            raise ValueError(f"unknown symbol {unknown[0]!r}; known: {sorted(DEFAULT_SPECS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"has duplicates: {list(v)}")
        return v

    @field_validator(
        "expiries", "strikes_per_side", "trades_per_step", "max_packets_per_frame", "send_queue_frames",
        "max_instruments_per_connection", "max_connections", mode="before",
    )
    @classmethod
    def _not_a_bool(cls, v: object) -> object:
        if isinstance(v, bool):  # True is an int to Python, never a count to us
            raise ValueError("must be an integer, not a boolean")
        return v

    @field_validator("rest_rate_limit_status")
    @classmethod
    def _rate_limit_status(cls, v: int) -> int:
        if v not in _REST_RATE_LIMIT_STATUSES:
            raise ValueError(f"must be one of {', '.join(map(str, _REST_RATE_LIMIT_STATUSES))}")
        return v
