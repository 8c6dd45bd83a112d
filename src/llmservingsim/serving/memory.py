"""Device memory budget: what is left for the KV cache after weights and activations.

Mirrors vLLM's start-up accounting: the pool is
``memory · gpu_memory_utilization − weights − activation peak − reserved`` per device, and the
KV blocks are carved out of it. TensorRT-LLM takes its fraction of the memory still *free*
after weights and the profiled activation peak instead (``fraction_of="free"``:
``fraction · (memory − weights − activation peak − reserved)``; KvCacheConfig's
``free_gpu_memory_fraction``, ``_torch/pyexecutor/_util.py``
``KvCacheCreator._cal_max_memory``). The breakdown is reported in summary.json so a user sees
why the cache is the size it is.

Mixture-of-experts layers count every expert (all must sit in memory, split over the TP/EP
ranks); MLA layers cache one latent per token that every TP rank holds in full. With PIM
devices attached (perf/pim.py) the KV cache lives in their memory instead of the device's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import gcd

from llmservingsim.hardware.device import GIB, DeviceSpec
from llmservingsim.model.ops import kv_bytes_per_token_layer, shard_shape
from llmservingsim.model.spec import (
    DTYPE_BYTES,
    ModelSpec,
    activation_bytes,
    sixteen_bit_groups,
)


@dataclass(frozen=True)
class MemoryPlan:
    device_memory_gib: float
    usable_gib: float
    weights_gib: float
    activation_gib: float
    reserved_gib: float
    kv_cache_gib: float
    kv_bytes_per_token: float
    block_size: int
    num_blocks: int
    kv_cache_on: str = "device"  # or "pim": the KV pool is the PIM devices' memory
    draft_gib: float = 0.0  # speculative proposer weights (draft model or head)
    lora_gib: float = 0.0  # LoRA adapter slots (max_loras × max_lora_rank)
    # Sliding-window KV (gpt-oss, :func:`sliding_kv_layout`): a block holds ``block_size``
    # tokens of a group of layers; each ``block_size`` tokens of a sequence take
    # ``kv_full_units`` blocks for its full-attention layers and, up to ``kv_sliding_blocks``
    # token blocks, ``kv_sliding_units`` for its sliding-window layers. Without sliding-window
    # KV a block holds every layer: 1, 0, 0.
    kv_full_units: int = 1
    kv_sliding_units: int = 0
    kv_sliding_blocks: int = 0
    # What the utilization is a fraction of: the device's memory ("total", vLLM's
    # gpu_memory_utilization) or what weights and activations leave free ("free", TensorRT-LLM's
    # free_gpu_memory_fraction). ``usable_gib`` is then what the KV cache and the rest may take.
    fraction_of: str = "total"

    @property
    def kv_tokens(self) -> int:
        """Tokens of context the pool holds for the full-attention layers (every layer when
        there is no sliding-window KV); each sequence's sliding-window layers take at most
        ``kv_sliding_units × kv_sliding_blocks`` blocks besides."""
        return self.num_blocks // self.kv_full_units * self.block_size

    def as_dict(self) -> dict[str, float | int]:
        # Draft, LoRA and sliding-window entries are listed only when they apply, so a plain
        # run's breakdown keeps its keys.
        optional: dict[str, object] = {"draft_gib": 0.0, "lora_gib": 0.0, "kv_sliding_units": 0}
        optional |= {"kv_full_units": 1, "kv_sliding_blocks": 0, "fraction_of": "total"}
        out: dict[str, float | int] = {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in asdict(self).items()
            if not (k in optional and v == optional[k])
        }
        out["kv_tokens"] = self.kv_tokens
        return out

    def describe(self) -> str:
        where = " (in PIM memory)" if self.kv_cache_on == "pim" else ""
        if self.fraction_of == "free":
            free = self.device_memory_gib - (self.usable_gib - self.kv_cache_gib)
            return (
                f"{self.device_memory_gib:.1f} GiB; weights {self.weights_gib:.1f} GiB, "
                f"activations {self.activation_gib:.1f} GiB, reserved {self.reserved_gib:.1f} GiB"
                f"{self._extras()} → {free:.1f} GiB free × fraction = KV cache{where} "
                f"{self.kv_cache_gib:.1f} GiB"
            )
        return (
            f"{self.device_memory_gib:.1f} GiB × utilization = {self.usable_gib:.1f} GiB usable; "
            f"weights {self.weights_gib:.1f} GiB, activations {self.activation_gib:.1f} GiB, "
            f"reserved {self.reserved_gib:.1f} GiB{self._extras()} → KV cache{where} "
            f"{self.kv_cache_gib:.1f} GiB"
        )

    def _extras(self) -> str:
        extras = ""
        if self.draft_gib:
            extras += f", speculative draft {self.draft_gib:.2f} GiB"
        if self.lora_gib:
            extras += f", LoRA slots {self.lora_gib:.2f} GiB"
        return extras


@dataclass(frozen=True)
class PimMemory:
    """PIM devices attached to an instance: they hold its KV cache."""

    device: DeviceSpec
    count: int


def layers_per_stage(num_layers: int, pp: int) -> int:
    """Layers of the largest pipeline stage (stages split the layers as evenly as possible)."""
    return -(-num_layers // pp)


def stage_bounds(num_layers: int, pp: int) -> list[tuple[int, int]]:
    """[first, end) layer indices of each stage; the first ``num_layers % pp`` take one more."""
    base, extra = divmod(num_layers, pp)
    bounds, start = [], 0
    for i in range(pp):
        end = start + base + (i < extra)
        bounds.append((start, end))
        start = end
    return bounds


def sliding_kv_layout(spec: ModelSpec, pp: int, block_size: int) -> tuple[int, int, int, int]:
    """How a stage's KV splits when sliding-window layers keep only their window, as vLLM's
    hybrid KV cache manager does (docs/models.md): ``(layers per block, full units, sliding
    units, sliding token blocks)``.

    The full-attention and the sliding-window layers of the stage with the most of each form
    groups of ``g = gcd(full, sliding)`` layers; a block is ``block_size`` tokens of one group
    (vLLM: one page size for all groups), so each ``block_size`` tokens of a sequence take
    ``full / g`` blocks, plus ``sliding / g`` while the sequence is within
    ``ceil((window − 1) / block_size) + 1`` token blocks: what vLLM's sliding-window manager
    holds at most in decode (the window's blocks and the one the next token opens before the
    oldest is freed). Without sliding-window layers: ``(layers, 1, 0, 0)``.
    """
    bounds = stage_bounds(spec.num_layers, pp)
    sliding = max(sum(spec.is_sliding_layer(i) for i in range(a, b)) for a, b in bounds)
    if not spec.has_sliding_layers or sliding == 0:
        return layers_per_stage(spec.num_layers, pp), 1, 0, 0
    full = max(sum(not spec.is_sliding_layer(i) for i in range(a, b)) for a, b in bounds)
    group = gcd(full, sliding)
    cap = -(-(spec.sliding_window - 1) // block_size) + 1
    return group, full // group, sliding // group, cap


def attention_params_per_device(spec: ModelSpec, tp: int) -> int:
    """Attention weights of one TP rank (GQA: KV heads replicated when kv_heads < tp; MLA: the
    low-rank down-projections replicated, the per-head up-projections split)."""
    h = spec.hidden_size
    if not spec.uses_mla:
        shard = shard_shape(spec, tp)
        return h * (shard.q_size + 2 * shard.kv_size) + shard.q_size * h
    heads = max(1, spec.num_heads // tp)
    latent = spec.mla_latent_size
    if spec.q_lora_rank:
        q = h * (spec.q_lora_rank + latent) + spec.q_lora_rank * (1 + heads * spec.head_dim)
    else:
        q = h * (heads * spec.head_dim + latent)
    kv_b = spec.kv_lora_rank * (1 + heads * (spec.qk_nope_head_dim + spec.value_head_dim))
    return q + kv_b + heads * spec.value_head_dim * h


def moe_params_per_device(spec: ModelSpec, tp: int, ep: int = 1, dp: int = 1) -> int:
    """Router (replicated), this rank's experts — E/EP whole experts, each split over the
    DP·TP/EP devices that share it — and its slice of the shared experts (TP-sharded inside an
    attention DP rank, like the dense layers)."""
    h = spec.hidden_size
    local_experts = spec.num_experts // ep
    expert_inter = max(1, spec.moe_intermediate_size // max(1, tp * dp // ep))
    shared = max(1, spec.shared_intermediate_size // tp) if spec.shared_intermediate_size else 0
    return spec.num_experts * h + local_experts * 3 * h * expert_inter + 3 * h * shared


def weight_bytes_per_device(
    spec: ModelSpec, dtype: str, tp: int, pp: int = 1, ep: int = 1, dp: int = 1
) -> float:
    """Weights of one device of the heaviest stage; KV-head projections are replicated when
    kv_heads < tp. With pipeline stages the first holds the embedding and the last the LM head,
    so the largest stage carries one vocabulary matrix. Quantized checkpoints (fp8, fp4, int8,
    int4, mxfp4) keep the embeddings, the LM head and the MoE router in 16-bit, and so the
    layers a checkpoint leaves unquantized (gpt-oss's MXFP4 attention;
    spec.sixteen_bit_groups). With ``dp`` attention DP ranks the attention,
    dense layers and vocabulary are per rank (split over its TP devices) and the routed
    experts over all DP × TP devices."""
    shard = shard_shape(spec, tp)
    h = spec.hidden_size
    wb = DTYPE_BYTES[dtype]
    sixteen = sixteen_bit_groups(spec, dtype)
    attention = attention_params_per_device(spec, tp) * (2.0 if "attention" in sixteen else wb)
    mlp = (3 if spec.gated_mlp else 2) * h * shard.intermediate
    per_layer = attention + (mlp + 2 * h) * wb
    vocab_matrices = 1 if spec.tie_word_embeddings or pp > 1 else 2
    embeddings = vocab_matrices * shard.vocab * h
    if spec.is_moe:
        # moe_params counts the router at ``wb``; a 16-bit one adds the difference
        router_16bit = spec.num_experts * h * (2.0 - wb) if "router" in sixteen else 0.0
        moe_layer = (
            attention + (moe_params_per_device(spec, tp, ep, dp) + 2 * h) * wb + router_16bit
        )
        layer_bytes = max(
            sum(moe_layer if spec.is_moe_layer(i) else per_layer for i in range(first, end))
            for first, end in stage_bounds(spec.num_layers, pp)
        )
    else:
        layer_bytes = layers_per_stage(spec.num_layers, pp) * per_layer
    # embeddings and LM head: 16-bit in a quantized checkpoint, else the model's dtype
    return layer_bytes + h * wb + embeddings * activation_bytes(dtype)


def activation_peak_bytes(
    spec: ModelSpec,
    dtype: str,
    tp: int,
    max_batched_tokens: int,
    max_seqs: int,
    ep: int = 1,
    dp: int = 1,
) -> float:
    """Peak of vLLM's profiling forward pass over ``max_batched_tokens`` tokens.

    Live at the MLP: the residual stream and normed input (hidden each, twice for safety with
    the attention output), the fused QKV output and the gate/up output, plus fp32 logits of
    ``max_seqs`` sampled rows. A MoE layer's fused kernel instead keeps its gate/up, activation
    and output rows for every (token, expert) pair it computes — with ``dp`` attention ranks
    those of every rank's tokens routed to it; MLA's projections replace QKV.
    """
    shard = shard_shape(spec, tp)
    act = activation_bytes(dtype)
    if spec.uses_mla:
        heads = max(1, spec.num_heads // tp)
        projections = spec.q_lora_rank + spec.mla_latent_size + heads * spec.head_dim
    else:
        projections = shard.q_size + 2 * shard.kv_size
    mlp: float = 2 * shard.intermediate
    if spec.is_moe:
        inter = max(1, spec.moe_intermediate_size // max(1, tp * dp // ep))
        rows_per_token = spec.experts_per_token * dp / ep
        moe = rows_per_token * (3 * inter + spec.hidden_size)
        mlp = max(moe, mlp) if spec.num_moe_layers < spec.num_layers else moe
    per_token = 4 * spec.hidden_size + projections + mlp
    logits = max_seqs * shard.vocab * 4.0
    return max_batched_tokens * per_token * act + logits


def plan_memory(
    spec: ModelSpec,
    device: DeviceSpec,
    *,
    dtype: str,
    kv_dtype: str,
    tp: int,
    pp: int = 1,
    block_size: int,
    gpu_memory_utilization: float,
    max_batched_tokens: int,
    max_seqs: int,
    ep: int = 1,
    dp: int = 1,
    pim: PimMemory | None = None,
    draft_weight_bytes: float = 0.0,
    draft_kv_bytes_per_token: float = 0.0,
    lora_bytes: float = 0.0,
    sliding_kv: bool = False,
    fraction_of: str = "total",
) -> MemoryPlan:
    """Memory breakdown of one device; ``num_blocks`` may be ≤ 0 when the model does not fit.
    With ``dp`` attention DP ranks each rank's devices hold that rank's KV cache: ``num_blocks``
    is per rank.

    With ``pim`` the KV cache of the whole instance (every layer and head, once) lives in the
    PIM devices' memory, and the device only has to hold weights and activations.

    A speculative draft model (or head) takes its weights and, per token, its own KV next to
    the target's; reserved LoRA adapter slots (``lora_bytes``) come off the pool up front.

    ``sliding_kv``: sliding-window layers keep only their window's KV (:func:`sliding_kv_layout`;
    the caller rules out a draft's KV and PIM, whose blocks hold every layer).

    ``fraction_of``: ``gpu_memory_utilization`` is a share of the device's memory ("total",
    vLLM, SGLang) or of what is free once weights, activations, the reserved memory, a draft
    and LoRA slots are in ("free", TensorRT-LLM)."""
    weights = weight_bytes_per_device(spec, dtype, tp, pp, ep, dp)
    activations = activation_peak_bytes(spec, dtype, tp, max_batched_tokens, max_seqs, ep, dp)
    reserved = device.reserved_memory_gib * GIB
    if fraction_of == "total":
        usable = device.memory_bytes * gpu_memory_utilization
    elif fraction_of == "free":
        used = weights + activations + reserved + draft_weight_bytes + lora_bytes
        usable = device.memory_bytes - (1.0 - gpu_memory_utilization) * (device.memory_bytes - used)
    else:
        raise ValueError(f"fraction_of must be 'total' or 'free', not {fraction_of!r}")
    kv_pool = usable - weights - activations - reserved - draft_weight_bytes - lora_bytes
    if pim is not None and fraction_of == "free":
        raise ValueError("a KV cache in PIM memory is a share of the PIM memory, never 'free'")
    if sliding_kv and (pim is not None or draft_kv_bytes_per_token):
        raise ValueError("sliding-window KV blocks hold no draft KV and do not live in PIM")
    layers, full_units, sliding_units, sliding_blocks = (
        sliding_kv_layout(spec, pp, block_size)
        if sliding_kv
        else (layers_per_stage(spec.num_layers, pp), 1, 0, 0)
    )
    kv_per_token = layers * kv_bytes_per_token_layer(spec, tp, kv_dtype) + draft_kv_bytes_per_token
    if pim is not None and kv_pool > 0:
        per_pim = pim.device.memory_bytes * gpu_memory_utilization
        kv_pool = pim.count * (per_pim - pim.device.reserved_memory_gib * GIB)
        kv_per_token = spec.kv_bytes_per_token(kv_dtype)
    num_blocks = int(kv_pool // (kv_per_token * block_size)) if kv_pool > 0 else 0
    return MemoryPlan(
        device_memory_gib=device.memory_gib,
        usable_gib=usable / GIB,
        weights_gib=weights / GIB,
        activation_gib=activations / GIB,
        reserved_gib=reserved / GIB,
        kv_cache_gib=kv_pool / GIB,
        kv_bytes_per_token=kv_per_token,
        block_size=block_size,
        num_blocks=num_blocks,
        kv_cache_on="device" if pim is None else "pim",
        draft_gib=draft_weight_bytes / GIB,
        lora_gib=lora_bytes / GIB,
        kv_full_units=full_units,
        kv_sliding_units=sliding_units,
        kv_sliding_blocks=sliding_blocks,
        fraction_of=fraction_of,
    )
