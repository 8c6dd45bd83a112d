"""One kernel of an iteration (:class:`Op`), and what builds the common ones from a model's
shapes on one tensor-parallel rank (:class:`OpBuilder`): the dense op graph (model/ops.py) and
the model-shape extensions (model/mla.py, model/moe.py) all build on it."""

from __future__ import annotations

from llmservingsim.model.spec import (
    DTYPE_BYTES,
    ModelSpec,
    activation_bytes,
    gemm_dtype,
    sixteen_bit_groups,
)

Dims = tuple[tuple[str, int], ...]

SIXTEEN_BIT_DIM = "weights_16bit"
"""Dim (value 1) of a GEMM whose weights a quantized checkpoint leaves in 16 bits (gpt-oss's
attention under MXFP4; the LM head and MoE router of every quantized dtype): it reads 16-bit
weights and computes in 16 bits whatever the model's dtype (spec.sixteen_bit_groups); the
roofline and kernel_db backends time it on their 16-bit GEMM curve or table, the external one
asks for it in bf16, and no activation quantization precedes it. The analytic NPU backends
(systolic, scalesim) and the energy model time and charge it as the run's dtype."""

# GEMM name -> its group of linear layers (attention, router, lm_head: the groups a checkpoint
# may leave unquantized, spec.sixteen_bit_groups); MLA's projections (``mla_*``) are attention.
GEMM_GROUPS: dict[str, str] = {
    "qkv_proj": "attention",
    "o_proj": "attention",
    "moe_router": "router",
    "lm_head": "lm_head",
}


def gemm_group(name: str) -> str:
    """The group of linear layers a GEMM named ``name`` belongs to ("" for the others)."""
    group = GEMM_GROUPS.get(name)
    if group is not None:
        return group
    return "attention" if name.startswith("mla_") else ""


def is_sixteen_bit(op: Op) -> bool:
    """Whether ``op`` is a GEMM the checkpoint keeps in 16 bits (:data:`SIXTEEN_BIT_DIM`)."""
    return any(key == SIXTEEN_BIT_DIM for key, _ in op.dims)


def with_sixteen_bit(dims: Dims) -> Dims:
    """``dims`` of a GEMM marked as reading 16-bit weights (:data:`SIXTEEN_BIT_DIM`)."""
    return (*dims, (SIXTEEN_BIT_DIM, 1))


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
    m: int
    dims: Dims

    def __init__(
        self,
        name: str,
        kind: str,
        flops: float,
        bytes: float,
        m: int = 1,
        dims: Dims = (),
    ) -> None:
        self.name = name
        self.kind = kind
        self.flops = flops
        self.bytes = bytes
        self.m = m
        self.dims = dims

    def __repr__(self) -> str:
        return (
            f"Op("
            f"name={self.name!r}, "
            f"kind={self.kind!r}, "
            f"flops={self.flops!r}, "
            f"bytes={self.bytes!r}, "
            f"m={self.m!r}, "
            f"dims={self.dims!r}"
            ")"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Op):
            return NotImplemented
        return (self.name, self.kind, self.flops, self.bytes, self.m, self.dims) == (
            other.name,
            other.kind,
            other.flops,
            other.bytes,
            other.m,
            other.dims,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.kind, self.flops, self.bytes, self.m, self.dims))

    def replaced(
        self, *, name: str | None = None, flops: float | None = None, bytes: float | None = None
    ) -> Op:
        """A copy with the given fields changed (an Op is a value: never changed in place)."""
        return Op(
            self.name if name is None else name,
            self.kind,
            self.flops if flops is None else flops,
            self.bytes if bytes is None else bytes,
            self.m,
            self.dims,
        )

    def dim(self, name: str) -> int:
        for key, value in self.dims:
            if key == name:
                return value
        raise KeyError(f"op {self.name!r} has no dim {name!r} (dims: {self.dims})")


