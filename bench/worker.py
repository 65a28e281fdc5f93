"""Benchmark roles in processes of their own, driven over a pipe: one JSON line per call.

The service runs as one process and its peers (Dhan, pollers, Redis clients) are other
processes, so scenarios that measure across a socket put each side in its own process, the
way the two cores are used in production. A *role* is a class in ``bench.roles``; the child
builds it, awaits its ``start()`` (if any) and then serves method calls on one event loop
that keeps running between calls, so a role's servers and background tasks stay up::

    with Worker("bench.roles.feed:FeedServer", frames=100_000) as server:
        port = server.info["port"]        # what start() returned
        rate = client.call("ours", port)  # blocks until the child answers

Children are fresh interpreters (``python -m bench.worker``) that import only their role's
module, never ``bench.scenarios`` (whose decode scenario loads the dhanhq SDK and pandas):
a child's heap, garbage collections and RSS are its own. The child's stdout is the reply
channel; anything else it prints goes to stderr. It exits when its stdin closes.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import select
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any, Self

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 120.0


class WorkerError(RuntimeError):
    """The child raised, died or did not answer in time."""


class Worker:
    """A role running in a child process; ``call`` runs one of its methods there."""

    def __init__(self, target: str, /, *, env: dict[str, str] | None = None, **kwargs: Any) -> None:
        self.target = target
        self._spec = json.dumps({"target": target, "kwargs": kwargs})
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self.info: Any = None  # what the role's start() returned

    def __enter__(self) -> Self:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVECHAIN_", "DHAN_"))}
        env.update(self._env or {})
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", self._spec],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            self.info = self._reply("ready", START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def call(self, method: str, *args: Any, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        proc = self._running()
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"method": method, "args": args}).encode() + b"\n")
        proc.stdin.flush()
        return self._reply("result", timeout_s, method)

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the child's stdin (it stops its role and exits); kill it if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise WorkerError(f"{self.target}: not running")
        return self._proc

    def _reply(self, kind: str, timeout_s: float, method: str = "start") -> Any:
        line = self._line(timeout_s, method)
        message = json.loads(line)
        if "error" in message:
            raise WorkerError(f"{self.target}.{method} failed in the child:\n{message['error']}")
        return message[kind]

    def _line(self, timeout_s: float, method: str) -> bytes:
        proc = self._running()
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError(f"{self.target}.{method}: no answer within {timeout_s:g}s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    code = proc.wait()
                    raise WorkerError(f"{self.target}.{method}: the child exited with code {code}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


# --------------------------------------------------------------------------- the child


def _main(spec_json: str) -> None:
    # Our stdout is the reply channel: keep it for replies and send stray prints to stderr.
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    spec = json.loads(spec_json)
    asyncio.run(_serve(spec["target"], spec["kwargs"], replies))


async def _serve(target: str, kwargs: dict[str, Any], replies: Any) -> None:
    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message).encode() + b"\n")

    try:
        module, _, name = target.partition(":")
        role = getattr(importlib.import_module(module), name)(**kwargs)
        start = getattr(role, "start", None)
        reply({"ready": await _result(start()) if start is not None else None})
    except Exception:  # noqa: BLE001 - whatever it is, the parent reports it with the child's traceback
        reply({"error": traceback.format_exc()})
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            request = json.loads(line)
            try:
                result = await _result(getattr(role, request["method"])(*request["args"]))
                reply({"result": result})
            except Exception:  # noqa: BLE001 - as above: the parent raises it
                reply({"error": traceback.format_exc()})
    finally:
        stop = getattr(role, "stop", None)
        if stop is not None:
            await _result(stop())


async def _result(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


if __name__ == "__main__":
    _main(sys.argv[1])
