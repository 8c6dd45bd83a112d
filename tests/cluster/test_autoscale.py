"""Autoscaling (cluster.autoscale, cluster/autoscale.py): decisions under a step-up load,
readiness, draining without loss, instance-seconds and cost, and equality with a fixed cluster
when min = max."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fuzz_harness import assert_clean_outcome, quick_run_args, run_cli
from llmservingsim.build import build_autoscaler, build_cluster
from llmservingsim.catalog import load_device
from llmservingsim.config import load_config
from llmservingsim.engine import EngineHooks
from llmservingsim.hardware.device import GIB
from llmservingsim.invariants import InvariantChecker, InvariantError
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.scenario import resolve
from llmservingsim.serving.instance import Instance
from llmservingsim.simulation import SimulationResult, simulate

# One a100-80gb serving Llama-3.1-8B saturates near 18 req/s with these lengths: the second
# stage needs more than one instance.
STEP_UP = [
    "model=llama-3.1-8b",
    "hardware=a100-80gb",
    "seed=1",
    "workload.stages=[{duration_s: 60, rate: 2}, {duration_s: 90, rate: 30}]",
    "workload.input_len={dist: fixed, value: 1024}",
    "workload.output_len={dist: fixed, value: 256}",
    "cluster.router=least_outstanding",
]
NEW_KEYS = {"scale_events", "instance_seconds", "initial_instances", "scale_up_s"}


def autoscale(**keys: object) -> str:
    body = ", ".join(f"{k}: {v}" for k, v in keys.items())
    return f"cluster.autoscale={{{body}}}"


def run(*sets: str, **kwargs: Any) -> SimulationResult:
    return simulate(load_config(None, [*STEP_UP, *sets]), check_invariants=True, **kwargs)


def decisions(summary: dict[str, Any]) -> list[dict[str, Any]]:
    actions = {"start", "drain", "resume", "cancel"}
    return [e for e in summary["scale_events"] if e["action"] in actions]


def provisioned_integral(summary: dict[str, Any]) -> float:
    """∫ provisioned instances dt from the events (a step function from t = 0)."""
    count, last, total = summary["initial_instances"], 0.0, 0.0
    for event in summary["scale_events"]:
        total += count * (event["time_s"] - last)
        count, last = event["provisioned"], event["time_s"]
    return total + count * (summary["simulated_time_s"] - last)


@pytest.mark.parametrize(
    ("metric", "target"), [("queue", 4), ("kv", 0.3), ("ttft", 2.0)], ids=["queue", "kv", "ttft"]
)
def test_step_up_load_scales_up_after_the_metric_passes_target(metric: str, target: float) -> None:
    cooldown, interval, low, high = 30.0, 5.0, 1, 3
    result = run(
        autoscale(
            min_instances=low,
            max_instances=high,
            metric=metric,
            target=target,
            cooldown_s=cooldown,
            interval_s=interval,
        )
    )
    s = result.summary
    made = decisions(s)
    starts = [e for e in made if e["action"] == "start"]
    assert starts, s["scale_events"]
    # Nothing is started while the low stage runs (2 req/s is far below one instance's).
    assert starts[0]["time_s"] > 60.0
    times = sorted({e["time_s"] for e in made})
    for event in made:
        assert event["time_s"] % interval == 0  # decisions only at evaluations
        if event["action"] in ("start", "resume"):
            assert event["value"] > target
        else:
            assert event["value"] < target
    # Never two decisions within the cooldown; never above max, never below min.
    assert all(b - a >= cooldown for a, b in itertools.pairwise(times))
    for event in s["scale_events"]:
        assert low <= event["provisioned"] <= high
        assert 1 <= event["routable"] <= event["provisioned"]
    # Requests conserved: every request finished (drained instances lose none).
    assert s["requests_completed"] == s["requests_total"]


@pytest.mark.parametrize(
    "router", ["round_robin", "random", "least_kv", "power_of_two_choices", "prefix_aware"]
)
def test_every_router_routes_only_to_instances_taking_requests(router: str) -> None:
    """Routers are handed the instances taking requests at each change (Router.set_instances);
    the invariant checker (A1) fails the run if a request reaches any other."""
    s = run(
        f"cluster.router={router}",
        "workload.prefix={system_prompt_len: 256}",
        # low, high, low again: instances start, then drain
        "workload.stages=[{duration_s: 60, rate: 2}, {duration_s: 90, rate: 30}, "
        "{duration_s: 150, rate: 2}]",
        autoscale(max_instances=3, metric="queue", target=4, cooldown_s=20, scale_up_s=5),
    ).summary
    actions = {e["action"] for e in s["scale_events"]}
    assert {"start", "ready", "drain"} <= actions, actions
    assert s["requests_completed"] == s["requests_total"]
    served = {row["index"] for row in s["instances"] if row["requests_completed"]}
    assert len(served) > 1


def test_scaled_up_instances_take_no_request_before_they_are_ready() -> None:
    """scale_up_s = 20 s: a started instance sees its first request at or after its ready
    event, and never while draining or off (the invariant checker's A1 checks it too)."""
    adds: list[tuple[int, float]] = []

    class Adds(EngineHooks):
        def before_add(self, instance: Instance, now: float) -> None:
            adds.append((instance.index, now))

    result = run(
        autoscale(max_instances=3, metric="queue", target=4, cooldown_s=30, scale_up_s=20),
        hooks=[Adds()],
    )
    s = result.summary
    assert s["scale_up_s"] == 20
    routable: dict[int, list[list[float]]] = {0: [[0.0, math.inf]]}
    for event in s["scale_events"]:
        spans = routable.setdefault(event["instance"], [])
        if event["action"] == "start":
            start = event["time_s"]
        if event["action"] == "ready":
            assert event["time_s"] == pytest.approx(start + 20)
        if event["action"] in ("ready", "resume"):
            spans.append([event["time_s"], math.inf])
        elif event["action"] == "drain":
            spans[-1][1] = event["time_s"]
    assert len(routable) > 1
    for index, now in adds:
        assert any(a <= now <= b for a, b in routable[index]), (index, now, routable[index])
    assert {index for index, _ in adds} == set(routable)


def test_the_invariant_checker_refuses_a_request_for_an_instance_taking_none() -> None:
    """A1 can fail: the checker raises when a request reaches an instance not taking any."""
    cfg = load_config(None, [*STEP_UP, autoscale(max_instances=2, metric="queue", target=4)])
    scenario = resolve(cfg)
    cluster = build_cluster(scenario, MetricsCollector())
    assert build_autoscaler(scenario, cluster) is not None
    checker = InvariantChecker(cluster.instances)
    on, off = cluster.instances
    assert on.routable and not off.routable  # one instance at t = 0, the other off
    checker.before_add(on, 0.0)
    with pytest.raises(InvariantError, match="A1"):
        checker.before_add(off, 0.0)


def test_instance_seconds_is_the_integral_of_provisioned_instances_and_sets_the_cost() -> None:
    result = run(autoscale(max_instances=4, metric="queue", target=4, cooldown_s=20))
    s = result.summary
    assert any(e["action"] == "release" for e in s["scale_events"])
    assert s["instance_seconds"] == pytest.approx(provisioned_integral(s), rel=1e-12)
    assert s["instance_seconds"] < 4 * s["simulated_time_s"]
    price = s["cost_usd"] * 3600 / s["instance_seconds"]
    fixed = run("cluster.instances=1").summary
    # One a100-80gb per instance: the same price per instance-hour as a fixed cluster's.
    assert price == pytest.approx(fixed["cost_usd"] * 3600 / fixed["simulated_time_s"])
    # Idle power counts only while provisioned: busy energy plus idle power over the
    # provisioned device-seconds the steps left.
    totals = [result.metrics.totals(row["index"]) for row in s["instances"]]
    busy_j = sum(t.energy_busy_j for t in totals)
    busy_device_s = sum(t.busy_device_s for t in totals)
    idle_w = load_device("a100-80gb").power.idle_w
    expected = busy_j + idle_w * (s["instance_seconds"] - busy_device_s)
    assert s["energy_j"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("metric", ["queue", "kv", "ttft"])
def test_min_equal_max_is_the_fixed_cluster(metric: str) -> None:
    """min = max = N: the same run as N instances without autoscale, apart from the new keys.
    The kv metric's evaluations cut fast-forward runs: the same steps, but energy summed in
    other chunks, so equal to the last bits of a float (rel 1e-12)."""
    fixed = run("cluster.instances=2").summary
    scaled = run(autoscale(min_instances=2, max_instances=2, metric=metric, target=0.1)).summary
    assert not scaled["scale_events"]
    assert scaled["instance_seconds"] == pytest.approx(2 * scaled["simulated_time_s"])
    drop = {"sim_wall_s", "config"} | NEW_KEYS
    same = {k: v for k, v in scaled.items() if k not in drop}
    expected = {k: v for k, v in fixed.items() if k not in drop}
    if metric == "kv":
        assert _close(same, expected)
    else:
        assert same == expected


def _close(a: Any, b: Any) -> bool:
    """Equal, floats to rel 1e-12, through dicts and lists."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12, abs=1e-300)
    return bool(a == b)


def test_fast_forward_does_not_change_an_autoscaled_run() -> None:
    sets = [autoscale(max_instances=3, metric="kv", target=0.3, cooldown_s=30)]
    on = run(*sets, "simulator.fast_forward=true").summary
    off = run(*sets, "simulator.fast_forward=false").summary
    assert on["scale_events"] == off["scale_events"]
    for key in ("simulated_time_s", "instance_seconds", "cost_usd", "ttft_s", "e2e_s"):
        assert on[key] == off[key], key


def test_default_scale_up_is_loading_the_weights_over_the_host_link() -> None:
    result = run(autoscale(max_instances=2, metric="queue", target=4))
    cfg = load_config(None, STEP_UP)
    host = load_device(cfg.hardware).links.host
    weights = result.memory.weights_gib * GIB
    expected = host.latency_us * 1e-6 + weights / (host.bandwidth_gbps * 1e9 * host.efficiency)
    assert result.summary["scale_up_s"] == pytest.approx(expected)


def test_report_plots_instances_over_time(tmp_path: Path) -> None:
    sets = [*STEP_UP, autoscale(max_instances=3, metric="queue", target=4, cooldown_s=30)]
    args = ["run"] + [a for item in sets for a in ("--set", item)]
    result = run_cli([*args, "--out", str(tmp_path), "--quiet", "--no-trace"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    assert "Instances over time (autoscaling)" in page


def test_a_drained_instance_is_released_when_its_last_request_has_left() -> None:
    """Release comes at the finish of the instance's last request (or at the drain, when it had
    none); none of its requests finishes between its release and its next start."""
    result = run(autoscale(max_instances=4, metric="queue", target=4, cooldown_s=20))
    s, log = result.summary, result.metrics.requests
    where, finish = log.column("instance"), log.column("finish_s")
    releases = [e for e in s["scale_events"] if e["action"] == "release"]
    assert releases
    for event in releases:
        index, at = event["instance"], event["time_s"]
        mine = finish[where == index]
        restarts = [
            e["time_s"]
            for e in s["scale_events"]
            if e["instance"] == index and e["action"] == "start" and e["time_s"] > at
        ]
        restart = restarts[0] if restarts else math.inf
        assert not np.any((mine > at) & (mine < restart))
        drains = [
            e["time_s"]
            for e in s["scale_events"]
            if e["instance"] == index and e["action"] == "drain" and e["time_s"] <= at
        ]
        drained_at = drains[-1]
        finished_while_draining = mine[(mine >= drained_at) & (mine <= at)]
        assert at == drained_at or at == pytest.approx(finished_while_draining.max())


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("sets", "names"),
    [
        (
            [autoscale(min_instances=3, max_instances=2, metric="queue", target=1)],
            ["min_instances"],
        ),
        ([autoscale(max_instances=2, metric="queue", target=0)], ["cluster.autoscale.target"]),
        ([autoscale(max_instances=2, metric="queue", target=-1)], ["cluster.autoscale.target"]),
        ([autoscale(max_instances=2, metric="latency", target=1)], ["metric", "latency"]),
        ([autoscale(max_instances=2, metric="kv", target=1.5)], ["target=1.5", "kv"]),
        ([autoscale(max_instances=2, metric="kv")], ["cluster.autoscale.target"]),
        (
            [autoscale(max_instances=2, metric="kv", target=0.5), "cluster.instances=3"],
            ["instances=3", "max_instances=2"],
        ),
        (
            [
                autoscale(max_instances=2, metric="kv", target=0.5),
                "cluster.pools=[{role: prefill}, {role: decode}]",
            ],
            ["autoscale", "not yet supported"],
        ),
        (
            [
                autoscale(max_instances=2, metric="kv", target=0.5),
                "cluster.pools=[{role: mixed, count: 3}]",
            ],
            ["pools[0].count=3"],
        ),
        ([autoscale(max_instances=2, metric="kv", target=0.5, interval_s=0)], ["interval_s"]),
    ],
)
def test_bad_autoscale_is_one_error_line(tmp_path: Path, sets: list[str], names: list[str]) -> None:
    args = ["run", "--set", "model=llama-3.2-1b", "--set", "workload.num_requests=4"]
    for item in sets:
        args += ["--set", item]
    result = run_cli([*args, *quick_run_args(tmp_path / "out")])
    assert_clean_outcome(result)
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith("error:") and "\n" not in line, line
    for name in names:
        assert name in line, f"{name!r} not in {line!r}"
