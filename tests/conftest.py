"""Shared fixtures: a small deterministic chain skeleton and ticks to fill it."""

from __future__ import annotations

import datetime as dt
import os
import socket

from typing import TYPE_CHECKING

import pytest

from feeds.clock import Clock
from feeds.model import ChainSkeleton, FullTick, InstrumentKey, PrevCloseTick, QuoteTick, Tick
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.universe import build_universe

if TYPE_CHECKING:
    from service.core.cache import ChainCache

TODAY = dt.date(2026, 11, 23)  # a Monday: NIFTY's weekly expiry is the next day
NOW = 1_795_000_000.0  # a fixed receive instant for unit tests


ENV_PREFIXES = ("LIVECHAIN_", "DHAN_")


def hermetic_environ(**overrides: str) -> dict[str, str]:
    """This process's environment without any livechain or Dhan setting, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def _data_home(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("xdg-data-home"))


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, _data_home: str) -> None:
    """No test sees a developer's LIVECHAIN_* or DHAN_* variables, and the default history.path
    ($XDG_DATA_HOME/livechain/history) is a temporary directory, never the user's."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", _data_home)


@pytest.fixture
def dhan_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broker credentials as a user of feed.kind = dhan sets them."""
    monkeypatch.setenv("DHAN_CLIENT_ID", "1000000001")
    monkeypatch.setenv("DHAN_ACCESS_TOKEN", "eyJ-test-token")


@pytest.fixture(params=["dhan", "kite"])
def broker(request: pytest.FixtureRequest) -> str:
    """Which broker's protocol the simulator speaks and the service's client reads: a test that
    takes it (directly or through tests.test_service's ``sim``) runs once per broker."""
    return request.param


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def skeleton() -> ChainSkeleton:
    config = SimulatorConfig(underlyings=("NIFTY",), expiries=2, strikes_per_side=2, today=TODAY)
    return build_universe(config, TODAY).skeleton


def full_tick(key: InstrumentKey, ltp: float = 101.5, *, received_at: float = NOW, **fields: object) -> FullTick:
    values: dict[str, object] = dict(
        key=key, ltp=ltp, ltq=75, ltt=int(received_at) - 1, atp=100.25, volume=7500, total_sell_qty=1500,
        total_buy_qty=2250, oi=30000, open=99.0, close=98.5, high=103.0, low=97.0, bid=101.45, bid_qty=150,
        ask=101.55, ask_qty=225, received_at=received_at,
    )
    values.update(fields)
    return FullTick(**values)  # type: ignore[arg-type]


def index_tick(key: InstrumentKey, ltp: float = 24000.05, *, received_at: float = NOW) -> QuoteTick:
    return QuoteTick(key, ltp, 0, int(received_at), ltp, 0, 0, 0, ltp, ltp, ltp, ltp, received_at)


def prev_close_tick(key: InstrumentKey, *, received_at: float = NOW) -> PrevCloseTick:
    return PrevCloseTick(key, 95.0, 28000, received_at)


def priced_cache(skeleton: ChainSkeleton, clock: Clock | None = None) -> ChainCache:
    """A cache of ``skeleton`` with data for every leg (prev close and a Full tick) and the index."""
    from service.core.cache import ChainCache

    cache = ChainCache(skeleton) if clock is None else ChainCache(skeleton, clock=clock)
    ticks: list[Tick] = [index_tick(cache.index_keys["NIFTY"])]
    for key, leg in cache.legs.items():
        if leg.contract is not None:
            ticks += [prev_close_tick(key), full_tick(key)]
    cache.apply(ticks)
    return cache
