"""Time of one engine step for a batch, with transformer-block reuse and a memo cache.

* Block reuse: all decoder layers are identical, so one layer is timed and multiplied by the
  layer count (the reference LLMServingSim idea).
* Result reuse across iterations: the token-count-dependent parts (dense layer ops, model
  head, prefill attention of a (new, ctx) chunk) are memoized by their shape key, so a long run
  times each distinct shape once; ``cache_hit_rate`` reports how often that paid off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmservingsim.hardware.backends import PerfBackend
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.model.spec import ModelSpec
from llmservingsim.network.collectives import ring_allreduce_time


@dataclass(slots=True)
class BatchShape:
    """What the model computes in one step.

    ``prefill`` holds (new_tokens, cached_tokens) per sequence that is (re)filling its prompt;
    decode sequences are summarised by their count and their summed context (attended tokens).
    """

    prefill: list[tuple[int, int]] = field(default_factory=list)
    num_decode: int = 0
    decode_context: int = 0
    num_sampled: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(new for new, _ in self.prefill) + self.num_decode

    @property
    def num_seqs(self) -> int:
        return len(self.prefill) + self.num_decode


@dataclass(frozen=True, slots=True)
class StepCost:
    """Seconds of the step and the FLOPs / bytes one device moved (for power)."""

    seconds: float
    flops: float
    bytes: float


_Cost = tuple[float, float, float]


class IterationTimer:
    def __init__(
        self,
        spec: ModelSpec,
        device: DeviceSpec,
        backend: PerfBackend,
        tensor_parallel: int,
        dtype: str,
        kv_dtype: str,
    ) -> None:
        self.graph = OpGraph(spec, tensor_parallel, dtype, kv_dtype)
        self.backend = backend
        self.num_layers = spec.num_layers
        self.tp = tensor_parallel
        self.link = device.links.intra_node
        eff = device.efficiency
        self.step_overhead = eff.iteration_overhead_us * 1e-6
        self.seq_overhead = eff.per_seq_overhead_us * 1e-6
        self._layer: dict[int, _Cost] = {}
        self._head: dict[tuple[int, int], _Cost] = {}
        self._prefill_attn: dict[tuple[int, int], _Cost] = {}
        self.cache_hits = 0
        self.cache_lookups = 0

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.cache_lookups if self.cache_lookups else 0.0

    def _ops_cost(self, ops: list[Op]) -> _Cost:
        seconds = flops = traffic = 0.0
        for op in ops:
            seconds += self.backend.time(op)
            flops += op.flops
            traffic += op.bytes
        return seconds, flops, traffic

    def _layer_cost(self, num_tokens: int) -> _Cost:
        self.cache_lookups += 1
        cost = self._layer.get(num_tokens)
        if cost is None:
            seconds, flops, traffic = self._ops_cost(self.graph.dense_layer_ops(num_tokens))
            message = self.graph.allreduce_bytes(num_tokens)
            seconds += 2 * ring_allreduce_time(message, self.tp, self.link)
            cost = self._layer[num_tokens] = (seconds, flops, traffic)
        else:
            self.cache_hits += 1
        return cost

    def _head_cost(self, num_tokens: int, num_sampled: int) -> _Cost:
        key = (num_tokens, num_sampled)
        self.cache_lookups += 1
        cost = self._head.get(key)
        if cost is None:
            cost = self._head[key] = self._ops_cost(self.graph.head_ops(num_tokens, num_sampled))
        else:
            self.cache_hits += 1
        return cost

    def _prefill_cost(self, new: int, ctx: int) -> _Cost:
        key = (new, ctx)
        self.cache_lookups += 1
        cost = self._prefill_attn.get(key)
        if cost is None:
            cost = self._prefill_attn[key] = self._ops_cost(
                [self.graph.prefill_attention(new, ctx)]
            )
        else:
            self.cache_hits += 1
        return cost

    def step(self, batch: BatchShape) -> StepCost:
        """Cost of one engine step on one device of the (tensor-parallel) instance."""
        num_tokens = batch.num_tokens
        if num_tokens == 0:
            return StepCost(0.0, 0.0, 0.0)
        layer_s, layer_f, layer_b = self._layer_cost(num_tokens)
        for new, ctx in batch.prefill:
            attn_s, attn_f, attn_b = self._prefill_cost(new, ctx)
            layer_s += attn_s
            layer_f += attn_f
            layer_b += attn_b
        if batch.num_decode:
            op = self.graph.decode_attention(batch.num_decode, batch.decode_context)
            layer_s += self.backend.time(op)
            layer_f += op.flops
            layer_b += op.bytes
        head_s, head_f, head_b = self._head_cost(num_tokens, batch.num_sampled)
        cpu = self.step_overhead + self.seq_overhead * batch.num_seqs
        n = self.num_layers
        return StepCost(cpu + n * layer_s + head_s, n * layer_f + head_f, n * layer_b + head_b)
