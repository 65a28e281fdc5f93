"""The simulator's option-chain REST endpoints, as Dhan serves them (reference §6).

``POST /v2/optionchain/expirylist`` and ``POST /v2/optionchain`` with Dhan's JSON shapes,
written by ``feeds.dhan.option_chain``'s encoder from the synthetic market (prices, OI and
depth as the feed would send them; IV and greeks from the market's own model):

* headers ``access-token`` and ``client-id`` are required (HTTP 401, trading-style DH-901
  body when missing or, with ``expected_token``/``expected_client_id`` set, wrong);
* at most one request per unique request (underlying, expiry; the expiry list per underlying)
  every ``rest_min_interval_s``, like Dhan; a faster one gets ``{"status": "failed", "data":
  {"805": "Too many requests"}}`` with HTTP ``rest_rate_limit_status``, and does not count;
* unknown underlyings and expiries get Dhan's 813/811 bodies, malformed requests 814;
* ``inject(status, body, count)`` answers the next requests with any body (an HTML 502, an
  805 on HTTP 200, a DH-904…), for tests of a client's error handling;
* every request is logged in ``requests`` (monotonic time, path, key, status, Dhan code), so
  tests can count what a client did without timing it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import orjson
from aiohttp import web

from feeds.dhan.option_chain import (
    OptionChain,
    StrikeQuotes,
    encode_data_error,
    encode_expiry_list,
    encode_option_chain,
    encode_trading_error,
)
from feeds.model import Segment
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.market import Market
from feeds.simulator.universe import Universe

EXPIRY_LIST_PATH = "/v2/optionchain/expirylist"
OPTION_CHAIN_PATH = "/v2/optionchain"


@dataclass(frozen=True, slots=True)
class RestRequest:
    at: float  # time.monotonic() on arrival
    path: str
    key: Hashable | None  # what the rate limit counts; None for a request refused before that
    status: int
    code: str | None  # Dhan's error code in the answer, if any


class OptionChainApi:
    def __init__(self, universe: Universe, market: Market, config: SimulatorConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._universe = universe
        self._market = market
        self._config = config
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._injected: deque[tuple[int, bytes]] = deque()
        self.requests: list[RestRequest] = []
        self.last_headers: dict[str, str] = {}  # of the newest request (tests of what a client sends)

    def inject(self, status: int, body: bytes, count: int = 1) -> None:
        """Answer the next ``count`` requests with ``status`` and ``body`` whatever they ask."""
        self._injected.extend([(status, body)] * count)

    def count(self, *, path: str | None = None, code: str | None = None, status: int | None = None) -> int:
        return sum(
            1 for r in self.requests
            if (path is None or r.path == path) and (code is None or r.code == code)
            and (status is None or r.status == status)
        )  # fmt: skip

    def routes(self) -> list[web.RouteDef]:
        return [web.post(EXPIRY_LIST_PATH, self._expiry_list), web.post(OPTION_CHAIN_PATH, self._option_chain)]

    # ------------------------------------------------------------------ handlers

    async def _expiry_list(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._expiries)

    async def _option_chain(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._chain)

    async def _serve(self, request: web.Request, answer: Callable[[dict], tuple[Hashable, bytes]]) -> web.Response:
        now = self._clock()
        path = request.path
        self.last_headers = dict(request.headers)
        if self._injected:
            status, body = self._injected.popleft()
            return self._reply(now, path, None, status, body)
        refused = self._credentials(request.headers)
        if refused is not None:
            return self._reply(now, path, None, 401, refused)
        try:
            doc = orjson.loads(await request.read())
            if not isinstance(doc, dict):
                raise TypeError("not an object")
            key, body = answer(doc)
        except _Refused as exc:
            return self._reply(now, path, None, 400, encode_data_error(exc.code, exc.message))
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
            return self._reply(now, path, None, 400, encode_data_error("814", "Invalid Request"))
        last = self._last.get(key)
        if last is not None and now - last < self._config.rest_min_interval_s:
            return self._reply(
                now, path, key, self._config.rest_rate_limit_status, encode_data_error("805", "Too many requests")
            )
        self._last[key] = now
        return self._reply(now, path, key, 200, body)

    def _reply(self, now: float, path: str, key: Hashable | None, status: int, body: bytes) -> web.Response:
        code = None
        if status != 200 or not body.startswith(b'{"data"'):
            try:
                doc = orjson.loads(body)
                data = doc.get("data") if isinstance(doc, dict) else None
                code = doc.get("errorCode") if isinstance(doc, dict) else None
                if isinstance(data, dict) and data:
                    code = next(iter(data))
            except orjson.JSONDecodeError:
                pass
        self.requests.append(RestRequest(now, path, key, status, code))
        content_type = "application/json" if body[:1] in (b"{", b"[") else "text/html"
        return web.Response(status=status, body=body, content_type=content_type)

    def _credentials(self, headers: dict | web.Request) -> bytes | None:
        token, client_id = headers.get("access-token", ""), headers.get("client-id", "")
        config = self._config
        if (
            not token or not client_id
            or (config.expected_token is not None and token != config.expected_token)
            or (config.expected_client_id is not None and client_id != config.expected_client_id)
        ):  # fmt: skip
            return encode_trading_error(
                "Invalid_Authentication", "DH-901", "Client ID or user generated access token is invalid or expired."
            )
        return None

    # ------------------------------------------------------------------ what is asked

    def _underlying(self, doc: dict) -> str:
        scrip, segment = doc["UnderlyingScrip"], doc["UnderlyingSeg"]
        if not isinstance(scrip, int) or not isinstance(segment, str):
            raise TypeError("UnderlyingScrip must be an int and UnderlyingSeg a string")
        spec = self._universe.indices.get((int(Segment.IDX_I), scrip))
        if segment != Segment.IDX_I.name or spec is None:
            raise _Refused("813", "Invalid SecurityId")
        return spec.symbol

    def _expiries(self, doc: dict) -> tuple[Hashable, bytes]:
        symbol = self._underlying(doc)
        chain = self._universe.skeleton.underlyings[symbol]
        return ("expirylist", symbol), encode_expiry_list([e.expiry for e in chain.expiries])

    def _chain(self, doc: dict) -> tuple[Hashable, bytes]:
        symbol = self._underlying(doc)
        expiry = dt.date.fromisoformat(doc["Expiry"])
        chain = self._universe.skeleton.underlyings[symbol].expiry(expiry)
        if chain is None:
            raise _Refused("811", "Invalid Expiry Date")
        quote = self._market.option_quote
        rows = tuple(
            StrikeQuotes(
                row.strike, None if row.ce is None else quote(row.ce.key), None if row.pe is None else quote(row.pe.key)
            )
            for row in chain.strikes
        )
        body = encode_option_chain(OptionChain(self._market.index_price(symbol), rows), v25=self._config.rest_v25)
        return ("optionchain", symbol, expiry), body


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
