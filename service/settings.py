"""The settings tree: defaults < TOML file < ``LIVECHAIN_*`` environment variables.

The TOML file is ``--config`` / ``LIVECHAIN_CONFIG`` when given, else the defaults shipped in
the package (``service/defaults/livechain.toml``, equal to the models' defaults), never a file
found in the working directory. A relative path in a TOML file is relative to that file.
Sections owned by ``feeds`` are declared there once: ``FeedSettings`` extends the client's
``DhanFeedConfig`` with the service's keys, ``SimulatorSettings`` is ``SimulatorConfig``.

Nested keys use ``__`` in the environment: ``LIVECHAIN_HTTP__PORT=9000`` sets ``http.port``.
Every model is frozen and forbids unknown keys, so a typo stops startup naming the key.
Broker credentials are not settings: they come only from ``DHAN_CLIENT_ID`` and
``DHAN_ACCESS_TOKEN`` and are held as ``SecretStr``.
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
import types
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from feeds.dhan.client import DhanFeedConfig
from feeds.simulator.config import SimulatorConfig
from service.errors import ConfigError

ENV_PREFIX = "LIVECHAIN_"
# The packaged defaults, read when no settings file is named (not a path in the working directory).
DEFAULT_CONFIG: Traversable = files("service").joinpath("defaults", "livechain.toml")
DHAN_SCRIP_MASTER_URL = "https://images.dhan.co/api-data/api-scrip-master-detailed.csv"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeedSettings(DhanFeedConfig):
    """The Dhan client's own settings (url, timeouts, backoff: declared in ``DhanFeedConfig``)
    plus the service's choices about where the feed comes from."""

    # simulator: the embedded Dhan simulator; dhan: Dhan's live feed; replay: a recording.
    kind: Literal["simulator", "dhan", "replay"] = "simulator"
    index_mode: Literal["ticker", "quote"] = "quote"
    # Read the access token from this file at every connect instead of DHAN_ACCESS_TOKEN, so
    # a token refreshed overnight (or after an 807) is picked up without a restart.
    token_file: Path | None = None
    # Dhan's REST API base (option chain, reference §6); the embedded simulator serves its own.
    rest_url: str = "https://api.dhan.co/v2"

    @field_validator("rest_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class InstrumentsSettings(_Section):
    # Path or URL of Dhan's detailed scrip master; unset means the simulator's own file
    # (feed.kind = simulator) or Dhan's public URL (feed.kind = dhan).
    source: str | None = None
    underlyings: tuple[str, ...] = ("NIFTY",)
    max_expiries: int = Field(2, ge=1, le=50)
    load_timeout_s: float = Field(60.0, gt=0)
    # How often to check whether an expiry has passed (then the chain set rolls forward).
    roll_check_s: float = Field(60.0, gt=0)
    # Reload the scrip master once a day at this IST time: Dhan lists new contracts overnight.
    reload_at: dt.time = dt.time(8, 45)

    @field_validator("underlyings")
    @classmethod
    def _symbols(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one underlying is required")
        return tuple(dict.fromkeys(s.strip().upper() for s in v))


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    cors_allow_origins: tuple[str, ...] = ()
    shutdown_timeout_s: float = Field(3.0, gt=0)


class ReadinessSettings(_Section):
    timeout_s: float = Field(30.0, gt=0)
    min_coverage: float = Field(1.0, gt=0, le=1)
    progress_log_interval_s: float = Field(2.0, gt=0)


class CacheSettings(_Section):
    # A chain whose last update is older than this is reported ``stale``.
    stale_after_s: float = Field(30.0, gt=0)


# The [simulator] section is the simulator's own config (host, port, seed, universe, market model).
SimulatorSettings = SimulatorConfig


class MarketSettings(_Section):
    # auto: around the clock on the simulator and replays, NSE hours on Dhan's feed.
    schedule: Literal["auto", "nse", "always_open", "never_open"] = "auto"
    open_time: dt.time = dt.time(9, 15)
    close_time: dt.time = dt.time(15, 30)
    # None: the NSE calendar shipped with livechain (feeds/calendars/nse-holidays.toml).
    holidays_file: Path | None = None

    @field_validator("holidays_file")
    @classmethod
    def _existing_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"no such file: {v}")
        return v


class RecordSettings(_Section):
    # Set to record every raw frame (livechain record sets it); segments rotate at max_bytes.
    path: Path | None = None
    max_bytes: int = Field(64 * 2**20, ge=4096)
    max_files: int = Field(10, ge=1)


class ReplaySettings(_Section):
    file: Path | None = None
    speed: float = Field(1.0, ge=0)  # 0: as fast as the socket takes the frames


class RedisSettings(_Section):
    """The Redis mirror (primary) and the Redis source of a read replica; see README "Redis"."""

    # redis://[[user]:password@]host:port/db, rediss:// for TLS, or unix://; a secret because
    # it may carry a password: it is logged only with the password masked.
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # auto: mirror when Redis is reachable, say so once when it is not and keep retrying
    # quietly with backoff; true: required (startup fails without it); false: no mirror.
    enabled: Literal["auto"] | bool = "auto"
    flush_interval_s: float = Field(0.025, gt=0)  # how often changed legs are written (freshness p99 < 50 ms)
    # Entries kept in the livechain:changes stream (approximate trim): one entry per changed
    # chain per flush, each about 450 bytes per changed leg.
    stream_maxlen: int = Field(10_000, ge=100)
    connect_timeout_s: float = Field(2.0, gt=0)
    timeout_s: float = Field(5.0, gt=0)  # one command or pipelined flush
    reconnect_initial_s: float = Field(0.2, gt=0)  # backoff: exponential, full jitter, capped
    reconnect_max_s: float = Field(5.0, gt=0)  # a PING to a dead Redis is cheap: recover soon after it is back
    replica_block_s: float = Field(1.0, gt=0)  # a replica's XREAD BLOCK
    # At least this often, changes or not, the mirror checks that Redis still holds its run and
    # rewrites the full state when it does not (restarted empty, FLUSHALL, failover).
    verify_interval_s: float = Field(1.0, gt=0)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v


class AnalyticsSettings(_Section):
    """Option analytics (IV, greeks, PCR, max pain…) and Dhan's REST chain; see README "Option analytics"."""

    enabled: bool = True
    rate: float = Field(0.065, ge=-0.5, le=1.0)  # annual, continuously compounded (≈ India's 91-day T-bill)
    # How the forward is found: put-call parity near the money (falling back to the spot
    # carried at the rate), or always the spot carried at the rate.
    forward: Literal["parity", "spot"] = "parity"
    parity_strikes: int = Field(3, ge=1, le=25)  # strikes whose implied forwards are medianed
    # A chain that changed gets new analytics at most this often (each pass covers every leg,
    # and its result is written to Redis whole: see README for the cost).
    interval_s: float = Field(0.5, ge=0.01)
    # Dhan's REST option chain: auto = on with feed.kind = dhan; true also seeds from the
    # embedded simulator's REST endpoints.
    seed: Literal["auto"] | bool = "auto"
    reconcile_s: float = Field(300.0, ge=3.0)  # fetch the REST chains again this often
    # Dhan allows one request per unique (underlying, expiry) every 3 s (reference §6.4).
    rest_min_interval_s: float = Field(3.0, ge=0)
    rest_timeout_s: float = Field(10.0, gt=0)
    rest_max_attempts: int = Field(4, ge=1, le=10)  # per request, then the request is given up
    rest_backoff_initial_s: float = Field(1.0, gt=0)  # exponential, full jitter, capped
    rest_backoff_max_s: float = Field(30.0, gt=0)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = False


class MetricsSettings(_Section):
    # Prometheus endpoint on its own port, bound at process start so warm-up is observable.
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)  # 0: a free port (tests)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    feed: FeedSettings = FeedSettings()
    instruments: InstrumentsSettings = InstrumentsSettings()
    http: HttpSettings = HttpSettings()
    readiness: ReadinessSettings = ReadinessSettings()
    cache: CacheSettings = CacheSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    market: MarketSettings = MarketSettings()
    record: RecordSettings = RecordSettings()
    replay: ReplaySettings = ReplaySettings()
    redis: RedisSettings = RedisSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)