class Fusion:
    """The kernels one serving engine fuses (model/fusion.py; a value: never changed)."""

    rope_in_attention: bool
    residual_into_norm: bool
    quant_into_producer: bool
    norm_into_allreduce: bool

    def __init__(
        self,
        rope_in_attention: bool = False,
        residual_into_norm: bool = False,
        quant_into_producer: bool = True,
        norm_into_allreduce: bool = False,
    ) -> None:
        self.rope_in_attention = rope_in_attention
        self.residual_into_norm = residual_into_norm
        self.quant_into_producer = quant_into_producer
        self.norm_into_allreduce = norm_into_allreduce

    def __repr__(self) -> str:
        return (
            f"Fusion(rope_in_attention={self.rope_in_attention}, "
            f"residual_into_norm={self.residual_into_norm}, "
            f"quant_into_producer={self.quant_into_producer}, "
            f"norm_into_allreduce={self.norm_into_allreduce})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fusion):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[bool, bool, bool, bool]:
        return (
            self.rope_in_attention,
            self.residual_into_norm,
            self.quant_into_producer,
            self.norm_into_allreduce,
        )


# Without an engine: the elementwise kernels the roofline was calibrated on, each its own
# (docs/calibration.md §1), and fp8 inputs quantized by their producer, as the current engines
# do (vLLM V1, TensorRT-LLM); vLLM 0.6 and SGLang run separate quantization kernels.
DEFAULT_FUSION = Fusion()


# Bytes of one activation element that GEMMs computed in fp8 read (fp8 checkpoints quantize
# activations too, as MXFP4 ones do to MXFP8 on FP4 tensor cores; model/fusion.py adds the
# kernels that do it).
ACTIVATION_QUANT_BYTES: dict[str, float] = {"fp8": 1.0}


class OpBuilder:
    """GEMMs and element-wise ops of one TP rank of ``spec`` in ``dtype``, with its KV cache in
    ``kv_dtype``, for an engine that fuses ``fusion`` (model/fusion.py applies it), on a device
    with or without FP4 tensor cores (``fp4_tensor_cores``: which dtype GEMMs compute in,
    :func:`~llmservingsim.model.spec.gemm_dtype`)."""

    def __init__(
        self,
        spec: ModelSpec,
        tp: int,
        dtype: str,
        kv_dtype: str,
        fusion: Fusion = DEFAULT_FUSION,
        fp4_tensor_cores: bool = False,
    ) -> None:
        self.spec = spec
        self.tp = tp
        self.weight_bytes = DTYPE_BYTES[dtype]
        self.act_bytes = activation_bytes(dtype)
        self.kv_bytes = DTYPE_BYTES[kv_dtype]
        self.fusion = fusion
        self.quant_bytes = ACTIVATION_QUANT_BYTES.get(gemm_dtype(dtype, fp4_tensor_cores), 0.0)
        self.sixteen_bit = sixteen_bit_groups(spec, dtype)

    def weights(self, name: str, dims: Dims, sixteen_bit: bool | None = None) -> tuple[float, Dims]:
        """(bytes per weight, dims) of the GEMM named ``name``: 16-bit and marked when the
        checkpoint keeps its group so (spec.sixteen_bit_groups, :func:`gemm_group`) or, given,
        as ``sixteen_bit`` says; else the model's weight bytes and ``dims`` unchanged."""
        if sixteen_bit is None:
            sixteen_bit = gemm_group(name) in self.sixteen_bit
        if sixteen_bit:
            return 2.0, with_sixteen_bit(dims)
        return self.weight_bytes, dims

    def gemm(self, name: str, m: int, n: int, k: int, sixteen_bit: bool | None = None) -> Op:
        """An (m × k) · (k × n) GEMM of this rank; its weights as :meth:`weights` says."""
        flops = 2.0 * m * n * k
        weight_bytes, dims = self.weights(name, (("m", m), ("n", n), ("k", k)), sixteen_bit)
        traffic = k * n * weight_bytes + (m * k + m * n) * self.act_bytes
        return Op(name, "gemm", flops, traffic, m, dims)

    def elementwise(self, name: str, m: int, read: int, write: int) -> Op:
        dims = (("m", m), ("read", read), ("write", write))
        return Op(name, "memory", 0.0, (read + write) * m * self.act_bytes, m, dims)
