"""8. Sharpness: each arm's top Hessian eigenvalues, trace and smoothed eigenvalue density, as ``sharpness`` wrote
them (the curve included: the report draws it, never smooths it), beside λ1 and trace of D·H·D with D = |w|, which
a batch-norm rescaling of the weights leaves unchanged, and the loss at the evaluated weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from minimascope.report import figures
from minimascope.report.text import analysis_missing, cells, data_set, drawn_text, images_text
from minimascope.report.views import by_arms

if TYPE_CHECKING:
    from minimascope.report.page import Context

TITLE = "Sharpness: Hessian eigenvalues and trace"
NOT_AT_MINIMUM = 0.1  # a loss above this at the evaluated weights: the network is not at a minimum


def _adaptive(results: list[Any], part: str) -> dict[str, str]:
    """The |w|-scaled λ1 or trace of each seed that has it."""
    found = [r.adaptive for r in results if r.adaptive is not None]
    return cells([a.eigenvalues.values[0] if part == "eigenvalue" else a.trace.value for a in found], "{:.4g}")


def build(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    rows, lines, points = [], [], {"top eigenvalue λ1": [], "trace (Hutchinson)": []}
    images, sources, not_minimum, all_results = set(), set(), [], []
    for (arm,), analyses in by_arms(study.completed_analyses("sharpness")).items():
        results = [a.result for a in analyses]
        all_results += results
        images |= {r.n_images for r in results}
        sources |= {str(r.settings.get("images", "?")) for r in results}
        k = min(len(r.eigenvalues.values) for r in results)
        top = [r.eigenvalues.values[0] for r in results]
        traces = [r.trace.value for r in results]
        rows.append({"arm": arm, "seeds": ", ".join(str(a.seed) for a in analyses),
                     "eigenvalues": [cells([r.eigenvalues.values[i] for r in results]) for i in range(k)],
                     "trace": cells(traces),
                     "trace_stderr": ", ".join(f"{r.trace.stderr:.2g} ({r.trace.probes} probes)" for r in results),
                     "ratio": cells([r.eigenvalues.values[0] / r.trace.value for r in results if r.trace.value != 0],
                                    "{:.3g}"),
                     "adaptive_top": _adaptive(results, "eigenvalue"), "adaptive_trace": _adaptive(results, "trace"),
                     "loss": cells([r.loss for r in results if r.loss is not None], "{:.3g}"),
                     "unconverged": ", ".join(f"seed {a.seed}" for a in analyses
                                              if not (a.result.eigenvalues.converged and a.result.trace.converged))})
        not_minimum += [f"{arm} seed {a.seed}: loss {a.result.loss:.3g}" for a in analyses
                        if a.result.loss is not None and a.result.loss > NOT_AT_MINIMUM]
        points["top eigenvalue λ1"].append(figures.SeedValues(arm, ctx.arm_colour(arm), top))
        points["trace (Hutchinson)"].append(figures.SeedValues(arm, ctx.arm_colour(arm), traces))
        lines += [figures.DensityLine(arm, ctx.arm_colour(arm), np.asarray(r.density.grid),
                                      np.asarray(r.density.smoothed)) for r in results]
    title = data_set(study).title
    shown = {}
    if rows:
        shown = {"points": ctx.figure("sharpness.svg", lambda path: figures.seed_points_figure(list(points.items()),
                                                                                              path)),
                 "density": ctx.figure("sharpness-density.svg", lambda path: figures.density_lines_figure(lines, path))}
    return {
        "data_used": f"analyses/sharpness/<arm>/seed<k>/sharpness.json; loss = mean cross-entropy over "
                     f"{images_text(images, f'{title} ' + ('/'.join(sorted(sources)) or 'train') + ' images')} "
                     f"(class-balanced subset, {drawn_text([r.settings for r in all_results])}) at each run's final "
                     f"weights, in eval mode (batch norm with running "
                     f"statistics, so the loss is a function of the weights alone)",
        "missing": analysis_missing(study, "sharpness"),
        "rows": rows, "not_minimum": not_minimum, "threshold": NOT_AT_MINIMUM,
        "k": max((len(r["eigenvalues"]) for r in rows), default=0), "figures": shown,
    }
