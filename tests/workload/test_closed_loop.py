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
        (
            ["workload.arrival={process: closed, concurrency: 2}", "frontend.enabled=true"],
            "closed with frontend.enabled is not yet supported",
        ),
        (
            ["workload.arrival={process: closed, concurrency: 2}", "max_model_len=4096"],
            "closed with max_model_len is not yet supported",
        ),
    ],
)
def test_bad_closed_loop_input_is_one_error_line(
    sets: list[str], message: str, tmp_path: Path
) -> None:
    assert_one_line_error(sets, message, tmp_path)
