"""NPU/GPU + PIM: decode attention runs on processing-in-memory devices (the reference's
NeuPIMs-style system), everything else on the instance's own devices.

Decode attention reads the whole KV cache to do a few FLOPs per byte, so it is bound by
memory bandwidth; PIM devices compute next to their DRAM banks and see their internal
bandwidth (several times the external one). With ``pim.enabled`` an instance keeps its KV
cache in ``count`` PIM devices (serving/memory.py) and, every layer:

1. the device computes norms, projections, MLP/experts and prefill attention as before;
2. the queries and the new token's K/V go to the PIM devices over their host link, the PIM
   devices run decode attention over their share of the KV cache, and the outputs come back.

Prefill attention stays on the device (it is compute bound); the chunk's K/V are written to
the PIM devices and a chunk that continues a cached prompt reads its context back, over the
same link. Transfers cost latency + bytes / (count · link bandwidth); PIM compute is the
roofline on the PIM device's internal bandwidth and its (low) compute.

Without interleaving the two sides take turns: a layer costs device + PIM time. With
``sub_batch_interleaving`` the decode batch is split in two sub-batches that alternate, so the
device works on one while the PIM devices attend for the other; the step is the makespan of
that two-job, two-machine pipeline over the layers (≈ max of the two sides instead of their
sum), at the price of reading the weights once per sub-batch.
"""

from __future__ import annotations

from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends import PerfBackend
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.fusion import DEFAULT_FUSION, Fusion
from llmservingsim.model.ops import OpGraph
from llmservingsim.model.spec import ModelSpec
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import (
    BatchShape,
    IterationTimer,
    StepCost,
    times_decode_attention_from_work,
)

_Side = tuple[float, float, float]  # seconds, flops, bytes of one layer on the device


