"""Kernel-database backend: op times from measured per-kernel tables of a serving engine.

The tables are NVIDIA AIConfigurator's (PyPI ``aiconfigurator-core``, Apache-2.0, the optional
extra ``llmservingsim[kerneldb]``): for each system (GPU), engine (vllm, sglang, trtllm) and
engine version, parquet files of measured kernel latencies under
``systems/data/<system>/<family>/<engine>/<version>/``. This backend reads them itself
(pyarrow) and interpolates; it does not call AIConfigurator's query API (90-200 µs a query).

What is timed from the tables (docs/kernel-db.md):

* GEMMs (``kind: gemm``) per quantization mode (bf16, fp8 per-tensor or block-scaled, nvfp4):
  trilinear interpolation of log(time) over log(m), log(n), log(k) between measured shapes;
  the LM head in bf16 as the engines keep it;
* prefill attention (per sequence, FlashAttention context kernels, batch 1) over the prompt
  length; a chunk after ``ctx`` cached tokens costs T(ctx + new) − T(ctx), at least T(new);
* decode attention of a batch over (batch size, mean context), bilinear in log-log;
* the fused MoE kernel (both expert GEMMs and the activation) over the token count, for the
  model's (hidden, expert intermediate, top-k, experts, MoE TP, EP), balanced routing;
* collectives of a group inside one node: all-reduce from the engine's custom all-reduce table
  or NCCL's (whichever is faster, as the engines choose), all-gather, reduce-scatter and
  all-to-all from NCCL's.

Everything else (norms, rotary, sampling, MLA's kernels, shapes outside the tables) is timed by
the roofline backend and counted per op name (``perf_fallbacks`` / ``perf_fallback_ops`` in
summary.json): the backend never extrapolates. Lookups are memoized by shape.
"""

from __future__ import annotations

import bisect
import importlib.util
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from llmservingsim.config import KernelDbConfig
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.base import PERF_BACKENDS, PerfSetup
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import DeviceSpec, kernel_format
from llmservingsim.model.moe import MOE_GATE_UP, MOE_GEMMS
from llmservingsim.model.op import is_sixteen_bit
from llmservingsim.model.ops import Op
from llmservingsim.registry import unknown_name_message

# Catalog device -> table system. Only devices that are the measured part (same chip, memory
# and clocks); an A100 40GB or an H100 PCIe is not an A100 80GB SXM / H100 SXM.
SYSTEM_OF_DEVICE: dict[str, str] = {
    "h100-sxm": "h100_sxm",
    "h200": "h200_sxm",
    "b200": "b200_sxm",
    "gb200": "gb200",
    "a100-80gb": "a100_sxm",
    "l40s": "l40s",
    "rtx-pro-6000": "rtx_pro_6000_server",
}
ENGINES = ("vllm", "sglang", "trtllm")
INSTALL_HINT = (
    "pip install 'llmservingsim[kerneldb]' (aiconfigurator-core) or set perf.kernel_db.path"
)

# Families this backend reads, and the files in them.
FAMILIES = ("gemm", "attention", "moe", "comm")
GEMM_MODE = {"bf16": "bfloat16", "fp16": "bfloat16", "fp4": "nvfp4"}
KV_MODE = {"bf16": "bfloat16", "fp16": "bfloat16", "fp8": "fp8"}
MOE_MODE = {"bf16": "bfloat16", "fp16": "bfloat16", "int4": "int4_wo"}
NCCL_OP = {
    "all_reduce": "all_reduce",
    "all_gather": "all_gather",
    "reduce_scatter": "reduce_scatter",
    "all_to_all": "alltoall",
}
COMM_ELEMENT_BYTES = 2.0  # the tables' message sizes count 16-bit elements


def _version_key(version: str) -> tuple[Any, ...]:
    """Sortable key for 0.19.0 / 1.3.0rc20 / 0.5.6.post2 / 0.1.dev19262."""
    parts: list[Any] = []
    for token in re.findall(r"\d+|[a-z]+", version.lower()):
        if token.isdigit():
            parts.append((1, int(token)))
        else:  # a pre-release tag sorts before the release it precedes
            parts.append((0 if token in ("rc", "dev", "a", "b") else 2, token))
    return tuple(parts)


