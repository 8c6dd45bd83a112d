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
) -> None:
    """Simulate every published measurement the simulator supports and report the error."""
    from llmservingsim.validate.reference import find_reference
    from llmservingsim.validate.report import (
        markdown,
        summary_table,
        terminal_table,
        update_document,
        write_csv,
    )
    from llmservingsim.validate.run import validate

    err = Console(stderr=True)
    patterns = [p.strip() for item in scenarios or [] for p in item.split(",") if p.strip()]

    def progress(index: int, total: int, scenario: Scenario) -> None:
        if not quiet:
            err.print(f"[{index + 1}/{total}] {scenario.label}", highlight=False)

    try:
        result = validate(reference or find_reference(), patterns, progress)
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
        for sk in result.skipped:
            console.print(f"skipped {sk.row['id']}: {sk.reason}", highlight=False)
    console.print(
        f"{len(result.errors())} rows compared, {len(result.skipped)} skipped: median |error| "
        f"{result.median_abs_error():.1f} %, max {result.max_abs_error():.1f} %  "
        f"(outputs: {out}/validation.csv, validation.md)",
        highlight=False,
    )
