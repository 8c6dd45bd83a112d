"""The compiled event loop (``simulator.compiled``, src/llmservingsim/native) equals the Python one.

For every configuration the compiled loop accepts (docs/performance.md, "the common
configuration"), a run with ``simulator.compiled: true`` must report ``engine_loop: compiled`` and
give the Python engine's numbers: each request's row, every numeric summary field, the
inter-token gaps and the per-step rows, to 1e-9 relative. The reference is step-by-step mode
(``simulator.fast_forward: false``), which never uses the compiled loop. Every other configuration
falls back to the Python engine and says why (``engine_loop_reason``).

The scenarios are small on purpose: tight KV caches (preemption by recompute, requests that can
never fit), tiny token budgets, bounded queues, bursts, several instances stepping in lockstep.
Without a built kernel the file skips, except under CI (where the build must have worked).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from llmservingsim import simulation
from llmservingsim.catalog import load_model
from llmservingsim.cli import app
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError, DoesNotFitError
from llmservingsim.hardware.profiles.native import write_native
from llmservingsim.hardware.profiles.points import ProfilePoint
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.metrics.request_log import COLUMNS as REQUEST_COLUMNS
from llmservingsim.metrics.request_log import RequestChunk
from llmservingsim.metrics.steps import STEP_FIELDS, StepChunk
from llmservingsim.model.ops import OpGraph
from llmservingsim.native import load_kernel
from llmservingsim.simulation import SimulationResult, load_requests, simulate
from llmservingsim.workload.request_spec import RequestSpec, TokenContent

# Without a built kernel the engine falls back to Python; CI (or LLMSERVINGSIM_REQUIRE_KERNEL=1,
# as in tests/test_native_build.py) demands the kernel, so there these tests run and fail.
KERNEL_REQUIRED = (
    os.environ.get("CI") == "true" or os.environ.get("LLMSERVINGSIM_REQUIRE_KERNEL") == "1"
)
if load_kernel() is None and not KERNEL_REQUIRED:
    pytest.skip(
        "the compiled loop (llmservingsim.native._loop) is not built here; CI builds it",
        allow_module_level=True,
    )

REL = 1e-9
ABS = 1e-12
# Summary keys that describe the run, not the simulated system.
NOT_COMPARED = {"sim_wall_s", "engine_loop", "engine_loop_reason", "config"}
INVARIANTS_ENV = "LLMSERVINGSIM_CHECK_INVARIANTS"

DENSE = ["llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "qwen2.5-7b", "mistral-7b", "opt-13b"]
MOE = ["mixtral-8x7b", "qwen3-30b-a3b"]
HARDWARE = ["h100-sxm", "a100-80gb", "a100-40gb", "l40s", "mi300x", "h200", "b200", "tpu-v6e"]
HARDWARE += ["gaudi3", "l4", "npu"]  # npu: the systolic-array backend
ROUTERS = ["round_robin", "least_outstanding", "least_kv", "random", "power_of_two_choices"]
ROUTERS += ["prefix_aware"]  # in Python, on the loads the loop publishes
POLICIES = ["vllm", "sarathi", "orca", "no_evict", "static"]
REQUEST_COUNTS = [1, 4, 12, 24, 40]
MAX_INSTANCES = 4


# ----------------------------------------------------------------------------- running


@dataclasses.dataclass
class Scenario:
    """One eligible configuration: config overrides, and either explicit requests, a trace
    (``trace_rows``: arrival_s, input, output) or the config's own workload; ``kv_fraction``
    shrinks the KV cache (:func:`kv_cache_blocks`; None: the cache the memory plan gives)."""

    overrides: list[str]
    requests: list[RequestSpec] | None = None
    kv_fraction: float | None = None
    step_sink: bool = False
    trace_rows: list[tuple[float, int, int]] | None = None
    chunk_size: int = 65_536
    """Rows per chunk handed to the sinks (small: many chunks sealed while the loop runs)."""
    request_sink: bool = True

    def config_overrides(self, trace_dir: Path | None) -> list[str]:
        if self.trace_rows is None:
            return list(self.overrides)
        assert trace_dir is not None
        path = trace_dir / "trace.csv"
        lines = ["arrival_s,input_tokens,output_tokens"]
        lines += [f"{t!r},{i},{o}" for t, i, o in self.trace_rows]
        path.write_text("\n".join(lines) + "\n")
        return [
            *self.overrides,
            "workload.kind=trace",
            "workload.trace.format=csv",
            f"workload.trace.path={path}",
        ]


@dataclasses.dataclass
class Steps:
    """A step sink: every engine step the run logged."""

    chunks: list[StepChunk] = dataclasses.field(default_factory=list)

    def write_steps(self, steps: StepChunk) -> None:
        self.chunks.append(steps)

    def columns(self) -> dict[str, list[Any]]:
        """The steps of each instance in start order. (Between instances the log order is the
        loop's business: fast-forward logs a run's steps when it applies them.)"""
        whole = StepChunk.concat(self.chunks)
        order = np.lexsort((whole.start_s, whole.engine, whole.instance))
        return {name: getattr(whole, name)[order].tolist() for name in STEP_FIELDS}


@dataclasses.dataclass
class Ended:
    """A request sink: the size of each chunk of ended requests it was handed."""

    sizes: list[int] = dataclasses.field(default_factory=list)

    def write_requests(self, chunk: RequestChunk) -> None:
        self.sizes.append(len(chunk))


@dataclasses.dataclass
class Run:
    result: SimulationResult
    steps: Steps | None
    ended: Ended

    @property
    def summary(self) -> dict[str, Any]:
        return self.result.summary


def blocks_needed(spec: RequestSpec, block_size: int) -> int:
    return -(-(spec.input_len + spec.output_len - 1) // block_size)


def kv_cache_blocks(fraction: float, needs: list[int]) -> int:
    """Below 1: that share of the largest request's blocks (it can never fit, so it fails);
    from 1 on: that share of what all requests need together, but room for the largest one
    (so requests contend for blocks and get preempted)."""
    biggest = max(needs)
    if fraction < 1:
        return max(1, math.floor(biggest * fraction))
    return max(biggest, math.floor(sum(needs) / fraction))


def mode_overrides(compiled: bool, fast_forward: bool) -> list[str]:
    return [
        f"simulator.compiled={str(compiled).lower()}",
        f"simulator.fast_forward={str(fast_forward).lower()}",
    ]


def run(
    sc: Scenario,
    *,
    compiled: bool,
    fast_forward: bool = True,
    progress: Callable[[float, int], None] | None = None,
) -> Run:
    """Simulate ``sc`` (invariant checker off: it keeps the Python engine)."""
    with tempfile.TemporaryDirectory() as tmp:
        overrides = sc.config_overrides(Path(tmp))
        cfg = load_config(None, [*overrides, *mode_overrides(compiled, fast_forward)])
        num_blocks = None
        if sc.kv_fraction is not None:
            specs = sc.requests if sc.requests is not None else list(load_requests(cfg))
            needs = [blocks_needed(s, cfg.scheduler.block_size) for s in specs]
            # Each of a pipeline's virtual engines gets its share of an instance's blocks.
            pp = max(pool.pipeline_parallel for pool in cfg.cluster.resolved_pools(cfg.hardware))
            num_blocks = kv_cache_blocks(sc.kv_fraction, needs) * pp
        steps, ended = Steps() if sc.step_sink else None, Ended()
        metrics = MetricsCollector(
            request_sinks=[ended] if sc.request_sink else [],
            step_sinks=[steps] if steps is not None else [],
            chunk_size=sc.chunk_size,
        )
        with kv_blocks(num_blocks):
            result = simulate(
                cfg,
                requests=sc.requests,
                progress=progress,
                metrics=metrics,
                check_invariants=False,
            )
    metrics.flush()  # as the output files do at the end of a run
    return Run(result, steps, ended)


@contextmanager
def kv_blocks(num_blocks: int | None) -> Iterator[None]:
    """Every instance's KV cache holds ``num_blocks`` blocks (None: as planned)."""
    with pytest.MonkeyPatch.context() as mp:
        if num_blocks is not None:
            plan = simulation.plan_instance_memory

            def small_plan(cfg: Any, pool: Any = None) -> Any:
                return dataclasses.replace(plan(cfg, pool), num_blocks=num_blocks)

            mp.setattr(simulation, "plan_instance_memory", small_plan)
        yield


