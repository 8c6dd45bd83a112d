"""Performance backends: turn one :class:`~llmservingsim.model.ops.Op` into seconds on a device.

A backend is a class registered by name (``perf.backend`` in the config) and built with the
device and the compute dtype. Interface::

    backend = PERF_BACKENDS.get("roofline")(device, dtype)
    seconds = backend.time(op)
"""

from __future__ import annotations

from typing import Protocol

from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.ops import Op
from llmservingsim.registry import Registry


class PerfBackend(Protocol):
    device: DeviceSpec

    def time(self, op: Op) -> float:
        """Seconds the op takes on one device."""
        ...


class PerfBackendFactory(Protocol):
    def __call__(self, device: DeviceSpec, dtype: str) -> PerfBackend: ...


PERF_BACKENDS: Registry[PerfBackendFactory] = Registry("perf backend")


def backend_name_for(device: DeviceSpec, requested: str) -> str:
    """``perf.backend: auto`` → the backend that fits the device: the array model for an NPU
    whose YAML gives its systolic geometry, the calibrated roofline for everything else."""
    if requested != "auto":
        return requested
    return "systolic" if device.type == "npu" and device.systolic is not None else "roofline"


def make_backend(device: DeviceSpec, dtype: str, requested: str = "auto") -> PerfBackend:
    return PERF_BACKENDS.get(backend_name_for(device, requested))(device, dtype)


# Built-in backends register themselves on import.
from llmservingsim.hardware.backends import roofline as _roofline  # noqa: E402,F401
from llmservingsim.hardware.backends import systolic as _systolic  # noqa: E402,F401
