"""Paired statistics, verdict rules, McNemar, the cost-per-step rule and the rescaling-invariant sharpness,
checked against scipy and under simulated nulls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from helpers import conv_bn_net
from minimascope.minima.sharpness import sharpness
from minimascope.minima.step_cost import cost_verdict, median_interval, step_time_ratio
from minimascope.stats import (
    benjamini_hochberg,
    equal_verdict,
    higher_verdict,
    holm,
    mcnemar_exact,
    paired_comparison,
    sign_flip_test,
    smallest_attainable_p,
    t_p_value,
)

SIMULATIONS = 4000


def binomial_upper(count: int, n: int) -> float:
    """The one-sided 99% Clopper-Pearson upper bound of a rate: what a 5% ceiling is checked against."""
    return float(stats.beta.ppf(0.99, count + 1, n - count))


def test_paired_comparison_matches_scipy() -> None:
    a, b = [1.3, 2.1, 0.7, 1.9, 1.2], [1.0, 1.6, 0.9, 1.1, 0.8]
    paired = paired_comparison(a, b)
    d = np.subtract(a, b)
    result = stats.ttest_rel(a, b)
    low, high = result.confidence_interval(0.95)
    assert paired.interval.low == pytest.approx(low) and paired.interval.high == pytest.approx(high)
    assert paired.effect_size == pytest.approx(d.mean() / d.std(ddof=1))
    assert (paired.higher, paired.lower) == (4, 1)
    assert t_p_value(d.mean() / (d.std(ddof=1) / np.sqrt(5)), 4) == pytest.approx(result.pvalue)
    flip = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf)
    assert paired.sign_flip.p_value == pytest.approx(flip.pvalue)
    assert paired.sign_flip.n_arrangements == 32 and paired.sign_flip.smallest_attainable_p == 2 / 32


def test_sign_flip_one_sided_and_smallest_p() -> None:
    assert sign_flip_test([1.0, 2.0, 3.0], "greater").p_value == 1 / 8
    assert sign_flip_test([1.0, 2.0, 3.0], "less").p_value == 1.0
    assert sign_flip_test([1.0, 2.0, 3.0]).smallest_attainable_p == 2 / 8
    assert smallest_attainable_p(3, 3, "two-sided") == 2 / 20 and smallest_attainable_p(2, 4, "less") == 1 / 15


def test_holm_and_bh_match_scipy_and_definition() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 12).tolist()
    assert benjamini_hochberg(p) == pytest.approx(stats.false_discovery_control(p, method="bh"))
    order = np.argsort(p)
    expected = np.empty(12)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (12 - rank) * p[i]))
        expected[i] = running
    assert holm(p) == pytest.approx(expected)


@pytest.mark.parametrize("b,c", [(0, 0), (3, 12), (7, 7), (20, 9), (0, 5)])
def test_mcnemar_matches_scipy(b: int, c: int) -> None:
    test = mcnemar_exact(b, c)
    expected = 1.0 if b + c == 0 else stats.binomtest(b, b + c).pvalue
    assert test.p_value == pytest.approx(expected) and test.smallest_attainable_p == min(1.0, 2 / 2 ** (b + c))


def test_higher_rule_on_constructed_cases() -> None:
    decided = higher_verdict([0.50, 0.61, 0.55], [0.40, 0.50, 0.46], label_a="sgd", label_b="adahessian")
    assert decided.verdict == "supported" and decided.direction == "sgd higher than adahessian"
    assert decided.decide == "" and decided.sign_flip.smallest_attainable_p == 0.25
    opposite = higher_verdict([0.40, 0.50, 0.46], [0.50, 0.61, 0.55])
    assert opposite.verdict == "not supported" and opposite.direction == "B higher than A"
    noise = higher_verdict([1.0, -1.0, 0.5], [0.0, 0.0, 0.0])
    assert noise.verdict == "inconclusive" and "needs ≥" in noise.decide and "seeds" in noise.decide


def test_equal_rule_on_constructed_cases() -> None:
    assert equal_verdict([0.40, 0.41, 0.42], [0.401, 0.409, 0.421], 0.02).verdict == "supported"
    assert equal_verdict([0.40, 0.41, 0.42], [0.30, 0.31, 0.325], 0.02).verdict == "not supported"
    assert equal_verdict([0.40, 0.45], [0.41, 0.40], 0.02).verdict == "inconclusive"


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("noise", ["normal", "heavy"])
def test_rules_false_positive_rate_under_a_null(n: int, noise: str) -> None:
    rng = np.random.default_rng(17 + n)
    draw = (lambda size: rng.normal(size=size)) if noise == "normal" else (lambda size: rng.standard_t(2, size=size))
    higher = sum(higher_verdict(draw(n), np.zeros(n)).verdict == "supported" for _ in range(SIMULATIONS))
    # equivalence: the null is a true difference of exactly the tolerance (its hardest case)
    equal = sum(equal_verdict(1.0 + draw(n), np.zeros(n), 1.0).verdict == "supported" for _ in range(SIMULATIONS))
    assert binomial_upper(higher, SIMULATIONS) <= 0.05 + 0.01 and higher / SIMULATIONS <= 0.05
    assert equal / SIMULATIONS <= 0.05


def test_median_interval_matches_binomial_coverage() -> None:
    low, high = median_interval(np.arange(100.0), 0.95)
    assert (low, high) == (39.0, 60.0)  # ranks 40 and 61: the textbook interval for n = 100
    j = 40
    assert 1 - 2 * stats.binom.cdf(j - 1, 100, 0.5) >= 0.95 > 1 - 2 * stats.binom.cdf(j, 100, 0.5)


def test_cost_rule_decides_and_holds_its_null() -> None:
    rng = np.random.default_rng(3)
    ratios = [step_time_ratio(rng.lognormal(0, 0.3, 500), 3 * rng.lognormal(0, 0.3, 500), seed=s) for s in range(2)]
    verdict = cost_verdict(ratios, label_a="sgd", label_b="adahessian")
    assert verdict.verdict == "supported" and verdict.variability == "over steps within each run"
    assert all(r.low < r.ratio < r.high and r.ratio == pytest.approx(3, rel=0.15) for r in ratios)
    false = sum(cost_verdict([step_time_ratio(rng.pareto(3, 60) + 1, rng.pareto(3, 60) + 1)]).verdict == "supported"
                for _ in range(SIMULATIONS))
    assert false / SIMULATIONS <= 0.05


def test_adaptive_sharpness_is_invariant_to_a_batch_norm_rescaling(one_thread: None) -> None:
    torch.manual_seed(0)
    net = conv_bn_net().double()
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eps = 1e-12  # the function is then unchanged by the rescaling to ~1e-12
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    x, y = torch.randn(64, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (64,))

    def measured():
        return sharpness(net, x, y, k=1, tol=1e-6, max_iter=100, rel_error=1e-2, max_probes=200, density_steps=4)

    before = measured()
    with torch.no_grad():  # conv 1 feeds batch norm 2: scale it by 10, and the statistics that batch norm keeps
        for tensor, factor in ((net[1].weight, 10), (net[1].bias, 10), (net[2].running_mean, 10),
                               (net[2].running_var, 100)):
            tensor.mul_(factor)
    after = measured()
    assert after.loss == pytest.approx(before.loss, rel=1e-9)
    assert abs(after.trace.value / before.trace.value - 1) > 0.01
    assert after.adaptive.eigenvalues.values[0] == pytest.approx(before.adaptive.eigenvalues.values[0], rel=1e-8)
    assert after.adaptive.trace.value == pytest.approx(before.adaptive.trace.value, rel=1e-8)
