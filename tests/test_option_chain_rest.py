"""Dhan's option-chain REST API: the sans-I/O parser on recorded shapes, and the client against
the simulator's endpoints over real HTTP (rate limit, error bodies, retries, secrets)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator

import orjson
import pytest

from feeds.dhan.client import Credentials
from feeds.dhan.option_chain import (
    OptionChain,
    StrikeQuotes,
    classify,
    encode_data_error,
    encode_option_chain,
    encode_trading_error,
    parse_expiry_list,
    parse_option_chain,
)
from feeds.dhan.rest import OptionChainClient, UniqueRequestLimiter
from feeds.errors import (
    RestAuthError,
    RestRateLimited,
    RestRequestError,
    RestServerError,
)
from feeds.simulator.config import SimulatorConfig
from feeds.simulator.rest import EXPIRY_LIST_PATH, OPTION_CHAIN_PATH
from feeds.simulator.server import SimulatorServer
from tests.conftest import TODAY, free_port

TOKEN = "eyJ-secret-token-for-tests"
CLIENT_ID = "1100999999"
NIFTY = (13, "IDX_I")
SERVER_INTERVAL_S = 0.25  # the simulator's "one unique request per …" in these tests (Dhan: 3 s)

# Dhan's pre-v2.5 shape (12 keys per side, alphabetical), with the ATM call of the real
# recording (25-Jan-2025, reference §6.3) and the quirks seen there: a far strike of zeros with
# "-0", whole numbers without a decimal point, a float32-widened underlying; plus a strike
# without a "ce" side, which code must tolerate.
RECORDED = b"""{"data":{"last_price":23092.19921875,"oc":{
"17600.000000":{"ce":{"greeks":{"delta":0,"theta":-0,"gamma":0,"vega":0},"implied_volatility":0,"last_price":0,
 "oi":0,"previous_close_price":0,"previous_oi":0,"previous_volume":0,"top_ask_price":0,"top_ask_quantity":0,
 "top_bid_price":0,"top_bid_quantity":0,"volume":0},
 "pe":{"greeks":{"delta":-0.00012,"theta":-0.3,"gamma":0,"vega":0.01},"implied_volatility":48.2,"last_price":0.05,
 "oi":1500,"previous_close_price":0.1,"previous_oi":1275,"previous_volume":600,"top_ask_price":0.1,
 "top_ask_quantity":1500,"top_bid_price":0,"top_bid_quantity":0,"volume":450}},
"23100.000000":{"ce":{"greeks":{"delta":0.53039,"theta":-17.75888,"gamma":0.00099,"vega":11.28596},
 "implied_volatility":14.11,"last_price":173.5,"oi":2826375,"previous_close_price":286.6,"previous_oi":1758100,
 "previous_volume":299728,"top_ask_price":174.95,"top_ask_quantity":200,"top_bid_price":173.5,
 "top_bid_quantity":1325,"volume":45590900}},
"23150.000000":{"pe":{"greeks":{"delta":-0.61,"theta":-15,"gamma":0.001,"vega":11},"implied_volatility":13,
 "last_price":134,"oi":75,"previous_close_price":120,"previous_oi":0,"previous_volume":75,"top_ask_price":143,
 "top_ask_quantity":75,"top_bid_price":133.5,"top_bid_quantity":150,"volume":150}}
}},"status":"success"}"""


# --------------------------------------------------------------------------- sans-I/O


def test_parse_the_recorded_shape() -> None:
    chain = parse_option_chain(200, RECORDED)
    assert chain.underlying_ltp == 23092.19921875
    assert [s.strike for s in chain.strikes] == [17600.0, 23100.0, 23150.0]
    far, atm, above = chain.strikes
    assert far.ce is None  # all zeros: no data, not a real 0 (it must not overwrite anything)
    assert far.pe is not None and far.pe.bid is None and far.pe.last_price == 0.05
    ce = atm.ce
    assert atm.pe is None and ce is not None
    assert (ce.last_price, ce.oi, ce.previous_close, ce.previous_oi, ce.previous_volume, ce.volume) == (
        173.5, 2826375, 286.6, 1758100, 299728, 45590900
    )
    assert (ce.bid, ce.bid_qty, ce.ask, ce.ask_qty) == (173.5, 1325, 174.95, 200)
    assert ce.implied_volatility == 14.11 and ce.greeks is not None
    assert (ce.greeks.delta, ce.greeks.theta, ce.greeks.gamma, ce.greeks.vega) == (0.53039, -17.75888, 0.00099, 11.28596)
    assert ce.average_price is None and ce.security_id is None  # pre-v2.5
    pe = above.pe
    assert above.ce is None and pe is not None
    assert (pe.last_price, pe.ask, pe.implied_volatility, pe.greeks.theta) == (134.0, 143.0, 13.0, -15.0)
    assert all(isinstance(v, float) for v in (pe.last_price, pe.ask, pe.implied_volatility, pe.greeks.theta))


@pytest.mark.parametrize("v25", [True, False], ids=["v2.5", "pre-v2.5"])
async def test_encode_parse_round_trip_on_the_simulators_chain(v25: bool) -> None:
    """parse(encode(x)) == x for a whole market's chain, in both shapes, keys as Dhan orders them."""
    sim = SimulatorServer(SimulatorConfig(underlyings=("NIFTY",), expiries=1, strikes_per_side=20, today=TODAY))
    quote = sim.market.option_quote
    rows = sim.universe.skeleton.underlyings["NIFTY"].expiries[0].strikes
    chain = OptionChain(sim.market.index_price("NIFTY"), tuple(StrikeQuotes(r.strike, quote(r.ce.key), quote(r.pe.key)) for r in rows))
    if not v25:
        chain = OptionChain(chain.underlying_ltp, tuple(
            StrikeQuotes(s.strike, *(None if q is None else type(q)(**{
                **{f: getattr(q, f) for f in q.__dataclass_fields__}, "average_price": None, "security_id": None,
            }) for q in (s.ce, s.pe))) for s in chain.strikes
        ))  # fmt: skip
    raw = encode_option_chain(chain, v25=v25)
    assert parse_option_chain(200, raw) == chain
    side = next(iter(orjson.loads(raw)["data"]["oc"].values()))["ce"]
    assert len(side) == (14 if v25 else 12) and list(side) == sorted(side)
    assert list(side["greeks"]) == ["delta", "theta", "gamma", "vega"]


