"""Pieces every broker's feed client shares: the connection settings, the reconnect backoff and
per-connection stats.

``FeedConnectionConfig`` declares, once, how a client connects, waits and retries (timeouts,
backoff, stall watchdog, URL…). Each broker's client config extends it without declaring a
field of its own (``feeds.dhan.client.DhanFeedConfig``, ``feeds.kite.client.KiteFeedConfig``);
a broker's own minimum for one of these keys (Dhan: ≥ 60 s after an HTTP 429) is named in its
``FLOORS`` and checked on construction. The service's ``feed.*`` settings extend this same model
(``service.settings.FeedSettings``), and ``service.feed_source`` builds the chosen broker's
config from them.

``ConnectionStats`` are plain counters a receive loop increments per frame; the service's
metrics and health read them at scrape time (``service.metrics``, ``service.core.health``), the
same for every broker. A client says how its packet classes are named in metrics with a
``packet_names`` mapping (``FeedSource.packet_names``).

``check_connection_budget`` and ``split_connections`` size a subscription set against a
broker's connection budget. The connection's life itself (reconnect loop, watchdog, batching)
is ``feeds.feed_client``'s.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from yarl import URL

from feeds.errors import SubscriptionError

T = TypeVar("T")


class FeedConnectionConfig(BaseModel):
    """How a feed client connects, waits and retries; frozen and validated on construction.

    Declared once: ``service.settings.FeedSettings`` extends it with the service's own keys,
    so each of these is also the setting ``feed.<name>`` (env ``LIVECHAIN_FEED__<NAME>``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A broker's own minimum for a key: {key: (floor, why)}, checked on construction.
    FLOORS: ClassVar[Mapping[str, tuple[float, str]]] = {}

    # The feed's base URL (the client adds the query string). The default is Dhan's feed; with
    # feed.kind = kite the service connects to wss://ws.kite.trade unless this is changed.
    url: str = "wss://api-feed.dhan.co"
    open_timeout_s: float = Field(10.0, gt=0)  # connecting (TCP, TLS, WebSocket handshake) gives up after this long
    ping_interval_s: float = Field(20.0, gt=0)  # our WebSocket pings; an unanswered one closes the socket
    close_timeout_s: float = Field(2.0, gt=0)  # wait this long for the close handshake at shutdown
    reconnect_initial_s: float = Field(0.5, gt=0)  # backoff: exponential, full jitter, capped
    reconnect_max_s: float = Field(30.0, gt=0)  # the reconnect backoff's cap
    # A session that stayed up this long resets the backoff to its initial delay.
    healthy_after_s: float = Field(30.0, gt=0)
    # Silence this long while the market is open means the feed is dead: the socket is replaced.
    stall_timeout_s: float = Field(30.0, gt=0)
    # After HTTP 429 on the handshake (Dhan: at least 60, reference §8.9).
    rate_limit_cooloff_s: float = Field(60.0, gt=0)
    # After the broker says the account has too many connections (Dhan's 805; at least 30).
    too_many_connections_backoff_s: float = Field(120.0, gt=0)
    max_batch_ticks: int = Field(1024, ge=1)  # ticks handed to the sink in one batch, at most

    @field_validator("url")
    @classmethod
    def _websocket_url(cls, v: str) -> str:
        if not v.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        if "?" in v:
            raise ValueError("must not carry a query string: token and client id are added by the client")
        try:
            parsed = URL(v)
            parsed.explicit_port  # noqa: B018 - raises for a port that is not a number in 0..65535
        except ValueError:
            raise ValueError("is not a valid URL: the port must be a number from 1 to 65535") from None
        if not parsed.host:
            raise ValueError("has no host, e.g. wss://api-feed.dhan.co")
        if parsed.explicit_port == 0:
            raise ValueError("port 0 is not a port to connect to")
        return v

    @model_validator(mode="after")
    def _backoff_range(self) -> FeedConnectionConfig:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        return self

    @model_validator(mode="after")
    def _floors(self) -> FeedConnectionConfig:
        low = [
            f"{key} must be >= {floor:g} ({why})"
            for key, (floor, why) in self.FLOORS.items()
            if getattr(self, key) < floor
        ]
        if low:
            raise ValueError("; ".join(low))
        return self

    def connection_values(self) -> dict[str, object]:
        """This model's connection keys and values (a subclass's own keys left out)."""
        return {k: getattr(self, k) for k in FeedConnectionConfig.model_fields}


def check_connection_budget(count: int, broker: str, max_connections: int, per_connection: int) -> None:
    """Fail with the numbers when ``count`` subscriptions cannot fit a broker's connection budget."""
    budget = max_connections * per_connection
    if count > budget:
        needed = -(-count // per_connection)
        raise SubscriptionError(
            f"{count} subscriptions need {needed} connections; {broker} allows {max_connections} x "
            f"{per_connection} = {budget}. Subscribe fewer underlyings or expiries."
        )


def split_connections(items: Sequence[T], per_connection: int) -> list[list[T]]:
    """``items`` in runs of at most ``per_connection``, one per connection (one empty run if none)."""
    return [list(items[i : i + per_connection]) for i in range(0, len(items), per_connection)] or [[]]


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, initial·2^attempt)]."""
    return rng.uniform(0.0, min(max_s, initial_s * (2 ** min(attempt, 30))))


@dataclass(slots=True)
class ConnectionStats:
    """Plain counters, incremented per frame; metrics read them at scrape time."""

    connects: int = 0
    reconnects: int = 0
    frames: int = 0
    bytes: int = 0
    packets: int = 0
    decode_errors: int = 0
    text_frames: int = 0
    heartbeats: int = 0  # Kite's 1-byte frames: proof of life, not data
    server_errors: int = 0  # Kite's text frames of type "error"
    last_frame_at: float | None = None
    connected: bool = False
    last_error: str | None = None
    disconnects_by_reason: dict[str, int] = field(default_factory=dict)  # why sessions ended
    server_disconnect_codes: dict[int, int] = field(default_factory=dict)  # Dhan's code-50 reasons
    # Keyed by packet class: the receive loop already has it in hand, a name would cost a lookup.
    packets_by_type: Counter[type] = field(default_factory=Counter)

    def count_end(self, reason: str) -> None:
        self.disconnects_by_reason[reason] = self.disconnects_by_reason.get(reason, 0) + 1
