"""The seed paper's claims, each checked against our numbers by a pure function.

Every check takes plain numbers — per-arm lists with one value per seed, or per-seed arrays of
per-layer similarities — and returns a :class:`ClaimRow`: the claim, how it is measured here,
our numbers, a verdict and its reason.

How a verdict is reached is :data:`VERDICT_RULES` (the same rule for every claim; the page
prints it above the table).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from minimascope.stats import ConfidenceInterval, mean_confidence_interval

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive"
ONE_SEED = "one seed: inconclusive"
LEVEL = 0.95

# The seed paper's own numbers, where it gives them.
SEED_TEST_ACCURACY = {"sgd": 0.7829, "sgd-pretrained": 0.8309, "adahessian": 0.7844, "adahessian-pretrained": 0.8060}
SEED_EPOCH_TIME_S = {"sgd": (25.48, 0.22), "adahessian": (44.02, 0.25)}  # mean ± std
SEED_TIME_RATIO = 1.73
SEED_TRAIN_LOSS_RATIO = 2.5  # final train loss, scaled / normal inputs
SEED_NORMALISATION_ACCURACY = (0.7293, 0.6375)  # normal, scaled inputs
ACCURACY_TOLERANCE = 0.01  # "accuracy of AdaHessian ≈ SGD": within 1 percentage point
NEAR_ZERO = 0.1  # "near-zero similarity": CKA below this to every other layer of the network

VERDICT_RULES = (
    "Each group of per-seed values gets its mean and 95% confidence interval (Student t over seeds).",
    ('Two groups A and B give the difference interval D = [low_A − high_B, high_A − low_B]: every '
     'difference of means both intervals allow (D excludes 0 exactly when the two CIs do not overlap).'),
    ('"A is higher than B": supported when D lies above 0 (the difference exceeds the seed-to-seed '
     'spread), not supported when D lies below 0 (B is higher beyond the spread), otherwise inconclusive '
     '(the difference is within the spread).'),
    ('"A is about B" (within a tolerance t): supported when D lies inside [−t, t], not supported when D '
     'lies outside it entirely, otherwise inconclusive.'),
    ('A group with fewer than two seeds has no spread: the verdict is inconclusive with the reason "one '
     'seed: inconclusive" (its numbers are still shown). A group without values is inconclusive, and the '
     'reason says why (e.g. the arm was skipped).'),
)


@dataclass(frozen=True)
class ClaimRow:
    claim: str  # the seed's claim, in words
    measured: str  # how it is measured here
    ours: str  # our numbers
    verdict: str  # SUPPORTED, NOT_SUPPORTED or INCONCLUSIVE
    reason: str


def spread(values: Sequence[float]) -> ConfidenceInterval:
    """Mean and 95% CI over seeds (low = high = NaN with one seed; n = 0 and NaN without values)."""
    if not len(values):
        return ConfidenceInterval(math.nan, math.nan, math.nan, LEVEL, 0, math.nan)
    return mean_confidence_interval(values, level=LEVEL)


def difference_interval(a: ConfidenceInterval, b: ConfidenceInterval) -> tuple[float, float]:
    """Every difference mean_A − mean_B that both 95% CIs allow."""
    return a.low - b.high, a.high - b.low


def _few_seeds(groups: Mapping[str, ConfidenceInterval]) -> str | None:
    """The reason no verdict is possible, or None when every group has a spread."""
    empty = [name for name, g in groups.items() if g.n == 0]
    if empty:
        return f"no completed runs: {', '.join(empty)}"
    if any(g.n < 2 for g in groups.values()):
        return ONE_SEED
    return None


def _difference(a: Sequence[float], b: Sequence[float], name_a: str, name_b: str,
                fmt: str) -> tuple[float, float, str] | str:
    """The interval of A − B (:func:`difference_interval`) with its text "A − B lies in [low, high]",
    or, when a group has too few seeds, the reason no verdict is possible."""
    sa, sb = spread(a), spread(b)
    few = _few_seeds({name_a: sa, name_b: sb})
    if few:
        return few
    low, high = difference_interval(sa, sb)
    return low, high, f"{name_a} − {name_b} lies in [{fmt.format(low)}, {fmt.format(high)}]"


def judge_higher(a: Sequence[float], b: Sequence[float], name_a: str, name_b: str,
                 fmt: str = "{:.4g}") -> tuple[str, str]:
    """Verdict and reason for "A is higher than B" (module docstring)."""
    found = _difference(a, b, name_a, name_b, fmt)
    if isinstance(found, str):
        return INCONCLUSIVE, found
    low, high, lies = found
    if low > 0:
        return SUPPORTED, f"{lies}, above 0: beyond the seed-to-seed spread"
    if high < 0:
        return NOT_SUPPORTED, f"{lies}, below 0: {name_b} is higher beyond the spread"
    return INCONCLUSIVE, f"{lies}, which holds 0: within the seed-to-seed spread"


def judge_about_equal(a: Sequence[float], b: Sequence[float], tolerance: float, name_a: str, name_b: str,
                      fmt: str = "{:.4g}") -> tuple[str, str]:
    """Verdict and reason for "A ≈ B within ±tolerance" (module docstring)."""
    found = _difference(a, b, name_a, name_b, fmt)
    if isinstance(found, str):
        return INCONCLUSIVE, found
    low, high, lies = found
    band = f"±{fmt.format(tolerance)}"
    if -tolerance <= low and high <= tolerance:
        return SUPPORTED, f"{lies}, inside {band}"
    if low > tolerance or high < -tolerance:
        return NOT_SUPPORTED, f"{lies}, outside {band} beyond the seed-to-seed spread"
    return INCONCLUSIVE, f"{lies}, partly outside {band}: the spread is too wide to tell"


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

    def row(self, ours: str, verdict_reason: tuple[str, str]) -> ClaimRow:
        return ClaimRow(self.claim, self.measured, ours, *verdict_reason)


ACCURACY_MATCHES = Claim(
    "AdaHessian reaches the accuracy of SGD (seed: 78.44% vs 78.29%)",
    f"final test accuracy per seed, arms adahessian and sgd; ≈ means within ±{ACCURACY_TOLERANCE:.0%} "
    f"(one percentage point)")
PRETRAINED_RAISES_ACCURACY = Claim(
    "Starting from ImageNet weights raises accuracy (seed: SGD 83.09% vs 78.29%, AdaHessian 80.60% vs 78.44%)",
    "final test accuracy per seed, arm <opt>-pretrained against arm <opt>")
ADAHESSIAN_COSTS_MORE_TIME = Claim(
    f"AdaHessian takes more time per epoch than SGD (seed: {SEED_TIME_RATIO}×, 44.02 s vs 25.48 s)",
    "mean epoch time per seed (summary.csv), arms adahessian and sgd, same machine")
FIRST_LAYERS_MORE_SIMILAR = Claim(
    "The first layers are more similar across optimizers than the last ones",
    "CKA of layer i of sgd with layer i of adahessian (same seed); per seed the mean over the first third "
    "of the layers against the mean over the last third")
PRETRAINED_REDUCES_DIFFERENCE = Claim(
    "Pretrained init reduces the difference the optimizer makes",
    "per seed, mean over layers of CKA(layer i of sgd-pretrained, layer i of adahessian-pretrained) against "
    "the same for sgd and adahessian from random init")
ISOLATED_LAYERS = Claim(
    "Some layers have near-zero similarity to all other layers",
    f"within each network, a layer's largest CKA with any other layer, per seed; near zero: its 95% CI "
    f"lies below {NEAR_ZERO}")
SGD_FROM_ADAHESSIAN_STAYS = Claim(
    "SGD started from AdaHessian's minimum stays close to it, while AdaHessian started from SGD's moves away",
    "per seed, mean over layers of CKA(layer i of adahessian-then-sgd, layer i of adahessian) against "
    "CKA(layer i of sgd-then-adahessian, layer i of sgd); per layer too")


def pretrained_claim(optimizer: str) -> Claim:
    return Claim(f"{PRETRAINED_RAISES_ACCURACY.claim} — {optimizer}", PRETRAINED_RAISES_ACCURACY.measured)


def normalisation_loss_claim(optimizer: str, reading: str) -> Claim:
    return Claim(f"Normalised inputs end with a lower train loss than scaled ones "
                 f"(seed: {SEED_TRAIN_LOSS_RATIO}× smaller) — {optimizer}, {reading}",
                 f"final train loss per seed, arm {optimizer} against its scaled arm")


def normalisation_accuracy_claim(optimizer: str, reading: str) -> Claim:
    normal, scaled = SEED_NORMALISATION_ACCURACY
    return Claim(f"Normalised inputs reach a higher test accuracy than scaled ones "
                 f"(seed: {PERCENT.format(normal)} vs {PERCENT.format(scaled)}) — {optimizer}, {reading}",
                 f"final test accuracy per seed, arm {optimizer} against its scaled arm")


def accuracy_matches(sgd: Sequence[float], adahessian: Sequence[float],
                     tolerance: float = ACCURACY_TOLERANCE) -> ClaimRow:
    ours = f"AdaHessian {describe(adahessian, PERCENT)}; SGD {describe(sgd, PERCENT)}"
    return ACCURACY_MATCHES.row(ours, judge_about_equal(adahessian, sgd, tolerance, "AdaHessian", "SGD", PERCENT))


def pretrained_raises_accuracy(random_init: Sequence[float], pretrained: Sequence[float], optimizer: str) -> ClaimRow:
    ours = f"pretrained {describe(pretrained, PERCENT)}; random init {describe(random_init, PERCENT)}"
    return pretrained_claim(optimizer).row(
        ours, judge_higher(pretrained, random_init, "pretrained", "random init", PERCENT))


def adahessian_costs_more_time(sgd_epoch_s: Sequence[float], adahessian_epoch_s: Sequence[float]) -> ClaimRow:
    ours = (f"AdaHessian {describe(adahessian_epoch_s, '{:.2f} s')}; SGD {describe(sgd_epoch_s, '{:.2f} s')}; "
            f"ratio {_ratio(adahessian_epoch_s, sgd_epoch_s)}")
    return ADAHESSIAN_COSTS_MORE_TIME.row(
        ours, judge_higher(adahessian_epoch_s, sgd_epoch_s, "AdaHessian", "SGD", "{:.2f} s"))


def _depth_thirds(per_layer: np.ndarray) -> tuple[float, float]:
    k = max(1, len(per_layer) // 3)
    return float(np.mean(per_layer[:k])), float(np.mean(per_layer[-k:]))


def first_layers_more_similar(per_seed_diagonals: Sequence[Sequence[float]]) -> ClaimRow:
    """``per_seed_diagonals``: per seed, CKA of layer i of A with layer i of B, in depth order."""
    thirds = [_depth_thirds(np.asarray(d, dtype=float)) for d in per_seed_diagonals]
    first, last = [t[0] for t in thirds], [t[1] for t in thirds]
    k = max(1, len(per_seed_diagonals[0]) // 3) if per_seed_diagonals else 0
    ours = f"first {k} layers {describe(first, '{:.3f}')}; last {k} layers {describe(last, '{:.3f}')}"
    return FIRST_LAYERS_MORE_SIMILAR.row(ours, judge_higher(first, last, "first", "last", "{:.3f}"))


def pretrained_reduces_difference(random_diagonals: Sequence[Sequence[float]],
                                  pretrained_diagonals: Sequence[Sequence[float]]) -> ClaimRow:
    """Per seed, per-layer CKA of the two optimizers' networks from random init and from ImageNet
    weights; the claim holds when the pretrained pair is more alike."""
    random_mean = [float(np.mean(d)) for d in random_diagonals]
    pretrained_mean = [float(np.mean(d)) for d in pretrained_diagonals]
    ours = f"pretrained pair {describe(pretrained_mean, '{:.3f}')}; random-init pair {describe(random_mean, '{:.3f}')}"
    return PRETRAINED_REDUCES_DIFFERENCE.row(
        ours, judge_higher(pretrained_mean, random_mean, "pretrained", "random init", "{:.3f}"))


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
    if isolated:
        return ISOLATED_LAYERS.row("isolated: " + "; ".join(isolated),
                                   (SUPPORTED, f"{len(isolated)} layer(s) below {threshold} beyond the spread"))
    ours = ("mean below threshold: " + "; ".join(candidates)) if candidates else \
        f"no layer's mean largest CKA with another layer is below {threshold}"
    if one_seed:
        return ISOLATED_LAYERS.row(ours, (INCONCLUSIVE, ONE_SEED))
    if undecided:
        return ISOLATED_LAYERS.row(ours, (INCONCLUSIVE, f"{undecided} layer(s) have a CI that straddles {threshold}"))
    return ISOLATED_LAYERS.row(ours, (NOT_SUPPORTED, f"every layer's CI lies at or above {threshold}"))


def sgd_from_adahessian_stays_close(stay: Sequence[Sequence[float]], move: Sequence[Sequence[float]],
                                    layers: Sequence[str]) -> ClaimRow:
    """``stay``: per seed, per-layer CKA(adahessian-then-sgd, adahessian); ``move``: per seed,
    per-layer CKA(sgd-then-adahessian, sgd). The verdict uses the mean over layers; the per-layer
    counts say where along the depth it holds."""
    stay_mean = [float(np.mean(d)) for d in stay]
    move_mean = [float(np.mean(d)) for d in move]
    ours = (f"adahessian-then-sgd vs adahessian {describe(stay_mean, '{:.3f}')}; "
            f"sgd-then-adahessian vs sgd {describe(move_mean, '{:.3f}')}")
    if len(stay) >= 2 and len(move) >= 2:
        verdicts = [judge_higher(np.asarray(stay)[:, j], np.asarray(move)[:, j], "a", "b")[0]
                    for j in range(len(layers))]
        ours += (f"; per layer: higher beyond the spread in {verdicts.count(SUPPORTED)} of {len(layers)}, "
                 f"lower in {verdicts.count(NOT_SUPPORTED)}")
    return SGD_FROM_ADAHESSIAN_STAYS.row(
        ours, judge_higher(stay_mean, move_mean, "stay", "move", "{:.3f}"))


def normalisation_lowers_train_loss(normal: Sequence[float], scaled: Sequence[float],
                                    optimizer: str, reading: str) -> ClaimRow:
    ours = (f"normal {describe(normal, '{:.4g}')}; scaled {describe(scaled, '{:.4g}')}; "
            f"scaled / normal {_ratio(scaled, normal)}")
    return normalisation_loss_claim(optimizer, reading).row(
        ours, judge_higher(scaled, normal, "scaled", "normal"))


def normalisation_raises_accuracy(normal: Sequence[float], scaled: Sequence[float],
                                  optimizer: str, reading: str) -> ClaimRow:
    ours = f"normal {describe(normal, PERCENT)}; scaled {describe(scaled, PERCENT)}"
    return normalisation_accuracy_claim(optimizer, reading).row(
        ours, judge_higher(normal, scaled, "normal", "scaled", PERCENT))
