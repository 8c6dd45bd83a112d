"""A tiny name → factory registry, so a new policy is one file with one decorator.

A registry may also be filled by other installed packages through a Python entry-point group
(``[project.entry-points."<group>"]`` in their pyproject): such an entry is imported only when
its name is asked for, so a broken plugin fails with a clear error only for the run that uses
it, never at start-up.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from llmservingsim.errors import ConfigError

if TYPE_CHECKING:
    # importlib.metadata (and the email package it pulls in) is imported when a registry first
    # looks for plugins, not at start-up.
    from importlib.metadata import EntryPoint

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names (as written in the config) to implementations."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._modules: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = item
            return item

        return decorator

    def register_module(self, name: str, module: str) -> None:
        """``name`` is registered by importing ``module`` (its ``register`` call), on the first
        ``get``: a built-in whose import would cost every run start-up time it rarely needs."""
        self._modules[name] = module

    def _plugins(self) -> dict[str, EntryPoint]:
        if self.entry_point_group is None:
            return {}
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group=self.entry_point_group)}

    def _load_plugin(self, ep: EntryPoint) -> T:
        origin = f"entry point '{ep.name} = {ep.value}'"
        if ep.dist is not None:
            origin += f" of package {ep.dist.name} {ep.dist.version}"
        try:
            item = ep.load()
        except Exception as exc:  # any import-time failure of foreign code
            detail = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            raise ConfigError(f"{self.kind} plugin {origin} failed to load: {detail}") from None
        if not callable(item):
            raise ConfigError(f"{self.kind} plugin {origin} is not a class or factory")
        # A plugin module may register itself on import with @register; otherwise do it here.
        if ep.name not in self._items:
            self._items[ep.name] = item
        return self._items[ep.name]

    def get(self, name: str) -> T:
        item = self._items.get(name)
        if item is not None:
            return item
        module = self._modules.get(name)
        if module is not None:
            importlib.import_module(module)
            return self._items[name]
        plugin = self._plugins().get(name)
        if plugin is not None:
            return self._load_plugin(plugin)
        raise ConfigError(unknown_name_message(self.kind, name, self.names()))

    def names(self) -> list[str]:
        return sorted({*self._items, *self._modules, *self._plugins()})

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._modules or name in self._plugins()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def unknown_name_message(kind: str, name: str, valid: object) -> str:
    """One line: the unknown name, the closest valid one, and the full list."""
    names = sorted(str(v) for v in valid)  # type: ignore[attr-defined]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (valid: {', '.join(names)})"
