"""The reference file (``shared/data/reference/published_points.csv``): one measured metric
of a real deployment per row (columns in shared/data/README.md §7)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from llmservingsim.errors import UserError

REFERENCE = Path("shared") / "data" / "reference" / "published_points.csv"
REQUIRED = (
    "id",
    "source",
    "engine",
    "engine_version",
    "hardware",
    "num_gpus",
    "tensor_parallel",
    "pipeline_parallel",
    "model",
    "dtype",
    "input_len",
    "output_len",
    "request_rate_rps",
    "num_requests",
    "metric",
    "value",
    "unit",
    "notes",
)

# published metric -> (family, key of the simulated values: summary.json names, dotted)
METRICS: dict[str, tuple[str, str]] = {
    "output_throughput": ("throughput", "output_tokens_per_s"),
    "output_throughput_tok_s": ("throughput", "output_tokens_per_s"),
    "offline_throughput": ("throughput", "output_tokens_per_s"),
    "ttft_mean": ("TTFT", "ttft_s.mean"),
    "ttft_p50": ("TTFT", "ttft_s.p50"),
    "ttft_p90": ("TTFT", "ttft_s.p90"),
    "ttft_p99": ("TTFT", "ttft_s.p99"),
    "prefill_latency": ("TTFT", "ttft_s.mean"),
    "tpot_mean": ("TPOT", "tpot_s.mean"),
    "tpot_p50": ("TPOT", "tpot_s.p50"),
    "tpot_p90": ("TPOT", "tpot_s.p90"),
    "tpot_p99": ("TPOT", "tpot_s.p99"),
    "tpot_token_weighted_mean": ("TPOT", "tpot_token_weighted"),
    "e2e_mean": ("E2E", "e2e_s.mean"),
    "e2e_latency_mean": ("E2E", "e2e_s.mean"),
    "e2e_p50": ("E2E", "e2e_s.p50"),
    "e2e_p90": ("E2E", "e2e_s.p90"),
    "e2e_p99": ("E2E", "e2e_s.p99"),
    "makespan_s": ("makespan", "benchmark_duration_s"),
    # (mean E2E − mean TTFT) / (mean output − 1), the blis benchmark's ITL (data README §10)
    "itl_mean": ("ITL", "itl_of_means"),
}
FAMILIES = ("throughput", "TTFT", "TPOT", "ITL", "E2E", "makespan")

# Published unit (text before any parenthesis, lower case) -> factor from the SI value.
UNIT_FACTORS = {"ms": 1e3, "s": 1.0, "tok/s": 1.0}


def find_reference(start: Path | None = None) -> Path:
    """``shared/data/reference/published_points.csv`` next to the working directory or the
    installed package (the repository lives beside ``shared/``)."""
    bases = [start or Path.cwd(), Path(__file__).resolve()]
    for base in bases:
        for folder in (base, *base.parents):
            candidate = folder / REFERENCE
            if candidate.is_file():
                return candidate
    raise UserError(
        f"no reference file found ({REFERENCE} beside the working directory or the package); "
        "pass --reference FILE"
    )


def find_data_dir(start: Path | None = None) -> Path | None:
    """``shared/data`` beside the working directory or the package, None when absent."""
    for base in (start or Path.cwd(), Path(__file__).resolve()):
        for folder in (base, *base.parents):
            candidate = folder / "shared" / "data"
            if candidate.is_dir():
                return candidate
    return None


def read_reference(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    except OSError as exc:
        raise UserError(f"{path}: cannot read reference file: {exc.strerror}") from None
    for line, row in enumerate(rows, start=2):
        if number(row["value"]) is None:
            raise UserError(f"{path}:{line}: value {row['value']!r} is not a number")
    return rows


def number(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    if text.lower() in ("inf", "infinity"):
        return math.inf
    try:
        return float(text)
    except ValueError:
        return None


def unit_of(row: dict[str, str]) -> str:
    return row["unit"].split("(")[0].strip()


def is_verified(row: dict[str, str]) -> bool:
    """README §7: a row is unverified when its *source* says so (notes may use the word for
    one detail without the value being unverified)."""
    return "UNVERIFIED" not in row["source"].upper()
