"""The study report: claim checks on constructed numbers, the confidence interval, and the page
written from a fake study directory that follows STUDY_FORMAT.md."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from minimascope import models
from minimascope.errors import MinimascopeError
from minimascope.io import atomic_torch_save, atomic_write_json, atomic_write_text
from minimascope.minima.connectivity import Connectivity, PathCurve, write_connectivity
from minimascope.minima.mistakes import compare_mistakes, write_mistakes
from minimascope.minima.sharpness import Density, Sharpness, TopEigenvalues, TraceEstimate, write_sharpness
from minimascope.minima.weights import layer_statistics, write_weight_statistics
from minimascope.report import claims, figures, write_report
from minimascope.report.page import SECTIONS, layer_with_itself, pooled_mean_std
from minimascope.results import read_similarity, read_study
from minimascope.runs import METRIC_COLUMNS, RUN_FORMAT
from minimascope.similarity import MEASURES, SimilarityMatrix

# ---------------------------------------------------------------- a fake study directory

ARMS = ("sgd", "adahessian", "sgd-pretrained", "adahessian-pretrained", "adahessian-then-sgd", "sgd-then-adahessian",
        "sgd-scaled-input", "sgd-scaled-normalize", "adahessian-scaled-input", "adahessian-scaled-normalize")
SKIP_REASON = "no ImageNet weights: torchvision could not fetch IMAGENET1K_V1 (offline); pass --weights FILE"
# Final test accuracy, final train loss and seconds per epoch of each arm (seeds add a small, seeded jitter).
FINAL = {"sgd": (0.450, 0.20, 50.0), "adahessian": (0.452, 0.22, 110.0), "sgd-pretrained": (0.60, 0.10, 50.0),
         "adahessian-pretrained": (0.58, 0.12, 110.0), "adahessian-then-sgd": (0.47, 0.18, 50.0),
         "sgd-then-adahessian": (0.46, 0.19, 110.0), "sgd-scaled-input": (0.30, 0.90, 50.0),
         "sgd-scaled-normalize": (0.25, 1.10, 50.0), "adahessian-scaled-input": (0.28, 0.95, 110.0),
         "adahessian-scaled-normalize": (0.20, 1.30, 110.0)}
PAIRS = (("sgd", "adahessian"), ("adahessian-then-sgd", "adahessian"), ("sgd-then-adahessian", "sgd"),
         ("sgd-pretrained", "adahessian-pretrained"), ("sgd", "sgd-scaled-input"), ("sgd", "sgd"),
         ("adahessian", "adahessian"))
ISOLATED_LAYER = "layer4.1.conv1"
MEASURE_NAMES = ("cka", "svcca", "procrustes")
# The minima analyses: per run for these arms, per pair for these pairs (sgd-pretrained is skipped: its nodes say why).
ANALYSIS_ARMS = ("sgd", "adahessian", "sgd-pretrained")
ANALYSIS_PAIRS = (("sgd", "adahessian"),)
SEED_ARMS = ("sgd", "adahessian")  # cross-seed comparisons (seed i against seed j of one arm)
TOP_EIGENVALUE = {"sgd": 40.0, "adahessian": 400.0}  # per seed: × (1 + 0.1 seed)
TEST_IMAGES = 200


def resnet18_layers() -> list[str]:
    """The 21 Conv2d and Linear layers of resnet18 in forward order (what `compare` uses by default)."""
    model = models.build_model("resnet18", seed=0)
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def arm_config(arm: str) -> dict:
    optimizer = {"adahessian-then-sgd": "sgd", "sgd-then-adahessian": "adahessian"}.get(arm, arm.split("-")[0])
    multiplier = [1e-4, 1.0, 1000.0] if arm.endswith("scaled-input") else \
        [1e4, 1.0, 1e-3] if arm.endswith("scaled-normalize") else [1.0, 1.0, 1.0]
    init_from = {"adahessian-then-sgd": "adahessian", "sgd-then-adahessian": "sgd"}.get(arm)
    return {"optimizer": optimizer, "arch": "resnet18", "epochs": 3, "batch_size": 256,
            "lr": 0.15 if optimizer == "adahessian" else 0.01, "pretrained": arm.endswith("-pretrained"),
            "init_from": init_from, "std_multiplier": multiplier, "train_subset": 500, "seed": 0}


def _jitter(arm: str, seed: int, scale: float) -> float:
    return scale * float(np.random.default_rng([ARMS.index(arm) if arm in ARMS else 99, seed]).uniform(-1, 1))


def _profile(pair: tuple[str, str], n: int) -> np.ndarray:
    """Layer i with layer i along the depth, by design: the optimizers part ways with depth,
    SGD from AdaHessian's minimum stays close, AdaHessian from SGD's moves away, two seeds of
    one arm stay closer than the optimizers everywhere."""
    depth = np.linspace(0.0, 1.0, n)
    if pair == ("seed i", "seed j"):
        return 0.95 - 0.1 * depth
    if pair == ("sgd", "adahessian"):
        return 0.9 - 0.7 * depth
    if pair == ("adahessian-then-sgd", "adahessian"):
        return np.full(n, 0.85)
    if pair == ("sgd-then-adahessian", "sgd"):
        return np.full(n, 0.35)
    return 0.8 - 0.3 * depth


def similarity_values(pair: tuple[str, str], seed: int, layers: list[str], measure: str) -> np.ndarray:
    n = len(layers)
    distance = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    if pair[0] == pair[1]:  # within one network: 1 with itself, fading with distance, one layer alone
        cka = 0.9 * np.exp(-distance / 3.0)
        alone = layers.index(ISOLATED_LAYER)
        cka[alone, :] = cka[:, alone] = 0.02 + 0.01 * seed
        np.fill_diagonal(cka, 1.0)
    else:
        diagonal = _profile(pair, n) + 0.01 * seed
        cka = np.sqrt(np.outer(diagonal, diagonal)) * np.exp(-distance / 3.0)
    cka = np.clip(cka, 0.0, 1.0)
    if measure == "procrustes":
        return 2.0 * (1.0 - np.sqrt(cka))
    return cka ** 0.8 if measure == "svcca" else cka


def _metrics_text(arm: str, seed: int, epochs: int, diverged_at: int | None) -> str:
    accuracy, loss, epoch_s = FINAL[arm]
    lines = [",".join(METRIC_COLUMNS)]
    last = epochs if diverged_at is None else diverged_at - 1
    for epoch in range(1, last + 1):
        fade = (epochs - epoch) / max(epochs - 1, 1)  # 1 at the first epoch, 0 at the last
        train_loss = (loss + _jitter(arm, seed, 0.005)) * (20.0 ** fade)  # spans decades: log axis
        test_accuracy = (accuracy + _jitter(arm, seed, 0.003)) * (1 - 0.5 * fade)
        time_s = epoch_s + _jitter(arm, seed + epoch, 0.5)
        lines.append(f"{epoch},0.01,{train_loss!r},{1 - train_loss / 3:.4f},,,{train_loss * 1.3!r},"
                     f"{test_accuracy!r},{time_s!r},{time_s / 20!r},0.001,1.0")
    return "\n".join(lines) + "\n"


def build_fake_study(root: Path, *, seeds: tuple[int, ...] = (0, 1), epochs: int = 3,
                     arms: tuple[str, ...] = ARMS, pairs: tuple[tuple[str, str], ...] = PAIRS,
                     skipped: tuple[str, ...] = ("sgd-pretrained", "adahessian-pretrained"),
                     diverged: dict[tuple[str, int], int] | None = None, weights: bool = True,
                     analyses: bool = True) -> Path:
    """A study directory as STUDY_FORMAT.md describes it, with made-up numbers chosen so that
    some claims hold and some do not (see FINAL, _profile, ISOLATED_LAYER), real resnet18
    ``final.pt`` files (seed 0 of each arm; other seeds hard-link it: the report reads one seed)
    and comparison JSONs written by SimilarityMatrix.to_dict()."""
    diverged = {("adahessian-scaled-normalize", 1): 2} if diverged is None else diverged
    root.mkdir(parents=True, exist_ok=True)
    layers = resnet18_layers()
    nodes, summary = [], []
    summary_columns = ["arm", "seed", "optimizer", "init", "std_multiplier", "epochs", "status", "test_accuracy",
                       "test_loss", "train_loss", "train_accuracy", "epoch_time_mean_s", "epoch_time_std_s",
                       "step_time_mean_s"]
    for a_index, arm in enumerate(arms):
        config = arm_config(arm)
        config["epochs"] = epochs
        for seed in seeds:
            path = root / "runs" / arm / f"seed{seed}"
            status = "skipped" if arm in skipped else "diverged" if (arm, seed) in diverged else "completed"
            node = {"id": f"run:{arm}:seed{seed}", "kind": "run", "arm": arm, "seed": seed, "key": f"k{a_index}{seed}",
                    "depends_on": [f"run:{config['init_from']}:seed{seed}"] if config["init_from"] else [],
                    "path": f"runs/{arm}/seed{seed}", "status": status,
                    "reason": SKIP_REASON if status == "skipped" else None,
                    "diverged_epoch": diverged.get((arm, seed)), "time_s": 3.0 * epochs}
            row = {"arm": arm, "seed": seed, "optimizer": config["optimizer"],
                   "init": "imagenet" if config["pretrained"] else f"run:{config['init_from']}" if config["init_from"]
                   else "random", "std_multiplier": ";".join(f"{m:g}" for m in config["std_multiplier"]),
                   "epochs": epochs, "status": status}
            if status != "skipped":
                path.mkdir(parents=True, exist_ok=True)
                metrics = _metrics_text(arm, seed, epochs, diverged.get((arm, seed)))
                atomic_write_text(path / "metrics.csv", metrics)
                last = metrics.strip().splitlines()[-1].split(",")
                times = [float(line.split(",")[8]) for line in metrics.strip().splitlines()[1:]]
                final = {"test_accuracy": float(last[7]), "test_loss": float(last[6]), "train_loss": float(last[2]),
                         "train_accuracy": float(last[3]), "val_accuracy": None, "val_loss": None}
                std = float(np.std(times, ddof=1)) if len(times) > 1 else 0.0
                record = {"format": RUN_FORMAT, "status": status, "config": {**config, "seed": seed}, "final": final,
                          "time_per_epoch_s": {"mean": float(np.mean(times)), "std": std}}
                if status == "completed":
                    node["final"] = final
                    row.update({k: final[k] for k in ("test_accuracy", "test_loss", "train_loss", "train_accuracy")})
                    row.update(epoch_time_mean_s=float(np.mean(times)), epoch_time_std_s=std,
                               step_time_mean_s=float(np.mean(times)) / 20)
                    if weights:
                        first = root / "runs" / arm / f"seed{seeds[0]}" / "final.pt"
                        if seed == seeds[0]:
                            model = models.build_model("resnet18", seed=a_index)
                            atomic_torch_save(path / "final.pt", models.weights_payload(
                                model, "resnet18", 10, {"std_multiplier": config["std_multiplier"]}))
                        else:
                            os.link(first, path / "final.pt")
                else:
                    record["diverged_epoch"] = diverged[(arm, seed)]
                atomic_write_json(path / "run.json", record)
            nodes.append(node)
            summary.append(row)
    for arm_a, arm_b in pairs:
        for seed in seeds:
            relative = f"comparisons/{arm_a}_vs_{arm_b}/seed{seed}"
            blocked = [a for a in (arm_a, arm_b) if a in skipped]
            node = {"id": f"compare:{arm_a}:{arm_b}:seed{seed}", "kind": "compare", "arms": [arm_a, arm_b],
                    "seed": seed, "key": f"c{seed}", "path": relative,
                    "depends_on": [f"run:{arm_a}:seed{seed}", f"run:{arm_b}:seed{seed}"],
                    "status": "skipped" if blocked else "completed",
                    "reason": f"depends on skipped run {blocked[0]} seed {seed}" if blocked else None, "time_s": 2.0}
            nodes.append(node)
            if blocked:
                continue
            for measure in MEASURE_NAMES:
                spec = MEASURES[measure]
                matrix = SimilarityMatrix(measure, spec.kind, spec.convention,
                                          similarity_values((arm_a, arm_b), seed, layers, measure), tuple(layers),
                                          tuple(layers), 500, "flatten", arm_a, arm_b)
                atomic_write_json(root / relative / f"{measure}.json", matrix.to_dict())
    if analyses:
        nodes += write_fake_analyses(root, seeds, arms, skipped, layers)
    study = {
        "format": "minimascope-study-v1", "name": "fake", "source": "preset:fake",
        "created": "2026-11-28T10:00:00+00:00", "updated": "2026-11-28T10:20:00+00:00", "wall_time_s": 1234.5,
        "data": {"source": "/data/cifar10-images.tar.gz", "key": "abc123", "train_size": 500, "test_size": 500},
        "versions": {"minimascope": "0.1.0", "torch": "2.14.1"},  # env.environment()'s fields, as the study writes
        "device": {"type": "cpu", "threads": 2, "processor": "Fake CPU"},
        "seeds": list(seeds), "arms": {arm: {**arm_config(arm), "epochs": epochs} for arm in arms},
        "compare": {"measures": list(MEASURE_NAMES), "samples": 500, "pairs": "listed", "within": True},
        "nodes": nodes,
    }
    atomic_write_json(root / "study.json", study)
    lines = [",".join(summary_columns)] + [",".join("" if row.get(c) is None else str(row[c]) for c in summary_columns)
                                          for row in summary]
    atomic_write_text(root / "summary.csv", "\n".join(lines) + "\n")
    return root


def fake_sharpness(arm: str, seed: int) -> Sharpness:
    top = TOP_EIGENVALUE[arm] * (1 + 0.1 * seed)
    eigenvalues = TopEigenvalues([top, top / 2, top / 4], 30, True)
    density = Density([-1.0, 0.0, 0.01, top / 4, top], [0.05, 0.6, 0.3, 0.04, 0.01], 5, 1)
    settings = {"images": "train", "n_images": 100, "subset": "class-balanced, seed 0"}
    return Sharpness(eigenvalues, TraceEstimate(3 * top, 0.01 * top, 40, True), density, 100, 1000, 0, settings)


def fake_weight_state(arm: str, seed: int, moved: float) -> dict:
    generator = torch.Generator().manual_seed(10 * ARMS.index(arm) + seed)
    return {"conv1.weight": torch.randn(8, 3, 3, 3, generator=generator) * (1 + moved),
            "bn1.weight": torch.ones(8), "fc.weight": torch.randn(10, 8, generator=generator) * (1 + moved),
            "fc.bias": torch.zeros(10)}


def fake_connectivity(pair: tuple[str, str], seed: int) -> Connectivity:
    alphas = [0.0, 0.5, 1.0]
    hill = 1.0 + 0.1 * seed
    curves = [PathCurve(variant, [0.1, 0.1 + height * hill, 0.2], [0.02, 0.02 + height * hill / 4, 0.04],
                        [0.9, 0.9 + height * hill, 1.0], [0.3, 0.3 + height * hill / 4, 0.32])
              for variant, height in (("interpolate", 2.0), ("recompute", 1.0), ("recompute+matched", 0.2))]
    return Connectivity(alphas, curves, 100, 100, pair, {"points": 3, "images": "class-balanced subsets"})


def fake_predictions(arm: str, seed: int, labels: np.ndarray) -> np.ndarray:
    """Wrong on a shared hard set (the first 40 images) and on a few of the arm's own."""
    predicted = labels.copy()
    hard = np.arange(40)
    own = np.random.default_rng([ARMS.index(arm), seed]).choice(np.arange(40, TEST_IMAGES), 20, replace=False)
    for index in np.concatenate([hard, own]):
        predicted[index] = (labels[index] + 1) % 10
    return predicted


