"""Calibrate the analytic ``systolic`` backend on SCALE-Sim results (``calibrate --scalesim``).

Every GEMM-shaped op of one prefill step and one decode step of each model is timed by SCALE-Sim
(``perf.backend: scalesim``; its probes come from the on-disk cache when a run already
simulated them) and by the analytic backend. The analytic backend has two compute parameters:
``systolic.fold_overhead_cycles`` (cycles a weight tile costs beyond streaming its rows) and
``efficiency.compute_max`` (the fraction of the ideal array rate kept). For each candidate
overhead, compute_max is scaled by the geometric mean of (analytic compute time / SCALE-Sim
array time) over the ops the analytic backend finds compute bound; the pair with the lowest
op-time MAPE against SCALE-Sim is kept. The report gives the op-level error against SCALE-Sim per
op kind before and after, so a user can sweep with the fast analytic backend and know how far
it is from the cycle-level one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmservingsim.catalog import load_device, load_model
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.scalesim import ScaleSimBackend
from llmservingsim.hardware.backends.systolic import SystolicBackend, gemm_shapes
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.ops import Op, OpGraph


@dataclass(frozen=True)
class OpPoint:
    model: str
    step: str  # prefill | decode
    op: Op
    reference_s: float  # SCALE-Sim
    analytic_s: float  # the base device YAML
    calibrated_s: float = 0.0


@dataclass
class ScaleSimCalibration:
    base: DeviceSpec
    device: DeviceSpec  # with the fitted compute_max
    fitted_ops: int
    points: list[OpPoint] = field(default_factory=list)
    sim_calls: int = 0
    disk_hits: int = 0

    def mape_by_kind(self) -> dict[str, tuple[int, float, float]]:
        """op kind → (ops, MAPE % before, MAPE % after) against SCALE-Sim; ``all`` too."""
        groups: dict[str, list[OpPoint]] = defaultdict(list)
        for point in self.points:
            groups[op_kind(point.op)].append(point)
            groups["all"].append(point)
        out = {}
        for kind, points in sorted(groups.items()):
            before = sum(abs(p.analytic_s - p.reference_s) / p.reference_s for p in points)
            after = sum(abs(p.calibrated_s - p.reference_s) / p.reference_s for p in points)
            out[kind] = (len(points), 100.0 * before / len(points), 100.0 * after / len(points))
        return out


def op_kind(op: Op) -> str:
    """Linear layers, MoE experts, LM head and the two attention kinds are reported apart."""
    if op.kind != "gemm":
        return op.kind
    if op.name == "lm_head":
        return "lm_head"
    return "moe_gemm" if op.name.startswith("moe_") else "gemm"


def step_ops(graph: OpGraph, prefill: int, batch: int, context: int) -> dict[str, list[Op]]:
    """GEMM-shaped ops of one prefill step (one sequence) and one decode step: a decoder
    layer's ops, attention and the LM head."""
    moe = graph.moe is not None
    pre = graph.layer_ops(prefill, moe) + graph.prefill_attention_ops(prefill, 0)
    pre += graph.output_ops(1)
    dec = graph.layer_ops(batch, moe) + list(graph.decode_attention_ops(batch, batch * context))
    dec += graph.output_ops(batch)
    return {
        "prefill": [op for op in pre if gemm_shapes(op)],
        "decode": [op for op in dec if gemm_shapes(op)],
    }


def with_parameters(device: DeviceSpec, compute_max: float, overhead: float) -> DeviceSpec:
    """The device with the analytic backend's two fitted parameters replaced."""
    assert device.systolic is not None
    efficiency = device.efficiency.model_copy(update={"compute_max": compute_max})
    systolic = device.systolic.model_copy(update={"fold_overhead_cycles": overhead})
    return device.model_copy(update={"efficiency": efficiency, "systolic": systolic})


def _mape(times: list[float], reference: list[float]) -> float:
    return sum(abs(t - r) / r for t, r in zip(times, reference, strict=True)) / len(reference)


