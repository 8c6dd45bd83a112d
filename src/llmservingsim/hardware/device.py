"""Device description: what an accelerator can do, read from a YAML file.

Units in the YAML are the ones datasheets use (TFLOP/s, GB/s, GiB, µs, W, $/h); the
properties below convert them to SI so the rest of the simulator only sees seconds, bytes and
FLOP/s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmservingsim.errors import ConfigError
from llmservingsim.model.spec import gemm_dtype, weight_only_quantized
from llmservingsim.ranges import Fraction, Gbps, GiB, Microseconds, NotBool, SmallCount

GIB = 1024**3

DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "fp4", "int8", "int4")

# Physical ranges of a device file's numbers (configs share the other types, config.py).
Tflops = Annotated[float, NotBool, Field(ge=1e-3, le=1e9, allow_inf_nan=False)]
"""Dense peak, TFLOP/s: from 1 GFLOP/s (a denormal peak made every step infinite) to 10^9
(tests model "infinite" compute with it)."""
Watts = Annotated[float, NotBool, Field(ge=0, le=1e6, allow_inf_nan=False)]
Dollars = Annotated[float, NotBool, Field(ge=0, le=1e6, allow_inf_nan=False)]
Tokens = Annotated[float, NotBool, Field(ge=0, le=2**31, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Link(_Strict):
    """One level of interconnect, per device and per direction (alpha-beta model).

    A collective step costs ``latency_us`` (alpha, per algorithm hop); the whole call's latency
    never exceeds ``call_latency_us`` (the bulk protocol's fixed cost, when given: large
    messages pipeline their hops). Bytes move at ``bandwidth_gbps * efficiency``. Calibrated
    against measured NCCL profiles, see docs/calibration.md.
    """

    bandwidth_gbps: Gbps = Field(description="datasheet GB/s per direction per device")
    latency_us: Microseconds = Field(description="per-hop latency (alpha), µs")
    call_latency_us: Microseconds | None = Field(
        default=None, description="cap on the latency of one collective call, µs"
    )
    efficiency: Fraction = Field(
        default=1.0, description="achieved / datasheet bandwidth for large messages"
    )
    links_per_node: SmallCount | None = Field(
        default=None,
        description="NICs a node drives in parallel for one collective (default: one per device)",
    )


class DirectAllReduce(_Strict):
    """Serving engines' one-kernel all-reduce over a full NVLink/xGMI mesh (vLLM/TRT-LLM custom
    all-reduce): t = latency + hop_latency·(p−1) + 2(p−1)/p · bytes / bandwidth."""

    latency_us: Microseconds
    hop_latency_us: Microseconds
    bandwidth_gbps: Gbps = Field(description="effective, not datasheet")
    max_bytes: int = Field(
        gt=0, lt=2**63, strict=True, description="larger messages fall back to NCCL-style rings"
    )


class Links(_Strict):
    intra_node: Link = Field(description="NVLink / xGMI / ICI between devices of one node")
    inter_node: Link = Field(description="InfiniBand / Ethernet between nodes, per device")
    host: Link = Field(description="PCIe / CXL link between the device and host memory")
    direct_allreduce: DirectAllReduce | None = Field(
        default=None, description="custom all-reduce inside a node (needs a full P2P mesh)"
    )


class Power(_Strict):
    idle_w: Watts
    max_w: Watts = Field(gt=0)


class MemoryOpEfficiency(_Strict):
    """One elementwise kernel's achieved bandwidth, fixed cost and smallest wave.

    Norms, rotary and activation kernels reach very different fractions of DRAM bandwidth
    (reductions, strided access) and have their own launch/tail time, so one ``memory`` factor
    cannot describe them all (calibration.md). Fewer rows than one wave of thread blocks still
    take the time of that wave: the kernel costs as if it had ``min_rows`` rows.

    time = launch_us + bytes_per_row · max(rows, min_rows) / (bandwidth · efficiency)
    """

    efficiency: Fraction = Field(description="achieved / peak DRAM bandwidth")
    launch_us: Microseconds = Field(description="fixed time per call of this kernel, µs")
    min_rows: Tokens = Field(default=1.0, ge=1, description="rows of one full wave")


GemmDtype = Literal["fp8", "fp8_block", "fp4"]
"""Compute dtypes with a GEMM curve of their own (bf16's is the top-level one; int8 and int4
weights are weight-only, computed in 16 bits on bf16's curve; MXFP4 weights compute in fp8 on
a device with FP4 tensor cores, else in bf16: DeviceSpec.gemm_dtype). fp8 is per-tensor
scaled; fp8_block is fp8 with 128x128-block scaled weights (``fp8_scaling: block``), at the
fp8 peak, falling back to fp8's curve where the device has none."""


