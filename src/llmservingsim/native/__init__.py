"""The compiled event loop (a C extension, ``_loop``) and how to find it.

The extension is optional: it is built at install time when a C compiler is there, and a
machine without one runs the Python engine. So loading it never raises; a missing, broken or
stale build (its ``VERSION`` differs from the Python side's ``KERNEL_VERSION``) counts as none.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

KERNEL_VERSION = 8
"""The kernel interface this Python code speaks; ``_loop.VERSION`` must equal it."""


@functools.cache
def load_kernel() -> ModuleType | None:
    """The built extension module, or None when it is not usable (never raises)."""
    try:
        module = importlib.import_module("llmservingsim.native._loop")
    except Exception:  # not built, built for another Python, or failed to initialise
        return None
    if getattr(module, "VERSION", None) != KERNEL_VERSION:
        return None
    return module
