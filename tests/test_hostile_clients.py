"""Hostile and careless clients against the real listening path (service.listen via serve_http):
bounded connections, one JSON error shape, strict parameters, conditional requests, CORS,
route labels, optional API keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from feeds.calendar import MarketCalendar
from feeds.clock import ManualClock
from feeds.model import ChainSkeleton
from service.core.cache import ChainCache
from service.core.chains import CacheChains
from service.core.freshness import Freshness
from service.core.health import Health
from service.core.lifecycle import Lifecycle, Phase
from service.http import HttpContext, make_app, serve_http
from service.listen import GUARDS
from service.metrics import Metrics
from service.settings import HttpSettings
from tests.conftest import NOW, priced_cache
from tests.helpers import UNIT_S, until
from tests.test_metrics import _unrun_feed

KEY = "k3y-for-tests-0123456789abcdef"


@dataclass
class Served:
    port: int
    metrics: Metrics
    cache: ChainCache
    app: web.Application

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def served(skeleton: ChainSkeleton, *, cors: tuple[str, ...] = (), api_keys: tuple[bytes, ...] = (),
                 **http: object) -> AsyncIterator[Served]:  # fmt: skip
    """The primary's HTTP app on a free port, through serve_http (the guarded listening path)."""
    clock = ManualClock(NOW)
    cache = priced_cache(skeleton, clock)
    lifecycle = Lifecycle()
    lifecycle.to(Phase.WARMING, "test")
    lifecycle.to(Phase.READY, "test")
    health = Health(lifecycle, stale_after_s=30.0, clock=clock)
    metrics = Metrics(health, clock=clock)
    chains = CacheChains(cache, Freshness(30.0, MarketCalendar(always_open=True), clock))
    app = make_app(
        HttpContext(chains, lifecycle, cors, health=health, api_keys=api_keys),
        http_metrics=metrics.http,
    )
    settings = HttpSettings(host="127.0.0.1", port=0, **http)  # type: ignore[arg-type]
    async with contextlib.AsyncExitStack() as stack:
        port = await serve_http(app, settings, stack, lifecycle)
        yield Served(port, metrics, cache, app)


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(2 * UNIT_S):
            return await reader.read()
    finally:
        writer.close()


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_aiohttps_own_400s_are_json_and_never_echo_the_request(skeleton: ChainSkeleton) -> None:
    """An oversized request line, a non-ASCII target and garbage get the JSON error body, not text echoing input."""
    marker = b"ECHO-ME-MARKER"
    async with served(skeleton) as s:
        attempts = [
            b"GET /options/live?underlying=" + marker + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /options/live?underlying=nıfty&".encode() + marker + b" HTTP/1.1\r\nHost: a\r\n\r\n",
            marker + b"\x00\x01 garbage\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-" + marker + b": " + b"v" * 9000 + b"\r\n\r\n",
        ]
        for data in attempts:
            status, headers, body = split_response(await raw_exchange(s.port, data))
            assert 400 <= status < 500, (status, body)
            assert headers["content-type"].startswith("application/json")
            assert set(json.loads(body)["error"]) == {"code", "message"}
            assert marker not in body and b"nxc4" not in body


@pytest.mark.parametrize(
    "query",
    [
        {"underlying": "nıfty"},  # dotless ı: str.upper() would make it NIFTY
        {"underlying": "NIFTY", "expiry": "2026-W50-2"},  # ISO week date, 10 characters
        {"underlying": "NIFTY", "expiry": "20261124"},
        {"underlying": "NIFTY", "expiry": "2026-11-24T00"},
        {"underlying": "ＮＩＦＴＹ"},  # full-width
    ],
)
async def test_symbols_and_dates_are_strict(skeleton: ChainSkeleton, query: dict[str, str]) -> None:
    """Only ASCII symbols and YYYY-MM-DD dates: anything else is a 400 in the error shape."""
    async with served(skeleton) as s, aiohttp.ClientSession() as http:
        async with http.get(f"{s.base}/options/live", params=query) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "bad_parameter"


