"""Shared mistakes: exact counts of constructed cases, the expected overlap, Fisher's exact test
against scipy, kappa by hand, per-class rates, independent and correlated errors, the files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import fisher_exact, hypergeom

from minimascope.errors import MinimascopeError
from minimascope.minima.mistakes import (
    MISTAKES_FORMAT,
    Mistake,
    compare_mistakes,
    error_kappa,
    expected_overlap,
    mistake_grid,
    only_one_wrong_indices,
    overlap_p_values,
    read_mistakes,
    write_mistakes,
)


def predictions_wrong_at(labels: np.ndarray, wrong: list[int], num_classes: int = 10) -> np.ndarray:
    """Predictions equal to ``labels`` except at ``wrong``, where they are the next class."""
    predicted = labels.copy()
    predicted[wrong] = (labels[wrong] + 1) % num_classes
    return predicted


def test_constructed_case_has_exact_counts_and_rates() -> None:
    labels = np.arange(10) % 10
    a = predictions_wrong_at(labels, [0, 1, 2, 3])
    b = predictions_wrong_at(labels, [2, 3, 4])
    result = compare_mistakes(torch.from_numpy(a), b.tolist(), labels, label_a="sgd", label_b="ada")
    assert (result.both_wrong, result.only_a_wrong, result.only_b_wrong, result.both_right) == (2, 2, 1, 5)
    assert (result.errors_a, result.errors_b, result.n) == (4, 3, 10)
    assert result.expected_both_wrong == pytest.approx(4 * 3 / 10)
    assert result.rates() == pytest.approx({"both_wrong": 0.2, "only_a_wrong": 0.2, "only_b_wrong": 0.1,
                                            "both_right": 0.5, "errors_a": 0.4, "errors_b": 0.3,
                                            "expected_both_wrong": 0.12})
    # p_o = 0.7, p_e = 0.4·0.3 + 0.6·0.7 = 0.54
    assert result.kappa == pytest.approx((0.7 - 0.54) / (1 - 0.54))
    assert [m.index for m in result.only_a] == [0, 1] and [m.index for m in result.only_b] == [4]
    assert result.only_b[0] == Mistake(index=4, true=4, predicted_a=4, predicted_b=5)
    only_a, only_b = only_one_wrong_indices(a, b, labels)
    assert only_a.tolist() == [0, 1] and only_b.tolist() == [4]


def test_expected_overlap_is_product_of_error_rates_times_n() -> None:
    assert expected_overlap(10_000, 600, 800) == pytest.approx(0.06 * 0.08 * 10_000)
    assert expected_overlap(5, 0, 3) == 0.0


def test_kappa_by_hand() -> None:
    # a=20, b=10, c=30, d=40: e_A = 0.3, e_B = 0.5, p_o = 0.6, p_e = 0.15 + 0.35 = 0.5
    assert error_kappa(20, 10, 30, 40) == pytest.approx(0.2)
    assert error_kappa(7, 0, 0, 13) == pytest.approx(1.0)  # the same images wrong
    assert error_kappa(0, 5, 5, 0) == pytest.approx(-1.0)  # never wrong together, each wrong on half
    assert math.isnan(error_kappa(0, 0, 0, 9))  # both always right: agreement by chance is 1
    # The closed form in the module docstring: 2(a − E) / (n (1 − p_e)).
    assert error_kappa(20, 10, 30, 40) == pytest.approx(2 * (20 - 30 * 50 / 100) / (100 * (1 - 0.5)))


@pytest.mark.parametrize("n, errors_a, errors_b, both", [
    (10, 4, 3, 2), (100, 30, 50, 20), (100, 30, 50, 5), (10_000, 700, 900, 150), (10_000, 700, 900, 40),
    (50, 50, 10, 10), (20, 0, 5, 0), (30, 20, 25, 15),
])
def test_overlap_p_values_match_scipy(n: int, errors_a: int, errors_b: int, both: int) -> None:
    more, less = overlap_p_values(n, errors_a, errors_b, both)
    assert more == pytest.approx(hypergeom.sf(both - 1, n, errors_a, errors_b), rel=1e-9, abs=1e-300)
    assert less == pytest.approx(hypergeom.cdf(both, n, errors_a, errors_b), rel=1e-9, abs=1e-300)
    table = [[both, errors_a - both], [errors_b - both, n - errors_a - errors_b + both]]
    assert more == pytest.approx(fisher_exact(table, alternative="greater").pvalue, rel=1e-9)
    assert less == pytest.approx(fisher_exact(table, alternative="less").pvalue, rel=1e-9)


def test_overlap_p_values_refuse_impossible_tables() -> None:
    with pytest.raises(MinimascopeError, match="impossible"):
        overlap_p_values(10, 3, 4, 5)
    with pytest.raises(MinimascopeError, match="impossible"):
        overlap_p_values(10, 8, 8, 5)  # at least 6 must overlap
    with pytest.raises(MinimascopeError, match="do not fit"):
        overlap_p_values(10, 11, 2, 1)


def test_per_class_error_rates_side_by_side() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    a = predictions_wrong_at(labels, [0, 4, 5], num_classes=3)
    b = predictions_wrong_at(labels, [0, 1, 6], num_classes=3)
    result = compare_mistakes(a, b, labels, class_names=("x", "y", "z"))
    rows = {c.class_name: c for c in result.per_class}
    assert (rows["x"].n, rows["x"].errors_a, rows["x"].errors_b, rows["x"].both_wrong) == (4, 1, 2, 1)
    assert (rows["y"].error_rate_a, rows["y"].error_rate_b) == (1.0, 0.0)
    assert (rows["z"].error_rate_a, rows["z"].error_rate_b) == (0.0, 0.25)
    assert sum(c.errors_a for c in result.per_class) == result.errors_a


def test_class_without_images_has_undefined_rates() -> None:
    result = compare_mistakes([0, 1], [0, 0], [0, 1], class_names=("x", "y", "z"))
    assert result.per_class[2].n == 0 and math.isnan(result.per_class[2].error_rate_a)


def test_independent_errors_overlap_as_expected() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    labels = rng.integers(0, 10, n)
    wrong_a, wrong_b = rng.random(n) < 0.1, rng.random(n) < 0.2
    result = compare_mistakes(np.where(wrong_a, (labels + 1) % 10, labels),
                              np.where(wrong_b, (labels + 3) % 10, labels), labels)
    sd = math.sqrt(result.expected_both_wrong * (1 - result.errors_a / n) * (1 - result.errors_b / n))
    assert abs(result.both_wrong - result.expected_both_wrong) < 4 * sd
    assert abs(result.kappa) < 0.03
    assert result.p_value_more_overlap > 0.01 and result.p_value_less_overlap > 0.01


def test_shared_hard_images_overlap_more_than_chance() -> None:
    rng = np.random.default_rng(1)
    n = 5_000
    labels = rng.integers(0, 10, n)
    hard = rng.random(n) < 0.1  # both networks mostly fail on the same hard tenth
    wrong_a = np.where(hard, rng.random(n) < 0.8, rng.random(n) < 0.02)
    wrong_b = np.where(hard, rng.random(n) < 0.7, rng.random(n) < 0.03)
    result = compare_mistakes(np.where(wrong_a, (labels + 1) % 10, labels),
                              np.where(wrong_b, (labels + 1) % 10, labels), labels)
    assert result.both_wrong > 3 * result.expected_both_wrong
    assert result.kappa > 0.5
    assert result.p_value_more_overlap < 1e-100 and result.p_value_less_overlap == pytest.approx(1.0)


def test_bad_inputs_are_one_line_errors() -> None:
    with pytest.raises(MinimascopeError, match="differ in length"):
        compare_mistakes([0, 1], [0], [0, 1])
    with pytest.raises(MinimascopeError, match="integer"):
        compare_mistakes(np.array([0.0, 1.0]), [0, 1], [0, 1])
    with pytest.raises(MinimascopeError, match="outside 0..9"):
        compare_mistakes([0, 10], [0, 1], [0, 1])
    with pytest.raises(MinimascopeError, match="1-D"):
        compare_mistakes(np.zeros((2, 2), dtype=int), [0, 1], [0, 1])
    with pytest.raises(MinimascopeError, match="no test images"):
        compare_mistakes([], [], [])


# ----------------------------------------------------------------------------- figures and files


def synthetic_case(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    a = np.where(rng.random(n) < 0.5, (labels + 1) % 10, labels)
    b = np.where(rng.random(n) < 0.3, (labels + 2) % 10, labels)
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    return compare_mistakes(a, b, labels, label_a="sgd", label_b="adahessian"), images


def test_grid_shows_a_sample_of_at_most_the_limit() -> None:
    result, images = synthetic_case()
    assert len(result.only_a) > 20
    figure = mistake_grid(images, result.only_a, result, "only sgd wrong", limit=20, seed=3)
    assert sum(len(axes.images) for axes in figure.axes) == 20
    assert f"20 of {len(result.only_a)} images, drawn at random (seed 3)" in figure._suptitle.get_text()
    small = mistake_grid(images, result.only_b[:5], result, "only adahessian wrong")
    assert sum(len(axes.images) for axes in small.axes) == 5
    # The first panel shows the first chosen image, pixel for pixel, and names its classes.
    first = small.axes[0]
    assert np.array_equal(first.images[0].get_array(), images[result.only_b[0].index].numpy().transpose(1, 2, 0))
    assert "adahessian: " + result.class_names[result.only_b[0].predicted_b] in first.get_title()


def test_write_and_read_back(tmp_path) -> None:
    result, images = synthetic_case()
    paths = write_mistakes(result, tmp_path, images, limit=16)
    assert [p.name for p in paths] == ["mistakes.json", "mistakes.csv", "only_a.png", "only_b.png"]
    assert read_mistakes(tmp_path) == result
    data = json.loads(paths[0].read_text())
    assert data["format"] == MISTAKES_FORMAT and data["counts"]["both_wrong"] == result.both_wrong
    rows = list(csv.DictReader(paths[1].open()))
    assert [row["class"] for row in rows] == list(result.class_names)
    assert float(rows[3]["error_rate_b"]) == result.per_class[3].error_rate_b
    assert sum(int(row["only_a_wrong"]) for row in rows) == result.only_a_wrong
    for png in paths[2:]:
        with Image.open(png) as image:
            assert image.format == "PNG"


def test_write_without_images_writes_tables_only(tmp_path) -> None:
    result, images = synthetic_case()
    assert [p.name for p in write_mistakes(result, tmp_path)] == ["mistakes.json", "mistakes.csv"]
    with pytest.raises(MinimascopeError, match="199 images for 200 predictions"):
        write_mistakes(result, tmp_path / "other", images[1:])
    assert not (tmp_path / "other").exists()


def test_reader_refuses_other_files(tmp_path) -> None:
    (tmp_path / "mistakes.json").write_text(json.dumps({"format": "minimascope-weights-v1"}))
    with pytest.raises(MinimascopeError, match="not a minimascope-mistakes-v2"):
        read_mistakes(tmp_path)
    (tmp_path / "mistakes.json").write_text(json.dumps({"format": MISTAKES_FORMAT}))
    with pytest.raises(MinimascopeError, match="malformed"):
        read_mistakes(tmp_path)
