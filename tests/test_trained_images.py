"""The training images of an analysis are those its networks were trained on: a run's class-balanced
``train_subset`` less the images it held out for validation, read from its run.json; all of them for a weights
file of no run. Checked against the images a run's own training splits give (``make_splits``), on fake resnet18
runs and on synthetic labels; and the study refuses, before anything trains, to draw more than an arm trains on."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from helpers import assert_one_line_error, invoke, resnet18_run
from minimascope import data, io
from minimascope.analyses import ANALYSES
from minimascope.config import TrainConfig
from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_json
from minimascope.minima import connectivity, landscape, sharpness
from minimascope.minima.common import trained_images
from minimascope.runs import FINAL_WEIGHTS, RUN_FORMAT, RUN_JSON
from minimascope.splits import make_splits
from minimascope.study import kinds
from minimascope.study.graph import Node
from minimascope.study.spec import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")
TRAINED = {"train_subset": 100, "val_size": 20, "data_seed": 3}


def run_splits(config: dict[str, Any], source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's own training and validation images, as its training cut them, normalised (rows: flat images)."""
    splits = make_splits(TrainConfig.from_mapping({**config, "data": source}), torch.device("cpu"))
    normalization = data.Normalization()
    return (normalization(splits.train[0]).flatten(1), normalization(splits.val[0]).flatten(1))


