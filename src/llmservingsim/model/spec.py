"""Model shape, parsed from a Hugging Face ``config.json``.

Only the numbers that decide FLOPs and bytes are kept. Each HF ``model_type`` spells them
differently (OPT says ``ffn_dim``, GPT-2 says ``n_embd``), so a small parser per family maps
the file onto one :class:`ModelSpec`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmservingsim.errors import ConfigError

DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_context: int
    gated_mlp: bool = True
    tie_word_embeddings: bool = False
    # Mixture-of-experts (0 experts = dense model).
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    first_dense_layers: int = 0
    # Multi-head latent attention (DeepSeek): compressed KV per token instead of K and V heads.
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def uses_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def attention_params(self) -> int:
        return self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size

    def mlp_params(self) -> int:
        mats = 3 if self.gated_mlp else 2
        return mats * self.hidden_size * self.intermediate_size

    def layer_params(self) -> int:
        return self.attention_params() + self.mlp_params() + 2 * self.hidden_size

    def embedding_params(self) -> int:
        heads = 1 if self.tie_word_embeddings else 2
        return heads * self.vocab_size * self.hidden_size

    def num_params(self) -> int:
        """Total parameters (dense models; MoE counts are refined by the MoE model layer)."""
        return self.num_layers * self.layer_params() + self.embedding_params() + self.hidden_size

    def kv_bytes_per_token(self, kv_dtype: str) -> float:
        """K and V of one token over all layers, unsharded (MLA: the compressed latent)."""
        if self.uses_mla:
            latent = self.kv_lora_rank + self.qk_rope_head_dim
            return self.num_layers * latent * DTYPE_BYTES[kv_dtype]
        return 2 * self.num_layers * self.kv_size * DTYPE_BYTES[kv_dtype]


ConfigParser = Callable[[str, dict[str, Any]], ModelSpec]
_PARSERS: dict[str, ConfigParser] = {}


def _parser(*model_types: str) -> Callable[[ConfigParser], ConfigParser]:
    def decorator(fn: ConfigParser) -> ConfigParser:
        for model_type in model_types:
            _PARSERS[model_type] = fn
        return fn

    return decorator


def _need(cfg: dict[str, Any], key: str, name: str) -> Any:
    if key not in cfg:
        raise ConfigError(f"model config {name}: missing key {key!r}")
    return cfg[key]


@_parser("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3")
def _parse_llama_like(name: str, cfg: dict[str, Any]) -> ModelSpec:
    hidden = int(_need(cfg, "hidden_size", name))
    heads = int(_need(cfg, "num_attention_heads", name))
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    num_experts = int(
        cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts") or 0
    )
    return ModelSpec(
        name=name,
        model_type=str(cfg["model_type"]),
        hidden_size=hidden,
        num_layers=int(_need(cfg, "num_hidden_layers", name)),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        intermediate_size=int(_need(cfg, "intermediate_size", name)),
        vocab_size=int(_need(cfg, "vocab_size", name)),
        max_context=int(cfg.get("max_position_embeddings") or 4096),
        gated_mlp=True,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        num_experts=num_experts,
        experts_per_token=int(cfg.get("num_experts_per_tok") or 0),
        moe_intermediate_size=int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"]),
        num_shared_experts=int(cfg.get("n_shared_experts") or 0),
        first_dense_layers=int(cfg.get("first_k_dense_replace") or 0),
        kv_lora_rank=int(cfg.get("kv_lora_rank") or 0),
        qk_rope_head_dim=int(cfg.get("qk_rope_head_dim") or 0),
    )


@_parser("opt")
def _parse_opt(name: str, cfg: dict[str, Any]) -> ModelSpec:
    hidden = int(_need(cfg, "hidden_size", name))
    heads = int(_need(cfg, "num_attention_heads", name))
    return ModelSpec(
        name=name,
        model_type="opt",
        hidden_size=hidden,
        num_layers=int(_need(cfg, "num_hidden_layers", name)),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=int(_need(cfg, "ffn_dim", name)),
        vocab_size=int(_need(cfg, "vocab_size", name)),
        max_context=int(cfg.get("max_position_embeddings") or 2048),
        gated_mlp=False,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


@_parser("gpt2", "gpt3")
def _parse_gpt(name: str, cfg: dict[str, Any]) -> ModelSpec:
    hidden = int(_need(cfg, "n_embd", name))
    heads = int(_need(cfg, "n_head", name))
    return ModelSpec(
        name=name,
        model_type=str(cfg["model_type"]),
        hidden_size=hidden,
        num_layers=int(_need(cfg, "n_layer", name)),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=int(cfg.get("n_inner") or 4 * hidden),
        vocab_size=int(_need(cfg, "vocab_size", name)),
        max_context=int(cfg.get("n_positions") or 2048),
        gated_mlp=False,
        tie_word_embeddings=True,
    )


def parse_hf_config(name: str, cfg: dict[str, Any]) -> ModelSpec:
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise ConfigError(f"model config {name}: missing 'model_type'")
    parser = _PARSERS.get(model_type)
    if parser is None:
        supported = ", ".join(sorted(_PARSERS))
        raise ConfigError(
            f"model config {name}: model_type {model_type!r} not supported ({supported})"
        )
    return parser(name, cfg)


def load_hf_config_file(path: Path, name: str | None = None) -> ModelSpec:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read model config.json: {exc}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return parse_hf_config(name or path.stem, cfg)
