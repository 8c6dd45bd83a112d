"""Attention data parallelism + expert parallelism (cluster.data_parallel, issue 19 item 4).

One instance = D attention ranks of TP devices, each with its own scheduler, KV cache and
batch; the experts are split over all D × TP devices; the ranks step in lockstep, a step lasting
as long as the slowest rank's own part plus the routed experts on the union of their tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fuzz_harness import assert_clean_outcome, quick_run_args, run_cli
from llmservingsim.build import build_cluster
from llmservingsim.catalog import load_device, load_model
from llmservingsim.cli import describe_pools
from llmservingsim.config import SimConfig
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.network import collectives
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import BatchShape, IterationTimer
from llmservingsim.scenario import resolve
from llmservingsim.serving.memory import moe_params_per_device, weight_bytes_per_device
from llmservingsim.simulation import simulate
from llmservingsim.sweep.plan import devices_and_cost
from llmservingsim.workload.request_spec import RequestSpec

MODEL = "qwen3-30b-a3b"  # 128 experts, top-8, no shared experts, every layer MoE


def _timer(model: str = MODEL, *, tp: int = 1, dp: int = 2) -> IterationTimer:
    device = load_device("h100-sxm")
    return IterationTimer(
        load_model(model),
        device,
        RooflineBackend(device, "bf16"),
        Topology.build(device),
        tensor_parallel=tp,
        dtype="bf16",
        kv_dtype="bf16",
        expert_parallel=dp * tp,
        data_parallel=dp,
    )


def _cfg(**cluster: Any) -> SimConfig:
    return SimConfig.model_validate(
        {"model": MODEL, "cluster": cluster, "workload": {"num_requests": 8}}
    )


DECODE = BatchShape([], 64, 64 * 1000, 64)
PREFILL = BatchShape([(2048, 0)], 0, 0, 1)


def _experts_s(timer: IterationTimer, tokens: int) -> float:
    return timer._moe_experts_cost(tokens)[0]


def test_a_step_is_the_slowest_rank_plus_the_experts_on_every_ranks_tokens() -> None:
    timer = _timer()
    n_moe = timer.num_moe_layers
    slow, fast = PREFILL, DECODE
    alone = timer.step_ranks([slow]).seconds
    both = timer.step_ranks([slow, fast]).seconds
    # The prefill rank sets the pace; the decode rank's tokens only add to the experts' work.
    rank_part = alone - n_moe * _experts_s(timer, slow.num_tokens)
    assert both == pytest.approx(rank_part + n_moe * _experts_s(timer, 2048 + 64), rel=1e-12)
    assert both > alone
    # Lockstep: the order of the ranks and an idle rank change nothing.
    assert timer.step_ranks([fast, slow]).seconds == both
    assert timer.step_ranks([slow, BatchShape(), fast]).seconds == both
    assert timer.step_ranks([BatchShape(), BatchShape()]).seconds == 0.0


def test_two_ranks_of_one_device_serve_twice_the_decodes_of_one_in_less_than_twice_the_time() -> (
    None
):
    dp2 = _timer(dp=2)
    one = dp2.step_ranks([DECODE]).seconds
    two = dp2.step_ranks([DECODE, DECODE]).seconds
    # Each rank attends its own 64 sequences in parallel: only the experts see 128 tokens.
    assert one < two < 1.1 * one
    # The routed experts' all-to-all spans both devices and carries the union's tokens.
    moe = dp2.graph.moe
    assert moe is not None and moe.ep == 2 and moe.expert_tp == 1
    a2a = collectives.all_to_all(dp2.topology, moe.dispatch_bytes(128), 0, 2)
    experts_ops = sum(dp2.backend.time(op) for op in moe.expert_ops(128))
    assert _experts_s(dp2, 128) == pytest.approx(experts_ops + 2 * a2a, rel=1e-12)


def test_one_rank_prices_a_moe_layer_as_tensor_parallel_expert_parallel_does() -> None:
    """DP = 1 is the EP = TP layout: the rank part and the experts sum to the MoE layer."""
    timer = _timer(tp=2, dp=1)
    layer = timer._moe_layer_cost(512)
    rank, experts = timer._moe_rank_cost(512), timer._moe_experts_cost(512)
    for got, parts in zip(layer, zip(rank, experts, strict=True), strict=True):
        assert got == pytest.approx(sum(parts), rel=1e-12)
    step = timer.step(DECODE).seconds
    assert timer.step_ranks([DECODE]).seconds == pytest.approx(step, rel=1e-12)


def test_each_rank_has_its_own_kv_cache_and_experts_are_split_over_every_device() -> None:
    cfg = _cfg(data_parallel=2, expert_parallel=2)
    scenario = resolve(cfg)
    plan = scenario.pools[0].memory
    cluster = build_cluster(scenario, MetricsCollector())
    (instance,) = cluster.instances
    assert instance.num_devices == 2 and instance.dp == 2
    assert [ve.scheduler.blocks.num_blocks for ve in instance.virtual_engines] == [
        plan.num_blocks
    ] * 2
    assert instance.num_blocks == 2 * plan.num_blocks
    assert not instance.fast_forward  # runs lay out one engine's steps
    spec = load_model(MODEL)
    full = weight_bytes_per_device(spec, "bf16", 1)
    dp2 = weight_bytes_per_device(spec, "bf16", 1, ep=2, dp=2)
    half_experts = spec.num_moe_layers * spec.num_experts // 2 * spec.expert_params() * 2.0
    assert full - dp2 == pytest.approx(half_experts, rel=1e-9)
    # Attention and the vocabulary are per rank over TP; experts over DP × TP devices.
    tp2 = weight_bytes_per_device(spec, "bf16", 2, ep=2)
    assert moe_params_per_device(spec, 2, 4, 2) * 2 == moe_params_per_device(spec, 2, 2) + (
        spec.num_experts * spec.hidden_size
    )
    assert dp2 > tp2  # the same experts per device, twice the attention weights
    assert plan.weights_gib * 2**30 == pytest.approx(dp2)


def test_identical_requests_on_two_ranks_step_together() -> None:
    """Two requests at once go one to each rank and run in the same steps: as many steps as
    one request needs, equal times; a longer prompt on one rank slows the other's first step."""
    cfg = _cfg(data_parallel=2, expert_parallel=2)
    same = [RequestSpec(0, 0.0, 300, 20), RequestSpec(1, 0.0, 300, 20)]
    result = simulate(cfg, same, check_invariants=True)
    log = result.metrics.requests
    assert result.summary["iterations"] == 20
    assert np.unique(log.column("finish_s")).size == 1
    short_alone = simulate(cfg, same[:1]).metrics.requests.column("first_token_s")[0]
    mixed = [RequestSpec(0, 0.0, 300, 20), RequestSpec(1, 0.0, 6000, 20)]
    log = simulate(cfg, mixed, check_invariants=True).metrics.requests
    first_tokens = log.column("first_token_s")
    assert first_tokens[0] == first_tokens[1] > short_alone


