"""The study report: claim checks on constructed numbers, the confidence interval, and the page
written from a fake study directory that follows STUDY_FORMAT.md."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from torch import nn

from helpers import ARMS, ISOLATED_LAYER, MEASURE_NAMES, SKIP_REASON, build_fake_study, page_tables, resnet18_layers
from minimascope import models
from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_json
from minimascope.optimizer_effect import SEEDS_CSV, read_seed_statistics
from minimascope.report import claims, figures, filter_figures, write_report
from minimascope.report.page import SECTIONS
from minimascope.report.sections.claims import absent_claims, claim_rows
from minimascope.report.sections.table import pooled_mean_std
from minimascope.report.text import spread
from minimascope.report.views import layer_with_itself
from minimascope.results import load_study, read_similarity
from minimascope.similarity import SimilarityMatrix

DATA = Path(__file__).parent / "data"
# Words the report changed on purpose since the tables in DATA were saved: the study this project
# reproduces is "the paper", never "the seed".
RENAMED = (("the seed's claim", "the paper's claim"), ("(seed: ", "(paper: "), ("seed paper", "paper"),
           ("the seed's literal wording", "the paper's literal wording"))


# ---------------------------------------------------------------- the confidence interval

def test_spread_is_the_student_t_interval_of_the_mean() -> None:
    values = [0.41, 0.45, 0.44, 0.47]
    s = spread(values)
    half = stats.t.ppf(0.975, df=3) * np.std(values, ddof=1) / math.sqrt(4)  # t(0.975, 3) = 3.182
    assert s.n == 4 and s.mean == pytest.approx(0.4425)
    assert (s.low, s.high) == pytest.approx((0.4425 - half, 0.4425 + half), rel=1e-12)
    two = spread([1.0, 2.0])  # t(0.975, 1) = 12.706: two seeds give a wide interval
    assert (two.low, two.high) == pytest.approx((1.5 - 12.7062047 * 0.5, 1.5 + 12.7062047 * 0.5), rel=1e-6)


def test_spread_of_one_seed_has_no_interval() -> None:
    one = spread([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.high)
    assert spread([]).n == 0


# ---------------------------------------------------------------- claim checks: the paired rules on constructed cases

def test_consistent_differences_are_supported_with_the_direction_named() -> None:
    row = claims.pretrained_raises_accuracy(random_init=[0.78, 0.79, 0.785], pretrained=[0.83, 0.842, 0.835],
                                            optimizer="sgd")
    assert row.verdict == claims.SUPPORTED and row.claim.endswith("— sgd")
    assert row.direction == "pretrained higher than random init" and row.variability == "across seeds"
    assert "pretrained higher in 3 of 3 seeds" in row.per_seed and "+0.05" in row.per_seed
    assert "sign-flip p = 0.25 (smallest attainable p 0.25)" in row.p_values  # 2 / 2^3
    assert "paired t p = " in row.p_values and "Cohen's d_z" in row.effect and row.decide == ""
    # the same numbers the other way round: not supported, and the direction says which arm is higher
    reverse = claims.pretrained_raises_accuracy([0.83, 0.842, 0.835], [0.78, 0.79, 0.785], "sgd")
    assert reverse.verdict == claims.NOT_SUPPORTED and reverse.direction == "random init higher than pretrained"


def test_pairing_by_seed_decides_what_unpaired_intervals_cannot() -> None:
    """Seeds differ a lot from each other, the arms of one seed by a steady 0.01: paired, that is decisive."""
    sgd = [0.40, 0.50, 0.60]
    row = claims.normalisation_raises_accuracy(normal=[v + 0.01 for v in sgd], scaled=sgd, optimizer="sgd",
                                               reading="x")
    assert row.verdict == claims.SUPPORTED and "normal higher in 3 of 3 seeds" in row.per_seed


def test_symmetric_noise_is_inconclusive_and_says_what_would_decide() -> None:
    row = claims.pretrained_raises_accuracy(random_init=[0.80, 0.80, 0.80, 0.80],
                                            pretrained=[0.81, 0.79, 0.812, 0.789], optimizer="sgd")
    assert row.verdict == claims.INCONCLUSIVE and "higher in 2 of 4 seeds" in row.per_seed
    assert row.decide.startswith("needs ≥ ") and "seeds at this spread" in row.decide
    one = claims.accuracy_matches([0.78], [0.78])
    assert one.verdict == claims.INCONCLUSIVE and one.decide.startswith("needs ≥ 2 seeds")


def test_accuracy_matches_is_an_equivalence_test() -> None:
    row = claims.accuracy_matches(sgd=[0.780, 0.790, 0.770], adahessian=[0.781, 0.7912, 0.7705])
    assert row.verdict == claims.SUPPORTED and "SGD 78.00%" in row.ours and "within ±0.01" in row.direction
    row = claims.accuracy_matches(sgd=[0.78, 0.781, 0.782], adahessian=[0.70, 0.702, 0.701])
    assert row.verdict == claims.NOT_SUPPORTED and "differ by more than" in row.direction


def step_times(median: float, n: int, seed: int) -> list[float]:
    return (median * (1 + 0.05 * np.random.default_rng(seed).standard_normal(n))).tolist()


def test_adahessian_costs_more_per_step_from_the_steps_of_one_seed() -> None:
    """Thousands of steps decide it with one seed: the variability is that of steps within each run."""
    row = claims.adahessian_costs_more({0: (step_times(0.1, 2000, 0), step_times(0.173, 2000, 1))})
    assert row.verdict == claims.SUPPORTED and row.direction == "AdaHessian costs more per step than SGD"
    assert row.variability == "over steps within each run" and "seed 0: 1.7" in row.ours
    assert "per iteration" in row.claim and "one training step" in row.measured
    assert claims.adahessian_costs_more({0: (step_times(0.17, 500, 2), step_times(0.1, 500, 3))}).verdict \
        == claims.NOT_SUPPORTED
    same = claims.adahessian_costs_more({0: (step_times(0.1, 5, 4), step_times(0.1, 5, 5))})
    assert same.verdict == claims.INCONCLUSIVE and "longer runs" in same.decide


def test_first_layers_more_similar_names_its_measure() -> None:
    falling = [np.linspace(0.9, 0.2, 21) + 0.01 * k for k in range(3)]
    row = claims.first_layers_more_similar(falling, "cka_debiased")
    assert row.verdict == claims.SUPPORTED and "first 7 layers" in row.ours and row.measured.startswith("cka_debiased")
    rising = [d[::-1] for d in falling]
    assert claims.first_layers_more_similar(rising).verdict == claims.NOT_SUPPORTED
    assert "the biased estimator" in claims.first_layers_more_similar(rising, "cka").measured
    assert claims.first_layers_more_similar(falling[:1]).verdict == claims.INCONCLUSIVE


def test_pretrained_reduces_difference() -> None:
    random_init = [np.full(21, 0.5 + 0.01 * k) for k in range(3)]
    pretrained = [np.full(21, 0.8 + 0.02 * k) for k in range(3)]
    assert claims.pretrained_reduces_difference(random_init, pretrained).verdict == claims.SUPPORTED
    assert claims.pretrained_reduces_difference(pretrained, random_init).verdict == claims.NOT_SUPPORTED


def within_matrix(n: int, alone: int | None, level: float) -> np.ndarray:
    matrix = np.full((n, n), 0.6)
    if alone is not None:
        matrix[alone, :] = matrix[:, alone] = level
    np.fill_diagonal(matrix, 1.0)
    return matrix


def test_isolated_layers() -> None:
    layers = [f"l{i}" for i in range(6)]
    seeds = [within_matrix(6, alone=4, level=0.02 + 0.005 * k) for k in range(3)]
    row = claims.isolated_layers({"sgd": (layers, seeds)})
    assert row.verdict == claims.SUPPORTED and "sgd: l4" in row.ours
    connected = [within_matrix(6, alone=None, level=0.0) + 0.01 * k for k in range(3)]
    row = claims.isolated_layers({"sgd": (layers, connected)})
    assert row.verdict == claims.NOT_SUPPORTED and "no layer" in row.ours
    row = claims.isolated_layers({"sgd": (layers, seeds[:1])})
    assert row.verdict == claims.INCONCLUSIVE and row.reason == claims.ONE_SEED and "sgd: l4" in row.ours


def test_largest_other_similarity_ignores_the_diagonal() -> None:
    matrix = np.array([[1.0, 0.2, 0.1], [0.2, 1.0, 0.7], [0.1, 0.7, 1.0]])
    assert claims.largest_other_similarity(matrix) == pytest.approx([0.2, 0.7, 0.7])


EPOCHS = {"adahessian": 160, "adahessian-then-sgd": 200, "sgd": 360, "sgd-then-adahessian": 50}


def test_sgd_cannot_escape_needs_similarity_and_distance() -> None:
    evidence = [claims.EscapeSeed(k, 0.85 + 0.01 * k, 0.30 + 0.01 * k, 1.0 + 0.1 * k, 10.0 + k, 0.02, 0.01)
                for k in range(3)]
    row = claims.sgd_cannot_escape(evidence, EPOCHS, "cka_debiased")
    assert row.verdict == claims.SUPPORTED
    assert "adahessian 160, then sgd 200" in row.ours and "sgd 360, then adahessian 50" in row.ours
    assert "moved 0.1× AdaHessian's own displacement" in row.ours and "barrier 0.02 (chord 0.01)" in row.ours
    assert "similarity: paired t p" in row.p_values and "distance: paired t p" in row.p_values
    # close in similarity but moved as far as AdaHessian itself: not "cannot escape"
    far = [dataclasses.replace(e, moved=2 * e.own) for e in evidence]
    assert claims.sgd_cannot_escape(far, EPOCHS).verdict == claims.NOT_SUPPORTED
    # without the weights analyses, the similarity rule alone
    alone = [dataclasses.replace(e, moved=None) for e in evidence]
    row = claims.sgd_cannot_escape(alone, EPOCHS)
    assert row.verdict == claims.SUPPORTED and "no distance" in row.ours


def test_normalisation_claims() -> None:
    row = claims.normalisation_lowers_train_loss(normal=[0.2, 0.21, 0.19], scaled=[0.5, 0.52, 0.48],
                                                 optimizer="sgd", reading="scaled input")
    assert row.verdict == claims.SUPPORTED and "scaled / normal 2.50×" in row.ours
    assert claims.normalisation_lowers_train_loss([0.5, 0.52, 0.48], [0.2, 0.21, 0.19], "sgd", "x").verdict \
        == claims.NOT_SUPPORTED
    assert claims.normalisation_raises_accuracy([0.73, 0.729, 0.731], [0.64, 0.637, 0.638], "sgd", "x").verdict \
        == claims.SUPPORTED


def test_unavailable_claim_keeps_the_reason() -> None:
    row = claims.ACCURACY_MATCHES.unavailable("sgd: seed 0: skipped: no weights")
    assert row.verdict == claims.INCONCLUSIVE and row.reason == "sgd: seed 0: skipped: no weights"


# ---------------------------------------------------------------- figures

def test_seed_band_skips_seeds_without_a_value() -> None:
    per_seed = np.array([[1.0, 2.0, np.nan], [3.0, np.nan, np.nan], [5.0, 4.0, np.nan]])
    mean, low, high = figures.seed_band(per_seed)
    assert mean[:2].tolist() == [3.0, 3.0] and low[:2].tolist() == [1.0, 2.0] and high[:2].tolist() == [5.0, 4.0]
    assert np.isnan([mean[2], low[2], high[2]]).all()


def test_kernel_mosaics_place_each_kernel() -> None:
    weight = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)  # (out, in, kh, kw)
    mosaic = filter_figures.kernel_mosaic(weight, max_out=2, max_in=2)
    assert mosaic.shape == (2 * 3 - 1, 2 * 3 - 1)
    assert mosaic[3:5, 3:5].tolist() == weight[1, 1].tolist() and np.isnan(mosaic[2]).all()
    rgb = np.zeros((5, 3, 1, 1))
    rgb[1, 0], rgb[2, 2], rgb[3, 1] = 0.2, -0.2, 1.0  # red +scale, blue −scale, green beyond the scale
    patches = filter_figures.colour_mosaic(rgb, scale=0.2)  # 5 kernels in 3 columns, 2 rows
    assert patches.shape == (2 * 2 - 1, 3 * 2 - 1, 3)
    assert patches[0, 0].tolist() == [0.5, 0.5, 0.5] and patches[0, 2].tolist() == [1.0, 0.5, 0.5]
    assert patches[0, 4].tolist() == [0.5, 0.5, 0.0] and patches[2, 0].tolist() == [0.5, 1.0, 0.5]
    assert patches[2, 4].tolist() == [1.0, 1.0, 1.0]  # the empty sixth slot is background


def test_common_scale_and_log_axis_choice() -> None:
    weights = [np.linspace(-1, 1, 101), np.linspace(-3, 3, 101)]
    assert filter_figures.common_scale(weights, quantile=1.0) == 3.0
    assert filter_figures.common_scale([np.zeros(4)]) == 1.0
    assert figures.spans_decades(np.array([0.05, 2.3, np.nan])) and not figures.spans_decades(np.array([0.5, 2.3]))


def test_svg_figures_are_reproducible(tmp_path: Path) -> None:
    curve = figures.Curve("sgd", "#336699", np.arange(1.0, 4.0), np.array([[2.0, 1.0, 0.5], [2.2, 0.9, 0.4]]))
    first = figures.curves_figure([("train loss", [curve])], tmp_path / "a.svg").read_bytes()
    assert first == figures.curves_figure([("train loss", [curve])], tmp_path / "b.svg").read_bytes()
    assert b"<svg" in first[:1000] and b"http://www.w3.org" in first  # the xmlns only, not a fetched resource


@pytest.mark.parametrize("label_length", [8, 40])
def test_shared_legend_fits_the_figure(label_length: int) -> None:
    """Six arms under a two-panel figure (the normalisation curves): long labels take fewer columns
    instead of running off both edges; short ones keep the columns asked for."""
    figure = figures.new_figure(8.4, 4.1)
    axes = figure.subplots(1, 2)
    handles = {f"{i}-{'x' * label_length}"[:label_length]: axes[0].plot([0, 1], [i, i])[0] for i in range(6)}
    figures.shared_legend(figure, handles, fontsize=8, max_columns=4)
    figure.draw_without_rendering()
    (legend,) = figure.legends
    extent = legend.get_window_extent()
    assert 0 <= extent.x0 and extent.x1 <= figure.bbox.width
    columns = {round(text.get_window_extent().x0) for text in legend.get_texts()}
    assert len(columns) == (4 if label_length == 8 else 2)


def test_figure_text_stays_inside_the_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No title, tick, legend entry or colour-bar label is cut off at a figure's edge: the filter
    mosaics' colour bar, the normalisation curves' legend of six long arm names, the heatmaps' layer names."""
    drawn = []
    monkeypatch.setattr(figures, "save", lambda figure, path: drawn.append(figure) or path)
    kernels = {f"arm-{i}": np.random.default_rng(i).normal(0, 0.03, (64, 64, 3, 3)) for i in range(8)}
    filter_figures.filters_figure(kernels, tmp_path / "f.png", scale=0.0866)
    curves = [figures.Curve(f"adahessian-scaled-normalize-{i}", "#336699", np.arange(1.0, 3.0),
                            np.array([[2.0, 1.0 + i], [2.2, 0.9 + i]])) for i in range(6)]
    figures.curves_figure([("train loss", curves), ("test accuracy", curves)], tmp_path / "c.svg", columns=2)
    layers = tuple(name for name, m in models.resnet18().named_modules() if isinstance(m, nn.Conv2d | nn.Linear))
    maps = [figures.Heatmap(f"sgd-then-adahessian vs sgd {i}", np.eye(21), layers, layers) for i in range(7)]
    figures.heatmap_grid(maps, tmp_path / "h.png", value_range=(0.0, 2.0), kind="distance",
                         colour_label="procrustes (distance: lower = more alike)")
    assert len(drawn) == 3
    for figure in drawn:  # the box around everything drawn, in inches, against the figure's own
        drawn_box, (width, height) = figure.get_tightbbox(figure.canvas.get_renderer()), figure.get_size_inches()
        assert -0.01 <= drawn_box.x0 and drawn_box.x1 <= width + 0.01, (drawn_box, width)
        assert -0.01 <= drawn_box.y0 and drawn_box.y1 <= height + 0.01, (drawn_box, height)


