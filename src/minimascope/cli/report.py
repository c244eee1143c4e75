"""``minimascope report``: one HTML page of a study's tables, figures and checked claims."""

from __future__ import annotations

from pathlib import Path

import typer

from minimascope.cli._app import app, console, one_line_errors


@app.command("report")
@one_line_errors
def report_command(
    study_dir: Path = typer.Argument(..., help="a study directory (what `minimascope study` writes)"),
) -> None:
    """Write STUDY_DIR/report/index.html: every table and figure of the study, and the seed's claims checked."""
    from minimascope.report import write_report

    console.print(f"[green]written[/green] {write_report(study_dir)}")
