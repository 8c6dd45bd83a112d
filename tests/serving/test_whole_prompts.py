"""scheduler.enable_chunked_prefill: false (TensorRT-LLM's default): a prompt runs whole or
waits; orca's rule, now a setting of every chunked-prefill policy."""

from __future__ import annotations

import pytest

from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.sequence import Sequence
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.schedulers import SCHEDULERS, Scheduler
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec


def _scheduler(policy: str, chunked: bool | None, budget: int = 512) -> Scheduler:
    cfg = load_config(
        None,
        [
            f"scheduler.policy={policy}",
            f"scheduler.max_num_batched_tokens={budget}",
            "scheduler.block_size=16",
        ],
    ).scheduler
    cfg = cfg.model_copy(update={"enable_chunked_prefill": chunked})
    return SCHEDULERS.get(policy)(cfg, BlockManager(1000, 16))


def _first_step(sched: Scheduler, prompts: list[int]) -> list[tuple[int, int]]:
    for i, n in enumerate(prompts):
        sched.add(Sequence(RequestSpec(id=i, arrival_s=0.0, input_len=n, output_len=4)))
    return [(seq.id, n) for seq, n in sched.schedule()]


@pytest.mark.parametrize("policy", ["vllm", "no_evict", "priority"])
def test_whole_prompts_wait_for_a_step_with_room(policy: str) -> None:
    # chunked: the second prompt starts with what is left of the budget
    assert _first_step(_scheduler(policy, None), [300, 300]) == [(0, 300), (1, 212)]
    assert _first_step(_scheduler(policy, True), [300, 300]) == [(0, 300), (1, 212)]
    # whole prompts: it waits for a step with room for all of it
    assert _first_step(_scheduler(policy, False), [300, 300]) == [(0, 300)]
    assert _first_step(_scheduler(policy, False), [300, 200]) == [(0, 300), (1, 200)]
    # a prompt longer than the whole budget runs alone in an otherwise empty step
    assert _first_step(_scheduler(policy, False), [900, 10]) == [(0, 900)]


def test_orca_runs_whole_prompts_whatever_the_default() -> None:
    assert _first_step(_scheduler("orca", None), [300, 300]) == [(0, 300)]


@pytest.mark.parametrize("policy", ["orca", "static"])
def test_chunking_a_whole_prompt_policy_is_an_error(policy: str) -> None:
    cfg = load_config(None, [f"scheduler.policy={policy}", "scheduler.enable_chunked_prefill=true"])
    with pytest.raises(ConfigError, match="runs whole prompts"):
        simulate(cfg)


def test_trtllm_preset_runs_whole_prompts() -> None:
    assert load_config(None, ["engine=trtllm"]).scheduler.enable_chunked_prefill is False
    sets = [
        "engine=trtllm",
        "scheduler.max_num_batched_tokens=1024",
        "workload.num_requests=6",
        "workload.arrival.rate=.inf",
        "workload.input_len={dist: fixed, value: 600}",
        "workload.output_len={dist: fixed, value: 2}",
    ]
    whole = simulate(load_config(None, sets)).summary
    chunked = simulate(load_config(None, [*sets, "scheduler.enable_chunked_prefill=true"]))
    assert whole["requests_completed"] == chunked.summary["requests_completed"] == 6
    # one 600-token prompt per step (two do not fit 1024) against 1024 tokens of prompts in
    # every chunked step: 6 prefill steps, and the last one's decode, against 4 + 1
    assert (whole["iterations"], chunked.summary["iterations"]) == (7, 5)
