"""The HTTP API: ``/options/live``, ``/options/underlyings``, ``/healthz``, ``/readyz``.

Handlers only read: they ask a ``ChainSource`` (the primary's cache, or a read replica's
Redis-loaded store) for a chain and return its pre-serialised snapshot bytes, so the same
handlers serve both. Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

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


def live_handler(chains: ChainSource, *, http_metrics: HttpMetrics | None = None,
                 route: str = "/options/live") -> Handler:  # fmt: skip
    """``/options/live`` over ``chains``, built once per app. A known plain target
    (``_LIVE_TARGETS``) goes straight to its chain's snapshot; anything else (or a chain that is
    gone) takes the full path, with every check and error.

    Without ``http_metrics`` errors are raised, for the route's layers to answer. With it, this is
    the route with its layers in one coroutine: ``HttpMetrics.counted`` (under ``route``) around
    ``answering_errors`` around the handler, done inline, so the same answers and the same counts
    without a coroutine per layer on the path every poller takes (``Routes.get``'s ``fused``:
    used only when those two are all the route's layers)."""
    targets = _LIVE_TARGETS
    # The last snapshot answered and its headers, built once per snapshot rather than per request
    # (a Response copies them): for a 304, and for a 200 (with the type). Header order as ever.
    last: ChainSnapshot | None = None
    headers_304 = headers_200 = CIMultiDict[str]()

    def known(request: web.Request) -> web.Response | None:
        """The answer for a known target whose chain is there; None: take the full path."""
        nonlocal last, headers_304, headers_200
        named = targets.get(request.raw_path)
        if named is None:
            return None
        underlying, expiry = named
        if expiry is None:
            expiry = chains.nearest_expiry(underlying)
            if expiry is None:
                return None  # the full path says why (404)
        snap = chains.snapshot(underlying, expiry)
        if snap is None:
            return None
        if snap is not last:
            last = snap
            headers_304 = CIMultiDict(ETag=snap.etag)
            headers_304["Cache-Control"] = "no-cache"
            headers_200 = CIMultiDict(headers_304)
            headers_200["Content-Type"] = "application/json"
        tag = request.headers.get(hdrs.IF_NONE_MATCH)
        if tag is not None and (tag == snap.etag or not_modified(request, snap.etag)):
            return web.Response(status=304, headers=headers_304)
        return web.Response(body=snap.body, headers=headers_200)

    if http_metrics is None:

        async def options_live(request: web.Request) -> web.StreamResponse:
            response = known(request)
            return response if response is not None else await _options_live(request)

        return options_live

    record = http_metrics.recorder(route)
    perf_counter = time.perf_counter

    async def counted_options_live(request: web.Request) -> web.StreamResponse:
        # HttpMetrics.counted and answering_errors, inline: keep the three in step.
        start = perf_counter()
        status = 500  # an exception that escapes every handler becomes aiohttp's 500
        try:
            response = known(request)
            if response is None:
                try:
                    response = await _options_live(request)
                except (ApiError, web.HTTPException) as exc:
                    response = error_answer(exc)
                    if response is None:
                        raise
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # nginx's "client closed request": no response was sent
            raise
        finally:
            record(status, perf_counter() - start)

    return counted_options_live


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

# What every API route runs in. The app has no aiohttp middleware: as soon as an app has one,
# aiohttp adds a layer of its own to every request. The same layers are composed once per route
# instead, when it is registered (``Routes``), so a request pays only for what it goes through.
Layer = Callable[[Handler, "str | None"], Handler]
"""Wraps a route's handler, given the route's metric label (None: the catch-all's, per request)."""


def error_answer(exc: BaseException) -> web.Response | None:
    """The JSON error body for our ``ApiError`` or aiohttp's 4xx/5xx ``HTTPException`` (a 405
    keeps its ``Allow`` header); None for anything else (a redirect): the caller re-raises it."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message)
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        response = error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason)
        allow = exc.headers.get(hdrs.ALLOW)
        if allow is not None:
            response.headers[hdrs.ALLOW] = allow
        return response
    return None


def answering_errors(handler: Handler) -> Handler:
    """``handler``, with our errors and aiohttp's 4xx/5xx answered as the JSON error body (the
    innermost layer)."""

    async def answered(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (ApiError, web.HTTPException) as exc:
            response = error_answer(exc)
            if response is None:
                raise
            return response

    return answered


def cors_layer(allowed: tuple[str, ...]) -> Callable[[Handler], Handler]:
    """CORS for the listed origins (``*``: any): a permitted preflight is answered here (204);
    every answer to a permitted origin says so; with listed origins, every answer varies on Origin."""
    allow_any = "*" in allowed

    def wrap(handler: Handler) -> Handler:
        async def cors(request: web.Request) -> web.StreamResponse:
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

    return wrap


def _route_blind(wrap: Callable[[Handler], Handler]) -> Layer:
    return lambda handler, _route: wrap(handler)


class AnyTarget(web.AbstractResource):
    """The catch-all resource: matches every request target, ``*`` (``OPTIONS *``) included,
    which no path pattern can. Registered last, it gets only the requests no route took."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self._routes = [web.ResourceRoute(hdrs.METH_ANY, handler, self)]

    @property
    def canonical(self) -> str:
        return "/{tail}"  # indexed under "/": the router tries it after every other resource

    def url_for(self, **kwargs: str) -> URL:
        raise RuntimeError("the catch-all route has no URL")

    async def resolve(self, request: web.Request) -> tuple[web.UrlMappingMatchInfo | None, set[str]]:
        return web.UrlMappingMatchInfo({}, self._routes[0]), set()

    def add_prefix(self, prefix: str) -> None:
        raise RuntimeError("the catch-all route is not for sub-applications")

    def get_info(self) -> dict[str, Any]:  # type: ignore[override]
        return {"catch_all": True}

    def raw_match(self, path: str) -> bool:
        return False  # never reused by add_resource for another path

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self) -> Iterator[web.AbstractRoute]:
        return iter(self._routes)


