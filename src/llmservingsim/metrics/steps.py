"""Per-step records, buffered column-wise and handed to output sinks in numpy chunks.

One engine step appends eleven numbers as one packed row (no object per step); consumers (the
time series, the trace) then work on whole chunks of numpy columns instead of step by step.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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
# One step is one packed row: native 8-byte ints and doubles, no padding, in field order.
_ROW = struct.Struct("=" + "".join("d" if f in _FLOAT_FIELDS else "q" for f in STEP_FIELDS))
_ROW_DTYPE = np.dtype([(f, np.float64 if f in _FLOAT_FIELDS else np.int64) for f in STEP_FIELDS])
assert _ROW.size == _ROW_DTYPE.itemsize
"""Bytes per packed step row (:meth:`StepLog.extend_packed`)."""


class StepLog:
    """Append-only rows of the steps since the last :meth:`take_chunk`.

    A step is packed into one byte row by a single ``struct`` call (the cheapest way to store
    eleven numbers from Python: a third of eleven ``array.append`` calls) and the rows are read
    back as numpy columns once per chunk.
    """

    def __init__(self) -> None:
        self._rows = bytearray()
        self._pack = _ROW.pack

    def __len__(self) -> int:
        return len(self._rows) // _ROW.size

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
    ) -> int:
        """Buffer one step; returns the number of steps buffered (so a caller can flush by
        size without a second call)."""
        rows = self._rows
        rows += self._pack(
            instance,
            engine,
            start_s,
            duration_s,
            num_seqs,
            prefill_tokens,
            decode_tokens,
            kv_blocks_used,
            kv_blocks_total,
            waiting,
            power_w,
        )
        return len(rows) // _ROW.size

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
        rows = np.empty(len(start_s), dtype=_ROW_DTYPE)
        rows["instance"] = instance
        rows["engine"] = engine
        rows["start_s"] = start_s
        rows["duration_s"] = duration_s
        rows["num_seqs"] = decode_seqs
        rows["prefill_tokens"] = 0
        rows["decode_tokens"] = decode_seqs
        rows["kv_blocks_used"] = kv_blocks_used
        rows["kv_blocks_total"] = kv_blocks_total
        rows["waiting"] = waiting
        rows["power_w"] = power_w
        self._rows += rows.tobytes()

    def take_chunk(self) -> StepChunk:
        """The buffered steps as numpy arrays; the buffer starts empty again."""
        rows = np.frombuffer(self._rows, dtype=_ROW_DTYPE)
        chunk = StepChunk(**{name: rows[name].copy() for name in STEP_FIELDS})
        del rows  # (a bytearray cannot be resized while numpy views it; a new one is cheaper)
        self._rows = bytearray()
        return chunk
