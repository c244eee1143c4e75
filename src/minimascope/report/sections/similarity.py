"""5. Similarity of layers: heatmaps per measure and layer i against layer i along the depth (the paper's Figs 5–7)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex

from minimascope.report import figures
from minimascope.report.text import PAIR_RULE, number, pair_missing
from minimascope.report.views import diagonals, layer_with_itself, mean_matrix
from minimascope.similarity import MEASURES

if TYPE_CHECKING:
    from minimascope.report.page import Context

TITLE = "Similarity of layers (the paper's Figs 5–7)"


def _pair_colours(pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    palette = colormaps["tab20" if len(pairs) > 10 else "tab10"]
    return {pair: to_hex(palette(i % palette.N)) for i, pair in enumerate(pairs)}


def _heatmaps(ctx: Context, measure: str, ordered: Sequence[tuple[str, str]], missing: list[str],
              summary: dict[str, dict[str, float]], seen: dict[str, set]) -> list[figures.Heatmap]:
    """One heatmap per compared pair (mean over seeds); the pairs without one are added to ``missing``."""
    panels = []
    for arm_a, arm_b in ordered:
        comparisons = ctx.study.pair_comparisons(arm_a, arm_b)
        mean = mean_matrix(comparisons, measure)
        if mean is None:
            missing.append(f"{measure}: {pair_missing(ctx.study, arm_a, arm_b)} (no {measure}.json)")
            continue
        seen["samples"].add(mean.n_samples)
        if mean.by_construction is not None and mean.by_construction.any():
            seen["by_construction"].add(f"{measure} {arm_a}{PAIR_RULE}{arm_b}: {int(mean.by_construction.sum())} "
                                        f"of {mean.by_construction.size} cells")
        seen["policies"].add(mean.policy)
        seeds = sum(measure in c.matrices for c in comparisons)
        label = f"within {arm_a}" if arm_a == arm_b else f"{arm_a}{PAIR_RULE}{arm_b}"
        panels.append(figures.Heatmap(f"{label} ({seeds} seed{'s' * (seeds != 1)})", mean.values,
                                      mean.layers_a, mean.layers_b))
        if arm_a != arm_b:
            diagonal = layer_with_itself(mean)[1]
            summary.setdefault(label, {})[measure] = float(np.nanmean(diagonal)) if np.isfinite(diagonal).any() \
                else math.nan
    return panels


def bootstrap_tables(comparisons: Sequence[Any]) -> list[dict[str, Any]]:
    """Per compared pair and seed with a bootstrap.json: layer, value [low, high] and shuffled-image baseline per
    measure (results.Comparison.bootstrap, read from the comparison folder)."""
    tables = []
    for comparison in comparisons:
        result = comparison.bootstrap
        if result is None:
            continue
        measures = list(result.values)
        rows = [{"layer": layer, "cells": [
            (f"{number(result.values[m]['value'][i], '{:.3f}')} [{number(result.values[m]['low'][i], '{:.3f}')}, "
             f"{number(result.values[m]['high'][i], '{:.3f}')}]", number(result.values[m]["baseline"][i], "{:.3f}"))
            for m in measures]} for i, layer in enumerate(result.layers)]
        tables.append({"title": f"{comparison.label}, seed {comparison.seed}", "measures": measures, "rows": rows,
                       "level": f"{result.level:.0%}", "method": result.method})
    return tables


def build(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    pairs = study.pairs()
    cross = [p for p in pairs if p[0] != p[1]]
    within = [p for p in pairs if p[0] == p[1]]
    colours = _pair_colours(cross)
    measures, missing, profiles, summary = [], [], [], {}
    seen: dict[str, set] = {"samples": set(), "policies": set(), "by_construction": set()}
    for measure in study.measures:
        panels = _heatmaps(ctx, measure, cross + within, missing, summary, seen)
        if not panels:
            continue
        spec = MEASURES.get(measure)
        kind = spec.kind if spec else "similarity"
        value_range = spec.value_range if spec else (0.0, 1.0)
        direction = "higher" if kind == "similarity" else "lower"
        first = next(c.matrices[measure] for c in study.comparisons if measure in c.matrices)
        groups: dict[tuple, list[figures.Heatmap]] = {}  # one figure per layer list (normally one in all)
        for panel in panels:
            groups.setdefault((panel.layers_a, panel.layers_b), []).append(panel)
        grids = [ctx.figure(ctx.name("similarity", (measure,), ".png" if i == 0 else f"-{i + 1}.png"),
                            partial(figures.heatmap_grid, group, value_range=value_range, kind=kind,
                                    colour_label=f"{measure} ({kind}: {direction} = more alike)"))
                 for i, group in enumerate(groups.values())]
        measures.append({"measure": measure, "kind": kind, "low": f"{value_range[0]:g}",
                         "high": f"{value_range[1]:g}", "convention": first.convention, "figures": grids})
        pair_profiles = []
        for arm_a, arm_b in cross:
            layers, per_seed = diagonals(study.pair_comparisons(arm_a, arm_b), measure)
            if per_seed:
                pair_profiles.append(figures.Profile(f"{arm_a}{PAIR_RULE}{arm_b}", colours[(arm_a, arm_b)], layers,
                                                     np.array(per_seed)))
        if pair_profiles:
            profiles.append((measure, kind, value_range, pair_profiles))
    profile = ctx.figure("similarity-depth.svg", lambda path: figures.depth_profile_figure(profiles, path)) \
        if profiles else None
    if not pairs:
        missing.append("no completed comparison in this study")
    return {
        "data_used": f"comparisons/*/seed*/<measure>.json; activations of "
                     f"{', '.join(map(str, sorted(seen['samples']))) or '?'} test images "
                     f"({', '.join(sorted(seen['policies'])) or '?'}"
                     f" policy) through each run's final.pt; seeds {', '.join(map(str, study.seeds))}; "
                     f"{len(cross)} pairs of arms and {len(within)} networks compared with themselves",
        "missing": missing, "measures": measures, "profile": profile,
        "bootstrap": bootstrap_tables(study.comparisons),
        "summary_measures": [m["measure"] for m in measures],
        "by_construction": sorted(seen["by_construction"]),
        "summary": [{"pair": label, "values": [number(values.get(m), "{:.3f}")
                                               for m in (x["measure"] for x in measures)]}
                    for label, values in summary.items()],
    }
