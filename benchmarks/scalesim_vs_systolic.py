"""The analytic ``systolic`` backend against SCALE-Sim, op by op, and a one-parameter calibration.

For Llama-3.1-8B (TP1) and Mixtral-8x7B (TP2) on the catalog npu, every GEMM-shaped op of one
prefill step (one sequence of ``--prefill`` tokens) and one decode step (``--batch`` sequences
of ``--context`` tokens each) is timed by both backends: one decoder layer's ops, attention,
and the LM head. Prints the MAPE of the analytic backend against SCALE-Sim per op kind, before
and after calibrating the analytic backend's one compute parameter (``efficiency.compute_max``,
the fraction of the ideal array rate) on these SCALE-Sim results: the geometric mean of
(analytic compute time / SCALE-Sim array time) over the ops whose analytic time is compute
bound. SCALE-Sim's probes come from (and go to) the cache in ``--cache-dir``.

    python benchmarks/scalesim_vs_systolic.py
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

from llmservingsim.catalog import load_device, load_model
from llmservingsim.hardware.backends.scalesim import ScaleSimBackend, default_scalesim_cache_dir
from llmservingsim.hardware.backends.systolic import SystolicBackend, gemm_shapes
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.ops import Op, OpGraph

MODELS = (("llama-3.1-8b", 1), ("mixtral-8x7b", 2))


def step_ops(graph: OpGraph, prefill: int, batch: int, context: int) -> dict[str, list[Op]]:
    moe = graph.moe is not None
    pre = graph.layer_ops(prefill, moe) + graph.prefill_attention_ops(prefill, 0)
    pre += graph.output_ops(1)
    dec = graph.layer_ops(batch, moe) + list(graph.decode_attention_ops(batch, batch * context))
    dec += graph.output_ops(batch)
    return {
        "prefill": [op for op in pre if gemm_shapes(op)],
        "decode": [op for op in dec if gemm_shapes(op)],
    }


def with_compute_max(device: DeviceSpec, value: float) -> DeviceSpec:
    efficiency = device.efficiency.model_copy(update={"compute_max": value})
    return device.model_copy(update={"efficiency": efficiency})


def mape(pairs: list[tuple[float, float]]) -> float:
    return 100.0 * sum(abs(a - r) / r for a, r in pairs) / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--cache-dir", type=Path, default=default_scalesim_cache_dir())
    args = parser.parse_args()

    device = load_device("npu")
    reference = ScaleSimBackend(device, "bf16", args.cache_dir)
    analytic = SystolicBackend(device, "bf16")
    rows: list[tuple[str, str, Op, float]] = []  # (model, step, op, SCALE-Sim seconds)
    for model, tp in MODELS:
        graph = OpGraph(load_model(model), tp, "bf16", "bf16")
        for step, ops in step_ops(graph, args.prefill, args.batch, args.context).items():
            for op in ops:
                rows.append((model, step, op, reference.time(op)))

    # Calibration: compute_max scaled by the geometric mean ratio of the analytic compute time
    # to SCALE-Sim's array time, over the ops the analytic backend finds compute bound.
    logs = []
    for _, _, op, _ in rows:
        array_s = reference.array_seconds(op)
        compute = op.flops / (analytic._peak * analytic.utilization(op) * analytic._derate)
        memory = analytic._dram_bytes(op) / analytic._bandwidth
        if array_s and compute > memory:
            logs.append(math.log(compute / array_s))
    fitted = device.efficiency.compute_max * math.exp(sum(logs) / len(logs))
    calibrated = SystolicBackend(with_compute_max(device, fitted), "bf16")

    groups: dict[tuple[str, str, str], list[tuple[float, float, float]]] = defaultdict(list)
    for model, step, op, ref in rows:
        groups[(model, step, op.name)].append((analytic.time(op), calibrated.time(op), ref))
    print(
        f"catalog npu (8 x 128x128 ws, compute_max {device.efficiency.compute_max:g}); "
        f"prefill {args.prefill} tokens, decode {args.batch} x {args.context} context; "
        f"SCALE-Sim {reference.runner.version}, {reference.sim_calls} new SCALE-Sim calls"
    )
    print()
    print("| model | step | op | SCALE-Sim µs | analytic µs | error | calibrated µs | error |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    before: dict[str, list[tuple[float, float]]] = defaultdict(list)
    after: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (model, step, name), values in groups.items():
        for a, c, r in values:
            print(
                f"| {model} | {step} | {name} | {r * 1e6:,.1f} | {a * 1e6:,.1f} | "
                f"{(a - r) / r:+.0%} | {c * 1e6:,.1f} | {(c - r) / r:+.0%} |"
            )
            kind = name if "attention" in name else ("lm_head" if name == "lm_head" else "gemm")
            before[kind].append((a, r))
            after[kind].append((c, r))
            before["all"].append((a, r))
            after["all"].append((c, r))
    print()
    print(f"calibrated efficiency.compute_max = {fitted:.4f} (from {len(logs)} compute-bound ops)")
    print()
    print("| op kind | ops | MAPE analytic | MAPE calibrated |")
    print("|---|---:|---:|---:|")
    for kind in sorted(before):
        print(
            f"| {kind} | {len(before[kind])} | {mape(before[kind]):.0f} % | "
            f"{mape(after[kind]):.0f} % |"
        )


if __name__ == "__main__":
    main()