def table_versions(folder: Path, name: str) -> list[str]:
    """The versions (oldest first) under ``folder`` (``<system>/<family>/<engine>``) that hold
    a table file ``name``; none where the folder is missing."""
    if not folder.is_dir():
        return []
    return sorted((v.name for v in folder.iterdir() if (v / name).is_file()), key=_version_key)


def default_tables_root() -> Path | None:
    """The ``systems`` folder of the installed aiconfigurator-core, None when not installed."""
    spec = importlib.util.find_spec("aiconfigurator_core")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "systems"
    return root if root.is_dir() else None


# system -> engine -> version -> family -> folder
Index = dict[str, dict[str, dict[str, dict[str, Path]]]]


@cache
def table_index(root: Path) -> Index:
    """Every (system, engine, version, family) folder under a ``systems`` tree."""
    index: Index = {}
    data = root / "data"
    if not data.is_dir():
        return index
    for system in sorted(os.listdir(data)):
        for family in FAMILIES:
            family_dir = data / system / family
            if not family_dir.is_dir():
                continue
            for engine in sorted(os.listdir(family_dir)):
                engine_dir = family_dir / engine
                if not engine_dir.is_dir():
                    continue
                for version in sorted(os.listdir(engine_dir)):
                    folder = engine_dir / version
                    if folder.is_dir() and any(p.suffix == ".parquet" for p in folder.iterdir()):
                        index.setdefault(system, {}).setdefault(engine, {}).setdefault(version, {})[
                            family
                        ] = folder
    return index


def installed_tables(root: Path | None = None) -> dict[str, dict[str, list[str]]]:
    """system -> engine -> versions (sorted) with kernel tables, for ``catalog backends``."""
    root = root or default_tables_root()
    if root is None:
        return {}
    index = table_index(root)
    return {
        system: {
            engine: sorted(versions, key=_version_key)
            for engine, versions in engines.items()
            if engine in ENGINES
        }
        for system, engines in index.items()
    }


def _resolve_version(system: str, engine: str, wanted: str | None, versions: list[str]) -> str:
    """The installed version a user's ``perf.kernel_db.version`` names (exact or a unique
    prefix such as 0.19 for 0.19.0); the newest one when none is given."""
    ordered = sorted(versions, key=_version_key)
    if wanted is None:
        return ordered[-1]
    if wanted in versions:
        return wanted
    prefixed = [v for v in ordered if v.startswith(wanted + ".")]
    if not prefixed and re.fullmatch(r"\d+\.\d+", wanted):
        # 0.2 may be 0.20 written as a YAML number: compare major.minor as numbers
        prefixed = [
            v
            for v in ordered
            if (mm := re.match(r"(\d+\.\d+)", v)) and float(mm.group(1)) == float(wanted)
        ]
    if len(prefixed) == 1:
        return prefixed[0]
    raise ConfigError(
        "perf.kernel_db.version: "
        + unknown_name_message(f"{engine} version on {system}", wanted, ordered)
    )


def _nearest_version(near: str, versions: list[str]) -> str:
    """The installed version nearest to an engine preset's version: the newest of its release
    line (0.5 → 0.5.14, 0.19 → 0.19.0), else the newest older one, else the oldest newer one."""
    ordered = sorted(versions, key=_version_key)
    line = [v for v in ordered if v == near or v.startswith(near + ".")]
    if line:
        return line[-1]
    older = [v for v in ordered if _version_key(v) < _version_key(near)]
    return older[-1] if older else ordered[0]


def _family_versions(
    system: str, engine: str, version: str, family: str, index: Index
) -> list[tuple[str, Path]]:
    """The folders of one family for (engine, version), in the order they serve it: this
    version's, then the older ones newest first (tables not re-measured for a release), then
    the newer ones oldest first. The first serves the family; a shape its table lacks (a
    release that re-measured only some shapes) comes from the next one that has it."""
    have = {v: fams[family] for v, fams in index[system][engine].items() if family in fams}
    key = _version_key(version)
    older = sorted((v for v in have if _version_key(v) <= key), key=_version_key, reverse=True)
    newer = sorted((v for v in have if _version_key(v) > key), key=_version_key)
    return [(v, have[v]) for v in older + newer]