def _fit_compute_max(
    device: DeviceSpec, overhead: float, ops: list[Op], array_s: list[float], dtype: str
) -> tuple[float, int]:
    """compute_max scaled by the geometric mean of (analytic compute time / SCALE-Sim array
    time) over the ops the analytic backend finds compute bound; and their count."""
    base = device.efficiency.compute_max
    analytic = SystolicBackend(with_parameters(device, base, overhead), dtype)
    logs = []
    for op, reference in zip(ops, array_s, strict=True):
        compute_s, memory_s = analytic.compute_and_memory_seconds(op)
        if reference > 0 and compute_s > memory_s:
            logs.append(math.log(compute_s / reference))
    if not logs:
        return base, 0
    return min(1.0, base * math.exp(sum(logs) / len(logs))), len(logs)


def calibrate_on_scalesim(
    hardware: str,
    models: list[tuple[str, int]],
    cache_dir: Path | None,
    *,
    prefill: int = 1024,
    batch: int = 64,
    context: int = 1024,
    dtype: str = "bf16",
) -> ScaleSimCalibration:
    """Fit the analytic backend of ``hardware`` (an NPU with a ``systolic:`` section) on
    SCALE-Sim's times of the ops of ``models`` (name, tensor parallelism): for each candidate
    ``systolic.fold_overhead_cycles`` (0 to 4 array heights, in steps of 1/32 of one), the
    geometric-mean ``compute_max``; the pair with the lowest op-time MAPE wins."""
    base = load_device(hardware)
    reference = ScaleSimBackend(base, dtype, cache_dir)
    analytic = SystolicBackend(base, dtype)
    assert base.systolic is not None
    points: list[OpPoint] = []
    array_s: list[float] = []
    for model, tp in models:
        graph = OpGraph(load_model(model), tp, dtype, dtype)
        for step, ops in step_ops(graph, prefill, batch, context).items():
            for op in ops:
                points.append(OpPoint(model, step, op, reference.time(op), analytic.time(op)))
                array_s.append(reference.array_seconds(op) or 0.0)
    ops = [p.op for p in points]
    truth = [p.reference_s for p in points]
    stride = max(1, base.systolic.rows // 32)
    best: tuple[float, float, float, int] | None = None  # (mape, compute_max, overhead, ops)
    for overhead in range(0, 4 * base.systolic.rows + 1, stride):
        compute_max, fitted_ops = _fit_compute_max(base, overhead, ops, array_s, dtype)
        if not fitted_ops:
            continue
        candidate = SystolicBackend(with_parameters(base, compute_max, overhead), dtype)
        mape = _mape([candidate.time(op) for op in ops], truth)
        if best is None or mape < best[0]:
            best = (mape, compute_max, float(overhead), fitted_ops)
    if best is None:
        raise ConfigError(
            f"calibrate --scalesim: no op of {', '.join(m for m, _ in models)} is compute bound "
            f"on {base.name!r}; nothing fits compute_max"
        )
    _, fitted_max, fitted_overhead, fitted_ops = best
    device = with_parameters(base, fitted_max, fitted_overhead)
    calibrated = SystolicBackend(device, dtype)
    points = [
        OpPoint(p.model, p.step, p.op, p.reference_s, p.analytic_s, calibrated.time(p.op))
        for p in points
    ]
    return ScaleSimCalibration(
        base, device, fitted_ops, points, reference.sim_calls, reference.disk_hits
    )


def calibrated_yaml(result: ScaleSimCalibration, models: list[tuple[str, int]]) -> str:
    data = result.device.model_dump(mode="json")
    data["efficiency"]["compute_max"] = round(result.device.efficiency.compute_max, 4)
    names = ", ".join(f"{m} (TP{tp})" for m, tp in models)
    data["sources"] = [
        *result.base.sources,
        "efficiency.compute_max and systolic.fold_overhead_cycles: llmservingsim calibrate "
        f"--scalesim on {len(result.points)} GEMM-shaped ops of {names} simulated by SCALE-Sim",
    ]
    header = (
        f"# {result.device.name}: analytic systolic parameters fitted on SCALE-Sim by "
        "`llmservingsim calibrate --scalesim` (docs/accelerators.md)\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
