"""``minimascope sharpness | weights | connectivity | mistakes``: describe one minimum, or two side by side.

Each command is named by its row of :data:`minimascope.analyses.ANALYSES` (the study's node kind), answers
to that row's aliases too (``connect`` for ``connectivity``, hidden from ``--help``), parses, makes one
library call (the row's run-level shell in :mod:`minimascope.minima`) and prints a short summary. Results
never go into a run directory: by default ``analyses/<run>/<name>`` or ``analyses/<A>_vs_<B>/<name>``, or
``--out``.

The options of a row's table (:class:`minimascope.analyses.Option`: default, help, range) are the command's:
:func:`table_option` declares one, :func:`check` checks them all before anything is loaded, as the study
file's are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from minimascope.analyses import ANALYSES
from minimascope.cli._app import app, console, one_line_errors

RUN_HELP = "run directory (or weights file) of a completed run"
DATA_HELP = "the runs' data set source, the one they were trained on (env: MINIMASCOPE_DATA, for cifar10)"
DEVICE_HELP = "auto (cuda when present), cpu or cuda[:N]"


def analysis_command(name: str) -> Callable[[Callable], Callable]:
    """Register the decorated command as ``minimascope <name>`` and, hidden, under the row's aliases."""

    def register(command: Callable) -> Callable:
        command = one_line_errors(command)
        app.command(ANALYSES[name].name)(command)
        for alias in ANALYSES[name].aliases:
            app.command(alias, hidden=True)(command)
        return command

    return register


def table_option(analysis: str, name: str, *declarations: str) -> typer.models.OptionInfo:
    """The command-line option of row ``analysis``'s option ``name``: its default and help from the table."""
    option = ANALYSES[analysis].options[name]
    return typer.Option(option.default, *declarations, help=option.help)


def check(analysis: str, **values: object) -> None:
    """The options of the table, checked (ranges, types, relations) before anything runs."""
    ANALYSES[analysis].check_options(values, analysis, flags=True)


def _written(out_dir: Path) -> str:
    return f"[green]written[/green] {escape(str(out_dir))}"


def _default_out(out: Optional[Path], name: str, *runs: Path) -> Path:
    if out is not None:
        return out
    names = [run.resolve().name if run.resolve().is_dir() else run.stem for run in runs]
    return Path("analyses") / "_vs_".join(names) / ANALYSES[name].name


@analysis_command("sharpness")
def sharpness_command(
    run: Path = typer.Argument(..., help=RUN_HELP),
    images: int = table_option("sharpness", "images"),
    k: int = table_option("sharpness", "k"),
    tol: float = table_option("sharpness", "tol"),
    max_iter: int = table_option("sharpness", "max_iter"),
    rel_error: float = table_option("sharpness", "rel_error"),
    max_probes: int = table_option("sharpness", "max_probes"),
    density_steps: int = table_option("sharpness", "density_steps"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: analyses/<run>/sharpness)"),
    data_source: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    seed: int = table_option("sharpness", "seed"),
    batch_size: int = typer.Option(1000, min=1, help="images per Hessian-vector product batch (memory, not results)"),
    adaptive: bool = table_option("sharpness", "adaptive", "--adaptive/--no-adaptive"),
) -> None:
    """Top Hessian eigenvalues, trace and eigenvalue density of a run's training loss (eval mode)."""
    check("sharpness", images=images, k=k, tol=tol, max_iter=max_iter, rel_error=rel_error, max_probes=max_probes,
          density_steps=density_steps, seed=seed, adaptive=adaptive)
    from minimascope.minima.sharpness import sharpness_of_run

    out_dir = _default_out(out, "sharpness", run)
    result = sharpness_of_run(run, out_dir, images=images, data_source=data_source, device=device, seed=seed, k=k,
                              tol=tol, max_iter=max_iter, rel_error=rel_error, max_probes=max_probes,
                              density_steps=density_steps, batch_size=batch_size, adaptive=adaptive)
    eigenvalues = ", ".join(f"{v:.4g}" for v in result.eigenvalues.values)
    warn = "" if result.eigenvalues.converged else " [yellow](not converged)[/yellow]"
    console.print(f"top eigenvalues: {eigenvalues}{warn}", highlight=False)
    warn = "" if result.trace.converged else " [yellow](not converged)[/yellow]"
    console.print(f"trace: {result.trace.value:.4g} ± {result.trace.stderr:.2g} ({result.trace.probes} probes){warn}",
                  highlight=False)
    if result.adaptive is not None:
        console.print(f"rescaling-invariant (D·H·D, D = |w|): λ1 {result.adaptive.eigenvalues.values[0]:.4g}, "
                      f"trace {result.adaptive.trace.value:.4g}", highlight=False)
    console.print(f"loss {result.loss:.4g} on {result.n_images} training images; {_written(out_dir)}",
                  highlight=False)


