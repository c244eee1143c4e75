"""Loss surfaces: each arm's filter-normalised surface around its network (contours, as ``landscape`` drew them
from ``landscape.json``) and the plane through three arms' networks (the ``landscape-plane`` row: the arm a then-arm
started from, the then-arm and the plain arm of its optimizer), with a table of the loss at each network and how far
the surface rises around it. A plane's networks are named by their arms."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from minimascope.analyses import ANALYSES
from minimascope.report.text import analysis_missing, cells, data_set, drawn_text, images_text
from minimascope.report.views import by_arms

if TYPE_CHECKING:
    from minimascope.minima.landscape import Landscape
    from minimascope.report.page import Context

TITLE = "Loss surfaces: the picture of each minimum"
SECTION = "landscape"


def kinds() -> list[str]:
    """The analyses this section shows: every row of the table that names it (the surfaces, and the planes
    when they are a row of their own)."""
    return [name for name, row in ANALYSES.items() if row.section == SECTION]


def edge_rise(result: Landscape) -> float:
    """Mean training loss on the grid's outer ring minus the loss at the network: how far the surface climbs
    at distance ``span`` (inf where the loss overflowed there)."""
    rows = result.train_loss
    if result.dims == 1:
        ring = [rows[0][0], rows[0][-1]]
    else:
        ring = rows[0] + rows[-1] + [row[0] for row in rows[1:-1]] + [row[-1] for row in rows[1:-1]]
    return sum(ring) / len(ring) - result.centre_loss()


def _seed(analysis: Any) -> str:
    """A node's seed; a plane's three networks share theirs."""
    return str(analysis.seed) if analysis.seed_b in (None, analysis.seed) else analysis.seed_text


def by_arm_names(arms: tuple[str, ...], result: Landscape) -> Landscape:
    """A plane with its marked networks named by their arms (in the node's order, which is the plane's A, B, C)
    rather than by their run folders."""
    if len(arms) != len(result.points):
        return result
    return replace(result, points=[replace(point, label=arm) for point, arm in zip(result.points, arms)])


def _panels(ctx: Context, name: str, groups: dict[tuple[str, ...], list[Any]]) -> str | None:
    """One contour panel per group (its first seed), drawn by the analysis's own figure code, a plane's networks
    named by their arms."""
    from minimascope.minima.landscape_figures import contour_figure

    panels = [(f"{' · '.join(arms)} (seed {_seed(analyses[0])})", by_arm_names(arms, analyses[0].result))
              for arms, analyses in groups.items()]
    if not panels:
        return None
    return ctx.figure(name, lambda path: contour_figure(panels, path, columns=3 if len(panels) > 4 else 2))


def build(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    completed = [a for kind in kinds() for a in study.completed_analyses(kind)]
    groups = by_arms(completed)
    surfaces = {arms: found for arms, found in groups.items() if len(arms) == 1}
    planes = {arms: found for arms, found in groups.items() if len(arms) == 3}
    rows, plane_rows, images, modes = [], [], set(), set()
    for (arm,), analyses in surfaces.items():
        results = [a.result for a in analyses]
        images |= {r.images for r in results}
        modes |= {r.bn for r in results}
        random = [r for r in results if r.kind == "random"]
        rows.append({"arm": arm, "seeds": ", ".join(_seed(a) for a in analyses),
                     "kind": ", ".join(sorted({r.kind for r in results})),
                     "loss": cells([r.centre_loss() for r in results]),
                     "accuracy": cells([r.points[0].values.train_accuracy for r in results], "{:.3f}"),
                     "rise": cells([edge_rise(r) for r in random]),
                     "span": ", ".join(sorted({f"{r.directions.get('span', '?')}" for r in random})) or "—"})
    for arms, analyses in planes.items():
        for analysis in analyses:
            result = by_arm_names(arms, analysis.result)
            images.add(result.images)
            modes.add(result.bn)
            plane_rows.append({"arms": " · ".join(arms), "seed": _seed(analysis),
                               "points": [{"label": p.label, "x": f"{p.x:.3g}", "y": f"{p.y:.3g}",
                                           "loss": f"{p.values.train_loss:.4g}" if math.isfinite(p.values.train_loss)
                                           else "∞"} for p in result.points]})
    trained = images_text(images, f"{data_set(study).title} training images")
    return {
        "data_used": f"analyses/landscape/<arm>/seed<k>/landscape.json and analyses/landscape-plane/<A>_vs_<B>_vs_<C>/"
                     f"seed<k>/landscape.json; training loss on {trained} "
                     f"(class-balanced subset, {drawn_text([a.result.settings for a in completed])}) at every grid "
                     f"point; "
                     f"batch norm: {', '.join(sorted(modes)) or '?'} (recompute: statistics of those images at every "
                     f"point; eval: running statistics)",
        # a study that draws no planes (or no surfaces) lacks nothing: only kinds it planned can miss results
        "missing": [line for kind in [k for k in kinds() if study.analysis_nodes(k)] or kinds()
                    for line in analysis_missing(study, kind)],
        "rows": rows, "plane_rows": plane_rows,
        "figures": {"surfaces": _panels(ctx, "landscape-surfaces.png", surfaces),
                    "planes": _panels(ctx, "landscape-planes.png", planes)},
    }
