"""The ``minimascope`` command line: one thin Typer command per task, Rich for progress.

Bad input reaches the user as one ``error:`` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from minimascope.errors import MinimascopeError
from minimascope.train import TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Which minimum did each optimizer find, and how do these minima differ?")
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _group() -> None:
    """Which minimum did each optimizer find, and how do these minima differ?"""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def one_line_errors(command: Callable) -> Callable:
    """Turn the user's mistakes into one line and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.showwarning = _show_warning
        try:
            return command(*args, **kwargs)
        except MinimascopeError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[red]interrupted[/red]: the last finished epoch is kept; continue with --resume")
            raise typer.Exit(130) from None

    return wrapper


# ----------------------------------------------------------------------------- train

_TRAIN_HELP = {
    "optimizer": "sgd or adahessian",
    "arch": "resnet18 (ImageNet stem, as in the study) or resnet18-cifar (3x3 stem, no max-pool)",
    "epochs": "epochs to train (default: 360 for sgd, 160 for adahessian)",
    "batch_size": "training batch size",
    "lr": "learning rate (default: 0.01 for sgd, 0.15 for adahessian)",
    "momentum": "SGD momentum",
    "nesterov": "SGD with Nesterov momentum",
    "weight_decay": "weight decay (SGD: L2 in the gradient; AdaHessian: decoupled unless --coupled-weight-decay)",
    "betas": "AdaHessian moving-average coefficients, e.g. 0.9,0.999",
    "eps": "AdaHessian denominator epsilon",
    "hessian_power": "AdaHessian Hessian power k in (0, 1]",
    "update_every": "AdaHessian: estimate the Hessian diagonal every k steps",
    "block_stat": "AdaHessian conv-window statistic: abs_mean or signed_mean",
    "hessian_samples": "AdaHessian Hutchinson probes per Hessian step",
    "coupled_weight_decay": "AdaHessian: add weight decay to the gradient (L2) instead of decoupling it",
    "milestones": "MultiStepLR milestones: fractions of the run (<1) or epochs, e.g. 0.5,0.75",
    "gamma": "MultiStepLR factor",
    "seed": "seed of init, data order, augmentation and Hutchinson probes",
    "pretrained": "start from torchvision's ImageNet weights (new 10-class head)",
    "weights": "local ImageNet weights file (implies --pretrained; for machines without internet)",
    "init_from": "start from the final weights of another run directory",
    "data": "CIFAR-10 source: image-folder tree, its .tar.gz, cifar-10-batches-py, or 'torchvision' (env: MINIMASCOPE_DATA)",
    "train_subset": "train on a class-balanced subset of N images",
    "test_subset": "evaluate on a class-balanced subset of N test images",
    "val_size": "hold out N training images (class-balanced) for validation",
    "folds": "k of a stratified k-fold split of the training images (with --fold)",
    "fold": "which fold (0-based) is the validation set",
    "augment": "random crop (padding 4) and horizontal flip",
    "std_multiplier": "per-channel multiplier of the normalised input's std (1 or 3 numbers), e.g. 1e-4",
    "device": "auto (cuda when present), cpu or cuda[:N]",
    "eval_batch_size": "batch size for evaluation",
}


def _option_type(annotation: str) -> type:
    base = annotation.replace(" | None", "")
    return {"int": int, "float": float, "bool": bool}.get(base, str)


