"""Discrete-event loop: request arrivals, batch completions and KV-cache transfers, in time order.

A request that arrives while an instance is mid-step joins at the next step boundary, as in a
real engine. An idle instance starts a step as soon as it has work; a pipelined instance starts
its next micro-batch when stage 0 frees up (a wake-up event). A request prefilled on a
prefill instance reaches its decode instance when its KV transfer ends. Events at the same
time are taken in a fixed order (step ends, wake-ups, KV arrivals; then by instance), so a run is
fully deterministic and does not depend on when an event was scheduled.

Autoscaling (cluster/autoscale.py): the autoscaler's evaluations and its instances becoming
ready are events too, taken after the others at the same time; they keep no run going, so the
run ends at its last request's event.

Fast-forward: an instance may announce the end of a whole run of decode steps as one event
(serving/decode_run.py). Whatever reaches the instance earlier (a routed request, a KV arrival,
a client giving up on a request) first cuts the run at that moment; the run's old end event is
then stale and skipped.

Admission control (cluster/admission.py) decides each arrival before it is routed; a client
timeout (``workload.timeout_s``) is an event at the request's deadline, taken after the other
events at that time (a request that finishes exactly then has finished). Deadlines wait in a
heap of their own and move the clock only when a request is still live at its deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from heapq import heappop, heappush, heapreplace
from typing import ClassVar, Final, Protocol

from mypy_extensions import mypyc_attr

from llmservingsim.cluster.admission import Admission
from llmservingsim.interrupt import HeldSignals, signals_held
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.perf.frontend import Frontend
from llmservingsim.sequence import Sequence, Status
from llmservingsim.serving.instance import Instance, client_timeout_reason, too_long_reason
from llmservingsim.workload.request_spec import RequestSpec
from llmservingsim.workload.request_table import in_arrival_order

ProgressHook = Callable[[float], None]


@mypyc_attr(allow_interpreted_subclasses=True)
class EngineHooks:
    """What an observer of the engine sees, around the only three places serving state
    changes: a request reaching an instance, a step starting, a step ending. The invariant
    checker (invariants.py) is one; tests and users subclass it (any Python class works with
    the compiled engine) and pass it to ``simulate(..., hooks=[...])``. With no hooks the loop
    runs no test for them.

    ``every_step``: the observer must see every step start and end, so the instances lay out no
    fast-forward runs (whose steps are applied in bulk); results are the same either way."""

    every_step: ClassVar[bool] = False

    def sees_every_step(self) -> bool:
        """Whether this observer needs every step (``every_step``; a chain: any of its own)."""
        return self.every_step

    def before_add(self, instance: Instance, now: float) -> None:
        """A request is about to reach ``instance`` (an arrival or a finished KV transfer)."""

    def after_start(
        self, instance: Instance, now: float, started: tuple[float, int] | None
    ) -> None:
        """``instance`` tried to start a step at ``now``: ``started`` is (when the step ends,
        virtual engine index), or None when none started."""

    def after_end(self, instance: Instance, engine_index: int, now: float) -> None:
        """A step of virtual engine ``engine_index`` of ``instance`` ended at ``now``."""


class HookChain(EngineHooks):
    """Several observers, called in order."""

    def __init__(self, hooks: list[EngineHooks]) -> None:
        self.hooks = hooks

    def sees_every_step(self) -> bool:
        return any(hook.sees_every_step() for hook in self.hooks)

    def before_add(self, instance: Instance, now: float) -> None:
        for hook in self.hooks:
            hook.before_add(instance, now)

    def after_start(
        self, instance: Instance, now: float, started: tuple[float, int] | None
    ) -> None:
        for hook in self.hooks:
            hook.after_start(instance, now, started)

    def after_end(self, instance: Instance, engine_index: int, now: float) -> None:
        for hook in self.hooks:
            hook.after_end(instance, engine_index, now)


def chain(hooks: list[EngineHooks]) -> EngineHooks | None:
    """One hooks object for the engine (None when there are none)."""
    if not hooks:
        return None
    return hooks[0] if len(hooks) == 1 else HookChain(hooks)


class Event:
    """A pending event. Events are taken by time, then kind, instance, virtual engine or
    transfer id, step serial: a fixed order for events at the same time."""

    time: float
    kind: int
    instance: int
    arg: int  # virtual engine index, or transfer id
    serial: int  # step serial of a step end (a cut fast-forward run's old end is stale)

    def __init__(self, time: float, kind: int, instance: int, arg: int, serial: int) -> None:
        self.time = time
        self.kind = kind
        self.instance = instance
        self.arg = arg
        self.serial = serial

    def before(self, other: Event) -> bool:
        """Whether this event is taken before ``other``."""
        if self.time != other.time:
            return self.time < other.time
        if self.kind != other.kind:
            return self.kind < other.kind
        if self.instance != other.instance:
            return self.instance < other.instance
        if self.arg != other.arg:
            return self.arg < other.arg
        return self.serial < other.serial


class EventQueue:
    """Pending events, the next one first: a binary heap of :class:`Event` compared in
    compiled code (heapq would compare tuples through the interpreter, every event)."""

    def __init__(self) -> None:
        self._heap: list[Event] = []

    def __len__(self) -> int:
        return len(self._heap)

    def first_time(self) -> float:
        """When the next event happens (the queue must not be empty)."""
        return self._heap[0].time

    def push(self, event: Event) -> None:
        heap = self._heap
        heap.append(event)
        i = len(heap) - 1
        while i > 0:
            parent = (i - 1) >> 1
            above = heap[parent]
            if not event.before(above):
                break
            heap[i] = above
            i = parent
        heap[i] = event

    def pop(self) -> Event:
        """Remove and return the next event."""
        heap = self._heap
        last = heap.pop()
        if not heap:
            return last
        first = heap[0]
        n = len(heap)
        i = 0
        child = 1
        while child < n:
            if child + 1 < n and heap[child + 1].before(heap[child]):
                child += 1
            if not heap[child].before(last):
                break
            heap[i] = heap[child]
            i = child
            child = 2 * i + 1
        heap[i] = last
        return first


INF: Final = float("inf")
STEP_END: Final = 0
WAKE: Final = 1
KV_ARRIVAL: Final = 2
READY: Final = 3  # a scaled-up instance takes requests from now on (autoscaling)
SCALE: Final = 4  # the autoscaler evaluates its metric


class Dispatcher(Protocol):
    """Where requests go: the cluster's routers and its KV-transfer model."""

    instances: list[Instance]

    @property
    def routes_by_kv_usage(self) -> bool:
        """Whether routing reads free KV blocks (which change inside a fast-forward run)."""
        ...

    def route(self, spec: RequestSpec) -> Instance: ...

    def hand_off(self, seq: Sequence, source: Instance, now: float) -> tuple[Instance, float]:
        """Decode instance for a prefilled request and the KV transfer's duration."""
        ...


