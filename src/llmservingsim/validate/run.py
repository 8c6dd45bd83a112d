"""Simulate every distinct scenario of the reference file once and compare, row by row."""

from __future__ import annotations

import fnmatch
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError, UserError
from llmservingsim.metrics.request_log import RequestRecord
from llmservingsim.simulation import simulate
from llmservingsim.validate.reference import (
    FAMILIES,
    METRICS,
    UNIT_FACTORS,
    is_verified,
    read_reference,
    unit_of,
)
from llmservingsim.validate.scenario import Scenario, scenario_for


@dataclass(frozen=True)
class Comparison:
    row: dict[str, str]
    scenario: Scenario
    family: str
    unit: str
    measured: float
    simulated: float | None

    @property
    def verified(self) -> bool:
        return is_verified(self.row)

    @property
    def error_pct(self) -> float | None:
        if self.simulated is None or self.measured == 0:
            return None
        return 100.0 * (self.simulated - self.measured) / self.measured


@dataclass(frozen=True)
class Skipped:
    row: dict[str, str]
    reason: str


@dataclass(frozen=True)
class RunInfo:
    wall_s: float
    summary: dict[str, Any]


@dataclass
class Validation:
    reference: Path
    compared: list[Comparison] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    runs: dict[tuple[str, ...], RunInfo] = field(default_factory=dict)

    def errors(self, family: str | None = None, verified_only: bool = False) -> list[float]:
        return [
            abs(c.error_pct)
            for c in self.compared
            if c.error_pct is not None
            and (family is None or c.family == family)
            and (c.verified or not verified_only)
        ]

    def median_abs_error(self, family: str | None = None, verified_only: bool = False) -> float:
        values = self.errors(family, verified_only)
        return statistics.median(values) if values else float("nan")

    def max_abs_error(self, family: str | None = None, verified_only: bool = False) -> float:
        values = self.errors(family, verified_only)
        return max(values) if values else float("nan")

    def families(self) -> list[str]:
        present = {c.family for c in self.compared}
        return [f for f in FAMILIES if f in present]


def _simulated_values(
    result_summary: dict[str, Any], records: Iterable[RequestRecord]
) -> dict[str, float]:
    """summary.json values by dotted name, plus the token-weighted TPOT (vLLM's
    ``sum(time_per_output_token) / generation_tokens``: total decode time over decode tokens)."""
    values: dict[str, float] = {}
    for key, value in result_summary.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values[key] = float(value)
        elif isinstance(value, dict):
            for stat, v in value.items():
                if isinstance(v, int | float):
                    values[f"{key}.{stat}"] = float(v)
    multi = [r for r in records if r.status == "finished" and r.output_tokens > 1]
    decode_tokens = sum(r.output_tokens - 1 for r in multi)
    if decode_tokens:
        values["tpot_token_weighted"] = sum(r.e2e - r.ttft for r in multi) / decode_tokens
    return values


def _simulate(scenario: Scenario) -> tuple[dict[str, Any], dict[str, float], float]:
    """Run with the optional settings; without them (noted) if the simulator rejects them."""
    attempts = [scenario.optional, []] if scenario.optional else [[]]
    for optional in attempts:
        try:
            cfg = load_config(None, [*scenario.overrides, *optional])
            start = time.perf_counter()
            result = simulate(cfg)
            wall = time.perf_counter() - start
        except ConfigError as exc:
            if optional:
                scenario.notes.append(f"not simulated: {', '.join(optional)} ({exc})")
                continue
            raise
        return result.summary, _simulated_values(result.summary, result.metrics.records), wall
    raise AssertionError("unreachable")


def selected(row_id: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(row_id, p) for p in patterns)


def validate(
    reference: Path,
    patterns: list[str] | None = None,
    progress: Callable[[int, int, Scenario], None] | None = None,
) -> Validation:
    """Compare every selected row (``patterns``: shell-style globs on the row id)."""
    rows = read_reference(reference)
    chosen = [r for r in rows if selected(r["id"], patterns or [])]
    if not chosen:
        raise UserError(f"--scenarios {' '.join(patterns or [])}: no row id of {reference} matches")
    data_dir = reference.parent.parent
    out = Validation(reference)
    scenarios: dict[tuple[str, ...], Scenario] = {}
    plan: list[tuple[dict[str, str], tuple[str, ...]]] = []
    for row in chosen:
        scenario = scenario_for(row, data_dir, rows)
        if isinstance(scenario, str):
            out.skipped.append(Skipped(row, scenario))
            continue
        scenarios.setdefault(scenario.key, scenario)
        plan.append((row, scenario.key))

    values: dict[tuple[str, ...], dict[str, float] | str] = {}
    for index, (key, scenario) in enumerate(scenarios.items()):
        if progress is not None:
            progress(index, len(scenarios), scenario)
        try:
            summary, sim_values, wall = _simulate(scenario)
        except UserError as exc:  # not yet supported / does not fit: the simulator says why
            values[key] = str(exc)
            continue
        values[key] = sim_values
        out.runs[key] = RunInfo(wall, summary)

    for row, key in plan:
        got = values[key]
        if isinstance(got, str):
            out.skipped.append(Skipped(row, got))
            continue
        family, source = METRICS[row["metric"]]
        unit = unit_of(row)
        factor = UNIT_FACTORS.get(unit.lower())
        if factor is None:
            out.skipped.append(Skipped(row, f"unit '{unit}' not understood"))
            continue
        raw = got.get(source)
        simulated = None if raw is None else raw * factor
        out.compared.append(
            Comparison(row, scenarios[key], family, unit, float(row["value"]), simulated)
        )
    return out
