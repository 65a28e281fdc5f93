"""Exceptions raised by the ``feeds`` package.

    FeedError
    ├── DecodeError            a binary packet is truncated or inconsistent
    ├── InstrumentMasterError  the scrip master cannot be read at all
    ├── SubscriptionError      a subscription request is invalid (e.g. over a limit)
    ├── FeedConnectionError    the broker connection failed; retry after a backoff
    │   ├── RateLimited        HTTP 429 on the handshake, or 805: wait long before retrying
    │   ├── TokenExpired       807: reconnect once a fresh token is available
    │   ├── DataStall          the market is open but no data arrived for too long
    │   └── FatalFeedError     the broker refused us for a reason a retry cannot fix
    └── RestError              a REST call (option chain, reference §6) failed; ``code`` is Dhan's
        ├── RestRateLimited    805, DH-904 or HTTP 429: retried after a backoff
        ├── RestServerError    800, DH-908/909, 5xx, a network error or a body we cannot read: retried
        ├── RestAuthError      806-810, DH-901/902/903, 401/403: credentials or plan must change
        └── RestRequestError   811-814 and other refusals of this request: retrying cannot help

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


class RestError(FeedError):
    """A REST call failed. ``code`` is Dhan's error code ("805", "DH-904") when it sent one."""

    retryable = False

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 retry_after_s: float = 0.0) -> None:  # fmt: skip
        super().__init__(message)
        self.code = code
        self.status = status
        self.retry_after_s = retry_after_s  # the least wait before retrying (HTTP Retry-After)


class RestRateLimited(RestError):
    """Too many requests (805, DH-904, HTTP 429)."""

    retryable = True


class RestServerError(RestError):
    """The server failed or could not be reached, or answered with something unreadable."""

    retryable = True


class RestAuthError(RestError):
    """Credentials or the account's plan were refused."""


class RestRequestError(RestError):
    """The request itself was refused (bad security id, expiry, parameters)."""