class Scaler(Protocol):
    """The autoscaler (cluster/autoscale.py): evaluated every ``interval_s``; it starts
    instances (ready later), drains others, and releases a drained one when its last request
    has left."""

    interval_s: float
    reads_kv_usage: bool  # the metric reads KV blocks in use (changed inside fast-forward runs)

    def evaluate(self, now: float) -> list[tuple[int, float]]:
        """Decide at ``now``; returns (instance index, time it takes requests) for each
        instance started."""
        ...

    def ready(self, index: int, now: float) -> None:
        """Instance ``index``, started earlier, takes requests from ``now``."""
        ...

    def release_if_drained(self, instance: Instance, now: float) -> None:
        """``instance`` is draining: release it if its last request has left."""
        ...


def send_to_engine(
    spec: RequestSpec,
    t: float,
    max_model_len: int | None,
    frontend: Frontend | None,
    metrics: MetricsCollector,
    client_arrival: dict[int, float] | None,
) -> RequestSpec | None:
    """A client sends ``spec`` at ``t`` (its send time goes to ``client_arrival``): None when it
    is longer than ``max_model_len`` (logged ``rejected`` at ``t``, as vLLM's API server refuses
    it); otherwise the request as it reaches the engine, the frontend's arrival delay later."""
    if client_arrival is not None:
        client_arrival[spec.id] = t
    tokens = spec.input_len + spec.output_len
    if max_model_len is not None and tokens > max_model_len:
        reason = too_long_reason(tokens, max_model_len)
        metrics.on_drop(Sequence(spec), -1, t, "rejected", reason, "max_model_len")
        return None
    if frontend is not None:
        return spec.replaced(arrival_s=t + frontend.arrival_delay_s(spec.input_len))
    return spec


