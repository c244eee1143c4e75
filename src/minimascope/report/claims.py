"""The paper's claims, each checked against our numbers by a pure function.

Every check takes plain numbers — per-arm lists with one value per seed (paired: index i of every list is
the same seed), per-seed arrays of per-layer similarities, or each seed's step times — and returns a
:class:`ClaimRow`: the claim, how it is measured here, our numbers, and what the rule of
:mod:`minimascope.stats` (or :func:`minimascope.minima.step_cost.cost_verdict`) decided: verdict, direction,
per-seed differences, p-values with their smallest attainable p, effect size, the variability used and what
would decide an inconclusive row. No statistic is computed here; :data:`VERDICT_RULES` says the rules in words.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from minimascope.minima.step_cost import cost_verdict, step_time_ratio
from minimascope.report.text import number, p_text, spread, step_text
from minimascope.stats import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    PairedComparison,
    Verdict,
    equal_verdict,
    higher_verdict,
    paired_comparison,
)

ONE_SEED = "one seed: inconclusive"

# The paper's own numbers, where it gives them.
PAPER_TEST_ACCURACY = {"sgd": 0.7829, "sgd-pretrained": 0.8309, "adahessian": 0.7844, "adahessian-pretrained": 0.8060}
PAPER_EPOCH_TIME_S = {"sgd": (25.48, 0.22), "adahessian": (44.02, 0.25)}  # mean ± std
PAPER_TIME_RATIO = 1.73
PAPER_TRAIN_LOSS_RATIO = 2.5  # final train loss, scaled / normal inputs
PAPER_NORMALISATION_ACCURACY = (0.7293, 0.6375)  # normal, scaled inputs
ACCURACY_TOLERANCE = 0.01  # "accuracy of AdaHessian ≈ SGD": within 1 percentage point
NEAR_ZERO = 0.1  # "near-zero similarity": CKA below this to every other layer of the network

VERDICT_RULES = (
    "Arms of one seed share their initial weights and data, so they are compared seed by seed: per-seed "
    "differences A − B, how many seeds point each way, and their mean with a paired Student t interval "
    "(df = n − 1).",
    '"A is higher than B": supported when the 95% paired interval lies above 0, not supported when it lies '
    "below 0 (B is higher), otherwise inconclusive, with how many seeds would decide at this spread.",
    '"A is about B" within a tolerance t (TOST): supported when the 90% paired interval lies inside (−t, t), not '
    "supported when it lies wholly outside [−t, t], otherwise inconclusive.",
    '"AdaHessian costs more per step": per seed, the ratio of the two runs\' median step times (evaluation '
    "excluded) with a 95% distribution-free interval from the steps of each run; supported when every seed's "
    "interval lies above 1. Its variability is that of the steps within each run, not across seeds.",
    "Every p-value is printed with the smallest p its test can give at this number of seeds: the exact sign-flip "
    "test over 2^n sign assignments cannot go below 2/2^n (0.5 at 2 seeds, 0.25 at 3), the t test can reach 0.",
    "A claim about an arm the study does not have is not shown (the section lists those arms); one whose arm has "
    "no finished runs is inconclusive, and says why.",
)


@dataclass(frozen=True)
class ClaimRow:
    claim: str  # the paper's claim, in words
    measured: str  # how it is measured here
    ours: str  # our numbers
    verdict: str  # SUPPORTED, NOT_SUPPORTED or INCONCLUSIVE
    reason: str  # the rule's outcome, or why there is no verdict
    direction: str = ""  # what the data point to, e.g. "AdaHessian higher than SGD"
    per_seed: str = ""  # the per-seed differences and how many seeds point each way
    p_values: str = ""  # every test's p with its smallest attainable p
    effect: str = ""  # effect size
    variability: str = ""  # "across seeds", "over steps within each run", ...
    decide: str = ""  # what would decide an inconclusive row


def direction_counts(paired: PairedComparison, label_a: str, label_b: str) -> str:
    """"higher in 3 of 3 seeds" with the differences themselves."""
    each = ", ".join(f"{d:+.3g}" for d in paired.differences)
    ties = paired.n - paired.higher - paired.lower
    return (f"{label_a} − {label_b} per seed: {each}; {label_a} higher in {paired.higher} of {paired.n} seeds"
            + (f", equal in {ties}" if ties else ""))


def verdict_row(claim: Claim, ours: str, verdict: Verdict, paired: PairedComparison | None,
                labels: tuple[str, str] = ("A", "B")) -> ClaimRow:
    """A claim row from a rule of :mod:`minimascope.stats` (or :func:`minimascope.minima.step_cost.cost_verdict`)."""
    tests = [p_text(verdict.p_value, verdict.smallest_attainable_p, "paired t p")]
    if verdict.sign_flip is not None:
        tests.append(p_text(verdict.sign_flip.p_value, verdict.sign_flip.smallest_attainable_p, "sign-flip p"))
    effect = "" if paired is None else f"Cohen's d_z {number(paired.effect_size)}; mean difference " \
        f"{paired.interval.mean:+.3g}" + ("" if paired.n < 2 else
                                          f" [95%: {paired.interval.low:+.3g}, {paired.interval.high:+.3g}]")
    return ClaimRow(claim.claim, claim.measured, ours, verdict.verdict, verdict.rule, verdict.direction,
                    "" if paired is None else direction_counts(paired, *labels), "; ".join(t for t in tests if t),
                    effect, verdict.variability, verdict.decide)


def higher_row(claim: Claim, ours: str, a: Sequence[float], b: Sequence[float], label_a: str, label_b: str) -> ClaimRow:
    """"a higher than b", paired by seed (:func:`minimascope.stats.higher_verdict`)."""
    verdict = higher_verdict(a, b, label_a=label_a, label_b=label_b)
    return verdict_row(claim, ours, verdict, paired_comparison(a, b), (label_a, label_b))


def combined(verdicts: Sequence[Verdict]) -> str:
    """Several rules one claim needs together: supported when all are, not supported when any is not."""
    found = [v.verdict for v in verdicts]
    if NOT_SUPPORTED in found:
        return NOT_SUPPORTED
    return SUPPORTED if all(v == SUPPORTED for v in found) else INCONCLUSIVE


# ---------------------------------------------------------------- formatting our numbers

def describe(values: Sequence[float], fmt: str = "{:.4g}") -> str:
    """"mean [low, high] (n seeds: v1, v2)"; one seed: its value."""
    s = spread(values)
    if s.n == 0:
        return "no value"
    each = ", ".join(fmt.format(v) for v in values)
    if s.n == 1:
        return f"{fmt.format(s.mean)} (one seed)"
    return f"{fmt.format(s.mean)} [{fmt.format(s.low)}, {fmt.format(s.high)}] ({s.n} seeds: {each})"


PERCENT = "{:.2%}"


def _ratio(a: Sequence[float], b: Sequence[float]) -> str:
    if not a or not b or float(np.mean(b)) == 0.0:
        return "n/a"
    return f"{float(np.mean(a)) / float(np.mean(b)):.2f}×"


# ---------------------------------------------------------------- the claims

@dataclass(frozen=True)
class Claim:
    claim: str
    measured: str

    def unavailable(self, reason: str) -> ClaimRow:
        """The row for a claim whose data this study lacks (an arm skipped, a comparison missing)."""
        return ClaimRow(self.claim, self.measured, "—", INCONCLUSIVE, reason)


ACCURACY_MATCHES = Claim(
    "AdaHessian reaches the accuracy of SGD (paper: 78.44% vs 78.29%)",
    f"final test accuracy per seed, arms adahessian and sgd of the same seed; ≈ means within "
    f"±{ACCURACY_TOLERANCE:.0%} (one percentage point)")
PRETRAINED_RAISES_ACCURACY = Claim(
    "Starting from ImageNet weights raises accuracy (paper: SGD 83.09% vs 78.29%, AdaHessian 80.60% vs 78.44%)",
    "final test accuracy per seed, arm <opt>-pretrained against arm <opt> of the same seed")
ADAHESSIAN_COSTS_MORE = Claim(
    f"AdaHessian costs more per step than SGD (paper, per iteration: {PAPER_TIME_RATIO}× per epoch, "
    f"44.02 s vs 25.48 s)",
    "the paper's \"per iteration\" read as one training step: per seed, the median time of a step of adahessian "
    "against one of sgd (steps.csv: every training step, evaluation excluded), same machine")
FIRST_LAYERS_MORE_SIMILAR = Claim(
    "The first layers are more similar across optimizers than the last ones",
    "{measure} of layer i of sgd with layer i of adahessian (same seed); per seed the mean over the first third "
    "of the layers against the mean over the last third")
PRETRAINED_REDUCES_DIFFERENCE = Claim(
    "Pretrained init reduces the difference the optimizer makes",
    "per seed, mean over layers of {measure}(layer i of sgd-pretrained, layer i of adahessian-pretrained) "
    "against the same for sgd and adahessian from random init")
ISOLATED_LAYERS = Claim(
    "Some layers have near-zero similarity to all other layers",
    f"within each network, a layer's largest CKA with any other layer, per seed; near zero: its 95% CI "
    f"lies below {NEAR_ZERO}")
SGD_CANNOT_ESCAPE = Claim(
    "SGD started from AdaHessian's minimum cannot escape it, while AdaHessian started from SGD's moves away",
    "per seed: {measure} of adahessian-then-sgd with adahessian against sgd-then-adahessian with sgd (mean over "
    "layers), the distance adahessian-then-sgd moved from its start (AdaHessian's final weights) against "
    "AdaHessian's own distance from its init, and the train-loss barrier between the two networks")
BIASED_CKA = "cka (the biased estimator: wide layers score high even when unrelated; cka_debiased was not measured)"


def with_measure(claim: Claim, measure: str) -> Claim:
    return Claim(claim.claim, claim.measured.format(measure=measure if measure != "cka" else BIASED_CKA))


def pretrained_claim(optimizer: str) -> Claim:
    return Claim(f"{PRETRAINED_RAISES_ACCURACY.claim} — {optimizer}", PRETRAINED_RAISES_ACCURACY.measured)


def normalisation_loss_claim(optimizer: str, reading: str) -> Claim:
    return Claim(f"Normalised inputs end with a lower train loss than scaled ones "
                 f"(paper: {PAPER_TRAIN_LOSS_RATIO}× smaller) — {optimizer}, {reading}",
                 f"final train loss per seed, arm {optimizer} against its scaled arm of the same seed")


def normalisation_accuracy_claim(optimizer: str, reading: str) -> Claim:
    normal, scaled = PAPER_NORMALISATION_ACCURACY
    return Claim(f"Normalised inputs reach a higher test accuracy than scaled ones "
                 f"(paper: {PERCENT.format(normal)} vs {PERCENT.format(scaled)}) — {optimizer}, {reading}",
                 f"final test accuracy per seed, arm {optimizer} against its scaled arm of the same seed")


def accuracy_matches(sgd: Sequence[float], adahessian: Sequence[float],
                     tolerance: float = ACCURACY_TOLERANCE) -> ClaimRow:
    """``sgd[i]`` and ``adahessian[i]`` from the same seed."""
    ours = f"AdaHessian {describe(adahessian, PERCENT)}; SGD {describe(sgd, PERCENT)}"
    verdict = equal_verdict(adahessian, sgd, tolerance, label_a="AdaHessian", label_b="SGD")
    return verdict_row(ACCURACY_MATCHES, ours, verdict, paired_comparison(adahessian, sgd), ("AdaHessian", "SGD"))


def pretrained_raises_accuracy(random_init: Sequence[float], pretrained: Sequence[float], optimizer: str) -> ClaimRow:
    ours = f"pretrained {describe(pretrained, PERCENT)}; random init {describe(random_init, PERCENT)}"
    return higher_row(pretrained_claim(optimizer), ours, pretrained, random_init, "pretrained", "random init")


def adahessian_costs_more(step_times: Mapping[int, tuple[Sequence[float], Sequence[float]]]) -> ClaimRow:
    """``step_times``: seed → (sgd's step times, adahessian's), each run's steps.csv."""
    ratios = [step_time_ratio(sgd, adahessian, seed=seed) for seed, (sgd, adahessian) in sorted(step_times.items())]
    ours = "; ".join(f"seed {r.seed}: {r.ratio:.2f}× [{r.low:.2f}, {r.high:.2f}] (median step {step_text(r.median_b)} "
                     f"vs {step_text(r.median_a)}, {r.n_b} and {r.n_a} steps)" for r in ratios)
    verdict = cost_verdict(ratios, label_a="SGD", label_b="AdaHessian")
    per_seed = f"ratio above 1 in {sum(r.ratio > 1 for r in ratios)} of {len(ratios)} seeds"
    row = verdict_row(ADAHESSIAN_COSTS_MORE, ours, verdict, None)
    return dataclasses.replace(row, per_seed=per_seed, effect=f"mean ratio {np.mean([r.ratio for r in ratios]):.2f}×")


