"""MLA attention (DeepSeek-V3), FP8 KV cache and weight-only / FP8 weight quantization."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.model.op import is_sixteen_bit
from llmservingsim.model.ops import OpGraph
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import BatchShape, IterationTimer
from llmservingsim.scenario import resolve
from llmservingsim.serving.memory import MemoryPlan, plan_memory, weight_bytes_per_device
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec

DEEPSEEK = "deepseek-v3"


def _plan(model: str, hardware: str, dtype: str, kv_dtype: str, tp: int) -> MemoryPlan:
    return plan_memory(
        load_model(model),
        load_device(hardware),
        dtype=dtype,
        kv_dtype=kv_dtype,
        tp=tp,
        block_size=16,
        gpu_memory_utilization=0.9,
        max_batched_tokens=8192,
        max_seqs=256,
    )


# ----------------------------------------------------------------------------- MLA


def test_mla_kv_cache_is_the_latent_and_is_not_sharded_by_tp() -> None:
    spec = load_model(DEEPSEEK)
    assert spec.mla_latent_size == 512 + 64
    assert spec.kv_bytes_per_token("bf16") == 61 * 576 * 2
    assert spec.kv_bytes_per_token("fp8") == 61 * 576
    # vLLM keeps the whole latent on every TP rank: the per-device KV per token is not / TP.
    plan = _plan(DEEPSEEK, "h200", "fp8", "fp8", tp=8)
    assert plan.kv_bytes_per_token == spec.kv_bytes_per_token("fp8")
    # A GQA model's per-device KV does shrink with TP.
    gqa = _plan("llama-3.1-70b", "h100-sxm", "bf16", "bf16", tp=4)
    assert gqa.kv_bytes_per_token == load_model("llama-3.1-70b").kv_bytes_per_token("bf16") / 4


def test_mla_decode_reads_the_latent_and_computes_over_it() -> None:
    spec = load_model(DEEPSEEK)
    graph = OpGraph(spec, 8, "fp8", "fp8")
    seqs, ctx = 16, 16 * 2000
    op = graph.decode_attention(seqs, ctx)
    heads = 128 // 8
    assert op.flops == pytest.approx(2 * ctx * heads * (576 + 512))
    queries = seqs * heads * (576 + 512) * graph.act_bytes
    assert op.bytes == pytest.approx(ctx * 576 * 1.0 + queries)
    names = [o.name for o in graph.decode_attention_ops(seqs, ctx)]
    assert names == ["mla_q_absorb", "attention_decode", "mla_v_absorb"]


def test_mla_prefill_uses_expanded_heads() -> None:
    graph = OpGraph(load_model(DEEPSEEK), 1, "bf16", "bf16")
    new, ctx = 512, 1024
    op = graph.prefill_attention(new, ctx)
    assert op.flops == pytest.approx(2 * new * (ctx + (new + 1) / 2) * 128 * (192 + 128))
    expand, attention = graph.prefill_attention_ops(new, ctx)
    assert expand.name == "mla_kv_b_proj"
    assert expand.dim("m") == new + ctx and expand.dim("k") == 512
    assert attention == op


def test_mla_attention_weights_match_the_checkpoint() -> None:
    spec = load_model(DEEPSEEK)
    # q_a 7168×1536, q_b 1536×(128·192), kv_a 7168×576, kv_b 512×(128·256), o (128·128)×7168
    # plus the two low-rank norms.
    expected = (
        7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168
        + 1536 + 512
    )  # fmt: skip
    assert spec.attention_params() == expected


def test_deepseek_serves_on_8_h200() -> None:
    cfg = load_config(
        None, [f"model={DEEPSEEK}", "dtype=fp8", "hardware=h200", "cluster.tensor_parallel=8"]
    )
    summary = simulate(cfg, requests=[RequestSpec(i, 0.0, 300, 10) for i in range(4)]).summary
    assert summary["requests_completed"] == 4
    assert summary["memory"]["kv_bytes_per_token"] == 61 * 576


# ----------------------------------------------------------------------------- FP8 KV


def test_fp8_kv_halves_kv_bytes_and_doubles_capacity() -> None:
    bf16 = resolve(load_config(None, [])).memory
    fp8 = resolve(load_config(None, ["kv_dtype=fp8"])).memory
    assert fp8.kv_bytes_per_token == bf16.kv_bytes_per_token / 2
    assert fp8.weights_gib == bf16.weights_gib
    assert fp8.num_blocks == pytest.approx(2 * bf16.num_blocks, abs=1)
    spec = load_model("llama-3.1-8b")
    half = OpGraph(spec, 1, "bf16", "fp8").decode_attention(64, 64 * 4096)
    full = OpGraph(spec, 1, "bf16", "bf16").decode_attention(64, 64 * 4096)
    assert half.bytes < 0.51 * full.bytes


def test_fp8_kv_end_to_end_reports_twice_the_cache_and_faster_long_decodes() -> None:
    requests = [RequestSpec(i, 0.0, 4000, 64) for i in range(32)]
    runs = {
        kv: simulate(load_config(None, [f"kv_dtype={kv}"]), requests=requests).summary
        for kv in ("auto", "fp8")
    }
    ratio = runs["fp8"]["kv_cache_capacity_tokens"] / runs["auto"]["kv_cache_capacity_tokens"]
    assert ratio == pytest.approx(2.0, rel=1e-3)
    assert runs["fp8"]["tpot_s"]["mean"] < runs["auto"]["tpot_s"]["mean"]


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    ("dtype", "bytes_per_weight"), [("int8", 1.0), ("int4", 0.5), ("fp8", 1.0), ("fp4", 0.5625)]
)
def test_quantization_shrinks_layers_but_not_embeddings(
    dtype: str, bytes_per_weight: float
) -> None:
    spec = load_model("llama-3.1-8b")
    embeddings = spec.embedding_params()
    body = spec.num_params() - embeddings
    expected = body * bytes_per_weight + embeddings * 2.0
    assert weight_bytes_per_device(spec, dtype, 1) == pytest.approx(expected)
    assert weight_bytes_per_device(spec, dtype, 1) < weight_bytes_per_device(spec, "bf16", 1)


@pytest.mark.parametrize(("dtype", "hardware"), [("fp8", "h100-sxm"), ("fp4", "b200")])
def test_the_lm_head_of_a_quantized_checkpoint_stays_16_bit(dtype: str, hardware: str) -> None:
    """FP8 and FP4 checkpoints leave the LM head (and a MoE router) in bf16 (ModelOpt's
    exclude_modules, compressed-tensors' ignore): 16-bit weights on the bf16 curve, as the
    kernel tables time it (their bf16 GEMM table); the decoder's GEMMs keep the checkpoint's
    dtype."""
    device = load_device(hardware)
    spec = load_model("llama-3.1-8b")
    quant = OpGraph(spec, 1, dtype, "fp8", fp4_tensor_cores=device.fp4_tensor_cores)
    plain = OpGraph(spec, 1, "bf16", "bf16")
    backend, bf16 = RooflineBackend(device, dtype), RooflineBackend(device, "bf16")
    for tokens in (1, 4096):
        head = quant.output_ops(tokens)[-2]
        base = plain.output_ops(tokens)[-2]
        assert head.name == "lm_head" and is_sixteen_bit(head)
        assert (head.flops, head.bytes) == (base.flops, base.bytes)
        assert backend.time(head) == pytest.approx(bf16.time(base))
    up = next(o for o in quant.dense_layer_ops(8) if o.name == "mlp_up_proj")
    assert not is_sixteen_bit(up)
    assert not any(is_sixteen_bit(o) for o in plain.output_ops(8))
    # a MoE checkpoint's router too; its experts keep the checkpoint's dtype
    moe = OpGraph(load_model("qwen3-30b-a3b"), 1, dtype, "fp8")
    assert moe.moe is not None
    marked = {o.name: is_sixteen_bit(o) for o in moe.moe.expert_ops(8) if o.kind == "gemm"}
    assert marked["moe_router"] and not marked["moe_gate_up_proj"]


def test_int4_keeps_16_bit_compute_and_reads_a_quarter_of_the_gemm_weights() -> None:
    spec = load_model("llama-3.1-8b")
    q = {op.name: op for op in OpGraph(spec, 1, "int4", "bf16").dense_layer_ops(1)}
    b = {op.name: op for op in OpGraph(spec, 1, "bf16", "bf16").dense_layer_ops(1)}
    for name in ("qkv_proj", "mlp_up_proj"):
        assert q[name].flops == b[name].flops
        assert q[name].bytes == pytest.approx(b[name].bytes / 4, rel=0.01)
    cfg = load_config(None, ["dtype=int4"])
    assert cfg.compute_dtype == "bf16"
    assert cfg.resolved_kv_dtype == "bf16"


def test_quantized_batch1_decode_is_faster_in_proportion_to_bytes() -> None:
    device = load_device("h100-sxm")
    decode = BatchShape(num_decode=1, decode_context=512, num_sampled=1)

    def tpot(dtype: str) -> float:
        timer = IterationTimer(
            load_model("llama-3.1-8b"),
            device,
            RooflineBackend(device, "bf16" if dtype in ("int8", "int4") else dtype),
            Topology.build(device),
            tensor_parallel=1,
            dtype=dtype,
            kv_dtype="bf16",
        )
        return timer.step(decode).seconds

    bf16, int8, int4 = tpot("bf16"), tpot("int8"), tpot("int4")
    assert int4 <= int8 < bf16
    # Batch-1 decode is memory bound: the time saved is the weight bytes saved / bandwidth.
    # (int4 is not checked: the calibrated small-M GEMM efficiency, compute_half_m = 124 on
    # H100, makes 4-bit batch-1 GEMMs compute bound — a known gap, docs/models.md.)
    spec = load_model("llama-3.1-8b")
    bandwidth = device.memory_bandwidth * device.efficiency.memory
    for dtype, seconds in (("int8", int8),):
        saved = weight_bytes_per_device(spec, "bf16", 1) - weight_bytes_per_device(spec, dtype, 1)
        assert bf16 - seconds == pytest.approx(saved / bandwidth, rel=0.02)


def test_fp8_weights_use_the_fp8_peak_at_its_measured_share() -> None:
    device = load_device("h100-sxm")
    graph = OpGraph(load_model("llama-3.1-8b"), 1, "fp8", "fp8")
    op = next(o for o in graph.dense_layer_ops(8192) if o.name == "mlp_up_proj")
    fp8 = RooflineBackend(device, "fp8").time(op)
    bf16 = RooflineBackend(device, "bf16").time(op)
    # compute bound: the fp8 peak (2x bf16) on fp8's own measured curve (~1.4x bf16 at m 8192)
    curve = device.efficiency.dtype_gemm["fp8"]
    eta = curve.compute_max * 8192 / (8192 + curve.compute_half_m)
    assert fp8 == pytest.approx(op.flops / (device.peak_flops("fp8") * eta), rel=0.05)
    assert 1.2 < bf16 / fp8 < 1.7
    assert load_config(None, ["dtype=fp8"]).compute_dtype == "fp8"


def test_fp4_runs_on_blackwell_with_an_fp8_kv_cache_and_is_refused_elsewhere() -> None:
    cfg = load_config(None, ["dtype=fp4", "hardware=b200", "workload.num_requests=20"])
    assert cfg.resolved_kv_dtype == "fp8" and cfg.compute_dtype == "fp4"
    device = load_device("b200")
    graph = OpGraph(load_model("llama-3.1-8b"), 1, "fp4", "fp8")
    op = next(o for o in graph.dense_layer_ops(8192) if o.name == "mlp_up_proj")
    fp4 = RooflineBackend(device, "fp4").time(op)
    fp8 = RooflineBackend(device, "fp8").time(op)
    curves = device.efficiency.dtype_gemm
    rate = {
        d: device.peak_flops(d) * curves[d].compute_max * 8192 / (8192 + curves[d].compute_half_m)
        for d in ("fp8", "fp4")
    }
    # compute bound: the fp4 peak (2x fp8) on its own measured curve
    assert fp4 == pytest.approx(fp8 * rate["fp8"] / rate["fp4"], rel=0.05)
    assert simulate(cfg).summary["requests_completed"] == 20
    # attention's matmuls run in fp8 at most: a long prefill is timed as under fp8, not fp4
    attention = graph.prefill_attention(8192, 0)
    assert RooflineBackend(device, "fp4").time(attention) == pytest.approx(
        RooflineBackend(device, "fp8").time(attention), rel=1e-12
    )
    with pytest.raises(ConfigError, match="dtype fp4: device 'h100-sxm' has no FP4 tensor cores"):
        simulate(load_config(None, ["dtype=fp4", "workload.num_requests=5"]))


@pytest.mark.parametrize(
    ("quantization", "scaling"),
    [
        ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "block"),  # DeepSeek, Qwen3
        ({"quant_method": "fp8", "activation_scheme": "static"}, "tensor"),
        ({"quant_method": "modelopt", "quant_algo": "FP8"}, "tensor"),  # NVIDIA ModelOpt
        ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, ""),
        ({"quant_method": "modelopt", "quant_algo": "FP8_PER_CHANNEL_PER_TOKEN"}, "tensor"),
        ({"quant_method": "modelopt", "quant_algo": "FP8_BLOCK_SCALES"}, "block"),
        ({"quant_method": "modelopt", "quant_algo": "FP8_PB_WO"}, "block"),
        ({"quant_method": "fbgemm_fp8"}, "tensor"),  # per-row (Llama-4 Maverick FP8)
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {
                    "g": {"weights": {"type": "float", "num_bits": 8, "strategy": "block"}}
                },
            },
            "block",
        ),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {
                    "g": {"weights": {"type": "float", "num_bits": 8, "strategy": "channel"}}
                },
            },
            "tensor",
        ),
        ({"quant_method": "mxfp4"}, ""),  # gpt-oss
        (None, ""),
    ],
)
def test_fp8_checkpoint_scaling_read_from_the_config(quantization: object, scaling: str) -> None:
    """``fp8_scaling: auto`` follows the checkpoint's own quantization_config where it has one
    (a dense block-scaled checkpoint runs the block kernels), else MoE -> block."""
    from llmservingsim.model.spec import fp8_checkpoint_scaling, parse_hf_config

    assert fp8_checkpoint_scaling(quantization) == scaling
    raw = json.loads((files("llmservingsim") / "data/models/llama-3.1-8b.json").read_text())
    if quantization is not None:
        raw["quantization_config"] = quantization
    spec = parse_hf_config("llama", raw)
    assert spec.fp8_checkpoint == scaling
    cfg = load_config(None, ["dtype=fp8"])
    assert cfg.resolved_fp8_scaling(spec.is_moe, spec.fp8_checkpoint) == (scaling or "tensor")
    assert load_model("deepseek-v3").fp8_checkpoint == "block"


def test_the_catalog_notes_published_fp8_checkpoints_that_auto_would_miss(tmp_path: Path) -> None:
    """Mixtral's and Llama-4's FP8 checkpoints scale per tensor / channel / row, not in the
    blocks auto assumes for MoE models: their catalog configs say so, and a bad note is one
    error naming the file."""
    for name in ("mixtral-8x7b", "mixtral-8x22b", "llama-4-scout", "llama-4-maverick"):
        assert load_model(name).fp8_checkpoint == "tensor"
        cfg = load_config(
            None, [f"model={name}", "dtype=fp8", "hardware=b200", "cluster.tensor_parallel=8"]
        )
        setup = resolve(cfg).perf
        assert setup.fp8_scaling == "tensor"
    assert resolve(load_config(None, ["model=qwen3-30b-a3b", "dtype=fp8"])).perf.fp8_scaling == (
        "block"
    )
    raw = json.loads((files("llmservingsim") / "data/models/mixtral-8x7b.json").read_text())
    raw["llmservingsim"] = {"fp8_checkpoint": "rows"}
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"config\.json: llmservingsim\.fp8_checkpoint must be"):
        load_model(str(bad))


def test_a_checkpoints_own_quantization_config_wins_over_the_catalog_note(tmp_path: Path) -> None:
    raw = json.loads((files("llmservingsim") / "data/models/mixtral-8x7b.json").read_text())
    raw["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    assert load_model(str(path)).fp8_checkpoint == "block"
    raw["llmservingsim"] = {"fp8_checkpoint_source": "a note without a scaling"}
    (tmp_path / "noted").mkdir()
    (tmp_path / "noted" / "config.json").write_text(json.dumps(raw))
    assert load_model(str(tmp_path / "noted" / "config.json")).fp8_checkpoint == "block"
    raw["llmservingsim"] = "tensor"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="llmservingsim must be an object"):
        load_model(str(tmp_path / "bad" / "config.json"))


def test_kernel_format_and_its_inverse() -> None:
    from llmservingsim.calibrate.moe_tables import MOE_KEYS
    from llmservingsim.hardware.device import (
        kernel_compute_dtype,
        kernel_format,
        kernel_weights,
        moe_key,
    )

    assert kernel_format("fp8", "block") == "fp8_block"
    assert kernel_format("fp8", "tensor") == kernel_format("fp8", "none") == "fp8"
    assert kernel_format("fp4", "block") == "fp4"  # block scaling names fp8 kernels only
    assert kernel_compute_dtype("fp8_block") == "fp8" and kernel_compute_dtype("bf16") == "bf16"
    for key in MOE_KEYS:
        assert moe_key(*kernel_weights(key)) == key
    assert moe_key("fp16") == "bf16"
