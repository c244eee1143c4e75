"""``minimascope report``: one HTML page of a study's tables, figures and checked claims."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from minimascope.cli._app import app, console, err_console, one_line_errors


def write_and_announce(study_dir: Path) -> Path:
    """Write the study's report and print where; damaged files (left out, and named on the page) are one
    warning line."""
    from minimascope.report.page import render_report

    written = render_report(study_dir)
    console.print(f"[green]written[/green] {escape(str(written.path))}", highlight=False, soft_wrap=True)
    if files := written.damaged_files:
        names = ", ".join(" ".join(name.split()) for name in files)
        err_console.print(f"[yellow]warning:[/yellow] {len(files)} damaged file{'s' * (len(files) > 1)} left out "
                          f"of the report, in whole or in part (why: on the page): {escape(names)}", highlight=False,
                          soft_wrap=True)
    return written.path


@app.command("report")
@one_line_errors
def report_command(
    study_dir: Path = typer.Argument(..., help="a study directory (what `minimascope study` writes)"),
) -> None:
    """Write STUDY_DIR/report/index.html: every table and figure of the study, and the seed's claims checked."""
    write_and_announce(study_dir)
