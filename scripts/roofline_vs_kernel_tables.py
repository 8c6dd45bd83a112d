"""The calibrated roofline's GEMM times against AIConfigurator's measured GEMM tables: an
independent check of the Vidur-fitted efficiencies (docs/calibration.md §7d).

    python scripts/roofline_vs_kernel_tables.py [--root SYSTEMS_DIR]

For every GEMM table of a device (``systems/data/<system>/gemm/<engine>/<version>/
gemm_perf.parquet``, aiconfigurator-core, ``pip install 'llmservingsim[kerneldb]'``) and each
of bf16, fp8 (per-tensor scaled) and fp4 (NVFP4, where the device has an fp4 peak), over the
serving shapes 1024 <= n, k <= 32768, it prints the median of roofline time / measured time per
band of m (tokens): above 1 the roofline is slower than the engine's kernels. The tables time
a quantized GEMM with the activation-quantization kernel before it (calibration.md §7c), so
for fp8 / fp4 the roofline time is the GEMM's plus its ``act_quant`` kernel's. Nothing is
fitted or written.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pyarrow.parquet as pq

from llmservingsim.calibrate.gemm_tables import BANDS, OPERAND_BYTES, TABLE_MODES
from llmservingsim.catalog import load_device
from llmservingsim.hardware.backends.kernel_db import SYSTEM_OF_DEVICE, default_tables_root
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import kernel_weights
from llmservingsim.model.fusion import act_quant
from llmservingsim.model.ops import Op

DEVICES = ("h100-sxm", "h200", "a100-80gb", "b200", "rtx-pro-6000")


def ratios(table: Path, device: str) -> dict[str, list[float]]:
    """Per dtype, the median roofline/measured ratio of each m band (NaN-free)."""
    cols = pq.read_table(table, columns=["gemm_dtype", "m", "n", "k", "latency"]).to_pydict()
    spec = load_device(device)
    out: dict[str, list[float]] = {}
    for dtype, mode in TABLE_MODES.items():
        compute, scaling = kernel_weights(dtype)  # fp8_block: fp8 on the block-scaled curve
        if compute not in spec.peak_tflops:
            continue
        operand = OPERAND_BYTES[compute]
        backend = RooflineBackend(spec, compute, None, scaling)
        bands: list[list[float]] = [[] for _ in BANDS]
        rows = zip(
            cols["gemm_dtype"], cols["m"], cols["n"], cols["k"], cols["latency"], strict=True
        )
        for gemm_dtype, m, n, k, latency_ms in rows:
            if gemm_dtype != mode or not (1024 <= n <= 32768 and 1024 <= k <= 32768):
                continue
            nbytes = m * k * operand + m * n * 2 + n * k * operand
            seconds = backend.time(Op("gemm", "gemm", 2.0 * m * n * k, nbytes, m=m))
            if operand < 2:
                seconds += backend.time(act_quant(m, k, 2.0, operand))
            for band, (lo, hi) in zip(bands, BANDS, strict=True):
                if lo <= m <= hi:
                    band.append(seconds / (latency_ms * 1e-3))
        if any(bands):
            out[dtype] = [statistics.median(b) if b else float("nan") for b in bands]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="a `systems` folder")
    args = parser.parse_args()
    root = args.root or default_tables_root()
    if root is None:
        raise SystemExit(
            "aiconfigurator-core is not installed: pip install 'llmservingsim[kerneldb]'"
        )
    head = " ".join(f"m {lo}-{hi}" for lo, hi in BANDS)
    print(f"roofline time / measured time, median per band of m: {head}")
    for device in DEVICES:
        system = SYSTEM_OF_DEVICE[device]
        for table in sorted((root / "data" / system / "gemm").glob("*/*/gemm_perf.parquet")):
            engine, version = table.parent.parent.name, table.parent.name
            for dtype, values in ratios(table, device).items():
                cells = " ".join(f"{v:.2f}" for v in values)
                print(f"{device:10s} {engine:7s} {version:12s} {dtype:5s} {cells}")


if __name__ == "__main__":
    main()
