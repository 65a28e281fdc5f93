"""The HTTP API: ``/options/live``, ``/options/underlyings``, ``/healthz``, ``/readyz``.

Handlers only read: they ask the cache for a chain and return its pre-serialised snapshot
bytes. Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx status.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from aiohttp import web

from feeds.model import IST
from service.cache import ChainCache
from service.lifecycle import Lifecycle
from service.snapshot import render

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class HttpContext:
    cache: ChainCache
    lifecycle: Lifecycle
    stale_after_s: float
    cors_allow_origins: tuple[str, ...] = ()


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


def _today_ist() -> dt.date:
    return dt.datetime.now(IST).date()


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    # Weak comparison (RFC 9110 §13.1.2): W/"x" matches "x".
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


async def options_live(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    cache = ctx.cache
    raw_underlying = request.query.get("underlying", "").strip()
    if not raw_underlying:
        raise ApiError(400, "missing_parameter", "query parameter 'underlying' is required, e.g. ?underlying=NIFTY")
    underlying = raw_underlying.upper()
    if not underlying.replace("-", "").replace("&", "").isalnum() or len(underlying) > 32:
        raise ApiError(400, "bad_parameter", "'underlying' must be a symbol such as NIFTY")
    if underlying not in cache.expiries:
        raise ApiError(404, "unknown_underlying", f"underlying {underlying!r} is not served; see /options/underlyings")
    raw_expiry = request.query.get("expiry")
    if raw_expiry is None or raw_expiry == "":
        expiry = cache.nearest_expiry(underlying, _today_ist())
        if expiry is None:
            raise ApiError(404, "no_expiry", f"{underlying} has no unexpired expiry loaded")
    else:
        try:
            expiry = dt.date.fromisoformat(raw_expiry)
            if len(raw_expiry) != 10:
                raise ValueError(raw_expiry)
        except ValueError:
            raise ApiError(400, "bad_parameter", "'expiry' must be a date as YYYY-MM-DD") from None
    chain = cache.chains.get((underlying, expiry))
    if chain is None:
        listed = ", ".join(d.isoformat() for d in cache.expiries[underlying])
        raise ApiError(404, "unknown_expiry", f"{underlying} has no expiry {expiry.isoformat()}; expiries: {listed}")
    snap = render(chain, cache.is_stale(chain, ctx.stale_after_s))
    headers = {"ETag": snap.etag, "Cache-Control": "no-cache"}
    if _etag_matches(request.headers.get("If-None-Match"), snap.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=snap.body, headers=headers, content_type="application/json")


async def options_underlyings(request: web.Request) -> web.StreamResponse:
    cache = request.app[CONTEXT].cache
    body = {
        "underlyings": [
            {
                "underlying": symbol,
                "security_id": cache.index_keys[symbol][1],
                "expiries": [
                    {"expiry": e.isoformat(), "lot_size": cache.chains[(symbol, e)].lot_size,
                     "strikes": len(cache.chains[(symbol, e)].rows)}
                    for e in expiries
                ],
            }
            for symbol, expiries in cache.expiries.items()
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
        "coverage": round(ctx.cache.coverage, 6),
        "instruments": ctx.cache.subscribed,
        "covered": ctx.cache.covered,
    }
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


def make_app(context: HttpContext) -> web.Application:
    middlewares = [errors_middleware]
    if context.cors_allow_origins:
        middlewares.insert(0, cors_middleware(context.cors_allow_origins))
    app = web.Application(middlewares=middlewares)
    app[CONTEXT] = context
    app.router.add_get("/options/live", options_live)
    app.router.add_get("/options/underlyings", options_underlyings)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
