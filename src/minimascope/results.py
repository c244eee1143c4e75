"""A study directory read back: ``load_study(path)``, for notebooks and for the report (one reader, two users).

>>> study = load_study("studies/quick")
>>> study.runs.groupby("arm").test_accuracy.mean()

The returned :class:`Study` has pandas DataFrames (``runs``, ``curves``, ``similarity``, ``sharpness``,
``connectivity``, ``weights``, ``mistakes``; their columns in :mod:`minimascope.frames`), with fixed columns
and empty when the study did not run that analysis, and the typed results behind them (``run_results``,
``comparisons``, ``seed_comparisons``, ``analyses``) that the report lays out.

``study.json`` must exist and be readable (else one-line MinimascopeError: this is not a study).
Everything else may be missing (a partial or interrupted study): each absent or unreadable file
becomes a line in :attr:`Study.missing` with the reason, and the report shows what is there.
"""

from __future__ import annotations

import csv
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
from minimascope.io import read_json
from minimascope.runs import FINAL_WEIGHTS, RUN_JSON, read_metrics, read_run_json
from minimascope.similarity import SimilarityMatrix
from minimascope.study.records import STUDY_FORMAT, STUDY_JSON, SUMMARY_CSV

FINISHED = ("completed", "diverged")
# summary.csv columns that hold numbers (the others are text: arm, optimizer, init, std_multiplier, status).
SUMMARY_NUMBERS = ("seed", "epochs", "test_accuracy", "test_loss", "train_loss", "train_accuracy",
                   "epoch_time_mean_s", "epoch_time_std_s", "step_time_mean_s")


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
    missing: list[str]  # "<relative path>: <why>" for every expected file that could not be read
    seed_comparisons: list[SeedComparison] = field(default_factory=list)
    analyses: dict[str, list[Analysis]] = field(default_factory=dict)  # kind → nodes, in study.json's order

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


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _missing(exc: MinimascopeError, root: Path) -> str:
    """A reader's one-line message, with paths relative to the study (the report may move)."""
    return str(exc).replace(f"{root}{os.sep}", "")


