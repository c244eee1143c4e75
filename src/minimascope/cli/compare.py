"""``minimascope compare``: two networks, layer by layer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from minimascope.cli._app import RichStageProgress, app, console, one_line_errors, split_names
from minimascope.cli.minima import DATA_HELP


@app.command("compare")
@one_line_errors
def compare_command(
    run_a: Path = typer.Argument(..., help="run directory or weights/checkpoint file of network A"),
    run_b: Path = typer.Argument(..., help="run directory or weights/checkpoint file of network B (may be A)"),
    measures: str = typer.Option("cka,svcca,procrustes",
                                 help="comma-separated: cka, cka_minibatch, svcca, mean_cca, procrustes"),
    samples: Optional[int] = typer.Option(
        None, help="test images compared, a class-balanced subset when fewer than all (default: all, 10,000 for "
                   "CIFAR-10)"),
    layers: Optional[str] = typer.Option(
        None, help="comma-separated module names for both networks (default: every Conv2d and Linear)"),
    layers_b: Optional[str] = typer.Option(None, help="module names for B when they differ from --layers"),
    layer_set: str = typer.Option("conv_linear", help="default layers: conv_linear or blocks"),
    policy: str = typer.Option("flatten", help="conv maps: flatten (N, C*H*W) or spatial_mean (N, C)"),
    data_source: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    out: Optional[Path] = typer.Option(None, help="output folder (default: comparisons/<A>_vs_<B>)"),
    device: str = typer.Option("auto", help="auto (cuda when present), cpu or cuda[:N]"),
    batch_size: int = typer.Option(500, help="images per forward pass"),
    bootstrap: int = typer.Option(0, help="image subsamples for CKA intervals and shuffled-image baselines of "
                                          "same-named layers, written to bootstrap.json (0: none)"),
) -> None:
    """Compare every layer of network A with every layer of network B on the test set of their data set."""
    from minimascope.compare import compare_networks

    out_dir = out or Path("comparisons") / f"{run_a.resolve().name}_vs_{run_b.resolve().name}"
    with RichStageProgress() as progress:
        matrices = compare_networks(
            run_a, run_b, out_dir, measures=split_names(measures) or [], samples=samples,
            layers_a=split_names(layers), layers_b=split_names(layers_b), layer_set=layer_set, policy=policy,
            data_source=data_source, device=device, batch_size=batch_size, bootstrap=bootstrap,
            progress=progress)
    for matrix in matrices:
        square = matrix.values.shape[0] == matrix.values.shape[1]
        diagonal = f", mean diagonal {matrix.values.diagonal().mean():.4f}" if square else ""
        console.print(f"{matrix.measure} ({matrix.kind}): {matrix.values.shape[0]}x{matrix.values.shape[1]} layers, "
                      f"n={matrix.n_samples}{diagonal}", highlight=False, markup=False)
    console.print(f"[green]written[/green] {escape(str(out_dir))}", highlight=False)
