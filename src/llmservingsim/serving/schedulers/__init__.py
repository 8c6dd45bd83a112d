"""Batch schedulers, one policy per module, selected by ``scheduler.policy``."""

from __future__ import annotations

# Built-in policies register themselves on import.
from llmservingsim.serving.schedulers import no_evict as _no_evict  # noqa: F401
from llmservingsim.serving.schedulers import orca as _orca  # noqa: F401
from llmservingsim.serving.schedulers import priority as _priority  # noqa: F401
from llmservingsim.serving.schedulers import static as _static  # noqa: F401
from llmservingsim.serving.schedulers import vllm as _vllm  # noqa: F401
from llmservingsim.serving.schedulers.base import SCHEDULERS, Scheduler

__all__ = ["SCHEDULERS", "Scheduler"]
