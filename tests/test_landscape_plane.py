"""The plane through three networks as a study node (``analyses: {landscape-plane: {...}}``): planned for each
then-arm and seed through the arm it started from, itself and the plain arm of its optimizer; keyed by its options
and its runs; run, read back and drawn in the report, its marked networks keeping their own losses."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from helpers import invoke
from minimascope import models
from minimascope.config import TrainConfig
from minimascope.errors import MinimascopeError
from minimascope.minima.common import balanced_inputs
from minimascope.minima.landscape import read_landscape
from minimascope.runs import read_run_json
from minimascope.splits import make_splits
from minimascope.study.plan import study_nodes
from minimascope.study.spec import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")

ARMS = {
    "sgd": {"optimizer": "sgd"},
    "adahessian": {"optimizer": "adahessian"},
    "adahessian-then-sgd": {"optimizer": "sgd", "init_from": "adahessian"},
    "sgd-then-adahessian": {"optimizer": "adahessian", "init_from": "sgd"},
    "sgd-pretrained": {"optimizer": "sgd", "pretrained": True},
    "sgd-scaled": {"optimizer": "sgd", "std_multiplier": [1.0e-4, 1, 1000]},
    "sgd-again": {"optimizer": "sgd", "init_from": "sgd"},  # its plain arm is where it started: no plane
    "adam-then": {"optimizer": "adam", "init_from": "sgd"},  # no plain adam arm: no plane
    "scaled-then-sgd": {"optimizer": "sgd", "init_from": "sgd-scaled"},  # inputs unlike sgd's: no plane
}


def study_file(path: Path, arms: dict, analyses: dict, seeds: tuple[int, ...] = (0, 1), **defaults: object) -> Path:
    path.write_text(yaml.safe_dump({
        "defaults": {"epochs": 1, "train_subset": 100, "test_subset": 50, "eval_batch_size": 50, **defaults},
        "seeds": list(seeds), "arms": arms, "compare": {"measures": ["cka"], "samples": 20, "pairs": [],
                                                        "within": False},
        "analyses": analyses}, sort_keys=False))
    return path


def planes(tmp_path: Path, options: dict, arms: dict = ARMS) -> dict:
    spec = load_spec(study_file(tmp_path / "planes.yaml", arms, {"landscape-plane": options}))
    return {n.id: n for n in study_nodes(spec, "torchvision", None, None) if n.kind == "landscape-plane"}


def test_each_then_arm_gets_the_plane_through_its_start_itself_and_its_optimizers_plain_arm(tmp_path: Path) -> None:
    nodes = planes(tmp_path, {"grid": 5, "images": 50})
    three = {"adahessian-then-sgd": ["adahessian", "adahessian-then-sgd", "sgd"],
             "sgd-then-adahessian": ["sgd", "sgd-then-adahessian", "adahessian"]}
    assert sorted(nodes) == sorted(f"landscape-plane:{':'.join(arms)}:seed{s}" for arms in three.values()
                                   for s in (0, 1))
    node = nodes["landscape-plane:adahessian:adahessian-then-sgd:sgd:seed1"]
    arms = three["adahessian-then-sgd"]
    assert node.path == "analyses/landscape-plane/adahessian_vs_adahessian-then-sgd_vs_sgd/seed1"
    assert node.params["run_paths"] == [f"runs/{arm}/seed1" for arm in arms]
    assert node.depends_on == tuple(f"run:{arm}:seed1" for arm in arms)
    assert node.labels == {"arms": arms, "seed": 1} and node.params["options"] == {"grid": 5, "images": 50}
    # keyed by its options and its runs' keys
    again = planes(tmp_path, {"grid": 5, "images": 50})["landscape-plane:adahessian:adahessian-then-sgd:sgd:seed1"]
    other = planes(tmp_path, {"grid": 7, "images": 50})["landscape-plane:adahessian:adahessian-then-sgd:sgd:seed1"]
    assert node.key == again.key != other.key
    assert node.key != nodes["landscape-plane:adahessian:adahessian-then-sgd:sgd:seed0"].key
    # ``arms`` picks the then-arms drawn
    chosen = planes(tmp_path, {"arms": ["sgd-then-adahessian", "sgd"], "images": 50})
    assert sorted(chosen) == [f"landscape-plane:sgd:sgd-then-adahessian:adahessian:seed{s}" for s in (0, 1)]


def test_a_study_without_the_row_plans_no_plane_and_bad_options_are_one_line(tmp_path: Path) -> None:
    spec = load_spec(study_file(tmp_path / "none.yaml", ARMS, {"landscape": {"grid": 3, "images": 50}}))
    assert not [n for n in study_nodes(spec, "torchvision", None, None) if n.kind == "landscape-plane"]
    for options, message in (({"margin": -1}, "landscape-plane: margin must be a number >= 0 and <= 10, got -1"),
                             ({"span": 1.0}, "landscape-plane: unknown key 'span'"),
                             ({"grid": 2}, "landscape-plane: grid must be an integer >= 3 and <= 201, got 2")):
        with pytest.raises(MinimascopeError, match=message):
            load_spec(study_file(tmp_path / "bad.yaml", ARMS, {"landscape-plane": options}))


def own_loss(run: Path, source: str, images: int, seed: int) -> float:
    """A run's loss on the surface's images computed plainly: one train-mode pass (batch norm normalising by
    the statistics of those very images), as ``bn recompute`` evaluates a point."""
    model, payload = models.load_trained(run)
    config = TrainConfig.from_mapping({**read_run_json(run)["config"], "data": source})
    trained_on = make_splits(config, torch.device("cpu")).train  # the images the run was trained on, as it cut them
    inputs, labels = balanced_inputs(payload, *trained_on, images, seed)
    with torch.no_grad():
        return F.cross_entropy(copy.deepcopy(model).train()(inputs), labels).item()


def test_a_study_plans_runs_and_reports_a_surface_and_a_plane(cifar_source: str, tmp_path: Path) -> None:
    arms = {name: ARMS[name] for name in ("sgd", "adahessian", "adahessian-then-sgd")}
    file = study_file(tmp_path / "tiny.yaml", arms, {"landscape": {"arms": ["sgd"], "grid": 3, "images": 10},
                                                     "landscape-plane": {"grid": 3, "images": 10}},
                      seeds=(0,), train_subset=20, test_subset=20, batch_size=10)
    study = tmp_path / "study"
    result = invoke("study", str(file), "--out", str(study), "--data", cifar_source)
    assert result.exit_code == 0, result.output
    nodes = {n["id"]: n for n in json.loads((study / "study.json").read_text())["nodes"]}
    plane_id = "landscape-plane:adahessian:adahessian-then-sgd:sgd:seed0"
    assert nodes[plane_id]["status"] == nodes["landscape:sgd:seed0"]["status"] == "completed"
    assert nodes[plane_id]["arms"] == ["adahessian", "adahessian-then-sgd", "sgd"]
    plane = read_landscape(study / nodes[plane_id]["path"])
    assert plane.kind == "plane" and len(plane.x) == len(plane.y) == 3 and plane.images == 10
    assert plane.dataset_title == "CIFAR-10" and plane.settings["dataset"] == "cifar10"
    for point, arm in zip(plane.points, ["adahessian", "adahessian-then-sgd", "sgd"]):
        assert point.values.train_loss == pytest.approx(own_loss(study / "runs" / arm / "seed0", cifar_source, 10, 0),
                                                        rel=1e-4, abs=1e-5), arm
    result = invoke("report", str(study))
    assert result.exit_code == 0, result.output
    page = (study / "report" / "index.html").read_text()
    section = page[page.index("Loss surfaces: the picture of each minimum"):]
    assert "contours of the training loss around each arm" in section
    assert "the training loss on the plane through three networks" in section
    assert "adahessian · adahessian-then-sgd · sgd" in section and "<td>adahessian-then-sgd</td>" in section
    assert "10 CIFAR-10 training images" in section and "no landscape-plane nodes" not in section


def test_the_quick_preset_draws_each_plain_arms_surface_and_each_then_arms_plane() -> None:
    nodes = study_nodes(load_spec("quick"), "torchvision", None, None)
    surfaces = sorted(n.id for n in nodes if n.kind == "landscape")
    assert surfaces == sorted(f"landscape:{arm}:seed{s}" for arm in ("sgd", "adahessian") for s in (0, 1, 2))
    assert sorted(n.id for n in nodes if n.kind == "landscape-plane") == sorted(
        f"landscape-plane:{three}:seed{s}" for three in ("adahessian:adahessian-then-sgd:sgd",
                                                         "sgd:sgd-then-adahessian:adahessian") for s in (0, 1, 2))
