"""The cold start of the whole service, phase by phase, and the simulator it starts against.

``ColdStart`` is ``bench.roles.service.Service`` (``running_service``, the composition root
the CLI runs) with two marks added in this process only, so nothing in the service changes:

* ``service.app._load_instruments`` is wrapped to note when the instruments were loaded
  (scrip master read and parsed, live chains chosen), ``service.app._await_gate`` to note
  when the readiness gate opened (every instrument has data);
* ``Ingest`` notes the first tick read off a socket (``timed``, as in ``Service``).

``imports_s`` is how long this process took to import the service's modules, before anything
started: part of a real ``livechain run`` start, outside the measured cold start.

``Simulator`` is the project's Dhan simulator alone in its process, on a pinned day, so the
scrip master the bench writes in the parent lists the same contracts and ids.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()
import service.app  # noqa: E402  (timed: the service's imports)

IMPORTS_S = time.perf_counter() - _T0

from typing import Any  # noqa: E402

from bench.roles.feed import universe_config  # noqa: E402
from bench.roles.service import Service  # noqa: E402
from feeds.simulator.server import SimulatorServer  # noqa: E402


class ColdStart(Service):
    def start(self) -> dict[str, Any]:
        return {"rss_base": self.rss_base, "imports_s": IMPORTS_S}

    async def cold(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Start the service once; its phases in wall-clock epoch seconds (one process, one clock)."""
        marks: dict[str, float] = {}
        load = service.app._load_instruments

        async def timed_load(*args: Any, **kwargs: Any) -> Any:
            marks["load_started_at"] = time.time()
            loaded = await load(*args, **kwargs)
            marks["loaded_at"] = time.time()
            full, _live = loaded
            marks["rows"] = full.report.rows_total
            marks["rows_used"] = full.report.rows_used
            marks["listed_instruments"] = full.instrument_count()
            return loaded

        gate = service.app._await_gate

        async def timed_gate(*args: Any, **kwargs: Any) -> None:
            await gate(*args, **kwargs)
            marks["gate_at"] = time.time()

        service.app._load_instruments = timed_load  # type: ignore[assignment]
        service.app._await_gate = timed_gate  # type: ignore[assignment]
        try:
            started = await self.run(settings, timed=True)
        finally:
            service.app._load_instruments = load  # type: ignore[assignment]
            service.app._await_gate = gate  # type: ignore[assignment]
        return {**started, **marks}


class Simulator:
    """``feeds.simulator.server.SimulatorServer`` for ``today`` (ISO date), alone in its process."""

    def __init__(self, underlyings: list[str], expiries: int, strikes_per_side: int, today: str) -> None:
        self.server = SimulatorServer(universe_config(underlyings, expiries, strikes_per_side, today))

    async def start(self) -> dict[str, Any]:
        await self.server.start()
        return {"feed_url": self.server.feed_url, "instruments": len(self.server.universe)}

    async def stop(self) -> None:
        await self.server.stop()
