"""The benchmark harness still runs against the code it measures (quick, in-process scenarios)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from bench import scrip_master as bench_scrip_master
from bench.model import Row
from bench.roles.feed import universe_config
from bench.report import format_headline, format_table, headline
from bench.scenarios import SCENARIOS
from bench.scrip_master import write_scrip_master
from feeds.simulator.universe import build_universe
from service.feed_source import instrument_master
from service.scrip_cache import load_instruments
from tests.conftest import TODAY


def test_every_scenario_is_registered() -> None:
    """The issue's six scenarios (and ours) are in the registry."""
    assert {"decode", "ingest", "serve", "freshness", "scale", "mirror", "metrics", "recovery", "analytics",
            "coldstart"} <= set(SCENARIOS)  # fmt: skip


def test_quick_run_of_the_in_process_scenarios_and_the_cold_start(tmp_path: Path) -> None:
    """`python -m bench --quick` on the scenarios that drive our client code directly, and the
    cold start (a generated scrip master, the service and the simulator in processes of their
    own), writes rows; the cold start's budget row opens the headline, the decode rows have no
    target."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "decode", "--only", "metrics", "--only", "coldstart",
         "--out", str(out)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert {r["scenario"] for r in rows} == {"decode", "metrics", "coldstart"}
    assert all(r["ours"] > 0 and r["baseline"] > 0 for r in rows)
    assert all(r["target"] is None for r in rows if r["scenario"] == "decode")
    cold = [r["case"] for r in rows if r["scenario"] == "coldstart"]
    assert cold[0].startswith("scrip master load, 90k rows")
    assert [c.split(" ")[1] for c in cold[1:]] == ["cold", "load", "subscribe", "ready", "ready"]
    assert [(h["scenario"], h["case"]) for h in doc["headline"]] == [("coldstart", cold[1])]
    assert done.stdout.startswith("Headline:")


def _row(scenario: str, case: str, ratio: float, target: float | None) -> Row:
    return Row.compare(scenario, case, [ratio], [1.0], unit="x", baseline_name="b", target=target)


def test_headline_is_the_targets_of_the_end_to_end_scenarios_ingest_first() -> None:
    """The headline keeps only targeted rows of ingest, scale, serve and coldstart, ingest first,
    and counts what is met; the full table still follows with every row."""
    rows = [
        _row("decode", "full: decode", 9.0, None),
        _row("serve", "200: requests/s", 0.9, 0.8),
        _row("serve", "200: p99 latency", 0.5, None),
        _row("freshness", "p99 vs 50 ms budget", 3.0, 1.0),
        _row("ingest", "ours vs bare aiohttp receive", 0.5, 0.6),
        _row("coldstart", "25k: cold start vs 3 s budget", 1.2, 1.0),
    ]
    assert [(r.scenario, r.case) for r in headline(rows)] == [
        ("ingest", "ours vs bare aiohttp receive"), ("serve", "200: requests/s"),
        ("coldstart", "25k: cold start vs 3 s budget"),
    ]  # fmt: skip
    table = format_table(rows, {"libraries": {}, "cpu_model": "cpu", "cores": 2, "load_average_1m": 0.1,
                                "python": "3.11"})  # fmt: skip
    block, _, rest = table.partition("| scenario | case |")
    assert block.splitlines()[4] == "| ingest: ours vs bare aiohttp receive | 0.5 x | 1 x | 0.50x | 0.50–0.50x | ≥ 0.6x | NO |"
    assert "Met: 2 of 3 headline targets; 3 of 4 targets in the whole table." in block
    assert "| decode | full: decode |" in rest and "| ≥ 10x |" not in table
    assert format_headline([_row("decode", "full: decode", 9.0, None)]) == ""


def test_generated_scrip_master_loads_into_the_simulator_universe(tmp_path: Path) -> None:
    """The cold start's scrip master goes through the service's loader with no malformed row, every
    row read, and lists exactly the simulator's contracts first (then far quarterly expiries)."""
    config = universe_config(["NIFTY", "BANKNIFTY"], 3, 4, TODAY.isoformat())
    universe = build_universe(config, TODAY)
    written = write_scrip_master(tmp_path / "master.csv", universe, 90_000)
    assert written.rows == 90_000 and set(written.by_segment) == {
        "NSE E", "BSE E", "NSE I", "BSE I", "NSE D", "BSE D", "NSE C", "BSE C", "MCX M",
    }  # fmt: skip
    loaded = asyncio.run(load_instruments(str(written.path), ["NIFTY", "BANKNIFTY"], timeout_s=30.0,
                                          master=instrument_master("dhan")))  # fmt: skip
    assert (loaded.report.rows_total, loaded.report.rows_malformed) == (90_000, 0)
    for symbol, simulated in universe.skeleton.underlyings.items():
        got = loaded.underlyings[symbol]
        assert got.key == simulated.key
        assert got.expiries[:3] == simulated.expiries
        assert len(got.expiries) == 3 + bench_scrip_master.FAR_EXPIRIES
        assert got.expiries[3].expiry > simulated.expiries[-1].expiry
    again = write_scrip_master(tmp_path / "again.csv", universe, 90_000)
    assert again.path.read_bytes() == written.path.read_bytes()
