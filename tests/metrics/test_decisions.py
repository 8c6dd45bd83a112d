"""outputs.decisions: decisions.parquet logs every route, admission and preemption decision
with its candidates, their scores and the choice (metrics/decisions.py, docs/outputs.md).

Each kind is checked against what the run did: one route row per routed request whose choice
follows the router's rule from the scores; preemption rows as many as summary.json's
preemptions, the victim the policy's; admission rows for each refused request. Off, nothing
is built: no file, no log, no router asked for scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from llmservingsim.cli import app
from llmservingsim.cluster.routers import ROUTERS, LeastOutstandingRouter, Router
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.metrics.decisions import DecisionChunk, DecisionLog
from llmservingsim.outputs.run_outputs import simulate_to_dir
from llmservingsim.outputs.tables import DECISIONS_SCHEMA
from llmservingsim.serving.instance import Instance
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["model=llama-3.2-1b", "seed=5"]


def rows_of(result: Any) -> list[dict[str, Any]]:
    log = result.metrics.decisions
    assert isinstance(log, DecisionLog)
    return log.rows()


def run_rows(*overrides: str, requests: list[RequestSpec] | None = None) -> tuple[Any, list[Any]]:
    cfg = load_config(None, [*SMALL, "outputs.decisions=true", *overrides])
    result = simulate(cfg, requests=requests)
    return result.summary, rows_of(result)


@pytest.mark.parametrize(
    ("router", "wins"),
    [("least_outstanding", min), ("least_kv", max), ("power_of_two_choices", min)],
)
def test_each_routed_request_has_one_route_row_chosen_by_the_routers_rule(
    router: str, wins: Any
) -> None:
    summary, rows = run_rows(
        "cluster.instances=4",
        f"cluster.router={router}",
        "workload.num_requests=300",
        "workload.arrival.rate=80",
    )
    routes = [r for r in rows if r["kind"] == "route"]
    assert sorted(r["request_id"] for r in routes) == list(range(300))
    assert summary["requests_completed"] == 300
    for r in routes:
        assert r["policy"] == router
        assert r["chosen"] in r["candidates"]
        assert len(r["scores"]) == len(r["candidates"])
        chosen_score = r["scores"][r["candidates"].index(r["chosen"])]
        assert chosen_score == wins(r["scores"])
    if router == "power_of_two_choices":
        assert all(len(r["candidates"]) == 2 for r in routes)
    else:
        assert all(r["candidates"] == [0, 1, 2, 3] for r in routes)
    times = [r["time_s"] for r in routes]
    assert times == sorted(times)  # logged as routed, at each request's arrival


def test_least_outstanding_scores_replay_its_choices() -> None:
    """The logged loads plus the tie rotation reproduce every choice."""
    _, rows = run_rows(
        "cluster.instances=3",
        "cluster.router=least_outstanding",
        "workload.num_requests=200",
        "workload.arrival.rate=100",
    )
    start = 0
    for r in (r for r in rows if r["kind"] == "route"):
        scores = r["scores"]
        order = [*range(start, 3), *range(start)]
        best = min(order, key=lambda i: (scores[i], order.index(i)))
        assert r["chosen"] == best
        start = (best + 1) % 3


PD = "cluster.pools=[{role: prefill, count: 2}, {role: decode, count: 3}]"


def test_disaggregated_run_logs_the_prefill_route_and_the_decode_route() -> None:
    summary, rows = run_rows(PD, "cluster.router=least_outstanding", "workload.num_requests=200")
    routes = [r for r in rows if r["kind"] == "route"]
    decode = [r for r in rows if r["kind"] == "decode_route"]
    assert sorted(r["request_id"] for r in routes) == list(range(200))
    assert len(decode) == summary["kv_transfers"] == 200
    for r in routes:
        assert r["candidates"] == [0, 1] and r["instance"] is None
        assert r["scores"][r["candidates"].index(r["chosen"])] == min(r["scores"])
    for r in decode:  # decided by the prefill instance that hands the request off
        assert r["candidates"] == [2, 3, 4] and r["instance"] in (0, 1)
        assert r["scores"][r["candidates"].index(r["chosen"])] == min(r["scores"])


def test_a_user_router_without_scores_gets_rows_with_every_candidate() -> None:
    plugin = str(ROOT / "examples" / "policies" / "my_policies.py")
    _, rows = run_rows(
        f"plugins=[{plugin}]",
        "cluster.instances=3",
        "cluster.router=least_waiting",
        "workload.num_requests=50",
    )
    routes = [r for r in rows if r["kind"] == "route"]
    assert len(routes) == 50
    assert all(r["candidates"] == [0, 1, 2] and r["scores"] is None for r in routes)
    assert all(r["policy"] == "least_waiting" and r["chosen"] in (0, 1, 2) for r in routes)


class ReportingLeastWaiting(Router):
    """docs/extending.md's example of a plugin router that reports its scores."""

    def route(self, spec: RequestSpec) -> Instance:
        keys = [(i.num_waiting, i.num_outstanding) for i in self.instances]
        best = min(range(len(keys)), key=keys.__getitem__)
        if self.explain:
            self.report([float(w) for w, _ in keys])
        return self.instances[best]


