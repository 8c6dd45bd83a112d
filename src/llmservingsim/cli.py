"""Command line: ``llmservingsim run | report | catalog | sweep | plan | calibrate | validate``.

User mistakes (bad config, unreadable trace, a model that does not fit) print one line on
stderr and exit non-zero; tracebacks are for bugs only.
"""

from __future__ import annotations

import importlib
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from llmservingsim import __version__
from llmservingsim.calibrate.command import calibrate_command
from llmservingsim.errors import ConfigError, InputWarning, UserError, one_line
from llmservingsim.interrupt import stop_on_signals
from llmservingsim.sweep.commands import plan_command, sweep_command
from llmservingsim.validate.command import validate_command

# Start-up time: only typer, rich's console and the command signatures are imported here. The
# config (pydantic models), the engine, pyarrow, plotly and scipy are imported by the commands
# that use them, so `--help` and `catalog` start in a fraction of the time a run needs
# (docs/performance.md, "Start-up"; tests/test_startup.py checks what `--help` imports).
if TYPE_CHECKING:
    from rich.table import Table

    from llmservingsim.config import SimConfig
    from llmservingsim.simulation import SimulationResult


def _click_exceptions() -> Any:
    """click's exception classes: typer >= 0.20 ships its own copy of click, older ones use it."""
    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


_CLICK = _click_exceptions()
# click's Abort (Ctrl-C at a prompt): typer >= 0.20 keeps it in typer.exceptions.
_ABORT: type[BaseException] = getattr(_CLICK, "Abort", typer.Abort)


class _OneLineErrors(typer.core.TyperGroup):
    """Usage errors (``--seed abc``, an unknown option) as one ``error:`` line, exit 2, like
    every other user mistake (typer would draw a multi-line box)."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except _CLICK.NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(exc.exit_code)
        except _CLICK.ClickException as exc:
            command = exc.ctx.command_path if getattr(exc, "ctx", None) else "llmservingsim"
            message = one_line(f"{exc.format_message()} (see `{command} --help`)")
            err_console.print(
                f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
            )
            sys.exit(exc.exit_code)
        except _ABORT:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="llmservingsim",
    help="Simulate LLM inference serving: latency, throughput, energy and cost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
INVARIANT_EXIT_CODE = 70  # EX_SOFTWARE: a broken invariant is a simulator bug


def _fail(exc: UserError) -> typer.Exit:
    # Messages quote config paths like cluster.pools[0].count: never read them as rich markup.
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=exc.exit_code)


@contextmanager
def _input_warnings() -> Iterator[None]:
    """Print each :class:`InputWarning` (input changed to fit, e.g. clipped trace lengths) as
    one ``warning:`` line on stderr once the body is done; an error replaces them (one line)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, InputWarning):
            err_console.print(
                f"[yellow]warning:[/] {escape(str(warning.message))}",
                highlight=False,
                soft_wrap=True,
            )


def _ms(stats: dict[str, float | None], key: str) -> str:
    value = stats.get(key)
    return "-" if value is None else f"{value * 1e3:,.1f}"


def describe_pools(pools: list[dict[str, Any]]) -> str:
    """``1× h100-sxm``, ``4 × TP2 h100-sxm``, ``1 × DP2×TP2 h100-sxm`` or ``prefill 2 ×
    h100-sxm + decode 4 × a100-80gb``."""
    parts = []
    for pool in pools:
        shape = f"TP{pool['tensor_parallel']}" if pool["tensor_parallel"] > 1 else ""
        if pool.get("data_parallel", 1) > 1:
            shape = f"DP{pool['data_parallel']}" + (f"×{shape}" if shape else "")
        if pool["pipeline_parallel"] > 1:
            shape += f"×PP{pool['pipeline_parallel']}"
        role = "" if pool["role"] == "mixed" else f"{pool['role']} "
        if pool["count"] == 1 and not shape:
            parts.append(f"{role}1× {pool['hardware']}")
        else:
            parts.append(
                f"{role}{pool['count']} × {shape + ' ' if shape else ''}{pool['hardware']}"
            )
    return " + ".join(parts)


