"""Fit a network parameter of the device YAMLs to AIConfigurator's measured kernel tables
(aiconfigurator-core, ``pip install 'llmservingsim[kerneldb]'``) and print it.

    python scripts/calibrate_kernel_tables.py [--root SYSTEMS_DIR]

(The GEMM curves, bf16 and ``efficiency.dtype_gemm`` for fp8 / fp4, are fitted on the same
tables by scripts/calibrate_catalog.py: calibration.md §7c, §7d.)

* ``links.direct_allreduce``: the engines' custom all-reduce as captured in CUDA graphs (vLLM's
  ``vLLM_custom_graph`` rows), TP 2/4/8, messages 1 KiB .. 8 MiB: least-squares fit (relative
  error) of t = latency + hop·(p−1) + 2(p−1)/p · bytes / bandwidth.
* ``links.intra_node.latency_us``: NCCL's per-hop latency, from the NCCL all-reduce tables
  (nccl-tests' ``all_reduce_perf``, calls issued back to back as a CUDA graph or a host that
  runs ahead issues them; the NCCL version the system's YAML names, else the newest), TP 2/4/8,
  messages up to 256 KiB, where the hops' latency is the whole cost: least-squares fit
  (relative error) of the network model (calibration.md §7b); the link's bandwidth, efficiency
  and call cap stay as fitted on the large messages.

Each printed line names the table files it used; docs/calibration.md §7 holds the values.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from llmservingsim.catalog import load_device
from llmservingsim.hardware.backends.kernel_db import (
    SYSTEM_OF_DEVICE,
    default_tables_root,
    nccl_folder,
    table_versions,
)
from llmservingsim.hardware.device import Link
from llmservingsim.network.calibration import (
    Sample,
    fit_hop_latency,
    load_table_samples,
    mape_table,
    predict,
)

MAX_BYTES = 8 * 1024 * 1024  # the custom all-reduce's message bound (device YAML max_bytes)
HOP_FIT_BYTES = 256 * 1024  # NCCL all-reduces up to this size: latency-bound at TP 2-8


def _newest(folder: Path, name: str) -> Path | None:
    versions = table_versions(folder, name)
    return folder / versions[-1] / name if versions else None


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


def hop_latency_fit(device_name: str, root: Path, system: str) -> str | None:
    """A table row: the fitted per-hop latency, its MAPE on the small messages (shipped YAML →
    fit) and on all of them per GPU count (fit), and the table it used."""
    folder = nccl_folder(root, system)
    if folder is None:
        return None
    samples = load_table_samples(folder)
    if not samples:
        return None
    device = load_device(device_name)
    link = fit_hop_latency(samples, device, HOP_FIT_BYTES)
    small = [s for s in samples if s.size <= HOP_FIT_BYTES]

    def cells(points: list[Sample], intra: Link | None) -> str:
        table = mape_table(points, lambda s: predict(s, device, intra=intra))
        return ", ".join(f"TP{k[1]} {v[0]:.1f}" for k, v in table.items())

    return (
        f"| {device_name} | {device.links.intra_node.latency_us:.3g} → {link.latency_us:.3g} "
        f"| {cells(small, None)} → {cells(small, link)} | {cells(samples, link)} "
        f"| {len(small)} / {len(samples)} | {folder.relative_to(root)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=None, help="a systems folder")
    args = parser.parse_args()
    root = args.root or default_tables_root()
    if root is None:
        raise SystemExit("error: aiconfigurator-core is not installed (or pass --root)")
    print("| device | all-reduce latency / hop / GB/s | MAPE | points |")
    print("| --- | --- | ---: | ---: |")
    for device, system in SYSTEM_OF_DEVICE.items():
        ar = allreduce_fit(root / "data" / system)
        if ar is None:
            print(f"| {device} | — | — | — |")
            continue
        values = " / ".join(f"{v:.3g}" for v in ar[0])
        print(f"| {device} | {values} | {ar[1]:.1f} % | {ar[2]} |")
        print(f"|   data: {ar[3]} | | | |")
    print()
    print(
        "| device | intra-node latency_us (YAML → fit) | MAPE % ≤ 256 KiB (YAML → fit) "
        "| MAPE % all sizes (fit) | points | table |"
    )
    print("| --- | --- | --- | --- | ---: | --- |")
    for device, system in SYSTEM_OF_DEVICE.items():
        row = hop_latency_fit(device, root, system)
        if row is not None:
            print(row)


if __name__ == "__main__":
    main()
