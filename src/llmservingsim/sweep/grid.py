"""``--grid key=v1,v2`` and ``--search key=a..b`` axes, and the points they span.

Values are written as on ``run --set`` (each item parsed as YAML, so ``8`` is an int and
``{dist: fixed, value: 100}`` a mapping); commas inside brackets or quotes do not split items.
An item ``a..b`` expands to every integer from a to b, ``a..b*k`` to a, a·k, a·k², … ≤ b, so
``1..64*2`` is the powers of two up to 64.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llmservingsim.config import parse_override
from llmservingsim.errors import ConfigError

_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*(?:\*\s*(\d+)\s*)?$")
_RANGE_LIKE = re.compile(r"^\s*-?\d[\d.]*\s*\.\.")  # starts like a range, e.g. 1.5..4 or 1..x
_OPENERS = {"[": "]", "{": "}"}


@dataclass(frozen=True)
class Axis:
    """One swept config key and its values (parsed, in the order written)."""

    key: str
    values: tuple[Any, ...]
    is_range: bool = False

    @property
    def parts(self) -> list[str]:
        return self.key.split(".")


Assignment = tuple[str, Any]
"""(dotted key, parsed value): one override of a point."""


def split_items(text: str, option: str, spec: str) -> list[str]:
    """Split on commas that are not inside brackets, braces or quotes."""
    items: list[str] = []
    stack: list[str] = []
    quote = ""
    start = 0
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in _OPENERS:
            stack.append(char)
        elif char in _OPENERS.values():
            if not stack or _OPENERS[stack.pop()] != char:
                raise ConfigError(f"{option} {spec!r}: unbalanced {char!r}")
        elif char == "," and not stack:
            items.append(text[start:i])
            start = i + 1
    if quote or stack:
        raise ConfigError(f"{option} {spec!r}: unclosed {quote or stack[-1]!r}")
    items.append(text[start:])
    return items


def expand_range(item: str, option: str, spec: str) -> list[int] | None:
    """``a..b`` → [a, …, b]; ``a..b*k`` → [a, a·k, …] ≤ b; None when ``item`` is no range."""
    match = _RANGE.match(item)
    if match is None:
        if _RANGE_LIKE.match(item):
            raise ConfigError(
                f"{option} {spec!r}: range {item.strip()!r} must be a..b or a..b*k with integers"
            )
        return None
    low, high = int(match[1]), int(match[2])
    if low > high:
        raise ConfigError(f"{option} {spec!r}: range {item.strip()!r} is empty ({low} > {high})")
    if match[3] is None:
        return list(range(low, high + 1))
    factor = int(match[3])
    if factor < 2 or low < 1:
        raise ConfigError(
            f"{option} {spec!r}: geometric range {item.strip()!r} needs a >= 1 and a factor >= 2"
        )
    values = [low]
    while values[-1] * factor <= high:
        values.append(values[-1] * factor)
    return values


def parse_axis(spec: str, option: str = "--grid") -> Axis:
    """``key=v1,v2,...`` → Axis; any syntax mistake is a one-line ConfigError."""
    key, sep, rest = spec.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{option} {spec!r}: expected key.path=value1,value2,...")
    if not all(key.split(".")) or any(c.isspace() for c in key):
        raise ConfigError(f"{option} {spec!r}: {key!r} is not a dotted config key")
    values: list[Any] = []
    is_range = False
    for item in split_items(rest, option, spec):
        if not item.strip():
            raise ConfigError(f"{option} {spec!r}: empty value (expected key=v1,v2,...)")
        expanded = expand_range(item, option, spec)
        if expanded is not None:
            values.extend(expanded)
            is_range = True
        else:
            values.append(parse_override(f"{key}={item.strip()}")[1])
    return Axis(key, tuple(values), is_range)


def parse_axes(specs: Sequence[str], option: str = "--grid") -> list[Axis]:
    axes = [parse_axis(spec, option) for spec in specs]
    seen: set[str] = set()
    for axis in axes:
        if axis.key in seen:
            raise ConfigError(f"{option} {axis.key}: key given twice; list all values in one")
        seen.add(axis.key)
    return axes


def grid_points(axes: Sequence[Axis], zipped: bool = False) -> list[tuple[Assignment, ...]]:
    """The cartesian product of the axes (first axis slowest), or their pairing with ``zipped``."""
    if not axes:
        return [()]
    if zipped:
        lengths = {axis.key: len(axis.values) for axis in axes}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise ConfigError(f"--zip needs value lists of equal length (got {shown})")
        rows: Iterable[tuple[Any, ...]] = zip(*(axis.values for axis in axes), strict=True)
    else:
        rows = itertools.product(*(axis.values for axis in axes))
    keys = [axis.key for axis in axes]
    return [tuple(zip(keys, row, strict=True)) for row in rows]
