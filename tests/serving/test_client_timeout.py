"""Client timeout (``workload.timeout_s``, per client ``clients[].timeout_s``): the client gives
up on a request ``timeout_s`` after it sent it, queued or running; a running request leaves the
batch with its KV blocks freed and keeps its partial output in the rows (engine.py TIMEOUT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_one_line_error
from llmservingsim.config import load_config
from llmservingsim.metrics.request_log import STATUS_CODE
from llmservingsim.simulation import SimulationResult, simulate

SMALL = ["model=llama-3.2-1b", "seed=7"]
LONG = (  # every request decodes for seconds: a 1 s timeout catches them running
    "workload.input_len={dist: uniform, min: 100, max: 900}",
    "workload.output_len={dist: uniform, min: 200, max: 1500}",
)
TIMED_OUT = STATUS_CODE["timed_out"]


def run(*sets: str) -> SimulationResult:
    return simulate(load_config(None, [*SMALL, *sets]), check_invariants=True)


def col(result: SimulationResult, name: str) -> np.ndarray:
    return result.metrics.requests.column(name)


def test_a_running_request_ends_at_its_timeout_with_its_partial_tokens() -> None:
    result = run(
        "workload.num_requests=300", "workload.arrival.rate=40", "workload.timeout_s=1", *LONG
    )
    s = result.summary
    status = col(result, "status")
    out = col(result, "output_tokens")
    timed_out = status == TIMED_OUT
    assert s["requests_timed_out"] == np.count_nonzero(timed_out) > 50
    assert s["requests_completed"] + s["requests_timed_out"] == 300
    arrival, finish, first = (
        col(result, "arrival_s"),
        col(result, "finish_s"),
        col(result, "first_token_s"),
    )
    # It ends exactly one timeout after it was sent, having run: a first token and part of
    # its output, never all of it.
    assert np.all(finish[timed_out] == arrival[timed_out] + 1.0)
    ran = timed_out & (first >= 0)
    assert np.count_nonzero(ran) > 50
    assert np.all(out[ran] > 0) and np.all(first[ran] <= finish[ran])
    assert np.all(out[timed_out & ~ran] == 0)
    assert np.all(out[timed_out] < 1500)
    # Finished requests are all within the timeout.
    done = status == STATUS_CODE["finished"]
    assert np.all(finish[done] - arrival[done] <= 1.0)
    # Timed-out requests are not counted as served.
    assert s["output_tokens"] == int(out[done].sum())


@pytest.mark.parametrize(
    "more",
    [
        (),
        (
            "scheduler.policy=priority",
            "workload.clients=[{name: a, share: 0.5, priority: 0}, "
            "{name: b, share: 0.5, priority: 1, timeout_s: 0.6}]",
        ),
        ("scheduler.preemption=swap", "scheduler.num_gpu_blocks_override=600"),
        ("scheduler.num_gpu_blocks_override=600",),
        ("cluster.pools=[{name: p, role: prefill, count: 1}, {name: d, role: decode, count: 2}]",),
        (
            "scheduler.enable_prefix_caching=true",
            "workload.prefix={num_system_prompts: 2, system_prompt_len: 300}",
        ),
        ("workload.arrival={process: closed, concurrency: 24, think_time_s: 0.1}",),
        ("scheduler.max_num_seqs=1",),  # the only steady decoder leaves in mid-step
        ("scheduler.policy=static",),
        ("scheduler.policy=no_evict",),
        ("scheduler.policy=orca",),
        ("cluster.pipeline_parallel=2",),
        ("speculative={method: ngram, num_speculative_tokens: 3}",),
    ],
)
def test_fast_forward_gives_the_same_rows_with_timeouts(more: tuple[str, ...]) -> None:
    """The timeout is an event that cuts fast-forward runs: stepping one iteration at a time
    gives the same rows, whatever the scheduler, preemption, P/D or closed loop."""
    sets = (
        "workload.num_requests=250",
        "workload.arrival.rate=60",
        "workload.timeout_s=1.2",
        *LONG,
        *more,
    )
    fast = run(*sets)
    slow = run(*sets, "simulator.fast_forward=false")
    assert fast.summary["requests_timed_out"] > 0
    for name in (
        "id",
        "status",
        "arrival_s",
        "first_token_s",
        "finish_s",
        "output_tokens",
        "instance",
    ):
        assert np.array_equal(col(fast, name), col(slow, name)), name
    out = col(fast, "output_tokens")
    assert np.all(out >= 0) and np.all(out[col(fast, "status") == TIMED_OUT] < 1500)
    if more and "preemption=swap" in more[0]:
        assert fast.summary["preemptions"] > 0


def test_queued_requests_time_out_too_and_before_the_server_side_timeout() -> None:
    """All sent at t = 0, one running at a time: the first runs until its client gives up at
    0.5 s, with part of its answer; every other one times out queued at the same instant
    (none starts in the slot the first one freed), before scheduler.request_timeout_s (2 s)
    would drop them server-side."""
    result = run(
        "workload.num_requests=20",
        "workload.arrival.rate=.inf",
        "scheduler.max_num_seqs=1",
        "workload.timeout_s=0.5",
        "scheduler.request_timeout_s=2",
        *LONG,
    )
    assert result.summary["requests_timed_out"] == 20
    order = np.argsort(col(result, "id"))
    out = col(result, "output_tokens")[order]
    scheduled = col(result, "first_scheduled_s")[order]
    assert np.all(col(result, "finish_s") == 0.5)
    assert out[0] > 0 and scheduled[0] == 0.0
    assert np.all(out[1:] == 0) and np.all(scheduled[1:] < 0)
    assert np.all(col(result, "first_token_s")[order][1:] < 0)
    reasons = result.metrics.requests.whole().reason_names()
    assert all("workload.timeout_s" in (r or "") for r in reasons)


def test_per_client_timeouts() -> None:
    result = run(
        "workload.num_requests=300",
        "workload.arrival.rate=40",
        "workload.timeout_s=5",
        "workload.clients=[{name: patient, share: 0.5}, {name: hasty, share: 0.5, timeout_s: 0.8}]",
        *LONG,
    )
    clients = result.summary["clients"]
    assert clients["hasty"]["requests_timed_out"] > clients["patient"]["requests_timed_out"]
    e2e = col(result, "finish_s") - col(result, "arrival_s")
    timed_out = col(result, "status") == TIMED_OUT
    assert set(np.round(e2e[timed_out], 9)) <= {0.8, 5.0}


def test_a_closed_loop_client_sends_its_next_request_after_the_timeout() -> None:
    concurrency, think, n = 4, 0.1, 80
    result = run(
        f"workload.num_requests={n}",
        f"workload.arrival={{process: closed, concurrency: {concurrency}, think_time_s: {think}}}",
        "workload.timeout_s=0.7",
        *LONG,
    )
    assert result.summary["requests_timed_out"] > 10
    arrival, finish = col(result, "arrival_s"), col(result, "finish_s")
    sends, ends = np.sort(arrival), np.sort(finish)
    assert np.all(sends[concurrency:] == ends[: n - concurrency] + think)


def test_with_the_frontend_the_timeout_counts_from_the_client_send() -> None:
    result = run(
        "workload.num_requests=200",
        "workload.arrival.rate=40",
        "workload.timeout_s=1",
        "frontend={enabled: true, request_overhead_us: 20000, per_prompt_token_us: 10}",
        *LONG,
    )
    timed_out = col(result, "status") == TIMED_OUT
    assert np.count_nonzero(timed_out) > 20
    e2e = col(result, "finish_s") - col(result, "arrival_s")
    assert np.allclose(e2e[timed_out], 1.0, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["workload.timeout_s=0"], "workload.timeout_s"),
        (["workload.timeout_s=-1"], "workload.timeout_s"),
        (["workload.timeout_s=.inf"], "workload.timeout_s"),
        (["workload.timeout_s=true"], "workload.timeout_s"),
        (
            ["workload.clients=[{name: a, share: 0.5, timeout_s: 0}, {name: b, share: 0.5}]"],
            "timeout_s",
        ),
        (["workload.timeuot_s=3"], "did you mean 'workload.timeout_s'"),
    ],
)
def test_bad_timeout_input_is_one_error_line(sets: list[str], message: str, tmp_path: Path) -> None:
    assert_one_line_error(sets, message, tmp_path)


def test_a_trace_client_may_have_its_own_timeout(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        "".join(
            f'{{"arrival_time_ns": {k * 50_000_000}, "input_toks": 200, "output_toks": 1200, '
            f'"client": "{"quick" if k % 2 else "slow"}"}}\n'
            for k in range(40)
        )
    )
    result = run(
        "workload.kind=trace",
        f"workload.trace={{path: {trace}}}",
        "workload.clients=[{name: slow}, {name: quick, timeout_s: 0.4}]",
    )
    clients = result.summary["clients"]
    assert clients["quick"]["requests_timed_out"] == 20
    assert clients["slow"]["requests_timed_out"] == 0
    assert clients["slow"]["requests_completed"] == 20


def test_a_timeout_that_never_fires_changes_no_number() -> None:
    """Deadlines of requests that ended first are skipped without moving the clock: the run
    ends when its last request does, as without a timeout."""
    sets = ("workload.num_requests=200", "workload.arrival.rate=40", *LONG)
    plain = run(*sets).summary
    timed = run(*sets, "workload.timeout_s=1000").summary
    assert timed["requests_timed_out"] == 0
    for key in ("simulated_time_s", "energy_j", "cost_usd", "iterations", "ttft_s", "e2e_s"):
        assert timed[key] == plain[key], key
