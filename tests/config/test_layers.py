"""The layers are visible in the imports: no import cycles (lazy imports included), and no
layer imports one above it (docs/index.md, "Layout of the code")."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "llmservingsim"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> Iterator[str]:
    """Every llmservingsim module ``path`` imports, at the top or inside a function."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        yield from (name for name in names if name in MODULES)


GRAPH = {name: set(_imports(path)) - {name} for name, path in MODULES.items()}


def _cycle_from(start: str) -> list[str] | None:
    """A shortest import cycle through ``start``, or None."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted(GRAPH[module]):
                if target == start:
                    return [*paths[module], start]
                if target not in paths:
                    paths[target] = [*paths[module], target]
                    following.append(target)
        frontier = following
    return None


def test_no_module_imports_itself_back() -> None:
    cycles = [cycle for name in sorted(MODULES) if (cycle := _cycle_from(name))]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0])


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "llmservingsim"


# What each layer must not import (its own layer and the ones below are fine).
FORBIDDEN: dict[str, set[str]] = {
    "errors": {"*"},
    "ranges": {"*"},
    "registry": {"*"},
    # config applies engine presets, which read the catalog (a device's memory, a model's
    # context): nothing that serves.
    "config": {"perf", "serving", "cluster", "engine", "metrics", "workload", "scenario"},
    "model": {"hardware", "network", "perf", "serving", "cluster", "engine", "metrics"},
    "hardware": {"perf", "serving", "cluster", "engine", "metrics", "network", "workload"},
    "network": {"perf", "serving", "cluster", "engine", "metrics", "workload"},
    "workload": {"perf", "serving", "cluster", "engine", "metrics", "scenario", "simulation"},
    "perf": {"serving", "cluster", "engine", "metrics", "scenario", "build", "simulation"},
    "metrics": {"serving", "cluster", "engine", "scenario", "build", "simulation", "outputs"},
    "serving": {"cluster", "engine", "scenario", "build", "simulation", "outputs", "cli"},
    "cluster": {"engine", "scenario", "build", "simulation", "outputs", "cli"},
    "engine": {"scenario", "build", "simulation", "outputs", "cli"},
    "scenario": {"build", "engine", "simulation", "run_summary", "outputs", "cli"},
    "build": {"engine", "simulation", "run_summary", "outputs", "cli"},
    "simulation": {"outputs", "cli", "sweep", "validate"},
}
ALLOWED_BELOW_CONFIG = {"errors", "ranges", "registry"}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_one_above_it(layer: str) -> None:
    forbidden = FORBIDDEN[layer]
    wrong = []
    for module, targets in GRAPH.items():
        if _layer(module) != layer:
            continue
        for target in targets:
            other = _layer(target)
            if other == layer:
                continue
            below = other in ALLOWED_BELOW_CONFIG | {"llmservingsim"}
            if ("*" in forbidden and not below) or other in forbidden:
                wrong.append(f"{module} -> {target}")
    assert not wrong, f"{layer} imports a layer above it: {sorted(wrong)}"


def test_the_checker_sees_imports_inside_functions() -> None:
    # config imports engine_presets lazily (inside load_config): the graph must see it.
    assert "llmservingsim.engine_presets" in GRAPH["llmservingsim.config"]
