"""Multi-step scheduling (scheduler.num_scheduler_steps, vLLM 0.6's --num-scheduler-steps):
a pure-decode step starts a group of N GPU steps; arrivals wait for its end; the host's
per-step work is paid once per group; requests that finish inside it hold their KV to its end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from llmservingsim.config import SimConfig, load_config
from llmservingsim.engine import EngineHooks
from llmservingsim.errors import ConfigError
from llmservingsim.outputs.files import write_summary
from llmservingsim.scenario import resolve
from llmservingsim.serving.instance import Instance
from llmservingsim.simulation import SimulationResult, observing, simulate
from llmservingsim.workload.request_spec import RequestSpec

BASE = ("model=llama-3.2-1b", "scheduler.policy=orca")


def config(*overrides: str) -> SimConfig:
    return load_config(None, [*BASE, *overrides])


@dataclasses.dataclass
class Step:
    start: float
    end: float
    ids: list[int]
    running: list[int]  # requests on the running list (KV held) when the step started
    blocks_used: int
    host_s: float  # the timer's host work for a step of this many decoding requests


class Recorder(EngineHooks):
    every_step = True

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.runs_laid_out = 0

    def after_start(
        self, instance: Instance, now: float, started: tuple[float, int] | None
    ) -> None:
        if started is None:
            return
        finish, k = started
        ve = instance.virtual_engines[k]
        sched = ve.scheduler
        ids = [seq.id for seq, _ in ve.in_flight]
        timer = instance.timer
        host = timer.step_overhead + timer.seq_overhead * (len(ids) + len(ve.held))
        running = [seq.id for seq in sched.running]
        self.steps.append(Step(now, finish, ids, running, sched.blocks.num_used, host))

    def after_end(self, instance: Instance, engine_index: int, now: float) -> None:
        self.runs_laid_out = instance.runs_laid_out


def run(
    cfg: SimConfig, specs: list[RequestSpec] | None = None
) -> tuple[SimulationResult, Recorder]:
    recorder = Recorder()
    with observing(recorder):
        result = simulate(cfg, requests=specs, check_invariants=True)
    return result, recorder


def records(result: SimulationResult) -> dict[int, Any]:
    return {r.id: r for r in result.metrics.records}


def test_request_arriving_mid_group_waits_for_the_group_boundary() -> None:
    first = RequestSpec(id=0, arrival_s=0.0, input_len=64, output_len=40)
    probe, _ = run(config("scheduler.num_scheduler_steps=8"), [first])
    ttft = records(probe)[0].ttft  # the prefill step; the group of 8 starts right after
    specs = [first, RequestSpec(id=1, arrival_s=ttft * 1.5, input_len=64, output_len=4)]

    result, rec = run(config("scheduler.num_scheduler_steps=8"), specs)
    steps = rec.steps
    assert steps[0].ids == [0]  # the prefill: a single step
    group = steps[1:9]
    assert all(s.ids == [0] for s in group)
    assert group[0].start < specs[1].arrival_s < group[0].end
    joined = next(k for k, s in enumerate(steps) if 1 in s.ids)
    assert joined == 9, "the arrival starts at the group's end, 8 steps after the prefill"
    assert steps[joined].start == pytest.approx(group[-1].end)
    assert records(result)[1].first_scheduled_s == steps[joined].start

    single, rec1 = run(config("scheduler.num_scheduler_steps=1"), specs)
    joined1 = next(k for k, s in enumerate(rec1.steps) if 1 in s.ids)
    assert joined1 == 2, "one step at a time: it joins the very next step"
    assert records(result)[1].ttft > records(single)[1].ttft


def test_host_overhead_is_paid_once_per_group() -> None:
    specs = [RequestSpec(id=i, arrival_s=0.0, input_len=32, output_len=25) for i in range(4)]
    result, rec = run(config("scheduler.num_scheduler_steps=8"), specs)
    steps = rec.steps
    # 1 prefill step, then 24 decode steps: 3 groups of 8.
    assert len(steps) == 25
    decode = steps[1:]
    host = decode[0].host_s
    assert host > 0
    for g in range(3):
        first, *rest = decode[8 * g : 8 * g + 8]
        for step in rest:
            # The same batch one token further: only the host's work tells them apart.
            assert first.end - first.start - (step.end - step.start) == pytest.approx(
                host, rel=0.02
            )
    single, rec1 = run(config("scheduler.num_scheduler_steps=1"), specs)
    busy = sum(s.end - s.start for s in steps)
    busy1 = sum(s.end - s.start for s in rec1.steps)
    # N = 1 pays it at all 24 decode steps, N = 8 at 3 of them.
    assert busy1 - busy == pytest.approx(21 * host, rel=0.02)
    assert result.summary["output_tokens"] == single.summary["output_tokens"] == 100


def test_requests_finishing_inside_a_group_are_computed_and_hold_kv_until_its_end() -> None:
    long = RequestSpec(id=0, arrival_s=0.0, input_len=512, output_len=30)
    short = [RequestSpec(id=i, arrival_s=0.0, input_len=512, output_len=3) for i in range(1, 18)]
    cfg = config(
        "scheduler.num_scheduler_steps=8",
        "scheduler.block_size=4",
        "scheduler.max_num_batched_tokens=16384",
    )
    result, rec = run(cfg, [long, *short])
    steps = rec.steps
    assert len(steps[0].ids) == 18  # every prompt in one prefill step
    group = steps[1:9]

    def seconds(step: Step) -> float:
        return step.end - step.start

    # The short requests sample their 3rd token at the end of the group's 2nd step: their
    # clients see it then, but they stay on the running list (their KV held) to the end.
    for r in short:
        assert records(result)[r.id].finish_s == group[1].end
        assert records(result)[r.id].output_tokens == 3
    for step in group[2:]:
        assert step.ids == [0]
        assert set(step.running) == set(range(18))
        assert step.blocks_used == group[1].blocks_used
    assert steps[9].running == [0], "released at the group's end"
    assert steps[9].blocks_used < group[-1].blocks_used
    # ... and still computed: a step of the group costs what its 18-request steps cost, more
    # than the next group's steps of request 0 alone (all three pay no host work).
    assert seconds(group[2]) == pytest.approx(seconds(group[1]), rel=1e-3)
    assert seconds(group[2]) > 1.03 * seconds(steps[10])


def test_tokens_are_conserved_and_invariants_hold_under_load() -> None:
    cfg = config(
        "scheduler.num_scheduler_steps=6",
        "scheduler.num_gpu_blocks_override=300",
        "workload.num_requests=200",
        "workload.arrival.rate=60",
        "seed=3",
    )
    watch = Watch()
    with observing(watch):  # check_invariants: KV ownership, every request accounted for
        result = simulate(cfg, check_invariants=True)
    recs = result.metrics.records
    assert len(recs) == 200
    assert all(r.status == "finished" for r in recs)
    assert sum(r.output_tokens for r in recs) == result.summary["output_tokens"]
    assert result.summary["preemptions"] > 0, "the KV cache ran short: groups met preemption"
    assert watch.fast_forward == {False}, "no fast-forward runs with multi-step groups"
    with observing(watch := Watch()):
        simulate(
            cfg.model_copy(
                update={"scheduler": cfg.scheduler.model_copy(update={"num_scheduler_steps": 1})}
            )
        )
    assert watch.fast_forward == {True}


class Watch(EngineHooks):
    """Sees the instances without asking for every step (fast-forward stays as configured)."""

    def __init__(self) -> None:
        self.fast_forward: set[bool] = set()

    def before_add(self, instance: Instance, now: float) -> None:
        self.fast_forward.add(instance.fast_forward)


def summary(result: SimulationResult, out: Path) -> dict[str, Any]:
    out.mkdir()
    data: dict[str, Any] = json.loads(write_summary(out, result.summary).read_text())
    del data["sim_wall_s"]
    return data


def test_one_step_is_the_engine_without_groups(tmp_path: Path) -> None:
    base = ("workload.num_requests=120", "workload.arrival.rate=30", "seed=5")
    a = summary(simulate(config(*base)), tmp_path / "a")  # fast-forward on: runs and steady
    b = summary(simulate(config(*base, "scheduler.num_scheduler_steps=1")), tmp_path / "b")
    assert a == b
    c = summary(simulate(config(*base, "scheduler.num_scheduler_steps=4")), tmp_path / "c")
    assert c["output_tokens"] == a["output_tokens"]
    assert c != a


@pytest.mark.parametrize("policy", ["vllm", "sarathi"])
def test_whole_prompts_of_a_chunking_policy_run_multi_step_as_orca(policy: str) -> None:
    """policy vllm (or sarathi) with enable_chunked_prefill: false is orca's whole-prompt
    rule (the same scheduler), which multi-step allows: it runs, request for request as orca."""
    base = ("workload.num_requests=60", "workload.arrival.rate=30", "seed=3")
    steps = "scheduler.num_scheduler_steps=8"
    orca = records(run(config(*base, steps))[0])
    whole = config(
        *base, steps, f"scheduler.policy={policy}", "scheduler.enable_chunked_prefill=false"
    )
    result, rec = run(whole)
    assert result.summary["requests_completed"] == 60
    assert records(result) == orca
    assert any(len(s.ids) > 1 for s in rec.steps)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("scheduler.policy=vllm",), "not supported by vLLM 0.6"),
        (("scheduler.policy=vllm", "scheduler.enable_chunked_prefill=true"), "chunked prefill"),
        (("scheduler.policy=priority", "scheduler.enable_chunked_prefill=false"), "not yet"),
        (("scheduler.policy=no_evict",), "not yet supported"),
        (("speculative.method=ngram",), "not supported by vLLM 0.6"),
        (("cluster.pipeline_parallel=2",), "not yet supported"),
        (("frontend.enabled=true", "frontend.async_scheduling=true"), "not yet supported"),
        (("model=gpt-oss-20b", "dtype=int4"), "sliding-window or chunked attention"),
        (("model=llama-4-scout", "dtype=fp8", "cluster.tensor_parallel=2"), "not yet supported"),
    ],
)
def test_combinations_that_are_not_supported_are_refused(
    overrides: tuple[str, ...], message: str
) -> None:
    cfg = load_config(
        None,
        [
            "model=llama-3.2-1b",
            "scheduler.policy=orca",
            "scheduler.num_scheduler_steps=4",
            *overrides,
        ],
    )
    with pytest.raises(ConfigError, match="num_scheduler_steps=4") as err:
        resolve(cfg)
    assert message in str(err.value)


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "x"])
def test_bad_step_counts_are_config_errors(value: str) -> None:
    with pytest.raises(ConfigError, match="num_scheduler_steps"):
        load_config(None, [*BASE, f"scheduler.num_scheduler_steps={value}"])


def test_clients_giving_up_mid_group_leave_it_and_free_their_kv() -> None:
    # Every request times out while running: the long outputs never finish within 0.5 s.
    cfg = config(
        "scheduler.num_scheduler_steps=8",
        "workload.num_requests=40",
        "workload.arrival.rate=200",
        "workload.timeout_s=0.5",
        "workload.output_len={dist: uniform, min: 2000, max: 3000}",
    )
    result, rec = run(cfg)  # check_invariants: no KV left, every request accounted for once
    assert result.summary["requests_timed_out"] == 40
    assert all(s.end > s.start for s in rec.steps), "no empty steps after the group emptied"


class KvRoom(EngineHooks):
    """After every step: each running request has KV blocks for every token it computed."""

    every_step = True

    def __init__(self) -> None:
        self.checked = 0

    def after_end(self, instance: Instance, engine_index: int, now: float) -> None:
        for ve in instance.virtual_engines:
            blocks = ve.scheduler.blocks
            for seq in ve.scheduler.running:
                assert seq.num_computed <= len(seq.blocks) * blocks.block_size, seq.id
                self.checked += 1


@pytest.mark.parametrize(
    "sets",
    [
        # Decode instances admit handed-over requests as decodes (one token to compute).
        (
            "cluster.pools=[{name: prefill, role: prefill, count: 1}, "
            "{name: decode, role: decode, count: 1}]",
            "scheduler.num_gpu_blocks_override=600",
        ),
        # Swapped-out requests resume as decodes.
        ("scheduler.preemption=swap", "scheduler.num_gpu_blocks_override=300"),
    ],
)
def test_requests_resuming_as_decodes_reserve_the_groups_kv(sets: tuple[str, ...]) -> None:
    cfg = config(
        "scheduler.num_scheduler_steps=8",
        "workload.num_requests=150",
        "workload.arrival.rate=60",
        "seed=2",
        *sets,
    )
    room = KvRoom()
    with observing(room):
        result = simulate(cfg, check_invariants=True)
    assert room.checked > 0
    assert result.summary["requests_completed"] == 150
