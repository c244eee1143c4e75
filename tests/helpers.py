"""Helpers the test modules share (fixtures live in conftest.py): synthetic CIFAR-10 sources in each
real format, tiny networks, the CLI runner and its one-line-error check, the report's fake study
directory and the tables of a report page."""

from __future__ import annotations

import dataclasses
import itertools
import os
import pickle
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from minimascope import data, datasets, models
from minimascope.analyses import ANALYSES
from minimascope.cli import app
from minimascope.config import TrainConfig
from minimascope.io import atomic_torch_save, atomic_write_json, atomic_write_text
from minimascope.minima import sharpness
from minimascope.minima.connectivity import Connectivity, PathCurve, write_connectivity
from minimascope.minima.mistakes import compare_mistakes, write_mistakes
from minimascope.minima.weights import layer_statistics, write_weight_statistics
from minimascope.runs import (
    FINAL_WEIGHTS,
    INITIAL_WEIGHTS,
    METRIC_COLUMNS,
    METRICS_CSV,
    RUN_FORMAT,
    RUN_JSON,
    STEPS_CSV,
    snapshot_path,
)
from minimascope.similarity import MEASURES, SimilarityMatrix
from minimascope.study.records import STUDY_FORMAT, STUDY_JSON, SUMMARY_COLUMNS, SUMMARY_CSV, write_csv

# The tiny preset's nodes: 10 runs, 6 comparisons and 12 analyses of the minima (see tiny.yaml).
TINY_NODES = 28


def make_image_tree(root: Path, train_per_class: int = 4, test_per_class: int = 2, *, seed: int = 0,
                    size: tuple[int, int] = (32, 32), skip: tuple[str, str] | None = None) -> dict[str, np.ndarray]:
    """Write ``root/{train,test}/<class>/NNNN.png`` (lossless, so pixels round-trip exactly).

    Returns the arrays the loader should produce: images (N, 3, 32, 32) sorted by class then name.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = [], []
        for label, name in enumerate(datasets.get("cifar10").classes):
            if skip == (split, name):
                continue
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
                images.append(pixels.transpose(2, 0, 1))
                labels.append(label)
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = np.asarray(labels)
    return arrays


def make_archive(tree: Path, archive: Path, top: str = "cifar10-images") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=top)
    return archive


def write_batches_py(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """torchvision's cifar-10-batches-py layout: 5 training pickles and one test pickle."""
    folder.mkdir(parents=True)
    train_x = arrays["train_images"].reshape(len(arrays["train_images"]), -1)
    parts = np.array_split(np.arange(len(train_x)), 5)
    for i, part in enumerate(parts, start=1):
        entry = {b"data": train_x[part], b"labels": arrays["train_labels"][part].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(entry))
    test = {b"data": arrays["test_images"].reshape(len(arrays["test_images"]), -1),
            b"labels": arrays["test_labels"].tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))


def conv_bn_net() -> nn.Module:
    """A tiny 2-D net for second-order tests: BN on the raw input (its input needs no gradient), BN
    after a biased conv (a zero Hessian block), tanh for curvature. Input (N, 1, 8, 8), 3 classes."""
    return nn.Sequential(
        nn.BatchNorm2d(1), nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(),
        nn.Linear(72, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3),
    )


def small_config(source: str, **changes) -> TrainConfig:
    values = dict(optimizer="sgd", epochs=2, train_subset=200, test_subset=100, batch_size=50,
                  eval_batch_size=100, data=source)
    return TrainConfig(**{**values, **changes})


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert pattern in " ".join(result.output.split()), result.output


