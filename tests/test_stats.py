"""Statistics over seeds: the t quantile and intervals against scipy, permutation tests against
hand-counted cases and scipy, symmetry, clear and absent effects, the per-layer helper, the files, and
the seed statistics of a pair of arms read from comparison, run and sharpness folders built here."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from minimascope.compare import write_similarity
from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_json
from minimascope.minima.lanczos import TopEigenvalues
from minimascope.minima.sharpness import Density, Sharpness, TraceEstimate, write_sharpness
from minimascope.optimizer_effect import (
    SEEDS_FORMAT,
    SeedStatistics,
    layer_values,
    optimizer_effect_tests,
    read_seed_statistics,
    seed_statistics,
    seed_statistics_of_pair,
    write_seed_statistics,
)
from minimascope.runs import RUN_FORMAT, RUN_JSON
from minimascope.similarity import SimilarityMatrix
from minimascope.stats import (
    mean_confidence_interval,
    paired_comparison,
    permutation_test,
    t_central_mass,
    t_quantile,
)

# ----------------------------------------------------------------------------- t distribution and intervals


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 9, 10, 29, 30, 101, 1000, 100_000])
def test_t_central_mass_matches_scipy(dof: int) -> None:
    for t in (0.01, 0.5, 1.0, 2.0, 4.3, 30.0):
        # The series sums dof/2 terms, so its rounding grows with dof.
        assert t_central_mass(t, dof) == pytest.approx(stats.t.cdf(t, dof) - stats.t.cdf(-t, dof),
                                                       abs=1e-13 if dof <= 1000 else 1e-11)


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 7, 10, 25, 60, 1000])
@pytest.mark.parametrize("probability", [0.6, 0.9, 0.975, 0.995, 0.9995, 0.025])
def test_t_quantile_matches_scipy(dof: int, probability: float) -> None:
    assert t_quantile(probability, dof) == pytest.approx(stats.t.ppf(probability, dof), rel=1e-10)


@pytest.mark.parametrize("values", [[1.0, 2.0], [3.2, 2.9, 3.5], [0.91, 0.93, 0.90, 0.92, 0.95],
                                    list(np.random.default_rng(0).normal(5, 2, 40))])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_confidence_interval_matches_scipy(values: list[float], level: float) -> None:
    interval = mean_confidence_interval(values, level)
    low, high = stats.t.interval(level, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert interval.mean == pytest.approx(np.mean(values), rel=1e-14)
    assert interval.low == pytest.approx(low, rel=1e-10) and interval.high == pytest.approx(high, rel=1e-10)
    assert interval.std == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert (interval.n, interval.level) == (len(values), level)


def test_two_values_closed_form() -> None:
    # n = 2: s/√2 = |x1 − x2| / 2, t_{0.975, 1} = tan(0.475 π)
    interval = mean_confidence_interval([1.0, 3.0])
    assert interval.high - interval.mean == pytest.approx(math.tan(0.475 * math.pi), rel=1e-12)


def test_one_value_has_an_undefined_interval() -> None:
    interval = mean_confidence_interval([0.7])
    assert interval.mean == 0.7 and interval.n == 1
    assert math.isnan(interval.low) and math.isnan(interval.high) and math.isnan(interval.std)


def test_identical_values_have_a_zero_width_interval() -> None:
    interval = mean_confidence_interval([2.5, 2.5, 2.5])
    assert interval.low == interval.high == 2.5


def test_bad_interval_inputs() -> None:
    with pytest.raises(MinimascopeError, match="no values"):
        mean_confidence_interval([])
    with pytest.raises(MinimascopeError, match="NaN"):
        mean_confidence_interval([1.0, math.nan])
    with pytest.raises(MinimascopeError, match="level"):
        mean_confidence_interval([1.0, 2.0], level=95)


# ----------------------------------------------------------------------------- permutation test


def test_exact_enumeration_of_a_hand_counted_case() -> None:
    # Group sums over the 6 ways to pick 2 of {1, 2, 3, 4}: 3, 4, 5, 5, 6, 7; observed {1, 2} = 3.
    less = permutation_test([1, 2], [3, 4], alternative="less")
    assert (less.p_value, less.method, less.n_arrangements, less.statistic) == (1 / 6, "exact", 6, -2.0)
    assert permutation_test([1, 2], [3, 4], alternative="greater").p_value == 1.0
    assert permutation_test([1, 2], [3, 4], alternative="two-sided").p_value == pytest.approx(2 / 6)
    assert permutation_test([2, 3], [1, 4], alternative="less").p_value == pytest.approx(4 / 6)  # sums 3, 4, 5, 5


def test_ties_count_as_extreme_despite_rounding() -> None:
    # 0.1 + 0.2 != 0.3 in floating point; the arrangement {0.3, x} ties {0.1, 0.2, ...} in exact arithmetic.
    result = permutation_test([0.1, 0.2], [0.3, 0.0], alternative="less")
    # sums: {0.1,0.2}=0.3, {0.1,0.3}=0.4, {0.1,0}=0.1, {0.2,0.3}=0.5, {0.2,0}=0.2, {0.3,0}=0.3 → 4 of 6 ≤ 0.3
    assert result.p_value == pytest.approx(4 / 6)


def test_exact_matches_scipy_permutation_test() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 6), rng.normal(0.8, 1, 7)
    def difference(x, y):
        return np.mean(x) - np.mean(y)

    def size(x, y):  # our two-sided p-value is P(|T| ≥ |t|), not scipy's 2 · min(one-sided p-values)
        return abs(difference(x, y))

    for alternative, statistic, scipy_alternative in [("less", difference, "less"),
                                                      ("greater", difference, "greater"),
                                                      ("two-sided", size, "greater")]:
        ours = permutation_test(a, b, alternative=alternative)
        reference = stats.permutation_test((a, b), statistic, permutation_type="independent",
                                           alternative=scipy_alternative, n_resamples=np.inf)
        assert ours.method == "exact" and ours.n_arrangements == math.comb(13, 6)
        assert ours.p_value == pytest.approx(reference.pvalue, rel=1e-12)
        assert ours.statistic == pytest.approx(difference(a, b), rel=1e-12)


def test_two_sided_is_symmetric_in_the_groups() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 4), rng.normal(0.5, 1, 6)
    ab, ba = permutation_test(a, b, alternative="two-sided"), permutation_test(b, a, alternative="two-sided")
    assert ab.p_value == ba.p_value and ab.statistic == -ba.statistic
    # One-sided tests swap with the groups.
    assert permutation_test(a, b, alternative="less").p_value == permutation_test(b, a, alternative="greater").p_value


def test_clear_difference_gives_a_small_p_value() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, 0.02, 12), rng.normal(0.8, 0.02, 12)  # C(24, 12) > 20000: Monte-Carlo
    result = permutation_test(a, b, alternative="less", n_permutations=5000)
    assert result.method == "monte-carlo" and result.n_arrangements == 5000
    assert result.p_value == 1 / 5001  # no random arrangement is as extreme: the +1 correction's floor
    exact = permutation_test([0.50, 0.52, 0.49, 0.51], [0.80, 0.79, 0.82, 0.81])
    assert exact.p_value == pytest.approx(1 / math.comb(8, 4))


def test_same_distribution_gives_a_large_p_value() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 30), rng.normal(0, 1, 30)
    result = permutation_test(a, b, alternative="two-sided", n_permutations=4000)
    reference = stats.ttest_ind(a, b).pvalue
    assert result.p_value > 0.2 and reference > 0.2
    assert result.p_value == pytest.approx(reference, abs=0.03)  # Monte-Carlo error ~ 0.008
    same = permutation_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], alternative="two-sided")
    assert same.p_value == 1.0 and same.statistic == 0.0


def test_monte_carlo_approximates_the_exact_p_value() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 7), rng.normal(0.7, 1, 8)  # C(15, 7) = 6435 arrangements
    exact = permutation_test(a, b)
    sampled = permutation_test(a, b, exact_limit=100, n_permutations=20_000, seed=4)
    assert sampled.method == "monte-carlo"
    assert sampled.p_value == pytest.approx(exact.p_value, abs=4 * math.sqrt(exact.p_value / 20_000) + 1e-4)
    assert permutation_test(a, b, exact_limit=100, n_permutations=500, seed=4) \
        == permutation_test(a, b, exact_limit=100, n_permutations=500, seed=4)


def test_bad_permutation_inputs() -> None:
    with pytest.raises(MinimascopeError, match="alternative"):
        permutation_test([1], [2], alternative="lower")
    with pytest.raises(MinimascopeError, match="group_b holds no values"):
        permutation_test([1], [])
    with pytest.raises(MinimascopeError, match="n_permutations"):
        permutation_test([1], [2], n_permutations=0)


# ----------------------------------------------------------------------------- optimizers vs seeds


def matrix(measure: str, kind: str, values: list[list[float]], layers_b=("conv1", "fc")) -> SimilarityMatrix:
    return SimilarityMatrix(measure, kind, "", np.asarray(values), ("conv1", "fc"), tuple(layers_b), 100,
                            "flatten", "a", "b")


def test_layer_values_take_the_same_layer_of_both_networks() -> None:
    first = matrix("cka", "similarity", [[0.9, 0.1], [0.2, 0.8]])
    second = matrix("cka", "similarity", [[0.7, 0.0], [0.0, 0.6]]).to_dict()  # as read from <measure>.json
    shuffled = matrix("cka", "similarity", [[0.3, 0.5], [0.4, 0.2]], layers_b=("fc", "conv1"))
    assert layer_values([first, second, shuffled]) == {("cka", "conv1"): [0.9, 0.7, 0.5],
                                                       ("cka", "fc"): [0.8, 0.6, 0.4]}
    with pytest.raises(MinimascopeError, match="not a similarity matrix"):
        layer_values([{"measure": "cka"}])


def test_optimizer_effect_tests_per_measure_and_layer() -> None:
    within = {("cka", "conv1"): [0.95, 0.96, 0.94, 0.95], ("cka", "fc"): [0.9, 0.5, 0.7, 0.6],
              ("procrustes", "conv1"): [0.10, 0.12, 0.11, 0.09]}
    across = {("cka", "conv1"): [0.80, 0.82, 0.79, 0.81], ("cka", "fc"): [0.8, 0.6, 0.7, 0.5],
              ("procrustes", "conv1"): [0.40, 0.42, 0.39, 0.41]}
    tests = optimizer_effect_tests(within, across)
    assert [(t.measure, t.layer, t.kind, t.test.alternative) for t in tests] == [
        ("cka", "conv1", "similarity", "less"), ("cka", "fc", "similarity", "less"),
        ("procrustes", "conv1", "distance", "greater")]
    first, middle, last = tests
    assert first.test.p_value == pytest.approx(1 / 70) and last.test.p_value == pytest.approx(1 / 70)
    assert first.test.statistic == pytest.approx(0.805 - 0.95)
    assert middle.test.p_value > 0.3
    assert first.within == mean_confidence_interval(within["cka", "conv1"])
    assert first.across == mean_confidence_interval(across["cka", "conv1"])


def test_optimizer_effect_tests_need_both_groups_and_known_measures() -> None:
    with pytest.raises(MinimascopeError, match="measure cka at layer fc has only within-optimizer values"):
        optimizer_effect_tests({("cka", "fc"): [1.0]}, {})
    with pytest.raises(MinimascopeError, match="unknown measure"):
        optimizer_effect_tests({("cosine", "fc"): [1.0]}, {("cosine", "fc"): [0.5]})


def test_write_and_read_back(tmp_path) -> None:
    within = {("cka", "conv1"): [0.95, 0.96, 0.94], ("svcca", "fc"): [0.7]}
    across = {("cka", "conv1"): [0.80, 0.82, 0.79, 0.81], ("svcca", "fc"): [0.6, 0.5]}
    result = seed_statistics(("sgd", "adahessian"), {"sgd": within}, across,
                             {"test accuracy": ({0: 0.4, 1: 0.41}, {0: 0.42, 1: 0.43}),
                              "Hessian trace": ({0: 1.0}, {0: 2.0, 1: 3.0})})
    tests = optimizer_effect_tests(within, across)
    assert result.tests == tests and [s.name for s in result.scalars] == ["test accuracy"]  # the trace: 1 shared seed
    paths = write_seed_statistics(result, tmp_path)
    assert [p.name for p in paths] == ["seeds.json", "seeds.csv"]
    back = read_seed_statistics(tmp_path)
    assert back.arms == ("sgd", "adahessian") and back.within_arms == ["sgd"] and back.problems == []
    assert back.tests[0] == tests[0] and back.scalars == result.scalars
    assert math.isnan(back.tests[1].within.low) and back.tests[1].across == tests[1].across
    assert back.tests[1].test == tests[1].test
    data = json.loads(paths[0].read_text())
    assert data["format"] == SEEDS_FORMAT == "minimascope-seeds-v3" and data["tests"][1]["within"]["low"] is None
    rows = list(csv.DictReader(paths[1].open()))
    assert rows[0]["layer"] == "conv1" and float(rows[0]["p_value"]) == tests[0].test.p_value
    assert rows[1]["within_low"] == "" and rows[1]["within_n"] == "1"
    (tmp_path / "seeds.json").write_text(json.dumps({"format": SEEDS_FORMAT, "tests": [{"measure": "cka"}]}))
    with pytest.raises(MinimascopeError, match="malformed"):
        read_seed_statistics(tmp_path)
    (tmp_path / "seeds.json").write_text(json.dumps({"format": "minimascope-seeds-v2", "tests": []}))
    with pytest.raises(MinimascopeError, match=r"older minimascope \(minimascope-seeds-v2.*re-run") as error:
        read_seed_statistics(tmp_path)
    assert "\n" not in str(error.value)
    (tmp_path / "seeds.json").write_text(json.dumps({"format": "other", "tests": []}))
    with pytest.raises(MinimascopeError, match="not a minimascope-seeds-v3 file"):
        read_seed_statistics(tmp_path)
    with pytest.raises(MinimascopeError, match="seed statistics not found"):
        read_seed_statistics(tmp_path / "elsewhere")


# ----------------------------------------------------------------------------- the seed statistics of two arms

ARMS = ("sgd", "adahessian")
SEEDS = (0, 1, 2)
LAYERS = ("conv1", "fc")


def layer_matrices(offset: float) -> list[SimilarityMatrix]:
    """CKA and Procrustes of two networks, layer i with layer j; the diagonal depends on ``offset``."""
    cka = np.array([[0.9 - offset, 0.2], [0.3, 0.8 - 2 * offset]])
    procrustes = np.array([[0.1 + offset, 1.5], [1.4, 0.3 + offset]])
    return [SimilarityMatrix(measure, kind, "", values, LAYERS, LAYERS, 50, "flatten", "a", "b")
            for measure, kind, values in (("cka", "similarity", cka), ("procrustes", "distance", procrustes))]


def fake_sharpness(top: float) -> Sharpness:
    nodes = torch.tensor([0.0, 0.1, top], dtype=torch.float64)
    density = Density.of_quadrature(nodes, torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), 3, 1)
    return Sharpness(TopEigenvalues([top, top / 2], 10, True), TraceEstimate(3 * top, 0.1, 20, True), density,
                     100, 1000, 0, {"images": "train"})


@pytest.fixture(scope="module")
def pair_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A study's folders for the pair (never changed by a test), and the ``inputs`` naming them as the
    study plans them: cross-arm comparisons less alike than cross-seed ones; accuracy, λ1 and trace per seed."""
    root = tmp_path_factory.mktemp("study")
    inputs: dict = {"arms": list(ARMS), "across": [], "within": [], "runs": [], "sharpness": []}
    for seed in SEEDS:
        path = root / f"comparisons/sgd_vs_adahessian/seed{seed}"
        write_similarity(layer_matrices(0.2 + 0.01 * seed), path)
        inputs["across"].append({"seed": seed, "path": str(path)})
    for number, arm in enumerate(ARMS):
        for i, j in ((0, 1), (0, 2), (1, 2)):
            path = root / f"comparisons/{arm}_vs_{arm}/seed{i}-seed{j}"
            write_similarity(layer_matrices(0.01 * (i + j + number)), path)
            inputs["within"].append({"arm": arm, "seeds": [i, j], "path": str(path)})
        for seed in SEEDS:
            run = root / f"runs/{arm}/seed{seed}"
            atomic_write_json(run / RUN_JSON, {"format": RUN_FORMAT, "status": "completed",
                                               "final": {"test_accuracy": 0.4 + 0.02 * number + 0.003 * seed}})
            inputs["runs"].append({"arm": arm, "seed": seed, "path": str(run)})
            sharpness = root / f"analyses/sharpness/{arm}/seed{seed}"
            write_sharpness(fake_sharpness(10.0 * (1 + 9 * number) + seed), sharpness)
            inputs["sharpness"].append({"arm": arm, "seed": seed, "path": str(sharpness)})
    return inputs


