"""The validation table as Markdown (docs/accuracy.md), CSV and a terminal table."""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from llmservingsim.errors import UserError
from llmservingsim.validate.reference import FAMILIES
from llmservingsim.validate.run import Comparison, Validation

CSV_COLUMNS = (
    "id",
    "status",
    "scenario",
    "metric",
    "family",
    "unit",
    "measured",
    "simulated",
    "error_pct",
    "verified",
    "reason",
)


def fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.2f}"


def _err(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}"


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.1f} %"


def summary_rows(v: Validation) -> list[tuple[str, str, str, str, str]]:
    """(family, rows, median |err|, max |err|, verified rows: median |err|)."""
    rows = []
    for family in [*v.families(), None]:
        n = len(v.errors(family))
        if not n:
            continue
        ver = len(v.errors(family, verified_only=True))
        rows.append(
            (
                family or "all",
                str(n),
                _pct(v.median_abs_error(family)),
                _pct(v.max_abs_error(family)),
                f"{_pct(v.median_abs_error(family, True))} ({ver})",
            )
        )
    return rows


def _setting(c: Comparison, key: str) -> str:
    prefix = key + "="
    return next((o[len(prefix) :] for o in c.scenario.overrides if o.startswith(prefix)), "?")


def model_family(model: str) -> str:
    """llama-3.1-70b -> llama, qwen3-235b-a22b -> qwen3, deepseek-v3 -> deepseek."""
    match = re.match(r"[a-z]+\d?(?=[.-]|$)|[a-z]+", model)
    return match[0] if match else model


def _group_rows(
    v: Validation, key: Callable[[Comparison], tuple[str, ...]]
) -> list[tuple[str, ...]]:
    groups: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for c in v.compared:
        if c.error_pct is not None:
            groups[key(c)].append(abs(c.error_pct))
    order = {f: i for i, f in enumerate(FAMILIES)}
    rows = []
    for group in sorted(groups, key=lambda g: (*g[:-1], order.get(g[-1], 99))):
        errors = groups[group]
        rows.append((*group, str(len(errors)), _pct(statistics.median(errors)), _pct(max(errors))))
    return rows


def set_rows(v: Validation) -> list[tuple[str, ...]]:
    """(reference set, metric family, rows, median |error|, max |error|)."""
    return _group_rows(v, lambda c: (c.row.get("set") or "published", c.family))


def breakdown_rows(v: Validation) -> list[tuple[str, ...]]:
    """(set, GPU, engine, model family, metric family, rows, median |error|, max |error|)."""
    return _group_rows(
        v,
        lambda c: (
            c.row.get("set") or "published",
            _setting(c, "hardware"),
            c.scenario.engine_name,
            model_family(_setting(c, "model")),
            c.family,
        ),
    )


