"""Error of the SCALE-Sim backend's tiled GEMM estimate against SCALE-Sim run on the whole GEMM.

The backend (hardware/backends/scalesim.py) never simulates a whole GEMM: it probes one and
two folds at the streamed length (up to ``stream_tile`` rows, extrapolating longer streams
linearly) and multiplies by the fold count. This script runs both on shapes small enough for a
whole-shape SCALE-Sim run to finish (one array, so the multi-array split is not in question),
and prints a markdown table of cycles and signed errors, with the mean absolute error.

    python benchmarks/scalesim_tiling_error.py                 # 16 x 16 ws array, tile 16
    python benchmarks/scalesim_tiling_error.py --dataflow os --rows 8 --cols 8 --tile 8
    python benchmarks/scalesim_tiling_error.py --sram-kib 10 --bandwidth-scale 0.05  # stalls
    python benchmarks/scalesim_tiling_error.py --rows 128 --cols 128 --tile 128 \
        --shape 1,2048,1024 --shape 64,2048,1024      # one array of the catalog npu, minutes

The array is the catalog NPU's YAML with a smaller geometry (one array, SRAM and DRAM
bandwidth per array as the backend derives them), so the rows/cols-to-tile ratio matches the
catalog's 128 x 128 array with its default 128-row tile.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from llmservingsim.hardware.backends.scalesim import ScaleSimBackend
from llmservingsim.hardware.device import load_device_file

CATALOG_NPU = Path(__file__).resolve().parents[1] / "src/llmservingsim/data/hardware/npu.yaml"


def shapes(rows: int, cols: int) -> list[tuple[int, int, int]]:
    """(M, N, K): decode-like short streams, long streams past the tile, ragged edges."""
    r, c = rows, cols
    return [
        (1, 4 * c, 4 * r),
        (4, 8 * c, 2 * r),
        (r // 2, 4 * c, 4 * r),
        (r, 4 * c, 2 * r),
        (2 * r, 3 * c, 2 * r),
        (5 * r, 2 * c, 2 * r),
        (3 * r + 5, 3 * c + 3, r + 7),
        (r + 1, 5 * c, 3 * r),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--cols", type=int, default=16)
    parser.add_argument("--dataflow", default="ws", choices=["ws", "os", "is"])
    parser.add_argument("--tile", type=int, default=16, help="perf.options.scalesim_stream_tile")
    parser.add_argument(
        "--bandwidth-scale",
        type=float,
        default=1.0,
        help="DRAM bandwidth x this",
    )
    parser.add_argument(
        "--shape", action="append", default=[], help="M,N,K to run instead of the default list"
    )
    parser.add_argument(
        "--sram-kib", type=float, default=None, help="SRAM of the array (default: 1/8 of the npu's)"
    )
    args = parser.parse_args()

    raw = yaml.safe_load(CATALOG_NPU.read_text())
    raw["systolic"] = {
        "rows": args.rows,
        "cols": args.cols,
        "arrays": 1,
        "clock_ghz": raw["systolic"]["clock_ghz"],
        "sram_mib": (
            args.sram_kib / 1024
            if args.sram_kib
            else raw["systolic"]["sram_mib"] / raw["systolic"]["arrays"]
        ),
        "dataflow": args.dataflow,
    }
    raw["memory_bandwidth_gbps"] = raw["memory_bandwidth_gbps"] / 8 * args.bandwidth_scale
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "npu_one_array.yaml"
        path.write_text(yaml.safe_dump(raw))
        device = load_device_file(path)
        backend = ScaleSimBackend(device, "bf16", None, stream_tile=args.tile)
        print(
            f"{args.rows}x{args.cols} {args.dataflow} array, stream tile {args.tile}, "
            f"{backend.array.bandwidth_words} words/cycle, SRAM (K words) "
            f"{backend.array.ifmap_kwords}/{backend.array.filter_kwords}/"
            f"{backend.array.ofmap_kwords}"
        )
        print()
        print(
            "| M | N | K | whole-shape cycles | tiled cycles | error | whole run s | tiled run s |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        errors = []
        chosen = [tuple(int(x) for x in s.split(",")) for s in args.shape]
        for m, n, k in chosen or shapes(args.rows, args.cols):
            start = time.perf_counter()
            whole = backend.runner.cycles(m, n, k)
            whole_s = time.perf_counter() - start
            calls = backend.sim_seconds
            tiled = backend.gemm_cycles(m, n, k)
            tiled_s = backend.sim_seconds - calls
            error = (tiled - whole) / whole
            errors.append(abs(error))
            print(
                f"| {m} | {n} | {k} | {whole:,} | {tiled:,} | {error:+.1%} | "
                f"{whole_s:.1f} | {tiled_s:.1f} |",
                flush=True,
            )
        print()
        print(f"mean absolute error {sum(errors) / len(errors):.1%}, max {max(errors):.1%}")


if __name__ == "__main__":
    main()