# ---------------------------------------------------------------- reading the study

def test_read_similarity_round_trips_to_dict(tmp_path: Path) -> None:
    matrix = SimilarityMatrix("procrustes", "distance", "c", np.arange(6.0).reshape(2, 3) / 3, ("a", "b"),
                              ("x", "y", "z"), 50, "flatten", "A", "B", np.full((2, 3), 1e-3))
    atomic_write_json(tmp_path / "procrustes.json", matrix.to_dict())
    back = read_similarity(tmp_path / "procrustes.json")
    assert back.values.tolist() == matrix.values.tolist() and back.layers_b == ("x", "y", "z")
    assert back.error_bound.tolist() == matrix.error_bound.tolist() and back.kind == "distance"


def test_layer_with_itself_matches_layers_by_name() -> None:
    matrix = SimilarityMatrix("cka", "similarity", "", np.array([[1.0, 2.0], [3.0, 4.0]]), ("a", "b"), ("b", "a"),
                              1, "flatten", "A", "B")
    assert layer_with_itself(matrix)[0] == ("a", "b")
    assert layer_with_itself(matrix)[1].tolist() == [2.0, 3.0]


def test_read_study_refuses_a_folder_without_study_json(tmp_path: Path) -> None:
    with pytest.raises(MinimascopeError, match="not a study directory"):
        write_report(tmp_path)
    (tmp_path / "study.json").write_text('{"format": "something-else"}')
    with pytest.raises(MinimascopeError, match="is not a minimascope-study-v1 file"):
        load_study(tmp_path)


