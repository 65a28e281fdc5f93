"""The background-task supervisor: crashes logged with their traceback, counted, restarted with
bounded backoff or fatal; every outcome retrieved; stopping bounded. And in the running service:
a crashed analytics runner is reported on the metrics port and its analytics recover."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections.abc import Callable

import aiohttp
import orjson
import pytest

from feeds.model import ChainSkeleton
from service.app import _until_failed, running_service
from service.core.cache import ChainCache
from service.redis.mirror import RedisMirror
from service.errors import TaskFailed
from service.tasks import FATAL, Restart, Supervisor, TaskReturned, cancel_and_wait
from tests.conftest import NOW, full_tick
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401  (the fixture)
from tests.test_mirror import redis_settings
from tests.test_service import settings_for

UNIT_S = 5.0  # the unit every wait in this file is a multiple of
FAST = Restart(initial_s=0.01, max_s=0.04, healthy_after_s=60.0)


async def until(predicate: Callable[[], bool], timeout_s: float = 2 * UNIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


class Flaky:
    """A task body that raises on its first ``failures`` runs, then runs until cancelled."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0
        self.healthy = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"boom {self.runs}")
        self.healthy.set()
        await asyncio.Event().wait()


def crash_records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records
        if r.name == "service.tasks" and r.levelno == logging.ERROR and getattr(r, "task", None) == name
    ]  # fmt: skip