def test_seed_statistics_of_a_pair_equal_the_tests_of_their_values(pair_inputs: dict, tmp_path: Path) -> None:
    inputs = {**pair_inputs, "across": pair_inputs["across"][::-1]}  # taken in seed order whatever the order given
    result = seed_statistics_of_pair(inputs, tmp_path / "out")
    within, across = {}, {}
    for arm_number in range(2):  # sgd's seed pairs first, then adahessian's
        for i, j in ((0, 1), (0, 2), (1, 2)):
            for key, values in layer_values(layer_matrices(0.01 * (i + j + arm_number))).items():
                within.setdefault(key, []).extend(values)
    for seed in SEEDS:
        for key, values in layer_values(layer_matrices(0.2 + 0.01 * seed)).items():
            across.setdefault(key, []).extend(values)
    assert result.tests == optimizer_effect_tests(within, across)
    assert [(t.measure, t.layer) for t in result.tests] == [("cka", "conv1"), ("cka", "fc"),
                                                            ("procrustes", "conv1"), ("procrustes", "fc")]
    assert all(t.within.n == 6 and t.across.n == 3 and t.test.p_value == pytest.approx(1 / 84) for t in result.tests)
    accuracy = ([0.4, 0.403, 0.406], [0.42, 0.423, 0.426])
    tops = ([10.0, 11.0, 12.0], [100.0, 101.0, 102.0])
    expected = {"test accuracy": accuracy, "top eigenvalue λ1": tops,
                "Hessian trace": tuple([3 * v for v in side] for side in tops)}
    assert [s.name for s in result.scalars] == list(expected)
    for scalar in result.scalars:
        a, b = expected[scalar.name]
        assert scalar.seeds == list(SEEDS)
        assert scalar.arm_a_values == pytest.approx(a) and scalar.arm_b_values == pytest.approx(b)
        assert scalar.paired == paired_comparison(scalar.arm_a_values, scalar.arm_b_values)  # paired by seed
        assert scalar.paired.lower == 3 and scalar.verdict.verdict == "not supported"  # b higher in 3 of 3
        assert scalar.verdict.direction == "adahessian higher than sgd"
        assert scalar.test.p_value == pytest.approx(2 / 8)  # all negative and all positive, of 2^3 sign flips
    assert result.arms == ARMS and result.within_arms == list(ARMS) and result.problems == []
    assert read_seed_statistics(tmp_path / "out") == result
    assert (tmp_path / "out" / "seeds.csv").is_file()


