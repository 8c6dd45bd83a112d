"""The unit of work the simulator serves: one request's arrival and token counts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request as the workload describes it, before any serving decision.

    Lengths are already clipped to the model's context window, so the serving side can trust
    ``input_len + output_len <= max_context`` without re-checking.
    """

    id: int
    arrival_s: float
    input_len: int
    output_len: int