@pytest.mark.parametrize(
    ("status", "body", "kind", "code"),
    [
        (429, encode_data_error("805", "Too many requests"), RestRateLimited, "805"),
        (200, encode_data_error("805", "Too many requests"), RestRateLimited, "805"),
        (400, encode_data_error("805", "Too many requests"), RestRateLimited, "805"),
        (500, encode_data_error("805", "Too many requests"), RestRateLimited, "805"),
        (400, encode_data_error("813", "Invalid SecurityId"), RestRequestError, "813"),
        (200, encode_data_error("811", "Invalid Expiry Date"), RestRequestError, "811"),
        (400, encode_data_error("808", "Authentication Failed"), RestAuthError, "808"),
        (500, encode_data_error("800", "Internal Server Error"), RestServerError, "800"),
        (429, encode_trading_error("Rate_Limit", "DH-904", "Too many requests"), RestRateLimited, "DH-904"),
        (401, encode_trading_error("Invalid_Authentication", "DH-901", "Invalid token"), RestAuthError, "DH-901"),
        (400, encode_trading_error("Input_Exception", "DH-905", "Missing field"), RestRequestError, "DH-905"),
        (502, b"<html><body>502 Bad Gateway</body></html>", RestServerError, None),
        (429, b"", RestRateLimited, None),
        (403, b"Forbidden", RestAuthError, None),
        (200, b"not json", RestServerError, None),
        (200, b'{"status":"success"}', RestServerError, None),
    ],
)
def test_error_bodies_are_classified(status: int, body: bytes, kind: type, code: str | None) -> None:
    with pytest.raises(kind) as err:
        parse_expiry_list(status, body)
    assert err.value.code == code and err.value.status == status
    assert type(err.value) is kind


def test_a_success_is_not_an_error() -> None:
    assert classify(200, {"data": [], "status": "success"}) is None
    assert parse_expiry_list(200, b'{"data":["2025-02-06","2025-01-30"],"status":"success"}') == [
        dt.date(2025, 1, 30), dt.date(2025, 2, 6)
    ]


