"""A study, its report and a tune on another data set than CIFAR-10: a 3-class 24×24 image folder end to end, the
report naming that data set and its classes (escaped), one data set per study and per tune, `minimascope datasets`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import assert_one_line_error, invoke
from minimascope import datasets
from minimascope.errors import MinimascopeError
from minimascope.report import figures, filter_figures, write_report
from minimascope.study import run_study
from minimascope.tune import load_tune, tune_dataset
from test_datasets import write_tree

# Folder names that are markup, to see them escaped on the page.
CLASSES = ("<zebra>", "a&b", "moth")
STUDY = {
    "defaults": {"dataset": "imagefolder", "arch": "torchvision:resnet34", "epochs": 1, "batch_size": 16,
                 "eval_batch_size": 64, "device": "cpu"},
    "seeds": [0],
    "arms": {"sgd": {"optimizer": "sgd", "lr": 0.01}, "adam": {"optimizer": "adam", "lr": 0.001}},
    "compare": {"measures": ["cka"], "samples": 6, "within": False},
    "analyses": {"connectivity": {"points": 3, "images": 6}, "mistakes": True},
}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes of 24×24 RGB images: 10 training and 2 test images each."""
    root = tmp_path_factory.mktemp("any-dataset") / "tree"
    write_tree(root, CLASSES, (24, 24), "RGB", per_class=10)
    return root


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def test_a_study_and_its_report_on_an_image_folder(image_folder: Path, tmp_path: Path, one_thread: None) -> None:
    study_dir = tmp_path / "study"
    outcome = run_study(write_yaml(tmp_path / "study.yaml", STUDY), study_dir, data=str(image_folder))
    assert outcome.counts == {"completed": 5}, outcome.records  # two runs, one comparison, connectivity, mistakes
    header = json.loads((study_dir / "study.json").read_text())["data"]
    assert {k: header[k] for k in ("dataset", "title", "classes", "channels", "image_size", "train_images",
                                   "test_images")} == {
        "dataset": "imagefolder", "title": "image folder tree", "classes": sorted(CLASSES), "channels": 3,
        "image_size": [24, 24], "train_images": 30, "test_images": 6}
    page = write_report(study_dir).read_text()
    assert "CIFAR-10" not in page
    facts = "image folder tree (imagefolder): 3 classes (&lt;zebra&gt;, a&amp;b, moth), 3 channels, 24×24 images"
    assert facts in page and "<zebra>" not in page
    assert "this study ran on image folder tree, not on the paper's data set" in " ".join(page.split())
    assert (study_dir / "report" / "filters-conv1.png").is_file()  # the stem's colour kernels
    assert "Not aligned" not in page  # weight matching has a rule for every ResNet


def test_a_network_weight_matching_cannot_align_is_walked_and_the_report_says_why(image_folder: Path,
                                                                                   tmp_path: Path) -> None:
    study = {**STUDY, "defaults": {**STUDY["defaults"], "arch": "torchvision:mobilenet_v2"},
             "compare": {**STUDY["compare"], "measures": ["cka"]}, "analyses": {"connectivity": {"points": 3,
                                                                                               "images": 6}}}
    outcome = run_study(write_yaml(tmp_path / "study.yaml", study), tmp_path / "study", data=str(image_folder))
    assert outcome.counts == {"completed": 4}, outcome.records
    page = " ".join(write_report(tmp_path / "study").read_text().split())
    assert "Not aligned: sgd vs adam: weight matching has no permutation rule for MobileNetV2" in page


def test_the_arms_of_a_study_share_one_data_set(image_folder: Path, tmp_path: Path) -> None:
    study = {**STUDY, "arms": {"sgd": {"optimizer": "sgd"}, "digits": {"optimizer": "sgd", "dataset": "mnist"}}}
    result = invoke("study", str(write_yaml(tmp_path / "two.yaml", study)), "--out", str(tmp_path / "out"),
                    "--data", str(image_folder))
    assert_one_line_error(result, "the arms name 2 data sets (sgd: imagefolder, digits: mnist)")
    assert not (tmp_path / "out" / "study.json").exists()


