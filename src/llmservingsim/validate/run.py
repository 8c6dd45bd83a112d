"""Simulate every distinct scenario of the reference file once and compare, row by row."""

from __future__ import annotations

import fnmatch
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError, UserError
from llmservingsim.metrics.request_log import RequestRecord
from llmservingsim.registry import unknown_name_message
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
from llmservingsim.validate.sources import (
    DEFAULT_PER_GROUP,
    SETS,
    apexplus_rows,
    blis_path,
    blis_rows,
    silicon_path,
    silicon_rows,
)


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
    skipped_sets: list[str] = field(default_factory=list)
    """Reference sets that could not be read (not installed / not found), with why."""

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


def _record_values(records: list[RequestRecord]) -> dict[str, float]:
    """Latency statistics of finished requests (summary.json names), for a subset of a run's
    requests (a stage, a closed loop's steady state), and the blis ITL: (mean E2E − mean
    TTFT) / (mean output − 1)."""
    done = [r for r in records if r.status == "finished"]
    if not done:
        return {}
    values: dict[str, float] = {}
    columns = {
        "ttft_s": [r.ttft for r in done],
        "e2e_s": [r.e2e for r in done],
        "tpot_s": [t for r in done if (t := r.tpot) is not None],
    }
    for name, column in columns.items():
        if not column:
            continue
        arr = np.asarray(column, dtype=np.float64)
        values[f"{name}.mean"] = float(arr.mean())
        for q in (50, 90, 99):
            values[f"{name}.p{q}"] = float(np.percentile(arr, q))
    mean_out = statistics.fmean(r.output_tokens for r in done)
    if mean_out > 1:
        values["itl_of_means"] = (values["e2e_s.mean"] - values["ttft_s.mean"]) / (mean_out - 1)
    return values


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
    records = list(records)
    multi = [r for r in records if r.status == "finished" and r.output_tokens > 1]
    decode_tokens = sum(r.output_tokens - 1 for r in multi)
    if decode_tokens:
        values["tpot_token_weighted"] = sum(r.e2e - r.ttft for r in multi) / decode_tokens
    whole = _record_values(records)
    if "itl_of_means" in whole:
        values["itl_of_means"] = whole["itl_of_means"]
    return values


@dataclass(frozen=True)
class Simulated:
    summary: dict[str, Any]
    values: dict[str, float]
    records: list[RequestRecord]
    wall_s: float


def _run(scenario: Scenario, sets: list[str]) -> Simulated:
    """Run with the optional settings; without them (noted) if the simulator rejects them."""
    optionals = [scenario.optional, []] if scenario.optional else [[]]
    refused: list[ConfigError] = []
    for optional in optionals:
        try:
            cfg = load_config(None, [*scenario.overrides, *optional, *sets])
            start = time.perf_counter()
            result = simulate(cfg)
            wall = time.perf_counter() - start
        except ConfigError as exc:
            refused.append(exc)
            continue
        if scenario.optional and not optional:
            why = refused[0]
            scenario.notes.append(f"not simulated: {', '.join(scenario.optional)} ({why})")
        records = list(result.metrics.records)
        values = _simulated_values(result.summary, records)
        return Simulated(result.summary, values, records, wall)
    raise refused[-1]


def _simulate(scenario: Scenario, extra: list[str]) -> Simulated:
    """The scenario's run (a fixed-concurrency point's closed loop is in its workload
    settings, validate/scenario.py CLIENTS) with ``extra`` settings."""
    sets = [*extra]
    if any(s.replace(" ", "") == "perf.backend=kernel_db" for s in extra):
        # the row's engine's tables; a device without tables keeps the roofline (counted)
        sets = [
            f"perf.kernel_db.engine={scenario.engine_name}",
            "perf.kernel_db.fallback=roofline",
            *extra,
        ]
    return _run(scenario, sets)


def selected(row_id: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(row_id, p) for p in patterns)


def _rows(
    reference: Path | None,
    sets: tuple[str, ...],
    data_dir: Path | None,
    per_group: int | None,
    skipped_sets: list[str],
) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    if "published" in sets:
        if reference is None:
            skipped_sets.append("published: no reference file")
        else:
            for row in read_reference(reference):
                row.setdefault("set", "published")
                rows.append(row)
    if "aiconfigurator" in sets:
        path = silicon_path()
        if path is None:
            skipped_sets.append("aiconfigurator: aiconfigurator-core not installed")
        else:
            rows += silicon_rows(path, per_group)
    if "blis" in sets:
        path = None if data_dir is None else blis_path(data_dir)
        if path is None:
            skipped_sets.append("blis: reference/blis_trainval/groundtruth.csv not found")
        else:
            rows += blis_rows(path)
    if "apexplus" in sets:
        apex = [] if data_dir is None else apexplus_rows(data_dir)
        if not apex:
            skipped_sets.append("apexplus: traces/replay not found in the shared data folder")
        rows += apex
    return rows


def validate(
    reference: Path | None,
    patterns: list[str] | None = None,
    progress: Callable[[int, int, Scenario], None] | None = None,
    *,
    sets: tuple[str, ...] = ("published",),
    extra: list[str] | None = None,
    per_group: int | None = DEFAULT_PER_GROUP,
    data_dir: Path | None = None,
) -> Validation:
    """Compare every selected row (``patterns``: shell-style globs on the row id) of the
    reference ``sets`` (validate/sources.py); ``extra``: settings added to every run."""
    for name in sets:
        if name not in SETS:
            raise UserError(unknown_name_message("reference set", name, SETS))
    if data_dir is None and reference is not None:
        data_dir = reference.parent.parent
    skipped_sets: list[str] = []
    rows = _rows(reference, sets, data_dir, per_group, skipped_sets)
    chosen = [r for r in rows if selected(r["id"], patterns or [])]
    if not chosen:
        where = ", ".join(sets)
        raise UserError(f"--scenarios {' '.join(patterns or [])}: no row id of {where} matches")
    out = Validation(reference or Path("-"), skipped_sets=skipped_sets)
    scenarios: dict[tuple[str, ...], Scenario] = {}
    plan: list[tuple[dict[str, str], tuple[str, ...]]] = []
    for row in chosen:
        scenario = scenario_for(row, data_dir or Path("."), rows)
        if isinstance(scenario, str):
            out.skipped.append(Skipped(row, scenario))
            continue
        scenarios.setdefault(scenario.key, scenario)
        plan.append((row, scenario.key))

    runs: dict[tuple[str, ...], Simulated | str] = {}
    for index, (key, scenario) in enumerate(scenarios.items()):
        if progress is not None:
            progress(index, len(scenarios), scenario)
        try:
            sim = _simulate(scenario, extra or [])
        except UserError as exc:  # not yet supported / does not fit: the simulator says why
            runs[key] = str(exc)
            continue
        runs[key] = sim
        out.runs[key] = RunInfo(sim.wall_s, sim.summary)

    for row, key in plan:
        got = runs[key]
        if isinstance(got, str):
            out.skipped.append(Skipped(row, got))
            continue
        family, source = METRICS[row["metric"]]
        unit = unit_of(row)
        factor = UNIT_FACTORS.get(unit.lower())
        if factor is None:
            out.skipped.append(Skipped(row, f"unit '{unit}' not understood"))
            continue
        values = got.values
        if row.get("stage_window"):
            start, end = (float(x) for x in row["stage_window"].split(","))
            values = _record_values([r for r in got.records if start <= r.arrival_s < end])
        raw = values.get(source)
        simulated = None if raw is None else raw * factor
        out.compared.append(
            Comparison(row, scenarios[key], family, unit, float(row["value"]), simulated)
        )
    return out