def test_data_parallel_serves_a_saturating_load_with_the_invariants_on() -> None:
    requests = [RequestSpec(i, 0.0, 400, 200 + i % 50) for i in range(600)]
    one = simulate(_cfg(), requests).summary
    # Small KV caches: the ranks preempt and recompute, checked step by step.
    tight = _cfg(data_parallel=2, expert_parallel=2)
    tight.scheduler.num_gpu_blocks_override = 800
    checked = simulate(tight, requests, check_invariants=True).summary
    assert checked["requests_completed"] == 600 and checked["preemptions"] > 0
    dp2 = simulate(_cfg(data_parallel=2, expert_parallel=2), requests).summary
    assert dp2["requests_completed"] == 600
    assert dp2["num_devices"] == 2 and dp2["pools"][0]["data_parallel"] == 2
    # Twice the devices, each rank with its own batch: well over the single device's rate
    # (its KV cache is smaller too: it holds every expert).
    assert dp2["output_tokens_per_s"] > 1.5 * one["output_tokens_per_s"]


# ----------------------------------------------------------------------------- bad input


def _run(tmp_path: Path, *sets: str) -> Any:
    args = ["run", "--set", "workload.num_requests=4"]
    for item in sets:
        args += ["--set", item]
    return run_cli([*args, *quick_run_args(tmp_path / "out")])


