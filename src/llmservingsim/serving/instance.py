"""One serving instance (one tensor-parallel group): scheduler + KV cache + step timing."""

from __future__ import annotations

from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.perf.iteration import BatchShape, IterationTimer, StepCost
from llmservingsim.serving.memory import MemoryPlan
from llmservingsim.serving.schedulers.base import ScheduledEntry, Scheduler
from llmservingsim.serving.sequence import Sequence, Status


class Instance:
    """Runs one engine step at a time; the engine calls :meth:`start_step` / :meth:`end_step`."""

    def __init__(
        self,
        index: int,
        scheduler: Scheduler,
        timer: IterationTimer,
        memory: MemoryPlan,
        device: DeviceSpec,
        compute_dtype: str,
        num_devices: int,
        metrics: MetricsCollector,
    ) -> None:
        self.index = index
        self.scheduler = scheduler
        self.timer = timer
        self.memory = memory
        self.num_devices = num_devices
        self.metrics = metrics
        self.totals = metrics.totals(index)
        self.busy = False
        self._in_flight: list[ScheduledEntry] = []
        self._peak_flops = device.peak_flops(compute_dtype)
        self._bandwidth = device.memory_bandwidth
        self._idle_w = device.power.idle_w
        self._dynamic_w = device.power.max_w - device.power.idle_w

    def add(self, seq: Sequence, now: float) -> None:
        """Queue an arriving request, or fail it if it could never fit the KV cache."""
        needed = self.scheduler.max_blocks_needed(seq)
        if needed > self.memory.num_blocks:
            seq.status = Status.FAILED
            reason = (
                f"needs {needed} KV blocks for {seq.spec.input_len}+{seq.spec.output_len} tokens, "
                f"the cache has {self.memory.num_blocks}"
            )
            self.metrics.on_fail(seq, self.index, now, reason)
            return
        self.scheduler.add(seq)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def start_step(self) -> float | None:
        """Schedule the next step; returns its duration, or None when there is nothing to run."""
        entries = self.scheduler.schedule()
        if not entries:
            return None
        batch = BatchShape()
        for seq, num_new in entries:
            samples = seq.num_computed + num_new == seq.num_tokens
            if samples and num_new == 1 and seq.generated > 0:
                batch.num_decode += 1
                batch.decode_context += seq.num_computed + 1
            else:
                batch.prefill.append((num_new, seq.num_computed))
            batch.num_sampled += samples
        cost = self.timer.step(batch)
        self._record_step(batch, cost)
        self._in_flight = entries
        self.busy = True
        return cost.seconds

    def _record_step(self, batch: BatchShape, cost: StepCost) -> None:
        totals = self.totals
        totals.iterations += 1
        totals.busy_s += cost.seconds
        decode = batch.num_decode
        totals.decode_tokens += decode
        totals.prefill_tokens += batch.num_tokens - decode
        totals.max_batch_size = max(totals.max_batch_size, batch.num_seqs)
        used = self.scheduler.blocks.num_used
        totals.kv_peak_blocks = max(totals.kv_peak_blocks, used)
        if cost.seconds > 0:
            busy = max(cost.flops / self._peak_flops, cost.bytes / self._bandwidth)
            utilization = min(1.0, busy / cost.seconds)
            power = self._idle_w + self._dynamic_w * utilization
            totals.energy_busy_j += power * cost.seconds * self.num_devices

    def end_step(self, now: float) -> None:
        """Apply the step's results: advance tokens, emit samples, retire finished requests."""
        for seq, num_new in self._in_flight:
            seq.num_computed += num_new
            if seq.num_computed == seq.num_tokens:
                seq.generated += 1
                self.metrics.on_token(seq, now)
                if seq.is_done:
                    seq.status = Status.FINISHED
                    self.metrics.on_finish(seq, self.index, now)
        self._in_flight = []
        self.scheduler.drop_finished()
        self.busy = False
