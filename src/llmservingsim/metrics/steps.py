"""Per-step records, buffered column-wise and handed to output sinks in numpy chunks.

One engine step appends eleven numbers to ``array`` columns (no object per step); consumers (the
time series, the trace) then work on whole chunks with numpy instead of step by step.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class StepChunk:
    """Consecutive engine steps (all instances, in start-time order) as numpy columns."""

    instance: IntArray
    engine: IntArray
    start_s: FloatArray
    duration_s: FloatArray
    num_seqs: IntArray
    prefill_tokens: IntArray
    decode_tokens: IntArray
    kv_blocks_used: IntArray
    kv_blocks_total: IntArray
    waiting: IntArray
    power_w: FloatArray

    def __len__(self) -> int:
        return int(self.start_s.size)

    def take(self, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> StepChunk:
        return StepChunk(**{name: getattr(self, name)[index] for name in STEP_FIELDS})

    @staticmethod
    def concat(chunks: list[StepChunk]) -> StepChunk:
        if not chunks:
            return StepLog().take_chunk()
        return StepChunk(
            **{name: np.concatenate([getattr(c, name) for c in chunks]) for name in STEP_FIELDS}
        )


STEP_FIELDS = tuple(StepChunk.__dataclass_fields__)
_FLOAT_FIELDS = frozenset({"start_s", "duration_s", "power_w"})


class StepLog:
    """Append-only columns of the steps since the last :meth:`take_chunk`."""

    def __init__(self) -> None:
        self._columns: dict[str, array[Any]] = {
            name: array("d" if name in _FLOAT_FIELDS else "q") for name in STEP_FIELDS
        }
        c = self._columns
        self._appenders: tuple[Callable[[Any], None], ...] = (
            c["instance"].append,
            c["engine"].append,
            c["start_s"].append,
            c["duration_s"].append,
            c["num_seqs"].append,
            c["prefill_tokens"].append,
            c["decode_tokens"].append,
            c["kv_blocks_used"].append,
            c["kv_blocks_total"].append,
            c["waiting"].append,
            c["power_w"].append,
        )

    def __len__(self) -> int:
        return len(self._columns["start_s"])

    def append(
        self,
        instance: int,
        engine: int,
        start_s: float,
        duration_s: float,
        num_seqs: int,
        prefill_tokens: int,
        decode_tokens: int,
        kv_blocks_used: int,
        kv_blocks_total: int,
        waiting: int,
        power_w: float,
    ) -> None:
        a = self._appenders
        a[0](instance)
        a[1](engine)
        a[2](start_s)
        a[3](duration_s)
        a[4](num_seqs)
        a[5](prefill_tokens)
        a[6](decode_tokens)
        a[7](kv_blocks_used)
        a[8](kv_blocks_total)
        a[9](waiting)
        a[10](power_w)

    def extend(
        self,
        instance: int,
        engine: int,
        start_s: FloatArray,
        duration_s: FloatArray,
        decode_seqs: int,
        kv_blocks_used: IntArray,
        kv_blocks_total: int,
        waiting: int,
        power_w: FloatArray,
    ) -> None:
        """Append pure-decode steps of one batch (no prefill tokens) given as arrays."""
        count = len(start_s)
        c = self._columns
        for name, value in (
            ("instance", instance),
            ("engine", engine),
            ("num_seqs", decode_seqs),
            ("prefill_tokens", 0),
            ("decode_tokens", decode_seqs),
            ("kv_blocks_total", kv_blocks_total),
            ("waiting", waiting),
        ):
            c[name].extend([value] * count)
        for name, values in (
            ("start_s", start_s),
            ("duration_s", duration_s),
            ("power_w", power_w),
            ("kv_blocks_used", kv_blocks_used),
        ):
            dtype = np.float64 if name in _FLOAT_FIELDS else np.int64
            c[name].frombytes(np.ascontiguousarray(values, dtype=dtype).tobytes())

    def take_chunk(self) -> StepChunk:
        """The buffered steps as numpy arrays; the buffer starts empty again."""
        columns: dict[str, Any] = {
            name: np.array(col, dtype=np.float64 if name in _FLOAT_FIELDS else np.int64)
            for name, col in self._columns.items()
        }
        chunk = StepChunk(**columns)
        for col in self._columns.values():
            del col[:]
        return chunk