def test_read_study_numbers(fake_study: Path) -> None:
    study = load_study(fake_study)
    assert study.seeds == [0, 1] and list(study.arms) == list(ARMS)
    assert study.run_results[("sgd-pretrained", 0)].status_text == f"skipped: {SKIP_REASON}"
    assert study.run_results[("adahessian-scaled-normalize", 1)].status_text == "diverged at epoch 2"
    assert len(study.values("sgd", "test_accuracy")) == 2 and study.values("sgd-pretrained", "test_accuracy") == []
    assert study.values("adahessian-scaled-normalize", "test_accuracy") == [
        study.run_results[("adahessian-scaled-normalize", 0)].value("test_accuracy")]
    assert study.measures == list(MEASURE_NAMES) and ("sgd", "sgd") in study.pairs()
    assert not study.missing


# ---------------------------------------------------------------- the page

class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.links: list[tuple[str, str]] = []  # (tag, url) of every img src, a href, link href, script src
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self.sections.append(values.get("id") or "")
        for name in ("src", "href"):
            if values.get(name):
                self.links.append((tag, values[name]))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text())
    return parser


def check_page(page: Path) -> PageParser:
    """What any report page must satisfy: every section, relative links to files that exist, nothing remote."""
    parsed = parse_page(page)
    assert parsed.sections == [s.id for s in SECTIONS]
    for tag, url in parsed.links:
        if url.startswith("#"):
            assert url[1:] in parsed.sections
            continue
        assert "://" not in url and not url.startswith(("/", "//")), f"{tag} links to {url}"
        assert (page.parent / url).is_file(), f"{tag} links to missing {url}"
    assert not list(page.parent.glob(".*.tmp"))  # atomic writes leave no temporary files
    return parsed


