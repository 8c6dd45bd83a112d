"""Mixture-of-experts: touched experts, load imbalance, expert parallelism, memory, errors."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.model.moe import busiest_rank_load, expected_experts_touched
from llmservingsim.model.ops import OpGraph
from llmservingsim.network import collectives
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import BatchShape, IterationTimer
from llmservingsim.serving.memory import moe_params_per_device, weight_bytes_per_device
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec

EXPERT_OPS = ("moe_gate_up_proj", "moe_down_proj")


def _timer(model: str, *, tp: int = 1, ep: int = 1, imbalance: float = 1.0, pp: int = 1,
           dtype: str = "bf16") -> IterationTimer:  # fmt: skip
    device = load_device("h100-sxm")
    return IterationTimer(
        load_model(model),
        device,
        RooflineBackend(device, dtype),
        Topology.build(device),
        tensor_parallel=tp,
        pipeline_parallel=pp,
        dtype=dtype,
        kv_dtype=dtype,
        expert_parallel=ep,
        moe_imbalance=imbalance,
    )


def _expert_weight_bytes_read(graph: OpGraph, num_tokens: int) -> float:
    """Bytes of expert weights the step's expert GEMMs stream (their activations removed)."""
    total = 0.0
    for op in graph.moe_layer_ops(num_tokens):
        if op.name in EXPERT_OPS:
            n, k = op.dim("n"), op.dim("k")
            rows = op.flops / (2.0 * n * k)
            total += op.bytes - rows * (n + k) * graph.act_bytes
    return total


@pytest.mark.parametrize(("tokens", "fraction"), [(1, 2 / 8), (256, 1.0)])
def test_mixtral_decode_reads_the_experts_its_tokens_pick(tokens: int, fraction: float) -> None:
    spec = load_model("mixtral-8x7b")
    graph = OpGraph(spec, 1, "bf16", "bf16")
    all_experts = spec.num_experts * spec.expert_params() * 2.0
    read = _expert_weight_bytes_read(graph, tokens)
    assert read / all_experts == pytest.approx(fraction, rel=0.01)


def test_mixtral_batch1_decode_streams_active_not_total_weights() -> None:
    """TPOT at batch 1 ≈ the ~13B active parameters streamed, far below all 47B."""
    spec = load_model("mixtral-8x7b")
    device = load_device("h100-sxm")
    step = _timer("mixtral-8x7b").step(BatchShape(num_decode=1, decode_context=512, num_sampled=1))
    bandwidth = device.memory_bandwidth * device.efficiency.memory
    active = spec.active_params() * 2.0 / bandwidth
    assert active < step.seconds < 1.35 * active
    assert step.seconds < 0.5 * spec.num_params() * 2.0 / bandwidth


