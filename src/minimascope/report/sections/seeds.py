"""12. Seed statistics: is a difference between optimizers larger than a change of seed alone makes? The arms'
scalars paired by seed, the cost per step, and each measure and layer against seed-to-seed values.

Shows the ``seeds`` analyses' results (:func:`minimascope.optimizer_effect.read_seed_statistics`), one
per pair of arms, and links a copy of each one's ``seeds.csv``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from minimascope.optimizer_effect import CORRECTION, SEEDS_CSV
from minimascope.report.claims import direction_counts
from minimascope.report.text import PAIR_RULE, analysis_missing, cells, interval_text, number, p_text, seeds_text
from minimascope.results import Study

if TYPE_CHECKING:
    from minimascope.report.page import Context

TITLE = "Seed statistics: optimizer against seed"
ALPHA = 0.05


def _missing(study: Study) -> list[str]:
    """Why the section may show little: one seed, no cross-seed comparisons, nodes without results."""
    missing = []
    if len(study.seeds) < 2:
        missing.append(f"one seed only ({', '.join(map(str, study.seeds)) or 'none'}): nothing to hold a "
                       f"difference against")
    if not study.seed_comparisons:
        missing.append("no cross-seed comparisons (comparisons/<arm>_vs_<arm>/seed<i>-seed<j>) in this study")
    missing += [f"cross-seed comparison {c.arm} seeds {c.seeds[0]}-{c.seeds[1]}: {c.status}"
                + (f" ({c.reason})" if c.reason else "") for c in study.seed_comparisons if c.status != "completed"]
    return missing + (analysis_missing(study, "seeds") if study.analysis_nodes("seeds") else [])


def _layer_rows(result: Any) -> list[dict[str, Any]]:
    """Each measure and layer: raw, Holm and BH p-values, each with the least its test allows at these sizes
    (Holm multiplies the least raw p by the family's size m; BH's least equals the raw one)."""
    family = {measure: sum(t.measure == measure for t in result.tests) for measure in {t.measure for t in result.tests}}
    return [{"measure": t.measure, "kind": t.kind, "layer": t.layer, "within": interval_text(t.within),
             "across": interval_text(t.across), "statistic": f"{t.test.statistic:+.3g}",
             "effect": number(t.effect_size), "p": p_text(t.test.p_value, t.test.smallest_attainable_p),
             "p_holm": p_text(t.p_holm, min(1.0, family[t.measure] * t.test.smallest_attainable_p)),
             "p_bh": p_text(t.p_bh, t.test.smallest_attainable_p), "significant": t.p_holm < ALPHA,
             "method": f"{t.test.method}, {t.test.n_arrangements} arrangements"}
            for t in result.tests]


def _scalar_row(label: str, scalar: Any) -> dict[str, Any]:
    paired, verdict = scalar.paired, scalar.verdict
    return {"pair": label, "name": scalar.name, "a": cells(scalar.arm_a_values), "b": cells(scalar.arm_b_values),
            "per_seed": direction_counts(paired, "first", "second"), "verdict": verdict.verdict,
            "direction": verdict.direction, "decide": verdict.decide,
            "p": "; ".join([p_text(verdict.p_value, verdict.smallest_attainable_p, "paired t p"),
                            p_text(paired.sign_flip.p_value, paired.sign_flip.smallest_attainable_p, "sign-flip p")]),
            "effect": f"d_z {number(paired.effect_size)}", "variability": verdict.variability}


def _cost_row(label: str, result: Any) -> dict[str, Any]:
    verdict = result.cost
    return {"pair": label, "verdict": verdict.verdict, "direction": verdict.direction, "decide": verdict.decide,
            "variability": verdict.variability, "rule": verdict.rule,
            "seeds": [f"seed {r.seed}: {r.ratio:.3g}× [{r.low:.3g}, {r.high:.3g}] ({r.n_a} and {r.n_b} steps)"
                      for r in result.costs]}


def build(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    missing, tables, scalars, costs = _missing(study), [], [], []
    for analysis in study.completed_analyses("seeds"):
        result = analysis.result
        label = PAIR_RULE.join(result.arms)
        missing += [f"{label}: {problem}" for problem in result.problems]
        scalars += [_scalar_row(label, s) for s in result.scalars]
        if result.cost is not None:
            costs.append(_cost_row(label, result))
        if not result.tests:
            continue
        csv = ctx.copy(ctx.name("seeds", result.arms, ".csv"), analysis.path / SEEDS_CSV)
        tables.append({"pair": label, "csv": csv,
                       "within_arms": ", ".join(result.within_arms),
                       "significant": sum(t.p_holm < ALPHA for t in result.tests), "count": len(result.tests),
                       "smallest": number(min(t.test.smallest_attainable_p for t in result.tests)),
                       "rows": _layer_rows(result)})
    if tables and not any(n.arms[0] == n.arms[-1] for n in study.analysis_nodes("connectivity")):
        missing.append("barrier: no connectivity between two seeds of one arm, so the barrier between arms "
                       "cannot be held against seed noise")
    return {
        "data_used": f"analyses/seeds/<a>_vs_<b>/seeds.json, from comparisons/<a>_vs_<b>/seed<k>/<measure>.json "
                     f"(across arms, same seed) and comparisons/<arm>_vs_<arm>/seed<i>-seed<j>/<measure>.json (two "
                     f"seeds of one arm), layer i with layer i, and each run's run.json, steps.csv and "
                     f"sharpness.json for the scalars; seeds {seeds_text(study)}",
        "missing": missing, "tables": tables, "scalars": scalars, "costs": costs, "alpha": ALPHA,
        "correction": CORRECTION,
    }
