"""Numbers quoted in README.md and docs/*.md, re-run and compared, so the docs cannot drift.

Each :class:`Quote` names a doc, a passage quoted from it (which must still be there, word for
word) and, for each number in the passage, the metric of a simulation that produces it. The
test re-runs the simulation and checks the number within the quote's tolerance (plus half a
unit of the last printed digit, for rounding). The simulator is deterministic, so the tolerance
only absorbs deliberate model changes small enough not to change the story; a larger change
fails here and the doc gets the new number.

The cheap runs (each a few seconds) run with the suite; the slow ones (``slow=True``: a capacity
plan of dozens of simulations) run with ``DOC_NUMBERS=all``.
``python tests/app/test_docs_numbers.py`` prints every quoted number next to a fresh value
(``--all`` includes the slow ones): the way to
refresh a doc after a model change.

Wall times are measurements of a machine, not of the model: the docs state them with the
machine and the command (docs/performance.md), and they are not checked here.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmservingsim.config import load_config
from llmservingsim.errors import InputWarning
from llmservingsim.simulation import simulate

ROOT = Path(__file__).resolve().parents[2]

Summary = dict[str, Any]
Metric = Callable[[Summary], float]

FIXED_1000 = [
    "workload.arrival.rate=.inf",
    "workload.input_len={dist: fixed, value: 1000}",
    "workload.output_len={dist: fixed, value: 1000}",
]
# TensorRT-LLM's engine settings of the published Mixtral rows (docs/accuracy.md)
TRTLLM = [
    "scheduler.policy=no_evict",
    "scheduler.max_num_seqs=2048",
    "scheduler.max_num_batched_tokens=8192",
    "scheduler.block_size=32",
]

# docs/workloads.md "Priority scheduling": two clients at twice what one H100 sustains.
PRIORITY_RUN = [
    "model=llama-3.2-1b", "seed=3", "workload.num_requests=1500", "workload.arrival.rate=250",
]  # fmt: skip
PRIORITY_CLIENTS = (
    "workload.clients=[{name: interactive, share: 0.3, priority: 0, slo: {ttft_s: 0.5}},"
    " {name: batch, share: 0.7, priority: 1}]"
)

RUNS: dict[str, tuple[str | None, list[str]]] = {
    "default": (None, []),
    "prefix-on": ("examples/prefix_chat.yaml", []),
    "prefix-off": ("examples/prefix_chat.yaml", ["scheduler.enable_prefix_caching=false"]),
    "mixtral-fp8-h100": (
        None,
        ["model=mixtral-8x7b", "dtype=fp8", "cluster.tensor_parallel=2",
         "workload.num_requests=3000", *FIXED_1000, *TRTLLM],
    ),
    "mixtral-fp8-h100-block": (
        None,
        ["model=mixtral-8x7b", "dtype=fp8", "fp8_scaling=block", "cluster.tensor_parallel=2",
         "workload.num_requests=3000", *FIXED_1000, *TRTLLM],
    ),
    "mixtral-fp16-a100": (
        None,
        ["model=mixtral-8x7b", "dtype=fp16", "hardware=a100-80gb", "cluster.tensor_parallel=2",
         "workload.num_requests=3000", *FIXED_1000, *TRTLLM],
    ),
    **{
        f"qwen3-moe-{name}": (
            None,
            ["model=qwen3-30b-a3b", "workload.num_requests=1000", "workload.arrival.rate=.inf",
             "workload.input_len={dist: fixed, value: 1000}",
             "workload.output_len={dist: fixed, value: 500}", *layout],
        )
        for name, layout in (
            ("tp2-ep2", ["cluster.tensor_parallel=2", "cluster.expert_parallel=2"]),
            ("2-replicas", ["cluster.instances=2"]),
            ("dp2-ep2", ["cluster.data_parallel=2", "cluster.expert_parallel=2"]),
        )
    },
    "rtx4090-llama8b": (
        None,
        ["model=llama-3.1-8b", "hardware=rtx-4090", "engine=vllm@0.19",
         "workload.num_requests=100", "workload.arrival.rate=4",
         "workload.input_len={dist: fixed, value: 512}",
         "workload.output_len={dist: fixed, value: 128}"],
    ),
    "cluster-16": (
        None,
        ["cluster.instances=16", "cluster.router=least_outstanding", "workload.arrival.rate=120"],
    ),
    "lora-base": ("examples/multi_lora.yaml", ["workload.lora=null"]),
    "lora-zipf-4": ("examples/multi_lora.yaml", []),
    "lora-zipf-16": ("examples/multi_lora.yaml", ["lora.max_loras=16"]),
    "overload-bounded": (
        None,
        ["model=llama-3.2-1b", "workload.num_requests=50000", "workload.arrival.rate=12500",
         "scheduler.max_queue=256", "scheduler.request_timeout_s=10"],
    ),
    "priority-two-classes": (None, [*PRIORITY_RUN, PRIORITY_CLIENTS, "scheduler.policy=priority"]),
    "priority-fcfs": (
        None, [*PRIORITY_RUN, PRIORITY_CLIENTS.replace("priority: 1", "priority: 0")]
    ),
}  # fmt: skip
"""Simulations the quotes come from: (scenario file, --set overrides)."""

PLAN_60 = [
    "plan", "--set", "workload.num_requests=3000", "--slo", "ttft_p99=0.5",
    "--slo", "tpot_p99=0.05", "--target-rate", "60", "--search", "cluster.instances=1..16",
    "--search", "hardware=h100-sxm,a100-80gb,l40s",
]  # fmt: skip
"""The capacity plan of README.md and docs/sweep.md (slow: ~40 simulations of 3,000 requests)."""

PLAN_MAX = [
    "plan", "--set", "workload.num_requests=2000", "--slo", "ttft_p99=0.5",
    "--slo", "tpot_p99=0.05", "--search", "hardware=h100-sxm,a100-80gb,l40s",
    "--search", "cluster.tensor_parallel=1,2",
]  # fmt: skip
"""The max-rate plan of docs/sweep.md (slow: a bisection per candidate)."""

PLANS = {"plan-60": PLAN_60, "plan-max": PLAN_MAX}


@dataclass(frozen=True)
class Quote:
    doc: str
    text: str
    """Quoted from the doc, word for word; holds each number of ``values`` as written."""
    run: str
    """A key of :data:`RUNS` or of :data:`PLANS`."""
    values: dict[str, Metric]
    """The number as written in ``text`` → the metric it quotes, in the doc's unit."""
    rel: float = 0.02
    """Stated tolerance, relative."""
    slow: bool = False