def test_report_page_structure(report_page: Path) -> None:
    parsed = check_page(report_page)
    text = " ".join(parsed.text)
    images = [url for tag, url in parsed.links if tag == "img"]
    assert sorted(images) == sorted(["curves.svg", "normalisation.svg", "similarity-depth.svg", "similarity-cka.png",
                                     "similarity-cka_debiased.png", "similarity-svcca.png", "similarity-procrustes.png",
                                      "filters-layer3.1.conv1.png",
                                     "filters-conv1.png", "sharpness.svg", "sharpness-density.svg", "connectivity.svg",
                                     "weights.svg", "mistakes-classes.svg", "mistakes-sgd_vs_adahessian-only_a.png",
                                     "mistakes-sgd_vs_adahessian-only_b.png"])
    for image in images:
        data = (report_page.parent / image).read_bytes()
        assert data.startswith(b"\x89PNG") if image.endswith(".png") else b"<svg" in data[:2000]
    assert SKIP_REASON in text  # skipped arms say why, in the study table and where they are missing
    assert "diverged at epoch 2" in text
    for arm in ARMS:
        assert arm in text
    assert "78.29%" in text and "25.48 ± 0.22 s" in text  # the paper's numbers beside ours
    assert "processor Fake CPU" in text and "torch 2.14.1" in text  # the device and versions of study.json
    assert "half of ours" in text and "cumulative singular values" in text  # anatome's conventions


