"""pytest-benchmark timings of the hot functions (`pytest tests/serving/test_bench_hot.py
--benchmark-enable`); in the normal run benchmarks are disabled and each body runs once as a test.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmservingsim.build import build_cluster
from llmservingsim.config import load_config
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.metrics.steps import StepChunk
from llmservingsim.perf.iteration import BatchShape
from llmservingsim.scenario import resolve
from llmservingsim.sequence import Sequence, Status
from llmservingsim.serving.decode_run import plan_decode_run
from llmservingsim.serving.instance import Instance
from llmservingsim.workload.request_spec import RequestSpec

BATCH = 256


def decoding_instance() -> Instance:
    """An 8B instance on an H100 whose 256 running requests are all past their prompts."""
    cfg = load_config(None, [f"scheduler.max_num_seqs={BATCH}"])
    instance = build_cluster(resolve(cfg), MetricsCollector()).instances[0]
    scheduler = instance.scheduler
    for i in range(BATCH):
        seq = Sequence(RequestSpec(i, 0.0, 200 + i, 4000))
        scheduler.blocks.allocate(seq, seq.num_tokens)  # the prompt's KV
        seq.generated = 1
        seq.num_computed = seq.num_tokens - 1  # the first token still needs its KV
        seq.status = Status.RUNNING
        scheduler.running.append(seq)
    return instance


def test_iteration_time_of_a_decode_step(benchmark: Any) -> None:
    timer = decoding_instance().timer
    batch = BatchShape(num_decode=BATCH, decode_context=BATCH * 500, num_sampled=BATCH)
    cost = benchmark(timer.step, batch)
    assert cost.seconds > 0 and cost.flops > 0


def test_vllm_schedule_of_a_decode_batch(benchmark: Any) -> None:
    """One request at a time (the path without fast-forward)."""
    scheduler = decoding_instance().scheduler
    scheduler.steady = None
    entries = benchmark(scheduler.schedule)
    assert len(entries) == BATCH
    assert all(num_new == 1 for _, num_new in entries)


def steady_instance() -> Instance:
    """:func:`decoding_instance` with the batch joined as steady decoders."""
    instance = decoding_instance()
    scheduler = instance.scheduler
    for seq in scheduler.running:
        seq.last_token_time = 0.0
    scheduler.step_done(0.0, [])
    assert scheduler.steady is not None and scheduler.steady.count == BATCH
    return instance


def test_step_of_a_steady_decode_batch(benchmark: Any) -> None:
    """Schedule and end a step of 256 steady decoders: no per-request work."""
    scheduler = steady_instance().scheduler
    steady = scheduler.steady
    assert steady is not None
    itl = MetricsCollector().itl
    clock = iter(range(1, 1 << 40))

    def cycle() -> list[Any]:
        entries = scheduler.schedule()
        now = float(next(clock))
        steady.end_step(now, itl)
        scheduler.step_done(now, [])
        return entries

    assert cycle() == [] and len(itl) == BATCH
    # Rounds bounded so the batch neither finishes nor runs out of KV blocks meanwhile.
    benchmark.pedantic(cycle, rounds=1000, iterations=1)
    assert steady.count == BATCH


def test_plan_of_a_decode_run(benchmark: Any) -> None:
    instance = steady_instance()
    scheduler = instance.scheduler
    steady = scheduler.steady
    assert steady is not None
    entries = scheduler.schedule()
    assert entries == [] and steady.in_flight == BATCH
    batch = instance._batch_shape(entries, 0.0, steady)
    cost = instance.timer.step(batch)

    def plan() -> Any:
        return plan_decode_run(steady, batch, cost, cost.seconds, instance.timer, 256)

    run = benchmark(plan)
    assert run is not None and len(run.ends) == 256
    assert (np.diff(run.ends) > 0).all()


def test_record_of_a_step(benchmark: Any) -> None:
    """MetricsCollector.on_step with a sink: one packed row per step (metrics/steps.py)."""
    metrics = MetricsCollector(step_sinks=[sink := _KeepSteps()], chunk_size=1 << 30)
    benchmark(metrics.on_step, 0, 0, 1.5, 0.02, BATCH, 0, BATCH, 900, 1000, 3, 410.0)
    metrics.flush()
    chunk = sink.chunks[0]
    assert len(chunk) >= 1
    assert chunk.start_s[0] == 1.5 and chunk.kv_blocks_used[0] == 900 and chunk.power_w[0] == 410.0


class _KeepSteps:
    def __init__(self) -> None:
        self.chunks: list[StepChunk] = []

    def write_steps(self, steps: StepChunk) -> None:
        self.chunks.append(steps)


def test_serving_scenario_b(benchmark: Any) -> None:
    """Scenario (b) of benchmarks/run_benchmarks.py through the whole simulation, on the build
    that is installed (compiled with mypyc where a C compiler was found; summary.json says)."""
    from llmservingsim.build_info import engine_build
    from llmservingsim.simulation import simulate

    cfg = load_config(None, ["workload.num_requests=300"])
    summary = benchmark(lambda: simulate(cfg, check_invariants=False).summary)
    assert summary["requests_completed"] == 300
    assert summary["engine_build"] == engine_build()
