"""Roofline backend: an op is bound by compute or by memory traffic, whichever is slower.

time = max(FLOPs / (peak · η_c), bytes / (BW · η_mem)) + launch

η_c for GEMMs grows with the row count M (small-M GEMMs cannot fill the tensor cores, so
decode-sized GEMMs are memory bound as on real GPUs); FlashAttention prefill has its own
η; elementwise kernels listed in ``efficiency.memory_ops`` have their own bandwidth fraction and
fixed cost. All η come from the device YAML and are calibrated on measured profiles
(docs/calibration.md).

Kernels of serving engines that the profiles did not measure (model/fusion.py): the fp8
activation quantization takes the fit of the profiled kernel of its kind
(:data:`MEMORY_OP_PROXIES`), and a norm with the residual add fused into it keeps its own fit
for its own bytes and streams the residual at the device's memory efficiency, with no second
launch.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from mypy_extensions import mypyc_attr

from llmservingsim.hardware.backends.base import PERF_BACKENDS, PerfSetup
from llmservingsim.hardware.device import DeviceSpec, attention_dtype
from llmservingsim.model.fusion import ACT_QUANT, fused_bytes
from llmservingsim.model.moe import MOE_GEMMS
from llmservingsim.model.op import is_sixteen_bit
from llmservingsim.model.ops import Op

FloatArray = npt.NDArray[np.float64]

# Elementwise kernel without a fit of its own -> the fitted kernel of the same kind: fp8
# quantization reads 16-bit activations and writes a narrower copy row by row, as SwiGLU does.
MEMORY_OP_PROXIES: dict[str, str] = {ACT_QUANT: "mlp_act"}


@mypyc_attr(allow_interpreted_subclasses=True)
class RooflineBackend:
    def __init__(
        self,
        device: DeviceSpec,
        dtype: str,
        weight_dtype: str | None = None,
        fp8_scaling: str = "tensor",
    ) -> None:
        """``dtype``: the math dtype (weight-only int8 / int4 compute in bf16); ``weight_dtype``
        the weights' own (default: ``dtype``) and, for fp8 weights, ``fp8_scaling`` (tensor or
        block) pick the fused-MoE entry: weight-only quantized experts have none and time as
        dense GEMMs."""
        self.device = device
        eff = device.efficiency
        # GEMMs computed in fp8 / fp4 follow their own measured curve, as fractions of that
        # dtype's peak (tensor cores do not reach the datasheet's 2x per halving, and small-M
        # kernels carry scaled epilogues): one formula, per-dtype parameters. ``dtype`` is the
        # device-independent math dtype; MXFP4 computes in fp8 where FP4 tensor cores exist.
        self._peak = device.peak_flops(dtype)
        compute_max, half_m, launch_us = eff.gemm_curve(device.gemm_dtype(dtype), fp8_scaling)
        self._bandwidth = device.memory_bandwidth * eff.memory
        self._launch = eff.kernel_launch_us * 1e-6
        self._gemm_launch = launch_us * 1e-6
        self._compute_max = compute_max
        self._half_m = half_m
        # GEMMs a quantized checkpoint keeps in 16 bits (model/op.py SIXTEEN_BIT_DIM): the
        # bf16 curve at the bf16 peak.
        self._peak16 = device.peak_flops("bf16")
        max16, half16, launch16 = eff.gemm_curve("bf16")
        self._compute_max16 = max16
        self._half_m16 = half16
        self._gemm_launch16 = launch16 * 1e-6
        # Attention in a narrower dtype gains what that dtype's saturated GEMMs gain over bf16
        # (fp8 at most: attention_dtype).
        attention_peak = device.peak_flops(attention_dtype(dtype))
        attention_max = eff.gemm_curve(attention_dtype(dtype))[0]
        self._attention_flops = (
            attention_peak * eff.attention_compute * attention_max / eff.compute_max
        )
        self._decode_flops = attention_peak * attention_max  # decode attention's compute rate
        self._memory_ops = {
            name: (
                device.memory_bandwidth * tuned.efficiency,
                tuned.launch_us * 1e-6,
                tuned.min_rows,
            )
            for name, tuned in eff.memory_ops.items()
        }
        # Fused-MoE expert GEMMs (calibration.md §7e): their own fraction of the dense curve's
        # compute rate, weight bandwidth and fixed time, where the device has them fitted.
        moe = eff.moe_curve(dtype if weight_dtype is None else weight_dtype, fp8_scaling)
        self._moe_fitted = moe is not None
        self._moe_compute = 1.0 if moe is None else moe.compute
        self._moe_bandwidth = (
            self._bandwidth if moe is None else device.memory_bandwidth * moe.memory
        )
        self._moe_launch = self._gemm_launch if moe is None else moe.launch_us * 1e-6
        self._moe_half_dim = 0.0 if moe is None else moe.half_dim
        self._moe_half_weight = 0.0 if moe is None else moe.half_weight_mb * 1e6
        for name, proxy in MEMORY_OP_PROXIES.items():
            if name not in self._memory_ops and proxy in self._memory_ops:
                self._memory_ops[name] = self._memory_ops[proxy]

    @classmethod
    def from_config(cls, device: DeviceSpec, setup: PerfSetup) -> RooflineBackend:
        return cls(device, setup.compute_dtype, setup.dtype, setup.fp8_scaling)

    def decode_attention_time(self, flops: float, traffic: float) -> float:
        """:meth:`time` of a decode-attention op with ``flops`` > 0, from its work alone: the
        per-step fast path (perf/iteration.py) that builds no Op."""
        return max(flops / self._decode_flops, traffic / self._bandwidth) + self._launch

    def decode_attention_times(self, flops: FloatArray, traffic: FloatArray) -> FloatArray:
        """:meth:`time` of decode-attention ops given as arrays (a fast-forward run's steps)."""
        compute_time = flops / self._decode_flops
        return np.maximum(compute_time, traffic / self._bandwidth) + self._launch

    def compute_efficiency(self, m: int) -> float:
        return self._compute_max * m / (m + self._half_m)

    def time(self, op: Op) -> float:
        if op.flops <= 0.0:
            tuned = self._memory_ops.get(op.name)
            if tuned is not None:
                bandwidth, launch, min_rows = tuned
                fused = fused_bytes(op)  # a kernel fused into this one streams its bytes
                own = op.bytes - fused
                padded = own * max(op.m, min_rows) / op.m if op.m > 0 else own
                return padded / bandwidth + fused / self._bandwidth + launch
            return op.bytes / self._bandwidth + self._launch
        if op.kind == "gemm":
            if self._moe_fitted and op.name in MOE_GEMMS:
                return self._moe_gemm_time(op)
            if is_sixteen_bit(op):
                peak, eta = self._peak16, self._compute_max16 * op.m / (op.m + self._half_m16)
                launch = self._gemm_launch16
            else:
                peak, eta, launch = self._peak, self.compute_efficiency(op.m), self._gemm_launch
            return max(op.flops / (peak * eta), op.bytes / self._bandwidth) + launch
        memory_time = op.bytes / self._bandwidth
        if op.kind == "attention_prefill":
            compute_time = op.flops / self._attention_flops
        else:
            compute_time = op.flops / self._decode_flops
        return max(compute_time, memory_time) + self._launch

    def _moe_gemm_time(self, op: Op) -> float:
        """A fused-MoE grouped GEMM (device.MoeGemm): the dense curve at its M, its compute
        scaled by the narrower matrix dimension and its weight streaming by the matrix size."""
        narrow = 0
        weight = 0
        for key, value in op.dims:
            if key == "n" or key == "k":
                narrow = value if narrow == 0 else min(narrow, value)
            elif key == "moe_expert_weight":
                weight = value
        scale = self._moe_compute
        if narrow > 0:
            scale *= narrow / (narrow + self._moe_half_dim)
        bandwidth = self._moe_bandwidth
        if weight > 0:
            bandwidth *= weight / (weight + self._moe_half_weight)
        # The saturated rate is scale × the dense one; the small-M slope (compute_max / half_m,
        # the compute floor that keeps decode GEMMs memory bound) is the dense curve's.
        m = op.m
        eta = scale * self._compute_max * m / (m + self._half_m * scale)
        return max(op.flops / (self._peak * eta), op.bytes / bandwidth) + self._moe_launch


PERF_BACKENDS.register("roofline")(RooflineBackend)
