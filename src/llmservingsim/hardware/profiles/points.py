"""One measured point: the op the simulator would build for that shape, and its seconds."""

from __future__ import annotations

from dataclasses import dataclass

from llmservingsim.model.ops import Op

# Same tensor-core rate and the same 2 bytes per element: a 16-bit table serves either.
_EQUIVALENT = {"bf16": "fp16"}


def canonical_dtype(dtype: str) -> str:
    return _EQUIVALENT.get(dtype, dtype)


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    op: Op
    seconds: float
    dtype: str  # weight dtype the kernel was measured with
    model: str  # what was profiled (held-out calibration splits by it)
    source: str  # file (and line) the point came from
