"""A study directory read back: ``load_study(path)``, for notebooks and for the report (one reader, two users).

>>> study = load_study("studies/quick")
>>> study.runs.groupby("arm").test_accuracy.mean()

The returned :class:`Study` has pandas DataFrames (``runs``, ``curves``, ``similarity``, ``sharpness``,
``connectivity``, ``weights``, ``mistakes``; their columns in :mod:`minimascope.frames`), with fixed columns
and empty when the study did not run that analysis, and the typed results behind them (``run_results``,
``comparisons``, ``seed_comparisons``, ``analyses``) that the report lays out.

``study.json`` must exist and be readable (else one-line MinimascopeError: this is not a study).
Everything else may be missing (a partial or interrupted study): each absent file becomes a line in
:attr:`Study.missing` with the reason, and the report shows what is there. A file that is there but
damaged (broken JSON, a NaN, a garbage CSV row, a field of the wrong type, a node of study.json with a
path outside the study) becomes a line in :attr:`Study.damaged` naming it, and what it held is left out;
``load_study(path, strict=True)`` raises a MinimascopeError naming the first damaged file instead.
Every path read comes from study.json's node paths, checked to lie inside the study.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minimascope import frames
from minimascope.analyses import ANALYSES, PER_RUN
from minimascope.bootstrap import BOOTSTRAP_JSON, BootstrapResult, read_bootstrap
from minimascope.errors import MinimascopeError
from minimascope.io import is_locked, read_json
from minimascope.runs import FINAL_WEIGHTS, METRICS_CSV, RUN_JSON, read_metrics, read_run_json
from minimascope.similarity import MEASURES, SimilarityMatrix, read_similarity_matrix
from minimascope.study.records import (
    STUDY_FORMAT,
    STUDY_JSON,
    SUMMARY_CSV,
    read_summary,
)
from minimascope.study_checks import Notes, as_mapping, checked_nodes, checked_record, relative

FINISHED = ("completed", "diverged")
INTERRUPTED = "interrupted"  # a node study.json says is running, in a study no process is running


@dataclass
class RunResult:
    """One (arm, seed) run node: its status and, when it finished, its numbers and curves."""

    arm: str
    seed: int
    status: str
    reason: str | None
    diverged_epoch: int | None
    path: Path
    values: dict[str, Any] = field(default_factory=dict)  # the summary.csv row (numbers as float, blanks None)
    metrics: list[dict[str, float]] = field(default_factory=list)  # metrics.csv rows (blanks NaN)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def status_text(self) -> str:
        if self.status == "diverged":
            return f"diverged at epoch {self.diverged_epoch}" if self.diverged_epoch is not None else "diverged"
        return f"{self.status}: {self.reason}" if self.reason else self.status

    def value(self, column: str) -> float | None:
        value = self.values.get(column)
        return value if isinstance(value, float) and math.isfinite(value) else None

    @property
    def weights_path(self) -> Path:
        return self.path / FINAL_WEIGHTS


@dataclass
class Comparison:
    """One compare node: arm A's network against arm B's (A == B: within one network), one seed."""

    arm_a: str
    arm_b: str
    seed: int
    status: str
    reason: str | None
    path: Path
    matrices: dict[str, SimilarityMatrix] = field(default_factory=dict)  # measure → matrix
    bootstrap: BootstrapResult | None = None  # bootstrap.json, when the comparison made one ("on these networks")

    @property
    def within(self) -> bool:
        return self.arm_a == self.arm_b

    @property
    def label(self) -> str:
        return f"within {self.arm_a}" if self.within else f"{self.arm_a} vs {self.arm_b}"


@dataclass
class SeedComparison:
    """One cross-seed compare node: seed i of an arm against seed j of the same arm."""

    arm: str
    seeds: tuple[int, int]
    status: str
    reason: str | None
    path: Path
    matrices: dict[str, SimilarityMatrix] = field(default_factory=dict)


@dataclass
class Analysis:
    """One analysis node: per run (``arms`` = (arm,)) or per pair of arms, one seed (None: over all seeds),
    or two seeds of one arm (``seed`` the first, ``seed_b`` the second); ``result`` is what its reader in
    :data:`minimascope.analyses.ANALYSES` returns."""

    kind: str
    arms: tuple[str, ...]
    seed: int | None
    status: str
    reason: str | None
    path: Path
    result: Any = None
    problem: str | None = None  # why a completed node's result could not be read
    seed_b: int | None = None  # the second network's seed, when it differs from the first's

    @property
    def seed_text(self) -> str:
        return str(self.seed) if self.seed_b is None else f"{self.seed}–{self.seed_b}"

    @property
    def label(self) -> str:
        return " vs ".join(self.arms)


@dataclass
class Study:
    root: Path
    record: dict[str, Any]  # study.json as written
    run_results: dict[tuple[str, int], RunResult]
    comparisons: list[Comparison]
    missing: list[str]  # "<relative path>: <why>" for every expected file that is not there
    seed_comparisons: list[SeedComparison] = field(default_factory=list)
    analyses: dict[str, list[Analysis]] = field(default_factory=dict)  # kind → nodes, in study.json's order
    damaged: list[str] = field(default_factory=list)  # "<relative path>: <why>" for every file read but not usable
    interrupted: bool = False  # study.json says nodes are running, but no process holds the study

    # The same results as pandas DataFrames (see :mod:`.frames`), built on first use.
    runs = functools.cached_property(frames.runs)
    curves = functools.cached_property(frames.curves)
    similarity = functools.cached_property(frames.similarity)
    sharpness = functools.cached_property(frames.sharpness)
    connectivity = functools.cached_property(frames.connectivity)
    weights = functools.cached_property(frames.weights)
    mistakes = functools.cached_property(frames.mistakes)

    def analysis_nodes(self, kind: str) -> list[Analysis]:
        return self.analyses.get(kind, [])

    def completed_analyses(self, kind: str) -> list[Analysis]:
        return [a for a in self.analysis_nodes(kind) if a.result is not None]

    @property
    def name(self) -> str:
        return str(self.record.get("name", self.root.name))

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.record.get("seeds", [])]

    @property
    def arms(self) -> dict[str, dict[str, Any]]:
        """Arm name → its resolved train options, in the study's order."""
        return dict(self.record.get("arms", {}))

    @property
    def measures(self) -> list[str]:
        found = list(dict.fromkeys(m for c in self.comparisons for m in c.matrices))
        asked = list(self.record.get("compare", {}).get("measures", []))
        return asked + [m for m in found if m not in asked]

    def arm_runs(self, arm: str) -> list[RunResult]:
        return sorted((r for (a, _), r in self.run_results.items() if a == arm), key=lambda r: r.seed)

    def values(self, arm: str, column: str) -> list[float]:
        """One number per completed seed of ``arm`` (seed order), from summary.csv."""
        return [v for r in self.arm_runs(arm) if r.completed and (v := r.value(column)) is not None]

    def pair_comparisons(self, arm_a: str, arm_b: str) -> list[Comparison]:
        """The completed comparisons of the pair, in either order, seed order."""
        return sorted((c for c in self.comparisons if c.status == "completed" and c.matrices
                       and {c.arm_a, c.arm_b} == {arm_a, arm_b} and (arm_a == arm_b) == c.within),
                      key=lambda c: c.seed)

    def pairs(self) -> list[tuple[str, str]]:
        """Every compared (arm A, arm B) with at least one completed comparison, in node order."""
        return list(dict.fromkeys((c.arm_a, c.arm_b) for c in self.comparisons
                                  if c.status == "completed" and c.matrices))


