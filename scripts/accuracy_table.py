"""Accuracy table: simulate every published point one instance can reproduce, compare, report.

Reads ``<data>/reference/published_points.csv`` (see ``<data>/README.md`` §7-8), turns each row
that a single tensor-parallel instance of a catalog model can reproduce into a simulator
config (exact replay workload where the row names one, otherwise fixed lengths at the given
rate), runs it, converts units and prints a Markdown table with the signed error per row, the
rows it cannot reproduce (and why), and the median absolute error per metric family.

This script only *measures* the error. It never changes a constant of the simulator: every
engine setting below mimics the source's documented engine configuration, chosen before looking
at the result.

Usage::

    .venv/bin/python scripts/accuracy_table.py                 # data dir ../shared/data
    .venv/bin/python scripts/accuracy_table.py /path/to/data --out table.md --json rows.json

Exits 0 with a message when the data folder is absent.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"

# Generic cap on requests of a synthetic run: max-throughput runs reach steady state long before
# this, and the run stays well under ~30 s of wall time (the simulator does ~1e5 steps/s).
MAX_REQUESTS = 30000
# Requests for a row without a count. TensorRT-LLM's own tables (v1.0 rows of the same file)
# used these counts for the same ISL/OSL; anything else gets 1000.
DEFAULT_REQUESTS = 1000

# ----------------------------------------------------------------------------- name mapping

# (regex on the lower-cased published model name, catalog name, substitution note or "")
MODEL_MAP: list[tuple[str, str, str]] = [
    (r"mixtral-8x7b", "mixtral-8x7b", ""),
    (r"mixtral-8x22b", "mixtral-8x22b", ""),
    (r"mistral-large(-instruct)?-2407", "mistral-large-2407", ""),
    (r"llama-3\.1-8b", "llama-3.1-8b", ""),
    (r"llama-3\.1-70b", "llama-3.1-70b", ""),
    (r"llama-3\.1-405b", "llama-3.1-405b", ""),
    (
        r"(meta-)?llama-3-8b",
        "llama-3.1-8b",
        "Llama-3-8B simulated as llama-3.1-8b (identical layer shapes; only the context "
        "length differs: 8K vs 128K)",
    ),
    (
        r"(meta-)?llama-3-70b",
        "llama-3.1-70b",
        "Llama-3-70B simulated as llama-3.1-70b (identical layer shapes; only the context "
        "length differs: 8K vs 128K)",
    ),
    (r"llama-2-70b", "llama-2-70b", ""),
    (r"llama-2-13b", "llama-2-13b", ""),
    (r"llama-2-7b", "llama-2-7b", ""),
]

HARDWARE_MAP: list[tuple[str, str]] = [
    (r"^h100( sxm)?( 80gb)?$", "h100-sxm"),
    (r"^h100 pcie", "h100-pcie"),
    (r"^a100( 80gb)?$", "a100-80gb"),
    (r"^h200", "h200"),
    (r"^rtx pro 6000", "rtx-pro-6000"),
]

# published metric -> (family, how to read it from a simulation)
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
    "makespan_s": ("makespan", "makespan"),
}
FAMILIES = ["throughput", "TTFT", "TPOT", "E2E", "makespan"]


# ----------------------------------------------------------------------------- data types


@dataclass
class Scenario:
    """One simulation; several published rows (metrics of the same run) share it."""

    model: str
    hardware: str
    tp: int
    dtype: str
    kv_dtype: str
    workload: list[str]
    workload_text: str
    scheduler: list[str]
    engine_text: str
    notes: list[str] = field(default_factory=list)

    def overrides(self) -> list[str]:
        return [
            f"model={self.model}",
            f"hardware={self.hardware}",
            f"dtype={self.dtype}",
            f"kv_dtype={self.kv_dtype}",
            f"cluster.tensor_parallel={self.tp}",
            "scheduler.enable_prefix_caching=false",
            *self.scheduler,
            *self.workload,
        ]

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(self.overrides())

    @property
    def label(self) -> str:
        return (
            f"{self.model} · {self.hardware} · TP{self.tp} · {self.dtype}"
            f"{'' if self.kv_dtype in ('auto', self.dtype) else '/kv ' + self.kv_dtype}"
            f" · {self.workload_text}"
        )


@dataclass
class Result:
    row: dict[str, str]
    scenario: Scenario
    family: str
    measured: float
    simulated: float | None
    unit: str
    verified: bool

    @property
    def error_pct(self) -> float | None:
        if self.simulated is None or self.measured == 0:
            return None
        return 100.0 * (self.simulated - self.measured) / self.measured


# ----------------------------------------------------------------------------- row → scenario


def _num(text: str) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    if text.lower() in ("inf", "infinity"):
        return math.inf
    try:
        return float(text)
    except ValueError:
        return None


def map_model(name: str) -> tuple[str | None, str]:
    low = name.lower()
    for pattern, catalog, note in MODEL_MAP:
        if re.search(pattern, low):
            return catalog, note
    return None, ""


def map_hardware(name: str) -> str | None:
    low = name.strip().lower()
    for pattern, catalog in HARDWARE_MAP:
        if re.search(pattern, low):
            return catalog
    return None


def map_dtype(text: str) -> tuple[str, str]:
    low = text.lower()
    if "fp8" in low:
        # "fp8 weights + fp8 KV" (APEX+), and NVIDIA's FP8 checkpoints, which ship an FP8 KV
        # cache too: auto (= dtype) gives fp8 KV.
        return "fp8", "fp8" if "kv" in low else "auto"
    for d in ("bf16", "fp16", "fp32", "int8", "int4"):
        if d in low:
            return d, "auto"
    return "bf16", "auto"


def is_verified(row: dict[str, str]) -> bool:
    """README §7: a row is unverified when its *source* says so (notes may use the word for a
    single detail, e.g. the APEX+ rows' chunked-prefill remark, without the value being so)."""
    return "UNVERIFIED" not in row["source"].upper()


def engine_settings(row: dict[str, str], model_ctx: int) -> tuple[list[str], str, list[str]]:
    """Scheduler keys that mimic the source engine, a one-line description, and notes."""
    engine = row["engine"]
    version = row["engine_version"]
    source = row["source"]
    if "TensorRT-LLM" in engine:
        # trtllm-bench max-throughput: large runtime batch, chunked context, KV from 90-95 % of
        # the *free* memory after weights; 0.9 of total minus weights is close to that. Its
        # default capacity policy GUARANTEED_NO_EVICT admits a request only when its whole
        # KV lifetime fits: our `no_evict` policy.
        return (
            [
                "scheduler.policy=no_evict",
                "scheduler.max_num_seqs=2048",
                "scheduler.max_num_batched_tokens=8192",
                "scheduler.block_size=32",
                "scheduler.gpu_memory_utilization=0.9",
            ],
            "TRT-LLM-like: no_evict, chunked, max_num_seqs 2048, 8192 tok/step, block 32, util 0.9",
            [],
        )
    if "apex_plus" in source:
        # vLLM 0.6.0 OpenAI server defaults: max_num_seqs 256, block 16, util 0.97. For a
        # model with max_model_len > 32K, 0.6.0 turns chunked prefill on by itself with a
        # 512-token budget (arg_utils: "Chunked prefill is enabled by default for models with
        # max_model_len > 32K"); V0's chunked scheduler runs decodes first, then chunks.
        return (
            [
                "scheduler.policy=vllm",
                "scheduler.max_num_seqs=256",
                "scheduler.max_num_batched_tokens=512",
                "scheduler.block_size=16",
                "scheduler.gpu_memory_utilization=0.97",
            ],
            "vLLM 0.6.0 defaults: chunked (auto for ctx>32K), 512 tok/step, 256 seqs, util 0.97",
            [],
        )
    if version.startswith("0.6.0"):
        # vLLM 0.6.0 blog: Llama-3 (8K context) -> chunked prefill stays off, and the default
        # budget is max(max_model_len, 2048) = 8192: whole prompts only (orca).
        budget = max(8192 if "Llama-3-" in row["model"] else model_ctx, 2048)
        return (
            [
                "scheduler.policy=orca",
                "scheduler.max_num_seqs=256",
                f"scheduler.max_num_batched_tokens={budget}",
                "scheduler.block_size=16",
                "scheduler.gpu_memory_utilization=0.9",
            ],
            f"vLLM 0.6.0 defaults, ctx 8K: no chunking (orca), {budget} tok/step, 256 seqs, "
            "util 0.9",
            ["multi-step scheduling (--num-scheduler-steps 10) is not modelled"],
        )
    if version.startswith("0.19"):
        return (
            [
                "scheduler.policy=vllm",
                "scheduler.max_num_seqs=128",
                "scheduler.max_num_batched_tokens=2048",
                "scheduler.block_size=16",
                "scheduler.gpu_memory_utilization=0.9",
            ],
            "vLLM 0.19 V1: chunked, 2048 tok/step, 128 seqs, block 16, util 0.9",
            ["the measured run had prefix caching ON; the simulator has none (off here)"],
        )
    # Single-batch measurements (Splitwise): the whole prompt in one step.
    budget = max(model_ctx, 2048)
    return (
        [
            "scheduler.policy=orca",
            "scheduler.max_num_seqs=256",
            f"scheduler.max_num_batched_tokens={budget}",
            "scheduler.block_size=16",
            "scheduler.gpu_memory_utilization=0.9",
        ],
        f"whole-prompt prefill (orca), {budget} tok/step",
        [],
    )


def default_requests(row: dict[str, str], rows: list[dict[str, str]]) -> tuple[int, str]:
    """Request count for a row without one: the count a verified row with the same ISL/OSL
    used (same benchmark family), else DEFAULT_REQUESTS."""
    for other in rows:
        if (
            other["num_requests"].strip()
            and other["input_len"] == row["input_len"]
            and other["output_len"] == row["output_len"]
            and other["request_rate_rps"] == row["request_rate_rps"]
            and is_verified(other)
        ):
            return int(float(other["num_requests"])), f"num_requests blank: used {other['id']}'s"
    return DEFAULT_REQUESTS, f"num_requests blank: used {DEFAULT_REQUESTS}"


def build_scenario(
    row: dict[str, str], data: Path, rows: list[dict[str, str]]
) -> tuple[Scenario | None, str]:
    """A scenario for the row, or None and the reason it cannot be reproduced."""
    from llmservingsim.catalog import load_model

    metric = row["metric"]
    if metric not in METRICS:
        return None, f"unknown metric '{metric}'"
    model, sub_note = map_model(row["model"])
    if model is None:
        return None, f"model '{row['model']}' is not in the catalog"
    spec = load_model(model)
    gpus = _num(row["num_gpus"])
    tp = _num(row["tensor_parallel"])
    pp = _num(row["pipeline_parallel"]) or 1
    if tp is None:
        return None, (
            f"tensor_parallel not given for {int(gpus or 0)} GPUs: layout unknown "
            "(MLPerf systems run several instances)"
        )
    if pp > 1:
        return None, f"pipeline parallel {int(pp)}: not yet supported"
    if gpus is not None and gpus != tp * pp:
        return None, f"{int(gpus)} GPUs with TP{int(tp)}: multi-instance, not yet supported"
    hardware = map_hardware(row["hardware"])
    if hardware is None:
        return None, f"hardware '{row['hardware']}' is not mapped to a catalog device"
    dtype, kv_dtype = map_dtype(row["dtype"])
    notes = [sub_note] if sub_note else []

    wfile = row.get("workload_file", "").strip()
    if wfile:
        path = data / wfile
        if not path.exists():
            return None, f"workload file {wfile} is missing from the data folder"
        fmt = "csv" if path.suffix == ".csv" else "jsonl"
        workload = [
            "workload.kind=trace",
            f"workload.trace={{path: '{path}', format: {fmt}}}",
        ]
        workload_text = f"replay {path.name}"
    else:
        isl, osl = _num(row["input_len"]), _num(row["output_len"])
        if isl is None or osl is None:
            return None, "no input/output length and no workload file"
        rate = _num(row["request_rate_rps"])
        count = _num(row["num_requests"])
        if count is None:
            n, why = default_requests(row, rows)
            notes.append(why)
        else:
            n = int(count)
        if n > MAX_REQUESTS:
            notes.append(f"num_requests capped {n} → {MAX_REQUESTS}")
            n = MAX_REQUESTS
        if rate is None or math.isinf(rate):
            arrival = ["workload.arrival.rate=.inf"]
            rate_text = "all at t=0"
        else:
            arrival = ["workload.arrival.process=poisson", f"workload.arrival.rate={rate:g}"]
            rate_text = f"Poisson {rate:g}/s"
            notes.append("fixed lengths stand in for the source's length distribution")
        workload = [
            "workload.kind=synthetic",
            f"workload.num_requests={n}",
            *arrival,
            f"workload.input_len={{dist: fixed, value: {int(isl)}}}",
            f"workload.output_len={{dist: fixed, value: {int(osl)}}}",
        ]
        workload_text = f"fixed {int(isl)}/{int(osl)} ×{n} {rate_text}"

    sched, engine_text, engine_notes = engine_settings(row, spec.max_context)
    return (
        Scenario(
            model,
            hardware,
            int(tp),
            dtype,
            kv_dtype,
            workload,
            workload_text,
            sched,
            engine_text,
            notes + engine_notes,
        ),
        "",
    )


# ----------------------------------------------------------------------------- run + read


def run_scenario(sc: Scenario) -> dict[str, Any]:
    from llmservingsim.config import load_config
    from llmservingsim.simulation import simulate

    start = time.perf_counter()
    res = simulate(load_config(None, sc.overrides()))
    wall = time.perf_counter() - start
    s = res.summary
    done = [r for r in res.metrics.records if r.status == "finished"]
    multi = [r for r in done if r.output_tokens > 1]
    decode_s = sum(r.e2e - r.ttft for r in multi)
    decode_tok = sum(r.output_tokens - 1 for r in multi)
    values: dict[str, float | None] = {
        "output_tokens_per_s": s["output_tokens_per_s"],
        "tpot_token_weighted": decode_s / decode_tok if decode_tok else None,
        "makespan": (max(r.finish_s for r in done) - min(r.arrival_s for r in done))
        if done
        else None,
    }
    for fam in ("ttft_s", "tpot_s", "e2e_s"):
        for stat, v in (s.get(fam) or {}).items():
            values[f"{fam}.{stat}"] = v
    return {
        "values": values,
        "wall_s": wall,
        "preemptions": s["preemptions"],
        "failed": s.get("requests_failed", 0),
        "completed": s.get("requests_completed", len(done)),
        "kv_tokens": s["kv_cache_capacity_tokens"],
        "max_batch": s["max_batch_size"],
    }


def to_published_unit(seconds_or_rate: float, unit: str) -> float:
    """Simulator values are SI (s, tok/s); published ones are ms, s or tok/s."""
    u = unit.strip().lower()
    if u == "ms":
        return seconds_or_rate * 1000.0
    return seconds_or_rate


# ----------------------------------------------------------------------------- report


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.2f}"


