"""Runtime invariants (``run --check-invariants``; always on in the test suite).

The checker is the engine's hooks (:class:`~llmservingsim.engine.EngineHooks`) around each
instance's ``add`` / ``start_step`` / ``end_step`` (the only places the engine changes serving
state); with the flag off the engine has no hooks and runs no test for them. After every step
it checks time order and the KV capacity of the instance that stepped (O(1)); every
``deep_every`` steps of an instance, and at the end, it walks the block tables (who owns which
block, reference counts), which costs O(blocks). At the end it checks that every block is free
(or cached, unreferenced), every request finished with its full output or was reported
failed/rejected/timed out with a reason, and that no request is counted twice. A violation is
a simulator bug: :class:`InvariantError` names the invariant (numbered as in
docs/invariants.md), the instance and the simulated time.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable

from mypy_extensions import mypyc_attr

from llmservingsim.engine import EngineHooks
from llmservingsim.metrics.collector import RequestRecord
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.prefix_cache import PrefixCachingBlockManager
from llmservingsim.serving.schedulers.base import Scheduler
from llmservingsim.workload.request_spec import RequestSpec

ENV_FLAG = "LLMSERVINGSIM_CHECK_INVARIANTS"


def invariants_requested(flag: bool | None) -> bool:
    """An explicit flag wins; otherwise the ``LLMSERVINGSIM_CHECK_INVARIANTS`` environment
    variable (the test suite sets it, so every simulation a test runs is checked)."""
    if flag is not None:
        return flag
    return os.environ.get(ENV_FLAG, "").strip().lower() in ("1", "true", "yes", "on")


@mypyc_attr(native_class=False)
class InvariantError(AssertionError):
    """A runtime invariant broke: a bug in the simulator, not in the user's input."""

    def __init__(self, invariant: str, what: str, instance: int | None, now: float) -> None:
        where = "" if instance is None else f" on instance {instance}"
        super().__init__(f"invariant {invariant} violated{where} at t={now:.9g} s: {what}")
        self.invariant = invariant
        self.instance = instance
        self.now = now


