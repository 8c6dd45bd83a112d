"""Systolic-array backend: GEMM time from tiling and array utilization, for NPUs.

A weight-stationary array of R × C MACs holds one R × C tile of the weight matrix while the
M rows of the activations stream through it. A GEMM (M × K) · (K × N) is cut into
⌈K/R⌉·⌈N/C⌉ weight tiles, spread over the chip's arrays in waves (when there are fewer tiles
than arrays, the rows are split over the idle arrays instead). A tile is busy for
max(M_rows, R) cycles — streaming its rows, or loading the next tile's weights (double
buffered), whichever is longer, plus ``fold_overhead_cycles`` from the YAML (default 0; what
``calibrate --scalesim`` fits when weight loads are not hidden) — and the array pipeline fills
and drains once (R + C − 2).
So utilization = useful MACs / (arrays · R · C · cycles): a decode-sized GEMM (M = 1) leaves
the array waiting on weight loads, a GEMM with K or N not a multiple of the array edge wastes
the ragged tiles, and a large GEMM approaches 1.

time = max(FLOPs / (peak · utilization · compute_max), DRAM bytes / (BW · η_mem)) + launch

``compute_max`` (device YAML) is the fraction of the ideal array rate real kernels keep (DMA
and synchronisation stalls). DRAM bytes are the op's bytes, plus re-reads of the activations
when they do not fit in half of the on-chip SRAM (the other half double-buffers weights): then
every wave of weight columns streams them again. Attention is timed as its two batched GEMMs
(scores and values) per head. Element-wise ops are memory bound, as in the roofline.
"""

from __future__ import annotations

import math

from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.base import PERF_BACKENDS
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.ops import Op, attended_keys

ACT_BYTES = 2.0  # activations stream in 16-bit


def gemm_shapes(op: Op) -> list[tuple[int, int, int, int]]:
    """(m, n, k, batch) of the GEMMs an op runs; empty when its dims say nothing. A batched
    GEMM (MoE experts) counts its batch from the FLOPs; attention is its two batched GEMMs per
    head: scores (QKᵀ) and values (PV). Shared by the ``scalesim`` backend."""
    dims = dict(op.dims)
    if op.kind == "gemm" and {"m", "n", "k"} <= dims.keys():
        m, n, k = dims["m"], dims["n"], dims["k"]
        batch = max(1, round(op.flops / (2.0 * m * n * k)))
        return [(m, n, k, batch)]
    if op.kind == "attention_prefill" and "new" in dims:
        new, d = dims["new"], dims["head_dim"]
        # Causal: half the chunk on average; a sliding window's band (model/ops.py).
        keys = max(1, round(attended_keys(new, dims["ctx"], dims.get("window", 0)) / new))
        heads = dims["q_heads"]
        return [(new, keys, d, heads), (new, d, keys, heads)]
    if op.kind == "attention_decode" and "batch" in dims:
        seqs, d = dims["batch"], dims["head_dim"]
        group = max(1, dims["q_heads"] // dims["kv_heads"])
        keys = max(1, round(dims["context"] / max(1, seqs)))
        pairs = seqs * dims["kv_heads"]
        return [(group, keys, d, pairs), (group, d, keys, pairs)]
    return []


@PERF_BACKENDS.register("systolic")
class SystolicBackend:
    def __init__(self, device: DeviceSpec, dtype: str) -> None:
        if device.systolic is None:
            raise ConfigError(
                f"perf backend 'systolic' needs the device's array geometry: {device.name!r} has "
                "no 'systolic:' section (rows, cols, arrays, clock_ghz, sram_mib)"
            )
        self.device = device
        array = device.systolic
        if array.dataflow != "ws":
            raise ConfigError(
                f"perf backend 'systolic' models weight-stationary arrays only: "
                f"{device.name!r} has systolic.dataflow {array.dataflow!r}, which is not yet "
                "supported there (perf.backend: scalesim simulates it)"
            )
        eff = device.efficiency
        self.rows, self.cols, self.arrays = array.rows, array.cols, array.arrays
        self._peak = device.peak_flops(dtype)
        self._derate = eff.compute_max
        self._bandwidth = device.memory_bandwidth * eff.memory
        self._launch = eff.kernel_launch_us * 1e-6
        self._sram_half = array.sram_mib * 2**20 / 2
        self._fold_overhead = array.fold_overhead_cycles

    # ------------------------------------------------------------------ shapes

    def _gemm_cycles(self, m: int, n: int, k: int, batch: int) -> float:
        r, c, arrays = self.rows, self.cols, self.arrays
        tiles = math.ceil(k / r) * math.ceil(n / c) * batch
        groups = 1 if tiles >= arrays else min(math.ceil(arrays / tiles), m)
        rows_each = math.ceil(m / groups)
        waves = math.ceil(tiles * groups / arrays)
        return waves * (max(rows_each, r) + self._fold_overhead) + r + c - 2

    def _shapes(self, op: Op) -> list[tuple[int, int, int, int]]:
        return gemm_shapes(op)

    def utilization(self, op: Op) -> float:
        """Useful MACs over the arrays' MAC slots while the op runs (1.0 when unknown)."""
        shapes = self._shapes(op)
        if not shapes:
            return 1.0
        macs = sum(m * n * k * b for m, n, k, b in shapes)
        cycles = sum(self._gemm_cycles(m, n, k, b) for m, n, k, b in shapes)
        return macs / (self.arrays * self.rows * self.cols * cycles)

    def _dram_bytes(self, op: Op) -> float:
        if op.kind != "gemm":
            return op.bytes
        extra = 0.0
        for m, n, k, batch in self._shapes(op):
            activations = m * k * ACT_BYTES
            if activations > self._sram_half:
                passes = math.ceil(math.ceil(n / self.cols) / self.arrays)
                extra += (passes - 1) * activations * batch
        return op.bytes + extra

    # ------------------------------------------------------------------ time

    def compute_and_memory_seconds(self, op: Op) -> tuple[float, float]:
        """The op's compute time on the arrays and its DRAM time, before the max and launch."""
        memory_time = self._dram_bytes(op) / self._bandwidth
        if op.flops <= 0.0:
            return 0.0, memory_time
        return op.flops / (self._peak * self.utilization(op) * self._derate), memory_time

    def time(self, op: Op) -> float:
        compute_time, memory_time = self.compute_and_memory_seconds(op)
        return max(compute_time, memory_time) + self._launch
