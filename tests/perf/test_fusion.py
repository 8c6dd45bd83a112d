"""Kernel fusion per serving engine (model/fusion.py, perf.fusion, the engine presets)."""

from __future__ import annotations

import pytest

from llmservingsim.build import build_timer
from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.profiles.vidur import MLP_COLUMNS
from llmservingsim.model.fusion import ACT_QUANT, DEFAULT_FUSION, FUSED_DIM, Fusion, fused_bytes
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.scenario import resolve

M = 300  # tokens of the batch: above every kernel's smallest wave on H100

UNFUSED = [
    "input_layernorm",
    "qkv_proj",
    "rope",
    "o_proj",
    "residual_add",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "residual_add",
]

TRTLLM = Fusion(rope_in_attention=True, residual_into_norm=True, quant_into_producer=True)
VLLM_06 = Fusion(residual_into_norm=True, quant_into_producer=False)
SEPARATE_QUANT = Fusion(quant_into_producer=False)  # every kernel its own


def layer(fusion: Fusion, dtype: str = "bf16", model: str = "llama-3.1-8b") -> list[Op]:
    graph = OpGraph(load_model(model), 1, dtype, dtype, fusion=fusion)
    return graph.dense_layer_ops(M)


def by_name(ops: list[Op]) -> dict[str, Op]:
    return {op.name: op for op in ops}


def test_the_default_is_the_calibrated_kernel_set() -> None:
    """The default op list is the kernels Vidur profiled one by one (calibration.md §1)."""
    assert Fusion(False, False, True) == DEFAULT_FUSION
    ops = layer(DEFAULT_FUSION)
    assert [op.name for op in ops] == UNFUSED
    assert {op.name for op in ops} <= set(MLP_COLUMNS)
    assert all(fused_bytes(op) == 0.0 for op in ops)


def test_rope_in_attention_drops_the_rope_kernel_and_nothing_else() -> None:
    plain, fused = layer(DEFAULT_FUSION), layer(Fusion(rope_in_attention=True))
    assert [op.name for op in layer(DEFAULT_FUSION, "fp8")] == UNFUSED
    assert [op.name for op in fused] == [n for n in UNFUSED if n != "rope"]
    rope = by_name(plain)["rope"]
    assert sum(op.bytes for op in plain) - sum(op.bytes for op in fused) == rope.bytes


def test_residual_into_norm_moves_the_residual_through_the_norms() -> None:
    spec = load_model("llama-3.1-8b")
    h = spec.hidden_size
    ops = layer(Fusion(residual_into_norm=True))
    assert "residual_add" not in [op.name for op in ops]
    for name in ("input_layernorm", "post_attention_layernorm"):
        norm = by_name(ops)[name]
        # reads the sublayer output and the residual, writes the normed rows and the residual
        assert norm.bytes == M * 4 * h * 2
        assert fused_bytes(norm) == M * 2 * h * 2
        assert (FUSED_DIM, 4 * h) in norm.dims
    # one residual round trip (3h per add) replaced by 2h more per norm: h per add saved
    saved = sum(op.bytes for op in layer(DEFAULT_FUSION)) - sum(op.bytes for op in ops)
    assert saved == 2 * M * h * 2


