"""Speculative decoding on one instance: how many tokens to propose, which ones are accepted.

Each step a decoding sequence proposes up to k tokens (never more than its answer still needs),
the target verifies them plus the last sampled token in one pass of k + 1 positions, and the
acceptance model decides how many survive: position i is accepted with probability α_i given
that every earlier one was, the first rejection ends the run, and the target's own token is
emitted on top. So a step emits between 1 and k + 1 tokens, and with constant α the mean is
(1 − α^(k+1)) / (1 − α). The KV slots of rejected tokens go back to the pool.

Draws come from a seeded generator per instance, so a run is reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from llmservingsim.catalog import load_model
from llmservingsim.config import SpeculativeConfig
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.ops import kv_bytes_per_token_layer
from llmservingsim.model.spec import ModelSpec
from llmservingsim.perf.iteration import IterationTimer, StepCost
from llmservingsim.perf.speculative import (
    PROPOSERS,
    DraftCost,
    Proposer,
    ProposerContext,
    one_layer_head,
    prepend_work,
)
from llmservingsim.sequence import Sequence
from llmservingsim.serving.memory import weight_bytes_per_device


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Closed form of the mean tokens one verify step emits for constant α (Leviathan et al.)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


@dataclass
class SpecStats:
    """Counters for summary.json, summed over instances."""

    verify_steps: int = 0  # sequence-steps that verified at least one proposed token
    proposed: int = 0
    accepted: int = 0
    draft_time_s: float = 0.0
    disabled_steps: int = 0  # steps where disable_by_batch_size switched speculation off

    def add(self, other: SpecStats) -> None:
        self.verify_steps += other.verify_steps
        self.proposed += other.proposed
        self.accepted += other.accepted
        self.draft_time_s += other.draft_time_s
        self.disabled_steps += other.disabled_steps

    def summary(self) -> dict[str, float | int | None]:
        return {
            "spec_acceptance_rate": self.accepted / self.proposed if self.proposed else None,
            "spec_tokens_per_step": (self.accepted + self.verify_steps) / self.verify_steps
            if self.verify_steps
            else None,
            "spec_draft_time_s": self.draft_time_s,
            "spec_proposed_tokens": self.proposed,
            "spec_accepted_tokens": self.accepted,
            "spec_disabled_steps": self.disabled_steps,
        }


class Speculator:
    """Per-instance speculation policy, acceptance sampling and proposal timing."""

    def __init__(self, cfg: SpeculativeConfig, proposer: Proposer, seed: str) -> None:
        self.k = cfg.num_speculative_tokens
        self.rates = cfg.rates
        self.disable_above = cfg.disable_by_batch_size
        self.proposer = proposer
        self.rng = random.Random(seed)
        self.stats = SpecStats()

    def lookahead(self, num_running: int) -> int:
        """Tokens to propose this step (0: speculation is off for a step this large)."""
        if self.disable_above is not None and num_running > self.disable_above:
            self.stats.disabled_steps += 1
            return 0
        return self.k

    def draft_cost(self, num_seqs: int, context: int, k: int) -> DraftCost:
        cost = self.proposer.cost(num_seqs, context, k)
        self.stats.draft_time_s += cost.seconds
        return cost

    def add_proposals(self, entries: list[tuple[Sequence, int]], cost: StepCost) -> StepCost:
        """The step's cost with the proposal passes of its verifying sequences before it (all
        propose together, for as many passes as the longest proposal)."""
        num_seqs = context = k = 0
        for seq, num_new in entries:
            if num_new > seq.remaining:
                num_seqs += 1
                context += seq.num_computed + 1
                k = max(k, num_new - 1)
        if num_seqs == 0:
            return cost
        return prepend_work(cost, self.draft_cost(num_seqs, context, k))

    def accept(self, proposed: int) -> int:
        """Accepted tokens out of ``proposed`` (a prefix of them, sampled position by position)."""
        accepted = 0
        rates, draw = self.rates, self.rng.random
        while accepted < proposed and draw() < rates[accepted]:
            accepted += 1
        stats = self.stats
        stats.verify_steps += 1
        stats.proposed += proposed
        stats.accepted += accepted
        return accepted


def load_draft_model(cfg: SpeculativeConfig, target: ModelSpec, tp: int) -> ModelSpec | None:
    """The draft model of method=draft, checked against the target (None for other methods)."""
    if cfg.method != "draft":
        return None
    try:
        draft = load_model(cfg.draft_model)
    except ConfigError as exc:
        raise ConfigError(f"speculative.draft_model: {exc}") from None
    if draft.vocab_size != target.vocab_size:
        raise ConfigError(
            f"speculative.draft_model {cfg.draft_model!r} has a {draft.vocab_size}-token "
            f"vocabulary, the target {target.name} {target.vocab_size}: they must share one"
        )
    if draft.num_heads % tp:
        raise ConfigError(
            f"speculative.draft_model {cfg.draft_model!r}: its {draft.num_heads} heads do not "
            f"split over tensor_parallel={tp} (the draft runs with the target's TP)"
        )
    if draft.has_local_layers:
        # A proposal pass (perf/speculative.ModelProposer) knows only the summed context,
        # not each sequence's min(context, window) or place in its chunk.
        raise ConfigError(
            f"speculative.draft_model {cfg.draft_model!r}: a draft model with sliding-window "
            "or chunked attention is not yet supported"
        )
    return draft


def proposer_memory(
    cfg: SpeculativeConfig,
    target: ModelSpec,
    draft: ModelSpec | None,
    dtype: str,
    kv_dtype: str,
    tp: int,
) -> tuple[float, float]:
    """(weight bytes, KV bytes per token) the proposer needs on each device.

    A draft model holds all its weights and caches every layer; an EAGLE / MTP head is one
    decoder layer that shares the target's embeddings and LM head; n-gram needs nothing.
    """
    if cfg.method == "draft" and draft is not None:
        weights = weight_bytes_per_device(draft, dtype, tp)
        return weights, draft.num_layers * kv_bytes_per_token_layer(draft, tp, kv_dtype)
    if cfg.method in ("eagle", "mtp"):
        head = one_layer_head(target)
        layer = weight_bytes_per_device(head, dtype, tp) - weight_bytes_per_device(
            replace(head, num_layers=0), dtype, tp
        )
        return layer, kv_bytes_per_token_layer(target, tp, kv_dtype)
    return 0.0, 0.0


def make_proposer(
    cfg: SpeculativeConfig,
    target: ModelSpec,
    draft: ModelSpec | None,
    timer: IterationTimer,
    device: DeviceSpec,
    dtype: str,
    kv_dtype: str,
) -> Proposer:
    """The proposer of ``cfg.method``, timed by the target timer's backend on its devices."""
    context = ProposerContext(
        target=target,
        draft=draft,
        device=device,
        backend=timer.backend,
        topology=timer.topology,
        tensor_parallel=timer.tp,
        first_device=timer.first_device,
        dtype=dtype,
        kv_dtype=kv_dtype,
        fusion=timer.graph.fusion,  # the draft runs in the same engine
    )
    return PROPOSERS.get(cfg.method)(context)
