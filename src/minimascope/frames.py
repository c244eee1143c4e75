"""A study's results as pandas DataFrames, one tidy row per thing measured, for notebooks and the report.

Each function takes a :class:`~minimascope.results.Study` (already read and checked) and returns a
frame with fixed columns, so code written against a study that ran an analysis also runs against one that
did not: that frame is empty but has its columns. Only completed results are rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from minimascope.results import Study

RUN_COLUMNS = ("arm", "seed", "optimizer", "init", "std_multiplier", "epochs", "status", "test_accuracy",
               "test_loss", "train_loss", "train_accuracy", "epoch_time_mean_s", "epoch_time_std_s",
               "step_time_mean_s")  # summary.csv's
CURVE_COLUMNS = ("arm", "seed", "epoch", "metric", "value")
SIMILARITY_COLUMNS = ("arm_a", "arm_b", "seed_a", "seed_b", "measure", "kind", "convention", "layer_a", "layer_b",
                      "value", "by_construction", "n_samples")
SHARPNESS_COLUMNS = ("arm", "seed", "n_images", "top_eigenvalue", "eigenvalues", "eigenvalues_converged", "trace",
                     "trace_stderr", "trace_probes", "trace_converged")
CONNECTIVITY_COLUMNS = ("arm_a", "arm_b", "seed", "seed_b", "variant", "alpha", "train_loss", "train_error",
                        "test_loss", "test_error")
WEIGHT_COLUMNS = ("arm", "seed", "layer", "shape", "frobenius_norm", "distance_from_init",
                  "relative_distance_from_init", "effective_rank", "stable_rank", "small_weight_share")
MISTAKE_COLUMNS = ("arm_a", "arm_b", "seed", "seed_b", "n", "both_wrong", "only_a_wrong", "only_b_wrong", "both_right",
                   "expected_both_wrong", "kappa", "p_value_more_overlap", "p_value_less_overlap")


def frame(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(list(rows), columns=list(columns))


def b_seed(analysis: Any) -> int | None:
    """The seed of a pair's second network: its own seed when two seeds of one arm are compared."""
    return analysis.seed if analysis.seed_b is None else analysis.seed_b


def runs(study: Study) -> pd.DataFrame:
    """One row per arm × seed: summary.csv's columns (a run's own run.json where summary.csv lacks it)."""
    rows = []
    for (arm, seed), run in study.run_results.items():
        config = study.arms.get(arm, {})
        fallback = {"optimizer": config.get("optimizer"), "epochs": config.get("epochs"),
                    "std_multiplier": ";".join(f"{m:g}" for m in config.get("std_multiplier") or ())}
        row = {**fallback, **{k: v for k, v in run.values.items() if v is not None},
               "arm": arm, "seed": seed, "status": run.status}
        rows.append({**row, "epochs": None if row["epochs"] is None else int(row["epochs"])})
    return frame(rows, RUN_COLUMNS)


def curves(study: Study) -> pd.DataFrame:
    """Every epoch of every run, one row per (arm, seed, epoch, metric); blank cells are left out."""
    rows = ({"arm": arm, "seed": seed, "epoch": int(row["epoch"]), "metric": metric, "value": value}
            for (arm, seed), run in study.run_results.items() for row in run.metrics
            for metric, value in row.items() if metric != "epoch" and math.isfinite(value))
    return frame(rows, CURVE_COLUMNS)


def similarity(study: Study) -> pd.DataFrame:
    """Every cell of every similarity matrix: arm A's layer against arm B's, at one seed (seed_a == seed_b)
    or between two seeds of one arm; ``by_construction`` marks SVCCA / CCA cells whose sides keep more than
    n − 1 directions together (some canonical correlations are 1 whatever the layers)."""
    compared = [(c.arm_a, c.arm_b, c.seed, c.seed, c.matrices) for c in study.comparisons]
    compared += [(c.arm, c.arm, *c.seeds, c.matrices) for c in study.seed_comparisons]
    rows = ({"arm_a": arm_a, "arm_b": arm_b, "seed_a": seed_a, "seed_b": seed_b, "measure": m.measure,
             "kind": m.kind, "convention": m.convention, "layer_a": layer_a, "layer_b": layer_b,
             "value": float(m.values[i, j]), "n_samples": m.n_samples,
             "by_construction": m.by_construction is not None and bool(m.by_construction[i, j])}
            for arm_a, arm_b, seed_a, seed_b, matrices in compared for m in matrices.values()
            for i, layer_a in enumerate(m.layers_a) for j, layer_b in enumerate(m.layers_b))
    return frame(rows, SIMILARITY_COLUMNS)


def sharpness(study: Study) -> pd.DataFrame:
    rows = ({"arm": a.arms[0], "seed": a.seed, "n_images": r.n_images, "top_eigenvalue": r.eigenvalues.values[0],
             "eigenvalues": tuple(r.eigenvalues.values), "eigenvalues_converged": r.eigenvalues.converged,
             "trace": r.trace.value, "trace_stderr": r.trace.stderr, "trace_probes": r.trace.probes,
             "trace_converged": r.trace.converged}
            for a in study.completed_analyses("sharpness") for r in (a.result,))
    return frame(rows, SHARPNESS_COLUMNS)


def connectivity(study: Study) -> pd.DataFrame:
    """One row per point of each path (``variant``: the batch-norm mode, ``+matched`` after weight matching);
    ``seed_b`` differs from ``seed`` for a path between two seeds of one arm."""
    rows = ({"arm_a": a.arms[0], "arm_b": a.arms[1], "seed": a.seed, "seed_b": b_seed(a), "variant": curve.variant,
             "alpha": alpha,
             "train_loss": curve.train_loss[i], "train_error": curve.train_error[i],
             "test_loss": curve.test_loss[i], "test_error": curve.test_error[i]}
            for a in study.completed_analyses("connectivity") for curve in a.result.curves
            for i, alpha in enumerate(a.result.alphas))
    return frame(rows, CONNECTIVITY_COLUMNS)


def weights(study: Study) -> pd.DataFrame:
    rows = ({"arm": a.arms[0], "seed": a.seed, "layer": layer.layer, "shape": "×".join(map(str, layer.shape)),
             **{c: getattr(layer, c) for c in WEIGHT_COLUMNS[4:]}}
            for a in study.completed_analyses("weights") for layer in a.result.layers)
    return frame(rows, WEIGHT_COLUMNS)


def mistakes(study: Study) -> pd.DataFrame:
    rows = ({"arm_a": a.arms[0], "arm_b": a.arms[1], "seed": a.seed, "seed_b": b_seed(a),
             **{c: getattr(a.result, c) for c in MISTAKE_COLUMNS[4:]}}
            for a in study.completed_analyses("mistakes"))
    return frame(rows, MISTAKE_COLUMNS)
