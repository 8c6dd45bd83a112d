"""Cache-aware routing: send a request where its prompt prefix is most likely cached.

Like SGLang's cache-aware router, it sees no instance's real cache: it remembers, per
instance, the chained block names of the prompts it sent there (an LRU as large as that
instance's KV cache) and routes a request to the instance with the longest remembered run of
its leading blocks. Load comes first: when the instances' outstanding requests differ by more
than ``balance_abs`` and by a factor above ``balance_rel``, or when no instance remembers any
of the prompt (or it says nothing about its tokens), the least loaded instance wins.

Decision log: candidates are the instances that remember the longest run of the prompt's
blocks (or every instance, when load decided), scored by outstanding requests; the smallest
wins, ties to the lowest index (when load decided: the rotation of ``least_outstanding``).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from llmservingsim.cluster.routers import ROUTERS, LeastOutstandingRouter
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.prefix_cache import block_keys
from llmservingsim.workload.request_spec import RequestSpec


class PrefixAwareRouter(LeastOutstandingRouter):
    balance_abs = 16  # outstanding requests
    balance_rel = 1.5

    def __init__(self, instances: list[Instance], rng: np.random.Generator) -> None:
        super().__init__(instances, rng)
        self.block_size = instances[0].scheduler.blocks.block_size
        self._index = {id(inst): i for i, inst in enumerate(instances)}
        # Per instance, the block names sent there (LRU first); per name, who remembers it.
        self.seen: list[OrderedDict[int, None]] = [OrderedDict() for _ in instances]
        self.where: dict[int, set[int]] = {}
        # What instances no longer routed to remembered (autoscaling drained them).
        self._parked: dict[int, OrderedDict[int, None]] = {}

    def set_instances(self, instances: list[Instance]) -> None:
        """Instances kept keep what they remember; one routed to again after a drain starts
        from what it remembered then (its prefix cache is kept, serving/instance.py)."""
        old = {id(inst): self.seen[i] for i, inst in enumerate(self.instances)}
        self._parked.update(old)
        super().set_instances(instances)
        self._index = {id(inst): i for i, inst in enumerate(instances)}
        self.seen = [self._parked.pop(id(inst), OrderedDict()) for inst in instances]
        self.where = {}
        for i, seen in enumerate(self.seen):
            for h in seen:
                self.where.setdefault(h, set()).add(i)

    def _chain(self, spec: RequestSpec) -> list[int]:
        """Hashed chained names of the prompt's full blocks (a collision only misroutes)."""
        if spec.content is None:
            return []
        keys = block_keys(spec.content, self.block_size)
        limit = min(len(keys), (spec.input_len - 1) // self.block_size)
        chain = []
        h = hash(spec.content.namespace)
        for key in keys[:limit]:
            h = hash((h, key))
            chain.append(h)
        return chain

    def _imbalanced(self, loads: list[int]) -> bool:
        low, high = min(loads), max(loads)
        return high - low > self.balance_abs and high > low * self.balance_rel

    def route(self, spec: RequestSpec) -> Instance:
        chain = self._chain(spec)
        candidates: set[int] = set()
        # Outstanding requests per instance, as the cluster's load board has them (the
        # compiled event loop keeps the board, not the Instance objects, up to date).
        loads = list(self._loads())  # a copy: the decision log may keep it
        imbalanced = bool(chain) and self._imbalanced(loads)
        depth = 0  # leading blocks the candidates remember
        if chain and not imbalanced:
            # Walk the prompt's blocks, keeping the instances that remember all of them so far.
            for h in chain:
                owners = self.where.get(h)
                narrowed = owners & candidates if candidates and owners else owners
                if not narrowed:
                    break
                candidates = narrowed
                depth += 1
        if candidates:
            chosen = self.instances[min(candidates, key=lambda i: (loads[i], i))]
            if self.explain:
                remembering = sorted(candidates)
                self.report(
                    [loads[i] for i in remembering],
                    remembering,
                    f"cached prefix of {depth} blocks",
                )
        else:
            chosen = super().route(spec)
            if self.explain:
                self.report(loads, None, "load imbalance" if imbalanced else "no cached prefix")
        self._remember(self._index[id(chosen)], chain)
        return chosen

    def _remember(self, index: int, chain: list[int]) -> None:
        seen = self.seen[index]
        for h in chain:
            if h in seen:
                seen.move_to_end(h)
            else:
                seen[h] = None
                self.where.setdefault(h, set()).add(index)
        capacity = self.instances[index].num_blocks
        while len(seen) > capacity:
            h, _ = seen.popitem(last=False)
            owners = self.where[h]
            owners.discard(index)
            if not owners:
                del self.where[h]


ROUTERS.register("prefix_aware")(PrefixAwareRouter)