class ClosedLoop:
    """Closed-loop clients (``workload.arrival.process: closed``): ``concurrency`` clients each
    send a request, wait until it ends (finished, failed, rejected or timed out; with P/D, at
    its decode instance) and ``think_time_s`` more, then send the next one, as ``vllm bench
    serve --max-concurrency`` does with a semaphore around each request.

    The workload's requests are sent in their arrival order (their times only set that order);
    a sent request's ``arrival_s`` is when its client sent it. The first ``concurrency`` are
    sent at t = 0; after that, every request that ends frees a client, which sends the next
    request ``think_time_s`` after it saw the end. Ends are read from the run's request log:
    a row is appended whenever a request ends, holding the time its client saw the end, and
    the engine asks after each event (:meth:`poll`).

    With a ``frontend`` a client sees the end when the frontend streamed it (the row's finish
    time), and its next request reaches the engine ``arrival_delay_s`` after it was sent, so
    requests in the pipe are kept in a heap by when they reach the engine. With
    ``max_model_len`` a request longer than it is rejected when it is sent (the client sees
    the refusal at once and sends its next one after its think time). With ``duration_s`` no
    request is sent at or after it (``sent`` counts those that were)."""

    def __init__(
        self,
        concurrency: int,
        think_time_s: float,
        metrics: MetricsCollector,
        frontend: Frontend | None = None,
        max_model_len: int | None = None,
        duration_s: float = INF,
    ) -> None:
        self.concurrency = concurrency
        self.think_time_s = think_time_s
        self.metrics = metrics
        self.log = metrics.requests
        self.frontend = frontend
        self.max_model_len = max_model_len
        self.duration_s = duration_s
        self.sent = 0  # requests sent so far (the first ``sent`` of the workload, in order)
        self.last_send = 0.0
        # Client send times by request id (the rows' arrivals), with a frontend.
        clock = metrics.requests.client_clock
        self.client_arrival: dict[int, float] | None = (
            None if clock is None else clock.client_arrival
        )
        self._ended = 0  # rows of the log already counted
        # Requests sent, by when they reach the engine: (time, id, request).
        self._pending: list[tuple[float, int, RequestSpec]] = []
        self._requests: Iterator[RequestSpec] = iter(())

    def start(self, requests: Iterator[RequestSpec]) -> RequestSpec | None:
        """The first request to reach the engine; ``requests`` in the order they are sent."""
        self._requests = requests
        self._ended = len(self.log)  # rows written before the run (none are this loop's)
        for _ in range(self.concurrency):
            self._send(0.0)
        return self.next_request()

    def _send(self, t: float) -> None:
        """A free client sends the next request at ``t`` (if one is left)."""
        while t < self.duration_s:
            spec = next(self._requests, None)
            if spec is None:
                return
            self.sent += 1
            self.last_send = max(self.last_send, t)
            sent = send_to_engine(
                spec.replaced(arrival_s=t),
                t,
                self.max_model_len,
                self.frontend,
                self.metrics,
                self.client_arrival,
            )
            if sent is None:  # rejected at once: its own row, not an end to count again
                self._ended += 1
                t += self.think_time_s
                continue
            heappush(self._pending, (sent.arrival_s, sent.id, sent))
            return

    def next_request(self) -> RequestSpec | None:
        """The next request to reach the engine; None while none is on its way."""
        if not self._pending:
            return None
        return heappop(self._pending)[2]

    def earliest(self, spec: RequestSpec) -> RequestSpec:
        """``spec`` or, if a request sent since reaches the engine earlier, that one (``spec``
        goes back to the pending ones)."""
        if self._pending and self._pending[0][0] < spec.arrival_s:
            return heapreplace(self._pending, (spec.arrival_s, spec.id, spec))[2]
        return spec

    def poll(self, now: float) -> bool:
        """Count the requests that ended since the last call: each frees a client that sends
        again ``think_time_s`` after the end its client saw. True when some did."""
        ended = len(self.log)
        if ended == self._ended:
            return False
        ends = self.log.finish_times(self._ended, ended)
        self._ended = ended
        for end in ends:
            self._send(end + self.think_time_s)
        return True


