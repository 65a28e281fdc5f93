"""The API app's layers (service.http.Routes): no aiohttp middleware in any configuration, every
registered route (the catch-all included) wrapped in the same counting / CORS / keys / JSON-error
layers, the catch-all's JSON 404 and 405 (with Allow), preflights, and the counted 499 and 500."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from feeds.calendar import MarketCalendar
from feeds.clock import ManualClock
from feeds.model import ChainSkeleton
from service.core.chains import CacheChains
from service.core.freshness import Freshness
from service.core.lifecycle import Lifecycle, Phase
from service.core.snapshot import ChainSnapshot
from service.http import HttpContext, Routes, make_app
from service.metrics import HttpMetrics
from tests.conftest import NOW, priced_cache
from tests.helpers import until
from tests.test_hostile_clients import KEY, raw_exchange, served, split_response

ORIGIN = "http://dash.example"
CONFIGS = {
    "plain": {},
    "cors": {"cors": (ORIGIN,)},
    "keys": {"api_keys": (KEY.encode(),)},
    "both": {"cors": (ORIGIN,), "api_keys": (KEY.encode(),)},
}


def _target(route: web.AbstractRoute) -> tuple[str, str, str]:
    """(method, path, metric label) of a request this route takes: its pattern with each
    variable filled in; the catch-all ('*') gets a path nothing else takes, counted 'unmatched'."""
    assert route.resource is not None
    if route.method == "*":
        return "GET", "/no/such/route", "unmatched"
    canonical = route.resource.canonical
    return route.method, re.sub(r"\{[^}]*\}", "x", canonical), canonical


@pytest.mark.parametrize("metrics", [False, True])
@pytest.mark.parametrize("config", CONFIGS)
def test_no_aiohttp_middleware_and_a_catch_all_last(config: str, metrics: bool) -> None:
    """Whatever is configured, the layers are per route: the app has no middleware, and the
    catch-all route is the last registered."""
    kw = CONFIGS[config]
    context = HttpContext(None, Lifecycle(), kw.get("cors", ()), api_keys=kw.get("api_keys", ()))  # type: ignore[arg-type]
    app = make_app(context, http_metrics=HttpMetrics() if metrics else None)
    assert len(app.middlewares) == 0
    routes = list(app.router.routes())
    assert [r.method for r in routes].count("*") == 1 and routes[-1].method == "*"
    assert {r.method for r in routes[:-1]} == {"GET", "HEAD"}


@pytest.mark.parametrize("config", CONFIGS)
async def test_every_route_is_layered_and_counted(skeleton: ChainSkeleton, config: str) -> None:
    """Each registered route (walked from the router, HEAD and the catch-all included) answers
    through the layers: with keys on, a wrong key gets the JSON 401 on every route but the open
    ones; with CORS on, an allowed Origin is answered; and every request is counted under its
    route's pattern ('unmatched' for the catch-all)."""
    kw = CONFIGS[config]
    async with served(skeleton, **kw) as s, aiohttp.ClientSession() as http:
        targets = [_target(route) for route in s.app.router.routes()]
        assert len(targets) >= 2 * 13 + 1
        for method, path, _ in targets:
            headers = {"X-API-Key": "not-a-key-but-long-enough", "Origin": ORIGIN}
            async with http.request(method, f"{s.base}{path}", headers=headers) as resp:
                body = await resp.read()
                opened = path in ("/healthz", "/readyz", "/openapi.json", "/") or path.startswith("/static/")
                if "api_keys" in kw and not opened:
                    assert resp.status == 401, (method, path)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    if method == "GET":
                        assert (await resp.json())["error"]["code"] == "invalid_api_key"
                else:
                    assert resp.status != 401, (method, path)
                assert (resp.headers.get("Access-Control-Allow-Origin") == ORIGIN) == ("cors" in kw), (method, path)
                if method == "HEAD":
                    assert body == b""
    requests = s.metrics.http.requests
    for label in {label for _, _, label in targets}:
        expected = sum(1 for _, _, lab in targets if lab == label)
        assert sum(n for (route, _), n in requests.items() if route == label) == expected, label
    assert sum(requests.values()) == len(targets)


