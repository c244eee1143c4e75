"""`minimascope compare` from the command line: outputs on disk and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import assert_one_line_error
from minimascope import io, models
from minimascope.cli import app


def weights_file(path: Path, seed: int, num_classes: int = 10, std_multiplier=(1.0, 1.0, 1.0)) -> Path:
    model = models.build_model("resnet18", num_classes=num_classes, seed=seed)
    normalization = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616],
                     "std_multiplier": list(std_multiplier)}
    io.atomic_torch_save(path, models.weights_payload(model, "resnet18", num_classes, normalization))
    return path


@pytest.fixture(scope="module")
def two_networks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nets")
    return weights_file(root / "a.pt", seed=0), weights_file(root / "b.pt", seed=1, std_multiplier=(1000.0,) * 3)


def compare(*args: str):
    return CliRunner().invoke(app, ["compare", *args])


@pytest.mark.slow
def test_compare_writes_matrices_and_heatmaps(two_networks, cifar_source: str, tmp_path: Path) -> None:
    a, b = two_networks
    out = tmp_path / "cmp"
    result = compare(str(a), str(b), "--samples", "200", "--measures", "cka,procrustes", "--data", cifar_source,
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    for measure in ("cka", "procrustes"):
        record = json.loads((out / f"{measure}.json").read_text())
        assert record["n_samples"] == 200 and record["policy"] == "flatten"
        assert len(record["layers_a"]) == len(record["layers_b"]) == 21
        assert record["layers_a"][0] == "conv1" and record["layers_a"][-1] == "fc"
        values = np.asarray(record["values"])
        assert values.shape == (21, 21) and np.isfinite(values).all()
        assert record["kind"] == ("similarity" if measure == "cka" else "distance")
        rows = list(csv.reader((out / f"{measure}.csv").open()))
        assert len(rows) == 22 and rows[0][1:] == record["layers_b"]
        assert (out / f"{measure}.png").stat().st_size > 10_000


def test_compare_a_network_with_itself(two_networks, cifar_source: str, tmp_path: Path) -> None:
    a, _ = two_networks
    result = compare(str(a), str(a), "--samples", "100", "--measures", "cka", "--layers", "conv1,layer1.0.conv1,fc",
                     "--data", cifar_source, "--out", str(tmp_path / "self"))
    assert result.exit_code == 0, result.output
    values = np.asarray(json.loads((tmp_path / "self" / "cka.json").read_text())["values"])
    np.testing.assert_allclose(np.diag(values), 1.0, atol=1e-6)
    np.testing.assert_allclose(values, values.T, atol=1e-9)


@pytest.mark.slow
def test_compare_bad_input_is_one_line(two_networks, cifar_source: str, tmp_path: Path) -> None:
    a, b = two_networks
    common = ["--data", cifar_source, "--out", str(tmp_path / "o")]
    assert_one_line_error(compare(str(a), str(b), "--samples", "50", "--layers", "layer1.0.conv", *common),
                          "layer1.0.conv1")
    assert_one_line_error(compare(str(a), str(b), "--samples", "0", *common), "samples must be at least 1")
    assert_one_line_error(compare(str(a), str(b), "--samples", "50", "--measures", "cca", *common), "unknown measure")
    assert_one_line_error(compare(str(a), str(b), "--samples", "20000", *common), "exceeds the")
    hundred = weights_file(tmp_path / "c100.pt", seed=2, num_classes=100)
    assert_one_line_error(compare(str(a), str(hundred), "--samples", "50", *common), "output classes")
    assert_one_line_error(compare(str(a), str(tmp_path / "missing.pt"), *common), "no run directory or weights file at")
    assert not (tmp_path / "o").exists()


def test_compare_bootstrap_writes_intervals_and_baselines(two_networks, cifar_source: str, tmp_path: Path) -> None:
    from minimascope.bootstrap import read_bootstrap

    a, b = two_networks
    out = tmp_path / "boot"
    result = compare(str(a), str(b), "--samples", "60", "--measures", "cka,cka_debiased,procrustes", "--layers",
                     "layer1.0.conv1,fc", "--bootstrap", "20", "--data", cifar_source, "--out", str(out))
    assert result.exit_code == 0, result.output
    boot = read_bootstrap(out / "bootstrap.json")
    assert boot.layers == ("layer1.0.conv1", "fc") and (boot.n, boot.subsample, boot.resamples) == (60, 30, 20)
    assert set(boot.values) == {"cka", "cka_debiased"}
    diagonal = np.diag(np.asarray(json.loads((out / "cka.json").read_text())["values"]))
    np.testing.assert_allclose(boot.values["cka"]["value"], diagonal, atol=1e-4)
    assert_one_line_error(compare(str(a), str(b), "--samples", "60", "--measures", "procrustes", "--bootstrap", "20",
                                  "--data", cifar_source, "--out", str(tmp_path / "o")), "bootstrap")
