"""Which build of the engine runs: compiled with mypyc at install, or the same source
interpreted (no C compiler; ``LLMSERVINGSIM_INTERPRETED=1`` at install, or at run time to
load the source over an installed compiled build)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Literal

COMPILED_MODULES: tuple[str, ...] = (
    "llmservingsim.engine",
    "llmservingsim.invariants",
    "llmservingsim.serving.block_manager",
    "llmservingsim.serving.decode_run",
    "llmservingsim.serving.instance",
    "llmservingsim.serving.kv_offload",
    "llmservingsim.serving.lora",
    "llmservingsim.serving.prefix_cache",
    "llmservingsim.sequence",
    "llmservingsim.serving.speculative",
    "llmservingsim.serving.steady",
    "llmservingsim.serving.step_record",
    "llmservingsim.serving.swap",
    "llmservingsim.serving.schedulers.base",
    "llmservingsim.serving.schedulers.vllm",
    "llmservingsim.serving.schedulers.no_evict",
    "llmservingsim.serving.schedulers.orca",
    "llmservingsim.serving.schedulers.static",
    "llmservingsim.serving.schedulers.priority",
    "llmservingsim.cluster.cluster",
    "llmservingsim.cluster.routers",
    "llmservingsim.cluster.prefix_router",
    "llmservingsim.perf.iteration",
    "llmservingsim.perf.energy",
    "llmservingsim.perf.host_link",
    "llmservingsim.perf.lora",
    "llmservingsim.perf.pim",
    "llmservingsim.perf.speculative",
    "llmservingsim.metrics.decisions",
    "llmservingsim.metrics.collector",
    "llmservingsim.metrics.request_log",
    "llmservingsim.metrics.samples",
    "llmservingsim.metrics.steps",
    "llmservingsim.model.op",
    "llmservingsim.model.ops",
    "llmservingsim.model.moe",
    "llmservingsim.model.mla",
    "llmservingsim.model.lora",
    "llmservingsim.hardware.backends.roofline",
    "llmservingsim.network.collectives",
    "llmservingsim.network.topology",
    "llmservingsim.workload.request_spec",
)
"""The engine core: compiled together by setup.py (mypyc), in this order."""

Build = Literal["compiled", "interpreted"]


def engine_build() -> Build:
    """``compiled`` when the engine's modules were loaded from the mypyc build."""
    module = importlib.import_module("llmservingsim.engine")
    return "interpreted" if str(module.__file__).endswith(".py") else "compiled"


GROUP_LIBRARY = "llmservingsim_engine__mypyc"
"""The shared library that holds every compiled module's code (setup.py's group name)."""


def stale_sources() -> list[str]:
    """Compiled modules whose source changed after the engine was built (an editable install
    must be rebuilt: ``make`` does it). Empty for an interpreted build."""
    if engine_build() == "interpreted":
        return []
    spec = importlib.util.find_spec(GROUP_LIBRARY)
    if spec is None or spec.origin is None:
        return []
    built = Path(spec.origin).stat().st_mtime
    package = Path(__file__).resolve().parent
    stale = []
    for name in COMPILED_MODULES:
        source = package.joinpath(*name.split(".")[1:]).with_suffix(".py")
        if source.exists() and source.stat().st_mtime > built:
            stale.append(str(source))
    return stale


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' ``.py`` source ahead of their compiled extension."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED_MODULES or not path:
            return None
        source = Path(path[0]) / (fullname.rsplit(".", 1)[1] + ".py")
        if not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def prefer_source() -> None:
    """From now on, import the engine's modules from their Python source (interpreted)."""
    if not any(isinstance(finder, _SourceFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst())
