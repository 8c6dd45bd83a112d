"""Multi-LoRA serving: adapter memory, adapter slots on the device, a step's adapter work.

* Memory: each adapter's A and B matrices per device (model/lora.py); ``max_loras`` slots at
  ``max_lora_rank`` are reserved up front, out of the KV pool.
* Slots: at most ``max_loras`` adapters are resident; a batch only holds requests whose
  adapter is resident, so it never mixes more than ``max_loras`` adapters. A request whose
  adapter is missing takes a slot that no running request uses (least recently used first),
  or waits. Loading copies the adapter over each device's host link; an adapter outside the
  host LRU cache (``max_cpu_loras``) is read from disk first. The step that needs the adapter
  starts after the copy (the stall).
* Compute: a step's tokens per adapter (:func:`adapter_tokens`); perf/lora.py times their
  GEMMs and the adapter copies.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from llmservingsim.config import LoraConfig
from llmservingsim.model.lora import adapter_bytes_per_device
from llmservingsim.model.spec import ModelSpec
from llmservingsim.sequence import Sequence


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

    def __init__(self, cfg: LoraConfig, host_seconds: float, disk_seconds: float) -> None:
        """``host_seconds``: one adapter's copy to the devices; ``disk_seconds``: its read
        from disk into host memory (perf/lora.py times both)."""
        self.max_loras = cfg.max_loras
        self.max_cpu_loras = cfg.max_cpu_loras
        self.host_seconds = host_seconds
        self.disk_seconds = disk_seconds
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


def adapter_tokens(entries: list[tuple[Sequence, int]]) -> tuple[int, ...]:
    """Tokens a step computes per LoRA adapter (sorted; empty when no request has one)."""
    groups: dict[str, int] = {}
    for seq, num_new in entries:
        name = seq.spec.lora
        if name is not None:
            groups[name] = groups.get(name, 0) + num_new
    return tuple(sorted(groups.values())) if groups else ()
