"""Engine behaviours that delay a request's first step under load (docs/engines.md):
TensorRT-LLM's batch waiting (scheduler.batch_wait_*) and attention-DP context balancing
(scheduler.attention_dp_balance), SGLang's receive interval (scheduler.recv_interval)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from llmservingsim.config import SimConfig, load_config
from llmservingsim.engine import EngineHooks
from llmservingsim.errors import ConfigError
from llmservingsim.scenario import resolve
from llmservingsim.serving.instance import Instance
from llmservingsim.simulation import SimulationResult, observing, simulate
from llmservingsim.workload.request_spec import RequestSpec

DENSE = ("model=llama-3.2-1b", "simulator.fast_forward=true")
MOE = (
    "model=qwen3-30b-a3b",
    "cluster.data_parallel=2",
    "cluster.expert_parallel=2",
    "simulator.fast_forward=true",
)


@dataclasses.dataclass
class Step:
    start: float
    ids: list[int]  # every request computed in the step (all ranks)


class Recorder(EngineHooks):
    every_step = True

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def after_start(
        self, instance: Instance, now: float, started: tuple[float, int] | None
    ) -> None:
        if started is None:
            return
        ids = [seq.id for ve in instance.virtual_engines for seq, _ in ve.in_flight]
        for ve in instance.virtual_engines:
            steady = ve.scheduler.steady
            if ve.busy and steady is not None and steady.in_flight:
                ids += [seq.id for seq in ve.scheduler.running[: steady.in_flight]]
        self.steps.append(Step(now, sorted(ids)))


def run(cfg: SimConfig, specs: list[RequestSpec]) -> tuple[SimulationResult, list[Step]]:
    recorder = Recorder()
    with observing(recorder):
        result = simulate(cfg, requests=specs, check_invariants=True)
    return result, recorder.steps


def first_step(steps: list[Step], rid: int) -> int:
    return next(k for k, s in enumerate(steps) if rid in s.ids)


def arrival_step(steps: list[Step], arrival: float) -> int:
    """The first step that starts at or after ``arrival``."""
    return next(k for k, s in enumerate(steps) if s.start >= arrival)


def ttft(result: SimulationResult, rid: int) -> float:
    return next(r.ttft for r in result.metrics.records if r.id == rid)


def decode_then_arrival(gap_steps: int = 3) -> list[RequestSpec]:
    """Request 0 decodes alone; request 1 arrives ``gap_steps`` decode steps after its
    first token (a step of the 1B model on the default device is ~1 ms: placed by a probe)."""
    first = RequestSpec(id=0, arrival_s=0.0, input_len=64, output_len=60)
    probe = simulate(load_config(None, list(DENSE)), requests=[first])
    record = probe.metrics.records[0]
    step = (record.e2e - record.ttft) / 59
    arrival = record.ttft + (gap_steps + 0.5) * step
    return [first, RequestSpec(id=1, arrival_s=arrival, input_len=64, output_len=8)]


# ----------------------------------------------------------------------------- batch waiting


def test_batch_waiting_holds_a_context_beside_decodes_for_the_timeout() -> None:
    specs = decode_then_arrival()
    plain, plain_steps = run(load_config(None, list(DENSE)), specs)
    joined = first_step(plain_steps, 1)
    assert joined == arrival_step(plain_steps, specs[1].arrival_s)  # the very next step

    waited = load_config(
        None,
        [*DENSE, "scheduler.batch_wait_timeout_iters=5", "scheduler.batch_wait_max_tokens_ratio=1"],
    )
    result, steps = run(waited, specs)
    arrived = arrival_step(steps, specs[1].arrival_s)
    # Held in 5 steps that ran context beside generation, started in the 6th.
    assert first_step(steps, 1) == arrived + 5
    assert all(steps[k].ids == [0] for k in range(arrived, arrived + 5))
    assert ttft(result, 1) > ttft(plain, 1)
    assert result.summary["requests_completed"] == 2


@pytest.mark.parametrize("policy", ["vllm", "priority", "no_evict", "sarathi"])
def test_batch_waiting_is_the_same_with_and_without_fast_forward(policy: str) -> None:
    specs = decode_then_arrival()
    sets = [
        "model=llama-3.2-1b",
        f"scheduler.policy={policy}",
        "scheduler.batch_wait_timeout_iters=5",
        "scheduler.batch_wait_max_tokens_ratio=1",
    ]
    fast, slow = (
        simulate(load_config(None, [*sets, f"simulator.fast_forward={ff}"]), requests=specs)
        for ff in ("true", "false")
    )
    assert ttft(fast, 1) == pytest.approx(ttft(slow, 1), rel=1e-9)
    assert ttft(fast, 0) == pytest.approx(ttft(slow, 0), rel=1e-9)


def test_batch_waiting_releases_at_once_when_the_tokens_reach_the_ratio() -> None:
    specs = decode_then_arrival()
    # 64 prompt tokens + 1 decode = 65 >= 0.005 × 8192 = 41: no wait.
    cfg = load_config(
        None,
        [
            *DENSE,
            "scheduler.batch_wait_timeout_iters=50",
            "scheduler.batch_wait_max_tokens_ratio=0.005",
        ],
    )
    _, steps = run(cfg, specs)
    assert first_step(steps, 1) == arrival_step(steps, specs[1].arrival_s)


def test_batch_waiting_never_holds_a_context_with_nothing_to_generate() -> None:
    specs = [RequestSpec(id=i, arrival_s=0.0, input_len=64, output_len=8) for i in range(3)]
    cfg = load_config(
        None,
        [
            *DENSE,
            "scheduler.batch_wait_timeout_iters=20",
            "scheduler.batch_wait_max_tokens_ratio=1",
        ],
    )
    _, steps = run(cfg, specs)
    assert steps[0].ids == [0, 1, 2]  # no generation request: no waiting


# ----------------------------------------------------------------------------- receive interval


def test_arrivals_during_decodes_are_taken_in_every_interval_passes() -> None:
    specs = decode_then_arrival(gap_steps=2)
    plain, plain_steps = run(load_config(None, list(DENSE)), specs)
    result, steps = run(load_config(None, [*DENSE, "scheduler.recv_interval=12"]), specs)
    arrived = arrival_step(steps, specs[1].arrival_s)
    joined = first_step(steps, 1)
    # Taken in after the prefill pass (count reset), then once 12 decode passes added up.
    first_token_step = first_step(steps, 0)  # request 0's prefill
    decode_passes = joined - (first_token_step + 1)
    assert decode_passes == 12
    assert joined > arrived
    assert ttft(result, 1) > ttft(plain, 1)
    assert first_step(plain_steps, 1) == arrival_step(plain_steps, specs[1].arrival_s)


def test_an_arrival_at_an_idle_engine_starts_at_once_under_a_receive_interval() -> None:
    specs = [RequestSpec(id=0, arrival_s=0.0, input_len=64, output_len=4)]
    later = RequestSpec(id=1, arrival_s=5.0, input_len=64, output_len=4)
    plain, _ = run(load_config(None, list(DENSE)), [*specs, later])
    result, _ = run(load_config(None, [*DENSE, "scheduler.recv_interval=30"]), [*specs, later])
    assert ttft(result, 1) == pytest.approx(ttft(plain, 1))
    assert result.summary["requests_completed"] == 2


def test_a_receive_interval_serves_a_load_with_the_invariants_on() -> None:
    specs = [RequestSpec(i, i * 0.002, 200 + i % 7, 30 + i % 11) for i in range(120)]
    cfg = load_config(None, [*DENSE, "scheduler.recv_interval=10"])
    result, _ = run(cfg, specs)
    assert result.summary["requests_completed"] == 120


# ----------------------------------------------------------------------------- attention DP


def _moe(*sets: str) -> SimConfig:
    return load_config(None, [*MOE, *sets])


def test_ranks_hold_a_lone_context_until_the_timeout() -> None:
    # One long request per rank, then one arrival: only its rank has a context request.
    specs = [RequestSpec(id=i, arrival_s=0.0, input_len=64, output_len=40) for i in (0, 1)]
    probe = simulate(_moe(), requests=specs)
    record = probe.metrics.records[0]
    step = (record.e2e - record.ttft) / 39
    specs.append(RequestSpec(id=2, arrival_s=record.ttft + 3.5 * step, input_len=64, output_len=4))
    plain, plain_steps = run(_moe(), specs)
    assert first_step(plain_steps, 2) == arrival_step(plain_steps, specs[2].arrival_s)

    balance = "scheduler.attention_dp_balance={timeout_iters: 6, batching_wait_iters: 0}"
    result, steps = run(_moe(balance), specs)
    held = first_step(steps, 2) - arrival_step(steps, specs[2].arrival_s)
    # The wait count runs every step that not every rank has a context request, from the
    # last release (the first prefills, step 0): the arrival starts in the step it reaches 6.
    assert 0 < held <= 6
    assert first_step(steps, 2) == first_step(steps, 0) + 6
    assert ttft(result, 2) > ttft(plain, 2)


def test_ranks_start_together_when_every_rank_has_a_context() -> None:
    specs = [RequestSpec(id=i, arrival_s=0.0, input_len=64, output_len=40) for i in (0, 1)]
    probe = simulate(_moe(), requests=specs)
    record = probe.metrics.records[0]
    at = record.ttft + 3.5 * (record.e2e - record.ttft) / 39
    specs += [RequestSpec(id=i, arrival_s=at, input_len=64, output_len=4) for i in (2, 3)]
    balance = "scheduler.attention_dp_balance={timeout_iters: 60, batching_wait_iters: 0}"
    _, steps = run(_moe(balance), specs)
    arrived = arrival_step(steps, at)
    assert first_step(steps, 2) == first_step(steps, 3) == arrived


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (
            ("scheduler.batch_wait_timeout_iters=5", "scheduler.policy=orca"),
            ("batch_wait", "policy: orca", "not yet supported"),
        ),
        (
            ("scheduler.recv_interval=10", "scheduler.preemption=swap"),
            ("recv_interval=10", "swap", "not yet supported"),
        ),
        (
            ("scheduler.attention_dp_balance={timeout_iters: 5}",),
            ("attention_dp_balance", "data_parallel"),
        ),
        (
            (*MOE, "scheduler.batch_wait_max_tokens_ratio=0.5"),
            ("batch_wait", "data_parallel", "attention data parallelism"),
        ),
        (
            (*MOE, "scheduler.recv_interval=10"),
            ("recv_interval=10", "data_parallel", "not yet supported"),
        ),
        (
            ("scheduler.recv_interval=10", "scheduler.policy=priority"),
            ("recv_interval=10", "policy: priority", "not yet supported"),
        ),
        (
            ("scheduler.batch_wait_timeout_iters=5",),
            ("batch_wait_max_tokens_ratio", "both"),
        ),
        (
            ("scheduler.batch_wait_max_tokens_ratio=0.5",),
            ("batch_wait_timeout_iters", "both"),
        ),
    ],
)
def test_settings_where_they_are_not_modelled_are_refused(
    sets: tuple[str, ...], words: tuple[str, ...]
) -> None:
    cfg = load_config(None, ["model=llama-3.2-1b", *sets])
    with pytest.raises(ConfigError) as err:
        resolve(cfg)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "setting",
    [
        "scheduler.batch_wait_max_tokens_ratio=1.5",
        "scheduler.batch_wait_timeout_iters=-1",
        "scheduler.recv_interval=0",
        "scheduler.attention_dp_balance={timeout_iters: -2}",
    ],
)
def test_out_of_range_values_are_refused(setting: str) -> None:
    with pytest.raises(ConfigError):
        load_config(None, [setting])


def test_defaults_hold_nothing_back() -> None:
    sched: Any = SimConfig().scheduler
    assert sched.batch_wait_timeout_iters == 0 and sched.batch_wait_max_tokens_ratio == 0.0
    assert sched.recv_interval == 1 and sched.attention_dp_balance is None
