"""Per-iteration operator graph of a decoder-only transformer, sharded by tensor parallelism.

The batch of one engine step is a list of sequences, each with ``new`` tokens to compute and
``ctx`` tokens already in its KV cache. Linear layers and element-wise ops see all tokens of the
batch stacked (M = total new tokens); attention is per sequence. FLOPs and bytes come from the
shapes alone, so any perf backend (roofline, measured tables, an external simulator) can time
them.

Model shapes beyond the dense GQA transformer plug in here: multi-head latent attention
(model/mla.py) replaces the attention ops, a mixture of experts (model/moe.py) replaces the MLP
of its layers. Dense models build exactly the ops they always did.
"""

from __future__ import annotations

from llmservingsim.model.fusion import DEFAULT_FUSION, Fusion, fuse_ops
from llmservingsim.model.mla import MlaOps
from llmservingsim.model.moe import MoeOps
from llmservingsim.model.op import Dims as Dims
from llmservingsim.model.op import Op as Op
from llmservingsim.model.op import OpBuilder
from llmservingsim.model.spec import DTYPE_BYTES, ModelSpec
from llmservingsim.model.spec import weight_only_quantized as weight_only_quantized


class ShardShape:
    """Per-device slice of the model for one tensor-parallel rank (a value: never changed)."""

    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_mlp: bool
    q_size: int  # q_heads * head_dim and kv_heads * head_dim (decode attention reads them
    kv_size: int  # every step)

    def __init__(
        self,
        hidden: int,
        q_heads: int,
        kv_heads: int,
        head_dim: int,
        intermediate: int,
        vocab: int,
        gated_mlp: bool,
    ) -> None:
        self.hidden = hidden
        self.q_heads = q_heads
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.intermediate = intermediate
        self.vocab = vocab
        self.gated_mlp = gated_mlp
        self.q_size = q_heads * head_dim
        self.kv_size = kv_heads * head_dim

    def __repr__(self) -> str:
        return (
            f"ShardShape(hidden={self.hidden}, q_heads={self.q_heads}, "
            f"kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
            f"intermediate={self.intermediate}, vocab={self.vocab}, gated_mlp={self.gated_mlp})"
        )


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


def kv_bytes_per_token_layer(spec: ModelSpec, tp: int, kv_dtype: str) -> float:
    """KV cache bytes one token adds to one layer on one TP rank. GQA: this rank's K and V
    heads; MLA: the whole latent, which every TP rank keeps a copy of (model/mla.py)."""
    if spec.uses_mla:
        return spec.mla_latent_size * DTYPE_BYTES[kv_dtype]
    return 2.0 * shard_shape(spec, tp).kv_size * DTYPE_BYTES[kv_dtype]


def attended_keys(new: int, ctx: int, window: int = 0) -> float:
    """Query-key pairs of causal attention for ``new`` tokens after ``ctx`` cached ones: the
    token at position p attends to p + 1 tokens, or with a sliding ``window`` (> 0) to the
    last min(p + 1, window), itself included. Full attention: new·(ctx + (new + 1)/2)."""
    if window <= 0 or ctx + new <= window:
        return new * (ctx + (new + 1) / 2)
    below = max(0, window - ctx)  # queries whose whole causal prefix fits in the window
    return below * (ctx + (below + 1) / 2) + (new - below) * window


def kv_tokens_read(new: int, ctx: int, window: int = 0) -> int:
    """Cached plus new tokens whose K and V a prefill chunk reads: all of them, or with a
    sliding ``window`` only those inside the first query's window onwards."""
    if window <= 0:
        return ctx + new
    return min(ctx, window - 1) + new


def chunk_pieces(new: int, ctx: int, chunk: int) -> list[tuple[int, int]]:
    """Chunked attention of ``new`` tokens after ``ctx`` cached ones, as causal attention per
    chunk: ``(new tokens, cached tokens before them in their chunk)`` for each chunk the new
    tokens reach (a token at position p attends positions ⌊p / chunk⌋·chunk..p)."""
    pieces = []
    start, end = ctx, ctx + new
    while start < end:
        first = start - start % chunk  # the chunk's first position
        stop = min(end, first + chunk)
        pieces.append((stop - start, start - first))
        start = stop
    return pieces


