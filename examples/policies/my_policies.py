"""A user's serving policies in one file: a scheduler and a router, run by the compiled engine.

Select them with (examples/custom_policies.yaml):

    plugins: [examples/policies/my_policies.py]
    scheduler: {policy: shortest_prompt_first}
    cluster: {instances: 4, router: least_waiting}
"""

from __future__ import annotations

from llmservingsim.cluster.routers import ROUTERS, Router
from llmservingsim.sequence import Sequence
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.schedulers import SCHEDULERS
from llmservingsim.serving.schedulers.vllm import VllmScheduler
from llmservingsim.workload.request_spec import RequestSpec


class ShortestPromptFirst(VllmScheduler):
    """vLLM's V1 scheduling, but new requests wait in order of prompt length (shortest first),
    behind the preempted ones (which have started and keep their place at the head)."""

    def add(self, seq: Sequence) -> None:
        waiting = self.waiting
        length = seq.spec.input_len
        # Walk back from the tail past longer prompts that never ran: insertion keeps the
        # queue sorted among new requests, ties in arrival order.
        index = len(waiting)
        while index > 0:
            other = waiting[index - 1]
            if other.admissions or other.spec.input_len <= length:
                break
            index -= 1
        waiting.insert(index, seq)

    def expire_waiting(self, now: float) -> list[Sequence]:
        """Admission control (``scheduler.request_timeout_s``): the queue is not in arrival
        order here, so every new request is checked, not only those up to the first in time."""
        timeout = self.cfg.request_timeout_s
        if timeout is None:
            return []
        expired = [
            s for s in self.waiting if not s.admissions and now - s.spec.arrival_s >= timeout
        ]
        for seq in expired:
            self.waiting.remove(seq)
        return expired


class LeastWaiting(Router):
    """The instance with the fewest requests waiting to be scheduled; among those, the one
    with the fewest outstanding requests (ties: the lowest index)."""

    def route(self, spec: RequestSpec) -> Instance:
        best = self.instances[0]
        key = (best.num_waiting, best.num_outstanding)
        for instance in self.instances[1:]:
            other = (instance.num_waiting, instance.num_outstanding)
            if other < key:
                best, key = instance, other
        return best


SCHEDULERS.register("shortest_prompt_first")(ShortestPromptFirst)
ROUTERS.register("least_waiting")(LeastWaiting)
