"""Time of one engine step for a batch, with transformer-block reuse and a memo cache.

* Block reuse: all decoder layers are identical, so one layer is timed and multiplied by the
  layer count (the reference LLMServingSim idea).
* Result reuse across iterations: the token-count-dependent parts (dense layer ops, model
  head, prefill attention of a (new, ctx) chunk) are memoized by their shape key, so a long run
  times each distinct shape once; ``cache_hit_rate`` reports how often that paid off.
* Mixture-of-experts models have two kinds of layer (DeepSeek keeps its first layers dense):
  each kind is timed once and multiplied by its count in each pipeline stage. Expert
  parallelism adds the all-to-all dispatch and combine of each MoE layer (model/moe.py).
* Attention data parallelism (:meth:`IterationTimer.step_ranks`): D ranks, each with its own
  batch, step in lockstep; a MoE layer is the rank's own part (attention, norm, shared
  experts) and the routed experts on the union of the ranks' tokens, after an all-to-all over
  every device of the instance.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, cast

import numpy as np
import numpy.typing as npt

from llmservingsim.hardware.backends import PerfBackend
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.fusion import DEFAULT_FUSION, Fusion
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.model.spec import ModelSpec
from llmservingsim.network import collectives
from llmservingsim.network.topology import Topology


class BatchShape:
    """What the model computes in one step.

    ``prefill`` holds (new_tokens, cached_tokens) per sequence that is (re)filling its prompt;
    decode sequences are summarised by their count and their summed context (attended tokens).
    A speculative verify pass is a prefill chunk too; ``num_verify`` counts its tokens.
    ``decode_local_context`` is what a local-attention layer attends: the sum over the decode
    sequences of min(context, window) (a sliding window) or (context − 1) mod chunk + 1 (a
    chunked layer); 0 when the model has no such layers.
    """

    prefill: list[tuple[int, int]]
    num_decode: int
    decode_context: int
    num_sampled: int
    num_verify: int  # speculative verify tokens among the prefill chunks (metrics only)
    decode_local_context: int

    def __init__(
        self,
        prefill: list[tuple[int, int]] | None = None,
        num_decode: int = 0,
        decode_context: int = 0,
        num_sampled: int = 0,
        num_verify: int = 0,
        decode_local_context: int = 0,
    ) -> None:
        self.prefill: list[tuple[int, int]] = list() if prefill is None else prefill
        self.num_decode = num_decode
        self.decode_context = decode_context
        self.num_sampled = num_sampled
        self.num_verify = num_verify
        self.decode_local_context = decode_local_context

    def __repr__(self) -> str:
        return (
            f"BatchShape("
            f"prefill={self.prefill!r}, "
            f"num_decode={self.num_decode!r}, "
            f"decode_context={self.decode_context!r}, "
            f"num_sampled={self.num_sampled!r}, "
            f"num_verify={self.num_verify!r}, "
            f"decode_local_context={self.decode_local_context!r}"
            ")"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BatchShape):
            return NotImplemented
        return (
            self.prefill,
            self.num_decode,
            self.decode_context,
            self.num_sampled,
            self.num_verify,
            self.decode_local_context,
        ) == (
            other.prefill,
            other.num_decode,
            other.decode_context,
            other.num_sampled,
            other.num_verify,
            other.decode_local_context,
        )

    @property
    def num_tokens(self) -> int:
        if not self.prefill:  # most steps: decode only
            return self.num_decode
        return sum(new for new, _ in self.prefill) + self.num_decode

    @property
    def num_seqs(self) -> int:
        return len(self.prefill) + self.num_decode


class StepCost:
    """Time of one step through every pipeline stage, and the FLOPs / bytes one device of each
    stage moved, summed over stages (for power). ``stages`` holds each stage's busy time
    (one entry without pipeline parallelism); ``seconds`` is their sum. ``aux_energy_j`` is
    what attached devices outside the TP × PP group (PIM, perf/pim.py) drew during the step.

    A value: nothing changes one once built. Not declared frozen only because one is built
    every step and a frozen dataclass's ``__init__`` costs four times as much."""

    seconds: float
    flops: float
    bytes: float
    stages: tuple[float, ...]
    aux_energy_j: float

    def __init__(
        self,
        seconds: float,
        flops: float,
        bytes: float,
        stages: tuple[float, ...] = (),
        aux_energy_j: float = 0.0,
    ) -> None:
        self.seconds = seconds
        self.flops = flops
        self.bytes = bytes
        self.stages = stages
        self.aux_energy_j = aux_energy_j

    def __repr__(self) -> str:
        return (
            f"StepCost("
            f"seconds={self.seconds!r}, "
            f"flops={self.flops!r}, "
            f"bytes={self.bytes!r}, "
            f"stages={self.stages!r}, "
            f"aux_energy_j={self.aux_energy_j!r}"
            ")"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepCost):
            return NotImplemented
        return (self.seconds, self.flops, self.bytes, self.stages, self.aux_energy_j) == (
            other.seconds,
            other.flops,
            other.bytes,
            other.stages,
            other.aux_energy_j,
        )


_Cost = tuple[float, float, float]
FloatArray = npt.NDArray[np.float64]


