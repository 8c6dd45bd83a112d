"""KV traffic between the devices of an instance and host memory (PCIe or CXL).

Swapping a preempted request out and back, and loading offloaded prefix blocks, move KV blocks
over each device's host link. Those copies run before the step's forward pass can use the
blocks (vLLM's swap-in/out and a blocking KV-cache load do), so the step that needs them is
longer by one latency plus bytes / bandwidth per direction used.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HostLink:
    """One device's link to host memory and the size of a KV block on that device."""

    bandwidth: float  # bytes per second, per direction
    latency_s: float  # per batch of copies in one direction
    block_bytes: float  # one KV block's shard on one device
    devices: int  # devices of the instance; each moves its own shard in parallel

    def seconds(self, blocks: int) -> float:
        return self.latency_s + blocks * self.block_bytes / self.bandwidth if blocks else 0.0

    def bytes(self, blocks: int) -> float:
        """Bytes the whole instance moves for ``blocks`` blocks (every device's shard)."""
        return blocks * self.block_bytes * self.devices


class TransferLedger:
    """Blocks moved over a host link; the time of the copies not yet charged to a step."""

    def __init__(self, link: HostLink) -> None:
        self.link = link
        self.blocks_to_device = 0
        self.blocks_to_host = 0
        self.seconds = 0.0
        self._pending_to_device = 0
        self._pending_to_host = 0

    def to_device(self, blocks: int) -> None:
        self.blocks_to_device += blocks
        self._pending_to_device += blocks

    def to_host(self, blocks: int) -> None:
        self.blocks_to_host += blocks
        self._pending_to_host += blocks

    def take_seconds(self) -> float:
        """Time of the copies requested since the last call (the step that runs now)."""
        if not (self._pending_to_device or self._pending_to_host):
            return 0.0
        seconds = self.link.seconds(self._pending_to_device) + self.link.seconds(
            self._pending_to_host
        )
        self._pending_to_device = self._pending_to_host = 0
        self.seconds += seconds
        return seconds
