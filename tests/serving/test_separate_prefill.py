"""SGLang's separate prefill batches (scheduler.mixed_prefill: false, docs/engines.md): a step
with prompt work runs only prompts, prefill first; the running requests' decodes wait."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest

from llmservingsim.config import SimConfig, load_config
from llmservingsim.engine import EngineHooks
from llmservingsim.errors import ConfigError, InputWarning
from llmservingsim.scenario import resolve
from llmservingsim.serving.instance import Instance
from llmservingsim.simulation import SimulationResult, observing, simulate
from llmservingsim.workload.request_spec import RequestSpec

POLICIES = str(Path(__file__).resolve().parents[2] / "examples" / "policies" / "my_policies.py")
DENSE = ("model=llama-3.2-1b", "scheduler.max_num_batched_tokens=1024")
SEPARATE = (*DENSE, "scheduler.mixed_prefill=false")


@dataclasses.dataclass
class Step:
    start: float
    ids: list[int]  # every request computed in the step
    prompts: int  # entries computing more than one token (prompt chunks)
    decodes: int  # entries computing one token (steady decoders included)


class Recorder(EngineHooks):
    every_step = True

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def after_start(
        self, instance: Instance, now: float, started: tuple[float, int] | None
    ) -> None:
        if started is None:
            return
        entries = [(seq.id, n) for ve in instance.virtual_engines for seq, n in ve.in_flight]
        for ve in instance.virtual_engines:
            steady = ve.scheduler.steady
            if ve.busy and steady is not None and steady.in_flight:
                entries += [(seq.id, 1) for seq in ve.scheduler.running[: steady.in_flight]]
        ids = sorted(rid for rid, _ in entries)
        prompts = sum(1 for _, n in entries if n > 1)
        self.steps.append(Step(now, ids, prompts, len(entries) - prompts))


def run(cfg: SimConfig, specs: list[RequestSpec]) -> tuple[SimulationResult, list[Step]]:
    recorder = Recorder()
    with observing(recorder):
        result = simulate(cfg, requests=specs, check_invariants=True)
    return result, recorder.steps


def ttft(result: SimulationResult, rid: int) -> float:
    return next(r.ttft for r in result.metrics.records if r.id == rid)


def decoding_then_long_prompt() -> list[RequestSpec]:
    """Request 0 decodes alone; request 1 (a 3,000-token prompt: three 1,024-token chunks)
    arrives while it does."""
    first = RequestSpec(id=0, arrival_s=0.0, input_len=64, output_len=80)
    probe = simulate(load_config(None, list(DENSE)), requests=[first])
    record = probe.metrics.records[0]
    step = (record.e2e - record.ttft) / 79
    arrival = record.ttft + 5.5 * step
    return [first, RequestSpec(id=1, arrival_s=arrival, input_len=3000, output_len=8)]


def prompt_steps(steps: list[Step], rid: int, chunks: int) -> list[Step]:
    first = next(k for k, s in enumerate(steps) if rid in s.ids)
    return steps[first : first + chunks]


def test_a_prompt_runs_apart_from_the_decodes_chunk_by_chunk() -> None:
    specs = decoding_then_long_prompt()
    mixed, mixed_steps = run(load_config(None, list(DENSE)), specs)
    # vLLM: each of the prompt's steps carries request 0's decode too.
    assert all(s.ids == [0, 1] for s in prompt_steps(mixed_steps, 1, 3))

    result, steps = run(load_config(None, list(SEPARATE)), specs)
    chunks = prompt_steps(steps, 1, 3)
    # SGLang: the three chunks run alone, back to back; request 0 decodes before and after.
    assert [s.ids for s in chunks] == [[1], [1], [1]]
    after = steps.index(chunks[-1]) + 1
    assert 0 in steps[after].ids
    before = steps.index(chunks[0]) - 1
    assert steps[before].ids == [0]
    # Request 0 waited three steps for the prompt; request 1's chunks were not slowed.
    record = {r.id: r for r in result.metrics.records}
    mixed_record = {r.id: r for r in mixed.metrics.records}
    assert record[0].e2e > mixed_record[0].e2e
    assert ttft(result, 1) <= ttft(mixed, 1)
    assert result.summary["requests_completed"] == 2


def test_decodes_run_when_no_prompt_can_start() -> None:
    specs = decoding_then_long_prompt()
    # One running request at most: request 1 waits, request 0 decodes every step meanwhile.
    _, steps = run(load_config(None, [*SEPARATE, "scheduler.max_num_seqs=1"]), specs)
    first = next(k for k, s in enumerate(steps) if 1 in s.ids)
    assert all(s.ids == [0] for s in steps[1:first])
    assert len(steps[1:first]) == 79  # all of request 0's decodes, none skipped


class LaidOut(EngineHooks):
    """Counts the fast-forward runs the instances laid out."""

    def __init__(self) -> None:
        self.instances: dict[int, Instance] = {}

    def before_add(self, instance: Instance, now: float) -> None:
        self.instances[instance.index] = instance

    @property
    def runs(self) -> int:
        return sum(i.runs_laid_out for i in self.instances.values())


@pytest.mark.parametrize(
    ("sets", "specs"),
    [
        ((), [RequestSpec(i, i * 0.003, 300 + 97 * (i % 5), 20 + i % 13) for i in range(60)]),
        # The queue head waits for KV (no_evict's promises) while the batch decodes: the
        # steady group stays whole (a step that starts no prompt decodes) and runs fast.
        (
            ("scheduler.policy=no_evict", "scheduler.num_gpu_blocks_override=300"),
            [RequestSpec(i, 0.0, 200 + 53 * (i % 7), 150 + 11 * (i % 9)) for i in range(40)],
        ),
    ],
    ids=["light", "kv_blocked"],
)
def test_the_same_with_and_without_fast_forward(
    sets: tuple[str, ...], specs: list[RequestSpec]
) -> None:
    results, runs = {}, {}
    for ff in ("true", "false"):
        seen = LaidOut()
        with observing(seen):
            results[ff] = simulate(
                load_config(None, [*SEPARATE, *sets, f"simulator.fast_forward={ff}"]),
                requests=specs,
                check_invariants=True,
            )
        runs[ff] = seen.runs
    # The steady group is dissolved only by a step that starts a prompt: the decode steps
    # between prompts fast-forward as with mixed steps (where prompts join the group's steps).
    mixed = LaidOut()
    with observing(mixed):
        simulate(load_config(None, [*DENSE, *sets]), requests=specs)
    assert runs["true"] >= mixed.runs
    assert runs["false"] == 0
    fast, slow = results["true"], results["false"]
    assert fast.summary["requests_completed"] == slow.summary["requests_completed"] == len(specs)
    slow_records = {r.id: r for r in slow.metrics.records}
    for record in fast.metrics.records:
        assert record.ttft == pytest.approx(slow_records[record.id].ttft, rel=1e-9)
        assert record.e2e == pytest.approx(slow_records[record.id].e2e, rel=1e-9)


@pytest.mark.parametrize("policy", ["vllm", "sarathi", "orca", "no_evict", "priority"])
def test_serves_a_load_with_the_invariants_on(policy: str) -> None:
    specs = [RequestSpec(i, i * 0.002, 200 + 131 * (i % 7), 30 + i % 11) for i in range(80)]
    cfg = load_config(None, [*SEPARATE, f"scheduler.policy={policy}"])
    result, steps = run(cfg, specs)
    assert result.summary["requests_completed"] == 80
    # No step mixes a prompt chunk with a decode (the vllm family's default does).
    assert not any(s.prompts and s.decodes for s in steps)
    _, mixed = run(load_config(None, [*DENSE, f"scheduler.policy={policy}"]), specs)
    assert any(s.prompts and s.decodes for s in mixed)


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (("scheduler.policy=static",), ("mixed_prefill", "static")),
        (("scheduler.policy=orca", "scheduler.num_scheduler_steps=4"), ("num_scheduler_steps",)),
        (
            (
                "model=qwen3-30b-a3b",
                "cluster.data_parallel=2",
                "cluster.expert_parallel=2",
            ),
            ("data_parallel",),
        ),
        (
            ("scheduler.batch_wait_timeout_iters=4", "scheduler.batch_wait_max_tokens_ratio=0.5"),
            ("mixed_prefill", "batch_wait_timeout_iters", "batch_wait_max_tokens_ratio"),
        ),
    ],
)
def test_settings_where_it_is_not_modelled_are_refused(
    sets: tuple[str, ...], words: tuple[str, ...]
) -> None:
    # Set by the user, with or without the preset (its async scheduling refuses multi-step).
    for engine in ((), ("engine=sglang", "frontend.async_scheduling=false")):
        cfg = load_config(
            None, ["model=llama-3.2-1b", *engine, "scheduler.mixed_prefill=false", *sets]
        )
        with pytest.raises(ConfigError) as err:
            resolve(cfg)
        assert "\n" not in str(err.value)
        for word in words:
            assert word in str(err.value)


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (("scheduler.policy=static",), ("static",)),
        (
            (
                "scheduler.num_scheduler_steps=4",
                "scheduler.policy=orca",
                "frontend.async_scheduling=false",
            ),
            ("num_scheduler_steps",),
        ),
        (
            ("model=qwen3-30b-a3b", "cluster.data_parallel=2", "cluster.expert_parallel=2"),
            ("data_parallel",),
        ),
        (
            ("scheduler.batch_wait_timeout_iters=4", "scheduler.batch_wait_max_tokens_ratio=0.5"),
            ("batch_wait_timeout_iters",),
        ),
    ],
)
def test_the_sglang_preset_mixes_where_separate_prefill_is_not_modelled(
    sets: tuple[str, ...], words: tuple[str, ...]
) -> None:
    cfg = load_config(None, ["engine=sglang", "model=llama-3.2-1b", *sets])
    assert cfg.scheduler.mixed_prefill is False
    with pytest.warns(InputWarning) as caught:
        scenario = resolve(cfg)
    message = str(caught[0].message)
    for word in (*words, "mixed_prefill", "sglang"):
        assert word in message
    assert scenario.config.scheduler.mixed_prefill is True
    assert scenario.config.engine_preset == cfg.engine_preset


def test_a_plugin_policy_built_on_the_vllm_scheduler_runs_prefill_apart() -> None:
    cfg = load_config(
        None,
        [
            "engine=sglang",
            "model=llama-3.2-1b",
            f"plugins=[{POLICIES}]",
            "scheduler.policy=shortest_prompt_first",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        scenario = resolve(cfg)
    assert scenario.config.scheduler.mixed_prefill is False
    specs = [RequestSpec(i, i * 0.002, 200 + 131 * (i % 7), 30 + i % 11) for i in range(40)]
    result, steps = run(scenario.config, specs)
    assert result.summary["requests_completed"] == 40
    assert not any(s.prompts and s.decodes for s in steps)


def test_sglang_preset_runs_prefill_apart_and_the_others_mix() -> None:
    assert load_config(None, ["engine=sglang"]).scheduler.mixed_prefill is False
    for engine in ("vllm", "trtllm"):
        assert load_config(None, [f"engine={engine}"]).scheduler.mixed_prefill is True
    assert SimConfig().scheduler.mixed_prefill is True


@pytest.mark.parametrize(
    ("hardware", "budget"),
    [("a100-40gb", 4096), ("h100-sxm", 8192), ("h200", 8192), ("b200", 16384)],
)
def test_sglang_prefill_budget_is_its_chunked_prefill_size_for_the_gpu_memory(
    hardware: str, budget: int
) -> None:
    # server_args.py _handle_gpu_memory_settings: 8192 below 160 GB, 16384 above (B200).
    cfg = load_config(None, ["engine=sglang", f"hardware={hardware}"])
    assert cfg.scheduler.max_num_batched_tokens == budget


class SatOut(EngineHooks):
    """Steps without a prompt chunk in which a running request that decodes sat out."""

    every_step = True

    def __init__(self) -> None:
        self.steps = 0
        self.bad: list[tuple[float, list[int]]] = []

    def after_start(
        self, instance: Instance, now: float, started: tuple[float, int] | None
    ) -> None:
        if started is None:
            return
        for ve in instance.virtual_engines:
            if not ve.busy:
                continue
            steady = ve.scheduler.steady
            grouped = 0 if steady is None else steady.in_flight
            entries = {seq.id: n for seq, n in ve.in_flight}
            running = ve.scheduler.running
            ran = set(entries) | {seq.id for seq in running[:grouped]}
            self.steps += 1
            if any(n > 1 for n in entries.values()):
                continue  # a prefill step: decodes wait (the point of mixed_prefill false)
            missing = [s.id for s in running[grouped:] if s.id not in ran and s.remaining == 1]
            if missing:
                self.bad.append((now, missing))


def test_handed_over_requests_decode_with_the_running_batch() -> None:
    # P/D disaggregation: a decode instance's waiting requests have their KV (one token to
    # compute); admitting one is a decode, it joins the running requests' step.
    sets = [
        "model=llama-3.2-1b",
        "cluster.pools=[{name: p, role: prefill, count: 1}, {name: d, role: decode, count: 1}]",
        "workload.num_requests=120",
        "workload.arrival.rate=40",
        "workload.output_len.mean=40",
    ]
    results = {}
    for mixed in ("true", "false"):
        watch = SatOut()
        with observing(watch):
            result = simulate(
                load_config(None, [*sets, f"scheduler.mixed_prefill={mixed}"]),
                check_invariants=True,
            )
        assert result.summary["requests_completed"] == 120
        assert watch.steps and not watch.bad
        results[mixed] = result
    # Nothing on the decode instance is prompt work: the same run as with mixed steps.
    assert results["false"].summary["itl_s"] == results["true"].summary["itl_s"]


def test_swapped_in_requests_decode_with_the_running_batch() -> None:
    specs = [RequestSpec(i, i * 0.01, 400 + 37 * (i % 5), 300 + 7 * (i % 9)) for i in range(40)]
    cfg = load_config(
        None,
        [
            *SEPARATE,
            "scheduler.preemption=swap",
            "scheduler.num_gpu_blocks_override=400",
        ],
    )
    watch = SatOut()
    with observing(watch):
        result = simulate(cfg, requests=specs, check_invariants=True)
    assert result.summary["requests_completed"] == 40
    assert result.summary["preemptions"] > 0
    assert watch.steps and not watch.bad


def test_a_request_that_preempts_a_full_batch_runs_its_prompt_apart() -> None:
    # max_num_seqs 2, both slots decoding priority-5 requests: the priority-0 request preempts
    # one (victim_for) and its 500-token prompt runs in a prefill-only step.
    specs = [
        RequestSpec(0, 0.0, 64, 200, priority=5),
        RequestSpec(1, 0.0, 64, 200, priority=5),
        RequestSpec(2, 0.05, 500, 20, priority=0),
    ]
    cfg = load_config(None, [*SEPARATE, "scheduler.policy=priority", "scheduler.max_num_seqs=2"])
    result, steps = run(cfg, specs)
    assert result.summary["requests_completed"] == 3
    assert result.summary["preemptions"] > 0
    assert any(2 in s.ids and s.prompts for s in steps)
    assert not any(s.prompts and s.decodes for s in steps)


def test_the_files_of_a_run_record_the_mixed_steps_the_preset_fell_back_to(
    tmp_path: Path,
) -> None:
    """summary.json and the parquet files' metadata both hold the config the run used."""
    import json

    import pyarrow.parquet as pq

    from llmservingsim.outputs.run_outputs import simulate_to_dir

    cfg = load_config(
        None,
        ["engine=sglang", "model=llama-3.2-1b", "scheduler.policy=static", "outputs.trace=false"],
    )
    with pytest.warns(InputWarning):
        result, _ = simulate_to_dir(cfg, tmp_path, requests=[RequestSpec(0, 0.0, 64, 4)])
    assert result.summary["config"]["scheduler"]["mixed_prefill"] is True
    meta = json.loads(pq.read_schema(tmp_path / "requests.parquet").metadata[b"llmservingsim"])
    assert meta["config"]["scheduler"]["mixed_prefill"] is True
