"""LLMServingSim profiler bundles (dense.csv / per_sequence.csv beside meta.yaml): rows become
the simulator's ops for the bundle's model and TP degree, bad bundles are one-line errors, and
calibrate recovers the roofline parameters a synthetic bundle was made with."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmservingsim.calibrate.run import calibrate
from llmservingsim.catalog import load_device, load_model, model_path
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import Efficiency
from llmservingsim.hardware.profiles import load_profiles
from llmservingsim.hardware.profiles.lss import DENSE_LAYERS
from llmservingsim.model.ops import OpGraph

TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3, 24, 96, 384, 1536]
TRUE = load_device("rtx-4090").efficiency.model_copy(
    update={"compute_max": 0.9, "compute_half_m": 60.0, "memory": 0.9, "kernel_launch_us": 5.0}
)


def _bundle(
    root: Path, tp: int = 1, model: str = "meta-llama/Llama-3.1-8B", eff: Efficiency = TRUE
) -> Path:
    """A bundle whose times are the roofline's with ``eff`` (what a profiler would measure
    if the roofline were exact)."""
    bundle = root / "RTX4090" / "meta-llama" / "Llama-3.1-8B" / "bf16"
    (bundle / f"tp{tp}").mkdir(parents=True, exist_ok=True)
    (bundle / "meta.yaml").write_text(f"model: {model}\nvariant: bf16\ntp_degrees: [{tp}]\n")
    device = load_device("rtx-4090").model_copy(update={"efficiency": eff})
    backend = RooflineBackend(device, "bf16")
    graph = OpGraph(load_model("llama-3.1-8b"), tp, "bf16", "bf16")
    by_op = {op: layer for layer, op in DENSE_LAYERS.items()}
    dense = ["layer,tokens,time_us"]
    for m in TOKENS:
        ops = graph.attention_block_ops(m) + graph.mlp_ops(m) + graph.embedding_ops(m)
        dense += [
            f"{by_op[o.name]},{m},{backend.time(o) * 1e6:.6g}" for o in ops if o.name in by_op
        ]
        dense.append(f"layernorm,{m},3.5")  # a fused kernel the reader leaves out
    (bundle / f"tp{tp}" / "dense.csv").write_text("\n".join(dense) + "\n")
    per_seq = ["layer,sequences,time_us"]
    for s in (1, 4, 16, 64, 256):
        lm_head = next(o for o in graph.output_ops(s) if o.name == "lm_head")
        per_seq += [f"lm_head,{s},{backend.time(lm_head) * 1e6:.6g}", f"sampler,{s},20"]
    (bundle / f"tp{tp}" / "per_sequence.csv").write_text("\n".join(per_seq) + "\n")
    return bundle


def test_rows_become_the_models_ops_at_the_folders_tp(tmp_path: Path) -> None:
    _bundle(tmp_path, tp=2)
    points = load_profiles([tmp_path])
    names = {p.op.name for p in points}
    assert names == {*DENSE_LAYERS.values(), "lm_head"}  # layernorm and sampler left out
    up = next(p for p in points if p.op.name == "mlp_up_proj" and dict(p.op.dims)["m"] == 16)
    assert dict(up.op.dims) == {"m": 16, "n": 14336, "k": 4096}  # 2 × 14336 split over TP 2
    head = next(p for p in points if p.op.name == "lm_head" and dict(p.op.dims)["m"] == 4)
    assert dict(head.op.dims)["n"] == 128256 // 2
    assert all(p.model == "Llama-3.1-8B" and p.dtype == "bf16" for p in points)
    assert up.source.endswith(".csv:" + up.source.rsplit(":", 1)[1])


def test_attention_rows_become_prefill_and_decode_ops(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    (bundle / "tp1" / "attention.csv").write_text(
        "prefill_chunk,kv_prefill,n_decode,kv_decode,time_us\n"
        "2048,512,0,0,442.4\n"  # prefill of 2048 tokens after 512 cached ones
        "0,0,8,1024,55.6\n"  # 8 decodes of 1,024 tokens each
        "16,0,8,1024,89.5\n"  # mixed: not one op of the simulator, left out
    )
    points = [p for p in load_profiles([tmp_path]) if p.op.kind.startswith("attention")]
    assert [(p.op.name, dict(p.op.dims)) for p in points] == [
        ("attention_prefill", {"new": 2048, "ctx": 512, "q_heads": 32, "kv_heads": 8,
                               "head_dim": 128}),
        ("attention_decode", {"batch": 8, "context": 8192, "q_heads": 32, "kv_heads": 8,
                              "head_dim": 128}),
    ]  # fmt: skip
    assert points[0].seconds == pytest.approx(442.4e-6)


def test_calibrate_recovers_the_gemm_parameters(tmp_path: Path) -> None:
    report = calibrate([_bundle(tmp_path)], "rtx-4090")
    fitted = report.device.efficiency
    for name in ("compute_max", "compute_half_m", "memory", "kernel_launch_us"):
        assert getattr(fitted, name) == pytest.approx(getattr(TRUE, name), rel=0.02), name


def test_missing_meta_is_an_error_naming_the_bundle(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    (bundle / "meta.yaml").unlink()
    with pytest.raises(ConfigError, match=r"no meta\.yaml in .*bf16"):
        load_profiles([tmp_path])


def test_a_model_outside_the_catalog_needs_its_config(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, model="someone/Unknown-9B")
    with pytest.raises(ConfigError, match=r"'someone/Unknown-9B' is not in the catalog"):
        load_profiles([tmp_path])
    # the model's config.json beside meta.yaml is enough
    (bundle / "config.json").write_text(model_path("llama-3.1-8b").read_text())
    assert {p.op.name for p in load_profiles([tmp_path])} >= {"qkv_proj", "lm_head"}


def test_a_bad_row_names_file_and_line(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    dense = bundle / "tp1" / "dense.csv"
    dense.write_text(dense.read_text() + "qkv_proj,many,3.0\n")
    with pytest.raises(ConfigError, match=r"dense\.csv:\d+: expected an integer count"):
        load_profiles([tmp_path])


@pytest.mark.parametrize("bad", ["inf", "nan", "-3", "1e400"])
def test_a_time_that_is_not_positive_and_finite_is_an_error(tmp_path: Path, bad: str) -> None:
    bundle = _bundle(tmp_path)
    dense = bundle / "tp1" / "dense.csv"
    dense.write_text(dense.read_text() + f"qkv_proj,8,{bad}\n")
    with pytest.raises(ConfigError, match=r"dense\.csv:\d+: count and time must be positive"):
        load_profiles([tmp_path])


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    dense = bundle / "tp1" / "dense.csv"
    dense.write_bytes(dense.read_bytes() + b"qkv_proj,8,\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"dense\.csv: cannot read"):
        load_profiles([tmp_path])
    (bundle / "meta.yaml").write_bytes(b"model: \xff\n")
    with pytest.raises(ConfigError, match=r"meta\.yaml: cannot read"):
        load_profiles([bundle / "tp1" / "per_sequence.csv"])


@pytest.mark.parametrize("folder", ["tp0", "tp\u00b2", "tp3"])
def test_a_tp_folder_that_cannot_be_a_layout_is_an_error(tmp_path: Path, folder: str) -> None:
    bundle = _bundle(tmp_path)
    (bundle / "tp1").rename(bundle / folder)
    with pytest.raises(ConfigError, match=r"tp<N>' folder|does not split"):
        load_profiles([tmp_path])


def test_an_attention_grid_of_a_model_with_local_layers_is_not_yet_supported(
    tmp_path: Path,
) -> None:
    bundle = _bundle(tmp_path)
    (bundle / "config.json").write_text(model_path("gpt-oss-20b").read_text())
    (bundle / "tp1" / "attention.csv").write_text(
        "prefill_chunk,kv_prefill,n_decode,kv_decode,time_us\n0,0,8,1024,55.6\n"
    )
    with pytest.raises(ConfigError, match=r"sliding-window or chunked .* not yet supported"):
        load_profiles([bundle / "tp1" / "attention.csv"])


def test_the_kv_cache_dtype_follows_meta(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    (bundle / "tp1" / "attention.csv").write_text(
        "prefill_chunk,kv_prefill,n_decode,kv_decode,time_us\n0,0,8,1024,55.6\n"
    )
    meta = bundle / "meta.yaml"

    def decode_bytes() -> float:
        (point,) = [p for p in load_profiles([tmp_path]) if p.op.name == "attention_decode"]
        return point.op.bytes

    auto = decode_bytes()
    meta.write_text(meta.read_text() + "engine_effective: {kv_cache_dtype: fp8}\n")
    assert decode_bytes() < 0.6 * auto  # the KV half as wide; q in and out stay 16-bit


def test_a_table_outside_a_tp_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dense.csv").write_text("layer,tokens,time_us\nqkv_proj,1,50\n")
    with pytest.raises(ConfigError, match=r"must sit in a 'tp<N>' folder"):
        load_profiles([tmp_path / "dense.csv"])
