"""Exceptions raised by the ``feeds`` package.

    FeedError
    ├── DecodeError            a binary packet is truncated or inconsistent
    ├── InstrumentMasterError  the scrip master cannot be read at all
    ├── SubscriptionError      a subscription request is invalid (e.g. over a limit)
    └── FeedConnectionError    the broker connection failed; retry after a backoff
        ├── RateLimited        HTTP 429 on the handshake, or 805: wait long before retrying
        ├── TokenExpired       807: reconnect once a fresh token is available
        ├── DataStall          the market is open but no data arrived for too long
        └── FatalFeedError     the broker refused us for a reason a retry cannot fix

Library errors (websockets, aiohttp, OSError) are translated where they arise and
kept as ``__cause__``.
"""

from __future__ import annotations


class FeedError(Exception):
    """Base class of every error raised by ``feeds``."""


class DecodeError(FeedError):
    """A binary packet could not be decoded; the caller counts it and skips it."""

    def __init__(self, message: str, *, code: int | None = None, offset: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.offset = offset


class InstrumentMasterError(FeedError):
    """The instrument master could not be loaded (missing file, wrong columns, HTTP error)."""


class SubscriptionError(FeedError):
    """A subscription request is invalid, e.g. it exceeds the broker's limits."""


class FeedConnectionError(FeedError):
    """The connection to the broker failed or was lost."""

    # The least time to wait before reconnecting, whatever the backoff says.
    retry_after_s: float = 0.0


class RateLimited(FeedConnectionError):
    """The broker asked us to slow down (HTTP 429, or disconnect reason 805)."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TokenExpired(FeedConnectionError):
    """Disconnect reason 807: the access token expired."""


class DataStall(FeedConnectionError):
    """The socket is open but silent while the market is open."""


class FatalFeedError(FeedConnectionError):
    """The broker refused us for a reason that reconnecting cannot fix (bad credentials, no plan)."""

    def __init__(self, message: str, *, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code