def test_datasets_lists_every_data_set_and_the_architecture_forms() -> None:
    from typer.testing import CliRunner

    from minimascope.cli import app

    result = CliRunner().invoke(app, ["datasets"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    names = [line.split("│")[1].strip() for line in result.output.splitlines() if line.count("│") > 3]
    assert [n for n in names if n in datasets.DATASETS] == list(datasets.DATASETS) and len(datasets.DATASETS) == 6
    models = CliRunner().invoke(app, ["models"], env={"COLUMNS": "250"})
    assert models.exit_code == 0, models.output
    for form in ("resnet18", "resnet18-cifar", "torchvision:NAME", "timm:NAME"):
        assert f"│ {form} " in result.output and f"│ {form} " in models.output
    # in an 80-column terminal only the --data column wraps: each data set's name and images stay on its first line
    narrow = CliRunner().invoke(app, ["datasets"], env={"COLUMNS": "80"})
    rows = [line for line in narrow.output.splitlines() if line.startswith("│ ") and line.split("│")[1].strip()]
    assert max(map(len, narrow.output.splitlines())) <= 80
    assert [row.split("│")[1].strip() for row in rows][:6] == list(datasets.DATASETS)
    assert "│ 3×32×32 │" in rows[0] and "│ any " in rows[5]


def test_tune_folds_are_checked_against_the_smallest_class_of_an_image_folder(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write_tree(tree, ("ant", "bee", "cat"), (12, 12), "L", per_class=4)
    (tree / "train" / "bee" / "00.png").unlink()  # bee: 3 training images
    grid = {"defaults": {"dataset": "imagefolder", "arch": "resnet18-cifar", "epochs": 1}, "folds": 4,
            "grid": {"optimizer": "sgd", "lr": [0.1]}}
    result = invoke("tune", str(write_yaml(tmp_path / "whole.yaml", grid)), "--out", str(tmp_path / "a"),
                    "--data", str(tree))
    assert_one_line_error(result, "folds: 4 folds need at least 4 training images of each class; the training set")
    assert "has 3 of its smallest class" in " ".join(result.output.split())
    # a class-balanced subset of an image folder: its classes are known once the folder is read
    grid["defaults"]["train_subset"] = 9
    result = invoke("tune", str(write_yaml(tmp_path / "subset.yaml", grid)), "--out", str(tmp_path / "b"),
                    "--data", str(tree))
    assert_one_line_error(result, "folds: 4 folds need at least 4 training images of each class; train_subset 9 "
                                  "has 3 of its smallest class")
    assert not (tmp_path / "b" / "runs").exists()  # nothing trained


def test_tune_folds_of_a_named_data_set_are_checked_before_its_data(tmp_path: Path) -> None:
    grid = {"defaults": {"dataset": "cifar100", "train_subset": 300}, "folds": 5, "grid": {"lr": [0.1]}}
    with pytest.raises(MinimascopeError, match="5 folds need at least 5 training images of each class; "
                                               "train_subset 300 has 3 of its smallest class"):
        load_tune(write_yaml(tmp_path / "grid.yaml", grid))
    two = {**grid, "grid": [{"lr": 0.1}, {"lr": 0.1, "dataset": "cifar10"}]}
    with pytest.raises(MinimascopeError, match="the settings name 2 data sets \\(cifar100, cifar10\\)"):
        tune_dataset(load_tune(write_yaml(tmp_path / "two.yaml", {**two, "defaults": {"dataset": "cifar100"}})))


def test_grayscale_stem_kernels_are_drawn_as_gray_patches(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    kernels = {"sgd": rng.normal(size=(8, 1, 3, 3)), "adam": rng.normal(size=(8, 1, 3, 3))}
    scale = filter_figures.common_scale(list(kernels.values()))
    filter_figures.filters_figure(kernels, tmp_path / "gray.png", scale=scale)
    pixels = np.asarray(Image.open(tmp_path / "gray.png").convert("RGB")).astype(int)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()  # no colour
    assert len(np.unique(pixels[..., 0])) > 8  # the kernels' shades, not a blank panel


def test_class_names_are_drawn_as_written_however_many(tmp_path: Path) -> None:
    names = ("$\\nosuch$", "50%_a", *(f"class {i}" for i in range(98)))  # as mathtext: an unknown symbol
    rates = np.linspace(0, 1, len(names))
    pair = figures.ClassErrors("sgd vs adam", names, "sgd", "adam", rates, rates[::-1])
    svg = figures.class_errors_figure([pair], tmp_path / "classes.svg").read_text()
    assert "$\\nosuch$" in svg and "class 97" in svg


def test_pretrained_arms_of_other_architectures_fetch_their_own_weights(tmp_path: Path) -> None:
    """Only resnet18 arms read the study's ImageNet weights file and are skipped without it; a torchvision
    architecture's pretrained arm is planned to fetch its own published weights."""
    from minimascope.study.plan import study_nodes
    from minimascope.study.spec import load_spec

    spec = load_spec(write_yaml(tmp_path / "study.yaml", {
        "defaults": {"epochs": 1}, "seeds": [0],
        "arms": {"resnet18": {"optimizer": "sgd", "pretrained": True},
                 "resnet34": {"optimizer": "sgd", "pretrained": True, "arch": "torchvision:resnet34"}}}))
    (tmp_path / "imagenet.pth").write_bytes(b"resnet18's weights, as far as the plan looks")  # hashed, not read
    for weights, missing in ((str(tmp_path / "imagenet.pth"), None), (None, "no ImageNet weights here")):
        nodes = {node.labels["arm"]: node for node in study_nodes(spec, "torchvision", weights, missing)
                 if node.kind == "run"}
        assert nodes["resnet18"].params["config"]["weights"] == weights
        assert nodes["resnet18"].skip_reason == missing
        assert nodes["resnet34"].params["config"]["weights"] is None and nodes["resnet34"].skip_reason is None
        assert nodes["resnet34"].params["config"]["pretrained"] is True
