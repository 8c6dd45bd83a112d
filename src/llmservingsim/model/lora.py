"""LoRA adapter shapes: which linears an adapter targets, their A/B matrices per TP rank.

Every targeted linear of every layer holds A (d_in × r) and B (r × d_out). Under tensor
parallelism a column-parallel linear (q, k, v, gate, up) keeps A whole and splits B, a
row-parallel one (o, down) splits A and keeps B whole (vLLM's sharded LoRA layers).
"""

from __future__ import annotations

from llmservingsim.config import LoraTarget
from llmservingsim.model.spec import ModelSpec, activation_bytes

ROW_PARALLEL: frozenset[LoraTarget] = frozenset({"o", "down"})
FUSED_GROUP: dict[LoraTarget, str] = {
    "q": "qkv",
    "k": "qkv",
    "v": "qkv",
    "o": "o",
    "gate": "gate_up",
    "up": "gate_up",
    "down": "down",
}


def linear_shapes(spec: ModelSpec, target: LoraTarget) -> tuple[int, int]:
    """(d_in, d_out) of a targeted linear, unsharded."""
    h, inter = spec.hidden_size, spec.intermediate_size
    shapes: dict[LoraTarget, tuple[int, int]] = {
        "q": (h, spec.q_size),
        "k": (h, spec.kv_size),
        "v": (h, spec.kv_size),
        "o": (spec.q_size, h),
        "gate": (h, inter),
        "up": (h, inter),
        "down": (inter, h),
    }
    return shapes[target]


def sharded_shapes(spec: ModelSpec, target: LoraTarget, tp: int) -> tuple[int, int]:
    """(d_in, d_out) one TP rank's A and B see: the sharded side split over ``tp``."""
    d_in, d_out = linear_shapes(spec, target)
    if target in ROW_PARALLEL:
        return max(1, d_in // tp), d_out
    return d_in, max(1, d_out // tp)


def adapter_bytes_per_device(
    spec: ModelSpec, targets: list[LoraTarget], rank: int, dtype: str, tp: int, layers: int
) -> float:
    """Bytes of one adapter of ``rank`` on one device (``layers``: the device's layers)."""
    per_layer = 0
    for target in targets:
        d_in, d_out = sharded_shapes(spec, target, tp)
        per_layer += rank * (d_in + d_out)
    return float(per_layer * layers) * lora_dtype_bytes(dtype)


def lora_dtype_bytes(dtype: str) -> float:
    """Adapters stay 16-bit under weight quantization (as in vLLM)."""
    return activation_bytes(dtype)
