"""The fused-MoE efficiency fitted to measured MoE kernel tables (calibration.md §7e).

AIConfigurator (``aiconfigurator-core``, optional extra ``kerneldb``) ships, per system and
engine version, ``moe/<engine>/<version>/moe_perf.parquet``: the latency (ms) of the engine's
whole fused-MoE kernel (permutation, gate/up grouped GEMM, activation, down grouped GEMM,
finalize) for a token count, an expert shape and a quantization mode, measured on the device.
The kernel_db backend puts those times in place of the simulator's gate/up + activation + down
ops; this module fits the roofline's :class:`~llmservingsim.hardware.device.MoeGemm` to them
instead, so that every device with tables gets the measured behaviour without the tables
installed.

Points: the ``balanced`` routing rows (the simulator's routing statistics are uniform, model/
moe.py) with one expert-parallel rank and the experts' intermediate split over TP <= 8, of the
mode an entry's weights run (kernel_db.table_modes: fp8 -> fp8 (per-tensor), fp8_block ->
fp8_block, fp4 -> nvfp4, mxfp4 -> w4a8_mxfp4_mxfp8 with FP4 tensor cores, else w4a16_mxfp4),
from the newest table of each engine that measured that mode. Each point is timed with
:func:`~llmservingsim.model.moe.routed_expert_ops` (the ops the simulator runs) on the
roofline with candidate parameters; ``compute``, ``memory`` and ``launch_us`` minimise the
squared log error (the dense GEMM fit's objective, calibrate/fit.py). Each engine's table is
also held out in turn.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np
import numpy.typing as npt

from llmservingsim.config import KernelDbConfig
from llmservingsim.hardware.backends.kernel_db import (
    ENGINES,
    MOE_COLUMNS,
    _by_shape,
    table_modes,
    table_versions,
)
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import (
    DeviceSpec,
    MoeDtype,
    MoeGemm,
    kernel_weights,
)
from llmservingsim.model.moe import expected_experts_touched, routed_expert_ops
from llmservingsim.model.ops import Op
from llmservingsim.model.spec import DTYPE_BYTES, activation_bytes

TABLE = "moe_perf.parquet"
MOE_KEYS: tuple[str, ...] = get_args(MoeDtype)  # the efficiency.moe_gemm keys
MAX_TP = 8  # expert-intermediate splits the fit covers (serving instances' TP)
MIN_POINTS = 100  # fewer measured kernels than this: no fit (five parameters)
MARGIN = 1.0  # points of held-out median |error| an entry must gain over the dense curve
PARAMS = ("compute", "half_dim", "memory", "half_weight_mb", "launch_us")
ROBUST_SCALE = 0.1  # log-error scale beyond which the fit's loss grows linearly, not squared

Floats = npt.NDArray[np.float64]


def weights_of(key: str) -> tuple[str, str]:
    """(weight dtype, fp8 scaling) of the experts an ``efficiency.moe_gemm`` key times."""
    if key not in MOE_KEYS:
        raise ValueError(f"no fused-MoE efficiency key {key!r} (one of {', '.join(MOE_KEYS)})")
    return kernel_weights(key)


def table_mode(key: str, device: DeviceSpec) -> str | None:
    """The MoE table mode the experts of entry ``key`` run on ``device``
    (kernel_db.table_modes)."""
    if key == "bf16":
        return "bfloat16"
    dtype, scaling = weights_of(key)
    return table_modes(dtype, KernelDbConfig(), scaling, device.fp4_tensor_cores)[1]


def engine_tables(system_dir: Path, engines: Iterable[str] = ENGINES) -> dict[str, list[Path]]:
    """Per engine, its ``moe_perf.parquet`` tables under ``<system>/moe``, newest first (a
    release may re-measure a few shapes only: kernel_db reads each shape from the newest table
    that measured it, and so does :func:`moe_points`)."""
    out: dict[str, list[Path]] = {}
    for engine in engines:
        folder = system_dir / "moe" / engine
        versions = table_versions(folder, TABLE)
        if versions:
            out[engine] = [folder / v / TABLE for v in reversed(versions)]
    return out


@dataclass(frozen=True)
class MoePoint:
    """One measured fused-MoE kernel: its ops as the simulator builds them, and its time."""

    ops: list[Op]
    tokens: int
    seconds: float
    table: str


def moe_points(tables: dict[str, list[Path]], dtype: str, mode: str) -> list[MoePoint]:
    """The usable rows (module docstring) of each engine's tables as simulator ops, labelled
    by engine and the versions read; each expert shape from the newest table that measured it,
    and a row measured twice keeps the fastest time (the engine's best kernel)."""
    import pyarrow.parquet as pq

    weight, act = DTYPE_BYTES[dtype], activation_bytes(dtype)
    columns = list(MOE_COLUMNS)

    def shapes(path: Path) -> dict[Any, Any]:
        """(hidden, inter, topk, experts, tp) -> {tokens: fastest ms} of one table."""
        cols = pq.read_table(path, columns=columns).to_pydict()
        table: dict[tuple[int, ...], dict[int, float]] = {}
        for row in zip(*(cols[c] for c in columns), strict=True):
            row_mode, tokens, hidden, inter, topk, experts, tp, ep, dist, latency_ms = row
            if row_mode != mode or dist != "balanced" or ep != 1 or not 1 <= tp <= MAX_TP:
                continue
            if latency_ms <= 0 or inter % tp or tokens < 1:
                continue
            curve = table.setdefault(
                (int(hidden), int(inter), int(topk), int(experts), int(tp)), {}
            )
            curve[int(tokens)] = min(float(latency_ms), curve.get(int(tokens), float("inf")))
        return table

    out: list[MoePoint] = []
    for engine, paths in tables.items():
        merged, used = _by_shape([(p.parent.name, p) for p in paths], shapes)
        label = f"{engine} {'+'.join(used)}"
        for (hidden, inter, topk, experts, tp), curve in sorted(merged.items()):
            for tokens, latency_ms in sorted(curve.items()):
                touched = expected_experts_touched(experts, topk, tokens)
                rows = float(tokens * min(topk, experts))
                ops = routed_expert_ops(rows, touched, hidden, inter // tp, weight, act)
                out.append(MoePoint(ops, tokens, latency_ms * 1e-3, label))
    return out


def predicted(device: DeviceSpec, key: str, params: MoeGemm, points: list[MoePoint]) -> Floats:
    """Each point's time on the roofline with ``params`` as the device's MoE entry ``key``."""
    dtype, scaling = weights_of(key)
    eff = device.efficiency
    entry = dict(eff.moe_gemm)
    entry[cast(MoeDtype, key)] = params
    spec = device.model_copy(update={"efficiency": eff.model_copy(update={"moe_gemm": entry})})
    backend = RooflineBackend(spec, dtype, None, scaling)
    return np.array([sum(backend.time(op) for op in p.ops) for p in points], dtype=float)


@dataclass(frozen=True)
class MoeTableFit:
    params: MoeGemm
    mape: float  # in-sample median |error| %, all tables
    points: int
    tables: list[str]
    mode: str
    per_table: dict[str, float] = field(default_factory=dict)
    held_out: dict[str, float] = field(default_factory=dict)  # table -> error, fit without it
    before: float = 0.0  # median |error| of the dense GEMM curve (no MoE entry)
    dense_per_table: dict[str, float] = field(default_factory=dict)  # same, per table

    @property
    def improves(self) -> bool:
        """Whether the entry carries over to engines it was not fitted on: at least two
        engines measured the mode, and with each engine's table held out in turn the fit on
        the others predicts it at least :data:`MARGIN` points better, on average over the
        engines, than the dense GEMM curve does (median |error| per table). The catalog writes
        only entries that do."""
        if len(self.held_out) < 2:
            return False
        held = sum(self.held_out.values()) / len(self.held_out)
        dense = sum(self.dense_per_table[t] for t in self.held_out) / len(self.held_out)
        return held <= dense - MARGIN


def _mape(pred: Floats, points: list[MoePoint]) -> float:
    """Median absolute percentage error (robust, as the fit: calibration.md §7e)."""
    measured = np.array([p.seconds for p in points], dtype=float)
    return float(np.median(np.abs(pred - measured) / measured) * 100.0)


def _fit(device: DeviceSpec, key: str, points: list[MoePoint]) -> MoeGemm:
    dtype, scaling = weights_of(key)
    compute_max = device.efficiency.gemm_curve(device.gemm_dtype(dtype), scaling)[0]
    lower = np.array([0.05, 0.0, 0.05, 0.0, 0.0])
    upper = np.array([min(4.0, 1.0 / compute_max), 4096.0, 1.0, 1000.0, 200.0])
    log_measured = np.log(np.array([p.seconds for p in points], dtype=float))

    def params_of(x: Floats) -> MoeGemm:
        return MoeGemm(**{name: float(v) for name, v in zip(PARAMS, x, strict=True)})

    def residual(x: Floats) -> Floats:
        logs: Floats = np.log(predicted(device, key, params_of(x), points)) - log_measured
        return logs

    # Imported here: scipy.optimize costs ~0.5 s (calibrate/fit.py's _solve does the same).
    from scipy.optimize import least_squares

    best: tuple[Floats, float] | None = None
    for start in ((0.8, 64.0, 0.8, 0.5, 10.0), (1.0, 256.0, 0.9, 2.0, 20.0)):
        # Robust loss (soft L1 beyond ~10 %): one engine's untuned kernel for a few shapes
        # (2-4x slower than the others) must not pull the curve off the typical kernel.
        result = least_squares(
            residual,
            np.clip(np.array(start), lower, upper),
            bounds=(lower, upper),
            x_scale="jac",
            loss="soft_l1",
            f_scale=ROBUST_SCALE,
        )
        if best is None or result.cost < best[1]:
            best = (np.asarray(result.x, dtype=float), float(result.cost))
    assert best is not None
    # A parameter the fit drives to its bound of 0 (no such effect in these kernels) is 0.
    return params_of(np.where(best[0] < 1e-6 * np.maximum(upper, 1.0), 0.0, best[0]))


def fit_moe_tables(device: DeviceSpec, system_dir: Path, key: str) -> MoeTableFit | None:
    """``device``'s MoE entry ``key`` (a weight format: device.MoeDtype) fitted on the tables
    under ``system_dir`` (None where no table measured its mode)."""
    mode = table_mode(key, device)
    if mode is None:
        return None
    dtype = weights_of(key)[0]
    points = moe_points(engine_tables(system_dir), dtype, mode)
    if len(points) < MIN_POINTS:
        return None
    params = _fit(device, key, points)
    labels = sorted({p.table for p in points})

    def where(label: str, inside: bool) -> list[MoePoint]:
        return [p for p in points if (p.table == label) == inside]

    per_table = {
        label: _mape(predicted(device, key, params, where(label, True)), where(label, True))
        for label in labels
    }
    held_out: dict[str, float] = {}
    if len(labels) > 1:
        for label in labels:
            others = where(label, False)
            if len(others) < MIN_POINTS:
                continue
            held = _fit(device, key, others)
            mine = where(label, True)
            held_out[label] = _mape(predicted(device, key, held, mine), mine)
    dense_per_table = {
        label: _mape(_dense_times(device, key, where(label, True)), where(label, True))
        for label in labels
    }
    return MoeTableFit(
        params=params,
        mape=_mape(predicted(device, key, params, points), points),
        points=len(points),
        tables=labels,
        mode=mode,
        per_table=per_table,
        held_out=held_out,
        before=_mape(_dense_times(device, key, points), points),
        dense_per_table=dense_per_table,
    )


def _dense_times(device: DeviceSpec, key: str, points: list[MoePoint]) -> Floats:
    """Each point's time with the expert GEMMs on the dense GEMM curve they would otherwise
    run (no MoE entry; block-scaled fp8 on the fp8_block curve where the device has one)."""
    dtype, scaling = weights_of(key)
    eff = device.efficiency.model_copy(update={"moe_gemm": {}})
    backend = RooflineBackend(device.model_copy(update={"efficiency": eff}), dtype, None, scaling)
    return np.array([sum(backend.time(op) for op in p.ops) for p in points], dtype=float)
