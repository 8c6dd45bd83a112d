"""Multi-head latent attention (DeepSeek-V2/V3) ops for one tensor-parallel rank.

MLA caches one compressed latent per token and layer — ``kv_lora_rank`` values plus a
``qk_rope_head_dim`` rotary key shared by all heads — instead of K and V per head. Serving
engines (vLLM, SGLang) run it two ways:

* prefill: the latent of the chunk and of its cached context is expanded back to per-head K
  and V by ``kv_b_proj``, then ordinary causal attention runs with query/key heads of
  ``qk_nope + qk_rope`` and value heads of ``v_head_dim``;
* decode: the up-projections are *absorbed* — the query is multiplied into latent space
  (``q_absorb``), attention reads the latent directly (FLOPs over the latent width, bytes =
  one latent per cached token, like multi-query attention), and the output goes back through
  the value up-projection (``v_absorb``).

Heads are split over TP ranks, but the latent has no head axis: vLLM keeps a full copy of it on
every rank, so the MLA KV cache is *not* sharded by tensor parallelism (which is why DeepSeek
deployments prefer data-parallel attention). The low-rank down-projections are replicated too.
"""

from __future__ import annotations

from llmservingsim.model.op import Op, OpBuilder


class MlaOps:
    def __init__(self, graph: OpBuilder) -> None:
        spec = graph.spec
        self.graph = graph
        self.heads = max(1, spec.num_heads // graph.tp)
        self.hidden = spec.hidden_size
        self.qk_dim = spec.head_dim
        self.nope_dim = spec.qk_nope_head_dim
        self.rope_dim = spec.qk_rope_head_dim
        self.v_dim = spec.value_head_dim
        self.kv_lora = spec.kv_lora_rank
        self.latent = spec.mla_latent_size
        self.q_lora = spec.q_lora_rank

    def block_ops(self, m: int) -> list[Op]:
        """Norm, low-rank projections, rotary, output projection and the residual add."""
        g, h = self.graph, self.hidden
        q_out = self.heads * self.qk_dim
        ops = [g.elementwise("input_layernorm", m, h, h)]
        if self.q_lora:
            # One fused GEMM makes the query and KV latents; replicated on every TP rank.
            ops.append(g.gemm("mla_qkv_a_proj", m, self.q_lora + self.latent, h))
            ops.append(g.elementwise("mla_q_a_layernorm", m, self.q_lora, self.q_lora))
            ops.append(g.gemm("mla_q_b_proj", m, q_out, self.q_lora))
        else:
            ops.append(g.gemm("mla_q_proj", m, q_out, h))
            ops.append(g.gemm("mla_kv_a_proj", m, self.latent, h))
        rotary = self.heads * self.rope_dim + self.rope_dim
        ops += [
            g.elementwise("mla_kv_a_layernorm", m, self.kv_lora, self.kv_lora),
            g.elementwise("rope", m, rotary, rotary),
            g.gemm("o_proj", m, h, self.heads * self.v_dim),
            g.elementwise("residual_add", m, 2 * h, h),
        ]
        return ops

    # ------------------------------------------------------------------ prefill

    def prefill_attention(self, new: int, ctx: int) -> Op:
        """Causal attention on expanded heads: scores over qk_dim, values over v_dim."""
        act = self.graph.act_bytes
        per_head = self.qk_dim + self.v_dim
        flops = 2.0 * new * (ctx + (new + 1) / 2) * self.heads * per_head
        traffic = (new + ctx + new) * self.heads * per_head * act
        dims = (
            ("new", new),
            ("ctx", ctx),
            ("q_heads", self.heads),
            ("kv_heads", self.heads),
            ("head_dim", self.qk_dim),
        )
        return Op("attention_prefill", "attention_prefill", flops, traffic, new, dims)

    def prefill_ops(self, new: int, ctx: int) -> list[Op]:
        """Expand the latent of context + chunk to per-head K/V, then attend."""
        expand = self.graph.gemm(
            "mla_kv_b_proj", ctx + new, self.heads * (self.nope_dim + self.v_dim), self.kv_lora
        )
        return [expand, self.prefill_attention(new, ctx)]

    # ------------------------------------------------------------------ decode

    def _absorb(self, name: str, batch: int, n: int, k: int) -> Op:
        """Per-head batched GEMM (batch × k) · (k × n) for every local head."""
        g = self.graph
        flops = 2.0 * batch * self.heads * n * k
        # kv_b_proj's weights: 16-bit where the checkpoint keeps attention so
        weight_bytes, dims = g.weights(name, (("m", batch), ("n", n), ("k", k)))
        traffic = self.heads * n * k * weight_bytes + batch * self.heads * (n + k) * g.act_bytes
        return Op(name, "gemm", flops, traffic, batch, dims)

    def decode_attention_work(self, num_seqs: int, total_ctx: int) -> tuple[float, float]:
        """FLOPs and bytes of :meth:`decode_attention`."""
        g = self.graph
        flops = 2.0 * total_ctx * self.heads * (self.latent + self.kv_lora)
        traffic = (
            total_ctx * self.latent * g.kv_bytes
            + num_seqs * self.heads * (self.latent + self.kv_lora) * g.act_bytes
        )
        return flops, traffic

    def decode_attention(self, num_seqs: int, total_ctx: int) -> Op:
        """Absorbed attention over the cached latents: every head reads the same latent."""
        flops, traffic = self.decode_attention_work(num_seqs, total_ctx)
        dims = (
            ("batch", num_seqs),
            ("context", total_ctx),
            ("q_heads", self.heads),
            ("kv_heads", 1),
            ("head_dim", self.latent),
        )
        return Op("attention_decode", "attention_decode", flops, traffic, num_seqs, dims)

    def decode_ops(self, num_seqs: int, total_ctx: int) -> tuple[Op, ...]:
        return (
            self._absorb("mla_q_absorb", num_seqs, self.kv_lora, self.nope_dim),
            self.decode_attention(num_seqs, total_ctx),
            self._absorb("mla_v_absorb", num_seqs, self.v_dim, self.kv_lora),
        )

    def decode_io_bytes(self, num_seqs: int) -> tuple[float, float]:
        """Absorbed queries + the new latent in, latent-space outputs back."""
        g = self.graph
        into = num_seqs * (self.heads * self.latent * g.act_bytes + self.latent * g.kv_bytes)
        return into, num_seqs * self.heads * self.kv_lora * g.act_bytes
