"""``minimascope landscape RUN``: the loss surface around a run's network, the plane through three runs
(``--plane RUN_B RUN_C``) or the plane of its training trajectory (``--trajectory``).

Parses, makes one library call (:mod:`minimascope.minima.landscape`) and prints a short summary. Results
never go into a run directory: by default ``analyses/<run>/landscape`` (``analyses/<A>_vs_<B>_vs_<C>/landscape``
for a plane), or ``--out``. The options a study file may set too (grid, span, images, seed, dims, test) take their
defaults, help and ranges from the ``landscape`` row of :data:`minimascope.analyses.ANALYSES`, ``--margin`` (of a
plane) from the ``landscape-plane`` row; ``--bn``, ``--plane`` and ``--trajectory`` are the command's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from minimascope.cli._app import RichStageProgress, console
from minimascope.cli.minima import DATA_HELP, DEVICE_HELP, RUN_HELP, analysis_command, check, table_option

NAME = "landscape"
PLANE = "landscape-plane"  # the study's row of the plane through three runs, whose margin --plane takes


def _default_out(out: Optional[Path], *runs: Path) -> Path:
    if out is not None:
        return out
    names = [run.resolve().name if run.resolve().is_dir() else run.stem for run in runs]
    return Path("analyses") / "_vs_".join(names) / NAME


@analysis_command(NAME)
def landscape_command(
    run: Path = typer.Argument(..., help=RUN_HELP + " (with --plane: A, the origin)"),
    grid: int = table_option(NAME, "grid"),
    span: float = table_option(NAME, "span"),
    images: int = table_option(NAME, "images"),
    seed: int = table_option(NAME, "seed"),
    bn: str = typer.Option("recompute", help="batch norm: recompute (statistics of the training images at every "
                                             "point) or eval (running statistics)"),
    dims: int = table_option(NAME, "dims"),
    test: bool = table_option(NAME, "test", "--test"),
    margin: float = table_option(PLANE, "margin"),
    plane: Optional[tuple[Path, Path]] = typer.Option(None, help="RUN_B RUN_C: the plane through RUN, RUN_B and RUN_C"),
    trajectory: bool = typer.Option(False, "--trajectory",
                                    help="the plane of the run's saved weights (train with snapshot_every), its "
                                         "path drawn on it"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: analyses/<run>/landscape)"),
    data_source: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(1000, help="images per eval-mode forward pass (memory, not results)"),
) -> None:
    """Loss and accuracy on a line or plane of weights around a run (filter-normalised random directions),
    through three runs (--plane) or along its training trajectory (--trajectory)."""
    from minimascope.errors import MinimascopeError
    from minimascope.minima.landscape import check_grid, landscape_of_run, plane_of_runs

    check(NAME, grid=grid, span=span, images=images, seed=seed, dims=dims, test=test)
    check(PLANE, margin=margin)
    check_grid(grid, span, dims, bn)
    if plane and trajectory:
        raise MinimascopeError("choose --plane or --trajectory, not both")
    if plane and dims != 2:
        raise MinimascopeError("--plane draws a plane: --dims 1 does not apply")
    common = {"grid": grid, "images": images, "seed": seed, "bn": bn, "test": test, "batch_size": batch_size,
              "data_source": data_source, "device": device}
    with RichStageProgress() as progress:
        if plane:
            out_dir = _default_out(out, run, *plane)
            result = plane_of_runs(run, *plane, out_dir, margin=margin, progress=progress, **common)
        else:
            out_dir = _default_out(out, run)
            result = landscape_of_run(run, out_dir, span=span, dims=dims, trajectory=trajectory, progress=progress,
                                      **common)
    for point in result.points:
        console.print(f"{escape(point.label)} at ({point.x:.4g}, {point.y:.4g}): train loss "
                      f"{point.values.train_loss:.4g}, accuracy {point.values.train_accuracy:.3f}", highlight=False)
    losses = [v for row in result.train_loss for v in row]
    shape = f"{len(result.y)}×{len(result.x)}" if result.dims == 2 else f"{len(result.x)}"
    console.print(f"{result.kind} surface, {shape} points, train loss {min(losses):.4g}–{max(losses):.4g} on "
                  f"{result.images} {result.dataset_title} training images (batch norm: {result.bn}); "
                  f"[green]written[/green] {escape(str(out_dir))}", highlight=False)
