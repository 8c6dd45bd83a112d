"""TPOT with and without speculative decoding as the batch grows (docs/speculative.md).

Llama-3.1-8B on one H100, 512-token prompts, 256-token answers, ``batch`` requests arriving
together (max_num_seqs = batch), k = 4. Writes docs/speculative_crossover.csv and an HTML plot
(plotly, loaded from its CDN) next to it, and prints the table.

    .venv/bin/python benchmarks/speculative_crossover.py
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import plotly.graph_objects as go

from llmservingsim.config import load_config
from llmservingsim.simulation import simulate

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
VARIANTS: dict[str, list[str]] = {
    "draft llama-3.2-1b, α=0.8": ["speculative.method=draft", "speculative.acceptance_rate=0.8"],
    "draft llama-3.2-1b, α=0.05": [
        "speculative.method=draft",
        "speculative.acceptance_rate=0.05",
    ],
    "eagle head, α=0.8": ["speculative.method=eagle", "speculative.acceptance_rate=0.8"],
}
DOCS = Path(__file__).resolve().parents[1] / "docs"


def tpot(batch: int, extra: list[str]) -> float:
    overrides = [
        "model=llama-3.1-8b",
        "hardware=h100-sxm",
        f"scheduler.max_num_seqs={batch}",
        f"workload.num_requests={batch}",
        "workload.arrival.rate=.inf",
        "workload.input_len={dist: fixed, value: 512}",
        "workload.output_len={dist: fixed, value: 256}",
        "speculative.num_speculative_tokens=4",
        *extra,
    ]
    return float(simulate(load_config(None, overrides)).summary["tpot_s"]["mean"])


def main() -> int:
    rows = []
    for batch in BATCHES:
        base = tpot(batch, [])
        row: dict[str, float | int] = {"batch": batch, "tpot_ms no speculation": base * 1e3}
        for name, extra in VARIANTS.items():
            row[f"speedup {name}"] = base / tpot(batch, extra)
        rows.append(row)
    columns = list(rows[0])
    with (DOCS / "speculative_crossover.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.3f}" if isinstance(v, float) else v for k, v in row.items()})
    figure = go.Figure()
    for name in VARIANTS:
        key = f"speedup {name}"
        figure.add_scatter(x=BATCHES, y=[r[key] for r in rows], name=name, mode="lines+markers")
    figure.add_hline(y=1.0, line_dash="dot")
    figure.update_layout(
        title="TPOT speedup of speculative decoding (k=4), Llama-3.1-8B on H100",
        xaxis={"title": "batch size (requests decoding together)", "type": "log"},
        yaxis={"title": "TPOT without / with speculation"},
    )
    figure.write_html(DOCS / "speculative_crossover.html", include_plotlyjs="cdn")
    sys.stdout.write("| " + " | ".join(columns) + " |\n")
    sys.stdout.write("|" + "---|" * len(columns) + "\n")
    for row in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()]
        sys.stdout.write("| " + " | ".join(cells) + " |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
