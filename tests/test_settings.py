"""Settings: TOML defaults, LIVECHAIN_* overrides, errors that name the key, credentials."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from feeds.calendar import NSE_HOLIDAYS, MarketCalendar
from feeds.clock import ManualClock, ist_instant
from feeds.connection import FeedConnectionConfig
from feeds.dhan.client import Credentials, DhanFeedConfig
from feeds.kite.client import KiteCredentials, KiteFeedConfig
from feeds.model import ChainSkeleton
from feeds.simulator.config import SimulatorConfig
from service.errors import ConfigError
from service.feed_source import FeedEndpoint, build_feed, market_calendar
from service.settings import DEFAULT_CONFIG, FeedSettings, Settings, load_dhan_credentials, load_settings


def test_packaged_defaults_equal_the_model_defaults() -> None:
    """The TOML shipped in the package gives exactly Settings(): no default is declared twice apart."""
    settings = load_settings()
    assert DEFAULT_CONFIG.is_file()
    assert settings == Settings()
    assert settings.feed.kind == "simulator" and settings.http.port == 8080
    assert settings.instruments.underlyings == ("NIFTY",)


def test_no_settings_file_is_read_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --config or LIVECHAIN_CONFIG the packaged defaults are used, whatever the cwd holds."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "livechain.toml").write_text("[http]\nport = 9999\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings() == Settings()


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
        ({"LIVECHAIN_FEED__PING_TIMEOUT_S": "20"}, "feed.ping_timeout_s"),
        ({"LIVECHAIN_FEED__RATE_LIMIT_COOLOFF_S": "30"}, "feed.rate_limit_cooloff_s (env LIVECHAIN_FEED__RATE_LIMIT_COOLOFF_S)"),
        ({"LIVECHAIN_FEED__RECONNECT_MAX_S": "0.1"}, "reconnect_max_s must be >= reconnect_initial_s"),
        ({"LIVECHAIN_SIMULATOR__UNDERLYINGS": '["SENSEX"]'}, "simulator.underlyings (env LIVECHAIN_SIMULATOR__UNDERLYINGS)"),
        ({"LIVECHAIN_SIMULATOR__TICK_INTERVAL_S": "0"}, "simulator.tick_interval_s"),
        ({"LIVECHAIN_SIMULATOR__REST_RATE_LIMIT_STATUS": "418"}, "simulator.rest_rate_limit_status"),
    ],
)
def test_bad_values_name_the_key(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str) -> None:
    """A bad or unknown key stops startup with its dotted name and variable."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert needle in str(info.value)


def test_feed_settings_are_the_client_config(monkeypatch: pytest.MonkeyPatch, skeleton: ChainSkeleton) -> None:
    """feed.* is the broker-neutral FeedConnectionConfig plus the service's keys; each broker's
    client config declares no field of its own; build_feed hands feed.*'s connection keys over
    whole, with the endpoint's URL, as the chosen broker's config."""
    connection = set(FeedConnectionConfig.model_fields)
    assert issubclass(FeedSettings, FeedConnectionConfig)
    assert set(DhanFeedConfig.model_fields) == connection == set(KiteFeedConfig.model_fields)
    assert set(FeedSettings.model_fields) - connection == {
        "kind", "index_mode", "token_file", "token_command", "token_command_timeout_s", "rest_url"
    }
    monkeypatch.setenv("LIVECHAIN_FEED__STALL_TIMEOUT_S", "7")
    monkeypatch.setenv("LIVECHAIN_FEED__MAX_BATCH_TICKS", "64")
    settings = load_settings()
    endpoint = FeedEndpoint(
        "ws://127.0.0.1:9", Credentials("1", lambda: "t"), "unused.csv", MarketCalendar(always_open=True)
    )
    config = build_feed(settings, skeleton, endpoint).config
    assert isinstance(config, DhanFeedConfig)
    assert config.url == "ws://127.0.0.1:9" and settings.feed.url == "wss://api-feed.dhan.co"
    assert (config.stall_timeout_s, config.max_batch_ticks) == (7.0, 64)
    assert config.model_dump(exclude={"url"}) == settings.feed.model_dump(include=connection - {"url"})
    kite = FeedEndpoint(
        "ws://127.0.0.1:9", KiteCredentials("k", lambda: "t"), "unused.csv", MarketCalendar(always_open=True),
        broker="kite",
    )
    kite_config = build_feed(settings, skeleton, kite).config
    assert type(kite_config) is KiteFeedConfig and kite_config.model_dump() == config.model_dump()


