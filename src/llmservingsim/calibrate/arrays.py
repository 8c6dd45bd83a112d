"""Columnar view of profile points and the roofline time of all of them at once.

:func:`predict` is :class:`~llmservingsim.hardware.backends.roofline.RooflineBackend` written
over numpy arrays so a least-squares fit can evaluate tens of thousands of points per step;
tests check that both give the same seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from llmservingsim.hardware.device import DeviceSpec, Efficiency, attention_dtype
from llmservingsim.hardware.profiles import ProfilePoint
from llmservingsim.model.op import is_sixteen_bit

Floats = NDArray[np.float64]
Bools = NDArray[np.bool_]
Strings = NDArray[np.str_]


@dataclass(frozen=True)
class OpArrays:
    name: Strings
    kind: Strings
    m: Floats
    flops: Floats
    bytes: Floats
    seconds: Floats
    model: Strings
    row: Strings  # points measured in the same table row (one layer at one shape) share it
    sixteen: Bools  # GEMMs a quantized checkpoint keeps in 16 bits (model/op.py)

    @classmethod
    def from_points(cls, points: list[ProfilePoint]) -> OpArrays:
        return cls(
            name=np.array([p.op.name for p in points], dtype=str),
            kind=np.array([p.op.kind for p in points], dtype=str),
            m=np.array([p.op.m for p in points], dtype=float),
            flops=np.array([p.op.flops for p in points], dtype=float),
            bytes=np.array([p.op.bytes for p in points], dtype=float),
            seconds=np.array([p.seconds for p in points], dtype=float),
            model=np.array([p.model for p in points], dtype=str),
            row=np.array([p.source for p in points], dtype=str),
            sixteen=np.array([is_sixteen_bit(p.op) for p in points], dtype=bool),
        )

    def __len__(self) -> int:
        return len(self.seconds)

    def where(self, mask: Bools) -> OpArrays:
        return OpArrays(
            self.name[mask],
            self.kind[mask],
            self.m[mask],
            self.flops[mask],
            self.bytes[mask],
            self.seconds[mask],
            self.model[mask],
            self.row[mask],
            self.sixteen[mask],
        )

    def of_kind(self, kind: str) -> OpArrays:
        return self.where(self.kind == kind)


def predict(device: DeviceSpec, dtype: str, eff: Efficiency, ops: OpArrays) -> Floats:
    """Seconds of every point with efficiencies ``eff``: the roofline backend's formula for
    kernels, the iteration timer's host overhead for ``step_cpu`` points."""
    peak = device.peak_flops(dtype)
    raw_bw = device.memory_bandwidth
    compute_max, half_m, gemm_launch_us = eff.gemm_curve(device.gemm_dtype(dtype))
    launch = np.full(len(ops), eff.kernel_launch_us * 1e-6)
    bandwidth = np.full(len(ops), raw_bw * eff.memory)
    rows = np.maximum(ops.m, 1.0)
    padded_rows = rows.copy()
    for name, tuned in eff.memory_ops.items():
        mask = (ops.name == name) & (ops.flops <= 0)
        bandwidth[mask] = raw_bw * tuned.efficiency
        launch[mask] = tuned.launch_us * 1e-6
        padded_rows[mask] = np.maximum(rows[mask], tuned.min_rows)
    memory_time = ops.bytes * (padded_rows / rows) / bandwidth
    # Attention runs at its own dtype's peak and curve (as the roofline backend): expressed
    # as a share of ``peak``.
    attention_scale = device.peak_flops(attention_dtype(dtype)) / peak
    attention_max = eff.gemm_curve(attention_dtype(dtype))[0] * attention_scale
    eta = np.full(len(ops), attention_max)
    gemm = ops.kind == "gemm"
    eta[gemm] = compute_max * ops.m[gemm] / (ops.m[gemm] + half_m)
    launch[gemm & (ops.flops > 0)] = gemm_launch_us * 1e-6
    # GEMMs kept in 16 bits: the bf16 curve at the bf16 peak (expressed as a share of ``peak``)
    sixteen = gemm & ops.sixteen
    if sixteen.any():
        max16, half16, launch16_us = eff.gemm_curve("bf16")
        scale16 = device.peak_flops("bf16") / peak
        eta[sixteen] = scale16 * max16 * ops.m[sixteen] / (ops.m[sixteen] + half16)
        launch[sixteen & (ops.flops > 0)] = launch16_us * 1e-6
    eta[ops.kind == "attention_prefill"] = eff.attention_compute * attention_max / eff.compute_max
    compute_time = np.where(ops.flops > 0, ops.flops / (peak * eta), 0.0)
    kernels = np.maximum(compute_time, memory_time) + launch
    # Host time of an engine step (``step_cpu`` rows), as perf/iteration.py charges it.
    host = (eff.iteration_overhead_us + eff.per_seq_overhead_us * ops.m) * 1e-6
    return np.asarray(np.where(ops.kind == "cpu", host, kernels), dtype=float)


def ape(predicted: Floats, measured: Floats) -> Floats:
    """Absolute percentage error of each point."""
    return np.asarray(np.abs(predicted / measured - 1.0) * 100.0, dtype=float)