async def no_route(request: web.Request) -> web.StreamResponse:
    """The catch-all's answer, inside the layers: 405 with ``Allow`` when a route's path matched
    but not its method, else 404 (the JSON body from ``answering_errors``)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


class Routes:
    """The one way to add a route to the API's app: ``make_app`` hands it to each module's
    ``add_routes``. Every handler is wrapped here, once, at registration, in the app's layers
    (see ``make_app``), with its metric label (the route's pattern) known then; ``app`` is there
    for the modules' state (``app[KEY]``, cleanup contexts), not for adding routes."""

    def __init__(self, app: web.Application, layers: Sequence[Layer], *, fusable: HttpMetrics | None = None) -> None:
        self.app = app
        self._layers = tuple(layers)
        self._fusable = fusable  # the metrics, when counting + error translation are all the layers
        self.handlers: set[Handler] = set()  # every layered handler: make_app checks each route has one

    def get(self, path: str, handler: Handler, *,
            fused: Callable[[HttpMetrics, str], Handler] | None = None) -> None:  # fmt: skip
        """``GET`` (and ``HEAD``) ``path``, answered by ``handler`` in the app's layers. ``fused``
        builds the handler with the counting and the error translation done inside it, taken
        when those are all the layers (``live_handler``)."""
        resource = self.app.router.add_resource(path)
        if fused is not None and self._fusable is not None:
            layered = fused(self._fusable, resource.canonical)
        else:
            layered = self.layered(handler, resource.canonical)
        self.handlers.add(layered)
        resource.add_route(hdrs.METH_HEAD, layered)
        resource.add_route(hdrs.METH_GET, layered)

    def layered(self, handler: Handler, route: str | None) -> Handler:
        for layer in reversed(self._layers):
            handler = layer(handler, route)
        return handler

    def catch_all(self, handler: Handler = no_route) -> None:
        """Every request no route took, answered by ``handler`` in the same layers (register it
        last); counted under the label ``path_route`` finds per request."""
        layered = self.layered(handler, None)
        self.handlers.add(layered)
        self.app.router.register_resource(AnyTarget(layered))


def make_app(context: HttpContext, *, http_metrics: HttpMetrics | None = None) -> web.Application:
    """The API's app, with no aiohttp middleware: every route (and the catch-all answering the
    JSON 404/405 and CORS preflights) is composed at registration (``Routes``) of, outermost
    first: ``http_metrics`` counting (it must see final statuses), CORS (``cors_allow_origins``),
    API keys (``api_keys``; inside CORS: a browser can read the 401), the JSON error translation."""
    layers: list[Layer] = []
    if context.cors_allow_origins:
        layers.append(_route_blind(cors_layer(context.cors_allow_origins)))
    if context.api_keys:
        from service.auth import auth_layer

        layers.append(_route_blind(auth_layer(context.api_keys)))
    layers.append(_route_blind(answering_errors))
    if http_metrics is not None:
        layers.insert(0, http_metrics.counted)
    # /options/live with the counting and the error translation inline, when they are all there is.
    fusable = http_metrics if http_metrics is not None and len(layers) == 2 else None

    app = web.Application()
    app[CONTEXT] = context
    routes = Routes(app, layers, fusable=fusable)
    chains = context.chains
    routes.get("/options/live", live_handler(chains),
               fused=lambda metrics, route: live_handler(chains, http_metrics=metrics, route=route))  # fmt: skip
    routes.get("/options/underlyings", options_underlyings)
    routes.get("/healthz", healthz)
    routes.get("/readyz", readyz)
    # Routes of their own modules: live push, NSE's shape, the page at /.
    from service import nse as _nse, stream as _stream, web as _page
    from service.history import http as _history

    _stream.add_routes(routes, context)
    _history.add_routes(routes)
    _nse.add_routes(routes)
    _page.add_routes(routes)
    from service import openapi as _openapi  # GET /openapi.json, kept in step by tests/test_openapi.py

    _openapi.add_routes(routes)
    routes.catch_all()
    unlayered = [f"{r.method} {r.resource.canonical if r.resource else '?'}" for r in app.router.routes()
                 if r.handler not in routes.handlers]  # fmt: skip
    if unlayered:
        raise RuntimeError(f"routes added around service.http.Routes, without the API's layers: {unlayered}")
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
