"""Hardening of the analyses (issue 18): an analysis command writes only into a folder of its own (never one
holding another result, a run's or a study's), every result reader refuses a damaged file in one line naming
it, and analyses of networks that cannot be compared are one error line. Runs here are fake (a completed
run.json, fresh weights, made-up predictions): every refusal comes before any data or computation."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from helpers import assert_one_line_error, fake_connectivity, fake_sharpness, fake_weight_state, invoke
from minimascope import models
from minimascope.bootstrap import bootstrap_layers, read_bootstrap, write_bootstrap
from minimascope.errors import MinimascopeError
from minimascope.io import atomic_torch_save, atomic_write_json
from minimascope.minima.connectivity import linear_connectivity, read_connectivity
from minimascope.minima.mistakes import compare_mistakes, read_mistakes, write_mistakes
from minimascope.minima.sharpness import read_sharpness
from minimascope.minima.step_cost import cost_verdict, step_time_ratio
from minimascope.minima.weights import WEIGHTS_JSON, layer_statistics, read_weight_statistics, write_weight_statistics
from minimascope.optimizer_effect import read_seed_statistics, seed_statistics, write_seed_statistics
from minimascope.runs import (
    FINAL_WEIGHTS,
    INITIAL_WEIGHTS,
    PREDICTIONS,
    PREDICTIONS_FORMAT,
    RUN_FORMAT,
    RUN_JSON,
)
from minimascope.similarity import SimilarityMatrix, read_similarity_matrix
from minimascope.study.records import STUDY_JSON

NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def fake_run(folder: Path, *, arch: str = "resnet18-cifar", seed: int = 0, test_images: int = 20) -> Path:
    """A completed run directory: fresh ``arch`` weights as final.pt and initial.pt, and predictions of
    ``test_images`` test images (every third one wrong)."""
    folder.mkdir(parents=True)
    atomic_write_json(folder / RUN_JSON, {"format": RUN_FORMAT, "status": "completed"})
    payload = models.weights_payload(models.build_model(arch, seed=seed), arch, 10, NORMALIZATION)
    for name in (FINAL_WEIGHTS, INITIAL_WEIGHTS):
        atomic_torch_save(folder / name, payload)
    labels = torch.arange(test_images) % 10
    predicted = torch.where(labels % 3 == seed % 3, (labels + 1) % 10, labels)
    atomic_torch_save(folder / PREDICTIONS, {"format": PREDICTIONS_FORMAT, "labels": labels, "predicted": predicted,
                                             "test_index": torch.arange(test_images)})
    return folder


def small_run(folder: Path, seed: int) -> Path:
    """A completed run directory whose final.pt and initial.pt hold a two-layer network (weights reads any
    state dict): the weights analysis in a second."""
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(8, 5))
    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    atomic_write_json(folder / RUN_JSON, {"format": RUN_FORMAT, "status": "completed"})
    for name in (INITIAL_WEIGHTS, FINAL_WEIGHTS):
        state = {key: torch.randn_like(value) for key, value in network.state_dict().items()}
        atomic_torch_save(folder / name, models.weights_payload(network.load_state_dict(state) and network,
                                                                "resnet18", 5, {}))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fake-runs")
    return {"a": fake_run(root / "a", seed=0), "b": fake_run(root / "b", seed=1),
            "imagenet-style": fake_run(root / "imagenet-style", arch="resnet18", seed=2),
            "fewer-tests": fake_run(root / "fewer-tests", seed=3, test_images=10),
            "small": small_run(root / "small", seed=4), "small-other": small_run(root / "small-other", seed=5)}


def files_under(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (the lock file aside: it holds its last holder's pid), with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ".lock"}


# The command of each analysis on the fake runs, without --out: every one fails its --out check before any data.
COMMANDS: dict[str, Callable[[dict[str, Path]], list[str]]] = {
    "sharpness": lambda r: ["sharpness", str(r["a"]), "--images", "10", "--device", "cpu"],
    "weights": lambda r: ["weights", str(r["a"])],
    "mistakes": lambda r: ["mistakes", str(r["a"]), str(r["b"])],
    "connectivity": lambda r: ["connectivity", str(r["a"]), str(r["b"]), "--device", "cpu"],
}


def refused(tmp_path: Path, args: list[str], out: Path, pattern: str) -> None:
    """``args --out out`` exits 2 with one error line holding ``pattern``, and changes no file under tmp_path."""
    before = files_under(tmp_path)
    assert_one_line_error(invoke(*args, "--out", str(out)), pattern)
    assert files_under(tmp_path) == before


# ----------------------------------------------------------------------------- --out: only a folder of its own


@pytest.mark.parametrize("name", COMMANDS)
def test_out_holding_another_analysis_result_is_refused(name: str, runs, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    other = "sharpness.json" if name != "sharpness" else "weights.json"
    atomic_write_json(out / other, {"format": "someone-else", "inputs": []})
    refused(tmp_path, COMMANDS[name](runs), out, f"--out {out} holds other files ({other})")


@pytest.mark.parametrize("name", COMMANDS)
def test_out_inside_a_study_is_refused(name: str, runs, tmp_path: Path) -> None:
    study = tmp_path / "study"
    atomic_write_json(study / STUDY_JSON, {"format": "minimascope-study-v1"})
    node = study / "analyses" / name / "a" / "seed0"
    atomic_write_json(node / "analysis.json", {"key": "k"})
    refused(tmp_path, COMMANDS[name](runs), node, f"is inside study directory {study.resolve()}")
    refused(tmp_path, COMMANDS[name](runs), study / "new-folder", "whose folders belong to the study")


@pytest.mark.parametrize("name", COMMANDS)
def test_out_inside_a_run_directory_is_still_refused(name: str, runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    atomic_write_json(run / RUN_JSON, {"format": RUN_FORMAT, "status": "completed"})
    refused(tmp_path, COMMANDS[name](runs), run / "mine", "is inside run directory")


def test_weights_rerun_of_the_same_run_overwrites_its_own_result(runs, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    assert invoke("weights", str(runs["small"]), "--out", str(out)).exit_code == 0
    first = files_under(out)
    assert set(first) == {"weights.json", "weights.csv", "spectra.png"}
    recorded = json.loads((out / WEIGHTS_JSON).read_text())["inputs"]
    assert recorded == [models.file_sha256(runs["small"] / FINAL_WEIGHTS)]
    result = invoke("weights", str(runs["small"]), "--out", str(out), "--threshold", "0.5")
    assert result.exit_code == 0, result.output
    assert read_weight_statistics(out).threshold == 0.5 and set(files_under(out)) == set(first)


def test_weights_of_another_run_into_a_result_folder_is_refused(runs, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    assert invoke("weights", str(runs["small"]), "--out", str(out)).exit_code == 0
    refused(tmp_path, ["weights", str(runs["small-other"])], out, f"--out {out} holds a weights.json of other inputs")


def test_a_result_of_unknown_inputs_is_not_overwritten(runs, tmp_path: Path) -> None:
    """A result an older minimascope wrote records no inputs: nothing says it is of this run."""
    out = tmp_path / "weights"
    write_weight_statistics(layer_statistics(fake_weight_state("sgd", 0, 0.1)), out)
    record = json.loads((out / WEIGHTS_JSON).read_text())
    del record["inputs"]
    atomic_write_json(out / WEIGHTS_JSON, record)
    refused(tmp_path, ["weights", str(runs["small"])], out, "holds a weights.json of unknown inputs")


@pytest.mark.parametrize("name", ["mistakes", "connectivity"])
def test_a_pair_in_the_other_order_is_another_result(name: str, runs, tmp_path: Path) -> None:
    """A result of (a, b) in --out: (b, a) is refused there (checked before any data is read)."""
    out = tmp_path / "pair"
    identity = [models.file_sha256(runs[side] / (PREDICTIONS if name == "mistakes" else FINAL_WEIGHTS))
                for side in ("a", "b")]
    atomic_write_json(out / f"{name}.json", {"format": f"minimascope-{name}-v2", "inputs": identity})
    device = ["--device", "cpu"] if name == "connectivity" else []
    refused(tmp_path, [name, str(runs["b"]), str(runs["a"]), *device], out, f"holds a {name}.json of other inputs")


# ----------------------------------------------------------------------------- networks that do not go together


def test_connectivity_without_alignment_across_architectures_is_one_line(runs, tmp_path: Path) -> None:
    refused(tmp_path, ["connectivity", str(runs["a"]), str(runs["imagenet-style"]), "--no-align", "--device", "cpu"],
            tmp_path / "path", "is a resnet18-cifar with 10 classes, imagenet-style a resnet18 with 10")
    assert not (tmp_path / "path").exists()


def test_a_path_between_networks_of_other_shapes_names_the_first_difference() -> None:
    """The same layer names with other shapes (a 3×3 stem against a 7×7 one) no longer fail inside torch.lerp."""
    narrow, wide = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), nn.Sequential(nn.Conv2d(3, 4, 5), nn.Flatten())
    images, labels = torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(MinimascopeError, match=r"different architectures \(first difference: 0.weight, "
                                               r"\(4, 3, 3, 3\) and \(4, 3, 5, 5\)\)"):
        linear_connectivity(narrow, wide, images, labels, images, labels, points=2)


def test_mistakes_of_runs_tested_on_other_images_is_one_line(runs, tmp_path: Path) -> None:
    refused(tmp_path, ["mistakes", str(runs["a"]), str(runs["fewer-tests"])], tmp_path / "mistakes",
            "predicted different test images (20 and 10)")


# ----------------------------------------------------------------------------- damaged result files


def _similarity(folder: Path) -> Path:
    layers = ("conv1", "fc")
    matrix = SimilarityMatrix("cka", "similarity", "1 = identical", np.array([[1.0, 0.2], [0.3, 0.9]]), layers,
                              layers, 100, "flatten", "A", "B")
    path = folder / "cka.json"
    atomic_write_json(path, matrix.to_dict())
    return path


def _seeds(folder: Path) -> Path:
    within = {("cka", "conv1"): [0.95, 0.96, 0.94]}
    across = {("cka", "conv1"): [0.80, 0.82, 0.79, 0.81]}
    result = seed_statistics(("sgd", "adahessian"), {"sgd": within}, across,
                             {"test accuracy": ({0: 0.4, 1: 0.41}, {0: 0.42, 1: 0.43})})
    return write_seed_statistics(result, folder)[0]


def _bootstrap(folder: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    acts = {"conv1": torch.randn(16, 6, generator=generator)}
    other = {"conv1": acts["conv1"] + torch.randn(16, 6, generator=generator)}
    return write_bootstrap(bootstrap_layers(acts, other, ["conv1"], ["cka"], 4), folder)


def _mistakes(folder: Path) -> Path:
    labels = np.arange(30) % 10
    comparison = compare_mistakes(np.where(labels % 3 == 0, (labels + 1) % 10, labels),
                                  np.where(labels % 4 == 0, (labels + 2) % 10, labels), labels)
    return write_mistakes(comparison, folder)[0]


def _json(name: str, result: Any) -> Callable[[Path], Path]:
    """A writer of ``result``'s JSON alone (the writers' figures take a second each, and no reader reads them)."""
    def write(folder: Path) -> Path:
        atomic_write_json(folder / name, result.to_dict())
        return folder / name

    return write


# reader, writer of a valid file, the path of a number in it, a key it cannot do without
READERS: dict[str, tuple[Callable[[Path], Any], Callable[[Path], Path], tuple, str]] = {
    "sharpness": (read_sharpness, _json("sharpness.json", fake_sharpness("sgd", 0)), ("trace",), "eigenvalues"),
    "connectivity": (read_connectivity, _json("connectivity.json", fake_connectivity(("a", "b"), 0)),
                     ("variants", "interpolate", "test_loss", 1), "alphas"),
    "weights": (read_weight_statistics, _json(WEIGHTS_JSON, layer_statistics(fake_weight_state("sgd", 0, 0.1))),
                ("layers", 0, "frobenius_norm"), "layers"),
    "mistakes": (read_mistakes, _mistakes, ("expected_both_wrong",), "counts"),
    "seeds": (read_seed_statistics, _seeds, ("tests", 0, "p_holm"), "arms"),
    "bootstrap": (read_bootstrap, _bootstrap, ("measures", "cka", "value", 0), "layers"),
    "similarity": (read_similarity_matrix, _similarity, ("values", 1, 0), "layers_a"),
}


def _set(record: Any, where: tuple, value: Any) -> None:
    for key in where[:-1]:
        record = record[key]
    record[where[-1]] = value


def _damage(path: Path, kind: str, number: tuple, needed: str) -> None:
    text = path.read_text()
    record = json.loads(text)
    if kind == "truncated":
        path.write_text(text[: len(text) // 2])
        return
    if kind == "missing key":
        del record[needed]
    else:
        _set(record, number, {"NaN": math.nan, "infinite": math.inf, "text": "0.5", "true": True}[kind])
    path.write_text(json.dumps(record))  # json writes NaN and Infinity as bare words, as a careless editor might


@pytest.mark.parametrize("kind", ["NaN", "infinite", "text", "true", "truncated", "missing key"])
@pytest.mark.parametrize("name", READERS)
def test_a_damaged_result_file_is_one_error_naming_it(name: str, kind: str, tmp_path: Path) -> None:
    read, write, number, needed = READERS[name]
    path = write(tmp_path)
    read(path)  # the undamaged file reads
    _damage(path, kind, number, needed)
    with pytest.raises(MinimascopeError) as error:
        read(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    shown = {"NaN": "NaN", "truncated": "damaged", "missing key": f"{needed} is missing"}.get(kind, "must be")
    if name == "similarity" and kind == "missing key":  # no format names it: without its keys it is something else
        shown = f"is not a similarity matrix (it has no {needed})"
    assert shown in message


def test_a_similarity_matrix_names_the_bad_cell_and_row(tmp_path: Path) -> None:
    path = _similarity(tmp_path)
    record = json.loads(path.read_text())
    record["values"][0][1] = "0.3"
    path.write_text(json.dumps(record))
    with pytest.raises(MinimascopeError, match=r"cka.json: values\[0\]\[1\] must be a finite number, not '0.3'"):
        read_similarity_matrix(path)
    record["values"][0] = [0.1]
    path.write_text(json.dumps(record))
    with pytest.raises(MinimascopeError, match=r"values\[0\] must be a list of 2"):
        read_similarity_matrix(path)


def test_a_damaged_result_in_out_is_named_not_overwritten(runs, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    out.mkdir()
    (out / WEIGHTS_JSON).write_text('{"format": "minimascope-weights-v1", "inputs": [')
    refused(tmp_path, ["weights", str(runs["small"])], out, f"broken weights.json {out / WEIGHTS_JSON}")


def test_seed_statistics_keep_an_unbounded_cost_interval_and_nothing_else_infinite(tmp_path: Path) -> None:
    """Two steps per run are too few for a median's interval: (0, inf) is a value, written and read back."""
    costs = (step_time_ratio([0.1, 0.1], [0.2, 0.2], seed=0), step_time_ratio([0.1] * 40, [0.3] * 40, seed=1))
    assert (costs[0].low, costs[0].high) == (0.0, math.inf)
    path = _seeds(tmp_path)
    result = read_seed_statistics(path)
    with_costs = replace(result, costs=costs, cost=cost_verdict(costs, label_a="sgd", label_b="adahessian"))
    write_seed_statistics(with_costs, tmp_path)
    assert read_seed_statistics(path) == with_costs
    record = json.loads(path.read_text())
    record["costs"][1]["ratio"] = math.inf
    path.write_text(json.dumps(record))
    with pytest.raises(MinimascopeError, match=r"seeds.json: costs\[1\].ratio must be a finite number or null"):
        read_seed_statistics(path)