def write_fake_analyses(root: Path, seeds: tuple[int, ...], arms: tuple[str, ...], skipped: tuple[str, ...],
                        layers: list[str]) -> list[dict]:
    """Result files of the minima analyses, written by their own writers, and their study.json nodes."""
    nodes = []
    labels = np.arange(TEST_IMAGES) % 10
    images = np.random.default_rng(0).integers(0, 256, (TEST_IMAGES, 3, 32, 32), dtype=np.uint8)
    studied = arms
    for kind, groups in (("sharpness", [(a,) for a in ANALYSIS_ARMS]), ("weights", [(a,) for a in ANALYSIS_ARMS]),
                         ("connectivity", ANALYSIS_PAIRS), ("mistakes", ANALYSIS_PAIRS)):
        for arms in (g for g in groups if set(g) <= set(studied)):
            for seed in seeds:
                relative = f"analyses/{kind}/{'_vs_'.join(arms)}/seed{seed}"
                blocked = [a for a in arms if a in skipped]
                node = {"id": f"{kind}:{':'.join(arms)}:seed{seed}", "kind": kind, "seed": seed, "path": relative,
                        "depends_on": [f"run:{a}:seed{seed}" for a in arms], "key": f"{kind}{seed}",
                        "status": "skipped" if blocked else "completed",
                        "reason": f"depends on skipped run {blocked[0]} seed {seed}" if blocked else None,
                        **({"arm": arms[0]} if len(arms) == 1 else {"arms": list(arms)})}
                nodes.append(node)
                if blocked:
                    continue
                out = root / relative
                if kind == "sharpness":
                    write_sharpness(fake_sharpness(arms[0], seed), out)
                elif kind == "weights":
                    moved = 0.5 if arms[0] == "adahessian" else 0.1
                    write_weight_statistics(layer_statistics(
                        fake_weight_state(arms[0], seed, moved), fake_weight_state(arms[0], seed, 0.0),
                        label=f"{arms[0]} seed {seed}"), out)
                elif kind == "connectivity":
                    write_connectivity(fake_connectivity(arms, seed), out)
                else:
                    write_mistakes(compare_mistakes(fake_predictions(arms[0], seed, labels),
                                                    fake_predictions(arms[1], seed, labels), labels,
                                                    label_a=arms[0], label_b=arms[1]), out, images, limit=8)
    for arm in (a for a in SEED_ARMS if a in studied):
        for i, j in itertools.combinations(seeds, 2):
            relative = f"comparisons/{arm}_vs_{arm}/seed{i}-seed{j}"
            nodes.append({"id": f"compare:{arm}:{arm}:seed{i}-seed{j}", "kind": "compare", "arms": [arm, arm],
                          "seeds": [i, j], "key": f"s{i}{j}", "path": relative, "status": "completed",
                          "reason": None, "depends_on": [f"run:{arm}:seed{i}", f"run:{arm}:seed{j}"]})
            for measure in MEASURE_NAMES:
                spec = MEASURES[measure]
                matrix = SimilarityMatrix(measure, spec.kind, spec.convention,
                                          similarity_values(("seed i", "seed j"), 0, layers, measure), tuple(layers),
                                          tuple(layers), 500, "flatten", f"{arm} seed {i}", f"{arm} seed {j}")
                atomic_write_json(root / relative / f"{measure}.json", matrix.to_dict())
    return nodes