@analysis_command("connectivity")
def connectivity_command(
    run_a: Path = typer.Argument(..., help=RUN_HELP + " (A, alpha = 0)"),
    run_b: Path = typer.Argument(..., help=RUN_HELP + " (B, alpha = 1)"),
    points: int = table_option("connectivity", "points"),
    images: int = table_option("connectivity", "images"),
    align: bool = table_option("connectivity", "align", "--align/--no-align"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: analyses/<A>_vs_<B>/connectivity)"),
    data_source: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    seed: int = table_option("connectivity", "seed"),
    batch_size: int = typer.Option(500, min=1, help="images per forward pass"),
) -> None:
    """Loss and error along the straight line between two runs' weights, and its barrier."""
    check("connectivity", points=points, images=images, align=align, seed=seed)
    from minimascope.minima.connectivity import connectivity_of_runs

    out_dir = _default_out(out, "connectivity", run_a, run_b)
    result = connectivity_of_runs(run_a, run_b, out_dir, points=points, images=images, align=align,
                                  data_source=data_source, device=device, seed=seed, batch_size=batch_size)
    if "alignment_skipped" in result.settings:
        console.print(f"[yellow]not aligned:[/yellow] {escape(result.settings['alignment_skipped'])}", highlight=False)
    for curve in result.curves:
        barriers = curve.barriers()
        console.print(f"{curve.variant:<22} barrier: train loss {barriers['train_loss']:.4g}, "
                      f"test error {barriers['test_error']:.4g}", highlight=False)
    console.print(f"{len(result.alphas)} points, {result.n_train} train / {result.n_test} test images; "
                  f"{_written(out_dir)}", highlight=False)


@analysis_command("weights")
def weights_command(
    run: Path = typer.Argument(..., help="run directory (its initial.pt gives the distances from init)"),
    threshold: float = table_option("weights", "threshold"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: analyses/<run>/weights)"),
) -> None:
    """Per conv/linear layer: norm, distance from init, effective and stable rank, small weights, spectrum."""
    check("weights", threshold=threshold)
    from minimascope.minima.weights import weights_of_run

    out_dir = _default_out(out, "weights", run)
    stats = weights_of_run(run, out_dir, threshold=threshold)
    ranks = [layer.effective_rank for layer in stats.layers]
    distances = [layer.relative_distance_from_init for layer in stats.layers if stats.has_initial]
    moved = f", relative distance from init {min(distances):.3g}–{max(distances):.3g}" if distances else ""
    console.print(f"{len(stats.layers)} layers: effective rank {min(ranks):.3g}–{max(ranks):.3g}{moved}",
                  highlight=False)
    console.print(_written(out_dir), highlight=False)


@analysis_command("mistakes")
def mistakes_command(
    run_a: Path = typer.Argument(..., help="run directory of A (its predictions.pt)"),
    run_b: Path = typer.Argument(..., help="run directory of B (the same test images)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: analyses/<A>_vs_<B>/mistakes)"),
    data_source: Optional[str] = typer.Option(None, "--data", help=DATA_HELP + "; for the image grids"),
    limit: int = table_option("mistakes", "limit"),
    seed: int = table_option("mistakes", "seed"),
) -> None:
    """Which test images two runs get wrong: both, only A, only B, against independent errors."""
    check("mistakes", limit=limit, seed=seed)
    from minimascope.minima.mistakes import mistakes_of_runs

    out_dir = _default_out(out, "mistakes", run_a, run_b)
    c = mistakes_of_runs(run_a, run_b, out_dir, data_source=data_source, limit=limit, seed=seed)
    console.print(f"{c.n} test images: both wrong {c.both_wrong} (independent errors: {c.expected_both_wrong:.1f}), "
                  f"only {c.label_a} {c.only_a_wrong}, only {c.label_b} {c.only_b_wrong}, both right {c.both_right}",
                  highlight=False, markup=False)
    console.print(f"more overlap than chance: p = {c.p_value_more_overlap:.3g}; {_written(out_dir)}",
                  highlight=False)
