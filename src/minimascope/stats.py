"""Statistics over seeds: confidence intervals of a mean, permutation tests of two groups, paired
comparisons of two arms by seed, multiplicity adjustments and McNemar's exact test.

* :func:`mean_confidence_interval` — the Student t interval mean ± t_{(1+level)/2, n−1} · s/√n.
  The t quantile comes from the exact finite series of the t distribution for integer degrees
  of freedom (Abramowitz & Stegun 26.7.3–4), inverted by bisection, so no scipy is needed.
* :func:`permutation_test` — the difference of means of two groups against its distribution
  over every reassignment of the pooled values to groups of the same sizes: all of them when
  there are at most ``exact_limit`` (p = share at least as extreme, the observed one included),
  else ``n_permutations`` random ones with p = (1 + count) / (1 + n_permutations), which is never 0
  and keeps the test valid (Phipson & Smyth 2010).
* :func:`smallest_attainable_p` of a permutation test: exact, 1/C(n_a + n_b, n_a) one-sided and, two-sided,
  2/C(n_a + n_b, n_a) when the groups have equal sizes (an arrangement and its swap are equally extreme)
  else 1/C(n_a + n_b, n_a); Monte-Carlo, 1/(1 + n_permutations).
* :func:`paired_comparison` — arms of one seed share init and data, so they are compared by per-seed
  differences a − b: direction counts, the mean with its paired Student t interval (df = n − 1), Cohen's
  d_z = mean / sd and :func:`sign_flip_test`, exact over all 2^n sign assignments (smallest attainable p:
  1/2^n one-sided, 2/2^n two-sided).
* :func:`holm` and :func:`benjamini_hochberg` — adjusted p-values of a family of tests.
* :func:`mcnemar_exact` — two networks' accuracy on the same images: two-sided exact binomial test of the
  discordant counts b (only A wrong) and c (only B wrong), p = min(1, 2 P(X ≤ min(b, c))), X ~ Bin(b + c, ½).
* :func:`higher_verdict` and :func:`equal_verdict` — the verdict rules of a claim over seeds (supported /
  not supported / inconclusive), each saying what would decide an inconclusive result; the cost-per-step
  rule is :func:`minimascope.optimizer_effect.cost_verdict`.

numpy only: no file, no network, no torch.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from minimascope.errors import MinimascopeError

ALTERNATIVES = ("less", "greater", "two-sided")
EXACT_LIMIT = 20_000
N_PERMUTATIONS = 10_000
_CHUNK = 1 << 22  # values per block of random permutations: 32 MiB of float64


@dataclass(frozen=True)
class ConfidenceInterval:
    mean: float
    low: float  # NaN when n = 1: one value says nothing about the spread
    high: float
    level: float
    n: int
    std: float  # sample standard deviation (ddof = 1); NaN when n = 1


@dataclass(frozen=True)
class PermutationTest:
    statistic: float  # mean(group_a) − mean(group_b)
    p_value: float
    alternative: str  # "less": mean(a) < mean(b); "greater"; "two-sided"
    method: str  # "exact" or "monte-carlo"
    n_arrangements: int  # arrangements enumerated (exact) or random permutations drawn (monte-carlo)
    n_a: int
    n_b: int
    smallest_attainable_p: float  # the least p this test can give at these group sizes (see module doc)


# ----------------------------------------------------------------------------- confidence intervals


def _finite_values(values: Iterable[float], name: str) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1:
        raise MinimascopeError(f"{name} must be a flat sequence of numbers")
    if array.size == 0:
        raise MinimascopeError(f"{name} holds no values")
    if not np.isfinite(array).all():
        raise MinimascopeError(f"{name} holds NaN or infinite values")
    return array


def t_central_mass(t: float, dof: int) -> float:
    """P(|T| ≤ t) for Student's t with ``dof`` degrees of freedom (A&S 26.7.3–4, exact for integer
    dof): a sum of dof/2 terms, so its rounding error grows with dof (1e-13 at 1000, 1e-12 at 10⁵)."""
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(dof))
    sine, cosine = math.sin(theta), math.cos(theta)
    c2 = cosine * cosine
    if dof % 2 == 0:  # sin θ (1 + ½ c² + (1·3)/(2·4) c⁴ + … up to c^{dof−2})
        j = np.arange(1, dof // 2)
        return sine * (1.0 + float(np.cumprod((2 * j - 1) / (2 * j) * c2).sum()))
    if dof == 1:
        return 2 * theta / math.pi
    # (2/π)(θ + sin θ cos θ (1 + (2/3) c² + (2·4)/(3·5) c⁴ + … up to c^{dof−3}))
    j = np.arange(1, (dof - 1) // 2)
    return 2 / math.pi * (theta + sine * cosine * (1.0 + float(np.cumprod(2 * j / (2 * j + 1) * c2).sum())))


@functools.lru_cache(maxsize=4096)  # verdict rules and seeds_needed ask for the same few quantiles again and again
def t_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile of Student's t with ``dof`` ≥ 1 degrees of freedom, 0 < p < 1."""
    if not 0 < probability < 1:
        raise MinimascopeError(f"a quantile needs a probability strictly between 0 and 1, not {probability}")
    if dof < 1:
        raise MinimascopeError(f"Student's t needs at least 1 degree of freedom, not {dof}")
    if probability == 0.5:
        return 0.0
    central = abs(2 * probability - 1)  # the quantile t has P(|T| ≤ t) = central
    low, high = 0.0, 1.0
    while t_central_mass(high, dof) < central:
        low, high = high, 2 * high
    for _ in range(200):  # bisection: the mass is increasing in t
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if t_central_mass(middle, dof) < central else (low, middle)
    t = (low + high) / 2
    return t if probability > 0.5 else -t


