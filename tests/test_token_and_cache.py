"""A real-Dhan day against the simulator: the token from a command (rollover on 807 without a
restart) and the scrip master cached per day (reused, refreshed, the fallback after a failed
download)."""

from __future__ import annotations

import datetime as dt
import logging
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from feeds.clock import SYSTEM_CLOCK, ManualClock, ist_instant, ist_now
from feeds.errors import InstrumentMasterError
from feeds.simulator.server import SimulatorServer
from service.app import running_service
from service.errors import ConfigError
from service.feed_source import instrument_master
from service.scrip_cache import ScripMasterCache, load_instruments
from service.settings import Settings
from service.token_source import TokenCommand, rest_credentials, token_reader
from feeds.dhan.client import Credentials
from tests.conftest import TODAY
from tests.helpers import UNIT_S, until
from feeds.simulator.config import SimulatorConfig
from tests.test_service import SIM, settings_for

pytestmark = pytest.mark.usefixtures("dhan_env")
DHAN = instrument_master("dhan")  # Dhan's scrip master: the format feed_source picks for Dhan


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    """Dhan's simulator (token command and scrip master are Dhan's here)."""
    async with SimulatorServer(SimulatorConfig(**SIM)) as server:
        yield server

# A desk's renewal script: prints the token kept in a file (what a real one would fetch),
# chatters on stderr (quoting the token, which must not reach our logs), fails on request.
RENEW = """\
import pathlib, sys, time
state = pathlib.Path(sys.argv[1])
if (state.parent / "fail").exists():
    print("renewal service unreachable", file=sys.stderr)
    sys.exit(3)
if (state.parent / "hang").exists():
    time.sleep(30)
token = state.read_text().strip()
print(f"renewed; token {token} valid until 08:00", file=sys.stderr)
print(token)
"""


@pytest.fixture
def renew(tmp_path: Path) -> tuple[str, Path]:
    """(the token_command, the file holding the token it prints)."""
    script = tmp_path / "renew.py"
    script.write_text(RENEW)
    state = tmp_path / "token"
    state.write_text("eyJ-first-token\n")
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {shlex.quote(str(state))}", state


