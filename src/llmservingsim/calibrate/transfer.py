"""Carry fitted efficiencies to devices without profiles, and write them as a YAML block.

A device without measured tables takes the fitted fractions of the closest calibrated
architecture (calibration.md §8). Fractions transfer as they are, except compute_half_m: it is
scaled with the ridge point (peak / bandwidth) so that the small-M compute floor — the share
of a GEMV's memory time that its compute would take (fit.half_m_for_floor) — stays what was
fitted, and decode GEMMs stay memory bound on a device with more bandwidth per FLOP.
"""

from __future__ import annotations

import re
from pathlib import Path

from llmservingsim.hardware.device import DeviceSpec, Efficiency

SIGNIFICANT = 4


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT}g}")


def rounded(eff: Efficiency) -> Efficiency:
    """Fitted values to 4 significant digits (far below their uncertainty)."""

    def walk(node: object) -> object:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return _round(node) if isinstance(node, float) else node

    return Efficiency.model_validate(walk(eff.model_dump()))


def ridge(device: DeviceSpec, dtype: str = "bf16") -> float:
    return device.peak_flops(dtype) / device.memory_bandwidth


def transfer_efficiency(source: DeviceSpec, target: DeviceSpec) -> Efficiency:
    """``source``'s fitted GEMM and memory-op efficiencies for ``target``; the target keeps
    its own attention and host-overhead values (not fitted from operator profiles)."""
    fitted = source.efficiency
    half_m = fitted.compute_half_m * ridge(target) / ridge(source)
    return target.efficiency.model_copy(
        update={
            "compute_max": fitted.compute_max,
            "compute_half_m": _round(half_m),
            "memory": fitted.memory,
            "kernel_launch_us": fitted.kernel_launch_us,
            "memory_ops": dict(fitted.memory_ops),
        }
    )


def efficiency_block(eff: Efficiency, comment: str, gemm_source: str | None = None) -> str:
    """The ``efficiency:`` section of a device YAML (flow style for the per-kernel table);
    ``gemm_source`` names the data of the GEMM parameters when it differs from ``comment``'s."""
    lines = [f"efficiency:  # {comment}"]
    for key, value in eff.model_dump().items():
        if key == "memory_ops":
            if value:
                lines.append("  memory_ops:  # per-kernel bandwidth fraction, launch µs, wave rows")
                for name, tuned in value.items():
                    inner = ", ".join(f"{k}: {v:g}" for k, v in tuned.items())
                    lines.append(f"    {name}: {{{inner}}}")
            continue
        if key in ("dtype_gemm", "moe_gemm"):
            if value:
                lines.append(
                    "  dtype_gemm:  # GEMM curve per dtype, of its own peak (§7c)"
                    if key == "dtype_gemm"
                    else "  moe_gemm:  # fused-MoE expert GEMMs per weight dtype (§7e)"
                )
                for name, curve in value.items():
                    inner = ", ".join(f"{k}: {v:g}" for k, v in curve.items())
                    lines.append(f"    {name}: {{{inner}}}")
            continue
        note = f"  # GEMM: {gemm_source}" if key == "compute_max" and gemm_source else ""
        lines.append(f"  {key}: {value:g}{note}")
    return "\n".join(lines) + "\n"


_BLOCK = re.compile(r"^efficiency:.*?(?=^\S)", re.MULTILINE | re.DOTALL)


def replace_efficiency_block(
    path: Path, eff: Efficiency, comment: str, gemm_source: str | None = None
) -> None:
    """Rewrite a device YAML's ``efficiency:`` section in place, keeping everything else."""
    text = path.read_text()
    if not _BLOCK.search(text):
        raise ValueError(f"{path}: no top-level 'efficiency:' section followed by another key")
    path.write_text(
        _BLOCK.sub(lambda _: efficiency_block(eff, comment, gemm_source), text, count=1)
    )
