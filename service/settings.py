"""The settings tree: defaults < TOML file < ``LIVECHAIN_*`` environment variables.

The TOML file is ``--config`` / ``LIVECHAIN_CONFIG`` when given, else the defaults shipped in
the package (``service/defaults/livechain.toml``, equal to the models' defaults), never a file
found in the working directory. A relative path in a TOML file is relative to that file.
Sections owned by ``feeds`` are declared there once: ``FeedSettings`` extends the broker-neutral
``feeds.connection.FeedConnectionConfig`` (every client's connection settings) with the
service's keys, ``SimulatorSettings`` is ``SimulatorConfig``. A broker's own floors for those
keys (Dhan: ≥ 60 s after a 429) are checked by ``load_settings`` through ``service.feed_source``,
the one module that knows the brokers.

Nested keys use ``__`` in the environment: ``LIVECHAIN_HTTP__PORT=9000`` sets ``http.port``.
Every model is frozen and forbids unknown keys, so a typo stops startup naming the key.
Broker credentials are not settings: they come only from ``DHAN_CLIENT_ID`` and
``DHAN_ACCESS_TOKEN`` (or ``KITE_API_KEY`` and ``KITE_ACCESS_TOKEN`` with ``feed.kind = kite``)
and are held as ``SecretStr``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import re
import shlex
import tomllib
import types
from importlib.resources import files
from importlib.resources.abc import Traversable
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from feeds.connection import FeedConnectionConfig
from feeds.simulator.config import SimulatorConfig
from service.errors import ConfigError

ENV_PREFIX = "LIVECHAIN_"
# The packaged defaults, read when no settings file is named (not a path in the working directory).
DEFAULT_CONFIG: Traversable = files("service").joinpath("defaults", "livechain.toml")
DHAN_SCRIP_MASTER_URL = "https://images.dhan.co/api-data/api-scrip-master-detailed.csv"
DHAN_FEED_URL = "wss://api-feed.dhan.co"
KITE_FEED_URL = "wss://ws.kite.trade"  # feed.url when feed.kind = kite and feed.url is Dhan's default
KITE_INSTRUMENTS_URL = "https://api.kite.trade/instruments"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeedSettings(FeedConnectionConfig):
    """Every feed client's connection settings (url, timeouts, backoff: declared in
    ``feeds.connection.FeedConnectionConfig``; a broker's floors, e.g. Dhan's ≥ 60 s after a
    429, are checked for the chosen broker) plus the service's choices about where the feed
    comes from."""

    # simulator: the embedded Dhan simulator; dhan: Dhan's live feed; kite: Zerodha Kite's
    # ticker (url defaults to wss://ws.kite.trade then); replay: a recording.
    kind: Literal["simulator", "dhan", "kite", "replay"] = "simulator"
    index_mode: Literal["ticker", "quote"] = "quote"  # underlying index subscription mode (options are always Full)
    # Read the access token from this file at every connect instead of DHAN_ACCESS_TOKEN, so
    # a token refreshed overnight (or after an 807) is picked up without a restart.
    token_file: Path | None = None
    # A command whose stdout is the access token, run at each connect and after an 807, so a
    # desk's own renewal script supplies the token (split like a shell line, not run through a
    # shell: use sh -c '…' for pipes). Instead of token_file; never together with it.
    token_command: str | None = None
    token_command_timeout_s: float = Field(10.0, gt=0)  # the token command is killed after this long
    # Dhan's REST API base (option chain, reference §6); the embedded simulator serves its own.
    rest_url: str = "https://api.dhan.co/v2"

    @field_validator("rest_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("token_command")
    @classmethod
    def _command_line(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                if not shlex.split(v):
                    raise ValueError("must name a command")
            except ValueError as exc:  # unbalanced quotes
                raise ValueError(f"is not a command line: {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_token_source(self) -> FeedSettings:
        if self.token_file is not None and self.token_command is not None:
            raise ValueError("set token_file or token_command, not both")
        return self


class InstrumentsSettings(_Section):
    # Path or URL of the broker's instrument master (Dhan's detailed scrip master, or Kite's
    # instruments CSV with feed.kind = kite); unset means the simulator's own file (feed.kind =
    # simulator) or the broker's public URL (feed.kind = dhan / kite).
    source: str | None = None
    underlyings: tuple[str, ...] = ("NIFTY",)  # underlyings served (JSON list in the environment)
    max_expiries: int = Field(2, ge=1, le=50)  # nearest unexpired expiries subscribed per underlying
    load_timeout_s: float = Field(60.0, gt=0)  # downloading the scrip master gives up after this long
    # How often to check whether an expiry has passed (then the chain set rolls forward).
    roll_check_s: float = Field(60.0, gt=0)
    # Reload the scrip master once a day at this IST time: Dhan lists new contracts overnight.
    reload_at: dt.time = dt.time(8, 45)
    # Keep each day's downloaded scrip master (a URL source) here: a restart the same day reuses
    # it, and a failed download falls back to the newest good copy. Unset: no cache.
    cache_dir: Path | None = None
    cache_keep_days: int = Field(7, ge=1)  # cached copies older than this many days are deleted

    @field_validator("underlyings")
    @classmethod
    def _symbols(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one underlying is required")
        return tuple(dict.fromkeys(s.strip().upper() for s in v))


class HttpSettings(_Section):
    host: str = "127.0.0.1"  # the API's bind address (0.0.0.0: every interface)
    port: int = Field(8080, ge=0, le=65535)  # the API's port, bound once the readiness gate opens
    cors_allow_origins: tuple[str, ...] = ()  # browser origins allowed to read the API (["*"] for any)
    shutdown_timeout_s: float = Field(3.0, gt=0)  # open requests get this long to finish at shutdown
    # Bounded connections (README "Reliability"): an idle kept-alive connection is closed after
    # keepalive_timeout_s; one that has not sent a whole request within idle_timeout_s of
    # opening (silent, or trickling headers) is closed; beyond max_connections open at once a
    # new connection gets a 503 JSON error and is closed. The cap is lowered at startup to
    # leave the feed a reserve of descriptors under the process's RLIMIT_NOFILE.
    keepalive_timeout_s: float = Field(15.0, gt=0)  # an idle kept-alive connection is closed after this long
    idle_timeout_s: float = Field(10.0, gt=0)  # a connection without a whole request head this long after opening is closed
    max_connections: int = Field(4000, ge=1)  # open at once (pollers and streams); more get a 503 and are closed
    # Optional API keys (README "Authentication"): when any is set, every route but /healthz,
    # /readyz and /openapi.json needs `Authorization: Bearer <key>` or `X-API-Key: <key>`.
    # As JSON in LIVECHAIN_HTTP__API_KEYS, or one key per line in api_keys_file (read at startup).
    api_keys: tuple[SecretStr, ...] = ()  # JSON list of keys (each ≥ 16 printable ASCII characters); [] = no authentication
    api_keys_file: Path | None = None  # one key per line (# comments), read at startup, added to api_keys
    # Server-Sent Events, GET /options/stream (README "Live push"): a comment line is sent to an
    # idle stream this often so proxies keep it open; at most max_streams are open at once (503
    # beyond); changed chains are looked at this often; each chain keeps its last stream_ring
    # deltas for Last-Event-ID resumes, and a client further behind is sent a snapshot.
    stream_heartbeat_s: float = Field(15.0, gt=0)
    max_streams: int = Field(1000, ge=1)
    stream_interval_s: float = Field(0.05, gt=0, le=5)  # changed chains are looked at for stream deltas this often
    stream_ring: int = Field(256, ge=2, le=100_000)

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, v: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for key in v:
            text = key.get_secret_value()
            if len(text) < 16 or not text.isascii() or not text.isprintable() or " " in text:
                raise ValueError("each API key must be at least 16 printable ASCII characters without spaces")
        return v

    @field_validator("api_keys_file")
    @classmethod
    def _keys_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"no such file: {v}")
        return v


class ReadinessSettings(_Section):
    timeout_s: float = Field(30.0, gt=0)  # give up (exit 3) when coverage is not reached within this
    min_coverage: float = Field(1.0, gt=0, le=1)  # share of subscribed instruments that must have data before the port opens
    progress_log_interval_s: float = Field(2.0, gt=0)  # a warming progress line this often


class CacheSettings(_Section):
    # A chain whose last update is older than this is reported ``stale``.
    stale_after_s: float = Field(30.0, gt=0)


# The [simulator] section is the simulator's own config (host, port, seed, universe, market model).
SimulatorSettings = SimulatorConfig


class MarketSettings(_Section):
    # auto: around the clock on the simulator and replays, NSE hours on Dhan's feed.
    schedule: Literal["auto", "nse", "always_open", "never_open"] = "auto"
    open_time: dt.time = dt.time(9, 15)  # session open (IST)
    close_time: dt.time = dt.time(15, 30)  # session close (IST): expiries end then
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
    max_files: int = Field(10, ge=1)  # segments kept; the oldest is deleted


class ReplaySettings(_Section):
    file: Path | None = None  # the recording to replay (livechain replay sets it)
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
    connect_timeout_s: float = Field(2.0, gt=0)  # connecting to Redis gives up after this long
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
        text = v.get_secret_value()
        if not text.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        if text.startswith("unix://"):
            return v
        # Checked here, not left to redis-py: its parse error quotes part of the password.
        hint = (
            "does not parse as redis://[[user]:password@]host[:port][/db] (value not shown); a password "
            "containing '/', '#', '?', '@', '%' or ':' must be percent-encoded, e.g. '/' as %2F, '#' as %23, "
            "'?' as %3F, '@' as %40"
        )
        try:
            parts = urlsplit(text)
            port = parts.port  # ValueError for a non-numeric or out-of-range port
        except ValueError:
            raise ValueError(hint) from None
        if not parts.hostname or parts.fragment or "@" in parts.path + parts.query:
            raise ValueError(hint)
        del port
        return v


class AnalyticsSettings(_Section):
    """Option analytics (IV, greeks, PCR, max pain…) and Dhan's REST chain; see README "Option analytics"."""

    enabled: bool = True  # IV, greeks and chain analytics in every body
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
    rest_timeout_s: float = Field(10.0, gt=0)  # one REST request gives up after this long
    rest_max_attempts: int = Field(4, ge=1, le=10)  # per request, then the request is given up
    rest_backoff_initial_s: float = Field(1.0, gt=0)  # exponential, full jitter, capped
    rest_backoff_max_s: float = Field(30.0, gt=0)  # the retry backoff's cap


