"""summary.json per client and per stage, saturation, requests.parquet labels, compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from llmservingsim.cli import app
from llmservingsim.compare import block_bootstrap
from llmservingsim.config import load_config
from llmservingsim.metrics.request_log import FINISHED
from llmservingsim.metrics.workload_summary import NOT_SATURATED, Rows, saturation
from llmservingsim.outputs.run_outputs import simulate_to_dir
from llmservingsim.simulation import load_requests, simulate

SMALL = ["model=llama-3.2-1b", "seed=1"]
CLIENTS = (
    "workload.clients=[{name: chat, share: 0.5, slo: {ttft_s: 0.05}},"
    " {name: batch, share: 0.3, output_len: {dist: fixed, value: 300}},"
    " {name: agent, share: 0.2, prompt_pool: {size: 5}, slo: {ttft_s: 0.5, tpot_s: 0.02}}]"
)
COUNTS = (
    "requests",
    "requests_completed",
    "requests_failed",
    "requests_rejected",
    "requests_timed_out",
    "input_tokens",
    "output_tokens",
)


def summary_of(*overrides: str) -> dict[str, Any]:
    return simulate(load_config(None, [*SMALL, *overrides])).summary


def test_clients_partition_the_run_and_admission_loses_no_request() -> None:
    """Conservation: every request is counted in exactly one client, in every status, under
    overload with a bounded queue and a queueing timeout."""
    s = summary_of(
        CLIENTS,
        "workload.num_requests=600",
        "workload.arrival.rate=400",
        "scheduler.max_num_seqs=8",
        "scheduler.max_queue=40",
        "scheduler.request_timeout_s=2",
    )
    clients = s["clients"]
    assert list(clients) == ["chat", "batch", "agent"]
    total = {key: sum(c[key] for c in clients.values()) for key in COUNTS}
    assert total["requests"] == s["requests_total"] == 600
    assert [c["requests"] for c in clients.values()] == [300, 180, 120]
    for key in COUNTS[1:]:
        assert total[key] == s[key], key
    assert s["requests_rejected"] > 0 and s["requests_timed_out"] > 0
    assert sum(c["request_throughput"] for c in clients.values()) == pytest.approx(
        s["request_throughput"]
    )
    # Each client's goodput is under its own SLO (batch has none, so the top-level one: none).
    assert clients["batch"]["goodput"] is None
    assert clients["chat"]["slo"]["ttft_s"] == 0.05
    assert clients["agent"]["goodput"] <= clients["agent"]["request_throughput"]
    # Overload with a bounded queue: requests were turned away, so the run is saturated.
    assert s["saturated"] is True
    assert "rejected or timed out" in s["saturation_reason"]


def test_client_goodput_matches_its_slo_by_hand() -> None:
    cfg = load_config(None, [*SMALL, CLIENTS, "workload.num_requests=200"])
    result = simulate(cfg)
    log = result.metrics.requests
    requests = load_requests(cfg)
    assert requests.client is not None
    ids = log.column("id")
    chat = requests.client[ids] == 0
    ttft = log.column("first_token_s") - log.column("arrival_s")
    good = int(np.count_nonzero(chat & (ttft <= 0.05)))
    row = result.summary["clients"]["chat"]
    assert row["goodput"] == pytest.approx(good / result.summary["benchmark_duration_s"])
    assert row["slo_attainment"] == pytest.approx(good / row["requests"])
    chat_ttft = np.sort(ttft[chat])
    assert row["ttft_s"]["max"] == pytest.approx(chat_ttft[-1])


def test_stages_report_their_own_numbers_and_saturation() -> None:
    """A light stage then one far above the 1B model's capacity on one GPU."""
    s = summary_of(
        "workload.stages=[{duration_s: 60, rate: 2}, {duration_s: 20, rate: 400}]",
        "workload.input_len={dist: fixed, value: 2000}",
        "workload.output_len={dist: fixed, value: 200}",
        "scheduler.max_num_seqs=32",
    )
    light, heavy = s["stages"]
    assert (light["start_s"], light["end_s"], heavy["end_s"]) == (0, 60, 80)
    assert light["requests"] + heavy["requests"] == s["requests_total"]
    assert abs(light["arrival_rate"] - 2) < 0.6
    assert light["saturated"] is False
    assert heavy["saturated"] is True
    assert heavy["saturation_reason"].startswith("queue growing through the run")
    assert "above the measured service rate" in heavy["saturation_reason"]
    assert s["saturated"] is True and s["saturation_reason"].startswith("stage 1: queue growing")
    assert heavy["ttft_s"]["p50"] > 10 * light["ttft_s"]["p50"]


