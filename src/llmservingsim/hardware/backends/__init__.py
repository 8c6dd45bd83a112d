"""Performance backends: turn one :class:`~llmservingsim.model.ops.Op` into seconds on a device.

A backend is a class registered by name (``perf.backend`` in the config) and built with the
device and the compute dtype. Interface::

    backend = PERF_BACKENDS.get("roofline")(device, dtype)
    seconds = backend.time(op)

Optional extras, found by name (docs/extending.md):

* ``from_config(device, cfg)`` (classmethod): build from the whole :class:`SimConfig` when the
  backend needs settings of the ``perf:`` section (tables, a command, ``perf.options``);
* ``stats() -> dict``: counters merged into summary.json (ints summed over instances, dicts of
  ints merged), e.g. ``perf_fallbacks`` of the profile backend;
* ``collectives`` (attribute, a :class:`~llmservingsim.network.topology.MeasuredCollectives`):
  measured collective times the timer's topology asks before its alpha-beta model
  (:func:`with_backend_collectives`), e.g. the kernel_db backend's NCCL / custom all-reduce
  tables.

Other packages add backends through the entry-point group ``llmservingsim.perf_backends``
(examples/plugin_backend).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from llmservingsim.config import SimConfig
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.ops import Op
from llmservingsim.network.topology import Topology
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


def build_backend(cfg: SimConfig, device: DeviceSpec) -> PerfBackend:
    """The configured backend for one device (``from_config`` when the backend has one)."""
    factory = PERF_BACKENDS.get(backend_name_for(device, cfg.perf.backend))
    from_config = getattr(factory, "from_config", None)
    if from_config is not None:
        backend: PerfBackend = from_config(device, cfg)
        return backend
    return factory(device, cfg.compute_dtype)


def with_backend_collectives(topology: Topology, backend: PerfBackend) -> Topology:
    """The topology a timer uses with this backend: asking the backend's measured collective
    tables first when it has them (``collectives``), unchanged otherwise."""
    measured = getattr(backend, "collectives", None)
    if measured is None:
        return topology
    return dataclasses.replace(topology, measured=measured)


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


# Built-in backends register themselves when their module is imported: the roofline (every
# GPU run's) now, the others when a config names them (their tables, parsers and dataclasses
# cost a run 0.07 s of start-up; docs/performance.md, "Start-up").
for _name in ("external", "kernel_db", "profile", "scalesim", "systolic"):
    PERF_BACKENDS.register_module(_name, f"llmservingsim.hardware.backends.{_name}")
from llmservingsim.hardware.backends import roofline as _roofline  # noqa: E402,F401
