"""``llmservingsim sweep`` and ``llmservingsim plan`` (registered on the app in cli.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from llmservingsim.errors import ConfigError, UserError
from llmservingsim.interrupt import stop_on_signals

# The sweep machinery (pyarrow, the simulation, plotly for plan.html) is imported by the
# commands that run it, so `llmservingsim --help` starts without it.
if TYPE_CHECKING:
    from rich.table import Table

    from llmservingsim.sweep.plan import PlanResult
    from llmservingsim.sweep.points import SweepPoint
    from llmservingsim.sweep.rows import Row

err_console = Console(stderr=True)

ConfigArg = Annotated[
    Path | None, typer.Argument(help="Base scenario YAML; omit for the default scenario.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a base config key, as on `run` (repeatable)."),
]
ExecutorOpt = Annotated[
    str,
    typer.Option(
        help="Where simulations run: local (a process pool), ray, or an executor a plugin "
        "registers (docs/extending.md)."
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(help="Parallel simulations (local default: one per core; ray: tasks in flight)."),
]
RayAddressOpt = Annotated[
    str | None, typer.Option(help="Ray cluster address for --executor ray (default: local Ray).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no tables.")]


def _fail(exc: UserError) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=exc.exit_code)


@contextmanager
def _progress(label: str, total: int, show: bool) -> Iterator[Callable[[Row], None]]:
    """A rich bar over points; a no-op hook when hidden (``--quiet`` or not a terminal)."""
    if not show:
        yield lambda _row: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda _row: bar.advance(task)


def _out_dir(out: Path | None, kind: str) -> Path:
    from llmservingsim.preflight import check_out_dir

    out_dir = out or Path("results") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_out_dir(out_dir)
    return out_dir


# ----------------------------------------------------------------------------- sweep


def sweep_command(
    config: ConfigArg = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            help="key=v1,v2,... (values as on --set; a..b and a..b*k are integer ranges). "
            "Repeat for more keys.",
        ),
    ] = None,
    zipped: Annotated[
        bool, typer.Option("--zip", help="Pair the --grid lists (equal lengths), no product.")
    ] = False,
    set_: SetOpt = None,
    executor: ExecutorOpt = "local",
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default ./results/sweep-<timestamp>).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Skip the points already in OUT/sweep.parquet.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Simulate every point of a grid of config overrides; one row per point in sweep.parquet."""
    from llmservingsim.sweep.executors import ExecutorOptions, make_executor
    from llmservingsim.sweep.grid import grid_points, parse_axes
    from llmservingsim.sweep.points import build_points
    from llmservingsim.sweep.runner import pending_points, run_sweep
    from llmservingsim.sweep.scenario import Scenario
    from llmservingsim.sweep.store import ResultStore

    with stop_on_signals() as stop:
        try:
            if resume and out is None:
                raise ConfigError("--resume needs --out DIR, the directory of the sweep to finish")
            axes = parse_axes(grid or [], "--grid")
            if not axes:
                raise ConfigError("sweep needs at least one --grid key=v1,v2,...")
            points = build_points(Scenario.load(config, set_ or []), grid_points(axes, zipped))
            out_dir = _out_dir(out, "sweep")
            store = ResultStore.open(out_dir / "sweep.parquet", resume)
            todo = pending_points(points, store)
            runner = make_executor(executor, ExecutorOptions(workers, ray_address))
            try:
                with _progress("sweep", len(todo), not quiet and sys.stderr.isatty()) as hook:
                    outcome = run_sweep(points, store, runner, on_row=hook)
            finally:
                runner.close()
        except UserError as exc:
            raise _fail(exc) from None
        if not quiet:
            _print_sweep(points, store.rows, [a.key for a in axes])
            skipped = f", {outcome.skipped} already done" if outcome.skipped else ""
            Console().print(f"{outcome.ran} points simulated{skipped} → {store.path}")
        errors = sum(1 for r in store.rows if r.get("status") == "error")
        if errors:
            err_console.print(f"{errors} points failed: see the status and error columns")
        if outcome.stopped:
            err_console.print(
                f"{outcome.stopped}: {len(store.rows)} of {len(points)} points saved in "
                f"{store.path}; finish with --resume --out {out_dir}"
            )
            raise typer.Exit(code=stop.exit_code)


def _ms(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value * 1e3:,.1f}"


def _num(value: Any, fmt: str = ",.2f") -> str:
    return "-" if not isinstance(value, int | float) else format(value, fmt)