def test_saturation_verdicts() -> None:
    light = summary_of("workload.num_requests=400", "workload.arrival.rate=2")
    verdict = ("saturated", "saturation_cause", "saturation_reason")
    assert [light[k] for k in verdict] == [False, None, None]
    batch = summary_of("workload.num_requests=50", "workload.arrival.rate=.inf")
    assert (batch["saturated"], batch["saturation_cause"]) == (True, "offline_batch")
    assert "all 50 requests arrive at t = 0" in batch["saturation_reason"]
    short = summary_of("workload.num_requests=10", "workload.arrival.rate=5")
    assert (short["saturated"], short["saturation_cause"]) == (False, "too_short")
    assert short["saturation_reason"].startswith("run too short to reach steady state")


def _rows(arrival: list[float], e2e: list[float]) -> Rows:
    """Finished requests scheduled on arrival (no queue), first token 10 ms later."""
    n = len(arrival)
    start = np.array(arrival)
    return Rows(
        np.arange(n, dtype=np.int64),
        np.full(n, FINISHED, dtype=np.int8),
        start,
        start,
        start + 0.01,
        start + np.array(e2e),
        np.full(n, 100, dtype=np.int32),
        np.full(n, 100, dtype=np.int32),
    )


def test_a_long_drain_is_too_short_although_latencies_are_short() -> None:
    """20 arrivals, one a second, served at once in 0.5 s: steady. The same with the last
    request taking 30 s: the mean E2E (2 s) is short against the 19 s of arrivals, but the
    completed throughput (20 over 49 s) is 41% of the offered 1 req/s: too short."""
    arrival = [float(k) for k in range(20)]
    everything = np.ones(20, dtype=bool)
    steady = saturation(_rows(arrival, [0.5] * 20), everything, 0.0, 19.0)
    assert steady == NOT_SATURATED
    drain = saturation(_rows(arrival, [0.5] * 19 + [30.0]), everything, 0.0, 19.0)
    assert (drain.saturated, drain.cause) == (False, "too_short")
    assert drain.reason is not None and "0.408 req/s is 41% of the 1 req/s offered" in drain.reason


def test_requests_table_carries_client_and_stage(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [*SMALL, CLIENTS, "workload.stages=[{duration_s: 5, rate: 4}, {duration_s: 5, rate: 8}]"],
    )
    requests = load_requests(cfg)
    simulate_to_dir(cfg, tmp_path, requests=requests)
    rows = pq.read_table(tmp_path / "requests.parquet").to_pydict()
    assert requests.client is not None and requests.stage is not None
    for rid, client, stage in zip(rows["id"], rows["client"], rows["stage"], strict=True):
        assert client == requests.client_names[requests.client[rid]]
        assert stage == requests.stage[rid]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {c: summary["clients"][c]["requests"] for c in ("chat", "batch", "agent")} == {
        name: rows["client"].count(name) for name in ("chat", "batch", "agent")
    }
    plain = tmp_path / "plain"
    simulate_to_dir(load_config(None, [*SMALL, "workload.num_requests=5"]), plain)
    table = pq.read_table(plain / "requests.parquet")
    assert table.column("client").null_count == 5 and table.column("stage").null_count == 5


def test_run_table_prints_clients_and_a_warning_line(tmp_path: Path) -> None:
    """An overloaded run prints one warning line; an offline batch (every request at t = 0) is
    saturated by design: summary.json says so, the terminal does not warn."""
    for rate, warned in ((".inf", False), ("3000", True)):
        out = tmp_path / rate
        args = ["run", "--out", str(out), "--no-report", "--no-trace"]
        for item in (*SMALL, CLIENTS, "workload.num_requests=200", f"workload.arrival.rate={rate}"):
            args += ["--set", item]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "clients (latency in ms" in result.output
        warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
        assert len(warnings) == int(warned), result.output
        assert json.loads((out / "summary.json").read_text())["saturated"] is True


# ----------------------------------------------------------------------------- compare


