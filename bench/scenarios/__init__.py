"""The scenario registry: one module per scenario, each exporting ``SCENARIO``.

To add one, write ``bench/scenarios/<name>.py`` with a ``run(budget) -> list[Row]`` that races
ours against a baseline with ``bench.timing.race``, and list its ``SCENARIO`` below. The order
here is the order of a full run.
"""

from __future__ import annotations

from bench.model import Scenario
from bench.scenarios import (
    analytics,
    coldstart,
    decode,
    freshness,
    history,
    ingest,
    kite_decode,
    metrics,
    mirror,
    push,
    recovery,
    scale,
    serve,
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        decode.SCENARIO,
        kite_decode.SCENARIO,
        ingest.SCENARIO,
        serve.SCENARIO,
        push.SCENARIO,
        freshness.SCENARIO,
        scale.SCENARIO,
        coldstart.SCENARIO,
        mirror.SCENARIO,
        recovery.SCENARIO,
        metrics.SCENARIO,
        analytics.SCENARIO,
        history.SCENARIO,
    )
}