@pytest.mark.parametrize(
    "path",
    ["/api/option-chain-indices?symbol={}", "/api/option-chain-contract-info?symbol={}",
     "/api/option-chain-v3?type=Indices&symbol={}"],
)  # fmt: skip
@pytest.mark.parametrize("symbol", ["nıfty", "ＮＩＦＴＹ", "NIF%20TY"])
async def test_nse_routes_take_symbols_as_strictly_as_options_live(skeleton: ChainSkeleton, path: str,
                                                                   symbol: str) -> None:  # fmt: skip
    """The NSE-shaped routes apply /options/live's ASCII symbol rule: "nıfty" is a 400, never NIFTY."""
    async with served(skeleton) as s, aiohttp.ClientSession() as http:
        async with http.get(f"{s.base}{path.format('NIFTY')}") as resp:
            assert resp.status == 200  # the same route with the plain symbol is served
        async with http.get(f"{s.base}{path.format(symbol)}") as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "bad_parameter"


@pytest.mark.parametrize(
    "path", ["/options/live?underlying=NIFTY", "/api/option-chain-indices?symbol=NIFTY", "/", "/static/app.js"]
)
async def test_every_if_none_match_header_is_honoured(skeleton: ChainSkeleton, path: str) -> None:
    """A second If-None-Match header carrying the current ETag gives 304, like one header listing both,
    on every route that sends an ETag (the chain, its NSE shape, the page's files)."""
    async with served(skeleton) as s, aiohttp.ClientSession() as http:
        async with http.get(f"{s.base}{path}") as resp:
            assert resp.status == 200
            etag = resp.headers["ETag"]
        headers = CIMultiDict([("If-None-Match", '"stale-tag"'), ("If-None-Match", etag)])
        async with http.get(f"{s.base}{path}", headers=headers) as resp:
            assert resp.status == 304
        async with http.get(f"{s.base}{path}", headers={"If-None-Match": f'"other", W/{etag}'}) as resp:
            assert resp.status == 304
        async with http.get(f"{s.base}{path}", headers={"If-None-Match": '"other"'}) as resp:
            assert resp.status == 200