class HistorySettings(_Section):
    """Intraday history (README "History"): samples of every chain, kept in memory, Redis and Parquet."""

    enabled: bool = True  # sample every served chain (off: the history routes and at= answer 404)
    # Sample every chain this often, on the interval's boundaries (a 60 s interval samples at
    # each whole minute); /options/history's interval must be a multiple of it.
    interval_s: float = Field(60.0, ge=0.5, le=3600)
    # Where each day is written as Parquet (hive-partitioned by date and underlying): a local
    # directory or s3://bucket/prefix (pyarrow's filesystem layer; credentials from the usual
    # AWS variables). Unset: $XDG_DATA_HOME/livechain/history, else ~/.local/share/livechain/history.
    path: str | None = None
    parquet: bool = True  # write each day at the session close and on shutdown (false: memory and Redis only)
    # Redis keeps a day's samples until the end of its IST date plus this many days.
    redis_keep_days: int = Field(2, ge=1, le=30)
    max_query_days: int = Field(7, ge=1, le=366)  # a from..to range may span at most this many days


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # log level
    json_format: bool = False  # one JSON object per line instead of text


class MetricsSettings(_Section):
    # Prometheus endpoint on its own port, bound at process start so warm-up is observable.
    enabled: bool = True
    host: str = "127.0.0.1"  # the metrics port's bind address
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
    history: HistorySettings = HistorySettings()

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


