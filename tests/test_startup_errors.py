"""An operator's mistakes stop startup with exit 2 and one line naming the setting (or file, or
port) and what to do: no traceback, no secret, and before warm-up."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

from feeds.simulator.faults import parse_fault
from service.errors import ConfigError
from service.settings import load_settings
from tests.conftest import free_port, hermetic_environ

UNIT_S = 10.0  # process start-up on a busy 2-core machine
PASSWORD = "S3cret"
HEADER = (
    "EXCH_ID,SEGMENT,SECURITY_ID,INSTRUMENT,UNDERLYING_SECURITY_ID,UNDERLYING_SYMBOL,SYMBOL_NAME,DISPLAY_NAME,"
    "SERIES,LOT_SIZE,SM_EXPIRY_DATE,STRIKE_PRICE,OPTION_TYPE,TICK_SIZE"
)


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"LIVECHAIN_HTTP_PORT": "9999"}, ["LIVECHAIN_HTTP_PORT", "did you mean LIVECHAIN_HTTP__PORT"]),
        ({"LIVECHAIN_HTTPS__PORT": "9999"}, ["LIVECHAIN_HTTPS__PORT", "did you mean LIVECHAIN_HTTP__PORT"]),
        ({"livechain_feed__knd": "dhan"}, ["livechain_feed__knd", "LIVECHAIN_FEED__KIND"]),
        ({"LIVECHAIN_INSTRUMENTS__UNDERLYINGS": "NIFTY"}, ["LIVECHAIN_INSTRUMENTS__UNDERLYINGS", "JSON list"]),
        ({"LIVECHAIN_FEED__RECONNECT_MAX_S": "0.1"}, ["feed.reconnect_max_s", "LIVECHAIN_FEED__RECONNECT_MAX_S"]),
        ({"LIVECHAIN_FEED__URL": "ws://127.0.0.1:99999"}, ["feed.url", "port"]),
        ({"LIVECHAIN_FEED__URL": "ws://:8765"}, ["feed.url"]),
        ({"LIVECHAIN_REDIS__URL": f"redis://:{PASSWORD}/Redis@host:6379/0"}, ["redis.url", "percent-encoded", "%2F"]),
        ({"LIVECHAIN_REDIS__URL": f"redis://:{PASSWORD}#x@host:6379/0"}, ["redis.url", "%23"]),
        ({"LIVECHAIN_REDIS__URL": f"redis://:{PASSWORD}?x@host:6379/0"}, ["redis.url", "%3F"]),
        ({"LIVECHAIN_HTTP__API_KEYS": f'["{PASSWORD}"]'}, ["http.api_keys", "16"]),
    ],
)
def test_bad_settings_are_one_line_naming_the_key_without_the_value(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needles: list[str]
) -> None:
    """Misspelled variables, non-JSON lists, inconsistent ranges, bad URLs: one line, the key, never the value."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message
    assert PASSWORD not in message


