"""A real ``redis-server`` on a free loopback port, which a test can stop and restart.

Import the fixture into a test module (``from tests.redis_fixture import redis_server``).
``make test`` installs redis-server when it is missing; without it these tests fail, loudly,
rather than skip: a test that cannot run cannot fail either.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import free_port

START_TIMEOUT_S = 10.0


class RedisServer:
    """One redis-server process: no persistence, so a restart comes back empty, like a new node."""

    def __init__(self, port: int, workdir: str, password: str | None = None) -> None:
        self.port = port
        self.password = password
        self._workdir = workdir
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self._workdir]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self._proc = await asyncio.create_subprocess_exec(
            "redis-server", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=real_time_environ(),
        )
        client = Redis.from_url(self.url)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:
                    if self._proc.returncode is not None:
                        out = await self._proc.stdout.read()  # type: ignore[union-attr]
                        raise RuntimeError(f"redis-server exited with {self._proc.returncode}: {out.decode()[-500:]}")
                    try:
                        if await client.ping():
                            return
                    except RedisConnectionError:
                        await asyncio.sleep(0.01)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.communicate()

    def client(self) -> Redis:
        return Redis.from_url(self.url)


def real_time_environ() -> dict[str, str]:
    """This environment without libfaketime: under ``make test-future`` the suite runs with its
    clock moved ahead, and redis-server (like any real server the tests talk to) keeps real time."""
    return {
        k: v for k, v in os.environ.items()
        if not k.startswith("FAKETIME") and not (k == "LD_PRELOAD" and "faketime" in v)
    }


def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH; `make test` installs it (apt-get install -y redis-server)")


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    require_redis_server()
    with tempfile.TemporaryDirectory(prefix="livechain-redis-") as workdir:
        server = RedisServer(free_port(), workdir)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()