def summary_table(summary: dict[str, Any]) -> Table:
    from rich.table import Table

    cfg = summary["config"]
    title = (
        f"{cfg['model']} · {cfg['dtype']} · {describe_pools(summary['pools'])}"
        f" · {cfg['scheduler']['policy']}"
    )
    if cfg.get("engine"):  # an engine preset (docs/engines.md)
        title += f" · engine {cfg['engine']}"
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("latency (ms)")
    for col in ("mean", "p50", "p90", "p99"):
        table.add_column(col, justify="right")
    for name in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        stats = summary[name]
        table.add_row(
            name.removesuffix("_s").upper(), *(_ms(stats, k) for k in ("mean", "p50", "p90", "p99"))
        )
    return table


def totals_table(summary: dict[str, Any]) -> Table:
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        (
            "requests completed / failed",
            f"{summary['requests_completed']} / {summary['requests_failed']}",
        ),
        *admission_rows(summary),
        (
            "throughput",
            f"{summary['request_throughput']:.2f} req/s · "
            f"{summary['output_tokens_per_s']:,.0f} out tok/s",
        ),
        (
            "simulated time",
            f"{summary['simulated_time_s']:,.1f} s in {summary['iterations']:,} steps",
        ),
        *kv_capacity_rows(summary),
        ("preemptions", f"{summary['preemptions']}"),
        *kv_rows(summary),
        *feature_rows(summary),
        *perf_table_rows(summary),
        ("energy / cost", f"{summary['energy_j'] / 3.6e6:.3f} kWh · ${summary['cost_usd']:.2f}"),
        (
            "wall time",
            f"{summary['sim_wall_s']:.2f} s ({summary.get('engine_build', 'interpreted')} engine, "
            f"perf cache hits {summary['perf_cache_hit_rate']:.0%})",
        ),
    ]
    for label, value in rows:
        table.add_row(label, value)
    return table


def clients_table(clients: dict[str, dict[str, Any]]) -> Table:
    """One row per client: requests, completions, drops, TTFT/E2E p99 and goodput."""
    from rich.table import Table

    table = Table(title="clients (latency in ms, goodput in req/s)", header_style="bold")
    for col in ("client", "sent", "done", "dropped", "TTFT p99", "E2E p99", "goodput"):
        table.add_column(col, justify="left" if col == "client" else "right")
    for name, row in clients.items():
        goodput = row["goodput"]
        table.add_row(
            name,
            f"{row['requests']:,}",
            f"{row['requests_completed']:,}",
            f"{row['requests_rejected'] + row['requests_timed_out']:,}",
            _ms(row["ttft_s"], "p99"),
            _ms(row["e2e_s"], "p99"),
            "-" if goodput is None else f"{goodput:,.2f}",
        )
    return table


def saturation_warning(summary: dict[str, Any]) -> str | None:
    """The run table's warning line: saturated, or too short to reach steady state."""
    reason = summary.get("saturation_reason")
    if not reason:
        return None
    return f"saturated: {reason}" if summary.get("saturated") else str(reason)


def perf_table_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """How many op times a table-driven backend (profile, kernel_db) could not measure."""
    lookups = summary.get("perf_lookups")
    if not lookups:
        return []
    fallbacks = summary.get("perf_fallbacks", 0)
    rows = [("perf fallbacks", f"{fallbacks:,} of {lookups:,} op times from the roofline")]
    if summary.get("perf_tables"):
        rows.append(("kernel tables", str(summary["perf_tables"])))
    return rows