read_similarity = read_similarity_matrix  # a compare <measure>.json back, under the name notebooks know


def _run_result(node: dict[str, Any], path: Path, summary: dict[tuple[str, int], dict[str, Any]] | None,
                notes: Notes) -> RunResult:
    arm, seed = node["arm"], node["seed"]
    run = RunResult(arm=arm, seed=seed, status=node["status"], reason=node.get("reason"),
                    diverged_epoch=node.get("diverged_epoch"), path=path)
    if run.status not in FINISHED:
        return run
    if summary is not None and (arm, seed) in summary:
        run.values = summary[(arm, seed)]
    else:  # summary.csv missing or behind: the run's own record has the same numbers
        try:
            record = read_run_json(run.path)
        except MinimascopeError as exc:
            notes.failed(run.path / RUN_JSON, exc)
            record = {}
        final = as_mapping(record.get("final") or node.get("final"))
        per_epoch = as_mapping(record.get("time_per_epoch_s"))
        run.values = {**{k: _float(v) for k, v in final.items()}, "epoch_time_mean_s": _float(per_epoch.get("mean")),
                      "epoch_time_std_s": _float(per_epoch.get("std"))}
        if summary is not None:
            notes.missing.append(f"{SUMMARY_CSV}: no row for {arm} seed {seed} (numbers taken from its {RUN_JSON})")
    try:  # blank cells as NaN, so a curve simply has a gap there
        run.metrics = [{k: math.nan if v is None else v for k, v in row.items()} for row in read_metrics(run.path)]
    except MinimascopeError as exc:
        notes.failed(run.path / METRICS_CSV, exc)
    if run.metrics and run.value("step_time_mean_s") is None:
        steps = [row["iter_time_mean_s"] for row in run.metrics if math.isfinite(row.get("iter_time_mean_s", math.nan))]
        if steps:
            run.values = {**run.values, "step_time_mean_s": float(np.mean(steps))}
    return run


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _comparison(node: dict[str, Any], path: Path, measures: Iterable[str], notes: Notes) -> Comparison:
    arm_a, arm_b = node["arms"]
    comparison = Comparison(arm_a, arm_b, node["seed"], node["status"], node.get("reason"), path)
    if comparison.status == "completed":
        comparison.matrices = _read_matrices(comparison.path, measures, notes)
        if (comparison.path / BOOTSTRAP_JSON).is_file():
            try:
                comparison.bootstrap = read_bootstrap(comparison.path / BOOTSTRAP_JSON)
            except MinimascopeError as exc:
                notes.failed(comparison.path / BOOTSTRAP_JSON, exc)
    return comparison


