"""7. The paper's claims, each checked against this study's numbers.

Which arms each claim needs is in :data:`minimascope.report.claims.CLAIMS`; this module only fetches their
numbers, paired by seed (only the seeds every arm of a claim has), and hands them to the claim's check.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from minimascope.errors import MinimascopeError
from minimascope.minima.step_cost import read_step_times
from minimascope.report import claims
from minimascope.report.text import budget, data_sizes, pair_missing, reading_text, why_unavailable
from minimascope.report.views import normalisation_groups, seed_diagonals
from minimascope.results import Study

if TYPE_CHECKING:
    from minimascope.report.page import Context

TITLE = "The paper's claims, checked"
MEASURES = ("cka_debiased", "cka")  # the first the study measured; plain CKA is the biased estimator
PAPER_ARMS = ("sgd", "adahessian")  # the normalisation claims are about these optimizers' arms


def claim_measure(study: Study) -> str | None:
    """The similarity the claims use: debiased CKA where the study measured it, else CKA, else none."""
    measured = {m for c in study.comparisons for m in c.matrices}
    return next((m for m in MEASURES if m in measured), None)


def paired_values(study: Study, inputs: tuple[tuple[str | None, str], ...]) -> list[list[float]]:
    """Each (arm, summary column)'s value on every seed all of them have a value for, in seed order."""
    by_seed = [{r.seed: v for r in study.arm_runs(arm) if r.completed and (v := r.value(column)) is not None}
               if arm else {} for arm, column in inputs]
    seeds = sorted(set.intersection(*(set(values) for values in by_seed)))
    return [[values[seed] for seed in seeds] for values in by_seed]


def _values_row(study: Study, check: claims.ValueCheck) -> claims.ClaimRow:
    """``check`` on the paired values; when an arm has none, the row says why; runs that did not complete (e.g.
    diverged) are named in the reason."""
    values = paired_values(study, check.inputs)
    if not all(values):
        alone = [study.values(arm, column) if arm else [] for arm, column in check.inputs]
        reasons = [why_unavailable(study, arm) if arm else "no such arm"
                   for (arm, _), v in zip(check.inputs, alone) if not v]
        return check.claim.unavailable("; ".join(reasons or ["no seed has values of every arm"]))
    row = check.check(*values)
    notes = [why_unavailable(study, arm) for arm in check.arms if not all(r.completed for r in study.arm_runs(arm))]
    return dataclasses.replace(row, reason="; ".join([row.reason, *notes])) if notes else row


def _steps_row(study: Study, check: claims.StepCheck) -> claims.ClaimRow:
    arm_a, arm_b = check.arms
    runs = [{r.seed: r for r in study.arm_runs(arm) if r.completed} for arm in check.arms]
    seeds = sorted(set(runs[0]) & set(runs[1]))
    if not seeds:
        return check.claim.unavailable(f"no seed with completed runs of both {arm_a} and {arm_b}")
    try:
        times = {seed: (read_step_times(runs[0][seed].path), read_step_times(runs[1][seed].path)) for seed in seeds}
    except MinimascopeError as exc:
        return check.claim.unavailable(str(exc))
    return check.check(times)


def _layers_row(study: Study, check: claims.LayerCheck, measure: str) -> claims.ClaimRow:
    found = [seed_diagonals(study.pair_comparisons(a, b), measure) for a, b in check.pairs]
    if not all(found):
        return check.claim.unavailable("; ".join(pair_missing(study, a, b)
                                                 for (a, b), per_seed in zip(check.pairs, found) if not per_seed))
    seeds = sorted(set.intersection(*(set(per_seed) for per_seed in found)))
    if not seeds:
        return check.claim.unavailable("no seed has a comparison of every pair")
    return check.check(*([per_seed[s] for s in seeds] for per_seed in found), measure=measure)


def _within_row(study: Study, check: claims.WithinCheck) -> claims.ClaimRow:
    networks = {}
    for arm_a, arm_b in study.pairs():
        if arm_a == arm_b:
            matrices = [c.matrices["cka"] for c in study.pair_comparisons(arm_a, arm_a) if "cka" in c.matrices]
            same = [m.values for m in matrices if m.layers_a == m.layers_b == matrices[0].layers_a]
            if same:
                networks[arm_a] = (matrices[0].layers_a, same)
    return check.check(networks)


def _by_seed(study: Study, kind: str, arms: tuple[str, ...]) -> dict[int, Any]:
    return {a.seed: a.result for a in study.completed_analyses(kind) if set(a.arms) == set(arms)}


def _distance(result: Any) -> float | None:
    """The whole network's ‖W − W₀‖ from its layers' (None without initial weights)."""
    distances = [layer.distance_from_init for layer in result.layers]
    if not distances or any(d is None or not math.isfinite(d) for d in distances):
        return None
    return float(np.sqrt(np.sum(np.square(distances))))


