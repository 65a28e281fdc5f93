"""Background tasks: one supervisor starts them, reports their crashes, restarts or fails, stops them.

A background task is a loop that should run until it is stopped. ``Supervisor.spawn(name,
factory, policy)`` runs ``factory()`` (a fresh coroutine each time, so it can be restarted)
in a task of that name. When the coroutine raises (anything but a cancellation asked of it)
or returns while nobody asked it to stop, that is a crash: logged at ERROR with the
traceback, counted in ``crashes[name]`` (``livechain_task_crashes_total{task}``), then

* ``Restart(initial_s, max_s, healthy_after_s)``: started again after a delay drawn
  uniformly from [0, min(max_s, initial_s · 2^(n-1))] for the n-th crash in a row (full
  jitter, capped; the count starts again after a run of ``healthy_after_s``), counted in
  ``restarts[name]``;
* ``FATAL``: nothing restarts it; ``failed`` is set and ``wait_failed()`` returns a
  ``TaskFailed`` (exit code 1) for the composition root to raise.

Per task, in the service: the analytics runner (``analytics``), the REST seeder
(``rest-seed``), the expiry roller (``expiry-roll``), the Redis mirror's loop
(``redis-mirror``) and the replica's follower (``replica-follower``) all restart with backoff:
each is a stateless loop over state owned elsewhere (the cache, Redis), so a fresh run picks
up where the last one left off. A task whose death would leave wrong data with no way to
recover is ``FATAL``; none is today. The feed task is not supervised: ``service.app`` watches
it (and ``failed``) itself: a ``FatalFeedError`` exits 4, any other error of it exits 1.

Exiting the supervisor cancels every task still running and waits at most ``STOP_TIMEOUT_S``;
every task's outcome is retrieved, so nothing dies silently and asyncio never warns
"Task exception was never retrieved". A component that must end its task in order (the
mirror's last flush) stops it itself through the ``Child`` handle. ``asyncio.TaskGroup`` is
not used: it cancels every task on one failure and waits for them without a bound.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from service.errors import TaskFailed

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0  # what a cancelled task gets to finish its cleanup

Factory = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Restart:
    """Restart after a crash, with full-jitter exponential backoff, capped."""

    initial_s: float = 0.5
    max_s: float = 30.0
    healthy_after_s: float = 60.0  # a run this long resets the backoff

    def delay(self, crashes_in_a_row: int, rng: random.Random) -> float:
        """Uniform in [0, min(max_s, initial_s · 2^(n-1))] before the n-th restart in a row."""
        return rng.uniform(0.0, min(self.max_s, self.initial_s * 2 ** min(crashes_in_a_row - 1, 30)))


class Fatal:
    """No restart: the crash ends the process (exit 1)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FATAL"


RESTART: Final = Restart()
FATAL: Final = Fatal()
Policy = Restart | Fatal


class TaskReturned(Exception):
    """A task that should run until stopped returned."""


