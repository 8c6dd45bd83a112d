"""Discrete-event loop: request arrivals and per-instance step ends, in time order.

A request that arrives while an instance is mid-step joins at the next step boundary, as in a
real engine. An idle instance starts a step as soon as it has work. Ties are broken by a
monotone counter so a run is fully deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from collections.abc import Sequence as SequenceOf

from llmservingsim.serving.instance import Instance
from llmservingsim.serving.sequence import Sequence
from llmservingsim.workload.request_spec import RequestSpec

Router = Callable[[RequestSpec], int]
ProgressHook = Callable[[float], None]


class Engine:
    def __init__(
        self,
        instances: SequenceOf[Instance],
        router: Router,
        progress: ProgressHook | None = None,
        progress_every: int = 2048,
    ) -> None:
        self.instances = list(instances)
        self.router = router
        self.progress = progress
        self.progress_every = progress_every
        self.now = 0.0
        self._events: list[tuple[float, int, int]] = []  # (time, tie-breaker, instance)
        self._counter = 0
        self.interrupted = False

    def _try_start(self, instance: Instance) -> None:
        duration = instance.start_step()
        if duration is not None:
            self._counter += 1
            heapq.heappush(self._events, (self.now + duration, self._counter, instance.index))

    def run(self, requests: SequenceOf[RequestSpec]) -> float:
        """Serve every request; returns the simulated time when the last step ended.

        Ctrl-C stops the loop cleanly: what was served so far is kept and ``interrupted`` set.
        """
        try:
            return self._loop(requests)
        except KeyboardInterrupt:
            self.interrupted = True
            return self.now

    def _loop(self, requests: SequenceOf[RequestSpec]) -> float:
        # The loop walks arrivals in order; a caller's list may not be sorted (stable sort).
        requests = sorted(requests, key=lambda r: r.arrival_s)
        events = self._events
        next_arrival = 0
        num_requests = len(requests)
        steps = 0
        while next_arrival < num_requests or events:
            if next_arrival < num_requests and (
                not events or requests[next_arrival].arrival_s <= events[0][0]
            ):
                # Admit every request arriving at this instant before any idle instance starts,
                # so a burst at t=0 forms one batch instead of a batch of one.
                arrival_time = requests[next_arrival].arrival_s
                self.now = max(self.now, arrival_time)
                touched: dict[int, Instance] = {}
                while (
                    next_arrival < num_requests and requests[next_arrival].arrival_s == arrival_time
                ):
                    spec = requests[next_arrival]
                    next_arrival += 1
                    instance = self.instances[self.router(spec)]
                    instance.add(Sequence(spec), self.now)
                    touched[instance.index] = instance
                for instance in touched.values():
                    if not instance.busy:
                        self._try_start(instance)
                continue
            self.now, _, index = heapq.heappop(events)
            instance = self.instances[index]
            instance.end_step(self.now)
            self._try_start(instance)
            steps += 1
            if self.progress is not None and steps % self.progress_every == 0:
                self.progress(self.now)
        return self.now
