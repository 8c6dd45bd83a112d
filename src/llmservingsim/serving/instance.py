"""One serving instance (a TP × PP or DP × TP group of devices): virtual engines + pipeline +
step timing.

Without pipeline parallelism an instance runs one step at a time. With PP = k it behaves like
vLLM's virtual engines: k schedulers, each owning 1/k of the KV blocks and its own requests,
take turns feeding micro-batches into the pipeline, so up to k batches are in flight, one per
stage. A batch enters stage s when it left stage s−1 and the previous batch left stage s.

With attention data parallelism (DP = D, MoE models) the instance has D ranks of TP devices,
each a scheduler with its own KV cache and requests (a request goes to the rank with the
fewest outstanding requests). The ranks step in lockstep, as vLLM's DP ranks do around the
experts they share: every rank with work schedules its batch at once, and all of them end when
the slowest rank's part and the experts on the ranks' tokens together are done
(IterationTimer.step_ranks). Fast-forward runs are off there (they lay out one engine's steps).

Roles (prefill/decode disaggregation): a ``prefill`` instance hands a request off once its
prompt is computed and its first token sampled; ``decode`` and ``mixed`` instances serve
requests to the end.

What an instance delegates: a step's seconds to its timer (perf/iteration.py), LoRA and draft
passes and host-link copies to perf/ too, the records each step leaves (totals, energy, the
time series) to :class:`~llmservingsim.serving.step_record.StepRecord`, the layout of decode
runs to serving/decode_run.py; scheduling to its schedulers. What is left here: requests in
and out, and when each step starts and ends.

Multi-step scheduling (``scheduler.num_scheduler_steps`` N > 1, vLLM 0.6's
--num-scheduler-steps): a step that only decodes starts a group of N steps on its batch.
The later N − 1 steps are not scheduled: a request arriving meanwhile starts at the group's
end, and they pay no host work per step (:meth:`IterationTimer.step` with ``host=False``). A
request that samples its last token inside the group ends for its client then, but vLLM's
batch stays fixed on the GPU for the group: it is still computed (wasted) and holds its KV
until the group's end. A group of finished requests only ends early when nothing waits.

Fast-forward (``simulator.fast_forward``): a step that only decodes every running request may
start a :class:`DecodeRun` of the steps that certainly repeat it; the engine cuts the run short
(:meth:`Instance.cut_runs`) when a request or a KV transfer reaches the instance earlier.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np

from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.perf.energy import PowerModel
from llmservingsim.perf.iteration import BatchShape, IterationTimer, StepCost
from llmservingsim.perf.lora import LoraCompute
from llmservingsim.perf.speculative import prepend_work
from llmservingsim.sequence import Sequence, Status
from llmservingsim.serving.decode_run import MIN_RUN_STEPS, DecodeRun, plan_decode_run
from llmservingsim.serving.lora import adapter_tokens
from llmservingsim.serving.memory import MemoryPlan
from llmservingsim.serving.schedulers.base import ScheduledEntry, Scheduler
from llmservingsim.serving.speculative import Speculator
from llmservingsim.serving.steady import SteadyDecoders
from llmservingsim.serving.step_record import StepRecord

Role = Literal["mixed", "prefill", "decode"]


class VirtualEngine:
    """A scheduler and the batch it has in flight (at most one)."""

    scheduler: Scheduler
    in_flight: list[ScheduledEntry]
    busy: bool
    outstanding: int  # requests assigned and not yet finished or handed off
    run: DecodeRun | None  # the fast-forward run in flight, if any
    step_serial: int  # numbers the engine's step-end events; a cut run's old one is stale
    # Multi-step scheduling (Instance docstring): steps of the group still to start after the
    # one in flight, the group's requests still decoding, those that finished in it (KV held,
    # still computed) and the context their next step reads, in tokens.
    group_left: int
    group: list[Sequence]
    held: list[Sequence]
    held_context: int

    def __init__(
        self,
        scheduler: Scheduler,
        in_flight: list[ScheduledEntry] | None = None,
        busy: bool = False,
        outstanding: int = 0,
        run: DecodeRun | None = None,
        step_serial: int = 0,
    ) -> None:
        self.scheduler = scheduler
        self.in_flight: list[ScheduledEntry] = list() if in_flight is None else in_flight
        self.busy = busy
        self.outstanding = outstanding
        self.run = run
        self.step_serial = step_serial
        self.group_left = 0
        self.group: list[Sequence] = []
        self.held: list[Sequence] = []
        self.held_context = 0

    def __repr__(self) -> str:
        return (
            f"VirtualEngine("
            f"scheduler={self.scheduler!r}, "
            f"in_flight={self.in_flight!r}, "
            f"busy={self.busy!r}, "
            f"outstanding={self.outstanding!r}, "
            f"run={self.run!r}, "
            f"step_serial={self.step_serial!r}, "
            f"group_left={self.group_left!r}, "
            f"group={self.group!r}, "
            f"held={self.held!r}, "
            f"held_context={self.held_context!r}"
            ")"
        )


def never_fits_reason(needed: int, input_len: int, output_len: int, capacity: int) -> str:
    """Why a request failed: its KV cache at its largest is more than the whole cache."""
    return f"needs {needed} KV blocks for {input_len}+{output_len} tokens, the cache has {capacity}"


def timed_out_reason(timeout_s: float | None) -> str:
    """Why admission control dropped a request that waited too long."""
    return f"waited over scheduler.request_timeout_s={timeout_s}"


def client_timeout_reason(timeout_s: float) -> str:
    """Why a request ended when its client gave up on it."""
    return f"client gave up after workload.timeout_s={timeout_s:g}"


def too_long_reason(tokens: int, limit: int) -> str:
    """Why a request longer than max_model_len was rejected."""
    return f"prompt + output = {tokens} tokens > max_model_len {limit}"


def queue_full_reason(max_queue: int | None) -> str:
    """Why a request was rejected by admission control."""
    return f"waiting queue full (scheduler.max_queue={max_queue})"


# Steps a decode run is laid out for at most: doubles after a run that ends as planned, shrinks
# to twice the steps done after a cut, so runs that keep getting cut waste little timing work.
_RUN_HORIZON: Final = (2 * MIN_RUN_STEPS, 4096)
INF: Final = float("inf")


class Instance:
    """The engine calls :meth:`start_step` / :meth:`end_step`; see engine.py."""

    def __init__(
        self,
        index: int,
        schedulers: list[Scheduler],
        timer: IterationTimer,
        memory: MemoryPlan,
        device: DeviceSpec,
        compute_dtype: str,
        metrics: MetricsCollector,
        *,
        role: Role = "mixed",
        pool: str = "default",
        first_device: int = 0,
        attached_devices: tuple[tuple[DeviceSpec, int], ...] = (),
        speculator: Speculator | None = None,
        lora: LoraCompute | None = None,
        fast_forward: bool = False,
    ) -> None:
        self.index = index
        self.virtual_engines = [VirtualEngine(s) for s in schedulers]
        self.timer = timer
        self.memory = memory
        self.device = device
        self.role = role
        self.pool = pool
        self.first_device = first_device
        self.tp = timer.tp
        self.pp = timer.pp
        self.dp = timer.dp  # attention data-parallel ranks (lockstep), one engine each
        self.num_devices = timer.tp * timer.pp * timer.dp
        self._step_devices = timer.tp * timer.dp  # devices busy for each stage's time
        self.kv_devices = timer.tp * timer.pp  # devices holding a slice of one request's KV
        # Devices outside the TP × PP group that serve this instance (PIM): (spec, count).
        self.attached_devices = attached_devices
        self.metrics = metrics
        self.speculator = speculator  # speculative decoding (serving/speculative.py), or None
        self.lora = lora  # LoRA GEMMs of multi-LoRA serving (serving/lora.py), or None
        self.stage_free = [0.0] * self.pp  # when each pipeline stage finishes its current batch
        self._next_engine = 0
        self.wake_at = -1.0  # time of the pending wake-up event, if any
        self._incoming = 0  # requests whose KV cache is on its way here (P/D disaggregation)
        self._outstanding = 0  # requests queued or running here
        # Outstanding requests of every instance of the cluster, indexed by instance, for
        # routers that compare all instances (cluster/routers.py); None when standalone.
        self.load_board: list[int] | None = None
        # Steady decoders as a group (serving/steady.py): not where a decode step differs
        # per request (speculative verify steps, LoRA adapters).
        if fast_forward and speculator is None and lora is None:
            for ve in self.virtual_engines:
                ve.scheduler.keep_steady_decoders(timer.window, timer.chunk)
        # Multi-step scheduling: GPU steps per group of decode steps (1: none).
        self.group_steps = schedulers[0].cfg.num_scheduler_steps
        # Runs need one engine (no pipeline, no DP ranks) and a timer without per-step side
        # effects. Not with multi-step groups: a run's steps each pay the host's work and end
        # where a request arrives, where a group's do neither; groups go step by step.
        self.fast_forward = (
            fast_forward
            and self.pp == 1
            and self.dp == 1
            and timer.repeatable
            and self.group_steps == 1
        )
        self._run_horizon = _RUN_HORIZON[0]
        # The last step started: KV copies over the host link charged before its forward
        # pass, and the forward pass (all stages); observers (engine hooks) read them.
        self.last_transfer_s = 0.0
        self.last_compute_s = 0.0
        self.runs_laid_out = 0  # fast-forward runs planned, and cut short (observers read them)
        self.runs_cut = 0
        # What each step leaves behind: totals, energy, the time-series row (step_record.py).
        self.record = StepRecord(
            index, metrics, PowerModel(device, compute_dtype), self._step_devices, self.num_blocks
        )
        self.totals = self.record.totals
        self.power = self.record.power
        # Autoscaling (cluster/autoscale.py): whether routers send requests here, and whether
        # the instance is being drained (released once its last request has left).
        self.routable = True
        self.draining = False
        # First tokens sampled here and the sum of their times to first token (the autoscaler's
        # ttft metric reads and resets them).
        self.first_tokens = 0
        self.ttft_sum = 0.0
        self._timeouts = any(
            ve.scheduler.cfg.request_timeout_s is not None for ve in self.virtual_engines
        )

    # -------------------------------------------------------------- load seen by routers

    @property
    def peak_flops(self) -> float:
        """Peak FLOP/s of one device in the compute dtype (step power reads it)."""
        return self.power.peak_flops

    @property
    def scheduler(self) -> Scheduler:
        """The first (without PP: the only) scheduler."""
        return self.virtual_engines[0].scheduler

    @property
    def incoming(self) -> int:
        return self._incoming

    @incoming.setter
    def incoming(self, value: int) -> None:
        self._incoming = value
        self._publish_load()

    @property
    def outstanding(self) -> int:
        return self._outstanding

    @outstanding.setter
    def outstanding(self, value: int) -> None:
        self._outstanding = value
        self._publish_load()

    def attach_load_board(self, board: list[int]) -> None:
        """Publish this instance's outstanding requests to ``board[self.index]`` from now on."""
        self.load_board = board
        self._publish_load()

    def _publish_load(self) -> None:
        board = self.load_board
        if board is not None:
            board[self.index] = self._incoming + self._outstanding

    @property
    def num_outstanding(self) -> int:
        """Requests assigned here and not finished (or handed off), including those in transit."""
        return self._incoming + self._outstanding

    @property
    def num_free_blocks(self) -> int:
        return sum(ve.scheduler.blocks.num_free for ve in self.virtual_engines)

    @property
    def num_blocks(self) -> int:
        return sum(ve.scheduler.blocks.num_blocks for ve in self.virtual_engines)

    @property
    def num_waiting(self) -> int:
        return sum(len(ve.scheduler.waiting) for ve in self.virtual_engines)

    @property
    def busy(self) -> bool:
        return any(ve.busy for ve in self.virtual_engines)

    @property
    def preemptions(self) -> int:
        return sum(ve.scheduler.preemptions for ve in self.virtual_engines)

    def has_work(self) -> bool:
        return any(ve.scheduler.has_work() for ve in self.virtual_engines)

    def blocks_fast_forward(self) -> bool:
        """Whether the next steps must be simulated one by one: speculative verify steps
        accept a random number of tokens each, so they are never plain decode steps; with
        LoRA adapters a step adds adapter GEMMs (and may wait for adapter loads); with
        ``scheduler.request_timeout_s`` a waiting request may time out at any step."""
        return (
            self.speculator is not None
            or self.lora is not None
            or (
                self._timeouts
                and any(
                    ve.scheduler.cfg.request_timeout_s is not None and ve.scheduler.waiting
                    for ve in self.virtual_engines
                )
            )
        )

    # -------------------------------------------------------------- requests in

    def add(self, seq: Sequence, now: float) -> None:
        """Queue an arriving request, or fail it if it could never fit the KV cache."""
        if seq.status is Status.TRANSFERRING:
            self.incoming -= 1
        engines = self.virtual_engines
        ve = engines[0] if len(engines) == 1 else min(engines, key=lambda e: e.outstanding)
        needed = ve.scheduler.max_blocks_needed(seq)
        capacity = ve.scheduler.blocks.num_blocks
        if needed > capacity:
            seq.status = Status.FAILED
            reason = never_fits_reason(needed, seq.spec.input_len, seq.spec.output_len, capacity)
            self.metrics.on_fail(seq, self.index, now, reason)
            return
        if seq.admissions == 0 and ve.scheduler.queue_full():
            seq.status = Status.FAILED
            reason = queue_full_reason(ve.scheduler.cfg.max_queue)
            self.metrics.on_drop(seq, self.index, now, "rejected", reason, "scheduler.max_queue")
            return
        seq.status = Status.WAITING
        ve.outstanding += 1
        self.outstanding += 1
        ve.scheduler.add(seq)

    def _expire(self, ve: VirtualEngine, now: float) -> None:
        """Admission control: drop the requests that waited past scheduler.request_timeout_s."""
        for seq in ve.scheduler.expire_waiting(now):
            seq.status = Status.FAILED
            ve.outstanding -= 1
            self.outstanding -= 1
            reason = timed_out_reason(ve.scheduler.cfg.request_timeout_s)
            self.metrics.on_drop(
                seq, self.index, now, "timed_out", reason, "scheduler.request_timeout_s"
            )

    def abort(self, seq: Sequence, now: float, reason: str) -> bool:
        """The client gave up on ``seq`` (workload.timeout_s): it leaves its queue or its batch
        now, its KV blocks freed, and ends ``timed_out`` with the tokens it generated so far.
        A step in flight keeps its time (the devices compute it anyway) but gives ``seq`` no
        token. False when ``seq`` is not here."""
        for ve in self.virtual_engines:
            if ve.scheduler.abort(seq):
                if seq in ve.group:
                    ve.group.remove(seq)
                if ve.in_flight:
                    ve.in_flight = [entry for entry in ve.in_flight if entry[0] is not seq]
                ve.outstanding -= 1
                self.outstanding -= 1
                seq.status = Status.FAILED
                self.metrics.on_drop(
                    seq, self.index, now, "timed_out", reason, "workload.timeout_s"
                )
                return True
        return False

    # -------------------------------------------------------------- steps

    def start_step(self, now: float, next_arrival: float = INF) -> tuple[float, int] | None:
        """Start the next batch if stage 0 is free and an idle virtual engine has work.

        ``next_arrival``: when the workload's next request arrives (at any instance). A
        fast-forward run is laid out only up to it, as a request routed here would cut the run
        there (what is left would be timed for nothing); the results do not depend on it.

        Returns (time the batch leaves the last stage, virtual engine index), or None.
        """
        if self.stage_free[0] > now:
            return None
        if self.dp > 1:
            return self._start_ranks(now)
        engines = self.virtual_engines
        count = len(engines)
        if count == 1:  # no pipeline: one engine
            ve = engines[0]
            return None if ve.busy else self._start_engine(0, ve, now, next_arrival)
        for offset in range(count):
            k = (self._next_engine + offset) % count
            ve = engines[k]
            if ve.busy:
                continue
            started = self._start_engine(k, ve, now, next_arrival)
            if started is not None:
                self._next_engine = (k + 1) % count
                return started
        return None

    def _start_engine(
        self, k: int, ve: VirtualEngine, now: float, next_arrival: float
    ) -> tuple[float, int] | None:
        """Schedule and start virtual engine ``k``'s next batch, if it has one."""
        if ve.group_left:
            return self._continue_group(k, ve, now)
        scheduler = ve.scheduler
        if self._timeouts and scheduler.cfg.request_timeout_s is not None:
            self._expire(ve, now)
        speculator = self.speculator
        if speculator is not None:
            scheduler.lookahead = speculator.lookahead(len(scheduler.running))
        preemptions = scheduler.preemptions
        site = scheduler.decisions
        if site is not None:
            site.now = now  # the time of the preemptions this schedule() logs
        entries = scheduler.schedule()
        steady = scheduler.steady
        steady_decodes = 0 if steady is None else steady.in_flight
        if not entries and not steady_decodes:
            return None
        batch = self._batch_shape(entries, now, steady, self.timer.window, self.timer.chunk)
        cost = self.timer.step(batch)
        if speculator is not None:
            cost = speculator.add_proposals(entries, cost)
        if self.lora is not None and scheduler.adapters is not None:
            tokens = adapter_tokens(entries)
            if tokens:
                work = self.lora.cost(tokens)
                scheduler.adapters.stats.compute_s += work.seconds
                cost = prepend_work(cost, work)
        # KV copies over the host link (swap, offload loads) run before the forward pass.
        transfer = scheduler.take_transfer_seconds()
        finish = self._launch(k, ve, entries, batch, cost, now, transfer)
        if self.group_steps > 1 and entries and not batch.prefill:
            ve.group_left = self.group_steps - 1
            ve.group = [seq for seq, _ in entries]
        if (
            self.fast_forward
            and not entries
            and steady is not None
            and steady.repeats_for(MIN_RUN_STEPS)
            and transfer == 0.0
            and steady_decodes == len(scheduler.running)
            and scheduler.preemptions == preemptions
            and scheduler.repeats_decode()
            and not self.blocks_fast_forward()
        ):
            horizon = self._run_horizon
            if next_arrival < INF and cost.seconds > 0.0:
                # Steps only grow longer as contexts grow: this many end before the arrival.
                horizon = min(horizon, int((next_arrival - now) / cost.seconds) + 1)
            ve.run = plan_decode_run(steady, batch, cost, finish, self.timer, horizon)
            if ve.run is not None:
                self.runs_laid_out += 1
                finish = self.stage_free[0] = ve.run.finish
        return finish, k

    def _continue_group(self, k: int, ve: VirtualEngine, now: float) -> tuple[float, int]:
        """The next step of virtual engine ``k``'s multi-step group: its requests decode
        again, unscheduled and without the host's per-step work; those that finished in the
        group are computed too (one more token of context each step)."""
        ve.group_left -= 1
        entries: list[ScheduledEntry] = [(seq, 1) for seq in ve.group]
        batch = self._batch_shape(entries, now, None)
        held = len(ve.held)
        batch.num_decode += held
        batch.decode_context += ve.held_context
        batch.num_sampled += held
        ve.held_context += held
        cost = self.timer.step(batch, host=False)
        return self._launch(k, ve, entries, batch, cost, now, 0.0), k

    def _launch(
        self,
        k: int,
        ve: VirtualEngine,
        entries: list[ScheduledEntry],
        batch: BatchShape,
        cost: StepCost,
        now: float,
        transfer: float,
    ) -> float:
        """Start virtual engine ``k``'s step: ``transfer`` seconds of KV copies, then the
        forward pass through the pipeline; record it. Returns when its first stage is done."""
        self.last_transfer_s = transfer
        self.last_compute_s = cost.seconds
        finish = self._run_pipeline(now + transfer, cost)
        self._record_step(batch, cost, now, k)
        ve.in_flight = entries
        ve.busy = True
        return finish

    def _group_step_done(self, ve: VirtualEngine, finished: list[Sequence]) -> list[Sequence]:
        """A step of a multi-step group ended with ``finished`` requests: inside the group
        they keep their KV (and are computed on); at its end all of them leave. Returns the
        requests that leave the running list now."""
        if ve.group_left:
            group = ve.group
            for seq in finished:
                group.remove(seq)
                ve.held_context += seq.num_computed + 1
            ve.held.extend(finished)
            if group or (ve.held and ve.scheduler.waiting):
                return []
            ve.group_left = 0  # nothing decodes and nothing waits: the engine idles
            finished = []
        leaving = ve.held + finished
        ve.group = []
        ve.held = []
        ve.held_context = 0
        return leaving

    def _start_ranks(self, now: float) -> tuple[float, int] | None:
        """Attention DP: every rank with work schedules its batch and all step together; one
        step-end event (the first such rank's) ends them all. None while a step is in flight
        or no rank has a batch."""
        engines = self.virtual_engines
        for ve in engines:
            if ve.busy:
                return None
        batches: list[BatchShape] = []
        started: list[tuple[VirtualEngine, list[ScheduledEntry]]] = []
        first = -1
        transfer = 0.0
        for k, ve in enumerate(engines):
            scheduler = ve.scheduler
            if scheduler.cfg.request_timeout_s is not None:
                self._expire(ve, now)
            entries = scheduler.schedule()
            steady = scheduler.steady
            if not entries and (steady is None or not steady.in_flight):
                continue
            batches.append(
                self._batch_shape(entries, now, steady, self.timer.window, self.timer.chunk)
            )
            started.append((ve, entries))
            # KV copies over each rank's host links run before the (shared) forward pass.
            transfer = max(transfer, scheduler.take_transfer_seconds())
            if first < 0:
                first = k
        if first < 0:
            return None
        cost = self.timer.step_ranks(batches)
        self.last_transfer_s = transfer
        self.last_compute_s = cost.seconds
        finish = self._run_pipeline(now + transfer, cost)
        whole = BatchShape()
        for batch in batches:
            whole.prefill.extend(batch.prefill)
            whole.num_decode += batch.num_decode
            whole.decode_context += batch.decode_context
            whole.decode_local_context += batch.decode_local_context
            whole.num_sampled += batch.num_sampled
            whole.num_verify += batch.num_verify
        self._record_step(whole, cost, now, first)
        for ve, entries in started:
            ve.in_flight = entries
            ve.busy = True
        return finish, first

    def cut_runs(self, now: float, inclusive: bool = False) -> list[tuple[int, float]]:
        """Something reaches the instance at ``now``: apply the steps of its decode runs that
        ended before, and end each run with the step in progress. ``inclusive``: a step
        ending exactly at ``now`` has ended (the engine takes step ends at a time before KV
        arrivals at that time; arrivals of new requests come before step ends).

        Returns (virtual engine, new end of its in-flight step) for each run that got shorter.
        """
        changed = []
        for k, ve in enumerate(self.virtual_engines):
            run = ve.run
            if run is None:
                continue
            current = run.steps_ended_by(now, inclusive)
            self._advance_run(k, current)
            if current < len(run.ends) - 1:
                self.runs_cut += 1
                run.truncate(current)
                self.stage_free[0] = run.finish
                self._run_horizon = max(_RUN_HORIZON[0], 2 * (current + 1))
                changed.append((k, run.finish))
        return changed

    def _advance_run(self, engine: int, upto: int) -> None:
        """Apply a run's steps before step ``upto``: their ends and the starts that followed."""
        ve = self.virtual_engines[engine]
        run, steady = ve.run, ve.scheduler.steady
        assert run is not None and steady is not None
        used_before = ve.scheduler.blocks.num_used
        first, stop = run.apply(upto, steady, self.metrics.itl)
        if stop > first:
            used = used_before + np.cumsum(run.new_blocks[first:stop])
            self.record.run_steps(run, first, stop, engine, used, self.num_blocks, self.num_waiting)
            self.timer.count_repeats(stop - first, run.lookups_per_step, run.hits_per_step)

    def next_wake(self, now: float) -> float | None:
        """When stage 0 frees up for an idle virtual engine that has work (PP > 1 only)."""
        if self.stage_free[0] <= now:
            return None
        if any(not ve.busy and ve.scheduler.has_work() for ve in self.virtual_engines):
            return self.stage_free[0]
        return None

    @staticmethod
    def _batch_shape(
        entries: list[ScheduledEntry],
        now: float,
        steady: SteadyDecoders | None,
        window: int = 0,
        chunk: int = 0,
    ) -> BatchShape:
        """The step's batch; ``window`` > 0: the model's sliding window, whose layers attend
        min(context, window) tokens per decode sequence (``decode_local_context``); ``chunk``
        > 0: its attention chunk, whose layers attend (context − 1) mod chunk + 1."""
        # Hot (every sequence, every step): Sequence properties read into locals.
        batch = BatchShape()
        prefill = batch.prefill
        num_decode = decode_context = num_sampled = num_verify = local_context = 0
        for seq, num_new in entries:
            computed = seq.num_computed
            generated = seq.generated
            tokens = seq.spec.input_len + generated
            if num_new > tokens - computed:
                # Speculative verify: the last token and the drafts, like a small prefill
                # chunk that samples at every position.
                prefill.append((num_new, computed))
                num_sampled += num_new
                num_verify += num_new
                continue
            samples = computed + num_new == tokens
            if samples and num_new == 1 and generated > 0:
                num_decode += 1
                decode_context += computed + 1
                if window:
                    local_context += computed + 1 if computed < window else window
                elif chunk:
                    local_context += computed % chunk + 1
            else:
                prefill.append((num_new, computed))
                if seq.first_scheduled_time < 0:
                    seq.first_scheduled_time = now
            num_sampled += samples
        if steady is not None and steady.in_flight:
            num_decode += steady.in_flight
            decode_context += steady.in_flight_context
            num_sampled += steady.in_flight
            # Past the window, or inside their chunk till they finish (SteadyDecoders.join).
            local_context += steady.in_flight_local_context
        batch.num_decode = num_decode
        batch.decode_context = decode_context
        batch.decode_local_context = local_context
        batch.num_sampled = num_sampled
        batch.num_verify = num_verify
        return batch

    def _run_pipeline(self, now: float, cost: StepCost) -> float:
        stage_free = self.stage_free
        t = now
        for s, duration in enumerate(cost.stages):
            t = max(t, stage_free[s]) + duration
            stage_free[s] = t
        return t

    def _record_step(self, batch: BatchShape, cost: StepCost, now: float, engine: int) -> None:
        engines = self.virtual_engines
        if len(engines) == 1:
            scheduler = engines[0].scheduler
            used = scheduler.blocks.num_used
            waiting = len(scheduler.waiting)
        else:
            used = sum(e.scheduler.blocks.num_used for e in engines)
            waiting = self.num_waiting
        self.record.step(batch, cost, now, engine, used, waiting)

    def _keep_accepted(self, seq: Sequence, num_new: int, scheduler: Scheduler, now: float) -> int:
        """Emit the accepted drafts of a verify step and free the rejected slots; returns the
        tokens left to add (none: the caller then samples the target's own token)."""
        assert self.speculator is not None
        accepted = self.speculator.accept(num_new - 1)
        seq.num_computed += 1 + accepted
        for _ in range(accepted):
            seq.generated += 1
            self.metrics.on_token(seq, now)
        scheduler.blocks.release_tail(seq)
        return 0

    def end_step(self, engine_index: int, now: float) -> list[Sequence]:
        """Apply a batch's results: advance tokens, emit samples, retire finished requests.

        Returns the requests a prefill instance hands off (prompt done, first token sampled).
        """
        ve = self.virtual_engines[engine_index]
        if ve.run is not None:
            if not ve.run.cut:
                self._run_horizon = min(_RUN_HORIZON[1], 2 * self._run_horizon)
            self._advance_run(engine_index, len(ve.run.ends) - 1)
            ve.run = None
        if self.dp > 1:  # the lockstep step of every rank that had a batch ends
            handoffs: list[Sequence] = []
            for rank in self.virtual_engines:
                if rank.busy:
                    handoffs.extend(self._end_engine(rank, now))
            return handoffs
        return self._end_engine(ve, now)

    def _end_engine(self, ve: VirtualEngine, now: float) -> list[Sequence]:
        """:meth:`end_step` of one virtual engine (no run in flight)."""
        handoffs: list[Sequence] = []
        metrics = self.metrics
        itl = metrics.itl
        finished: list[Sequence] = []  # leaving the running list (finished or handed off)
        steady = ve.scheduler.steady
        if steady is not None:
            for seq in steady.end_step(now, itl):
                seq.status = Status.FINISHED
                ve.outstanding -= 1
                self.outstanding -= 1
                metrics.on_finish(seq, self.index, now)
                finished.append(seq)
        # metrics.on_token, inlined (hot: every sequence, every step). Equal consecutive gaps
        # (the usual case: the batch decoded together last step) go to ``itl`` in one call,
        # which stores them exactly as one call per gap would.
        gap, gaps = 0.0, 0
        for seq, num_new in ve.in_flight:
            spec = seq.spec
            if num_new > spec.input_len + seq.generated - seq.num_computed:
                itl.add(gap, gaps)
                gaps = 0
                num_new = self._keep_accepted(seq, num_new, ve.scheduler, now)
            computed = seq.num_computed = seq.num_computed + num_new
            generated = seq.generated
            if computed == spec.input_len + generated:
                seq.generated = generated = generated + 1
                if seq.first_token_time < 0:
                    seq.first_token_time = now
                    self.first_tokens += 1
                    self.ttft_sum += now - spec.arrival_s
                elif now - seq.last_token_time == gap:
                    gaps += 1
                else:
                    itl.add(gap, gaps)
                    gap, gaps = now - seq.last_token_time, 1
                seq.last_token_time = now
                if generated >= spec.output_len:
                    seq.status = Status.FINISHED
                    ve.outstanding -= 1
                    self.outstanding -= 1
                    metrics.on_finish(seq, self.index, now)
                    finished.append(seq)
                elif self.role == "prefill":
                    seq.status = Status.TRANSFERRING
                    ve.outstanding -= 1
                    self.outstanding -= 1
                    handoffs.append(seq)
                    finished.append(seq)
        itl.add(gap, gaps)
        ve.in_flight = []
        if ve.group_left or ve.group or ve.held:
            finished = self._group_step_done(ve, finished)
        ve.scheduler.step_done(now, finished)
        ve.busy = False
        return handoffs