def _read_matrices(path: Path, measures: Iterable[str], notes: Notes) -> dict[str, SimilarityMatrix]:
    matrices = {}
    found = sorted(p.stem for p in path.glob("*.json") if p.stem in MEASURES)  # not node, comparison, bootstrap
    for measure in measures or found:
        file = path / f"{measure}.json"
        if not file.is_file():
            notes.missing.append(f"{relative(file, notes.root)}: not found")
            continue
        try:
            matrices[measure] = read_similarity_matrix(file)
        except MinimascopeError as exc:
            notes.failed(file, exc)
    return matrices


def _seed_comparison(node: dict[str, Any], path: Path, measures: Iterable[str], notes: Notes) -> SeedComparison:
    seed_i, seed_j = node["seeds"]
    comparison = SeedComparison(node["arms"][0], (seed_i, seed_j), node["status"], node.get("reason"), path)
    if comparison.status == "completed":
        comparison.matrices = _read_matrices(comparison.path, measures, notes)
    return comparison


def _analysis(node: dict[str, Any], path: Path, notes: Notes) -> Analysis:
    info = ANALYSES[node["kind"]]
    arms = (node["arm"],) if info.per == PER_RUN else tuple(node["arms"])
    seeds = node.get("seeds") or ([node["seed"]] if node.get("seed") is not None else [])
    analysis = Analysis(info.name, arms, seeds[0] if seeds else None, node["status"], node.get("reason"), path,
                        seed_b=seeds[1] if len(seeds) > 1 else None)
    if analysis.status != "completed":
        return analysis
    file = analysis.path / info.result_file
    try:
        analysis.result = info.read(file)
    except (MinimascopeError, KeyError, TypeError, ValueError, IndexError) as exc:  # a reader's check, or one it lacks
        analysis.problem = notes.failed(file, exc)
    return analysis


def load_study(study_dir: str | Path, *, strict: bool = False) -> Study:
    """Read everything the report shows from ``study_dir`` (see the module docstring); with ``strict``, a
    damaged file is a MinimascopeError naming it instead of a line in :attr:`Study.damaged`."""
    root = Path(study_dir)
    path = root / STUDY_JSON
    if not path.is_file():
        raise MinimascopeError(f"not a study directory (no {STUDY_JSON}): {root}")
    record = read_json(path, STUDY_JSON)
    if not isinstance(record, dict) or record.get("format") != STUDY_FORMAT:
        raise MinimascopeError(f"{path} is not a {STUDY_FORMAT} file")
    notes = Notes(root)
    record = checked_record(record, notes)
    nodes = checked_nodes(record, notes)
    record["nodes"] = [node for node, _ in nodes]
    interrupted = any(node["status"] == "running" for node, _ in nodes) and not is_locked(root)
    if interrupted:  # what was running when the study was killed: shown as such, not as running
        nodes = [({**node, "status": INTERRUPTED} if node["status"] == "running" else node, folder)
                 for node, folder in nodes]
    summary = None
    if (root / SUMMARY_CSV).is_file():
        try:
            summary, problems = read_summary(root / SUMMARY_CSV)
            notes.damaged += [f"{SUMMARY_CSV}: {problem}" for problem in problems]
        except MinimascopeError as exc:
            notes.failed(root / SUMMARY_CSV, exc)
    else:
        notes.missing.append(f"{SUMMARY_CSV}: not found (numbers taken from each run's {RUN_JSON})")
    runs = {}
    for node, folder in nodes:
        if node.get("kind") == "run":
            run = _run_result(node, folder, summary, notes)
            runs[(run.arm, run.seed)] = run
    measures = as_mapping(record.get("compare")).get("measures") or []  # none listed: whatever each folder holds
    comparisons = [_comparison(n, folder, measures, notes) for n, folder in nodes
                   if n.get("kind") == "compare" and "seeds" not in n]
    seed_comparisons = [_seed_comparison(n, folder, measures, notes) for n, folder in nodes
                        if n.get("kind") == "compare" and "seeds" in n]
    analyses: dict[str, list[Analysis]] = {kind: [] for kind in ANALYSES}
    for node, folder in nodes:
        if node.get("kind") in ANALYSES:
            analyses[node["kind"]].append(_analysis(node, folder, notes))
    if strict and notes.damaged:
        raise MinimascopeError(f"damaged file {root}{os.sep}{notes.damaged[0]}")
    return Study(root, record, runs, comparisons, notes.missing, seed_comparisons, analyses, notes.damaged,
                 interrupted)