def _number(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def read_summary(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """summary.csv as (arm, seed) → row; number columns as float (blank → None)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    table = {}
    for row in rows:
        parsed: dict[str, Any] = {k: (_number(v) if k in SUMMARY_NUMBERS else v) for k, v in row.items()}
        if parsed.get("arm") and parsed.get("seed") is not None:
            table[(str(parsed["arm"]), int(parsed["seed"]))] = parsed
    return table


def read_similarity(path: Path) -> SimilarityMatrix:
    """A compare ``<measure>.json`` (``SimilarityMatrix.to_dict()``) back as a SimilarityMatrix."""
    record = read_json(path, "similarity matrix")
    try:
        values = np.asarray(record["values"], dtype=float)
        bound, forced = record.get("error_bound"), record.get("by_construction")
        matrix = SimilarityMatrix(
            measure=str(record["measure"]), kind=str(record["kind"]), convention=str(record.get("convention", "")),
            values=values, layers_a=tuple(record["layers_a"]), layers_b=tuple(record["layers_b"]),
            n_samples=int(record["n_samples"]), policy=str(record.get("policy", "")),
            label_a=str(record.get("label_a", "A")), label_b=str(record.get("label_b", "B")),
            error_bound=None if bound is None else np.asarray(bound, dtype=float),
            by_construction=None if forced is None else np.asarray(forced, dtype=bool))
    except (KeyError, TypeError, ValueError) as exc:
        raise MinimascopeError(f"{path} is not a similarity matrix ({type(exc).__name__}: {exc})") from None
    if values.shape != (len(matrix.layers_a), len(matrix.layers_b)):
        raise MinimascopeError(f"{path}: values are {values.shape} for "
                               f"{len(matrix.layers_a)}×{len(matrix.layers_b)} layers")
    return matrix


def _run_result(node: dict[str, Any], root: Path, summary: dict[tuple[str, int], dict[str, Any]] | None,
                missing: list[str]) -> RunResult:
    arm, seed = str(node["arm"]), int(node["seed"])
    run = RunResult(arm=arm, seed=seed, status=str(node.get("status", "pending")), reason=node.get("reason"),
                    diverged_epoch=node.get("diverged_epoch"),
                    path=root / node.get("path", f"runs/{arm}/seed{seed}"))
    if run.status not in FINISHED:
        return run
    if summary is not None and (arm, seed) in summary:
        run.values = summary[(arm, seed)]
    else:  # summary.csv missing or behind: the run's own record has the same numbers
        try:
            record = read_run_json(run.path)
        except MinimascopeError as exc:
            missing.append(_missing(exc, root))
            record = {}
        final, per_epoch = record.get("final") or node.get("final") or {}, record.get("time_per_epoch_s") or {}
        run.values = {**{k: _float(v) for k, v in final.items()}, "epoch_time_mean_s": _float(per_epoch.get("mean")),
                      "epoch_time_std_s": _float(per_epoch.get("std"))}
        if summary is not None:
            missing.append(f"{SUMMARY_CSV}: no row for {arm} seed {seed} (numbers taken from its {RUN_JSON})")
    try:  # blank cells as NaN, so a curve simply has a gap there
        run.metrics = [{k: math.nan if v is None else v for k, v in row.items()} for row in read_metrics(run.path)]
    except MinimascopeError as exc:
        missing.append(_missing(exc, root))
    if run.metrics and run.value("step_time_mean_s") is None:
        steps = [row["iter_time_mean_s"] for row in run.metrics if math.isfinite(row.get("iter_time_mean_s", math.nan))]
        if steps:
            run.values = {**run.values, "step_time_mean_s": float(np.mean(steps))}
    return run


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _comparison(node: dict[str, Any], root: Path, measures: Iterable[str], missing: list[str]) -> Comparison:
    arm_a, arm_b = (str(a) for a in node["arms"])
    seed = int(node["seed"])
    comparison = Comparison(arm_a, arm_b, seed, str(node.get("status", "pending")), node.get("reason"),
                            root / node.get("path", f"comparisons/{arm_a}_vs_{arm_b}/seed{seed}"))
    if comparison.status == "completed":
        comparison.matrices = _read_matrices(comparison.path, root, measures, missing)
        if (comparison.path / BOOTSTRAP_JSON).is_file():
            try:
                comparison.bootstrap = read_bootstrap(comparison.path / BOOTSTRAP_JSON)
            except MinimascopeError as exc:
                missing.append(_missing(exc, root))
    return comparison


def _read_matrices(path: Path, root: Path, measures: Iterable[str], missing: list[str]) -> dict[str, SimilarityMatrix]:
    matrices = {}
    for measure in measures or sorted(p.stem for p in path.glob("*.json") if p.name != "comparison.json"):
        file = path / f"{measure}.json"
        if not file.is_file():
            missing.append(f"{_relative(file, root)}: not found")
            continue
        try:
            matrices[measure] = read_similarity(file)
        except MinimascopeError as exc:
            missing.append(_missing(exc, root))
    return matrices


def _seed_comparison(node: dict[str, Any], root: Path, measures: Iterable[str], missing: list[str]) -> SeedComparison:
    arm = str(node["arms"][0])
    seed_i, seed_j = (int(s) for s in node["seeds"])
    comparison = SeedComparison(arm, (seed_i, seed_j), str(node.get("status", "pending")), node.get("reason"),
                                root / node.get("path", f"comparisons/{arm}_vs_{arm}/seed{seed_i}-seed{seed_j}"))
    if comparison.status == "completed":
        comparison.matrices = _read_matrices(comparison.path, root, measures, missing)
    return comparison


def _analysis(node: dict[str, Any], root: Path) -> Analysis:
    info = ANALYSES[str(node["kind"])]
    arms = (str(node["arm"]),) if info.per == PER_RUN else tuple(str(a) for a in node["arms"])
    seeds = [int(s) for s in node["seeds"]] if node.get("seeds") else [int(node["seed"])] if "seed" in node else []
    default = f"analyses/{info.name}/{'_vs_'.join(arms)}/{'-'.join(f'seed{s}' for s in seeds)}"
    analysis = Analysis(info.name, arms, seeds[0] if seeds else None, str(node.get("status", "pending")),
                        node.get("reason"), root / node.get("path", default),
                        seed_b=seeds[1] if len(seeds) > 1 else None)
    if analysis.status != "completed":
        return analysis
    try:
        analysis.result = info.read(analysis.path / info.result_file)
    except MinimascopeError as exc:
        analysis.problem = _missing(exc, root)
    return analysis


def load_study(study_dir: str | Path) -> Study:
    """Read everything the report shows from ``study_dir`` (see the module docstring)."""
    root = Path(study_dir)
    path = root / STUDY_JSON
    if not path.is_file():
        raise MinimascopeError(f"not a study directory (no {STUDY_JSON}): {root}")
    record = read_json(path, STUDY_JSON)
    if not isinstance(record, dict) or record.get("format") != STUDY_FORMAT:
        raise MinimascopeError(f"{path} is not a {STUDY_FORMAT} file")
    missing: list[str] = []
    summary = None
    if (root / SUMMARY_CSV).is_file():
        summary = read_summary(root / SUMMARY_CSV)
    else:
        missing.append(f"{SUMMARY_CSV}: not found (numbers taken from each run's {RUN_JSON})")
    nodes = [n for n in record.get("nodes", []) if isinstance(n, dict)]
    runs = {}
    for node in nodes:
        if node.get("kind") == "run":
            run = _run_result(node, root, summary, missing)
            runs[(run.arm, run.seed)] = run
    measures = record.get("compare", {}).get("measures") or []  # none listed: whatever each folder holds
    comparisons = [_comparison(n, root, measures, missing) for n in nodes
                   if n.get("kind") == "compare" and "seeds" not in n]
    seed_comparisons = [_seed_comparison(n, root, measures, missing) for n in nodes
                        if n.get("kind") == "compare" and "seeds" in n]
    analyses: dict[str, list[Analysis]] = {kind: [] for kind in ANALYSES}
    for node in nodes:
        if node.get("kind") in ANALYSES:
            analyses[node["kind"]].append(_analysis(node, root))
    return Study(root, record, runs, comparisons, missing, seed_comparisons, analyses)

