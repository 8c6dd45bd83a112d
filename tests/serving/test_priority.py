"""scheduler.policy: priority (serving/schedulers/priority.py): vLLM's priority scheduling.

Direct: the waiting order, the victim under KV pressure (vLLM V1's), and preemption by a
waiting request of strictly higher priority (at max_num_seqs and for KV blocks). Whole runs:
under overload the important client keeps its TTFT SLO while the other absorbs the queue,
every request ends exactly once, and equal priorities give exactly the ``vllm`` numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import llmservingsim.simulation as simulation
from llmservingsim.config import SchedulerConfig, load_config
from llmservingsim.engine import EngineHooks
from llmservingsim.errors import ConfigError
from llmservingsim.sequence import Sequence
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.schedulers import SCHEDULERS, Scheduler
from llmservingsim.serving.schedulers.base import ScheduledEntry
from llmservingsim.simulation import load_requests, simulate
from llmservingsim.workload.request_spec import RequestSpec


def scheduler(num_blocks: int, max_num_seqs: int, max_batched: int = 4096) -> Scheduler:
    cfg = SchedulerConfig(
        policy="priority",
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_batched,
        block_size=16,
    )
    return SCHEDULERS.get("priority")(cfg, BlockManager(num_blocks, 16))


def request(i: int, arrival: float, priority: int, input_len: int = 32) -> Sequence:
    return Sequence(RequestSpec(i, arrival, input_len, 100, priority=priority))


def apply(entries: list[ScheduledEntry]) -> None:
    """A step's results, as the instance applies them (no request finishes here)."""
    for seq, num in entries:
        seq.num_computed += num
        if seq.num_computed == seq.num_tokens:
            seq.generated += 1


def ids(seqs: Any) -> list[int]:
    return [s.id for s in seqs]


def test_waiting_queue_is_ordered_by_priority_then_arrival() -> None:
    sched = scheduler(num_blocks=100, max_num_seqs=4)
    for seq in (request(0, 0.0, 2), request(1, 1.0, 0), request(2, 2.0, 1), request(3, 3.0, 0)):
        sched.add(seq)
    assert ids(sched.waiting) == [1, 3, 2, 0]
    entries = sched.schedule()
    assert ids(s for s, _ in entries) == [1, 3, 2, 0]  # admitted in that order


def test_waiting_request_preempts_a_less_important_one_at_max_num_seqs() -> None:
    sched = scheduler(num_blocks=100, max_num_seqs=2)
    low = [request(0, 0.0, 1), request(1, 0.5, 1)]
    for seq in low:
        sched.add(seq)
    apply(sched.schedule())
    sched.add(request(2, 1.0, 0))
    entries = sched.schedule()
    # The victim is the running request with the largest (priority, arrival): id 1. It had
    # been scheduled this step (a decode): its token goes back to the budget.
    assert ids(s for s, _ in entries) == [0, 2]
    assert sum(n for _, n in entries) == 1 + 32
    assert ids(sched.running) == [0, 2] and ids(sched.waiting) == [1]
    assert low[1].preemptions == 1 and not low[1].blocks and low[1].num_computed == 0


def test_equal_priority_never_preempts_for_a_waiting_request() -> None:
    sched = scheduler(num_blocks=100, max_num_seqs=2)
    for seq in (request(0, 0.0, 1), request(1, 0.5, 1)):
        sched.add(seq)
    apply(sched.schedule())
    sched.add(request(2, 1.0, 1))
    entries = sched.schedule()
    assert ids(s for s, _ in entries) == [0, 1]
    assert ids(sched.waiting) == [2] and sched.preemptions == 0