def test_well_formed_settings_and_percent_encoded_passwords_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks reject only what is broken: an encoded password, nested keys and known variables load."""
    monkeypatch.setenv("LIVECHAIN_REDIS__URL", "redis://:S3cret%2FRedis%23x@10.0.0.5:6379/0")
    monkeypatch.setenv("LIVECHAIN_FEED__URL", "ws://127.0.0.1:8765")
    monkeypatch.setenv("LIVECHAIN_HTTP__API_KEYS", '["0123456789abcdef-key"]')
    monkeypatch.setenv("LIVECHAIN_HTTP__MAX_CONNECTIONS", "10")
    s = load_settings()
    assert s.redis.url.get_secret_value().endswith("@10.0.0.5:6379/0") and s.http.max_connections == 10
    assert s.http.api_keys[0].get_secret_value() == "0123456789abcdef-key" and "0123456789abcdef" not in repr(s)


@pytest.mark.parametrize("spec", ["disconnect@3=999", "disconnect@3=80", "reject@3=200", "reject@3=429x0", "reject@3=x"])
def test_fault_specs_that_cannot_be_applied_are_rejected(spec: str) -> None:
    """A fault the simulator cannot inject is refused when parsed, not when its time comes."""
    with pytest.raises(ValueError, match="bad fault"):
        parse_fault(spec)


async def _run(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", *args, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(3 * UNIT_S):
            err = await proc.stderr.read()  # type: ignore[union-attr]
            return await proc.wait(), err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _env(**overrides: str) -> dict[str, str]:
    env = dict(
        LIVECHAIN_SIMULATOR__STRIKES_PER_SIDE="2", LIVECHAIN_SIMULATOR__EXPIRIES="1",
        LIVECHAIN_METRICS__PORT="0", LIVECHAIN_REDIS__ENABLED="false", LIVECHAIN_HTTP__PORT=str(free_port()),
    )  # fmt: skip
    return hermetic_environ(**{**env, **overrides})


@pytest.mark.slow
async def test_cli_startup_mistakes_exit_2_with_one_line(tmp_path: Path) -> None:
    """Each mistake from the report, as a user makes it: exit 2, one ERROR line naming the setting, no traceback."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = str(busy.getsockname()[1])
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\xd0\xff\xfe" * 20)
    huge = tmp_path / "master.csv"
    huge.write_text(HEADER + "\nNSE,D,1,OPTIDX,13,NIFTY,\"" + "x" * 200_000 + "\",a,b,75,2026-12-01,25000,CE,5\n")
    cases: list[tuple[dict[str, str], tuple[str, ...], list[str]]] = [
        (_env(LIVECHAIN_HTTP__PORT=busy_port), ("run",), ["http.port", busy_port, "already in use"]),
        (_env(LIVECHAIN_METRICS__PORT=busy_port), ("run",), ["metrics.port", "already in use"]),
        (_env(LIVECHAIN_HTTP__PORT=busy_port), ("replica",), ["http.port", "already in use"]),
        (_env(LIVECHAIN_HTTP__HOST="no-such-host.invalid"), ("run",), ["http.host", "does not resolve"]),
        (_env(LIVECHAIN_HTTP__HOST="192.0.2.1"), ("run",), ["http.host", "not an address of this machine"]),
        (_env(), ("run", "--config", str(tmp_path)), [str(tmp_path), "--config", "Is a directory"]),
        (_env(), ("run", "--config", str(binary)), [str(binary), "not UTF-8"]),
        (_env(LIVECHAIN_INSTRUMENTS__UNDERLYINGS="NIFTY"), ("run",), ["LIVECHAIN_INSTRUMENTS__UNDERLYINGS"]),
        (_env(LIVECHAIN_FEED__RECONNECT_MAX_S="0.1"), ("run",), ["feed.reconnect_max_s"]),
        (_env(LIVECHAIN_FEED__KIND="dhan", LIVECHAIN_FEED__URL="ws://127.0.0.1:99999"), ("run",), ["feed.url"]),
        (_env(LIVECHAIN_INSTRUMENTS__SOURCE=str(huge)), ("run",), ["instruments.source", "field larger"]),
        (_env(LIVECHAIN_REDIS__URL=f"redis://:{PASSWORD}/Redis@h:6379/0", LIVECHAIN_REDIS__ENABLED="auto"),
         ("run",), ["redis.url", "percent-encoded"]),  # fmt: skip
        (_env(LIVECHAIN_HTTP_PORT="9999"), ("run",), ["LIVECHAIN_HTTP__PORT"]),
        (_env(), ("simulate", "--fault", "disconnect@3=999"), ["--fault", "999"]),
    ]
    try:
        results = await asyncio.gather(*(_run(env, *args) for env, args, _ in cases))
    finally:
        busy.close()
    for (_, args, needles), (code, err) in zip(cases, results, strict=True):
        assert code == 2, (args, needles, err)
        assert "Traceback" not in err and PASSWORD not in err, err
        errors = [line for line in err.splitlines() if "ERROR" in line or "error:" in line]
        assert len(errors) == 1, err
        for needle in needles:
            assert needle in errors[0], (needle, err)
        # Bound before warm-up: nothing was loaded or connected before the port was found busy.
        assert "instruments loaded" not in err and "warming" not in err, err
