"""What a scenario is, what it is given and what it returns."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Budget:
    """How long to measure: every contestant runs ``rounds`` times for ~``seconds_per_round``."""

    rounds: int
    seconds_per_round: float
    quick: bool  # scenarios shrink their workloads too (smaller corpora, fewer cases)

    @classmethod
    def default(cls) -> Budget:
        return cls(rounds=5, seconds_per_round=0.25, quick=False)

    @classmethod
    def smoke(cls) -> Budget:
        return cls(rounds=3, seconds_per_round=0.03, quick=True)


@dataclass(frozen=True, slots=True)
class Row:
    """One comparison: our median against the baseline's, over the same interleaved rounds.

    ``ratio`` always reads "times better than the baseline" (> 1 is a win): ours/baseline when
    higher is better (throughput), baseline/ours when lower is (latency). It is the median of
    the per-round ratios, because both sides of a round ran back to back and share its noise;
    it can therefore differ slightly from ``ours / baseline``.
    """

    scenario: str
    case: str
    ours: float
    baseline: float
    unit: str
    ratio: float
    ratio_min: float
    ratio_max: float
    target: float | None  # minimum ratio to pass; None: informational
    baseline_name: str
    higher_is_better: bool
    ours_rounds: tuple[float, ...]
    baseline_rounds: tuple[float, ...]
    note: str = ""

    @classmethod
    def compare(
        cls,
        scenario: str,
        case: str,
        ours: Sequence[float],
        baseline: Sequence[float],
        *,
        unit: str,
        baseline_name: str,
        target: float | None = None,
        higher_is_better: bool = True,
        note: str = "",
    ) -> Row:
        if len(ours) != len(baseline) or not ours:
            raise ValueError("ours and baseline need the same, non-zero number of rounds")
        pairs = zip(ours, baseline, strict=True)
        ratios = [o / b if higher_is_better else b / o for o, b in pairs]
        return cls(
            scenario=scenario,
            case=case,
            ours=statistics.median(ours),
            baseline=statistics.median(baseline),
            unit=unit,
            ratio=statistics.median(ratios),
            ratio_min=min(ratios),
            ratio_max=max(ratios),
            target=target,
            baseline_name=baseline_name,
            higher_is_better=higher_is_better,
            ours_rounds=tuple(ours),
            baseline_rounds=tuple(baseline),
            note=note,
        )

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "case": self.case,
            "ours": self.ours,
            "baseline": self.baseline,
            "unit": self.unit,
            "ratio": self.ratio,
            "target": self.target,
            "pass": self.passed,
            "ratio_min": self.ratio_min,
            "ratio_max": self.ratio_max,
            "better": "higher" if self.higher_is_better else "lower",
            "baseline_name": self.baseline_name,
            "ours_rounds": list(self.ours_rounds),
            "baseline_rounds": list(self.baseline_rounds),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    run: Callable[[Budget], list[Row]]