def kv_capacity_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """KV cache size per instance (each pool's, when pools differ) and, for a cluster, the
    total; the peak use is the busiest instance's (summary.json ``kv_cache_peak_util``)."""
    peak = f"peak use {summary['kv_cache_peak_util']:.0%}"
    per_instance = sorted({row.get("kv_capacity_tokens") for row in summary["instances"]} - {None})
    if len(summary["instances"]) == 1:
        return [("KV cache (per instance)", f"{summary['memory']['kv_tokens']:,} tokens, {peak}")]
    if len(per_instance) > 1:
        sizes = " / ".join(f"{n:,}" for n in per_instance) + " tokens"
    else:
        sizes = f"{summary['memory']['kv_tokens']:,} tokens"
    return [
        ("KV cache (per instance)", sizes),
        (
            "KV cache (cluster)",
            f"{summary['kv_cache_capacity_tokens']:,} tokens, {peak} (busiest instance)",
        ),
    ]


def steady_state_warning(summary: dict[str, Any]) -> str | None:
    """The ``warning:`` line of a run that did not reach steady state (summary.json
    ``steady_state``: false), else None."""
    if summary.get("steady_state") is not False:
        return None
    return f"not in steady state: {summary['steady_state_reason']}"


def admission_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Requests admission control turned away, only when it did."""
    rejected = summary.get("requests_rejected", 0)
    timed_out = summary.get("requests_timed_out", 0)
    if not rejected and not timed_out:
        return []
    return [("rejected / timed out", f"{rejected} / {timed_out}")]


def kv_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Prefix-cache and host-transfer lines, only for the features the run used."""
    rows = []
    hit_rate = summary.get("prefix_cache_hit_rate")
    if hit_rate is not None:
        rows.append(
            (
                "prefix cache",
                f"hit rate {hit_rate:.1%} · {summary['cached_prompt_tokens']:,} tokens cached",
            )
        )
    parts = []
    if summary.get("swapped_out_bytes"):
        parts.append(f"swap {summary['swapped_out_bytes'] / 1e9:,.2f} GB out and back")
    if summary.get("kv_offload_loaded_bytes"):
        parts.append(f"offload {summary['kv_offload_loaded_bytes'] / 1e9:,.2f} GB loaded")
    if parts:
        parts.append(f"{summary['host_transfer_time_s']:.2f} s charged")
        rows.append(("host KV traffic", " · ".join(parts)))
    return rows