def ms(key: str, stat: str) -> Metric:
    return lambda s: float(s[key][stat]) * 1e3


def client(name: str, key: str, stat: str | None = None) -> Metric:
    """A number of summary.json's ``clients.<name>``, in its own unit."""
    return lambda s: float(
        s["clients"][name][key] if stat is None else s["clients"][name][key][stat]
    )


def plan_row(hardware: str, column: str, scale: float = 1.0, tp: int = 1) -> Metric:
    return lambda rows: float(rows[f"{hardware}/tp{tp}"][column]) * scale


QUOTES: list[Quote] = [
    Quote(
        "docs/calibration.md",
        "now decodes at a mean TPOT of 23.8 ms, TTFT 100 ms.",
        "rtx4090-llama8b",
        {"23.8": ms("tpot_s", "mean"), "100": ms("ttft_s", "mean")},
    ),
    Quote(
        "docs/workloads.md",
        "| `priority` | 0.020 s | 1.00 | 0.74 s |",
        "priority-two-classes",
        {
            "0.020": client("interactive", "ttft_s", "p99"),
            "1.00": client("interactive", "slo_attainment"),
            "0.74": client("batch", "ttft_s", "p50"),
        },
    ),
    Quote(
        "docs/workloads.md",
        "| `vllm` (both clients at priority 0) | 1.6 s | 0.53 | 0.42 s |",
        "priority-fcfs",
        {
            "1.6": client("interactive", "ttft_s", "p99"),
            "0.53": client("interactive", "slo_attainment"),
            "0.42": client("batch", "ttft_s", "p50"),
        },
    ),
    Quote(
        "README.md",
        "│ TTFT         │    15.6 │    13.3 │    22.3 │     72.0 │",
        "default",
        {
            "15.6": ms("ttft_s", "mean"),
            "13.3": ms("ttft_s", "p50"),
            "22.3": ms("ttft_s", "p90"),
            "72.0": ms("ttft_s", "p99"),
        },
    ),
    Quote(
        "README.md",
        "│ TPOT         │     7.8 │     7.8 │     8.3 │      8.9 │",
        "default",
        {"7.8": ms("tpot_s", "mean"), "8.3": ms("tpot_s", "p90"), "8.9": ms("tpot_s", "p99")},
    ),
    Quote(
        "README.md",
        "│ E2E          │ 2,236.8 │ 1,433.8 │ 4,810.7 │ 15,582.6 │",
        "default",
        {"2,236.8": ms("e2e_s", "mean"), "15,582.6": ms("e2e_s", "p99")},
    ),
    Quote(
        "README.md",
        "7.77 req/s · 2,209 out tok/s",
        "default",
        {
            "7.77": lambda s: s["request_throughput"],
            "2,209": lambda s: s["output_tokens_per_s"],
        },
    ),
    Quote(
        "README.md",
        "129.2 s in 16,590 steps",
        "default",
        {"129.2": lambda s: s["simulated_time_s"], "16,590": lambda s: s["iterations"]},
    ),
    Quote(
        "README.md",
        "455,792 tokens, peak use 5%",
        "default",
        {
            "455,792": lambda s: s["memory"]["kv_tokens"],
            "5": lambda s: 100 * s["kv_cache_peak_util"],
        },
    ),
    Quote(
        "README.md",
        "0.017 kWh · $0.11",
        "default",
        {"0.017": lambda s: s["energy_j"] / 3.6e6, "0.11": lambda s: s["cost_usd"]},
        rel=0.05,
    ),
    Quote(
        "docs/kv_cache.md",
        "| prefix caching on | 16.2 ms | 33.4 ms | 9.7 ms | 93.8 % |",
        "prefix-on",
        {
            "16.2": ms("ttft_s", "mean"),
            "33.4": ms("ttft_s", "p99"),
            "9.7": ms("tpot_s", "mean"),
            "93.8": lambda s: 100 * s["prefix_cache_hit_rate"],
        },
    ),
    Quote(
        "docs/kv_cache.md",
        "| prefix caching off | 126.0 ms | 453.6 ms | 28.4 ms | — |",
        "prefix-off",
        {
            "126.0": ms("ttft_s", "mean"),
            "453.6": ms("ttft_s", "p99"),
            "28.4": ms("tpot_s", "mean"),
        },
    ),
    Quote(
        "docs/models.md",
        "| Mixtral-8x7B FP8, 2× H100 TP2 | 16,002 | 15,771 |",
        "mixtral-fp8-h100",
        {"16,002": lambda s: s["output_tokens_per_s"]},
    ),
    Quote(
        "docs/models.md",
        "and Qwen3's FP8 checkpoints run (1.1–1.8× slower), the same run gives 13,107 tok/s.",
        "mixtral-fp8-h100-block",
        {"13,107": lambda s: s["output_tokens_per_s"]},
    ),
    Quote(
        "docs/models.md",
        "| Mixtral-8x7B FP16, 2× A100 TP2 | 3,399 | 3,155 |",
        "mixtral-fp16-a100",
        {"3,399": lambda s: s["output_tokens_per_s"]},
    ),
    *(
        Quote(
            "docs/models.md",
            row,
            f"qwen3-moe-{name}",
            {
                tok_s: lambda s: s["output_tokens_per_s"],
                tpot: ms("tpot_s", "mean"),
                kv: lambda s: s["kv_cache_capacity_tokens"],
            },
        )
        for row, name, tok_s, tpot, kv in (
            (
                "| `tensor_parallel: 2, expert_parallel: 2` | 8,814 | 27.5 | 929,520 |",
                "tp2-ep2",
                "8,814",
                "27.5",
                "929,520",
            ),
            (
                "| `instances: 2` (TP1 replicas) | 6,013 | 38.6 | 300,352 |",
                "2-replicas",
                "6,013",
                "38.6",
                "300,352",
            ),
            (
                "| `data_parallel: 2, expert_parallel: 2` | 12,885 | 35.9 | 890,176 |",
                "dp2-ep2",
                "12,885",
                "35.9",
                "890,176",
            ),
        )
    ),
    Quote(
        "docs/user-guide.md",
        "reports 45.46 req/s completed at 120 req/s offered",
        "cluster-16",
        {"45.46": lambda s: s["request_throughput"]},
    ),
    Quote(
        "docs/lora.md",
        "| base model, no adapters | 14.6 | 72.5 | 7.23 | — | — | 0.00 | 455,792 |",
        "lora-base",
        {
            "14.6": ms("ttft_s", "mean"),
            "72.5": ms("ttft_s", "p99"),
            "7.23": ms("tpot_s", "mean"),
            "455,792": lambda s: s["memory"]["kv_tokens"],
        },
    ),
    Quote(
        "docs/lora.md",
        "| 100 Zipf adapters, max_loras 4 | 4,667.9 | 14,621.9 | 8.53 | 313 | 89 | 4.21 |",
        "lora-zipf-4",
        {
            "4,667.9": ms("ttft_s", "mean"),
            "14,621.9": ms("ttft_s", "p99"),
            "8.53": ms("tpot_s", "mean"),
            "313": lambda s: s["lora_adapter_loads"],
            "89": lambda s: s["lora_disk_loads"],
            "4.21": lambda s: s["lora_load_stall_s"],
        },
    ),
    Quote(
        "docs/lora.md",
        "| 100 Zipf adapters, max_loras 16 | 25.6 | 89.8 | 8.61 | 250 | 89 | 4.12 | 445,552 |",
        "lora-zipf-16",
        {
            "25.6": ms("ttft_s", "mean"),
            "8.61": ms("tpot_s", "mean"),
            "250": lambda s: s["lora_adapter_loads"],
            "445,552": lambda s: s["memory"]["kv_tokens"],
        },
    ),
    Quote(
        "docs/robustness.md",
        "| `max_queue: 256`, `request_timeout_s: 10` | 1,124 | 48,876 | 1.65 s | 10.8 s |",
        "overload-bounded",
        {
            "1,124": lambda s: s["requests_completed"],
            "48,876": lambda s: s["requests_rejected"],
            "1.65": lambda s: s["ttft_s"]["p99"],
            "10.8": lambda s: s["simulated_time_s"],
        },
    ),
    Quote(
        "docs/sweep.md",
        "│ ★ │  h100-sxm │         2 │    60 │        81.8 │        13.1 │    2 │ 6.00 │",
        "plan-60",
        {
            "2": plan_row("h100-sxm", "cluster.instances"),
            "81.8": plan_row("h100-sxm", "ttft_s_p99", 1e3),
            "13.1": plan_row("h100-sxm", "tpot_s_p99", 1e3),
        },
        slow=True,
    ),
    Quote(
        "docs/sweep.md",
        "│   │ a100-80gb │         4 │    60 │       236.3 │        29.4 │    4 │ 7.20 │",
        "plan-60",
        {
            "4": plan_row("a100-80gb", "cluster.instances"),
            "236.3": plan_row("a100-80gb", "ttft_s_p99", 1e3),
            "29.4": plan_row("a100-80gb", "tpot_s_p99", 1e3),
        },
        slow=True,
    ),
    Quote(
        "docs/sweep.md",
        "│   │      l40s │         6 │    60 │       251.3 │        47.0 │    6 │ 6.00 │",
        "plan-60",
        {
            "6": plan_row("l40s", "cluster.instances"),
            "251.3": plan_row("l40s", "ttft_s_p99", 1e3),
            "47.0": plan_row("l40s", "tpot_s_p99", 1e3),
        },
        slow=True,
    ),
    Quote(
        "docs/sweep.md",
        "| ★ | h100-sxm | 1 | 45.3 | 122.6 | 22.2 | 1 | 3.00 | 0.068 |",
        "plan-max",
        {
            "45.3": plan_row("h100-sxm", "rate_req_s"),
            "0.068": plan_row("h100-sxm", "usd_per_million_output_tokens"),
        },
        rel=0.05,  # the bisection's --rate-tolerance
        slow=True,
    ),
    Quote(
        "docs/sweep.md",
        "| | a100-80gb | 2 | 32 | 216.0 | 31.0 | 2 | 3.60 | 0.115 |",
        "plan-max",
        {
            "32": plan_row("a100-80gb", "rate_req_s", tp=2),
            "0.115": plan_row("a100-80gb", "usd_per_million_output_tokens", tp=2),
        },
        rel=0.05,
        slow=True,
    ),
]


