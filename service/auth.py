"""Optional API keys for the HTTP API and the stream (README "Authentication").

Off unless keys are configured (``http.api_keys`` — ``LIVECHAIN_HTTP__API_KEYS`` as a JSON list —
and/or ``http.api_keys_file``, one key per line, ``#`` comments). When on, every request but
the probes (``/healthz``, ``/readyz``), the API description (``/openapi.json``), the page's own
static files and CORS preflights must carry a key as ``Authorization: Bearer <key>`` or
``X-API-Key: <key>``; else ``401`` with the JSON error body and ``WWW-Authenticate: Bearer``.

Keys are compared in constant time (``hmac.compare_digest`` against every configured key, no
early exit), are held as ``SecretStr`` and never appear in logs, metrics or error bodies. A
key in the query string is not accepted: URLs end up in proxy and browser logs.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from aiohttp import web
from pydantic import SecretStr

from service.errors import ConfigError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths served without a key: liveness/readiness probes, the API description, and the page's
# static shell (it holds no data; every data request it makes carries the key).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/"})
OPEN_PREFIXES = ("/static/", "/assets/")
CHALLENGE = 'Bearer realm="livechain"'
MIN_KEY_LENGTH = 16


def _valid(key: str) -> bool:
    return len(key) >= MIN_KEY_LENGTH and key.isascii() and key.isprintable() and " " not in key


def load_api_keys(inline: Iterable[SecretStr], path: Path | None) -> tuple[bytes, ...]:
    """The configured keys as bytes (empty: authentication off); a bad file line is a
    ConfigError naming the file and line, never the key."""
    keys = [k.get_secret_value() for k in inline]
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(f"http.api_keys_file {path} cannot be read: {reason}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not _valid(line):
                raise ConfigError(
                    f"http.api_keys_file {path} line {n}: an API key must be at least {MIN_KEY_LENGTH} printable "
                    "ASCII characters without spaces (the line is not shown)"
                )
            keys.append(line)
    return tuple(dict.fromkeys(k.encode() for k in keys))


def presented_key(request: web.BaseRequest) -> bytes | None:
    """The key a request carries (``Authorization: Bearer`` or ``X-API-Key``), else None."""
    auth = request.headers.get("Authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip().encode("utf-8", "surrogateescape")
    value = request.headers.get("X-API-Key")
    if value is not None and value.strip():
        return value.strip().encode("utf-8", "surrogateescape")
    return None


def key_matches(presented: bytes, keys: Iterable[bytes]) -> bool:
    """Constant time in the presented key's content: every key is compared, no early exit."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented, key)
    return found


def is_open(request: web.BaseRequest) -> bool:
    path = request.path
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return True
    # A CORS preflight never carries credentials (the browser sends them on the real request).
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def auth_layer(keys: tuple[bytes, ...]) -> Callable[[Handler], Handler]:
    """Wraps a handler so that a request without a valid key gets the 401 (``service.http.Routes``
    composes it into every route of the API's app, the catch-all included)."""
    from service.http import error_response  # one error shape

    def wrap(handler: Handler) -> Handler:
        async def authenticate(request: web.Request) -> web.StreamResponse:
            if is_open(request):
                return await handler(request)
            presented = presented_key(request)
            if presented is None:
                response = error_response(
                    401, "unauthorized",
                    "an API key is required: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                )  # fmt: skip
            elif not key_matches(presented, keys):
                response = error_response(401, "invalid_api_key", "the API key is not valid")
            else:
                return await handler(request)
            response.headers["WWW-Authenticate"] = CHALLENGE
            return response

        return authenticate

    return wrap
