"""Priority scheduling: vLLM's ``--scheduling-policy priority`` (V1 engine), plus preemption
by waiting requests as issue 20 asks.

Like ``vllm`` (token budget, running requests first in admission order, chunked prefill),
with three differences:

* **Waiting order.** The queue is kept sorted by (``RequestSpec.priority``, arrival time,
  id): a lower priority value is served first, ties by arrival (vLLM V1's
  ``PriorityRequestQueue``, a heap ordered by ``Request.__lt__`` on (priority, arrival_time)).
  A preempted request goes back to its place in that order, not to the queue head.
* **Victim under KV pressure.** When a running request cannot grow for lack of KV blocks,
  the running request with the largest (priority, arrival) is preempted, which may be one
  already scheduled this step (its tokens go back to the budget) or the request itself
  (then the running pass stops; if it had scheduled nothing, it goes on with the next running
  request instead, where vLLM runs an empty step and schedules them in the next one, which
  here comes without its waiting pass). This is what vLLM V1's ``Scheduler.schedule`` does
  in ``SchedulingPolicy.PRIORITY`` (vllm/v1/core/sched/scheduler.py, added by
  vllm-project/vllm#19057); with equal priorities that victim is the most recently admitted
  request, so the policy then behaves exactly like ``vllm``. As there, a step whose running
  pass preempted admits nobody new.
* **Preemption by waiting requests.** When the head of the queue cannot be admitted because
  ``max_num_seqs`` requests run or its first chunk's KV blocks do not fit, it preempts the
  running request with the largest (priority, arrival) if that one's priority value is
  *strictly* larger, and tries again; it stops when no such request is left. Merged vLLM
  (as of #19057) does not do this: its waiting pass just stops (vllm-project/vllm#40004 asks
  for it). The open pull requests vllm-project/vllm#45561 and #54530 add it for the
  ``max_num_seqs`` case with the same strict comparison (equal priorities never preempt each
  other, so no ping-pong); this policy applies it to KV blocks too (the "natural follow-up"
  #45561 names), skipping the preemptions when even every lower-priority request's blocks
  would not make room. Once it preempted, the pass admits only requests more important than
  every request it preempted (never a victim back in the same step).

Steady decoders (docs/performance.md): a victim may sit anywhere in the running list, also
inside the steady group (a prefix of it), so a step keeps the group only when no preemption
can happen in it: the blocks every running request may take fit the free pool, and either no
waiting request has a smaller priority value than a running one or every waiting request can
start at once. Otherwise the group is dissolved first and the step runs one request at a
time, exactly as without the group. Decode runs (fast-forward) need no waiting request to
outrank a running one.

Cost: an arrival is placed by a binary search over the waiting queue; with
``request_timeout_s`` each step scans the whole queue (it is not in arrival order).
"""

from __future__ import annotations

from collections import deque

from mypy_extensions import mypyc_attr

from llmservingsim.sequence import Sequence
from llmservingsim.serving.schedulers.base import SCHEDULERS
from llmservingsim.serving.schedulers.vllm import VllmScheduler


def rank(seq: Sequence) -> tuple[int, float, int]:
    """Order of service: lower priority value first, then earlier arrival, then id."""
    spec = seq.spec
    return (spec.priority, spec.arrival_s, spec.id)


# A user's policy file may subclass it (docs/extending.md): the compiled class admits
# interpreted subclasses.
@mypyc_attr(allow_interpreted_subclasses=True)
class PriorityScheduler(VllmScheduler):
    supports_steady = True

    def add(self, seq: Sequence) -> None:
        self._insert(seq)

    def _insert(self, seq: Sequence) -> None:
        """Put ``seq`` into the waiting queue at its place in :func:`rank` order."""
        waiting = self.waiting
        key = rank(seq)
        if not waiting or rank(waiting[-1]) <= key:
            waiting.append(seq)  # the usual case: arrivals come in arrival order
            return
        lo, hi = 0, len(waiting)
        while lo < hi:
            mid = (lo + hi) // 2
            if key < rank(waiting[mid]):
                hi = mid
            else:
                lo = mid + 1
        waiting.insert(lo, seq)

    def preempt(
        self, seq: Sequence, cause: Sequence | None = None, reason: str = "kv_cache_full"
    ) -> None:
        super().preempt(seq, cause, reason)  # frees its KV and puts it at the queue head
        self.waiting.popleft()
        self._insert(seq)

    def victim_scores(self, candidates: list[Sequence]) -> list[float] | None:
        """The priority value (the victim has the largest; among equals, the latest arrival)."""
        return [float(seq.spec.priority) for seq in candidates]

    def expire_waiting(self, now: float) -> list[Sequence]:
        timeout = self.cfg.request_timeout_s
        if timeout is None or not self.waiting:
            return []
        expired: list[Sequence] = []
        kept: deque[Sequence] = deque()
        for seq in self.waiting:
            if not seq.admissions and now - seq.spec.arrival_s >= timeout:
                expired.append(seq)
            else:
                kept.append(seq)
        if expired:
            self.waiting = kept
            expired.sort(key=lambda s: s.spec.id)  # arrival order, as the other policies
        return expired

    def repeats_decode(self) -> bool:
        # As for ``vllm`` (a refused request stays refused while the free pool only shrinks),
        # unless a waiting request outranks a running one: it may preempt it once the pool is
        # short, which only a step scheduled on its own finds.
        # Held-back context requests (batch waiting) count steps, as for vllm.
        return super().repeats_decode() and not self.waiting_outranks()

    def waiting_outranks(self) -> bool:
        """Whether the head of the queue has a smaller priority value than a running request
        (only then can a waiting request preempt)."""
        if not self.waiting:
            return False
        head = self.waiting[0].spec.priority
        return any(seq.spec.priority > head for seq in self.running)

    def group_is_safe(self) -> bool:
        """Whether this step may keep the steady decoders as a group: no preemption can
        touch it. Upper bounds: every running request takes the blocks for all the tokens
        it wants; if a waiting request outranks a running one, every waiting request starts
        with its whole prompt (then they must all fit, blocks and ``max_num_seqs``)."""
        steady = self.steady
        if steady is None or not steady.count:
            return True
        running, blocks = self.running, self.blocks
        need = steady.blocks_due(steady.started)
        for k in range(steady.count, len(running)):
            seq = running[k]
            need += blocks.extra_blocks(seq, self.tokens_wanted(seq))
        if need > blocks.num_free:
            return False
        if not self.waiting_outranks():
            return True
        if len(running) + len(self.waiting) > self.max_num_seqs:
            return False
        for seq in self.waiting:
            need += blocks.blocks_needed(seq.num_tokens)
        return need <= blocks.num_free

    def victim_for(self, seq: Sequence) -> Sequence | None:
        """The running request a waiting ``seq`` may preempt: the one with the largest
        (priority, arrival), if its priority value is strictly larger than ``seq``'s."""
        if not self.running:
            return None
        victim = max(self.running, key=rank)
        return victim if victim.spec.priority > seq.spec.priority else None

    def lower_blocks(self, seq: Sequence) -> int:
        """KV blocks held by the running requests of a larger priority value than ``seq``."""
        priority = seq.spec.priority
        return sum(len(s.blocks) for s in self.running if s.spec.priority > priority)

    def victim_index(self) -> int:
        """The running request with the largest (priority, arrival): it may have been
        scheduled already this step (its tokens then go back to the budget) or be the request
        that cannot grow itself."""
        running = self.running
        return max(range(len(running)), key=lambda k: rank(running[k]))


SCHEDULERS.register("priority")(PriorityScheduler)
