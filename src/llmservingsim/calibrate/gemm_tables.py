"""The roofline's GEMM efficiencies fitted to measured GEMM kernel tables (calibration.md §7d).

AIConfigurator (``aiconfigurator-core``, optional extra ``kerneldb``) ships, per system and
engine version, ``gemm/<engine>/<version>/gemm_perf.parquet``: the latency (ms) of the GEMM
kernel each engine runs for (m, n, k) and a dtype, measured on the device. Their bf16 rows in
the serving range 1024 <= n, k <= 32768 become GEMM points, and :func:`fit.fit_gemm` (the one
GEMM fit, also used on the Vidur profiles) fits compute_max, compute_half_m, memory and
kernel_launch_us of ``η_c(M) = compute_max · M / (M + compute_half_m)`` to them.

The newest table of each engine (vllm, sglang, trtllm) is pooled: a device file serves every
engine. Each engine's table is also held out in turn (fit on the others, MAPE on it).

The catalog (scripts/calibrate_catalog.py) holds ``memory`` at the operator-profile value:
the roofline also streams attention's KV cache and the unlisted memory-bound kernels at that
fraction, which GEMM tables do not measure, and the tables hardly identify it (on H100 holding
it moves their MAPE by 0.2 points: memory, kernel_launch_us and compute_half_m trade off at
small m).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmservingsim.calibrate.arrays import OpArrays, ape
from llmservingsim.calibrate.fit import GEMM_PARAMS, _gemm_time, fit_gemm
from llmservingsim.hardware.backends.kernel_db import ENGINES, _version_key
from llmservingsim.hardware.device import DeviceSpec

SERVING_NK = (1024, 32768)  # n and k of the GEMMs of served models (as §7d compares)
TABLE_MODE = "bfloat16"
TABLE = "gemm_perf.parquet"


@dataclass(frozen=True)
class GemmTableFit:
    params: dict[str, float]  # the four GEMM_PARAMS
    mape: float  # in-sample, all tables
    points: int
    tables: list[str]  # "engine version" of each table used
    per_table: dict[str, float] = field(default_factory=dict)  # in-sample MAPE per table
    held_out: dict[str, float] = field(default_factory=dict)  # table -> MAPE fitted without it


def newest_tables(system_dir: Path, engines: Iterable[str] = ENGINES) -> list[Path]:
    """The newest ``gemm_perf.parquet`` of each engine under ``<system>/gemm``."""
    out: list[Path] = []
    for engine in engines:
        folder = system_dir / "gemm" / engine
        if not folder.is_dir():
            continue
        versions = sorted(
            (v.name for v in folder.iterdir() if (v / TABLE).is_file()), key=_version_key
        )
        if versions:
            out.append(folder / versions[-1] / TABLE)
    return out


def table_label(path: Path) -> str:
    return f"{path.parent.parent.name} {path.parent.name}"


def gemm_points(paths: list[Path], weight_bytes: int = 2) -> OpArrays:
    """The bf16 serving-shape rows of ``paths`` as GEMM ops (``model`` = the table's label).

    FLOPs and bytes are those of model/ops.py's GEMM: 2·m·n·k; activations in and out plus
    the weights, at 2 bytes. Rows measured twice in one table (several kernels) keep the
    fastest, as the engine would pick it.
    """
    import pyarrow.parquet as pq

    m_, n_, k_, s_, label_ = [], [], [], [], []
    lo, hi = SERVING_NK
    for path in paths:
        cols = pq.read_table(path, columns=["gemm_dtype", "m", "n", "k", "latency"]).to_pydict()
        best: dict[tuple[int, int, int], float] = {}
        rows = zip(
            cols["gemm_dtype"], cols["m"], cols["n"], cols["k"], cols["latency"], strict=True
        )
        for mode, m, n, k, latency_ms in rows:
            if mode != TABLE_MODE or not (lo <= n <= hi and lo <= k <= hi) or latency_ms <= 0:
                continue
            key = (int(m), int(n), int(k))
            best[key] = min(float(latency_ms), best.get(key, float("inf")))
        label = table_label(path)
        for (m, n, k), latency_ms in sorted(best.items()):
            m_.append(m)
            n_.append(n)
            k_.append(k)
            s_.append(latency_ms * 1e-3)
            label_.append(label)
    m, n, k = (np.array(v, dtype=float) for v in (m_, n_, k_))
    count = len(s_)
    return OpArrays(
        name=np.full(count, "gemm"),
        kind=np.full(count, "gemm"),
        m=m,
        flops=2.0 * m * n * k,
        bytes=(m * k + m * n) * 2.0 + n * k * weight_bytes,
        seconds=np.array(s_, dtype=float),
        model=np.array(label_, dtype=str),
        row=np.array(label_, dtype=str),
    )


def gemm_mape(params: dict[str, float], ops: OpArrays, peak: float, bandwidth: float) -> float:
    return float(ape(_gemm_time(params, ops, peak, bandwidth), ops.seconds).mean())


def fit_gemm_tables(
    device: DeviceSpec, paths: list[Path], fix: dict[str, float] | None = None
) -> GemmTableFit | None:
    """The device's bf16 GEMM parameters fitted on ``paths``, those in ``fix`` held (None
    when the tables have no usable rows)."""
    ops = gemm_points(paths)
    if len(ops) == 0:
        return None
    fix = fix or {}
    peak, bandwidth = device.peak_flops("bf16"), device.memory_bandwidth
    params, mape = fit_gemm(ops, peak, bandwidth, device.efficiency, fix)
    labels = sorted(set(ops.model.tolist()))
    per_table = {
        label: gemm_mape(params, ops.where(ops.model == label), peak, bandwidth) for label in labels
    }
    held_out: dict[str, float] = {}
    if len(labels) > 1:
        for label in labels:
            train, test = ops.where(ops.model != label), ops.where(ops.model == label)
            held, _ = fit_gemm(train, peak, bandwidth, device.efficiency, fix)
            held_out[label] = gemm_mape(held, test, peak, bandwidth)
    return GemmTableFit(
        params={name: float(params[name]) for name in GEMM_PARAMS},
        mape=mape,
        points=len(ops),
        tables=labels,
        per_table=per_table,
        held_out=held_out,
    )