def test_norm_into_allreduce_folds_the_residual_norms_into_the_tp_allreduces() -> None:
    """Under TP the all-reduce after attention and after the MLP adds the residual and applies
    the next RMSNorm (TensorRT-LLM's RESIDUAL_RMS_NORM fusion): no norm or add kernels; at TP1
    there is no all-reduce to fold them into."""
    spec = load_model("llama-3.1-70b")
    fusion = Fusion(rope_in_attention=True, residual_into_norm=True, norm_into_allreduce=True)
    tp2 = OpGraph(spec, 2, "bf16", "bf16", fusion=fusion).dense_layer_ops(M)
    assert [op.name for op in tp2] == [
        "qkv_proj",
        "o_proj",
        "mlp_up_proj",
        "mlp_act",
        "mlp_down_proj",
    ]
    tp1 = OpGraph(spec, 1, "bf16", "bf16", fusion=fusion).dense_layer_ops(M)
    expected = OpGraph(spec, 1, "bf16", "bf16", fusion=TRTLLM).dense_layer_ops(M)
    assert tp1 == expected
    # an MoE rank under TP: its post-attention norm and residual add go too; MLA keeps the
    # norms of its latent projections, which no all-reduce precedes
    ds = OpGraph(load_model("deepseek-v3"), 8, "fp8", "fp8", fusion=fusion)
    assert ds.moe is not None
    before, after = ds.moe.rank_ops(M)
    names = [op.name for op in before + after + ds.attention_block_ops(M)]
    assert not {"input_layernorm", "post_attention_layernorm", "residual_add"} & set(names)
    assert {"mla_q_a_layernorm", "mla_kv_a_layernorm"} <= set(names)
    # fp8: the GEMM after a folded norm still reads its input in fp8 (the all-reduce's
    # RESIDUAL_RMS_NORM_QUANT_FP8 writes it), the same bytes as when the norm quantizes
    fp8 = OpGraph(spec, 2, "fp8", "fp8", fusion=fusion).dense_layer_ops(M)
    plain = OpGraph(spec, 2, "fp8", "fp8", fusion=TRTLLM).dense_layer_ops(M)
    assert by_name(fp8)["qkv_proj"].bytes == by_name(plain)["qkv_proj"].bytes
    # attention data parallelism at TP1 per rank: no TP all-reduce, nothing folded
    cfg = load_config(
        None,
        [
            "model=deepseek-v3",
            "hardware=h200",
            "dtype=fp8",
            "cluster.tensor_parallel=1",
            "cluster.data_parallel=8",
            "cluster.expert_parallel=8",
            "perf.fusion.norm_into_allreduce=true",
        ],
    )
    scenario = resolve(cfg)
    graph = build_timer(scenario, scenario.pools[0], 0).graph
    assert graph.moe is not None
    before, _ = graph.moe.rank_ops(M)
    assert "post_attention_layernorm" in [op.name for op in before]