def test_report_table_csv_holds_the_numbers(report_page: Path, fake_study: Path) -> None:
    rows = {row["arm"]: row for row in csv.DictReader((report_page.parent / "table2.csv").open())}
    assert list(rows) == list(ARMS)
    study = load_study(fake_study)
    accuracy = study.values("sgd", "test_accuracy")
    s = spread(accuracy)
    assert float(rows["sgd"]["test_accuracy_mean"]) == pytest.approx(np.mean(accuracy))
    assert float(rows["sgd"]["test_accuracy_ci95_low"]) == pytest.approx(s.low)
    assert rows["sgd"]["test_accuracy_per_seed"] == ";".join(repr(v) for v in accuracy)
    assert rows["sgd"]["paper_test_accuracy"] == "0.7829"
    assert rows["adahessian"]["paper_epoch_time_s"] == "44.02"
    assert rows["sgd-pretrained"]["test_accuracy_mean"] == "" and "skipped" in rows["sgd-pretrained"]["status"]
    times = [float(line.split(",")[8]) for seed in (0, 1)
             for line in (fake_study / f"runs/sgd/seed{seed}/metrics.csv").read_text().splitlines()[1:]]
    assert float(rows["sgd"]["epoch_time_mean_s"]) == pytest.approx(np.mean(times))
    assert float(rows["sgd"]["epoch_time_std_s"]) == pytest.approx(np.std(times, ddof=1), rel=1e-12)


def test_pooled_mean_std_equals_the_std_of_all_values() -> None:
    groups = [np.array([1.0, 2.0, 4.0]), np.array([10.0, 11.0]), np.array([5.0])]
    mean, std = pooled_mean_std([len(g) for g in groups], [g.mean() for g in groups],
                                [g.std(ddof=1) if len(g) > 1 else 0.0 for g in groups])
    everything = np.concatenate(groups)
    assert (mean, std) == pytest.approx((everything.mean(), everything.std(ddof=1)), rel=1e-12)


def test_report_claim_verdicts(fake_study: Path) -> None:
    study = load_study(fake_study)
    rows = {row.claim: row for row in claim_rows(study)}
    accuracy = rows[claims.ACCURACY_MATCHES.claim]  # the page hands the claim check each arm's seeds, paired
    assert accuracy == claims.accuracy_matches(study.values("sgd", "test_accuracy"),
                                               study.values("adahessian", "test_accuracy"))
    cost = rows[claims.ADAHESSIAN_COSTS_MORE.claim]  # from steps.csv: 110 s against 50 s an epoch
    assert cost.verdict == claims.SUPPORTED and cost.variability == "over steps within each run"
    first = rows[claims.FIRST_LAYERS_MORE_SIMILAR.claim]
    assert first.verdict == claims.SUPPORTED and first.measured.startswith("cka_debiased")  # measured: used
    escape = rows[claims.SGD_CANNOT_ESCAPE.claim]
    assert escape.verdict == claims.SUPPORTED and "moved 0.09" in escape.ours and "train-loss barrier" in escape.ours
    assert "adahessian 3, then sgd 3" in escape.ours
    isolated = rows[claims.ISOLATED_LAYERS.claim]
    assert isolated.verdict == claims.SUPPORTED and f"sgd: {ISOLATED_LAYER}" in isolated.ours
    pretrained = rows[claims.PRETRAINED_REDUCES_DIFFERENCE.claim]
    assert pretrained.verdict == claims.INCONCLUSIVE and "skipped run sgd-pretrained" in pretrained.reason
    raised = [row for claim, row in rows.items() if claim.startswith("Starting from ImageNet")]
    assert len(raised) == 2 and all(SKIP_REASON in row.reason and row.ours == "—" for row in raised)
    normalisation = [row for claim, row in rows.items() if claim.startswith("Normalised inputs")]
    assert len(normalisation) == 8  # 2 optimizers × 2 readings × (loss, accuracy)
    assert all(row.verdict == claims.SUPPORTED for row in normalisation if "scaled input" in row.claim)
    diverged = [row for row in normalisation if "adahessian, scaled Normalize" in row.claim]
    assert len(diverged) == 2  # one seed left after the other diverged, and the reason says so
    assert all(row.decide.startswith("needs ≥ 2 seeds") and "seed 1: diverged at epoch 2" in row.reason
               for row in diverged)


def test_claims_without_their_arms_are_not_shown_but_listed(fake_study: Path, tmp_path: Path) -> None:
    root = build_fake_study(tmp_path / "two", arms=("sgd", "adahessian"), pairs=(("sgd", "adahessian"),),
                            skipped=(), diverged={}, weights=False, analyses=False)
    study = load_study(root)
    rows = {row.claim: row for row in claim_rows(study)}
    assert claims.SGD_CANNOT_ESCAPE.claim not in rows and claims.ACCURACY_MATCHES.claim in rows
    [line] = absent_claims(study)
    assert "adahessian-then-sgd" in line and "sgd-pretrained" in line and line.endswith("not shown")


def test_every_p_value_on_the_page_has_its_smallest_attainable_p(report_page: Path) -> None:
    text = " ".join(" ".join(parse_page(report_page).text).split())
    found = list(re.finditer(r"\bp = [0-9.e+-]+", text))
    assert len(found) > 100
    for match in found:
        assert text[match.end():match.end() + 30].startswith(" (smallest attainable p "), text[match.start() - 80:]