def never_retrieved(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()  # an unretrieved task exception is reported when its task is collected
    return [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_crash_is_logged_counted_and_restarted_with_bounded_backoff(caplog: pytest.LogCaptureFixture) -> None:
    """Each crash: one ERROR with the traceback, counted; restarted after a full-jitter delay
    within min(max, initial·2^(n-1)), the same delays for the same seed."""
    caplog.set_level(logging.INFO)
    body = Flaky(failures=4)
    async with Supervisor(rng=random.Random(7)) as supervisor:
        supervisor.spawn("flaky", body, FAST)
        await asyncio.wait_for(body.healthy.wait(), UNIT_S)
        assert supervisor.crashes == {"flaky": 4} and supervisor.restarts == {"flaky": 4}
    records = crash_records(caplog, "flaky")
    assert len(records) == 4
    for n, record in enumerate(records, start=1):
        assert record.exc_info is not None and str(record.exc_info[1]) == f"boom {n}"
    assert "Traceback" in caplog.text and 'raise RuntimeError(f"boom {self.runs}")' in caplog.text
    rng = random.Random(7)
    expected = [rng.uniform(0.0, min(0.04, 0.01 * 2 ** (n - 1))) for n in range(1, 5)]
    assert [r.restart_in_s for r in records] == expected  # type: ignore[attr-defined]
    assert all(d <= 0.04 for d in expected)
    assert sum(1 for r in caplog.records if r.getMessage() == "background task flaky restarted") == 4
    assert never_retrieved(caplog) == []


def test_backoff_is_capped_and_jittered() -> None:
    """Delays are uniform in [0, cap]: they never exceed max_s, however many crashes in a row."""
    policy = Restart(initial_s=0.5, max_s=30.0)
    rng = random.Random(1)
    delays = [policy.delay(n, rng) for n in range(1, 200)]
    assert all(0.0 <= d <= 30.0 for d in delays)
    assert max(delays[:1]) <= 0.5 and max(delays[20:]) > 15.0  # grows to the cap, spread over it


async def test_the_backoff_starts_again_after_a_healthy_run(caplog: pytest.LogCaptureFixture) -> None:
    """A run longer than healthy_after_s makes the next crash the first in a row again."""
    clock = [0.0]

    async def crash_after_a_long_run() -> None:
        clock[0] += 100.0  # as if the task had run 100 s
        raise RuntimeError("late")

    async with Supervisor(rng=random.Random(3), clock=lambda: clock[0]) as supervisor:
        supervisor.spawn("late", crash_after_a_long_run, Restart(initial_s=0.001, max_s=10.0, healthy_after_s=60.0))
        await until(lambda: supervisor.crashes["late"] >= 5)
    rng = random.Random(3)
    first_in_a_row = [rng.uniform(0.0, 0.001) for _ in range(5)]
    assert [r.restart_in_s for r in crash_records(caplog, "late")[:5]] == first_in_a_row  # type: ignore[attr-defined]


async def test_a_return_and_a_stray_cancellation_are_crashes_too(caplog: pytest.LogCaptureFixture) -> None:
    """A task that should run forever and returns, or raises a CancelledError nobody asked for, is restarted."""
    calls = {"returns": 0, "cancels": 0}

    async def returns() -> None:
        calls["returns"] += 1

    async def stray_cancel() -> None:
        calls["cancels"] += 1
        raise asyncio.CancelledError

    async with Supervisor(rng=random.Random(0)) as supervisor:
        supervisor.spawn("returns", returns, FAST)
        supervisor.spawn("cancels", stray_cancel, FAST)
        await until(lambda: calls["returns"] >= 3 and calls["cancels"] >= 3)
    assert supervisor.crashes["returns"] >= 2 and supervisor.crashes["cancels"] >= 2
    assert isinstance(crash_records(caplog, "returns")[0].exc_info[1], TaskReturned)  # type: ignore[index]
    assert "CancelledError nobody asked for" in str(crash_records(caplog, "cancels")[0].exc_info[1])  # type: ignore[index]


async def test_a_fatal_crash_sets_the_failure_and_is_not_restarted(caplog: pytest.LogCaptureFixture) -> None:
    """FATAL: logged with its traceback, counted, no restart; wait_failed gives a TaskFailed (exit 1)."""
    body = Flaky(failures=1)
    async with Supervisor() as supervisor:
        supervisor.spawn("vital", body, FATAL)
        supervisor.spawn("other", Flaky(failures=0), FAST)
        failure = await asyncio.wait_for(supervisor.wait_failed(), UNIT_S)
        assert supervisor.failed.is_set() and supervisor.failure is failure
        await asyncio.sleep(0.05)
        assert body.runs == 1 and supervisor.crashes == {"vital": 1, "other": 0}
        assert supervisor.restarts == {"vital": 0, "other": 0}
    assert isinstance(failure, TaskFailed) and failure.exit_code == 1
    assert "vital" in str(failure) and isinstance(failure.__cause__, RuntimeError)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR and "vital" in r.getMessage()]
    assert record.exc_info is not None and str(record.exc_info[1]) == "boom 1"
    assert never_retrieved(caplog) == []


async def test_exit_cancels_every_task_within_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    """Exiting cancels every task; one that ignores its cancellation costs at most stop_timeout_s, and is named."""
    cleaned = asyncio.Event()
    release = asyncio.Event()

    async def polite() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # ignores the first cancellation
            raise

    supervisor = Supervisor(stop_timeout_s=0.2)
    async with supervisor:
        supervisor.spawn("polite", polite)
        stuck = supervisor.spawn("stubborn", stubborn)
        await asyncio.sleep(0.01)
        started = time.monotonic()
    assert time.monotonic() - started < 0.2 + UNIT_S / 10
    assert cleaned.is_set() and supervisor.crashes == {"polite": 0, "stubborn": 0}
    assert "stubborn did not stop within 0.2s of being cancelled" in caplog.text
    release.set()
    await asyncio.wait_for(asyncio.wait([stuck.task]), UNIT_S)
    assert stuck.task.cancelled()
    with pytest.raises(RuntimeError, match="has exited"):
        supervisor.spawn("late", polite)


async def test_stop_lets_a_task_end_by_itself_within_its_grace() -> None:
    """Like the mirror's last flush: told to stop, the task returns (not a crash); one that does not is cancelled."""
    stop = asyncio.Event()
    finished = asyncio.Event()

    async def flushes_then_returns() -> None:
        await stop.wait()
        await asyncio.sleep(0.01)  # the last flush
        finished.set()

    async def deaf() -> None:
        await asyncio.Event().wait()

    async with Supervisor() as supervisor:
        child = supervisor.spawn("mirror-like", flushes_then_returns)
        deaf_child = supervisor.spawn("deaf", deaf)
        await asyncio.sleep(0.01)
        stop.set()
        await child.stop(grace_s=UNIT_S)
        assert finished.is_set() and not child.task.cancelled()
        await deaf_child.stop(grace_s=0.05)
        assert deaf_child.task.cancelled()
        supervisor.spawn("other", deaf)
        with pytest.raises(ValueError, match="already running"):
            supervisor.spawn("other", deaf)
    assert supervisor.crashes == {"mirror-like": 0, "deaf": 0, "other": 0}


async def test_cancel_and_wait_retrieves_the_error_a_task_ended_with(caplog: pytest.LogCaptureFixture) -> None:
    """The error is handed back, and asyncio has nothing left to warn about."""

    async def boom() -> None:
        raise RuntimeError("ended badly")

    task = asyncio.create_task(boom())
    await asyncio.sleep(0.01)
    error = await cancel_and_wait(task)
    assert isinstance(error, RuntimeError) and str(error) == "ended badly"
    del task, error
    assert never_retrieved(caplog) == []


# --------------------------------------------------------------------------- in the service


async def test_the_supervised_mirror_still_writes_its_last_changes_on_exit(
    redis_server: RedisServer, skeleton: ChainSkeleton  # noqa: F811
) -> None:
    """A change made after the mirror's last periodic flush reaches Redis when it stops: its loop
    is told to stop, flushes once more and returns, which is no crash."""
    cache = ChainCache(skeleton)
    async with Supervisor() as supervisor:
        mirror = RedisMirror(cache, redis_settings(redis_server.url, flush_interval_s=60.0), supervisor=supervisor)
        async with mirror:
            await asyncio.sleep(0.05)  # the loop's first pass is done: the next periodic one is a minute away
            flushes, written = mirror.stats.flushes, mirror.stats.legs_written
            leg = next(leg for leg in cache.legs.values() if leg.contract is not None)
            cache.apply([full_tick(leg.key, ltp=123.45, received_at=NOW)])
        assert mirror.stats.flushes == flushes + 1 and mirror.stats.legs_written == written + 1
        assert not cache.dirty and supervisor.crashes == {"redis-mirror": 0}


async def test_the_service_ends_on_a_fatal_task_or_the_feeds_error() -> None:
    """What ``livechain run`` waits on: a FATAL crash raises its TaskFailed (exit 1), a feed error
    is raised as it is (FatalFeedError → exit 4, any other → exit 1)."""
    forever = asyncio.create_task(asyncio.Event().wait())
    async with Supervisor() as supervisor:
        supervisor.spawn("vital", Flaky(failures=1), FATAL)
        with pytest.raises(TaskFailed, match="vital"):
            await asyncio.wait_for(_until_failed(forever, supervisor), UNIT_S)  # type: ignore[arg-type]
    assert not forever.done()
    await cancel_and_wait(forever)

    async def feed_bug() -> None:
        raise RuntimeError("feed bug")

    async with Supervisor() as supervisor:
        with pytest.raises(RuntimeError, match="feed bug"):
            await asyncio.wait_for(_until_failed(asyncio.create_task(feed_bug()), supervisor), UNIT_S)


async def options_live(port: int) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
        async with http.get(f"http://127.0.0.1:{port}/options/live", params={"underlying": "NIFTY"}) as resp:
            assert resp.status == 200
            return orjson.loads(await resp.read())


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UNIT_S)) as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            return await resp.text()


