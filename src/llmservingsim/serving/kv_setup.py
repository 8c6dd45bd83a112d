"""Builds an instance's KV cache from the scheduler config: the block manager, the prefix
cache with its optional offload tier, and the host swap space, sized from the memory plan and
the device's host link."""

from __future__ import annotations

from llmservingsim.config import SchedulerConfig
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.device import GIB, DeviceSpec
from llmservingsim.perf.host_link import HostLink, TransferLedger
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.kv_offload import OffloadTier
from llmservingsim.serving.memory import MemoryPlan
from llmservingsim.serving.prefix_cache import PrefixCachingBlockManager
from llmservingsim.serving.swap import SwapSpace


def host_blocks(gib: float, block_bytes: float, key: str, engines: int = 1) -> int:
    """KV blocks per virtual engine that ``gib`` of host memory per device holds (≥ 1)."""
    blocks = int(gib * GIB // block_bytes) // engines
    if blocks < 1:
        raise ConfigError(
            f"{key}={gib:g} GiB holds no KV block: one block takes "
            f"{block_bytes / 2**20:.3f} MiB per device"
        )
    return blocks


def build_kv_cache(
    cfg: SchedulerConfig, memory: MemoryPlan, device: DeviceSpec, tp: int, pp: int = 1
) -> tuple[BlockManager, SwapSpace | None]:
    """The KV cache of one virtual engine of a TP × PP instance.

    With pipeline parallelism the instance's blocks, swap space and offload tier are split
    evenly over its ``pp`` virtual engines (each serves its own requests). A block on one
    device is ``kv_bytes_per_token × block_size`` (its layers' and heads' shard); every device
    of the instance moves its shard over its own host link in parallel. With sliding-window
    KV a block holds one group of layers (MemoryPlan.kv_full_units); a sequence's blocks, swapped
    or not, are all it holds.
    """
    block_bytes = memory.kv_bytes_per_token * memory.block_size
    devices = tp * pp
    host = device.links.host
    num_blocks = memory.num_blocks // pp
    blocks: BlockManager
    if cfg.enable_prefix_caching:
        if memory.kv_sliding_units:
            raise ValueError("sliding-window KV with prefix caching: not yet supported")
        offload = None
        if cfg.kv_offload is not None:
            tier = cfg.kv_offload
            link = HostLink(
                bandwidth=(tier.bandwidth_gbps or host.bandwidth_gbps) * 1e9,
                latency_s=(host.latency_us if tier.latency_us is None else tier.latency_us) * 1e-6,
                block_bytes=block_bytes,
                devices=devices,
            )
            key = "scheduler.kv_offload.capacity_gib"
            capacity = host_blocks(tier.capacity_gib, block_bytes, key, pp)
            offload = OffloadTier(capacity, TransferLedger(link))
        blocks = PrefixCachingBlockManager(num_blocks, memory.block_size, offload)
    else:
        blocks = BlockManager(
            num_blocks,
            memory.block_size,
            memory.kv_full_units,
            memory.kv_sliding_units,
            memory.kv_sliding_blocks,
        )
    swap = None
    if cfg.preemption == "swap":
        link = HostLink(host.bandwidth_gbps * 1e9, host.latency_us * 1e-6, block_bytes, devices)
        capacity = host_blocks(cfg.swap_space_gib, block_bytes, "scheduler.swap_space_gib", pp)
        swap = SwapSpace(capacity, TransferLedger(link))
    return blocks, swap
