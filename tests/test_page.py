"""The page at / in a real browser (Debian's chromium, driven by Playwright) against the simulator.

``make screenshot`` (``UPDATE_SCREENSHOT=1``) also writes the README's ``docs/page.png`` (from the
history test, so the intraday charts and the time control are in it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from service.app import RunningService, running_service
from tests.helpers import UNIT_S
from tests.sse import open_stream
from tests.test_service import get_json, settings_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parent.parent / "docs"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (make test installs it)")

playwright_api = pytest.importorskip("playwright.async_api")


KEY = "page-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def svc(request: pytest.FixtureRequest) -> AsyncIterator[RunningService]:
    http = getattr(request, "param", {})  # http settings (an int: max_streams), with "history": its settings
    http = {"max_streams": http} if isinstance(http, int) else dict(http)
    history = http.pop("history", {})
    settings = settings_for(
        None,
        simulator={"underlyings": ["NIFTY", "BANKNIFTY"], "expiries": 2, "strikes_per_side": 12},
        instruments={"underlyings": ["NIFTY", "BANKNIFTY"]},
        http={"max_streams": 100, **http},
        history=history,
    )
    async with running_service(settings) as service:
        yield service


@pytest.fixture
async def page(svc: RunningService) -> AsyncIterator[object]:
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert not errors, errors
        finally:
            await browser.close()


async def cells(page: object, field: str) -> list[str]:
    return await page.eval_on_selector_all(f'td[data-f="{field}"]', "tds => tds.map(td => td.textContent)")  # type: ignore[attr-defined]


async def strikes(page: object) -> list[float]:
    return await page.eval_on_selector_all("#chain tbody tr", "trs => trs.map(tr => Number(tr.dataset.strike))")  # type: ignore[attr-defined]


async def wait_for(predicate, what: str, timeout_s: float = 2 * UNIT_S) -> None:  # type: ignore[no-untyped-def]
    try:
        async with asyncio.timeout(timeout_s):
            while not await predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s:g}s: {what}") from None


async def test_page_streams_prices_and_switches_chains(svc: RunningService, page: object) -> None:
    """The page loads, shows the nearest NIFTY chain from the stream, sees prices change, switches
    underlying and expiry (its rows and days to expiry follow /options/live), and back."""
    port = svc.http_port
    await page.goto(f"http://127.0.0.1:{port}/")  # type: ignore[attr-defined]
    _, nifty = await get_json(port, "/options/live", underlying="NIFTY")
    await wait_for(lambda: _rows_are(page, nifty), "the nearest NIFTY chain's strikes in the table")
    assert await page.text_content("#transport") == "live (stream)"  # type: ignore[attr-defined]
    before = await cells(page, "ce.ltp")
    await wait_for(lambda: _changed(page, "ce.ltp", before), "a call's last price to change on the page")

    await page.select_option("#underlying", "BANKNIFTY")  # type: ignore[attr-defined]
    _, bank = await get_json(port, "/options/live", underlying="BANKNIFTY")
    await wait_for(lambda: _rows_are(page, bank), "BANKNIFTY's strikes in the table")
    second = (await get_json(port, "/options/underlyings"))[1]["underlyings"][1]["expiries"][1]["expiry"]
    await page.select_option("#expiry", second)  # type: ignore[attr-defined]
    _, far = await get_json(port, "/options/live", underlying="BANKNIFTY", expiry=second)
    await wait_for(lambda: _rows_are(page, far), "the second BANKNIFTY expiry's strikes")
    await wait_for(lambda: _text_is(page, "#dte", str(far["days_to_expiry"])), "its days to expiry in the header")
    assert "underlying=BANKNIFTY" in page.url and second in page.url  # type: ignore[attr-defined]

    await page.select_option("#underlying", "NIFTY")  # type: ignore[attr-defined]
    await wait_for(lambda: _rows_are(page, nifty), "back to NIFTY")
    await wait_for(lambda: _text_is_not(page, "#forward", "–"), "the forward in the header")


async def keyed_json(port: int, path: str, **params: str) -> dict:
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(f"http://127.0.0.1:{port}{path}", params=params) as resp:
            assert resp.status == 200
            return await resp.json()


async def enter_key(page: object, key: str) -> None:
    await page.wait_for_selector("#keyform", state="visible")  # type: ignore[attr-defined]
    await page.fill("#apikey", key)  # type: ignore[attr-defined]
    await page.click("#keyform button")  # type: ignore[attr-defined]


@pytest.mark.parametrize("svc", [{"api_keys": [KEY]}], indirect=True)
async def test_page_asks_for_the_api_key_then_streams(svc: RunningService, page: object) -> None:
    """With API keys on (where EventSource gets 401), the page asks for the key, asks again for a
    wrong one, then shows live prices from the stream, read with fetch() and the key in a header
    (never in a URL); the key is kept in sessionStorage, so a reload does not ask again."""
    port = svc.http_port
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/options/stream", params={"underlying": "NIFTY"}) as resp:
            assert resp.status == 401  # what an EventSource, which cannot send a header, would get
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))  # type: ignore[attr-defined]
    await page.goto(f"http://127.0.0.1:{port}/")  # type: ignore[attr-defined]
    await wait_for(lambda: _text_is(page, "#transport", "waiting for an API key"), "the page to ask for a key")
    assert await strikes(page) == []  # nothing shown without a key
    await enter_key(page, "not-the-key-0123456789")
    await wait_for(lambda: _text_is(page, "#keyerr", "that key was not accepted"), "a wrong key to be refused")
    await enter_key(page, KEY)
    nifty = await keyed_json(port, "/options/live", underlying="NIFTY")
    await wait_for(lambda: _rows_are(page, nifty), "the nearest NIFTY chain's strikes in the table")
    await wait_for(lambda: _text_is(page, "#transport", "live (stream)"), "the page to stream")
    assert await page.is_hidden("#keyform")  # type: ignore[attr-defined]
    before = await cells(page, "ce.ltp")
    await wait_for(lambda: _changed(page, "ce.ltp", before), "a call's last price to change on the page")
    assert await page.evaluate("sessionStorage.getItem('livechain.apiKey')") == KEY  # type: ignore[attr-defined]
    assert any("/options/stream?" in u for u in urls)
    assert not any(KEY in u or "0123456789" in u for u in urls + [page.url])  # type: ignore[attr-defined]

    await page.reload()  # type: ignore[attr-defined]
    await wait_for(lambda: _rows_are(page, nifty), "the chain again after a reload")
    await wait_for(lambda: _text_is(page, "#transport", "live (stream)"), "streaming again after a reload")
    assert await page.is_hidden("#keyform")  # type: ignore[attr-defined]


@pytest.mark.parametrize("svc", [{"max_streams": 1}, {"max_streams": 1, "api_keys": [KEY]}], indirect=True,
                         ids=["open", "keys"])  # one stream slot, taken by the test  # fmt: skip
async def test_page_polls_when_the_stream_is_refused(svc: RunningService, page: object) -> None:
    """With every stream slot taken, the page polls /options/live (If-None-Match) and still moves;
    with keys on, it polls with the key it was given."""
    keyed = bool(svc.settings.http.api_keys)
    async with aiohttp.ClientSession(headers=AUTH if keyed else None) as http:
        taken = await open_stream(http, svc.http_port, underlying="NIFTY")
        assert taken.status == 200
        await page.goto(f"http://127.0.0.1:{svc.http_port}/")  # type: ignore[attr-defined]
        if keyed:
            await enter_key(page, KEY)
        await wait_for(lambda: _text_is(page, "#transport", "polling"), "the page to fall back to polling")
        nifty = await keyed_json(svc.http_port, "/options/live", underlying="NIFTY")
        await wait_for(lambda: _rows_are(page, nifty), "the chain in the table")
        before = await cells(page, "ce.ltp")
        await wait_for(lambda: _changed(page, "ce.ltp", before), "prices to change while polling")
        taken.close()


HISTORY_CHARTS = ("hist-underlying", "hist-straddle", "hist-pcr", "hist-oi", "hist-oichg")
EVERY_SECOND = {"history": {"interval_s": 1}}


@pytest.mark.parametrize("svc", [EVERY_SECOND, {**EVERY_SECOND, "api_keys": [KEY]}], indirect=True, ids=["open", "keys"])
async def test_page_charts_the_day_and_shows_the_chain_at_a_sampled_time(svc: RunningService, page: object) -> None:
    """With a sample every second: the intraday charts draw every point /options/history serves,
    and more as the day goes on; the time control shows the chain exactly as /options/live?at=
    answers for the sample picked, holds it while the live chain moves on (the stream stays up),
    survives a reload (the time is in the URL), and "Back to live" resumes live updates. With keys
    on, all of it goes through the key. The open run photographs the page for the README."""
    port, keyed = svc.http_port, bool(svc.settings.http.api_keys)
    await page.goto(f"http://127.0.0.1:{port}/")  # type: ignore[attr-defined]
    if keyed:
        await enter_key(page, KEY)
    nifty = await keyed_json(port, "/options/live", underlying="NIFTY")
    chain = {"underlying": "NIFTY", "expiry": nifty["expiry"]}
    await wait_for(lambda: _rows_are(page, nifty), "the nearest NIFTY chain in the table")

    charted = await _charts_show_history(page, port, chain, at_least=2)
    await _charts_show_history(page, port, chain, at_least=charted + 2)  # the series grow

    # The day's first sample, picked with the keyboard on the time control.
    await page.focus("#timeslider")  # type: ignore[attr-defined]
    await page.keyboard.press("Home")  # type: ignore[attr-defined]
    await wait_for(lambda: _attr_is_not(page, "#timebar", "data-at", ""), "the time control to pick a time")
    at = await page.get_attribute("#timebar", "data-at")  # type: ignore[attr-defined]
    first = (await keyed_json(port, "/options/history", **chain))["points"][0]["t"]
    assert at == first
    past = await keyed_json(port, "/options/live", **chain, at=at)
    assert dt.datetime.fromisoformat(past["as_of"]) <= dt.datetime.fromisoformat(at)
    await _shows(page, past)
    assert await page.text_content("#fresh") == f"as of {past['as_of'][11:19]}"  # type: ignore[attr-defined]
    assert await page.is_visible("#golive")  # type: ignore[attr-defined]
    assert f"at={quote(at, safe='')}" in page.url  # type: ignore[attr-defined]

    # The live chain moves on; the page keeps showing the sample, with the stream still up.
    async def live_moved() -> bool:
        now = await keyed_json(port, "/options/live", **chain)
        return now["version"] > past["version"] and _ltps(now) != _ltps(past)

    await wait_for(live_moved, "the live chain to move on")
    await asyncio.sleep(1.0)  # time for stream deltas to reach the page, which must not show them
    await _shows(page, past)
    assert await page.text_content("#transport") == "live (stream)"  # type: ignore[attr-defined]

    if not keyed:  # the README's photo: a past time picked on the control, the day's charts behind it
        if os.environ.get("UPDATE_SCREENSHOT"):  # a longer day in the picture (make screenshot only)
            charted = await _charts_show_history(page, port, chain, at_least=45)
        await page.focus("#timeslider")  # type: ignore[attr-defined]
        for _ in range(charted * 2 // 3):
            await page.keyboard.press("ArrowRight")  # type: ignore[attr-defined]
        await wait_for(lambda: _attr_is_not(page, "#timebar", "data-at", at), "a later sample")
        middle = await keyed_json(port, "/options/live", **chain, at=await page.get_attribute("#timebar", "data-at"))  # type: ignore[attr-defined]
        await _shows(page, middle)
        shot = await page.screenshot(full_page=False)  # type: ignore[attr-defined]
        assert len(shot) > 10_000
        if os.environ.get("UPDATE_SCREENSHOT"):
            DOCS.mkdir(exist_ok=True)
            (DOCS / "page.png").write_bytes(shot)
        await page.keyboard.press("Home")  # type: ignore[attr-defined]
        await wait_for(lambda: _attr_is(page, "#timebar", "data-at", at), "the first sample again")
        await _shows(page, past)

    await page.reload()  # type: ignore[attr-defined]
    await _shows(page, past)  # the time came back from the URL
    assert await page.get_attribute("#timebar", "data-at") == at  # type: ignore[attr-defined]

    latest = await keyed_json(port, "/options/live", **chain)
    await page.click("#golive")  # type: ignore[attr-defined]
    await wait_for(lambda: _text_is(page, "#timelabel", "live"), "the time control back at live")
    await wait_for(lambda: _version_at_least(page, latest["version"]), "the live chain on the page again")
    before = await cells(page, "ce.ltp")
    await wait_for(lambda: _changed(page, "ce.ltp", before), "live prices moving on the page again")
    assert await page.is_hidden("#golive")  # type: ignore[attr-defined]
    assert not (await page.text_content("#fresh") or "").startswith("as of")  # type: ignore[attr-defined]
    assert "at=" not in page.url  # type: ignore[attr-defined]


async def _charts_show_history(page: object, port: int, chain: dict[str, str], at_least: int) -> int:
    """Wait until every intraday chart is drawn with as many points as /options/history serves
    (at least ``at_least``); returns that count."""
    seen = 0

    async def same() -> bool:
        nonlocal seen
        served = len((await keyed_json(port, "/options/history", **chain))["points"])
        drawn = [await page.get_attribute(f"#{name}", "data-points") for name in HISTORY_CHARTS]  # type: ignore[attr-defined]
        canvases = await page.eval_on_selector_all("#intraday canvas", "cs => cs.length")  # type: ignore[attr-defined]
        seen = served
        return served >= at_least and drawn == [str(served)] * len(HISTORY_CHARTS) and canvases >= len(HISTORY_CHARTS)

    timeout_s = 4 * UNIT_S + at_least  # a sample a second
    await wait_for(same, f"the intraday charts to draw the {at_least}+ points /options/history serves", timeout_s)
    return seen


def _ltps(body: dict) -> list[str]:
    """The calls' last prices as the page writes them (en-IN, 2 decimals; "–" when missing)."""
    out = []
    for row in body["strikes"]:
        ltp = (row["ce"] or {}).get("ltp")
        assert ltp is None or abs(ltp) < 1e5  # below a lakh en-IN groups digits as Python does
        out.append("–" if ltp is None else f"{ltp:,.2f}")
    return out