class Child:
    """One spawned task: ``stop()`` ends it (and its restarts)."""

    def __init__(self, supervisor: Supervisor, name: str, factory: Factory, policy: Policy) -> None:
        self.name = name
        self.factory = factory
        self.policy = policy
        self.stopping = False  # from now on a return is the end, not a crash
        self.backing_off = False  # crashed, waiting to restart: nothing to let finish
        self.task: asyncio.Task[None] = asyncio.create_task(supervisor._supervise(self), name=name)
        self.task.add_done_callback(_retrieve)

    async def stop(self, *, grace_s: float = 0.0, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Let the task end by itself for ``grace_s`` (it was told to through its own means), then
        cancel it and wait at most ``timeout_s``. Never restarted after this."""
        self.stopping = True  # first, before the caller's coroutine yields: its task may return now
        task = self.task
        if task.done():
            return
        if grace_s > 0 and not self.backing_off:
            done, _ = await asyncio.wait([task], timeout=grace_s)
            if done:
                return
            log.warning("%s did not stop within %gs: cancelling it", self.name, grace_s)
        await cancel_and_wait(task, timeout_s)


class Supervisor:
    """Runs background tasks, restarting or failing on crashes; an async context manager."""

    def __init__(self, *, rng: random.Random | None = None, stop_timeout_s: float = STOP_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.crashes: dict[str, int] = {}  # per task name, every spawned name from 0
        self.restarts: dict[str, int] = {}
        self.failed = asyncio.Event()  # set when a FATAL task crashed
        self.failure: TaskFailed | None = None
        self._rng = rng if rng is not None else random.Random()
        self._stop_timeout_s = stop_timeout_s
        self._clock = clock
        self._children: dict[str, Child] = {}
        self._closed = False

    def spawn(self, name: str, factory: Factory, policy: Policy = RESTART) -> Child:
        """Run ``factory()`` as task ``name`` until stopped; ``factory`` returns a fresh coroutine."""
        if self._closed:
            raise RuntimeError(f"cannot spawn {name}: the supervisor has exited")
        current = self._children.get(name)
        if current is not None and not current.task.done():
            raise ValueError(f"a task named {name} is already running")
        self.crashes.setdefault(name, 0)
        self.restarts.setdefault(name, 0)
        child = self._children[name] = Child(self, name, factory, policy)
        return child

    async def wait_failed(self) -> TaskFailed:
        """Wait until a FATAL task crashed; return the error to raise (exit 1)."""
        await self.failed.wait()
        assert self.failure is not None
        return self.failure

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Cancel every task still running; wait at most ``stop_timeout_s`` in all."""
        self._closed = True
        running = [c for c in self._children.values() if not c.task.done()]
        for child in running:
            child.stopping = True
            child.task.cancel()
        if not running:
            return
        _, stuck = await asyncio.wait([c.task for c in running], timeout=self._stop_timeout_s)
        for task in stuck:
            log.error("%s did not stop within %gs of being cancelled", task.get_name(), self._stop_timeout_s)

    async def _supervise(self, child: Child) -> None:
        name, policy = child.name, child.policy
        in_a_row = 0
        while True:
            started = self._clock()
            error: BaseException | None = None
            try:
                await child.factory()
            except asyncio.CancelledError as exc:
                current = asyncio.current_task()
                if current is None or current.cancelling() or child.stopping:
                    raise  # asked of us: the end
                # A cancellation nobody asked of this task (leaked from inside): a crash, not an end.
                error = RuntimeError(f"{name} ended with a CancelledError nobody asked for")
                error.__cause__ = exc
            except Exception as exc:  # noqa: BLE001  (reported below: this is the one place that does)
                error = exc
            if error is None:
                if child.stopping:
                    return
                error = TaskReturned(f"{name} returned; it should run until stopped")
            self.crashes[name] = self.crashes.get(name, 0) + 1
            crashes = self.crashes[name]
            if child.stopping:
                log.error("background task %s failed while stopping", name, exc_info=error)
                return
            if isinstance(policy, Fatal):
                log.error("background task %s crashed; it is fatal: the service stops", name, exc_info=error)
                self._fail(name, error)
                return
            in_a_row = 1 if self._clock() - started >= policy.healthy_after_s else in_a_row + 1
            delay = policy.delay(in_a_row, self._rng)
            log.error(
                "background task %s crashed (%d crashes so far); restarting it in %.2fs", name, crashes, delay,
                exc_info=error, extra={"task": name, "crashes": crashes, "restart_in_s": delay},
            )  # fmt: skip
            child.backing_off = True
            try:
                await asyncio.sleep(delay)
            finally:
                child.backing_off = False
            self.restarts[name] = self.restarts.get(name, 0) + 1
            log.info("background task %s restarted", name, extra={"task": name})

    def _fail(self, name: str, error: BaseException) -> None:
        if self.failure is None:
            failure = TaskFailed(f"background task {name} crashed: {error!r}")
            failure.__cause__ = error
            self.failure = failure
        self.failed.set()


def _retrieve(task: asyncio.Task[None]) -> None:
    """A supervising task catches what its coroutine raises; anything that still got out is said here."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped by an unexpected error", task.get_name(), exc_info=task.exception())


async def cancel_and_wait(task: asyncio.Task[Any] | None, timeout_s: float = STOP_TIMEOUT_S) -> BaseException | None:
    """Cancel ``task`` and wait up to ``timeout_s`` for it. Returns the error it had ended with,
    retrieved (so asyncio never warns about it); reporting it is its owner's job."""
    if task is None:
        return None
    task.cancel()
    _, stuck = await asyncio.wait([task], timeout=timeout_s)
    if stuck:
        log.error("%s did not stop within %gs of being cancelled", task.get_name(), timeout_s)
        return None
    return None if task.cancelled() else task.exception()