def test_waiting_request_preempts_for_kv_blocks_only_when_that_makes_room() -> None:
    # 10 blocks of 16 tokens: two low-priority prompts of 64 tokens hold 8 (4 + 4).
    sched = scheduler(num_blocks=10, max_num_seqs=8)
    for seq in (request(0, 0.0, 1, 64), request(1, 0.5, 1, 64)):
        sched.add(seq)
    apply(sched.schedule())
    assert sched.blocks.num_free == 2
    # A high-priority prompt of 48 tokens needs 3 blocks: one victim (4 blocks) makes room.
    sched.add(request(2, 1.0, 0, 48))
    entries = sched.schedule()
    assert ids(s for s, _ in entries) == [0, 2] and ids(sched.waiting) == [1]
    assert sched.preemptions == 1
    # A prompt bigger than the whole cache less the important requests' blocks preempts
    # nobody (it would not fit anyway): 176 tokens = 11 blocks > 10.
    sched2 = scheduler(num_blocks=12, max_num_seqs=8)
    for seq in (request(0, 0.0, 1, 64), request(1, 0.5, 0, 64)):
        sched2.add(seq)
    apply(sched2.schedule())
    sched2.add(request(2, 1.0, 0, 176))
    entries = sched2.schedule()
    assert ids(s for s, _ in entries) == [1, 0] and sched2.preemptions == 0


def test_running_request_short_of_kv_preempts_the_least_important_not_the_newest() -> None:
    # vLLM V1, policy priority: the victim is max(running, key=(priority, arrival)), here the
    # low-priority request admitted first (already scheduled this step), not the newest one.
    sched = scheduler(num_blocks=4, max_num_seqs=8)
    low, high = request(0, 0.0, 1, 32), request(1, 1.0, 0, 32)
    sched.add(low)
    sched.add(high)
    apply(sched.schedule())  # 2 + 2 blocks, both prompts done: each needs a block at token 33
    entries = sched.schedule()
    assert ids(s for s, _ in entries) == [1] and entries[0][1] == 1
    assert ids(sched.running) == [1] and ids(sched.waiting) == [0]
    assert low.preemptions == 1 and high.preemptions == 0


# ------------------------------------------------------------------- whole runs

SMALL = ["model=llama-3.2-1b", "seed=3"]
# llama-3.2-1b on one H100 serves ~125 req/s of the default lengths
# (tests/serving/test_overload.py); 250 req/s is twice that. The interactive client sends
# 30 % of it (75 req/s), well within.
TWO_CLASSES = (
    "workload.clients=[{name: interactive, share: 0.3, priority: 0, slo: {ttft_s: 0.5}},"
    " {name: batch, share: 0.7, priority: 1}]"
)
OVERLOAD = ["workload.num_requests=1500", "workload.arrival.rate=250"]


def p99_ttft(result: Any, cfg: Any, client: int) -> float:
    log = result.metrics.requests
    table = load_requests(cfg)
    assert table.client is not None
    rows = log.column("id")
    mask = table.client[rows] == client
    ttft = log.column("first_token_s")[mask] - log.column("arrival_s")[mask]
    return float(np.percentile(ttft, 99))


def test_important_client_keeps_its_slo_under_overload_and_the_other_absorbs_the_queue() -> None:
    cfg = load_config(None, [*SMALL, *OVERLOAD, TWO_CLASSES, "scheduler.policy=priority"])
    s = simulate(cfg).summary
    inter, batch = s["clients"]["interactive"], s["clients"]["batch"]
    assert s["saturated"] is True
    assert inter["ttft_s"]["p99"] <= 0.5, inter["ttft_s"]
    assert inter["slo_attainment"] >= 0.99
    assert batch["ttft_s"]["p50"] > 10 * inter["ttft_s"]["p99"]
    # The same traffic under vllm (FCFS, priorities left at 0): everyone queues together.
    fcfs = load_config(None, [*SMALL, *OVERLOAD, TWO_CLASSES.replace("priority: 1", "priority: 0")])
    f = simulate(fcfs).summary
    assert f["clients"]["interactive"]["ttft_s"]["p99"] > 0.5


