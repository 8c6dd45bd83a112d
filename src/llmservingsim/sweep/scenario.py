"""The base scenario of a sweep or plan, and the configs of its points.

A point is the base config plus a few overrides, built with the same machinery as
``run --set`` (config.apply_override + build_config), so a key that is valid on ``run`` is valid
on ``sweep`` and ``plan`` and a mistake gets the same one-line error.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llmservingsim import simulation
from llmservingsim.config import (
    SimConfig,
    apply_override,
    build_config,
    load_yaml_mapping,
    parse_override,
)
from llmservingsim.errors import DoesNotFitError
from llmservingsim.sweep.grid import Assignment


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Scenario:
    """The raw base mapping (YAML file + base ``--set``), kept raw so overrides compose."""

    raw: dict[str, Any]
    source: str = "config"

    @classmethod
    def load(cls, path: Path | None, overrides: Sequence[str] = ()) -> Scenario:
        raw: dict[str, Any] = load_yaml_mapping(path) if path is not None else {}
        for text in overrides:
            parts, value = parse_override(text)
            apply_override(raw, parts, value)
        return cls(raw, str(path) if path is not None else "config")

    @property
    def base_id(self) -> str:
        """Identifies the base scenario, so a resumed sweep refuses another base config."""
        return _digest(self.raw)

    def config(self, assignments: Sequence[Assignment]) -> SimConfig:
        raw = copy.deepcopy(self.raw)
        for key, value in assignments:
            apply_override(raw, key.split("."), copy.deepcopy(value))
        where = ", ".join(f"{k}={_show(v)}" for k, v in assignments)
        return build_config(raw, source=f"{self.source} [{where}]" if where else self.source)


def _show(value: Any) -> str:
    return json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)


def resolved_value(cfg: SimConfig, key: str) -> Any:
    """The value of ``key`` in the validated config, as a Parquet-friendly scalar.

    Taking the resolved value (not the text typed) makes ``rate=8`` and ``rate=8.0`` the same
    point and gives every column one type; mappings become canonical JSON text.
    """
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part) if isinstance(node, BaseModel) else node[part]
    if isinstance(node, BaseModel):
        node = node.model_dump()
    if isinstance(node, dict | list):
        return json.dumps(node, sort_keys=True, default=str)
    if isinstance(node, Path):
        return str(node)
    return node


def point_id(values: dict[str, Any]) -> str:
    """Hash of a point's canonical overrides (resolved values): the key ``--resume`` uses."""
    return _digest(values)


def check_runnable(cfg: SimConfig) -> bool:
    """Everything ``simulate`` checks before the first step (catalog names, supported features,
    memory), without serving a request. False when the model does not fit: such a point is a
    result (infeasible), not a mistake; every other problem raises its UserError."""
    try:
        simulation.simulate(cfg, requests=[])
    except DoesNotFitError:
        return False
    return True
