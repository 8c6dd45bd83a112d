"""dtype mxfp4 (OCP MXFP4 weights, gpt-oss): 4.25 bits per weight; MXFP8 activations at the
fp8 rate on devices with FP4 tensor cores (Blackwell), weight-only bf16 math elsewhere."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest

from llmservingsim import catalog
from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import KernelDbConfig, load_config
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.kernel_db import table_modes
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import attention_dtype
from llmservingsim.model.fusion import Fusion
from llmservingsim.model.op import is_sixteen_bit
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.model.spec import DTYPE_BYTES, parse_hf_config
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import BatchShape, IterationTimer
from llmservingsim.serving.memory import weight_bytes_per_device

HAS_AIC = importlib.util.find_spec("aiconfigurator_core") is not None


def _timer(hardware: str, dtype: str, moe_entries: bool = True) -> IterationTimer:
    device = load_device(hardware)
    if not moe_entries:  # expert GEMMs on the dense curves (no efficiency.moe_gemm)
        eff = device.efficiency.model_copy(update={"moe_gemm": {}})
        device = device.model_copy(update={"efficiency": eff})
    compute = load_config(None, [f"dtype={dtype}"]).compute_dtype
    return IterationTimer(
        load_model("gpt-oss-120b"),
        device,
        RooflineBackend(device, compute, dtype),
        Topology.build(device),
        tensor_parallel=1,
        dtype=dtype,
        kv_dtype="bf16",
    )


def test_gpt_oss_120b_weights_take_4_25_bits_with_16_bit_attention_and_embeddings() -> None:
    spec = load_model("gpt-oss-120b")
    assert DTYPE_BYTES["mxfp4"] == 4.25 / 8
    # Its config.json: modules_to_not_convert = self_attn, mlp.router, embed_tokens, lm_head.
    assert spec.checkpoint_dtype == "mxfp4"
    assert set(spec.unquantized) == {"attention", "router", "lm_head"}
    embeddings = spec.embedding_params()
    sixteen = spec.num_layers * (spec.attention_params() + spec.num_experts * spec.hidden_size)
    experts = spec.num_params() - embeddings - sixteen
    expected = experts * 4.25 / 8 + (sixteen + embeddings) * 2.0
    assert weight_bytes_per_device(spec, "mxfp4", 1) == pytest.approx(expected)
    # int4 is not the checkpoint's format: its attention is 4-bit too (the router and the LM
    # head of every quantized checkpoint are 16-bit)
    int4 = weight_bytes_per_device(spec, "int4", 1)
    gap = experts / 32 + spec.num_layers * spec.attention_params() * 1.5
    assert weight_bytes_per_device(spec, "mxfp4", 1) - int4 == pytest.approx(gap)
    # the gpt-oss model card's checkpoint sizes: 60.8 GiB (120b) and 12.8 GiB (20b)
    assert expected / 2**30 == pytest.approx(60.8, abs=0.15)
    small = weight_bytes_per_device(load_model("gpt-oss-20b"), "mxfp4", 1)
    assert small / 2**30 == pytest.approx(12.8, abs=0.05)


def _expert_gemm(timer: IterationTimer, tokens: int) -> float:
    assert timer.graph.moe is not None
    op = next(o for o in timer.graph.moe.expert_ops(tokens) if o.name == "moe_gate_up_proj")
    return timer.backend.time(op)


def test_b200_expert_gemm_runs_on_the_fp8_curve_at_the_fp8_peak() -> None:
    device = load_device("b200")
    assert device.fp4_tensor_cores and device.gemm_dtype("mxfp4") == "fp8"
    timer = _timer("b200", "mxfp4")
    assert timer.graph.moe is not None
    tokens = 8192  # compute bound
    op = next(o for o in timer.graph.moe.expert_ops(tokens) if o.name == "moe_gate_up_proj")
    curve = device.efficiency.dtype_gemm["fp8"]
    eta = curve.compute_max * op.m / (op.m + curve.compute_half_m)
    # The fused-MoE entry of MXFP4 experts (calibration.md §7e) scales the fp8 curve's rate.
    moe = device.efficiency.moe_curve("mxfp4")
    assert moe is not None
    dims = dict(op.dims)
    narrow = min(dims["n"], dims["k"])
    scale = moe.compute * narrow / (narrow + moe.half_dim)
    eta = scale * curve.compute_max * op.m / (op.m + curve.compute_half_m * scale)
    expected = op.flops / (device.peak_flops("fp8") * eta) + moe.launch_us * 1e-6
    assert device.peak_flops("mxfp4") == device.peak_flops("fp8")
    assert timer.backend.time(op) == pytest.approx(expected)
    assert _expert_gemm(timer, tokens) < _expert_gemm(_timer("b200", "int4"), tokens)
    # Activations are quantized to MXFP8 as fp8's are; attention stays 16-bit.
    assert timer.graph.quant_bytes == 1.0
    assert attention_dtype("mxfp4") == "bf16"
    assert load_config(None, ["dtype=mxfp4"]).resolved_kv_dtype == "bf16"


def test_h200_stays_weight_only_bf16() -> None:
    device = load_device("h200")
    assert not device.fp4_tensor_cores and device.gemm_dtype("mxfp4") == "bf16"
    assert device.peak_flops("mxfp4") == device.peak_flops("bf16")
    mxfp4, int4 = _timer("h200", "mxfp4", False), _timer("h200", "int4")
    assert mxfp4.graph.quant_bytes == 0.0
    # Compute-bound expert GEMMs time as int4's (bf16 math); only the weight bytes differ.
    assert _expert_gemm(mxfp4, 8192) == pytest.approx(_expert_gemm(int4, 8192))
    # The engines' W4A16 MXFP4 MoE kernels disagree by 2-4x: no fused-MoE entry on H200
    # (calibration.md §7e), so the shipped device times them as above.
    assert load_device("h200").efficiency.moe_curve("mxfp4") is None
    assert mxfp4.backend.time(
        next(o for o in mxfp4.graph.dense_layer_ops(4096) if o.name == "qkv_proj")
    ) == pytest.approx(
        int4.backend.time(next(o for o in int4.graph.dense_layer_ops(4096) if o.name == "qkv_proj"))
    )


def test_kernel_db_moe_mode_follows_the_device() -> None:
    options = KernelDbConfig()
    assert table_modes("mxfp4", options, "none", True) == (None, "w4a8_mxfp4_mxfp8")
    assert table_modes("mxfp4", options, "none", False) == (None, "w4a16_mxfp4")
    assert table_modes("int4", options, "none", True) == (None, "int4_wo")
    assert table_modes("fp8", options, "block", True) == ("fp8_block", "fp8_block")
    assert table_modes("fp8", options, "tensor", True) == ("fp8", "fp8")
    assert table_modes("fp4", options, "none", True) == ("nvfp4", "nvfp4")


@pytest.mark.skipif(not HAS_AIC, reason="aiconfigurator-core not installed")
def test_kernel_db_times_b200_mxfp4_experts_from_the_w4a8_table() -> None:
    from llmservingsim.hardware.backends import build_backend
    from llmservingsim.scenario import resolve

    cfg = load_config(
        None,
        [
            "model=gpt-oss-120b",
            "dtype=mxfp4",
            "hardware=b200",
            "perf.backend=kernel_db",
            "perf.kernel_db.engine=trtllm",
        ],
    )
    backend = build_backend(resolve(cfg).perf, load_device("b200"))
    tables = getattr(backend, "tables", None)
    assert tables is not None and tables.moe, "no MXFP4 x MXFP8 MoE rows loaded"


def test_unknown_dtype_lists_mxfp4() -> None:
    with pytest.raises(ConfigError, match="'mxfp4'"):
        load_config(None, ["dtype=mxfp5"])


def test_mxfp4_lora_adapters_and_activations_stay_16_bit() -> None:
    graph = OpGraph(load_model("gpt-oss-120b"), 1, "mxfp4", "bf16")
    assert graph.act_bytes == 2.0 and "lm_head" in graph.sixteen_bit
    from llmservingsim.model.lora import lora_dtype_bytes

    assert lora_dtype_bytes("mxfp4") == 2.0


def _op(graph: OpGraph, name: str, tokens: int) -> Op:
    return next(
        o for o in graph.dense_layer_ops(tokens) + graph.head_ops(tokens, tokens) if o.name == name
    )


@pytest.mark.parametrize("hardware", ["b200", "h200"])
def test_gpt_oss_attention_and_lm_head_stay_16_bit_as_its_checkpoint_ships_them(
    hardware: str,
) -> None:
    """gpt-oss's MXFP4 checkpoint quantizes the routed experts only (config.json
    modules_to_not_convert: self_attn, mlp.router, lm_head): those GEMMs read 16-bit weights
    and run the bf16 curve, on Blackwell (where the experts run MXFP4 x MXFP8 on the fp8 curve)
    and on Hopper alike; the experts keep 4.25 bits."""
    device = load_device(hardware)
    mxfp4 = _timer(hardware, "mxfp4")
    bf16 = RooflineBackend(device, "bf16")
    bf16_graph = OpGraph(load_model("gpt-oss-120b"), 1, "bf16", "bf16")
    for name in ("qkv_proj", "o_proj", "lm_head"):
        for tokens in (4, 8192):
            op = _op(mxfp4.graph, name, tokens)
            assert is_sixteen_bit(op)
            plain = _op(bf16_graph, name, tokens)
            assert (op.flops, op.bytes) == (plain.flops, plain.bytes)  # 16-bit weights, inputs
            assert mxfp4.backend.time(op) == pytest.approx(bf16.time(plain))
    # the experts are the checkpoint's MXFP4
    assert mxfp4.graph.moe is not None
    expert = next(o for o in mxfp4.graph.moe.expert_ops(4) if o.name == "moe_gate_up_proj")
    assert not is_sixteen_bit(expert)
    # Hopper, where both are weight-only bf16 math: a batch-4 decode step streams the
    # attention weights at 16 bits, slower than int4, whose checkpoint (not gpt-oss's format)
    # quantizes them too
    if hardware == "h200":
        int4 = _timer(hardware, "int4")
        decode = BatchShape([], 4, 4 * 1024, 4)
        assert mxfp4.step(decode, host=False).seconds > int4.step(decode, host=False).seconds


def test_no_activation_quantization_before_16_bit_gemms() -> None:
    """On Blackwell, MXFP8 activations are quantized before the experts only (vLLM 0.6-style
    separate quantization kernels: one per quantized GEMM input, none for bf16 attention)."""
    separate = Fusion(quant_into_producer=False)
    graph = OpGraph(
        load_model("gpt-oss-120b"), 1, "mxfp4", "bf16", fusion=separate, fp4_tensor_cores=True
    )
    assert graph.quant_bytes == 1.0
    assert [o.name for o in graph.attention_block_ops(64)].count("act_quant") == 0
    dense = OpGraph(load_model("llama-3.1-8b"), 1, "fp8", "fp8", fusion=separate)
    assert [o.name for o in dense.attention_block_ops(64)].count("act_quant") == 2


def test_other_dtypes_of_gpt_oss_quantize_every_linear_layer() -> None:
    """The checkpoint's 16-bit layers apply to its own format only: run in fp8 or int4 (a
    re-quantization), gpt-oss's attention GEMMs take that dtype; bf16 has nothing to mark."""
    spec = load_model("gpt-oss-120b")
    for dtype in ("fp8", "bf16"):
        graph = OpGraph(spec, 1, dtype, "bf16")
        assert not any(is_sixteen_bit(o) for o in graph.dense_layer_ops(16))
    int4 = OpGraph(spec, 1, "int4", "bf16")  # weight-only: its LM head only
    marked = [o.name for o in int4.dense_layer_ops(16) + int4.head_ops(16, 16) if is_sixteen_bit(o)]
    assert marked == ["lm_head"]


