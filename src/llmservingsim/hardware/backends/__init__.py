"""Performance backends: turn one :class:`~llmservingsim.model.ops.Op` into seconds on a device.

A backend is a class registered by name (``perf.backend`` in the config) and built with the
device and the compute dtype. Interface::

    backend = PERF_BACKENDS.get("roofline")(device, dtype)
    seconds = backend.time(op)

Optional extras, found by name (docs/extending.md):

* ``from_config(device, setup)`` (classmethod): build from a :class:`PerfSetup` — the
  ``perf:`` section (tables, a command, ``perf.options``), the dtypes and the served model —
  when the backend needs more than the device and the compute dtype;
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

# Built-in backends register themselves on import.
from llmservingsim.hardware.backends import external as _external  # noqa: F401
from llmservingsim.hardware.backends import kernel_db as _kernel_db  # noqa: F401
from llmservingsim.hardware.backends import profile as _profile  # noqa: F401
from llmservingsim.hardware.backends import roofline as _roofline  # noqa: F401
from llmservingsim.hardware.backends import scalesim as _scalesim  # noqa: F401
from llmservingsim.hardware.backends import systolic as _systolic  # noqa: F401
from llmservingsim.hardware.backends.base import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from llmservingsim.hardware.backends.base import PERF_BACKENDS as PERF_BACKENDS
from llmservingsim.hardware.backends.base import PerfBackend as PerfBackend
from llmservingsim.hardware.backends.base import PerfBackendFactory as PerfBackendFactory
from llmservingsim.hardware.backends.base import PerfSetup as PerfSetup
from llmservingsim.hardware.backends.base import backend_name_for as backend_name_for
from llmservingsim.hardware.backends.base import backend_stats as backend_stats
from llmservingsim.hardware.backends.base import build_backend as build_backend
from llmservingsim.hardware.backends.base import make_backend as make_backend
