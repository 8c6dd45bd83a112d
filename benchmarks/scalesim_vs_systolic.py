"""The analytic ``systolic`` backend against SCALE-Sim, op by op, and its calibration.

For Llama-3.1-8B (TP1) and Mixtral-8x7B (TP2) on the catalog npu, every GEMM-shaped op of one
prefill step (one sequence of ``--prefill`` tokens) and one decode step (``--batch`` sequences
of ``--context`` tokens each) is timed by both backends: one decoder layer's ops, attention,
and the LM head. Prints each op's time, and the MAPE of the analytic backend against SCALE-Sim
per op kind before and after calibrating its ``efficiency.compute_max`` and
``systolic.fold_overhead_cycles`` on these SCALE-Sim results: exactly what
``llmservingsim calibrate --scalesim --hardware npu`` fits and writes
(calibrate/scalesim_fit.py). SCALE-Sim's probes come from (and go to) ``--cache-dir``.

    python benchmarks/scalesim_vs_systolic.py [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmservingsim.calibrate.scalesim_fit import calibrate_on_scalesim
from llmservingsim.hardware.backends.scalesim import default_scalesim_cache_dir

MODELS = [("llama-3.1-8b", 1), ("mixtral-8x7b", 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--cache-dir", type=Path, default=default_scalesim_cache_dir())
    args = parser.parse_args()

    result = calibrate_on_scalesim(
        "npu",
        MODELS,
        args.cache_dir,
        prefill=args.prefill,
        batch=args.batch,
        context=args.context,
    )
    base, fitted = result.base.efficiency.compute_max, result.device.efficiency.compute_max
    print(
        f"catalog npu (8 x 128x128 ws); prefill {args.prefill} tokens, decode {args.batch} "
        f"sequences x {args.context} context; {result.sim_calls} new SCALE-Sim runs"
    )
    print()
    print("| model | step | op | SCALE-Sim µs | analytic µs | error | calibrated µs | error |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for p in result.points:
        ref = p.reference_s
        print(
            f"| {p.model} | {p.step} | {p.op.name} | {ref * 1e6:,.1f} | "
            f"{p.analytic_s * 1e6:,.1f} | {(p.analytic_s - ref) / ref:+.0%} | "
            f"{p.calibrated_s * 1e6:,.1f} | {(p.calibrated_s - ref) / ref:+.0%} |"
        )
    print()
    assert result.device.systolic is not None
    print(
        f"compute_max {base:.4g} -> {fitted:.4g} (geometric mean over {result.fitted_ops} "
        f"compute-bound ops), fold_overhead_cycles 0 -> "
        f"{result.device.systolic.fold_overhead_cycles:g}"
    )
    print()
    print("| op kind | ops | MAPE analytic | MAPE calibrated |")
    print("|---|---:|---:|---:|")
    for kind, (count, before, after) in result.mape_by_kind().items():
        print(f"| {kind} | {count} | {before:.0f} % | {after:.0f} % |")


if __name__ == "__main__":
    main()