def feature_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Speculative decoding, LoRA and autoscaling lines, only when the run used them."""
    rows = []
    if summary.get("spec_tokens_per_step") is not None:
        rows.append(
            (
                "speculation",
                f"{summary['spec_tokens_per_step']:.2f} tokens/step · acceptance "
                f"{summary['spec_acceptance_rate']:.0%} · "
                f"draft {summary['spec_draft_time_s']:.1f} s",
            )
        )
    if "lora_adapter_loads" in summary:
        rows.append(
            (
                "LoRA adapters",
                f"{summary['lora_adapter_loads']:,} loads "
                f"({summary['lora_disk_loads']:,} from disk) · "
                f"{summary['lora_load_stall_s']:.2f} s stalled",
            )
        )
    if "scale_events" in summary:
        counts = [summary["initial_instances"]]
        counts += [e["provisioned"] for e in summary["scale_events"]]
        decisions = sum(
            e["action"] in ("start", "drain", "resume", "cancel") for e in summary["scale_events"]
        )
        rows.append(
            (
                "autoscaling",
                f"{min(counts)}-{max(counts)} provisioned · "
                f"{decisions} decisions · "
                f"{summary['instance_seconds']:,.0f} instance-s",
            )
        )
    return rows


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Argument(help="Scenario YAML; omit for the default scenario.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a config key: --set workload.arrival.rate=8 (repeatable)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default ./results/<timestamp>).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed (overrides the config's seed).")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar and no tables.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print summary.json to stdout (and nothing else).")
    ] = False,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="requests/timeseries tables: parquet (default) or csv.",
            show_default=False,
        ),
    ] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip report.html.")] = False,
    no_trace: Annotated[bool, typer.Option("--no-trace", help="Skip trace.json.")] = False,
    check_invariants: Annotated[
        bool,
        typer.Option(
            "--check-invariants",
            help="Check KV-cache, token and time invariants while running (docs/invariants.md).",
        ),
    ] = False,
) -> None:
    """Run one simulation; write summary.json, requests and timeseries tables, trace.json and
    report.html (docs/outputs.md)."""
    from llmservingsim.config import load_config
    from llmservingsim.invariants import InvariantError
    from llmservingsim.preflight import check_out_dir

    overrides = list(set_ or [])
    if seed is not None:
        overrides.append(f"seed={seed}")
    if fmt is not None:
        overrides.append(f"outputs.format={fmt}")
    if no_report:
        overrides.append("outputs.report=false")
    if no_trace:
        overrides.append("outputs.trace=false")
    with stop_on_signals() as stop:
        try:
            cfg = load_config(config, overrides)
            out_dir = out or Path("results") / time.strftime("%Y%m%d-%H%M%S")
            check_out_dir(out_dir)
            show_progress = not quiet and not as_json and sys.stderr.isatty()
            with _input_warnings():
                result, paths = _run_with_progress(
                    cfg, out_dir, show_progress, check_invariants or None
                )
        except UserError as exc:
            raise _fail(exc) from None
        except InvariantError as exc:
            err_console.print(f"[bold red]bug:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(code=INVARIANT_EXIT_CODE) from None
        except KeyboardInterrupt:
            # Stopped outside the simulation loop (loading, or writing the outputs): every
            # file written is complete, the others are absent.
            err_console.print("interrupted: outputs incomplete (files written are whole)")
            raise typer.Exit(code=stop.exit_code) from None
    if as_json:
        typer.echo((out_dir / "summary.json").read_text(), nl=False)
    elif not quiet:
        console = Console()
        console.print(summary_table(result.summary))
        console.print(totals_table(result.summary))
        if "clients" in result.summary:
            console.print(clients_table(result.summary["clients"]))
        console.print(f"outputs: {out_dir}/ " + ", ".join(p.name for p in paths), highlight=False)
    # One warning line: not in steady state (too short, queue growing), else saturated; none
    # for an offline batch (every request at t = 0: saturated by design, steady_state null).
    warning = None
    if result.summary.get("steady_state", True) is not None:
        warning = steady_state_warning(result.summary) or saturation_warning(result.summary)
    if warning is not None and not quiet:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if result.summary.get("interrupted"):
        err_console.print("interrupted: partial results written (summary.json: partial: true)")
        raise typer.Exit(code=stop.exit_code)


def _run_with_progress(
    cfg: SimConfig, out_dir: Path, show: bool, check_invariants: bool | None = None
) -> tuple[SimulationResult, list[Path]]:
    # The simulation and output writers (plotly, pyarrow) are imported by the commands that use
    # them, so `--help`, `catalog` and the others start without them.
    from llmservingsim.outputs.run_outputs import simulate_to_dir
    from llmservingsim.simulation import load_requests

    if not show:
        return simulate_to_dir(cfg, out_dir, check_invariants=check_invariants)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    requests = load_requests(cfg)
    columns = (
        TextColumn("[bold]simulating"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} requests"),
        TextColumn("· sim {task.fields[sim]:,.1f} s"),
        TextColumn("· {task.fields[speed]:,.0f}× real time"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("sim", total=len(requests), sim=0.0, speed=0.0)
        wall_start = time.perf_counter()

        def hook(now: float, done: int) -> None:
            wall = time.perf_counter() - wall_start
            bar.update(task, completed=done, sim=now, speed=now / wall if wall > 0 else 0.0)

        return simulate_to_dir(
            cfg, out_dir, requests=requests, progress=hook, check_invariants=check_invariants
        )


@app.command()
def report(
    out_dir: Annotated[Path, typer.Argument(help="A `run --out` directory.")],
) -> None:
    """(Re)build report.html from the files of a run's output directory."""
    from llmservingsim.outputs.report import write_report

    try:
        path = write_report(out_dir)
    except UserError as exc:
        raise _fail(exc) from None
    typer.echo(f"wrote {path}")


