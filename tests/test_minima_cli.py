"""`minimascope sharpness | weights | connectivity | mistakes` from the command line, on two tiny runs trained
here: outputs on disk read back by their readers, values that must hold, one-line errors; one command per
analysis of runs in the table of analyses (`landscape` too, tested in test_landscape.py), under its name (and
``connect``, the old name of connectivity)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.main import get_command

from helpers import assert_one_line_error, invoke, small_config
from minimascope import models
from minimascope.analyses import ANALYSES, PER_PAIR, PER_RUN
from minimascope.cli import app
from minimascope.io import atomic_torch_save, atomic_write_json
from minimascope.minima.connectivity import CONNECTIVITY_PNG, read_connectivity
from minimascope.minima.mistakes import ONLY_A_PNG, ONLY_B_PNG, read_mistakes
from minimascope.minima.sharpness import DENSITY_PNG, read_sharpness
from minimascope.minima.weights import SPECTRA_PNG, read_weight_statistics
from minimascope.runs import FINAL_WEIGHTS, INITIAL_WEIGHTS, RUN_FORMAT, RUN_JSON, read_predictions
from minimascope.train import train

# Each Hessian-vector product of resnet18 costs about a second on a CPU: few of them (the math is tested in
# test_minima.py on networks whose Hessian is formed exactly; here the shell, its files and its settings).
FAST_SHARPNESS = ("--images", "10", "--k", "2", "--tol", "0.5", "--max-iter", "3", "--rel-error", "0.5",
                  "--max-probes", "2", "--density-steps", "2", "--device", "cpu")


@pytest.fixture(scope="module")
def two_runs(cifar_source: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Two runs of one epoch on 100 training images from one init (seed 0: the same test subset) with
    different learning rates, tested on the same 40 test images."""
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for lr in (0.01, 0.05):
        config = small_config(cifar_source, epochs=1, train_subset=100, test_subset=40, batch_size=50,
                              augment=False, device="cpu", seed=0, lr=lr)
        run_dir = root / f"sgd-lr{lr}"
        train(config, run_dir)
        runs.append(run_dir)
    return runs[0], runs[1], cifar_source


def small_run(root: Path, *, moved: float) -> Path:
    """A completed run directory holding a two-layer network's weights (the weights command reads any
    state dict), final = initial + ``moved`` in every entry."""
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(8, 5))
    initial = {key: value.detach().clone() for key, value in network.state_dict().items()}
    final = {key: value + moved for key, value in initial.items()}
    root.mkdir(parents=True)
    atomic_write_json(root / RUN_JSON, {"format": RUN_FORMAT, "status": "completed"})
    for name, state in ((INITIAL_WEIGHTS, initial), (FINAL_WEIGHTS, final)):
        atomic_torch_save(root / name, {"format": models.WEIGHTS_FORMAT, "arch": "resnet18", "num_classes": 5,
                                        "normalization": {}, "state_dict": state})
    return root


@pytest.mark.slow
def test_sharpness_writes_what_its_reader_reads(two_runs, tmp_path: Path) -> None:
    run, _, source = two_runs
    out = tmp_path / "sharp"
    result = invoke("sharpness", str(run), "--data", source, "--out", str(out), *FAST_SHARPNESS)
    assert result.exit_code == 0, result.output
    assert "top eigenvalues" in result.output and "10 training images" in result.output
    assert "rescaling-invariant" in result.output
    sharpness = read_sharpness(out)
    assert sharpness.adaptive is not None and f"λ1 {sharpness.adaptive.eigenvalues.values[0]:.4g}" in result.output
    assert f"loss {sharpness.loss:.4g}" in result.output
    assert (out / DENSITY_PNG).read_bytes().startswith(b"\x89PNG")
    assert sharpness.n_images == 10 and sharpness.settings["images"] == "train"
    assert sharpness.settings["n_images"] == 10 and "class-balanced" in sharpness.settings["subset"]
    top = sharpness.eigenvalues.values
    assert len(top) == 2 and top[0] >= top[1] and all(math.isfinite(v) for v in top)
    assert math.isfinite(sharpness.trace.value) and sharpness.trace.probes == 2
    assert sum(sharpness.density.weights) == pytest.approx(1.0, abs=1e-6)
    assert len(sharpness.density.grid) == len(sharpness.density.smoothed) == 400
    # the density's nodes are Ritz values: none beyond the largest eigenvalue Lanczos found (up to its tolerance)


