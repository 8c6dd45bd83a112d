"""Closed-loop clients (workload.arrival.process: closed): N clients, each sending its next
request when its previous one ended plus a think time (engine.ClosedLoop)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_one_line_error
from llmservingsim.config import load_config
from llmservingsim.engine import EngineHooks
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.serving.instance import Instance
from llmservingsim.simulation import SimulationResult, simulate

SMALL = ["model=llama-3.2-1b", "seed=3"]
P_D = "cluster.pools=[{name: p, role: prefill, count: 1}, {name: d, role: decode, count: 2}]"


def closed(concurrency: int, think_s: float = 0.0, n: int = 200, *more: str) -> list[str]:
    return [
        *SMALL,
        f"workload.num_requests={n}",
        f"workload.arrival={{process: closed, concurrency: {concurrency}, "
        f"think_time_s: {think_s}}}",
        *more,
    ]


def run(overrides: list[str], **kwargs: object) -> SimulationResult:
    return simulate(load_config(None, overrides), **kwargs)  # type: ignore[arg-type]


def columns(result: SimulationResult) -> tuple[np.ndarray, np.ndarray]:
    log = result.metrics.requests
    return log.column("arrival_s"), log.column("finish_s")


@pytest.mark.parametrize(
    ("concurrency", "think_s", "more"),
    [
        (1, 0.0, ()),
        (8, 0.0, ()),
        (8, 0.25, ()),
        (5, 0.1, (P_D,)),  # a request ends at its decode instance
        (6, 0.0, ("scheduler.max_num_seqs=2", "scheduler.max_queue=1")),  # rejections end too
    ],
)
def test_each_request_is_sent_when_one_ended_plus_the_think_time(
    concurrency: int, think_s: float, more: tuple[str, ...]
) -> None:
    """The first N requests are sent at t = 0; every later one exactly when an earlier request
    ended plus the think time: the k-th send after the first N follows the k-th end."""
    n = 120
    result = run(closed(concurrency, think_s, n, *more))
    arrival, finish = columns(result)
    assert arrival.size == n
    sends, ends = np.sort(arrival), np.sort(finish)
    assert np.all(sends[:concurrency] == 0.0)
    assert np.all(sends[concurrency:] == ends[: n - concurrency] + think_s)
    if "scheduler.max_queue=1" in more:
        assert result.summary["requests_rejected"] > 0


class InFlight(EngineHooks):
    """Requests sent minus requests ended, at every step start (the last one at a given time
    comes after every request sent at that time)."""

    def __init__(self, metrics: MetricsCollector) -> None:
        self.metrics = metrics
        self.sent = 0
        self.seen: list[tuple[float, int, int]] = []  # (time, sent, in flight)

    def before_add(self, instance: Instance, now: float) -> None:
        self.sent += 1

    def after_start(
        self, instance: Instance, now: float, started: tuple[float, int] | None
    ) -> None:
        self.seen.append((now, self.sent, self.sent - len(self.metrics.requests)))


@pytest.mark.parametrize("concurrency", [1, 4, 32])
def test_exactly_n_requests_in_flight_until_the_last_is_sent(concurrency: int) -> None:
    n = 300
    metrics = MetricsCollector()
    hook = InFlight(metrics)
    result = run(closed(concurrency, 0.0, n), metrics=metrics, hooks=[hook])
    assert hook.sent == n
    assert max(flight for _, _, flight in hook.seen) == concurrency
    last_at: dict[float, tuple[int, int]] = {}
    for now, sent, flight in hook.seen:
        last_at[now] = (sent, flight)
    for now, (sent, flight) in last_at.items():
        if sent < n:  # before the tail: every client has a request in flight
            assert flight == concurrency, now
    # The same from the rows: at every send time before the last, N requests are in flight.
    arrival, finish = columns(result)
    for t in np.unique(arrival)[:-1]:
        in_flight = np.count_nonzero(arrival <= t) - np.count_nonzero(finish <= t)
        assert in_flight == concurrency, t


UNIFORM = (  # vllm bench serve --random-range-ratio 0.5 around 512 and 128 tokens
    "workload.input_len={dist: uniform, min: 256, max: 768}",
    "workload.output_len={dist: uniform, min: 64, max: 192}",
)


def test_littles_law_holds_on_the_summary() -> None:
    """Throughput × mean E2E = mean requests in flight = N (think time 0), within 2 % once the
    drain at the end (fewer than N requests left) is short next to the run."""
    concurrency = 16
    s = run(closed(concurrency, 0.0, 1600, *UNIFORM)).summary
    assert s["requests_completed"] == 1600
    in_flight = s["request_throughput"] * s["e2e_s"]["mean"]
    assert in_flight == pytest.approx(concurrency, rel=0.02)
    assert in_flight < concurrency  # the drain: never more than N in flight


def test_think_time_lowers_the_load_by_littles_law() -> None:
    """With think time Z each client cycles in E2E + Z: throughput ≈ N / (E2E + Z)."""
    concurrency, think = 8, 0.5
    s = run(closed(concurrency, think, 800, *UNIFORM)).summary
    cycle = s["e2e_s"]["mean"] + think
    assert s["request_throughput"] * cycle == pytest.approx(concurrency, rel=0.02)


def test_closed_loop_is_deterministic_and_clients_keep_their_summaries() -> None:
    clients = "workload.clients=[{name: chat, share: 0.75}, {name: batch, share: 0.25}]"
    a = run(closed(4, 0.05, 200, clients))
    b = run(closed(4, 0.05, 200, clients))
    for name in ("id", "arrival_s", "first_token_s", "finish_s", "output_tokens"):
        assert np.array_equal(a.metrics.requests.column(name), b.metrics.requests.column(name))
    per_client = a.summary["clients"]
    assert [c["requests"] for c in per_client.values()] == [150, 50]
    assert sum(c["requests_completed"] for c in per_client.values()) == 200


def test_more_clients_than_requests_sends_them_all_at_once() -> None:
    arrival, _ = columns(run(closed(50, 0.0, 10)))
    assert arrival.size == 10 and np.all(arrival == 0.0)


def test_a_trace_sets_the_order_its_requests_are_sent_in(tmp_path: Path) -> None:
    """A replayed trace in closed loop: its timestamps only order the requests."""
    trace = tmp_path / "t.jsonl"
    rows = [(5_000_000_000, 300, 40), (1_000, 100, 20), (9_000_000_000, 200, 30)] * 10
    trace.write_text(
        "".join(
            f'{{"arrival_time_ns": {t + k}, "input_toks": {i}, "output_toks": {o}}}\n'
            for k, (t, i, o) in enumerate(rows)
        )
    )
    result = run(
        [
            *SMALL,
            "workload.kind=trace",
            f"workload.trace={{path: {trace}}}",
            "workload.arrival={process: closed, concurrency: 3, think_time_s: 0.01}",
        ]
    )
    log = result.metrics.requests
    arrival, finish = columns(result)
    sends, ends = np.sort(arrival), np.sort(finish)
    assert arrival.size == 30 and np.all(sends[:3] == 0.0)
    assert np.all(sends[3:] == ends[:27] + 0.01)
    # Sent in trace order: by id (the table's arrival order), send times never go back.
    by_id = arrival[np.argsort(log.column("id"))]
    assert np.all(np.diff(by_id) >= 0)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["workload.arrival={process: closed, concurrency: 0}"], "concurrency"),
        (["workload.arrival={process: closed, concurrency: -2}"], "concurrency"),
        (["workload.arrival={process: closed}"], "needs concurrency"),
        (
            ["workload.arrival={process: closed, concurrency: 2, think_time_s: -1}"],
            "think_time_s",
        ),
        (
            ["workload.arrival={process: closed, concurrency: 2, think_time_s: .inf}"],
            "think_time_s",
        ),
        (["workload.arrival={process: closed, concurrency: 2, rate: 4}"], "remove rate"),
        (["workload.arrival={process: poisson, concurrency: 2}"], "only apply to process"),
        (["workload.duration_s=10"], "duration_s=10 bounds a closed loop"),
        (
            ["workload.arrival={process: closed, concurrency: 2}", "workload.duration_s=0"],
            "duration_s",
        ),
        (
            ["workload.arrival={process: closed, concurrency: 2}", "workload.duration_s=-3"],
            "duration_s",
        ),
        (
            [
                "workload.arrival={process: closed, concurrency: 2}",
                "workload.stages=[{duration_s: 5, rate: 2}]",
            ],
            "closed with stages is not yet supported",
        ),
        (
            [
                "workload.arrival={process: closed, concurrency: 2}",
                "workload.sessions={turns: {dist: fixed, value: 2}}",
            ],
            "closed with sessions is not yet supported",
        ),
        (
            [
                "workload.arrival={process: closed, concurrency: 2}",
                "workload.clients=[{name: a, rate: 2}, {name: b, rate: 3}]",
            ],
            "closed with clients with a rate is not yet supported",
        ),
    ],
)
def test_bad_closed_loop_input_is_one_error_line(
    sets: list[str], message: str, tmp_path: Path
) -> None:
    assert_one_line_error(sets, message, tmp_path)


def in_flight_at_sends(arrival: np.ndarray, finish: np.ndarray) -> list[int]:
    """Requests in flight (sent, not yet seen to end) just after each send time but the last."""
    return [
        int(np.count_nonzero(arrival <= t) - np.count_nonzero(finish <= t))
        for t in np.unique(arrival)[:-1]
    ]


FRONTEND = (
    "frontend={enabled: true, request_overhead_us: 3000, per_prompt_token_us: 4, "
    "token_out_us: 500, async_scheduling: true}"
)


@pytest.mark.parametrize(
    ("think_s", "more"), [(0.0, FRONTEND), (0.05, FRONTEND), (0.0, "engine=vllm")]
)
def test_with_the_frontend_the_client_keeps_n_in_flight_as_it_sees_them(
    think_s: float, more: str
) -> None:
    """A client sees the end when the frontend streamed it (the row's finish), sends its next
    request then (+ think time), and that request reaches the engine the frontend's arrival
    delay later. engine: vllm turns the frontend on too."""
    concurrency, n = 6, 150
    result = run(closed(concurrency, think_s, n, more))
    fe = result.summary["config"]["frontend"]
    assert fe["enabled"]
    assert result.summary["requests_completed"] == n
    arrival, finish = columns(result)
    sends, ends = np.sort(arrival), np.sort(finish)
    assert np.all(sends[:concurrency] == 0.0)
    assert np.all(sends[concurrency:] == ends[: n - concurrency] + think_s)
    if think_s == 0.0:
        assert set(in_flight_at_sends(arrival, finish)) == {concurrency}
    # The engine first scheduled each request no earlier than its send + the arrival delay.
    prompt = result.metrics.requests.column("input_tokens")
    delay = (fe["request_overhead_us"] + fe["per_prompt_token_us"] * prompt) * 1e-6
    scheduled = result.metrics.requests.column("first_scheduled_s")
    assert np.all(scheduled >= arrival + delay - 1e-12)
    if more == FRONTEND:  # the client sees tokens later than the engine emitted them
        assert np.all(finish > arrival + delay)


def test_requests_over_max_model_len_are_rejected_when_sent_and_the_client_goes_on() -> None:
    concurrency, n, think = 4, 200, 0.02
    result = run(
        closed(
            concurrency,
            think,
            n,
            "max_model_len=700",
            "workload.input_len={dist: uniform, min: 100, max: 600}",
            "workload.output_len={dist: uniform, min: 20, max: 200}",
        )
    )
    s = result.summary
    log = result.metrics.requests
    rejected = log.column("status") == 2  # STATUSES: finished, failed, rejected, timed_out
    too_long = log.column("input_tokens") + log.column("output_tokens") > 700
    assert s["requests_rejected"] == np.count_nonzero(rejected) > 10
    assert s["requests_completed"] + s["requests_rejected"] == n
    arrival, finish = columns(result)
    # A rejected request ends when it is sent (the client sees the refusal at once) ...
    assert np.all(finish[rejected] == arrival[rejected])
    assert not np.any(too_long[~rejected])
    # ... and frees its client like any other end: still one send per end + think time.
    sends, ends = np.sort(arrival), np.sort(finish)
    assert np.all(sends[concurrency:] == ends[: n - concurrency] + think)


def test_ends_are_read_across_sealed_chunks_of_the_request_log() -> None:
    """The loop reads each ended row's finish time from the log; with tiny chunks most rows
    it reads are sealed already (RequestLog.finish_times across chunk boundaries)."""
    n, concurrency, think = 120, 5, 0.01
    metrics = MetricsCollector(chunk_size=7)
    result = run(closed(concurrency, think, n, FRONTEND), metrics=metrics)
    assert len(metrics.requests.chunks) > 10
    arrival, finish = columns(result)
    sends, ends = np.sort(arrival), np.sort(finish)
    assert np.all(sends[concurrency:] == ends[: n - concurrency] + think)


def test_duration_s_stops_the_sends_and_keeps_n_in_flight_until_then() -> None:
    """workload.duration_s: no request is sent at or after it; those in flight finish; the
    requests never sent are in no row and no count."""
    concurrency, think, duration = 6, 0.05, 4.0
    clients = "workload.clients=[{name: chat, share: 0.5}, {name: batch, share: 0.5}]"
    result = run(
        closed(concurrency, think, 100_000, f"workload.duration_s={duration}", clients),
        check_invariants=True,
    )
    s = result.summary
    arrival, finish = columns(result)
    assert arrival.max() < duration <= finish.max()
    assert s["requests_total"] == arrival.size == s["requests_completed"] < 100_000
    assert sum(c["requests"] for c in s["clients"].values()) == arrival.size
    # Until the last send, every client has a request in flight or is thinking.
    sends, ends = np.sort(arrival), np.sort(finish)
    k = arrival.size
    assert np.all(sends[concurrency:] == ends[: k - concurrency] + think)
    # The next send would have been at or after the end of the run.
    assert ends[k - concurrency] + think >= duration


def test_duration_s_warns_when_num_requests_run_out_first(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from llmservingsim.cli import app

    args = ["run", "--out", str(tmp_path), "--no-report", "--no-trace", "-q"]
    for item in closed(4, 0.0, 20, "workload.duration_s=100"):
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "workload.duration_s=100" in line]
    assert len(warned) == 1 and warned[0].startswith("warning:"), result.output
    assert "raise num_requests" in warned[0]
