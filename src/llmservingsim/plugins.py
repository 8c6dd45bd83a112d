"""User code named by the config's ``plugins``: Python files or modules imported before a run,
so that what they register (schedulers, routers, perf backends) can be selected by name."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from llmservingsim.errors import ConfigError


def load_plugins(names: Sequence[str]) -> None:
    """Import each plugin once per process (a file by path, or a module by dotted name)."""
    for name in names:
        if name.endswith(".py") or "/" in name or "\\" in name:
            _load_file(name)
        else:
            _load_module(name)


def _load_file(name: str) -> None:
    path = Path(name).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"plugins: {name!r} is not a file (a path to a .py file or a module)")
    # One module per file (a digest of its path in the name): loading it twice is a no-op.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = f"llmservingsim_plugin_{path.stem}_{digest}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugins: {name!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # any failure of foreign code at import
        del sys.modules[module_name]
        detail = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise ConfigError(f"plugins: {name!r} failed to load: {detail}") from None


def _load_module(name: str) -> None:
    try:
        importlib.import_module(name)
    except Exception as exc:  # any failure of foreign code at import
        detail = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise ConfigError(f"plugins: module {name!r} failed to load: {detail}") from None