async def test_token_command_supplies_the_token_and_renews_it_after_807(
    sim: SimulatorServer, renew: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The command runs at connect; after an 807 it runs again and the new token reconnects at once."""
    command, state = renew
    caplog.set_level(logging.INFO)
    settings = settings_for(sim, feed={"token_command": command})
    async with running_service(settings) as svc:
        assert sim.last_token == "eyJ-first-token"
        state.write_text("eyJ-second-token\n")
        sim.disconnect_all(807)
        conn = svc.feed.connections[0]
        await until(lambda: conn.stats.reconnects == 1 and conn.stats.connected)
        assert sim.last_token == "eyJ-second-token"
        assert svc.feed.credentials.token_source.startswith("feed.token_command")
    assert "feed.token_command stderr: renewed; token [token] valid until 08:00" in caplog.text
    assert "eyJ-first-token" not in caplog.text and "eyJ-second-token" not in caplog.text


async def test_token_command_that_still_gives_the_expired_token_stops_naming_it(
    sim: SimulatorServer, renew: tuple[str, Path]
) -> None:
    """807 and the command prints the same token: exit 4 naming feed.token_command, no storm."""
    from feeds.errors import FatalFeedError
    import asyncio

    command, _ = renew
    async with running_service(settings_for(sim, feed={"token_command": command})) as svc:
        sim.disconnect_all(807)
        with pytest.raises(FatalFeedError, match="807.*feed.token_command"):
            async with asyncio.timeout(UNIT_S):
                await svc.feed_task


def test_token_command_failures(renew: tuple[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """Failing at startup stops with the reason; failing later keeps the last token, logged."""
    command, state = renew
    (state.parent / "fail").touch()
    with pytest.raises(ConfigError, match=r"feed.token_command \(.*\) failed: exit status 3"):
        token_reader(None, command, 10.0, env_var="DHAN_ACCESS_TOKEN")
    (state.parent / "fail").unlink()
    reader, source = token_reader(None, command, 10.0, env_var="DHAN_ACCESS_TOKEN")
    assert source.startswith("feed.token_command") and reader() == "eyJ-first-token"
    (state.parent / "fail").touch()
    with caplog.at_level(logging.WARNING):
        assert reader() == "eyJ-first-token"
    assert "failed: exit status 3; keeping the previous token" in caplog.text
    assert "renewal service unreachable" in caplog.text  # its stderr is logged


def test_token_command_is_killed_after_its_timeout(renew: tuple[str, Path]) -> None:
    """A hung command is killed after feed.token_command_timeout_s, naming the setting."""
    command, state = renew
    (state.parent / "hang").touch()
    with pytest.raises(ConfigError, match=r"no answer within 0.3s \(feed.token_command_timeout_s\); killed"):
        TokenCommand(command, 0.3)()


@pytest.mark.parametrize(
    ("stdout", "error"),
    [("", "printed nothing"), ("eyJ-a eyJ-b", "more than one word")],
)
def test_token_command_stdout_must_be_the_token(tmp_path: Path, stdout: str, error: str) -> None:
    """Nothing, or more than the token, on stdout is refused with the reason."""
    script = tmp_path / "t.py"
    script.write_text(f"print({stdout!r})\n")
    with pytest.raises(ConfigError, match=error):
        TokenCommand(f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}", 5.0)()


def test_token_command_settings() -> None:
    """token_file and token_command together, or an unparseable command, stop startup naming the key."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="token_file or token_command, not both"):
        Settings(feed={"token_file": "/tmp/t", "token_command": "cat /tmp/t"})
    with pytest.raises(ValidationError, match="token_command"):
        Settings(feed={"token_command": "renew 'unbalanced"})


def test_rest_requests_reuse_the_commands_last_token(renew: tuple[str, Path]) -> None:
    """REST requests take the token the command last gave, without running it per request."""
    command, state = renew
    reader = TokenCommand(command, 10.0)
    creds = rest_credentials(Credentials("1", reader, token_source=reader.source))
    assert creds.access_token() == "eyJ-first-token" and reader.runs == 1
    state.write_text("eyJ-second-token")
    assert creds.access_token() == "eyJ-first-token" and reader.runs == 1
    assert reader() == "eyJ-second-token" and creds.access_token() == "eyJ-second-token"


# --------------------------------------------------------------------------- scrip master cache


class ScripServer:
    """Serves a scrip master over HTTP until told to fail (HTTP 503) or to send garbage."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.mode = "ok"
        self.requests = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.mode == "fail":
            return web.Response(status=503, text="maintenance")
        if self.mode == "garbage":
            return web.Response(body=b"<html>maintenance</html>", content_type="text/html")
        return web.Response(body=self.body, content_type="text/csv")


@pytest.fixture
async def scrip(sim: SimulatorServer) -> AsyncIterator[ScripServer]:
    async with aiohttp.ClientSession() as http:
        async with http.get(sim.scrip_master_url) as resp:
            body = await resp.read()
    server = ScripServer(body)
    app = web.Application()
    app.router.add_get("/api-scrip-master-detailed.csv", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}/api-scrip-master-detailed.csv?token=secret-query"
    try:
        yield server
    finally:
        await runner.cleanup()


async def test_cache_reuses_the_days_copy_and_refreshes_the_next_day(scrip: ScripServer, tmp_path: Path) -> None:
    """Same IST day: no second download. Next day: downloaded again, a new dated copy; old ones pruned."""
    clock = ManualClock(ist_instant(TODAY, dt.time(8, 0)))
    cache = ScripMasterCache(tmp_path / "cache", keep_days=2, clock=clock)
    first = await load_instruments(scrip.url, ["NIFTY"], timeout_s=UNIT_S, cache=cache, master=DHAN)
    again = await load_instruments(scrip.url, ["NIFTY"], timeout_s=UNIT_S, cache=cache, master=DHAN)
    assert scrip.requests == 1 and again == first
    assert [d for d, _ in cache.copies()] == [TODAY]
    for days in (1, 2, 3):
        clock.set(ist_instant(TODAY + dt.timedelta(days=days), dt.time(8, 0)))
        await load_instruments(scrip.url, ["NIFTY"], timeout_s=UNIT_S, cache=cache, master=DHAN)
        assert scrip.requests == 1 + days
    assert [d for d, _ in cache.copies()] == [TODAY + dt.timedelta(days=n) for n in (3, 2, 1)]  # keep_days = 2


@pytest.mark.parametrize("mode", ["fail", "garbage"])
async def test_failed_download_falls_back_to_the_newest_copy_naming_its_date(
    scrip: ScripServer, tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed (or unparseable) download uses the newest good copy, with a WARNING naming its date."""
    clock = ManualClock(ist_instant(TODAY, dt.time(8, 0)))
    cache = ScripMasterCache(tmp_path / "cache", clock=clock)
    good = await load_instruments(scrip.url, ["NIFTY"], timeout_s=UNIT_S, cache=cache, master=DHAN)
    scrip.mode = mode
    clock.set(ist_instant(TODAY + dt.timedelta(days=2), dt.time(8, 0)))
    with caplog.at_level(logging.WARNING):
        fallback = await load_instruments(scrip.url, ["NIFTY"], timeout_s=UNIT_S, cache=cache, master=DHAN)
    assert fallback == good
    assert f"using the cached copy of {TODAY.isoformat()} (2 days old)" in caplog.text
    assert "secret-query" not in caplog.text
    assert [d for d, _ in cache.copies()] == [TODAY]  # a bad body is never cached


async def test_failed_download_without_a_copy_fails(scrip: ScripServer, tmp_path: Path) -> None:
    """No copy to fall back on: the load fails naming the cache directory (the service exits 2)."""
    scrip.mode = "fail"
    cache = ScripMasterCache(tmp_path / "cache")
    with pytest.raises(InstrumentMasterError, match=r"HTTP 503.*no usable cached copy in .*instruments.cache_dir"):
        await load_instruments(scrip.url, ["NIFTY"], timeout_s=UNIT_S, cache=cache, master=DHAN)


async def test_service_starts_from_the_cached_copy_after_a_failed_download(
    sim: SimulatorServer, scrip: ScripServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real-Dhan start (feed.kind = dhan) with the download failing serves from yesterday's copy."""
    cache_dir = tmp_path / "cache"
    yesterday = ist_now(SYSTEM_CLOCK).date() - dt.timedelta(days=1)
    cache_dir.mkdir()
    (cache_dir / f"scrip-master-{yesterday.isoformat()}.csv").write_bytes(scrip.body)
    scrip.mode = "fail"
    settings = settings_for(sim, instruments={"source": scrip.url, "cache_dir": str(cache_dir)})
    with caplog.at_level(logging.WARNING):
        async with running_service(settings) as svc:
            assert svc.cache.coverage == 1.0
    assert f"using the cached copy of {yesterday.isoformat()} (1 day old)" in caplog.text
    with pytest.raises(ConfigError, match="no usable cached copy"):
        async with running_service(settings_for(sim, instruments={"source": scrip.url, "cache_dir": str(tmp_path / "empty")})):
            pass