def rows_among(rows: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """For each row, whether it equals some row of ``pool``."""
    return (rows[:, None, :] == pool[None, :, :]).all(dim=2).any(dim=1)


def captured(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, position: int) -> list[torch.Tensor]:
    """Records the images argument (at ``position``) of each call of ``module.name``, still calling it."""
    seen: list[torch.Tensor] = []
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        seen.append(args[position])
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return seen


def test_a_surface_draws_its_training_images_among_those_its_run_trained_on(
        cifar_source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = resnet18_run(tmp_path / "run", config=TRAINED)
    seen = captured(monkeypatch, landscape, "random_surface", 1)
    surface = landscape.landscape_of_run(run, tmp_path / "out", grid=3, images=30, data_source=cifar_source,
                                         device="cpu")
    trained, held_out = run_splits(TRAINED, cifar_source)
    drawn = seen[0][0].flatten(1)
    assert len(drawn) == 30 and rows_among(drawn, trained).all() and not rows_among(drawn, held_out).any()
    assert torch.bincount(seen[0][1], minlength=10).tolist() == [3] * 10  # class-balanced
    assert surface.settings["drawn_from"] == "the 80 training images run trained on"
    assert landscape.read_landscape(tmp_path / "out").settings["drawn_from"] == surface.settings["drawn_from"]


def test_sharpness_and_connectivity_draw_among_the_runs_training_images(
        cifar_source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = [resnet18_run(tmp_path / name, seed, config=TRAINED) for seed, name in enumerate(("a", "b"))]
    trained, _ = run_splits(TRAINED, cifar_source)
    seen = captured(monkeypatch, sharpness, "sharpness", 1)
    result = sharpness.sharpness_of_run(runs[0], tmp_path / "sharpness", images=10, data_source=cifar_source,
                                        device="cpu", k=1, max_iter=2, max_probes=2, density_steps=2,
                                        adaptive=False)
    assert rows_among(seen[0].flatten(1), trained).all()
    assert result.settings["drawn_from"] == "the 80 training images a trained on"
    seen = captured(monkeypatch, connectivity, "linear_connectivity", 2)
    result = connectivity.connectivity_of_runs(*runs, tmp_path / "connectivity", points=2, images=500, align=False,
                                               data_source=cifar_source, device="cpu")
    # at most the 80 both trained on, however many were asked for
    assert len(seen[0]) == 80 and rows_among(seen[0].flatten(1), trained).all()
    assert result.settings["drawn_from"] == "the 80 training images a and b all trained on; the test set"


def test_a_weights_file_of_no_run_draws_among_all_training_images(cifar_source: str, tmp_path: Path) -> None:
    run = resnet18_run(tmp_path / "run", config=TRAINED)
    (tmp_path / "loose").mkdir()
    shutil.copy(run / FINAL_WEIGHTS, tmp_path / "loose" / "weights.pt")
    surface = landscape.landscape_of_run(tmp_path / "loose" / "weights.pt", tmp_path / "out", grid=3, images=200,
                                         data_source=cifar_source, device="cpu")
    assert surface.settings["drawn_from"].startswith("all ") and surface.images == 200
    # the run's own final.pt is the run's: its training images
    surface = landscape.landscape_of_run(run / FINAL_WEIGHTS, tmp_path / "again", grid=3, images=20,
                                         data_source=cifar_source, device="cpu")
    assert surface.settings["drawn_from"] == "the 80 training images final trained on"


def test_more_images_than_the_run_trained_on_is_one_line(cifar_source: str, tmp_path: Path) -> None:
    run = resnet18_run(tmp_path / "run", config=TRAINED)
    for command in (("landscape", "--grid", "3"), ("sharpness",)):
        result = invoke(command[0], str(run), *command[1:], "--images", "90", "--data", cifar_source,
                        "--out", str(tmp_path / command[0]), "--device", "cpu")
        assert_one_line_error(result, "--images must be in 1..80 (the 80 training images run trained on), got 90")
        assert not (tmp_path / command[0]).exists()


def synthetic_runs(tmp_path: Path, configs: dict[str, dict[str, Any]]) -> list[Path]:
    for name, config in configs.items():
        (tmp_path / name).mkdir()
        atomic_write_json(tmp_path / name / RUN_JSON, {"format": RUN_FORMAT, "status": "completed", "config": config})
    return [tmp_path / name for name in configs]


def test_networks_of_several_runs_share_the_images_all_of_them_trained_on(tmp_path: Path) -> None:
    labels = torch.arange(10).repeat(50)
    runs = synthetic_runs(tmp_path, {"a": {"train_subset": 100, "data_seed": 0},
                                     "b": {"train_subset": 100, "data_seed": 1}, "whole": {}})
    index, text = trained_images(runs, labels)
    assert index is not None
    shared = set(data.balanced_subset(labels, 100, 0).tolist()) & set(data.balanced_subset(labels, 100, 1).tolist())
    assert set(index.tolist()) == shared and text == f"the {len(shared)} training images a and b all trained on"
    assert trained_images(runs[2:], labels) == (None, "all 500 training images")


def test_runs_that_share_no_training_image_are_one_line(tmp_path: Path) -> None:
    labels = torch.arange(4).repeat(2)  # two images a class: subsets of 4 take one of each
    first = set(data.balanced_subset(labels, 4, 0).tolist())
    seed = next(s for s in range(1, 1000) if not first & set(data.balanced_subset(labels, 4, s).tolist()))
    runs = synthetic_runs(tmp_path, {"a": {"train_subset": 4, "data_seed": 0},
                                     "b": {"train_subset": 4, "data_seed": seed}})
    with pytest.raises(MinimascopeError, match="a and b were trained on different training images, none shared"):
        trained_images(runs, labels)


STUDY = {"defaults": {"epochs": 1, "train_subset": 200, "test_subset": 50},
         "seeds": [0], "arms": {"sgd": {"optimizer": "sgd"}, "held": {"optimizer": "sgd", "val_size": 50}}}


@pytest.mark.parametrize(("analyses", "message"), [
    ({"landscape": {"images": 201, "arms": ["sgd"]}}, "landscape: images: 201 is more than the 200 training "
                                                      "images arm 'sgd' trains on (its train_subset)"),
    ({"sharpness": {"images": 160}}, "sharpness: images: 160 is more than the 150 training images arm 'held' "
                                     "trains on (its train_subset less those held out for validation)"),
    ({"landscape": {}}, "landscape: images: 1000 is more than the 150"),  # the default, and the fewest of any arm
])
def test_a_study_refuses_more_training_images_than_an_arm_trains_on(analyses: dict, message: str,
                                                                    tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "analyses": analyses}))
    with pytest.raises(MinimascopeError) as error:
        load_spec(path)
    assert message in str(error.value)
    path.write_text(yaml.safe_dump({**STUDY, "analyses": {"landscape": {"images": 150}, "sharpness": {"images": 150},
                                                          "connectivity": {"images": 1000}}}))
    load_spec(path)  # within every arm's images; connectivity takes at most what they trained on


def test_analyses_whose_training_images_changed_get_new_node_keys() -> None:
    def key(name: str) -> str:
        return kinds.kind(name).key(Node("n", name, "n", {"options": {"images": 10}}), ["run-key"])

    def old_key(name: str) -> str:
        return io.digest({"kind": name, "options": {"images": 10}, "runs": ["run-key"]})

    for name in ("sharpness", "connectivity", "landscape", "landscape-plane"):
        assert ANALYSES[name].version == 2 and key(name) != old_key(name)
    for name in ("weights", "mistakes", "seeds"):  # their results did not change: finished nodes stay finished
        assert key(name) == old_key(name)


def test_the_report_says_where_the_training_images_were_drawn_from() -> None:
    from minimascope.report.text import drawn_text

    own = {"drawn_from": "the 2,000 training images sgd seed0 trained on"}
    whole = {"drawn_from": "all 50,000 training images"}
    assert drawn_text([own, own]) == "drawn among the images each run was trained on"
    assert drawn_text([whole, {}]) == "drawn from the whole training split"  # {}: a result from before they said
    assert drawn_text([own, whole]) == ("drawn among the images each run was trained on / drawn from the whole "
                                        "training split")
