"""Least-squares fits of the roofline efficiency parameters, one parameter group at a time.

Groups are independent because each parameter only changes the time of its own kind of op:

* ``gemm``: compute_max, compute_half_m, memory, kernel_launch_us (GEMM points; ``memory`` is
  the weight-streaming bandwidth fraction, shared with decode attention);
* ``memory_op:<name>``: efficiency, launch_us and min_rows of one elementwise kernel;
* ``attention_prefill``: attention_compute (memory and launch from the GEMM group);
* ``step_cpu``: iteration_overhead_us and per_seq_overhead_us (native ``step_cpu`` rows).

Residuals are log(predicted / measured), so every point weighs by its relative error whatever
its size. A group whose best fit still misses its points by more than ``max_mape`` is not used
(the base value stays): the roofline does not describe those measurements, and a number fitted
to them anyway would be wrong everywhere else (calibration.md §6 has the one such table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from llmservingsim.calibrate.arrays import Floats, OpArrays, ape
from llmservingsim.hardware.device import DeviceSpec, Efficiency, MemoryOpEfficiency

GEMM_PARAMS = ("compute_max", "compute_half_m", "memory", "kernel_launch_us")
_GEMM_BOUNDS = {
    "compute_max": (0.02, 1.0),
    "compute_half_m": (0.0, 8192.0),
    "memory": (0.02, 1.0),
    "kernel_launch_us": (0.0, 200.0),
}
# Physical sanity bound on compute_half_m (see half_m_for_floor): a GEMV reads each weight once
# for 2 FLOPs and is memory bound by one to two orders of magnitude on any GPU, but the
# saturating curve gives every GEMM a compute floor as M → 0. Left free, fits on real profiles
# put that floor at 0.6-0.7 × the memory time (the curve bends to follow tile effects at
# M ≈ 100-500), which would make decode GEMMs compute bound on a device with more bandwidth.
# Capping it at 0.5 keeps M = 1 memory bound even at twice the bandwidth; on the Vidur tables
# it costs under 1 point of GEMM MAPE (docs/calibration.md).
MAX_SMALL_M_FLOOR = 0.5
_FLOOR_STARTS = (0.05, 0.2, 0.45)
_MIN_ROWS_STARTS = (1.0, 32.0, 256.0)


@dataclass(frozen=True)
class GroupFit:
    group: str
    points: int
    params: dict[str, float]
    mape: float  # of the fitted parameters on the group's own points
    accepted: bool
    note: str = ""


@dataclass
class FitResult:
    efficiency: Efficiency
    groups: list[GroupFit] = field(default_factory=list)


def _solve(
    residual: Callable[[Floats], Floats],
    start: Floats,
    lower: Floats,
    upper: Floats,
) -> tuple[Floats, float]:
    # Imported here, not at the top: scipy.optimize costs ~0.5 s, and the CLI imports this
    # module for every command (`calibrate` is registered with the others).
    from scipy.optimize import least_squares

    result = least_squares(residual, start, bounds=(lower, upper), x_scale="jac")
    return np.asarray(result.x, dtype=float), float(result.cost)


def _gemm_time(params: dict[str, float], ops: OpArrays, peak: float, bandwidth: float) -> Floats:
    eta = params["compute_max"] * ops.m / (ops.m + params["compute_half_m"])
    compute = ops.flops / (peak * eta)
    memory = ops.bytes / (bandwidth * params["memory"])
    return np.maximum(compute, memory) + params["kernel_launch_us"] * 1e-6


def half_m_for_floor(
    floor: float,
    peak: float,
    bandwidth: float,
    params: dict[str, float],
    weight_bytes: float = 2.0,
) -> float:
    """compute_half_m at which a GEMM's compute time, as M → 0, is ``floor`` × its memory time.

    With η_c = compute_max·M/(M + half_m) the compute time of 2·M·N·K FLOPs tends to
    2·N·K·half_m / (peak·compute_max), and weight streaming takes ``weight_bytes``·N·K /
    (BW·memory) (2 bytes per bf16 weight, 1 per fp8, 0.5 per fp4).
    """
    return floor * (peak / bandwidth) * params["compute_max"] / params["memory"] * weight_bytes / 2


def fit_gemm(
    ops: OpArrays,
    peak: float,
    bandwidth: float,
    base: Efficiency,
    fix: dict[str, float],
    weight_bytes: float = 2.0,
) -> tuple[dict[str, float], float]:
    """GEMM parameters (those not in ``fix``).

    compute_half_m is fitted through the small-M compute floor it implies, bounded by
    :data:`MAX_SMALL_M_FLOOR`; several starts because the floor is not convex.
    """
    fixed = {name: fix[name] for name in GEMM_PARAMS if name in fix}
    free = [name for name in GEMM_PARAMS if name not in fixed]
    bounds = {**_GEMM_BOUNDS, "compute_half_m": (0.0, MAX_SMALL_M_FLOOR)}
    lower = np.array([bounds[n][0] for n in free])
    upper = np.array([bounds[n][1] for n in free])
    log_measured = np.log(ops.seconds)

    def unpack(x: Floats) -> dict[str, float]:
        params = {**fixed, **dict(zip(free, (float(v) for v in x), strict=True))}
        if "compute_half_m" in free:  # x holds the floor, not half_m itself
            params["compute_half_m"] = half_m_for_floor(
                params["compute_half_m"], peak, bandwidth, params, weight_bytes
            )
        return params

    def residual(x: Floats) -> Floats:
        return np.log(_gemm_time(unpack(x), ops, peak, bandwidth)) - log_measured

    best: tuple[Floats, float] | None = None
    for floor in _FLOOR_STARTS:
        guess = {"compute_max": 0.7, "compute_half_m": floor, "memory": 0.8}
        guess["kernel_launch_us"] = 5.0
        start = np.clip(np.array([guess[n] for n in free]), lower, upper)
        x, cost = _solve(residual, start, lower, upper)
        if best is None or cost < best[1]:
            best = (x, cost)
        if "compute_half_m" not in free:
            break
    assert best is not None
    params = unpack(best[0])
    return params, float(ape(_gemm_time(params, ops, peak, bandwidth), ops.seconds).mean())


def fit_memory_op(ops: OpArrays, bandwidth: float) -> tuple[MemoryOpEfficiency, float]:
    """Efficiency, launch and min_rows of one kernel (MemoryOpEfficiency's formula)."""
    log_measured = np.log(ops.seconds)
    rows = np.maximum(ops.m, 1.0)
    per_row = ops.bytes / rows

    def model(x: Floats) -> Floats:
        padded = per_row * np.maximum(rows, x[2])
        return np.asarray(padded / (bandwidth * x[0]) + x[1] * 1e-6, dtype=float)

    best: tuple[Floats, float] | None = None
    for min_rows in _MIN_ROWS_STARTS:
        x, cost = _solve(
            lambda x: np.log(model(x)) - log_measured,
            np.array([0.6, 2.0, min_rows]),
            np.array([0.01, 0.0, 1.0]),
            np.array([1.0, 200.0, 1e5]),
        )
        if best is None or cost < best[1]:
            best = (x, cost)
    assert best is not None
    x = best[0]
    tuned = MemoryOpEfficiency(efficiency=float(x[0]), launch_us=float(x[1]), min_rows=float(x[2]))
    return tuned, float(ape(model(x), ops.seconds).mean())


def fit_attention_prefill(
    ops: OpArrays, peak: float, bandwidth: float, eff: Efficiency
) -> tuple[float, float]:
    """attention_compute with the GEMM group's memory and launch."""
    memory = ops.bytes / (bandwidth * eff.memory)
    launch = eff.kernel_launch_us * 1e-6

    def model(x: Floats) -> Floats:
        return np.asarray(np.maximum(ops.flops / (peak * x[0]), memory) + launch, dtype=float)

    x, _ = _solve(
        lambda x: np.log(model(x)) - np.log(ops.seconds),
        np.array([0.5]),
        np.array([0.005]),
        np.array([1.0]),
    )
    return float(x[0]), float(ape(model(x), ops.seconds).mean())


def fit_step_cpu(ops: OpArrays) -> tuple[float, float, float]:
    """Host time per engine step = iteration_overhead + per_seq_overhead · sequences (µs)."""

    def model(x: Floats) -> Floats:
        return np.asarray((x[0] + x[1] * ops.m) * 1e-6, dtype=float)

    x, _ = _solve(
        lambda x: np.log(np.maximum(model(x), 1e-12)) - np.log(ops.seconds),
        np.array([100.0, 1.0]),
        np.array([0.0, 0.0]),
        np.array([1e6, 1e4]),
    )
    return float(x[0]), float(x[1]), float(ape(model(x), ops.seconds).mean())


def fit_efficiency(
    device: DeviceSpec,
    dtype: str,
    ops: OpArrays,
    base: Efficiency,
    fix: dict[str, float] | None = None,
    max_mape: float = 25.0,
) -> FitResult:
    """Every parameter group the points allow; the rest stays at ``base``."""
    fix = dict(fix or {})
    peak = device.peak_flops(dtype)
    bandwidth = device.memory_bandwidth
    eff = base.model_copy(update={k: v for k, v in fix.items() if k in Efficiency.model_fields})
    result = FitResult(eff)

    def gate(group: str, n: int, params: dict[str, float], mape: float) -> bool:
        ok = mape <= max_mape
        note = "" if ok else f"fit MAPE {mape:.0f}% > {max_mape:g}%: not used, base values kept"
        result.groups.append(GroupFit(group, n, params, mape, ok, note))
        return ok

    gemm = ops.of_kind("gemm")
    if device.gemm_dtype(dtype) != "bf16":
        # GEMMs a quantized checkpoint keeps in 16 bits (its LM head, router) run the bf16
        # curve, not the one fitted here
        gemm = gemm.where(~gemm.sixteen)
    if len(gemm):
        params, mape = fit_gemm(gemm, peak, bandwidth, eff, fix)
        if gate("gemm", len(gemm), params, mape):
            eff = eff.model_copy(update=params)

    tuned_ops = dict(eff.memory_ops)
    memory_ops = ops.of_kind("memory")
    for name in sorted(set(memory_ops.name.tolist())):
        points = memory_ops.where(memory_ops.name == name)
        tuned, mape = fit_memory_op(points, bandwidth)
        if gate(f"memory_op:{name}", len(points), tuned.model_dump(), mape):
            tuned_ops[name] = tuned
    eff = eff.model_copy(update={"memory_ops": tuned_ops})

    prefill = ops.of_kind("attention_prefill")
    if len(prefill) and "attention_compute" not in fix:
        value, mape = fit_attention_prefill(prefill, peak, bandwidth, eff)
        if gate("attention_prefill", len(prefill), {"attention_compute": value}, mape):
            eff = eff.model_copy(update={"attention_compute": value})

    cpu = ops.of_kind("cpu")
    if len(cpu):
        step, per_seq, mape = fit_step_cpu(cpu)
        params = {"iteration_overhead_us": step, "per_seq_overhead_us": per_seq}
        if gate("step_cpu", len(cpu), params, mape):
            eff = eff.model_copy(update=params)

    result.efficiency = Efficiency.model_validate(eff.model_dump())
    return result