def mean_confidence_interval(values: Iterable[float], level: float = 0.95) -> ConfidenceInterval:
    """The mean of ``values`` with its Student t interval at ``level``. With one value the
    interval (and the standard deviation) are undefined and returned as NaN; no value is an error."""
    if not 0 < level < 1:
        raise MinimascopeError(f"a confidence level is strictly between 0 and 1, not {level}")
    array = _finite_values(values, "values")
    mean = float(array.mean())
    if array.size == 1:
        return ConfidenceInterval(mean, math.nan, math.nan, level, 1, math.nan)
    std = float(array.std(ddof=1))
    half_width = t_quantile((1 + level) / 2, array.size - 1) * std / math.sqrt(array.size)
    return ConfidenceInterval(mean, mean - half_width, mean + half_width, level, int(array.size), std)


# ----------------------------------------------------------------------------- permutation test


def _count_extreme(sums: np.ndarray, observed: float, centre: float, alternative: str, tolerance: float) -> int:
    """How many group-a sums are at least as extreme as the observed one. The difference of means
    is (1/n_a + 1/n_b)(sum_a − centre), increasing in sum_a, so sums order arrangements as it does."""
    if alternative == "less":
        return int((sums <= observed + tolerance).sum())
    if alternative == "greater":
        return int((sums >= observed - tolerance).sum())
    return int((np.abs(sums - centre) >= abs(observed - centre) - tolerance).sum())


