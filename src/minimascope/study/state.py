"""What the driver knows of a study while it runs: every node's status, ``study.json`` (rewritten
atomically after each change, by the driver only), ``summary.csv``, and what the progress display
is told.
"""

from __future__ import annotations

import csv
import io as _io
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from minimascope import io
from minimascope.errors import MinimascopeError
from minimascope.study.graph import Node
from minimascope.study.tasks import now, result

STUDY_FORMAT = "minimascope-study-v1"
STUDY_JSON = "study.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_COLUMNS = ("arm", "seed", "optimizer", "init", "std_multiplier", "epochs", "status", "test_accuracy",
                   "test_loss", "train_loss", "train_accuracy", "epoch_time_mean_s", "epoch_time_std_s",
                   "step_time_mean_s")
DONE = ("completed", "diverged", "failed", "skipped")


class StudyProgress(Protocol):
    """What the driver tells whoever shows progress (the CLI draws it with Rich; tests pass None)."""

    def start(self, state: StudyState) -> None: ...
    def update(self, state: StudyState) -> None: ...
    def finished(self, state: StudyState, node: Node) -> None: ...
    def stop(self) -> None: ...


def remaining_seconds(nodes: Sequence[Node], records: dict[str, dict[str, Any]],
                      epochs_done: dict[str, int]) -> float | None:
    """A serial estimate of what is left: runs by seconds per epoch of finished runs of the same
    optimizer (any optimizer when none has finished yet), other kinds by their mean node time.
    None before anything was timed."""
    per_epoch: dict[str, list[float]] = {}
    per_node: dict[str, list[float]] = {}
    for node in nodes:
        record = records[node.id]
        if record["status"] != "completed" or not record.get("time_s") or not record.get("timed"):
            continue
        if node.kind == "run":
            config = node.params["config"]
            ran = config["epochs"] - record.get("first_epoch", 0)
            if ran > 0:
                per_epoch.setdefault(config["optimizer"], []).append(record["time_s"] / ran)
        else:
            per_node.setdefault(node.kind, []).append(record["time_s"])
    any_epoch = [t for times in per_epoch.values() for t in times]
    total, known = 0.0, False
    for node in nodes:
        if records[node.id]["status"] in DONE or node.skip_reason:
            continue
        if node.kind == "run":
            config = node.params["config"]
            rates = per_epoch.get(config["optimizer"]) or any_epoch
            if rates:
                total += statistics.fmean(rates) * (config["epochs"] - epochs_done.get(node.id, 0))
                known = True
        elif per_node.get(node.kind):
            total += statistics.fmean(per_node[node.kind])
            known = True
    return total if known else None


class StudyState:
    """Every node's record, kept on disk in ``study.json``."""

    def __init__(self, study_dir: Path, nodes: list[Node], header: dict[str, Any],
                 progress: StudyProgress | None = None) -> None:
        self.study_dir, self.nodes, self.header, self.progress = study_dir, nodes, header, progress
        self.by_id = {node.id: node for node in nodes}
        self.epochs: dict[str, int] = {}  # the running runs' epochs
        self.clock = time.perf_counter()
        previous = read_study(study_dir) if (study_dir / STUDY_JSON).is_file() else {}
        self.created = previous.get("created", now())
        self.previous_wall = float(previous.get("wall_time_s") or 0.0)
        earlier = {n["id"]: n for n in previous.get("nodes", [])}
        self.records = {node.id: self._initial(node, earlier.get(node.id)) for node in nodes}

    def _initial(self, node: Node, earlier: dict[str, Any] | None) -> dict[str, Any]:
        from minimascope.study.tasks import kind

        stored = kind(node.kind).stored(self.study_dir / node.path)
        if stored is not None and stored["status"] in ("completed", "diverged"):
            kept = earlier if earlier and earlier.get("key") == node.key else {}
            return {**result(stored["status"], stored["reason"], diverged_epoch=stored["diverged_epoch"],
                             final=stored["final"]),
                    **{k: kept.get(k) for k in ("started", "finished", "time_s")}}
        return result("pending")

    def elapsed(self) -> float:
        return time.perf_counter() - self.clock

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records.values():
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return counts

    def remaining(self) -> float | None:
        return remaining_seconds(self.nodes, self.records, self.epochs)

    def running(self) -> list[Node]:
        return [n for n in self.nodes if self.records[n.id]["status"] == "running"]

    def event(self, node_id: str, event: str, epoch: int, epochs: int) -> None:
        """A node started, or one of its epochs finished (``epoch`` of ``epochs``)."""
        if event == "started":
            self.records[node_id] = {**result("running"), "started": now()}
            self.write()
        elif event == "epoch":
            if node_id not in self.epochs:
                self.records[node_id]["first_epoch"] = epoch  # a resumed run starts past 0
            self.epochs[node_id] = epoch
        if self.progress:
            self.progress.update(self)

    def finish(self, node: Node, outcome: dict[str, Any]) -> None:
        first = self.records[node.id].get("first_epoch", 0)
        self.records[node.id] = {**outcome, "timed": outcome.get("time_s") is not None, "first_epoch": first}
        self.epochs.pop(node.id, None)
        self.write()
        if self.progress:
            self.progress.finished(self, node)

    def node_json(self, node: Node) -> dict[str, Any]:
        record = self.records[node.id]
        return {"id": node.id, "kind": node.kind, **node.labels, "key": node.key,
                "depends_on": list(node.depends_on), "path": node.path, "status": record["status"],
                "reason": record.get("reason"), "diverged_epoch": record.get("diverged_epoch"),
                "started": record.get("started"), "finished": record.get("finished"),
                "time_s": record.get("time_s"), "final": record.get("final"),
                "epoch": self.epochs.get(node.id)}

    def write(self) -> None:
        io.atomic_write_json(self.study_dir / STUDY_JSON, {
            "format": STUDY_FORMAT, **self.header, "created": self.created, "updated": now(),
            "wall_time_s": self.previous_wall + self.elapsed(),
            "nodes": [self.node_json(node) for node in self.nodes]})

    def all_completed(self) -> bool:
        return all(r["status"] == "completed" for r in self.records.values())


def read_study(study_dir: str | Path) -> dict[str, Any]:
    """A study directory's ``study.json``; names the folder when it holds no study."""
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
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    io.atomic_write_text(path, buffer.getvalue())
