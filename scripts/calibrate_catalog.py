#!/usr/bin/env python3
"""Regenerate the ``efficiency:`` blocks of the built-in device YAMLs from measured profiles.

The three profiled GPUs are fitted with ``llmservingsim calibrate``'s code (calibrate/run.py)
on the Vidur tables (H100 also gets the LLMServingSim attention table, which the quality gate
rejects: calibration.md §6); every other device takes the fit of its architecture family
(calibrate/transfer.py, calibration.md §8). Prints the op-level MAPE of each fit.

The GEMM compute curve and fixed cost (compute_max, compute_half_m, kernel_launch_us) of every
device AIConfigurator has GEMM tables for come from those measured kernels instead
(calibrate/gemm_tables.py, calibration.md §7d), and a transferred device with its own tables
keeps its own GEMM fit; so do the fp8 and fp4 curves (``efficiency.dtype_gemm``, from the
tables' per-tensor fp8 and nvfp4 rows, calibration.md §7c). ``memory`` stays the profile
fit's (or the transferred one): it also times attention's KV streaming, which GEMM tables do
not measure. This needs
aiconfigurator-core (``pip install 'llmservingsim[kerneldb]'``).

Devices with an LLMServingSim profiler bundle (:data:`LSS_FITTED`: vLLM's own kernels timed
layer by layer on that GPU, calibration.md §4b) are first given their family's transfer and
then fitted on the bundle; ``--lss-perf DIR`` names a checkout of casys-kaist/LLMServingSim's
``profiler/perf`` folder. Without it those devices keep their shipped values.

Usage:  .venv/bin/python scripts/calibrate_catalog.py [DATA_DIR] [--lss-perf DIR]
        (DATA_DIR defaults to ../shared/data)
Exits 0 with a message when the data folder is absent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from llmservingsim.calibrate.gemm_tables import (
    BANDS,
    DTYPE_PARAMS,
    SMALL_M,
    TABLE_MODES,
    GemmTableFit,
    band_ratios,
    fit_gemm_tables,
    gemm_mape,
    gemm_points,
    launch_bound_tables,
    newest_tables,
    table_label,
)
from llmservingsim.calibrate.moe_tables import MOE_KEYS, fit_moe_tables, weights_of
from llmservingsim.calibrate.run import ALL_FITTED, calibrate
from llmservingsim.calibrate.transfer import (
    _round,
    replace_efficiency_block,
    rounded,
    transfer_efficiency,
)
from llmservingsim.catalog import load_device
from llmservingsim.hardware.backends.kernel_db import SYSTEM_OF_DEVICE, default_tables_root
from llmservingsim.hardware.device import (
    DeviceSpec,
    DtypeGemm,
    Efficiency,
    MoeGemm,
    kernel_compute_dtype,
)

REPO = Path(__file__).resolve().parents[1]
HARDWARE = REPO / "src" / "llmservingsim" / "data" / "hardware"

# device -> profile folders (relative to the data dir)
FITTED = {
    "h100-sxm": ["profiles/vidur/compute/h100", "profiles/llmservingsim/v0/H100"],
    "a100-80gb": ["profiles/vidur/compute/a100"],
    "a40": ["profiles/vidur/compute/a40"],
}
# device -> (family it is transferred from first, LLMServingSim profiler bundle folder)
LSS_FITTED = {"rtx-4090": ("a40", "RTX4090/meta-llama/Llama-3.1-8B/bf16")}
# device -> calibrated device whose fit it takes (calibration.md §8)
TRANSFERRED = {
    "h100-pcie": "h100-sxm",
    "h200": "h100-sxm",
    "b200": "h100-sxm",
    "gb200": "h100-sxm",
    "a100-40gb": "a100-80gb",
    "a6000": "a40",
    "l40s": "a40",
    "l4": "a40",
    "rtx-pro-6000": "a40",
    "rtx-3090": "a40",
    "rtx-5090": "rtx-pro-6000",
    "mi300x": "h100-sxm",
    "mi325x": "h100-sxm",
    "tpu-v5e": "h100-sxm",
    "tpu-v6e": "h100-sxm",
    "gaudi3": "h100-sxm",
    "npu": "h100-sxm",
    "pim": "h100-sxm",
}
SAME_FAMILY = {
    "h100-pcie", "h200", "b200", "gb200", "a100-40gb", "a6000", "l40s", "l4", "rtx-3090",
    "rtx-5090",
}  # fmt: skip


def tables_root() -> Path:
    root = default_tables_root()
    if root is None:
        raise SystemExit(
            "error: aiconfigurator-core is not installed: pip install 'llmservingsim[kerneldb]' "
            "(the GEMM parameters are fitted on its kernel tables)"
        )
    return root


def _held(fit: GemmTableFit) -> str:
    held = ", ".join(f"{t} {v:.1f}%" for t, v in fit.held_out.items())
    return f"; MAPE {fit.mape:.1f}%" + (f", each table held out: {held}" if held else "")


def _bands(fit: GemmTableFit, spec: DeviceSpec, paths: list[Path]) -> None:
    """Median fitted / measured time per band of m, per table (calibration.md §7c)."""
    ops, _ = gemm_points(paths, fit.dtype, spec)
    peak, bandwidth = spec.peak_flops(kernel_compute_dtype(fit.dtype)), spec.memory_bandwidth
    head = " ".join(f"m {lo}-{hi}" for lo, hi in BANDS)
    for label in fit.tables:
        cells = band_ratios(fit.params, ops.where(ops.model == label), peak, bandwidth, BANDS)
        shown = " ".join(f"{c:.2f}" for c in cells)
        print(f"    {fit.dtype} {label}: fitted/measured {head}: {shown}")


def table_gemm(root: Path, device: str, eff: Efficiency) -> tuple[Efficiency, str | None]:
    """``eff`` with compute_max, compute_half_m and kernel_launch_us fitted on the device's
    bf16 GEMM tables, and ``dtype_gemm`` on its fp8 (and nvfp4) tables (memory held at
    ``eff``'s: calibrate/gemm_tables.py), and the data named; ``eff`` unchanged where the
    device has no tables."""
    system = SYSTEM_OF_DEVICE.get(device)
    if system is None:
        return eff, None
    spec = load_device(device)
    spec = spec.model_copy(update={"efficiency": eff.model_copy(update={"dtype_gemm": {}})})
    paths = newest_tables(root / "data" / system)
    fit = fit_gemm_tables(spec, paths, {"memory": eff.memory})
    if fit is None:
        return eff, None
    print(
        f"{device}: GEMM on {fit.points:,} bf16 kernel points ({', '.join(fit.tables)}): "
        + ", ".join(f"{k} {v:.4g}" for k, v in fit.params.items())
        + _held(fit)
    )
    _bands(fit, spec, paths)
    dtypes: dict[str, DtypeGemm] = {}
    modes: list[str] = []
    for dtype in ("fp8", "fp8_block", "fp4"):
        if kernel_compute_dtype(dtype) not in spec.peak_tflops:
            continue
        used = paths
        if dtype == "fp8_block":
            odd = launch_bound_tables(paths, dtype)
            for path, ratio in odd.items():
                print(
                    f"{device}: {dtype} table {table_label(path)} left out: its m <= "
                    f"{SMALL_M} kernels take {ratio:.1f}x the other engines' (launch-bound)"
                )
            used = [p for p in paths if p not in odd]
        own = fit_gemm_tables(spec, used, {"memory": eff.memory}, dtype)
        if own is None:
            continue
        print(
            f"{device}: {dtype} GEMM on {own.points:,} {TABLE_MODES[dtype]} kernel points "
            f"(activation quantization taken off, {own.dropped} dropped): "
            + ", ".join(f"{k} {own.params[k]:.4g}" for k in DTYPE_PARAMS)
            + _held(own)
        )
        _bands(own, spec, used)
        if dtype == "fp8_block" and not _block_improves(own, spec, used, dtypes.get("fp8")):
            continue
        dtypes[dtype] = DtypeGemm(**{k: _round(own.params[k]) for k in DTYPE_PARAMS})
        modes.append(TABLE_MODES[dtype])
    fitted = "compute_max, compute_half_m, kernel_launch_us" + (" and dtype_gemm" if modes else "")
    source = (
        f"{fitted} on aiconfigurator-core "
        f"{metadata.version('aiconfigurator-core')} {system} gemm_perf "
        f"{' / '.join(['bf16', *modes])} ({', '.join(fit.tables)}), scripts/calibrate_catalog.py"
    )
    update: dict[str, object] = {k: _round(v) for k, v in fit.params.items() if k != "memory"}
    update["dtype_gemm"] = dtypes
    eff = eff.model_copy(update=update)
    moe, moe_modes = table_moe(root / "data" / system, spec.model_copy(update={"efficiency": eff}))
    if moe_modes:
        source += f"; moe_gemm on its moe_perf {' / '.join(moe_modes)} (§7e)"
    return eff.model_copy(update={"moe_gemm": moe}), source


def _block_improves(
    fit: GemmTableFit, spec: DeviceSpec, paths: list[Path], tensor: DtypeGemm | None
) -> bool:
    """Whether the block-scaled fp8 curve predicts each block table, held out, at least a
    point better (mean over tables) than the per-tensor fp8 curve it would otherwise run on;
    printed either way."""
    if tensor is None:
        print(f"{spec.name}: fp8_block curve not written: no per-tensor fp8 curve to compare")
        return False
    if len(fit.held_out) < 2:
        print(f"{spec.name}: fp8_block curve not written: fewer than two tables to hold out")
        return False
    ops, _ = gemm_points(paths, "fp8_block", spec)
    params = {**fit.params, **tensor.model_dump()}
    peak = spec.peak_flops("fp8")
    tensor_err = {
        label: gemm_mape(params, ops.where(ops.model == label), peak, spec.memory_bandwidth)
        for label in fit.held_out
    }
    held = sum(fit.held_out.values()) / len(fit.held_out)
    dense = sum(tensor_err.values()) / len(tensor_err)
    better = held <= dense - 1.0
    print(
        f"{spec.name}: fp8_block held out {held:.1f}% against the per-tensor curve's "
        f"{dense:.1f}% on the same tables: {'written' if better else 'not written'}"
    )
    return better


def table_moe(system_dir: Path, spec: DeviceSpec) -> tuple[dict[str, MoeGemm], list[str]]:
    """``efficiency.moe_gemm`` fitted on the device's MoE kernel tables, on top of its GEMM
    curves (calibrate/moe_tables.py, calibration.md §7e): an entry per weight dtype whose fit
    predicts held-out engines' kernels better than the dense GEMM curve; and their modes."""
    moe: dict[str, MoeGemm] = {}
    modes: list[str] = []
    for key in MOE_KEYS:
        dtype = weights_of(key)[0]
        if dtype != "bf16" and dtype != "mxfp4" and dtype not in spec.peak_tflops:
            continue
        fit = fit_moe_tables(spec, system_dir, key)
        if fit is None:
            continue
        held = ", ".join(
            f"{t} {v:.1f}% (dense {fit.dense_per_table[t]:.1f}%)" for t, v in fit.held_out.items()
        )
        verdict = (
            "written"
            if fit.improves
            else "not written: "
            + (
                "fewer than two engines with enough points to hold out"
                if len(fit.held_out) < 2
                else "not a point better than the dense curve on held-out engines"
            )
        )
        print(
            f"{spec.name}: {key} MoE on {fit.points:,} {fit.mode} kernel points "
            f"({', '.join(fit.tables)}): "
            + ", ".join(f"{k} {v:.4g}" for k, v in fit.params.model_dump().items())
            + f"; median |error| {fit.before:.1f}% -> {fit.mape:.1f}%"
            + (f", each table held out: {held}" if held else "")
            + f"; {verdict}"
        )
        if fit.improves:
            moe[key] = MoeGemm(**{k: _round(v) for k, v in fit.params.model_dump().items()})
            modes.append(fit.mode)
    return moe, modes


def fit_lss(root: Path | None, name: str, family: str, folder: str) -> None:
    """``name``'s efficiencies: its family's transfer, then the groups its LLMServingSim
    bundle fits (a group the quality gate rejects keeps the transferred value). The device
    YAML is rewritten only once the fit has succeeded."""
    if root is None:
        print(f"{name}: kept (fitted on LLMServingSim's {folder} bundle; pass --lss-perf DIR)")
        return
    path = HARDWARE / f"{name}.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / f"{name}.yaml"
        base.write_text(path.read_text())
        replace_efficiency_block(
            base, transfer_efficiency(load_device(family), load_device(name)), "transferred"
        )
        report = calibrate([root / folder], str(base))
    ins = report.row(ALL_FITTED)
    assert ins is not None
    rejected = [g.group for g in report.fit.groups if not g.accepted]
    print(
        f"{name}: {report.points:,} points ({folder}), op-level MAPE {ins.before:.1f}% -> "
        f"{ins.after:.1f}%" + (f"; rejected by the gate: {', '.join(rejected)}" if rejected else "")
    )
    replace_efficiency_block(
        path,
        rounded(report.device.efficiency),
        f"fitted by llmservingsim calibrate on LLMServingSim's {folder.split('/')[0]} vLLM "
        f"profiles; groups the gate rejects transferred from {family}; see docs/calibration.md "
        f"§4b",
    )
    load_device.cache_clear()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--lss-perf", type=Path, help="a checkout of LLMServingSim's profiler/perf folder"
    )
    args = parser.parse_args(argv[1:])
    data, lss = args.data, args.lss_perf
    if lss is not None and not lss.is_dir():
        parser.error(f"--lss-perf {lss}: not a folder")
    if not (data / "profiles").is_dir():
        print(f"calibrate_catalog: {data}/profiles not found; nothing to do.")
        return 0
    root = tables_root()
    for name, folders in FITTED.items():
        report = calibrate([data / f for f in folders], name)
        ins, held = report.row(ALL_FITTED), report.row(ALL_FITTED, holdout=True)
        assert ins is not None and held is not None
        print(
            f"{name}: {report.points:,} points, op-level MAPE {ins.before:.1f}% -> {ins.after:.1f}%"
            f", held-out (train {report.train_model}) {held.after:.1f}%"
        )
        sources = " + ".join(sorted({p.split("/")[1] for p in folders}))
        eff, gemm_source = table_gemm(root, name, rounded(report.device.efficiency))
        replace_efficiency_block(
            HARDWARE / f"{name}.yaml",
            eff,
            f"fitted by llmservingsim calibrate on {sources} profiles; see docs/calibration.md",
            gemm_source,
        )
    load_device.cache_clear()
    for name, (family, folder) in LSS_FITTED.items():
        fit_lss(lss, name, family, folder)
    for name, source in TRANSFERRED.items():
        eff = transfer_efficiency(load_device(source), load_device(name))
        why = "same architecture family" if name in SAME_FAMILY else "no measured data"
        eff, gemm_source = table_gemm(root, name, eff)  # its own measured GEMMs win
        replace_efficiency_block(
            HARDWARE / f"{name}.yaml",
            eff,
            f"transferred from {source} ({why}); see docs/calibration.md §8",
            gemm_source,
        )
        print(f"{name}: efficiency from {source}, compute_half_m {eff.compute_half_m:g}")
        load_device.cache_clear()  # a later device may transfer from this one
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