def _refused(result: Any, *names: str, code: int = 2) -> str:
    assert_clean_outcome(result)
    assert result.exit_code == code, result.output
    line: str = result.output.strip()
    assert "\n" not in line
    for name in names:
        assert name in line, f"{name!r} not in {line!r}"
    return line


def test_data_parallel_with_a_dense_model_points_at_instances(tmp_path: Path) -> None:
    result = _run(tmp_path, "model=llama-3.2-1b", "cluster.data_parallel=2")
    _refused(result, "cluster.data_parallel=2", "dense", "cluster.instances=2")


@pytest.mark.parametrize("ep", [1, 2, 8])
def test_expert_parallel_must_span_every_rank(tmp_path: Path, ep: int) -> None:
    result = _run(
        tmp_path,
        f"model={MODEL}",
        "cluster.data_parallel=2",
        "cluster.tensor_parallel=2",
        f"cluster.expert_parallel={ep}",
    )
    _refused(result, f"cluster.expert_parallel={ep}", "data_parallel × tensor_parallel = 4")


def test_experts_must_divide_over_the_ranks(tmp_path: Path) -> None:
    result = _run(
        tmp_path, f"model={MODEL}", "cluster.data_parallel=3", "cluster.expert_parallel=3"
    )
    _refused(result, "expert_parallel=3", "128 experts")


def test_data_parallel_with_pipeline_stages_is_not_yet_supported(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        f"model={MODEL}",
        "cluster.data_parallel=2",
        "cluster.expert_parallel=2",
        "cluster.pipeline_parallel=2",
    )
    _refused(result, "data_parallel > 1 with pipeline_parallel > 1", "not yet supported")


def test_a_model_too_big_for_the_ranks_says_dp_by_tp(tmp_path: Path) -> None:
    result = _run(
        tmp_path, "model=deepseek-v3", "cluster.data_parallel=2", "cluster.expert_parallel=2"
    )
    _refused(result, "2×1 (DP×TP)", code=3)


def test_pools_take_data_parallel_and_refuse_the_flat_key_beside_them(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        f"model={MODEL}",
        "cluster.data_parallel=2",
        "cluster.pools=[{count: 1}]",
    )
    _refused(result, "data_parallel")
    ok = _run(
        tmp_path,
        f"model={MODEL}",
        "cluster.pools=[{count: 1, data_parallel: 2, expert_parallel: 2}]",
    )
    assert ok.exit_code == 0, ok.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["pools"][0]["data_parallel"] == 2
    assert describe_pools(summary["pools"]) == "1 × DP2 h100-sxm"


def test_a_request_s_kv_moves_between_the_devices_of_one_rank() -> None:
    """P/D into a DP decode pool: a request's KV lives on one rank's TP devices, so as many
    streams carry it as into a TP1 instance, not one per device of the instance."""

    def cfg(decode: dict[str, Any]) -> SimConfig:
        pools = [{"role": "prefill", "count": 1}, {"role": "decode", "count": 1, **decode}]
        return SimConfig.model_validate({"model": MODEL, "cluster": {"pools": pools}})

    dp2 = cfg({"data_parallel": 2, "expert_parallel": 2})
    single = build_cluster(resolve(cfg({})), MetricsCollector())
    cluster = build_cluster(resolve(dp2), MetricsCollector())
    prefill, decode = cluster.instances
    assert (decode.num_devices, decode.kv_devices) == (2, 1)
    assert cluster.kv_transfer_time(prefill, decode, 1000) == single.kv_transfer_time(
        *single.instances, 1000
    )
    assert devices_and_cost(dp2)[0] == 3