class DtypeGemm(_Strict):
    """The GEMM curve of one narrower compute dtype (fp8, fp4) as fractions of that dtype's
    own datasheet peak: eta_c(M) = compute_max * M / (M + compute_half_m), plus a fixed time
    per GEMM (calibration.md §7c). Memory-bound GEMMs stream their weights at ``memory``."""

    compute_max: Fraction
    compute_half_m: Tokens = Field(description="tokens at which GEMMs reach half of compute_max")
    kernel_launch_us: Microseconds = Field(description="fixed time per GEMM (launch + epilogue)")


MoeDtype = Literal["bf16", "fp8", "fp8_block", "fp4", "mxfp4"]
"""Weight formats with a fitted fused-MoE efficiency (the MoE kernel tables' modes they run:
bfloat16, fp8 (per-tensor scaled), fp8_block (128x128-block scaled fp8, ``fp8_scaling:
block``), nvfp4, and w4a8_mxfp4_mxfp8 / w4a16_mxfp4 for MXFP4)."""


class MoeGemm(_Strict):
    """The grouped expert GEMMs of a fused-MoE kernel (calibration.md §7e), relative to the
    dense GEMM curve of their compute dtype at the same rows per expert M.

    With s = ``compute`` · D / (D + ``half_dim``), D = min(N, K) of the expert matrix (short
    tiles and reduction loops of a narrow expert slice), the compute efficiency is
    s · compute_max · M / (M + s · compute_half_m): the dense curve's saturated rate times s and
    its small-M slope unchanged, so decode-sized expert GEMMs stay memory bound. The op's bytes
    (its weights and activations) stream at ``memory`` · W / (W + ``half_weight_mb``) of peak
    DRAM bandwidth, W the bytes of one expert's matrix (a small matrix is read by few thread
    blocks). Each grouped GEMM takes ``launch_us`` instead of the dense fixed time (the fused
    MoE's routing, permutation and setup kernels)."""

    compute: Annotated[float, NotBool, Field(gt=0, le=4.0, allow_inf_nan=False)] = Field(
        description="factor on the dense curve's saturated compute rate"
    )
    half_dim: Tokens = Field(
        default=0.0,
        description="narrower matrix dimension at which the saturated rate halves",
    )
    memory: Fraction = Field(description="achieved / peak DRAM bandwidth of large expert matrices")
    half_weight_mb: Annotated[float, NotBool, Field(ge=0, le=1e6, allow_inf_nan=False)] = Field(
        default=0.0,
        description="one expert matrix's size (MB) at which its bytes stream at half rate",
    )
    launch_us: Microseconds = Field(description="fixed time per grouped GEMM, µs")