def _escape_row(study: Study, check: claims.EscapeCheck, measure: str) -> claims.ClaimRow:
    stay = seed_diagonals(study.pair_comparisons("adahessian-then-sgd", "adahessian"), measure)
    move = seed_diagonals(study.pair_comparisons("sgd-then-adahessian", "sgd"), measure)
    seeds = sorted(set(stay) & set(move))
    if not seeds:
        return check.claim.unavailable("; ".join(pair_missing(study, *pair) for pair, found in
                                                 ((("adahessian-then-sgd", "adahessian"), stay),
                                                  (("sgd-then-adahessian", "sgd"), move)) if not found)
                                       or "no seed has both comparisons")
    continued, own = _by_seed(study, "weights", ("adahessian-then-sgd",)), _by_seed(study, "weights", ("adahessian",))
    paths = _by_seed(study, "connectivity", ("adahessian-then-sgd", "adahessian"))
    evidence = []
    for seed in seeds:
        barrier = chord = None
        if seed in paths:
            path = paths[seed]
            curve = next((c for c in path.curves if c.variant == "recompute"), path.curves[0])
            barrier, chord = curve.barriers()["train_loss"], curve.chord_barriers(path.alphas)["train_loss"]
        evidence.append(claims.EscapeSeed(
            seed, float(np.mean(stay[seed])), float(np.mean(move[seed])),
            _distance(continued[seed]) if seed in continued else None,
            _distance(own[seed]) if seed in own else None, barrier, chord))
    epochs = {arm: study.arms[arm].get("epochs", "?") for arm in check.arms}
    return check.check(evidence, epochs, measure=measure)


def claim_row(study: Study, check: claims.Check) -> claims.ClaimRow:
    """``check`` on this study's numbers (every arm it names is in the study: see :func:`claim_rows`)."""
    check = dataclasses.replace(check, claim=claims.with_measure(check.claim, claim_measure(study) or "cka"))
    if isinstance(check, claims.ValueCheck):
        return _values_row(study, check)
    if isinstance(check, claims.StepCheck):
        return _steps_row(study, check)
    measure = claim_measure(study)
    if measure is None:
        return check.claim.unavailable("neither cka_debiased nor cka was among the compared measures")
    if isinstance(check, claims.LayerCheck):
        return _layers_row(study, check, measure)
    if isinstance(check, claims.EscapeCheck):
        return _escape_row(study, check, measure)
    return _within_row(study, check)


def normalisation_checks(study: Study) -> list[claims.ValueCheck]:
    """The normalisation claims for every scaled-input arm of the study."""
    return [check for optimizer, normal, scaled in normalisation_groups(study) for arm in scaled
            for check in claims.normalisation_checks(optimizer, normal, arm,
                                                     reading_text(arm, study.arms[arm]).split(":")[0])]


def absent_arms(study: Study, check: claims.Check) -> list[str]:
    return [arm for arm in check.arms if arm not in study.arms]


def claim_rows(study: Study) -> list[claims.ClaimRow]:
    """Every claim of the paper whose arms this study has, checked against its numbers (unavailable ones say
    why); a claim about an arm the study lacks has no row (:func:`absent_claims` says which)."""
    checks = [c for c in (*claims.CLAIMS, *normalisation_checks(study)) if not absent_arms(study, c)]
    rows = [claim_row(study, check) for check in checks]
    paper_arms = ", ".join(arm for arm in PAPER_ARMS if arm in study.arms)
    if not normalisation_groups(study) and paper_arms:
        rows += [claim.unavailable("no arm with scaled inputs in this study")
                 for claim in (claims.normalisation_loss_claim(paper_arms, "either reading"),
                               claims.normalisation_accuracy_claim(paper_arms, "either reading"))]
    return rows


def absent_claims(study: Study) -> list[str]:
    """A line for the claims not shown because the study lacks their arms, with those arms."""
    absent = [c for c in claims.CLAIMS if absent_arms(study, c)]
    if not absent:
        return []
    arms = sorted({arm for check in absent for arm in absent_arms(study, check)})
    return [f"{len(absent)} of the paper's {len(claims.CLAIMS)} claims are about arms this study does not have "
            f"({', '.join(arms)}): not shown"]


def build(ctx: Context) -> dict[str, Any]:
    measure = claim_measure(ctx.study)
    return {
        "data_used": f"summary.csv (accuracy and loss of each seed), each run's steps.csv (the time of every "
                     f"training step), the {measure or 'CKA'} comparison files, and the weights and connectivity "
                     f"analyses of adahessian-then-sgd; {data_sizes(ctx.study)}",
        "missing": absent_claims(ctx.study), "rows": claim_rows(ctx.study), "rules": claims.VERDICT_RULES,
        "budget": budget(ctx.study),
    }