def test_broker_floors_are_checked_for_the_chosen_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dhan's floor (≥ 60 s after a 429) stops startup naming the key with Dhan's protocol
    (the simulator speaks it too); Kite has no such floor."""
    monkeypatch.setenv("LIVECHAIN_FEED__RATE_LIMIT_COOLOFF_S", "30")
    for kind in ("dhan", "simulator", "replay"):
        monkeypatch.setenv("LIVECHAIN_FEED__KIND", kind)
        with pytest.raises(ConfigError, match=r"feed\.rate_limit_cooloff_s \(env LIVECHAIN_FEED__RATE_LIMIT_COOLOFF_S\).*60"):
            load_settings()
    monkeypatch.setenv("LIVECHAIN_FEED__KIND", "kite")
    assert load_settings().feed.rate_limit_cooloff_s == 30.0
    monkeypatch.setenv("LIVECHAIN_FEED__KIND", "simulator")
    monkeypatch.setenv("LIVECHAIN_SIMULATOR__BROKER", "kite")
    assert load_settings().feed.rate_limit_cooloff_s == 30.0
    with pytest.raises(ValidationError, match="too_many_connections_backoff_s must be >= 30"):
        DhanFeedConfig(too_many_connections_backoff_s=5)
    assert KiteFeedConfig(too_many_connections_backoff_s=5).too_many_connections_backoff_s == 5


def test_simulator_settings_are_the_simulator_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """[simulator] is SimulatorConfig itself: every key settable, today as a date, host and port included."""
    assert Settings().simulator == SimulatorConfig()
    monkeypatch.setenv("LIVECHAIN_SIMULATOR__SEED", "11")
    monkeypatch.setenv("LIVECHAIN_SIMULATOR__TODAY", "2026-11-23")
    monkeypatch.setenv("LIVECHAIN_SIMULATOR__PORT", "8765")
    monkeypatch.setenv("LIVECHAIN_SIMULATOR__UNDERLYINGS", '["NIFTY"]')
    sim = load_settings().simulator
    assert type(sim) is SimulatorConfig
    assert sim == SimulatorConfig(seed=11, today=dt.date(2026, 11, 23), port=8765, underlyings=("NIFTY",))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_toml_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative file path in a TOML file is relative to that file, not to the working directory."""
    conf = tmp_path / "etc" / "livechain"
    _write(conf / "holidays" / "nse.toml", "holidays = [2026-01-26]\n")
    path = _write(
        conf / "livechain.toml",
        '[market]\nholidays_file = "holidays/nse.toml"\n'
        '[feed]\ntoken_file = "secrets/token"\n'
        '[record]\npath = "../recordings/today.lcr"\n'
        '[replay]\nfile = "/abs/rec.lcr"\n'
        '[instruments]\nsource = "master.csv"\n',
    )
    monkeypatch.chdir(tmp_path)
    s = load_settings(Path("etc/livechain/livechain.toml"))
    assert s.market.holidays_file == conf / "holidays" / "nse.toml"
    assert s.feed.token_file == conf / "secrets" / "token"
    assert s.record.path == conf / ".." / "recordings" / "today.lcr"
    assert s.replay.file == Path("/abs/rec.lcr")
    assert s.instruments.source == str(conf / "master.csv")
    url = "https://images.dhan.co/api-data/api-scrip-master-detailed.csv"
    _write(path, f'[instruments]\nsource = "{url}"\n')
    assert load_settings(path).instruments.source == url
    monkeypatch.setenv("LIVECHAIN_RECORD__PATH", "rec.lcr")  # the environment's paths are the process's own
    assert load_settings(path).record.path == Path("rec.lcr")


def test_missing_holidays_file_names_the_key_and_path(tmp_path: Path) -> None:
    """A configured holiday file that does not exist stops startup naming market.holidays_file and the path."""
    path = _write(tmp_path / "conf" / "c.toml", '[market]\nholidays_file = "nse-2027.toml"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "market.holidays_file (env LIVECHAIN_MARKET__HOLIDAYS_FILE)" in str(info.value)
    assert str(tmp_path / "conf" / "nse-2027.toml") in str(info.value)


def test_calendar_without_the_current_year_warns_once_and_opens_weekdays(caplog: pytest.LogCaptureFixture) -> None:
    """A year the holiday list does not cover: one startup warning naming it, every weekday a session."""
    settings = Settings(market={"schedule": "nse"})
    wednesday_2027 = ist_instant(dt.date(2027, 3, 10), dt.time(10, 0))
    with caplog.at_level(logging.WARNING, logger="service.feed_source"):
        calendar = market_calendar(settings, ManualClock(wednesday_2027))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "no dates for 2027" in warnings[0] and str(NSE_HOLIDAYS) in warnings[0]
    assert calendar.covers_year(2026) and not calendar.covers_year(2027)
    assert calendar.is_open(wednesday_2027)
    assert calendar.is_open(ist_instant(dt.date(2027, 1, 26), dt.time(10, 0)))  # a weekday, not listed for 2027
    assert not calendar.is_open(ist_instant(dt.date(2027, 3, 13), dt.time(10, 0)))  # a Saturday
    assert not calendar.is_open(ist_instant(dt.date(2026, 1, 26), dt.time(10, 0)))  # listed for 2026
    assert calendar.is_open(ist_instant(dt.date(2100, 3, 10), dt.time(10, 0)))  # far outside the list: no crash
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.feed_source"):
        market_calendar(settings, ManualClock(ist_instant(dt.date(2026, 3, 11), dt.time(10, 0))))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


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
