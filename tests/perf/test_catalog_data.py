"""Sanity checks on the built-in catalogs: hardware YAMLs and model config.json files."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from llmservingsim import catalog
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError, InputWarning
from llmservingsim.hardware import device as _device_module
from llmservingsim.hardware.device import DTYPES, load_device_file
from llmservingsim.model.spec import ModelSpec, load_hf_config_file
from llmservingsim.simulation import simulate

DATA = Path(_device_module.__file__).resolve().parents[1] / "data"
HARDWARE_FILES = sorted((DATA / "hardware").glob("*.yaml"))
MODEL_FILES = sorted((DATA / "models").glob("*.json"))

EXPECTED_DEVICES = {
    "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "b200", "gb200", "l40s", "a40",
    "a6000", "l4", "rtx-3090", "rtx-4090", "rtx-5090", "rtx-pro-6000", "mi300x", "mi325x",
    "tpu-v5e", "tpu-v6e", "gaudi3", "npu", "pim",
}  # fmt: skip

EXPECTED_MODELS = {
    "llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b",
    "llama-3.2-1b", "llama-3.2-3b", "mistral-7b", "mixtral-8x7b", "mixtral-8x22b", "qwen2.5-7b",
    "qwen2.5-72b", "qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3", "opt-13b", "opt-66b",
    "gpt3-175b", "mistral-large-2407", "qwen3-14b", "qwen3-32b", "codellama-34b",
    "mistral-nemo-12b", "yi-34b", "llama-4-scout", "llama-4-maverick", "gpt-oss-20b",
    "gpt-oss-120b", "deepseek-r1",
}  # fmt: skip

# Published total parameter counts of the dense models (HF safetensors metadata / papers).
# The simulator's count ignores biases and learned position embeddings, so allow 3%.
DENSE_PARAMS = {
    "llama-2-7b": 6.74e9,
    "llama-2-13b": 13.0e9,
    "llama-2-70b": 69.0e9,
    "llama-3.1-8b": 8.03e9,
    "llama-3.1-70b": 70.6e9,
    "llama-3.1-405b": 405.9e9,
    "llama-3.2-1b": 1.24e9,
    "llama-3.2-3b": 3.21e9,
    "mistral-7b": 7.24e9,
    "qwen2.5-7b": 7.62e9,
    "qwen2.5-72b": 72.7e9,
    "opt-13b": 12.85e9,
    "opt-66b": 65.7e9,
    "gpt3-175b": 175.0e9,
    "mistral-large-2407": 122.6e9,
    # model cards: Qwen3 14.8B / 32.8B, Code Llama 34B (33.7B in the safetensors metadata),
    # Mistral NeMo 12B (12.2B), Yi 34B (34.4B)
    "qwen3-14b": 14.8e9,
    "qwen3-32b": 32.8e9,
    "codellama-34b": 33.7e9,
    "mistral-nemo-12b": 12.2e9,
    "yi-34b": 34.4e9,
}

# Published total parameter counts of MoE models (every expert), same 3% tolerance: gpt-oss
# model card 20.91B / 116.83B; Llama 4 109B / 400B (HF cards; these include a vision encoder
# of under 1B that is not modelled); DeepSeek-V3/R1 671B.
MOE_PARAMS = {
    "gpt-oss-20b": 20.91e9,
    "gpt-oss-120b": 116.83e9,
    "llama-4-scout": 109e9,
    "llama-4-maverick": 400e9,
    "deepseek-v3": 671e9,
    "deepseek-r1": 671e9,
}

MOE_MODELS = {
    # name: (experts, experts per token)
    "mixtral-8x7b": (8, 2),
    "mixtral-8x22b": (8, 2),
    "qwen3-30b-a3b": (128, 8),
    "qwen3-235b-a22b": (128, 8),
    "deepseek-v3": (256, 8),
    "deepseek-r1": (256, 8),
    "gpt-oss-20b": (32, 4),
    "gpt-oss-120b": (128, 4),
    "llama-4-scout": (16, 1),
    "llama-4-maverick": (128, 1),
}


def test_catalogs_are_complete() -> None:
    assert {p.stem for p in HARDWARE_FILES} >= EXPECTED_DEVICES
    assert {p.stem for p in MODEL_FILES} >= EXPECTED_MODELS


@pytest.mark.parametrize("path", HARDWARE_FILES, ids=lambda p: p.stem)
def test_hardware_file_is_physically_sane(path: Path) -> None:
    dev = load_device_file(path)
    assert dev.name == path.stem
    assert dev.memory_gib > 0
    assert dev.memory_bandwidth_gbps > 0
    assert dev.reserved_memory_gib < dev.memory_gib
    assert set(dev.peak_tflops) <= set(DTYPES), f"unknown dtype in {sorted(dev.peak_tflops)}"
    assert all(v > 0 for v in dev.peak_tflops.values())
    peaks = dev.peak_tflops
    assert "bf16" in peaks or "fp16" in peaks
    bf16 = peaks.get("bf16", peaks.get("fp16"))
    if dev.type != "tpu":
        assert "fp32" in peaks
        assert bf16 > peaks["fp32"]
    if "fp8" in peaks:
        assert peaks["fp8"] >= bf16
    if "int8" in peaks:
        assert peaks["int8"] >= bf16
    assert 0 <= dev.power.idle_w < dev.power.max_w
    links = dev.links
    # The fast domain inside a node is never slower than the per-device network between nodes.
    assert links.intra_node.bandwidth_gbps >= links.inter_node.bandwidth_gbps
    assert dev.devices_per_node >= 1
    assert dev.cost_per_hour_usd > 0
    assert dev.sources, "every catalog device must say where its numbers come from"


def test_hardware_spot_values() -> None:
    h100 = load_device_file(DATA / "hardware" / "h100-sxm.yaml")
    assert h100.peak_flops("bf16") == pytest.approx(989.4e12)
    assert h100.memory_bandwidth == pytest.approx(3.35e12)
    gb200 = load_device_file(DATA / "hardware" / "gb200.yaml")
    assert gb200.devices_per_node == 72
    tpu = load_device_file(DATA / "hardware" / "tpu-v6e.yaml")
    assert tpu.type == "tpu"
    assert load_device_file(DATA / "hardware" / "gaudi3.yaml").type == "npu"
    assert load_device_file(DATA / "hardware" / "pim.yaml").type == "pim"


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_model_file_parses(path: Path) -> None:
    raw = json.loads(path.read_text())
    assert raw.get("_name_or_path"), "catalog configs name their source repo"
    spec = _load(path.stem)
    assert spec.name == path.stem
    assert spec.num_layers > 0 and spec.hidden_size > 0 and spec.vocab_size > 0
    assert spec.num_heads % spec.num_kv_heads == 0
    assert spec.max_context >= 2048


@pytest.mark.parametrize(("name", "published"), sorted(DENSE_PARAMS.items()))
def test_dense_parameter_counts(name: str, published: float) -> None:
    spec = _load(name)
    assert not spec.is_moe
    assert spec.num_params() == pytest.approx(published, rel=0.03)


@pytest.mark.parametrize(("name", "shape"), sorted(MOE_MODELS.items()))
def test_moe_models_declare_experts(name: str, shape: tuple[int, int]) -> None:
    spec = _load(name)
    assert spec.is_moe
    assert (spec.num_experts, spec.experts_per_token) == shape


def test_deepseek_v3_uses_mla() -> None:
    spec = load_hf_config_file(DATA / "models" / "deepseek-v3.json")
    assert spec.uses_mla
    assert spec.kv_lora_rank == 512
    assert spec.qk_rope_head_dim == 64
    assert spec.first_dense_layers == 3
    assert spec.num_shared_experts == 1
    assert spec.moe_intermediate_size == 2048


@pytest.mark.parametrize(
    ("name", "expected"), [("llama-3.1-8b", 131072), ("llama-3.1-70b", 327680)]
)
def test_kv_bytes_per_token_bf16(name: str, expected: int) -> None:
    spec = load_hf_config_file(DATA / "models" / f"{name}.json")
    assert spec.kv_bytes_per_token("bf16") == expected


def _load(name: str) -> ModelSpec:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)  # local attention, checked below
        return load_hf_config_file(DATA / "models" / f"{name}.json")


@pytest.mark.parametrize(("name", "published"), sorted(MOE_PARAMS.items()))
def test_moe_parameter_counts(name: str, published: float) -> None:
    assert _load(name).num_params() == pytest.approx(published, rel=0.03)


def test_llama4_interleaves_dense_and_moe_layers() -> None:
    """Maverick: MoE on layers 1, 3, ..., 47 (interleave_moe_layer_step 2), dense MLPs of
    intermediate_size_mlp on the others; Scout: every layer MoE. Both: one shared expert."""
    maverick, scout = _load("llama-4-maverick"), _load("llama-4-scout")
    assert maverick.num_moe_layers == 24
    assert [maverick.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert maverick.intermediate_size == 16384 and maverick.moe_intermediate_size == 8192
    assert scout.num_moe_layers == 48 and all(scout.is_moe_layer(i) for i in range(48))
    for spec in (maverick, scout):
        assert spec.shared_intermediate_size == 8192
        # 17B active parameters (model cards)
        assert spec.active_params() == pytest.approx(17e9, rel=0.03)


def test_local_attention_is_announced_as_an_approximation() -> None:
    """Mistral's one window on every layer is full attention throughout, and says so;
    gpt-oss's sliding-window and Llama-4's chunked layers are timed over their window or chunk
    (gpt-oss's KV only warns where it stays full: tests/serving/test_sliding_kv.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        assert load_hf_config_file(DATA / "models" / "gpt-oss-20b.json").has_sliding_layers
        assert load_hf_config_file(DATA / "models" / "llama-4-scout.json").has_chunked_layers
    what = "sliding-window attention (4096 tokens) on 32 of 32 layers"
    with pytest.warns(InputWarning, match=re.escape(what)):
        load_hf_config_file(DATA / "models" / "mistral-7b.json")
    # Qwen2.5 names a window but turns it off (use_sliding_window: false): nothing to say.
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        assert not load_hf_config_file(DATA / "models" / "qwen2.5-7b.json").has_sliding_layers


def test_uneven_llama4_moe_layers_are_refused(tmp_path: Path) -> None:
    raw = json.loads((DATA / "models" / "llama-4-maverick.json").read_text())
    raw["text_config"]["moe_layers"] = [0, 5, 9]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="not yet supported"):
        _ = load_hf_config_file(path)