async def _shows(page: object, body: dict) -> None:
    """The page's table and header show ``body`` (its version, and its calls' last prices)."""
    await wait_for(lambda: _text_is(page, "#version", str(body["version"])), f"version {body['version']} on the page")
    await wait_for(lambda: _rows_are(page, body), "its strikes in the table")
    assert await cells(page, "ce.ltp") == _ltps(body)


async def _attr_is(page: object, selector: str, name: str, value: str) -> bool:
    return await page.get_attribute(selector, name) == value  # type: ignore[attr-defined]


async def _attr_is_not(page: object, selector: str, name: str, value: str) -> bool:
    return (await page.get_attribute(selector, name) or "") != value  # type: ignore[attr-defined]


async def _version_at_least(page: object, version: int) -> bool:
    text = await page.text_content("#version")  # type: ignore[attr-defined]
    return bool(text) and text.isdigit() and int(text) >= version


async def _rows_are(page: object, body: dict) -> bool:
    return await strikes(page) == [row["strike"] for row in body["strikes"]]


async def _changed(page: object, field: str, before: list[str]) -> bool:
    now = await cells(page, field)
    return bool(now) and now != before and all(v != "" for v in now)


async def _text_is(page: object, selector: str, text: str) -> bool:
    return await page.text_content(selector) == text  # type: ignore[attr-defined]


async def _text_is_not(page: object, selector: str, text: str) -> bool:
    return await page.text_content(selector) != text  # type: ignore[attr-defined]
