"""Model shape, parsed from a Hugging Face ``config.json``.

Only the numbers that decide FLOPs and bytes are kept. Each HF ``model_type`` spells them
differently (OPT says ``ffn_dim``, GPT-2 says ``n_embd``), so a small parser per family maps
the file onto one :class:`ModelSpec`.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError

from llmservingsim.errors import ConfigError, InputWarning
from llmservingsim.ranges import NotBool

Fp8Scaling = Literal["none", "tensor", "block"]
"""fp8 weights' scaling, resolved (SimConfig.resolved_fp8_scaling); none: not fp8 weights."""

DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    # NVFP4: 4-bit values plus one fp8 scale per 16 of them
    "fp4": 0.5625,
    # OCP MXFP4: 4-bit e2m1 values plus one 8-bit e8m0 scale per 32 of them (4.25 bits)
    "mxfp4": 0.53125,
}


def activation_bytes(dtype: str) -> float:
    """Bytes of one activation element between kernels: 16-bit for any weight dtype narrower
    than that (quantized weights, fp8 / fp4 math included), else the dtype's own."""
    return max(2.0, DTYPE_BYTES[dtype])


def weight_only_quantized(dtype: str) -> bool:
    """int8/int4 checkpoints (AWQ/GPTQ-style) and MXFP4 ones (gpt-oss) quantize the decoder's
    linear layers only: embeddings and the LM head stay 16-bit (and so does the math of int8 /
    int4, and of MXFP4 without FP4 tensor cores: model/spec.py gemm_dtype)."""
    return dtype in ("int8", "int4", "mxfp4")


# quantization_config.quant_method -> the simulator dtype of that checkpoint's weights, for the
# methods whose configs list the modules they leave in 16 bits (``modules_to_not_convert``).
CHECKPOINT_DTYPES: dict[str, str] = {"mxfp4": "mxfp4"}


def sixteen_bit_groups(spec: ModelSpec, dtype: str) -> frozenset[str]:
    """The linear layers that stay 16-bit (weights and math) when ``spec`` runs in ``dtype``:
    those its checkpoint leaves unquantized when it is quantized in ``dtype`` (gpt-oss's
    MXFP4 checkpoints: attention, ``ModelSpec.unquantized``), and the LM head and MoE router of
    every quantized checkpoint (:func:`quantized`: FP8 and FP4 checkpoints exclude them as the
    weight-only ones do, e.g. ModelOpt's ``exclude_modules`` of NVIDIA's FP8 / NVFP4 releases:
    ``lm_head`` in every one, the router ``gate`` of Qwen3-235B-A22B-NVFP4 and MiniMax's; a
    DeepSeek router is no Linear layer and is never quantized). Empty for 16-bit dtypes, where
    every GEMM is 16-bit anyway."""
    if not quantized(dtype):
        return frozenset()
    groups = {"lm_head", "router"}
    if spec.checkpoint_dtype and spec.checkpoint_dtype == dtype:
        groups.update(spec.unquantized)
    return frozenset(groups)


def quantized(dtype: str) -> bool:
    """Weights narrower than 16 bits: a quantized checkpoint, whose embeddings and LM head stay
    16-bit (:func:`sixteen_bit_groups`)."""
    return DTYPE_BYTES[dtype] < 2.0


