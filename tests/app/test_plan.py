"""Capacity planning: SLO parsing, the rate and resource searches, the Pareto front, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from llmservingsim.cli import app
from llmservingsim.config import SimConfig
from llmservingsim.errors import ConfigError, DoesNotFitError
from llmservingsim.sweep.executors import ExecutorOptions, LocalExecutor
from llmservingsim.sweep.grid import parse_axes
from llmservingsim.sweep.pareto import pareto_front
from llmservingsim.sweep.plan import (
    CandidateTask,
    PlanSettings,
    plan_settings,
    plan_tasks,
    run_plan,
    search_candidate,
)
from llmservingsim.sweep.rows import Scalar, simulate_row
from llmservingsim.sweep.scenario import Scenario
from llmservingsim.sweep.slo import parse_slo, parse_slos, slo_violations

runner = CliRunner()
TTFT = parse_slos(["ttft_p99=0.5"])
TTFT_FAST = parse_slos(["ttft_p99=0.2"])


# ----------------------------------------------------------------------------- SLOs


def test_slo_names_map_to_summary_columns() -> None:
    assert parse_slo("ttft_p99=0.5").column == "ttft_s_p99"
    assert parse_slo("tpot_s_mean=0.05").column == "tpot_s_mean"
    slo = parse_slo("e2e_max=30")
    assert (slo.name, slo.limit_s) == ("e2e_max", 30.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft_p98=1", "METRIC_STAT=SECONDS"),
        ("latency_p99=1", "METRIC_STAT=SECONDS"),
        ("ttft_p99", "METRIC_STAT=SECONDS"),
        ("ttft_p99=fast", "not a number"),
        ("ttft_p99=-1", "positive"),
    ],
)
def test_bad_slo_is_a_one_line_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_slo(text)


def test_failed_requests_and_missing_samples_break_the_slo() -> None:
    assert slo_violations({"ttft_s_p99": 0.4, "requests_failed": 0}, TTFT) == []
    assert slo_violations({"ttft_s_p99": 0.6, "requests_failed": 0}, TTFT) != []
    assert slo_violations({"ttft_s_p99": 0.4, "requests_failed": 3}, TTFT) != []
    assert slo_violations({"ttft_s_p99": None, "requests_failed": 0}, TTFT) != []


# ----------------------------------------------------------------------------- Pareto front


_points = st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), max_size=30)


@given(_points)
def test_pareto_front_is_exactly_the_non_dominated_points(points: list[tuple[int, int]]) -> None:
    def dominated(p: tuple[int, int]) -> bool:
        return any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points)

    front = set(pareto_front([(float(x), float(y)) for x, y in points]))
    assert front == {i for i, p in enumerate(points) if not dominated(p)}


# ----------------------------------------------------------------------------- searches


def synthetic_server(cfg: SimConfig) -> dict[str, Scalar]:
    """A monotone toy system: each instance serves 10 × max_num_seqs / 64 req/s within the SLO;
    TTFT jumps past it above that capacity. Out of memory below 2 tensor-parallel shards of
    a 70B model, like the real one."""
    if cfg.model == "llama-3.1-70b" and cfg.cluster.tensor_parallel < 2:
        raise DoesNotFitError("does not fit")
    rate = cfg.workload.arrival.rate
    capacity = cfg.cluster.instances * 10.0 * cfg.scheduler.max_num_seqs / 64
    ttft = 0.1 if rate <= capacity else 5.0
    return {
        "ttft_s_p99": ttft,
        "requests_failed": 0,
        "requests_completed": 10_000,
        "output_tokens": 10_000 * 100,
        "e2e_s_mean": 1.0,
        "requests_total": 10_000,
    }


def _search(
    assignments: tuple[tuple[str, Any], ...], settings: PlanSettings, *base: str
) -> dict[str, Any]:
    task = CandidateTask(Scenario.load(None, list(base)), assignments, settings, synthetic_server)
    return search_candidate(task)


@pytest.mark.parametrize("seqs", [16, 64, 256])
def test_max_rate_bisection_lands_within_tolerance_below_capacity(seqs: int) -> None:
    settings = PlanSettings(TTFT, rate_tolerance=0.02)
    row = _search((("scheduler.max_num_seqs", seqs),), settings, "workload.arrival.rate=3")
    capacity = 10.0 * seqs / 64
    assert row["status"] == "ok"
    assert capacity / 1.02 <= row["rate_req_s"] <= capacity
    assert row["simulations"] <= 15


def test_min_instances_for_a_target_rate() -> None:
    settings = PlanSettings(
        TTFT, target_rate=95.0, minimize="cluster.instances", minimize_values=tuple(range(1, 65))
    )
    row = _search((), settings, "scheduler.max_num_seqs=64")
    assert row["status"] == "ok"
    assert row["cluster.instances"] == 10  # 9 instances serve 90 req/s, 10 serve 100
    assert row["num_devices"] == 10 and row["cost_per_hour_usd"] == pytest.approx(30.0)
    assert row["simulations"] <= 8  # bisection, not a scan of 64 values
    hopeless = PlanSettings(TTFT, target_rate=1e6, minimize="cluster.instances",
                            minimize_values=(1, 2, 4))  # fmt: skip
    assert _search((), hopeless)["status"] == "slo_unreachable"


def test_min_instances_with_the_simulator_is_minimal() -> None:
    """Replicas of a small batch-capped server: the answer passes, one replica fewer fails."""
    base = [
        "model=llama-3.2-1b",
        "workload.num_requests=150",
        "workload.output_len={dist: fixed, value: 16}",
        "scheduler.max_num_seqs=2",
    ]
    scenario = Scenario.load(None, base)
    settings = PlanSettings(
        TTFT_FAST, target_rate=300.0, minimize="cluster.instances", minimize_values=(1, 2, 4, 8, 16)
    )
    row = search_candidate(CandidateTask(scenario, (), settings))
    assert row["status"] == "ok" and row["cluster.instances"] > 1
    assert row["ttft_s_p99"] <= 0.2 and row["num_instances"] == row["cluster.instances"]
    half = row["cluster.instances"] // 2  # the next smaller candidate value
    fewer = scenario.config([("cluster.instances", half), ("workload.arrival.rate", 300.0)])
    assert slo_violations(simulate_row(fewer), TTFT_FAST)


def test_infeasible_candidates_are_rows_not_crashes() -> None:
    settings = PlanSettings(TTFT)
    row = _search((("cluster.tensor_parallel", 1),), settings, "model=llama-3.1-70b")
    assert row["status"] == "does_not_fit" and row["rate_req_s"] is None
    assert row["simulations"] == 1


def test_plan_picks_the_known_cheapest_candidate() -> None:
    """Cost per token falls with capacity here, so the largest max_num_seqs is the best
    point, and alone on the Pareto front (equal latency, lowest cost)."""
    slos = TTFT
    axes = parse_axes(["scheduler.max_num_seqs=8..128*2"], "--search")
    settings, rest = plan_settings(slos, axes, None, None)
    scenario = Scenario.load(None, ["workload.arrival.rate=1"])
    tasks = plan_tasks(scenario, rest, settings, synthetic_server)
    result = run_plan(tasks, LocalExecutor(ExecutorOptions(workers=1)))
    assert [r["scheduler.max_num_seqs"] for r in result.rows if r["pareto"]] == [128]
    best = result.rows[0]
    # 3 $/h at 20 req/s × 100 tokens: 3 / (2,000 × 3,600) × 1e6 $ per million, within tolerance
    assert best["usd_per_million_output_tokens"] == pytest.approx(3 / 7.2e6 * 1e6, rel=0.06)
    assert best["usd_per_million_output_tokens"] == min(
        r["usd_per_million_output_tokens"] for r in result.rows
    )


def test_target_rate_needs_one_key_to_minimize() -> None:
    axes = parse_axes(["cluster.instances=1..8", "scheduler.max_num_seqs=1..4"], "--search")
    with pytest.raises(ConfigError, match="--minimize"):
        plan_settings(TTFT, axes, 10.0, None)
    settings, rest = plan_settings(TTFT, axes, 10.0, "cluster.instances")
    assert settings.minimize_values == tuple(range(1, 9))
    assert [a.key for a in rest] == ["scheduler.max_num_seqs"]
    with pytest.raises(ConfigError, match="--minimize needs --target-rate"):
        plan_settings(TTFT, axes, None, "cluster.instances")


# ----------------------------------------------------------------------------- CLI, real simulator


def test_cli_plan_with_the_simulator(tmp_path: Path) -> None:
    """A 70B model that needs 2+ GPUs and a batch-size cap: the real monotone relationships."""
    out = tmp_path / "plan"
    args = [
        "plan",
        *("--set", "model=llama-3.1-70b", "--set", "workload.num_requests=60"),
        *("--set", "workload.output_len={dist: fixed, value: 16}"),
        *("--slo", "ttft_p99=2", "--slo", "tpot_p99=0.2"),
        *("--search", "cluster.tensor_parallel=1,4", "--search", "scheduler.max_num_seqs=1,32"),
        *("--rate-tolerance", "0.2", "--workers", "1", "--out", str(out)),
    ]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "plan.parquet").to_pylist()
    by = {(r["cluster.tensor_parallel"], r["scheduler.max_num_seqs"]): r for r in rows}
    assert by[1, 1]["status"] == by[1, 32]["status"] == "does_not_fit"
    assert by[4, 1]["status"] == by[4, 32]["status"] == "ok"
    assert by[4, 32]["rate_req_s"] > by[4, 1]["rate_req_s"]
    assert by[4, 32]["ttft_s_p99"] <= 2 and by[4, 32]["tpot_s_p99"] <= 0.2
    assert by[4, 32]["cost_per_hour_usd"] == pytest.approx(4 * 3.0)
    assert any(r["pareto"] for r in rows)
    meta = json.loads(pq.read_schema(out / "plan.parquet").metadata[b"llmservingsim"])
    assert meta["keys"] == ["cluster.tensor_parallel", "scheduler.max_num_seqs"]
    assert "does not fit" in result.output and "★" in result.output
    html = (out / "plan.html").read_text()
    assert "Pareto front" in html and "plotly" in html


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--search", "hardware=h100-sxm"], "at least one --slo"),
        (["--slo", "ttft_p99=1", "--max-rate", "--target-rate", "3"], "not both"),
        (["--slo", "ttft_p99=1", "--search", "cluster.tensr_parallel=1,2"], "did you mean"),
        (["--slo", "ttft_p99=1", "--set", "workload.kind=trace"], "workload"),
    ],
)
def test_cli_plan_mistakes_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["plan", *args, "--out", str(tmp_path / "p")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
