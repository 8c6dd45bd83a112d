"""Collects what happens during a run; summary.py turns it into numbers.

Per-request rows are kept as plain tuples and inter-token gaps in a growing float array, so a
run costs a few bytes per token, not an object per event.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

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
    cached_tokens: int
    preemptions: int
    status: str
    fail_reason: str = ""
    prefill_instance: int = -1
    kv_transfer_s: float = 0.0

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


@dataclass
class MetricsCollector:
    records: list[RequestRecord] = field(default_factory=list)
    itl: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    steps: dict[int, StepTotals] = field(default_factory=dict)

    def on_token(self, seq: Sequence, now: float) -> None:
        if seq.first_token_time < 0:
            seq.first_token_time = now
        else:
            self.itl.append(now - seq.last_token_time)
        seq.last_token_time = now

    def on_finish(self, seq: Sequence, instance: int, now: float) -> None:
        seq.finish_time = now
        self.records.append(self._record(seq, instance, "finished"))

    def on_fail(self, seq: Sequence, instance: int, now: float, reason: str) -> None:
        seq.finish_time = now
        seq.fail_reason = reason
        self.records.append(self._record(seq, instance, "failed"))

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
            cached_tokens=0,
            preemptions=seq.preemptions,
            status=status,
            fail_reason=seq.fail_reason,
            prefill_instance=seq.prefill_instance,
            kv_transfer_s=seq.kv_transfer_s,
        )

    def totals(self, instance: int) -> StepTotals:
        totals = self.steps.get(instance)
        if totals is None:
            totals = self.steps[instance] = StepTotals()
        return totals
