"""``minimascope study``, ``status`` and ``tune``: a whole study (or a k-fold grid) as one resumable command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from minimascope.cli._app import app, console, one_line_errors

STATUS_STYLE = {"completed": "green", "running": "cyan", "pending": "dim", "failed": "red", "diverged": "yellow",
                "skipped": "yellow", "interrupted": "magenta"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def node_line(node_json: dict[str, Any]) -> str:
    """One line for a finished node; names (arms, paths, reasons) printed as they are, never as markup."""
    status, time_s = node_json["status"], node_json.get("time_s")
    line = f"[{STATUS_STYLE.get(status, '')}]{status:<9}[/] {escape(node_json['id'])}"
    final = node_json.get("final") or {}
    if final.get("test_accuracy") is not None:
        line += f"  test acc {final['test_accuracy']:.3f} loss {final['test_loss']:.3f}"
    if time_s is not None:
        line += f"  {time_s:.1f}s"
    if node_json.get("reason"):
        line += f"  ({escape(node_json['reason'])})"
    return line


class RichStudyProgress:
    """One live display for the whole study: nodes done / total, the running nodes with their
    epoch, elapsed time and an estimate of what remains; a line printed per finished node."""

    def __init__(self) -> None:
        self.state = None
        self.live = Live(console=console, refresh_per_second=2, transient=True, get_renderable=self._render)

    def _render(self) -> Group:
        state = self.state
        if state is None:
            return Group()
        done = sum(n for status, n in state.counts().items() if status not in ("pending", "running"))
        remaining = state.remaining()
        head = Text.from_markup(f"[bold]{escape(state.header['name'])}[/bold]  nodes {done}/{len(state.nodes)}  "
                                f"elapsed {_duration(state.elapsed())}  remaining ~{_duration(remaining)}")
        lines = [head]
        for node in state.running():
            epoch = state.epochs.get(node.id)
            detail = f" epoch {epoch}/{node.params['config']['epochs']}" if epoch is not None and \
                node.kind == "run" else ""
            lines.append(Text.from_markup(f"  [cyan]running[/cyan] {escape(node.id)}{detail}"))
        return Group(*lines)

    def start(self, state) -> None:
        self.state = state
        self.live.start()

    def update(self, state) -> None:
        self.live.refresh()

    def finished(self, state, node) -> None:
        console.print(node_line(state.node_json(node)), highlight=False, soft_wrap=True)

    def stop(self) -> None:
        self.live.stop()


def _executor_options(ray_address: str | None, cpus_per_run: float | None, gpus_per_run: float) -> dict[str, Any]:
    return {"address": ray_address, "cpus_per_run": cpus_per_run, "gpus_per_run": gpus_per_run}


def _closing(outcome, what: str) -> None:
    from minimascope.study import exit_status

    counts = ", ".join(f"{n} {status}" for status, n in sorted(outcome.counts.items()))
    console.print(f"{what} {outcome.study_dir}: {counts} in {_duration(outcome.wall_time_s)}", highlight=False,
                  markup=False)
    status = exit_status(outcome.counts)
    if status:
        raise typer.Exit(status)


EXECUTOR_HELP = "local (one node after another here) or ray (each node a Ray task)"
RAY_HELP = "Ray cluster to join (default: start a local instance)"
DATA_HELP = ("the source of the data set the file's dataset: names (default cifar10; env: MINIMASCOPE_DATA, "
             "cifar10 only; see: minimascope datasets)")
CPUS_HELP = "CPUs per node for Ray (also torch's thread count in the task; default: 1 CPU, the driver's threads)"


@app.command("study")
@one_line_errors
def study_command(
    study: str = typer.Argument(..., help="a preset (paper, quick, tiny, optimizers) or a study file (YAML)"),
    out: Optional[Path] = typer.Option(None, help="study directory (default: studies/<name>)"),
    data: Optional[str] = typer.Option(None, help=DATA_HELP),
    weights: Optional[Path] = typer.Option(
        None, help="torchvision's IMAGENET1K_V1 resnet18 weights file, for pretrained resnet18 arms (env: "
                   "MINIMASCOPE_IMAGENET_WEIGHTS; other architectures fetch their own)"),
    download_weights: bool = typer.Option(
        True, help="without --weights, try torchvision's download of the ImageNet weights"),
    executor: str = typer.Option("local", help=EXECUTOR_HELP),
    ray_address: Optional[str] = typer.Option(None, help=RAY_HELP),
    cpus_per_run: Optional[float] = typer.Option(None, help=CPUS_HELP),
    gpus_per_run: float = typer.Option(0.0, help="GPUs per node for Ray (fractions share a GPU)"),
) -> None:
    """Run every arm of a study over its seeds and compare the networks; re-running continues it.

    Ends with the study's report (STUDY_DIR/report/index.html), also when some nodes did not complete.
    Exit status: 1 a node failed, 3 a run diverged (none failed), else 0; skipped nodes are listed.
    """
    from minimascope.study import run_study
    from minimascope.study.spec import load_spec

    name = load_spec(study).name
    study_dir = out or Path("studies") / name
    progress = RichStudyProgress()
    outcome = run_study(study, study_dir, data=data, weights=str(weights) if weights else None,
                        download_weights=download_weights, executor=executor,
                        executor_options=_executor_options(ray_address, cpus_per_run, gpus_per_run)
                        if executor == "ray" else None, progress=progress)
    from minimascope.cli.report import write_and_announce

    write_and_announce(study_dir)
    _closing(outcome, "study")


@app.command("status")
@one_line_errors
def status_command(study_dir: Path = typer.Argument(..., help="a study (or tune) directory")) -> None:
    """Every node of a study with its status, time and final metrics. Nodes a killed driver left
    running are shown as interrupted: the next ``study`` resumes them."""
    from minimascope.io import is_locked
    from minimascope.study.records import read_study_record

    record = read_study_record(study_dir)  # names, types and paths checked: a damaged study.json is one line
    running = is_locked(study_dir)
    title = f"{record.get('name')} ({record.get('source')}), updated {record.get('updated')}"
    table = Table(title=escape(title))
    for column in ("node", "status", "epoch", "time", "test acc", "test loss", "reason"):
        table.add_column(column, overflow="fold")
    counts: dict[str, int] = {}
    for node in record["nodes"]:
        final = node.get("final") or {}
        status = "interrupted" if node["status"] == "running" and not running else node["status"]
        counts[status] = counts.get(status, 0) + 1
        table.add_row(
            escape(node["id"]), f"[{STATUS_STYLE.get(status, '')}]{status}[/]",
            str(node.get("diverged_epoch") or node.get("epoch") or ""), _duration(node.get("time_s"))
            if node.get("time_s") is not None else "",
            f"{final['test_accuracy']:.4f}" if final.get("test_accuracy") is not None else "",
            f"{final['test_loss']:.4f}" if final.get("test_loss") is not None else "", escape(node.get("reason") or ""))
    console.print(table)
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) +
                  f"; wall time {_duration(record.get('wall_time_s'))}", highlight=False, markup=False)
    if counts.get("interrupted"):
        console.print(f"interrupted: no driver holds {Path(study_dir) / '.lock'}; run the study again to resume it",
                      highlight=False, markup=False)


@app.command("tune")
@one_line_errors
def tune_command(
    tune: str = typer.Argument(..., help="a preset (tune) or a tune file (YAML: defaults, grid, folds, seed)"),
    out: Optional[Path] = typer.Option(None, help="tune directory (default: tunes/<name>)"),
    data: Optional[str] = typer.Option(None, help=DATA_HELP),
    folds: Optional[int] = typer.Option(None, help="k of the k-fold split (default: the file's, else 5)"),
    executor: str = typer.Option("local", help=EXECUTOR_HELP),
    ray_address: Optional[str] = typer.Option(None, help=RAY_HELP),
    cpus_per_run: Optional[float] = typer.Option(None, help=CPUS_HELP),
    gpus_per_run: float = typer.Option(0.0, help="GPUs per node for Ray (fractions share a GPU)"),
) -> None:
    """Grid of train options × k stratified folds of the training set; ranks the settings by mean
    validation accuracy and writes the best as a YAML usable as a study file's ``defaults``."""
    from minimascope.tune import BEST_YAML, load_tune, run_tune

    spec = load_tune(tune, folds=folds)
    tune_dir = out or Path("tunes") / spec.name
    started = time.perf_counter()
    progress = RichStudyProgress()
    outcome, ranked = run_tune(spec, tune_dir, data=data, executor=executor,
                               executor_options=_executor_options(ray_address, cpus_per_run, gpus_per_run)
                               if executor == "ray" else None, progress=progress)
    table = Table(title=f"{escape(spec.name)}: {spec.folds}-fold validation, ranked by mean validation accuracy")
    for column in ("rank", "setting", "val acc", "val loss", "folds"):
        table.add_column(column)
    for row in ranked:
        scored = row["val_accuracy_mean"] is not None
        table.add_row(str(row["rank"] or ""), escape(row["setting"]),
                      f"{row['val_accuracy_mean']:.4f} ± {row['val_accuracy_std']:.4f}" if scored else "",
                      f"{row['val_loss_mean']:.4f}" if scored else "", str(row["folds_completed"]))
    console.print(table)
    took = _duration(time.perf_counter() - started)
    if ranked and ranked[0]["rank"] is not None:  # best.yaml is written only when a setting has a completed fold
        console.print(f"best setting: {tune_dir / BEST_YAML} ({took})", highlight=False, markup=False)
    else:
        console.print(f"no best setting: no fold completed, no {BEST_YAML} written ({took})", highlight=False,
                      markup=False)
    _closing(outcome, "tune")
