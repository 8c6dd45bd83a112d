"""Fit two roofline/network parameters of the device YAMLs to AIConfigurator's measured kernel
tables (aiconfigurator-core, ``pip install 'llmservingsim[kerneldb]'``) and print them.

    python scripts/calibrate_kernel_tables.py [--root SYSTEMS_DIR]

* ``efficiency.dtype_compute.fp8``: FP8 tensor-core GEMMs do not reach 2x the bf16 rate the
  datasheets promise. For every (m, n, k) measured in both bf16 and fp8 (per-tensor scaled) in
  the compute-bound range (m >= 1024, n and k >= 4096) the speedup is t_bf16 / t_fp8; the factor
  is median(speedup) / (fp8 peak / bf16 peak), over the current tables of every engine of the
  system. The roofline multiplies its fp8 compute rate by it.
  The same for ``fp4`` from the nvfp4 GEMMs where the device has an fp4 peak.
* ``links.direct_allreduce``: the engines' custom all-reduce as captured in CUDA graphs (vLLM's
  ``vLLM_custom_graph`` rows), TP 2/4/8, messages 1 KiB .. 8 MiB: least-squares fit (relative
  error) of t = latency + hop·(p−1) + 2(p−1)/p · bytes / bandwidth.

Each printed line names the table files it used; docs/calibration.md §7 holds the values.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from llmservingsim.catalog import load_device
from llmservingsim.hardware.backends.kernel_db import (
    SYSTEM_OF_DEVICE,
    _version_key,
    default_tables_root,
)

MAX_BYTES = 8 * 1024 * 1024  # the custom all-reduce's message bound (device YAML max_bytes)


def _newest(folder: Path, name: str) -> Path | None:
    if not folder.is_dir():
        return None
    versions = sorted((v.name for v in folder.iterdir() if (v / name).is_file()), key=_version_key)
    return folder / versions[-1] / name if versions else None


def dtype_factor(
    data: Path, device: str, mode: str = "fp8", dtype: str = "fp8"
) -> tuple[float, int, list[str]] | None:
    ratios: list[float] = []
    used: list[str] = []
    for engine in ("vllm", "sglang", "trtllm"):
        path = _newest(data / "gemm" / engine, "gemm_perf.parquet")
        if path is None:
            continue
        t = pq.read_table(path, columns=["gemm_dtype", "m", "n", "k", "latency"]).to_pydict()
        best: dict[tuple[str, int, int, int], float] = {}
        for mode_of, m, n, k, lat in zip(
            t["gemm_dtype"], t["m"], t["n"], t["k"], t["latency"], strict=True
        ):
            if mode_of in ("bfloat16", mode) and m >= 1024 and n >= 4096 and k >= 4096:
                key = (mode_of, m, n, k)
                best[key] = min(lat, best.get(key, float("inf")))
        for (mode_of, m, n, k), lat in best.items():
            if mode_of == "bfloat16" and (mode, m, n, k) in best:
                ratios.append(lat / best[(mode, m, n, k)])
        used.append(str(path.relative_to(data.parents[1])))
    if not ratios:
        return None
    spec = load_device(device)
    if dtype not in spec.peak_tflops:
        return None
    peak_ratio = spec.peak_tflops[dtype] / spec.peak_tflops["bf16"]
    return statistics.median(ratios) / peak_ratio, len(ratios), used


def allreduce_fit(data: Path) -> tuple[tuple[float, float, float], float, int, str] | None:
    from scipy.optimize import least_squares

    path = _newest(data / "comm" / "vllm", "custom_allreduce_perf.parquet")
    if path is None:
        return None
    t = pq.read_table(path).to_pydict()
    points = [
        (p, 2.0 * size, lat * 1e-3)
        for p, size, lat, src in zip(
            t["num_gpus"], t["message_size"], t["latency"], t["kernel_source"], strict=True
        )
        if "graph" in str(src).lower() and 1024 <= 2.0 * size <= MAX_BYTES
    ]
    if not points:
        return None
    arr = np.array(points, dtype=float)

    def model(x: np.ndarray) -> np.ndarray:
        p, nbytes = arr[:, 0], arr[:, 1]
        return (x[0] + x[1] * (p - 1)) * 1e-6 + 2 * (p - 1) / p * nbytes / (x[2] * 1e9)

    fit = least_squares(
        lambda x: model(x) / arr[:, 2] - 1, [3.0, 0.4, 60.0], bounds=([0, 0, 1], [50, 10, 5000])
    )
    mape = float(np.mean(np.abs(model(fit.x) / arr[:, 2] - 1))) * 100
    return (
        (float(fit.x[0]), float(fit.x[1]), float(fit.x[2])),
        mape,
        len(points),
        str(path.relative_to(data.parents[1])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=None, help="a systems folder")
    args = parser.parse_args()
    root = args.root or default_tables_root()
    if root is None:
        raise SystemExit("error: aiconfigurator-core is not installed (or pass --root)")
    print("| device | fp8 factor | pairs | all-reduce latency / hop / GB/s | MAPE | points |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for device, system in SYSTEM_OF_DEVICE.items():
        data = root / "data" / system
        fp8 = dtype_factor(data, device)
        fp4 = dtype_factor(data, device, "nvfp4", "fp4")
        if fp4 is not None:
            print(f"| {device} | fp4 (nvfp4) factor {fp4[0]:.3f} | {fp4[1]} | | | |")
        ar = allreduce_fit(data)
        fp8_text = "—" if fp8 is None else f"{fp8[0]:.3f}"
        pairs = "—" if fp8 is None else str(fp8[1])
        ar_text = "—" if ar is None else " / ".join(f"{v:.3g}" for v in ar[0])
        mape = "—" if ar is None else f"{ar[1]:.1f} %"
        count = "—" if ar is None else str(ar[2])
        print(f"| {device} | {fp8_text} | {pairs} | {ar_text} | {mape} | {count} |")
        for line in (fp8[2] if fp8 else []) + ([ar[3]] if ar else []):
            print(f"|   data: {line} | | | | | |")


if __name__ == "__main__":
    main()
