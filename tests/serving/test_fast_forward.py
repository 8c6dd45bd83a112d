"""Fast-forward is exact: every per-request time and summary number equals step-by-step mode.

Scenarios mix every registered scheduler, TP and PP, multi-instance routers, prefill/decode
disaggregation, speculative decoding, prefix caching, swap preemption and KV pressure, with
arrival patterns that make decode runs start and get cut short by arrivals and KV transfers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim import scenario, simulation
from llmservingsim.cluster.routers import ROUTERS
from llmservingsim.config import load_config
from llmservingsim.engine import EngineHooks
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.schedulers import SCHEDULERS
from llmservingsim.simulation import SimulationResult, simulate
from llmservingsim.workload.request_spec import RequestSpec, TokenContent

REL = 1e-9
WALL_FIELDS = {"sim_wall_s"}

LAYOUTS = {
    "single": [],
    "tp2": ["cluster.tensor_parallel=2"],
    "pp2": ["cluster.pipeline_parallel=2"],
    "three": ["cluster.instances=3"],
    "pd": ["cluster.pools=[{role: prefill, count: 1}, {role: decode, count: 2}]"],
    # Speculation blocks fast-forward (Instance.blocks_fast_forward); still the same numbers.
    "speculative": ["speculative.method=ngram", "speculative.disable_by_batch_size=2"],
}


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 14))
    shared = draw(st.booleans())
    specs, t = [], 0.0
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.0, 0.003, 0.02, 0.1, 0.5]))
        input_len = draw(st.integers(1, 300))
        content = None
        if shared:
            prefix = min(input_len, 64)
            runs = (
                ((1, prefix), (100 + i, input_len - prefix))
                if input_len > prefix
                else ((1, prefix),)
            )
            content = TokenContent("t", runs)
        output_len = draw(st.integers(1, 250))
        priority = draw(st.integers(0, 2))  # read by scheduler.policy=priority only
        specs.append(RequestSpec(i, t, input_len, output_len, content, priority=priority))
    block_size = draw(st.sampled_from([8, 16]))
    biggest = max(-(-(s.input_len + s.output_len - 1) // block_size) for s in specs)
    layout = draw(st.sampled_from(sorted(LAYOUTS)))
    policies = sorted(SCHEDULERS.names())
    if layout == "speculative":
        policies.remove("static")  # not supported together (simulation._reject_unsupported)
    overrides = [
        "model=llama-3.2-1b",
        f"scheduler.policy={draw(st.sampled_from(policies))}",
        f"scheduler.max_num_seqs={draw(st.integers(1, 8))}",
        # 4: fewer tokens than running decoders, so steady decoders dissolve for the budget.
        f"scheduler.max_num_batched_tokens={draw(st.sampled_from([4, 32, 128, 2048]))}",
        f"scheduler.block_size={block_size}",
        f"scheduler.enable_prefix_caching={str(shared and draw(st.booleans())).lower()}",
        f"scheduler.preemption={draw(st.sampled_from(['recompute', 'swap']))}",
        *LAYOUTS[layout],
    ]
    if layout in ("three", "pd"):
        overrides.append(f"cluster.router={draw(st.sampled_from(sorted(ROUTERS.names())))}")
    tight = draw(st.booleans())
    num_blocks = biggest + draw(st.integers(0, 2 * biggest)) if tight else None
    return {"specs": specs, "overrides": overrides, "num_blocks": num_blocks}


@dataclasses.dataclass
class Counter:
    runs: int = 0  # runs cut short
    laid_out: int = 0


def run_mode(sc: dict[str, Any], fast_forward: bool, counter: Counter) -> SimulationResult:
    cfg = load_config(
        None, [*sc["overrides"], f"simulator.fast_forward={str(fast_forward).lower()}"]
    )
    with patched(sc["num_blocks"], counter):
        return simulate(cfg, requests=sc["specs"])


class SeenInstances(EngineHooks):
    """Remembers the instances requests reached (to read their fast-forward counters)."""

    def __init__(self) -> None:
        self.instances: dict[int, Instance] = {}

    def before_add(self, instance: Instance, now: float) -> None:
        self.instances[instance.index] = instance


@contextmanager
def patched(num_blocks: int | None, counter: Counter) -> Iterator[None]:
    """Shrink the KV cache to ``num_blocks`` (None: as planned); count the runs cut short."""
    plan = scenario.plan_pool_memory

    def small_plan(*args: Any) -> Any:
        real = plan(*args)
        return real if num_blocks is None else dataclasses.replace(real, num_blocks=num_blocks)

    seen = SeenInstances()
    with pytest.MonkeyPatch.context() as mp, simulation.observing(seen):
        mp.setattr(scenario, "plan_pool_memory", small_plan)
        yield
    counter.runs += sum(inst.runs_cut for inst in seen.instances.values())
    counter.laid_out += sum(inst.runs_laid_out for inst in seen.instances.values())


def numbers(summary: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in summary.items():
        if key in WALL_FIELDS:
            continue
        if isinstance(value, dict):
            yield from numbers(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    yield from numbers(item, f"{prefix}{key}[{i}].")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield prefix + key, float(value)


def assert_same(step: SimulationResult, fast: SimulationResult) -> None:
    assert len(step.metrics.records) == len(fast.metrics.records)
    by_id = {r.id: r for r in step.metrics.records}
    for rec in fast.metrics.records:
        ref = by_id[rec.id]
        assert (rec.status, rec.instance, rec.preemptions, rec.output_tokens) == (
            ref.status,
            ref.instance,
            ref.preemptions,
            ref.output_tokens,
        )
        for name in ("first_token_s", "finish_s", "first_scheduled_s", "kv_transfer_s"):
            assert getattr(rec, name) == pytest.approx(getattr(ref, name), rel=REL, abs=1e-12)
    assert sorted(step.metrics.itl) == pytest.approx(sorted(fast.metrics.itl), rel=REL)
    ref_numbers = dict(numbers(step.summary))
    fast_numbers = dict(numbers(fast.summary))
    assert ref_numbers.keys() == fast_numbers.keys()
    for key, value in ref_numbers.items():
        assert fast_numbers[key] == pytest.approx(value, rel=REL, abs=1e-12), key


@settings(max_examples=120, deadline=None)
@given(sc=scenarios())
def test_fast_forward_equals_stepping(sc: dict[str, Any]) -> None:
    counter = Counter()
    step = run_mode(sc, False, counter)
    fast = run_mode(sc, True, counter)
    assert_same(step, fast)


def test_fast_forward_takes_runs_and_cuts_them() -> None:
    """One long decode batch, then arrivals: runs are laid out up to the next arrival (each
    arrival ends one), and an arrival that comes before the step estimate cuts one short."""
    specs = [RequestSpec(i, 0.0, 100, 400) for i in range(4)]
    specs += [RequestSpec(4 + i, 0.2 + 0.33 * i, 50, 30) for i in range(5)]
    sc = {"specs": specs, "overrides": ["model=llama-3.2-1b"], "num_blocks": None}
    counter = Counter()
    step = run_mode(sc, False, counter)
    assert counter.runs == 0
    fast = run_mode(sc, True, counter)
    assert counter.laid_out >= 5, "a run up to each arrival"
    assert counter.runs >= 1, "an arrival cut a decode run short"
    assert_same(step, fast)
    assert fast.summary["iterations"] == step.summary["iterations"] > 400


def sorted_columns(table: dict[str, list[Any]], key: tuple[str, ...]) -> dict[str, list[Any]]:
    order = sorted(range(len(table[key[0]])), key=lambda i: tuple(table[k][i] for k in key))
    return {name: [values[i] for i in order] for name, values in table.items()}


def test_time_series_and_request_table_match(run_to_dir: Any) -> None:
    """The files too: per-step time series rows and request rows equal step mode's."""
    import pyarrow.parquet as pq

    tables = {}
    for ff in (False, True):
        out, _ = run_to_dir(
            f"simulator.fast_forward={str(ff).lower()}", "cluster.instances=2", name=f"ff{ff}"
        )
        tables[ff] = {
            name: sorted_columns(pq.read_table(out / f"{name}.parquet").to_pydict(), key)
            for name, key in (("timeseries", ("time_s", "instance")), ("requests", ("id",)))
        }
    assert len(tables[False]["timeseries"]["time_s"]) > 100
    for name, step in tables[False].items():
        fast = tables[True][name]
        assert step.keys() == fast.keys()
        for column, values in step.items():
            if values and isinstance(values[0], float):
                assert fast[column] == pytest.approx(values, rel=REL, nan_ok=True), column
            else:
                assert fast[column] == values, column


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=llama-2-70b", "cluster.tensor_parallel=4"],
        ["model=mixtral-8x7b", "cluster.tensor_parallel=2"],  # MoE: the loop path
        ["cluster.pipeline_parallel=2"],  # the loop path
    ],
)
def test_decode_steps_timed_ahead_equal_step_by_step(overrides: list[str]) -> None:
    """The array path (roofline) and the loop path give step()'s own numbers, bit for bit."""
    from llmservingsim.build import build_cluster
    from llmservingsim.metrics.collector import MetricsCollector
    from llmservingsim.perf.iteration import BatchShape, StepCosts
    from llmservingsim.scenario import resolve

    cfg = load_config(None, overrides)
    timer = build_cluster(resolve(cfg), MetricsCollector()).instances[0].timer
    first = BatchShape(num_decode=37, decode_context=37 * 411, num_sampled=37)
    step0 = timer.step(first)
    lookups = timer.cache_lookups
    costs, per_lookups, per_hits = timer.repeat_decode_costs(first, 60)
    assert timer.cache_lookups == lookups, "counters untouched until the steps run"
    assert per_lookups == per_hits > 0
    want = [timer.step(BatchShape([], 37, 37 * 411 + j * 37, 37)) for j in range(1, 60)]
    columns = StepCosts.of(want)
    for name in ("seconds", "flops", "bytes", "aux_energy_j"):
        assert getattr(costs, name).tolist() == getattr(columns, name).tolist(), name
    assert step0.seconds < costs.seconds[-1]


