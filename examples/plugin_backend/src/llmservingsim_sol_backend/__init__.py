"""Speed-of-light perf backend: every op at the device's datasheet peaks, nothing lost.

A lower bound on any real kernel time, useful to see how far a configuration is from what the
hardware could do at best. ``perf.options.efficiency`` (default 1.0) scales both peaks, e.g.
0.8 for "80 % of peak everywhere".

Installed, it is selected with ``perf.backend: speed_of_light``; llmservingsim finds it
through the ``llmservingsim.perf_backends`` entry point declared in pyproject.toml.
"""

from __future__ import annotations

from llmservingsim.hardware.backends import PerfSetup
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.ops import Op


class SpeedOfLightBackend:
    def __init__(self, device: DeviceSpec, dtype: str, efficiency: float = 1.0) -> None:
        if not 0.0 < efficiency <= 1.0:
            raise ValueError(f"efficiency must be in (0, 1], got {efficiency}")
        self.device = device
        self.flops_per_s = device.peak_flops(dtype) * efficiency
        self.bytes_per_s = device.memory_bandwidth * efficiency

    @classmethod
    def from_config(cls, device: DeviceSpec, setup: PerfSetup) -> SpeedOfLightBackend:
        return cls(device, setup.compute_dtype, float(setup.perf.options.get("efficiency", 1.0)))

    def time(self, op: Op) -> float:
        return max(op.flops / self.flops_per_s, op.bytes / self.bytes_per_s)
