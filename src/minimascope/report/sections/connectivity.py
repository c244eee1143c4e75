"""9. Connectivity: loss and error along the straight path between two arms' minima, its barrier in both forms
(above the mean of the ends, and above the chord between them) and the standard error of each point."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from minimascope.report import figures
from minimascope.report.text import analysis_missing, cells, data_set, drawn_text
from minimascope.report.views import by_arms, pair_label

if TYPE_CHECKING:
    from minimascope.report.page import Context

TITLE = "Connectivity: the straight path between minima"
METRICS = (("train_loss", "train loss"), ("test_error", "test error"))  # the figure's rows
BARRIERS = ("train_loss", "train_error", "test_loss", "test_error")  # the table's columns


def _largest_stderr(curves: list[Any]) -> str:
    """The largest standard error over the images of any point of the path, per metric, over the seeds."""
    found = [(label, max(v for c in curves for v in c.standard_errors.get(metric, []) if math.isfinite(v)))
             for metric, label in (("train_loss", "train loss"), ("test_error", "test error"))
             if any(math.isfinite(v) for c in curves for v in c.standard_errors.get(metric, []))]
    return ", ".join(f"{label} {value:.2g}" for label, value in found) or "—"


def build(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    rows, pairs, sizes, not_aligned, settings = [], [], set(), {}, []
    for arms, analyses in by_arms(study.completed_analyses("connectivity")).items():
        results = [a.result for a in analyses]
        settings += [r.settings for r in results]
        sizes |= {(r.n_train, r.n_test, r.settings.get("points", len(r.alphas))) for r in results}
        label = pair_label(arms)
        # weight matching has no rule for the architecture: the +matched lines are absent, and the page says why
        for result in results:
            if isinstance(result.settings.get("alignment_skipped"), str):
                not_aligned[label] = result.settings["alignment_skipped"]
        alphas = results[0].alphas
        same = [r for r in results if r.alphas == alphas]
        curves: dict[str, dict[str, np.ndarray]] = {}
        for variant in dict.fromkeys(c.variant for r in same for c in r.curves):
            having = [r.curve(variant) for r in same if variant in {c.variant for c in r.curves}]
            curves[variant] = {m: np.array([getattr(c, m) for c in having]) for m, _ in METRICS}
            barriers = [c.barriers() for c in having]
            chords = [c.chord_barriers(alphas) for c in having]
            rows.append({"pair": label, "variant": variant, "seeds": len(having),
                         **{metric: cells([b[metric] for b in barriers]) for metric in BARRIERS},
                         **{f"chord_{metric}": cells([b[metric] for b in chords]) for metric in BARRIERS},
                         "stderr": _largest_stderr(having)})
        pairs.append(figures.PathLines(label, np.asarray(alphas), curves))
    figure = ctx.figure("connectivity.svg", lambda path: figures.paths_figure(pairs, path, METRICS)) if pairs else None
    sizes_text = "; ".join(f"{n_train} train and {n_test} test images, {points} points"
                           for n_train, n_test, points in sorted(sizes)) or "?"
    return {
        "data_used": f"analyses/connectivity/<a>_vs_<b>/seed<k>/connectivity.json; {sizes_text} (class-balanced "
                     f"subsets of the {data_set(study).title} train and test sets, the train images "
                     f"{drawn_text(settings)}); same-seed networks of the two "
                     f"arms, and two seeds of one arm (its seed-to-seed baseline, where weight matching has work "
                     f"to do)",
        "missing": analysis_missing(study, "connectivity"), "rows": rows, "figure": figure,
        "not_aligned": sorted(not_aligned.items()),
    }
