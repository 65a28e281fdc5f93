"""The ``livechain`` command as a user runs it: a real process, real ports, real signals."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from feeds.simulator.config import SimulatorConfig
from feeds.simulator.server import SimulatorServer
from tests.conftest import free_port, hermetic_environ

UNIT_S = 10.0  # process start-up on a busy 2-core machine takes a few seconds
SIM = dict(underlyings=("NIFTY",), expiries=1, strikes_per_side=3)
LIVECHAIN = Path(sys.executable).with_name("livechain")  # the console script installed next to this Python


def _env(**overrides: str) -> dict[str, str]:
    return hermetic_environ(
        LIVECHAIN_SIMULATOR__STRIKES_PER_SIDE="3",
        LIVECHAIN_SIMULATOR__EXPIRIES="1",
        LIVECHAIN_METRICS__PORT="0",  # never the fixed default: suites may run side by side
        LIVECHAIN_REDIS__ENABLED="false",  # hermetic: never a developer's Redis on 6379
        **overrides,
    )


def _dhan_env(sim: SimulatorServer, **overrides: str) -> dict[str, str]:
    """A `feed.kind = dhan` run pointed at ``sim``, with credentials, on a free HTTP port."""
    return _env(
        LIVECHAIN_FEED__KIND="dhan", LIVECHAIN_FEED__URL=sim.feed_url, LIVECHAIN_FEED__REST_URL=sim.rest_url,
        LIVECHAIN_INSTRUMENTS__SOURCE=sim.scrip_master_url, LIVECHAIN_HTTP__PORT=str(free_port()),
        **{"DHAN_CLIENT_ID": "1000000001", "DHAN_ACCESS_TOKEN": "eyJ-token", **overrides},
    )


async def _spawn(
    env: dict[str, str], *args: str, cwd: Path | None = None, script: bool = False
) -> asyncio.subprocess.Process:
    """``python -m service run`` (or ``args``); with ``script``, the installed ``livechain`` command."""
    command = (str(LIVECHAIN),) if script else (sys.executable, "-m", "service")
    return await asyncio.create_subprocess_exec(
        *command, *(args or ("run",)), env=env, cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )


async def _serves_nifty_then_exits_0_on_sigterm(proc: asyncio.subprocess.Process, port: int) -> None:
    """The process opens its port with NIFTY's chain, then stops with exit 0 on SIGTERM."""
    seen: list[str] = []
    try:
        await _wait_for_line(proc, "serving http://", seen)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(f"http://127.0.0.1:{port}/options/live?underlying=NIFTY") as resp:
                assert resp.status == 200
                assert (await resp.json())["underlying"] == "NIFTY"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(UNIT_S):
            rest = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
            assert await proc.wait() == 0, "".join(seen) + rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _wait_for_line(proc: asyncio.subprocess.Process, needle: str, seen: list[str]) -> None:
    async with asyncio.timeout(3 * UNIT_S):
        while True:
            line = await proc.stderr.readline()  # type: ignore[union-attr]
            if not line:
                raise AssertionError(f"process ended before {needle!r}: {''.join(seen)}")
            seen.append(line.decode())
            if needle in seen[-1]:
                return


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(SimulatorConfig(**SIM)) as server:
        yield server


async def test_run_serves_then_stops_cleanly_on_sigterm() -> None:
    """`livechain run` serves NIFTY on the simulator and exits 0 within seconds of SIGTERM."""
    port = free_port()
    proc = await _spawn(_env(LIVECHAIN_HTTP__PORT=str(port)))
    seen: list[str] = []
    try:
        await _wait_for_line(proc, "serving http://", seen)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
            async with http.get(f"http://127.0.0.1:{port}/options/live?underlying=NIFTY") as resp:
                assert resp.status == 200
                body = await resp.json()
        assert body["underlying"] == "NIFTY" and len(body["strikes"]) == 7
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(UNIT_S):
            rest = await proc.stderr.read()  # type: ignore[union-attr]
            assert await proc.wait() == 0
        assert "SIGTERM received" in rest.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_readiness_timeout_exits_3_naming_the_missing(sim: SimulatorServer) -> None:
    """When coverage never comes the process exits 3 and says how many and which underlyings."""
    sim.withhold(sorted(sim.universe.contracts)[:2])
    proc = await _spawn(
        _dhan_env(sim, LIVECHAIN_READINESS__TIMEOUT_S="1", DHAN_ACCESS_TOKEN="eyJ-secret-token")
    )
    async with asyncio.timeout(3 * UNIT_S):
        err = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        code = await proc.wait()
    assert code == 3, err
    assert "readiness timeout" in err and "2 instruments without data in: NIFTY (2 missing)" in err
    assert "eyJ-secret-token" not in err


async def test_bad_config_exits_2_naming_the_key() -> None:
    """A bad environment value stops startup with exit 2 and the variable's name."""
    proc = await _spawn(_env(LIVECHAIN_READINESS__MIN_COVERAGE="2"))
    async with asyncio.timeout(UNIT_S):
        err = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        assert await proc.wait() == 2
    assert "LIVECHAIN_READINESS__MIN_COVERAGE" in err