ROUTERS.register("test_reporting_least_waiting")(ReportingLeastWaiting)


def test_a_user_router_that_reports_gets_its_scores_logged() -> None:
    _, rows = run_rows(
        "cluster.instances=3",
        "cluster.router=test_reporting_least_waiting",
        "workload.num_requests=50",
        "workload.arrival.rate=200",
    )
    routes = [r for r in rows if r["kind"] == "route"]
    assert len(routes) == 50 and any(max(r["scores"]) > 0 for r in routes)
    for r in routes:
        assert r["candidates"] == [0, 1, 2]
        assert r["scores"][r["chosen"]] == min(r["scores"])


def test_prefix_aware_router_says_which_rule_decided() -> None:
    _, rows = run_rows(
        "cluster.instances=4",
        "cluster.router=prefix_aware",
        "scheduler.enable_prefix_caching=true",
        "workload.prefix={num_system_prompts: 8, system_prompt_len: 1024}",
        "workload.num_requests=200",
        "workload.arrival.rate=40",
    )
    routes = [r for r in rows if r["kind"] == "route"]
    assert len(routes) == 200
    reasons = {r["reason"].split(" of ")[0] for r in routes}
    assert "cached prefix" in reasons and "no cached prefix" in reasons
    for r in routes:
        assert r["chosen"] in r["candidates"]
        assert r["scores"][r["candidates"].index(r["chosen"])] == min(r["scores"])


@pytest.mark.parametrize("policy", ["vllm", "priority"])
@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_preemption_rows_match_the_summary_and_name_the_policys_victim(
    policy: str, preemption: str
) -> None:
    low = 1 if policy == "priority" else 0
    summary, rows = run_rows(
        "scheduler.num_gpu_blocks_override=300",
        f"scheduler.policy={policy}",
        f"scheduler.preemption={preemption}",
        "workload.clients=[{name: a, share: 0.5, priority: 0},"
        f" {{name: b, share: 0.5, priority: {low}}}]",
        "workload.num_requests=400",
        "workload.arrival.rate=200",
    )
    preempted = [r for r in rows if r["kind"] == "preemption"]
    assert summary["preemptions"] > 0
    assert len(preempted) == summary["preemptions"]
    outcomes = {r["outcome"] for r in preempted}
    assert outcomes <= {"swap", "recompute"}
    if preemption == "recompute":
        assert outcomes == {"recompute"}
    else:
        fallbacks = sum(r["outcome"] == "recompute" for r in preempted)
        assert fallbacks == summary["swap_fallback_preemptions"]
    for r in preempted:
        assert r["policy"] == policy and r["instance"] == 0
        assert r["chosen"] in r["candidates"]
        assert r["scores"][r["candidates"].index(r["chosen"])] == max(r["scores"])
        assert r["reason"] in ("kv_cache_full", "max_num_seqs")
        if policy == "vllm":  # the most recently admitted: the last of the running order
            assert r["chosen"] == r["candidates"][-1]
    times = [r["time_s"] for r in preempted]
    assert times == sorted(times)


