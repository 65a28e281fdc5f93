"""Results out: a Markdown table for people (pasteable into docs) and a JSON document for tools."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.model import Budget, Row

SCHEMA = 1
_HEADER = ("scenario", "case", "ours", "baseline", "unit", "ratio", "ratio range", "target", "pass")
_HEADLINE_HEADER = ("headline row", "ours", "baseline", "ratio", "ratio range", "target", "pass")

# The headline: the end-to-end targets (issue 16), in this order: ingest against a bare
# receiver on the same socket, memory per instrument, serving against a bare handler, the cold
# start against its budget. Every row of these scenarios that has a target is in it, whatever
# its case is called (the scenarios own their cases and targets); rows with a target elsewhere
# (freshness, metrics, analytics, push) stay in the full table only. The per-packet decode
# ratios are information, not targets.
HEADLINE_SCENARIOS = ("ingest", "scale", "serve", "coldstart")


def headline(rows: Sequence[Row]) -> list[Row]:
    """The rows with a target in ``HEADLINE_SCENARIOS``, in that order (each scenario's own within)."""
    order = {name: i for i, name in enumerate(HEADLINE_SCENARIOS)}
    return sorted((r for r in rows if r.scenario in order and r.target is not None), key=lambda r: order[r.scenario])


def format_headline(rows: Sequence[Row]) -> str:
    """A short Markdown block of the headline targets and how many are met; "" without any."""
    top = headline(rows)
    if not top:
        return ""
    lines = [
        "Headline: the end-to-end targets, each against a baseline or budget measured in the same run.",
        "",
        _line(_HEADLINE_HEADER),
        _line(("---",) + ("---:",) * 5 + ("---",)),
    ]
    for r in top:
        cells = (
            f"{r.scenario}: {r.case}", f"{_si(r.ours)} {r.unit}", f"{_si(r.baseline)} {r.unit}",
            f"{_ratio(r.ratio)}x", f"{_ratio(r.ratio_min)}–{_ratio(r.ratio_max)}x", _target(r), _verdict(r),
        )  # fmt: skip
        lines.append(_line(cells))
    targeted = [r for r in rows if r.target is not None]
    lines += [
        "",
        f"Met: {sum(bool(r.passed) for r in top)} of {len(top)} headline targets; "
        f"{sum(bool(r.passed) for r in targeted)} of {len(targeted)} targets in the whole table.",
    ]
    return "\n".join(lines)


def format_table(rows: Sequence[Row], machine: dict[str, Any]) -> str:
    """The headline block, then every row as a Markdown table, with notes as numbered footnotes
    and the machine below."""
    notes: list[str] = []
    top = format_headline(rows)
    lines = [top, ""] if top else []
    lines += [_line(_HEADER), _line(("---",) * 2 + ("---:",) * 2 + ("---",) + ("---:",) * 3 + ("---",))]
    for r in rows:
        case = r.case
        if r.note:
            notes.append(r.note)
            case += f" [{len(notes)}]"
        lines.append(
            _line(
                (
                    r.scenario, case, _si(r.ours), _si(r.baseline), r.unit, f"{_ratio(r.ratio)}x",
                    f"{_ratio(r.ratio_min)}–{_ratio(r.ratio_max)}x", _target(r), _verdict(r),
                )
            )
        )  # fmt: skip
    lines += [""] + [f"[{i}] {note}" for i, note in enumerate(notes, start=1)]
    libs = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items() if v)
    lines += [
        f"Baseline: {', '.join(sorted({r.baseline_name for r in rows}))}. Ratio > 1: ours is better.",
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores, "
        f"load {machine['load_average_1m']}, Python {machine['python']}; {libs}",
    ]
    return "\n".join(lines)


def document(
    rows: Sequence[Row], machine: dict[str, Any], budget: Budget, started_at: str, seconds: float
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "started_at": started_at,
        "duration_s": round(seconds, 2),
        "budget": {"rounds": budget.rounds, "seconds_per_round": budget.seconds_per_round, "quick": budget.quick},
        "machine": machine,
        "scenarios": sorted({r.scenario for r in rows}),
        # (scenario, case) of the headline rows, in the headline's order: see HEADLINE_SCENARIOS.
        "headline": [{"scenario": r.scenario, "case": r.case, "pass": r.passed} for r in headline(rows)],
        "rows": [r.to_json() for r in rows],
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a file


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _target(r: Row) -> str:
    return "—" if r.target is None else f"≥ {r.target:g}x"


def _verdict(r: Row) -> str:
    return {None: "—", True: "yes", False: "NO"}[r.passed]


def _si(x: float) -> str:
    """3 significant figures with an SI suffix: 1.23M, 456k, 78.9."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g}{suffix}"
    return f"{x:.3g}"


def _ratio(x: float) -> str:
    """Two decimals below 10 (0.66x must not print as a passing 0.7x), one above."""
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"