def gemm_dtype(dtype: str, fp4_tensor_cores: bool) -> str:
    """The dtype GEMMs of a model whose weights are in ``dtype`` run in: int8/int4 are
    weight-only (dequantized, bf16 math); MXFP4 weights meet MXFP8 activations on a device
    with FP4 tensor cores (Blackwell's block-scaled MMA: the fp8 rate) and are weight-only
    elsewhere; every other dtype computes in itself."""
    if dtype == "mxfp4":
        return "fp8" if fp4_tensor_cores else "bf16"
    return "bf16" if weight_only_quantized(dtype) else dtype


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
    shared_intermediate_size: int = 0  # all shared experts together (DeepSeek: n_shared · moe)
    # Every k-th layer after the dense ones is MoE, the others dense (Llama-4 Maverick: k = 2,
    # layers 1, 3, 5, ...; HF ``interleave_moe_layer_step``); 1: every layer.
    moe_layer_step: int = 1
    # Multi-head latent attention (DeepSeek): compressed KV per token instead of K and V heads.
    # With MLA ``head_dim`` is the query/key head size (qk_nope + qk_rope).
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    q_lora_rank: int = 0  # 0: queries are projected straight from the hidden state
    v_head_dim: int = 0  # MLA value head size (0: same as head_dim)
    # Sliding-window attention (gpt-oss): the layers ``sliding_layers`` (indices) attend to
    # the last ``sliding_window`` tokens only, the token itself included; the others to all.
    sliding_window: int = 0
    sliding_layers: tuple[int, ...] = ()
    # Chunked attention (Llama-4's iRoPE): the layers ``chunked_layers`` attend within
    # ``attention_chunk``-token chunks (a token at position p to positions
    # ⌊p / chunk⌋·chunk..p); the others (NoPE) to all.
    attention_chunk: int = 0
    chunked_layers: tuple[int, ...] = ()
    # How the checkpoint this config describes scales fp8 weights, from its
    # ``quantization_config`` or else the catalog's ``llmservingsim.fp8_checkpoint`` note on
    # the model's published FP8 checkpoints: "block" (128x128 blocks), "tensor" (per tensor,
    # channel or row), or "" (not said): the ``fp8_scaling: auto`` setting reads it.
    fp8_checkpoint: str = ""
    # The dtype the checkpoint this config describes is quantized in ("" when not known or not
    # quantized) and the groups of linear layers (attention, router, lm_head: model/op.py
    # gemm_group) it leaves in 16 bits,
    # from its ``quantization_config`` (``modules_to_not_convert``): gpt-oss's MXFP4 weights
    # cover the routed experts only (sixteen_bit_groups).
    checkpoint_dtype: str = ""
    unquantized: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Relations between the sizes (each size's own range is checked when it is read)."""
        checks = [
            (self.num_heads % self.num_kv_heads == 0, "num_kv_heads must divide num_heads"),
            (self.first_dense_layers <= self.num_layers, "first_dense_layers > num_layers"),
            (
                not self.num_experts or self.experts_per_token <= self.num_experts,
                "experts_per_token > num_experts",
            ),
            (
                not self.num_experts or (self.experts_per_token and self.moe_intermediate_size),
                "a mixture-of-experts model needs experts_per_token and an expert size >= 1",
            ),
            (self.qk_rope_head_dim <= self.head_dim, "qk_rope_head_dim > head_dim"),
            (
                not self.sliding_layers or not self.uses_mla,
                "sliding-window attention with MLA is not yet supported",
            ),
            (
                not self.chunked_layers or not (self.uses_mla or self.sliding_layers),
                "chunked attention with MLA or sliding-window layers is not yet supported",
            ),
        ]
        for ok, what in checks:
            if not ok:
                raise ConfigError(f"model {self.name}: {what} ({self._sizes()})")

    def _sizes(self) -> str:
        return (
            f"{self.num_heads} heads, {self.num_kv_heads} KV heads, {self.num_layers} layers, "
            f"{self.num_experts} experts, {self.experts_per_token} per token"
        )

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def uses_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def num_moe_layers(self) -> int:
        """Decoder layers whose MLP is a mixture of experts (DeepSeek keeps the first k dense;
        Llama-4 Maverick interleaves dense and MoE layers)."""
        if not self.is_moe:
            return 0
        step = self.moe_layer_step
        return self.num_layers // step - self.first_dense_layers // step

    def is_moe_layer(self, index: int) -> bool:
        return (
            self.is_moe
            and index >= self.first_dense_layers
            and (index + 1) % self.moe_layer_step == 0
        )

    @property
    def has_sliding_layers(self) -> bool:
        return bool(self.sliding_layers) and self.sliding_window > 0

    def is_sliding_layer(self, index: int) -> bool:
        return self.sliding_window > 0 and index in self.sliding_layers

    @property
    def num_sliding_layers(self) -> int:
        return sum(self.is_sliding_layer(i) for i in range(self.num_layers))

    @property
    def has_chunked_layers(self) -> bool:
        return bool(self.chunked_layers) and self.attention_chunk > 0

    @property
    def has_local_layers(self) -> bool:
        return self.has_sliding_layers or self.has_chunked_layers

    def is_local_layer(self, index: int) -> bool:
        """Whether layer ``index`` attends to part of the context only: a sliding window
        (gpt-oss) or its chunk (Llama-4)."""
        if self.attention_chunk > 0 and index in self.chunked_layers:
            return True
        return self.is_sliding_layer(index)

    @property
    def num_local_layers(self) -> int:
        return sum(self.is_local_layer(i) for i in range(self.num_layers))

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def value_head_dim(self) -> int:
        return self.v_head_dim or self.head_dim

    @property
    def mla_latent_size(self) -> int:
        """Per-token, per-layer MLA cache entry: compressed KV plus the shared rotary key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def qk_nope_head_dim(self) -> int:
        return self.head_dim - self.qk_rope_head_dim

    def attention_params(self) -> int:
        h = self.hidden_size
        if not self.uses_mla:
            return h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        if self.q_lora_rank:
            q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * self.q_size
        else:
            q = h * self.q_size
        kv_a = h * self.mla_latent_size + self.kv_lora_rank
        kv_b = self.kv_lora_rank * self.num_heads * (self.qk_nope_head_dim + self.value_head_dim)
        return q + kv_a + kv_b + self.num_heads * self.value_head_dim * h

    def mlp_params(self) -> int:
        mats = 3 if self.gated_mlp else 2
        return mats * self.hidden_size * self.intermediate_size

    def expert_params(self) -> int:
        """One routed expert (a gated MLP of moe_intermediate_size)."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    def moe_params(self) -> int:
        """Router, every routed expert and the shared experts of one MoE layer."""
        router = self.num_experts * self.hidden_size
        shared = 3 * self.hidden_size * self.shared_intermediate_size
        return router + self.num_experts * self.expert_params() + shared

    def layer_params(self, moe: bool = False) -> int:
        mlp = self.moe_params() if moe else self.mlp_params()
        return self.attention_params() + mlp + 2 * self.hidden_size

    def embedding_params(self) -> int:
        heads = 1 if self.tie_word_embeddings else 2
        return heads * self.vocab_size * self.hidden_size

    def num_params(self) -> int:
        """Total parameters: every expert counts (what must sit in memory)."""
        moe_layers = self.num_moe_layers
        layers = (self.num_layers - moe_layers) * self.layer_params()
        if moe_layers:
            layers += moe_layers * self.layer_params(moe=True)
        return layers + self.embedding_params() + self.hidden_size

    def active_params(self) -> int:
        """Parameters one token uses: k routed experts instead of all of them."""
        idle = self.num_experts - self.experts_per_token
        return self.num_params() - self.num_moe_layers * idle * self.expert_params()

    def kv_bytes_per_token(self, kv_dtype: str) -> float:
        """K and V of one token over all layers, unsharded (MLA: the compressed latent)."""
        if self.uses_mla:
            return self.num_layers * self.mla_latent_size * DTYPE_BYTES[kv_dtype]
        return 2 * self.num_layers * self.kv_size * DTYPE_BYTES[kv_dtype]


ConfigParser = Callable[[str, dict[str, Any], str], ModelSpec]
_PARSERS: dict[str, ConfigParser] = {}


def _parser(*model_types: str) -> Callable[[ConfigParser], ConfigParser]:
    def decorator(fn: ConfigParser) -> ConfigParser:
        for model_type in model_types:
            _PARSERS[model_type] = fn
        return fn

    return decorator


# Physical ranges of the sizes a config.json gives (the largest real models are far inside).
_RANGES: dict[str, tuple[int, int]] = {
    "size": (1, 2**20),  # hidden, head and rank sizes
    "wide": (1, 2**24),  # MLP widths
    "layers": (1, 10**4),
    "heads": (1, 2**16),
    "vocab": (1, 2**31 - 1),
    "context": (2, 2**31 - 1),
    "experts": (0, 2**16),
    "optional": (0, 2**24),  # sizes where 0 means "not used"
}
_ADAPTERS = {
    kind: TypeAdapter(Annotated[int, NotBool, Field(ge=low, le=high)])
    for kind, (low, high) in _RANGES.items()
}


def _int(cfg: dict[str, Any], key: str, where: str, kind: str, default: int | None = None) -> int:
    """``cfg[key]`` as an int in its physical range; a missing or null key is ``default``
    (an error when there is none). Errors name the file, the key, the value and the range."""
    raw = cfg.get(key)
    if raw is None:
        if default is None:
            raise ConfigError(f"{where}: missing key {key!r}")
        raw = default
    try:
        return int(_ADAPTERS[kind].validate_python(raw))
    except ValidationError:
        low, high = _RANGES[kind]
        shown = repr(raw) if len(repr(raw)) <= 40 else f"{repr(raw)[:30]}..."
        raise ConfigError(
            f"{where}: key {key!r} is {shown}, expected an integer in [{low:,}, {high:,}]"
        ) from None


def _first(cfg: dict[str, Any], *keys: str) -> str:
    """The first of ``keys`` the config sets (to a non-zero value), else the first key."""
    return next((key for key in keys if cfg.get(key)), keys[0])


def _warn_local_attention(name: str, layers: int, of: int, what: str) -> None:
    """The model layer gives every layer attention over the whole context (and a KV entry for
    every token): say so when some layers attend to a window or chunk only."""
    warnings.warn(
        f"model {name}: {what} on {layers} of {of} layers is modelled as attention over the "
        "whole context (KV cache and attention time overstated beyond the window)",
        InputWarning,
        stacklevel=2,
    )


@_parser(
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v3",
    "gpt_oss",
)
def _parse_llama_like(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    hidden = _int(cfg, "hidden_size", where, "size")
    heads = _int(cfg, "num_attention_heads", where, "heads")
    head_dim = _int(cfg, "head_dim", where, "size", default=max(hidden // heads, 1))
    experts_key = _first(cfg, "num_local_experts", "num_experts", "n_routed_experts")
    num_experts = _int(cfg, experts_key, where, "experts", default=0)
    kv_lora_rank = _int(cfg, "kv_lora_rank", where, "optional", default=0)
    rope_dim = _int(cfg, "qk_rope_head_dim", where, "optional", default=0)
    if kv_lora_rank:
        # MLA: query/key heads are qk_nope + qk_rope wide, values v_head_dim wide.
        head_dim = _int(cfg, "qk_nope_head_dim", where, "size") + rope_dim
    inter = _int(cfg, "intermediate_size", where, "wide")
    moe_inter = _int(cfg, "moe_intermediate_size", where, "optional", default=inter)
    num_shared = _int(cfg, "n_shared_experts", where, "optional", default=0)
    window = _int(cfg, "sliding_window", where, "optional", default=0)
    sliding = _sliding_layers(cfg, where) if window else ()
    layers = _int(cfg, "num_hidden_layers", where, "layers")
    context = _int(cfg, "max_position_embeddings", where, "context", default=4096)
    unread = cfg.get("layer_types") is None and cfg.get("use_sliding_window", True)
    if not sliding and unread and 0 < window < context:
        # Mistral-7B-v0.1: one window on every layer, without layer_types (not yet read).
        _warn_local_attention(name, layers, layers, f"sliding-window attention ({window} tokens)")
    shared_inter = _int(
        cfg, "shared_expert_intermediate_size", where, "optional", default=num_shared * moe_inter
    )
    return ModelSpec(
        name=name,
        model_type=str(cfg["model_type"]),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=_int(cfg, "num_key_value_heads", where, "heads", default=heads),
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=_int(cfg, "vocab_size", where, "vocab"),
        max_context=context,
        gated_mlp=True,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        num_experts=num_experts,
        experts_per_token=_int(cfg, "num_experts_per_tok", where, "optional", default=0),
        moe_intermediate_size=moe_inter,
        num_shared_experts=num_shared,
        first_dense_layers=_int(cfg, "first_k_dense_replace", where, "optional", default=0)
        if num_experts
        else 0,
        shared_intermediate_size=shared_inter if num_experts else 0,
        kv_lora_rank=kv_lora_rank,
        qk_rope_head_dim=rope_dim,
        q_lora_rank=_int(cfg, "q_lora_rank", where, "optional", default=0),
        v_head_dim=_int(cfg, "v_head_dim", where, "optional", default=0) if kv_lora_rank else 0,
        sliding_window=window if sliding else 0,
        sliding_layers=sliding,
    )


def _sliding_layers(cfg: dict[str, Any], where: str) -> tuple[int, ...]:
    """Indices of the ``sliding_attention`` layers of ``layer_types`` (gpt-oss: every other
    layer). Without ``layer_types`` a ``sliding_window`` is not read (Qwen2.5 sets one with
    ``use_sliding_window: false``; Mistral-7B-v0.1's 4,096 on every layer stays full
    attention, docs/models.md)."""
    layer_types = cfg.get("layer_types")
    if layer_types is None:
        return ()
    kinds = ("full_attention", "sliding_attention")
    if not isinstance(layer_types, list) or any(kind not in kinds for kind in layer_types):
        raise ConfigError(
            f"{where}: key 'layer_types' must be a list of {' or '.join(map(repr, kinds))}"
        )
    return tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention")


@_parser("llama4", "llama4_text")
def _parse_llama4(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    """Llama 4 (Scout, Maverick): the text model of ``text_config`` (the vision encoder is not
    modelled). MoE layers (every ``interleave_moe_layer_step``-th) hold ``num_local_experts``
    routed experts and one shared expert of ``intermediate_size``; dense layers an MLP of
    ``intermediate_size_mlp``."""
    text = cfg.get("text_config") if cfg.get("model_type") == "llama4" else cfg
    if not isinstance(text, dict):
        raise ConfigError(f"{where}: missing 'text_config'")
    hidden = _int(text, "hidden_size", where, "size")
    heads = _int(text, "num_attention_heads", where, "heads")
    layers = _int(text, "num_hidden_layers", where, "layers")
    step = _int(text, "interleave_moe_layer_step", where, "layers", default=1)
    expected = list(range(step - 1, layers, step))
    moe_layers = text.get("moe_layers")
    if moe_layers is not None and list(moe_layers) != expected:
        raise ConfigError(
            f"{where}: moe_layers {moe_layers!r} is not every "
            f"interleave_moe_layer_step-th layer ({step}): not yet supported"
        )
    expert_inter = _int(text, "intermediate_size", where, "wide")
    chunk = _int(text, "attention_chunk_size", where, "optional", default=0)
    chunked = _chunked_layers(text, layers, where) if chunk else ()
    return ModelSpec(
        name=name,
        model_type="llama4",
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=_int(text, "num_key_value_heads", where, "heads", default=heads),
        head_dim=_int(text, "head_dim", where, "size", default=max(hidden // heads, 1)),
        intermediate_size=_int(text, "intermediate_size_mlp", where, "wide"),
        vocab_size=_int(text, "vocab_size", where, "vocab"),
        max_context=_int(text, "max_position_embeddings", where, "context", default=4096),
        gated_mlp=True,
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        num_experts=_int(text, "num_local_experts", where, "experts"),
        experts_per_token=_int(text, "num_experts_per_tok", where, "optional"),
        moe_intermediate_size=expert_inter,
        num_shared_experts=1,
        shared_intermediate_size=expert_inter,
        moe_layer_step=step,
        attention_chunk=chunk if chunked else 0,
        chunked_layers=chunked,
    )


def _chunked_layers(text: dict[str, Any], layers: int, where: str) -> tuple[int, ...]:
    """Llama-4's chunked-attention layers: those with RoPE (iRoPE). HF ``no_rope_layers``
    gives 1 (RoPE, chunked) or 0 (NoPE, global) per layer; without it every
    ``no_rope_layer_interval``-th layer (default 4) is NoPE, as in transformers and vLLM."""
    flags = text.get("no_rope_layers")
    if flags is None or flags == []:
        interval = _int(text, "no_rope_layer_interval", where, "layers", default=4)
        return tuple(i for i in range(layers) if (i + 1) % interval != 0)
    if not isinstance(flags, list) or len(flags) != layers or any(f not in (0, 1) for f in flags):
        raise ConfigError(
            f"{where}: key 'no_rope_layers' must be a list of {layers} values 0 or 1 "
            "(one per layer)"
        )
    return tuple(i for i, flag in enumerate(flags) if flag == 1)


@_parser("opt")
def _parse_opt(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    hidden = _int(cfg, "hidden_size", where, "size")
    heads = _int(cfg, "num_attention_heads", where, "heads")
    return ModelSpec(
        name=name,
        model_type="opt",
        hidden_size=hidden,
        num_layers=_int(cfg, "num_hidden_layers", where, "layers"),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=_head_dim(hidden, heads, where),
        intermediate_size=_int(cfg, "ffn_dim", where, "wide"),
        vocab_size=_int(cfg, "vocab_size", where, "vocab"),
        max_context=_int(cfg, "max_position_embeddings", where, "context", default=2048),
        gated_mlp=False,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


@_parser("gpt2", "gpt3")
def _parse_gpt(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    hidden = _int(cfg, "n_embd", where, "size")
    heads = _int(cfg, "n_head", where, "heads")
    return ModelSpec(
        name=name,
        model_type=str(cfg["model_type"]),
        hidden_size=hidden,
        num_layers=_int(cfg, "n_layer", where, "layers"),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=_head_dim(hidden, heads, where),
        intermediate_size=_int(cfg, "n_inner", where, "wide", default=4 * hidden),
        vocab_size=_int(cfg, "vocab_size", where, "vocab"),
        max_context=_int(cfg, "n_positions", where, "context", default=2048),
        gated_mlp=False,
        tie_word_embeddings=True,
    )


def _head_dim(hidden: int, heads: int, where: str) -> int:
    if hidden % heads:
        raise ConfigError(f"{where}: {heads} attention heads do not divide hidden size {hidden}")
    return hidden // heads


def parse_hf_config(name: str, cfg: dict[str, Any], where: str | None = None) -> ModelSpec:
    """The spec of a Hugging Face config.json; ``where`` (default ``model config NAME``)
    prefixes every error."""
    where = where or f"model config {name}"
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise ConfigError(f"{where}: missing 'model_type'")
    parser = _PARSERS.get(model_type)
    if parser is None:
        supported = ", ".join(sorted(_PARSERS))
        raise ConfigError(f"{where}: model_type {model_type!r} not supported ({supported})")
    try:
        spec = parser(name, cfg, where)
    except ConfigError as exc:  # a relation between sizes (ModelSpec.__post_init__)
        if str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}: {exc}") from None
    note = _catalog_fp8_checkpoint(cfg.get("llmservingsim", {}), where)
    scaling = fp8_checkpoint_scaling(cfg.get("quantization_config")) or note
    if scaling:
        spec = dataclasses.replace(spec, fp8_checkpoint=scaling)
    checkpoint = checkpoint_unquantized(cfg.get("quantization_config"), where)
    if checkpoint is not None:
        spec = dataclasses.replace(spec, checkpoint_dtype=checkpoint[0], unquantized=checkpoint[1])
    return spec


def checkpoint_unquantized(quantization: object, where: str) -> tuple[str, tuple[str, ...]] | None:
    """(dtype, 16-bit groups) of a checkpoint whose ``quantization_config`` names its method
    (CHECKPOINT_DTYPES) and the modules it does not convert (``modules_to_not_convert``:
    Hugging Face's key, as gpt-oss writes it, e.g. ``model.layers.*.self_attn``,
    ``model.layers.*.mlp.router``, ``lm_head``); None for any other config. A group is 16-bit
    when any module of it is listed: a list that names some layers only (NVIDIA's name every
    layer) is read as all of them."""
    if not isinstance(quantization, dict):
        return None
    dtype = CHECKPOINT_DTYPES.get(str(quantization.get("quant_method", "")).lower())
    if dtype is None:
        return None
    modules = quantization.get("modules_to_not_convert")
    if modules is None:
        modules = []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError(
            f"{where}: quantization_config.modules_to_not_convert must be a list of module "
            f"names, got {repr(modules)[:200]}"
        )
    groups: list[str] = []
    for module in modules:
        last = module.rsplit(".", 1)[-1]
        if "attn" in module:
            group = "attention"
        elif last in ("router", "gate"):  # gpt-oss mlp.router; Qwen / DeepSeek mlp.gate
            group = "router"
        elif last == "lm_head":
            group = "lm_head"
        else:
            continue  # embeddings (a lookup, always 16-bit here) and modules not modelled
        if group not in groups:
            groups.append(group)
    return dtype, tuple(groups)


def _catalog_fp8_checkpoint(extra: object, where: str) -> str:
    """The catalog's note on a bf16 config of how the model's published FP8 checkpoints scale
    (``"llmservingsim": {"fp8_checkpoint": "tensor" | "block", "fp8_checkpoint_source": ...}``,
    docs/models.md), where they differ from what ``fp8_scaling: auto`` assumes."""
    if not isinstance(extra, dict):
        raise ConfigError(f"{where}: llmservingsim must be an object, got {extra!r}")
    value = extra.get("fp8_checkpoint")
    if value is None:
        return ""
    if value not in ("tensor", "block"):
        raise ConfigError(
            f"{where}: llmservingsim.fp8_checkpoint must be tensor or block, got {value!r}"
        )
    return str(value)


def fp8_checkpoint_scaling(quantization: object) -> str:
    """ "block" or "tensor" for an fp8 checkpoint's ``quantization_config`` (Hugging Face
    fine-grained fp8 with ``weight_block_size``, or without it per tensor; NVIDIA ModelOpt
    FP8, per tensor; compressed-tensors, by its weights' ``strategy``); "" otherwise."""
    if not isinstance(quantization, dict):
        return ""
    method = str(quantization.get("quant_method", "")).lower()
    if method == "fp8":
        return "block" if quantization.get("weight_block_size") else "tensor"
    if method == "fbgemm_fp8":  # per-row weight scales (Meta's Llama-4 Maverick FP8)
        return "tensor"
    if method == "modelopt":
        algo = str(quantization.get("quant_algo", "")).upper()
        if not algo.startswith("FP8"):
            return ""
        # FP8, FP8_PER_CHANNEL_PER_TOKEN: tensor; FP8_BLOCK_SCALES, FP8_PB_WO (per block)
        return "block" if "BLOCK" in algo or "_PB" in algo else "tensor"
    if method == "compressed-tensors":
        groups = quantization.get("config_groups")
        for group in groups.values() if isinstance(groups, dict) else ():
            weights = group.get("weights") if isinstance(group, dict) else None
            if not isinstance(weights, dict) or weights.get("type") != "float":
                continue
            if weights.get("num_bits") == 8:
                return "block" if weights.get("strategy") == "block" else "tensor"
    return ""


def load_hf_config_file(path: Path, name: str | None = None) -> ModelSpec:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        # ValueError: invalid JSON, not UTF-8, or an integer of more than 4300 digits.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ConfigError(f"{path}: cannot read model config.json: {reason[:200]}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return parse_hf_config(name or path.stem, cfg, where=str(path))