def test_every_request_ends_exactly_once_across_classes() -> None:
    """Conservation under overload with preemption (small KV cache), a bounded queue and a
    queueing timeout: each request is one row, in one client, in one final status."""
    cfg = load_config(
        None,
        [
            *SMALL,
            *OVERLOAD,
            TWO_CLASSES,
            "scheduler.policy=priority",
            "scheduler.num_gpu_blocks_override=600",
            "scheduler.max_queue=200",
            "scheduler.request_timeout_s=3",
        ],
    )
    result = simulate(cfg)
    s = result.summary
    ids_seen = result.metrics.requests.column("id")
    assert sorted(ids_seen.tolist()) == list(range(1500))
    clients = s["clients"]
    assert sum(c["requests"] for c in clients.values()) == 1500
    for c in clients.values():
        ended = (
            c["requests_completed"]
            + c["requests_failed"]
            + c["requests_rejected"]
            + c["requests_timed_out"]
        )
        assert ended == c["requests"]
    assert s["preemptions"] > 0 and s["requests_rejected"] + s["requests_timed_out"] > 0


SUMMARY_KEYS = (
    "requests_completed",
    "requests_failed",
    "preemptions",
    "simulated_time_s",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "output_tokens",
    "clients",
)


def test_equal_priorities_give_exactly_the_vllm_numbers() -> None:
    base = [
        *SMALL,
        *OVERLOAD,
        "scheduler.num_gpu_blocks_override=600",  # KV pressure: preemption happens
    ]
    same = TWO_CLASSES.replace("priority: 0", "priority: 2").replace("priority: 1", "priority: 2")
    prio = simulate(load_config(None, [*base, same, "scheduler.policy=priority"])).summary
    zero = TWO_CLASSES.replace("priority: 1", "priority: 0")
    vllm = simulate(load_config(None, [*base, zero])).summary
    assert vllm["preemptions"] > 0
    for c in ("interactive", "batch"):
        prio["clients"][c].pop("priority")
        vllm["clients"][c].pop("priority")
    for key in SUMMARY_KEYS:
        assert prio[key] == vllm[key], key


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A summary value as {dotted key: number} (None where the summary has none)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flat(item, f"{prefix}{key}."))
        return out
    return {prefix: value}


class SeenInstances(EngineHooks):
    def __init__(self) -> None:
        self.instances: dict[int, Instance] = {}

    def before_add(self, instance: Instance, now: float) -> None:
        self.instances[instance.index] = instance


def test_steady_decoders_and_decode_runs_change_no_number() -> None:
    """The steady group is kept only in steps no preemption can touch: fast-forward on and
    off give the same numbers, and the group and decode runs are used."""
    over = [*SMALL, "workload.num_requests=600", "workload.arrival.rate=160", TWO_CLASSES]
    over += ["scheduler.policy=priority", "scheduler.num_gpu_blocks_override=1500"]
    results = []
    for ff in (False, True):
        seen = SeenInstances()
        with simulation.observing(seen):
            results.append(
                simulate(load_config(None, [*over, f"simulator.fast_forward={str(ff).lower()}"]))
            )
        laid_out = sum(i.runs_laid_out for i in seen.instances.values())
        assert (laid_out > 0) == ff
    step, fast = results
    assert step.summary["preemptions"] > 0
    for key in SUMMARY_KEYS:
        ref, got = flat(step.summary[key]), flat(fast.summary[key])
        assert ref.keys() == got.keys()
        for name, value in ref.items():
            if isinstance(value, float):
                assert got[name] == pytest.approx(value, rel=1e-9), key + name
            else:
                assert got[name] == value, key + name
    by_id = {r.id: r for r in step.metrics.records}
    for rec in fast.metrics.records:
        assert rec.preemptions == by_id[rec.id].preemptions
        assert rec.finish_s == pytest.approx(by_id[rec.id].finish_s, rel=1e-9)


def test_priority_on_a_policy_that_ignores_it_is_refused() -> None:
    with pytest.raises((ConfigError, ValueError), match="ignores priorities"):
        load_config(None, [*SMALL, TWO_CLASSES, "scheduler.policy=no_evict"])
