"""pytest-benchmark timings of the hot functions (`pytest tests/test_bench_hot.py
--benchmark-enable`); in the normal run benchmarks are disabled and each body runs once as a test.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmservingsim.config import load_config
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.perf.iteration import BatchShape
from llmservingsim.serving.decode_run import plan_decode_run
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.sequence import Sequence, Status
from llmservingsim.simulation import build_cluster
from llmservingsim.workload.request_spec import RequestSpec

BATCH = 256


def decoding_instance() -> Instance:
    """An 8B instance on an H100 whose 256 running requests are all past their prompts."""
    cfg = load_config(None, [f"scheduler.max_num_seqs={BATCH}"])
    instance = build_cluster(cfg, MetricsCollector()).instances[0]
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
    scheduler = decoding_instance().scheduler
    entries = benchmark(scheduler.schedule)
    assert len(entries) == BATCH
    assert all(num_new == 1 for _, num_new in entries)


def test_plan_of_a_decode_run(benchmark: Any) -> None:
    instance = decoding_instance()
    entries = instance.scheduler.schedule()
    batch = instance._batch_shape(entries, 0.0)
    cost = instance.timer.step(batch)

    def plan() -> Any:
        return plan_decode_run(
            entries, batch, cost, cost.seconds, instance.scheduler.blocks, instance.timer, 256
        )

    run = benchmark(plan)
    assert run is not None and len(run.ends) == 256
    assert (np.diff(run.ends) > 0).all()
