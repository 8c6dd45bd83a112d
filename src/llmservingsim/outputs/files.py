"""summary.json and requests.csv (Parquet, traces and the HTML report come with issue #8)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from llmservingsim.metrics.collector import RequestRecord

REQUEST_COLUMNS = (
    "id",
    "instance",
    "status",
    "arrival_s",
    "first_token_s",
    "finish_s",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "preemptions",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "fail_reason",
)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    path = out_dir / "summary.json"
    path.write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    return path


def _row(r: RequestRecord) -> list[Any]:
    finished = r.status == "finished"
    return [
        r.id,
        r.instance,
        r.status,
        r.arrival_s,
        r.first_token_s if r.first_token_s >= 0 else "",
        r.finish_s,
        r.input_tokens,
        r.output_tokens,
        r.cached_tokens,
        r.preemptions,
        r.ttft if finished else "",
        "" if (t := r.tpot) is None or not finished else t,
        r.e2e if finished else "",
        r.fail_reason,
    ]


def write_requests_csv(out_dir: Path, records: list[RequestRecord]) -> Path:
    path = out_dir / "requests.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(REQUEST_COLUMNS)
        for record in sorted(records, key=lambda r: r.id):
            writer.writerow(_row(record))
    return path