def _depth_thirds(per_layer: np.ndarray) -> tuple[float, float]:
    k = max(1, len(per_layer) // 3)
    return float(np.mean(per_layer[:k])), float(np.mean(per_layer[-k:]))


def first_layers_more_similar(per_seed_diagonals: Sequence[Sequence[float]], measure: str = "cka") -> ClaimRow:
    """``per_seed_diagonals``: per seed, ``measure`` of layer i of A with layer i of B, in depth order."""
    thirds = [_depth_thirds(np.asarray(d, dtype=float)) for d in per_seed_diagonals]
    first, last = [t[0] for t in thirds], [t[1] for t in thirds]
    k = max(1, len(per_seed_diagonals[0]) // 3) if per_seed_diagonals else 0
    ours = f"first {k} layers {describe(first, '{:.3f}')}; last {k} layers {describe(last, '{:.3f}')}"
    return higher_row(with_measure(FIRST_LAYERS_MORE_SIMILAR, measure), ours, first, last, "first", "last")


def pretrained_reduces_difference(random_diagonals: Sequence[Sequence[float]],
                                  pretrained_diagonals: Sequence[Sequence[float]], measure: str = "cka") -> ClaimRow:
    """Per seed (the same seeds in the same order), per-layer similarity of the two optimizers' networks from
    random init and from ImageNet weights; the claim holds when the pretrained pair is more alike."""
    random_mean = [float(np.mean(d)) for d in random_diagonals]
    pretrained_mean = [float(np.mean(d)) for d in pretrained_diagonals]
    ours = f"pretrained pair {describe(pretrained_mean, '{:.3f}')}; random-init pair {describe(random_mean, '{:.3f}')}"
    return higher_row(with_measure(PRETRAINED_REDUCES_DIFFERENCE, measure), ours, pretrained_mean, random_mean,
                      "pretrained", "random init")


@dataclass(frozen=True)
class EscapeSeed:
    """One seed's evidence for "SGD cannot escape AdaHessian's minimum"."""

    seed: int
    stay: float  # mean over layers of similarity(adahessian-then-sgd, adahessian)
    move: float  # the same for sgd-then-adahessian against sgd
    moved: float | None = None  # ‖W − W_start‖ of adahessian-then-sgd, its start being AdaHessian's final weights
    own: float | None = None  # ‖W − W₀‖ of adahessian: how far AdaHessian itself moved from its init
    barrier: float | None = None  # train-loss barrier between adahessian-then-sgd and adahessian
    chord_barrier: float | None = None


def _escape_text(e: EscapeSeed) -> str:
    relative = f"moved {e.moved / e.own:.3g}× AdaHessian's own displacement" if e.moved is not None and e.own else \
        "no distance (no weights analyses of both arms)"
    barrier = "no barrier (no connectivity of the two)" if e.barrier is None else \
        f"train-loss barrier {e.barrier:.3g} (chord {number(e.chord_barrier)})"
    return f"seed {e.seed}: similarity {e.stay:.3f} vs {e.move:.3f}; {relative}; {barrier}"


def sgd_cannot_escape(evidence: Sequence[EscapeSeed], epochs: Mapping[str, object], measure: str = "cka") -> ClaimRow:
    """Two paired rules over seeds, both needed: the continued network stays more alike its start than
    AdaHessian continued from SGD's does (similarity), and it moved less than AdaHessian moved from its own init
    (distance, where the weights analyses exist). Barriers are shown, not judged (no threshold is the paper's)."""
    claim = with_measure(SGD_CANNOT_ESCAPE, measure)
    stay, move = [e.stay for e in evidence], [e.move for e in evidence]
    rules = [higher_verdict(stay, move, label_a="stay", label_b="move")]
    row = verdict_row(claim, "", rules[0], paired_comparison(stay, move), ("stay", "move"))
    with_distance = [e for e in evidence if e.moved is not None and e.own is not None]
    if len(with_distance) == len(evidence):
        own, moved = [e.own for e in evidence], [e.moved for e in evidence]
        rules.append(higher_verdict(own, moved, label_a="AdaHessian's own displacement",
                                    label_b="adahessian-then-sgd's"))
        distance = verdict_row(claim, "", rules[1], paired_comparison(own, moved), ("own", "continued"))
        row = dataclasses.replace(row, per_seed=f"{row.per_seed}; {distance.per_seed}",
                                  p_values=f"similarity: {row.p_values}; distance: {distance.p_values}",
                                  effect=f"similarity: {row.effect}; distance: {distance.effect}",
                                  reason=f"{row.reason}; and {distance.reason}")
    decide = "; ".join(v.decide for v in rules if v.decide)
    ours = (f"epochs: adahessian {epochs.get('adahessian', '?')}, then sgd {epochs.get('adahessian-then-sgd', '?')}; "
            f"sgd {epochs.get('sgd', '?')}, then adahessian {epochs.get('sgd-then-adahessian', '?')}. "
            + " | ".join(_escape_text(e) for e in evidence))
    return dataclasses.replace(row, ours=ours, verdict=combined(rules), decide=decide,
                               direction="; ".join(v.direction for v in rules if v.direction))


def largest_other_similarity(matrix: np.ndarray) -> np.ndarray:
    """Per layer of a within-network similarity matrix, its largest value with any other layer."""
    values = np.array(matrix, dtype=float)
    np.fill_diagonal(values, -np.inf)
    return values.max(axis=1)


def isolated_layers(networks: Mapping[str, tuple[Sequence[str], Sequence[np.ndarray]]],
                    threshold: float = NEAR_ZERO) -> ClaimRow:
    """``networks``: name → (layer names, one within-network CKA matrix per seed).

    A layer is isolated when the 95% CI over seeds of its largest CKA with any other layer lies
    below ``threshold``, and clearly not when the CI lies at or above it. Supported: some layer of
    some network is isolated; not supported: every layer of every network is clearly not."""
    isolated, undecided, candidates, one_seed = [], 0, [], False
    for name, (layers, matrices) in networks.items():
        if not len(matrices):
            continue
        largest = np.array([largest_other_similarity(m) for m in matrices])  # seeds × layers
        one_seed = one_seed or len(matrices) < 2
        for j, layer in enumerate(layers):
            s = spread(largest[:, j])
            label = f"{name}: {layer} ({s.mean:.3f})"
            if s.mean < threshold:
                candidates.append(label)
            if s.n >= 2 and s.high < threshold:
                isolated.append(label)
            elif s.n < 2 or s.low < threshold:
                undecided += 1
    if not networks or all(not len(m) for _, m in networks.values()):
        return ISOLATED_LAYERS.unavailable("no within-network comparisons")
    row = partial(ClaimRow, ISOLATED_LAYERS.claim, ISOLATED_LAYERS.measured, variability="across seeds")
    if isolated:
        return row("isolated: " + "; ".join(isolated), SUPPORTED,
                   f"{len(isolated)} layer(s) below {threshold} beyond the spread", direction="some layers isolated")
    ours = ("mean below threshold: " + "; ".join(candidates)) if candidates else \
        f"no layer's mean largest CKA with another layer is below {threshold}"
    if one_seed:
        return row(ours, INCONCLUSIVE, ONE_SEED, decide="needs ≥ 2 seeds: one seed says nothing about the spread")
    if undecided:
        return row(ours, INCONCLUSIVE, f"{undecided} layer(s) have a CI that straddles {threshold}",
                   decide="more seeds narrow each layer's interval")
    return row(ours, NOT_SUPPORTED, f"every layer's CI lies at or above {threshold}")


def normalisation_lowers_train_loss(normal: Sequence[float], scaled: Sequence[float],
                                    optimizer: str, reading: str) -> ClaimRow:
    ours = (f"normal {describe(normal, '{:.4g}')}; scaled {describe(scaled, '{:.4g}')}; "
            f"scaled / normal {_ratio(scaled, normal)}")
    return higher_row(normalisation_loss_claim(optimizer, reading), ours, scaled, normal, "scaled", "normal")


def normalisation_raises_accuracy(normal: Sequence[float], scaled: Sequence[float],
                                  optimizer: str, reading: str) -> ClaimRow:
    ours = f"normal {describe(normal, PERCENT)}; scaled {describe(scaled, PERCENT)}"
    return higher_row(normalisation_accuracy_claim(optimizer, reading), ours, normal, scaled, "normal", "scaled")


# ---------------------------------------------------------------- which claim needs which arms

@dataclass(frozen=True)
class ValueCheck:
    """A claim checked on per-seed values paired by seed: ``check(*values)``, one list per (arm, summary.csv
    column), each in the order of the seeds every arm has."""

    claim: Claim
    inputs: tuple[tuple[str | None, str], ...]  # None: the study has no arm for this role
    check: Callable[..., ClaimRow]

    @property
    def arms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(arm for arm, _ in self.inputs if arm))


@dataclass(frozen=True)
class LayerCheck:
    """A claim checked on per-seed similarity of layer i against layer i: ``check(*per_pair, measure=)``, one
    list of per-seed arrays per pair of arms, over the seeds every pair has."""

    claim: Claim
    pairs: tuple[tuple[str, str], ...]
    check: Callable[..., ClaimRow]

    @property
    def arms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(arm for pair in self.pairs for arm in pair))


