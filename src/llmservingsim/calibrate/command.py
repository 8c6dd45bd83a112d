"""``llmservingsim calibrate``: the typer command and its tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from llmservingsim.errors import ConfigError, UserError

# The fit (numpy, scipy, the model layer) is imported when the command runs, so
# `llmservingsim --help` starts without it.
if TYPE_CHECKING:
    from rich.table import Table

    from llmservingsim.calibrate.fit import GroupFit
    from llmservingsim.calibrate.run import CalibrationReport, ErrorRow


def _fixable() -> tuple[str, ...]:
    from llmservingsim.calibrate.fit import GEMM_PARAMS

    return (*GEMM_PARAMS, "attention_compute")


def _parse_fix(items: list[str]) -> dict[str, float]:
    fixable = _fixable()
    fix: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or key not in fixable:
                raise ValueError
            fix[key] = float(value)
        except ValueError:
            raise ConfigError(
                f"--fix {item!r}: expected NAME=VALUE with NAME one of {', '.join(fixable)}"
            ) from None
    return fix


def _groups_table(title: str, groups: list[GroupFit]) -> Table:
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for col in ("group", "points", "fitted", "MAPE %", "used"):
        table.add_column(col, justify="right" if col in ("points", "MAPE %") else "left")
    for g in groups:
        params = ", ".join(f"{k}={v:.4g}" for k, v in g.params.items())
        table.add_row(
            g.group, f"{g.points:,}", params, f"{g.mape:.1f}", "yes" if g.accepted else g.note
        )
    return table


def _errors_table(title: str, rows: list[ErrorRow]) -> Table:
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for col in ("ops", "points", "MAPE before %", "MAPE after %", "median bias after %"):
        table.add_column(col, justify="left" if col == "ops" else "right")
    for r in rows:
        table.add_row(
            r.label, f"{r.points:,}", f"{r.before:.1f}", f"{r.after:.1f}", f"{r.bias_after:+.1f}"
        )
    return table


def print_report(report: CalibrationReport, console: Console) -> None:
    models = ", ".join(f"{m} ({n:,})" for m, n in sorted(report.models.items()))
    console.print(
        f"{report.points:,} {report.dtype} points on {report.base.name}: {models}", highlight=False
    )
    console.print(_groups_table("fitted parameter groups (all models)", report.fit.groups))
    console.print(_errors_table("op-level error, all models (before = base YAML)", report.errors))
    if report.train_model is not None:
        console.print(
            _groups_table(
                f"held-out fit: trained on {report.train_model} only", report.holdout_groups
            )
        )
        console.print(
            _errors_table(
                f"held-out error: {report.train_model} fit, every other model", report.holdout
            )
        )
    else:
        console.print("held-out check skipped: the profiles hold one model only")


def calibrate_command(
    hardware: Annotated[
        str, typer.Option(help="Device the profiles were measured on (catalog name or YAML).")
    ],
    profiles: Annotated[
        list[Path] | None,
        typer.Option(
            "--profiles",
            help="Folder or CSV of operator profiles (Vidur mlp.csv/attention.csv, LLMServingSim "
            "dense.csv/per_sequence.csv/attention.csv or native "
            "CSV, docs/profiles.md); repeatable. One device's tables only.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Calibrated device YAML to write (default ./<device>-calibrated.yaml)."),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="Profile dtype to fit (default: the most common one).")
    ] = None,
    fix: Annotated[
        list[str] | None,
        typer.Option(help="Hold a parameter, e.g. --fix compute_half_m=32 (repeatable)."),
    ] = None,
    train_model: Annotated[
        str | None,
        typer.Option(help="Model whose profiles train the held-out fit (default: most points)."),
    ] = None,
    max_mape: Annotated[
        float, typer.Option(help="A parameter group fitting worse than this (%) is not used.")
    ] = 25.0,
    scalesim: Annotated[
        bool,
        typer.Option(
            "--scalesim",
            help="Instead of profiles: fit the analytic systolic backend's compute_max on "
            "SCALE-Sim's times (cached probes) of --models' prefill and decode ops.",
        ),
    ] = False,
    models: Annotated[
        str,
        typer.Option(help="With --scalesim: MODEL:TP,... whose ops are compared."),
    ] = "llama-3.1-8b:1,mixtral-8x7b:2",
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="With --scalesim: SCALE-Sim probe cache (default as perf.cache_dir)."),
    ] = None,
) -> None:
    """Fit the roofline efficiency factors to measured operator profiles (least squares), or
    (--scalesim) the analytic NPU backend to SCALE-Sim."""
    from llmservingsim.calibrate.run import calibrate, device_yaml

    console = Console() if Console().is_terminal else Console(width=150)
    if scalesim:
        _calibrate_scalesim(hardware, models, cache_dir, out, profiles, console)
        return
    try:
        if not profiles:
            raise ConfigError("calibrate needs --profiles (measured tables) or --scalesim")
        report = calibrate(profiles, hardware, dtype, _parse_fix(fix or []), train_model, max_mape)
    except UserError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=exc.exit_code) from None
    print_report(report, console)
    target = out or Path(f"{report.device.name}-calibrated.yaml")
    target.write_text(device_yaml(report, profiles))
    console.print(f"calibrated device: {target}", highlight=False)


def _parse_models(text: str) -> list[tuple[str, int]]:
    models = []
    for item in text.split(","):
        name, _, tp = item.strip().partition(":")
        try:
            if not name or int(tp or "1") < 1:
                raise ValueError
        except ValueError:
            raise ConfigError(f"--models {item!r}: expected MODEL or MODEL:TP (TP >= 1)") from None
        models.append((name, int(tp or "1")))
    return models


def _calibrate_scalesim(
    hardware: str,
    models_text: str,
    cache_dir: Path | None,
    out: Path | None,
    profiles: list[Path] | None,
    console: Console,
) -> None:
    from llmservingsim.calibrate.scalesim_fit import calibrate_on_scalesim, calibrated_yaml
    from llmservingsim.hardware.backends.scalesim import default_scalesim_cache_dir

    try:
        if profiles:
            raise ConfigError("calibrate: give --profiles or --scalesim, not both")
        models = _parse_models(models_text)
        result = calibrate_on_scalesim(hardware, models, cache_dir or default_scalesim_cache_dir())
    except UserError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=exc.exit_code) from None
    base, fitted = result.base.efficiency.compute_max, result.device.efficiency.compute_max
    assert result.device.systolic is not None
    console.print(
        f"{len(result.points)} GEMM-shaped ops on {result.base.name} against SCALE-Sim "
        f"({result.sim_calls} new SCALE-Sim runs, {result.disk_hits} probes from the cache); "
        f"compute_max {base:.4g} -> {fitted:.4g} (from {result.fitted_ops} compute-bound "
        f"ops), fold_overhead_cycles {result.device.systolic.fold_overhead_cycles:g}",
        highlight=False,
    )
    from rich.table import Table

    table = Table(title="analytic systolic vs SCALE-Sim, op time", header_style="bold")
    for col in ("op kind", "ops", "MAPE before %", "MAPE after %"):
        table.add_column(col, justify="left" if col == "op kind" else "right")
    for kind, (count, before, after) in result.mape_by_kind().items():
        table.add_row(kind, f"{count:,}", f"{before:.1f}", f"{after:.1f}")
    console.print(table)
    target = out or Path(f"{result.device.name}-scalesim-calibrated.yaml")
    target.write_text(calibrated_yaml(result, models))
    console.print(f"calibrated device: {target}", highlight=False)
