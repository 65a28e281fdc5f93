"""The HTTP API: ``/options/live``, ``/options/underlyings``, ``/healthz``, ``/readyz``.

Handlers only read: they ask a ``ChainSource`` (the primary's cache, or a read replica's
Redis-loaded store) for a chain and return its pre-serialised snapshot bytes, so the same
handlers serve both. Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx status.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from service.core.chains import ChainSource
from service.core.health import Health
from service.core.lifecycle import Lifecycle
from service.core.snapshot import ChainSnapshot
from service.listen import bind_socket, connection_budget, guarded_server
from service.settings import HttpSettings

if TYPE_CHECKING:
    from service.metrics import HttpMetrics
    from service.history.store import HistorySource
    from service.stream import StreamConfig

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class HttpContext:
    chains: ChainSource
    lifecycle: Lifecycle
    cors_allow_origins: tuple[str, ...] = ()
    health: Health | None = None  # why a serving process is degraded; see service.core.health
    stream: StreamConfig | None = None  # /options/stream's limits (service.stream); None: the defaults
    api_keys: tuple[bytes, ...] = ()  # service.auth: empty = no authentication
    history: HistorySource | None = None  # service.history: None = history off (its routes answer 404)


CONTEXT = web.AppKey("context", HttpContext)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


_SYMBOL = re.compile(r"[A-Za-z0-9&-]{1,32}", re.ASCII)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


def if_none_match(request: web.BaseRequest) -> str | None:
    """Every ``If-None-Match`` header of the request as one list (a client may send several)."""
    values = request.headers.getall("If-None-Match", [])
    return ", ".join(values) if values else None


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    # Weak comparison (RFC 9110 §13.1.2): W/"x" matches "x".
    return any(tag.strip() == "*" or tag.strip().removeprefix("W/") == etag for tag in header.split(","))


def symbol_param(request: web.BaseRequest, name: str) -> str:
    """The query parameter ``name`` as an upper-case symbol, or a 400 ``ApiError``: required, and
    ASCII only, checked before upper() ("nıfty" with a dotless ı must not become NIFTY).
    Every route taking a symbol (``/options/*``, the NSE-shaped ones) goes through here."""
    raw = request.query.get(name, "").strip()
    if not raw:
        raise ApiError(400, "missing_parameter", f"query parameter {name!r} is required, e.g. ?{name}=NIFTY")
    if not _SYMBOL.fullmatch(raw):
        raise ApiError(400, "bad_parameter", f"{name!r} must be a symbol such as NIFTY")
    return raw.upper()


def not_modified(request: web.BaseRequest, etag: str) -> bool:
    """Whether any of the request's ``If-None-Match`` headers matches ``etag`` (answer 304):
    the one rule for every route that sends an ETag (/options/live, the NSE shapes, the page)."""
    first = request.headers.get("If-None-Match")
    if first is None:
        return False  # no header at all
    if first == etag:
        return True  # the usual revalidation: the tag itself, once
    return _etag_matches(if_none_match(request), etag)


def resolve_chain(request: web.Request) -> ChainSnapshot:
    """The snapshot that ``?underlying=…[&expiry=YYYY-MM-DD]`` names (expiry: the nearest), or an
    ``ApiError`` (400 bad parameters, 404 unknown underlying or expiry). Shared by every route
    that serves a chain (``/options/live``, ``/options/stream``, the NSE-shaped ones)."""
    return _resolve(request)[0]


def _resolve(request: web.Request) -> tuple[ChainSnapshot, str, dt.date | None]:
    """``resolve_chain``, with what the query named: the underlying and the expiry (None: the nearest)."""
    chains = request.app[CONTEXT].chains
    underlying = symbol_param(request, "underlying")
    expiries = chains.expiries(underlying)
    if expiries is None:
        raise ApiError(404, "unknown_underlying", f"underlying {underlying!r} is not served; see /options/underlyings")
    raw_expiry = request.query.get("expiry")
    named: dt.date | None = None
    if raw_expiry is None or raw_expiry == "":
        expiry = chains.nearest_expiry(underlying)
        if expiry is None:
            raise ApiError(404, "no_expiry", f"{underlying} has no unexpired expiry loaded")
    else:
        try:
            # Strictly YYYY-MM-DD: fromisoformat alone also takes 2026-W50-2 and 20261124.
            if not _DATE.fullmatch(raw_expiry):
                raise ValueError("not YYYY-MM-DD")
            expiry = named = dt.date.fromisoformat(raw_expiry)
        except ValueError:
            raise ApiError(400, "bad_parameter", "'expiry' must be a date as YYYY-MM-DD") from None
    snap = chains.snapshot(underlying, expiry)
    if snap is None:
        listed = ", ".join(d.isoformat() for d in expiries)
        raise ApiError(404, "unknown_expiry", f"{underlying} has no expiry {expiry.isoformat()}; expiries: {listed}")
    return snap, underlying, named


# Request targets (path and query, as sent) of plain ``/options/live`` requests (JSON, no ``at``)
# whose parameters were valid, with what they named: (underlying, expiry or None for the nearest).
# Reading and checking a query is a pure function of the target, and pollers repeat theirs, so a
# known target skips it: the same answer, less work per request. Bounded: cleared when full.
_LIVE_TARGETS: dict[str, tuple[str, dt.date | None]] = {}
_LIVE_TARGETS_MAX = 1024


def live_handler(chains: ChainSource) -> Handler:
    """``/options/live`` over ``chains``, built once per app: a known plain target (``_LIVE_TARGETS``)
    goes straight to its chain's snapshot; anything else (or a chain that is gone) takes the full
    path, with every check and error."""
    targets = _LIVE_TARGETS

    async def options_live(request: web.Request) -> web.StreamResponse:
        named = targets.get(request.raw_path)
        if named is not None:
            underlying, expiry = named
            if expiry is None:
                expiry = chains.nearest_expiry(underlying)  # None: the full path says why (404)
            snap = None if expiry is None else chains.snapshot(underlying, expiry)
            if snap is not None:
                etag = snap.etag
                headers = {"ETag": etag, "Cache-Control": "no-cache"}
                if not_modified(request, etag):
                    return web.Response(status=304, headers=headers)
                return web.Response(body=snap.body, headers=headers, content_type="application/json")
        return await _options_live(request)

    return options_live


async def _options_live(request: web.Request) -> web.StreamResponse:
    """``/options/live`` for a target not known yet (or one whose chain is gone): every check."""
    if "at" in request.query:  # the chain as sampled at an instant (service.history, README "History")
        from service.history.http import live_at

        return await live_at(request)
    if request.query.get("format", "json") != "json":
        from service.nse import options_live_nse  # NSE's own shape (README "NSE-compatible output")

        return await options_live_nse(request)
    snap, underlying, expiry = _resolve(request)
    if len(_LIVE_TARGETS) >= _LIVE_TARGETS_MAX:
        _LIVE_TARGETS.clear()
    _LIVE_TARGETS[request.raw_path] = (underlying, expiry)
    headers = {"ETag": snap.etag, "Cache-Control": "no-cache"}
    if not_modified(request, snap.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=snap.body, headers=headers, content_type="application/json")


async def options_underlyings(request: web.Request) -> web.StreamResponse:
    chains = request.app[CONTEXT].chains
    broker = getattr(chains, "broker", None)  # whose feed: the same field from a primary and its replicas
    body = {
        **({"broker": broker} if broker is not None else {}),
        "underlyings": [
            {
                "underlying": u.underlying,
                "security_id": u.security_id,
                "expiries": [
                    {"expiry": e.expiry.isoformat(), "lot_size": e.lot_size, "strikes": e.strikes} for e in u.expiries
                ],
            }
            for u in request.app[CONTEXT].chains.underlyings()
        ]
    }
    return _json(body)


async def healthz(request: web.Request) -> web.StreamResponse:
    lifecycle = request.app[CONTEXT].lifecycle
    return _json({"status": "alive", "phase": lifecycle.phase.value})


async def readyz(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    lc = ctx.lifecycle
    body = {
        "ready": lc.serving,
        "phase": lc.phase.value,
        "reason": lc.reason,
        **ctx.chains.readiness(),
    }
    if ctx.health is not None:
        body.update(ctx.health.report().verdict())
    return _json(body, 200 if lc.serving else 503)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer, with our errors and aiohttp's 4xx/5xx as the JSON error body."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason)


errors_middleware = web.middleware(answer_errors)


def counted_errors_middleware(http_metrics: HttpMetrics) -> Middleware:
    """``http_metrics.middleware()`` around ``errors_middleware`` as one layer (aiohttp adds a
    layer of its own per middleware): the same answers and the same counts."""
    return http_metrics.middleware(inner=answer_errors)


def cors_middleware(allowed: tuple[str, ...]) -> Callable[..., Awaitable[web.StreamResponse]]:
    allow_any = "*" in allowed

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        permitted = origin is not None and (allow_any or origin in allowed)
        if request.method == "OPTIONS" and permitted and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "If-None-Match, Authorization, X-API-Key"
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if permitted:
            response.headers["Access-Control-Allow-Origin"] = "*" if allow_any else origin
            response.headers["Access-Control-Expose-Headers"] = "ETag"
        if not allow_any and "Origin" not in response.headers.getall("Vary", []):
            # The answer depends on the Origin header (allowed or not): caches must key on it.
            response.headers.add("Vary", "Origin")
        return response

    return cors


def make_app(context: HttpContext, *, outer_middlewares: Sequence[Middleware] = ()) -> web.Application:
    """``outer_middlewares`` wrap everything else (e.g. metrics, which must see final statuses)."""
    middlewares = [errors_middleware]
    if context.api_keys:
        from service.auth import auth_middleware  # inside CORS: a browser can read the 401

        middlewares.insert(0, auth_middleware(context.api_keys))
    if context.cors_allow_origins:
        middlewares.insert(0, cors_middleware(context.cors_allow_origins))
    middlewares[:0] = outer_middlewares
    counting = getattr(middlewares[-2], "http_metrics", None) if len(middlewares) >= 2 else None
    if counting is not None:  # the metrics middleware right around the errors one: one layer for both
        middlewares[-2:] = [counted_errors_middleware(counting)]
    app = web.Application(middlewares=middlewares)
    app[CONTEXT] = context
    app.router.add_get("/options/live", live_handler(context.chains))
    app.router.add_get("/options/underlyings", options_underlyings)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    # Routes of their own modules: live push, NSE's shape, the page at /.
    from service import nse as _nse, stream as _stream, web as _page
    from service.history import http as _history

    _stream.add_routes(app, context)
    _history.add_routes(app)
    _nse.add_routes(app)
    _page.add_routes(app)
    from service import openapi as _openapi  # GET /openapi.json, kept in step by tests/test_openapi.py

    _openapi.add_routes(app)
    return app


def bind_http(settings: HttpSettings) -> socket.socket:
    """Bind (not listen on) ``http.host``/``http.port`` now: a port in use or a wrong host stops
    startup at once, with exit 2 naming the setting, instead of after warm-up. Nothing
    listens until ``serve_http`` is given the socket after the readiness gate."""
    return bind_socket(settings.host, settings.port, host_key="http.host", port_key="http.port")


async def serve_http(app: web.Application, settings: HttpSettings, stack: contextlib.AsyncExitStack,
                     lifecycle: Lifecycle, *, sock: socket.socket | None = None,
                     reserve_connections: int = 0) -> int:  # fmt: skip
    """Serve ``app`` on ``sock`` (from ``bind_http``; bound now when None) and return the bound
    port; the primary and the replica both open their port through here, once they have
    something to serve. Connections are bounded (``service.listen``): keep-alive and header
    timeouts, and at most ``http.max_connections`` open at once, lowered to leave the feed
    its descriptors (``reserve_connections``: the other ports' caps).

    Teardown is pushed on ``stack``: the lifecycle says "stopping" (so /readyz answers 503)
    before the port closes, and in-flight requests get ``shutdown_timeout_s``.
    """
    if sock is None:
        sock = bind_http(settings)
    cap = connection_budget(settings.max_connections, others=reserve_connections, what="http.max_connections")
    site = await stack.enter_async_context(
        guarded_server(
            app, sock, max_connections=cap, idle_timeout_s=settings.idle_timeout_s,
            keepalive_timeout_s=settings.keepalive_timeout_s, shutdown_timeout_s=settings.shutdown_timeout_s,
            name=f"http {settings.host}:{settings.port}",
        )
    )  # fmt: skip
    stack.callback(lifecycle.stopping)
    return site.port