_SESSION: dict[str, Path] = {}  # tests/test_report_browser.py imports these fixtures: build and write once


@pytest.fixture(scope="session")
def fake_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "study" not in _SESSION:
        _SESSION["study"] = build_fake_study(tmp_path_factory.mktemp("study") / "fake")
    return _SESSION["study"]


@pytest.fixture(scope="session")
def report_page(fake_study: Path) -> Path:
    if "page" not in _SESSION:
        _SESSION["page"] = write_report(fake_study)
    return _SESSION["page"]


# ---------------------------------------------------------------- the confidence interval

def test_spread_is_the_student_t_interval_of_the_mean() -> None:
    values = [0.41, 0.45, 0.44, 0.47]
    s = claims.spread(values)
    half = stats.t.ppf(0.975, df=3) * np.std(values, ddof=1) / math.sqrt(4)  # t(0.975, 3) = 3.182
    assert s.n == 4 and s.mean == pytest.approx(0.4425)
    assert (s.low, s.high) == pytest.approx((0.4425 - half, 0.4425 + half), rel=1e-12)
    two = claims.spread([1.0, 2.0])  # t(0.975, 1) = 12.706: two seeds give a wide interval
    assert (two.low, two.high) == pytest.approx((1.5 - 12.7062047 * 0.5, 1.5 + 12.7062047 * 0.5), rel=1e-6)


