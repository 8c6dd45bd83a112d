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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmservingsim.calibrate.arrays import OpArrays, ape
from llmservingsim.calibrate.fit import GEMM_PARAMS, _gemm_time, fit_gemm
from llmservingsim.hardware.backends.kernel_db import ENGINES, table_versions
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import DeviceSpec, kernel_compute_dtype
from llmservingsim.model.fusion import act_quant

BANDS_T = tuple[tuple[int, int], ...]
BANDS: BANDS_T = ((1, 16), (64, 256), (512, 1024), (2048, 4096), (8192, 16384))

SERVING_NK = (1024, 32768)  # n and k of the GEMMs of served models (as §7d compares)
TABLE = "gemm_perf.parquet"
# GEMM curve (bf16's, or an efficiency.dtype_gemm key) -> the table's gemm_dtype (fp8:
# per-tensor scaled W8A8; fp8_block: 128-block scaled weights, 1x128-group scaled activations;
# fp4: NVFP4)
TABLE_MODES = {"bf16": "bfloat16", "fp8": "fp8", "fp8_block": "fp8_block", "fp4": "nvfp4"}
# compute dtype (kernel_compute_dtype of a curve) -> bytes of its weights and activations
OPERAND_BYTES = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5}
DTYPE_PARAMS = ("compute_max", "compute_half_m", "kernel_launch_us")  # efficiency.dtype_gemm
# A table whose smallest-m kernels take this many times the other engines' (median over the
# shapes they share) is left out of a pooled fit: it timed a launch-bound path (a Triton
# kernel launched from Python outside a CUDA graph), not the kernel the engine serves with.
LAUNCH_BOUND_RATIO = 3.0
SMALL_M = 16


@dataclass(frozen=True)
class GemmTableFit:
    params: dict[str, float]  # the four GEMM_PARAMS
    mape: float  # in-sample, all tables
    points: int
    tables: list[str]  # "engine version" of each table used
    per_table: dict[str, float] = field(default_factory=dict)  # in-sample MAPE per table
    held_out: dict[str, float] = field(default_factory=dict)  # table -> MAPE fitted without it
    dtype: str = "bf16"
    dropped: int = 0  # rows faster than the simulator's own activation-quantization kernel


def newest_tables(system_dir: Path, engines: Iterable[str] = ENGINES) -> list[Path]:
    """The newest ``gemm_perf.parquet`` of each engine under ``<system>/gemm``."""
    out: list[Path] = []
    for engine in engines:
        folder = system_dir / "gemm" / engine
        versions = table_versions(folder, TABLE)
        if versions:
            out.append(folder / versions[-1] / TABLE)
    return out


def table_label(path: Path) -> str:
    return f"{path.parent.parent.name} {path.parent.name}"


def fastest_rows(
    path: Path, mode: str, keep: Callable[[int, int, int], bool]
) -> dict[tuple[int, int, int], float]:
    """(m, n, k) -> latency (ms) of the ``mode`` rows of one table that ``keep`` accepts; a
    shape measured twice (several kernels) keeps the fastest, as the engine would pick it."""
    import pyarrow.parquet as pq

    cols = pq.read_table(path, columns=["gemm_dtype", "m", "n", "k", "latency"]).to_pydict()
    best: dict[tuple[int, int, int], float] = {}
    rows = zip(cols["gemm_dtype"], cols["m"], cols["n"], cols["k"], cols["latency"], strict=True)
    for row_mode, m, n, k, latency_ms in rows:
        if row_mode == mode and latency_ms > 0 and keep(int(m), int(n), int(k)):
            key = (int(m), int(n), int(k))
            best[key] = min(float(latency_ms), best.get(key, float("inf")))
    return best


