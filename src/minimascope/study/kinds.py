"""Node kinds: for each, how its key is computed, what it left on disk, what a finished one promises
(:meth:`missing`: checked before its marker is trusted), and how it runs.

``KINDS`` holds a run, a comparison, and one :class:`AnalysisKind` per row of
:data:`minimascope.analyses.ANALYSES`; adding an analysis is a row there, never a class here.
Executors call :func:`run_after` for every node, in the driver's process (local) or in a worker
(Ray): it skips a node whose upstream did not complete and turns any error into a ``failed``
result, so one broken node never stops the others.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from minimascope import io
from minimascope.analyses import ANALYSES, PER_ARM_PAIR
from minimascope.errors import MinimascopeError
from minimascope.study.graph import Node
from minimascope.study.records import FINAL_STATUSES, NODE_JSON, result

# report(node_id, event, epoch, epochs): event "started" or "epoch" (an epoch finished).
Report = Callable[[str, str, int, int], None]
# Studies before NODE_JSON wrote their record of a comparison node over compare's comparison.json
# (with a "key"); those are still read.
NODE_FORMAT = "minimascope-comparison-node-v1"
OLD_NODE_JSON = "comparison.json"
ANALYSIS_JSON = "analysis.json"
ANALYSIS_FORMAT = "minimascope-analysis-node-v1"


class NodeKind(Protocol):
    name: str

    def key(self, node: Node, dependency_keys: list[str]) -> str:
        """The node's identity from its own settings and its dependencies' keys."""

    def stored(self, node_dir: Path) -> dict[str, Any] | None:
        """What an earlier invocation left: {"key", "status", ...} as :func:`result` gives, or None."""

    def missing(self, node: Node, node_dir: Path) -> str | None:
        """What a finished node promises and ``node_dir`` lacks (or holds changed), in one line; None: all there."""

    def run(self, node: Node, study_dir: Path, report: Report) -> dict[str, Any]:
        """Compute the node (resuming what an interrupted invocation left) and return its result."""


@functools.lru_cache(maxsize=8)
def _data_key(source: str | None, dataset: str) -> str:
    from minimascope import data

    return data.content_key(source, dataset)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


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
        return config.key(_data_key(config.data, config.dataset), init)

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

    def missing(self, node: Node, node_dir: Path) -> str | None:
        """A completed run's final.pt and metrics.csv, and run.json's config as the study gives it."""
        from minimascope import runs
        from minimascope.config import NOT_HASHED, PATH_FIELDS

        record = runs.read_run_json(node_dir)
        if record.get("status") != "completed":
            return None
        for name in (runs.FINAL_WEIGHTS, runs.METRICS_CSV):
            if not (node_dir / name).is_file():
                return f"{node_dir} says completed but has no {name}"
        stored, given = record.get("config"), node.params["config"]
        if not isinstance(stored, dict):
            return f"{node_dir / runs.RUN_JSON} holds no config"
        changed = [k for k, v in stored.items() if k in given and k not in NOT_HASHED + PATH_FIELDS and given[k] != v]
        if changed:
            return (f"{node_dir / runs.RUN_JSON} holds another config than its key says "
                    f"(differs in: {', '.join(changed)})")
        return None

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


class CompareKind:
    """Two final networks (or one with itself) layer by layer: ``compare.compare_networks``."""

    name = "compare"

    def key(self, node: Node, dependency_keys: list[str]) -> str:
        return io.digest({"settings": node.params["settings"], "runs": dependency_keys})

    def stored(self, node_dir: Path) -> dict[str, Any] | None:
        path = node_dir / NODE_JSON
        if not path.is_file():
            path = node_dir / OLD_NODE_JSON  # a study of the old layout, or compare's own record
            if not path.is_file():
                return None  # never started, or interrupted: its measure files are simply written again
        record = io.read_json(path, path.name)
        if path.name == OLD_NODE_JSON and isinstance(record, dict) and "key" not in record:
            return None  # compare's record: the node was interrupted before its own record
        return {**result("completed"), "key": _stored_key(record, path)}

    def missing(self, node: Node, node_dir: Path) -> str | None:
        return _first_missing(node_dir, [f"{m}.json" for m in node.params["settings"]["measures"]])

    def forget(self, node_dir: Path) -> None:
        """Remove the node's record, so that the node runs again (the old layout's record is compare's file)."""
        (node_dir / NODE_JSON).unlink(missing_ok=True)
        if self.stored(node_dir) is not None:
            (node_dir / OLD_NODE_JSON).unlink(missing_ok=True)

    def run(self, node: Node, study_dir: Path, report: Report) -> dict[str, Any]:
        from minimascope.compare import compare_networks

        settings = node.params["settings"]
        run_a, run_b = (study_dir / p for p in node.params["run_paths"])
        out = study_dir / node.path
        compare_networks(run_a, run_b, out, measures=settings["measures"], samples=settings["samples"],
                         layer_set=settings["layer_set"], policy=settings["policy"],
                         bootstrap=settings.get("bootstrap", 0), data_source=node.params["data"],
                         device=node.params["device"], study_node=True)
        io.atomic_write_json(out / NODE_JSON, {
            "format": NODE_FORMAT, "key": node.key, "runs": node.params["run_paths"],
            "settings": settings, "finished": io.now()})
        return result("completed")