def test_every_analysis_of_runs_is_a_command_of_its_name() -> None:
    commands = get_command(app).commands
    rows = [row for row in ANALYSES.values() if row.per in (PER_RUN, PER_PAIR)]
    assert {row.name for row in rows} == {"sharpness", "weights", "connectivity", "mistakes", "landscape"}
    names = [command.name for command in app.registered_commands]
    assert all(names.count(row.name) == 1 for row in rows), names  # each registered once
    for row in rows:
        assert row.name in commands and not commands[row.name].hidden
        arguments = [p.name for p in commands[row.name].params if p.param_type_name == "argument"]
        assert len(arguments) == (1 if row.per == PER_RUN else 2), row.name
        for alias in row.aliases:  # the same command, out of --help's way
            assert commands[alias].hidden
            assert [p.name for p in commands[alias].params] == [p.name for p in commands[row.name].params]
    assert ANALYSES["connectivity"].aliases == ("connect",)
    landscape = {p.name: p for p in commands["landscape"].params}
    for name, option in ANALYSES["landscape"].options.items():  # the table's defaults and help
        assert (landscape[name].default, landscape[name].help) == (option.default, option.help), name
    assert {"bn", "plane", "trajectory", "out", "data_source", "device", "batch_size"} <= set(landscape)


def test_connectivity_of_a_run_with_itself_has_no_barrier(two_runs, tmp_path: Path) -> None:
    run, _, source = two_runs
    out = tmp_path / "self"
    result = invoke("connectivity", str(run), str(run), "--data", source, "--out", str(out), "--points", "2",
                    "--images", "10", "--device", "cpu")
    assert result.exit_code == 0, result.output
    connectivity = read_connectivity(out)
    assert (out / CONNECTIVITY_PNG).is_file()
    assert connectivity.n_train == connectivity.n_test == 10 and len(connectivity.alphas) == 2
    assert {c.variant for c in connectivity.curves} == {"interpolate", "recompute", "interpolate+matched",
                                                        "recompute+matched"}
    for variant in ("interpolate", "interpolate+matched"):  # B matched onto itself is itself
        for barrier in connectivity.curve(variant).barriers().values():
            assert barrier == pytest.approx(0.0, abs=1e-5)
    assert "train images" in connectivity.settings["images"] and connectivity.settings["run_a"] == str(run.resolve())


def test_connect_two_runs_without_alignment(two_runs, tmp_path: Path) -> None:
    """``connect``: the old name of ``connectivity``, still answered."""
    run_a, run_b, source = two_runs
    out = tmp_path / "pair"
    result = invoke("connect", str(run_a), str(run_b), "--data", source, "--out", str(out), "--points", "2",
                    "--images", "10", "--no-align", "--device", "cpu")
    assert result.exit_code == 0, result.output
    connectivity = read_connectivity(out)
    assert [c.variant for c in connectivity.curves] == ["interpolate", "recompute"]
    assert connectivity.labels == (run_a.name, run_b.name)
    curve = connectivity.curve("interpolate")
    assert curve.test_error[0] != curve.test_error[-1] or curve.test_loss[0] != curve.test_loss[-1]


def test_weights_of_a_trained_run_moved_from_init(two_runs, tmp_path: Path) -> None:
    run, _, _ = two_runs
    out = tmp_path / "w"
    result = invoke("weights", str(run), "--out", str(out), "--threshold", "0.01")
    assert result.exit_code == 0, result.output
    stats = read_weight_statistics(out)
    assert (out / SPECTRA_PNG).is_file() and stats.has_initial and stats.threshold == 0.01
    assert len(stats.layers) == 21  # resnet18: 20 convs and the head
    assert all(layer.distance_from_init > 0 for layer in stats.layers)  # every layer trained
    assert all(1.0 <= layer.effective_rank <= min(layer.shape[0], math.prod(layer.shape[1:])) for layer in stats.layers)


