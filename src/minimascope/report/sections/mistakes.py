"""11. Mistakes: which test images each arm of a pair gets wrong, against independent errors, and McNemar's exact
test of the two accuracies on these images (uncertainty "on these networks", not across seeds)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from minimascope.report import figures
from minimascope.report.text import analysis_missing, data_set, images_text, p_text
from minimascope.report.views import by_arms, pair_label

if TYPE_CHECKING:
    from minimascope.report.page import Context

TITLE = "Mistakes: which test images each arm gets wrong"
GRIDS = ("only_a.png", "only_b.png")  # what `mistakes` draws: images only A, only B gets wrong


def fisher_smallest_p(n: int, errors_a: int, errors_b: int) -> float:
    """The least p of the one-sided "more overlap" Fisher test at these margins: the probability of the largest
    overlap possible, min(errors A, errors B), under the hypergeometric null (mistakes.json stores the p only)."""
    most = min(errors_a, errors_b)
    return math.comb(errors_a, most) * math.comb(n - errors_a, errors_b - most) / math.comb(n, errors_b)


def build(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    rows, class_pairs, grids, sizes = [], [], [], set()
    for arms, analyses in by_arms(study.completed_analyses("mistakes")).items():
        label = pair_label(arms)
        for analysis in analyses:
            c = analysis.result
            sizes.add(c.n)
            rows.append({"pair": label, "seed": analysis.seed_text, "n": c.n, "errors_a": c.errors_a,
                         "errors_b": c.errors_b, "both": c.both_wrong, "expected": f"{c.expected_both_wrong:.1f}",
                         "only_a": c.only_a_wrong, "only_b": c.only_b_wrong,
                         "kappa": "—" if math.isnan(c.kappa) else f"{c.kappa:.3f}",
                         "p_more": p_text(c.p_value_more_overlap, fisher_smallest_p(c.n, c.errors_a, c.errors_b)),
                         "mcnemar": p_text(c.mcnemar.p_value, c.mcnemar.smallest_attainable_p)})
        first_pair = analyses[0]
        first = first_pair.result
        same = [a.result for a in analyses if a.result.class_names == first.class_names]
        class_pairs.append(figures.ClassErrors(
            label, first.class_names, arms[0], arms[1],
            np.mean([[k.error_rate_a for k in r.per_class] for r in same], axis=0),
            np.mean([[k.error_rate_b for k in r.per_class] for r in same], axis=0)))
        networks = arms if first_pair.seed_b is None else (f"{arms[0]} seed {first_pair.seed}",
                                                           f"{arms[1]} seed {first_pair.seed_b}")
        for name, who in zip(GRIDS, networks):
            source = first_pair.path / name
            if source.is_file():
                grids.append({"src": ctx.copy(ctx.name("mistakes", arms, f"-{name}"), source), "pair": label,
                              "seed": first_pair.seed_text, "who": who})
    figure = ctx.figure("mistakes-classes.svg", lambda path: figures.class_errors_figure(class_pairs, path)) \
        if class_pairs else None
    return {
        "data_used": f"analyses/mistakes/<a>_vs_<b>/seed<k>/mistakes.json (each run's final predictions, "
                     f"predictions.pt); {images_text(sizes, f'{data_set(study).title} test images')} per comparison",
        "missing": analysis_missing(study, "mistakes"), "rows": rows, "figure": figure, "grids": grids,
    }
