"""The ``calibrate`` command's work: load, fit, measure before/after and held-out, write YAML."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from llmservingsim.calibrate.arrays import Bools, Floats, OpArrays, ape, predict
from llmservingsim.calibrate.fit import FitResult, GroupFit, fit_efficiency
from llmservingsim.calibrate.transfer import rounded
from llmservingsim.catalog import load_device
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.device import DeviceSpec, Efficiency
from llmservingsim.hardware.profiles import ProfilePoint, canonical_dtype, load_profiles

# Kernel times under this are dominated by the tables' timer resolution (Vidur rounds to 1 µs).
RESOLVED_S = 10e-6
ALL_FITTED = "all fitted ops"


@dataclass(frozen=True)
class ErrorRow:
    label: str
    points: int
    before: float  # MAPE %, base efficiency
    after: float  # MAPE %, fitted efficiency
    bias_after: float  # median (predicted / measured - 1) %


@dataclass
class CalibrationReport:
    device: DeviceSpec  # the calibrated device
    base: DeviceSpec
    dtype: str
    points: int
    models: dict[str, int]
    fit: FitResult
    errors: list[ErrorRow]
    train_model: str | None = None
    holdout: list[ErrorRow] = field(default_factory=list)
    holdout_groups: list[GroupFit] = field(default_factory=list)

    def row(self, label: str, holdout: bool = False) -> ErrorRow | None:
        rows = self.holdout if holdout else self.errors
        return next((r for r in rows if r.label == label), None)


def fitted_mask(ops: OpArrays, groups: list[GroupFit]) -> Bools:
    """Points whose time some accepted parameter group describes (decode attention has no
    parameter of its own and is only checked)."""
    used = {g.group for g in groups if g.accepted}
    mask = np.zeros(len(ops), dtype=bool)
    for group in used:
        kind, _, name = group.partition(":")
        if kind == "memory_op":
            mask |= (ops.kind == "memory") & (ops.name == name)
        else:
            mask |= ops.kind == {"step_cpu": "cpu"}.get(kind, kind)
    return mask


def _error_rows(
    device: DeviceSpec,
    dtype: str,
    ops: OpArrays,
    before: Efficiency,
    after: Efficiency,
    fitted: Bools,
    by_model: bool = False,
) -> list[ErrorRow]:
    t_before = predict(device, dtype, before, ops)
    t_after = predict(device, dtype, after, ops)
    rows: list[ErrorRow] = []

    def add(label: str, mask: Bools) -> None:
        if mask.any():
            ratio = t_after[mask] / ops.seconds[mask] - 1.0
            rows.append(
                ErrorRow(
                    label,
                    int(mask.sum()),
                    float(ape(t_before[mask], ops.seconds[mask]).mean()),
                    float(ape(t_after[mask], ops.seconds[mask]).mean()),
                    float(np.median(ratio) * 100.0),
                )
            )

    for name in sorted(set(ops.name.tolist())):
        add(name, ops.name == name)
    for kind in sorted(set(ops.kind.tolist())):
        if len(set(ops.name[ops.kind == kind].tolist())) > 1:
            add(f"all {kind}", ops.kind == kind)
    add(ALL_FITTED, fitted)
    add(f"{ALL_FITTED} ≥ {RESOLVED_S * 1e6:.0f} µs", fitted & (ops.seconds >= RESOLVED_S))
    if by_model:
        for model in sorted(set(ops.model.tolist())):
            add(f"{ALL_FITTED}: {model}", fitted & (ops.model == model))
    # Per-layer time: the points of one table row summed (what a simulated step adds up).
    rows_id, index = np.unique(ops.row, return_inverse=True)
    if len(rows_id) < len(ops):
        multi = np.bincount(index) > 1

        def per_row(values: Floats) -> Floats:
            return np.asarray(np.bincount(index, weights=values), dtype=float)

        measured = per_row(ops.seconds)
        sums_before, sums_after = per_row(t_before), per_row(t_after)
        rows.append(
            ErrorRow(
                "per-layer sum",
                int(multi.sum()),
                float(ape(sums_before[multi], measured[multi]).mean()),
                float(ape(sums_after[multi], measured[multi]).mean()),
                float(np.median(sums_after[multi] / measured[multi] - 1.0) * 100.0),
            )
        )
    return rows


def _pick_dtype(points: list[ProfilePoint], dtype: str | None) -> str:
    counts = Counter(canonical_dtype(p.dtype) for p in points)
    if dtype is None:
        return counts.most_common(1)[0][0]
    if canonical_dtype(dtype) not in counts:
        have = ", ".join(sorted(counts))
        raise ConfigError(f"--dtype {dtype}: the profiles hold no {dtype} points (have: {have})")
    return canonical_dtype(dtype)


def _pick_train_model(points: list[ProfilePoint], train_model: str | None) -> str | None:
    models = Counter(p.model for p in points)
    if train_model is not None:
        if train_model not in models:
            have = ", ".join(sorted(models))
            raise ConfigError(f"--train-model {train_model!r} is not in the profiles ({have})")
        return train_model
    if len(models) < 2:
        return None
    # The model covering the most op kinds (then: most points, first by name) trains; every
    # other one tests.
    kinds: dict[str, set[str]] = {}
    for p in points:
        kinds.setdefault(p.model, set()).add(p.op.name)
    return min(models, key=lambda m: (-len(kinds[m]), -models[m], m))


def calibrate(
    profiles: list[Path],
    hardware: str,
    dtype: str | None = None,
    fix: dict[str, float] | None = None,
    train_model: str | None = None,
    max_mape: float = 25.0,
) -> CalibrationReport:
    base = load_device(hardware)
    points = load_profiles(profiles)
    dtype = _pick_dtype(points, dtype)
    points = [p for p in points if canonical_dtype(p.dtype) == dtype]
    ops = OpArrays.from_points(points)
    fit = fit_efficiency(base, dtype, ops, base.efficiency, fix, max_mape)
    device = base.model_copy(update={"efficiency": fit.efficiency})
    models = Counter(p.model for p in points)
    report = CalibrationReport(
        device=device,
        base=base,
        dtype=dtype,
        points=len(points),
        models=dict(models),
        fit=fit,
        errors=_error_rows(
            base, dtype, ops, base.efficiency, fit.efficiency, fitted_mask(ops, fit.groups)
        ),
    )
    train = _pick_train_model(points, train_model)
    if train is not None:
        is_train = ops.model == train
        held_fit = fit_efficiency(base, dtype, ops.where(is_train), base.efficiency, fix, max_mape)
        report.train_model = train
        report.holdout_groups = held_fit.groups
        test = ops.where(~is_train)
        report.holdout = _error_rows(
            base,
            dtype,
            test,
            base.efficiency,
            held_fit.efficiency,
            fitted_mask(test, held_fit.groups),
            by_model=True,
        )
    return report


def device_yaml(report: CalibrationReport, profiles: list[Path]) -> str:
    """The base device file with the fitted ``efficiency:`` block and a note in ``sources``."""
    data = report.device.model_copy(
        update={"efficiency": rounded(report.device.efficiency)}
    ).model_dump(mode="json")
    where = ", ".join(str(p) for p in profiles)
    data["sources"] = [
        *report.base.sources,
        f"efficiency: llmservingsim calibrate on {report.points} {report.dtype} operator "
        f"points from {where}",
    ]
    header = (
        f"# {report.device.name}: efficiency fitted by `llmservingsim calibrate` "
        "(docs/calibration.md)\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