def _describe(exc: ValidationError, *, origin: str, within: tuple[str, ...] = ()) -> str:
    """One line (an operator's mistake is one log line, no traceback) naming every bad key
    (``within``: the section a model of one section was validated as, e.g. ``("feed",)``)."""
    parts = []
    for err in exc.errors():
        loc = within + tuple(p for p in err["loc"] if not isinstance(p, int))
        msg = err["msg"]
        locs = [loc]
        if len(loc) == 1 and (section := _section_model(str(loc[0]))) is not None:
            # A check across keys (a model validator) reports the section: name the keys it is about.
            locs = [(loc[0], key) for key in section.model_fields if re.search(rf"\b{key}\b", msg)] or locs
        keys = ", ".join(".".join(str(p) for p in k) or "(root)" for k in locs)
        envs = ", ".join(_env_name(k) for k in locs)
        # Never echo the offending value: it might be a secret pasted in the wrong place.
        parts.append(f"{keys} (env {envs}): {msg}")
    return f"invalid configuration ({origin}): " + "; ".join(parts)


def _section_model(name: str) -> type[BaseModel] | None:
    field = Settings.model_fields.get(name)
    ann = field.annotation if field is not None else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


# LIVECHAIN_* variables that are not settings but are read by livechain.
NON_SETTING_VARIABLES = frozenset({"LIVECHAIN_CONFIG"})


def known_variables() -> list[str]:
    """Every ``LIVECHAIN_*`` variable a setting answers to (a whole section as JSON, or one key)."""
    names = set(NON_SETTING_VARIABLES)
    for section in Settings.model_fields:
        names.add(_env_name((section,)))
        model = _section_model(section)
        for key in model.model_fields if model is not None else ():
            names.add(_env_name((section, key)))
    return sorted(names)