async def test_a_crashed_analytics_runner_is_reported_and_restarted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's loop crashes (installing analytics fails once): ERROR with the traceback,
    livechain_task_crashes_total{task="analytics"} on the metrics port, and fresh analytics again.

    A failure of ``analyse`` on one chain is not a crash (it is counted as an analytics error and
    the other chains carry on), so the crash is made where the runner does not catch it."""
    caplog.set_level(logging.INFO)
    async with running_service(settings_for(None, analytics={"interval_s": 0.05})) as svc:
        assert svc.metrics_port is not None and svc.supervisor is not None
        before = (await options_live(svc.http_port))["analytics_as_of"]
        assert before is not None
        install = ChainCache.set_analytics
        failed = []

        def set_analytics_once_broken(cache: ChainCache, chain: object, analytics: object) -> None:
            if not failed:
                failed.append(chain)
                raise RuntimeError("installing analytics failed")
            install(cache, chain, analytics)  # type: ignore[arg-type]

        monkeypatch.setattr(ChainCache, "set_analytics", set_analytics_once_broken)
        await until(lambda: svc.supervisor.crashes["analytics"] >= 1 and svc.supervisor.restarts["analytics"] >= 1)

        async def recovered() -> bool:
            body = await options_live(svc.http_port)
            return body["analytics_as_of"] is not None and body["analytics_as_of"] != before

        async with asyncio.timeout(2 * UNIT_S):
            while not await recovered():
                await asyncio.sleep(0.05)
        text = await scrape(svc.metrics_port)
    [record] = crash_records(caplog, "analytics")
    assert record.exc_info is not None and str(record.exc_info[1]) == "installing analytics failed"
    assert "Traceback" in caplog.text and "set_analytics_once_broken" in caplog.text
    crashes = [line for line in text.splitlines() if line.startswith('livechain_task_crashes_total{task="analytics"}')]
    assert len(crashes) == 1 and float(crashes[0].split()[-1]) >= 1
    assert 'livechain_task_restarts_total{task="analytics"}' in text
    assert 'livechain_task_crashes_total{task="expiry-roll"} 0.0' in text
