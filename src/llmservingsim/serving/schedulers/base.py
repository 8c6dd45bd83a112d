"""What every scheduler shares: the queues, the block manager and preemption."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import TYPE_CHECKING, ClassVar

from mypy_extensions import mypyc_attr

from llmservingsim.config import SchedulerConfig
from llmservingsim.errors import ConfigError
from llmservingsim.metrics.decisions import DecisionSite
from llmservingsim.registry import Registry
from llmservingsim.sequence import Sequence, Status
from llmservingsim.serving.block_manager import BlockManager, PrefixHit
from llmservingsim.serving.steady import SteadyDecoders
from llmservingsim.serving.swap import SwapSpace

if TYPE_CHECKING:
    from llmservingsim.serving.lora import AdapterSlots

ScheduledEntry = tuple[Sequence, int]
"""A sequence and the number of tokens it computes this step."""


def remove_each(items: list[Sequence], gone: list[Sequence]) -> None:
    """``items.remove(seq)`` for each of ``gone``, matched by identity as ``list.remove``
    matches a Sequence (it defines no ``__eq__``). Each search starts where the previous one
    removed, so requests that leave in running order (a step's finishers) cost one pass over
    the running list in all, of pointer compares instead of rich comparisons."""
    start = 0
    for seq in gone:
        n = len(items)
        found = -1
        for k in range(n):
            i = start + k if start + k < n else start + k - n
            if items[i] is seq:
                found = i
                break
        if found < 0:
            raise ValueError("remove_each: a request is not in the list")
        del items[found]
        start = found


def is_context(seq: Sequence) -> bool:
    """Whether the scheduled ``seq`` computes prompt (context) tokens this step rather than
    decode one token (or verify drafts after its last one)."""
    return seq.generated == 0 or seq.num_computed + 1 < seq.spec.input_len + seq.generated


@mypyc_attr(allow_interpreted_subclasses=True)
class Scheduler(ABC):
    """Decides, at each step, which sequences run and how many tokens each computes.

    Invariants every policy keeps (tests/serving/test_scheduler_invariants.py): the tokens of a step
    never exceed its budget, at most ``max_num_seqs`` sequences run, and allocated KV blocks
    never exceed the cache.

    A waiting request is admitted from :meth:`lookup`'s :class:`PrefixHit`: a cached prefix
    (prefix caching) or the tokens it swapped out, which it does not compute again.

    With :meth:`keep_steady_decoders` the requests that decode one token every step lead the
    running list as a :class:`SteadyDecoders` group, which a step handles as a whole
    (serving/steady.py); the policy's :meth:`schedule` starts with :meth:`begin_steady_step`
    and takes the requests after the group one by one.
    """

    supports_steady: ClassVar[bool] = False
    """Whether the policy's ``schedule`` goes through :meth:`begin_steady_step` (see above);
    read from the class that defines ``schedule``, so overriding it without declaring this
    again turns steady decoders off."""

    def __init__(
        self, cfg: SchedulerConfig, blocks: BlockManager, swap: SwapSpace | None = None
    ) -> None:
        if cfg.preemption == "swap" and swap is None:
            raise ConfigError("scheduler.preemption: swap needs host swap space, got none")
        self.cfg = cfg
        # The step's limits, read every step: plain ints (a config model's field is a generic
        # attribute lookup in the compiled build).
        self.max_num_batched_tokens: int = cfg.max_num_batched_tokens
        self.max_num_seqs: int = cfg.max_num_seqs
        # Whether prompts may be chunked (scheduler.enable_chunked_prefill; VllmScheduler).
        self.chunked_prefill: bool = cfg.enable_chunked_prefill is not False
        self.blocks = blocks
        self.swap = swap if cfg.preemption == "swap" else None
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0
        self.swap_fallbacks = 0  # swap preemptions done by recompute: the host space was full
        self.recomputed_tokens = 0
        # Draft tokens a decoding sequence may propose this step (speculative decoding; the
        # instance sets it before each schedule(), serving/speculative.py).
        self.lookahead = 0
        # Resident LoRA adapters (multi-LoRA serving, serving/lora.py), or None.
        self.adapters: AdapterSlots | None = None
        self.steady: SteadyDecoders | None = None
        # Multi-step scheduling (scheduler.num_scheduler_steps N): a decode reserves KV for
        # the N tokens of a group (vLLM 0.6's N - 1 lookahead slots); 0 without.
        self.decode_slots_ahead: int = cfg.num_scheduler_steps - 1
        # Where preemptions are logged (outputs.decisions: serving/instance.py sets it), or None.
        self.decisions: DecisionSite | None = None
        # Batch waiting (TensorRT-LLM's batch_wait_*; VllmScheduler.wait_for_batch): the
        # steps its context requests were held back so far, and whether the last schedule()
        # held some (then a decode-only step does not simply repeat: repeats_decode).
        self.batch_wait_timeout_iters: int = cfg.batch_wait_timeout_iters
        self.batch_wait_tokens: float = cfg.batch_wait_max_tokens_ratio * cfg.max_num_batched_tokens
        self.batch_waiting: bool = (
            cfg.batch_wait_timeout_iters > 0 or cfg.batch_wait_max_tokens_ratio > 0.0
        )
        self.batch_wait_count: int = 0
        self.held_context: bool = False
        # The receive interval (SGLang's --scheduler-recv-interval; VllmScheduler.receive):
        # arrivals at the tail of the queue not taken in yet, the pass count towards the next
        # intake, and what the last pass ran (0 nothing, 1 decodes only, 2 context requests).
        self.recv_interval: int = cfg.recv_interval
        self.unreceived: int = 0
        self.recv_count: int = 0
        self.last_pass: int = 0
        # Prompt chunks beside decodes in one step (False: SGLang's separate prefill batches;
        # VllmScheduler.fill_step).
        self.mixed_prefill: bool = cfg.mixed_prefill
        # Whether the block manager copies KV over the host link (an offload tier).
        self._blocks_move_kv = (
            type(blocks).take_transfer_seconds is not BlockManager.take_transfer_seconds
        )

    def keep_steady_decoders(self, window: int = 0, chunk: int = 0) -> bool:
        """Handle steady decoders as a group from now on, where the policy and the block
        manager allow it (KV blocks that only grow, no per-request step changes); whether it
        does. ``window``, ``chunk``: the model's sliding window and attention chunk (0: none;
        SteadyDecoders.join)."""
        # Multi-step groups (serving/instance.py) keep a batch for several steps as entries
        # of their own: no steady group beside them.
        if not (
            self.decode_slots_ahead == 0
            and self._schedule_supports_steady()
            and self.blocks.fast_forward_safe
            and self.blocks.allocation_only_grows
            and not self.running
        ):
            return False
        self.steady = SteadyDecoders(self.blocks, window, chunk)
        return True

    @classmethod
    def _schedule_supports_steady(cls) -> bool:
        """``supports_steady`` as declared by the class whose ``schedule`` runs: a subclass
        that replaces ``schedule`` (a plugin policy) must declare it again itself."""
        owner = next(c for c in cls.__mro__ if "schedule" in c.__dict__)
        return bool(owner.__dict__.get("supports_steady", False))

    def begin_steady_step(self, budget: int | None) -> int:
        """Start the next step for the steady decoders: each computes one token of the
        ``budget`` (None: no token budget) and takes its KV block if due. Where they do not
        all fit (budget, free blocks) the group dissolves, its requests are scheduled one by
        one like the rest. Returns how many requests at the head of the running list the
        step has covered."""
        steady = self.steady
        if steady is None:
            return 0
        count = steady.count
        due = steady.blocks_due(steady.started)
        if count and (
            (budget is not None and count > budget) or (due and due > self.blocks.num_free)
        ):
            steady.dissolve()
            count = 0
        steady.begin_step()
        return count

    def sync_steady(self) -> None:
        """Bring the steady decoders' own fields up to date (for code that reads them)."""
        if self.steady is not None:
            self.steady.sync()

    def step_done(self, now: float, finished: list[Sequence]) -> None:
        """After a step's results were applied: release the ``finished`` requests (finished
        or handed off, in running order) and let the requests that now decode steadily join
        the group."""
        if finished:
            remove_each(self.running, finished)
        for seq in finished:
            self._end_pass(seq)
            self.blocks.free(seq)
            seq.block_keys = None
        steady = self.steady
        if steady is None or steady.sat_out:
            return  # (requests that sampled now join after a step the members decode in)
        running = self.running
        for i in range(steady.count, len(running)):
            seq = running[i]
            # Sampled a token in this step and decodes next (one token, KV of all others).
            if not (
                seq.last_token_time == now
                and seq.generated > 0
                and seq.spec.input_len + seq.generated - seq.num_computed == 1
                and steady.join(seq)
            ):
                break

    def adapter_ready(self, seq: Sequence, in_use: set[str]) -> bool:
        """Whether ``seq``'s adapter is (or can now be made) resident; ``in_use`` names the
        adapters of the requests running or admitted this step, which keep their slots."""
        name = seq.spec.lora
        if name is None or self.adapters is None:
            return True
        if self.adapters.ready(name, in_use):
            in_use.add(name)
            return True
        return False

    def adapters_in_use(self) -> set[str]:
        if self.adapters is None:
            return set()
        return {s.spec.lora for s in self.running if s.spec.lora is not None}

    def tokens_wanted(self, seq: Sequence) -> int:
        """Tokens a running request computes next: what is left, or, when it decodes under
        speculation, its last token plus the drafts it verifies (never past its answer)."""
        if self.lookahead and seq.remaining == 1 and seq.generated > 0:
            return 1 + min(self.lookahead, seq.spec.output_len - seq.generated - 1)
        return seq.remaining

    def kv_tokens(self, seq: Sequence, computed: int, num_new: int) -> int:
        """KV tokens to hold room for when ``seq``, at ``computed`` tokens, computes ``num_new``
        this step: ``num_new``, or for a decode under multi-step scheduling the tokens of the
        whole group (vLLM 0.6's ``num_scheduler_steps - 1`` lookahead slots), never past the
        request's largest KV."""
        ahead = self.decode_slots_ahead
        if ahead and num_new == 1 and seq.generated > 0:
            return min(1 + ahead, seq.max_kv_tokens - computed)
        return num_new

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        if self.recv_interval > 1:
            self.unreceived += 1

    def queue_full(self) -> bool:
        """Admission control: the waiting queue holds ``max_queue`` requests already."""
        limit = self.cfg.max_queue
        return limit is not None and len(self.waiting) >= limit

    def expire_waiting(self, now: float) -> list[Sequence]:
        """Admission control: remove and return the requests that never started and have
        waited ``request_timeout_s`` by ``now``. New requests queue in arrival order behind
        any preempted ones (which have started, so never expire): the scan stops at the
        first request still in time."""
        timeout = self.cfg.request_timeout_s
        if timeout is None:
            return []
        expired: list[Sequence] = []
        waiting = self.waiting
        i = 0
        while i < len(waiting):
            seq = waiting[i]
            if seq.admissions:
                i += 1
            elif now - seq.spec.arrival_s >= timeout:
                if i >= len(waiting) - self.unreceived:
                    self.unreceived -= 1  # (never taken in: its wait counts all the same)
                del waiting[i]
                expired.append(seq)
            else:
                break
        return expired

    def abort(self, seq: Sequence) -> bool:
        """Remove ``seq``, waiting or running, because its client gave up (workload.timeout_s):
        its KV blocks (and a swapped-out copy) are freed. The caller drops it from a step in
        flight. False when it is not this scheduler's."""
        if seq.status is Status.WAITING:
            if seq not in self.waiting:
                return False
            if self.waiting.index(seq) >= len(self.waiting) - self.unreceived:
                self.unreceived -= 1
            self.waiting.remove(seq)
            if seq.swapped_blocks and self.swap is not None:
                self.swap.discard(seq)
            return True
        if seq not in self.running:
            return False
        if self.steady is not None and self.steady.has(seq):
            self.steady.remove(seq)
        self.running.remove(seq)
        self._end_pass(seq)
        self.blocks.free(seq)
        seq.block_keys = None
        return True

    def withdraw_context(self, entries: list[ScheduledEntry]) -> list[ScheduledEntry]:
        """Hold this step's context (prefill) requests back: ``entries`` without them. One
        admitted in this schedule() goes back to the head of the queue, its KV blocks freed,
        as if never admitted; a running one whose prompt is partly computed keeps its blocks
        and continues in a later step. Batch waiting and attention-DP context balancing
        (TensorRT-LLM's py_executor) drop a step's context requests this way."""
        kept: list[ScheduledEntry] = []
        withdrawn: list[Sequence] = []
        for entry in entries:
            seq = entry[0]
            if not is_context(seq):
                kept.append(entry)
            elif seq.num_computed == seq.pass_start:  # admitted now: nothing computed yet
                withdrawn.append(seq)
        if withdrawn:
            remove_each(self.running, withdrawn)
            for seq in withdrawn:
                self.blocks.free(seq)
                seq.num_computed = 0
                seq.admissions -= 1
                seq.status = Status.WAITING
            self.waiting.extendleft(reversed(withdrawn))
        self.held_context = True
        return kept

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def max_blocks_needed(self, seq: Sequence) -> int:
        """KV blocks the request holds at its largest."""
        return self.blocks.blocks_needed(seq.max_kv_tokens)

    def lookup(self, seq: Sequence) -> PrefixHit:
        """Where the waiting ``seq`` would start if admitted now (nothing is reserved)."""
        return self.blocks.lookup(seq)

    def preempt(
        self, seq: Sequence, cause: Sequence | None = None, reason: str = "kv_cache_full"
    ) -> None:
        """Free the request's KV and put it back at the queue head (the caller takes it off
        the running list).

        Swap keeps its computed tokens in host memory; recompute (or swap without room on the
        host) drops them, so they are computed again unless the prefix cache still has them.
        ``cause`` (the request that needed the room) and ``reason`` (``kv_cache_full``: a
        running request could not grow; ``max_num_seqs``: no free slot) go to the decision log.
        """
        self._end_pass(seq)
        swapped = self.swap is not None and self.swap.swap_out(seq)
        site = self.decisions
        if site is not None:
            running = self.running
            candidates = list(running) if seq in running else [*running, seq]
            site.preempted(seq, candidates, self.victim_scores(candidates), cause, swapped, reason)
        if self.swap is not None and not swapped:
            self.swap_fallbacks += 1
        self.blocks.free(seq)
        if not swapped:
            seq.num_computed = 0
        seq.status = Status.WAITING
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def victim_scores(self, candidates: list[Sequence]) -> list[float] | None:
        """For the decision log: each candidate victim's score under this policy's rule (the
        victim has the largest), or None when the policy has no score. ``candidates`` are the
        running requests in admission order with the victim appended: vLLM's rule preempts the
        most recently admitted, so the score is the position in that order."""
        return [float(k) for k in range(len(candidates))]

    def admit(self, seq: Sequence, num_tokens: int, hit: PrefixHit | None = None) -> None:
        """Start the head of the queue from ``hit`` (default: a fresh lookup)."""
        self.waiting.popleft()
        if hit is None:
            hit = self.lookup(seq)
        if seq.swapped_blocks and self.swap is not None:
            self.swap.swap_in(seq)
        self.blocks.allocate(seq, num_tokens, hit)
        if seq.admissions == 0:
            seq.cached_tokens = seq.num_computed
        seq.admissions += 1
        seq.pass_start = seq.num_computed
        seq.status = Status.RUNNING
        self.running.append(seq)

    def _end_pass(self, seq: Sequence) -> None:
        """Count the tokens this stay on the device computed that the request had before."""
        again = min(seq.num_computed, seq.max_computed) - seq.pass_start
        self.recomputed_tokens += max(0, again)
        seq.max_computed = max(seq.max_computed, seq.num_computed)

    def take_transfer_seconds(self) -> float:
        """Host-link time of the KV copies this step needs (swap, offload loads)."""
        seconds = 0.0
        if self.swap is not None:
            seconds += self.swap.ledger.take_seconds()
        if self.adapters is not None:
            seconds += self.adapters.take_seconds()
        if self._blocks_move_kv:
            seconds += self.blocks.take_transfer_seconds()
        return seconds

    def kv_stats(self) -> dict[str, int | float]:
        """Counters for summary.json (summed over instances); bytes count every device."""
        stats: dict[str, int | float] = {
            "recomputed_prefill_tokens": self.recomputed_tokens,
            "swap_fallback_preemptions": self.swap_fallbacks,
            "swapped_out_blocks": 0,
            "swapped_in_blocks": 0,
            "swapped_out_bytes": 0.0,
            "swapped_in_bytes": 0.0,
            "host_transfer_time_s": 0.0,
        }
        if self.swap is not None:
            ledger = self.swap.ledger
            stats["swapped_out_blocks"] = ledger.blocks_to_host
            stats["swapped_in_blocks"] = ledger.blocks_to_device
            stats["swapped_out_bytes"] = ledger.link.bytes(ledger.blocks_to_host)
            stats["swapped_in_bytes"] = ledger.link.bytes(ledger.blocks_to_device)
            stats["host_transfer_time_s"] = ledger.seconds
        for key, value in self.blocks.kv_stats().items():
            stats[key] = stats.get(key, 0) + value
        return stats

    def repeats_decode(self) -> bool:
        """Whether a step that only decoded every running request (nobody admitted or
        preempted) repeats itself, one more token each, until a request finishes, one arrives
        or the KV cache runs short: then the engine may fast-forward (serving/decode_run.py).

        A policy opts in once its admission test cannot turn true while the batch only grows;
        features that change a decode step (speculative decoding, LoRA adapters) must answer
        False for the steps they touch. Default False: one step at a time, always correct.
        """
        return False

    @abstractmethod
    def schedule(self) -> list[ScheduledEntry]:
        """The sequences of the next step; allocates their KV blocks."""


SCHEDULERS: Registry[type[Scheduler]] = Registry("scheduler policy", "llmservingsim.schedulers")
