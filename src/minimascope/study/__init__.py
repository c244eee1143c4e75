"""The study: every arm of a study file over its seeds, their comparisons and analyses, as one
resumable graph.

:func:`run_study` reads the study file (:mod:`.spec`), plans its nodes and their keys
(:mod:`.plan`), refuses a study directory that holds other results under the same names, and
hands the nodes that are not finished to an executor (:mod:`.executors`). The modules depend one
way: graph ← records ← spec ← kinds ← plan ← state ← executors ← this one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minimascope import io
from minimascope.errors import MinimascopeError
from minimascope.study.executors import check_executor, load_executor
from minimascope.study.graph import Node, run_node_id
from minimascope.study.kinds import kind
from minimascope.study.plan import study_nodes
from minimascope.study.records import (
    STUDY_JSON,
    STUDY_YAML,
    SUMMARY_COLUMNS,
    SUMMARY_CSV,
    check_study_folder,
    read_study_record,
    summary_rows,
    write_csv,
)
from minimascope.study.spec import StudySpec, load_spec, reads_imagenet_file
from minimascope.study.state import StudyProgress, StudyState

WEIGHTS_ENV = "MINIMASCOPE_IMAGENET_WEIGHTS"

__all__ = ["StudyOutcome", "run_study", "run_nodes", "read_study_record", "load_spec", "imagenet_weights",
           "exit_status", "study_dataset", "resolve_data"]


@dataclass
class StudyOutcome:
    study_dir: Path
    counts: dict[str, int]  # status → number of nodes
    wall_time_s: float
    records: dict[str, dict[str, Any]]


def exit_status(counts: dict[str, int]) -> int:
    """1: a node failed; 3: none failed, but a run diverged (as ``train`` exits); else 0. Skipped nodes
    (no ImageNet weights, an upstream that did not complete) are listed, not an error of their own."""
    if counts.get("failed"):
        return 1
    return 3 if counts.get("diverged") else 0


def imagenet_weights(given: str | Path | None, download: bool = True) -> tuple[str | None, str | None]:
    """(weights file, None), or (None, why there is none): ``given``, else ``MINIMASCOPE_IMAGENET_WEIGHTS``,
    else torchvision's cached or freshly downloaded IMAGENET1K_V1 file."""
    given = given or os.environ.get(WEIGHTS_ENV)
    if given:
        if not Path(given).is_file():
            raise MinimascopeError(f"ImageNet weights file not found: {given}")
        return str(Path(given).resolve()), None
    import torch

    from minimascope.models import IMAGENET_WEIGHTS

    cached = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_WEIGHTS.url.rsplit("/", 1)[-1]
    if not cached.is_file() and download:
        import socket

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(10)
        try:
            IMAGENET_WEIGHTS.get_state_dict(progress=False)
        except Exception as exc:  # no internet is the usual reason
            return None, (f"no ImageNet weights: the download failed ({type(exc).__name__}); "
                          f"give --weights FILE or set {WEIGHTS_ENV}")
        finally:
            socket.setdefaulttimeout(previous)
    if cached.is_file():
        return str(cached), None
    return None, f"no ImageNet weights: give --weights FILE or set {WEIGHTS_ENV}"


def _changed_nodes(study_dir: Path, nodes: Sequence[Node]) -> str | None:
    """The first node whose directory holds results under another key, said in one line."""
    from minimascope.config import NOT_HASHED, PATH_FIELDS

    changed = []
    for node in nodes:
        if node.skip_reason:
            continue
        stored = kind(node.kind).stored(study_dir / node.path)
        if stored is not None and stored.get("key") != node.key:
            changed.append((node, stored))
    if not changed:
        return None
    node, stored = changed[0]
    what = f"arm {node.labels['arm']!r}" if "arm" in node.labels else f"{node.kind} {'~'.join(node.labels['arms'])}"
    differs = ""
    if node.kind == "run":
        new = node.params["config"]
        fields = [k for k, v in new.items() if k not in NOT_HASHED + PATH_FIELDS and stored["config"].get(k) != v]
        differs = f", differs in: {', '.join(fields) or 'data content or initial weights'}"
    more = f"; {len(changed) - 1} more node(s) changed" if len(changed) > 1 else ""
    return (f"{what} changed: {study_dir / node.path} holds key {stored.get('key')}, the study file gives "
            f"{node.key}{differs}{more}. Nothing was run: use another --out or restore the study file")


def _check_outputs(study_dir: Path, nodes: Sequence[Node]) -> None:
    """Trust no completed marker blindly: a comparison or analysis whose promised files are gone is
    forgotten (it runs again); a completed run that lacks its weights or whose run.json holds another
    config than the study's is named in one line, and nothing runs."""
    for node in nodes:
        node_kind, node_dir = kind(node.kind), study_dir / node.path
        if node.skip_reason or node_kind.stored(node_dir) is None:
            continue
        problem = node_kind.missing(node, node_dir)
        if problem is None:
            continue
        if node.kind == "run":
            raise MinimascopeError(f"{node.id}: {problem}. Nothing was run: restore it, or remove {node_dir} "
                                   f"to train it again")
        node_kind.forget(node_dir)