async def test_404_405_head_and_preflights_from_the_catch_all(skeleton: ChainSkeleton) -> None:
    """Requests no route takes: JSON 404 (HEAD: same head, no body), JSON 405 with the Allow of
    the path's route, CORS preflights answered on any path (and on ``OPTIONS *``), each counted
    under the matching route's pattern or 'unmatched'."""
    async with served(skeleton, cors=(ORIGIN,)) as s, aiohttp.ClientSession() as http:
        async with http.get(f"{s.base}/no/such") as resp:
            assert resp.status == 404 and resp.content_type == "application/json"
            assert await resp.json() == {"error": {"code": "not_found", "message": "Not Found"}}
            length = resp.headers["Content-Length"]
        async with http.head(f"{s.base}/no/such") as resp:
            assert resp.status == 404 and resp.headers["Content-Length"] == length and await resp.read() == b""
        for method, path in (("POST", "/options/live?underlying=NIFTY"), ("DELETE", "/static/app.js"), ("PUT", "/")):
            async with http.request(method, f"{s.base}{path}") as resp:
                assert resp.status == 405, (method, path)
                assert resp.headers["Allow"] == "GET,HEAD"
                assert (await resp.json())["error"]["code"] == "method_not_allowed"
        preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
        for path in ("/no/such", "/options/live"):
            async with http.options(f"{s.base}{path}", headers=preflight) as resp:
                assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        raw = await raw_exchange(s.port, b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\nOrigin: " + ORIGIN.encode()
                                 + b"\r\nAccess-Control-Request-Method: GET\r\n\r\n")  # fmt: skip
        status, headers, _ = split_response(raw)
        assert status == 204 and headers["access-control-allow-origin"] == ORIGIN
        raw = await raw_exchange(s.port, b"GET * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert split_response(raw)[0] == 400  # not a target for GET: aiohttp's parser refuses it, before routing
    assert s.metrics.http.requests == {
        ("unmatched", 404): 2, ("unmatched", 204): 2, ("/options/live", 405): 1, ("/static/{name}", 405): 1,
        ("/", 405): 1, ("/options/live", 204): 1,
    }


def _chains(skeleton: ChainSkeleton) -> CacheChains:
    """The chains of ``skeleton`` with data, as tests.test_hostile_clients.served serves them."""
    clock = ManualClock(NOW)
    cache = priced_cache(skeleton, clock)
    return CacheChains(cache, Freshness(30.0, MarketCalendar(always_open=True), clock))


def _serving() -> Lifecycle:
    lifecycle = Lifecycle()
    lifecycle.to(Phase.WARMING, "test")
    lifecycle.to(Phase.READY, "test")
    return lifecycle


class _Failing:
    """A ChainSource whose snapshots raise once ``failing`` is set (a bug behind the handler)."""

    def __init__(self, chains: CacheChains) -> None:
        self.chains = chains
        self.failing = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.chains, name)

    def snapshot(self, underlying: str, expiry: dt.date) -> ChainSnapshot | None:
        if self.failing:
            raise RuntimeError("a bug")
        return self.chains.snapshot(underlying, expiry)


@pytest.mark.parametrize("cors", [(), (ORIGIN,)])
async def test_an_escaped_exception_is_counted_500(skeleton: ChainSkeleton, cors: tuple[str, ...]) -> None:
    """An exception escaping the handler is counted as aiohttp's 500, on /options/live's known-target
    path (counted inline when counting and errors are its only layers; by the layer with CORS on)
    and on its full path."""
    source = _Failing(_chains(skeleton))
    http_metrics = HttpMetrics()
    app = make_app(HttpContext(source, _serving(), cors), http_metrics=http_metrics)  # type: ignore[arg-type]
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        known = "/options/live?underlying=NIFTY"
        async with client.get(known) as resp:
            assert resp.status == 200  # the full path, once: the target is known from now on
        source.failing = True
        for path in (known, f"{known}&expiry={source.chains.cache.expiries['NIFTY'][1].isoformat()}"):
            async with client.get(path) as resp:
                assert resp.status == 500, path
    assert http_metrics.requests == {("/options/live", 200): 1, ("/options/live", 500): 2}


async def test_a_cancelled_request_is_counted_499() -> None:
    """A client that goes away before its answer (aiohttp cancels the handler) is counted 499 by
    the counting layer every API route has (the stream, which ends itself, is counted as it ends)."""
    http_metrics = HttpMetrics()
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        started.set()
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/slow", http_metrics.counted(slow, "/slow"))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:  # cancels the handlers of lost clients
        request = asyncio.ensure_future(client.get("/slow"))
        await until(started.is_set, what="the handler started")
        request.cancel()  # the client gives up: its connection closes
        await until(lambda: bool(http_metrics.requests), what="the request counted")
    assert http_metrics.requests == {("/slow", 499): 1}
    assert http_metrics.latency["/slow"].count == 1


def test_a_route_added_around_the_layers_stops_make_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """A module adding a route straight on the router (not through ``Routes``) is caught at once."""
    from service import openapi

    def add_routes(routes: Routes) -> None:
        routes.app.router.add_get("/raw", openapi.openapi_json)

    monkeypatch.setattr(openapi, "add_routes", add_routes)
    with pytest.raises(RuntimeError, match="GET /raw"):
        make_app(HttpContext(None, Lifecycle()))  # type: ignore[arg-type]