def test_banner_says_what_was_run_beside_the_paper(report_page: Path) -> None:
    for section in ("table", "claims"):
        text = section_text(report_page, section)
        assert "Not the paper's setting" in text and "training images 500 50,000" in text
        assert "epochs per arm 3 SGD 360, AdaHessian 160" in text and "images per comparison 500 10,000" in text


def test_cells_one_by_construction_are_not_printed(report_page: Path, fake_study: Path) -> None:
    study = load_study(fake_study)
    svcca = study.pair_comparisons("sgd", "adahessian")[0].matrices["svcca"]
    assert svcca.by_construction[:2, :2].all() and not svcca.by_construction[2:, 2:].any()
    text = section_text(report_page, "similarity")
    assert "1 by construction" in text and "svcca sgd vs adahessian: 4 of 441 cells" in text
    table = next(t for t in page_tables(report_page.read_text()) if t["section"] == "similarity")
    column = table["rows"][0].index("svcca: mean of layer i vs layer i")
    shown = float(next(r for r in table["rows"] if r[0] == "sgd vs adahessian")[column])
    diagonal = np.mean([np.diag(c.matrices["svcca"].values)[2:] for c in study.pair_comparisons("sgd", "adahessian")],
                       axis=0)
    assert shown == pytest.approx(diagonal.mean(), abs=5e-4)  # the mean of the cells that are shown, only


def test_partial_study_lists_what_is_missing(tmp_path: Path) -> None:
    root = build_fake_study(tmp_path / "partial", seeds=(0,), arms=("sgd", "adahessian", "sgd-scaled-input"),
                            pairs=(("sgd", "adahessian"),), skipped=(), diverged={}, weights=False)
    (root / "summary.csv").unlink()
    (root / "analyses/sharpness/sgd/seed0/sharpness.json").unlink()
    (root / "comparisons/sgd_vs_adahessian/seed0/svcca.json").unlink()
    study = json.loads((root / "study.json").read_text())
    study["nodes"][1]["status"], study["nodes"][1]["reason"] = "running", None  # adahessian was training
    atomic_write_json(root / "study.json", study)
    page = write_report(root)
    parsed = check_page(page)
    text = " ".join(parsed.text)
    assert "summary.csv: not found" in text
    assert "comparisons/sgd_vs_adahessian/seed0/svcca.json: not found" in text
    assert "run adahessian seed 0: interrupted" in text  # no process holds the study: it was killed
    assert "runs/sgd/seed0/final.pt" in text  # no weights: the filters section says so
    assert "needs ≥ 2 seeds: one seed says nothing about the spread across seeds" in text
    assert "sharpness sgd seed 0: sharpness result not found: analyses/sharpness/sgd/seed0/sharpness.json" in text
    assert "one seed only (0): nothing to hold a difference against" in text
    assert "No seed statistics" in text and "adahessian 0, 1" not in text


def test_study_with_nothing_finished_yet(tmp_path: Path) -> None:
    """A study that has only just started: every run pending; the page still has every section and says why
    each is empty. Text from the study (an arm's reason) is escaped, not taken as markup."""
    root = build_fake_study(tmp_path / "new", seeds=(0,), arms=("sgd", "adahessian"), pairs=(("sgd", "adahessian"),),
                            skipped=(), diverged={}, weights=False)
    study = json.loads((root / "study.json").read_text())
    for node in study["nodes"]:
        node.update(status="pending", reason=None, final=None)
    study["nodes"][0].update(status="failed", reason="<b>out of memory</b> & more")
    del study["compare"]  # an older study file without the compare settings
    atomic_write_json(root / "study.json", study)
    (root / "summary.csv").unlink()
    parsed = check_page(write_report(root))
    html = (root / "report" / "index.html").read_text()
    assert not [url for tag, url in parsed.links if tag == "img"]
    assert "&lt;b&gt;out of memory&lt;/b&gt; &amp; more" in html and "<b>out of memory" not in html
    text = " ".join(parsed.text)
    assert "run adahessian seed 0: pending" in text and "no completed comparison in this study" in text
    assert "No curves to draw yet." in text and "No final weights to draw yet." in text
    for kind in ("sharpness", "weights"):
        assert f"{kind} sgd seed 0: pending" in text
    for kind in ("connectivity", "mistakes"):
        assert f"{kind} sgd vs adahessian seed 0: pending" in text
    assert "No sharpness results yet." in text and "No mistake comparisons yet." in text


def test_measures_are_found_without_the_compare_settings(fake_study: Path, tmp_path: Path) -> None:
    record = json.loads((fake_study / "study.json").read_text())
    del record["compare"]
    root = tmp_path / "copy"
    root.mkdir()
    atomic_write_json(root / "study.json", record)
    shutil.copytree(fake_study / "comparisons", root / "comparisons")  # a link outside the study is not read
    study = load_study(root)
    assert sorted(study.measures) == sorted(MEASURE_NAMES)
    assert study.pair_comparisons("sgd", "adahessian")[0].matrices["cka"].n_samples == 500


# ---------------------------------------------------------------- the minima: sharpness, paths, weights, mistakes

def section_text(page: Path, section: str) -> str:
    html = page.read_text()
    start = html.index(f'<section id="{section}">')
    parser = PageParser()
    parser.feed(html[start:html.index("</section>", start)])
    return " ".join(" ".join(parser.text).split())