def test_admission_rows_for_each_refused_request() -> None:
    requests = [RequestSpec(i, 0.001 * i, 200, 100) for i in range(400)]
    requests.append(RequestSpec(400, 0.5, 3000, 2000))  # over max_model_len
    summary, rows = run_rows(
        "max_model_len=4096",
        "scheduler.max_queue=50",
        "scheduler.request_timeout_s=0.3",
        "scheduler.max_num_seqs=8",
        requests=requests,
    )
    admission = [r for r in rows if r["kind"] == "admission"]
    by_outcome: dict[str, list[Any]] = {}
    for r in admission:
        by_outcome.setdefault(r["outcome"], []).append(r)
    rejected, timed_out = by_outcome.get("rejected", []), by_outcome.get("timed_out", [])
    assert len(rejected) == summary["requests_rejected"] > 1
    assert len(timed_out) == summary["requests_timed_out"] > 0
    too_long = [r for r in rejected if r["policy"] == "max_model_len"]
    assert [r["request_id"] for r in too_long] == [400] and too_long[0]["instance"] is None
    assert {r["policy"] for r in rejected} == {"max_model_len", "scheduler.max_queue"}
    assert {r["policy"] for r in timed_out} == {"scheduler.request_timeout_s"}
    for r in admission:
        assert r["candidates"] == [] and r["scores"] is None and r["chosen"] is None
        assert r["reason"]
    # Every request that reached the router has a route row; refused ones too.
    routed = {r["request_id"] for r in rows if r["kind"] == "route"}
    assert routed == set(range(400))


def test_a_request_that_never_fits_is_a_failed_admission_row() -> None:
    requests = [RequestSpec(0, 0.0, 100, 10), RequestSpec(1, 0.1, 2000, 10)]
    summary, rows = run_rows("scheduler.num_gpu_blocks_override=50", requests=requests)
    assert summary["requests_failed"] == 1
    failed = [r for r in rows if r["kind"] == "admission"]
    assert len(failed) == 1
    row = failed[0]
    assert (row["request_id"], row["instance"], row["outcome"]) == (1, 0, "failed")
    assert row["policy"] == "kv_capacity" and "KV blocks" in row["reason"]


class CountingRouter(LeastOutstandingRouter):
    reports = 0

    def report(self, *args: Any, **kwargs: Any) -> None:
        CountingRouter.reports += 1
        super().report(*args, **kwargs)


ROUTERS.register("test_counting_decisions")(CountingRouter)


def test_off_builds_nothing_and_writes_no_file(tmp_path: Path) -> None:
    overrides = [*SMALL, "cluster.instances=2", "cluster.router=test_counting_decisions"]
    overrides += ["workload.num_requests=50"]
    CountingRouter.reports = 0
    cfg = load_config(None, [*overrides, "outputs.report=false", "outputs.trace=false"])
    result, paths = simulate_to_dir(cfg, tmp_path / "off")
    assert result.metrics.decisions is None and CountingRouter.reports == 0
    assert not (tmp_path / "off" / "decisions.parquet").exists()
    assert all(p.name != "decisions.parquet" for p in paths)
    on = load_config(None, [*overrides, "outputs.decisions=true", "outputs.report=false"])
    _, paths = simulate_to_dir(on, tmp_path / "on")
    assert CountingRouter.reports == 50
    table = pq.read_table(tmp_path / "on" / "decisions.parquet")
    assert table.schema.remove_metadata() == DECISIONS_SCHEMA
    assert table.num_rows == 50
    assert json.loads(table.schema.metadata[b"llmservingsim"])["config"]["outputs"]["decisions"]


def test_rows_stream_in_row_groups_as_the_run_goes(tmp_path: Path) -> None:
    """A chunk is handed to the sink (a Parquet row group) as soon as it fills."""
    overrides = ["cluster.instances=3", "workload.num_requests=250", "outputs.decisions=true"]
    cfg = load_config(None, [*SMALL, *overrides])
    seen: list[int] = []

    class Sink:
        def write_decisions(self, chunk: DecisionChunk) -> None:
            seen.append(len(chunk))

    log = DecisionLog([Sink()], chunk_size=64)
    result = simulate(cfg, metrics=MetricsCollector(decisions=log))
    assert seen == [64, 64, 64]  # during the run
    result.metrics.flush()  # the run's end (RunOutputs.finish)
    assert seen == [64, 64, 64, 58] and len(log) == 250
    assert log.chunks == []  # a log with sinks keeps nothing


