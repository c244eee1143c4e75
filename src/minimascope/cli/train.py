"""``minimascope train``: one run into a run directory."""

from __future__ import annotations

import dataclasses
import inspect
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from minimascope.cli._app import DIVERGED, RichStageProgress, app, console, one_line_errors
from minimascope.config import TrainConfig
from minimascope.errors import MinimascopeError
from minimascope.io import read_yaml_mapping


def _option_type(annotation: str) -> type:
    base = annotation.replace(" | None", "")
    return {"int": int, "float": float, "bool": bool}.get(base, str)


def parse_optimizer_args(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as a mapping, each value read as YAML (``rho=0.05``: a number, ``adaptive=true``:
    a boolean, ``base=sgd``: a string)."""
    import yaml

    args = {}
    for item in items:
        key, equals, text = item.partition("=")
        if not equals or not key.strip():
            raise MinimascopeError(f"--optimizer-arg: expected KEY=VALUE, got {item!r}")
        try:
            args[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise MinimascopeError(f"--optimizer-arg {key}: {text!r} is not a YAML value") from None
    return args


def _train_parameters() -> list[inspect.Parameter]:
    """One ``--option`` per TrainConfig field, all defaulting to None ("not given"), so YAML
    values stand unless the command line names them."""
    parameters = []
    for f in dataclasses.fields(TrainConfig):
        if f.name == "optimizer_args":  # a mapping: --optimizer-arg KEY=VALUE, repeated
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _option_type(f.type)
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f.metadata["help"]
        if "(default" not in help_text and shown is not None:
            help_text += f" (default: {shown})"
        parameters.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
            default=typer.Option(None, *decls, help=help_text, show_default=False),
        ))
    return parameters


class RichTrainProgress:
    """A bar while a cold data cache is decoded, then a progress bar per epoch and one summary line after each."""

    def __init__(self) -> None:
        self.decode = RichStageProgress()
        self.bar = Progress(TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
        self.task = None

    def start(self, first_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        self.decode.stop()  # Rich shows one live display at a time
        self.epochs, self.steps = epochs, steps_per_epoch
        self.bar.start()
        self.task = self.bar.add_task("train", total=steps_per_epoch, epoch=first_epoch + 1, epochs=epochs,
                                      loss=float("nan"))

    def step(self, loss: float) -> None:
        self.bar.update(self.task, advance=1, loss=loss)

    def epoch(self, row: dict) -> None:
        self.bar.console.print(epoch_line(row, self.epochs), highlight=False, soft_wrap=True)
        self.bar.reset(self.task, total=self.steps, epoch=min(row["epoch"] + 1, self.epochs), epochs=self.epochs,
                       loss=float("nan"))

    def stop(self) -> None:
        self.decode.stop()
        self.bar.stop()


def epoch_line(row: dict, epochs: int) -> str:
    """One unbroken summary line of a finished epoch."""
    val = f" val acc {row['val_accuracy']:.3f}" if row["val_accuracy"] is not None else ""
    return (f"epoch {row['epoch']}/{epochs} train loss {row['train_loss']:.3f} acc {row['train_accuracy']:.3f}"
            f"{val} test loss {row['test_loss']:.3f} acc {row['test_accuracy']:.3f} {row['epoch_time_s']:.1f}s"
            f" {row['iter_time_mean_s'] * 1000:.0f}±{row['iter_time_std_s'] * 1000:.0f}ms/step")


@one_line_errors
def train_command(
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file whose keys are any of the options below"),
    out: Optional[Path] = typer.Option(
        None, "--out", help="run directory (default: runs/<optimizer>-<arch>-seed<seed>-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out (a finished run is left as it is)"),
    optimizer_arg: Optional[list[str]] = typer.Option(
        None, "--optimizer-arg", help="an option of the optimizer as KEY=VALUE (VALUE read as YAML), e.g. "
                                      "--optimizer-arg rho=0.05; repeat for more (see: minimascope optimizers NAME)"),
    **options: Any,
) -> None:
    """Train one network on a data set (--dataset, default cifar10) into a run directory (metrics, checkpoints,
    final weights). The data sets and architectures: minimascope datasets.

    Exit status: 0 completed, 2 bad input or a fault of the environment (one error line), 3 diverged
    (a train, validation or test loss stopped being finite; the run keeps its last good checkpoint).
    """
    values = read_yaml_mapping(config) if config else {}
    values.update({k: v for k, v in options.items() if v is not None})
    if optimizer_arg:
        given = values.get("optimizer_args") or {}
        if isinstance(given, dict):  # else from_mapping names the YAML's mistake
            values["optimizer_args"] = {**given, **parse_optimizer_args(optimizer_arg)}
    train_config = TrainConfig.from_mapping(values, source=str(config) if config else "option")
    if resume and out is None:
        raise MinimascopeError("--resume needs --out RUN_DIR")
    from minimascope.train import train  # the heavy imports, once the options are known to be good

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    # an import path or a torchvision:/timm: model: no colon in the folder's name
    name, arch = train_config.optimizer.replace(":", "."), train_config.arch.replace(":", ".")
    run_dir = out or Path("runs") / f"{name}-{arch}-seed{train_config.seed}-{stamp}"
    progress = RichTrainProgress()
    try:
        record = train(train_config, run_dir, resume=resume, progress=progress, data_progress=progress.decode)
    finally:
        progress.stop()
    status = record["status"]
    if status == "completed":
        final = record["final"]
        console.print(f"[green]completed[/green] {run_dir}: test accuracy {final['test_accuracy']:.4f}, "
                      f"test loss {final['test_loss']:.4f}")
    else:
        console.print(f"[yellow]{status}[/yellow] {run_dir} at epoch {record.get('diverged_epoch')}: the "
                      f"{record.get('diverged_loss', 'loss')} stopped being finite; no final weights", highlight=False)
        raise typer.Exit(DIVERGED)


train_command.__signature__ = inspect.Signature(
    [p for p in inspect.signature(train_command).parameters.values() if p.kind is not p.VAR_KEYWORD]
    + _train_parameters()
)
train_command.__annotations__ = {p.name: p.annotation for p in train_command.__signature__.parameters.values()}
app.command("train")(train_command)
