"""What each step of an instance leaves behind: its totals for summary.json (iterations,
tokens, busy and device time, KV peak, energy from perf/energy.py) and its row of the time
series (metrics/collector.py). A fast-forward run's steps are recorded together, as arrays."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.perf.energy import PowerModel
from llmservingsim.perf.iteration import BatchShape, StepCost
from llmservingsim.serving.decode_run import DecodeRun


class StepRecord:
    """The step records of instance ``index``: ``step_devices`` devices busy for each stage's
    time, ``total_blocks`` KV blocks over all its virtual engines."""

    def __init__(
        self,
        index: int,
        metrics: MetricsCollector,
        power: PowerModel,
        step_devices: int,
        total_blocks: int,
    ) -> None:
        self.index = index
        self.metrics = metrics
        self.totals = metrics.totals(index)
        self.power = power
        self.step_devices = step_devices
        self.total_blocks = total_blocks

    def step(
        self, batch: BatchShape, cost: StepCost, now: float, engine: int, used: int, waiting: int
    ) -> None:
        """One step of virtual engine ``engine`` started at ``now`` (``used`` KV blocks in use
        and ``waiting`` requests queued once it started)."""
        # Hot (every step): attributes read into locals once.
        totals = self.totals
        seconds = cost.seconds
        totals.iterations += 1
        totals.busy_s += seconds
        decode = batch.num_decode + batch.num_verify
        num_seqs = len(batch.prefill) + batch.num_decode
        prefill = batch.num_tokens - decode
        totals.decode_tokens += decode
        totals.prefill_tokens += prefill
        if num_seqs > totals.max_batch_size:
            totals.max_batch_size = num_seqs
        if used > totals.kv_peak_blocks:
            totals.kv_peak_blocks = used
        tp = self.step_devices
        step_w = self.power.idle_w * tp  # power of the step's devices, for the time series
        if seconds > 0:
            # Each stage's TP devices are busy for that stage's time only.
            totals.busy_device_s += seconds * tp
            step_energy = self.power.step_energy_j(
                seconds, cost.flops, cost.bytes, tp, cost.aux_energy_j
            )
            totals.energy_busy_j += step_energy
            step_w = step_energy / seconds
        self.metrics.on_step(
            self.index,
            engine,
            now,
            seconds,
            num_seqs,
            prefill,
            decode,
            used,
            self.total_blocks,
            waiting,
            step_w,
        )

    def run_steps(
        self,
        run: DecodeRun,
        first: int,
        stop: int,
        engine: int,
        used: npt.NDArray[np.int64],
        num_blocks: int,
        num_waiting: int,
    ) -> None:
        """:meth:`step` for steps ``first``..``stop-1`` of a decode run, as arrays (``used``:
        KV blocks in use once each had started)."""
        count = stop - first
        batch_size = run.batch.num_decode
        costs = run.costs.take(slice(first, stop))
        seconds, flops, traffic, aux = costs.seconds, costs.flops, costs.bytes, costs.aux_energy_j
        totals = self.totals
        totals.iterations += count
        totals.busy_s += float(seconds.sum())
        totals.decode_tokens += batch_size * count
        totals.kv_peak_blocks = max(totals.kv_peak_blocks, int(used[-1]))
        # Decode steps always take time (the model's weights are read), so seconds > 0.
        devices = self.step_devices
        totals.busy_device_s += float((seconds * devices).sum())
        step_energy = self.power.steps_energy_j(seconds, flops, traffic, devices, aux)
        totals.energy_busy_j += float(step_energy.sum())
        self.metrics.on_steps(
            self.index,
            engine,
            run.ends[first - 1 : stop - 1],
            seconds,
            batch_size,
            used,
            num_blocks,
            num_waiting,
            step_energy / seconds,
        )