def test_decisions_with_csv_is_refused_with_one_error_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"outputs\.decisions with outputs\.format: csv"):
        simulate(load_config(None, [*SMALL, "outputs.decisions=true", "outputs.format=csv"]))
    result = CliRunner().invoke(
        app,
        ["run", "--set", "outputs.decisions=true", "--format", "csv", "--out", str(tmp_path)],
    )
    assert result.exit_code == 2
    assert "outputs.decisions with outputs.format: csv is not yet supported" in result.output


def test_a_new_policy_logs_its_decision_in_one_call() -> None:
    """``MetricsCollector.decide`` (docs/extending.md) is a no-op with decisions off."""
    off = MetricsCollector()
    off.decide("scale", 1.0, policy="autoscale", chosen=3, outcome="scale_up")
    assert off.decisions is None
    on = MetricsCollector(decisions=DecisionLog(keep=True))
    on.decide("scale", 1.0, policy="autoscale", chosen=3, outcome="scale_up", reason="queue 9 > 8")
    on.decide("admission", 2.0, request_id=7, policy="admission.token_bucket", outcome="rejected")
    assert on.decisions is not None
    assert on.decisions.rows() == [
        {
            "time_s": 1.0,
            "kind": "scale",
            "request_id": None,
            "instance": None,
            "policy": "autoscale",
            "candidates": [],
            "scores": None,
            "chosen": 3,
            "outcome": "scale_up",
            "reason": "queue 9 > 8",
        },
        {
            "time_s": 2.0,
            "kind": "admission",
            "request_id": 7,
            "instance": None,
            "policy": "admission.token_bucket",
            "candidates": [],
            "scores": None,
            "chosen": None,
            "outcome": "rejected",
            "reason": None,
        },
    ]
    with pytest.raises(ValueError, match="unknown decision kind 'scaling'"):
        on.decide("scaling", 3.0)
    with pytest.raises(ValueError, match="2 scores for 3 candidates"):
        on.decide("route", 3.0, candidates=[0, 1, 2], scores=[1.0, 2.0])


def test_admission_control_and_client_timeouts_are_admission_rows() -> None:
    requests = [RequestSpec(i, 0.002 * i, 300, 200) for i in range(300)]
    summary, rows = run_rows(
        "admission.token_bucket={tokens_per_s: 60000, burst: 3000}",
        "workload.timeout_s=0.8",
        "scheduler.max_num_seqs=16",
        requests=requests,
    )
    admission = [r for r in rows if r["kind"] == "admission"]
    bucket = [r for r in admission if r["policy"] == "admission.token_bucket"]
    gave_up = [r for r in admission if r["policy"] == "workload.timeout_s"]
    assert len(bucket) == summary["admission"]["rejected_token_bucket"] > 0
    assert all(r["outcome"] == "rejected" for r in bucket)
    assert len(gave_up) == summary["requests_timed_out"] > 0
    assert all(r["outcome"] == "timed_out" for r in gave_up)
    # A refused request never reached the router; every other one has its route row.
    routed = {r["request_id"] for r in rows if r["kind"] == "route"}
    assert routed.isdisjoint(r["request_id"] for r in bucket)
    assert len(routed) + len(bucket) == len(requests)


def test_autoscaling_decisions_are_scale_rows() -> None:
    requests = [RequestSpec(i, 0.002 * i, 200, 150) for i in range(2000)]
    summary, rows = run_rows(
        "model=llama-3.2-1b",
        "cluster.instances=1",
        "scheduler.max_num_seqs=8",
        "cluster.autoscale={min_instances: 1, max_instances: 4, metric: queue, target: 2, "
        "interval_s: 0.5, cooldown_s: 0.5, scale_up_s: 0.2}",
        requests=requests,
    )
    decided = [e for e in summary["scale_events"] if e["action"] not in ("ready", "release")]
    scale = [r for r in rows if r["kind"] == "scale"]
    assert decided and len(scale) == len(decided)
    for row, event in zip(scale, decided, strict=True):
        assert row["time_s"] == event["time_s"] and row["chosen"] == event["instance"]
        assert row["outcome"] == event["action"] and row["scores"] == [event["value"]]
        assert row["policy"] == "autoscale.queue"
