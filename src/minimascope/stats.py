"""Statistics over seeds: confidence intervals of a mean, and permutation tests of two groups.

* :func:`mean_confidence_interval` — the Student t interval mean ± t_{(1+level)/2, n−1} · s/√n.
  The t quantile comes from the exact finite series of the t distribution for integer degrees
  of freedom (Abramowitz & Stegun 26.7.3–4), inverted by bisection, so no scipy is needed.
* :func:`permutation_test` — the difference of means of two groups against its distribution
  over every reassignment of the pooled values to groups of the same sizes: all of them when
  there are at most ``exact_limit`` (p = share at least as extreme, the observed one included),
  else ``n_permutations`` random ones with p = (1 + count) / (1 + n_permutations), which is never 0
  and keeps the test valid (Phipson & Smyth 2010).

numpy only: no file, no network, no torch.
"""

from __future__ import annotations

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
        return PermutationTest(statistic, count / arrangements, alternative, "exact", arrangements, n_a, n_b)
    rng = np.random.default_rng(seed)
    count, done = 0, 0
    chunk = max(1, _CHUNK // pooled.size)
    while done < n_permutations:
        size = min(chunk, n_permutations - done)
        shuffled = rng.permuted(np.broadcast_to(pooled, (size, pooled.size)), axis=1)
        count += _count_extreme(shuffled[:, :n_a].sum(axis=1), observed, centre, alternative, tolerance)
        done += size
    return PermutationTest(statistic, (1 + count) / (1 + n_permutations), alternative, "monte-carlo",
                           n_permutations, n_a, n_b)
