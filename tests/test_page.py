"""The page at / in a real browser (Debian's chromium, driven by Playwright) against the simulator.

``make screenshot`` (``UPDATE_SCREENSHOT=1``) also writes the README's ``docs/page.png``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

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
    http = getattr(request, "param", {})  # http settings (an int: max_streams)
    settings = settings_for(
        None,
        simulator={"underlyings": ["NIFTY", "BANKNIFTY"], "expiries": 2, "strikes_per_side": 12},
        instruments={"underlyings": ["NIFTY", "BANKNIFTY"]},
        http={"max_streams": 100, **({"max_streams": http} if isinstance(http, int) else http)},
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
    underlying and expiry (its rows and days to expiry follow /options/live), and is photographed."""
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

    # The photo for the README: NIFTY's nearest chain once analytics and charts are in.
    await page.select_option("#underlying", "NIFTY")  # type: ignore[attr-defined]
    await wait_for(lambda: _rows_are(page, nifty), "back to NIFTY")
    await wait_for(lambda: _text_is_not(page, "#forward", "–"), "the forward in the header")
    await asyncio.sleep(1.5)  # one chart refresh
    shot = await page.screenshot(full_page=False)  # type: ignore[attr-defined]
    assert len(shot) > 10_000
    if os.environ.get("UPDATE_SCREENSHOT"):
        DOCS.mkdir(exist_ok=True)
        (DOCS / "page.png").write_bytes(shot)


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


async def _rows_are(page: object, body: dict) -> bool:
    return await strikes(page) == [row["strike"] for row in body["strikes"]]


async def _changed(page: object, field: str, before: list[str]) -> bool:
    now = await cells(page, field)
    return bool(now) and now != before and all(v != "" for v in now)


async def _text_is(page: object, selector: str, text: str) -> bool:
    return await page.text_content(selector) == text  # type: ignore[attr-defined]


async def _text_is_not(page: object, selector: str, text: str) -> bool:
    return await page.text_content(selector) != text  # type: ignore[attr-defined]