def gemm_points(
    paths: list[Path], dtype: str = "bf16", device: DeviceSpec | None = None
) -> tuple[OpArrays, int]:
    """The serving-shape rows of ``paths`` in ``dtype``'s table mode as GEMM ops (``model`` =
    the table's label), and how many rows were dropped.

    FLOPs and bytes are those of model/ops.py's GEMM: 2·m·n·k; the input activations (at the
    operand width: W8A8 / W4A4 GEMMs read them quantized), the 16-bit output and the weights.
    Rows measured twice in one table (several kernels) keep the fastest, as the engine would
    pick it.

    Quantized modes: AIConfigurator times the engine's whole ``Linear.forward`` on a bf16
    input, so its fp8 / nvfp4 rows include the activation-quantization kernel that runs
    before the GEMM (calibration.md §7c). The simulator times that kernel as its own
    ``act_quant`` op (where the engine does not fuse it into the producer), so its time here
    — the roofline's own, on ``device`` — is taken off each row, and the curve fits the GEMM
    alone. Rows not longer than it are dropped (none in the shipped tables).
    """
    mode = TABLE_MODES[dtype]
    operand = OPERAND_BYTES[kernel_compute_dtype(dtype)]
    quantized = operand < 2.0
    if quantized and device is None:
        raise ValueError(f"gemm_points: dtype {dtype} needs the device (activation quantization)")
    quant_backend = (
        RooflineBackend(device, kernel_compute_dtype(dtype))
        if quantized and device is not None
        else None
    )
    m_, n_, k_, s_, label_ = [], [], [], [], []
    dropped = 0
    lo, hi = SERVING_NK
    for path in paths:
        best = fastest_rows(path, mode, lambda m, n, k: lo <= n <= hi and lo <= k <= hi)
        label = table_label(path)
        for (rows_m, cols_n, depth_k), latency_ms in sorted(best.items()):
            seconds = latency_ms * 1e-3
            if quant_backend is not None:
                seconds -= quant_backend.time(act_quant(rows_m, depth_k, 2.0, operand))
                if seconds <= 0.0:
                    dropped += 1
                    continue
            m_.append(rows_m)
            n_.append(cols_n)
            k_.append(depth_k)
            s_.append(seconds)
            label_.append(label)
    m, n, k = (np.array(v, dtype=float) for v in (m_, n_, k_))
    count = len(s_)
    ops = OpArrays(
        name=np.full(count, "gemm"),
        kind=np.full(count, "gemm"),
        m=m,
        flops=2.0 * m * n * k,
        bytes=m * k * operand + m * n * 2.0 + n * k * operand,
        seconds=np.array(s_, dtype=float),
        model=np.array(label_, dtype=str),
        row=np.array(label_, dtype=str),
        sixteen=np.zeros(count, dtype=bool),
    )
    return ops, dropped


def launch_bound_tables(paths: list[Path], dtype: str) -> dict[Path, float]:
    """The tables of ``paths`` whose ``dtype`` kernels at m <= SMALL_M take more than
    LAUNCH_BOUND_RATIO times the other tables' (median over the (m, n, k) they all measured),
    with that ratio. Such a table measured a launch-bound path; a pooled fit leaves it out."""
    mode = TABLE_MODES[dtype]
    small: dict[Path, dict[tuple[int, int, int], float]] = {}
    for path in paths:
        best = fastest_rows(path, mode, lambda m, n, k: m <= SMALL_M)
        if best:
            small[path] = best
    out: dict[Path, float] = {}
    if len(small) < 3:  # with two tables neither is the odd one out
        return out
    shared = set.intersection(*(set(t) for t in small.values()))
    if not shared:
        return out
    for path, table in small.items():
        others = [t for p, t in small.items() if p != path]
        ratios = [table[key] / float(np.median([t[key] for t in others])) for key in shared]
        ratio = float(np.median(ratios))
        if ratio > LAUNCH_BOUND_RATIO:
            out[path] = ratio
    return out


def gemm_mape(params: dict[str, float], ops: OpArrays, peak: float, bandwidth: float) -> float:
    return float(ape(_gemm_time(params, ops, peak, bandwidth), ops.seconds).mean())


def fit_gemm_tables(
    device: DeviceSpec,
    paths: list[Path],
    fix: dict[str, float] | None = None,
    dtype: str = "bf16",
) -> GemmTableFit | None:
    """The device's GEMM parameters for ``dtype`` fitted on ``paths``, those in ``fix`` held
    (None when the tables have no usable rows). bf16 fits the top-level curve; fp8 / fp4 fit
    their ``efficiency.dtype_gemm`` entry, as fractions of their own peak."""
    ops, dropped = gemm_points(paths, dtype, device)
    if len(ops) == 0:
        return None
    fix = fix or {}
    weight_bytes = OPERAND_BYTES[kernel_compute_dtype(dtype)]
    peak, bandwidth = device.peak_flops(kernel_compute_dtype(dtype)), device.memory_bandwidth

    def fit(points: OpArrays) -> tuple[dict[str, float], float]:
        return fit_gemm(points, peak, bandwidth, device.efficiency, fix, weight_bytes)

    params, mape = fit(ops)
    labels = sorted(set(ops.model.tolist()))
    per_table = {
        label: gemm_mape(params, ops.where(ops.model == label), peak, bandwidth) for label in labels
    }
    held_out: dict[str, float] = {}
    if len(labels) > 1:
        for label in labels:
            held, _ = fit(ops.where(ops.model != label))
            held_out[label] = gemm_mape(held, ops.where(ops.model == label), peak, bandwidth)
    return GemmTableFit(
        params={name: float(params[name]) for name in GEMM_PARAMS},
        mape=mape,
        points=len(ops),
        tables=labels,
        per_table=per_table,
        held_out=held_out,
        dtype=dtype,
        dropped=dropped,
    )


def band_ratios(
    params: dict[str, float], ops: OpArrays, peak: float, bandwidth: float, bands: BANDS_T
) -> list[float]:
    """Median predicted / measured time of ``ops`` per band of m (NaN for an empty band)."""
    ratio = _gemm_time(params, ops, peak, bandwidth) / ops.seconds
    out: list[float] = []
    for lo, hi in bands:
        inside = ratio[(ops.m >= lo) & (ops.m <= hi)]
        out.append(float(np.median(inside)) if len(inside) else float("nan"))
    return out
