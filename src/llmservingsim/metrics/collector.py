"""Collects what happens during a run; summary.py turns it into numbers.

Per-request rows are kept as columns (request_log.py: tens of bytes per request, no object
each) and inter-token gaps as runs of equal values (every request of a decode step waited the
same gap), so a run costs bytes per step, not per token. Output files are fed while the run
goes: finished requests and engine steps are handed to the registered sinks in chunks of
``chunk_size`` (the sinks write Parquet row groups, sample the trace, bucket the time series).
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field
from typing import Protocol

from llmservingsim.metrics.decisions import ADMISSION, DecisionLog
from llmservingsim.metrics.request_log import (
    RequestChunk,
    RequestLog,
    RequestRecord,
    RequestRecords,
)
from llmservingsim.metrics.samples import RepeatedSamples
from llmservingsim.metrics.steps import FloatArray, IntArray, StepChunk, StepLog
from llmservingsim.sequence import Sequence

__all__ = ["MetricsCollector", "RequestRecord", "RequestSink", "StepSink", "StepTotals"]


class StepTotals:
    """Aggregates over engine steps, per instance."""

    iterations: int
    busy_s: float  # sum of step times (all stages)
    busy_device_s: float  # device-seconds of work (a stage's devices busy for its time)
    energy_busy_j: float
    prefill_tokens: int
    decode_tokens: int
    kv_peak_blocks: int
    max_batch_size: int

    def __init__(
        self,
        iterations: int = 0,
        busy_s: float = 0.0,
        busy_device_s: float = 0.0,
        energy_busy_j: float = 0.0,
        prefill_tokens: int = 0,
        decode_tokens: int = 0,
        kv_peak_blocks: int = 0,
        max_batch_size: int = 0,
    ) -> None:
        self.iterations = iterations
        self.busy_s = busy_s
        self.busy_device_s = busy_device_s
        self.energy_busy_j = energy_busy_j
        self.prefill_tokens = prefill_tokens
        self.decode_tokens = decode_tokens
        self.kv_peak_blocks = kv_peak_blocks
        self.max_batch_size = max_batch_size

    def __repr__(self) -> str:
        return (
            f"StepTotals("
            f"iterations={self.iterations!r}, "
            f"busy_s={self.busy_s!r}, "
            f"busy_device_s={self.busy_device_s!r}, "
            f"energy_busy_j={self.energy_busy_j!r}, "
            f"prefill_tokens={self.prefill_tokens!r}, "
            f"decode_tokens={self.decode_tokens!r}, "
            f"kv_peak_blocks={self.kv_peak_blocks!r}, "
            f"max_batch_size={self.max_batch_size!r}"
            ")"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepTotals):
            return NotImplemented
        return (
            self.iterations,
            self.busy_s,
            self.busy_device_s,
            self.energy_busy_j,
            self.prefill_tokens,
            self.decode_tokens,
            self.kv_peak_blocks,
            self.max_batch_size,
        ) == (
            other.iterations,
            other.busy_s,
            other.busy_device_s,
            other.energy_busy_j,
            other.prefill_tokens,
            other.decode_tokens,
            other.kv_peak_blocks,
            other.max_batch_size,
        )


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
    decisions: DecisionLog | None = None
    """The run's decision rows (``outputs.decisions``); None: decisions are not recorded."""
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

    def flush(self) -> None:
        """Hand everything buffered to the sinks (call once the run is over)."""
        self._flush_steps()
        self._flush_requests()
        if self.decisions is not None:
            self.decisions.flush()

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

    def on_fail(self, seq: Sequence, instance: int, now: float, reason: str) -> None:
        self.on_drop(seq, instance, now, "failed", reason, "kv_capacity")

    def on_drop(
        self,
        seq: Sequence,
        instance: int,
        now: float,
        status: str,
        reason: str,
        policy: str | None = None,
    ) -> None:
        """A request that ends unserved: ``failed`` (can never fit), or by admission control
        ``rejected`` (queue full) or ``timed_out`` (waited too long). With decisions on it is
        also an ``admission`` decision of ``policy`` (what refused it: a config key), whose
        outcome is ``status``."""
        seq.finish_time = now
        seq.fail_reason = reason
        self._hand_over(self.requests.append(seq, instance, status))
        log = self.decisions
        if log is not None:
            log.record(
                ADMISSION,
                now,
                seq.spec.id,
                instance,
                log.code(policy),
                [],
                None,
                -1,
                log.code(status),
                log.code(reason),
            )

    def decide(
        self,
        kind: str,
        time_s: float,
        *,
        request_id: int = -1,
        instance: int = -1,
        policy: str | None = None,
        candidates: SequenceOf[int] = (),
        scores: SequenceOf[float] | None = None,
        chosen: int = -1,
        outcome: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Log one decision (``DecisionLog.add``; nothing when decisions are off). A new
        policy's decisions take this one call (docs/extending.md)."""
        if self.decisions is not None:
            self.decisions.add(
                kind,
                time_s,
                request_id=request_id,
                instance=instance,
                policy=policy,
                candidates=candidates,
                scores=scores,
                chosen=chosen,
                outcome=outcome,
                reason=reason,
            )

    def totals(self, instance: int) -> StepTotals:
        totals = self.steps.get(instance)
        if totals is None:
            totals = self.steps[instance] = StepTotals()
        return totals