class _TableParser(HTMLParser):
    """Every <table> of a page: its section's id and its rows, each row the text of its cells."""

    def __init__(self) -> None:
        super().__init__()
        self.section = ""
        self.tables: list[dict] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.section = dict(attrs).get("id") or ""
        elif tag == "table":
            self.tables.append({"section": self.section, "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None and self.tables:
            self.tables[-1]["rows"][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def page_tables(html: str) -> list[dict]:
    """The tables of a report page as [{"section": id, "rows": [[cell text, ...], ...]}, ...], in page order."""
    parser = _TableParser()
    parser.feed(html)
    return parser.tables


# ---------------------------------------------------------------- the report's fake study directory

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
MEASURE_NAMES = ("cka", "cka_debiased", "svcca", "procrustes")
BY_CONSTRUCTION = 2  # SVCCA cells of the first layers × the first layers: more than n − 1 directions kept
# The minima analyses: per run for these arms, per pair for these pairs (sgd-pretrained is skipped: its nodes say why).
ANALYSIS_ARMS = ("sgd", "adahessian", "sgd-pretrained")
WEIGHTS_ARMS = (*ANALYSIS_ARMS, "adahessian-then-sgd")  # its distance from its start: "cannot escape"
ANALYSIS_PAIRS = (("sgd", "adahessian"),)
CONNECTIVITY_PAIRS = (*ANALYSIS_PAIRS, ("adahessian-then-sgd", "adahessian"))
TRAIN_LOSS = {"sgd": 0.05, "adahessian": 0.3}  # at the evaluated weights: adahessian's is not at a minimum
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
    """Layer i with layer i along the depth, by design: the optimizers part ways with depth, SGD from AdaHessian's
    minimum stays close, AdaHessian from SGD's moves away, two seeds of one arm stay closer than the optimizers."""
    depth = np.linspace(0.0, 1.0, n)
    return {("seed i", "seed j"): 0.95 - 0.1 * depth, ("sgd", "adahessian"): 0.9 - 0.7 * depth,
            ("adahessian-then-sgd", "adahessian"): np.full(n, 0.85),
            ("sgd-then-adahessian", "sgd"): np.full(n, 0.35)}.get(pair, 0.8 - 0.3 * depth)


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
    return {"procrustes": 2.0 * (1.0 - np.sqrt(cka)), "svcca": cka**0.8, "cka_debiased": cka**1.25}.get(measure, cka)


def similarity_matrix(pair: tuple[str, str], seed: int, layers: list[str], measure: str, labels: tuple[str, str]
                      ) -> SimilarityMatrix:
    """A fake comparison's matrix; SVCCA marks the first layers' cells as 1 by construction."""
    spec, first = MEASURES[measure], np.arange(len(layers)) < BY_CONSTRUCTION
    marked = np.outer(first, first) if measure == "svcca" else None
    return SimilarityMatrix(measure, spec.kind, spec.convention, similarity_values(pair, seed, layers, measure),
                            tuple(layers), tuple(layers), 500, "flatten", *labels, by_construction=marked)


def write_steps(path: Path, arm: str, seed: int, epochs: int) -> dict:
    """steps.csv of a fake run (20 steps an epoch of FINAL's epoch time, seeded jitter) and its run.json summary."""
    jitter = np.random.default_rng([ARMS.index(arm), seed]).standard_normal(20 * epochs)
    times = FINAL[arm][2] / 20 * (1 + 0.05 * jitter)
    rows = [f"{1 + i // 20},{i + 1},{float(t)!r}" for i, t in enumerate(times)]
    atomic_write_text(path / STEPS_CSV, "\n".join(["epoch,step,time_s", *rows]) + "\n")
    return {"median": float(np.median(times)), "mean": float(np.mean(times)), "n": len(times)}


def _metrics_rows(arm: str, seed: int, epochs: int, diverged_at: int | None) -> list[dict]:
    """metrics.csv's rows of a fake run, by column name (the columns the run writes and this leaves empty stay so)."""
    accuracy, loss, epoch_s = FINAL[arm]
    rows = []
    for epoch in range(1, (epochs if diverged_at is None else diverged_at - 1) + 1):
        fade = (epochs - epoch) / max(epochs - 1, 1)  # 1 at the first epoch, 0 at the last
        train_loss = (loss + _jitter(arm, seed, 0.005)) * (20.0 ** fade)  # spans decades: log axis
        time_s = epoch_s + _jitter(arm, seed + epoch, 0.5)
        test_accuracy = (accuracy + _jitter(arm, seed, 0.003)) * (1 - 0.5 * fade)
        rows.append({"epoch": epoch, "lr": 0.01, "train_loss": train_loss,
                     "train_accuracy": round(1 - train_loss / 3, 4), "test_loss": train_loss * 1.3,
                     "test_accuracy": test_accuracy, "epoch_time_s": time_s, "iter_time_mean_s": time_s / 20,
                     "iter_time_std_s": 0.001, "eval_time_s": 1.0})
    return rows


def build_fake_study(root: Path, *, seeds: tuple[int, ...] = (0, 1), epochs: int = 3,
                     arms: tuple[str, ...] = ARMS, pairs: tuple[tuple[str, str], ...] = PAIRS,
                     skipped: tuple[str, ...] = ("sgd-pretrained", "adahessian-pretrained"),
                     diverged: dict[tuple[str, int], int] | None = None, weights: bool = True,
                     analyses: bool = True) -> Path:
    """A study directory as STUDY_FORMAT.md describes it, with made-up numbers chosen so that some claims hold and
    some do not (see FINAL, _profile, ISOLATED_LAYER), real resnet18 ``final.pt`` files (seed 0 of each arm; other
    seeds hard-link it: the report reads one seed) and result files written by their own writers."""
    diverged = {("adahessian-scaled-normalize", 1): 2} if diverged is None else diverged
    root.mkdir(parents=True, exist_ok=True)
    layers = resnet18_layers()
    nodes, summary = [], []
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
                metrics = _metrics_rows(arm, seed, epochs, diverged.get((arm, seed)))
                write_csv(path / METRICS_CSV, METRIC_COLUMNS, metrics)
                last = metrics[-1]
                times = [row["epoch_time_s"] for row in metrics]
                final = {**{k: last[k] for k in ("test_accuracy", "test_loss", "train_loss", "train_accuracy")},
                         "val_accuracy": None, "val_loss": None}
                std = float(np.std(times, ddof=1)) if len(times) > 1 else 0.0
                record = {"format": RUN_FORMAT, "status": status, "config": {**config, "seed": seed}, "final": final,
                          "time_per_epoch_s": {"mean": float(np.mean(times)), "std": std}}
                if status == "completed":
                    record["time_per_step_s"] = write_steps(path, arm, seed, epochs)
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
                matrix = similarity_matrix((arm_a, arm_b), seed, layers, measure, (arm_a, arm_b))
                atomic_write_json(root / relative / f"{measure}.json", matrix.to_dict())
    if analyses:
        nodes += write_fake_analyses(root, seeds, arms, skipped, layers)
        nodes += write_fake_seed_statistics(root, seeds, nodes)
    study = {
        "format": STUDY_FORMAT, "name": "fake", "source": "preset:fake",
        "created": "2026-11-28T10:00:00+00:00", "updated": "2026-11-28T10:20:00+00:00", "wall_time_s": 1234.5,
        "data": {"source": "/data/cifar10-images.tar.gz", "key": "abc123", "train_size": 500, "test_size": 500},
        "versions": {"minimascope": "0.1.0", "torch": "2.14.1"},  # env.environment()'s fields, as the study writes
        "device": {"type": "cpu", "threads": 2, "processor": "Fake CPU"},
        "seeds": list(seeds), "arms": {arm: {**arm_config(arm), "epochs": epochs} for arm in arms},
        "compare": {"measures": list(MEASURE_NAMES), "samples": 500, "pairs": "listed", "within": True},
        "nodes": nodes,
    }
    atomic_write_json(root / STUDY_JSON, study)
    write_csv(root / SUMMARY_CSV, SUMMARY_COLUMNS, summary)
    return root


def fake_sharpness(arm: str, seed: int) -> sharpness.Sharpness:
    top = TOP_EIGENVALUE.get(arm, 100.0) * (1 + 0.1 * seed)  # an arm the report tests skip: any value
    eigenvalues = sharpness.TopEigenvalues([top, top / 2, top / 4], 30, True)
    density = sharpness.Density.of_quadrature(torch.tensor([-1.0, 0.0, 0.01, top / 4, top], dtype=torch.float64),
                                    torch.tensor([0.05, 0.6, 0.3, 0.04, 0.01], dtype=torch.float64), 5, 1)
    settings = {"images": "train", "n_images": 100, "subset": "class-balanced, seed 0"}
    adaptive = sharpness.AdaptiveSharpness(sharpness.TopEigenvalues([top / 100, top / 200], 20, True),
                                           sharpness.TraceEstimate(3 * top / 100, 0.01 * top / 100, 40, True))
    return sharpness.Sharpness(eigenvalues, sharpness.TraceEstimate(3 * top, 0.01 * top, 40, True), density, 100,
                               1000, 0, settings, adaptive, TRAIN_LOSS.get(arm, 0.05), 0.01)


def fake_weight_state(arm: str, seed: int, moved: float) -> dict:
    generator = torch.Generator().manual_seed(10 * ARMS.index(arm) + seed)
    return {"conv1.weight": torch.randn(8, 3, 3, 3, generator=generator) * (1 + moved),
            "bn1.weight": torch.ones(8), "fc.weight": torch.randn(10, 8, generator=generator) * (1 + moved),
            "fc.bias": torch.zeros(10)}


def fake_connectivity(pair: tuple[str, str], seed: int) -> Connectivity:
    alphas = [0.0, 0.5, 1.0]
    hill = 1.0 + 0.1 * seed
    errors = {m: [0.01, 0.02, 0.01] for m in ("train_loss", "train_error", "test_loss", "test_error")}
    curves = [PathCurve(variant, [0.1, 0.1 + height * hill, 0.2], [0.02, 0.02 + height * hill / 4, 0.04],
                        [0.9, 0.9 + height * hill, 1.0], [0.3, 0.3 + height * hill / 4, 0.32], errors)
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


def write_fake_analyses(root: Path, seeds: tuple[int, ...], studied: tuple[str, ...], skipped: tuple[str, ...],
                        layers: list[str]) -> list[dict]:
    """Result files of the minima analyses, written by their own writers, and their study.json nodes."""
    nodes = []
    labels = np.arange(TEST_IMAGES) % 10
    images = np.random.default_rng(0).integers(0, 256, (TEST_IMAGES, 3, 32, 32), dtype=np.uint8)
    for kind, groups in (("sharpness", [(a,) for a in ANALYSIS_ARMS]), ("weights", [(a,) for a in WEIGHTS_ARMS]),
                         ("connectivity", CONNECTIVITY_PAIRS), ("mistakes", ANALYSIS_PAIRS)):
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
                    sharpness.write_sharpness(fake_sharpness(arms[0], seed), out)
                elif kind == "weights":
                    moved = {"adahessian": 0.5, "adahessian-then-sgd": 0.05}.get(arms[0], 0.1)
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
                matrix = similarity_matrix(("seed i", "seed j"), 0, layers, measure,
                                           (f"{arm} seed {i}", f"{arm} seed {j}"))
                atomic_write_json(root / relative / f"{measure}.json", matrix.to_dict())
    return nodes


def write_fake_seed_statistics(root: Path, seeds: tuple[int, ...], nodes: list[dict]) -> list[dict]:
    """The ``seeds`` analysis, run by the analysis itself, of every compared pair of different arms one of
    which has cross-seed comparisons (what the study plans with two seeds or more), on the completed folders."""
    done = {node["path"] for node in nodes if node["status"] == "completed"}
    compared = [tuple(n["arms"]) for n in nodes if n["kind"] == "compare" and "seeds" not in n]
    pairs = [(a, b) for a, b in dict.fromkeys(compared) if a != b and {a, b} & set(SEED_ARMS)]
    seed_nodes = []
    for arm_a, arm_b in pairs if len(seeds) > 1 else []:
        both = (arm_a, arm_b)
        inputs = {"across": [{"seed": s, "path": f"comparisons/{arm_a}_vs_{arm_b}/seed{s}"} for s in seeds],
                  "within": [{"arm": arm, "seeds": [i, j], "path": f"comparisons/{arm}_vs_{arm}/seed{i}-seed{j}"}
                             for arm in both for i, j in itertools.combinations(seeds, 2)],
                  "runs": [{"arm": arm, "seed": s, "path": f"runs/{arm}/seed{s}"} for arm in both for s in seeds],
                  "sharpness": [{"arm": arm, "seed": s, "path": f"analyses/sharpness/{arm}/seed{s}"}
                                for arm in both for s in seeds]}
        inputs = {key: [{**e, "path": str(root / e["path"])} for e in entries if e["path"] in done]
                  for key, entries in inputs.items()}
        relative = f"analyses/seeds/{arm_a}_vs_{arm_b}"
        ANALYSES["seeds"].run({"arms": list(both), **inputs}, root / relative, {})
        seed_nodes.append({"id": f"seeds:{arm_a}:{arm_b}", "kind": "seeds", "arms": list(both),
                           "key": f"seeds-{arm_a}-{arm_b}", "path": relative, "status": "completed", "reason": None,
                           "depends_on": [], "time_s": 1.0})
    return seed_nodes


def resnet18_run(root: Path, seed: int = 0, *, config: dict | None = None, snapshots: int = 0) -> Path:
    """A completed run directory holding a seeded resnet18, its run.json holding ``config`` (default: the epochs
    its snapshots span); with ``snapshots``, perturbed copies of it as its initial.pt and as epochs 1..k."""
    root.mkdir(parents=True)
    normalization = {k: list(v) for k, v in dataclasses.asdict(data.Normalization()).items()}
    model = models.build_model("resnet18", seed=seed)
    atomic_write_json(root / RUN_JSON, {"format": RUN_FORMAT, "status": "completed",
                                        "config": {"epochs": snapshots + 1} if config is None else config})
    payload = models.weights_payload(model, "resnet18", 10, normalization)
    atomic_torch_save(root / FINAL_WEIGHTS, payload)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(snapshots + 1 if snapshots else 0):
        state = {k: v + 0.01 * (snapshots + 1 - epoch) * torch.randn(v.shape, generator=generator)
                 if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
        atomic_torch_save(root / INITIAL_WEIGHTS if epoch == 0 else snapshot_path(root, epoch),
                          {**payload, "state_dict": state})
    return root