class DhanCredentials(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True, case_sensitive=True)

    client_id: SecretStr = Field(validation_alias=AliasChoices("DHAN_CLIENT_ID"))
    access_token: SecretStr = Field(validation_alias=AliasChoices("DHAN_ACCESS_TOKEN"))


def _env_name(loc: tuple[Any, ...]) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc)


def _describe(exc: ValidationError, *, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not isinstance(p, int))
        key = ".".join(str(p) for p in loc) or "(root)"
        # Never echo the offending value: it might be a secret pasted in the wrong place.
        lines.append(f"  {key} (env {_env_name(loc)}): {err['msg']}")
    return "\n".join(lines)


def _is_path_type(annotation: Any) -> bool:
    if get_origin(annotation) in (Union, types.UnionType):
        return Path in get_args(annotation)
    return annotation is Path


def _file_path_keys() -> list[tuple[str, str]]:
    """(section, key) of every setting that names a file: the Path-typed ones and
    ``instruments.source`` (a path or a URL)."""
    keys = [
        (section, key)
        for section, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        for key, sub in field.annotation.model_fields.items()
        if _is_path_type(sub.annotation)
    ]
    return [*keys, ("instruments", "source")]


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A relative path given in a TOML file is relative to the file's directory, not to
    wherever the process was started."""
    out = dict(data)
    for section, key in _file_path_keys():
        table = out.get(section)
        if not isinstance(table, dict) or not isinstance(value := table.get(key), str) or "://" in value:
            continue
        if value and not Path(value).is_absolute():
            out[section] = {**table, key: str(base / value)}
    return out


def load_settings(config_path: Path | None = None) -> Settings:
    """Read the TOML file (``config_path``, else ``LIVECHAIN_CONFIG``, else the packaged defaults)
    and apply the ``LIVECHAIN_*`` environment over it."""
    env_path = os.environ.get("LIVECHAIN_CONFIG")
    path = config_path or (Path(env_path) if env_path else None)
    if path is None:
        origin = f"packaged defaults {DEFAULT_CONFIG}"
        data = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    else:
        named_by = "--config" if config_path else "LIVECHAIN_CONFIG"
        origin = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path} (named by {named_by})") from None
        except OSError as exc:
            raise ConfigError(f"config file {path} (named by {named_by}) cannot be read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        data = _resolve_relative_paths(data, path.absolute().parent)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin=f"{origin} + {ENV_PREFIX}* environment")) from None


def load_dhan_credentials() -> DhanCredentials:
    """The broker credentials, or a ConfigError naming the missing variables."""
    env = os.environ
    missing = [name for name in ("DHAN_CLIENT_ID", "DHAN_ACCESS_TOKEN") if not env.get(name, "").strip()]
    if missing:
        raise ConfigError(
            "feed.kind = dhan needs broker credentials in the environment; missing: " + ", ".join(missing)
        )
    return DhanCredentials(DHAN_CLIENT_ID=env["DHAN_CLIENT_ID"].strip(), DHAN_ACCESS_TOKEN=env["DHAN_ACCESS_TOKEN"].strip())