@functools.cache
def fresh(run: str) -> Any:
    """The summary of a :data:`RUNS` simulation, or a plan's rows by ``hardware/tpN``."""
    if run in PLANS:
        import pyarrow.parquet as pq

        with tempfile.TemporaryDirectory() as out:
            subprocess.run(
                [sys.executable, "-m", "llmservingsim", *PLANS[run], "--out", out, "-q"],
                check=True,
            )
            rows = pq.read_table(Path(out) / "plan.parquet").to_pylist()
        return {f"{r['hardware']}/tp{r.get('cluster.tensor_parallel', 1)}": r for r in rows}
    path, overrides = RUNS[run]
    cfg = load_config(ROOT / path if path else None, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        return simulate(cfg).summary


def _value(number: str) -> float:
    return float(number.replace(",", ""))


def _rounding(number: str) -> float:
    """Half a unit of the last digit written."""
    _, dot, decimals = number.partition(".")
    return 0.5 * 10.0 ** -(len(decimals) if dot else 0)


def within(number: str, actual: float, rel: float) -> bool:
    expected = _value(number)
    return math.isclose(actual, expected, rel_tol=rel) or abs(actual - expected) <= _rounding(
        number
    ) + rel * abs(expected)


IDS = [f"{q.doc}:{q.run}:{'/'.join(q.values)}" for q in QUOTES]


@pytest.mark.parametrize("quote", QUOTES, ids=IDS)
def test_the_quote_is_still_in_its_doc(quote: Quote) -> None:
    text = (ROOT / quote.doc).read_text()
    assert quote.text in text, f"{quote.doc} no longer quotes {quote.text!r}: update QUOTES"
    for number in quote.values:
        assert number in quote.text


@pytest.mark.parametrize("quote", QUOTES, ids=IDS)
def test_the_quoted_numbers_match_a_fresh_run(quote: Quote) -> None:
    if quote.slow and os.environ.get("DOC_NUMBERS") != "all":
        pytest.skip("slow: DOC_NUMBERS=all runs it")
    result = fresh(quote.run)
    for number, metric in quote.values.items():
        actual = metric(result)
        assert within(number, actual, quote.rel), (
            f"{quote.doc} quotes {number} in {quote.text!r}; a fresh run gives {actual:,.6g} "
            f"(tolerance {quote.rel:.0%}): update the doc and QUOTES"
        )


def main() -> None:
    everything = "--all" in sys.argv
    for quote in QUOTES:
        if quote.slow and not everything:
            continue
        result = fresh(quote.run)
        fresh_values = ", ".join(
            f"{number} → {metric(result):,.6g}" for number, metric in quote.values.items()
        )
        print(f"{quote.doc}: {quote.text}\n    {fresh_values}")
    print(json.dumps({"quotes": len(QUOTES)}))


if __name__ == "__main__":
    main()