# ----------------------------------------------------------------------------- comparing


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf of a summary, skipping the keys in NOT_COMPARED."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in NOT_COMPARED:
                yield from leaves(item, f"{path}{key}.")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, f"{path}[{i}].")
    else:
        yield path.rstrip("."), value


def assert_close(got: Any, want: Any, what: str) -> None:
    if isinstance(want, float) and isinstance(got, int | float) and not isinstance(got, bool):
        if math.isnan(want):
            assert math.isnan(got), what
        else:
            assert got == pytest.approx(want, rel=REL, abs=ABS), what
    else:
        assert got == want, what


def assert_column_close(
    got: list[Any], want: list[Any], what: str, ids: list[int] | None = None
) -> None:
    """A column: floats to 1e-9 relative (NaN equal to NaN), anything else exactly; a
    mismatch names its row (``ids``: the rows' request ids)."""
    assert len(got) == len(want), what
    if any(isinstance(v, float) for v in want):
        a = np.array(got, dtype=np.float64)
        b = np.array(want, dtype=np.float64)
        same = np.isclose(a, b, rtol=REL, atol=ABS, equal_nan=True)
    else:
        same = np.array([x == y for x, y in zip(got, want, strict=True)], dtype=bool)
    if not same.all():
        i = int(np.argmin(same))
        row = f"request {ids[i]}" if ids is not None else f"row {i}"
        raise AssertionError(f"{what}, {row}: {got[i]!r} != {want[i]!r} (expected)")


def assert_same_summary(got: dict[str, Any], want: dict[str, Any]) -> None:
    got_leaves, want_leaves = dict(leaves(got)), dict(leaves(want))
    assert got_leaves.keys() == want_leaves.keys()
    for key, value in want_leaves.items():
        assert_close(got_leaves[key], value, f"summary {key}")


def request_columns(r: Run) -> dict[str, list[Any]]:
    """Every request row's fields, rows sorted by id, strings for the coded columns."""
    whole = r.result.metrics.requests.whole()
    order = np.argsort(whole["id"], kind="stable").tolist()
    columns: dict[str, list[Any]] = {
        "status": whole.status_names(),
        "fail_reason": whole.reason_names(),
        "lora": whole.lora_names(),
    }
    for name in REQUEST_COLUMNS:
        columns.setdefault(name, whole[name].tolist())
    return {name: [values[i] for i in order] for name, values in columns.items()}


def sorted_samples(r: Run) -> list[float]:
    itl = r.result.metrics.itl
    return np.sort(np.fromiter(itl, dtype=np.float64, count=len(itl))).tolist()


def assert_same_run(got: Run, want: Run) -> None:
    """Rows joined on id, every summary leaf, the inter-token gaps and the step rows.

    The requests' order too: they are logged as they end, so requests.parquet lists them in
    the same order."""
    got_rows, want_rows = request_columns(got), request_columns(want)
    assert got_rows["id"] == want_rows["id"], "not the same requests"
    for name, values in want_rows.items():
        assert_column_close(got_rows[name], values, f"requests.{name}", want_rows["id"])
    got_order = got.result.metrics.requests.column("id").tolist()
    assert got_order == want.result.metrics.requests.column("id").tolist(), "end order"
    assert got.ended.sizes == want.ended.sizes, "chunks of ended requests sealed elsewhere"
    assert_same_summary(got.summary, want.summary)
    assert_column_close(sorted_samples(got), sorted_samples(want), "inter-token gaps")
    got_itl, want_itl = got.result.metrics.itl.stats(), want.result.metrics.itl.stats()
    for key, value in want_itl.items():
        assert_close(got_itl[key], value, f"itl {key}")
    if got.steps is not None and want.steps is not None:
        got_steps, want_steps = got.steps.columns(), want.steps.columns()
        for name in STEP_FIELDS:
            assert_column_close(got_steps[name], want_steps[name], f"steps.{name}")