def markdown(v: Validation, row_sets: tuple[str, ...] | None = None) -> str:
    """The tables; per-row and per-scenario lines only for the reference sets in ``row_sets``
    (None: all), the summaries always over every row."""

    def listed(c: Comparison) -> bool:
        return row_sets is None or (c.row.get("set") or "published") in row_sets

    out = [
        "| id | scenario | metric | unit | measured | simulated | error % | |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for c in v.compared:
        if not listed(c):
            continue
        out.append(
            f"| {c.row['id']} | {c.scenario.label} | {c.row['metric']} | {c.unit} | "
            f"{fmt(c.measured)} | {fmt(c.simulated)} | {_err(c.error_pct)} | "
            f"{'' if c.verified else 'UNVERIFIED'} |"
        )
    out += [
        "",
        "| family | rows | median \\|error\\| | max \\|error\\| "
        "| verified rows: median \\|error\\| |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    out += [f"| {' | '.join(r)} |" for r in summary_rows(v)]
    out += [
        "",
        "| reference set | family | rows | median \\|error\\| | max \\|error\\| |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    out += [f"| {' | '.join(r)} |" for r in set_rows(v)]
    out += [
        "",
        "| set | GPU | engine | model family | metric | rows | median \\|error\\| "
        "| max \\|error\\| |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    out += [f"| {' | '.join(r)} |" for r in breakdown_rows(v)]
    out += [
        "",
        "| scenario | engine settings | done / failed | preemptions | KV tokens | max batch | "
        "wall s | notes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    seen: set[tuple[str, ...]] = set()
    for c in v.compared:
        key = c.scenario.key
        if key in seen or not listed(c):
            continue
        seen.add(key)
        run = v.runs[key]
        s = run.summary
        out.append(
            f"| {c.scenario.label} | {c.scenario.engine} | {s['requests_completed']} / "
            f"{s['requests_failed']} | {s['preemptions']} | {s['kv_cache_capacity_tokens']:,} | "
            f"{s['max_batch_size']} | {run.wall_s:.1f} | {'; '.join(c.scenario.notes)} |"
        )
    if v.skipped:
        # one line per reason: the reference sets skip hundreds of rows for a few reasons
        by_reason: dict[str, list[dict[str, str]]] = defaultdict(list)
        for sk in v.skipped:
            by_reason[sk.reason].append(sk.row)
        out += [
            "",
            "| skipped rows | first of them | model | GPUs / TP | reason |",
            "| ---: | --- | --- | --- | --- |",
        ]
        for reason, rows in by_reason.items():
            r = rows[0]
            out.append(
                f"| {len(rows)} | {r['id']} | {r['model']} | "
                f"{r['num_gpus']} / {r['tensor_parallel'] or '?'} | {reason} |"
            )
    for why in v.skipped_sets:
        out.append(f"\nReference set skipped: {why}.")
    return "\n".join(out) + "\n"


BEGIN, END = "<!-- validate:begin -->", "<!-- validate:end -->"


def update_document(path: Path, v: Validation) -> None:
    """Replace the text between the validate markers of a Markdown file with the table."""
    text = path.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise UserError(f"{path}: no '{BEGIN}' ... '{END}' section to update")
    # rows of the large sets (hundreds) stay in validation.md; the document keeps their summaries
    body = f"{BEGIN}\n\n{markdown(v, row_sets=('published',))}\n{END}"
    path.write_text(text[:start] + body + text[end + len(END) :])


def write_csv(v: Validation, path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for c in v.compared:
            writer.writerow(
                [
                    c.row["id"],
                    "compared",
                    c.scenario.label,
                    c.row["metric"],
                    c.family,
                    c.unit,
                    repr(c.measured),
                    "" if c.simulated is None else repr(c.simulated),
                    "" if c.error_pct is None else f"{c.error_pct:.3f}",
                    c.verified,
                    "",
                ]
            )
        for sk in v.skipped:
            r = sk.row
            writer.writerow(
                [r["id"], "skipped", "", r["metric"], "", "", r["value"], "", "", "", sk.reason]
            )


def terminal_table(v: Validation) -> Table:
    table = Table(title=f"validation against {v.reference.name}", header_style="bold")
    for col in ("scenario", "metric", "measured", "simulated", "error %"):
        table.add_column(col, justify="left" if col in ("scenario", "metric") else "right")
    for c in v.compared:
        mark = "" if c.verified else " *"
        table.add_row(
            c.row["id"] + mark,
            f"{c.row['metric']} ({c.unit})",
            fmt(c.measured),
            fmt(c.simulated),
            _err(c.error_pct),
        )
    return table


def breakdown_table(v: Validation) -> Table:
    table = Table(title="absolute error by GPU, engine, model family", header_style="bold")
    for col in ("set", "GPU", "engine", "model", "metric", "rows", "median", "max"):
        table.add_column(col, justify="right" if col in ("rows", "median", "max") else "left")
    for row in breakdown_rows(v):
        table.add_row(*row)
    return table


def set_table(v: Validation) -> Table:
    table = Table(title="absolute error by reference set", header_style="bold")
    for col in ("set", "family", "rows", "median", "max"):
        table.add_column(col, justify="right" if col in ("rows", "median", "max") else "left")
    for row in set_rows(v):
        table.add_row(*row)
    return table


def summary_table(v: Validation) -> Table:
    table = Table(title="absolute error", header_style="bold")
    for col in ("family", "rows", "median", "max", "verified: median (rows)"):
        table.add_column(col, justify="left" if col == "family" else "right")
    for row in summary_rows(v):
        table.add_row(*row)
    return table