class InvariantChecker(EngineHooks):
    """Checks the invariants of a run's instances while the engine drives them (its hooks)."""

    def __init__(self, instances: list[Instance], deep_every: int = 128) -> None:
        self.instances = instances
        self.deep_every = deep_every
        self.now = 0.0
        self.steps_checked = 0
        self.deep_checks = 0
        self._steps = [0] * len(instances)

    # ------------------------------------------------------------------ hooks

    def before_add(self, instance: Instance, now: float) -> None:
        self._tick(instance, now)
        if not instance.routable:
            raise InvariantError(
                "A1",
                "a request reached an instance that takes none (autoscaling: starting, "
                "draining or off)",
                instance.index,
                now,
            )

    def after_start(
        self, instance: Instance, now: float, started: tuple[float, int] | None
    ) -> None:
        self._tick(instance, now)
        if started is not None:
            finish = started[0]
            if finish < now:
                raise InvariantError(
                    "T1", f"a step started at {now} ends earlier ({finish})", instance.index, now
                )
            self._check_capacity(instance, now)

    def after_end(self, instance: Instance, engine_index: int, now: float) -> None:
        self._tick(instance, now)
        self._check_capacity(instance, now)
        index = instance.index
        self.steps_checked += 1
        self._steps[index] += 1
        if self._steps[index] % self.deep_every == 0:
            self.check_kv(instance, now)

    def _tick(self, instance: Instance, now: float) -> None:
        if now < self.now:
            raise InvariantError(
                "T1", f"time went backwards from {self.now} to {now}", instance.index, now
            )
        self.now = now

    # ------------------------------------------------------------------ KV cache

    @staticmethod
    def _check_capacity(instance: Instance, now: float) -> None:
        for ve in instance.virtual_engines:
            blocks = ve.scheduler.blocks
            used, capacity = blocks.num_used, blocks.num_blocks
            if not 0 <= used <= capacity:
                raise InvariantError(
                    "I3", f"{used} KV blocks in use, capacity {capacity}", instance.index, now
                )

    def check_kv(self, instance: Instance, now: float) -> None:
        """Block ownership and reference counts of every scheduler of ``instance``."""
        self.deep_checks += 1
        self._check_capacity(instance, now)
        for ve in instance.virtual_engines:
            self._check_scheduler(ve.scheduler, instance.index, now)

    def _check_scheduler(self, sched: Scheduler, index: int, now: float) -> None:
        sched.sync_steady()  # steady decoders' block ids are handed out lazily
        blocks = sched.blocks
        used = blocks.num_used
        for seq in sched.waiting:
            if seq.blocks:
                raise InvariantError(
                    "I3", f"waiting request {seq.id} holds {len(seq.blocks)} blocks", index, now
                )
        holders: Counter[int] = Counter()
        for seq in sched.running:
            if len(set(seq.blocks)) != len(seq.blocks):
                raise InvariantError("I3", f"request {seq.id} holds one block twice", index, now)
            needed = blocks.blocks_needed(seq.num_computed)
            if len(seq.blocks) < needed:
                # Sliding-window KV included: the blocks its computed tokens' KV takes.
                raise InvariantError(
                    "I3",
                    f"request {seq.id} holds {len(seq.blocks)} blocks, its "
                    f"{seq.num_computed} computed tokens take {needed}",
                    index,
                    now,
                )
            holders.update(seq.blocks)
        if isinstance(blocks, PrefixCachingBlockManager):
            self._check_shared(blocks, holders, index, now)
            return
        shared = [b for b, n in holders.items() if n > 1]
        if shared:
            raise InvariantError(
                "I3", f"block {shared[0]} owned by {holders[shared[0]]} requests", index, now
            )
        if len(holders) != used:
            raise InvariantError(
                "I3", f"{used} blocks in use but running requests hold {len(holders)}", index, now
            )

    @staticmethod
    def _check_shared(
        blocks: PrefixCachingBlockManager, holders: Counter[int], index: int, now: float
    ) -> None:
        """K1: a block's reference count is the number of running requests holding it (the
        sums and counts run in C: this runs after every step)."""
        ref_count = blocks.ref_count
        for block, holding in holders.items():
            if ref_count[block] != holding:
                raise InvariantError(
                    "K1",
                    f"block {block} has reference count {ref_count[block]}, held by "
                    f"{holding} running requests",
                    index,
                    now,
                )
        if sum(ref_count) != holders.total():
            raise InvariantError("K1", "a block no running request holds is referenced", index, now)
        referenced = len(ref_count) - ref_count.count(0)
        if referenced != blocks.num_used:
            raise InvariantError(
                "K1", f"{blocks.num_used} blocks in use, {referenced} referenced", index, now
            )

    # ------------------------------------------------------------------ end of run

    def check_end(self, requests: Iterable[RequestSpec], records: Iterable[RequestRecord]) -> None:
        """Once every event is handled: caches empty, every request accounted for once."""
        now = self.now
        for instance in self.instances:
            self.check_kv(instance, now)
            for ve in instance.virtual_engines:
                sched = ve.scheduler
                if sched.has_work():
                    raise InvariantError(
                        "I4",
                        f"{len(sched.waiting)} waiting and {len(sched.running)} running "
                        "requests left when the run ended",
                        instance.index,
                        now,
                    )
                if sched.blocks.num_used:
                    raise InvariantError(
                        "I5", f"{sched.blocks.num_used} KV blocks still in use", instance.index, now
                    )
        check_records(requests, records, now)


def check_records(
    requests: Iterable[RequestSpec], records: Iterable[RequestRecord], now: float
) -> None:
    """I4: every request has exactly one row; finished ones generated their full output, the
    others carry a reason; no row has a time before its arrival."""
    wanted = {spec.id: spec for spec in requests}
    seen: set[int] = set()
    for record in records:
        spec = wanted.get(record.id)
        if spec is None or record.id in seen:
            raise InvariantError("I4", f"request {record.id} reported twice or unknown", None, now)
        seen.add(record.id)
        if record.status == "finished":
            if record.output_tokens != spec.output_len:
                raise InvariantError(
                    "I4",
                    f"request {record.id} finished with {record.output_tokens} of "
                    f"{spec.output_len} output tokens",
                    record.instance,
                    now,
                )
            if not record.arrival_s <= record.first_token_s <= record.finish_s:
                raise InvariantError(
                    "I6",
                    f"request {record.id}: arrival {record.arrival_s}, first token "
                    f"{record.first_token_s}, finish {record.finish_s} out of order",
                    record.instance,
                    now,
                )
        elif not record.fail_reason:
            raise InvariantError(
                "I4",
                f"request {record.id} is {record.status} without a reason",
                record.instance,
                now,
            )
    missing = len(wanted) - len(seen)
    if missing:
        first = next(i for i in wanted if i not in seen)
        raise InvariantError(
            "I4", f"{missing} request(s) neither finished nor failed (first: {first})", None, now
        )
