"""Node kinds: for each, how its key is computed, what it left on disk, and how it runs.

A kind is a class registered with :func:`register`; adding one (a sharpness per run, a
connectivity per compared pair, ...) is one class here and one rule in :mod:`.graph` that makes
its nodes. Executors call :func:`run_after` for every node, in the driver's process (local) or in
a worker (Ray): it skips a node whose upstream did not complete and turns any error into a
``failed`` result, so one broken node never stops the others.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from minimascope import io
from minimascope.errors import MinimascopeError
from minimascope.study.graph import Node

# report(node_id, event, epoch, epochs): event "started" or "epoch" (an epoch finished).
Report = Callable[[str, str, int, int], None]
COMPARISON_JSON = "comparison.json"
COMPARISON_FORMAT = "minimascope-comparison-v1"
FINAL_STATUSES = ("completed", "diverged", "failed", "skipped")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def result(status: str, reason: str | None = None, **fields: Any) -> dict[str, Any]:
    """What running a node returns (and ``study.json`` keeps of it)."""
    return {"status": status, "reason": reason, "diverged_epoch": None, "final": None, **fields}


class NodeKind(Protocol):
    name: str

    def key(self, node: Node, dependency_keys: list[str]) -> str:
        """The node's identity from its own settings and its dependencies' keys."""

    def stored(self, node_dir: Path) -> dict[str, Any] | None:
        """What an earlier invocation left: {"key", "status", ...} as :func:`result` gives, or None."""

    def run(self, node: Node, study_dir: Path, report: Report) -> dict[str, Any]:
        """Compute the node (resuming what an interrupted invocation left) and return its result."""


KINDS: dict[str, NodeKind] = {}


def register(cls: type) -> type:
    KINDS[cls.name] = cls()
    return cls


def kind(name: str) -> NodeKind:
    if name not in KINDS:
        raise MinimascopeError(f"unknown node kind {name!r}; known: {', '.join(KINDS)}")
    return KINDS[name]


@functools.lru_cache(maxsize=8)
def _data_key(source: str | None) -> str:
    from minimascope import data

    return data.content_key(source)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@register
class RunKind:
    """One training run: ``train(config, run_dir, resume=True)``."""

    name = "run"

    @staticmethod
    def config(node: Node, study_dir: Path | None = None):
        from minimascope.config import TrainConfig

        values = dict(node.params["config"])
        if node.params.get("init_path"):
            values["init_from"] = str((study_dir or Path(".")) / node.params["init_path"])
        return TrainConfig.from_mapping(values, source=node.id)

    def key(self, node: Node, dependency_keys: list[str]) -> str:
        config = self.config(node)
        if node.params.get("init_node"):
            init = dependency_keys[0]
        else:
            from minimascope.train import init_key

            init = init_key(config)
        return config.key(_data_key(config.data), init)

    def stored(self, node_dir: Path) -> dict[str, Any] | None:
        from minimascope import runs

        if not (node_dir / runs.RUN_JSON).is_file():
            return None
        record = runs.read_run_json(node_dir)
        status = record.get("status")
        reason = record.get("error") if status == "failed" else None
        if status == "diverged":
            reason = f"the loss stopped being finite at epoch {record.get('diverged_epoch')}"
        return {**result(status if status in FINAL_STATUSES else "running", reason,
                         diverged_epoch=record.get("diverged_epoch"), final=record.get("final")),
                "key": record.get("key"), "config": record.get("config", {})}

    def run(self, node: Node, study_dir: Path, report: Report) -> dict[str, Any]:
        from minimascope.train import train

        epochs = node.params["config"]["epochs"]

        class Progress:  # train's TrainProgress, told to the study
            def start(self, first_epoch: int, epochs: int, steps_per_epoch: int) -> None:
                report(node.id, "epoch", first_epoch, epochs)

            def step(self, loss: float) -> None:
                pass

            def epoch(self, row: dict) -> None:
                report(node.id, "epoch", int(row["epoch"]), epochs)

        record = train(self.config(node, study_dir), study_dir / node.path, resume=True, progress=Progress())
        if record.get("key") != node.key:
            return result("failed", f"the run's key {record.get('key')} is not the study's {node.key}")
        if record["status"] == "diverged":
            epoch = record.get("diverged_epoch")
            return result("diverged", f"the loss stopped being finite at epoch {epoch}", diverged_epoch=epoch)
        return result(record["status"], record.get("error"), final=record.get("final"))


@register
class CompareKind:
    """Two final networks (or one with itself) layer by layer: ``analysis.compare.compare_networks``."""

    name = "compare"

    def key(self, node: Node, dependency_keys: list[str]) -> str:
        return digest({"settings": node.params["settings"], "runs": dependency_keys})

    def stored(self, node_dir: Path) -> dict[str, Any] | None:
        path = node_dir / COMPARISON_JSON
        if not path.is_file():
            return None  # never started, or interrupted: its measure files are simply written again
        record = io.read_json(path, COMPARISON_JSON)
        return {**result("completed"), "key": record.get("key")}

    def run(self, node: Node, study_dir: Path, report: Report) -> dict[str, Any]:
        from minimascope.compare import compare_networks

        settings = node.params["settings"]
        run_a, run_b = (study_dir / p for p in node.params["run_paths"])
        out = study_dir / node.path
        compare_networks(run_a, run_b, out, measures=settings["measures"], samples=settings["samples"],
                         layer_set=settings["layer_set"], policy=settings["policy"],
                         data_source=node.params["data"], device=node.params["device"])
        io.atomic_write_json(out / COMPARISON_JSON, {
            "format": COMPARISON_FORMAT, "key": node.key, "runs": node.params["run_paths"],
            "settings": settings, "finished": now()})
        return result("completed")


ANALYSIS_JSON = "analysis.json"
ANALYSIS_FORMAT = "minimascope-analysis-node-v1"


class _AnalysisKind:
    """An analysis of one run or one pair of runs: its function writes its result files to the node's
    folder, then ``analysis.json`` (the node's key) marks it finished; an interrupted one runs again."""

    name = ""

    def key(self, node: Node, dependency_keys: list[str]) -> str:
        return digest({"kind": self.name, "options": node.params["options"], "runs": dependency_keys})

    def stored(self, node_dir: Path) -> dict[str, Any] | None:
        path = node_dir / ANALYSIS_JSON
        if not path.is_file():
            return None
        return {**result("completed"), "key": io.read_json(path, ANALYSIS_JSON).get("key")}

    def compute(self, runs: list[Path], out: Path, options: dict[str, Any], data: str, device: str) -> None:
        raise NotImplementedError

    def run(self, node: Node, study_dir: Path, report: Report) -> dict[str, Any]:
        out = study_dir / node.path
        self.compute([study_dir / p for p in node.params["run_paths"]], out, node.params["options"],
                     node.params["data"], node.params["device"])
        io.atomic_write_json(out / ANALYSIS_JSON, {"format": ANALYSIS_FORMAT, "kind": self.name, "key": node.key,
                                                   "runs": node.params["run_paths"], "finished": now()})
        return result("completed")


@register
class SharpnessKind(_AnalysisKind):
    """Top Hessian eigenvalues, trace and eigenvalue density of a run's training loss."""

    name = "sharpness"

    def compute(self, runs: list[Path], out: Path, options: dict[str, Any], data: str, device: str) -> None:
        from minimascope.minima.sharpness import sharpness_of_run

        sharpness_of_run(runs[0], out, data_source=data, device=device, **options)


@register
class WeightsKind(_AnalysisKind):
    """Per-layer weight statistics of a run, distance from its initial weights included."""

    name = "weights"

    def compute(self, runs: list[Path], out: Path, options: dict[str, Any], data: str, device: str) -> None:
        from minimascope.minima.weights import weights_of_run

        weights_of_run(runs[0], out, **options)


@register
class ConnectivityKind(_AnalysisKind):
    """Loss and error along the straight line between two runs' weights, and its barrier."""

    name = "connectivity"

    def compute(self, runs: list[Path], out: Path, options: dict[str, Any], data: str, device: str) -> None:
        from minimascope.minima.connectivity import connectivity_of_runs

        connectivity_of_runs(runs[0], runs[1], out, data_source=data, device=device, **options)


@register
class MistakesKind(_AnalysisKind):
    """Which test images each of two runs gets wrong, against independent errors."""

    name = "mistakes"

    def compute(self, runs: list[Path], out: Path, options: dict[str, Any], data: str, device: str) -> None:
        from minimascope.minima.mistakes import mistakes_of_runs

        mistakes_of_runs(runs[0], runs[1], out, data_source=data, **options)


def upstream_reason(dependency: str, upstream: dict[str, Any]) -> str:
    status = upstream["status"]
    if status == "diverged":
        return f"needs {dependency}, which diverged at epoch {upstream.get('diverged_epoch')}"
    detail = f" ({upstream['reason']})" if upstream.get("reason") else ""
    return f"needs {dependency}, which {'was skipped' if status == 'skipped' else status}{detail}"


def run_after(node: Node, study_dir: str | Path, upstream: Sequence[dict[str, Any]], report: Report) -> dict[str, Any]:
    """Run ``node`` once its dependencies have these results; skip it when one did not complete,
    and turn any error into a ``failed`` result (one line) so the rest of the study goes on."""
    for dependency, done in zip(node.depends_on, upstream):
        if done["status"] != "completed":
            return result("skipped", upstream_reason(dependency, done))
    if node.skip_reason:
        return result("skipped", node.skip_reason)
    started, clock = now(), time.perf_counter()
    report(node.id, "started", 0, 0)
    try:
        outcome = kind(node.kind).run(node, Path(study_dir), report)
    except MinimascopeError as exc:
        outcome = result("failed", str(exc))
    except Exception as exc:  # a bug or a broken machine: one line here, the trace on stderr
        traceback.print_exc()
        outcome = result("failed", _first_line(exc))
    return {**outcome, "started": started, "finished": now(), "time_s": time.perf_counter() - clock}