class OpGraph(OpBuilder):
    """Builds the ops of one layer / of the model head for a given batch on one TP rank.

    ``expert_parallel`` splits a MoE model's experts over that many of the TP ranks, or with
    ``data_parallel`` attention ranks over all of their devices (see model/moe.py for the
    layouts); ``moe_imbalance`` is the busiest expert's rows over the mean. ``fusion``: the
    kernels the serving engine fuses (model/fusion.py); the default is the elementwise kernel
    set the roofline was calibrated on, each its own.
    """

    def __init__(
        self,
        spec: ModelSpec,
        tp: int,
        dtype: str,
        kv_dtype: str,
        *,
        expert_parallel: int = 1,
        moe_imbalance: float = 1.0,
        data_parallel: int = 1,
        fusion: Fusion = DEFAULT_FUSION,
        fp4_tensor_cores: bool = False,
    ) -> None:
        super().__init__(spec, tp, dtype, kv_dtype, fusion, fp4_tensor_cores)
        self.shape = shard_shape(spec, tp)
        # Model-shape extensions (model/mla.py, model/moe.py).
        self.mla = MlaOps(self) if spec.uses_mla else None
        self.moe = (
            MoeOps(self, expert_parallel, moe_imbalance, data_parallel) if spec.is_moe else None
        )

    def attention_block_ops(self, num_tokens: int) -> list[Op]:
        """Norm, projections and rotary around attention, and the residual add after it."""
        if self.mla is not None:
            return self.fused(self.mla.block_ops(num_tokens))
        s, m = self.shape, num_tokens
        ops = [
            self.elementwise("input_layernorm", m, s.hidden, s.hidden),
            self.gemm("qkv_proj", m, s.q_size + 2 * s.kv_size, s.hidden),
            self.elementwise("rope", m, s.q_size + s.kv_size, s.q_size + s.kv_size),
            self.gemm("o_proj", m, s.hidden, s.q_size),
            self.elementwise("residual_add", m, 2 * s.hidden, s.hidden),
        ]
        return self.fused(ops)

    def fused(self, ops: list[Op]) -> list[Op]:
        """The kernels this engine launches for the unfused ``ops`` of one block."""
        return fuse_ops(ops, self.fusion, self.act_bytes, self.quant_bytes, self.tp)

    def dense_layer_ops(self, num_tokens: int) -> list[Op]:
        """Everything of one decoder layer except attention itself; depends only on M."""
        return self.attention_block_ops(num_tokens) + self.mlp_ops(num_tokens)

    def moe_layer_ops(self, num_tokens: int) -> list[Op]:
        """A MoE decoder layer except attention: the MLP is replaced by routed experts."""
        if self.moe is None:
            raise ValueError(f"{self.spec.name} has no experts")
        return self.attention_block_ops(num_tokens) + self.moe.ffn_ops(num_tokens)

    def layer_ops(self, num_tokens: int, moe: bool) -> list[Op]:
        return self.moe_layer_ops(num_tokens) if moe else self.dense_layer_ops(num_tokens)

    def mlp_ops(self, num_tokens: int) -> list[Op]:
        s, m = self.shape, num_tokens
        mlp_in = (2 if s.gated_mlp else 1) * s.intermediate
        ops = [
            self.elementwise("post_attention_layernorm", m, s.hidden, s.hidden),
            self.gemm("mlp_up_proj", m, mlp_in, s.hidden),
            self.elementwise("mlp_act", m, mlp_in, s.intermediate),
            self.gemm("mlp_down_proj", m, s.hidden, s.intermediate),
            self.elementwise("residual_add", m, 2 * s.hidden, s.hidden),
        ]
        return self.fused(ops)

    def prefill_attention(self, new: int, ctx: int, window: int = 0) -> Op:
        """Causal FlashAttention over ``new`` query tokens after ``ctx`` cached tokens; with a
        sliding ``window`` (> 0) only the band of the last ``window`` keys per query (the
        kernel skips the tiles outside it; tile rounding is not modelled)."""
        if self.mla is not None:
            return self.mla.prefill_attention(new, ctx)
        s = self.shape
        flops = 4.0 * attended_keys(new, ctx, window) * s.q_size
        traffic = (
            2.0 * new * s.q_size * self.act_bytes
            + 2.0 * kv_tokens_read(new, ctx, window) * s.kv_size * self.kv_bytes
        )
        dims: Dims = (("new", new), ("ctx", ctx), *self._head_dims())
        if window > 0:
            dims = (*dims, ("window", window))
        return Op("attention_prefill", "attention_prefill", flops, traffic, new, dims)

    def prefill_attention_ops(
        self, new: int, ctx: int, window: int = 0, chunk: int = 0
    ) -> list[Op]:
        """Every kernel of one sequence's prefill attention (MLA first expands its latent KV);
        ``window``: a sliding-window layer's (:meth:`prefill_attention`); ``chunk``: a
        chunked-attention layer's (Llama-4), whose block-diagonal causal mask is exactly
        causal attention within each chunk the new tokens reach (:func:`chunk_pieces`)."""
        if self.mla is not None:
            return self.mla.prefill_ops(new, ctx)
        if chunk > 0:
            return [self.prefill_attention(n, c) for n, c in chunk_pieces(new, ctx, chunk)]
        return [self.prefill_attention(new, ctx, window)]

    def decode_attention(self, num_seqs: int, total_ctx: int) -> Op:
        """Paged decode attention of a whole batch: reads every sequence's KV once."""
        if self.mla is not None:
            return self.mla.decode_attention(num_seqs, total_ctx)
        flops, traffic = self.decode_attention_work(num_seqs, total_ctx)
        dims = (("batch", num_seqs), ("context", total_ctx), *self._head_dims())
        return Op("attention_decode", "attention_decode", flops, traffic, num_seqs, dims)

    def decode_attention_work(self, num_seqs: int, total_ctx: int) -> tuple[float, float]:
        """FLOPs and bytes of the batch's decode-attention kernel itself (MLA: without its
        absorption GEMMs), for ``total_ctx`` tokens attended in all (a sliding-window layer:
        the sum of min(context, window) over the sequences, ``decode_local_context``). Timers
        use it to time that kernel without an Op (every step: typed, so the compiled build does
        native arithmetic)."""
        if self.mla is not None:
            return self.mla.decode_attention_work(num_seqs, total_ctx)
        s = self.shape
        flops = 4.0 * total_ctx * s.q_size
        traffic = (
            2.0 * total_ctx * s.kv_size * self.kv_bytes + 2.0 * num_seqs * s.q_size * self.act_bytes
        )
        return flops, traffic

    def decode_attention_ops(self, num_seqs: int, total_ctx: int) -> tuple[Op, ...]:
        """Every kernel of the batch's decode attention (MLA adds its weight-absorption GEMMs)."""
        if self.mla is not None:
            return self.mla.decode_ops(num_seqs, total_ctx)
        return (self.decode_attention(num_seqs, total_ctx),)

    def decode_io_bytes(self, num_seqs: int) -> tuple[float, float]:
        """Bytes into and out of decode attention for one layer: (queries + the new token's KV,
        outputs). What crosses the link when attention runs on another device (PIM)."""
        if self.mla is not None:
            return self.mla.decode_io_bytes(num_seqs)
        s = self.shape
        into = num_seqs * (s.q_size * self.act_bytes + 2 * s.kv_size * self.kv_bytes)
        return into, num_seqs * s.q_size * self.act_bytes

    def _head_dims(self) -> Dims:
        s = self.shape
        return (("q_heads", s.q_heads), ("kv_heads", s.kv_heads), ("head_dim", s.head_dim))

    def head_ops(self, num_tokens: int, num_sampled: int) -> list[Op]:
        """Embedding lookup, final norm and LM head (only for sequences that emit a token)."""
        return self.embedding_ops(num_tokens) + self.output_ops(num_sampled)

    def embedding_ops(self, num_tokens: int) -> list[Op]:
        """The part of :meth:`head_ops` that depends on the token count only."""
        s = self.shape
        return [self.elementwise("embedding", num_tokens, s.hidden, s.hidden)]

    def output_ops(self, num_sampled: int) -> list[Op]:
        """The part of :meth:`head_ops` that depends on the sampled sequences only."""
        s = self.shape
        ops = [self.elementwise("final_layernorm", num_sampled, s.hidden, s.hidden)]
        if num_sampled:
            # 16-bit weights and math in every quantized checkpoint (spec.sixteen_bit_groups)
            ops.append(self.gemm("lm_head", num_sampled, s.vocab, s.hidden))
            # Sampling reads the fp32 logits once (softmax + top-k/p), one kernel chain.
            sampling_bytes = 4.0 * num_sampled * s.vocab * 2
            dims = (("m", num_sampled), ("vocab", s.vocab))
            ops.append(Op("sampling", "memory", 0.0, sampling_bytes, num_sampled, dims))
        return ops

    def allreduce_bytes(self, num_tokens: int) -> float:
        """Activation all-reduced after attention and after the MLP (twice per layer)."""
        return num_tokens * self.shape.hidden * self.act_bytes
