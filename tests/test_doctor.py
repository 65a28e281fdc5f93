"""`livechain doctor` against the simulator: every check a real-Dhan user meets, passing and failing."""

from __future__ import annotations

import asyncio
import shlex
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from feeds.simulator.config import SimulatorConfig
from feeds.simulator.kite import KiteSimulatorServer
from feeds.simulator.server import SimulatorServer
from service.doctor import Check, diagnose, render
from service.settings import Settings
from tests.conftest import free_port, hermetic_environ
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401

UNIT_S = 10.0  # a process start on a busy 2-core machine takes a few seconds
TOKEN = "eyJ-doctor-secret-token"
CLIENT_ID = "1000000001"
SIM = dict(underlyings=("NIFTY",), expiries=2, strikes_per_side=3)
LIVECHAIN = Path(sys.executable).with_name("livechain")


@pytest.fixture
async def strict_sim() -> AsyncIterator[SimulatorServer]:
    """A simulator that, like Dhan, accepts only one token and one client id."""
    async with SimulatorServer(SimulatorConfig(**SIM, expected_token=TOKEN, expected_client_id=CLIENT_ID)) as server:
        yield server


def _dhan_env(sim: SimulatorServer, tmp_path: Path, **overrides: str) -> dict[str, str]:
    """What a real-Dhan user sets, pointed at the simulator."""
    return hermetic_environ(**{
        "LIVECHAIN_FEED__KIND": "dhan", "LIVECHAIN_FEED__URL": sim.feed_url, "LIVECHAIN_FEED__REST_URL": sim.rest_url,
        "LIVECHAIN_INSTRUMENTS__SOURCE": sim.scrip_master_url,
        "LIVECHAIN_INSTRUMENTS__CACHE_DIR": str(tmp_path / "scrip-cache"),
        "LIVECHAIN_MARKET__SCHEDULE": "always_open",  # the simulator trades around the clock
        "LIVECHAIN_HTTP__PORT": str(free_port()), "LIVECHAIN_METRICS__PORT": str(free_port()),
        "LIVECHAIN_REDIS__ENABLED": "false",
        "DHAN_CLIENT_ID": CLIENT_ID, "DHAN_ACCESS_TOKEN": TOKEN, **overrides,
    })


