"""Stopping background tasks at shutdown: cancel, then wait, but never forever."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0  # what a cancelled task gets to finish its cleanup


async def cancel_and_wait(task: asyncio.Task[object] | None, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Cancel ``task`` and wait up to ``timeout_s`` for it; an error it ended with is its owner's to report."""
    if task is None:
        return
    task.cancel()
    _, stuck = await asyncio.wait([task], timeout=timeout_s)
    if stuck:
        log.error("%s did not stop within %gs of being cancelled", task.get_name(), timeout_s)
