"""``minimascope sharpness | weights | connectivity | mistakes``: describe one minimum, or two side by side.

Each command is named by its row of :data:`minimascope.analyses.ANALYSES` (the study's node kind), answers
to that row's aliases too (``connect`` for ``connectivity``, hidden from ``--help``), parses, makes one
library call (the row's run-level shell in :mod:`minimascope.minima`) and prints a short summary. Results
never go into a run directory: by default ``analyses/<run>/<name>`` or ``analyses/<A>_vs_<B>/<name>``, or
``--out``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer

from minimascope.analyses import ANALYSES
from minimascope.cli._app import app, console, one_line_errors

RUN_HELP = "run directory (or weights file) of a completed run"
DATA_HELP = "CIFAR-10 source (env: MINIMASCOPE_DATA)"
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


def _default_out(out: Optional[Path], name: str, *runs: Path) -> Path:
    if out is not None:
        return out
    names = [run.resolve().name if run.resolve().is_dir() else run.stem for run in runs]
    return Path("analyses") / "_vs_".join(names) / ANALYSES[name].name


@analysis_command("sharpness")
def sharpness_command(
    run: Path = typer.Argument(..., help=RUN_HELP),
    images: int = typer.Option(1000, help="class-balanced subset of N TRAINING images (the loss that was minimised)"),
    k: int = typer.Option(3, help="top eigenvalues computed"),
    tol: float = typer.Option(1e-3, help="relative residual at which an eigenvalue counts as converged"),
    max_iter: int = typer.Option(100, help="at most this many Lanczos steps for the top eigenvalues"),
    rel_error: float = typer.Option(1e-2, help="Hutchinson trace: stop when its standard error is below this share"),
    max_probes: int = typer.Option(1000, help="Hutchinson trace: at most this many probes"),
    density_steps: int = typer.Option(64, help="Lanczos steps of the eigenvalue density"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: analyses/<run>/sharpness)"),
    data_source: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    seed: int = typer.Option(0, help="seed of the image subset and of the probes"),
    batch_size: int = typer.Option(1000, help="images per Hessian-vector product batch (memory, not results)"),
    adaptive: bool = typer.Option(True, "--adaptive/--no-adaptive",
                                  help="also λ1 and trace of D·H·D, D = |w| (unchanged by a batch-norm rescaling)"),
) -> None:
    """Top Hessian eigenvalues, trace and eigenvalue density of a run's training loss (eval mode)."""
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
    console.print(f"loss {result.loss:.4g} on {result.n_images} training images; [green]written[/green] {out_dir}",
                  highlight=False)


@analysis_command("connectivity")
def connectivity_command(
    run_a: Path = typer.Argument(..., help=RUN_HELP + " (A, alpha = 0)"),
    run_b: Path = typer.Argument(..., help=RUN_HELP + " (B, alpha = 1)"),
    points: int = typer.Option(11, help="evenly spaced points on the path from A to B, ends included"),
    images: int = typer.Option(1000, help="class-balanced subsets of N train and N test images"),
    align: bool = typer.Option(True, "--align/--no-align",
                               help="also walk to B with its channels permuted onto A's (weight matching)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: analyses/<A>_vs_<B>/connectivity)"),
    data_source: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    seed: int = typer.Option(0, help="seed of the image subsets and of weight matching's order"),
    batch_size: int = typer.Option(500, help="images per forward pass"),
) -> None:
    """Loss and error along the straight line between two runs' weights, and its barrier."""
    from minimascope.minima.connectivity import connectivity_of_runs

    out_dir = _default_out(out, "connectivity", run_a, run_b)
    result = connectivity_of_runs(run_a, run_b, out_dir, points=points, images=images, align=align,
                                  data_source=data_source, device=device, seed=seed, batch_size=batch_size)
    for curve in result.curves:
        barriers = curve.barriers()
        console.print(f"{curve.variant:<22} barrier: train loss {barriers['train_loss']:.4g}, "
                      f"test error {barriers['test_error']:.4g}", highlight=False)
    console.print(f"{len(result.alphas)} points, {result.n_train} train / {result.n_test} test images; "
                  f"[green]written[/green] {out_dir}", highlight=False)


@analysis_command("weights")
def weights_command(
    run: Path = typer.Argument(..., help="run directory (its initial.pt gives the distances from init)"),
    threshold: float = typer.Option(1e-3, help="|w| below this counts as a small weight"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: analyses/<run>/weights)"),
) -> None:
    """Per conv/linear layer: norm, distance from init, effective and stable rank, small weights, spectrum."""
    from minimascope.minima.weights import weights_of_run

    out_dir = _default_out(out, "weights", run)
    stats = weights_of_run(run, out_dir, threshold=threshold)
    ranks = [layer.effective_rank for layer in stats.layers]
    distances = [layer.relative_distance_from_init for layer in stats.layers if stats.has_initial]
    moved = f", relative distance from init {min(distances):.3g}–{max(distances):.3g}" if distances else ""
    console.print(f"{len(stats.layers)} layers: effective rank {min(ranks):.3g}–{max(ranks):.3g}{moved}",
                  highlight=False)
    console.print(f"[green]written[/green] {out_dir}", highlight=False)


@analysis_command("mistakes")
def mistakes_command(
    run_a: Path = typer.Argument(..., help="run directory of A (its predictions.pt)"),
    run_b: Path = typer.Argument(..., help="run directory of B (the same test images)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: analyses/<A>_vs_<B>/mistakes)"),
    data_source: Optional[str] = typer.Option(None, "--data", help=DATA_HELP + "; for the image grids"),
) -> None:
    """Which test images two runs get wrong: both, only A, only B, against independent errors."""
    from minimascope.minima.mistakes import mistakes_of_runs

    out_dir = _default_out(out, "mistakes", run_a, run_b)
    c = mistakes_of_runs(run_a, run_b, out_dir, data_source=data_source)
    console.print(f"{c.n} test images: both wrong {c.both_wrong} (independent errors: {c.expected_both_wrong:.1f}), "
                  f"only {c.label_a} {c.only_a_wrong}, only {c.label_b} {c.only_b_wrong}, both right {c.both_right}",
                  highlight=False)
    console.print(f"more overlap than chance: p = {c.p_value_more_overlap:.3g}; [green]written[/green] {out_dir}",
                  highlight=False)
