"""What several sections pick out of the study as read: matrices, curves, groups of arms and analyses.

Selection only (which values, in which order); the values themselves are those the result files hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from minimascope.report import figures
from minimascope.report.text import PAIR_RULE, is_scaled
from minimascope.results import Comparison, Study
from minimascope.similarity import SimilarityMatrix


def shown_values(matrix: SimilarityMatrix) -> np.ndarray:
    """The matrix's values with the cells that are 1 by construction (SVCCA/CCA keeping more than n − 1
    directions) as NaN: the page never shows them as numbers (blank in heatmaps, "—" in tables)."""
    if matrix.by_construction is None:
        return matrix.values
    return np.where(np.asarray(matrix.by_construction, dtype=bool), np.nan, matrix.values)


def layer_with_itself(matrix: SimilarityMatrix) -> tuple[tuple[str, ...], np.ndarray]:
    """Layer i of A against the layer of B with the same name, in A's order (NaN where by construction)."""
    index_b = {name: j for j, name in enumerate(matrix.layers_b)}
    layers = tuple(name for name in matrix.layers_a if name in index_b)
    rows = [matrix.layers_a.index(name) for name in layers]
    return layers, shown_values(matrix)[rows, [index_b[name] for name in layers]]


def diagonals(comparisons: Sequence[Comparison], measure: str) -> tuple[tuple[str, ...], list[np.ndarray]]:
    """Per seed, layer i with layer i; only seeds whose layers agree with the first one's."""
    layers: tuple[str, ...] = ()
    per_seed = []
    for comparison in comparisons:
        if measure not in comparison.matrices:
            continue
        names, values = layer_with_itself(comparison.matrices[measure])
        layers = layers or names
        if names == layers and len(names):
            per_seed.append(values)
    return layers, per_seed


def seed_diagonals(comparisons: Sequence[Comparison], measure: str) -> dict[int, np.ndarray]:
    """:func:`diagonals` by seed, for rules that pair arms by seed."""
    layers: tuple[str, ...] = ()
    found = {}
    for comparison in comparisons:
        if measure in comparison.matrices:
            names, values = layer_with_itself(comparison.matrices[measure])
            layers = layers or names
            if names == layers and len(names):
                found[comparison.seed] = values
    return found


def mean_matrix(comparisons: Sequence[Comparison], measure: str) -> SimilarityMatrix | None:
    """The seeds' mean of one pair's matrix (only seeds with the first seed's layers), for its heatmap."""
    matrices = [c.matrices[measure] for c in comparisons if measure in c.matrices]
    if not matrices:
        return None
    first = matrices[0]
    same = [m for m in matrices if (m.layers_a, m.layers_b) == (first.layers_a, first.layers_b)]
    marked = [m.by_construction for m in same if m.by_construction is not None]
    by_construction = np.any(marked, axis=0) if marked else None  # by construction in any seed: not shown
    values = np.mean([m.values for m in same], axis=0)
    if by_construction is not None:
        values = np.where(by_construction, np.nan, values)
    return SimilarityMatrix(first.measure, first.kind, first.convention, values, first.layers_a, first.layers_b,
                            first.n_samples, first.policy, first.label_a, first.label_b,
                            by_construction=by_construction)


def by_arms(analyses: Sequence[Any]) -> dict[tuple[str, ...], list[Any]]:
    """Analyses grouped by their arm (or pair of arms), in node order, each group in seed order."""
    groups: dict[tuple[str, ...], list[Any]] = {}
    for analysis in analyses:
        groups.setdefault(analysis.arms, []).append(analysis)
    return {arms: sorted(group, key=lambda a: (a.seed, -1 if a.seed_b is None else a.seed_b))
            for arms, group in groups.items()}


def pair_label(arms: Sequence[str]) -> str:
    """"a vs b" for two arms; for two seeds of one arm (the seed-to-seed baseline) "a: two seeds"."""
    return f"{arms[0]}: two seeds" if len(arms) == 2 and arms[0] == arms[1] else PAIR_RULE.join(arms)


def normalisation_groups(study: Study) -> list[tuple[str, str | None, list[str]]]:
    """(optimizer, its normal-input arm or None, its scaled-input arms) for every optimizer with scaled arms."""
    groups = []
    for optimizer in dict.fromkeys(c.get("optimizer", "?") for c in study.arms.values()):
        scaled = [a for a, c in study.arms.items() if c.get("optimizer") == optimizer and is_scaled(c)]
        if not scaled:
            continue
        normal = next((a for a, c in study.arms.items() if c.get("optimizer") == optimizer and not is_scaled(c)
                       and not c.get("pretrained") and not c.get("init_from")), None)
        groups.append((optimizer, normal, scaled))
    return groups


def arm_curve(study: Study, arm: str, column: str, colour: str, label: str | None = None) -> figures.Curve | None:
    """The arm's ``column`` per epoch, one row per finished seed (completed or diverged)."""
    runs = [r for r in study.arm_runs(arm) if r.status in ("completed", "diverged") and r.metrics]
    if not runs:
        return None
    epochs = sorted({int(row["epoch"]) for r in runs for row in r.metrics if math.isfinite(row.get("epoch", math.nan))})
    if not epochs:
        return None
    position = {e: i for i, e in enumerate(epochs)}
    per_seed = np.full((len(runs), len(epochs)), np.nan)
    for k, run in enumerate(runs):
        for row in run.metrics:
            if math.isfinite(row.get("epoch", math.nan)):
                per_seed[k, position[int(row["epoch"])]] = row.get(column, math.nan)
    diverged = any(r.status == "diverged" for r in runs)
    return figures.Curve((label or arm) + (" (diverged)" if diverged else ""), colour,
                         np.array(epochs, dtype=float), per_seed)