class StepCosts:
    """:class:`StepCost` of consecutive one-stage steps, as columns (fast-forward runs)."""

    seconds: FloatArray
    flops: FloatArray
    bytes: FloatArray
    aux_energy_j: FloatArray

    def __init__(
        self,
        seconds: FloatArray,
        flops: FloatArray,
        bytes: FloatArray,
        aux_energy_j: FloatArray,
    ) -> None:
        self.seconds = seconds
        self.flops = flops
        self.bytes = bytes
        self.aux_energy_j = aux_energy_j

    def __repr__(self) -> str:
        return (
            f"StepCosts("
            f"seconds={self.seconds!r}, "
            f"flops={self.flops!r}, "
            f"bytes={self.bytes!r}, "
            f"aux_energy_j={self.aux_energy_j!r}"
            ")"
        )

    @staticmethod
    def of(costs: list[StepCost]) -> StepCosts:
        return StepCosts(
            np.array([c.seconds for c in costs], dtype=np.float64),
            np.array([c.flops for c in costs], dtype=np.float64),
            np.array([c.bytes for c in costs], dtype=np.float64),
            np.array([c.aux_energy_j for c in costs], dtype=np.float64),
        )

    def __len__(self) -> int:
        return int(self.seconds.size)

    def take(self, index: slice) -> StepCosts:
        return StepCosts(
            self.seconds[index], self.flops[index], self.bytes[index], self.aux_energy_j[index]
        )

    def concat(self, other: StepCosts) -> StepCosts:
        return StepCosts(
            np.concatenate((self.seconds, other.seconds)),
            np.concatenate((self.flops, other.flops)),
            np.concatenate((self.bytes, other.bytes)),
            np.concatenate((self.aux_energy_j, other.aux_energy_j)),
        )


class VectorDecodeAttention(Protocol):
    """A backend that times many decode-attention ops at once (fast-forward runs)."""

    def decode_attention_times(
        self, flops: npt.NDArray[np.float64], traffic: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]: ...


class ScalarDecodeAttention(Protocol):
    """A backend that times one decode-attention op (FLOPs > 0) from its FLOPs and bytes
    alone, exactly as its ``time`` would: every step then skips building the op."""

    def decode_attention_time(self, flops: float, traffic: float) -> float: ...


def times_decode_attention_from_work(backend: object, method: str) -> bool:
    """Whether the backend's ``method`` (``decode_attention_time(s)``) may stand in for its
    ``time``: the class that defines ``time`` defines the method too. A subclass that re-times
    ops but inherits the method would be bypassed, so it takes the op loop instead."""
    mro = type(backend).__mro__
    defines_time = next((cls for cls in mro if "time" in vars(cls)), None)
    defines_method = next((cls for cls in mro if method in vars(cls)), None)
    return defines_method is not None and defines_method is defines_time


def sum_in_order(values: list[float]) -> float:
    """Left-to-right float sum. Not ``sum()``: from Python 3.12 on it compensates rounding, so
    its last bit would depend on the interpreter version."""
    total = 0.0
    for value in values:
        total += value
    return total


def _pair_key(first: int, second: int) -> int:
    """One int for a memo key of two counts below 2**31 (token counts, contexts): a dict
    lookup by int needs no tuple built and hashed every step."""
    return (first << 31) | second


class CudaGraphPolicy:
    """Which steps replay a captured CUDA graph and at what padded size (perf.cuda_graphs).

    ``mode``: off (not modelled), eager, decode (pure-decode steps only, counted in
    sequences), piecewise (any step, counted in tokens). ``sizes``: the captured sizes,
    ascending; ``padding``: round a batch up to the next one (else only exact sizes replay).
    ``launch_s``: host seconds per kernel launch of an eager step (0: no floor).
    """

    mode: str
    launch_s: float
    _pad: list[int]

    def __init__(self, mode: str, sizes: tuple[int, ...], padding: bool, launch_s: float) -> None:
        self.mode = mode
        self.launch_s = launch_s if mode != "off" else 0.0
        # _pad[n]: the graph size a batch of n runs at; 0: it runs eagerly.
        top = sizes[-1] if mode in ("decode", "piecewise") and sizes else 0
        pad = [0] * (top + 1)
        if top:
            if padding:
                at = 0
                for n in range(1, top + 1):
                    while sizes[at] < n:
                        at += 1
                    pad[n] = sizes[at]
            else:
                for size in sizes:
                    pad[size] = size
        self._pad = pad

    @staticmethod
    def off() -> CudaGraphPolicy:
        return CudaGraphPolicy("off", (), True, 0.0)

    def graph_size(self, num_decode: int, num_tokens: int, has_prefill: bool) -> int:
        """The padded token count the step's graph runs at, or 0 where it runs eagerly."""
        if self.mode == "decode":
            if has_prefill or num_decode >= len(self._pad):
                return 0
            return self._pad[num_decode]
        if self.mode == "piecewise" and num_tokens < len(self._pad):
            return self._pad[num_tokens]
        return 0


