"""The HTTP API: ``/options/live``, ``/options/underlyings``, ``/healthz``, ``/readyz``.

Handlers only read: they ask a ``ChainSource`` (the primary's cache, or a read replica's
Redis-loaded store) for a chain and return its pre-serialised snapshot bytes, so the same
handlers serve both. Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx status.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import orjson
from aiohttp import web

from service.core.chains import ChainSource
from service.core.health import Health
from service.core.lifecycle import Lifecycle
from service.settings import HttpSettings

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class HttpContext:
    chains: ChainSource
    lifecycle: Lifecycle
    cors_allow_origins: tuple[str, ...] = ()
    health: Health | None = None  # why a serving process is degraded; see service.core.health


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


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    # Weak comparison (RFC 9110 §13.1.2): W/"x" matches "x".
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


async def options_live(request: web.Request) -> web.StreamResponse:
    chains = request.app[CONTEXT].chains
    raw_underlying = request.query.get("underlying", "").strip()
    if not raw_underlying:
        raise ApiError(400, "missing_parameter", "query parameter 'underlying' is required, e.g. ?underlying=NIFTY")
    underlying = raw_underlying.upper()
    if not underlying.replace("-", "").replace("&", "").isalnum() or len(underlying) > 32:
        raise ApiError(400, "bad_parameter", "'underlying' must be a symbol such as NIFTY")
    expiries = chains.expiries(underlying)
    if expiries is None:
        raise ApiError(404, "unknown_underlying", f"underlying {underlying!r} is not served; see /options/underlyings")
    raw_expiry = request.query.get("expiry")
    if raw_expiry is None or raw_expiry == "":
        expiry = chains.nearest_expiry(underlying)
        if expiry is None:
            raise ApiError(404, "no_expiry", f"{underlying} has no unexpired expiry loaded")
    else:
        try:
            expiry = dt.date.fromisoformat(raw_expiry)
            if len(raw_expiry) != 10:
                raise ValueError(raw_expiry)
        except ValueError:
            raise ApiError(400, "bad_parameter", "'expiry' must be a date as YYYY-MM-DD") from None
    snap = chains.snapshot(underlying, expiry)
    if snap is None:
        listed = ", ".join(d.isoformat() for d in expiries)
        raise ApiError(404, "unknown_expiry", f"{underlying} has no expiry {expiry.isoformat()}; expiries: {listed}")
    headers = {"ETag": snap.etag, "Cache-Control": "no-cache"}
    if _etag_matches(request.headers.get("If-None-Match"), snap.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=snap.body, headers=headers, content_type="application/json")


async def options_underlyings(request: web.Request) -> web.StreamResponse:
    body = {
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


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason)


def cors_middleware(allowed: tuple[str, ...]) -> Callable[..., Awaitable[web.StreamResponse]]:
    allow_any = "*" in allowed

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        permitted = origin is not None and (allow_any or origin in allowed)
        if request.method == "OPTIONS" and permitted and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "If-None-Match"
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if permitted:
            response.headers["Access-Control-Allow-Origin"] = "*" if allow_any else origin
            response.headers["Access-Control-Expose-Headers"] = "ETag"
            if not allow_any:
                response.headers["Vary"] = "Origin"
        return response

    return cors


def make_app(context: HttpContext, *, outer_middlewares: Sequence[Middleware] = ()) -> web.Application:
    """``outer_middlewares`` wrap everything else (e.g. metrics, which must see final statuses)."""
    middlewares = [errors_middleware]
    if context.cors_allow_origins:
        middlewares.insert(0, cors_middleware(context.cors_allow_origins))
    middlewares[:0] = outer_middlewares
    app = web.Application(middlewares=middlewares)
    app[CONTEXT] = context
    app.router.add_get("/options/live", options_live)
    app.router.add_get("/options/underlyings", options_underlyings)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve_http(app: web.Application, settings: HttpSettings, stack: contextlib.AsyncExitStack,
                     lifecycle: Lifecycle) -> int:  # fmt: skip
    """Bind ``app`` on ``http.host``/``http.port`` and return the bound port; the primary and the
    replica both open their port through here, once they have something to serve.

    Teardown is pushed on ``stack``: the lifecycle says "stopping" (so /readyz answers 503)
    before the port closes, and in-flight requests get ``shutdown_timeout_s``.
    """
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=settings.shutdown_timeout_s, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    stack.callback(lifecycle.stopping)
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    return runner.addresses[0][1]
