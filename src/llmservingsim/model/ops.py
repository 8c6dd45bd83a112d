"""Per-iteration operator graph of a decoder-only transformer, sharded by tensor parallelism.

The batch of one engine step is a list of sequences, each with ``new`` tokens to compute and
``ctx`` tokens already in its KV cache. Linear layers and element-wise ops see all tokens of the
batch stacked (M = total new tokens); attention is per sequence. FLOPs and bytes come from the
shapes alone, so any perf backend (roofline, measured tables, an external simulator) can time
them.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmservingsim.model.spec import DTYPE_BYTES, ModelSpec

Dims = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Op:
    """One kernel. ``m`` is the row count the kernel's efficiency depends on (tokens for GEMMs).

    ``dims`` are the named integer shapes the op was built from (gemm: m, n, k; memory: m and
    per-row elements; attention: tokens, context and heads), so a measured table or an external
    simulator can look the kernel up by shape instead of re-deriving it from FLOPs and bytes.
    """

    name: str
    kind: str  # gemm | memory | attention_prefill | attention_decode
    flops: float
    bytes: float
    m: int = 1
    dims: Dims = ()

    def dim(self, name: str) -> int:
        for key, value in self.dims:
            if key == name:
                return value
        raise KeyError(f"op {self.name!r} has no dim {name!r} (dims: {self.dims})")


@dataclass(frozen=True)
class ShardShape:
    """Per-device slice of the model for one tensor-parallel rank."""

    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_mlp: bool

    @property
    def q_size(self) -> int:
        return self.q_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim


def shard_shape(spec: ModelSpec, tp: int) -> ShardShape:
    """Megatron-style sharding: heads, MLP columns and vocabulary split over ``tp`` ranks.

    KV heads are replicated when there are fewer of them than ranks (as vLLM does).
    """
    return ShardShape(
        hidden=spec.hidden_size,
        q_heads=max(1, spec.num_heads // tp),
        kv_heads=max(1, spec.num_kv_heads // tp),
        head_dim=spec.head_dim,
        intermediate=max(1, spec.intermediate_size // tp),
        vocab=-(-spec.vocab_size // tp),
        gated_mlp=spec.gated_mlp,
    )


class OpGraph:
    """Builds the ops of one layer / of the model head for a given batch on one TP rank."""

    def __init__(self, spec: ModelSpec, tp: int, dtype: str, kv_dtype: str) -> None:
        self.spec = spec
        self.shape = shard_shape(spec, tp)
        self.weight_bytes = DTYPE_BYTES[dtype]
        # Weight-only quantized models (int8/int4) still compute in 16-bit.
        self.act_bytes = 2.0 if dtype in ("int8", "int4", "fp8") else DTYPE_BYTES[dtype]
        self.kv_bytes = DTYPE_BYTES[kv_dtype]

    def gemm(self, name: str, m: int, n: int, k: int) -> Op:
        flops = 2.0 * m * n * k
        traffic = k * n * self.weight_bytes + (m * k + m * n) * self.act_bytes
        return Op(name, "gemm", flops, traffic, m, (("m", m), ("n", n), ("k", k)))

    def elementwise(self, name: str, m: int, read: int, write: int) -> Op:
        dims = (("m", m), ("read", read), ("write", write))
        return Op(name, "memory", 0.0, (read + write) * m * self.act_bytes, m, dims)

    def dense_layer_ops(self, num_tokens: int) -> list[Op]:
        """Everything of one decoder layer except attention itself; depends only on M."""
        s, m = self.shape, num_tokens
        mlp_in = (2 if s.gated_mlp else 1) * s.intermediate
        return [
            self.elementwise("input_layernorm", m, s.hidden, s.hidden),
            self.gemm("qkv_proj", m, s.q_size + 2 * s.kv_size, s.hidden),
            self.elementwise("rope", m, s.q_size + s.kv_size, s.q_size + s.kv_size),
            self.gemm("o_proj", m, s.hidden, s.q_size),
            self.elementwise("residual_add", m, 2 * s.hidden, s.hidden),
            self.elementwise("post_attention_layernorm", m, s.hidden, s.hidden),
            self.gemm("mlp_up_proj", m, mlp_in, s.hidden),
            self.elementwise("mlp_act", m, mlp_in, s.intermediate),
            self.gemm("mlp_down_proj", m, s.hidden, s.intermediate),
            self.elementwise("residual_add", m, 2 * s.hidden, s.hidden),
        ]

    def prefill_attention(self, new: int, ctx: int) -> Op:
        """Causal FlashAttention over ``new`` query tokens after ``ctx`` cached tokens."""
        s = self.shape
        flops = 4.0 * new * (ctx + (new + 1) / 2) * s.q_size
        traffic = (
            2.0 * new * s.q_size * self.act_bytes + 2.0 * (ctx + new) * s.kv_size * self.kv_bytes
        )
        dims = (("new", new), ("ctx", ctx), *self._head_dims())
        return Op("attention_prefill", "attention_prefill", flops, traffic, new, dims)

    def decode_attention(self, num_seqs: int, total_ctx: int) -> Op:
        """Paged decode attention of a whole batch: reads every sequence's KV once."""
        s = self.shape
        flops = 4.0 * total_ctx * s.q_size
        traffic = (
            2.0 * total_ctx * s.kv_size * self.kv_bytes + 2.0 * num_seqs * s.q_size * self.act_bytes
        )
        dims = (("batch", num_seqs), ("context", total_ctx), *self._head_dims())
        return Op("attention_decode", "attention_decode", flops, traffic, num_seqs, dims)

    def _head_dims(self) -> Dims:
        s = self.shape
        return (("q_heads", s.q_heads), ("kv_heads", s.kv_heads), ("head_dim", s.head_dim))

    def head_ops(self, num_tokens: int, num_sampled: int) -> list[Op]:
        """Embedding lookup, final norm and LM head (only for sequences that emit a token)."""
        s = self.shape
        ops = [
            self.elementwise("embedding", num_tokens, s.hidden, s.hidden),
            self.elementwise("final_layernorm", num_sampled, s.hidden, s.hidden),
        ]
        if num_sampled:
            ops.append(self.gemm("lm_head", num_sampled, s.vocab, s.hidden))
            # Sampling reads the fp32 logits once (softmax + top-k/p), one kernel chain.
            sampling_bytes = 4.0 * num_sampled * s.vocab * 2
            dims = (("m", num_sampled), ("vocab", s.vocab))
            ops.append(Op("sampling", "memory", 0.0, sampling_bytes, num_sampled, dims))
        return ops

    def allreduce_bytes(self, num_tokens: int) -> float:
        """Activation all-reduced after attention and after the MLP (twice per layer)."""
        return num_tokens * self.shape.hidden * self.act_bytes