def run_nodes(nodes: list[Node], study_dir: str | Path, header: dict[str, Any], *, executor: str = "local",
              executor_options: dict[str, Any] | None = None, progress: StudyProgress | None = None,
              study_yaml: str | None = None) -> StudyOutcome:
    """Run ``nodes`` (keyed, in dependency order) into ``study_dir`` with an executor, keeping
    ``study.json`` current; ``study_yaml``, when given, is written once ``study.json`` is, so that a
    folder never holds one without the other. Shared by the study and by ``tune``."""
    study_dir = Path(study_dir)
    check_executor(executor)
    problem = _changed_nodes(study_dir, nodes)
    if problem:
        raise MinimascopeError(problem)
    _check_outputs(study_dir, nodes)
    state = StudyState(study_dir, nodes, header, progress)
    state.write()
    if study_yaml is not None:
        io.atomic_write_text(study_dir / STUDY_YAML, study_yaml)
    if progress:
        progress.start(state)
    try:
        load_executor(executor).execute(state, study_dir, **(executor_options or {}))
    finally:
        for node in state.running():  # interrupted: the next invocation resumes it
            state.records[node.id] = {**state.records[node.id], "status": "pending"}
        state.write()
        if progress:
            progress.stop()
    write_csv(study_dir / SUMMARY_CSV, SUMMARY_COLUMNS, summary_rows(study_dir, nodes, state.records))
    return StudyOutcome(study_dir, state.counts(), state.previous_wall + state.elapsed(), state.records)


def study_dataset(spec: StudySpec) -> str:
    """The one data set every arm trains on (``dataset:`` in the defaults or an arm); two are one line."""
    from minimascope import datasets

    named = {arm.name: arm.options.get("dataset", datasets.DEFAULT) for arm in spec.arms.values()}
    found = list(dict.fromkeys(named.values()))
    if len(found) > 1:
        arms = ", ".join(f"{arm}: {name}" for arm, name in named.items())
        raise MinimascopeError(f"{spec.source}: the arms name {len(found)} data sets ({arms}); the arms of a study "
                               f"are compared on one data set: set dataset: in its defaults")
    return found[0]


def _data_header(data: str, spec: StudySpec, dataset: str) -> dict[str, Any]:
    """What study.json records of the data: the source, its content key and the sizes, and what the data set is
    (the report's names, classes and image size)."""
    from minimascope import data as data_sets
    from minimascope import datasets

    loaded = data_sets.load(dataset, data)
    first = next(iter(spec.arms.values())).options
    train, test = len(loaded.train_labels), len(loaded.test_labels)
    return {"source": data, "key": data_sets.content_key(data, dataset),
            "train_size": first.get("train_subset") or train, "test_size": first.get("test_subset") or test,
            "train_images": train, "test_images": test, "dataset": dataset,
            "title": datasets.source_title(dataset, data), "classes": list(loaded.classes), "channels": loaded.channels,
            "image_size": list(loaded.image_size)}


def resolve_data(data: str | None, spec_data: str | None = None, dataset: str | None = None) -> str:
    """The data set's source: ``data`` (--data), else the study's ``data:``, else its default (see
    :func:`minimascope.data.resolve_source`), as an absolute path or ``torchvision``."""
    from minimascope import data as data_sets
    from minimascope import datasets

    source = data_sets.resolve_source(data or spec_data, dataset or datasets.DEFAULT)
    return source if source == data_sets.TORCHVISION else str(Path(source).resolve())


def run_study(source: str | Path, study_dir: str | Path, *, data: str | None = None, weights: str | None = None,
              download_weights: bool = True, executor: str = "local", executor_options: dict[str, Any] | None = None,
              progress: StudyProgress | None = None) -> StudyOutcome:
    """Run (or continue) the study of a preset name or study file into ``study_dir``."""
    import yaml

    from minimascope.env import environment, resolve_device

    check_executor(executor)
    spec = load_spec(source)
    study_dir = Path(study_dir)
    check_study_folder(study_dir)
    if (study_dir / STUDY_JSON).is_file():
        read_study_record(study_dir)  # a damaged study.json is one line before the data are loaded
    first = next(iter(spec.arms.values())).options
    dataset = study_dataset(spec)
    data = resolve_data(data, first.get("data"), dataset)
    weights_file, missing = None, None
    # The ImageNet weights file is fetched once here (its arms skipped with the reason where it is absent).
    if any(reads_imagenet_file(arm.options) for arm in spec.arms.values()):
        weights_file, missing = imagenet_weights(weights, download_weights)
    nodes = study_nodes(spec, data, weights_file, missing)
    by_id = {node.id: node for node in nodes}
    header = {
        "name": spec.name, "source": spec.source, "data": _data_header(data, spec, dataset),
        **environment(resolve_device(first.get("device", "auto"))), "seeds": list(spec.seeds),
        "arms": {arm.name: {**by_id[run_node_id(arm.name, spec.seeds[0])].params["config"], "seed": None,
                            "init_from": arm.init_from} for arm in spec.arms.values()},
        "compare": spec.compare.to_dict(), "analyses": spec.analyses.to_dict(),
        "weights": weights_file, "weights_missing": missing,
        "executor": executor,
    }
    with io.locked(study_dir, "study directory"):  # one driver at a time writes study.json
        problem = _changed_nodes(study_dir, nodes)
        if problem:
            raise MinimascopeError(problem)
        return run_nodes(nodes, study_dir, header, executor=executor, executor_options=executor_options,
                         progress=progress, study_yaml=yaml.safe_dump(spec.resolved(), sort_keys=False))