class Efficiency(_Strict):
    """Fractions of datasheet peaks that real kernels reach; calibrated, see docs/calibration.md.

    GEMM compute efficiency saturates with the number of rows M (tokens):
    eta_c(M) = compute_max * M / (M + compute_half_m).
    """

    compute_max: Fraction
    compute_half_m: Tokens = Field(description="tokens at which GEMMs reach half of compute_max")
    attention_compute: Fraction = Field(description="FlashAttention prefill FLOP efficiency")
    memory: Fraction = Field(description="achieved / peak DRAM bandwidth for streaming kernels")
    kernel_launch_us: Microseconds = Field(description="fixed time per kernel (launch + tail)")
    memory_ops: dict[str, MemoryOpEfficiency] = Field(
        default_factory=dict,
        description="per op name (model/ops.py) overrides of memory and kernel_launch_us for "
        "elementwise kernels",
    )
    dtype_gemm: dict[GemmDtype, DtypeGemm] = Field(
        default_factory=dict,
        description="per compute dtype other than bf16 (fp8, fp4): its own GEMM curve, as "
        "fractions of that dtype's datasheet peak (fitted on measured fp8 / nvfp4 GEMM kernel "
        "tables, scripts/calibrate_catalog.py); a dtype not listed runs the bf16 curve at its "
        "own peak",
    )
    moe_gemm: dict[MoeDtype, MoeGemm] = Field(
        default_factory=dict,
        description="per weight dtype: the fused-MoE expert GEMMs' efficiency relative to the "
        "dense GEMM curve (fitted on measured MoE kernel tables, scripts/calibrate_catalog.py, "
        "calibration.md §7e); a dtype not listed times them as dense GEMMs",
    )
    iteration_overhead_us: Microseconds = Field(
        description="CPU time per engine step (schedule, prepare inputs)"
    )
    per_seq_overhead_us: Microseconds = Field(
        description="CPU time per sequence in the batch per step"
    )

    def gemm_curve(self, dtype: str, fp8_scaling: str = "tensor") -> tuple[float, float, float]:
        """(compute_max, compute_half_m, kernel_launch_us) of GEMMs computed in ``dtype``: its
        own entry of ``dtype_gemm`` (block-scaled fp8: fp8_block's where fitted), else the
        bf16 curve."""
        for key in dict.fromkeys((kernel_format(dtype, fp8_scaling), dtype)):
            for name, own in self.dtype_gemm.items():
                if name == key:
                    return own.compute_max, own.compute_half_m, own.kernel_launch_us
        return self.compute_max, self.compute_half_m, self.kernel_launch_us

    def moe_curve(self, dtype: str, fp8_scaling: str = "tensor") -> MoeGemm | None:
        """The fused-MoE entry of weights in ``dtype`` (fp16 shares bf16's; block-scaled fp8
        has its own, fp8_block), if fitted."""
        key = moe_key(dtype, fp8_scaling)
        for name, own in self.moe_gemm.items():
            if name == key:
                return own
        return None


def kernel_format(dtype: str, fp8_scaling: str = "tensor") -> str:
    """The kernels ``dtype`` runs: fp8 with block-scaled weights runs the ``fp8_block`` ones
    (the kernel tables' mode, the key of its GEMM and fused-MoE curves), else ``dtype``."""
    return "fp8_block" if dtype == "fp8" and fp8_scaling == "block" else dtype


def kernel_compute_dtype(kernel: str) -> str:
    """The compute dtype (peak, operand width) of a :func:`kernel_format`: fp8_block's is fp8."""
    return "fp8" if kernel == "fp8_block" else kernel


def kernel_weights(kernel: str) -> tuple[str, str]:
    """(weight dtype, fp8 scaling) of a :func:`kernel_format`: its inverse."""
    return kernel_compute_dtype(kernel), "block" if kernel == "fp8_block" else "tensor"


def moe_key(dtype: str, fp8_scaling: str = "tensor") -> str:
    """The ``efficiency.moe_gemm`` key of experts whose weights are in ``dtype``."""
    return kernel_format("bf16" if dtype == "fp16" else dtype, fp8_scaling)


def attention_dtype(dtype: str) -> str:
    """The dtype attention's matmuls run in for a model whose weights are in ``dtype``: no
    engine runs them in fp4 (fp4 models run attention in fp8 at most); weight-only quantized
    models (int8, int4, MXFP4) run it in 16 bits."""
    if dtype == "fp4":
        return "fp8"
    return "bf16" if weight_only_quantized(dtype) else dtype


class Systolic(_Strict):
    """Weight-stationary systolic arrays of an NPU, for the ``systolic`` perf backend.

    The chip has ``arrays`` arrays (cores × arrays per core) of ``rows`` × ``cols`` MAC units
    at ``clock_ghz``; its dense bf16 peak is 2·rows·cols·arrays·clock (checked against
    ``peak_tflops`` in the catalog tests). ``sram_mib`` is the on-chip buffer that holds the
    streamed operand; a GEMM whose activations do not fit re-reads them from DRAM.
    ``dataflow`` is what the ``scalesim`` backend simulates (weight, output or input
    stationary); the analytic ``systolic`` backend models ``ws`` only, and adds
    ``fold_overhead_cycles`` to every weight tile (0: loads fully hidden behind streaming).
    """

    rows: int = Field(ge=1, le=2**16, strict=True)
    cols: int = Field(ge=1, le=2**16, strict=True)
    arrays: int = Field(ge=1, le=2**20, strict=True, description="arrays working in parallel")
    clock_ghz: float = Field(ge=1e-3, le=1e3, allow_inf_nan=False)
    sram_mib: float = Field(gt=0, le=2**30, allow_inf_nan=False)
    dataflow: Literal["ws", "os", "is"] = Field(
        default="ws", description="ws | os | is: weight / output / input stationary"
    )
    fold_overhead_cycles: float = Field(
        default=0.0,
        ge=0,
        le=1e9,
        allow_inf_nan=False,
        description="systolic backend: extra cycles per weight tile (not hidden by double "
        "buffering); fitted by `calibrate --scalesim`",
    )