class IterationTimer:
    repeatable: ClassVar[bool] = True
    """Whether :meth:`step` depends only on the batch (apart from the memo counters), so the
    steps of a decode run can be timed ahead of time (serving/decode_run.py)."""

    def __init__(
        self,
        spec: ModelSpec,
        device: DeviceSpec,
        backend: PerfBackend,
        topology: Topology,
        *,
        tensor_parallel: int,
        dtype: str,
        kv_dtype: str,
        pipeline_parallel: int = 1,
        first_device: int = 0,
        expert_parallel: int = 1,
        moe_imbalance: float = 1.0,
        host_overhead_s: tuple[float, float] | None = None,
        host_overlap: bool = False,
        data_parallel: int = 1,
        fusion: Fusion = DEFAULT_FUSION,
        cuda_graphs: CudaGraphPolicy | None = None,
    ) -> None:
        self.graph = OpGraph(
            spec,
            tensor_parallel,
            dtype,
            kv_dtype,
            expert_parallel=expert_parallel,
            moe_imbalance=moe_imbalance,
            data_parallel=data_parallel,
            fusion=fusion,
            fp4_tensor_cores=device.fp4_tensor_cores,
        )
        self.backend = backend
        self.num_layers = spec.num_layers
        self.tp = tensor_parallel
        self.pp = pipeline_parallel
        self.ep = expert_parallel
        self.dp = data_parallel  # attention DP ranks, TP devices each (step_ranks)
        self.topology = topology
        self.first_device = first_device
        base, extra = divmod(spec.num_layers, pipeline_parallel)
        # Stages split the layers evenly; the first ``extra`` stages take one more.
        self.stage_layers = tuple(base + (i < extra) for i in range(pipeline_parallel))
        # MoE layers per stage (0 for dense models); the rest of each stage's layers are dense.
        moe_layers, first = [], 0
        for count in self.stage_layers:
            moe_layers.append(sum(spec.is_moe_layer(i) for i in range(first, first + count)))
            first += count
        self.stage_moe_layers = tuple(moe_layers)
        self.num_moe_layers = spec.num_moe_layers
        # Local-attention layers: sliding-window (gpt-oss) ones see min(context, window)
        # tokens per sequence, chunked (Llama-4) ones their chunk's; each stage's (dense, MoE)
        # × (full, local) layer counts (_local_step).
        self.window = spec.sliding_window if spec.has_sliding_layers else 0
        self.chunk = spec.attention_chunk if spec.has_chunked_layers else 0
        self.local = self.window > 0 or self.chunk > 0
        kinds, first = [], 0
        for count in self.stage_layers:
            layers = range(first, first + count)
            moe_sliding = sum(spec.is_moe_layer(i) and spec.is_local_layer(i) for i in layers)
            sliding = sum(spec.is_local_layer(i) for i in layers)
            moe = sum(spec.is_moe_layer(i) for i in layers)
            dense_sliding = sliding - moe_sliding
            kinds.append(
                (count - moe - dense_sliding, dense_sliding, moe - moe_sliding, moe_sliding)
            )
            first += count
        self.stage_layer_kinds: tuple[tuple[int, int, int, int], ...] = tuple(kinds)
        # The same counts over all stages: dense full, dense sliding, MoE full, MoE sliding.
        self.layer_kind_totals: tuple[int, int, int, int] = (
            sum(k[0] for k in kinds),
            sum(k[1] for k in kinds),
            sum(k[2] for k in kinds),
            sum(k[3] for k in kinds),
        )
        self.activation_bytes = 2 * spec.hidden_size * self.graph.act_bytes  # hidden + residual
        eff = device.efficiency
        self.step_overhead = eff.iteration_overhead_us * 1e-6
        self.seq_overhead = eff.per_seq_overhead_us * 1e-6
        if host_overhead_s is not None:  # the engine's frontend (perf/frontend.py) sets them
            self.step_overhead, self.seq_overhead = host_overhead_s
        # perf.host_overlap: the host work of a step runs while the GPU runs the step before
        # (TensorRT-LLM's overlap scheduler, SGLang's overlap scheduler), so a step takes
        # max(GPU, host) instead of their sum.
        self.host_overlap = host_overlap
        # perf.cuda_graphs: padded graph replays, or the kernel-launch floor of eager steps.
        self.cuda_graphs = CudaGraphPolicy.off() if cuda_graphs is None else cuda_graphs
        self.launch_s = self.cuda_graphs.launch_s
        self._graphs_on = self.cuda_graphs.mode != "off"  # (one test per step when off)
        self._kernel_counts()
        self._layer: dict[int, _Cost] = {}
        self._moe_layer: dict[int, _Cost] = {}
        self._moe_rank: dict[int, _Cost] = {}
        self._moe_experts: dict[int, _Cost] = {}
        self._head: dict[int, _Cost] = {}  # by _pair_key(tokens, sampled sequences)
        self._embedding: dict[int, tuple[_Cost, ...]] = {}  # each head op by the count it needs
        self._output: dict[int, tuple[_Cost, ...]] = {}
        self._prefill_attn: dict[int, _Cost] = {}  # by _pair_key(new tokens, context)
        self._prefill_local: dict[int, _Cost] = {}  # the same, local-attention layers
        self._sends: dict[int, tuple[float, ...]] = {}
        # MLA's absorption GEMMs before / after decode attention, by batch size (fast path).
        self._around_decode: dict[int, tuple[tuple[_Cost, ...], tuple[_Cost, ...]]] = {}
        self.cache_hits = 0
        self.cache_lookups = 0
        # A backend with ``stats()`` may count its calls (profile fallbacks, external cache
        # hits): it keeps being asked what it always was, memos beyond the counted ones aside.
        self._counts_calls = getattr(backend, "stats", None) is not None
        self._vector: VectorDecodeAttention | None = None
        self._scalar: ScalarDecodeAttention | None = None
        if not self._counts_calls:
            if times_decode_attention_from_work(backend, "decode_attention_times"):
                self._vector = cast(VectorDecodeAttention, backend)
            if times_decode_attention_from_work(backend, "decode_attention_time"):
                self._scalar = cast(ScalarDecodeAttention, backend)
        # Pure decode steps of a dense model on one stage take :meth:`_decode_step`.
        self._plain_decode = (
            self._scalar is not None
            and self.graph.mla is None
            and not self.num_moe_layers
            and self.pp == 1
            and not self.local
        )

    def _kernel_counts(self) -> None:
        """Kernels one eager step launches per layer kind, per attention kind and in the head:
        one per op of the op graph, and one per collective (a NCCL or custom all-reduce is a
        kernel launch too). All prefill chunks of a step share one varlen attention call."""
        graph, tp = self.graph, self.tp
        self.dense_kernels = len(graph.dense_layer_ops(1)) + (2 if tp > 1 else 0)
        self.moe_kernels = 0
        moe = graph.moe
        if moe is not None:
            # the attention all-reduce; then (EP = 1) the experts' all-reduce, or (EP > 1) the
            # dispatch and combine all-to-alls, the all-gather, the shared experts' reduce-scatter
            in_tp = 1 if tp > 1 else 0
            if self.ep == 1:
                collectives_per_layer = 2 * in_tp
            else:
                shared = 1 if moe.shared_intermediate else 0
                collectives_per_layer = in_tp + 2 + in_tp + shared * in_tp
            self.moe_kernels = (
                len(graph.attention_block_ops(1)) + len(moe.ffn_ops(1)) + collectives_per_layer
            )
        self.prefill_attn_kernels = len(graph.prefill_attention_ops(1, 0))
        self.decode_attn_kernels = len(graph.decode_attention_ops(1, 1))
        self.head_kernels = len(graph.embedding_ops(1)) + len(graph.output_ops(1))

    def _layer_kernels(self, batch: BatchShape, moe: bool) -> int:
        kernels = self.moe_kernels if moe else self.dense_kernels
        if batch.prefill:
            kernels += self.prefill_attn_kernels
        if batch.num_decode:
            kernels += self.decode_attn_kernels
        return kernels

    def step_kernels(self, batch: BatchShape) -> int:
        """Kernels one eager step of ``batch`` launches over every layer and the head (the
        launch floor's count when the step runs on one stage)."""
        n_moe = self.num_moe_layers
        kernels = n_moe * self._layer_kernels(batch, True) + self.head_kernels
        return kernels + (self.num_layers - n_moe) * self._layer_kernels(batch, False)

    def _graph_tokens(self, batch: BatchShape, num_tokens: int) -> tuple[int, bool]:
        """The token count the step's GEMMs and elementwise kernels run at, and whether it
        runs eagerly (pays the launch floor)."""
        size = self.cuda_graphs.graph_size(batch.num_decode, num_tokens, bool(batch.prefill))
        if size:
            return size, False
        return num_tokens, self.launch_s > 0.0

    def _stages_floor(self, stages: list[float], batch: BatchShape, head_s: float) -> None:
        """Each stage of an eager step takes at least its kernels' launch time: the host
        enqueues kernels asynchronously, so over a stage the GPU waits only where the
        launches, summed, outrun the kernels, summed (docs/engines.md, "CUDA graphs"). The
        last stage also runs the head (``head_s``, added by the caller)."""
        dense_k = self._layer_kernels(batch, False)
        moe_k = self._layer_kernels(batch, True)
        last = len(stages) - 1
        for i, (layers, moe_layers) in enumerate(
            zip(self.stage_layers, self.stage_moe_layers, strict=True)
        ):
            kernels = (layers - moe_layers) * dense_k + moe_layers * moe_k
            head = 0.0
            if i == last:
                kernels += self.head_kernels
                head = head_s
            floor = kernels * self.launch_s
            if stages[i] + head < floor:
                stages[i] = floor - head

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.cache_lookups if self.cache_lookups else 0.0

    def repeat_decode_costs(self, first: BatchShape, steps: int) -> tuple[StepCosts, int, int]:
        """Costs of steps 1..steps-1 after the decode step ``first`` (each attends
        ``num_decode`` more tokens than the one before), timed ahead of time; and the memo
        lookups and hits one step makes.

        The memo counters are left as they were: :meth:`count_repeats` adds them for the steps
        that do run, so the reported hit rate equals stepping one iteration at a time.
        """
        lookups, hits = self.cache_lookups, self.cache_hits
        contexts = first.decode_context + first.num_decode * np.arange(1, max(1, steps))
        local = first.decode_local_context
        # Chunked layers: steady decoders stay inside their chunk (SteadyDecoders.join), so
        # what they attend grows by one per sequence and step, as the context does.
        local_step = first.num_decode if self.chunk else 0
        if self.window and local != first.num_decode * self.window:
            # Only sequences past the window keep min(context, window) fixed as they grow;
            # steady decoders (serving/steady.py) admit only those for such models.
            raise ValueError(
                f"decode run of {first.num_decode} sequences attending {local} tokens in "
                f"sliding-window layers: not all past the {self.window}-token window"
            )
        per_lookups = per_hits = 0
        if contexts.size and self._repeats_as_arrays(first):
            # The arrays look up the memo exactly as one step does.
            costs = self._decode_costs(first, contexts)
            per_lookups, per_hits = self.cache_lookups - lookups, self.cache_hits - hits
        else:
            each = []
            for k, ctx in enumerate(contexts.tolist(), 1):
                attended = local + k * local_step
                batch = BatchShape([], first.num_decode, ctx, first.num_sampled, 0, attended)
                each.append(self.step(batch))
                if len(each) == 1:
                    per_lookups, per_hits = self.cache_lookups - lookups, self.cache_hits - hits
            costs = StepCosts.of(each)
        self.cache_lookups, self.cache_hits = lookups, hits
        return costs, per_lookups, per_hits

    def _repeats_as_arrays(self, first: BatchShape) -> bool:
        """Whether :meth:`_decode_costs` can time decode steps like ``first`` as arrays: one
        stage, one kind of layer, attention that is one kernel, a backend with array timing."""
        return (
            self._vector is not None
            and self.pp == 1
            and not self.num_moe_layers
            and not self.local
            and self.graph.mla is None
            and not first.prefill
            and first.num_decode > 0
        )

    def _decode_costs(self, first: BatchShape, contexts: npt.NDArray[np.int64]) -> StepCosts:
        """:meth:`step` for decode batches like ``first`` with these contexts (all > 0), as
        arrays: the same operations in the same order, so the same results."""
        assert self._vector is not None
        num_tokens, eager = self._graph_tokens(first, first.num_tokens)
        base_s, base_f, base_b = self._layer_cost(num_tokens)
        head_s, head_f, head_b = self._head_cost(num_tokens, first.num_sampled)
        attn_f, attn_b = self._decode_attention_work_each(first.num_decode, contexts)
        layer_s = base_s + self._vector.decode_attention_times(attn_f, attn_b)
        cpu = self.step_overhead + self.seq_overhead * first.num_seqs
        n = self.num_layers
        if eager:
            kernels = n * self._layer_kernels(first, False) + self.head_kernels
            gpu = np.maximum(n * layer_s + head_s, kernels * self.launch_s)
            seconds = gpu + np.maximum(cpu - gpu, 0.0) if self.host_overlap else cpu + gpu
        elif self.host_overlap:
            gpu = n * layer_s + head_s
            seconds = gpu + np.maximum(cpu - gpu, 0.0)
        else:
            seconds = cpu + n * layer_s + head_s
        flops = n * (base_f + attn_f) + head_f
        traffic = n * (base_b + attn_b) + head_b
        return StepCosts(seconds, flops, traffic, np.zeros(len(contexts)))

    def _decode_attention_work_each(
        self, num_seqs: int, contexts: npt.NDArray[np.int64]
    ) -> tuple[FloatArray, FloatArray]:
        """``graph.decode_attention_work`` of each context, as arrays (the same formula,
        element by element, as a step computes it)."""
        graph = self.graph
        flops: list[float] = []
        traffic: list[float] = []
        for context in contexts.tolist():
            attn_f, attn_b = graph.decode_attention_work(num_seqs, context)
            flops.append(attn_f)
            traffic.append(attn_b)
        return np.array(flops, dtype=np.float64), np.array(traffic, dtype=np.float64)

    def _exposed_host(self, cpu: float, gpu: float) -> float:
        """Host seconds a step adds to its ``gpu`` seconds: all of ``cpu``, or with the host
        work overlapped with the GPU (``host_overlap``) only what exceeds the GPU time."""
        if self.host_overlap:
            return cpu - gpu if cpu > gpu else 0.0
        return cpu

    def count_repeats(self, steps: int, lookups: int, hits: int) -> None:
        self.cache_lookups += steps * lookups
        self.cache_hits += steps * hits

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
            seconds += 2 * collectives.all_reduce(
                self.topology, message, self.first_device, self.tp
            )
            cost = self._layer[num_tokens] = (seconds, flops, traffic)
        else:
            self.cache_hits += 1
        return cost

    def _moe_layer_cost(self, num_tokens: int) -> _Cost:
        """A MoE layer without attention itself, with its collectives (model/moe.py): the part
        of the attention rank (:meth:`_moe_rank_cost`) and the routed experts on its tokens
        (:meth:`_moe_experts_cost`)."""
        self.cache_lookups += 1
        cost = self._moe_layer.get(num_tokens)
        if cost is not None:
            self.cache_hits += 1
            return cost
        rank_s, rank_f, rank_b = self._moe_rank_cost(num_tokens)
        experts_s, experts_f, experts_b = self._moe_experts_cost(num_tokens)
        cost = (rank_s + experts_s, rank_f + experts_f, rank_b + experts_b)
        self._moe_layer[num_tokens] = cost
        return cost

    def _moe_rank_cost(self, num_tokens: int) -> _Cost:
        """What one attention rank does in a MoE layer on its own tokens, attention itself and
        the routed experts aside: the attention block, the norm, the shared experts and the
        residual add; and its collectives inside the rank's TP group: the attention all-reduce,
        under expert parallelism also the shared experts' reduce-scatter onto each device's
        token slice and the all-gather that restores every device's full hidden state."""
        cost = self._moe_rank.get(num_tokens)
        if cost is not None:
            return cost
        moe = self.graph.moe
        assert moe is not None
        before, after = moe.rank_ops(num_tokens)
        ops = self.graph.attention_block_ops(num_tokens) + before + after
        seconds, flops, traffic = self._ops_cost(ops)
        topo, first, tp = self.topology, self.first_device, self.tp
        hidden = self.graph.allreduce_bytes(num_tokens)
        seconds += collectives.all_reduce(topo, hidden, first, tp)
        if self.ep > 1:
            if moe.shared_intermediate:
                seconds += collectives.reduce_scatter(topo, hidden, first, tp)
            seconds += collectives.all_gather(topo, hidden, first, tp)
        cost = self._moe_rank[num_tokens] = (seconds, flops, traffic)
        return cost

    def _moe_experts_cost(self, num_tokens: int) -> _Cost:
        """Router, top-k and routed experts of one device for ``num_tokens`` tokens of the
        expert group, with their collective: the TP all-reduce of the expert outputs (EP = 1),
        or the all-to-all dispatch and combine over the EP devices."""
        cost = self._moe_experts.get(num_tokens)
        if cost is not None:
            return cost
        moe = self.graph.moe
        assert moe is not None
        seconds, flops, traffic = self._ops_cost(moe.expert_ops(num_tokens))
        topo, first = self.topology, self.first_device
        if self.ep == 1:
            hidden = self.graph.allreduce_bytes(num_tokens)
            seconds += collectives.all_reduce(topo, hidden, first, self.tp)
        else:
            dispatch = moe.dispatch_bytes(num_tokens)
            seconds += 2 * collectives.all_to_all(topo, dispatch, first, self.ep)
        cost = self._moe_experts[num_tokens] = (seconds, flops, traffic)
        return cost

    def _head_cost(self, num_tokens: int, num_sampled: int) -> _Cost:
        key = _pair_key(num_tokens, num_sampled)
        self.cache_lookups += 1
        cost = self._head.get(key)
        if cost is None:
            if self._counts_calls:
                cost = self._ops_cost(self.graph.head_ops(num_tokens, num_sampled))
            else:
                cost = self._head_ops_cost(num_tokens, num_sampled)
            self._head[key] = cost
        else:
            self.cache_hits += 1
        return cost

    def _head_ops_cost(self, num_tokens: int, num_sampled: int) -> _Cost:
        """:meth:`_ops_cost` of the head's ops, from each op's cost memoized by the one count it
        depends on (mixed steps pair token and sample counts in ever new ways), summed in the
        same order as the ops."""
        embedding = self._embedding.get(num_tokens)
        if embedding is None:
            ops = self.graph.embedding_ops(num_tokens)
            embedding = self._embedding[num_tokens] = self._each_op_cost(ops)
        output = self._output.get(num_sampled)
        if output is None:
            ops = self.graph.output_ops(num_sampled)
            output = self._output[num_sampled] = self._each_op_cost(ops)
        seconds = flops = traffic = 0.0
        for op_s, op_f, op_b in embedding + output:
            seconds += op_s
            flops += op_f
            traffic += op_b
        return seconds, flops, traffic

    def _each_op_cost(self, ops: list[Op]) -> tuple[_Cost, ...]:
        return tuple((self.backend.time(op), op.flops, op.bytes) for op in ops)

    def _prefill_cost(self, new: int, ctx: int, local: bool = False) -> _Cost:
        key = _pair_key(new, ctx)
        self.cache_lookups += 1
        memo = self._prefill_local if local else self._prefill_attn
        cost = memo.get(key)
        if cost is None:
            if local:
                ops = self.graph.prefill_attention_ops(new, ctx, self.window, self.chunk)
            else:
                ops = self.graph.prefill_attention_ops(new, ctx)
            cost = memo[key] = self._ops_cost(ops)
        else:
            self.cache_hits += 1
        return cost

    def _stage_sends(self, num_tokens: int) -> tuple[float, ...]:
        """Activation send from each stage to the next (TP ranks send their slices in parallel)."""
        sends = self._sends.get(num_tokens)
        if sends is None:
            nbytes = num_tokens * self.activation_bytes
            first, tp = self.first_device, self.tp
            sends = self._sends[num_tokens] = tuple(
                collectives.send(
                    self.topology, nbytes, first + i * tp + tp - 1, first + (i + 1) * tp, tp
                )
                for i in range(self.pp - 1)
            )
        return sends

    def _with_attention(self, base: _Cost, batch: BatchShape, local: bool = False) -> _Cost:
        """A layer's cost plus its attention for the batch: each prefill chunk, then decode;
        ``local``: a local-attention (sliding-window or chunked) layer's attention."""
        seconds, flops, traffic = base
        for new, ctx in batch.prefill:
            attn_s, attn_f, attn_b = self._prefill_cost(new, ctx, local)
            seconds += attn_s
            flops += attn_f
            traffic += attn_b
        if batch.num_decode:
            context = batch.decode_local_context if local else batch.decode_context
            return self._add_decode_attention(seconds, flops, traffic, batch.num_decode, context)
        return seconds, flops, traffic

    def _add_decode_attention(
        self, seconds: float, flops: float, traffic: float, num_seqs: int, total_ctx: int
    ) -> _Cost:
        """Add the batch's decode-attention kernels one by one, in graph order (MLA: q_absorb,
        attention, v_absorb), so the sums round exactly as an op-by-op loop's do. With a
        backend that times decode attention from its work, no Op is built: the kernels around
        it depend on the batch size only and are memoized, the attention itself is a formula.
        """
        fast = self._scalar
        if fast is not None:
            attn_f, attn_b = self.graph.decode_attention_work(num_seqs, total_ctx)
            if attn_f > 0.0:  # (no FLOPs: the backend times it as a memory op; loop below)
                attn_s = fast.decode_attention_time(attn_f, attn_b)
                if self.graph.mla is None:
                    return seconds + attn_s, flops + attn_f, traffic + attn_b
                before, after = self._around_decode_attention(num_seqs)
                for op_s, op_f, op_b in before:
                    seconds += op_s
                    flops += op_f
                    traffic += op_b
                seconds += attn_s
                flops += attn_f
                traffic += attn_b
                for op_s, op_f, op_b in after:
                    seconds += op_s
                    flops += op_f
                    traffic += op_b
                return seconds, flops, traffic
        for op in self.graph.decode_attention_ops(num_seqs, total_ctx):
            seconds += self.backend.time(op)
            flops += op.flops
            traffic += op.bytes
        return seconds, flops, traffic

    def _around_decode_attention(
        self, num_seqs: int
    ) -> tuple[tuple[_Cost, ...], tuple[_Cost, ...]]:
        """Cost of each decode kernel before and after the attention kernel itself (MLA's
        absorption GEMMs), memoized by batch size: only the attention depends on context.
        Only for backends whose ``time`` is a pure function (the fast path's)."""
        around = self._around_decode.get(num_seqs)
        if around is None:
            ops = self.graph.decode_attention_ops(num_seqs, num_seqs)
            kinds = [op.kind for op in ops]
            at = kinds.index("attention_decode")
            costs = tuple((self.backend.time(op), op.flops, op.bytes) for op in ops)
            around = self._around_decode[num_seqs] = (costs[:at], costs[at + 1 :])
        return around

    def step(self, batch: BatchShape, host: bool = True) -> StepCost:
        """Cost of one engine step on one device per stage of the instance. ``host``: whether
        the step pays the host's per-step work (scheduling, input preparation, output
        processing); False for the later steps of a multi-step group (serving/instance.py),
        which reuse the first step's."""
        if self._plain_decode and not batch.prefill and batch.num_decode:
            cost = self._decode_step(
                batch.num_decode, batch.decode_context, batch.num_sampled, host
            )
            if cost is not None:
                return cost
        num_tokens = batch.num_tokens
        if num_tokens == 0:
            return StepCost(0.0, 0.0, 0.0, (0.0,) * self.pp)
        # Under a captured graph the token-count kernels run at the padded size.
        padded, eager = num_tokens, False
        if self._graphs_on:
            padded, eager = self._graph_tokens(batch, num_tokens)
        if self.local:
            return self._local_step(batch, padded, eager, host)
        layer_s, layer_f, layer_b = self._with_attention(self._layer_cost(padded), batch)
        head_s, head_f, head_b = self._head_cost(padded, batch.num_sampled)
        cpu = self.step_overhead + self.seq_overhead * batch.num_seqs if host else 0.0
        if self.num_moe_layers:
            dense = (layer_s, layer_f, layer_b)
            moe = self._with_attention(self._moe_layer_cost(padded), batch)
            return self._moe_step(
                num_tokens, dense, moe, (head_s, head_f, head_b), cpu, batch if eager else None
            )
        n = self.num_layers
        flops, traffic = n * layer_f + head_f, n * layer_b + head_b
        if self.pp == 1:
            if eager:
                gpu = n * layer_s + head_s
                floor = (n * self._layer_kernels(batch, False) + self.head_kernels) * self.launch_s
                if gpu < floor:
                    gpu = floor
                seconds = self._exposed_host(cpu, gpu) + gpu
                return StepCost(seconds, flops, traffic, (seconds,))
            if self.host_overlap:
                cpu = self._exposed_host(cpu, n * layer_s + head_s)
            seconds = cpu + n * layer_s + head_s
            return StepCost(seconds, flops, traffic, (seconds,))
        # The CPU prepares the batch before stage 0; the last stage runs the LM head.
        stages = [layers * layer_s for layers in self.stage_layers]
        if eager:
            self._stages_floor(stages, batch, head_s)
        if self.host_overlap:
            gpu = sum_in_order(stages) + head_s + sum_in_order(list(self._stage_sends(num_tokens)))
            cpu = self._exposed_host(cpu, gpu)
        stages[0] += cpu
        stages[-1] += head_s
        for i, send_s in enumerate(self._stage_sends(num_tokens)):
            stages[i] += send_s
        return StepCost(sum_in_order(stages), flops, traffic, tuple(stages))

    def step_ranks(self, batches: list[BatchShape]) -> StepCost:
        """Cost of one lockstep step of the instance's attention DP ranks, one batch each
        (empty: the rank idles; vLLM runs a dummy pass there, never slower than a busy rank's,
        so it sets no pace). Each rank runs its host work, dense layers, attention, its part
        of every MoE layer and the head on its own batch; the slowest rank sets the pace, and
        every MoE layer adds the routed experts on the union of the ranks' tokens (all
        devices wait for the all-to-all). FLOPs and bytes: one device of the slowest rank.

        CUDA graphs (perf.cuda_graphs): the ranks replay one graph together, at the largest
        padded size any busy rank needs, or all run eagerly when one of them cannot replay;
        an eager step then takes at least the slowest rank's kernel launches."""
        total = 0
        for batch in batches:
            total += batch.num_tokens
        if total == 0:
            return StepCost(0.0, 0.0, 0.0, (0.0,))
        n_moe = self.num_moe_layers
        n_dense = self.num_layers - n_moe
        size, eager = self._ranks_graph_size(batches)
        if size:
            total = 0
            for batch in batches:
                total += size if batch.num_tokens else 0
        # Local-attention layers of each kind (their attention: the window's or chunk's tokens).
        local_dense = self.layer_kind_totals[1]
        local_moe = self.layer_kind_totals[3]
        slow_s = slow_f = slow_b = -1.0
        slow_cpu = 0.0
        slow_batch = batches[0]
        for batch in batches:
            num_tokens = batch.num_tokens
            if num_tokens == 0:
                continue
            if size:
                num_tokens = size
            self.cache_lookups += 1
            if num_tokens in self._moe_rank:
                self.cache_hits += 1
            rank = self._moe_rank_cost(num_tokens)
            moe_s, moe_f, moe_b = self._with_attention(rank, batch)
            head_s, head_f, head_b = self._head_cost(num_tokens, batch.num_sampled)
            cpu = self.step_overhead + self.seq_overhead * batch.num_seqs
            seconds = cpu
            full_moe = n_moe - local_moe
            seconds += full_moe * moe_s + head_s
            flops = full_moe * moe_f + head_f
            traffic = full_moe * moe_b + head_b
            if local_moe:
                local = self._with_attention(rank, batch, True)
                seconds += local_moe * local[0]
                flops += local_moe * local[1]
                traffic += local_moe * local[2]
            if n_dense:
                base = self._layer_cost(num_tokens)
                full_dense = n_dense - local_dense
                layer = self._with_attention(base, batch)
                seconds += full_dense * layer[0]
                flops += full_dense * layer[1]
                traffic += full_dense * layer[2]
                if local_dense:
                    local = self._with_attention(base, batch, True)
                    seconds += local_dense * local[0]
                    flops += local_dense * local[1]
                    traffic += local_dense * local[2]
            if seconds > slow_s:
                slow_s, slow_f, slow_b = seconds, flops, traffic
                slow_cpu, slow_batch = cpu, batch
        self.cache_lookups += 1
        if total in self._moe_experts:
            self.cache_hits += 1
        experts_s, experts_f, experts_b = self._moe_experts_cost(total)
        seconds = slow_s + n_moe * experts_s
        if eager:
            floor = self.step_kernels(slow_batch) * self.launch_s
            if seconds - slow_cpu < floor:
                seconds = slow_cpu + floor
        return StepCost(seconds, slow_f + n_moe * experts_f, slow_b + n_moe * experts_b, (seconds,))

    def _ranks_graph_size(self, batches: list[BatchShape]) -> tuple[int, bool]:
        """The graph size the DP ranks replay together (0: none), and whether the step runs
        eagerly with a launch floor."""
        if self.cuda_graphs.mode == "off":
            return 0, False
        size = 0
        for batch in batches:
            if batch.num_tokens == 0:
                continue
            rank = self.cuda_graphs.graph_size(
                batch.num_decode, batch.num_tokens, bool(batch.prefill)
            )
            if rank == 0:
                return 0, self.launch_s > 0.0
            size = max(size, rank)
        return size, False

    def _local_step(
        self, batch: BatchShape, padded: int, eager: bool, host: bool = True
    ) -> StepCost:
        """:meth:`step` of a model with local-attention layers: every stage's layers of each
        kind (dense or MoE, full or local attention), each kind timed once. Its
        token-count kernels run at ``padded`` tokens (a CUDA graph's size); ``eager``: each
        stage pays the kernel-launch floor."""
        num_tokens = batch.num_tokens
        totals = self.layer_kind_totals  # dense full, dense local, MoE full, MoE local
        zero: _Cost = (0.0, 0.0, 0.0)
        dense = self._layer_cost(padded) if totals[0] or totals[1] else zero
        moe = self._moe_layer_cost(padded) if totals[2] or totals[3] else zero
        each = (
            self._with_attention(dense, batch) if totals[0] else zero,
            self._with_attention(dense, batch, True) if totals[1] else zero,
            self._with_attention(moe, batch) if totals[2] else zero,
            self._with_attention(moe, batch, True) if totals[3] else zero,
        )
        head_s, head_f, head_b = self._head_cost(padded, batch.num_sampled)
        flops, traffic = head_f, head_b
        for k in range(4):
            flops += totals[k] * each[k][1]
            traffic += totals[k] * each[k][2]
        stages = [
            sum_in_order([kinds[k] * each[k][0] for k in range(4)])
            for kinds in self.stage_layer_kinds
        ]
        if eager:
            self._stages_floor(stages, batch, head_s)
        cpu = self.step_overhead + self.seq_overhead * batch.num_seqs if host else 0.0
        sends = self._stage_sends(num_tokens)
        if self.host_overlap:
            gpu = sum_in_order(stages) + head_s + sum_in_order(list(sends))
            cpu = self._exposed_host(cpu, gpu)
        stages[0] += cpu
        stages[-1] += head_s
        for i, send_s in enumerate(sends):
            stages[i] += send_s
        return StepCost(sum_in_order(stages), flops, traffic, tuple(stages))

    def _decode_step(
        self, num_decode: int, context: int, num_sampled: int, host: bool = True
    ) -> StepCost | None:
        """:meth:`step` of a batch that only decodes, with the general path's operations in
        its order (the most frequent step: every step between arrivals and finishes); None
        where attention has no FLOPs (the backend times that as a memory op, op by op)."""
        attn_f, attn_b = self.graph.decode_attention_work(num_decode, context)
        if attn_f <= 0.0:
            return None
        padded = 0
        if self._graphs_on:
            padded = self.cuda_graphs.graph_size(num_decode, num_decode, False)
        tokens = padded if padded else num_decode
        layer_s, layer_f, layer_b = self._layer_cost(tokens)
        assert self._scalar is not None
        layer_s += self._scalar.decode_attention_time(attn_f, attn_b)
        layer_f += attn_f
        layer_b += attn_b
        head_s, head_f, head_b = self._head_cost(tokens, num_sampled)
        n = self.num_layers
        cpu = self.step_overhead + self.seq_overhead * num_decode if host else 0.0
        if self._graphs_on and not padded and self.launch_s > 0.0:
            gpu = n * layer_s + head_s
            kernels = n * (self.dense_kernels + self.decode_attn_kernels) + self.head_kernels
            floor = kernels * self.launch_s
            if gpu < floor:
                gpu = floor
            seconds = self._exposed_host(cpu, gpu) + gpu
            return StepCost(seconds, n * layer_f + head_f, n * layer_b + head_b, (seconds,))
        if self.host_overlap:
            cpu = self._exposed_host(cpu, n * layer_s + head_s)
        seconds = cpu + n * layer_s + head_s
        return StepCost(seconds, n * layer_f + head_f, n * layer_b + head_b, (seconds,))

    def _moe_step(
        self,
        num_tokens: int,
        dense: _Cost,
        moe: _Cost,
        head: _Cost,
        cpu: float,
        eager: BatchShape | None = None,
    ) -> StepCost:
        """Stages mix dense and MoE layers (each stage: its count of each kind). ``eager``: the
        batch of a step that runs eagerly (each stage pays the kernel-launch floor)."""
        n_moe = self.num_moe_layers
        n_dense = self.num_layers - n_moe
        flops = n_dense * dense[1] + n_moe * moe[1] + head[1]
        traffic = n_dense * dense[2] + n_moe * moe[2] + head[2]
        stages = [
            (layers - moe_layers) * dense[0] + moe_layers * moe[0]
            for layers, moe_layers in zip(self.stage_layers, self.stage_moe_layers, strict=True)
        ]
        if eager is not None:
            self._stages_floor(stages, eager, head[0])
        if self.host_overlap:
            gpu = sum_in_order(stages) + head[0] + sum_in_order(list(self._stage_sends(num_tokens)))
            cpu = self._exposed_host(cpu, gpu)
        stages[0] += cpu
        stages[-1] += head[0]
        for i, send_s in enumerate(self._stage_sends(num_tokens)):
            stages[i] += send_s
        return StepCost(sum_in_order(stages), flops, traffic, tuple(stages))