def _train_parameters() -> list[inspect.Parameter]:
    """One ``--option`` per TrainConfig field, all defaulting to None ("not given"), so YAML
    values stand unless the command line names them."""
    parameters = []
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _option_type(f.type)
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        default = f.default if f.default is not None else None
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = _TRAIN_HELP[f.name] + ("" if "(default" in _TRAIN_HELP[f.name] or shown is None else f" (default: {shown})")
        parameters.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
            default=typer.Option(None, *decls, help=help_text, show_default=False),
        ))
    return parameters


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise MinimascopeError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise MinimascopeError(f"bad YAML in {path}{where}: {getattr(exc, 'problem', None) or exc}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise MinimascopeError(f"{path} must hold a mapping of option names to values")
    return values


class RichTrainProgress:
    """A progress bar per epoch and one summary line after each."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
        self.task = None

    def start(self, first_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        self.epochs, self.steps = epochs, steps_per_epoch
        self.bar.start()
        self.task = self.bar.add_task("train", total=steps_per_epoch, epoch=first_epoch + 1, epochs=epochs, loss=float("nan"))

    def step(self, loss: float) -> None:
        self.bar.update(self.task, advance=1, loss=loss)

    def epoch(self, row: dict) -> None:
        val = f" val acc {row['val_accuracy']:.3f}" if row["val_accuracy"] is not None else ""
        self.bar.console.print(
            f"epoch {row['epoch']}/{self.epochs} train loss {row['train_loss']:.3f} acc {row['train_accuracy']:.3f}"
            f"{val} test loss {row['test_loss']:.3f} acc {row['test_accuracy']:.3f} {row['epoch_time_s']:.1f}s"
            f" {row['iter_time_mean_s'] * 1000:.0f}±{row['iter_time_std_s'] * 1000:.0f}ms/step", highlight=False, soft_wrap=True)
        self.bar.reset(self.task, total=self.steps, epoch=min(row["epoch"] + 1, self.epochs), epochs=self.epochs,
                       loss=float("nan"))

    def stop(self) -> None:
        self.bar.stop()


@one_line_errors
def train_command(
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file whose keys are any of the options below"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default: runs/<optimizer>-<arch>-seed<seed>-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out (a finished run is left as it is)"),
    **options: Any,
) -> None:
    """Train one network on CIFAR-10 into a run directory (metrics, checkpoints, final weights)."""
    from minimascope.train import train

    values = read_yaml_mapping(config) if config else {}
    values.update({k: v for k, v in options.items() if v is not None})
    train_config = TrainConfig.from_mapping(values, source=str(config) if config else "option")
    if resume and out is None:
        raise MinimascopeError("--resume needs --out RUN_DIR")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = out or Path("runs") / f"{train_config.optimizer}-{train_config.arch}-seed{train_config.seed}-{stamp}"
    progress = RichTrainProgress()
    try:
        record = train(train_config, run_dir, resume=resume, progress=progress)
    finally:
        progress.stop()
    status = record["status"]
    if status == "completed":
        final = record["final"]
        console.print(f"[green]completed[/green] {run_dir}: test accuracy {final['test_accuracy']:.4f}, "
                      f"test loss {final['test_loss']:.4f}")
    else:
        console.print(f"[yellow]{status}[/yellow] {run_dir} at epoch {record.get('diverged_epoch')}: the loss stopped being finite")


train_command.__signature__ = inspect.Signature(
    [p for p in inspect.signature(train_command).parameters.values() if p.kind is not p.VAR_KEYWORD]
    + _train_parameters()
)
train_command.__annotations__ = {p.name: p.annotation for p in train_command.__signature__.parameters.values()}
app.command("train")(train_command)


# ----------------------------------------------------------------------------- compare


class RichStageProgress:
    """Adapts ``similarity``'s ``progress(stage, done, total)`` calls to one Rich bar per stage."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console)
        self.tasks: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def __enter__(self) -> RichStageProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def _split_names(text: Optional[str]) -> Optional[list[str]]:
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


@app.command("compare")
@one_line_errors
def compare_command(
    run_a: Path = typer.Argument(..., help="run directory or weights/checkpoint file of network A"),
    run_b: Path = typer.Argument(..., help="run directory or weights/checkpoint file of network B (may be A)"),
    measures: str = typer.Option("cka,svcca,procrustes", help="comma-separated: cka, cka_minibatch, svcca, mean_cca, procrustes"),
    samples: int = typer.Option(10_000, help="test images compared (a class-balanced subset when fewer than 10,000)"),
    layers: Optional[str] = typer.Option(None, help="comma-separated module names for both networks (default: every Conv2d and Linear)"),
    layers_b: Optional[str] = typer.Option(None, help="module names for B when they differ from --layers"),
    layer_set: str = typer.Option("conv_linear", help="default layers: conv_linear or blocks"),
    policy: str = typer.Option("flatten", help="conv maps: flatten (N, C*H*W) or spatial_mean (N, C)"),
    data_source: Optional[str] = typer.Option(None, "--data", help="CIFAR-10 source (env: MINIMASCOPE_DATA)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: comparisons/<A>_vs_<B>)"),
    device: str = typer.Option("auto", help="auto (cuda when present), cpu or cuda[:N]"),
    batch_size: int = typer.Option(500, help="images per forward pass"),
) -> None:
    """Compare every layer of network A with every layer of network B on the CIFAR-10 test set."""
    from minimascope import data, models, report, similarity
    from minimascope.train import resolve_device

    if samples < 1:
        raise MinimascopeError(f"--samples must be at least 1, got {samples}")
    if policy not in similarity.POLICIES or layer_set not in similarity.LAYER_SETS:
        raise MinimascopeError(f"--policy must be one of {', '.join(similarity.POLICIES)} and --layer-set one of "
                               f"{', '.join(similarity.LAYER_SETS)}")
    torch_device = resolve_device(device)
    path_a, path_b = run_a.resolve(), run_b.resolve()
    same_run = path_a == path_b
    label_a, label_b = path_a.name, path_b.name
    if not same_run and label_a == label_b:
        label_a, label_b = f"A {label_a}", f"B {label_b}"
    model_a, payload_a = models.load_trained(run_a)
    model_b, payload_b = (model_a, payload_a) if same_run else models.load_trained(run_b)
    cifar = data.load_cifar10(data_source)
    images = cifar.test_images
    if samples < len(images):
        images = images[data.balanced_subset(cifar.test_labels, samples, seed=0)]
    elif samples > len(images):
        raise MinimascopeError(f"--samples {samples} exceeds the {len(images)} test images")

    def inputs_for(payload: dict):
        normalization = data.Normalization(**{k: tuple(v) for k, v in payload["normalization"].items()})
        return normalization(images)

    inputs_a = inputs_for(payload_a)
    inputs_b = inputs_a if same_run or payload_a["normalization"] == payload_b["normalization"] else inputs_for(payload_b)
    example = inputs_a[:1].to(torch_device)
    names_a = _split_names(layers) or similarity.default_layers(model_a.to(torch_device), example, layer_set)
    names_b = _split_names(layers_b) or _split_names(layers) or similarity.default_layers(
        model_b.to(torch_device), example, layer_set)
    with RichStageProgress() as progress:
        matrices = similarity.similarity_matrices(
            model_a, inputs_a, model_b, inputs_b, layers_a=names_a, layers_b=names_b,
            measures=_split_names(measures) or [], batch_size=batch_size, device=torch_device, policy=policy,
            label_a=label_a, label_b=label_b, progress=progress)
    out_dir = out or Path("comparisons") / f"{path_a.name}_vs_{path_b.name}"
    report.write_similarity(matrices, out_dir)
    for matrix in matrices:
        diagonal = f", mean diagonal {matrix.values.diagonal().mean():.4f}" if matrix.values.shape[0] == matrix.values.shape[1] else ""
        console.print(f"{matrix.measure} ({matrix.kind}): {matrix.values.shape[0]}x{matrix.values.shape[1]} layers, "
                      f"n={matrix.n_samples}{diagonal}")
    console.print(f"[green]written[/green] {out_dir}")


def main() -> None:
    app(prog_name="minimascope")


if __name__ == "__main__":
    sys.exit(main())
