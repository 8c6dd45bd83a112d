"""What reuse buys a co-simulation with SCALE-Sim: (a) block reuse + memo against (b) memo off.

(a) runs a serving scenario with ``perf.backend: scalesim`` and an empty SCALE-Sim cache: one
    decoder layer is timed for all layers, op results are memoized across iterations, and the
    backend's tile probes are cached in memory and on disk. Its wall time and SCALE-Sim calls
    are measured. A second run on the now warm disk cache is timed too.
(b) "memo off": every op of every layer of every iteration simulated, nothing reused. That
    run would take days, so it is **not run**: the script records every step's batch (a second
    run of the scenario, Python engine, warm cache), counts the ops (b) would simulate, times
    SCALE-Sim on the ops of a short prefix of the run (the first ``--prefix-steps`` steps, one
    layer and the model head each, every op on a fresh backend without any cache), and
    extrapolates by op count: (b) ≈ seconds per op on the prefix × ops of the whole run.

    python benchmarks/cosim_speedup.py                       # 300 requests (several minutes)
    python benchmarks/cosim_speedup.py --requests 100 --prefix-steps 2

Prints a markdown table (docs/accelerators.md, "Reuse speed-up").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import load_config
from llmservingsim.hardware.backends.scalesim import ScaleSimBackend
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.perf.iteration import BatchShape, IterationTimer, StepCost
from llmservingsim.simulation import simulate


def scenario(requests: int, cache: Path) -> list[str]:
    return [
        "model=llama-3.1-8b",
        "hardware=npu",
        "perf.backend=scalesim",
        f"perf.cache_dir={cache}",
        f"workload.num_requests={requests}",
    ]


def timed_run(sets: list[str]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    summary = simulate(load_config(None, sets)).summary
    return time.perf_counter() - start, summary


def record_batches(sets: list[str]) -> list[BatchShape]:
    """Every step's batch, from a run of the Python engine one step at a time (the recording
    wraps ``IterationTimer.step`` for this run only)."""
    batches: list[BatchShape] = []
    original = IterationTimer.step

    def recording(self: IterationTimer, batch: BatchShape) -> StepCost:
        batches.append(
            BatchShape(
                list(batch.prefill), batch.num_decode, batch.decode_context, batch.num_sampled
            )
        )
        return original(self, batch)

    IterationTimer.step = recording  # type: ignore[method-assign]
    try:
        simulate(
            load_config(None, [*sets, "simulator.compiled=false", "simulator.fast_forward=false"])
        )
    finally:
        IterationTimer.step = original  # type: ignore[method-assign]
    return batches


def step_ops(graph: OpGraph, batch: BatchShape) -> tuple[list[Op], list[Op]]:
    """(ops of one decoder layer, ops of the model head) that a step runs."""
    tokens = batch.num_tokens
    layer = graph.dense_layer_ops(tokens)
    for new, ctx in batch.prefill:
        layer += graph.prefill_attention_ops(new, ctx)
    if batch.num_decode:
        layer += list(graph.decode_attention_ops(batch.num_decode, batch.decode_context))
    return layer, graph.head_ops(tokens, batch.num_sampled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--prefix-steps", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        sets = scenario(args.requests, Path(tmp) / "scalesim-cache")
        cold_s, cold = timed_run(sets)
        warm_s, warm = timed_run(sets)
        batches = record_batches(sets)

    cfg = load_config(None, sets)
    spec = load_model(cfg.model)
    device = load_device(cfg.hardware)
    graph = OpGraph(spec, 1, cfg.dtype, cfg.resolved_kv_dtype)
    total_ops = 0
    for batch in batches:
        layer, head = step_ops(graph, batch)
        total_ops += spec.num_layers * len(layer) + len(head)

    prefix_ops = 0
    prefix_s = 0.0
    prefix_calls = 0
    for batch in batches[: args.prefix_steps]:
        layer, head = step_ops(graph, batch)
        for op in layer + head:
            fresh = ScaleSimBackend(device, cfg.compute_dtype, None)
            start = time.perf_counter()
            fresh.time(op)
            prefix_s += time.perf_counter() - start
            prefix_calls += fresh.sim_calls
            prefix_ops += 1
    per_op_s = prefix_s / prefix_ops
    memo_off_s = per_op_s * total_ops
    memo_off_calls = prefix_calls / prefix_ops * total_ops

    print(
        f"Llama-3.1-8B on the catalog npu (8 arrays of 128x128, ws), {args.requests} requests, "
        f"{len(batches):,} steps; SCALE-Sim {fresh.runner.version}"
    )
    print()
    print("| mode | wall time | SCALE-Sim calls | time in SCALE-Sim | ops simulated |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| (a) block reuse + memo, cold cache | {cold_s:,.1f} s | "
        f"{cold['accelerator_sim_calls']:,} | {cold['accelerator_sim_s']:,.1f} s | "
        f"{cold['accelerator_sim_calls'] + cold['accelerator_sim_cache_hits']:,} probe lookups |"
    )
    print(
        f"| (a) same, warm disk cache | {warm_s:,.1f} s | {warm['accelerator_sim_calls']:,} | "
        f"{warm['accelerator_sim_s']:,.1f} s | {warm['accelerator_sim_disk_hits']:,} from disk |"
    )
    print(
        f"| (b) memo off, extrapolated from {prefix_ops} ops of the first "
        f"{args.prefix_steps} steps | {memo_off_s:,.0f} s (est.) | "
        f"{memo_off_calls:,.0f} (est.) | {memo_off_s:,.0f} s (est.) | {total_ops:,} |"
    )
    print()
    print(
        f"(b) / (a) cold: {memo_off_s / cold_s:,.0f}x (extrapolated by op count: "
        f"{per_op_s:.3f} s per op on the prefix x {total_ops:,} ops)"
    )
    print(f"(b) / (a) warm: {memo_off_s / warm_s:,.0f}x")


if __name__ == "__main__":
    main()
