"""The run directory: its paths, the ``run.json`` schema, and reading what a run left behind.

A run directory holds ``run.json`` (format, config, key, versions, device, status, final
metrics), ``metrics.csv`` (one row per epoch), TensorBoard ``events.*`` files, ``initial.pt`` (the
weights before epoch 1), ``checkpoint.pt`` (the latest state for resume), ``final.pt`` (final
weights only), ``predictions.pt`` (the final network's test predictions) and ``.lock`` (held by the
process writing the run). Every file is written atomically (:mod:`minimascope.io`), and
``run.json`` with ``status: completed`` is the only sign that a run is finished. A completed run
also holds ``steps.csv``: the time of every training step (evaluation excluded), what a claim about
the cost per step tests.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from minimascope.errors import MinimascopeError
from minimascope.io import read_json

RUN_FORMAT = "minimascope-run-v1"
RUN_JSON = "run.json"
METRICS_CSV = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
FINAL_WEIGHTS = "final.pt"
INITIAL_WEIGHTS = "initial.pt"  # same payload as final.pt, before epoch 1
STEPS_CSV = "steps.csv"  # epoch, step, time_s: every training step of a completed run
PREDICTIONS = "predictions.pt"
PREDICTIONS_FORMAT = "minimascope-predictions-v1"
SNAPSHOTS = "snapshots"  # snapshots/epoch-0004.pt: the weights every k epochs (snapshot_every), final.pt's payload
# Files a run writes atomically, whose killed writes leave temporaries to clean up on resume.
RUN_FILES = (RUN_JSON, METRICS_CSV, CHECKPOINT, FINAL_WEIGHTS, INITIAL_WEIGHTS, PREDICTIONS, STEPS_CSV)
METRIC_COLUMNS = (
    "epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
    "test_accuracy", "epoch_time_s", "iter_time_mean_s", "iter_time_std_s", "eval_time_s", "iter_time_median_s",
)
# What run.json's "final" holds for a completed run.
FINAL_METRICS = ("test_accuracy", "test_loss", "train_accuracy", "train_loss", "val_accuracy", "val_loss")
STATUSES = ("running", "completed", "diverged", "failed")


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    """A run's record; names the folder when it holds no run and the file when it is broken."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise MinimascopeError(f"not a run directory (no {RUN_JSON}): {run_dir}")
    record = read_json(path, RUN_JSON)
    if not isinstance(record, dict) or record.get("format", RUN_FORMAT) != RUN_FORMAT:
        raise MinimascopeError(f"{path} is not a minimascope run record")
    return record


def is_completed(run_dir: str | Path) -> bool:
    try:
        return read_run_json(run_dir).get("status") == "completed"
    except MinimascopeError:
        return False


def read_metrics(run_dir: str | Path) -> list[dict[str, float | None]]:
    """``metrics.csv`` as one dict per epoch (empty cells are None). Strict: every row has the header's
    fields, every cell is empty or a finite number and every epoch a positive whole number, else one line
    naming the file, the row and the column."""
    path = Path(run_dir) / METRICS_CSV
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or "epoch" not in header:
                raise MinimascopeError(f"{path}: not a metrics file (no epoch column in its header)")
            rows = []
            for line, cells in enumerate(reader, start=2):
                if len(cells) != len(header):
                    raise MinimascopeError(f"{path}: line {line} has {len(cells)} fields, the header {len(header)}")
                row = {column: _metric(cell, path, line, column) for column, cell in zip(header, cells)}
                epoch = row["epoch"]
                if epoch is None or epoch < 1 or not float(epoch).is_integer():
                    raise MinimascopeError(f"{path}: line {line}: epoch {cells[header.index('epoch')]!r} is not "
                                           f"a positive whole number")
                rows.append(row)
            return rows
    except OSError as exc:
        raise MinimascopeError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:  # binary bytes, a NUL, a broken quote
        reason = exc.reason if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise MinimascopeError(f"{path}: not a metrics file ({reason})") from None


def _metric(cell: str, path: Path, line: int, column: str) -> float | None:
    """One metrics.csv cell: empty is None, anything else a finite number."""
    if cell == "":
        return None
    try:
        value = float(cell)
    except ValueError:
        raise MinimascopeError(f"{path}: line {line}: {column} {cell[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise MinimascopeError(f"{path}: line {line}: {column} is {cell}, not a finite number")
    return value


def snapshot_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / SNAPSHOTS / f"epoch-{epoch:04d}.pt"


def snapshot_paths(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The weight snapshots a run kept, as (epoch, path) in epoch order (none unless ``snapshot_every``)."""
    folder = Path(run_dir) / SNAPSHOTS
    found = [(int(p.stem.removeprefix("epoch-")), p) for p in folder.glob("epoch-[0-9][0-9][0-9][0-9].pt")]
    return sorted(found)


def read_predictions(run_dir: str | Path) -> dict[str, Any]:
    """``predictions.pt`` of a completed run: ``predicted`` and ``labels`` (int64, one per test
    image the run evaluated) and ``test_index`` (those images' indices in the data set's test split)."""
    from minimascope.io import load_torch_file

    path = Path(run_dir) / PREDICTIONS
    payload = load_torch_file(path, "predictions file")
    if not isinstance(payload, dict) or payload.get("format") != PREDICTIONS_FORMAT:
        raise MinimascopeError(f"{path} is not a minimascope predictions file")
    return payload