# --------------------------------------------------------------------------- the client against the simulator


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    config = SimulatorConfig(
        underlyings=("NIFTY", "BANKNIFTY"), expiries=2, strikes_per_side=4, rest_min_interval_s=SERVER_INTERVAL_S,
        expected_token=TOKEN, expected_client_id=CLIENT_ID,
    )
    frozen_at = time.time()  # a still clock too: the model's greeks move with the time to expiry
    async with SimulatorServer(config, clock=lambda: frozen_at) as server:
        server.pause()  # a still market: what the API says can be compared with the market
        yield server


def client_for(sim: SimulatorServer, *, interval_s: float = SERVER_INTERVAL_S + 0.05, attempts: int = 4,
               token: str = TOKEN) -> OptionChainClient:  # fmt: skip
    return OptionChainClient(
        sim.rest_url, Credentials(CLIENT_ID, lambda: token), limiter=UniqueRequestLimiter(interval_s),
        max_attempts=attempts, backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=5.0,
    )


async def test_client_reads_the_simulators_chain(sim: SimulatorServer) -> None:
    """Expiry list and chain as the market has them; both headers sent; the request as Dhan wants it."""
    async with client_for(sim) as client:
        expiries = await client.expiry_list(*NIFTY)
        assert expiries == [e.expiry for e in sim.universe.skeleton.underlyings["NIFTY"].expiries]
        chain = await client.option_chain(*NIFTY, expiries[0])
    assert sim.rest.last_headers["access-token"] == TOKEN and sim.rest.last_headers["client-id"] == CLIENT_ID
    assert chain.underlying_ltp == sim.market.index_price("NIFTY")
    rows = sim.universe.skeleton.underlyings["NIFTY"].expiries[0].strikes
    assert [s.strike for s in chain.strikes] == [r.strike for r in rows]
    for got, row in zip(chain.strikes, rows, strict=True):
        assert got.ce == sim.market.option_quote(row.ce.key) and got.pe == sim.market.option_quote(row.pe.key)
        assert got.ce.security_id == row.ce.key[1]
    assert [r.status for r in sim.rest.requests] == [200, 200]


async def test_limiter_keeps_a_client_under_the_unique_request_limit(sim: SimulatorServer) -> None:
    """Three requests for one chain and one for another, all at once: none is refused, the
    same-chain ones are spaced by the limiter, the other chain does not wait."""
    async with client_for(sim) as client:
        expiries = await client.expiry_list(*NIFTY)
        same = [client.option_chain(*NIFTY, expiries[0]) for _ in range(3)]
        await asyncio.gather(*same, client.option_chain(*NIFTY, expiries[1]))
    assert sim.rest.count(code="805") == 0
    assert sim.rest.count(path=OPTION_CHAIN_PATH, status=200) == 4
    assert client.limiter.waits == 2  # the 2nd and 3rd request for the same chain
    assert client.stats.retries == 0 and client.stats.rate_limited == 0


async def test_without_the_limiter_the_server_refuses_with_805(sim: SimulatorServer) -> None:
    """The control: the same burst without spacing is refused (so the test above can fail)."""
    async with client_for(sim, interval_s=0.0, attempts=1) as client:
        expiry = (await client.expiry_list(*NIFTY))[0]
        await client.option_chain(*NIFTY, expiry)
        with pytest.raises(RestRateLimited) as err:
            await client.option_chain(*NIFTY, expiry)
    assert err.value.code == "805" and err.value.status == 429
    assert sim.rest.count(code="805") == 1 and client.stats.rate_limited == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, encode_data_error("805", "Too many requests")),
        (400, encode_data_error("805", "Too many requests")),
        (429, encode_data_error("805", "Too many requests")),
        (500, encode_data_error("805", "Too many requests")),
        (429, encode_trading_error("Rate_Limit", "DH-904", "Too many requests")),
        (502, b"<html>502 Bad Gateway</html>"),  # Dhan's expiry list on a holiday (reference 8.10)
        (500, encode_data_error("800", "Internal Server Error")),
    ],
    ids=["805-200", "805-400", "805-429", "805-500", "DH-904", "html-502", "800"],
)
async def test_retryable_errors_are_retried_then_succeed(sim: SimulatorServer, status: int, body: bytes) -> None:
    sim.rest.inject(status, body, count=2)
    async with client_for(sim, attempts=3, interval_s=0.02) as client:  # injected answers: no server limit
        expiries = await client.expiry_list(*NIFTY)
    assert expiries and client.stats.retries == 2
    assert [r.status for r in sim.rest.requests] == [status, status, 200]