def assert_compiled(summary: dict[str, Any]) -> None:
    assert summary["engine_loop"] == "compiled", summary.get("engine_loop_reason")


def compare_with_reference(sc: Scenario) -> tuple[Run, Run]:
    """The compiled run and the step-by-step Python run of ``sc``, checked equal."""
    reference = run(sc, compiled=True, fast_forward=False)
    assert reference.summary["engine_loop"] == "python"
    compiled = run(sc, compiled=True)
    assert_compiled(compiled.summary)
    assert_same_run(compiled, reference)
    return compiled, reference


# ----------------------------------------------------------------------------- scenarios


def statuses(r: Run) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in r.result.metrics.records:
        counts[rec.status] = counts.get(rec.status, 0) + 1
    return counts


def lockstep_ties(r: Run) -> int:
    """Token times shared by requests on different instances (events at the same instant)."""
    seen: dict[float, set[int]] = {}
    for rec in r.result.metrics.records:
        if rec.status == "finished":
            for t in (rec.first_token_s, rec.finish_s):
                seen.setdefault(t, set()).add(rec.instance)
    return sum(1 for where in seen.values() if len(where) > 1)


def note_features(r: Run) -> None:
    """Label the example for hypothesis' statistics (pytest --hypothesis-show-statistics)."""
    s = r.summary
    counts = statuses(r)
    for name, happened in {
        "preemption": s["preemptions"] > 0,
        "failed (never fits)": counts.get("failed", 0) > 0,
        "rejected (queue full)": counts.get("rejected", 0) > 0,
        "multi-instance tie": lockstep_ties(r) > 0,
        "output_len 1": any(rec.output_tokens == 1 for rec in r.result.metrics.records),
        "timed out": counts.get("timed_out", 0) > 0,
        "KV handed to a decode instance": s.get("kv_transfers", 0) > 0,
        "prefix cache hit": bool(s.get("prefix_cache_hit_rate")),
        "prefix cache eviction": s.get("prefix_cache_evicted_blocks", 0) > 0,
        "swapped out": s.get("swapped_out_blocks", 0) > 0,
    }.items():
        if happened:
            event(name)


def with_shared_prefix(spec: RequestSpec, prompt: int, shared: int) -> RequestSpec:
    """``spec`` whose prompt starts with up to ``shared`` tokens of system prompt ``prompt``
    (requests with the same one share KV blocks under prefix caching); the rest is its own."""
    head = min(shared, spec.input_len)
    runs = [(prompt, head)]
    if spec.input_len > head:
        runs.append((1000 + spec.id, spec.input_len - head))
    return dataclasses.replace(spec, content=TokenContent("test", tuple(runs)))


def arrival_times(draw: st.DrawFn, rng: random.Random, n: int) -> list[float]:
    """Poisson arrivals, bursts (groups arriving at one instant), or both mixed."""
    pattern = draw(st.sampled_from(["poisson", "bursts", "mixed"]))
    rate = draw(st.sampled_from([5.0, 60.0, 800.0]))
    times, t = [], 0.0
    for _ in range(n):
        burst = pattern == "bursts" or (pattern == "mixed" and rng.random() < 0.5)
        if not burst or rng.random() < 0.2:
            t += rng.expovariate(rate) * (5.0 if burst else 1.0)
        times.append(t)
    return times


def length_sampler(draw: st.DrawFn, rng: random.Random) -> Callable[[], tuple[int, int]]:
    """Prompt and answer lengths: all alike (so instances step in lockstep), or varied."""
    longest_input = draw(st.sampled_from([40, 300, 900]))
    longest_output = draw(st.sampled_from([1, 20, 300]))

    def one() -> tuple[int, int]:
        output_len = 1 if rng.random() < 0.1 else rng.randint(1, longest_output)
        return rng.randint(1, longest_input), output_len

    if draw(st.booleans()):
        alike = one()
        return lambda: alike
    return one


