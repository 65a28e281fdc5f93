"""The benchmark harness still runs against the code it measures (quick, in-process scenarios)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.scenarios import SCENARIOS


def test_every_scenario_is_registered() -> None:
    """The issue's six scenarios (and ours) are in the registry."""
    assert {"decode", "ingest", "serve", "freshness", "scale", "mirror", "metrics", "recovery", "analytics"} <= set(SCENARIOS)


def test_quick_run_of_the_in_process_scenarios(tmp_path: Path) -> None:
    """`python -m bench --quick` on the scenarios that drive our client code directly writes rows."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "decode", "--only", "metrics", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["scenario"] for r in rows} == {"decode", "metrics"}
    assert all(r["ours"] > 0 and r["baseline"] > 0 for r in rows)
