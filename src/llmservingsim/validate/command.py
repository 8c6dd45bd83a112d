"""``llmservingsim validate``: the typer command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from llmservingsim.errors import UserError

# The validation machinery (the simulation, scipy) is imported when the command runs, so
# `llmservingsim --help` starts without it.
if TYPE_CHECKING:
    from llmservingsim.validate.scenario import Scenario


def validate_command(
    reference: Annotated[
        Path | None,
        typer.Option(
            help="Measured results (published_points.csv columns); default: "
            "shared/data/reference/published_points.csv beside the repository."
        ),
    ] = None,
    scenarios: Annotated[
        list[str] | None,
        typer.Option(
            "--scenarios",
            help="Only rows whose id matches (shell glob, repeatable or comma-separated).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for validation.csv and validation.md.")] = Path(
        "results/validate"
    ),
    update_doc: Annotated[
        Path | None,
        typer.Option(help="Also rewrite the generated section of this Markdown file."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no table.")] = False,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            help="Reference sets: published, aiconfigurator (silicon_sample.csv of the installed "
            "aiconfigurator-core), blis (shared/data/reference/blis_trainval), apexplus (APEX+'s "
            "vLLM 0.6 runs, replaying shared/data/traces/replay); repeatable or "
            "comma-separated. Default: every set that is available.",
        ),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="key.path=value added to every simulation (repeatable)."),
    ] = None,
    per_group: Annotated[
        int,
        typer.Option(
            min=0,
            help="aiconfigurator: points per (GPU, engine, model, precision, TP, DP) group, evenly "
            "spaced (0: all 5,221 points' supported ones).",
        ),
    ] = 2,  # validate.sources.DEFAULT_PER_GROUP (checked by tests/app/test_validate.py)
) -> None:
    """Simulate every published measurement the simulator supports and report the error."""
    from llmservingsim.validate.reference import find_data_dir, find_reference
    from llmservingsim.validate.report import (
        breakdown_table,
        markdown,
        set_table,
        summary_table,
        terminal_table,
        update_document,
        write_csv,
    )
    from llmservingsim.validate.run import validate
    from llmservingsim.validate.sources import SETS

    err = Console(stderr=True)
    patterns = [p.strip() for item in scenarios or [] for p in item.split(",") if p.strip()]

    def progress(index: int, total: int, scenario: Scenario) -> None:
        if not quiet:
            err.print(f"[{index + 1}/{total}] {scenario.label}", highlight=False)

    chosen = tuple(p.strip() for item in source or [] for p in item.split(",") if p.strip())
    try:
        if reference is None:
            try:
                reference = find_reference()
            except UserError:
                if "published" in chosen:
                    raise
        result = validate(
            reference,
            patterns,
            progress,
            sets=chosen or SETS,
            extra=list(sets or []),
            per_group=per_group or None,
            data_dir=None if reference is not None else find_data_dir(),
        )
        if update_doc is not None:
            update_document(update_doc, result)
    except UserError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=exc.exit_code) from None
    out.mkdir(parents=True, exist_ok=True)
    write_csv(result, out / "validation.csv")
    (out / "validation.md").write_text(markdown(result))
    console = Console() if Console().is_terminal else Console(width=150)
    if not quiet:
        console.print(terminal_table(result))
        console.print(summary_table(result))
        console.print(set_table(result))
        console.print(breakdown_table(result))
        for why in result.skipped_sets:
            console.print(f"reference set skipped: {why}", highlight=False)
        for sk in result.skipped:
            console.print(f"skipped {sk.row['id']}: {sk.reason}", highlight=False)
    console.print(
        f"{len(result.errors())} rows compared, {len(result.skipped)} skipped: median |error| "
        f"{result.median_abs_error():.1f} %, max {result.max_abs_error():.1f} %  "
        f"(outputs: {out}/validation.csv, validation.md)",
        highlight=False,
    )