async def test_retries_are_bounded(sim: SimulatorServer) -> None:
    sim.rest.inject(502, b"<html>502 Bad Gateway</html>", count=10)
    async with client_for(sim, attempts=3, interval_s=0.02) as client:
        with pytest.raises(RestServerError):
            await client.expiry_list(*NIFTY)
    assert len(sim.rest.requests) == 3 and client.stats.failures == 1


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (200, encode_data_error("813", "Invalid SecurityId"), RestRequestError),
        (401, encode_trading_error("Invalid_Authentication", "DH-901", "Invalid token"), RestAuthError),
        (400, encode_data_error("806", "Data APIs not subscribed"), RestAuthError),
    ],
)
async def test_final_errors_are_not_retried(sim: SimulatorServer, status: int, body: bytes, kind: type) -> None:
    sim.rest.inject(status, body)
    async with client_for(sim) as client:
        with pytest.raises(kind):
            await client.expiry_list(*NIFTY)
    assert len(sim.rest.requests) == 1 and client.stats.retries == 0


async def test_the_simulators_own_refusals(sim: SimulatorServer) -> None:
    """Wrong token: DH-901 (auth); unknown expiry: 811; unknown underlying: 813."""
    async with client_for(sim, token="wrong") as client:
        with pytest.raises(RestAuthError) as err:
            await client.expiry_list(*NIFTY)
    assert err.value.code == "DH-901" and err.value.status == 401
    async with client_for(sim) as client:
        with pytest.raises(RestRequestError) as err:
            await client.option_chain(*NIFTY, dt.date(2031, 1, 1))
        assert err.value.code == "811"
        with pytest.raises(RestRequestError) as err:
            await client.expiry_list(99999, "IDX_I")
        assert err.value.code == "813"
    assert sim.rest.count(path=EXPIRY_LIST_PATH) == 2


async def test_credentials_are_never_logged(sim: SimulatorServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sim.rest.inject(429, encode_data_error("805", "Too many requests"))
    errors = []
    async with client_for(sim, attempts=2, interval_s=0.02) as client:
        await client.expiry_list(*NIFTY)  # one retry, logged
        for call in (client.expiry_list(99999, "IDX_I"), client.option_chain(*NIFTY, dt.date(2031, 1, 1))):
            try:
                await call
            except RestRequestError as exc:
                errors.append(str(exc))
    async with client_for(sim, token="wrong-" + TOKEN) as client:
        with pytest.raises(RestAuthError) as err:
            await client.expiry_list(*NIFTY)
        errors.append(str(err.value))
    text = "\n".join([r.getMessage() for r in caplog.records] + errors)
    assert "retry" in text and len(errors) == 3
    assert TOKEN not in text and CLIENT_ID not in text


async def test_unreachable_server_is_a_retryable_error() -> None:
    """A refused connection is a server error (retried, bounded), not a crash."""
    client = OptionChainClient(
        f"http://127.0.0.1:{free_port()}/v2", Credentials(CLIENT_ID, lambda: TOKEN),
        limiter=UniqueRequestLimiter(0.0), max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.02,
    )
    async with client:
        with pytest.raises(RestServerError):
            await client.expiry_list(*NIFTY)
    assert client.stats.requests == 2 and client.stats.retries == 1


async def test_limiter_spaces_one_key_and_not_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a fake clock: the second request for a key sleeps the rest of the interval; other keys never."""
    now = [100.0]
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)
        now[0] += delay

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    limiter = UniqueRequestLimiter(3.0, clock=lambda: now[0])
    await limiter.wait(("optionchain", 13, "2025-01-30"))
    now[0] += 1.0
    await limiter.wait(("optionchain", 13, "2025-02-06"))  # another chain: at once
    await limiter.wait(("optionchain", 13, "2025-01-30"))  # 1 s after the first: 2 s more
    await limiter.wait(("optionchain", 13, "2025-01-30"))  # right after that: 3 s more
    assert slept == [pytest.approx(2.0), pytest.approx(3.0)] and limiter.waits == 2
