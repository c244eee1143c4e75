"""10. Weights: norms, ranks and spectra of every layer of each arm's final weights, and all of it as CSV."""

from __future__ import annotations

import csv
import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from minimascope.report import figures
from minimascope.report.text import analysis_missing, cells
from minimascope.report.views import by_arms

if TYPE_CHECKING:
    from minimascope.report.page import Context

TITLE = "Weights: norms, ranks and spectra per layer"
MEASURES = (("relative_distance_from_init", "‖W − W₀‖ / ‖W₀‖"), ("frobenius_norm", "Frobenius norm ‖W‖"),
            ("effective_rank", "effective rank (Roy & Vetterli)"), ("stable_rank", "stable rank ‖W‖²/σ²max"),
            ("small_weight_share", "share of |w| below the threshold"))
WEIGHTS_CSV = "weights.csv"


def weights_csv(groups: dict[tuple[str, ...], list[Any]]) -> str:
    """Every layer of every arm and seed, as the weights analyses wrote them."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["arm", "seed", "layer", "shape", *(m for m, _ in MEASURES), "distance_from_init",
                     "sigma_max", "threshold"])
    for (arm,), analyses in groups.items():
        for analysis in analyses:
            for layer in analysis.result.layers:
                values = [getattr(layer, m) for m, _ in MEASURES] + [layer.distance_from_init,
                                                                     layer.singular_values[0]]
                writer.writerow([arm, analysis.seed, layer.layer, "x".join(map(str, layer.shape)),
                                 *("" if v is None or not math.isfinite(v) else repr(float(v)) for v in values),
                                 analysis.result.threshold])
    return buffer.getvalue()


def build(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    groups = by_arms(study.completed_analyses("weights"))
    panels: dict[str, list[figures.Profile]] = {label: [] for _, label in MEASURES}
    rows, thresholds, missing = [], set(), []
    for (arm,), analyses in groups.items():
        layers = tuple(layer.layer for layer in analyses[0].result.layers)
        same = [a for a in analyses if tuple(layer.layer for layer in a.result.layers) == layers]
        thresholds |= {a.result.threshold for a in same}
        if not all(a.result.has_initial for a in same):
            missing.append(f"{arm}: no initial weights recorded, so no distance from init")
        row = {"arm": arm, "seeds": ", ".join(str(a.seed) for a in same), "layers": len(layers), "values": []}
        for measure, label in MEASURES:
            per_seed = np.array([[math.nan if getattr(layer, measure) is None else getattr(layer, measure)
                                  for layer in a.result.layers] for a in same], dtype=float)
            if np.isfinite(per_seed).any():
                panels[label].append(figures.Profile(arm, ctx.arm_colour(arm), layers, per_seed))
            row["values"].append(cells([float(np.nanmean(seed)) for seed in per_seed if np.isfinite(seed).any()],
                                       "{:.3g}"))
        rows.append(row)
    shown = [(label, profiles) for label, profiles in panels.items() if profiles]
    figure = ctx.figure("weights.svg", lambda path: figures.layer_profiles_figure(shown, path)) if shown else None
    return {
        "data_used": f"analyses/weights/<arm>/seed<k>/weights.json (final.pt against initial.pt of each run; no "
                     f"images); small weights: |w| below {', '.join(f'{t:g}' for t in sorted(thresholds)) or '?'}",
        "missing": analysis_missing(study, "weights") + missing, "rows": rows,
        "measures": [label for _, label in MEASURES], "figure": figure,
        "csv": ctx.write(WEIGHTS_CSV, weights_csv(groups)) if shown else None,
    }
