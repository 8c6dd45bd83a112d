"""Physical ranges of every number a user can type (config files, --set, device and model
files): checked once, at the boundary, by the pydantic types here. Booleans are not numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field

MAX_TOKENS = 2**31
"""Request lengths and token budgets stay below 2^31 (int32 in every engine)."""
MAX_COUNT = 10**6
"""Instances, adapters, system prompts, devices per node: below a million."""
MAX_SECONDS = 1e9
"""Times a user gives (think times, timeouts, SLOs, bucket widths): at most ~31.7 years."""
MAX_GIB = 2**20
"""Memory sizes: at most 1 PiB."""
MAX_GBPS = 1e7
"""Link and disk bandwidths: at most 10 PB/s."""


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
    return value


NotBool = BeforeValidator(_not_bool)
TokenCount = Annotated[int, NotBool, Field(ge=1, lt=MAX_TOKENS)]
"""A token length or budget: 1 <= n < 2^31."""
Count = Annotated[int, NotBool, Field(ge=1, lt=MAX_TOKENS)]
"""A number of requests, rows or steps: 1 <= n < 2^31."""
SmallCount = Annotated[int, NotBool, Field(ge=1, lt=MAX_COUNT)]
"""A number of things each costing memory up front (instances, adapters): 1 <= n < 10^6."""
Finite = Annotated[float, NotBool, Field(allow_inf_nan=False)]
PositiveFinite = Annotated[float, NotBool, Field(gt=0, allow_inf_nan=False)]
Seconds = Annotated[float, NotBool, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, NotBool, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
Microseconds = Annotated[float, NotBool, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
GiB = Annotated[float, NotBool, Field(ge=0, le=MAX_GIB, allow_inf_nan=False)]
Gbps = Annotated[float, NotBool, Field(ge=1e-3, le=MAX_GBPS, allow_inf_nan=False)]
"""A bandwidth, GB/s: from 1 MB/s (smaller ones, down to 1e-320, made every time infinite)."""
Fraction = Annotated[float, NotBool, Field(ge=1e-6, le=1, allow_inf_nan=False)]
"""An efficiency or share: 10^-6 to 1 (a denormal one made times infinite)."""
Exponent = Annotated[float, NotBool, Field(gt=0, le=100, allow_inf_nan=False)]
"""A Zipf exponent: 0 < alpha <= 100."""


def _usable_path(value: object) -> object:
    if isinstance(value, str) and (not value.strip() or "\0" in value):
        raise ValueError("expected a file path (not empty, no NUL character)")
    return value


FilePath = Annotated[Path, BeforeValidator(_usable_path)]