def test_expected_experts_touched_formula() -> None:
    assert expected_experts_touched(8, 2, 1) == pytest.approx(2.0)
    assert expected_experts_touched(8, 2, 2) == pytest.approx(8 * (1 - 0.75**2))
    assert expected_experts_touched(256, 8, 0) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    experts=st.sampled_from([8, 64, 128, 256]),
    top_k=st.integers(1, 8),
    tokens=st.integers(1, 4096),
)
def test_touched_experts_are_bounded_and_grow_with_tokens(
    experts: int, top_k: int, tokens: int
) -> None:
    touched = expected_experts_touched(experts, top_k, tokens)
    assert top_k - 1e-9 <= touched <= min(experts, tokens * top_k) + 1e-9
    assert expected_experts_touched(experts, top_k, tokens + 1) >= touched


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.integers(1, 2048),
    ranks=st.sampled_from([2, 4, 8]),
    imbalance=st.floats(1.0, 8.0),
)
def test_busiest_rank_carries_at_least_its_share(tokens: int, ranks: int, imbalance: float) -> None:
    experts, top_k = 64, 4
    load = busiest_rank_load(experts, top_k, tokens, ranks, imbalance)
    fair = tokens * top_k / ranks
    assert load.rows >= fair * (1 - 1e-9)
    assert load.rows <= tokens * min(top_k, experts // ranks) + 1e-9
    assert load.load_factor == pytest.approx(load.rows / fair)
    uniform = busiest_rank_load(experts, top_k, tokens, ranks, 1.0)
    assert load.rows >= uniform.rows - 1e-9


def test_imbalance_matters_only_across_expert_parallel_ranks() -> None:
    # One device computes every (token, expert) row whatever the skew.
    assert busiest_rank_load(8, 2, 512, 1, 3.0).rows == 1024
    assert busiest_rank_load(8, 2, 512, 2, 1.0).rows == pytest.approx(512)
    assert busiest_rank_load(8, 2, 512, 2, 1.5).rows == pytest.approx(128 * 3 + 128 * 1.5)
    decode = BatchShape(num_decode=256, decode_context=256 * 1024, num_sampled=256)
    tp_only = [_timer("mixtral-8x7b", tp=2, imbalance=x).step(decode).seconds for x in (1, 2)]
    assert tp_only[0] == tp_only[1]
    ep = [_timer("mixtral-8x7b", tp=2, ep=2, imbalance=x).step(decode).seconds for x in (1, 2)]
    assert ep[1] > ep[0]


def test_expert_parallel_charges_dispatch_and_combine_all_to_all() -> None:
    timer = _timer("mixtral-8x7b", tp=2, ep=2)
    tokens = 512
    seconds, _, _ = timer._moe_layer_cost(tokens)
    ops_s = sum(timer.backend.time(op) for op in timer.graph.moe_layer_ops(tokens))
    moe = timer.graph.moe
    assert moe is not None
    spec = load_model("mixtral-8x7b")
    dispatch = moe.dispatch_bytes(tokens)
    # Each rank sends its half of the tokens' hidden states once per chosen expert.
    assert dispatch == pytest.approx(tokens / 2 * spec.experts_per_token * spec.hidden_size * 2)
    topo, hidden = timer.topology, tokens * spec.hidden_size * 2.0
    a2a = collectives.all_to_all(topo, dispatch, 0, 2)
    assert a2a > 0
    expected = (
        collectives.all_reduce(topo, hidden, 0, 2)
        + 2 * a2a
        + collectives.all_gather(topo, hidden, 0, 2)
    )
    assert seconds - ops_s == pytest.approx(expected, rel=1e-12)


def test_expert_weights_are_split_not_replicated() -> None:
    spec = load_model("mixtral-8x7b")
    full = spec.num_params() * 2.0
    tp2 = weight_bytes_per_device(spec, "bf16", 2)
    assert tp2 == pytest.approx(full / 2, rel=0.01)
    assert weight_bytes_per_device(spec, "bf16", 2, ep=2) == pytest.approx(tp2, rel=1e-3)
    # EP=TP: each rank holds E/EP whole experts.
    assert moe_params_per_device(spec, 2, 2) == pytest.approx(
        spec.num_experts * spec.hidden_size + 4 * spec.expert_params()
    )


def test_deepseek_keeps_its_first_layers_dense() -> None:
    timer = _timer("deepseek-v3", tp=8, pp=2, dtype="fp8")
    assert timer.stage_layers == (31, 30)
    assert timer.stage_moe_layers == (28, 30)
    step = timer.step(BatchShape(num_decode=8, decode_context=8 * 1000, num_sampled=8))
    dense, moe = timer._layer_cost(8)[0], timer._moe_layer_cost(8)[0]
    assert dense != moe
    assert len(step.stages) == 2


def test_touched_experts_make_decode_cheaper_per_token_at_small_batch() -> None:
    timer = _timer("qwen3-30b-a3b")
    one = timer.step(BatchShape(num_decode=1, decode_context=100, num_sampled=1)).seconds
    many = timer.step(BatchShape(num_decode=64, decode_context=6400, num_sampled=64)).seconds
    # 64 tokens touch ~128·(1−(1−8/128)^64) ≈ 126 experts instead of 8: more weights read.
    assert many > 2 * one
    assert expected_experts_touched(128, 8, 64) == pytest.approx(128 * (1 - (1 - 8 / 128) ** 64))


def _run(overrides: list[str], n: int = 8) -> dict[str, object]:
    cfg = load_config(None, overrides)
    requests = [RequestSpec(i, 0.01 * i, 200, 20) for i in range(n)]
    return simulate(cfg, requests=requests).summary


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=mixtral-8x7b", "dtype=fp8", "cluster.tensor_parallel=2"],
        ["model=mixtral-8x7b", "cluster.tensor_parallel=2", "cluster.expert_parallel=2"],
        ["model=qwen3-30b-a3b", "moe.imbalance=1.5"],
    ],
)
def test_moe_models_serve_end_to_end(overrides: list[str]) -> None:
    summary = _run(overrides)
    assert summary["requests_completed"] == 8
    assert summary["output_tokens"] == 8 * 20


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["cluster.expert_parallel=2", "cluster.tensor_parallel=2"], "needs a mixture-of-experts"),
        (
            ["model=mixtral-8x22b", "cluster.tensor_parallel=16", "cluster.expert_parallel=16"],
            "must divide the 8 experts",
        ),
        (
            ["model=mixtral-8x7b", "cluster.tensor_parallel=4", "cluster.expert_parallel=2"],
            "must be 1 or equal tensor_parallel=4",
        ),
    ],
)
def test_expert_parallel_errors_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _run(overrides)
    assert "\n" not in str(info.value)


def test_moe_imbalance_below_one_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"moe\.imbalance"):
        load_config(None, ["moe.imbalance=0.5"])


def test_moe_parameter_counts_match_published() -> None:
    published = {  # total, active (model cards)
        "mixtral-8x7b": (46.7e9, 12.9e9),
        "mixtral-8x22b": (140.6e9, 39.1e9),
        "qwen3-30b-a3b": (30.5e9, 3.3e9),
        "qwen3-235b-a22b": (235e9, 22e9),
        "deepseek-v3": (671e9, 37e9),
    }
    for name, (total, active) in published.items():
        spec = load_model(name)
        assert spec.num_params() == pytest.approx(total, rel=0.02), name
        assert spec.active_params() == pytest.approx(active, rel=0.03), name
    assert math.isclose(load_model("llama-3.1-8b").active_params(), 8.03e9, rel_tol=0.01)
