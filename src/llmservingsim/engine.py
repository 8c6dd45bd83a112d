"""Discrete-event loop: request arrivals, batch completions and KV-cache transfers, in time order.

A request that arrives while an instance is mid-step joins at the next step boundary, as in a
real engine. An idle instance starts a step as soon as it has work; a pipelined instance starts
its next micro-batch when stage 0 frees up (a wake-up event). A request prefilled on a
prefill instance reaches its decode instance when its KV transfer ends. Events at the same
time are taken in a fixed order (step ends, wake-ups, KV arrivals; then by instance), so a run is
fully deterministic and does not depend on when an event was scheduled.

Fast-forward: an instance may announce the end of a whole run of decode steps as one event
(serving/decode_run.py). Whatever reaches the instance earlier (a routed request, a KV arrival)
first cuts the run at that moment; the run's old end event is then stale and skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar, Final, Protocol

from mypy_extensions import mypyc_attr

from llmservingsim.interrupt import HeldSignals, signals_held
from llmservingsim.metrics.request_log import RequestLog
from llmservingsim.sequence import Sequence
from llmservingsim.serving.instance import Instance
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


class ClosedLoop:
    """Closed-loop clients (``workload.arrival.process: closed``): ``concurrency`` clients each
    send a request, wait until it ends (finished, failed, rejected or timed out; with P/D, at
    its decode instance) and ``think_time_s`` more, then send the next one, as ``vllm bench
    serve --max-concurrency`` does with a semaphore around each request.

    The workload's requests are sent in their arrival order (their times only set that order);
    a sent request's ``arrival_s`` is when its client sent it. The first ``concurrency`` are
    sent at t = 0; after that, every request that ends at ``t`` frees a client, which sends the
    next request at ``t + think_time_s``. Ends are read from the run's request log: a row is
    appended whenever a request ends, and the engine asks after each event (:meth:`poll`)."""

    def __init__(self, concurrency: int, think_time_s: float, log: RequestLog) -> None:
        self.concurrency = concurrency
        self.think_time_s = think_time_s
        self.log = log
        self._ended = 0  # rows of the log already counted
        self._sends: deque[float] = deque()  # times free clients send, in order
        self._requests: Iterator[RequestSpec] = iter(())

    def start(self, requests: Iterator[RequestSpec]) -> RequestSpec | None:
        """The first request to send; ``requests`` in the order they are to be sent."""
        self._requests = requests
        self._ended = len(self.log)  # rows written before the run (none are this loop's)
        self._sends = deque(0.0 for _ in range(self.concurrency))
        return self.next_request()

    def next_request(self) -> RequestSpec | None:
        """The next request, timed when its client sends it; None while every client is busy
        (or when every request was sent)."""
        if not self._sends:
            return None
        spec = next(self._requests, None)
        if spec is None:
            return None
        return spec.replaced(arrival_s=self._sends.popleft())

    def poll(self, now: float) -> bool:
        """Count the requests that ended since the last call (at ``now``): each frees a client
        that sends again after its think time. True when some did."""
        ended = len(self.log)
        if ended == self._ended:
            return False
        send = now + self.think_time_s
        for _ in range(ended - self._ended):
            self._sends.append(send)
        self._ended = ended
        return True


class Engine:
    def __init__(
        self,
        dispatcher: Dispatcher,
        progress: ProgressHook | None = None,
        progress_every: int = 2048,
        hooks: EngineHooks | None = None,
        closed: ClosedLoop | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.hooks = hooks
        self.closed = closed
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
        ve = instance.engines[engine_index]
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
        polls = 0
        while spec is not None or len(events):
            polls += 1
            if polls & 1023 == 0:
                held.poll()  # Python code: pending signal handlers run (the loop is compiled)
            if held.signum is not None:
                # A stop signal, handed over between two events (it raises KeyboardInterrupt
                # under the CLI and for Ctrl-C: run() keeps what was served).
                held.deliver()
            if spec is not None and (not len(events) or spec.arrival_s <= events.first_time()):
                # Admit every request arriving at this instant before any idle instance starts,
                # so a burst at t=0 forms one batch instead of a batch of one.
                arrival_time = spec.arrival_s
                now = self.now = max(self.now, arrival_time)
                touched: list[Instance] = []  # in order of first arrival
                if routes_by_kv_usage:
                    for instance in instances:
                        self._cut(instance)
                while spec is not None and spec.arrival_s == arrival_time:
                    instance = route(spec)
                    self._cut(instance)
                    if hooks is not None:
                        hooks.before_add(instance, now)
                    instance.add(Sequence(spec), now)
                    if instance not in touched:
                        touched.append(instance)
                    spec = next(arrivals, None) if closed is None else closed.next_request()
                self._next_arrival = INF if spec is None else spec.arrival_s
                for instance in touched:
                    self._try_start(instance)
                if closed is not None and closed.poll(now) and spec is None:
                    spec = self._closed_next(closed)
                continue
            event = events.pop()
            self.now = event.time
            kind, index, arg, serial = event.kind, event.instance, event.arg, event.serial
            instance = instances[index]
            if kind == STEP_END:
                if serial != instance.engines[arg].step_serial:
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
                instance.add(self._transfers.pop(arg), self.now)
            self._try_start(instance)
            if closed is not None and closed.poll(self.now) and spec is None:
                spec = self._closed_next(closed)
        return self.now

    def _closed_next(self, closed: ClosedLoop) -> RequestSpec | None:
        """The request a client freed by an ended request sends (closed loop)."""
        spec = closed.next_request()
        self._next_arrival = INF if spec is None else spec.arrival_s
        return spec

    def _start_transfer(self, seq: Sequence, source: Instance) -> None:
        if self.dispatcher.routes_by_kv_usage:
            # Step ends at this time are taken in instance order: those before the source's
            # have been, the later ones not yet.
            for instance in self.instances:
                self._cut(instance, inclusive=instance.index < source.index)
        target, seconds = self.dispatcher.hand_off(seq, source, self.now)
        self._transfers[seq.id] = seq
        self._push(self.now + seconds, KV_ARRIVAL, target.index, seq.id)
