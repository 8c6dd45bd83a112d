"""Device memory budget: what is left for the KV cache after weights and activations.

Mirrors vLLM's start-up accounting: the pool is
``memory · gpu_memory_utilization − weights − activation peak − reserved`` per device, and the
KV blocks are carved out of it. The breakdown is reported in summary.json so a user sees why
the cache is the size it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llmservingsim.hardware.device import GIB, DeviceSpec
from llmservingsim.model.ops import shard_shape
from llmservingsim.model.spec import DTYPE_BYTES, ModelSpec


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

    @property
    def kv_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def as_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()
        }
        out["kv_tokens"] = self.kv_tokens
        return out

    def describe(self) -> str:
        return (
            f"{self.device_memory_gib:.1f} GiB × utilization = {self.usable_gib:.1f} GiB usable; "
            f"weights {self.weights_gib:.1f} GiB, activations {self.activation_gib:.1f} GiB, "
            f"reserved {self.reserved_gib:.1f} GiB → KV cache {self.kv_cache_gib:.1f} GiB"
        )


def layers_per_stage(num_layers: int, pp: int) -> int:
    """Layers of the largest pipeline stage (stages split the layers as evenly as possible)."""
    return -(-num_layers // pp)


def weight_bytes_per_device(spec: ModelSpec, dtype: str, tp: int, pp: int = 1) -> float:
    """Weights of one device of the largest stage; KV-head projections are replicated when
    kv_heads < tp. With pipeline stages the first holds the embedding and the last the LM head,
    so the largest stage carries one vocabulary matrix."""
    shard = shard_shape(spec, tp)
    h = spec.hidden_size
    attention = h * (shard.q_size + 2 * shard.kv_size) + shard.q_size * h
    mlp = (3 if spec.gated_mlp else 2) * h * shard.intermediate
    per_layer = attention + mlp + 2 * h
    vocab_matrices = 1 if spec.tie_word_embeddings or pp > 1 else 2
    embeddings = vocab_matrices * shard.vocab * h
    layers = layers_per_stage(spec.num_layers, pp)
    return (layers * per_layer + embeddings + h) * DTYPE_BYTES[dtype]


def activation_peak_bytes(
    spec: ModelSpec, dtype: str, tp: int, max_batched_tokens: int, max_seqs: int
) -> float:
    """Peak of vLLM's profiling forward pass over ``max_batched_tokens`` tokens.

    Live at the MLP: the residual stream and normed input (hidden each, twice for safety with
    the attention output), the fused QKV output and the gate/up output, plus fp32 logits of
    ``max_seqs`` sampled rows.
    """
    shard = shard_shape(spec, tp)
    act = 2.0 if dtype in ("int8", "int4", "fp8") else DTYPE_BYTES[dtype]
    per_token = 4 * spec.hidden_size + shard.q_size + 2 * shard.kv_size + 2 * shard.intermediate
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
) -> MemoryPlan:
    """Memory breakdown of one device; ``num_blocks`` may be ≤ 0 when the model does not fit."""
    usable = device.memory_bytes * gpu_memory_utilization
    weights = weight_bytes_per_device(spec, dtype, tp, pp)
    activations = activation_peak_bytes(spec, dtype, tp, max_batched_tokens, max_seqs)
    reserved = device.reserved_memory_gib * GIB
    kv_pool = usable - weights - activations - reserved
    shard = shard_shape(spec, tp)
    layers = layers_per_stage(spec.num_layers, pp)
    kv_per_token = 2.0 * layers * shard.kv_size * DTYPE_BYTES[kv_dtype]
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
    )
