"""What a study directory holds at its top and how it is read back: ``study.json`` (every node's
record; STUDY_FORMAT), ``study.yaml`` (the resolved study file) and ``summary.csv`` (one row per
run), and the result record every node's run returns.
"""

from __future__ import annotations

import csv
import io as _io
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minimascope import io
from minimascope.errors import MinimascopeError
from minimascope.study.graph import Node

STUDY_FORMAT = "minimascope-study-v1"
STUDY_JSON = "study.json"
STUDY_YAML = "study.yaml"
SUMMARY_CSV = "summary.csv"
SUMMARY_COLUMNS = ("arm", "seed", "optimizer", "init", "std_multiplier", "epochs", "status", "test_accuracy",
                   "test_loss", "train_loss", "train_accuracy", "epoch_time_mean_s", "epoch_time_std_s",
                   "step_time_mean_s")
# A node in one of these states is not run again by this invocation.
FINAL_STATUSES = ("completed", "diverged", "failed", "skipped")


def result(status: str, reason: str | None = None, **fields: Any) -> dict[str, Any]:
    """What running a node returns (and ``study.json`` keeps of it)."""
    return {"status": status, "reason": reason, "diverged_epoch": None, "final": None, **fields}


def read_study_record(study_dir: str | Path) -> dict[str, Any]:
    """A study directory's ``study.json`` as it is on disk; names the folder when it holds no study."""
    path = Path(study_dir) / STUDY_JSON
    if not path.is_file():
        raise MinimascopeError(f"not a study directory (no {STUDY_JSON}): {study_dir}")
    record = io.read_json(path, STUDY_JSON)
    if not isinstance(record, dict) or record.get("format") != STUDY_FORMAT:
        raise MinimascopeError(f"{path} is not a minimascope study record")
    return record


def _init_label(config: dict[str, Any], init_arm: str | None) -> str:
    if init_arm:
        return f"run:{init_arm}"
    return "imagenet" if config.get("pretrained") else "random"


def summary_rows(study_dir: Path, nodes: Sequence[Node], records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run node (``summary.csv``); metric cells empty unless the run completed."""
    from minimascope import runs

    rows = []
    for node in nodes:
        if node.kind != "run":
            continue
        config, record = node.params["config"], records[node.id]
        init_arm = node.params["init_path"].split("/")[1] if node.params.get("init_path") else None
        row: dict[str, Any] = {
            "arm": node.labels.get("arm"), "seed": node.labels.get("seed"), "optimizer": config["optimizer"],
            "init": _init_label(config, init_arm),
            "std_multiplier": ";".join(f"{m:g}" for m in config["std_multiplier"]),
            "epochs": config["epochs"], "status": record["status"]}
        if record["status"] == "completed":
            run = runs.read_run_json(study_dir / node.path)
            final, per_epoch = run.get("final") or {}, run.get("time_per_epoch_s") or {}
            steps = [r["iter_time_mean_s"] for r in runs.read_metrics(study_dir / node.path)
                     if r.get("iter_time_mean_s") is not None]
            row.update({k: final.get(k) for k in ("test_accuracy", "test_loss", "train_loss", "train_accuracy")})
            row.update({"epoch_time_mean_s": per_epoch.get("mean"), "epoch_time_std_s": per_epoch.get("std"),
                        "step_time_mean_s": statistics.fmean(steps) if steps else None})
        rows.append(row)
    return rows


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` as a CSV of ``columns`` (missing and None cells empty), written atomically."""
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    io.atomic_write_text(path, buffer.getvalue())
