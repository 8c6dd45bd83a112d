"""Device memory plan (weights, activations, KV cache) and how KV capacity drives preemption."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import load_config
from llmservingsim.errors import DoesNotFitError, UserError
from llmservingsim.hardware.device import GIB
from llmservingsim.scenario import resolve
from llmservingsim.serving.memory import MemoryPlan, plan_memory
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec


def plan(
    model: str = "llama-3.1-8b",
    hardware: str = "h100-sxm",
    *,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    tp: int = 1,
    block_size: int = 16,
    util: float = 0.9,
    max_batched_tokens: int = 8192,
    max_seqs: int = 256,
    fraction_of: str = "total",
) -> MemoryPlan:
    return plan_memory(
        load_model(model),
        load_device(hardware),
        dtype=dtype,
        kv_dtype=kv_dtype or dtype,
        tp=tp,
        block_size=block_size,
        gpu_memory_utilization=util,
        max_batched_tokens=max_batched_tokens,
        max_seqs=max_seqs,
        fraction_of=fraction_of,
    )


def one_request() -> list[RequestSpec]:
    return [RequestSpec(id=0, arrival_s=0.0, input_len=128, output_len=8)]


# ----------------------------------------------------------------------------- Llama-3.1-8B


def test_llama_8b_bf16_on_h100() -> None:
    p = plan()
    assert p.weights_gib == pytest.approx(14.96, rel=0.01)
    assert p.kv_bytes_per_token == 131072  # 2 (K, V) · 32 layers · 8 heads · 128 · 2 bytes
    assert p.device_memory_gib == 80
    assert p.usable_gib == pytest.approx(72.0)
    assert p.num_blocks > 0
    assert p.kv_tokens == p.num_blocks * 16
    # The pool is what is left, and the blocks are carved out of it without overshooting.
    left = p.usable_gib - p.weights_gib - p.activation_gib - p.reserved_gib
    assert p.kv_cache_gib == pytest.approx(left)
    pool = p.kv_cache_gib * GIB
    block = p.kv_bytes_per_token * p.block_size
    assert p.num_blocks * block <= pool < (p.num_blocks + 1) * block
    # vLLM reports roughly 55 GiB of KV cache (~450k tokens) for this setup.
    assert 50 < p.kv_cache_gib < 58
    assert 400_000 < p.kv_tokens < 480_000


def test_free_memory_fraction_takes_a_share_of_what_weights_leave() -> None:
    """TensorRT-LLM's free_gpu_memory_fraction: the KV cache is the fraction of the memory left
    after weights, activations and the reserved memory, not the fraction of the device minus
    them (vLLM's gpu_memory_utilization); the same fraction then gives a bigger cache, by
    (1 - fraction) x what the weights and activations take."""
    total = plan(dtype="fp8", kv_dtype="fp8", block_size=32)
    free = plan(dtype="fp8", kv_dtype="fp8", block_size=32, fraction_of="free")
    used = free.weights_gib + free.activation_gib + free.reserved_gib
    assert (free.weights_gib, free.activation_gib) == (total.weights_gib, total.activation_gib)
    assert free.kv_cache_gib == pytest.approx(0.9 * (80 - used))
    assert free.kv_cache_gib - total.kv_cache_gib == pytest.approx(0.1 * used)
    assert free.num_blocks > total.num_blocks
    # the plan still adds up, and summary.json says which fraction it took
    assert free.usable_gib - used == pytest.approx(free.kv_cache_gib)
    assert free.as_dict()["fraction_of"] == "free" and "fraction_of" not in total.as_dict()
    assert "free" in free.describe() and "free" not in total.describe()
    with pytest.raises(ValueError, match="fraction_of"):
        plan(fraction_of="all")


TRTLLM_ON_PIM = ["engine=trtllm", "perf.host_overlap=false", "perf.cuda_graphs.mode='off'"]


@pytest.mark.parametrize("sets", [["scheduler.memory_fraction_of=free"], TRTLLM_ON_PIM])
def test_free_memory_fraction_is_refused_for_a_kv_cache_in_pim_memory(sets: list[str]) -> None:
    """With pim.enabled the KV pool is the PIM devices' memory: a share of the GPU memory
    left free by weights and activations would be ignored (the same pool either way), so
    memory_fraction_of: free is one error line naming both keys."""
    cfg = load_config(None, ["pim.enabled=true", *sets])
    with pytest.raises(UserError) as error:
        resolve(cfg)
    text = str(error.value)
    assert "scheduler.memory_fraction_of: free" in text and "pim.enabled" in text
    assert "\n" not in text
    resolve(load_config(None, ["pim.enabled=true", *sets, "scheduler.memory_fraction_of=total"]))


def test_trtllm_preset_plans_kv_from_the_free_memory() -> None:
    trt = resolve(load_config(None, ["engine=trtllm", "dtype=fp8", "kv_dtype=fp8"]))
    vllm = resolve(load_config(None, ["dtype=fp8", "kv_dtype=fp8", "scheduler.max_num_seqs=2048"]))
    assert trt.config.scheduler.memory_fraction_of == "free"
    assert trt.pools[0].memory.fraction_of == "free"
    assert trt.pools[0].memory.kv_cache_gib > vllm.pools[0].memory.kv_cache_gib


def test_weights_match_the_parameter_count() -> None:
    spec = load_model("llama-3.1-8b")
    assert spec.num_params() == pytest.approx(8.03e9, rel=0.005)
    assert plan().weights_gib * GIB == pytest.approx(spec.num_params() * 2, rel=1e-6)
    # fp8 halves the decoder's weights; the embeddings and LM head stay 16-bit, as the FP8
    # checkpoints ship them (docs/models.md)
    vocab = spec.embedding_params()
    fp8 = (spec.num_params() - vocab) * 1 + vocab * 2
    assert plan(dtype="fp8", kv_dtype="bf16").weights_gib * GIB == pytest.approx(fp8, rel=1e-6)


def test_summary_reports_the_memory_plan() -> None:
    cfg = load_config(None, ["model=llama-3.1-8b"])
    result = simulate(cfg, requests=one_request())
    memory = result.summary["memory"]
    assert memory["weights_gib"] == pytest.approx(14.96, rel=0.01)
    assert memory["kv_bytes_per_token"] == 131072
    assert memory["kv_tokens"] == result.memory.kv_tokens == plan().kv_tokens
    assert result.summary["kv_cache_capacity_tokens"] == memory["kv_tokens"]


# ----------------------------------------------------------------------------- Llama-3.1-70B


def test_llama_70b_does_not_fit_one_h100() -> None:
    cfg = load_config(None, ["model=llama-3.1-70b"])
    with pytest.raises(DoesNotFitError) as info:
        simulate(cfg, requests=one_request())
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert "\n" not in message
    assert "llama-3.1-70b" in message
    assert "h100-sxm" in message
    assert "tensor_parallel" in message
    # The breakdown: usable memory, weights, activations, reserved and the (negative) KV pool.
    p = plan("llama-3.1-70b")
    assert p.num_blocks <= 0
    assert p.kv_cache_gib < 0
    for part in ("weights", "activations", "reserved", "KV cache", "GiB"):
        assert part in message
    assert f"{p.weights_gib:.1f} GiB" in message
    assert f"{p.usable_gib:.1f} GiB" in message


def test_llama_70b_fits_four_h100s_with_a_quarter_of_the_weights() -> None:
    one = plan("llama-3.1-70b")
    four = plan("llama-3.1-70b", tp=4)
    assert one.weights_gib == pytest.approx(131.4, rel=0.01)  # 70.6e9 params · 2 bytes
    assert four.weights_gib == pytest.approx(one.weights_gib / 4, rel=0.01)
    assert four.weights_gib >= one.weights_gib / 4  # norms are replicated, never less
    assert four.num_blocks > 0
    # 8 KV heads over 4 ranks: each device holds a quarter of every token's KV.
    assert four.kv_bytes_per_token == pytest.approx(one.kv_bytes_per_token / 4)

    cfg = load_config(None, ["model=llama-3.1-70b", "cluster.tensor_parallel=4"])
    assert resolve(cfg).memory.num_blocks == four.num_blocks
    result = simulate(cfg, requests=one_request())
    assert result.summary["requests_completed"] == 1
    assert result.summary["num_devices"] == 4
    assert result.summary["memory"]["weights_gib"] == pytest.approx(four.weights_gib, abs=1e-3)


def test_tensor_parallel_beyond_kv_heads_replicates_kv() -> None:
    # 8 KV heads: at tp=16 each rank still holds one whole KV head (replicated).
    eight = plan("llama-3.1-70b", tp=8)
    sixteen = plan("llama-3.1-70b", tp=16)
    assert sixteen.kv_bytes_per_token == eight.kv_bytes_per_token


# ----------------------------------------------------------------------------- KV dtype


@pytest.mark.parametrize("model", ["llama-3.1-8b", "llama-3.2-1b", "llama-3.1-70b"])
def test_fp8_kv_doubles_the_kv_tokens(model: str) -> None:
    tp = 4 if model == "llama-3.1-70b" else 1
    bf16 = plan(model, tp=tp)
    fp8 = plan(model, tp=tp, kv_dtype="fp8")
    assert fp8.weights_gib == bf16.weights_gib
    assert fp8.kv_cache_gib == bf16.kv_cache_gib
    assert fp8.kv_bytes_per_token == bf16.kv_bytes_per_token / 2
    # Twice the blocks, up to the one block the floor may lose.
    assert 2 * bf16.num_blocks <= fp8.num_blocks <= 2 * bf16.num_blocks + 1


def test_fp8_kv_through_the_config() -> None:
    base = simulate(load_config(None, []), requests=one_request()).summary
    fp8 = simulate(load_config(None, ["kv_dtype=fp8"]), requests=one_request()).summary
    assert fp8["memory"]["kv_bytes_per_token"] == 65536
    ratio = fp8["kv_cache_capacity_tokens"] / base["kv_cache_capacity_tokens"]
    assert ratio == pytest.approx(2.0, rel=1e-3)


def test_weight_only_quantization_keeps_a_16_bit_kv_cache() -> None:
    cfg = load_config(None, ["dtype=int4"])
    assert cfg.resolved_kv_dtype == "bf16"
    assert resolve(cfg).memory.kv_bytes_per_token == 131072


# ----------------------------------------------------------------------------- monotone plans


@settings(max_examples=60, deadline=None)
@given(
    lo=st.floats(0.2, 1.0),
    hi=st.floats(0.2, 1.0),
    block_size=st.sampled_from([1, 8, 16, 32, 128]),
    model=st.sampled_from(["llama-3.2-1b", "llama-3.1-8b", "qwen2.5-7b", "mistral-7b"]),
)
def test_more_memory_never_means_fewer_blocks(
    lo: float, hi: float, block_size: int, model: str
) -> None:
    lo, hi = sorted((lo, hi))
    small = plan(model, util=lo, block_size=block_size)
    large = plan(model, util=hi, block_size=block_size)
    assert small.weights_gib == large.weights_gib
    assert small.activation_gib == large.activation_gib
    assert large.num_blocks >= small.num_blocks
    assert plan(model, "h200", util=lo, block_size=block_size).num_blocks >= small.num_blocks


def test_block_size_barely_changes_the_kv_tokens() -> None:
    tokens = [plan(block_size=b).kv_tokens for b in (1, 8, 16, 32, 128)]
    assert max(tokens) - min(tokens) < 128


def test_bigger_step_budget_reserves_more_activation_memory() -> None:
    small = plan(max_batched_tokens=2048)
    large = plan(max_batched_tokens=32768)
    assert large.activation_gib > small.activation_gib
    assert large.num_blocks < small.num_blocks


# ----------------------------------------------------------------------------- preemption


def preemptions(*overrides: str, seed: int = 0) -> dict[str, Any]:
    cfg = load_config(
        None,
        [
            "model=llama-3.1-8b",
            "workload.num_requests=200",
            "workload.arrival.rate=.inf",
            "workload.output_len={dist: uniform, min: 500, max: 1500}",
            f"seed={seed}",
            *overrides,
        ],
    )
    summary = simulate(cfg).summary
    assert summary["requests_completed"] == 200
    assert summary["requests_failed"] == 0
    return summary


@pytest.mark.parametrize(("policy", "seed"), [("vllm", 0), ("vllm", 1), ("orca", 0)])
def test_more_kv_memory_never_increases_preemptions(policy: str, seed: int) -> None:
    # Coarse steps of utilization. Fine steps (0.01) are not monotone: a bigger cache admits
    # more requests at once, and recompute preemption may then evict more often later.
    utils = [0.22, 0.25, 0.3, 0.35, 0.4, 0.5, 0.9]
    counts = [
        preemptions(
            f"scheduler.policy={policy}", f"scheduler.gpu_memory_utilization={u}", seed=seed
        )["preemptions"]
        for u in utils
    ]
    assert counts[0] > 0, "the smallest cache must preempt for this test to mean anything"
    assert counts == sorted(counts, reverse=True), f"preemptions at {utils}: {counts}"
    assert counts[-1] == 0


@pytest.mark.parametrize("util", [0.22, 0.25, 0.3])
def test_a_device_with_more_memory_never_preempts_more(util: float) -> None:
    h100 = preemptions("hardware=h100-sxm", f"scheduler.gpu_memory_utilization={util}")
    h200 = preemptions("hardware=h200", f"scheduler.gpu_memory_utilization={util}")
    assert h100["kv_cache_capacity_tokens"] < h200["kv_cache_capacity_tokens"]
    assert h100["preemptions"] > 0
    assert h200["preemptions"] <= h100["preemptions"]


def test_static_batching_never_preempts_even_when_memory_is_tight() -> None:
    summary = preemptions("scheduler.policy=static", "scheduler.gpu_memory_utilization=0.22")
    assert summary["preemptions"] == 0