def test_sharpness_section_states_images_and_numbers(report_page: Path) -> None:
    text = section_text(report_page, "sharpness")
    assert "100 CIFAR-10 train images" in text and "eval mode" in text
    assert "40, 44" in text and "400, 440" in text  # λ1 of each seed of sgd and adahessian
    assert "120, 132" in text  # their traces (3 λ1)
    assert "0.44 (40 probes) 0.333" in text  # λ1 / trace = 1/3 for every seed
    assert "D·H·D" in text and "0.4, 0.44" in text  # the |w|-scaled λ1 beside the raw one
    assert "Not at a minimum: the loss at the evaluated weights is above 0.1 for adahessian seed 0: loss 0.3" in text
    assert "sgd seed 0: loss" not in text  # sgd's loss, 0.05, is near 0
    assert "sharpness sgd-pretrained seed 0: skipped (depends on skipped run sgd-pretrained seed 0)" in text


def test_connectivity_section_holds_each_variants_barrier(report_page: Path) -> None:
    text = section_text(report_page, "connectivity")
    assert "100 train and 100 test images, 3 points" in text
    # train loss barrier of a path (0.1, 0.1 + 2 h, 0.2) is 2 h - 0.05; h = 1 and 1.1 over the seeds: mean 2.05
    assert "sgd vs adahessian interpolate 2 2.05" in text and "recompute+matched 2 0.16" in text
    # the chord barrier beside it (here the same: the path's peak is at its middle) and the largest standard error
    assert "chord" in text and "Entezari" in text and "train loss 0.02, test error 0.02" in text
    assert "adahessian-then-sgd vs adahessian" in text


def test_weights_section_and_its_csv(report_page: Path) -> None:
    text = section_text(report_page, "weights")
    assert "|w| below 0.001" in text and "no images" in text
    rows = list(csv.DictReader((report_page.parent / "weights.csv").open()))
    assert {(r["arm"], r["seed"]) for r in rows} == {(a, str(s)) for a in ("sgd", "adahessian", "adahessian-then-sgd")
                                                              for s in (0, 1)}
    # final = 1.5 × initial for adahessian's fake layers: relative distance exactly 0.5
    assert all(float(r["relative_distance_from_init"]) == pytest.approx(0.5) for r in rows if r["arm"] == "adahessian")


def test_mistakes_section_counts(report_page: Path) -> None:
    text = section_text(report_page, "mistakes")
    assert "200 CIFAR-10 test images" in text
    # 40 shared hard images and 20 of each arm's own (some of which coincide): 60 errors each
    for row in ("sgd vs adahessian 0 200 60 60", "sgd vs adahessian 1 200 60 60"):
        assert row in text
    assert "only sgd gets wrong" in text
    assert "on these networks" in text  # McNemar's test of 19 against 19 discordant images: p = 1
    assert "p = 1 (smallest attainable p 7.28e-12)" in text


def test_seed_statistics_hold_the_optimizers_against_seeds(report_page: Path, fake_study: Path) -> None:
    result = read_seed_statistics(fake_study / "analyses/seeds/sgd_vs_adahessian")
    tests = result.tests
    assert len(tests) == len(MEASURE_NAMES) * len(resnet18_layers())
    # two within values (sgd's and adahessian's seed pair) against two across values (seeds 0 and 1), the
    # across ones less alike at every layer: of the C(4, 2) = 6 arrangements only the observed is as extreme
    assert all(t.within.n == 2 and t.across.n == 2 and t.test.p_value == pytest.approx(1 / 6) for t in tests)
    assert all((t.test.statistic < 0) == (t.kind == "similarity") for t in tests)
    text = section_text(report_page, "seeds")
    assert f"0 of {len(tests)} tests with Holm-adjusted p < 0.05" in text
    assert "p = 0.167 (smallest attainable p 0.167)" in text  # every p with the least its test can give
    # λ1: sgd 40, 44 against adahessian 400, 440: two-sided, the observed split and its mirror of 6 arrangements
    assert ("top eigenvalue λ1 42 [16.59, 67.41] 420 [165.9, 674.1] first − second per seed: -360, -396; first higher "
            "in 0 of 2 seeds not supported adahessian higher than sgd") in text
    assert "sign-flip p = 0.5 (smallest attainable p 0.5)" in text and "across seeds" in text
    # the cost per step from each run's steps.csv: 110 s against 50 s an epoch, 60 steps per run
    assert "seed 0: 2.19× [2.12, 2.27] (60 and 60 steps)" in text and "over steps within each run" in text
    assert "barrier: no connectivity between two seeds of one arm" in text
    # the report links a copy of the analysis's CSV, so its folder stays self-contained
    copy = report_page.parent / "seeds-sgd_vs_adahessian.csv"
    assert copy.read_bytes() == (fake_study / "analyses/seeds/sgd_vs_adahessian" / SEEDS_CSV).read_bytes()


# ---------------------------------------------------------------- the same tables as before the report was split

def renamed(tables: list[dict]) -> list[dict]:
    def words(cell: str) -> str:
        for old, new in RENAMED:
            cell = cell.replace(old, new)
        return cell

    return [{**table, "rows": [[words(cell) for cell in row] for row in table["rows"]]} for table in tables]


def measures_in_any_order(tables: list[dict]) -> list[dict]:
    """The seeds analysis lists a comparison's measures in the order its comparison.json gives, else by name;
    the fake study's comparisons have none (no writer of that file apart from compare's run), so there the rows
    of each measure and layer come by measure name: compared as a set below the header."""
    return [{**t, "rows": t["rows"][:1] + sorted(t["rows"][1:])} if t["rows"][0][0] == "measure" else t
            for t in tables]


