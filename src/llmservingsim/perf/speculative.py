"""Time of the proposal phase of speculative decoding: k draft passes before the verify step.

The verify pass itself is an ordinary target step (k + 1 positions per sequence, costed like a
small prefill chunk by :class:`IterationTimer`); what is added here is how the k proposals are
made, one registered proposer per ``speculative.method``:

* ``draft``: k decode passes of a small draft model over the speculating sequences, on the
  same devices and tensor parallelism as the target (vLLM's default draft TP);
* ``eagle`` / ``mtp``: k passes of one decoder layer plus the LM head of the target's shape
  (EAGLE's feature-level head, DeepSeek's multi-token-prediction module);
* ``ngram``: prompt lookup, no model pass (its CPU cost is within the step overhead).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from llmservingsim.hardware.backends import PerfBackend
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.spec import ModelSpec
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import BatchShape, IterationTimer, StepCost
from llmservingsim.registry import Registry


class DraftCost:
    seconds: float
    flops: float
    bytes: float

    def __init__(
        self,
        seconds: float,
        flops: float,
        bytes: float,
    ) -> None:
        self.seconds = seconds
        self.flops = flops
        self.bytes = bytes

    def __repr__(self) -> str:
        return f"DraftCost(seconds={self.seconds!r}, flops={self.flops!r}, bytes={self.bytes!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DraftCost):
            return NotImplemented
        return (self.seconds, self.flops, self.bytes) == (other.seconds, other.flops, other.bytes)


NO_DRAFT = DraftCost(0.0, 0.0, 0.0)


class Proposer:
    """Proposes k tokens for ``num_seqs`` sequences; subclasses time the model passes."""

    def cost(self, num_seqs: int, context: int, k: int) -> DraftCost:
        """Time of ``k`` proposal passes for ``num_seqs`` sequences whose contexts sum to
        ``context`` tokens (each pass attends one more token per sequence)."""
        return NO_DRAFT


class ModelProposer(Proposer):
    """k single-token decode passes of a (small or one-layer) model."""

    def __init__(self, timer: IterationTimer) -> None:
        self.timer = timer

    def cost(self, num_seqs: int, context: int, k: int) -> DraftCost:
        seconds = flops = traffic = 0.0
        for i in range(k):
            batch = BatchShape(
                num_decode=num_seqs, decode_context=context + i * num_seqs, num_sampled=num_seqs
            )
            step = self.timer.step(batch)
            seconds += step.seconds
            flops += step.flops
            traffic += step.bytes
        return DraftCost(seconds, flops, traffic)


@dataclass(frozen=True)
class ProposerContext:
    """What a proposer is built from: the target's shape and where it runs."""

    target: ModelSpec
    draft: ModelSpec | None
    device: DeviceSpec
    backend: PerfBackend
    topology: Topology
    tensor_parallel: int
    first_device: int
    dtype: str
    kv_dtype: str

    def timer(self, spec: ModelSpec) -> IterationTimer:
        return IterationTimer(
            spec,
            self.device,
            self.backend,
            self.topology,
            tensor_parallel=self.tensor_parallel,
            first_device=self.first_device,
            dtype=self.dtype,
            kv_dtype=self.kv_dtype,
        )


def one_layer_head(target: ModelSpec) -> ModelSpec:
    """The EAGLE / MTP head: one decoder layer of the target's shape plus its LM head (a
    full-attention layer: EAGLE heads attend to the whole context)."""
    return replace(
        target, name=f"{target.name}-head", num_layers=1, first_dense_layers=0, sliding_layers=()
    )


PROPOSERS: Registry[Callable[[ProposerContext], Proposer]] = Registry("speculative method")


@PROPOSERS.register("draft")
def _draft(ctx: ProposerContext) -> Proposer:
    assert ctx.draft is not None, "method=draft needs a draft model"
    return ModelProposer(ctx.timer(ctx.draft))


@PROPOSERS.register("eagle")
@PROPOSERS.register("mtp")
def _head(ctx: ProposerContext) -> Proposer:
    return ModelProposer(ctx.timer(one_layer_head(ctx.target)))


@PROPOSERS.register("ngram")
def _ngram(ctx: ProposerContext) -> Proposer:
    return Proposer()


def prepend_work(cost: StepCost, draft: DraftCost) -> StepCost:
    """The step's cost with extra work (proposals, LoRA GEMMs) run on its first stage."""
    if draft.seconds == 0.0:
        return cost
    stages = cost.stages or (cost.seconds,)
    return StepCost(
        cost.seconds + draft.seconds,
        cost.flops + draft.flops,
        cost.bytes + draft.bytes,
        (stages[0] + draft.seconds, *stages[1:]),
        cost.aux_energy_j,
    )