class PimIterationTimer(IterationTimer):
    # step() adds to pim_busy_s: steps are timed as they run, never ahead.
    repeatable = False

    def __init__(
        self,
        spec: ModelSpec,
        device: DeviceSpec,
        backend: PerfBackend,
        topology: Topology,
        *,
        pim: DeviceSpec,
        pim_count: int,
        sub_batch_interleaving: bool,
        tensor_parallel: int,
        dtype: str,
        kv_dtype: str,
        first_device: int = 0,
        expert_parallel: int = 1,
        moe_imbalance: float = 1.0,
        fusion: Fusion = DEFAULT_FUSION,
        pim_backend: RooflineBackend | None = None,
        host_overhead_s: tuple[float, float] | None = None,
    ) -> None:
        if spec.has_local_layers:
            # The offloaded decode attention is split by summed context only (sub-batches).
            raise ConfigError(
                f"pim: model {spec.name} has sliding-window or chunked attention layers; "
                "attention offload to PIM for them is not yet supported"
            )
        super().__init__(
            spec,
            device,
            backend,
            topology,
            tensor_parallel=tensor_parallel,
            first_device=first_device,
            dtype=dtype,
            kv_dtype=kv_dtype,
            expert_parallel=expert_parallel,
            moe_imbalance=moe_imbalance,
            host_overhead_s=host_overhead_s,
            fusion=fusion,
        )
        self.pim = pim
        self.pim_count = pim_count
        self.interleave = sub_batch_interleaving
        # The PIM devices serve the whole instance: every head, the KV cache stored once.
        self.pim_graph = OpGraph(spec, 1, dtype, kv_dtype)
        # The PIM devices' own timing: their roofline unless a backend is given (tests, plugins).
        self.pim_backend = RooflineBackend(pim, "bf16") if pim_backend is None else pim_backend
        self._pim_fast = times_decode_attention_from_work(self.pim_backend, "decode_attention_time")
        self._pim_peak = pim.peak_flops("bf16")
        link = pim.links.host
        self._link_bandwidth = link.bandwidth_gbps * 1e9 * link.efficiency * pim_count
        self._link_latency = link.latency_us * 1e-6
        self._kv_layer = spec.kv_bytes_per_token(kv_dtype) / spec.num_layers
        self._kv_io: dict[tuple[int, int], float] = {}
        self.pim_busy_s = 0.0  # per PIM device, summed over steps (for utilization reports)

    def _transfer(self, nbytes: float) -> float:
        return self._link_latency + nbytes / self._link_bandwidth if nbytes > 0 else 0.0

    def _prefill_kv_io(self, new: int, ctx: int) -> float:
        """Per layer: write the chunk's K/V to the PIM devices, read its cached context back."""
        key = (new, ctx)
        seconds = self._kv_io.get(key)
        if seconds is None:
            seconds = self._transfer(new * self._kv_layer)
            if ctx:
                seconds += self._transfer(ctx * self._kv_layer)
            self._kv_io[key] = seconds
        return seconds

    def _device_layer(self, num_tokens: int, batch: BatchShape, seqs: int, ctx: int) -> _Side:
        """One average layer of a sub-batch on the device: the dense/MoE block at its token
        count, its prefill attention (+ KV traffic to PIM), and MLA's absorption GEMMs."""
        seconds, flops, traffic = self._layer_cost(num_tokens)
        if self.num_moe_layers:
            moe_s, moe_f, moe_b = self._moe_layer_cost(num_tokens)
            # One average layer: DeepSeek mixes a few dense layers with MoE ones.
            share = self.num_moe_layers / self.num_layers
            dense = 1.0 - share
            seconds = dense * seconds + share * moe_s
            flops = dense * flops + share * moe_f
            traffic = dense * traffic + share * moe_b
        for new, ctx_len in batch.prefill:
            attn_s, attn_f, attn_b = self._prefill_cost(new, ctx_len)
            seconds += attn_s + self._prefill_kv_io(new, ctx_len)
            flops += attn_f
            traffic += attn_b
        if seqs and self.graph.mla is not None:
            if self._scalar is not None:
                before, after = self._around_decode_attention(seqs)
                for op_s, op_f, op_b in before + after:
                    seconds += op_s
                    flops += op_f
                    traffic += op_b
                return seconds, flops, traffic
            for op in self.graph.decode_attention_ops(seqs, ctx):
                if op.kind != "attention_decode":
                    seconds += self.backend.time(op)
                    flops += op.flops
                    traffic += op.bytes
        return seconds, flops, traffic

    def _pim_layer(self, seqs: int, ctx: int) -> tuple[float, float]:
        """(seconds, busy seconds per PIM device) of one layer's decode attention on PIM."""
        if not seqs:
            return 0.0, 0.0
        seconds = busy = 0.0
        count = self.pim_count
        into, out = self.pim_graph.decode_io_bytes(seqs)
        flops, traffic = self.pim_graph.decode_attention_work(seqs, ctx)
        share_f, share_b = flops / count, traffic / count
        if self._pim_fast and share_f > 0.0:  # the roofline's time(), without building the op
            seconds = self.pim_backend.decode_attention_time(share_f, share_b)
            busy = max(share_f / self._pim_peak, share_b / self.pim.memory_bandwidth)
            return seconds + self._transfer(into) + self._transfer(out), busy
        for op in self.pim_graph.decode_attention_ops(seqs, ctx):
            if op.kind == "attention_decode":
                share = op.replaced(flops=op.flops / count, bytes=op.bytes / count)
                seconds += self.pim_backend.time(share)
                busy += max(share.flops / self._pim_peak, share.bytes / self.pim.memory_bandwidth)
        return seconds + self._transfer(into) + self._transfer(out), busy

    @staticmethod
    def _makespan(layers: int, jobs: list[tuple[float, float]]) -> float:
        """Sub-batches alternate layer by layer: each job's device part, then its PIM part; a
        job's next layer waits for its own PIM part, each resource does one part at a time."""
        device_free = pim_free = 0.0
        ready = [0.0] * len(jobs)
        previous_delta = -1.0
        for layer in range(layers):
            before = pim_free
            for j, (device_s, pim_s) in enumerate(jobs):
                device_free = max(device_free, ready[j]) + device_s
                pim_free = max(pim_free, device_free) + pim_s
                ready[j] = pim_free
            delta = pim_free - before
            if abs(delta - previous_delta) <= 1e-12 * max(delta, 1e-30):
                # Periodic from here on: every further layer adds the same time.
                remaining = layers - layer - 1
                return max(device_free, pim_free) + remaining * delta
            previous_delta = delta
        return max(device_free, pim_free)

    def step(self, batch: BatchShape, host: bool = True) -> StepCost:
        num_tokens = batch.num_tokens
        if num_tokens == 0:
            return StepCost(0.0, 0.0, 0.0, (0.0,))
        decode, ctx = batch.num_decode, batch.decode_context
        if self.interleave and decode >= 2:
            half = (decode + 1) // 2
            ctx_a = round(ctx * half / decode)
            parts = [
                (num_tokens - (decode - half), half, ctx_a),
                (decode - half, decode - half, ctx - ctx_a),
            ]
        else:
            parts = [(num_tokens, decode, ctx)]
        jobs: list[tuple[float, float]] = []
        flops = traffic = pim_busy = 0.0
        for index, (tokens, seqs, seq_ctx) in enumerate(parts):
            # Prefill chunks ride with the first sub-batch.
            shape = batch if index == 0 else BatchShape()
            device_s, device_f, device_b = self._device_layer(tokens, shape, seqs, seq_ctx)
            pim_s, busy = self._pim_layer(seqs, seq_ctx)
            jobs.append((device_s, pim_s))
            flops += device_f
            traffic += device_b
            pim_busy += busy
        n = self.num_layers
        head_s, head_f, head_b = self._head_cost(num_tokens, batch.num_sampled)
        cpu = self.step_overhead + self.seq_overhead * batch.num_seqs if host else 0.0
        seconds = cpu + self._makespan(n, jobs) + head_s
        busy_s = n * pim_busy
        self.pim_busy_s += busy_s
        power = self.pim.power
        energy = self.pim_count * (
            power.idle_w * seconds + (power.max_w - power.idle_w) * min(busy_s, seconds)
        )
        return StepCost(
            seconds, n * flops + head_f, n * traffic + head_b, (seconds,), aux_energy_j=energy
        )
