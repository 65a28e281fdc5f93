"""Settings: TOML defaults, LIVECHAIN_* overrides, errors that name the key, credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ConfigError
from service.settings import load_dhan_credentials, load_settings


def test_repository_config_loads() -> None:
    """config/livechain.toml is valid and runs the simulator by default."""
    settings = load_settings(Path("config/livechain.toml"))
    assert settings.feed.kind == "simulator" and settings.http.port == 8080
    assert settings.instruments.underlyings == ("NIFTY",)


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every contract variable overrides the file, nested with __."""
    path = tmp_path / "c.toml"
    path.write_text('[http]\nport = 9001\n[instruments]\nunderlyings = ["BANKNIFTY"]\n')
    monkeypatch.setenv("LIVECHAIN_HTTP__PORT", "9002")
    monkeypatch.setenv("LIVECHAIN_HTTP__HOST", "127.0.0.2")
    monkeypatch.setenv("LIVECHAIN_FEED__KIND", "dhan")
    monkeypatch.setenv("LIVECHAIN_FEED__URL", "wss://example.invalid")
    monkeypatch.setenv("LIVECHAIN_INSTRUMENTS__SOURCE", "/tmp/master.csv")
    monkeypatch.setenv("LIVECHAIN_INSTRUMENTS__UNDERLYINGS", '["nifty", "FINNIFTY"]')
    monkeypatch.setenv("LIVECHAIN_READINESS__TIMEOUT_S", "5")
    monkeypatch.setenv("LIVECHAIN_READINESS__MIN_COVERAGE", "0.95")
    s = load_settings(path)
    assert (s.http.port, s.http.host, s.feed.kind, s.feed.url) == (9002, "127.0.0.2", "dhan", "wss://example.invalid")
    assert s.instruments.source == "/tmp/master.csv"
    assert s.instruments.underlyings == ("NIFTY", "FINNIFTY")
    assert (s.readiness.timeout_s, s.readiness.min_coverage) == (5.0, 0.95)


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LIVECHAIN_CONFIG selects the file."""
    path = tmp_path / "c.toml"
    path.write_text("[http]\nport = 9100\n")
    monkeypatch.setenv("LIVECHAIN_CONFIG", str(path))
    assert load_settings().http.port == 9100


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LIVECHAIN_HTTP__PORT": "eighty"}, "http.port (env LIVECHAIN_HTTP__PORT)"),
        ({"LIVECHAIN_FEED__KIND": "zerodha"}, "feed.kind (env LIVECHAIN_FEED__KIND)"),
        ({"LIVECHAIN_READINESS__MIN_COVERAGE": "1.5"}, "readiness.min_coverage"),
        ({"LIVECHAIN_HTTP__PROT": "1"}, "http.prot"),
        ({"LIVECHAIN_FEED__URL": "https://api-feed.dhan.co"}, "feed.url"),
        ({"LIVECHAIN_INSTRUMENTS__UNDERLYINGS": "[]"}, "instruments.underlyings"),
    ],
)
def test_bad_values_name_the_key(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str) -> None:
    """A bad or unknown key stops startup with its dotted name and variable."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings(Path("config/livechain.toml"))
    assert needle in str(info.value)


def test_unknown_toml_key_is_rejected(tmp_path: Path) -> None:
    """A typo in the file is an error, not a silently ignored key."""
    path = tmp_path / "c.toml"
    path.write_text("[readiness]\ntimeout = 3\n")
    with pytest.raises(ConfigError, match="readiness.timeout"):
        load_settings(path)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    """A missing or broken file is named."""
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[http\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_credentials_missing_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing credentials name the variables; present ones are held as secrets."""
    monkeypatch.setenv("DHAN_CLIENT_ID", "1000000001")
    with pytest.raises(ConfigError, match="DHAN_ACCESS_TOKEN") as info:
        load_dhan_credentials()
    assert "DHAN_CLIENT_ID" not in str(info.value).split("missing:")[1]
    monkeypatch.setenv("DHAN_ACCESS_TOKEN", "eyJhbGciOi-very-secret")
    creds = load_dhan_credentials()
    assert creds.access_token.get_secret_value() == "eyJhbGciOi-very-secret"
    assert "very-secret" not in repr(creds) and "very-secret" not in str(creds)
