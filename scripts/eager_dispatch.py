"""The host's dispatch time per kernel implied by published eager-step measurements
(docs/engines.md, "CUDA graphs": the default of perf.cuda_graphs.launch_us).

Each measurement is a step an engine ran without CUDA graphs, host-bound: the step time over
the kernels the simulator's op graph launches for that step (the engine's preset fusion, the
same count the eager launch floor uses) is the dispatch time per kernel.

    python scripts/eager_dispatch.py
"""

from __future__ import annotations

from llmservingsim.build import build_timer
from llmservingsim.config import load_config
from llmservingsim.perf.iteration import BatchShape
from llmservingsim.scenario import resolve

# (source, engine preset, model, tensor parallel, decode batch, measured eager step in ms)
MEASURED = (
    (
        "sgl-project/sglang PR #1401: Llama-3-8B, batch 1, --disable-cuda-graph (triton)",
        "sglang",
        "llama-3.1-8b",
        1,
        1,
        9.28,
    ),
    (
        "vllm-project/vllm issue #45709: Qwen3-30B-A3B TP4, 8 clients, compile without graphs",
        "vllm",
        "qwen3-30b-a3b",
        4,
        8,
        34.4,
    ),
)


def kernels(engine: str, model: str, tp: int, batch: int) -> int:
    """Kernels one decode step of ``batch`` sequences launches (the eager floor's count)."""
    settings = [f"engine={engine}", f"model={model}", f"cluster.tensor_parallel={tp}"]
    scenario = resolve(load_config(None, [*settings, "hardware=h100-sxm"]))
    timer = build_timer(scenario, scenario.pools[0], 0)
    return timer.step_kernels(BatchShape([], batch, batch * 1024, batch))


def main() -> None:
    for source, engine, model, tp, batch, step_ms in MEASURED:
        count = kernels(engine, model, tp, batch)
        print(source)
        print(f"  eager step {step_ms} ms / {count} kernels = {step_ms / count * 1e3:.1f} µs each")


if __name__ == "__main__":
    main()
