"""dtype mxfp4 (OCP MXFP4 weights, gpt-oss): 4.25 bits per weight; MXFP8 activations at the
fp8 rate on devices with FP4 tensor cores (Blackwell), weight-only bf16 math elsewhere."""

from __future__ import annotations

import importlib.util

import pytest

from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import KernelDbConfig, load_config
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.kernel_db import table_modes
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import attention_dtype
from llmservingsim.model.ops import OpGraph
from llmservingsim.model.spec import DTYPE_BYTES
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import IterationTimer
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


def test_gpt_oss_120b_weights_take_4_25_bits_with_16_bit_embeddings() -> None:
    spec = load_model("gpt-oss-120b")
    assert DTYPE_BYTES["mxfp4"] == 4.25 / 8
    embeddings = spec.embedding_params()
    body = spec.num_params() - embeddings
    expected = body * 4.25 / 8 + embeddings * 2.0
    assert weight_bytes_per_device(spec, "mxfp4", 1) == pytest.approx(expected)
    int4 = weight_bytes_per_device(spec, "int4", 1)
    assert weight_bytes_per_device(spec, "mxfp4", 1) - int4 == pytest.approx(body / 32)
    # ~63 GB: about what the published checkpoint takes (65 GB with its bf16 attention)
    assert 55e9 < expected < 70e9


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
    assert graph.act_bytes == 2.0 and graph.head_weight_bytes == 2.0
    from llmservingsim.model.lora import lora_dtype_bytes

    assert lora_dtype_bytes("mxfp4") == 2.0
