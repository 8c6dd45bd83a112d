"""The perf-backend interface, its registry, and what a backend is built from
(:class:`PerfSetup`); the package's docstring describes the interface."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from llmservingsim.config import PerfConfig
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.ops import Op
from llmservingsim.model.spec import Fp8Scaling, ModelSpec
from llmservingsim.registry import Registry

ENTRY_POINT_GROUP = "llmservingsim.perf_backends"


class PerfBackend(Protocol):
    device: DeviceSpec

    def time(self, op: Op) -> float:
        """Seconds the op takes on one device."""
        ...


# Called as factory(device, dtype); backends with ``from_config`` may take more arguments.
PerfBackendFactory = Callable[..., PerfBackend]


PERF_BACKENDS: Registry[PerfBackendFactory] = Registry("perf backend", ENTRY_POINT_GROUP)


@dataclasses.dataclass(frozen=True)
class PerfSetup:
    """What a backend is built from (its ``from_config``): the ``perf:`` section and the facts
    of the served model it may need — not the whole run's config."""

    perf: PerfConfig
    model: ModelSpec
    dtype: str
    """Weights' dtype (``dtype``: bf16, fp8, fp4, int8, ...)."""
    kv_dtype: str
    """KV cache's dtype, resolved."""
    compute_dtype: str
    """Math dtype (weight-only int8/int4 compute in bf16)."""
    fp8_scaling: Fp8Scaling = "none"
    """fp8 weights' scaling, resolved: tensor or block; none for other dtypes."""


def build_backend(setup: PerfSetup, device: DeviceSpec) -> PerfBackend:
    """The configured backend for one device (``from_config`` when the backend has one)."""
    factory = PERF_BACKENDS.get(backend_name_for(device, setup.perf.backend))
    from_config = getattr(factory, "from_config", None)
    if from_config is not None:
        backend: PerfBackend = from_config(device, setup)
        return backend
    return factory(device, setup.compute_dtype)


def backend_stats(backends: Iterable[PerfBackend]) -> dict[str, Any]:
    """The backends' ``stats()`` counters, summed over instances."""
    merged: dict[str, Any] = {}
    for backend in backends:
        stats = getattr(backend, "stats", None)
        if stats is None:
            continue
        for key, value in stats().items():
            if isinstance(value, str):  # a description (the same for every instance)
                merged.setdefault(key, value)
            elif isinstance(value, dict):
                into = merged.setdefault(key, {})
                for sub, count in value.items():
                    into[sub] = into.get(sub, 0) + count
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


def backend_name_for(device: DeviceSpec, requested: str) -> str:
    """``perf.backend: auto`` → the backend that fits the device: the array model for an NPU
    whose YAML gives its systolic geometry, the calibrated roofline for everything else."""
    if requested != "auto":
        return requested
    return "systolic" if device.type == "npu" and device.systolic is not None else "roofline"


def make_backend(device: DeviceSpec, dtype: str, requested: str = "auto") -> PerfBackend:
    """A backend from a device and a dtype alone (no ``perf:`` settings)."""
    return PERF_BACKENDS.get(backend_name_for(device, requested))(device, dtype)