def _check_variables(environ: Mapping[str, str]) -> None:
    """A misspelled variable (``LIVECHAIN_HTTP_PORT``, ``LIVECHAIN_HTTPS__PORT``) would be silently
    ignored by the settings loader: stop naming it and the nearest known one."""
    known = known_variables()
    known_set = set(known)
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known_set:
            continue
        # LIVECHAIN_SECTION__KEY__SUB… reaches into a nested model or mapping: fine if KEY is known.
        if "__".join(upper.split("__")[:2]) in known_set and upper.count("__") >= 2:
            continue
        near = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]} ({_dotted(near[0])})?" if near else "; see the configuration table in README.md"
        raise ConfigError(f"unknown environment variable {name} ({_dotted(upper)}){hint} (unset it or fix its name)")


def _dotted(variable: str) -> str:
    """``LIVECHAIN_HTTP__PORT`` → ``http.port``."""
    return variable.upper().removeprefix(ENV_PREFIX).lower().replace("__", ".")


def _unparsable_variable(environ: Mapping[str, str]) -> str:
    """The LIVECHAIN_* variable whose value is not the JSON its setting needs (a list, a table)."""
    for name in sorted(environ):
        parts = name.upper().removeprefix(ENV_PREFIX).lower().split("__")
        if not name.upper().startswith(ENV_PREFIX) or len(parts) < 1:
            continue
        model = _section_model(parts[0])
        if model is None:
            continue
        if len(parts) >= 2 and parts[1] in model.model_fields:
            ann = model.model_fields[parts[1]].annotation
            origin = get_origin(ann) or ann
            if not (isinstance(origin, type) and issubclass(origin, (tuple, list, dict, set, frozenset, BaseModel))):
                continue
            example = 'a JSON list, e.g. ["NIFTY", "BANKNIFTY"]' if origin in (tuple, list, set, frozenset) else "JSON"
        elif len(parts) == 1:
            example = 'a JSON object, e.g. {"port": 8080}'
        else:
            continue
        try:
            json.loads(environ[name])
        except ValueError:
            key = ".".join(parts[:2])
            return f"{name} ({key}) must be {example}; its value is not valid JSON (value not shown)"
    return "a LIVECHAIN_* variable holds a value that is not valid JSON where a list or table is needed"


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
    return [*keys, ("instruments", "source"), ("history", "path")]


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
    _check_variables(os.environ)
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
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {path} (named by {named_by}) is not UTF-8 text (byte {exc.start}): is it a TOML file?"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        data = _resolve_relative_paths(data, path.absolute().parent)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin=f"{origin} + {ENV_PREFIX}* environment")) from None
    except SettingsError:
        raise ConfigError(f"invalid configuration: {_unparsable_variable(os.environ)}") from None
    # feed.* as the chosen broker's client config: its floors (Dhan: ≥ 60 s after a 429) hold.
    # Imported here: feed_source, the one module that knows the brokers, imports this one.
    from service.feed_source import client_config  # noqa: PLC0415

    try:
        client_config(settings)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin=f"{origin} + {ENV_PREFIX}* environment", within=("feed",))) from None
    return settings


def load_dhan_credentials() -> DhanCredentials:
    """The broker credentials, or a ConfigError naming the missing variables."""
    env = os.environ
    missing = [name for name in ("DHAN_CLIENT_ID", "DHAN_ACCESS_TOKEN") if not env.get(name, "").strip()]
    if missing:
        raise ConfigError(
            "feed.kind = dhan needs broker credentials in the environment; missing: " + ", ".join(missing)
        )
    return DhanCredentials(DHAN_CLIENT_ID=env["DHAN_CLIENT_ID"].strip(), DHAN_ACCESS_TOKEN=env["DHAN_ACCESS_TOKEN"].strip())


def load_kite_api_key(*, token_required: bool) -> SecretStr:
    """``KITE_API_KEY`` (and, unless the token comes from a file or command, ``KITE_ACCESS_TOKEN``),
    or a ConfigError naming the missing variables. Values are never echoed."""
    env = os.environ
    names = ("KITE_API_KEY", "KITE_ACCESS_TOKEN") if token_required else ("KITE_API_KEY",)
    missing = [name for name in names if not env.get(name, "").strip()]
    if missing:
        raise ConfigError("feed.kind = kite needs broker credentials in the environment; missing: " + ", ".join(missing))
    return SecretStr(env["KITE_API_KEY"].strip())
