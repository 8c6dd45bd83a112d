"""Multi-LoRA serving: adapter memory, adapter slots on the device, and the LoRA GEMMs.

* Memory: every targeted linear of every layer holds A (d_in × r) and B (r × d_out). Under
  tensor parallelism a column-parallel linear (q, k, v, gate, up) keeps A whole and splits B,
  a row-parallel one (o, down) splits A and keeps B whole (vLLM's sharded LoRA layers).
  ``max_loras`` slots at ``max_lora_rank`` are reserved up front, out of the KV pool.
* Slots: at most ``max_loras`` adapters are resident; a batch only holds requests whose
  adapter is resident, so it never mixes more than ``max_loras`` adapters. A request whose
  adapter is missing takes a slot that no running request uses (least recently used first),
  or waits. Loading copies the adapter over each device's host link; an adapter outside the
  host LRU cache (``max_cpu_loras``) is read from disk first. The step that needs the adapter
  starts after the copy (the stall).
* Compute (SGMV / Punica): per targeted linear, each adapter's tokens run a shrink GEMM
  (tokens × d_in × r) and an expand GEMM (tokens × r × d_out): 2·tokens·r·(d_in + d_out)
  FLOPs, and each distinct adapter's weights are read once per step.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from llmservingsim.config import LoraConfig, LoraTarget
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.model.spec import DTYPE_BYTES, ModelSpec
from llmservingsim.perf.iteration import IterationTimer, StepCost
from llmservingsim.perf.speculative import DraftCost, prepend_work
from llmservingsim.serving.sequence import Sequence

ROW_PARALLEL: frozenset[LoraTarget] = frozenset({"o", "down"})
FUSED_GROUP: dict[LoraTarget, str] = {
    "q": "qkv",
    "k": "qkv",
    "v": "qkv",
    "o": "o",
    "gate": "gate_up",
    "up": "gate_up",
    "down": "down",
}


def linear_shapes(spec: ModelSpec, target: LoraTarget) -> tuple[int, int]:
    """(d_in, d_out) of a targeted linear, unsharded."""
    h, inter = spec.hidden_size, spec.intermediate_size
    shapes: dict[LoraTarget, tuple[int, int]] = {
        "q": (h, spec.q_size),
        "k": (h, spec.kv_size),
        "v": (h, spec.kv_size),
        "o": (spec.q_size, h),
        "gate": (h, inter),
        "up": (h, inter),
        "down": (inter, h),
    }
    return shapes[target]


def sharded_shapes(spec: ModelSpec, target: LoraTarget, tp: int) -> tuple[int, int]:
    """(d_in, d_out) one TP rank's A and B see: the sharded side split over ``tp``."""
    d_in, d_out = linear_shapes(spec, target)
    if target in ROW_PARALLEL:
        return max(1, d_in // tp), d_out
    return d_in, max(1, d_out // tp)


def adapter_bytes_per_device(
    spec: ModelSpec, targets: list[LoraTarget], rank: int, dtype: str, tp: int, layers: int
) -> float:
    """Bytes of one adapter of ``rank`` on one device (``layers``: the device's layers)."""
    per_layer = 0
    for target in targets:
        d_in, d_out = sharded_shapes(spec, target, tp)
        per_layer += rank * (d_in + d_out)
    return float(per_layer * layers) * lora_dtype_bytes(dtype)


def lora_dtype_bytes(dtype: str) -> float:
    """Adapters stay 16-bit under weight quantization (as in vLLM)."""
    return 2.0 if dtype in ("fp8", "fp4", "int8", "int4") else DTYPE_BYTES[dtype]


def reserved_lora_bytes(cfg: LoraConfig, spec: ModelSpec, dtype: str, tp: int) -> float:
    """Device memory of the ``max_loras`` slots at ``max_lora_rank``."""
    one = adapter_bytes_per_device(
        spec, cfg.target_modules, cfg.max_lora_rank, dtype, tp, spec.num_layers
    )
    return cfg.max_loras * one


@dataclass
class LoraStats:
    loads: int = 0
    disk_loads: int = 0
    stall_s: float = 0.0
    compute_s: float = 0.0

    def add(self, other: LoraStats) -> None:
        self.loads += other.loads
        self.disk_loads += other.disk_loads
        self.stall_s += other.stall_s
        self.compute_s += other.compute_s

    def summary(self) -> dict[str, float | int]:
        return {
            "lora_adapter_loads": self.loads,
            "lora_disk_loads": self.disk_loads,
            "lora_load_stall_s": self.stall_s,
            "lora_compute_s": self.compute_s,
        }


class AdapterSlots:
    """Adapters resident on one instance's devices, and its host-memory LRU cache."""

    def __init__(
        self, cfg: LoraConfig, device_bytes: float, total_bytes: float, device: DeviceSpec
    ) -> None:
        self.max_loras = cfg.max_loras
        self.max_cpu_loras = cfg.max_cpu_loras
        host = device.links.host
        # Every device copies its own shard over its own host link, in parallel.
        self.host_seconds = host.latency_us * 1e-6 + device_bytes / (host.bandwidth_gbps * 1e9)
        # The host reads the whole adapter (every shard) from disk once.
        self.disk_seconds = total_bytes / (cfg.disk_bandwidth_gbps * 1e9)
        self.resident: OrderedDict[str, None] = OrderedDict()
        self.host: OrderedDict[str, None] = OrderedDict()
        self.stats = LoraStats()
        self._pending_s = 0.0

    def ready(self, name: str, in_use: set[str]) -> bool:
        """Make ``name`` resident if a slot is free or unused; False: the request must wait."""
        resident = self.resident
        if name in resident:
            resident.move_to_end(name)
            return True
        if len(resident) >= self.max_loras:
            victim = next((a for a in resident if a not in in_use), None)
            if victim is None:
                return False
            del resident[victim]
        self._load(name)
        resident[name] = None
        return True

    def _load(self, name: str) -> None:
        seconds = self.host_seconds
        if name in self.host:
            self.host.move_to_end(name)
        else:
            seconds += self.disk_seconds
            self.stats.disk_loads += 1
            self.host[name] = None
            if len(self.host) > self.max_cpu_loras:
                self.host.popitem(last=False)
        self.stats.loads += 1
        self._pending_s += seconds

    def take_seconds(self) -> float:
        """Load time requested since the last call: the step that runs now waits for it."""
        seconds, self._pending_s = self._pending_s, 0.0
        self.stats.stall_s += seconds
        return seconds


class LoraCompute:
    """Time of a step's LoRA GEMMs, one shrink + expand per adapter and targeted linear."""

    def __init__(
        self, spec: ModelSpec, targets: list[LoraTarget], rank: int, timer: IterationTimer
    ) -> None:
        self.timer = timer
        self.layers = spec.num_layers
        self.rank = rank
        # vLLM fuses the LoRA of q/k/v and of gate/up into one kernel pair each: a fused
        # group shrinks to (slices × r) and expands to the sum of the slices' outputs.
        groups: dict[str, list[tuple[int, int]]] = {}
        for target in targets:
            groups.setdefault(FUSED_GROUP[target], []).append(
                sharded_shapes(spec, target, timer.tp)
            )
        self.groups = [
            (len(shapes), shapes[0][0], sum(d_out for _, d_out in shapes))
            for shapes in groups.values()
        ]
        self.graph: OpGraph = timer.graph
        self._memo: dict[tuple[int, ...], DraftCost] = {}

    def cost(self, tokens_per_adapter: tuple[int, ...]) -> DraftCost:
        """One shrink and one expand kernel per targeted linear for all adapters (SGMV):
        the FLOPs of every adapter's tokens, each adapter's weights read once."""
        cost = self._memo.get(tokens_per_adapter)
        if cost is not None:
            return cost
        seconds = flops = traffic = 0.0
        backend, r = self.timer.backend, self.rank
        tokens = sum(tokens_per_adapter)
        adapters = len(tokens_per_adapter)
        weight, act = self.graph.weight_bytes, self.graph.act_bytes
        for slices, d_in, d_out in self.groups:
            for name, n, k in (("lora_shrink", slices * r, d_in), ("lora_expand", d_out, r)):
                op = Op(
                    name,
                    "gemm",
                    2.0 * tokens * n * k,
                    adapters * k * n * weight + tokens * (k + n) * act,
                    tokens,
                    (("m", tokens), ("n", n), ("k", k)),
                )
                seconds += backend.time(op)
                flops += op.flops
                traffic += op.bytes
        n_layers = self.layers
        cost = DraftCost(n_layers * seconds, n_layers * flops, n_layers * traffic)
        self._memo[tokens_per_adapter] = cost
        return cost

    def add_to(
        self, entries: list[tuple[Sequence, int]], cost: StepCost, stats: LoraStats
    ) -> StepCost:
        groups: dict[str, int] = {}
        for seq, num_new in entries:
            name = seq.spec.lora
            if name is not None:
                groups[name] = groups.get(name, 0) + num_new
        if not groups:
            return cost
        work = self.cost(tuple(sorted(groups.values())))
        stats.compute_s += work.seconds
        return prepend_work(cost, work)
