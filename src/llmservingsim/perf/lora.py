"""Time of a step's LoRA GEMMs (SGMV / Punica), and of copying adapters to the device.

Per targeted linear, each adapter's tokens run a shrink GEMM (tokens × d_in × r) and an expand
GEMM (tokens × r × d_out): 2·tokens·r·(d_in + d_out) FLOPs, and each distinct adapter's weights
are read once per step. An adapter load copies every device's shard over its own host link in
parallel; one outside the host cache is read from disk first.
"""

from __future__ import annotations

from llmservingsim.config import LoraTarget
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.lora import FUSED_GROUP, sharded_shapes
from llmservingsim.model.op import Dims, with_sixteen_bit
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.model.spec import ModelSpec
from llmservingsim.perf.iteration import IterationTimer
from llmservingsim.perf.speculative import DraftCost


def adapter_load_seconds(device: DeviceSpec, device_bytes: float) -> float:
    """Copy one adapter's shard to each device over its host link (in parallel)."""
    host = device.links.host
    return host.latency_us * 1e-6 + device_bytes / (host.bandwidth_gbps * 1e9)


def disk_read_seconds(total_bytes: float, disk_bandwidth_gbps: float) -> float:
    """Read a whole adapter (every shard) from disk into host memory."""
    return total_bytes / (disk_bandwidth_gbps * 1e9)


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
        # Adapters stay 16-bit under weight quantization (model/lora.py lora_dtype_bytes, what
        # memory counts): their GEMMs read 16-bit weights on the 16-bit curve (model/op.py).
        act = self.graph.act_bytes
        weight = act
        sixteen = self.graph.weight_bytes < act
        for slices, d_in, d_out in self.groups:
            for name, n, k in (("lora_shrink", slices * r, d_in), ("lora_expand", d_out, r)):
                dims: Dims = (("m", tokens), ("n", n), ("k", k))
                if sixteen:
                    dims = with_sixteen_bit(dims)
                op = Op(
                    name,
                    "gemm",
                    2.0 * tokens * n * k,
                    adapters * k * n * weight + tokens * (k + n) * act,
                    tokens,
                    dims,
                )
                seconds += backend.time(op)
                flops += op.flops
                traffic += op.bytes
        n_layers = self.layers
        cost = DraftCost(n_layers * seconds, n_layers * flops, n_layers * traffic)
        self._memo[tokens_per_adapter] = cost
        return cost