class DeviceSpec(_Strict):
    name: str
    type: Literal["gpu", "npu", "tpu", "pim"] = "gpu"
    vendor: str = ""
    description: str = ""
    memory_gib: GiB = Field(gt=0)
    memory_bandwidth_gbps: Gbps = Field(description="DRAM/HBM bandwidth, GB/s")
    peak_tflops: dict[str, Tflops] = Field(
        description="dense peak per dtype (no sparsity), TFLOP/s"
    )
    reserved_memory_gib: GiB = Field(
        default=0.5,
        description="CUDA context, allocator and framework memory outside the KV pool",
    )
    devices_per_node: SmallCount = 8
    links: Links
    power: Power
    cost_per_hour_usd: Dollars = Field(description="on-demand cloud price per device-hour")
    efficiency: Efficiency
    systolic: Systolic | None = Field(
        default=None, description="NPU array geometry (type: npu); enables the systolic backend"
    )
    sources: list[str] = Field(default_factory=list, description="where the numbers come from")

    @model_validator(mode="after")
    def _gemm_dtypes_have_a_peak(self) -> DeviceSpec:
        for dtype in self.efficiency.dtype_gemm:
            if kernel_compute_dtype(dtype) not in self.peak_tflops:
                raise ValueError(
                    f"efficiency.dtype_gemm.{dtype}: a GEMM curve for a dtype without a "
                    f"peak_tflops entry (the device lists {', '.join(self.peak_tflops)})"
                )
        return self

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GIB

    @property
    def memory_bandwidth(self) -> float:
        """Bytes per second."""
        return self.memory_bandwidth_gbps * 1e9

    @property
    def fp4_tensor_cores(self) -> bool:
        """Whether the device computes in FP4 (Blackwell: its datasheet lists an fp4 peak)."""
        return "fp4" in self.peak_tflops

    def gemm_dtype(self, dtype: str) -> str:
        """The dtype GEMMs of weights in ``dtype`` compute in on this device (model/spec.py)."""
        return gemm_dtype(dtype, self.fp4_tensor_cores)

    def peak_flops(self, dtype: str) -> float:
        """Dense FLOP/s of GEMMs for weights in ``dtype`` (:meth:`gemm_dtype`): int4/int8
        weight-only math runs at the 16-bit rate, MXFP4 at the fp8 rate with FP4 tensor cores.
        FP4 needs FP4 tensor cores (Blackwell): a device without an fp4 peak refuses it."""
        dtype = self.gemm_dtype(dtype)
        if dtype == "fp4" and "fp4" not in self.peak_tflops:
            with_fp4 = "a device with FP4 tensor cores (e.g. b200, gb200, rtx-pro-6000)"
            raise ConfigError(
                f"dtype fp4: device {self.name!r} has no FP4 tensor cores (no fp4 in its "
                f"peak_tflops); use {with_fp4} or dtype fp8"
            )
        for candidate in (dtype, "bf16", "fp16"):
            if candidate in self.peak_tflops:
                return self.peak_tflops[candidate] * 1e12
        raise ConfigError(f"device {self.name!r} lists no peak_tflops for dtype {dtype!r}")


def load_device_file(path: Path) -> DeviceSpec:
    """Read and validate a device YAML; errors name the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, ValueError, RecursionError) as exc:
        # ValueError: not UTF-8, or an integer of more than 4300 digits.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ConfigError(f"{path}: cannot read device YAML: {reason[:200]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of device keys")
    try:
        return DeviceSpec.model_validate(raw)
    except (ValidationError, RecursionError) as exc:
        if isinstance(exc, RecursionError):
            raise ConfigError(f"{path}: nested too deeply") from None
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {repr(got)[:60]})"
        raise ConfigError(f"{path}: {loc}: {err['msg']}{shown}") from None