def test_seed_statistics_with_one_arm_across_seeds_and_without_any(pair_inputs: dict, tmp_path: Path) -> None:
    inputs = {**pair_inputs, "within": [entry for entry in pair_inputs["within"] if entry["arm"] == "adahessian"]}
    result = seed_statistics_of_pair(inputs, tmp_path / "one")
    assert result.within_arms == ["adahessian"] and all(t.within.n == 3 for t in result.tests)
    none = seed_statistics_of_pair({**inputs, "within": []}, tmp_path / "none")
    assert none == SeedStatistics(ARMS, [], [], [], ["neither sgd nor adahessian has comparisons of two of its seeds"])
    assert read_seed_statistics(tmp_path / "none") == none


def test_seed_statistics_without_common_layers_say_so() -> None:
    result = seed_statistics(ARMS, {"sgd": {("cka", "conv1"): [0.9]}}, {("cka", "fc"): [0.5]},
                             {"test accuracy": ([0.4, 0.5], [0.6, 0.7])})
    assert result.tests == [] and result.scalars == []
    assert result.problems == ["no measure and layer with both kinds of comparison"]


def test_seed_statistics_inputs_missing_or_foreign_are_one_line(pair_inputs: dict, tmp_path: Path) -> None:
    def refused(changed: dict, match: str) -> None:
        with pytest.raises(MinimascopeError, match=match) as error:
            seed_statistics_of_pair({**pair_inputs, **changed}, tmp_path / "out")
        assert "\n" not in str(error.value)

    refused({"across": [{"seed": 0, "path": str(tmp_path / "nowhere")}]}, "comparison folder not found")
    refused({"arms": ["sgd", "sgd"]}, "two different arms")
    refused({"runs": [{"arm": "sgd", "path": str(tmp_path)}]}, "malformed 'runs' inputs")
    refused({"runs": [{"arm": "sgd", "seed": 0, "path": str(tmp_path)}]}, "not a run directory")
    (tmp_path / "foreign" / "cka.json").parent.mkdir()
    (tmp_path / "foreign" / "cka.json").write_text(json.dumps({"measure": "cka"}))
    refused({"across": [{"seed": 0, "path": str(tmp_path / "foreign")}]}, "not a similarity matrix")
    (tmp_path / "foreign" / "cka.json").unlink()
    refused({"across": [{"seed": 0, "path": str(tmp_path / "foreign")}]}, "holds no similarity matrix")
    (tmp_path / "foreign" / "sharpness.json").write_text('{"format": "other"}')
    refused({"sharpness": [{"arm": "sgd", "seed": 0, "path": str(tmp_path / "foreign")}]},
            "not a minimascope-sharpness-v3 file")
