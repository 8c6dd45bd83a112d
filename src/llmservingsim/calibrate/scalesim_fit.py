"""Calibrate the analytic ``systolic`` backend on SCALE-Sim results (``calibrate --scalesim``).

Every GEMM-shaped op of one prefill step and one decode step of each model is timed by SCALE-Sim
(``perf.backend: scalesim``; its probes come from the on-disk cache when a run already
simulated them) and by the analytic backend. The analytic backend has one compute parameter,
``efficiency.compute_max`` (the fraction of the ideal array rate real kernels keep); it is
scaled by the geometric mean of (analytic compute time / SCALE-Sim array time) over the ops the
analytic backend finds compute bound. The report gives the op-level error against SCALE-Sim per
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


def with_compute_max(device: DeviceSpec, value: float) -> DeviceSpec:
    efficiency = device.efficiency.model_copy(update={"compute_max": value})
    return device.model_copy(update={"efficiency": efficiency})


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
    """Fit ``compute_max`` of ``hardware`` (an NPU with a ``systolic:`` section) on SCALE-Sim's
    times of the ops of ``models`` (name, tensor parallelism)."""
    base = load_device(hardware)
    reference = ScaleSimBackend(base, dtype, cache_dir)
    analytic = SystolicBackend(base, dtype)
    points: list[OpPoint] = []
    logs: list[float] = []
    for model, tp in models:
        graph = OpGraph(load_model(model), tp, dtype, dtype)
        for step, ops in step_ops(graph, prefill, batch, context).items():
            for op in ops:
                points.append(OpPoint(model, step, op, reference.time(op), analytic.time(op)))
                array_s = reference.array_seconds(op)
                compute_s, memory_s = analytic.compute_and_memory_seconds(op)
                if array_s and compute_s > memory_s:
                    logs.append(math.log(compute_s / array_s))
    if not logs:
        raise ConfigError(
            f"calibrate --scalesim: no op of {', '.join(m for m, _ in models)} is compute bound "
            f"on {base.name!r}; nothing fits compute_max"
        )
    fitted = base.efficiency.compute_max * math.exp(sum(logs) / len(logs))
    if not 0 < fitted <= 1:
        raise ConfigError(
            f"calibrate --scalesim: the fitted compute_max {fitted:.4g} is outside (0, 1]: the "
            "analytic backend is slower than SCALE-Sim at its ideal rate"
        )
    device = with_compute_max(base, fitted)
    calibrated = SystolicBackend(device, dtype)
    points = [
        OpPoint(p.model, p.step, p.op, p.reference_s, p.analytic_s, calibrated.time(p.op))
        for p in points
    ]
    return ScaleSimCalibration(
        base, device, len(logs), points, reference.sim_calls, reference.disk_hits
    )


def calibrated_yaml(result: ScaleSimCalibration, models: list[tuple[str, int]]) -> str:
    data = result.device.model_dump(mode="json")
    data["efficiency"]["compute_max"] = round(result.device.efficiency.compute_max, 4)
    names = ", ".join(f"{m} (TP{tp})" for m, tp in models)
    data["sources"] = [
        *result.base.sources,
        f"efficiency.compute_max: llmservingsim calibrate --scalesim on {result.fitted_ops} "
        f"compute-bound GEMM-shaped ops of {names} simulated by SCALE-Sim",
    ]
    header = (
        f"# {result.device.name}: compute_max fitted on SCALE-Sim by "
        "`llmservingsim calibrate --scalesim` (docs/accelerators.md)\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