def test_spread_of_one_seed_has_no_interval() -> None:
    one = claims.spread([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.high)
    assert claims.spread([]).n == 0


def test_difference_interval_is_every_difference_both_intervals_allow() -> None:
    a, b = claims.spread([0.9, 1.0, 1.1]), claims.spread([0.5, 0.5, 0.5])
    half = stats.t.ppf(0.975, df=2) * 0.1 / math.sqrt(3)
    assert claims.difference_interval(a, b) == pytest.approx((0.5 - half, 0.5 + half))


# ---------------------------------------------------------------- claim checks

def test_judge_higher_needs_the_difference_beyond_the_spread() -> None:
    assert claims.judge_higher([5.0, 5.1, 4.9], [1.0, 1.1, 0.9], "a", "b")[0] == claims.SUPPORTED
    assert claims.judge_higher([1.0, 1.1, 0.9], [5.0, 5.1, 4.9], "a", "b")[0] == claims.NOT_SUPPORTED
    verdict, reason = claims.judge_higher([1.0, 3.0], [1.5, 1.7], "a", "b")  # higher mean, within the spread
    assert verdict == claims.INCONCLUSIVE and "within the seed-to-seed spread" in reason
    assert claims.judge_higher([5.0], [1.0], "a", "b") == (claims.INCONCLUSIVE, claims.ONE_SEED)
    assert claims.judge_higher([], [1.0, 2.0], "a", "b")[1] == "no completed runs: a"


def test_judge_about_equal_with_tolerance() -> None:
    assert claims.judge_about_equal([0.500, 0.501, 0.502], [0.501, 0.502, 0.503], 0.01, "a", "b")[0] == claims.SUPPORTED
    assert claims.judge_about_equal([0.50, 0.501, 0.502], [0.60, 0.601, 0.602], 0.01, "a", "b")[0] \
        == claims.NOT_SUPPORTED
    assert claims.judge_about_equal([0.50, 0.52], [0.51, 0.50], 0.01, "a", "b")[0] == claims.INCONCLUSIVE


def test_accuracy_matches() -> None:
    row = claims.accuracy_matches(sgd=[0.780, 0.781, 0.782], adahessian=[0.781, 0.782, 0.783])
    assert row.verdict == claims.SUPPORTED and "SGD 78.10%" in row.ours and "AdaHessian 78.20%" in row.ours
    row = claims.accuracy_matches(sgd=[0.78, 0.781, 0.782], adahessian=[0.70, 0.701, 0.702])
    assert row.verdict == claims.NOT_SUPPORTED
    assert claims.accuracy_matches([0.78], [0.78]).reason == "one seed: inconclusive"


def test_pretrained_raises_accuracy() -> None:
    row = claims.pretrained_raises_accuracy(random_init=[0.78, 0.79, 0.785], pretrained=[0.83, 0.835, 0.84],
                                            optimizer="sgd")
    assert row.verdict == claims.SUPPORTED and row.claim.endswith("— sgd")
    assert claims.pretrained_raises_accuracy([0.83, 0.835, 0.84], [0.78, 0.79, 0.785], "sgd").verdict \
        == claims.NOT_SUPPORTED


def test_adahessian_costs_more_time() -> None:
    row = claims.adahessian_costs_more_time(sgd_epoch_s=[25.4, 25.5, 25.6], adahessian_epoch_s=[44.0, 44.1, 43.9])
    assert row.verdict == claims.SUPPORTED and "ratio 1.73×" in row.ours and "SGD 25.50 s" in row.ours
    assert claims.adahessian_costs_more_time([44.0, 44.1, 43.9], [25.4, 25.5, 25.6]).verdict == claims.NOT_SUPPORTED


def test_first_layers_more_similar() -> None:
    falling = [np.linspace(0.9, 0.2, 21) + 0.01 * k for k in range(3)]
    row = claims.first_layers_more_similar(falling)
    assert row.verdict == claims.SUPPORTED and "first 7 layers" in row.ours
    rising = [d[::-1] for d in falling]
    assert claims.first_layers_more_similar(rising).verdict == claims.NOT_SUPPORTED
    assert claims.first_layers_more_similar(falling[:1]).reason == claims.ONE_SEED


def test_pretrained_reduces_difference() -> None:
    random_init = [np.full(21, 0.5 + 0.01 * k) for k in range(3)]
    pretrained = [np.full(21, 0.8 + 0.01 * k) for k in range(3)]
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


def test_sgd_from_adahessian_stays_close() -> None:
    layers = [f"l{i}" for i in range(5)]
    stay = [np.full(5, 0.85 + 0.01 * k) for k in range(3)]
    move = [np.full(5, 0.30 + 0.01 * k) for k in range(3)]
    row = claims.sgd_from_adahessian_stays_close(stay, move, layers)
    assert row.verdict == claims.SUPPORTED and "higher beyond the spread in 5 of 5" in row.ours
    assert claims.sgd_from_adahessian_stays_close(move, stay, layers).verdict == claims.NOT_SUPPORTED


def test_normalisation_claims() -> None:
    row = claims.normalisation_lowers_train_loss(normal=[0.2, 0.21, 0.19], scaled=[0.5, 0.52, 0.48],
                                                 optimizer="sgd", reading="scaled input")
    assert row.verdict == claims.SUPPORTED and "scaled / normal 2.50×" in row.ours
    assert claims.normalisation_lowers_train_loss([0.5, 0.52, 0.48], [0.2, 0.21, 0.19], "sgd", "x").verdict \
        == claims.NOT_SUPPORTED
    assert claims.normalisation_raises_accuracy([0.73, 0.729, 0.731], [0.64, 0.637, 0.638], "sgd", "x").verdict \
        == claims.SUPPORTED
    assert claims.normalisation_raises_accuracy([0.64, 0.637, 0.638], [0.73, 0.729, 0.731], "sgd", "x").verdict \
        == claims.NOT_SUPPORTED


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
    mosaic = figures.kernel_mosaic(weight, max_out=2, max_in=2)
    assert mosaic.shape == (2 * 3 - 1, 2 * 3 - 1)
    assert mosaic[3:5, 3:5].tolist() == weight[1, 1].tolist() and np.isnan(mosaic[2]).all()
    rgb = np.zeros((5, 3, 1, 1))
    rgb[1, 0], rgb[2, 2], rgb[3, 1] = 0.2, -0.2, 1.0  # red +scale, blue −scale, green beyond the scale
    patches = figures.colour_mosaic(rgb, scale=0.2)  # 5 kernels in 3 columns, 2 rows
    assert patches.shape == (2 * 2 - 1, 3 * 2 - 1, 3)
    assert patches[0, 0].tolist() == [0.5, 0.5, 0.5] and patches[0, 2].tolist() == [1.0, 0.5, 0.5]
    assert patches[0, 4].tolist() == [0.5, 0.5, 0.0] and patches[2, 0].tolist() == [0.5, 1.0, 0.5]
    assert patches[2, 4].tolist() == [1.0, 1.0, 1.0]  # the empty sixth slot is background


def test_common_scale_and_log_axis_choice() -> None:
    weights = [np.linspace(-1, 1, 101), np.linspace(-3, 3, 101)]
    assert figures.common_scale(weights, quantile=1.0) == 3.0
    assert figures.common_scale([np.zeros(4)]) == 1.0
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
    figures.filters_figure(kernels, tmp_path / "f.png", scale=0.0866)
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
        read_study(tmp_path)


def test_read_study_numbers(fake_study: Path) -> None:
    study = read_study(fake_study)
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
                                     "similarity-svcca.png", "similarity-procrustes.png", "filters-layer3.1.conv1.png",
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
    assert "78.29%" in text and "25.48 ± 0.22 s" in text  # the seed paper's numbers beside ours
    assert "processor Fake CPU" in text and "torch 2.14.1" in text  # the device and versions of study.json
    assert "half of ours" in text and "cumulative singular values" in text  # anatome's conventions


def test_report_table_csv_holds_the_numbers(report_page: Path, fake_study: Path) -> None:
    rows = {row["arm"]: row for row in csv.DictReader((report_page.parent / "table2.csv").open())}
    assert list(rows) == list(ARMS)
    study = read_study(fake_study)
    accuracy = study.values("sgd", "test_accuracy")
    s = claims.spread(accuracy)
    assert float(rows["sgd"]["test_accuracy_mean"]) == pytest.approx(np.mean(accuracy))
    assert float(rows["sgd"]["test_accuracy_ci95_low"]) == pytest.approx(s.low)
    assert rows["sgd"]["test_accuracy_per_seed"] == ";".join(repr(v) for v in accuracy)
    assert rows["sgd"]["seed_paper_test_accuracy"] == "0.7829"
    assert rows["adahessian"]["seed_paper_epoch_time_s"] == "44.02"
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
    from minimascope.report.page import claim_rows

    study = read_study(fake_study)
    rows = {row.claim: row for row in claim_rows(study)}
    accuracy = rows[claims.ACCURACY_MATCHES.claim]  # the page hands the claim check each arm's seeds
    assert accuracy == claims.accuracy_matches(study.values("sgd", "test_accuracy"),
                                               study.values("adahessian", "test_accuracy"))
    assert rows[claims.ADAHESSIAN_COSTS_MORE_TIME.claim].verdict == claims.SUPPORTED
    assert rows[claims.FIRST_LAYERS_MORE_SIMILAR.claim].verdict == claims.SUPPORTED
    assert rows[claims.SGD_FROM_ADAHESSIAN_STAYS.claim].verdict == claims.SUPPORTED
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
    assert all(row.reason.startswith(claims.ONE_SEED) and "seed 1: diverged at epoch 2" in row.reason
               for row in diverged)


def test_partial_study_lists_what_is_missing(tmp_path: Path) -> None:
    root = build_fake_study(tmp_path / "partial", seeds=(0,), arms=("sgd", "adahessian", "sgd-scaled-input"),
                            pairs=(("sgd", "adahessian"),), skipped=(), diverged={}, weights=False)
    (root / "summary.csv").unlink()
    (root / "analyses/sharpness/sgd/seed0/sharpness.json").unlink()
    (root / "comparisons/sgd_vs_adahessian/seed0/svcca.json").unlink()
    study = json.loads((root / "study.json").read_text())
    study["nodes"][1]["status"], study["nodes"][1]["reason"] = "running", None  # adahessian still training
    atomic_write_json(root / "study.json", study)
    page = write_report(root)
    parsed = check_page(page)
    text = " ".join(parsed.text)
    assert "summary.csv: not found" in text
    assert "comparisons/sgd_vs_adahessian/seed0/svcca.json: not found" in text
    assert "run adahessian seed 0: running" in text
    assert "runs/sgd/seed0/final.pt" in text  # no weights: the filters section says so
    assert claims.ONE_SEED in text
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
    (root / "comparisons").symlink_to(fake_study / "comparisons")
    study = read_study(root)
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
    assert "sharpness sgd-pretrained seed 0: skipped (depends on skipped run sgd-pretrained seed 0)" in text


def test_connectivity_section_holds_each_variants_barrier(report_page: Path) -> None:
    text = section_text(report_page, "connectivity")
    assert "100 train and 100 test images, 3 points" in text
    # train loss barrier of a path (0.1, 0.1 + 2 h, 0.2) is 2 h - 0.05; h = 1 and 1.1 over the seeds: mean 2.05
    assert "sgd vs adahessian interpolate 2 2.05" in text and "recompute+matched 2 0.16" in text


def test_weights_section_and_its_csv(report_page: Path) -> None:
    text = section_text(report_page, "weights")
    assert "|w| below 0.001" in text and "no images" in text
    rows = list(csv.DictReader((report_page.parent / "weights.csv").open()))
    assert {(r["arm"], r["seed"]) for r in rows} == {(a, str(s)) for a in ("sgd", "adahessian") for s in (0, 1)}
    # final = 1.5 × initial for adahessian's fake layers: relative distance exactly 0.5
    assert all(float(r["relative_distance_from_init"]) == pytest.approx(0.5) for r in rows if r["arm"] == "adahessian")


def test_mistakes_section_counts(report_page: Path) -> None:
    text = section_text(report_page, "mistakes")
    assert "200 CIFAR-10 test images" in text
    # 40 shared hard images and 20 of each arm's own (some of which coincide): 60 errors each
    for row in ("sgd vs adahessian 0 200 60 60", "sgd vs adahessian 1 200 60 60"):
        assert row in text
    assert "only sgd gets wrong" in text


def test_seed_statistics_hold_the_optimizers_against_seeds(report_page: Path) -> None:
    from minimascope.optimizer_effect import read_optimizer_effect_tests

    tests = read_optimizer_effect_tests(report_page.parent / "seeds-sgd_vs_adahessian")
    assert len(tests) == len(MEASURE_NAMES) * len(resnet18_layers())
    # two within values (sgd's and adahessian's seed pair) against two across values (seeds 0 and 1), the
    # across ones less alike at every layer: of the C(4, 2) = 6 arrangements only the observed is as extreme
    assert all(t.within.n == 2 and t.across.n == 2 and t.test.p_value == pytest.approx(1 / 6) for t in tests)
    assert all((t.test.statistic < 0) == (t.kind == "similarity") for t in tests)
    text = section_text(report_page, "seeds")
    assert "0 of 63 tests with p < 0.05" in text
    # λ1: sgd 40, 44 against adahessian 400, 440: two-sided, the observed split and its mirror of 6 arrangements
    assert "top eigenvalue λ1 42 [16.59, 67.41] 420 [165.9, 674.1] -378 0.333" in text
    assert "barrier: no connectivity between two seeds of one arm" in text