@st.composite
def layouts(draw: st.DrawFn, moe: bool) -> list[str]:
    """One pool of 1–MAX_INSTANCES instances; two mixed pools on different hardware; or
    prefill and decode pools (P/D disaggregation, KV handed over) with their own router.
    Tensor and pipeline parallelism in each."""
    kind = draw(st.sampled_from(["one pool", "one pool", "two mixed pools", "prefill/decode"]))
    if kind == "one pool":
        tp = draw(st.sampled_from([1, 2, 4]))
        out = [f"cluster.tensor_parallel={tp}"]
        out.append(f"cluster.pipeline_parallel={draw(st.sampled_from([1, 1, 2, 3]))}")
        out.append(f"cluster.instances={draw(st.integers(1, MAX_INSTANCES))}")
        if moe:
            out.append(f"cluster.expert_parallel={draw(st.sampled_from([1, tp]))}")
        return out
    roles = ["mixed", "mixed"] if kind == "two mixed pools" else ["prefill", "decode"]
    pools = []
    for role in roles:
        count = draw(st.integers(1, max(1, MAX_INSTANCES // 2)))
        tp = draw(st.sampled_from([1, 2, 4]))
        pp = draw(st.sampled_from([1, 1, 2]))
        hardware = draw(st.sampled_from(HARDWARE))
        pools.append(
            f"{{role: {role}, count: {count}, tensor_parallel: {tp}, pipeline_parallel: {pp}, "
            f"hardware: {hardware}}}"
        )
    out = [f"cluster.pools=[{', '.join(pools)}]"]
    if kind == "prefill/decode":
        out.append(f"cluster.decode_router={draw(st.sampled_from(ROUTERS))}")
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    model = draw(st.sampled_from(DENSE + MOE))
    overrides = [
        f"model={model}",
        f"hardware={draw(st.sampled_from(HARDWARE))}",
        f"dtype={draw(st.sampled_from(['bf16', 'bf16', 'fp8', 'int4']))}",
        f"kv_dtype={draw(st.sampled_from(['auto', 'fp8']))}",
        # TP groups across nodes: inter-node collectives.
        f"cluster.network.devices_per_node={draw(st.sampled_from([8, 2]))}",
        f"cluster.router={draw(st.sampled_from(ROUTERS))}",
        f"scheduler.policy={draw(st.sampled_from(POLICIES))}",
        f"scheduler.max_num_seqs={draw(st.sampled_from([2, 3, 8, 64]))}",
        # Budgets below the batch size and below one prompt: chunked prefill, budget dissolves.
        "scheduler.max_num_batched_tokens="
        f"{draw(st.one_of(st.sampled_from([4, 16, 17, 64]), st.integers(16, 4096)))}",
        f"scheduler.block_size={draw(st.sampled_from([1, 2, 5, 16, 32]))}",
        f"seed={draw(st.integers(0, 3))}",
    ]
    overrides += draw(layouts(model in MOE))
    if model in MOE:
        overrides.append(f"moe.imbalance={draw(st.sampled_from([1.0, 1.7]))}")
    if draw(st.booleans()):  # goodput in the summary
        overrides += [f"slo.ttft_s={draw(st.sampled_from([0.01, 0.5]))}", "slo.tpot_s=0.02"]
    timeout = draw(st.sampled_from([None, None, None, 0.02, 0.3]))
    if timeout is not None:
        overrides.append(f"scheduler.request_timeout_s={timeout}")
    max_queue = draw(st.sampled_from([None, None, 1, 2, 5]))
    if max_queue is not None:
        overrides.append(f"scheduler.max_queue={max_queue}")
    kind = draw(st.sampled_from(["specs", "specs", "synthetic", "trace"]))
    prefix_caching = draw(st.booleans())
    if prefix_caching:
        overrides.append("scheduler.enable_prefix_caching=true")
    if draw(st.booleans()):  # swap space for a few blocks to plenty: swaps and fallbacks
        overrides += [
            "scheduler.preemption=swap",
            f"scheduler.swap_space_gib={draw(st.sampled_from([0.002, 0.02, 4.0]))}",
        ]
    sc = Scenario(overrides, step_sink=draw(st.booleans()))
    sc.chunk_size = draw(st.sampled_from([65_536, 1, 3, 16]))
    sc.request_sink = draw(st.booleans())
    n = draw(st.sampled_from(REQUEST_COUNTS))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    if kind == "synthetic":
        process = draw(st.sampled_from(["poisson", "burst", "constant", "gamma"]))
        overrides += [
            f"workload.num_requests={n}",
            f"workload.arrival.process={process}",
            f"workload.arrival.rate={draw(st.sampled_from([2.0, 30.0, 400.0]))}",
            f"workload.arrival.burst_size={draw(st.integers(1, 8))}",
            "workload.input_len={dist: uniform, min: 1, max: "
            f"{draw(st.sampled_from([8, 300, 900]))}}}",
            "workload.output_len={dist: lognormal, mean: "
            f"{draw(st.sampled_from([1.0, 12.0, 90.0]))}, sigma: 1.0, max: 400}}",
        ]
        if prefix_caching and draw(st.booleans()):  # shared system prompts: cache hits
            overrides.append(
                "workload.prefix={num_system_prompts: 2, system_prompt_len: "
                f"{draw(st.sampled_from([7, 40, 300]))}}}"
            )
    else:
        times, sample = arrival_times(draw, rng, n), length_sampler(draw, rng)
        if kind == "specs":
            sc.requests = [RequestSpec(i, t, *sample()) for i, t in enumerate(times)]
            if prefix_caching:
                shared = draw(st.sampled_from([3, 40, 200]))
                sc.requests = [
                    with_shared_prefix(r, rng.randint(0, 2), shared) for r in sc.requests
                ]
        else:
            sc.trace_rows = [(t, *sample()) for t in times]
    sc.kv_fraction = draw(st.sampled_from([None, 0.6, 1.5, 2.0, 3.0, 8.0]))  # (kv_cache_blocks)
    return sc


def compare_or_skip(sc: Scenario) -> tuple[Run, Run] | None:
    try:
        return compare_with_reference(sc)
    except DoesNotFitError:
        event("does not fit")
        return None  # the model does not fit the drawn hardware and TP: not a loop question
    except ConfigError as exc:
        if "holds no KV block" not in str(exc):
            raise
        event("swap space too small for one block")
        return None  # the drawn swap space is below one block of the drawn model: a user error


@settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_compiled_loop_equals_the_python_engine(sc: Scenario) -> None:
    runs = compare_or_skip(sc)
    if runs is not None:
        note_features(runs[0])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_compiled_loop_equals_fast_forward_without_it(sc: Scenario) -> None:
    """The other Python path (fast-forward on, compiled off) gives the same numbers too."""
    try:
        python = run(sc, compiled=False)
    except DoesNotFitError:
        return
    except ConfigError as exc:
        if "holds no KV block" not in str(exc):
            raise
        return  # a drawn swap space below one block: a user error, as in compare_or_skip
    assert_not_asked(python.summary)
    compiled = run(sc, compiled=True)
    assert_compiled(compiled.summary)
    assert_same_run(compiled, python)


# Named scenarios, each of which must show its feature (the hypothesis ones may miss some).
BURST = [RequestSpec(i, 0.0, 200 + 37 * (i % 5), 60 + 13 * (i % 7)) for i in range(24)]
SPREAD = [RequestSpec(i, 0.011 * i, 120 + 9 * i, 1 + 7 * (i % 9)) for i in range(30)]
SPREAD_LATE = [dataclasses.replace(r, id=100 + r.id, arrival_s=0.5 + r.arrival_s) for r in SPREAD]
SMALL = ["model=llama-3.2-1b", "scheduler.max_num_seqs=16"]
PD_KV = 0.9


def feature_preemption(r: Run) -> bool:
    return r.summary["preemptions"] > 0 and any(
        rec.preemptions > 0 and rec.status == "finished" for rec in r.result.metrics.records
    )


def feature_failed(r: Run) -> bool:
    return statuses(r).get("failed", 0) > 0 and statuses(r).get("finished", 0) > 0


NAMED: dict[str, tuple[Scenario, Callable[[Run], bool]]] = {
    "preemption by recompute": (
        Scenario([*SMALL, "scheduler.block_size=16"], BURST, kv_fraction=2.5, step_sink=True),
        feature_preemption,
    ),
    "preemption under a token budget below the batch": (
        Scenario(
            [
                *SMALL,
                "scheduler.block_size=4",
                "scheduler.max_num_batched_tokens=8",
                "scheduler.policy=sarathi",
            ],
            BURST,
            kv_fraction=8.0,
        ),
        feature_preemption,
    ),
    "requests that never fit fail": (
        Scenario([*SMALL, "scheduler.block_size=8"], SPREAD, kv_fraction=0.7),
        feature_failed,
    ),
    "bounded queue rejects": (
        Scenario([*SMALL, "scheduler.max_num_seqs=2", "scheduler.max_queue=3"], BURST),
        lambda r: statuses(r).get("rejected", 0) > 0,
    ),
    "four instances in lockstep (round robin)": (
        Scenario(
            [*SMALL, "cluster.instances=4", "cluster.router=round_robin"],
            [RequestSpec(i, 0.05 * (i // 4), 100, 40) for i in range(16)],
            step_sink=True,
        ),
        lambda r: lockstep_ties(r) > 0 and r.summary["instances"][3]["requests_completed"] > 0,
    ),
    "least outstanding with ties, tight cache, queue": (
        Scenario(
            [
                *SMALL,
                "cluster.instances=3",
                "cluster.router=least_outstanding",
                "scheduler.max_queue=4",
                "scheduler.block_size=2",
            ],
            [RequestSpec(i, 0.0, 128, 64) for i in range(15)]
            + [RequestSpec(100 + i, 0.2, 64, 64) for i in range(6)],
            kv_fraction=8.0,
        ),
        lambda r: (
            lockstep_ties(r) > 0
            and statuses(r).get("rejected", 0) > 0
            and r.summary["preemptions"] > 0
        ),
    ),
    "one output token each": (
        Scenario(
            [*SMALL, "cluster.tensor_parallel=2"],
            [RequestSpec(i, 0.0, 50 + i, 1) for i in range(10)],
        ),
        lambda r: r.summary["requests_completed"] == 10 and r.summary["tpot_s"]["mean"] is None,
    ),
    "block size 1, TP 4, Llama-3.1-8B": (
        Scenario(
            [
                "model=llama-3.1-8b",
                "cluster.tensor_parallel=4",
                "scheduler.block_size=1",
                "scheduler.max_num_seqs=8",
                "scheduler.max_num_batched_tokens=64",
            ],
            SPREAD,
            kv_fraction=8.0,
        ),
        feature_preemption,
    ),
    "poisson synthetic workload": (
        Scenario(
            [
                *SMALL,
                "workload.num_requests=40",
                "workload.arrival.rate=20",
                "cluster.instances=2",
                "cluster.router=least_outstanding",
            ],
            step_sink=True,
        ),
        lambda r: r.summary["requests_completed"] == 40,
    ),
    "burst synthetic workload, tight cache": (
        Scenario(
            [
                *SMALL,
                "workload.num_requests=30",
                "workload.arrival.process=burst",
                "workload.arrival.rate=50",
                "workload.arrival.burst_size=10",
            ],
            kv_fraction=2.0,
        ),
        feature_preemption,
    ),
    "prefill/decode pools with preemption and failures": (
        Scenario(
            [
                *SMALL,
                "cluster.pools=[{role: prefill, count: 2}, {role: decode, count: 2, "
                "hardware: a100-80gb, tensor_parallel: 2}]",
                "cluster.router=least_outstanding",
                "cluster.decode_router=least_kv",
                "scheduler.block_size=8",
            ],
            BURST + [dataclasses.replace(r, id=100 + r.id) for r in SPREAD],
            kv_fraction=PD_KV,
            step_sink=True,
        ),
        lambda r: (
            r.summary["kv_transfers"] > 0
            and feature_preemption(r)
            and statuses(r).get("failed", 0) > 0
        ),
    ),
    "two mixed pools on different hardware": (
        Scenario(
            [
                *SMALL,
                "cluster.pools=[{count: 2, hardware: h100-sxm}, {count: 1, hardware: l40s}]",
                "cluster.router=least_kv",
            ],
            BURST,
            kv_fraction=6.0,
        ),
        lambda r: (
            {row["pool"] for row in r.summary["instances"] if row["requests_completed"]}
            == {row["pool"] for row in r.summary["instances"]}
        ),
    ),
    "request timeouts": (
        Scenario(
            [*SMALL, "scheduler.max_num_seqs=2", "scheduler.request_timeout_s=0.05"],
            BURST,
        ),
        lambda r: statuses(r).get("timed_out", 0) > 0 and statuses(r).get("finished", 0) > 0,
    ),
    **{
        f"{policy} policy, {what}": (
            Scenario(
                [*SMALL, f"scheduler.policy={policy}", "cluster.instances=2"],
                BURST + [dataclasses.replace(r, id=100 + r.id) for r in SPREAD],
                kv_fraction=kv,
                step_sink=True,
            ),
            feature,
        )
        for policy, what, kv, feature in (
            ("orca", "preemption", 8.0, feature_preemption),
            ("no_evict", "requests that never fit", 0.8, feature_failed),
            ("static", "requests that never fit", 0.8, feature_failed),
        )
    },
    "prefix caching: hits, evictions and preemption": (
        Scenario(
            [*SMALL, "scheduler.enable_prefix_caching=true", "scheduler.block_size=8"],
            [with_shared_prefix(r, r.id % 3, 150) for r in BURST + SPREAD_LATE],
            kv_fraction=8.0,
            step_sink=True,
        ),
        lambda r: (
            r.summary["prefix_cache_hit_rate"] > 0
            and r.summary["prefix_cache_evicted_blocks"] > 0
            and feature_preemption(r)
        ),
    ),
    "preemption by swap, with fallbacks to recompute": (
        Scenario(
            [*SMALL, "scheduler.preemption=swap", "scheduler.swap_space_gib=0.01"],
            BURST,
            kv_fraction=2.5,
            step_sink=True,
        ),
        lambda r: (
            r.summary["swapped_out_blocks"] > 0
            and r.summary["swapped_in_blocks"] > 0
            and r.summary["swap_fallback_preemptions"] > 0
            and r.summary["host_transfer_time_s"] > 0
        ),
    ),
    "prefix-aware routing over shared prompts": (
        Scenario(
            [
                *SMALL,
                "scheduler.enable_prefix_caching=true",
                "cluster.instances=3",
                "cluster.router=prefix_aware",
            ],
            [with_shared_prefix(r, r.id % 3, 150) for r in BURST + SPREAD_LATE],
            kv_fraction=4.0,
        ),
        lambda r: (
            r.summary["prefix_cache_hit_rate"] > 0
            and all(row["requests_completed"] for row in r.summary["instances"])
        ),
    ),
    "prefix caching with pipeline parallelism and the static policy": (
        Scenario(
            [
                *SMALL,
                "scheduler.enable_prefix_caching=true",
                "cluster.pipeline_parallel=2",
                "scheduler.policy=static",
            ],
            [with_shared_prefix(r, r.id % 2, 64) for r in BURST + SPREAD_LATE],
            kv_fraction=4.0,
        ),
        lambda r: r.summary["prefix_cache_hit_rate"] > 0,
    ),
    "trace replay with equal arrival times": (
        Scenario(
            [*SMALL, "cluster.instances=2"],
            trace_rows=[(0.1 * (i // 3), 30 + 11 * i, 1 + 5 * i) for i in range(18)],
        ),
        lambda r: r.summary["requests_completed"] == 18,
    ),
}


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_scenario_reaches_its_feature_and_matches(name: str) -> None:
    sc, happened = NAMED[name]
    _, reference = compare_with_reference(sc)
    assert happened(reference), f"scenario {name!r} did not reach its feature"


@pytest.mark.parametrize("instances", [1, 3])
def test_arrivals_landing_exactly_on_step_ends(instances: int) -> None:
    """Requests that arrive at the very instant a step ends (taken before the step end, as
    the Python loop does) and bursts on instants where several instances end a step."""
    base = [RequestSpec(i, 0.0, 90 + 30 * (i % 2), 40) for i in range(2 * instances)]
    overrides = [*SMALL, f"cluster.instances={instances}", "scheduler.max_num_batched_tokens=64"]
    first = run(Scenario(overrides, base), compiled=False, fast_forward=False)
    token_times = sorted(
        {t for r in first.result.metrics.records for t in (r.first_token_s, r.finish_s)}
    )
    picked = token_times[1 : len(token_times) : max(1, len(token_times) // 5)]
    extra = [RequestSpec(100 + k, t, 50, 20) for k, t in enumerate(picked) for _ in range(2)]
    extra = [dataclasses.replace(r, id=100 + i) for i, r in enumerate(extra)]
    sc = Scenario(overrides, base + extra, kv_fraction=2.0, step_sink=True, chunk_size=2)
    _, reference = compare_with_reference(sc)
    # The first extra burst lands on a step end of an unchanged timeline.
    base_rows = [r for r in reference.result.metrics.records if r.id < 100]
    assert extra[0].arrival_s in {t for r in base_rows for t in (r.first_token_s, r.finish_s)}
    if instances > 1:
        assert lockstep_ties(reference) > 0


def small_deepseek(folder: Path, experts: int) -> Path:
    """A small model with DeepSeek's multi-head latent attention; ``experts`` routed experts
    (0: a dense MLP) after one dense layer."""
    config = {
        "model_type": "deepseek_v3",
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "kv_lora_rank": 128,
        "q_lora_rank": 256,
        "qk_nope_head_dim": 64,
        "qk_rope_head_dim": 32,
        "v_head_dim": 64,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "n_routed_experts": experts,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "moe_intermediate_size": 512,
        "first_k_dense_replace": 1,
    }
    path = folder / f"deepseek-{experts}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    ("experts", "router"), [(0, "least_kv"), (8, "least_outstanding"), (8, "round_robin")]
)
def test_latent_attention_and_experts_match(tmp_path: Path, experts: int, router: str) -> None:
    """MLA (dense or with experts, EP = TP) under preemption, several instances."""
    sc = Scenario(
        [
            f"model={small_deepseek(tmp_path, experts)}",
            "cluster.tensor_parallel=2",
            f"cluster.expert_parallel={2 if experts else 1}",
            "cluster.instances=2",
            f"cluster.router={router}",
            "scheduler.max_num_seqs=16",
            "scheduler.max_num_batched_tokens=48",
            "moe.imbalance=1.3",
        ],
        BURST + [dataclasses.replace(r, id=100 + r.id) for r in SPREAD[:10]],
        kv_fraction=3.0,
        step_sink=True,
    )
    _, reference = compare_with_reference(sc)
    assert feature_preemption(reference)


def test_a_run_over_several_loop_calls_matches() -> None:
    """The loop runs STEPS_PER_CALL steps per call: queues, preempted requests and half-done
    prefills carry over between calls. Compared with the Python engine's fast-forward mode
    (itself equal to stepping, tests/test_fast_forward.py), which is quicker at this size."""
    from llmservingsim.native.runner import STEPS_PER_CALL

    sc = Scenario(
        [*SMALL, "scheduler.max_num_seqs=8", "cluster.instances=2", "cluster.router=least_kv",
         "scheduler.max_queue=60", "scheduler.block_size=8"],
        [RequestSpec(i, 0.02 * i, 64 + i % 50, 300 + 7 * (i % 40)) for i in range(800)],
        kv_fraction=200.0,
        step_sink=True,
        chunk_size=1000,
    )  # fmt: skip
    python = run(sc, compiled=False)
    compiled = run(sc, compiled=True)
    assert_compiled(compiled.summary)
    assert_same_run(compiled, python)
    assert python.summary["iterations"] > 2 * STEPS_PER_CALL
    assert python.summary["preemptions"] > 0 and statuses(python).get("rejected", 0) > 0


def profile_table(folder: Path) -> Path:
    """A measured-format table of Llama-3.2-1B's dense-layer GEMMs (a smooth made-up law);
    attention is not in it, so the profile backend falls back to the roofline there."""
    graph = OpGraph(load_model("llama-3.2-1b"), 1, "bf16", "bf16")
    points = [
        ProfilePoint(op, 2e-6 * (1 + m) ** 0.75, "bf16", "llama-3.2-1b", "made up")
        for m in (1, 4, 16, 64, 256, 1024, 4096)
        for op in {o.name: o for o in graph.dense_layer_ops(m)}.values()
    ]
    path = folder / "dense.csv"
    write_native(path, points)
    return path


NPU_SIM = Path(__file__).resolve().parents[1] / "examples" / "npu_sim" / "npu_sim.py"


@pytest.mark.parametrize("backend", ["profile", "external"])
def test_other_perf_backends_match(tmp_path: Path, backend: str) -> None:
    """Backends without the roofline's decode-attention formula: the loop asks the timer for
    each decode-attention cost every step, so the backend's call counts match too."""
    if backend == "profile":
        chosen = ["perf.backend=profile", f"perf.profile_dir={profile_table(tmp_path)}"]
    else:
        command = f"perf.command=[{sys.executable}, {NPU_SIM}]"
        chosen = ["hardware=npu", "perf.backend=external", command]
    overrides = [*SMALL, "cluster.instances=2", "scheduler.max_num_batched_tokens=96", *chosen]
    requests = [RequestSpec(i, 0.02 * (i // 3), 40 + 13 * i, 20 + 7 * (i % 9)) for i in range(18)]

    def scenario(cache: str) -> Scenario:  # each run starts with an empty external cache
        return Scenario([*overrides, f"perf.cache_dir={tmp_path / cache}"], requests, 8.0)

    reference = run(scenario("reference"), compiled=True, fast_forward=False)
    compiled = run(scenario("compiled"), compiled=True)
    assert_compiled(compiled.summary)
    assert_same_run(compiled, reference)
    counters = ("perf_fallbacks",) if backend == "profile" else ("external_requests",)
    assert all(reference.summary[name] for name in counters)
    assert feature_preemption(reference)


def test_pipeline_parallel_with_preemption_and_prefill_decode() -> None:
    sc = Scenario(
        [
            *SMALL,
            "cluster.pools=[{role: prefill, count: 1, pipeline_parallel: 2}, "
            "{role: decode, count: 2, pipeline_parallel: 3}]",
            "cluster.decode_router=power_of_two_choices",
            "cluster.router=random",
            "scheduler.max_num_batched_tokens=64",
        ],
        BURST + [dataclasses.replace(r, id=100 + r.id) for r in SPREAD],
        kv_fraction=20.0,
        step_sink=True,
    )
    _, reference = compare_with_reference(sc)
    assert feature_preemption(reference) and reference.summary["kv_transfers"] > 0


# ----------------------------------------------------------------------------- refusal


# feature -> (overrides, words of which the reason must contain one, case-insensitive)
INELIGIBLE: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "speculative decoding": (["speculative.method=ngram"], ("specul",)),
    "LoRA": (["workload.lora={num_adapters: 2}"], ("lora",)),
    "PIM": (["pim.enabled=true"], ("pim",)),
    "KV offload": (
        ["scheduler.enable_prefix_caching=true", "scheduler.kv_offload={capacity_gib: 1}"],
        ("offload",),
    ),
}
FEW = [RequestSpec(i, 0.01 * i, 40, 8) for i in range(6)]


def assert_not_asked(summary: dict[str, Any]) -> None:
    """``simulator.compiled: false``: the Python engine, and the only reason is that switch."""
    assert summary["engine_loop"] == "python"
    assert "simulator.compiled" in summary.get("engine_loop_reason", "simulator.compiled")


def assert_refused(summary: dict[str, Any], words: tuple[str, ...]) -> None:
    assert summary["engine_loop"] == "python"
    reason = summary.get("engine_loop_reason")
    assert isinstance(reason, str) and reason.strip(), "a refusal says why"
    assert any(w in reason.lower() for w in words), f"{reason!r} names none of {words}"


@pytest.mark.parametrize("feature", sorted(INELIGIBLE))
def test_ineligible_configuration_keeps_the_python_engine_and_says_why(feature: str) -> None:
    overrides, words = INELIGIBLE[feature]
    sc = Scenario(["model=llama-3.2-1b", *overrides], FEW)
    summary = run(sc, compiled=True).summary
    assert_refused(summary, words)
    assert summary["requests_completed"] == len(FEW)
    assert_not_asked(run(sc, compiled=False).summary)


def test_invariant_checker_keeps_the_python_engine() -> None:
    cfg = load_config(None, ["model=llama-3.2-1b", *mode_overrides(True, True)])
    summary = simulate(cfg, requests=FEW, check_invariants=True).summary
    assert_refused(summary, ("invariant",))


def test_step_by_step_mode_keeps_the_python_engine() -> None:
    summary = run(Scenario(["model=llama-3.2-1b"], FEW), compiled=True, fast_forward=False).summary
    assert_refused(summary, ("fast_forward", "fast-forward", "step"))


def test_the_default_scenario_is_eligible() -> None:
    """What a user gets by default (minus the invariant checker the suite turns on)."""
    cfg = load_config(None, ["workload.num_requests=20"])
    assert_compiled(simulate(cfg, check_invariants=False).summary)


# ----------------------------------------------------------------------------- files


def run_cli(out: Path, *sets: str) -> None:
    args = ["run", "--out", str(out), "-q", "--no-report", "--set", "model=llama-3.2-1b"]
    args += ["--set", "workload.num_requests=40", "--set", "cluster.instances=2"]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


def table(path: Path, key: tuple[str, ...] | None) -> dict[str, list[Any]]:
    """A table's columns, in file order (key None) or sorted by the ``key`` columns."""
    columns = pq.read_table(path).to_pydict()
    if key is None:
        return columns
    order = sorted(range(len(columns[key[0]])), key=lambda i: tuple(columns[k][i] for k in key))
    return {name: [values[i] for i in order] for name, values in columns.items()}


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def trace_events(out: Path) -> list[dict[str, Any]]:
    """trace.json's events, sorted, without the steps' serial numbers: those count steps in
    the order they were logged, which may differ between instances (fast-forward logs a
    run's steps when it applies them; docs/performance.md)."""
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    for e in events:
        if e.get("cat") == "step":
            del e["args"]["step"]
    return sorted(events, key=lambda e: json.dumps(rounded(e), sort_keys=True))


@pytest.mark.parametrize("sets", [[], ["outputs.timeseries_max_rows=64", "slo.ttft_s=0.2"]])
def test_run_writes_the_same_files_with_and_without_the_compiled_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sets: list[str]
) -> None:
    """Per step rows, or steps summed into time buckets; with goodput in the summary."""
    monkeypatch.delenv(INVARIANTS_ENV, raising=False)  # `run` without --check-invariants
    outs = {}
    for compiled in (True, False):
        outs[compiled] = tmp_path / f"compiled-{compiled}"
        run_cli(outs[compiled], f"simulator.compiled={str(compiled).lower()}", *sets)
    summaries = {c: json.loads((out / "summary.json").read_text()) for c, out in outs.items()}
    assert_compiled(summaries[True])
    assert summaries[False]["engine_loop"] == "python"
    assert_same_summary(summaries[True], summaries[False])
    for name, key in (("requests", None), ("timeseries", ("time_s", "instance"))):
        got, want = (table(outs[c] / f"{name}.parquet", key) for c in outs)
        assert got.keys() == want.keys()
        assert len(want["instance"]) >= (40 if name == "requests" else 10)
        for column, values in want.items():
            assert_column_close(got[column], values, f"{name}.{column}")
    events = [trace_events(out) for out in outs.values()]
    assert len(events[0]) == len(events[1]) > 0
    for i, (a, b) in enumerate(zip(*events, strict=True)):
        assert dict(leaves(a)).keys() == dict(leaves(b)).keys()
        for key, value in dict(leaves(b)).items():
            assert_close(dict(leaves(a))[key], value, f"trace event {i} {key}")


# ----------------------------------------------------------------------------- interrupt

CHILD = """
import sys
from pathlib import Path
from llmservingsim.native import runner
marker = Path(sys.argv[1])
start = runner.CompiledEngine.run
def marked_run(self, requests):
    with marker.open("a") as fh:
        fh.write("loop\\n")
    return start(self, requests)
runner.CompiledEngine.run = marked_run
from llmservingsim.catalog import load_model
from llmservingsim.cli import app
app(sys.argv[2:])
"""


def test_sigterm_stops_the_compiled_loop_with_partial_results(tmp_path: Path) -> None:
    """The real CLI in a subprocess (as tests/test_interrupt.py does for the Python loop);
    SIGINT in process: test_a_signal_raised_in_the_progress_hook_stops_the_compiled_loop."""
    out, marker = tmp_path / "out", tmp_path / "loops"
    total = 1_000_000
    args = [
        "run",
        "--set",
        "model=llama-3.2-1b",
        "--set",
        "workload.arrival.rate=2000",
        "--set",
        "cluster.instances=8",
        "--set",
        f"workload.num_requests={total}",
        "--out",
        str(out),
        "-q",
        "--no-report",
        "--no-trace",
    ]
    env = {k: v for k, v in os.environ.items() if k != INVARIANTS_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the compiled loop never started"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted" in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert_compiled(summary)
    assert summary["partial"] is True and summary["interrupted"] is True
    assert 0 < summary["requests_completed"] < total
    rows = pq.read_table(out / "requests.parquet")
    assert rows.num_rows == summary["requests_completed"] + summary["requests_failed"]
    finish = np.asarray(rows.column("finish_s"))
    assert finish.max() <= summary["simulated_time_s"]
    assert pq.read_table(out / "timeseries.parquet").num_rows > 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


LONG = Scenario(  # about 35k steps: the compiled loop reports progress a few times
    ["model=llama-3.2-1b", "scheduler.max_num_seqs=8"],
    [RequestSpec(i, 0.004 * i, 64 + i % 50, 300 + 7 * (i % 40)) for i in range(600)],
)


def test_a_signal_raised_in_the_progress_hook_stops_the_compiled_loop() -> None:
    """In process: Ctrl-C (SIGINT → KeyboardInterrupt) lands while the loop runs; the run
    keeps what finished and says it is partial."""
    calls = [0]

    def interrupt_once(now: float, done: int) -> None:
        calls[0] += 1
        if calls[0] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = run(LONG, compiled=True, progress=interrupt_once).result
    finally:
        signal.signal(signal.SIGINT, previous)
    summary = result.summary
    assert_compiled(summary)
    assert summary["interrupted"] is True and summary["partial"] is True
    records = list(result.metrics.records)
    assert len(records) < len(LONG.requests or [])
    assert all(r.finish_s <= summary["simulated_time_s"] for r in records)


def test_a_signal_whose_handler_returns_does_not_end_the_compiled_run() -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    calls = [0]

    def signal_once(now: float, done: int) -> None:
        calls[0] += 1
        if calls[0] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        summary = run(LONG, compiled=True, progress=signal_once).summary
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert_compiled(summary)
    assert seen == [signal.SIGTERM]
    assert summary["interrupted"] is False
    assert summary["requests_completed"] == len(LONG.requests or [])


# ----------------------------------------------------------------------------- progress


def test_progress_hook_sees_increasing_simulated_times() -> None:
    seen: list[tuple[float, int]] = []
    result = run(LONG, compiled=True, progress=lambda now, done: seen.append((now, done)))
    summary = result.summary
    assert_compiled(summary)
    assert len(seen) >= 2, "a long run reports progress more than once"
    times = [t for t, _ in seen]
    assert all(a < b for a, b in itertools.pairwise(times)), times
    assert times[0] > 0 and times[-1] <= summary["simulated_time_s"]
    done = [d for _, d in seen]
    assert done == sorted(done) and done[-1] <= summary["requests_completed"]
    # The requests said done by then had all ended by then.
    finish = sorted(r.finish_s for r in result.result.metrics.records)
    for now, count in seen:
        assert count <= sum(1 for f in finish if f <= now)