@dataclass(frozen=True)
class WithinCheck:
    """A claim checked on every within-network CKA matrix the study has: ``check(networks)``."""

    claim: Claim
    check: Callable[..., ClaimRow]
    arms: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepCheck:
    """A claim checked on each seed's step times of two arms (steps.csv): ``check({seed: (a's, b's)})``."""

    claim: Claim
    arms: tuple[str, str]
    check: Callable[..., ClaimRow]


@dataclass(frozen=True)
class EscapeCheck:
    """"SGD cannot escape": per seed similarity, distances and barrier (:class:`EscapeSeed`)."""

    claim: Claim
    arms: tuple[str, ...] = ("adahessian-then-sgd", "adahessian", "sgd-then-adahessian", "sgd")
    check: Callable[..., ClaimRow] = sgd_cannot_escape


Check = ValueCheck | LayerCheck | WithinCheck | StepCheck | EscapeCheck

# The paper's claims in page order, each with the arms (and pairs of arms) it is about.
CLAIMS: tuple[Check, ...] = (
    ValueCheck(ACCURACY_MATCHES, (("sgd", "test_accuracy"), ("adahessian", "test_accuracy")), accuracy_matches),
    *(ValueCheck(pretrained_claim(optimizer), ((optimizer, "test_accuracy"), (f"{optimizer}-pretrained",
                                                                           "test_accuracy")),
                 partial(pretrained_raises_accuracy, optimizer=optimizer)) for optimizer in ("sgd", "adahessian")),
    StepCheck(ADAHESSIAN_COSTS_MORE, ("sgd", "adahessian"), adahessian_costs_more),
    LayerCheck(FIRST_LAYERS_MORE_SIMILAR, (("sgd", "adahessian"),), first_layers_more_similar),
    LayerCheck(PRETRAINED_REDUCES_DIFFERENCE, (("sgd", "adahessian"), ("sgd-pretrained", "adahessian-pretrained")),
               pretrained_reduces_difference),
    WithinCheck(ISOLATED_LAYERS, isolated_layers),
    EscapeCheck(SGD_CANNOT_ESCAPE),
)


def normalisation_checks(optimizer: str, normal: str | None, scaled: str, reading: str) -> tuple[ValueCheck, ...]:
    """The two normalisation claims for one scaled-input arm against its optimizer's normal-input arm
    (the arms come from the study: which arms scale their inputs is in their configs)."""
    return (ValueCheck(normalisation_loss_claim(optimizer, reading), ((normal, "train_loss"), (scaled, "train_loss")),
                       partial(normalisation_lowers_train_loss, optimizer=optimizer, reading=reading)),
            ValueCheck(normalisation_accuracy_claim(optimizer, reading),
                       ((normal, "test_accuracy"), (scaled, "test_accuracy")),
                       partial(normalisation_raises_accuracy, optimizer=optimizer, reading=reading)))