async def _doctor(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(LIVECHAIN), "doctor", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(3 * UNIT_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _status(out: str, name: str) -> str:
    for line in out.splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and parts[1].startswith(name + " "):
            return parts[0]
    raise AssertionError(f"no {name!r} line in:\n{out}")


@pytest.mark.slow
async def test_doctor_passes_against_the_simulator_as_dhan(strict_sim: SimulatorServer, tmp_path: Path) -> None:
    """The command a real-Dhan user runs first: every check ok, exit 0, the token nowhere."""
    code, out, err = await _doctor(_dhan_env(strict_sim, tmp_path))
    assert code == 0, out + err
    for name in ("settings", "credentials", "calendar", "scrip master", "feed", "http port", "metrics port"):
        assert _status(out, name) == "ok", out
    assert "data received" in out and "cache " in out and out.rstrip().endswith("all checks passed")
    assert TOKEN not in out + err
    assert list((tmp_path / "scrip-cache").glob("scrip-master-*.csv"))  # the day's copy was kept


@pytest.mark.slow
async def test_doctor_fails_naming_the_problems(strict_sim: SimulatorServer, tmp_path: Path) -> None:
    """A wrong token (Dhan's 809 in words) and a busy port: FAIL lines, exit 1, the token nowhere."""
    wrong = "eyJ-expired-token-of-yesterday"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = await _doctor(
            _dhan_env(strict_sim, tmp_path, DHAN_ACCESS_TOKEN=wrong, LIVECHAIN_HTTP__PORT=str(port))
        )
    assert code == 1, out + err
    assert _status(out, "feed") == "FAIL" and "809 access token invalid" in out
    assert _status(out, "http port") == "FAIL" and f"127.0.0.1:{port} (http.port): in use" in out
    assert _status(out, "scrip master") == "ok"
    assert "FAILED: feed, http port" in out
    assert wrong not in out + err


@pytest.mark.slow
async def test_doctor_reports_invalid_settings_with_exit_2(tmp_path: Path) -> None:
    """Settings that do not load: one FAIL line naming the key, exit 2."""
    code, out, _ = await _doctor(hermetic_environ(LIVECHAIN_HTTP__PORT="99999"))
    assert code == 2 and _status(out, "settings") == "FAIL" and "http.port" in out


def _settings(sim: SimulatorServer, tmp_path: Path, **sections: dict) -> Settings:
    base: dict[str, dict] = {
        "feed": {"kind": "dhan", "url": sim.feed_url, "rest_url": sim.rest_url},
        "instruments": {"source": sim.scrip_master_url, "cache_dir": str(tmp_path / "cache")},
        "market": {"schedule": "always_open"}, "http": {"port": 0}, "metrics": {"port": 0},
        "redis": {"enabled": False},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return Settings(**base)


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


async def test_doctor_runs_the_token_command(
    strict_sim: SimulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With feed.token_command the token comes from the command; the report never shows it."""
    monkeypatch.setenv("DHAN_CLIENT_ID", CLIENT_ID)
    script = tmp_path / "renew.py"
    script.write_text(f"print({TOKEN!r})\n")
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    secrets: list[str] = []
    checks = await diagnose(_settings(strict_sim, tmp_path, feed={"token_command": command}), secrets=secrets)
    c = _by_name(checks)
    assert c["credentials"].status == "ok" and "feed.token_command" in c["credentials"].detail
    assert c["feed"].status == "ok", c["feed"]
    text, code = render(checks, secrets=secrets)
    assert code == 0 and TOKEN in secrets and TOKEN not in text


async def test_doctor_without_credentials(strict_sim: SimulatorServer, tmp_path: Path) -> None:
    """No DHAN_* variables: credentials FAIL naming them, and the feed check is skipped."""
    c = _by_name(await diagnose(_settings(strict_sim, tmp_path)))
    assert c["credentials"].status == "FAIL" and "DHAN_CLIENT_ID" in c["credentials"].detail
    assert c["feed"].status == "skip"


async def test_doctor_uses_the_cached_scrip_master_when_the_download_fails(
    strict_sim: SimulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a good run, a dead scrip-master URL still passes on the day's cached copy."""
    monkeypatch.setenv("DHAN_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DHAN_ACCESS_TOKEN", TOKEN)
    first = _by_name(await diagnose(_settings(strict_sim, tmp_path), check_feed=False))
    assert first["scrip master"].status == "ok" and first["feed"].status == "skip"
    dead = f"http://127.0.0.1:{free_port()}/api-scrip-master-detailed.csv"
    again = _by_name(await diagnose(_settings(strict_sim, tmp_path, instruments={"source": dead}), check_feed=False))
    assert again["scrip master"].status == "ok" and "newest copy" in again["scrip master"].detail
    none = _by_name(
        await diagnose(_settings(strict_sim, tmp_path, instruments={"source": dead, "cache_dir": str(tmp_path / "x")}),
                       check_feed=False)  # fmt: skip
    )
    assert none["scrip master"].status == "FAIL" and "no usable cached copy" in none["scrip master"].detail


async def test_doctor_checks_redis(redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    """Redis reachable: ok with its version; required and unreachable: FAIL; auto and unreachable: warn."""
    async with SimulatorServer(SimulatorConfig(**SIM)) as sim:
        ok = _by_name(await diagnose(Settings(redis={"url": redis_server.url}, http={"port": 0}, metrics={"port": 0}),
                                     check_feed=False))  # fmt: skip
        assert ok["redis"].status == "ok" and "answers" in ok["redis"].detail
        dead = f"redis://:pw@127.0.0.1:{free_port()}/0"
        required = _by_name(await diagnose(_settings(sim, tmp_path, redis={"url": dead, "enabled": True}), check_feed=False))
        assert required["redis"].status == "FAIL" and ":***@" in required["redis"].detail
        assert "pw@" not in required["redis"].detail
        auto = _by_name(await diagnose(_settings(sim, tmp_path, redis={"url": dead, "enabled": "auto"}), check_feed=False))
        assert auto["redis"].status == "warn"


async def test_doctor_on_the_embedded_simulator_passes() -> None:
    """`livechain doctor` with no settings at all (the embedded simulator): every check passes."""
    checks = await diagnose(Settings(http={"port": 0}, metrics={"port": 0}, redis={"enabled": False},
                                     simulator=SIM))  # fmt: skip
    text, code = render(checks)
    assert code == 0, text
    assert _by_name(checks)["feed"].status == "ok"


@pytest.fixture
async def strict_kite() -> AsyncIterator[KiteSimulatorServer]:
    """Kite's simulator, accepting only one access token."""
    async with KiteSimulatorServer(SimulatorConfig(**SIM, expected_token=TOKEN)) as server:
        yield server


def _kite_settings(sim: KiteSimulatorServer, tmp_path: Path) -> Settings:
    return Settings(
        feed={"kind": "kite", "url": sim.feed_url}, instruments={"source": sim.instruments_url},
        market={"schedule": "always_open"}, http={"port": 0}, metrics={"port": 0}, redis={"enabled": False},
    )


async def test_doctor_checks_kite_credentials_and_feed(
    strict_kite: KiteSimulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """feed.kind = kite: KITE_API_KEY and the token are checked (FAIL naming the missing
    variable), Kite's instruments CSV and 3 × 3000 budget, and the probe connection (403 = FAIL)."""
    monkeypatch.delenv("KITE_API_KEY", raising=False)
    monkeypatch.delenv("KITE_ACCESS_TOKEN", raising=False)
    missing = _by_name(await diagnose(_kite_settings(strict_kite, tmp_path)))
    assert missing["credentials"].status == "FAIL" and "KITE_API_KEY" in missing["credentials"].detail
    assert missing["feed"].status == "skip"
    assert missing["scrip master"].status == "ok" and "of 9000 subscriptions" in missing["scrip master"].detail

    monkeypatch.setenv("KITE_API_KEY", "kite-api-key")
    monkeypatch.setenv("KITE_ACCESS_TOKEN", TOKEN)
    secrets: list[str] = []
    checks = await diagnose(_kite_settings(strict_kite, tmp_path), secrets=secrets)
    c = _by_name(checks)
    assert c["credentials"].status == "ok" and c["credentials"].detail == (
        "KITE_API_KEY set; access token read from KITE_ACCESS_TOKEN"
    )
    assert c["scrip master"].status == "ok" and "instruments.cache_dir" not in c["scrip master"].detail
    assert c["feed"].status == "ok" and "NIFTY index subscribed, data received" in c["feed"].detail, c["feed"]
    text, code = render(checks, secrets=secrets)
    assert code == 0 and TOKEN in secrets and TOKEN not in text

    monkeypatch.setenv("KITE_ACCESS_TOKEN", "stale-kite-token")
    refused = _by_name(await diagnose(_kite_settings(strict_kite, tmp_path)))
    assert refused["credentials"].status == "ok"
    assert refused["feed"].status == "FAIL" and "403" in refused["feed"].detail, refused["feed"]
