"""k-fold tuning on a tiny grid: the folds, the ranking, best.yaml as a study's defaults, one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from helpers import assert_one_line_error
from minimascope import data, runs
from minimascope.cli import app
from minimascope.study.spec import load_spec
from minimascope.tune import load_tune, rank_settings

GRID = {"defaults": {"epochs": 1, "train_subset": 120, "test_subset": 20, "eval_batch_size": 50},
        "folds": 3, "seed": 4, "grid": {"optimizer": "sgd", "lr": [0.01, 0.1]}}


@pytest.mark.slow
def test_tune_on_a_tiny_grid(cifar_source: str, tmp_path: Path) -> None:
    file = tmp_path / "grid.yaml"
    file.write_text(yaml.safe_dump(GRID, sort_keys=False))
    out = tmp_path / "tune"
    result = CliRunner().invoke(app, ["tune", str(file), "--out", str(out), "--data", cifar_source])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "tune.csv").open()))
    assert [(r["setting"], int(r["fold"])) for r in rows] == [
        (f"optimizer=sgd,lr={lr}", fold) for lr in ("0.01", "0.1") for fold in range(3)]
    # Each run validated on its fold: the folds of the training subset are disjoint and cover it.
    cifar = data.load("cifar10", cifar_source)
    subset = data.balanced_subset(cifar.train_labels, 120, seed=4)
    labels = cifar.train_labels[subset]
    held = [data.kfold_split(labels, 3, fold, seed=4)[1] for fold in range(3)]
    assert sorted(torch.cat(held).tolist()) == list(range(120))
    for fold, indices in enumerate(held):
        kept = data.kfold_split(labels, 3, fold, seed=4)[0]
        assert set(kept.tolist()).isdisjoint(indices.tolist()) and len(kept) + len(indices) == 120
        assert torch.bincount(labels[indices], minlength=10).tolist() == [4] * 10  # stratified
    for row in rows:
        record = runs.read_run_json(out / "runs" / row["setting"] / f"fold{row['fold']}")
        assert record["config"]["folds"] == 3 and record["config"]["fold"] == int(row["fold"])
        assert record["config"]["seed"] == 4 and record["status"] == "completed"
        assert float(row["val_accuracy"]) == record["final"]["val_accuracy"]
        assert float(row["val_loss"]) == record["final"]["val_loss"]
        assert len(runs.read_metrics(out / "runs" / row["setting"] / f"fold{row['fold']}")) == 1
    summary = list(csv.DictReader((out / "tune-summary.csv").open()))
    means = {}
    for setting in ("optimizer=sgd,lr=0.01", "optimizer=sgd,lr=0.1"):
        accuracies = [float(r["val_accuracy"]) for r in rows if r["setting"] == setting]
        means[setting] = sum(accuracies) / 3
    assert [r["setting"] for r in summary] == sorted(means, key=lambda s: -means[s])
    assert [int(r["rank"]) for r in summary] == [1, 2]
    assert float(summary[0]["val_accuracy_mean"]) == pytest.approx(means[summary[0]["setting"]])
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best == {"optimizer": "sgd", "lr": float(summary[0]["lr"])}
    study = tmp_path / "study.yaml"  # best.yaml is a study file's defaults
    study.write_text(f"defaults: {out / 'best.yaml'}\narms: {{plain: {{}}}}\n")
    assert load_spec(study).arms["plain"].options == best
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    again = CliRunner().invoke(app, ["tune", str(file), "--out", str(out), "--data", cifar_source])
    assert again.exit_code == 0, again.output  # a second invocation trains nothing
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == stamps
    assert yaml.safe_load((out / "best.yaml").read_text()) == best


def test_ranking_puts_unfinished_settings_last() -> None:
    from minimascope.tune import TuneSpec

    tune = TuneSpec("t", "t", {}, ({"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}), 2, 0)
    rows = [{"setting": "lr=0.1", "status": "completed", "val_accuracy": 0.2, "val_loss": 2.0},
            {"setting": "lr=0.1", "status": "completed", "val_accuracy": 0.4, "val_loss": 1.0},
            {"setting": "lr=0.2", "status": "diverged", "val_accuracy": None, "val_loss": None},
            {"setting": "lr=0.3", "status": "completed", "val_accuracy": 0.5, "val_loss": 1.5},
            {"setting": "lr=0.3", "status": "failed", "val_accuracy": None, "val_loss": None}]
    ranked = rank_settings(tune, rows)
    assert [(r["setting"], r["rank"], r["folds_completed"]) for r in ranked] == [
        ("lr=0.3", 1, 1), ("lr=0.1", 2, 2), ("lr=0.2", None, 0)]
    assert ranked[1]["val_accuracy_mean"] == pytest.approx(0.3)
    assert ranked[1]["val_accuracy_std"] == pytest.approx(0.1414213562373095)


def test_the_tune_preset_repeats_the_papers_learning_rate_choice() -> None:
    spec = load_tune("tune")
    assert spec.folds == 5
    lrs = {(s["optimizer"], s["lr"]) for s in spec.settings}
    assert ("sgd", 0.01) in lrs and ("adahessian", 0.15) in lrs and len(lrs) == 6


@pytest.mark.parametrize("text, message", [
    ("grid: {optimizer: sgd, lr: [0.1]}\nfolds: 1\n", "folds: must be an integer in 2..2**63-1"),
    ("grid: {optimizer: sgd, fold: [0, 1]}\n", "fold is set by the tune itself"),
    ("grid: {optimizer: lion}\n", "optimizer: unknown 'lion'"),
    ("defaults: {lr: 0.1}\n", "no 'grid'"),
    ("grid: {lr: [0.1]}\nfoldz: 3\n", "unknown key 'foldz'"),
])
def test_tune_file_errors_are_one_line(text: str, message: str, tmp_path: Path) -> None:
    file = tmp_path / "grid.yaml"
    file.write_text(text)
    result = CliRunner().invoke(app, ["tune", str(file), "--out", str(tmp_path / "out")], env={"COLUMNS": "300"})
    assert_one_line_error(result, message)
