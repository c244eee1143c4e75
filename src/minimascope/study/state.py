"""What the driver knows of a study while it runs: every node's status, kept in ``study.json``
(rewritten atomically after each change, by the driver only), and what the progress display is told.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from minimascope import io
from minimascope.study.graph import Node
from minimascope.study.kinds import kind
from minimascope.study.records import FINAL_STATUSES, STUDY_FORMAT, STUDY_JSON, read_study_record, result


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
        if records[node.id]["status"] in FINAL_STATUSES or node.skip_reason:
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
        previous = read_study_record(study_dir) if (study_dir / STUDY_JSON).is_file() else {}
        self.created = previous.get("created", io.now())
        self.previous_wall = float(previous.get("wall_time_s") or 0.0)
        earlier = {n["id"]: n for n in previous.get("nodes", [])}
        self.records = {node.id: self._initial(node, earlier.get(node.id)) for node in nodes}

    def _initial(self, node: Node, earlier: dict[str, Any] | None) -> dict[str, Any]:
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
            self.records[node_id] = {**result("running"), "started": io.now()}
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
            "format": STUDY_FORMAT, **self.header, "created": self.created, "updated": io.now(),
            "wall_time_s": self.previous_wall + self.elapsed(),
            "nodes": [self.node_json(node) for node in self.nodes]})

    def all_completed(self) -> bool:
        return all(r["status"] == "completed" for r in self.records.values())