def write(tmp_path: Path, name: str, router: str) -> Path:
    path = tmp_path / name
    path.write_text(
        "model: llama-3.2-1b\n"
        f"cluster: {{instances: 3, router: {router}}}\n"
        "workload:\n"
        "  num_requests: 150\n"
        "  arrival: {rate: 60}\n"
        "  clients: [{name: a, share: 0.5}, {name: b, share: 0.5}]\n"
    )
    return path


def compare(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["compare", *args, "--json"])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_compare_of_a_config_with_itself_is_zero(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "round_robin")
    report = compare(str(a), str(a))
    assert report["same_request_ids"] is True
    assert report["paired"] == 150
    for group in (report, *report["clients"].values()):
        for metric in ("ttft_s", "e2e_s"):
            assert group[metric]["mean_delta"] == 0.0
            assert group[metric]["ci95"] == [0.0, 0.0]


def test_compare_two_routers_pairs_the_same_requests(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "round_robin")
    b = write(tmp_path, "b.yaml", "least_outstanding")
    out = tmp_path / "out"
    report = compare(str(a), str(b), "--out", str(out))
    assert report["same_request_ids"] is True
    assert report["paired"] + report["finished_only_a"] + report["finished_only_b"] <= 150
    assert sum(c["requests"] for c in report["clients"].values()) == 150
    deltas = pq.read_table(out / "deltas.parquet").to_pydict()
    assert deltas["id"] == list(range(150))
    mean = np.nanmean(np.asarray(deltas["e2e_delta_s"], dtype=float))
    assert mean == pytest.approx(report["e2e_s"]["mean_delta"])
    low, high = report["e2e_s"]["ci95"]
    assert low <= mean <= high
    assert json.loads((out / "compare.json").read_text())["paired"] == report["paired"]


def test_compare_with_decisions_says_where_the_routing_diverged(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "round_robin")
    b = write(tmp_path, "b.yaml", "least_outstanding")
    same = compare(str(a), str(a), "--set", "outputs.decisions=true")["routing"]
    assert same == {"routed_on_both": 150, "routed_differently": 0, "first": None}
    routing = compare(str(a), str(b), "--set", "outputs.decisions=true")["routing"]
    assert routing["routed_on_both"] == 150 and 0 < routing["routed_differently"] <= 150
    first = routing["first"]
    assert first["a"]["policy"] == "round_robin" and first["b"]["policy"] == "least_outstanding"
    assert first["a"]["chosen"] != first["b"]["chosen"]
    assert first["b"]["chosen"] in first["b"]["candidates"]
    assert "routing" not in compare(str(a), str(b))  # decisions off: nothing said
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--set", "outputs.decisions=true"])
    assert result.exit_code == 0, result.output
    assert f"first: request {first['request_id']} at" in result.output


def test_compare_says_when_b_brings_another_workload(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "round_robin")
    b = tmp_path / "b.yaml"
    b.write_text(a.read_text().replace("num_requests: 150", "num_requests: 10"))
    result = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "warning: B's workload differ" in result.output
    assert "150 requests finished on both sides" in result.output.replace("\n", " ")


def test_block_bootstrap_interval_covers_the_mean() -> None:
    rng = np.random.default_rng(5)
    delta = rng.normal(0.3, 1.0, 5000)
    low, high, block = block_bootstrap(delta)
    assert block == 18  # ceil(5000 ** (1/3))
    assert low < delta.mean() < high
    # About 2 × 1.96 standard errors wide for independent values.
    assert high - low == pytest.approx(2 * 1.96 / np.sqrt(5000), rel=0.25)
    assert block_bootstrap(np.zeros(7))[:2] == (0.0, 0.0)


def test_plan_refuses_rates_it_cannot_vary(tmp_path: Path) -> None:
    args = ["plan", "--slo", "ttft_p99=0.5", "--max-rate", "--search", "cluster.instances=1,2"]
    for override in (
        "workload.stages=[{duration_s: 5, rate: 2}]",
        "workload.clients=[{name: a, rate: 2}, {name: b, rate: 3}]",
    ):
        result = CliRunner().invoke(app, [*args, "--set", override, "--out", str(tmp_path)])
        assert result.exit_code == 2, result.output
        assert "workload.stages and client rates are not yet supported" in result.output