def test_fake_study_tables_are_unchanged(report_page: Path) -> None:
    """Every table of the fake study's page, cell by cell, as the report before its split into sections showed it."""
    saved = json.loads((DATA / "report-tables-fake.json").read_text())
    assert measures_in_any_order(page_tables(report_page.read_text())) == measures_in_any_order(renamed(saved))


# What differs from one run of a real study to the next: clock times, durations, and the cost claim built on them.
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT[\d:.+-]+")
DURATION = re.compile(r"\d+(\.\d+)?( ± \d+(\.\d+)?)? ?(s|ms|min|h)\b|\d+\.\d+×")


def without_times(tables: list[dict]) -> list[dict]:
    def cell(text: str) -> str:
        return DURATION.sub("#", TIMESTAMP.sub("#", text))

    def row(cells: list[str]) -> list[str]:
        if cells and cells[0].startswith("AdaHessian costs more per step"):
            return cells[:2] + ["#"] * (len(cells) - 2)
        return [cell(c) for c in cells]

    return [{**t, "rows": [row(r) for r in t["rows"]]} for t in tables]


# What differs from one machine to the next: where the data lie, the device and versions, and the last digits of
# every trained number (another CPU's kernels sum in another order). The fake study's test holds the numbers.
MACHINE_ROWS = ("data", "device", "versions", "total time")
NUMBER = re.compile(r"[-+]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?")


def without_machine(tables: list[dict]) -> list[dict]:
    def row(cells: list[str]) -> list[str]:
        if cells and cells[0] in MACHINE_ROWS:
            return cells[:1] + ["#"] * (len(cells) - 1)
        # a number in the report shows 4 significant digits: whether a point shows (1234 or 123.4) is the value's
        return [re.sub(r"#(\.#)+", "#", NUMBER.sub("#", c)) for c in cells]

    return [{**t, "rows": [row(r) for r in t["rows"]]} for t in without_times(tables)]


@pytest.mark.slow
def test_tiny_study_tables_are_unchanged(tiny_study: Path) -> None:
    """The tiny preset run end to end: every table as the report before its split showed it, its rows, labels
    and words, on any machine (numbers, times and machine facts aside)."""
    saved = json.loads((DATA / "report-tables-tiny.json").read_text())
    page = write_report(tiny_study)
    assert without_machine(page_tables(page.read_text())) == without_machine(renamed(saved))


def test_two_seeds_of_one_arm_are_a_connectivity_and_mistakes_pair(fake_study: Path, tmp_path: Path) -> None:
    """The seed-to-seed baseline: a path and the shared mistakes between seed 0 and seed 1 of sgd, read as a pair
    whose second network has another seed, labelled so on the page and in the frames."""
    import shutil

    from helpers import TEST_IMAGES, fake_connectivity, fake_predictions
    from minimascope.minima.connectivity import write_connectivity
    from minimascope.minima.mistakes import compare_mistakes, write_mistakes

    study_dir = tmp_path / "study"
    shutil.copytree(fake_study, study_dir, ignore=shutil.ignore_patterns("report"))
    record = json.loads((study_dir / "study.json").read_text())
    labels = np.arange(TEST_IMAGES) % 10
    for kind in ("connectivity", "mistakes"):
        relative = f"analyses/{kind}/sgd_vs_sgd/seed0-seed1"
        record["nodes"].append({"id": f"{kind}:sgd:sgd:seed0-seed1", "kind": kind, "arms": ["sgd", "sgd"],
                                "seeds": [0, 1], "path": relative, "status": "completed", "reason": None,
                                "key": kind, "depends_on": ["run:sgd:seed0", "run:sgd:seed1"]})
        if kind == "connectivity":
            write_connectivity(fake_connectivity(("sgd", "sgd"), 0), study_dir / relative)
        else:
            write_mistakes(compare_mistakes(fake_predictions("sgd", 0, labels), fake_predictions("sgd", 1, labels),
                                            labels, label_a="sgd seed 0", label_b="sgd seed 1"), study_dir / relative)
    atomic_write_json(study_dir / "study.json", record)
    study = load_study(study_dir)
    (path_between_seeds,) = [a for a in study.completed_analyses("connectivity") if a.arms == ("sgd", "sgd")]
    assert (path_between_seeds.seed, path_between_seeds.seed_b, path_between_seeds.seed_text) == (0, 1, "0–1")
    frame = study.connectivity
    assert set(frame[(frame.arm_a == "sgd") & (frame.arm_b == "sgd")].seed_b) == {1}
    assert (frame[frame.arm_a != frame.arm_b].seed == frame[frame.arm_a != frame.arm_b].seed_b).all()
    mistakes = study.mistakes.set_index(["arm_a", "arm_b", "seed", "seed_b"])
    assert mistakes.loc[("sgd", "sgd", 0, 1)].n == TEST_IMAGES
    tables = page_tables(write_report(study_dir).read_text())
    connectivity_rows = [r for t in tables if t["section"] == "connectivity" for r in t["rows"]]
    assert any(r[0] == "sgd: two seeds" for r in connectivity_rows)
    mistake_rows = [r for t in tables if t["section"] == "mistakes" for r in t["rows"]]
    assert ["sgd: two seeds", "0–1"] in [r[:2] for r in mistake_rows]