def _stored_key(record: Any, path: Path) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        raise MinimascopeError(f"{path} is not a study node record (no key)")
    return record["key"]


def _first_missing(node_dir: Path, names: list[str]) -> str | None:
    absent = [name for name in names if not (node_dir / name).is_file()]
    return f"{node_dir} has no {absent[0]}" if absent else None


def absolute_inputs(inputs: dict[str, Any], study_dir: Path) -> dict[str, Any]:
    """A PER_ARM_PAIR node's inputs with every ``path`` under ``study_dir`` (the plan keeps them relative,
    so a study directory can move)."""
    def resolve(value: Any) -> Any:
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: study_dir / v if k == "path" else resolve(v) for k, v in value.items()}
        return value

    return resolve(inputs)


class AnalysisKind:
    """An analysis of one run, a pair or three runs, or a pair of arms over all seeds: its row of
    ``ANALYSES`` writes its result files to the node's folder, then ``analysis.json`` (the node's key)
    marks it finished; an interrupted one runs again."""

    def __init__(self, name: str) -> None:
        self.name = name

    def key(self, node: Node, dependency_keys: list[str]) -> str:
        version = ANALYSES[self.name].version
        return io.digest({"kind": self.name, "options": node.params["options"], "runs": dependency_keys,
                          **({"version": version} if version > 1 else {})})

    def stored(self, node_dir: Path) -> dict[str, Any] | None:
        path = node_dir / ANALYSIS_JSON
        if not path.is_file():
            return None
        return {**result("completed"), "key": _stored_key(io.read_json(path, ANALYSIS_JSON), path)}

    def missing(self, node: Node, node_dir: Path) -> str | None:
        return _first_missing(node_dir, [ANALYSES[self.name].result_file])

    def forget(self, node_dir: Path) -> None:
        (node_dir / ANALYSIS_JSON).unlink(missing_ok=True)

    def run(self, node: Node, study_dir: Path, report: Report) -> dict[str, Any]:
        info, params, out = ANALYSES[self.name], node.params, study_dir / node.path
        if info.per == PER_ARM_PAIR:
            inputs: Any = absolute_inputs(params["inputs"], study_dir)
            read = {"inputs": params["inputs"]}
        else:
            inputs = [study_dir / p for p in params["run_paths"]]
            read = {"runs": params["run_paths"]}
        info.run(inputs, out, params["options"], data_source=params["data"], device=params["device"],
                 study_node=True)
        io.atomic_write_json(out / ANALYSIS_JSON, {"format": ANALYSIS_FORMAT, "kind": self.name, "key": node.key,
                                                   **read, "finished": io.now()})
        return result("completed")


KINDS: dict[str, NodeKind] = {"run": RunKind(), "compare": CompareKind(),
                              **{name: AnalysisKind(name) for name in ANALYSES}}


def kind(name: str) -> NodeKind:
    if name not in KINDS:
        raise MinimascopeError(f"unknown node kind {name!r}; known: {', '.join(KINDS)}")
    return KINDS[name]


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
    started, clock = io.now(), time.perf_counter()
    report(node.id, "started", 0, 0)
    try:
        outcome = kind(node.kind).run(node, Path(study_dir), report)
    except MinimascopeError as exc:
        outcome = result("failed", str(exc))
    except Exception as exc:  # a bug or a broken machine: one line here, the trace on stderr
        traceback.print_exc()
        outcome = result("failed", _first_line(exc))
    return {**outcome, "started": started, "finished": io.now(), "time_s": time.perf_counter() - clock}