def median_table(results: list[Result]) -> tuple[str, dict[str, dict[str, float | int | None]]]:
    stats: dict[str, dict[str, float | int | None]] = {}
    lines = [
        "| family | verified rows | median \\|err\\| verified | all rows | median \\|err\\| all |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for fam in [*FAMILIES, "all"]:
        pick = [r for r in results if (fam == "all" or r.family == fam) and r.error_pct is not None]
        ver = [abs(r.error_pct) for r in pick if r.verified]  # type: ignore[arg-type]
        every = [abs(r.error_pct) for r in pick]  # type: ignore[arg-type]
        if not every:
            continue
        mv = statistics.median(ver) if ver else None
        ma = statistics.median(every)
        stats[fam] = {"verified_n": len(ver), "verified": mv, "all_n": len(every), "all": ma}
        lines.append(
            f"| {fam} | {len(ver)} | {'—' if mv is None else f'{mv:.1f} %'} | {len(every)} | "
            f"{ma:.1f} % |"
        )
    return "\n".join(lines), stats


def render(
    results: list[Result],
    skipped: list[tuple[dict[str, str], str]],
    runs: dict[tuple[str, ...], dict[str, Any]],
    scenarios: dict[tuple[str, ...], Scenario],
) -> tuple[str, dict[str, Any]]:
    out = ["## Per-row comparison", ""]
    out.append(
        "Error = (simulated − measured) / measured. `UNVERIFIED` rows are order-of-magnitude "
        "anchors only (README §7)."
    )
    out.append("")
    out.append("| id | scenario | metric | unit | measured | simulated | error % | |")
    out.append("| --- | --- | --- | --- | ---: | ---: | ---: | --- |")
    for r in results:
        err = r.error_pct
        out.append(
            f"| {r.row['id']} | {r.scenario.label} | {r.row['metric']} | {r.unit} | "
            f"{_fmt(r.measured)} | {_fmt(r.simulated)} | "
            f"{'—' if err is None else f'{err:+.1f}'} | {'' if r.verified else 'UNVERIFIED'} |"
        )
    out += ["", "## Median absolute error per metric family", ""]
    med_text, med = median_table(results)
    out += [med_text, ""]
    out.append(
        "`makespan` (first arrival → last finish of the LLMServingSim run) is the reciprocal of "
        "its throughput row, so it is shown but not one of the four families."
    )
    out += ["", "## Scenarios simulated", ""]
    out.append(
        "| scenario | engine settings | requests done / failed | preemptions | "
        "KV tokens | max batch | wall s | notes |"
    )
    out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for key, sc in scenarios.items():
        run = runs[key]
        out.append(
            f"| {sc.label} | {sc.engine_text} | {run['completed']} / {run['failed']} | "
            f"{run['preemptions']} | {run['kv_tokens']:,} | {run['max_batch']} | "
            f"{run['wall_s']:.1f} | {'; '.join(sc.notes)} |"
        )
    out += ["", "## Rows not reproduced", ""]
    out.append("| id | model | GPUs / TP | metric | reason |")
    out.append("| --- | --- | --- | --- | --- |")
    for row, reason in skipped:
        out.append(
            f"| {row['id']} | {row['model']} | {row['num_gpus']} / {row['tensor_parallel'] or '?'}"
            f" | {row['metric']} | {reason} |"
        )
    data = {
        "rows": [
            {
                "id": r.row["id"],
                "scenario": r.scenario.label,
                "metric": r.row["metric"],
                "family": r.family,
                "unit": r.unit,
                "measured": r.measured,
                "simulated": r.simulated,
                "error_pct": r.error_pct,
                "verified": r.verified,
            }
            for r in results
        ],
        "skipped": [{"id": row["id"], "reason": reason} for row, reason in skipped],
        "median_abs_error_pct": med,
    }
    return "\n".join(out), data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "data",
        nargs="?",
        type=Path,
        default=DEFAULT_DATA,
        help="shared data folder (default: ../shared/data from the repo root)",
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    parser.add_argument("--json", type=Path, help="also write the rows and medians as JSON")
    args = parser.parse_args(argv)

    points = args.data / "reference" / "published_points.csv"
    if not points.exists():
        print(f"accuracy_table: {points} not found; nothing to compare (skipped).")
        return 0
    with points.open(newline="") as fh:
        rows = list(csv.DictReader(fh))

    scenarios: dict[tuple[str, ...], Scenario] = {}
    plan: list[tuple[dict[str, str], tuple[str, ...]]] = []
    skipped: list[tuple[dict[str, str], str]] = []
    for row in rows:
        sc, reason = build_scenario(row, args.data, rows)
        if sc is None:
            skipped.append((row, reason))
            continue
        scenarios.setdefault(sc.key, sc)
        plan.append((row, sc.key))

    runs: dict[tuple[str, ...], dict[str, Any]] = {}
    for i, (key, sc) in enumerate(scenarios.items(), 1):
        print(f"[{i}/{len(scenarios)}] {sc.label}", file=sys.stderr, flush=True)
        runs[key] = run_scenario(sc)

    results: list[Result] = []
    for row, key in plan:
        family, source = METRICS[row["metric"]]
        raw = runs[key]["values"].get(source)
        unit = row["unit"].split("(")[0].strip()
        sim = None if raw is None else to_published_unit(raw, unit)
        results.append(
            Result(row, scenarios[key], family, float(row["value"]), sim, unit, is_verified(row))
        )

    text, data = render(results, skipped, runs, scenarios)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