def _family_version(
    system: str, engine: str, version: str, family: str, index: Index
) -> tuple[str, Path] | None:
    """The folder that serves one family for (engine, version) (:func:`_family_versions`)."""
    found = _family_versions(system, engine, version, family, index)
    return found[0] if found else None


def _by_shape(
    folders: list[tuple[str, Path]], load: Callable[[Path], dict[Any, Any]]
) -> tuple[dict[Any, Any], list[str]]:
    """One family's shape-keyed tables over its versions (:func:`_family_versions` order): each
    shape from the first version that measured it; and the versions that served any shape."""
    merged: dict[Any, Any] = {}
    used: list[str] = []
    for version, folder in folders:
        table = load(folder)
        added = [shape for shape in table if shape not in merged]
        for shape in added:
            merged[shape] = table[shape]
        if added:
            used.append(version)
    return merged, used


def _read(path: Path, columns: list[str]) -> dict[str, np.ndarray[Any, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    names = set(table.column_names)
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns if c in names}


# ----------------------------------------------------------------------------- interpolation


@dataclass
class Curve1:
    """Measured times (s) over one axis; log-log linear between points, None outside."""

    xs: list[float]  # log(x), sorted
    ys: list[float]  # log(seconds)
    exact: dict[float, float]

    @classmethod
    def of(cls, points: dict[float, float]) -> Curve1:
        xs = sorted(points)
        return cls([math.log(x) for x in xs], [math.log(points[x]) for x in xs], dict(points))

    def at(self, x: float) -> float | None:
        hit = self.exact.get(x)
        if hit is not None:
            return hit
        if x <= 0:
            return None
        lx = math.log(x)
        xs = self.xs
        if not xs or lx < xs[0] or lx > xs[-1]:
            return None
        i = bisect.bisect_left(xs, lx)
        if xs[i] == lx:
            return math.exp(self.ys[i])
        w = (lx - xs[i - 1]) / (xs[i] - xs[i - 1])
        return math.exp(self.ys[i - 1] + w * (self.ys[i] - self.ys[i - 1]))


def _bracket(grid: list[int], x: float) -> tuple[int, int] | None:
    """The grid values around x (equal when x is on the grid); None outside."""
    if not grid or x < grid[0] or x > grid[-1]:
        return None
    i = bisect.bisect_left(grid, x)
    if grid[i] == x:
        return grid[i], grid[i]
    return grid[i - 1], grid[i]


def _blend(x: float, lo: int, hi: int, t_lo: float, t_hi: float) -> float:
    """Interpolate log(time) linearly in log(x) between two grid values."""
    if lo == hi:
        return t_lo
    w = (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return math.exp((1 - w) * math.log(t_lo) + w * math.log(t_hi))


@dataclass
class Grid2:
    """Curves over the second axis for each value of the first (e.g. per (n, k): m)."""

    rows: list[int]
    curves: dict[int, Curve1]

    def at(self, row: float, x: float) -> float | None:
        b = _bracket(self.rows, row)
        if b is None:
            return None
        lo = self.curves[b[0]].at(x)
        hi = self.curves[b[1]].at(x)
        if lo is None or hi is None:
            return None
        return _blend(row, b[0], b[1], lo, hi)


def _min_points(keys: list[tuple[Any, ...]], seconds: list[float]) -> dict[tuple[Any, ...], float]:
    """Fastest measured time per key (over the kernels the engine can pick from)."""
    best: dict[tuple[Any, ...], float] = {}
    for key, s in zip(keys, seconds, strict=True):
        if s > 0 and (key not in best or s < best[key]):
            best[key] = s
    return best


# ----------------------------------------------------------------------------- tables


@dataclass
class GemmTable:
    """(n, k) -> time over m, for one quantization mode."""

    ns: list[int]
    ks: list[int]
    curves: dict[tuple[int, int], Curve1]

    @classmethod
    def load(cls, path: Path, mode: str) -> GemmTable | None:
        cols = _read(path, ["gemm_dtype", "m", "n", "k", "latency"])
        mask = cols["gemm_dtype"] == mode
        if not mask.any():
            return None
        keys = list(
            zip(
                cols["n"][mask].tolist(),
                cols["k"][mask].tolist(),
                cols["m"][mask].tolist(),
                strict=True,
            )
        )
        best = _min_points(keys, (cols["latency"][mask] * 1e-3).tolist())
        by_nk: dict[tuple[int, int], dict[float, float]] = {}
        for (n, k, m), s in best.items():
            by_nk.setdefault((n, k), {})[float(m)] = s
        curves = {nk: Curve1.of(points) for nk, points in by_nk.items()}
        return cls(sorted({n for n, _ in curves}), sorted({k for _, k in curves}), curves)

    def seconds(self, m: int, n: int, k: int) -> float | None:
        """Time of an (m, n, k) GEMM. Wider than the widest measured N (an LM head over a
        large vocabulary): the time of the GEMM split into equal column blocks that fit."""
        widest = self.ns[-1] if self.ns else 0
        if n > widest > 0:
            blocks = -(-n // widest)
            part = self._seconds(m, -(-n // blocks), k)
            return None if part is None else blocks * part
        return self._seconds(m, n, k)

    def _seconds(self, m: int, n: int, k: int) -> float | None:
        bn, bk = _bracket(self.ns, n), _bracket(self.ks, k)
        if bn is None or bk is None:
            return None
        corner: dict[tuple[int, int], float] = {}
        for nn in set(bn):
            for kk in set(bk):
                curve = self.curves.get((nn, kk))
                t = None if curve is None else curve.at(m)
                if t is None:
                    return None
                corner[(nn, kk)] = t
        lo = _blend(k, bk[0], bk[1], corner[(bn[0], bk[0])], corner[(bn[0], bk[1])])
        hi = _blend(k, bk[0], bk[1], corner[(bn[1], bk[0])], corner[(bn[1], bk[1])])
        return _blend(n, bn[0], bn[1], lo, hi)


HeadKey = tuple[int, int, int]  # (q heads, kv heads, head dim) on one rank


def _attention(path: Path, kv_mode: str, axis: str) -> dict[HeadKey, Grid2]:
    """Attention tables without sliding window or beams: per head shape, time over
    (batch, ``axis``) -- isl for context, the cached length (step) for generation."""
    cols = _read(
        path,
        [
            "batch_size",
            "isl",
            "step",
            "num_heads",
            "num_key_value_heads",
            "head_dim",
            "kv_cache_dtype",
            "window_size",
            "beam_width",
            "latency",
        ],
    )
    mask = cols["kv_cache_dtype"] == kv_mode
    if "window_size" in cols:
        mask &= cols["window_size"] == 0
    if "beam_width" in cols:
        mask &= cols["beam_width"] == 1
    keys = list(
        zip(
            cols["num_heads"][mask].tolist(),
            cols["num_key_value_heads"][mask].tolist(),
            cols["head_dim"][mask].tolist(),
            cols["batch_size"][mask].tolist(),
            cols[axis][mask].tolist(),
            strict=True,
        )
    )
    best = _min_points(keys, (cols["latency"][mask] * 1e-3).tolist())
    nested: dict[HeadKey, dict[int, dict[float, float]]] = {}
    for (h, kv, d, b, x), s in best.items():
        nested.setdefault((h, kv, d), {}).setdefault(b, {})[float(x)] = s
    return {
        head: Grid2(sorted(rows), {b: Curve1.of(points) for b, points in rows.items()})
        for head, rows in nested.items()
    }


MoeKey = tuple[int, int, int, int, int, int]  # hidden, inter, topk, experts, moe_tp, moe_ep


MOE_SHAPE = ("hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size", "moe_ep_size")
"""The columns of a ``moe_perf.parquet`` row that make its :data:`MoeKey`, in that order."""
MOE_COLUMNS = ("moe_dtype", "num_tokens", *MOE_SHAPE, "distribution", "latency")
"""The columns of a ``moe_perf.parquet`` table read here and by calibrate/moe_tables.py."""


def _moe(path: Path, mode: str) -> dict[MoeKey, Curve1]:
    cols = _read(path, list(MOE_COLUMNS))
    mask = (cols["moe_dtype"] == mode) & (cols["distribution"] == "balanced")
    keys = list(zip(*(cols[c][mask].tolist() for c in (*MOE_SHAPE, "num_tokens")), strict=True))
    best = _min_points(keys, (cols["latency"][mask] * 1e-3).tolist())
    nested: dict[MoeKey, dict[float, float]] = {}
    for (*shape, tokens), s in best.items():
        key = (shape[0], shape[1], shape[2], shape[3], shape[4], shape[5])
        nested.setdefault(key, {})[float(tokens)] = s
    return {key: Curve1.of(points) for key, points in nested.items()}


def _comm(path: Path, op_column: str | None, graph: bool | None) -> dict[tuple[str, int], Curve1]:
    """(collective, GPUs) -> time over the message size in 16-bit elements."""
    cols = _read(
        path,
        [
            "op_name",
            "kernel_source",
            "nccl_dtype",
            "allreduce_dtype",
            "num_gpus",
            "message_size",
            "latency",
        ],
    )
    n = len(cols["latency"])
    mask = np.ones(n, dtype=bool)
    for dtype_col in ("nccl_dtype", "allreduce_dtype"):
        if dtype_col in cols:
            mask &= np.isin(cols[dtype_col], ["half", "bfloat16", "float16"])
    if graph is not None and "kernel_source" in cols:
        sources = cols["kernel_source"].astype(str)
        tagged = np.char.find(np.char.lower(sources), "graph" if graph else "eager") >= 0
        if tagged.any():
            mask &= tagged
    ops = cols["op_name"][mask].tolist() if op_column else ["all_reduce"] * int(mask.sum())
    keys = list(
        zip(ops, cols["num_gpus"][mask].tolist(), cols["message_size"][mask].tolist(), strict=True)
    )
    best = _min_points(keys, (cols["latency"][mask] * 1e-3).tolist())
    nested: dict[tuple[str, int], dict[float, float]] = {}
    for (op, gpus, size), s in best.items():
        nested.setdefault((op, gpus), {})[float(size)] = s
    return {key: Curve1.of(points) for key, points in nested.items()}


@cache
def _load_gemm(path: Path, mode: str) -> GemmTable | None:
    return GemmTable.load(path, mode)


@cache
def _load_attention(path: Path, kv_mode: str, axis: str) -> dict[HeadKey, Grid2]:
    return _attention(path, kv_mode, axis)


@cache
def _load_moe(path: Path, mode: str) -> dict[MoeKey, Curve1]:
    return _moe(path, mode)


@cache
def _load_comm(path: Path, nccl: bool, graph: bool) -> dict[tuple[str, int], Curve1]:
    return _comm(path, "op_name" if nccl else None, None if nccl else graph)


def nccl_folder(root: Path, system: str) -> Path | None:
    """The system's NCCL tables: the version its system YAML names, else the newest."""
    base = root / "data" / system / "comm" / "nccl"
    if not base.is_dir():
        return None
    versions = [v for v in os.listdir(base) if (base / v / "nccl_perf.parquet").is_file()]
    if not versions:
        return None
    wanted = None
    spec = root / f"{system}.yaml"
    if spec.is_file():
        found = re.search(r"nccl_version:\s*'?([0-9.]+)", spec.read_text())
        wanted = found.group(1) if found else None
    pick = wanted if wanted in versions else max(versions, key=_version_key)
    return base / pick


# ----------------------------------------------------------------------------- backend


@dataclass
class KernelTables:
    """The tables of one (system, engine, version) for one run's dtypes."""

    system: str
    engine: str
    version: str
    sources: dict[str, str]  # family -> "engine@version" that serves it
    gemm: GemmTable | None
    head_gemm: GemmTable | None  # bf16, for the LM head
    context: dict[HeadKey, Grid2]
    generation: dict[HeadKey, Grid2]
    moe: dict[MoeKey, Curve1]
    allreduce: dict[tuple[str, int], Curve1]
    nccl: dict[tuple[str, int], Curve1]


def table_modes(
    dtype: str, options: KernelDbConfig, fp8_scaling: str, fp4_tensor_cores: bool
) -> tuple[str | None, str | None]:
    """(GEMM table mode, MoE table mode) of weights in ``dtype``; None: the tables have no
    mode for it (the roofline times those ops). fp8 weights run the per-tensor (fp8) or the
    128-block scaled (fp8_block) kernels as ``fp8_scaling`` says; MXFP4 experts run MXFP4 x
    MXFP8 kernels on a device with FP4 tensor cores (Blackwell) and weight-only (W4A16)
    kernels elsewhere."""
    if dtype == "fp8":
        fp8 = kernel_format(dtype, fp8_scaling)
        return fp8, fp8
    if dtype == "fp4":
        return GEMM_MODE["fp4"], "nvfp4" if options.fp4 == "nvfp4" else "w4a16_mxfp4"
    if dtype == "mxfp4":
        return None, "w4a8_mxfp4_mxfp8" if fp4_tensor_cores else "w4a16_mxfp4"
    return GEMM_MODE.get(dtype), MOE_MODE.get(dtype)


def load_tables(
    root: Path,
    system: str,
    options: KernelDbConfig,
    dtype: str,
    kv_dtype: str,
    fp8_scaling: str,
    fp4_tensor_cores: bool = False,
) -> KernelTables:
    index = table_index(root)
    engines = {e: versions for e, versions in index[system].items() if e in ENGINES}
    if options.engine not in engines:
        installed = sorted(engines)
        raise ConfigError(
            "perf.kernel_db.engine: "
            + unknown_name_message(
                f"engine with kernel tables on {system}", options.engine, installed
            )
        )
    versions = list(engines[options.engine])
    if options.version is None and options.nearest_to is not None:
        version = _nearest_version(options.nearest_to, versions)
    else:
        version = _resolve_version(system, options.engine, options.version, versions)
    sources: dict[str, str] = {}
    folders: dict[str, Path] = {}
    for family in FAMILIES:
        found = _family_version(system, options.engine, version, family, index)
        if found is not None:
            sources[family] = f"{options.engine}@{found[0]}"
            folders[family] = found[1]
    gemm_mode, moe_mode = table_modes(dtype, options, fp8_scaling, fp4_tensor_cores)
    kv_mode = KV_MODE.get(kv_dtype)
    gemm = head = None
    if "gemm" in folders:
        gemm_file = folders["gemm"] / "gemm_perf.parquet"
        if gemm_file.is_file():
            gemm = _load_gemm(gemm_file, gemm_mode) if gemm_mode else None
            head = _load_gemm(gemm_file, "bfloat16")
    context: dict[HeadKey, Grid2] = {}
    generation: dict[HeadKey, Grid2] = {}
    if "attention" in folders and kv_mode is not None:
        ctx_file = folders["attention"] / "context_attention_perf.parquet"
        gen_file = folders["attention"] / "generation_attention_perf.parquet"
        if ctx_file.is_file():
            context = _load_attention(ctx_file, kv_mode, "isl")
        if gen_file.is_file():
            generation = _load_attention(gen_file, kv_mode, "step")
    moe: dict[MoeKey, Curve1] = {}
    if "moe" in folders and moe_mode is not None:
        mode = moe_mode

        def moe_shapes(folder: Path) -> dict[Any, Any]:
            moe_file = folder / "moe_perf.parquet"
            return _load_moe(moe_file, mode) if moe_file.is_file() else {}

        # A release may re-measure a few MoE shapes only (TensorRT-LLM 1.3.0rc23 on H200/B200
        # holds none of DeepSeek's): the other shapes keep their older measurements.
        moe, used = _by_shape(
            _family_versions(system, options.engine, version, "moe", index), moe_shapes
        )
        if used:
            sources["moe"] = f"{options.engine}@{'+'.join(used)}"
    allreduce: dict[tuple[str, int], Curve1] = {}
    if "comm" in folders:
        ar_file = folders["comm"] / "custom_allreduce_perf.parquet"
        if ar_file.is_file():
            allreduce = _load_comm(ar_file, False, options.cuda_graphs)
    nccl: dict[tuple[str, int], Curve1] = {}
    nccl_dir = nccl_folder(root, system)
    if nccl_dir is not None:
        nccl = _load_comm(nccl_dir / "nccl_perf.parquet", True, options.cuda_graphs)
        sources["nccl"] = f"nccl@{nccl_dir.name}"
    return KernelTables(
        system,
        options.engine,
        version,
        sources,
        gemm,
        head,
        context,
        generation,
        moe,
        allreduce,
        nccl,
    )


@dataclass
class TableCollectives:
    """Collective times from the tables, for the timer's topology (network/collectives.py)."""

    tables: KernelTables
    fallbacks: Counter[str] = field(default_factory=Counter)
    lookups: int = 0
    _memo: dict[tuple[str, float, int, bool], float | None] = field(default_factory=dict)

    def collective(self, name: str, nbytes: float, count: int, intra_node: bool) -> float | None:
        self.lookups += 1
        key = (name, nbytes, count, intra_node)
        if key in self._memo:
            seconds = self._memo[key]
        else:
            seconds = self._memo[key] = self._lookup(name, nbytes, count, intra_node)
        if seconds is None:
            self.fallbacks[name] += 1
        return seconds

    def _lookup(self, name: str, nbytes: float, count: int, intra_node: bool) -> float | None:
        if not intra_node:  # the tables are single-node measurements
            return None
        elements = nbytes / COMM_ELEMENT_BYTES
        found: list[float] = []
        nccl = self.tables.nccl.get((NCCL_OP[name], count))
        if nccl is not None:
            t = nccl.at(elements)
            if t is not None:
                found.append(t)
        if name == "all_reduce":
            custom = self.tables.allreduce.get(("all_reduce", count))
            if custom is not None:
                t = custom.at(elements)
                if t is not None:
                    found.append(t)
        return min(found) if found else None


@PERF_BACKENDS.register("kernel_db")
class KernelDbBackend:
    """Op times from measured kernel tables; the roofline for the rest, counted."""

    def __init__(
        self,
        device: DeviceSpec,
        dtype: str,
        tables: KernelTables | None,
        fallback: RooflineBackend | None = None,
    ) -> None:
        self.device = device
        self.fallback = RooflineBackend(device, dtype) if fallback is None else fallback
        self.tables = tables
        self.collectives = None if tables is None else TableCollectives(tables)
        self.lookups = 0
        self.fallbacks: Counter[str] = Counter()
        self._memo: dict[Op, tuple[float, bool]] = {}
        self._rules: dict[str, Callable[[Op], float | None]] = {
            "gemm": self._gemm,
            "attention_prefill": self._prefill,
            "attention_decode": self._decode,
        }

    @classmethod
    def from_config(cls, device: DeviceSpec, setup: PerfSetup) -> KernelDbBackend:
        options = setup.perf.kernel_db
        root = options.path or default_tables_root()
        system = options.system or SYSTEM_OF_DEVICE.get(device.name)
        if root is None or not (root / "data").is_dir():
            if options.fallback == "roofline":
                return cls(
                    device, setup.compute_dtype, None, RooflineBackend.from_config(device, setup)
                )
            where = "" if options.path is None else f" (perf.kernel_db.path {options.path})"
            raise ConfigError(
                f"perf.backend kernel_db: no kernel tables installed{where}; " + INSTALL_HINT
            )
        index = table_index(root)
        covered = sorted(d for d, s in SYSTEM_OF_DEVICE.items() if s in index)
        if system is None or system not in index:
            if options.fallback == "roofline":
                return cls(
                    device, setup.compute_dtype, None, RooflineBackend.from_config(device, setup)
                )
            what = (
                f"perf.kernel_db.system {system!r}"
                if options.system
                else f"hardware {device.name!r}"
            )
            raise ConfigError(
                f"perf.backend kernel_db: no kernel tables for {what} (tables cover: "
                f"{', '.join(covered)}; systems {', '.join(sorted(index))}); set "
                "perf.kernel_db.fallback: roofline to time it with the roofline"
            )
        tables = load_tables(
            root,
            system,
            options,
            setup.dtype,
            setup.kv_dtype,
            setup.fp8_scaling,
            device.fp4_tensor_cores,
        )
        return cls(device, setup.compute_dtype, tables, RooflineBackend.from_config(device, setup))

    def time(self, op: Op) -> float:
        self.lookups += 1
        hit = self._memo.get(op)
        if hit is None:
            seconds = None
            if self.tables is not None:
                rule = self._rules.get(op.kind)
                if rule is not None:
                    seconds = rule(op)
                elif op.name == "moe_act":
                    seconds = self._moe_part(op)
            fell_back = seconds is None
            if seconds is None:
                seconds = self.fallback.time(op)
            hit = self._memo[op] = (seconds, fell_back)
        if hit[1]:
            self.fallbacks[op.name] += 1
        return hit[0]

    def _gemm(self, op: Op) -> float | None:
        assert self.tables is not None
        if op.name in MOE_GEMMS:
            block = self._moe_block(op)
            if block is None:
                return None
            return block if op.name == MOE_GATE_UP else 0.0
        # The LM head and GEMMs a quantized checkpoint keeps in 16 bits: the bf16 table.
        sixteen = op.name == "lm_head" or is_sixteen_bit(op)
        table = self.tables.head_gemm if sixteen else self.tables.gemm
        if table is None:
            return None
        dims = dict(op.dims)
        if not {"m", "n", "k"} <= dims.keys():
            return None
        return table.seconds(dims["m"], dims["n"], dims["k"])

    def _moe_part(self, op: Op) -> float | None:
        """The activation between the expert GEMMs: inside the measured fused-MoE kernel."""
        return None if self._moe_block(op) is None else 0.0

    def _moe_block(self, op: Op) -> float | None:
        """The fused-MoE kernel of the block the op belongs to (timed on its first GEMM)."""
        assert self.tables is not None
        dims = dict(op.dims)
        if "moe_tokens" not in dims:
            return None
        key = (
            dims["moe_hidden"],
            dims["moe_inter"],
            dims["moe_topk"],
            dims["moe_experts"],
            dims["moe_tp"],
            dims["moe_ep"],
        )
        curve = self.tables.moe.get(key)
        return None if curve is None else curve.at(dims["moe_tokens"])

    def _prefill(self, op: Op) -> float | None:
        assert self.tables is not None
        dims = dict(op.dims)
        if "q_heads" not in dims:
            return None  # MLA: its own kernels
        if "window" in dims:
            return None  # sliding-window layers: the tables hold full causal attention only
        grid = self.tables.context.get((dims["q_heads"], dims["kv_heads"], dims["head_dim"]))
        if grid is None:
            return None
        new, ctx = dims["new"], dims["ctx"]
        whole = grid.at(1, new + ctx)
        if whole is None:
            return None
        if ctx == 0:
            return whole
        before, alone = grid.at(1, ctx), grid.at(1, new)
        if before is None or alone is None:
            return None
        return max(whole - before, alone)

    def _decode(self, op: Op) -> float | None:
        assert self.tables is not None
        dims = dict(op.dims)
        if "q_heads" not in dims:
            return None
        grid = self.tables.generation.get((dims["q_heads"], dims["kv_heads"], dims["head_dim"]))
        if grid is None:
            return None
        batch = dims["batch"]
        mean_ctx = max(1.0, dims["context"] / batch)
        return grid.at(batch, mean_ctx)

    def stats(self) -> dict[str, Any]:
        fallbacks = Counter(self.fallbacks)
        lookups = self.lookups
        if self.collectives is not None:
            fallbacks.update(self.collectives.fallbacks)
            lookups += self.collectives.lookups
        stats: dict[str, Any] = {
            "perf_lookups": lookups,
            "perf_fallbacks": sum(fallbacks.values()),
            "perf_fallback_ops": dict(fallbacks),
        }
        if self.tables is not None:
            t = self.tables
            used = ", ".join(f"{fam} {src}" for fam, src in t.sources.items())
            stats["perf_tables"] = f"{t.system} {t.engine}@{t.version} ({used})"
        return stats


def kernel_table_lines(root: Path | None = None) -> list[str]:
    """``catalog backends``: which (device, engine, versions) kernel tables are installed."""
    installed = installed_tables(root)
    if not installed:
        return [f"kernel_db tables: none installed ({INSTALL_HINT})"]
    device_of = {system: device for device, system in SYSTEM_OF_DEVICE.items()}
    lines = ["kernel_db tables (hardware: system: engine versions):"]
    for system, engines in sorted(installed.items()):
        if not engines:
            continue
        label = (
            f"{device_of[system]}: {system}"
            if system in device_of
            else f"(perf.kernel_db.system) {system}"
        )
        per_engine = "; ".join(f"{e} {', '.join(v)}" for e, v in sorted(engines.items()))
        lines.append(f"  {label}: {per_engine}")
    return lines
