"""A device's power and a step's energy: idle power plus the dynamic range (max − idle) times
the step's utilization, where utilization is the larger of its FLOPs over the peak and its
bytes over the memory bandwidth, per second of the step (docs/accelerators.md, "Power and
energy"). Devices attached outside the step (PIM) add their own energy (``aux``)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from llmservingsim.hardware.device import DeviceSpec

FloatArray = npt.NDArray[np.float64]


class PowerModel:
    """Power of one device of an instance while it runs steps in ``compute_dtype``."""

    def __init__(self, device: DeviceSpec, compute_dtype: str) -> None:
        self.peak_flops = device.peak_flops(compute_dtype)
        self.bandwidth = device.memory_bandwidth
        self.idle_w = device.power.idle_w
        self.dynamic_w = device.power.max_w - device.power.idle_w

    def step_energy_j(
        self, seconds: float, flops: float, traffic: float, devices: int, aux_j: float
    ) -> float:
        """Energy of one step of ``seconds`` > 0 on ``devices`` devices, plus ``aux_j``."""
        busy = max(flops / self.peak_flops, traffic / self.bandwidth)
        utilization = min(1.0, busy / seconds)
        power = self.idle_w + self.dynamic_w * utilization
        return power * seconds * devices + aux_j

    def steps_energy_j(
        self,
        seconds: FloatArray,
        flops: FloatArray,
        traffic: FloatArray,
        devices: int,
        aux_j: FloatArray,
    ) -> FloatArray:
        """:meth:`step_energy_j` of many steps (every ``seconds`` > 0), as arrays."""
        busy = np.maximum(flops / self.peak_flops, traffic / self.bandwidth)
        utilization = np.minimum(1.0, busy / seconds)
        power = self.idle_w + self.dynamic_w * utilization
        energy: FloatArray = power * seconds * devices + aux_j
        return energy