async def test_missing_credentials_exit_2() -> None:
    """feed.kind=dhan without credentials exits 2 naming both variables."""
    proc = await _spawn(_env(LIVECHAIN_FEED__KIND="dhan"))
    async with asyncio.timeout(UNIT_S):
        err = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        assert await proc.wait() == 2
    assert "DHAN_CLIENT_ID, DHAN_ACCESS_TOKEN" in err


async def test_sigterm_sends_dhan_disconnect_before_closing(sim: SimulatorServer) -> None:
    """On SIGTERM the client sends {"RequestCode": 12}, closes, and the process exits 0."""
    proc = await _spawn(
        _dhan_env(sim)
    )
    seen: list[str] = []
    try:
        await _wait_for_line(proc, "serving http://", seen)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(UNIT_S):
            await proc.stderr.read()  # type: ignore[union-attr]
            assert await proc.wait() == 0
        async with asyncio.timeout(UNIT_S):
            while sim.connections_open:
                await asyncio.sleep(0.01)
        assert sim.stats.disconnect_requests == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_fatal_broker_refusal_exits_4(sim: SimulatorServer) -> None:
    """A code-50 808 after startup stops the process with exit 4, naming the reason."""
    proc = await _spawn(
        _dhan_env(sim)
    )
    seen: list[str] = []
    try:
        await _wait_for_line(proc, "serving http://", seen)
        sim.disconnect_all(808)
        async with asyncio.timeout(UNIT_S):
            err = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
            assert await proc.wait() == 4
        assert "808" in err and "authentication failed" in err
        assert sim.stats.connections_accepted == 1  # no reconnect storm
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_record_then_replay_from_the_command_line(tmp_path) -> None:  # noqa: ANN001
    """`livechain record` writes a recording; `livechain replay FILE --speed 0` serves it."""
    out = tmp_path / "rec.lcr"
    port = free_port()
    env = _env(LIVECHAIN_HTTP__PORT=str(port))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "record", "--out", str(out), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        await _wait_for_line(proc, "serving http://", seen)
        await asyncio.sleep(0.5)  # some live ticks
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(UNIT_S):
            await proc.stderr.read()  # type: ignore[union-attr]
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (tmp_path / "rec.0001.lcr").stat().st_size > 1000
    port = free_port()
    replay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "replay", str(out), "--speed", "0", env=_env(LIVECHAIN_HTTP__PORT=str(port)),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    seen = []
    try:
        await _wait_for_line(replay, "serving http://", seen)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
            async with http.get(f"http://127.0.0.1:{port}/options/live?underlying=NIFTY") as resp:
                assert resp.status == 200
                body = await resp.json()
        assert all(row["ce"]["ltp"] is not None for row in body["strikes"])
        replay.send_signal(signal.SIGTERM)
        async with asyncio.timeout(UNIT_S):
            await replay.stderr.read()  # type: ignore[union-attr]
            assert await replay.wait() == 0
    finally:
        if replay.returncode is None:
            replay.kill()
            await replay.wait()


# --------------------------------------------------------------------------- a self-contained install


async def test_installed_script_runs_on_the_simulator_from_any_directory(tmp_path: Path) -> None:
    """`livechain run` started outside the repository reads its packaged defaults and serves the simulator."""
    port = free_port()
    proc = await _spawn(_env(LIVECHAIN_HTTP__PORT=str(port)), cwd=tmp_path, script=True)
    await _serves_nifty_then_exits_0_on_sigterm(proc, port)


async def test_installed_script_runs_on_dhan_from_any_directory(sim: SimulatorServer, tmp_path: Path) -> None:
    """feed.kind=dhan outside the repository finds the packaged NSE calendar, reaches readiness, stops on SIGTERM."""
    env = _dhan_env(sim)
    proc = await _spawn(env, cwd=tmp_path, script=True)
    await _serves_nifty_then_exits_0_on_sigterm(proc, int(env["LIVECHAIN_HTTP__PORT"]))
    assert sim.stats.connections_accepted >= 1


@pytest.mark.parametrize("via", ["--config", "LIVECHAIN_CONFIG"])
async def test_missing_config_file_exits_2_naming_it(tmp_path: Path, via: str) -> None:
    """A settings file named by --config or LIVECHAIN_CONFIG that does not exist: exit 2 naming the file."""
    absent = tmp_path / "absent.toml"
    if via == "--config":
        proc = await _spawn(_env(), "run", "--config", str(absent), cwd=tmp_path, script=True)
    else:
        proc = await _spawn(_env(LIVECHAIN_CONFIG=str(absent)), cwd=tmp_path, script=True)
    async with asyncio.timeout(UNIT_S):
        err = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        assert await proc.wait() == 2, err
    assert f"config file not found: {absent}" in err and via in err


async def test_missing_holidays_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    """A configured holiday file that does not exist (relative to its TOML) stops startup with exit 2."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "livechain.toml").write_text('[market]\nholidays_file = "nse-holidays.toml"\n')
    proc = await _spawn(_env(), "run", "--config", str(conf / "livechain.toml"), cwd=tmp_path, script=True)
    async with asyncio.timeout(UNIT_S):
        err = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        assert await proc.wait() == 2, err
    assert "market.holidays_file" in err and str(conf / "nse-holidays.toml") in err