def permutation_test(group_a: Sequence[float], group_b: Sequence[float], *, alternative: str = "less",
                     n_permutations: int = N_PERMUTATIONS, seed: int = 0,
                     exact_limit: int = EXACT_LIMIT) -> PermutationTest:
    """Is mean(a) less than (``"less"``), greater than (``"greater"``) or different from
    (``"two-sided"``: |difference| at least the observed one) mean(b)? Exact over every
    reassignment when there are at most ``exact_limit``, else Monte-Carlo with ``n_permutations``
    random ones drawn with ``seed``. Arrangements whose group-a sums differ from the observed one by
    less than 1e-10 · Σ|values| count as ties, so rounding never hides an equal arrangement."""
    if alternative not in ALTERNATIVES:
        raise MinimascopeError(f"unknown alternative {alternative!r}; choose one of {', '.join(ALTERNATIVES)}")
    if n_permutations < 1:
        raise MinimascopeError(f"n_permutations must be at least 1, not {n_permutations}")
    a, b = _finite_values(group_a, "group_a"), _finite_values(group_b, "group_b")
    pooled = np.concatenate([a, b])
    n_a, n_b = a.size, b.size
    observed = float(a.sum())
    centre = n_a * float(pooled.sum()) / pooled.size
    tolerance = 1e-10 * float(np.abs(pooled).sum())
    statistic = float(a.mean() - b.mean())
    arrangements = math.comb(pooled.size, n_a)
    if arrangements <= exact_limit:
        chosen = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(pooled.size), n_a)),
                             dtype=np.int64, count=arrangements * n_a).reshape(arrangements, n_a)
        count = _count_extreme(pooled[chosen].sum(axis=1), observed, centre, alternative, tolerance)
        return PermutationTest(statistic, count / arrangements, alternative, "exact", arrangements, n_a, n_b,
                               smallest_attainable_p(n_a, n_b, alternative, arrangements=arrangements))
    rng = np.random.default_rng(seed)
    count, done = 0, 0
    chunk = max(1, _CHUNK // pooled.size)
    while done < n_permutations:
        size = min(chunk, n_permutations - done)
        shuffled = rng.permuted(np.broadcast_to(pooled, (size, pooled.size)), axis=1)
        count += _count_extreme(shuffled[:, :n_a].sum(axis=1), observed, centre, alternative, tolerance)
        done += size
    return PermutationTest(statistic, (1 + count) / (1 + n_permutations), alternative, "monte-carlo",
                           n_permutations, n_a, n_b, 1 / (1 + n_permutations))


def smallest_attainable_p(n_a: int, n_b: int, alternative: str, *, arrangements: int | None = None) -> float:
    """The least p-value of the exact permutation test of groups of ``n_a`` and ``n_b`` values:
    1/C(n_a + n_b, n_a), doubled two-sided when n_a = n_b (the most extreme arrangement and its swap tie)."""
    count = math.comb(n_a + n_b, n_a) if arrangements is None else arrangements
    return min(1.0, (2 if alternative == "two-sided" and n_a == n_b else 1) / count)


# ----------------------------------------------------------------------------- paired comparisons over seeds

SIGN_FLIP_LIMIT = 20  # 2^20 sign assignments: about a second; seeds are far fewer


@dataclass(frozen=True)
class SignFlipTest:
    """Exact randomisation test of paired differences: under the null all 2^n sign assignments of their
    absolute values are equally likely; p = the share at least as extreme as the observed sum."""

    statistic: float  # the mean difference
    p_value: float
    alternative: str  # "greater": mean > 0; "less"; "two-sided": |sum| at least the observed
    method: str
    n_arrangements: int  # 2^n
    smallest_attainable_p: float  # 1/2^n one-sided, 2/2^n two-sided


@dataclass(frozen=True)
class PairedComparison:
    """Arm a against arm b over seeds, from per-seed differences a − b."""

    differences: list[float]
    higher: int  # seeds where a > b
    lower: int  # seeds where a < b
    interval: ConfidenceInterval  # of the mean difference: the paired Student t interval, df = n − 1
    effect_size: float  # Cohen's d_z = mean / sd of the differences; NaN when n < 2 or sd = 0
    sign_flip: SignFlipTest  # two-sided

    @property
    def n(self) -> int:
        return len(self.differences)


def sign_flip_test(differences: Sequence[float], alternative: str = "two-sided") -> SignFlipTest:
    """The exact sign-flip test of ``differences`` (see :class:`SignFlipTest`); ties within
    1e-10 · Σ|d| of the observed sum count as extreme."""
    if alternative not in ALTERNATIVES:
        raise MinimascopeError(f"unknown alternative {alternative!r}; choose one of {', '.join(ALTERNATIVES)}")
    d = _finite_values(differences, "differences")
    if d.size > SIGN_FLIP_LIMIT:
        raise MinimascopeError(f"the exact sign-flip test enumerates 2^n assignments; n = {d.size} > "
                               f"{SIGN_FLIP_LIMIT}")
    signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
    sums = signs @ np.abs(d)
    observed, tolerance = float(d.sum()), 1e-10 * float(np.abs(d).sum())
    if alternative == "greater":
        count = int((sums >= observed - tolerance).sum())
    elif alternative == "less":
        count = int((sums <= observed + tolerance).sum())
    else:
        count = int((np.abs(sums) >= abs(observed) - tolerance).sum())
    total = 2 ** d.size
    smallest = min(1.0, (2 if alternative == "two-sided" else 1) / total)
    return SignFlipTest(float(d.mean()), count / total, alternative, "exact sign-flip", total, smallest)


def paired_comparison(values_a: Sequence[float], values_b: Sequence[float], level: float = 0.95) -> PairedComparison:
    """Arm a against arm b, ``values_a[i]`` and ``values_b[i]`` from the same seed."""
    a, b = _finite_values(values_a, "values_a"), _finite_values(values_b, "values_b")
    if a.size != b.size:
        raise MinimascopeError(f"paired values need one per seed on both sides, got {a.size} and {b.size}")
    d = a - b
    interval = mean_confidence_interval(d, level)
    effect = interval.mean / interval.std if d.size > 1 and interval.std > 0 else math.nan
    return PairedComparison(d.tolist(), int((d > 0).sum()), int((d < 0).sum()), interval, effect,
                            sign_flip_test(d, "two-sided"))


# ----------------------------------------------------------------------------- families of tests


def _p_values(p_values: Sequence[float]) -> np.ndarray:
    p = np.asarray(list(p_values), dtype=np.float64)
    if p.ndim != 1 or not ((p >= 0) & (p <= 1)).all():
        raise MinimascopeError("p-values must be a flat sequence of numbers in [0, 1]")
    return p


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given."""
    p = _p_values(p_values)
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted.tolist()


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (false discovery rate), in the order given."""
    p = _p_values(p_values)
    order = np.argsort(p, kind="stable")
    m = p.size
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return adjusted.tolist()


# ----------------------------------------------------------------------------- two networks on the same images


@dataclass(frozen=True)
class McNemarTest:
    only_a_wrong: int  # b
    only_b_wrong: int  # c
    p_value: float  # two-sided exact
    smallest_attainable_p: float  # 2 / 2^(b + c), at most 1


def mcnemar_exact(only_a_wrong: int, only_b_wrong: int) -> McNemarTest:
    """McNemar's exact test: is either network wrong more often on the images where they disagree?"""
    b, c = int(only_a_wrong), int(only_b_wrong)
    if b < 0 or c < 0:
        raise MinimascopeError(f"discordant counts cannot be negative: {b}, {c}")
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    # exact integers until the one correctly rounded division
    return McNemarTest(b, c, min(1.0, 2 * tail / 2 ** n), min(1.0, 2 / 2 ** n))


# ----------------------------------------------------------------------------- verdicts of claims

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
MAX_SEEDS = 100_000  # beyond this "needs more seeds" is no longer a useful answer


@dataclass(frozen=True)
class Verdict:
    """What a claim's rule decided, and why. ``p_value`` is the rule's own test (None where the rule is
    an interval only); ``smallest_attainable_p`` is that test's least possible p (0 for a t test, whose
    statistic is continuous). ``sign_flip`` is the exact sign-flip test printed beside a paired rule.
    ``decide`` says what would decide an inconclusive result ("" when decided)."""

    verdict: str  # SUPPORTED, NOT_SUPPORTED or INCONCLUSIVE
    claim: str
    direction: str  # what the data point to, e.g. "A higher than B"; "" when they point nowhere
    rule: str
    variability: str  # whose variability the rule uses: "across seeds", "over steps within each run"
    p_value: float | None
    smallest_attainable_p: float | None
    sign_flip: SignFlipTest | None
    decide: str


def t_p_value(t: float, dof: int, alternative: str = "two-sided") -> float:
    """P-value of a Student t statistic: two-sided P(|T| ≥ |t|), "greater" P(T ≥ t), "less" P(T ≤ t)."""
    tail = (1.0 - t_central_mass(abs(t), dof)) / 2
    if alternative == "two-sided":
        return 2 * tail
    upper = tail if t >= 0 else 1.0 - tail
    return upper if alternative == "greater" else 1.0 - upper


def seeds_needed(std: float, margin: float, level: float) -> int | None:
    """The least n ≥ 2 whose Student t half-width t_{(1+level)/2, n−1} · std/√n is below ``margin``
    (None when there is none up to MAX_SEEDS); the half-width decreases in n, so by doubling then bisection."""
    def fits(n: int) -> bool:
        return t_quantile((1 + level) / 2, n - 1) * std / math.sqrt(n) < margin

    if margin <= 0 or not math.isfinite(std) or not fits(MAX_SEEDS):
        return None
    low, high = 1, 2  # low never fits (one seed has no interval)
    while not fits(high):
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def _seeds_sentence(n: int, std: float, margin: float, level: float, goal: str) -> str:
    if n < 2:
        return f"needs ≥ 2 seeds: one seed says nothing about the spread across seeds ({goal})"
    needed = seeds_needed(std, margin, level)
    if needed is None:
        return f"no number of seeds up to {MAX_SEEDS:,} decides it at this spread and mean ({goal})"
    return f"needs ≥ {needed} seeds at this spread (sd {std:.3g}) to decide ({goal})"


def higher_verdict(values_a: Sequence[float], values_b: Sequence[float], *, label_a: str = "A", label_b: str = "B",
                   level: float = 0.95) -> Verdict:
    """"a higher than b", paired by seed: supported when the paired Student t interval of a − b at
    ``level`` (two-sided, df = n − 1) lies above 0, not supported when it lies below 0 (b higher), else
    inconclusive. Unlike the exact sign-flip test (p ≥ 1/8 at 3 seeds) it can decide with 2 or 3 seeds;
    its false-positive rate is (1 − level)/2 for normal differences."""
    paired = paired_comparison(values_a, values_b, level)
    ci, n = paired.interval, paired.n
    claim = f"{label_a} higher than {label_b}"
    direction = claim if ci.mean > 0 else f"{label_b} higher than {label_a}" if ci.mean < 0 else ""
    p = None
    if n >= 2:
        p = (0.0 if ci.mean else 1.0) if ci.std == 0 else t_p_value(ci.mean * math.sqrt(n) / ci.std, n - 1)
    if n >= 2 and ci.low > 0:
        verdict, decide = SUPPORTED, ""
    elif n >= 2 and ci.high < 0:
        verdict, decide = NOT_SUPPORTED, ""
    else:
        verdict = INCONCLUSIVE
        decide = _seeds_sentence(n, ci.std, abs(ci.mean), level, f"the {level:.0%} interval to exclude 0")
    rule = (f"paired Student t {level:.0%} interval of {label_a} − {label_b} over {n} seed(s) (df = n − 1): "
            f"above 0 → supported, below 0 → not supported, else inconclusive; higher in {paired.higher} of {n}")
    return Verdict(verdict, claim, direction, rule, "across seeds", p, None if p is None else 0.0,
                   paired.sign_flip, decide)


def equal_verdict(values_a: Sequence[float], values_b: Sequence[float], tolerance: float, *, label_a: str = "A",
                  label_b: str = "B", level: float = 0.90) -> Verdict:
    """"a and b about equal, within ±``tolerance``", paired by seed (TOST): supported when the paired t
    interval at ``level`` (0.90: two one-sided 5% tests) lies inside (−tolerance, tolerance), not
    supported when it lies wholly outside [−tolerance, tolerance], else inconclusive. p is the TOST
    p-value, the larger of the two one-sided t tests'."""
    if not tolerance > 0:
        raise MinimascopeError(f"an equivalence tolerance must be positive, not {tolerance}")
    paired = paired_comparison(values_a, values_b, level)
    ci, n = paired.interval, paired.n
    claim = f"{label_a} and {label_b} equal within ±{tolerance:g}"
    direction = claim if abs(ci.mean) < tolerance else f"{label_a} and {label_b} differ by more than ±{tolerance:g}"
    p = None
    if n >= 2:
        se = ci.std / math.sqrt(n)
        if se == 0:
            p = 0.0 if abs(ci.mean) < tolerance else 1.0
        else:
            p = max(t_p_value((ci.mean + tolerance) / se, n - 1, "greater"),
                    t_p_value((ci.mean - tolerance) / se, n - 1, "less"))
    if n >= 2 and -tolerance < ci.low and ci.high < tolerance:
        verdict, decide = SUPPORTED, ""
    elif n >= 2 and (ci.low > tolerance or ci.high < -tolerance):
        verdict, decide = NOT_SUPPORTED, ""
    else:
        verdict = INCONCLUSIVE
        decide = _seeds_sentence(n, ci.std, tolerance - abs(ci.mean), level,
                                 f"the {level:.0%} interval inside ±{tolerance:g}")
    rule = (f"paired Student t {level:.0%} interval of {label_a} − {label_b} over {n} seed(s) (TOST): inside "
            f"±{tolerance:g} → supported, wholly outside → not supported, else inconclusive")
    return Verdict(verdict, claim, direction, rule, "across seeds", p, None if p is None else 0.0,
                   paired.sign_flip, decide)