@app.command()
def catalog(
    what: Annotated[
        str, typer.Argument(help="models | hardware | schedulers | routers | backends | all")
    ] = "all",
) -> None:
    """List the built-in models, devices, scheduler policies, routers and perf backends."""
    from llmservingsim.cluster.routers import ROUTERS
    from llmservingsim.hardware.backends import PERF_BACKENDS
    from llmservingsim.hardware.backends.kernel_db import kernel_table_lines
    from llmservingsim.serving.schedulers import SCHEDULERS

    console = Console()
    sections = {"models", "hardware", "schedulers", "routers", "backends"}
    if what != "all" and what not in sections:
        raise _fail(
            ConfigError(
                f"catalog: unknown section {what!r} (valid: all, {', '.join(sorted(sections))})"
            )
        )
    try:
        if what in ("all", "models"):
            console.print(_models_table())
        if what in ("all", "hardware"):
            console.print(_hardware_table())
    except UserError as exc:
        raise _fail(exc) from None
    if what in ("all", "schedulers"):
        console.print("schedulers: " + ", ".join(SCHEDULERS.names()))
    if what in ("all", "routers"):
        console.print("routers: " + ", ".join(ROUTERS.names()))
    if what in ("all", "backends"):
        console.print("perf backends: " + ", ".join(PERF_BACKENDS.names()))
        for line in kernel_table_lines():
            console.print(line)


def _models_table() -> Table:
    from rich.table import Table

    from llmservingsim.catalog import load_model, model_names

    table = Table(title="models", header_style="bold")
    columns = ("name", "type", "params B", "layers", "hidden", "heads/kv", "head dim")
    for col in (*columns, "KV KiB/tok bf16", "ctx"):
        table.add_column(
            col, justify="left" if col in ("name", "type") else "right", no_wrap=col == "name"
        )
    for name in model_names():
        with warnings.catch_warnings():
            # approximations (local attention) are announced when a run uses the model
            warnings.simplefilter("ignore", InputWarning)
            spec = load_model(name)
        moe = f" moe{spec.num_experts}" if spec.is_moe else ""
        table.add_row(
            name,
            spec.model_type + moe,
            f"{spec.num_params() / 1e9:.1f}" if not spec.is_moe else "-",
            str(spec.num_layers),
            str(spec.hidden_size),
            f"{spec.num_heads}/{spec.num_kv_heads}",
            "mla" if spec.uses_mla else str(spec.head_dim),
            f"{spec.kv_bytes_per_token('bf16') / 1024:.0f}",
            f"{spec.max_context:,}",
        )
    return table


def _hardware_table() -> Table:
    from rich.table import Table

    from llmservingsim.catalog import device_names, load_device

    table = Table(title="hardware", header_style="bold")
    columns = ("name", "type", "bf16 TFLOP/s", "fp8 TFLOP/s", "mem GiB", "mem GB/s", "link GB/s")
    for col in (*columns, "idle/max W", "$/h"):
        table.add_column(
            col, justify="left" if col in ("name", "type") else "right", no_wrap=col == "name"
        )
    for name in device_names():
        d = load_device(name)
        fp8 = d.peak_tflops.get("fp8")
        table.add_row(
            name,
            d.type,
            f"{d.peak_flops('bf16') / 1e12:,.0f}",
            "-" if fp8 is None else f"{fp8:,.0f}",
            f"{d.memory_gib:g}",
            f"{d.memory_bandwidth_gbps:,.0f}",
            f"{d.links.intra_node.bandwidth_gbps:,.0f}",
            f"{d.power.idle_w:g}/{d.power.max_w:g}",
            f"{d.cost_per_hour_usd:.2f}",
        )
    return table