def test_modules_to_not_convert_must_be_a_list() -> None:
    cfg = json.loads(catalog.model_path("gpt-oss-20b").read_text())
    cfg["quantization_config"]["modules_to_not_convert"] = "model.layers.*.self_attn"
    with pytest.raises(ConfigError, match=r"^model config x: quantization_config\."):
        parse_hf_config("x", cfg)
    del cfg["quantization_config"]
    assert parse_hf_config("x", cfg).unquantized == ()


def test_mla_absorption_gemms_follow_a_16_bit_attention() -> None:
    """A checkpoint that keeps MLA's attention in 16 bits keeps kv_b_proj so, whose weights the
    decode absorption GEMMs read."""
    spec = dataclasses.replace(
        load_model("deepseek-v3"), checkpoint_dtype="fp8", unquantized=("attention",)
    )
    graph = OpGraph(spec, 8, "fp8", "fp8")
    absorb = [o for o in graph.decode_attention_ops(4, 4096) if o.kind == "gemm"]
    assert [o.name for o in absorb] == ["mla_q_absorb", "mla_v_absorb"]
    assert all(is_sixteen_bit(o) for o in absorb)
    plain = OpGraph(load_model("deepseek-v3"), 8, "fp8", "fp8")
    for marked, base in zip(
        absorb, (o for o in plain.decode_attention_ops(4, 4096) if o.kind == "gemm"), strict=True
    ):
        assert marked.bytes > base.bytes and not is_sixteen_bit(base)


@pytest.mark.parametrize("value", [False, 0, "", {"a": 1}, ["x" * 100_000, 3]])
def test_malformed_modules_to_not_convert_is_one_short_line(value: object) -> None:
    cfg = json.loads(catalog.model_path("gpt-oss-20b").read_text())
    cfg["quantization_config"]["modules_to_not_convert"] = value
    with pytest.raises(ConfigError) as info:
        parse_hf_config("x", cfg)
    message = str(info.value)
    assert message.startswith("model config x: quantization_config.modules_to_not_convert")
    assert "\n" not in message and len(message) < 400
