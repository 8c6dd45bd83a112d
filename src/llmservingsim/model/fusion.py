"""Which kernels a serving engine fuses, and what that does to the op list of a layer.

The default op list (:data:`DEFAULT_FUSION`) is the kernel set the roofline efficiencies were
fitted on (Vidur's profiles, docs/calibration.md §1): RMSNorm, rotary, SwiGLU and the residual
add each their own kernel (fp8 models: inputs quantized by their producer). Serving engines
launch fewer kernels (docs/engines.md, "Kernel fusion"):

* ``rope_in_attention``: the attention kernel applies rotary to q and k as it loads them
  (TensorRT-LLM's fused RoPE): no rope kernel and no extra HBM traffic.
* ``residual_into_norm``: the residual add runs inside the next RMSNorm (vLLM's
  ``fused_add_rms_norm``, SGLang, TensorRT-LLM): no residual_add kernel; the norm also reads
  the residual and writes the new one.
* ``quant_into_producer``: for W8A8 fp8 models, the kernel that produces a GEMM's input (the
  norm, the activation) writes it in fp8; without it, a separate quantization kernel reads the
  16-bit activations and writes fp8 before every quantized GEMM (vLLM 0.6's
  ``scaled_fp8_quant``).
* ``norm_into_allreduce``: under tensor parallelism the all-reduce after attention and after
  the MLP / MoE block also adds the residual and applies the next RMSNorm (TensorRT-LLM's
  ``AllReduceFusionOp.RESIDUAL_RMS_NORM``, vLLM's and SGLang's FlashInfer all-reduce fusion):
  no kernel of their own for the two residual norms of a layer (after an expert-parallel MoE
  block, whose exchange the simulator times as all-to-all + all-gather, too: TensorRT-LLM
  all-reduces there). The fused all-reduce is timed as the plain one (network/collectives.py):
  at decode sizes it is bound by its latency, at prefill sizes by the links, and the norm's
  HBM traffic hides under either.
"""

from __future__ import annotations

from llmservingsim.model.op import DEFAULT_FUSION as DEFAULT_FUSION
from llmservingsim.model.op import Fusion as Fusion
from llmservingsim.model.op import Op, is_sixteen_bit

# The norms that follow a residual add (the input norm of a layer takes the previous layer's
# MLP add; the last layer's add goes into the final norm, one per layer either way).
RESIDUAL_NORMS = frozenset(("input_layernorm", "post_attention_layernorm"))

# W8A8 GEMMs of a layer -> the op that writes their input (None: attention, outside the
# layer's op list, whose output write is left as it is). The LM head and the router stay 16-bit;
# the routed experts quantize inside the fused-MoE kernel (model/moe.py) and are not listed;
# GEMMs the checkpoint keeps in 16 bits (model/op.py SIXTEEN_BIT_DIM) take 16-bit inputs.
QUANTIZED_GEMMS: dict[str, str | None] = {
    "qkv_proj": "input_layernorm",
    "o_proj": None,
    "mlp_up_proj": "post_attention_layernorm",
    "mlp_down_proj": "mlp_act",
    "shared_up_proj": "post_attention_layernorm",
    "shared_down_proj": "shared_act",
    "mla_qkv_a_proj": "input_layernorm",
    "mla_q_proj": "input_layernorm",
    "mla_kv_a_proj": "input_layernorm",
    "mla_q_b_proj": "mla_q_a_layernorm",
}

ACT_QUANT = "act_quant"
FUSED_DIM = "fused_row_bytes"
"""Dim of a fused kernel: the bytes per row it moves for the kernel fused into it (the
residual stream of a fused add + RMSNorm), which the roofline streams at the device's memory
efficiency instead of the host kernel's own (hardware/backends/roofline.py)."""


def fused_bytes(op: Op) -> float:
    """Bytes ``op`` moves for a kernel fused into it (0 for a plain kernel)."""
    for key, value in op.dims:
        if key == FUSED_DIM:
            return float(value) * op.m
    return 0.0


def fuse_ops(
    ops: list[Op], fusion: Fusion, act_bytes: float, quant_bytes: float, tp: int = 1
) -> list[Op]:
    """The kernels an engine with ``fusion`` launches for the unfused ``ops`` of one block of a
    ``tp``-way tensor-parallel rank.

    ``quant_bytes`` > 0: the model's GEMMs take activations of that size (W8A8), quantized from
    ``act_bytes`` by a separate kernel or by their producer.
    """
    quantized = 0.0 < quant_bytes < act_bytes
    into_allreduce = fusion.norm_into_allreduce and tp > 1
    if not (fusion.rope_in_attention or fusion.residual_into_norm or quantized or into_allreduce):
        return ops
    out: list[Op] = []
    narrowed: set[str] = set()
    for op in ops:
        name = op.name
        if name == "rope" and fusion.rope_in_attention:
            continue
        if name == "residual_add" and (fusion.residual_into_norm or into_allreduce):
            continue
        if name in RESIDUAL_NORMS and into_allreduce:
            continue
        if name in RESIDUAL_NORMS and fusion.residual_into_norm:
            op = _with_residual(op, act_bytes)
        if quantized and op.kind == "gemm" and name in QUANTIZED_GEMMS and not is_sixteen_bit(op):
            k = op.dim("k")
            producer = QUANTIZED_GEMMS[name]
            if not fusion.quant_into_producer:
                out.append(act_quant(op.m, k, act_bytes, quant_bytes))
            elif producer is not None and producer not in narrowed:
                _narrow_output(out, producer, k, act_bytes - quant_bytes)
                narrowed.add(producer)
            op = op.replaced(bytes=op.bytes - op.m * k * (act_bytes - quant_bytes))
        out.append(op)
    return out


def act_quant(m: int, k: int, act_bytes: float, quant_bytes: float) -> Op:
    """Quantize ``m`` rows of ``k`` 16-bit activations: read them, write the quantized copy."""
    return Op(ACT_QUANT, "memory", 0.0, m * k * (act_bytes + quant_bytes), m, (("m", m), ("k", k)))


def _with_residual(op: Op, act_bytes: float) -> Op:
    """A norm that also adds the residual: reads it and writes the new residual (one row of
    ``hidden`` each more than the plain norm, whose own read is the sublayer's output)."""
    hidden = op.dim("read")
    row = int(2 * hidden * act_bytes)
    dims = (*op.dims, (FUSED_DIM, row))
    return Op(op.name, op.kind, op.flops, op.bytes + op.m * row, op.m, dims)


def _narrow_output(ops: list[Op], producer: str, k: int, saved_per_element: float) -> None:
    """The last ``producer`` op in ``ops`` writes its ``k``-wide output quantized."""
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        if op.name == producer:
            ops[i] = op.replaced(bytes=op.bytes - op.m * k * saved_per_element)
            return