def test_fp8_without_fusion_quantizes_before_every_gemm() -> None:
    spec = load_model("llama-3.1-8b")
    h, inter = spec.hidden_size, spec.intermediate_size
    ops = layer(SEPARATE_QUANT, "fp8")
    names = [op.name for op in ops]
    for gemm in ("qkv_proj", "o_proj", "mlp_up_proj", "mlp_down_proj"):
        assert names[names.index(gemm) - 1] == ACT_QUANT
    quants = [op for op in ops if op.name == ACT_QUANT]
    assert len(quants) == 4
    # read 16-bit, write fp8
    ks = [h, spec.num_heads * spec.head_dim, h, inter]
    assert [q.bytes for q in quants] == [M * k * 3 for k in ks]
    # the W8A8 GEMM reads its input in fp8
    gemm = by_name(ops)["qkv_proj"]
    n = (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim
    assert gemm.bytes == n * h * 1 + M * h * 1 + M * n * 2


def test_fp8_quant_in_the_producer_only_narrows_its_write() -> None:
    spec = load_model("llama-3.1-8b")
    h, inter = spec.hidden_size, spec.intermediate_size
    plain = by_name(layer(DEFAULT_FUSION, "bf16"))
    ops = layer(DEFAULT_FUSION, "fp8")
    assert ACT_QUANT not in [op.name for op in ops]
    fused = by_name(ops)
    for norm in ("input_layernorm", "post_attention_layernorm"):
        assert fused[norm].bytes == plain[norm].bytes - M * h
    assert fused["mlp_act"].bytes == plain["mlp_act"].bytes - M * inter


def test_16_bit_models_take_no_quantization() -> None:
    for fusion in (SEPARATE_QUANT, TRTLLM):
        for dtype in ("bf16", "int4"):
            assert ACT_QUANT not in [op.name for op in layer(fusion, dtype)]


def test_trtllm_layer_launches_seven_kernels_fewer_than_unfused_fp8() -> None:
    unfused = [op.name for op in layer(SEPARATE_QUANT, "fp8")]
    trt = [op.name for op in layer(TRTLLM, "fp8")]
    assert trt == [
        "input_layernorm",
        "qkv_proj",
        "o_proj",
        "post_attention_layernorm",
        "mlp_up_proj",
        "mlp_act",
        "mlp_down_proj",
    ]
    assert len(unfused) - len(trt) == 7  # rope, two adds, four quantizations


def test_moe_and_mla_layers_fuse_too() -> None:
    for model in ("mixtral-8x7b", "deepseek-v3"):
        spec = load_model(model)
        graph = OpGraph(spec, 8, "fp8", "fp8", expert_parallel=8, fusion=TRTLLM)
        names = [op.name for op in graph.moe_layer_ops(64)]
        assert "residual_add" not in names and "rope" not in names and ACT_QUANT not in names
        unfused = OpGraph(spec, 8, "fp8", "fp8", expert_parallel=8, fusion=SEPARATE_QUANT)
        plain = [op.name for op in unfused.moe_layer_ops(64)]
        assert plain.count("residual_add") == 2 and ACT_QUANT in plain


def test_roofline_times_a_fused_norm_between_the_norm_and_norm_plus_add() -> None:
    backend = RooflineBackend(load_device("h100-sxm"), "bf16")
    plain = by_name(layer(DEFAULT_FUSION))
    fused = by_name(layer(VLLM_06))["post_attention_layernorm"]
    norm = backend.time(plain["post_attention_layernorm"])
    add = backend.time(plain["residual_add"])
    assert norm < backend.time(fused) < norm + add


def test_act_quant_takes_the_activation_kernel_fit() -> None:
    device = load_device("h100-sxm")
    backend = RooflineBackend(device, "fp8")
    quant = by_name(layer(SEPARATE_QUANT, "fp8"))[ACT_QUANT]
    tuned = device.efficiency.memory_ops["mlp_act"]
    expected = quant.bytes / (device.memory_bandwidth * tuned.efficiency) + tuned.launch_us * 1e-6
    assert backend.time(quant) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("engine", "expected"),
    [
        ("trtllm", (True, True, True)),
        ("vllm-0.6", (False, True, False)),
        ("sglang", (False, True, False)),
        ("vllm", (False, False, True)),
        (None, (False, False, True)),
    ],
)
def test_presets_set_their_fusion_and_the_timer_uses_it(
    engine: str | None, expected: tuple[bool, bool, bool]
) -> None:
    sets = ["model=llama-3.1-8b", "dtype=fp8"] + ([f"engine={engine}"] if engine else [])
    cfg = load_config(None, sets)
    f = cfg.perf.fusion
    assert (f.rope_in_attention, f.residual_into_norm, f.quant_into_producer) == expected
    scenario = resolve(cfg)
    timer = build_timer(scenario, scenario.pools[0], 0)
    assert timer.graph.fusion == Fusion(*expected)


def test_user_fusion_setting_wins_over_the_preset() -> None:
    cfg = load_config(None, ["engine=trtllm", "perf.fusion.rope_in_attention=false"])
    assert not cfg.perf.fusion.rope_in_attention
    assert cfg.perf.fusion.residual_into_norm  # the preset's


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("perf.fusion.rope_fused=true", "unknown config key 'perf.fusion.rope_fused'"),
        ("perf.fusion.residual_into_norm=maybe", "perf.fusion.residual_into_norm"),
        ("perf.fusion=3", "perf.fusion"),
    ],
)
def test_bad_fusion_settings_are_one_error_line(setting: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [setting])
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_fused_layer_costs_are_memoized_per_token_count() -> None:
    cfg = load_config(None, ["engine=trtllm", "model=llama-3.1-8b", "dtype=fp8"])
    scenario = resolve(cfg)
    timer = build_timer(scenario, scenario.pools[0], 0)
    first = timer._layer_cost(M)
    hits = timer.cache_hits
    # The hit counter, not identity: the compiled build boxes the memoized tuple afresh.
    assert timer._layer_cost(M) == first and timer.cache_hits == hits + 1