class ClientTimeouts:
    """``workload.timeout_s``: when each client gives up on a request, ``timeout_s`` (its
    client's) after it sent it. With a frontend the send time is the client's (the frontend's
    arrival delay counts against the timeout)."""

    def __init__(
        self, by_client: list[float], default: float, client_arrival: dict[int, float] | None
    ) -> None:
        self.by_client = by_client  # per client index; INF: never
        self.default = default  # requests of no client (-1)
        self.client_arrival = client_arrival

    def timeout_s(self, spec: RequestSpec) -> float:
        return self.by_client[spec.client] if spec.client >= 0 else self.default

    def deadline(self, spec: RequestSpec) -> float:
        sent = spec.arrival_s
        if self.client_arrival is not None:
            sent = self.client_arrival.get(spec.id, sent)
        return sent + self.timeout_s(spec)


class Engine:
    def __init__(
        self,
        dispatcher: Dispatcher,
        progress: ProgressHook | None = None,
        progress_every: int = 2048,
        hooks: EngineHooks | None = None,
        closed: ClosedLoop | None = None,
        admission: Admission | None = None,
        timeouts: ClientTimeouts | None = None,
        scaler: Scaler | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.hooks = hooks
        self.closed = closed
        self.admission = admission
        self.timeouts = timeouts
        # Requests a client may still give up on: id -> (request, instance it is at or bound to),
        # and their deadlines, (time, id), in a heap of their own: most are stale (the request
        # ended first), and the step events' heap stays as small as the cluster.
        self._watched: dict[int, tuple[Sequence, int]] = {}
        self._deadlines: list[tuple[float, int]] = []
        self.scaler = scaler
        self._control = 0  # READY and SCALE events in the queue (they keep no run going)
        if hooks is not None and (hooks.sees_every_step()):
            for instance in dispatcher.instances:
                instance.fast_forward = False
        self.instances = dispatcher.instances
        self.progress = progress
        self.progress_every = progress_every
        self.now = 0.0
        # (time, kind, instance index, virtual engine index or transfer id, step serial)
        self._events = EventQueue()
        self._transfers: dict[int, Sequence] = {}
        self._next_arrival = INF  # arrival time of the next request not yet routed
        self.interrupted = False
        self._held = HeldSignals()  # a stop signal noted during the loop (interrupt.py)

    def _push(self, time: float, kind: int, instance: int, arg: int, serial: int = 0) -> None:
        self._events.push(Event(time, kind, instance, arg, serial))

    def _push_step_end(self, time: float, instance: Instance, engine_index: int) -> None:
        ve = instance.virtual_engines[engine_index]
        ve.step_serial += 1
        self._push(time, STEP_END, instance.index, engine_index, ve.step_serial)

    def _cut(self, instance: Instance, inclusive: bool = False) -> None:
        """Bring a fast-forwarding instance up to now before anything changes it;
        ``inclusive``: its step ends at ``now`` were already taken (Instance.cut_runs)."""
        for engine_index, finish in instance.cut_runs(self.now, inclusive):
            self._push_step_end(finish, instance, engine_index)

    def _try_start(self, instance: Instance) -> None:
        now = self.now
        hooks = self.hooks
        if instance.pp == 1:  # one engine: at most one step starts
            started = instance.start_step(now, self._next_arrival)
            if hooks is not None:
                hooks.after_start(instance, now, started)
            if started is not None:
                self._push_step_end(started[0], instance, started[1])
            return
        while True:
            started = instance.start_step(now, self._next_arrival)
            if hooks is not None:
                hooks.after_start(instance, now, started)
            if started is None:
                break
            finish, engine_index = started
            self._push_step_end(finish, instance, engine_index)
        if instance.pp > 1:
            wake = instance.next_wake(now)
            if wake is not None and wake != instance.wake_at:
                instance.wake_at = wake
                self._push(wake, WAKE, instance.index, 0)

    def run(self, requests: Iterable[RequestSpec]) -> float:
        """Serve every request; returns the simulated time when the last event happened.

        Ctrl-C stops the loop cleanly: what was served so far is kept and ``interrupted`` set.
        """
        try:
            with signals_held() as held:
                self._held = held
                return self._loop(requests)
        except KeyboardInterrupt:
            self.interrupted = True
            for instance in self.instances:
                instance.cut_runs(self.now)
            return self.now

    def _loop(self, requests: Iterable[RequestSpec]) -> float:
        # The loop walks arrivals in order (a caller's list may not be sorted: stable sort);
        # a workload's RequestTable hands its requests out one by one.
        arrivals = in_arrival_order(requests)
        closed = self.closed
        spec = next(arrivals, None) if closed is None else closed.start(arrivals)
        self._next_arrival = INF if spec is None else spec.arrival_s
        events = self._events
        instances = self.instances
        steps = 0
        held = self._held
        route = self.dispatcher.route
        hooks = self.hooks
        routes_by_kv_usage = self.dispatcher.routes_by_kv_usage
        admission = self.admission
        timeouts = self.timeouts
        deadlines = self._deadlines
        polls = 0
        scaler = self.scaler
        if scaler is not None:
            self._push_control(scaler.interval_s, SCALE, 0)
        # The run ends when no request is left to arrive and only the autoscaler's events are
        # queued (they would only move the clock past the last request).
        while spec is not None or len(events) > self._control or deadlines:
            polls += 1
            if polls & 1023 == 0:
                held.poll()  # Python code: pending signal handlers run (the loop is compiled)
            if held.signum is not None:
                # A stop signal, handed over between two events (it raises KeyboardInterrupt
                # under the CLI and for Ctrl-C: run() keeps what was served).
                held.deliver()
            if (
                spec is not None
                and (not len(events) or spec.arrival_s <= events.first_time())
                and (not deadlines or spec.arrival_s <= deadlines[0][0])
            ):
                # Admit every request arriving at this instant before any idle instance starts,
                # so a burst at t=0 forms one batch instead of a batch of one.
                arrival_time = spec.arrival_s
                now = self.now = max(self.now, arrival_time)
                touched: list[Instance] = []  # in order of first arrival
                if routes_by_kv_usage:
                    for instance in instances:
                        self._cut(instance)
                while spec is not None and spec.arrival_s == arrival_time:
                    seq = Sequence(spec)
                    if admission is None or admission.admit(seq, now):
                        instance = route(spec)
                        self._cut(instance)
                        if hooks is not None:
                            hooks.before_add(instance, now)
                        instance.add(seq, now)
                        if timeouts is not None and seq.status is not Status.FAILED:
                            self._watch(timeouts, seq, instance.index)
                        if instance not in touched:
                            touched.append(instance)
                    spec = next(arrivals, None) if closed is None else closed.next_request()
                self._next_arrival = INF if spec is None else spec.arrival_s
                for instance in touched:
                    self._try_start(instance)
                if closed is not None and closed.poll(now):
                    spec = self._closed_next(closed, spec)
                continue
            if deadlines and (not len(events) or deadlines[0][0] < events.first_time()):
                # Clients give up after the events at that time (a request finishing exactly
                # at its deadline has finished), every one due then before any step starts.
                for instance in self._time_out_due():
                    self._try_start(instance)
                    if instance.draining:  # its last request may have been the one that left
                        assert scaler is not None
                        scaler.release_if_drained(instance, self.now)
                if closed is not None and closed.poll(self.now):
                    spec = self._closed_next(closed, spec)
                continue
            event = events.pop()
            self.now = event.time
            kind, index, arg, serial = event.kind, event.instance, event.arg, event.serial
            if kind >= READY:
                assert scaler is not None
                self._control -= 1
                if kind == READY:
                    scaler.ready(index, self.now)
                else:
                    self._scale(scaler)
                continue
            instance = instances[index]
            if kind == STEP_END:
                if serial != instance.virtual_engines[arg].step_serial:
                    continue  # the end of a fast-forward run that was cut short
                handoffs = instance.end_step(arg, self.now)
                if hooks is not None:
                    hooks.after_end(instance, arg, self.now)
                for seq in handoffs:
                    self._start_transfer(seq, instance)
                steps += 1
                if self.progress is not None and steps % self.progress_every == 0:
                    self.progress(self.now)
            elif kind == KV_ARRIVAL:
                self._cut(instance, inclusive=True)  # step ends at this time came first
                if hooks is not None:
                    hooks.before_add(instance, self.now)
                moved = self._transfers.get(arg)
                if moved is None:
                    continue  # its client gave up while its KV cache was on the way
                del self._transfers[arg]
                instance.add(moved, self.now)
            self._try_start(instance)
            if instance.draining:
                assert scaler is not None
                scaler.release_if_drained(instance, self.now)
            if closed is not None and closed.poll(self.now):
                spec = self._closed_next(closed, spec)
        return self.now

    def _push_control(self, time: float, kind: int, instance: int) -> None:
        self._control += 1
        self._push(time, kind, instance, 0)

    def _scale(self, scaler: Scaler) -> None:
        """The autoscaler's evaluation at ``now``; the next one follows while work is left."""
        now = self.now
        if scaler.reads_kv_usage:
            for instance in self.instances:  # step ends at ``now`` were taken (READY < SCALE)
                self._cut(instance, inclusive=True)
        for index, ready_at in scaler.evaluate(now):
            self._push_control(ready_at, READY, index)
        if self._next_arrival < INF or len(self._events) > self._control:
            self._push_control(now + scaler.interval_s, SCALE, 0)

    def _closed_next(self, closed: ClosedLoop, spec: RequestSpec | None) -> RequestSpec | None:
        """The next request to reach the engine once clients freed by ended requests sent
        theirs (closed loop): ``spec``, the one due so far, or an earlier one."""
        spec = closed.next_request() if spec is None else closed.earliest(spec)
        self._next_arrival = INF if spec is None else spec.arrival_s
        return spec

    def _watch(self, timeouts: ClientTimeouts, seq: Sequence, index: int) -> None:
        """Schedule the moment ``seq``'s client gives up on it (never before now)."""
        deadline = timeouts.deadline(seq.spec)
        if deadline < INF:
            self._watched[seq.id] = (seq, index)
            heappush(self._deadlines, (max(deadline, self.now), seq.id))

    def _time_out_due(self) -> list[Instance]:
        """Take the earliest deadline and every other at that time: the requests still live
        time out then (the clock moves there only if one does). Returns the instances they
        left, in order."""
        deadlines = self._deadlines
        at, request_id = heappop(deadlines)
        ids = [request_id]
        while deadlines and deadlines[0][0] == at:
            ids.append(heappop(deadlines)[1])
        left: list[Instance] = []
        for rid in ids:
            instance = self._time_out(rid, at)
            if instance is not None and instance not in left:
                left.append(instance)
        return left

    def _time_out(self, request_id: int, at: float) -> Instance | None:
        """A client gives up on request ``request_id`` at ``at``: if it has not ended, it ends
        ``timed_out`` wherever it is. Returns the instance it left (None: nothing changed)."""
        entry = self._watched.pop(request_id, None)
        if entry is None:
            return None
        seq, index = entry
        if seq.status is Status.FINISHED or seq.status is Status.FAILED:
            return None
        self.now = at
        instance = self.instances[index]
        assert self.timeouts is not None
        reason = client_timeout_reason(self.timeouts.timeout_s(seq.spec))
        if seq.status is Status.TRANSFERRING:  # its KV cache is on its way to ``instance``
            del self._transfers[request_id]
            instance.incoming -= 1
            seq.status = Status.FAILED
            instance.metrics.on_drop(
                seq, index, self.now, "timed_out", reason, "workload.timeout_s"
            )
            return instance
        self._cut(instance, inclusive=True)  # step ends at this time came first
        aborted = instance.abort(seq, self.now, reason)
        assert aborted, f"request {request_id} is neither queued nor running at {index}"
        return instance

    def _start_transfer(self, seq: Sequence, source: Instance) -> None:
        if self.dispatcher.routes_by_kv_usage:
            # Step ends at this time are taken in instance order: those before the source's
            # have been, the later ones not yet.
            for instance in self.instances:
                self._cut(instance, inclusive=instance.index < source.index)
        target, seconds = self.dispatcher.hand_off(seq, source, self.now)
        self._transfers[seq.id] = seq
        if seq.id in self._watched:
            self._watched[seq.id] = (seq, target.index)
        self._push(self.now + seconds, KV_ARRIVAL, target.index, seq.id)
