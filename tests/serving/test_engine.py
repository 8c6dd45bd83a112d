"""The discrete-event engine: determinism, arrivals at step boundaries, bursts, failures, load."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import math
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.config import SimConfig, load_config
from llmservingsim.engine import EngineHooks, Event, EventQueue
from llmservingsim.outputs.files import write_summary
from llmservingsim.serving.instance import Instance
from llmservingsim.simulation import SimulationResult, load_requests, observing, simulate
from llmservingsim.workload.request_spec import RequestSpec


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail instead of hanging when the engine loop never ends."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"simulation still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@dataclasses.dataclass
class Step:
    start: float
    duration: float
    ids: list[int]
    end: float = math.nan


class StepRecorder(EngineHooks):
    """Record every engine step: when it started, how long it ran and which requests it ran."""

    every_step = True  # no fast-forward runs (tests/serving/test_fast_forward.py checks them)

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def after_start(
        self, instance: Instance, now: float, started: tuple[float, int] | None
    ) -> None:
        if started is not None:
            finish, k = started
            ids = [seq.id for seq, _ in instance.virtual_engines[k].in_flight]
            self.steps.append(Step(now, finish - now, ids))

    def after_end(self, instance: Instance, engine_index: int, now: float) -> None:
        self.steps[-1].end = now


@contextmanager
def recording_steps() -> Iterator[list[Step]]:
    """Record every step of the simulate() runs inside the block."""
    recorder = StepRecorder()
    with observing(recorder):
        yield recorder.steps


def at_least(a: float, b: float) -> bool:
    """a >= b up to float rounding (TTFT = finish - arrival vs a step duration)."""
    return a >= b - 1e-9 * max(1.0, abs(b))


def config(*overrides: str) -> SimConfig:
    return load_config(None, list(overrides))


def run(cfg: SimConfig, requests: list[RequestSpec] | None = None) -> SimulationResult:
    with time_limit(30):
        return simulate(cfg, requests=requests)


# ----------------------------------------------------------------------------- determinism


def summary_json(result: SimulationResult, out: Path) -> dict[str, Any]:
    out.mkdir()
    data: dict[str, Any] = json.loads(write_summary(out, result.summary).read_text())
    assert "sim_wall_s" in data
    del data["sim_wall_s"]
    return data


@pytest.mark.parametrize("policy", ["vllm", "orca", "static"])
def test_same_config_and_seed_give_identical_summary(policy: str, tmp_path: Path) -> None:
    cfg = config(
        "model=llama-3.2-1b",
        f"scheduler.policy={policy}",
        "workload.num_requests=150",
        "workload.arrival.rate=40",
        "scheduler.gpu_memory_utilization=0.1",
        "seed=7",
    )
    a = run(cfg)
    b = run(cfg.model_copy(deep=True))
    assert summary_json(a, tmp_path / "a") == summary_json(b, tmp_path / "b")
    assert a.metrics.records == b.metrics.records
    assert list(a.metrics.itl) == list(b.metrics.itl)


def test_different_seed_gives_a_different_run(tmp_path: Path) -> None:
    base = ["model=llama-3.2-1b", "workload.num_requests=50"]
    a = run(config(*base, "seed=1"))
    b = run(config(*base, "seed=2"))
    assert summary_json(a, tmp_path / "a") != summary_json(b, tmp_path / "b")


# ----------------------------------------------------------------------------- arrivals


def test_request_arriving_mid_step_joins_at_the_next_step() -> None:
    cfg = config("model=llama-3.1-8b")
    long = RequestSpec(id=0, arrival_s=0.0, input_len=4000, output_len=4)
    alone = run(cfg, [long])
    first_step = alone.metrics.records[0].ttft  # one 4000-token prefill step
    assert first_step > 0

    late = RequestSpec(id=1, arrival_s=first_step / 2, input_len=50, output_len=4)
    with recording_steps() as steps:
        result = run(cfg, [long, late])
    assert steps[0].ids == [0]
    assert steps[0].end == pytest.approx(first_step)
    assert 1 in steps[1].ids, "the mid-step arrival joins the very next step"
    assert steps[1].start == steps[0].end
    rec = {r.id: r for r in result.metrics.records}[1]
    assert rec.first_token_s == steps[1].end
    assert rec.first_token_s > late.arrival_s
    assert at_least(rec.ttft, steps[1].duration)
    assert rec.ttft > steps[1].duration, "it also waited for the step that was running"


def test_request_arriving_when_idle_starts_at_its_arrival() -> None:
    cfg = config("model=llama-3.2-1b")
    specs = [
        RequestSpec(id=0, arrival_s=0.0, input_len=10, output_len=2),
        RequestSpec(id=1, arrival_s=5.0, input_len=10, output_len=2),
    ]
    with recording_steps() as steps:
        result = run(cfg, specs)
    second = next(s for s in steps if 1 in s.ids)
    assert second.start == 5.0
    rec = {r.id: r for r in result.metrics.records}[1]
    assert rec.ttft == pytest.approx(second.duration)
    assert result.summary["simulated_time_s"] == steps[-1].end


def test_unsorted_request_list_is_served_in_arrival_order() -> None:
    cfg = config("model=llama-3.2-1b")
    early = RequestSpec(id=1, arrival_s=0.0, input_len=10, output_len=2)
    late = RequestSpec(id=0, arrival_s=1.0, input_len=10, output_len=2)
    forward = {r.id: r for r in run(cfg, [early, late]).metrics.records}
    backward = {r.id: r for r in run(cfg, [late, early]).metrics.records}
    assert forward == backward
    assert backward[1].first_token_s < 0.5, "the t=0 request must not wait for the t=1 one"


@st.composite
def arrivals(draw: st.DrawFn) -> list[RequestSpec]:
    n = draw(st.integers(1, 20))
    t = 0.0
    specs = []
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.0005, 0.002, 0.01, 0.05, 0.3]))
        specs.append(
            RequestSpec(
                id=i,
                arrival_s=t,
                input_len=draw(st.integers(1, 300)),
                output_len=draw(st.integers(1, 40)),
            )
        )
    return specs


@settings(max_examples=80, deadline=None)
@given(specs=arrivals())
def test_requests_join_the_first_step_after_arrival(specs: list[RequestSpec]) -> None:
    # Ample budget, sequence slots and KV: nothing but time keeps a request out of a step.
    cfg = config("model=llama-3.2-1b")
    with recording_steps() as steps:
        result = run(cfg, specs)
    for a, b in itertools.pairwise(steps):
        assert a.end <= b.start, "steps of one instance never overlap"
    for s in steps:
        assert s.duration > 0
        assert s.end == pytest.approx(s.start + s.duration)
    records = {r.id: r for r in result.metrics.records}
    for spec in specs:
        first = next(i for i, s in enumerate(steps) if spec.id in s.ids)
        assert steps[first].start >= spec.arrival_s, "a request ran before it arrived"
        earlier = [s for s in steps[:first] if s.start >= spec.arrival_s]
        assert not earlier, f"request {spec.id} skipped a step it could have joined"
        rec = records[spec.id]
        assert rec.status == "finished"
        assert rec.output_tokens == spec.output_len
        assert rec.first_token_s > spec.arrival_s
        token_step = next(s for s in steps if s.end == rec.first_token_s and spec.id in s.ids)
        assert at_least(rec.ttft, token_step.duration), (
            "TTFT is at least the step that made the token"
        )
        assert at_least(rec.ttft, min(s.duration for s in steps))


def test_ttft_is_at_least_one_step_for_every_policy() -> None:
    for policy in ("vllm", "orca", "static"):
        cfg = config(
            "model=llama-3.2-1b", f"scheduler.policy={policy}", "workload.num_requests=100"
        )
        with recording_steps() as steps:
            result = run(cfg)
        shortest = min(s.duration for s in steps)
        assert shortest > 0
        for rec in result.metrics.records:
            assert at_least(rec.ttft, shortest)


# ----------------------------------------------------------------------------- bursts


def test_infinite_rate_burst_forms_one_batch() -> None:
    cfg = config(
        "model=llama-3.1-8b",
        "workload.num_requests=64",
        "workload.arrival.rate=.inf",
        "workload.input_len={dist: fixed, value: 100}",
        "workload.output_len={dist: fixed, value: 20}",
    )
    requests = load_requests(cfg)
    assert all(r.arrival_s == 0.0 for r in requests)
    with recording_steps() as steps:
        result = run(cfg, requests)
    assert sorted(steps[0].ids) == list(range(64)), "the whole burst prefills in the first step"
    assert steps[0].start == 0.0
    assert result.summary["max_batch_size"] == 64
    assert len(steps) == 20, "then it decodes together, one step per token"
    ttfts = {r.ttft for r in result.metrics.records}
    assert len(ttfts) == 1


def test_default_length_burst_fills_the_first_step() -> None:
    cfg = config("workload.num_requests=200", "workload.arrival.rate=.inf")
    with recording_steps() as steps:
        result = run(cfg)
    assert len(steps[0].ids) >= 10
    assert result.summary["requests_completed"] == 200


def test_burst_larger_than_max_num_seqs_is_capped() -> None:
    cfg = config(
        "model=llama-3.2-1b",
        "workload.num_requests=40",
        "workload.arrival.rate=.inf",
        "scheduler.max_num_seqs=16",
        "workload.input_len={dist: fixed, value: 10}",
        "workload.output_len={dist: fixed, value: 5}",
    )
    with recording_steps() as steps:
        result = run(cfg)
    assert len(steps[0].ids) == 16
    assert max(len(s.ids) for s in steps) == 16
    assert result.summary["requests_completed"] == 40


# ----------------------------------------------------------------------------- failures


def small_cache() -> SimConfig:
    # llama-3.1-8b at 0.3 of an H100: a few thousand 16-token blocks, far below the context.
    return config("model=llama-3.1-8b", "scheduler.gpu_memory_utilization=0.3")


def test_request_needing_more_kv_than_exists_fails_with_a_reason() -> None:
    cfg = small_cache()
    tokens = run(cfg, [RequestSpec(0, 0.0, 10, 1)]).memory.kv_tokens
    specs = [
        RequestSpec(id=0, arrival_s=0.0, input_len=200, output_len=50),
        RequestSpec(id=1, arrival_s=0.001, input_len=tokens + 100, output_len=10),
        RequestSpec(id=2, arrival_s=0.002, input_len=300, output_len=20),
    ]
    result = run(cfg, specs)
    s = result.summary
    assert s["requests_failed"] == 1
    assert s["requests_completed"] == 2
    assert s["requests_total"] == 3
    records = {r.id: r for r in result.metrics.records}
    failed = records[1]
    assert failed.status == "failed"
    assert "KV blocks" in failed.fail_reason
    assert str(result.memory.num_blocks) in failed.fail_reason
    assert failed.output_tokens == 0
    assert records[0].status == records[2].status == "finished"
    # The failed request does not count towards latency or token metrics.
    assert s["input_tokens"] == 500
    assert s["output_tokens"] == 70


def test_request_that_fits_exactly_is_served() -> None:
    cfg = small_cache()
    tokens = run(cfg, [RequestSpec(0, 0.0, 10, 1)]).memory.kv_tokens
    # The last sampled token's KV is never written: input + output - 1 tokens must fit.
    fits = RequestSpec(id=0, arrival_s=0.0, input_len=tokens - 3, output_len=4)
    too_big = RequestSpec(id=1, arrival_s=0.0, input_len=tokens - 3, output_len=5)
    result = run(cfg, [fits, too_big])
    records = {r.id: r for r in result.metrics.records}
    assert records[0].status == "finished"
    assert records[0].output_tokens == 4
    assert records[1].status == "failed"


def test_only_failing_requests_do_not_hang() -> None:
    cfg = small_cache()
    tokens = run(cfg, [RequestSpec(0, 0.0, 10, 1)]).memory.kv_tokens
    specs = [
        RequestSpec(id=i, arrival_s=0.1 * i, input_len=tokens + i, output_len=5) for i in range(5)
    ]
    result = run(cfg, specs)
    assert result.summary["requests_failed"] == 5
    assert result.summary["requests_completed"] == 0
    assert result.summary["iterations"] == 0
    assert all(r.fail_reason for r in result.metrics.records)


# ----------------------------------------------------------------------------- load


def mean_ttft(rate: float | str, seed: int, policy: str = "vllm") -> tuple[float, list[Any]]:
    cfg = config(
        f"workload.arrival.rate={rate}",
        "workload.num_requests=300",
        f"seed={seed}",
        f"scheduler.policy={policy}",
    )
    requests = load_requests(cfg)
    result = run(cfg, requests)
    assert result.summary["requests_completed"] == 300
    lengths = [(r.input_len, r.output_len) for r in requests]
    return result.summary["ttft_s"]["mean"], lengths


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("policy", ["vllm", "orca"])
def test_mean_ttft_does_not_fall_as_the_rate_rises(seed: int, policy: str) -> None:
    rates: list[float | str] = [2, 8, 32, 128, 512, ".inf"]
    ttfts = []
    lengths = None
    for rate in rates:
        ttft, lens = mean_ttft(rate, seed, policy)
        if lengths is None:
            lengths = lens
        assert lens == lengths, "only the gaps change with the rate, not the lengths"
        ttfts.append(ttft)
    for i, low in enumerate(ttfts):
        for high in ttfts[i + 1 :]:
            assert high >= 0.95 * low, f"rates {rates}: mean TTFT {ttfts}"
    assert ttfts[-1] > 5 * ttfts[0], "a burst queues far longer than a trickle"


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, float("inf")]),
                st.integers(0, 2),
                st.integers(0, 3),
                st.integers(0, 3),
                st.integers(0, 2),
            ),
            st.none(),  # a pop
        ),
        max_size=80,
    )
)
def test_event_queue_takes_events_in_the_order_of_their_tuples(
    ops: list[tuple[float, int, int, int, int] | None],
) -> None:
    """The engine's queue pops what heapq over (time, kind, instance, arg, serial) tuples
    pops, ties and equal events included."""
    queue, reference = EventQueue(), []
    for op in ops:
        if op is None:
            if reference:
                event = queue.pop()
                got = (event.time, event.kind, event.instance, event.arg, event.serial)
                assert got == heapq.heappop(reference)
            continue
        queue.push(Event(*op))
        heapq.heappush(reference, op)
        assert len(queue) == len(reference)
        assert queue.first_time() == reference[0][0]
    while reference:
        event = queue.pop()
        got = (event.time, event.kind, event.instance, event.arg, event.serial)
        assert got == heapq.heappop(reference)
    assert not len(queue)