def _short_key(key: str, keys: Sequence[str]) -> str:
    """The last part of a dotted key when that is unambiguous (rate, max_num_seqs)."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _rate(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _print_sweep(points: Sequence[SweepPoint], rows: Sequence[Row], keys: list[str]) -> None:
    from rich.table import Table

    by_id = {r["point_id"]: r for r in rows}
    table = Table(header_style="bold")
    for key in keys:
        table.add_column(_short_key(key, keys), justify="right")
    for col in ("status", "req/s", "out tok/s", "TTFT p99 ms", "TPOT p99 ms"):
        table.add_column(col, justify="right")
    shown = [by_id[p.point_id] for p in points if p.point_id in by_id]
    for row in shown[:40]:
        table.add_row(
            *(str(row.get(k)) for k in keys),
            str(row.get("status")),
            _num(row.get("request_throughput")),
            _num(row.get("output_tokens_per_s"), ",.0f"),
            _ms(row.get("ttft_s_p99")),
            _ms(row.get("tpot_s_p99")),
        )
    if len(shown) > 40:
        table.caption = f"… and {len(shown) - 40} more rows in sweep.parquet"
    Console().print(table)


# ----------------------------------------------------------------------------- plan


def plan_command(
    config: ConfigArg = None,
    slo: Annotated[
        list[str] | None,
        typer.Option(
            "--slo", help="Latency objective METRIC_STAT=SECONDS, e.g. ttft_p99=0.5 (repeatable)."
        ),
    ] = None,
    search: Annotated[
        list[str] | None,
        typer.Option(
            "--search",
            help="Candidate values key=v1,v2 or an integer range a..b / a..b*k (repeatable).",
        ),
    ] = None,
    target_rate: Annotated[
        float | None,
        typer.Option(help="Serve this rate (req/s): find the smallest value of --minimize."),
    ] = None,
    max_rate: Annotated[
        bool, typer.Option("--max-rate", help="Find each candidate's max rate (the default).")
    ] = False,
    minimize: Annotated[
        str | None,
        typer.Option(help="With --target-rate: the integer --search key to minimize."),
    ] = None,
    rate_tolerance: Annotated[
        float, typer.Option(help="Relative precision of the max-rate bisection.")
    ] = 0.05,
    set_: SetOpt = None,
    executor: ExecutorOpt = "local",
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default ./results/plan-<timestamp>).")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Cheapest deployments that meet latency SLOs: plan.parquet, plan.html, Pareto table."""
    from llmservingsim.sweep.executors import ExecutorOptions, make_executor
    from llmservingsim.sweep.grid import parse_axes
    from llmservingsim.sweep.plan import plan_settings, plan_tasks, run_plan
    from llmservingsim.sweep.plan_figure import write_plan_html
    from llmservingsim.sweep.scenario import Scenario
    from llmservingsim.sweep.slo import parse_slos
    from llmservingsim.sweep.store import rows_to_table, write_table_atomic

    with stop_on_signals() as stop:
        try:
            if max_rate and target_rate is not None:
                raise ConfigError("give either --max-rate or --target-rate, not both")
            slos = parse_slos(slo or [])
            axes = parse_axes(search or [], "--search")
            settings, candidate_axes = plan_settings(
                slos, axes, target_rate, minimize, rate_tolerance
            )
            tasks = plan_tasks(Scenario.load(config, set_ or []), candidate_axes, settings)
            out_dir = _out_dir(out, "plan")
            runner = make_executor(executor, ExecutorOptions(workers, ray_address))
            try:
                with _progress("plan", len(tasks), not quiet and sys.stderr.isatty()) as hook:
                    result = run_plan(tasks, runner, on_row=hook)
            finally:
                runner.close()
        except UserError as exc:
            raise _fail(exc) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: no plan written")
            raise typer.Exit(code=stop.exit_code) from None
        out_dir.mkdir(parents=True, exist_ok=True)
        write_table_atomic(rows_to_table(result.rows), out_dir / "plan.parquet", result.metadata())
        write_plan_html(
            out_dir / "plan.html",
            result.rows,
            result.keys,
            result.cost_column,
            result.latency_column,
            [(s.column, s.limit_s) for s in slos],
        )
        if not quiet:
            Console().print(plan_table(result, [s.column for s in slos]))
            Console().print(f"outputs: {out_dir}/plan.parquet, plan.html")


_STATUS_TEXT = {"does_not_fit": "does not fit", "slo_unreachable": "SLOs unmet"}


def plan_table(result: PlanResult, slo_columns: list[str]) -> Table:
    """One row per candidate, the Pareto front first; notes are numbered under the table."""
    from rich.table import Table

    cost_label = {
        "usd_per_million_output_tokens": "$/1M out tok",
        "cost_per_hour_usd": "$/h",
    }[result.cost_column]
    latency = result.latency_column.replace("_s_", " ")
    table = Table(title=f"★ Pareto front: {cost_label} vs {latency}", header_style="bold")
    table.add_column("★")
    for key in result.keys:
        table.add_column(_short_key(key, result.keys), justify="right")
    table.add_column("req/s", justify="right")
    for column in slo_columns:
        table.add_column(column.replace("_s_", " ") + " ms", justify="right")
    for col in ("GPUs", "$/h", "$/1M out tok", "note"):
        table.add_column(col, justify="right")
    notes: list[str] = []
    for row in result.rows:
        note = str(row.get("note") or "")
        if note:
            notes.append(note)
        ok = row["status"] == "ok"
        table.add_row(
            "★" if row.get("pareto") else "",
            *(str(row.get(k)) for k in result.keys),
            _rate(row.get("rate_req_s")) if ok else _STATUS_TEXT.get(row["status"], "?"),
            *(_ms(row.get(c)) for c in slo_columns),
            str(row.get("num_devices")),
            _num(row.get("cost_per_hour_usd")),
            _num(row.get("usd_per_million_output_tokens"), ",.3f"),
            f"[{len(notes)}]" if note else "",
        )
    if notes:
        table.caption = "\n".join(f"[{i}] {n}" for i, n in enumerate(notes, 1))
        table.caption_justify = "left"
    return table
