"""Collects what happens during a run; summary.py turns it into numbers.

Per-request rows are kept as columns (request_log.py: tens of bytes per request, no object
each) and inter-token gaps as runs of equal values (every request of a decode step waited the
same gap), so a run costs bytes per step, not per token. Output files are fed while the run
goes: finished requests and engine steps are handed to the registered sinks in chunks of
``chunk_size`` (the sinks write Parquet row groups, sample the trace, bucket the time series).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from llmservingsim.metrics.request_log import (
    AnyArray,
    RequestChunk,
    RequestLog,
    RequestRecord,
    RequestRecords,
)
from llmservingsim.metrics.samples import RepeatedSamples
from llmservingsim.metrics.steps import ROW_SIZE, FloatArray, IntArray, StepChunk, StepLog
from llmservingsim.serving.sequence import Sequence

__all__ = ["MetricsCollector", "RequestRecord", "RequestSink", "StepSink", "StepTotals"]


@dataclass(slots=True)
class StepTotals:
    """Aggregates over engine steps, per instance."""

    iterations: int = 0
    busy_s: float = 0.0  # sum of step times (all stages)
    busy_device_s: float = 0.0  # device-seconds of work (a stage's devices busy for its time)
    energy_busy_j: float = 0.0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    kv_peak_blocks: int = 0
    max_batch_size: int = 0


class RequestSink(Protocol):
    def write_requests(self, chunk: RequestChunk) -> None: ...


class StepSink(Protocol):
    def write_steps(self, steps: StepChunk) -> None: ...


@dataclass
class MetricsCollector:
    itl: RepeatedSamples = field(default_factory=RepeatedSamples)
    steps: dict[int, StepTotals] = field(default_factory=dict)
    request_sinks: list[RequestSink] = field(default_factory=list)
    step_sinks: list[StepSink] = field(default_factory=list)
    chunk_size: int = 65_536
    requests: RequestLog = field(init=False)
    _step_log: StepLog = field(default_factory=StepLog)

    def __post_init__(self) -> None:
        self.requests = RequestLog(self.chunk_size)

    @property
    def records(self) -> RequestRecords:
        """Every request that ended so far, as ``RequestRecord`` rows built on demand."""
        return RequestRecords(self.requests)

    def on_step(
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
        """One engine step (``engine``: the virtual engine, 0 without pipeline parallelism;
        ``waiting``: requests still queued once it was scheduled; ``power_w``: mean power of the
        devices that ran it)."""
        if not self.step_sinks:
            return
        buffered = self._step_log.append(
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
        if buffered >= self.chunk_size:
            self._flush_steps()

    def on_steps(
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
        """Consecutive pure-decode steps of one batch (a fast-forward run), as arrays."""
        if not self.step_sinks:
            return
        self._step_log.extend(
            instance,
            engine,
            start_s,
            duration_s,
            decode_seqs,
            kv_blocks_used,
            kv_blocks_total,
            waiting,
            power_w,
        )
        if len(self._step_log) >= self.chunk_size:
            self._flush_steps()

    def on_packed_steps(self, rows: bytes | bytearray | memoryview) -> None:
        """Consecutive steps already packed in ``StepLog``'s row layout (the compiled loop).

        The sinks get the same chunks as from one :meth:`on_step` per row: the rows are cut
        where a chunk fills up."""
        if not self.step_sinks:
            return
        data = memoryview(rows).cast("B")
        while data:
            room = max(self.chunk_size - len(self._step_log), 1) * ROW_SIZE
            if self._step_log.extend_packed(data[:room]) >= self.chunk_size:
                self._flush_steps()
            data = data[room:]

    def flush(self) -> None:
        """Hand everything buffered to the sinks (call once the run is over)."""
        self._flush_steps()
        self._flush_requests()

    def _flush_steps(self) -> None:
        if len(self._step_log):
            chunk = self._step_log.take_chunk()
            for sink in self.step_sinks:
                sink.write_steps(chunk)

    def _flush_requests(self) -> None:
        self._hand_over(self.requests.seal())

    def _hand_over(self, chunk: RequestChunk | None) -> None:
        if chunk is not None:
            for sink in self.request_sinks:
                sink.write_requests(chunk)

    def on_token(self, seq: Sequence, now: float) -> None:
        if seq.first_token_time < 0:
            seq.first_token_time = now
        else:
            self.itl.add(now - seq.last_token_time)
        seq.last_token_time = now

    def on_finish(self, seq: Sequence, instance: int, now: float) -> None:
        seq.finish_time = now
        self._hand_over(self.requests.append(seq, instance, "finished"))

    def on_ended(self, rows: AnyArray) -> None:
        """Requests that ended, as packed rows (``RequestLog.extend``; the compiled loop):
        the chunks they seal go to the sinks as :meth:`on_finish` hands them over."""
        for chunk in self.requests.extend(rows):
            self._hand_over(chunk)

    def on_fail(self, seq: Sequence, instance: int, now: float, reason: str) -> None:
        self.on_drop(seq, instance, now, "failed", reason)

    def on_drop(self, seq: Sequence, instance: int, now: float, status: str, reason: str) -> None:
        """A request that ends unserved: ``failed`` (can never fit), or by admission control
        ``rejected`` (queue full) or ``timed_out`` (waited too long)."""
        seq.finish_time = now
        seq.fail_reason = reason
        self._hand_over(self.requests.append(seq, instance, status))

    def totals(self, instance: int) -> StepTotals:
        totals = self.steps.get(instance)
        if totals is None:
            totals = self.steps[instance] = StepTotals()
        return totals
