"""Collects what happens during a run; summary.py turns it into numbers.

Per-request rows are kept as slotted records and inter-token gaps as runs of equal values (every
request of a decode step waited the same gap), so a run costs bytes per step, not per token.
Output files are fed while the run goes: finished requests and engine steps are handed to the
registered sinks in chunks of ``chunk_size`` (the sinks write Parquet row groups, sample the
trace, bucket the time series).
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field
from typing import Protocol

from llmservingsim.metrics.samples import RepeatedSamples
from llmservingsim.metrics.steps import FloatArray, IntArray, StepChunk, StepLog
from llmservingsim.serving.sequence import Sequence


@dataclass(slots=True)
class RequestRecord:
    id: int
    instance: int
    arrival_s: float
    first_token_s: float
    finish_s: float
    input_tokens: int
    output_tokens: int
    cached_tokens: int  # prompt tokens the prefix cache supplied at the first admission
    preemptions: int
    status: str
    fail_reason: str = ""
    prefill_instance: int = -1
    kv_transfer_s: float = 0.0
    first_scheduled_s: float = -1.0
    """When the request first computed a token (end of queueing); -1 when it never ran."""
    lora: str | None = None
    """The LoRA adapter it ran with (None: the base model)."""

    @property
    def ttft(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def e2e(self) -> float:
        return self.finish_s - self.arrival_s

    @property
    def tpot(self) -> float | None:
        """vLLM benchmark_serving: (e2e − TTFT) / (output − 1), only for > 1 output token."""
        if self.output_tokens <= 1:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)


@dataclass
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
    def write_requests(self, records: SequenceOf[RequestRecord]) -> None: ...


class StepSink(Protocol):
    def write_steps(self, steps: StepChunk) -> None: ...


@dataclass
class MetricsCollector:
    records: list[RequestRecord] = field(default_factory=list)
    itl: RepeatedSamples = field(default_factory=RepeatedSamples)
    steps: dict[int, StepTotals] = field(default_factory=dict)
    request_sinks: list[RequestSink] = field(default_factory=list)
    step_sinks: list[StepSink] = field(default_factory=list)
    chunk_size: int = 65_536
    _pending: list[RequestRecord] = field(default_factory=list)
    _step_log: StepLog = field(default_factory=StepLog)

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

    def _flush_steps(self) -> None:
        if len(self._step_log):
            chunk = self._step_log.take_chunk()
            for sink in self.step_sinks:
                sink.write_steps(chunk)

    def _flush_requests(self) -> None:
        if self._pending:
            for sink in self.request_sinks:
                sink.write_requests(self._pending)
            self._pending = []

    def _add(self, record: RequestRecord) -> None:
        self.records.append(record)
        if self.request_sinks:
            self._pending.append(record)
            if len(self._pending) >= self.chunk_size:
                self._flush_requests()

    def on_token(self, seq: Sequence, now: float) -> None:
        if seq.first_token_time < 0:
            seq.first_token_time = now
        else:
            self.itl.add(now - seq.last_token_time)
        seq.last_token_time = now

    def on_finish(self, seq: Sequence, instance: int, now: float) -> None:
        seq.finish_time = now
        self._add(self._record(seq, instance, "finished"))

    def on_fail(self, seq: Sequence, instance: int, now: float, reason: str) -> None:
        self.on_drop(seq, instance, now, "failed", reason)

    def on_drop(self, seq: Sequence, instance: int, now: float, status: str, reason: str) -> None:
        """A request that ends unserved: ``failed`` (can never fit), or by admission control
        ``rejected`` (queue full) or ``timed_out`` (waited too long)."""
        seq.finish_time = now
        seq.fail_reason = reason
        self._add(self._record(seq, instance, status))

    @staticmethod
    def _record(seq: Sequence, instance: int, status: str) -> RequestRecord:
        return RequestRecord(
            id=seq.id,
            instance=instance,
            arrival_s=seq.spec.arrival_s,
            first_token_s=seq.first_token_time,
            finish_s=seq.finish_time,
            input_tokens=seq.spec.input_len,
            output_tokens=seq.generated,
            cached_tokens=seq.cached_tokens,
            preemptions=seq.preemptions,
            status=status,
            fail_reason=seq.fail_reason,
            prefill_instance=seq.prefill_instance,
            kv_transfer_s=seq.kv_transfer_s,
            first_scheduled_s=seq.first_scheduled_time,
            lora=seq.spec.lora,
        )

    def totals(self, instance: int) -> StepTotals:
        totals = self.steps.get(instance)
        if totals is None:
            totals = self.steps[instance] = StepTotals()
        return totals