@pytest.mark.patches_engine  # patches Cluster and Instance methods: interpreted pass
def test_kv_transfer_landing_exactly_on_a_decode_step_end() -> None:
    """P/D: a request's KV reaches the decode instance at the very time one of its decode steps
    ends. Stepping takes the step end first (and starts the next step without the newcomer);
    a fast-forward run cut by that arrival must count the step ending then as ended too."""
    from llmservingsim.cluster.cluster import Cluster

    specs = [RequestSpec(0, 0.0, 100, 600), RequestSpec(1, 0.4, 77, 50)]
    overrides = [
        "model=llama-3.2-1b",
        "cluster.pools=[{role: prefill, count: 1}, {role: decode, count: 1}]",
    ]
    sc = {"specs": specs, "overrides": overrides, "num_blocks": None}
    decode_ends: list[float] = []
    handed_off: dict[int, float] = {}
    end_step, hand_off = Instance.end_step, Cluster.hand_off
    transfer_time = Cluster.kv_transfer_time

    def recording_end(self: Instance, engine: int, now: float) -> list[Any]:
        if self.role == "decode":
            decode_ends.append(now)
        return end_step(self, engine, now)

    def recording_hand_off(self: Cluster, seq: Any, source: Instance, now: float) -> Any:
        handed_off[seq.id] = now
        return hand_off(self, seq, source, now)

    def late_transfer(self: Cluster, source: Instance, dest: Instance, tokens: int) -> float:
        return 10.0 if tokens == 77 else transfer_time(self, source, dest, tokens)

    # Request 0's decode step ends alone on the decode instance (request 1 arrives late).
    mp = pytest.MonkeyPatch()
    mp.setattr(Instance, "end_step", recording_end)
    mp.setattr(Cluster, "hand_off", recording_hand_off)
    mp.setattr(Cluster, "kv_transfer_time", late_transfer)
    run_mode(sc, False, Counter())
    mp.undo()
    # A decode step end well after request 1's hand-off, reached exactly by its transfer.
    start = handed_off[1]
    target = [t for t in decode_ends if t > start + 0.001][3]  # inside a decode run
    seconds = target - start
    assert start + seconds == target  # the arrival lands on the step end exactly

    def landing_transfer(self: Cluster, source: Instance, dest: Instance, tokens: int) -> float:
        return seconds if tokens == 77 else transfer_time(self, source, dest, tokens)

    mp.setattr(Cluster, "kv_transfer_time", landing_transfer)
    try:
        counter = Counter()
        step = run_mode(sc, False, counter)
        fast = run_mode(sc, True, counter)
    finally:
        mp.undo()
    assert counter.runs >= 1, "the arrival cut a decode run"
    assert_same(step, fast)