@app.command()
def compare(
    config_a: Annotated[Path, typer.Argument(help="Config A (its workload is served by both).")],
    config_b: Annotated[Path, typer.Argument(help="Config B.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key of both configs (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write compare.json and deltas.parquet (one row per request) here."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed of both configs.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the comparison as JSON (and nothing else).")
    ] = False,
) -> None:
    """Run two configs on the identical request stream (A's workload) and report the paired
    per-request differences B − A of TTFT and E2E, overall and per client, with a bootstrap
    interval on the mean difference (docs/workloads.md)."""
    import json

    from llmservingsim.catalog import load_model
    from llmservingsim.compare import (
        check_same_stream,
        paired_report,
        routing_divergence,
        write_deltas,
    )
    from llmservingsim.config import load_config
    from llmservingsim.simulation import load_requests, simulate

    overrides = list(set_ or [])
    if seed is not None:
        overrides.append(f"seed={seed}")
    with stop_on_signals():
        try:
            cfg_a = load_config(config_a, overrides)
            cfg_b = load_config(config_b, overrides)
            with _input_warnings():
                requests = load_requests(cfg_a)
                ctx = load_model(cfg_b.model).max_context
                note = check_same_stream(cfg_a, cfg_b, requests, ctx)
                result_a = simulate(cfg_a, requests=requests)
                result_b = simulate(cfg_b, requests=requests)
            log_a, log_b = result_a.metrics.requests, result_b.metrics.requests
            report: dict[str, Any] = {"a": str(config_a), "b": str(config_b), "note": note}
            report.update(paired_report(requests, log_a, log_b))
            routing = routing_divergence(
                result_a.metrics.decisions, result_b.metrics.decisions, len(requests)
            )
            if routing is not None:
                report["routing"] = routing
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
                write_deltas(out, requests, log_a, log_b, cfg_a.outputs.format)
        except UserError as exc:
            raise _fail(exc) from None
    if note is not None:
        err_console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    Console().print(compare_table(report))
    if "routing" in report:
        typer.echo(routing_line(report["routing"]))


def routing_line(routing: dict[str, Any]) -> str:
    """Where the two runs' routing diverged, in one line (``outputs.decisions`` on both)."""
    line = (
        f"routing: {routing['routed_differently']:,} of {routing['routed_on_both']:,} requests "
        "went to another instance"
    )
    first = routing["first"]
    if first is None:
        return line
    a, b = first["a"], first["b"]
    return (
        f"{line}; first: request {first['request_id']} at {a['time_s']:.3f} s, "
        f"A ({a['policy']}) chose {a['chosen']}, B ({b['policy']}) chose {b['chosen']}"
    )


def compare_table(report: dict[str, Any]) -> Table:
    """Mean TTFT/E2E of both sides, the mean paired difference B − A and its interval (ms)."""
    from rich.table import Table

    title = (
        f"B − A over {report['paired']:,} requests finished on both sides "
        f"(A: {report['a']}, B: {report['b']})"
    )
    table = Table(title=title, header_style="bold")
    for col in ("ms", "mean A", "mean B", "mean B − A", "95% interval", "p99 A", "p99 B"):
        table.add_column(col, justify="left" if col == "ms" else "right")
    groups = [("all", report), *report.get("clients", {}).items()]
    for name, group in groups:
        for metric in ("ttft_s", "e2e_s"):
            row = group[metric]
            label = metric.removesuffix("_s").upper()
            interval = row["ci95"]
            shown = (
                "-" if interval is None else f"[{interval[0] * 1e3:,.2f}, {interval[1] * 1e3:,.2f}]"
            )
            table.add_row(
                label if name == "all" else f"{name} {label}",
                _ms(row, "mean_a"),
                _ms(row, "mean_b"),
                "-" if row["mean_delta"] is None else f"{row['mean_delta'] * 1e3:+,.2f}",
                shown,
                _ms(row, "p99_a"),
                _ms(row, "p99_b"),
            )
    return table


app.command("sweep")(sweep_command)
app.command("plan")(plan_command)
app.command("calibrate")(calibrate_command)
app.command("validate")(validate_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmservingsim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Simulate LLM inference serving: latency, throughput, energy and cost."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