async def test_vary_origin_whenever_origins_are_listed(skeleton: ChainSkeleton) -> None:
    """With listed origins the answer depends on Origin, allowed or not, present or not: Vary says so."""
    async with served(skeleton, cors=("http://dash.example",)) as s, aiohttp.ClientSession() as http:
        for headers in ({}, {"Origin": "http://evil.example"}, {"Origin": "http://dash.example"}):
            async with http.get(f"{s.base}/options/live?underlying=NIFTY", headers=headers) as resp:
                assert "Origin" in resp.headers.getall("Vary", []), headers
        async with http.get(f"{s.base}/options/live?underlying=NIFTY", headers={"Origin": "http://evil.example"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers


async def test_405s_and_preflights_are_labelled_with_their_route(skeleton: ChainSkeleton) -> None:
    """A wrong method and a CORS preflight count under the route's pattern; unknown paths stay 'unmatched'."""
    async with served(skeleton, cors=("http://dash.example",)) as s, aiohttp.ClientSession() as http:
        async with http.post(f"{s.base}/options/live?underlying=NIFTY") as resp:
            assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"
        preflight = {"Origin": "http://dash.example", "Access-Control-Request-Method": "GET"}
        async with http.options(f"{s.base}/options/live", headers=preflight) as resp:
            assert resp.status == 204
        async with http.get(f"{s.base}/no/such/path") as resp:
            assert resp.status == 404
    requests = s.metrics.http.requests
    assert requests.get(("/options/live", 405)) == 1 and requests.get(("/options/live", 204)) == 1
    assert requests.get(("unmatched", 404)) == 1 and not any("/no/such" in r for r, _ in requests)


def test_readyz_lists_one_connections_problem_once(skeleton: ChainSkeleton) -> None:
    """A lost feed connection is one problem, though ingest's lifecycle reason words it differently."""
    lifecycle = Lifecycle()
    feed = _unrun_feed(skeleton, market_open=True)
    health = Health(lifecycle, stale_after_s=30.0, feed=feed, clock=ManualClock(NOW))
    lifecycle.to(Phase.WARMING, "waiting")
    lifecycle.to(Phase.READY, "gate passed")
    feed.connections[0].stats.last_error = "ConnectionResetError"
    lifecycle.to(Phase.DEGRADED, "feed connection 0 down: dropped")
    report = health.report()
    assert report.status == "degraded"
    assert len(report.problems) == 1 and report.problems[0].startswith("feed connection 0 down")


async def _closed_by_server(port: int, send: bytes = b"") -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if send:
            writer.write(send)
        async with asyncio.timeout(2 * UNIT_S):
            await reader.read()  # EOF once the server closes
        return True
    finally:
        writer.close()


async def test_silent_and_trickling_connections_are_closed(skeleton: ChainSkeleton) -> None:
    """A socket that never sends a whole request head is closed after idle_timeout_s; an idle
    kept-alive connection after keepalive_timeout_s."""
    async with served(skeleton, idle_timeout_s=0.2, keepalive_timeout_s=0.2) as s:
        assert await _closed_by_server(s.port)
        assert await _closed_by_server(s.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n")  # head never finished
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        async with asyncio.timeout(2 * UNIT_S):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            await reader.read()  # the kept-alive connection is closed once idle
        writer.close()


async def test_connections_over_the_cap_are_refused_with_a_json_503(skeleton: ChainSkeleton) -> None:
    """At most max_connections open: the next gets a 503 JSON error and is closed; capacity comes back."""
    async with served(skeleton, max_connections=3, idle_timeout_s=30) as s:
        held = [await asyncio.open_connection("127.0.0.1", s.port) for _ in range(3)]
        await until(lambda: _open(s) == 3, what="three connections open")
        status, headers, body = split_response(await raw_exchange(s.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"))
        assert status == 503 and headers["content-type"] == "application/json"
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        for _, writer in held:
            writer.close()
        await until(lambda: _open(s) == 0, what="held connections gone")
        async with aiohttp.ClientSession() as http, http.get(f"{s.base}/healthz") as resp:
            assert resp.status == 200


async def test_connection_counts_are_exported_as_metrics(skeleton: ChainSkeleton) -> None:
    """livechain_http_connections_{accepted,refused,header_timeouts}_total count what the guard did, by port."""
    async with served(skeleton, max_connections=2, idle_timeout_s=0.3) as s:
        s.metrics.attach_connections("api", s.app)
        silent = [await asyncio.open_connection("127.0.0.1", s.port) for _ in range(2)]
        await until(lambda: _open(s) == 2, what="two connections open")
        status, _, _ = split_response(await raw_exchange(s.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"))
        assert status == 503
        for reader, _ in silent:  # closed by the header timeout
            async with asyncio.timeout(2 * UNIT_S):
                assert await reader.read() == b""
        for _, writer in silent:
            writer.close()
        text = s.metrics.render().decode()
    assert 'livechain_http_connections_accepted_total{port="api"} 2.0' in text
    assert 'livechain_http_connections_refused_total{port="api"} 1.0' in text
    assert 'livechain_http_connections_header_timeouts_total{port="api"} 2.0' in text
    assert 'livechain_http_connections_open{port="api"}' in text


def _open(s: Served) -> int:
    return s.app[GUARDS][0].open


async def test_api_keys_guard_data_routes_only(skeleton: ChainSkeleton) -> None:
    """With keys: 401 JSON + WWW-Authenticate without or with a wrong key; Bearer and X-API-Key work;
    probes stay open; the key never appears in a body or a metric; a key in the URL is not accepted."""
    async with served(skeleton, api_keys=(KEY.encode(),)) as s, aiohttp.ClientSession() as http:
        url = f"{s.base}/options/live?underlying=NIFTY"
        for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"X-API-Key": KEY[:-1]},
                        {"Authorization": f"Basic {KEY}"}):  # fmt: skip
            async with http.get(url, headers=headers) as resp:
                assert resp.status == 401, headers
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                body = await resp.text()
                assert set(json.loads(body)["error"]) == {"code", "message"} and KEY not in body
        async with http.get(f"{url}&api_key={KEY}") as resp:
            assert resp.status == 401
        for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
            async with http.get(url, headers=headers) as resp:
                assert resp.status == 200
        for path in ("/healthz", "/readyz"):
            async with http.get(s.base + path) as resp:
                assert resp.status == 200
    assert KEY not in s.metrics.render().decode()


def test_api_keys_load_from_settings_and_file(tmp_path: object) -> None:
    """Keys come from the JSON list and the file (comments, blanks skipped); a bad line names the line, not the key."""
    from pathlib import Path

    from pydantic import SecretStr

    from service.auth import load_api_keys
    from service.errors import ConfigError

    path = Path(str(tmp_path)) / "keys"
    path.write_text(f"# ops keys\n\n{KEY}\nsecond-key-abcdefghijkl\n")
    assert load_api_keys([SecretStr("inline-key-0123456789")], path) == (
        b"inline-key-0123456789", KEY.encode(), b"second-key-abcdefghijkl",
    )
    path.write_text("short-secret\n")
    with pytest.raises(ConfigError, match="line 1") as info:
        load_api_keys([], path)
    assert "short-secret" not in str(info.value)