def test_a_model_folder_is_read_through_its_config_json(tmp_path: Path) -> None:
    folder = tmp_path / "Qwen3-14B"
    folder.mkdir()
    (folder / "config.json").write_text((DATA / "models" / "qwen3-14b.json").read_text())
    spec = catalog.load_model(str(folder))
    assert spec.name == "Qwen3-14B"
    assert spec.num_params() == _load("qwen3-14b").num_params()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        catalog.load_model(str(empty))


@pytest.mark.parametrize("name", ["llama-4-maverick", "gpt-oss-20b", "deepseek-r1"])
def test_new_moe_models_simulate(name: str) -> None:
    """A short run on enough GPUs (DeepSeek-R1 in fp8 needs 8 H200s, as deployed): the
    interleaved layers and the new parsers reach the engine (memory plan per stage, step
    times)."""
    tp = {"llama-4-maverick": 8, "gpt-oss-20b": 1, "deepseek-r1": 8}[name]
    overrides = [
        f"model={name}",
        "dtype=fp8",
        f"cluster.tensor_parallel={tp}",
        "workload.num_requests=20",
    ]
    if name == "llama-4-maverick":
        overrides.append("cluster.pipeline_parallel=2")
    if name == "deepseek-r1":
        overrides.append("hardware=h200")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        result = simulate(load_config(None, overrides))
    assert result.summary["requests_completed"] == 20