def test_weights_distance_from_init_is_that_of_initial_pt(tmp_path: Path) -> None:
    """Every entry moved by 0.5: the distance is 0.5·sqrt(entries); unmoved: exactly 0."""
    for moved in (0.0, 0.5):
        run = small_run(tmp_path / f"run{moved}", moved=moved)
        result = invoke("weights", str(run), "--out", str(tmp_path / f"w{moved}"))
        assert result.exit_code == 0, result.output
        stats = read_weight_statistics(tmp_path / f"w{moved}")
        assert [layer.layer for layer in stats.layers] == ["0", "2"]
        for layer in stats.layers:
            assert layer.distance_from_init == pytest.approx(moved * math.sqrt(math.prod(layer.shape)), rel=1e-6)


def test_mistakes_counts_cover_the_test_images(two_runs, tmp_path: Path) -> None:
    run_a, run_b, source = two_runs
    out = tmp_path / "m"
    result = invoke("mistakes", str(run_a), str(run_b), "--data", source, "--out", str(out))
    assert result.exit_code == 0, result.output
    comparison = read_mistakes(out)
    predictions_a, predictions_b = read_predictions(run_a), read_predictions(run_b)
    labels = predictions_a["labels"]
    assert comparison.n == len(labels) == 40
    assert comparison.both_wrong + comparison.only_a_wrong + comparison.only_b_wrong + comparison.both_right == 40
    assert comparison.errors_a == int((predictions_a["predicted"] != labels).sum())
    assert comparison.errors_b == int((predictions_b["predicted"] != labels).sum())
    assert (out / ONLY_A_PNG).is_file() and (out / ONLY_B_PNG).is_file()
    itself = read_mistakes(_mistakes_with_itself(run_a, source, tmp_path))
    assert itself.only_a_wrong == itself.only_b_wrong == 0 and itself.errors_a == comparison.errors_a


def _mistakes_with_itself(run: Path, source: str, tmp_path: Path) -> Path:
    out = tmp_path / "self"
    result = invoke("mistakes", str(run), str(run), "--data", source, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_default_folder_is_outside_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = small_run(tmp_path / "tiny", moved=0.1)
    monkeypatch.chdir(tmp_path)
    result = invoke("weights", str(run))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "analyses" / run.name / "weights" / "weights.json").is_file()
    assert not (run / "analyses").exists()


def test_bad_input_is_one_line(two_runs, tmp_path: Path) -> None:
    run_a, run_b, source = two_runs
    assert_one_line_error(invoke("weights", str(tmp_path / "nowhere")), "no run directory or weights file")
    assert_one_line_error(invoke("sharpness", str(run_a), "--out", str(run_a / "analysis")), "inside run directory")
    assert_one_line_error(invoke("sharpness", str(run_a), "--data", source, "--images", "0", "--out",
                                 str(tmp_path / "s")), "sharpness: --images must be an integer >= 1")
    assert_one_line_error(invoke("weights", str(small_run(tmp_path / "tiny", moved=0.1)), "--threshold", "-1",
                                 "--out", str(tmp_path / "w")),
                          "weights: --threshold must be a number > 0, got -1.0")
    assert_one_line_error(invoke("connect", str(run_a), str(run_b), "--points", "1", "--images", "10", "--data",
                                 source, "--out", str(tmp_path / "c")),
                          "connectivity: --points must be an integer >= 2")
    assert_one_line_error(invoke("mistakes", str(run_a), str(run_b / "final.pt"), "--out", str(tmp_path / "m")),
                          "not a run directory")
    other = tmp_path / "other"
    shutil.copytree(run_b, other)
    predictions = read_predictions(other)
    torch.save({**predictions, "test_index": predictions["test_index"] + 1}, other / "predictions.pt")
    assert_one_line_error(invoke("mistakes", str(run_a), str(other), "--out", str(tmp_path / "m")),
                          "predicted different test images")
    assert_one_line_error(invoke("sharpness", str(run_a), "--images", "abc"), "Invalid value")
