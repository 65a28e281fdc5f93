"""`livechain simulate --broker kite` and `livechain run` with feed.kind = kite, as real processes."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from tests.conftest import free_port
from tests.test_cli import UNIT_S, _env, _serves_nifty_then_exits_0_on_sigterm, _spawn, _wait_for_line


async def test_kite_simulator_and_service_from_the_command_line() -> None:
    """The Kite simulator serves its instruments CSV; the service reads it through the Kite client;
    a refused token (HTTP 403, same token on re-read) exits 4 naming the variable, never the token."""
    sim_port = free_port()
    sim = await _spawn(
        _env(LIVECHAIN_SIMULATOR__EXPECTED_TOKEN="right-token"), "simulate", "--broker", "kite", "--port", str(sim_port)
    )
    seen: list[str] = []
    try:
        await _wait_for_line(sim, "simulator ready", seen)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
            async with http.get(f"http://127.0.0.1:{sim_port}/instruments") as resp:
                assert resp.status == 200
                assert (await resp.text()).startswith("instrument_token,exchange_token,tradingsymbol,name,")
        kite = dict(
            LIVECHAIN_FEED__KIND="kite", LIVECHAIN_FEED__URL=f"ws://127.0.0.1:{sim_port}",
            LIVECHAIN_INSTRUMENTS__SOURCE=f"http://127.0.0.1:{sim_port}/instruments", KITE_API_KEY="api-key",
            LIVECHAIN_MARKET__SCHEDULE="always_open",
        )  # fmt: skip
        port = free_port()
        run = await _spawn(_env(**kite, KITE_ACCESS_TOKEN="right-token", LIVECHAIN_HTTP__PORT=str(port)))
        await _serves_nifty_then_exits_0_on_sigterm(run, port)

        refused = await _spawn(_env(**kite, KITE_ACCESS_TOKEN="stale-secret-token", LIVECHAIN_HTTP__PORT=str(free_port())))
        async with asyncio.timeout(3 * UNIT_S):
            err = (await refused.stderr.read()).decode()  # type: ignore[union-attr]
            assert await refused.wait() == 4, err
        assert "HTTP 403" in err and "KITE_ACCESS_TOKEN still holds the same token" in err
        assert "stale-secret-token" not in err
    finally:
        if sim.returncode is None:
            sim.send_signal(signal.SIGTERM)
            async with asyncio.timeout(UNIT_S):
                await sim.wait()
