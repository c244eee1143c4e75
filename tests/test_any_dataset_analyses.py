"""Every analysis of trained networks on runs of any data set and architecture: compare, sharpness, mistakes and
connectivity, through the command line, on tiny runs of a 3-class 24x24 RGB image folder (torchvision's
resnet34) and a 3-class 28x28 grayscale one (resnet18-cifar); weight matching of a plain chain of layers, and
an architecture it has no rule for walked without it; networks of two data sets refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from helpers import assert_one_line_error, invoke
from minimascope import io, models
from minimascope.config import TrainConfig
from minimascope.minima import connectivity, matching
from minimascope.minima.connectivity import read_connectivity
from minimascope.minima.mistakes import ONLY_A_PNG, compare_mistakes, mistake_grid, read_mistakes
from minimascope.minima.sharpness import read_sharpness
from minimascope.runs import FINAL_WEIGHTS
from minimascope.train import train
from test_datasets import write_tree

pytestmark = pytest.mark.usefixtures("one_thread")

RGB_CLASSES, GRAY_CLASSES = ("cat", "dog", "fox"), ("one", "three", "two")  # sorted: the label order
TEST_IMAGES = 6  # write_tree's 2 test images per class
FAST_SHARPNESS = ("--images", "8", "--k", "1", "--tol", "0.5", "--max-iter", "3", "--rel-error", "0.5",
                  "--max-probes", "2", "--density-steps", "2", "--no-adaptive", "--device", "cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cache: str) -> dict[str, Path]:
    """Two seeds of one epoch on each image folder (30 training, 6 test images): ``rgb0``, ``rgb1``
    (torchvision:resnet34), ``gray0``, ``gray1`` (resnet18-cifar); ``rgb-data`` and ``gray-data`` their trees."""
    root = tmp_path_factory.mktemp("any-dataset")
    paths = {}
    write_tree(root / "rgb-data", RGB_CLASSES, (24, 24), "RGB", per_class=10)
    write_tree(root / "gray-data", GRAY_CLASSES, (28, 28), "L", per_class=10)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINIMASCOPE_CACHE", cache)
        for name, arch in (("rgb", "torchvision:resnet34"), ("gray", "resnet18-cifar")):
            paths[f"{name}-data"] = root / f"{name}-data"
            for seed in (0, 1):
                config = TrainConfig(dataset="imagefolder", data=str(root / f"{name}-data"), arch=arch, epochs=1,
                                     batch_size=16, eval_batch_size=32, augment=False, device="cpu", seed=seed)
                paths[f"{name}{seed}"] = root / f"{name}{seed}"
                assert train(config, paths[f"{name}{seed}"])["status"] == "completed"
    return paths


def weights_like(run: Path, arch: str, seed: int, path: Path) -> Path:
    """A weights file of a fresh ``arch`` network for the data set of ``run`` (its classes, channels and
    normalisation): an untrained network is as good as a trained one to walk a path between."""
    payload = models.read_weights(run)
    model = models.build_model(arch, payload["num_classes"], seed=seed, in_channels=models.payload_channels(payload))
    io.atomic_torch_save(path, models.weights_payload(model, arch, payload["num_classes"], payload["normalization"],
                                                      dataset=payload["dataset"]))
    return path


def cifar10_weights(path: Path) -> Path:
    """A CIFAR-10 resnet18 weights file (no data set recorded: CIFAR-10's, as every older payload)."""
    normalization = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616], "std_multiplier": [1.0] * 3}
    model = models.build_model("resnet18", 10, seed=0)
    io.atomic_torch_save(path, models.weights_payload(model, "resnet18", 10, normalization))
    return path


def test_compare_finds_the_layers_of_any_architecture(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rgb"
    result = invoke("compare", str(runs["rgb0"]), str(runs["rgb1"]), "--data", str(runs["rgb-data"]), "--measures",
                    "cka", "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    cka = json.loads((out / "cka.json").read_text())
    # resnet34: the stem, 3 + 4 + 6 + 3 blocks of two convs, 3 downsamples and fc
    assert len(cka["layers_a"]) == 1 + 2 * 16 + 3 + 1 and cka["layers_a"][-2:] == ["layer4.2.conv2", "fc"]
    assert cka["n_samples"] == TEST_IMAGES  # all of them by default
    assert json.loads((out / "comparison.json").read_text())["settings"]["samples"] == TEST_IMAGES
    out = tmp_path / "gray"
    result = invoke("compare", str(runs["gray0"]), str(runs["gray1"]), "--data", str(runs["gray-data"]), "--measures",
                    "cka", "--layer-set", "blocks", "--samples", "3", "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    cka = json.loads((out / "cka.json").read_text())
    assert cka["layers_a"] == ["conv1", *(f"layer{s}.{b}" for s in range(1, 5) for b in range(2)), "fc"]
    assert cka["n_samples"] == 3


def test_sharpness_of_a_grayscale_run(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sharp"
    result = invoke("sharpness", str(runs["gray0"]), "--data", str(runs["gray-data"]), "--out", str(out),
                    *FAST_SHARPNESS)
    assert result.exit_code == 0, result.output
    sharpness = read_sharpness(out)
    assert sharpness.n_images == 8 and sharpness.settings["dataset"] == "imagefolder"
    assert np.isfinite(sharpness.eigenvalues.values[0]) and np.isfinite(sharpness.loss)


@pytest.mark.parametrize(("name", "classes"), [("rgb", RGB_CLASSES), ("gray", GRAY_CLASSES)])
def test_mistakes_are_named_by_the_data_sets_classes(runs: dict[str, Path], tmp_path: Path, name: str,
                                                     classes: tuple[str, ...]) -> None:
    out = tmp_path / "mistakes"
    result = invoke("mistakes", str(runs[f"{name}0"]), str(runs[f"{name}1"]), "--data", str(runs[f"{name}-data"]),
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    mistakes = read_mistakes(out)
    assert mistakes.class_names == classes and mistakes.n == TEST_IMAGES
    assert [c.class_name for c in mistakes.per_class] == list(classes)
    assert Image.open(out / ONLY_A_PNG).size[0] > 0


def test_mistakes_on_another_source_is_one_line(runs: dict[str, Path], tmp_path: Path) -> None:
    run_a, run_b, out = str(runs["rgb0"]), str(runs["rgb1"]), str(tmp_path / "o")
    assert_one_line_error(invoke("mistakes", run_a, run_b, "--data", str(runs["gray-data"]), "--out", out),
                          "pass their source with --data")
    # the same classes and images, one test image fewer: the runs' test labels are not this source's
    other = tmp_path / "other"
    shutil.copytree(runs["rgb-data"], other)
    (other / "test" / "cat" / "00.png").unlink()
    assert_one_line_error(invoke("mistakes", run_a, run_b, "--data", str(other), "--out", out),
                          "the image folder source given is not the one the runs were tested on")
    assert_one_line_error(invoke("mistakes", run_a, run_b, "--out", out), "imagefolder needs a source")


def test_a_grid_of_grayscale_mistakes_of_any_size() -> None:
    labels = np.array([0, 1, 2, 0, 1])
    comparison = compare_mistakes([1, 1, 2, 0, 0], labels, labels, class_names=GRAY_CLASSES)
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 20, 12), dtype=np.uint8)
    figure = mistake_grid(images, comparison.only_a, comparison, "only A wrong")
    shown = [axes.images[0] for axes in figure.axes if axes.images]
    assert len(shown) == 2 and all(image.get_cmap().name == "gray" for image in shown)
    assert shown[0].get_array().shape == (20, 12)
    assert "#0 one" in figure.axes[0].get_title()


def test_connectivity_of_runs_of_any_data_set(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rgb"
    result = invoke("connectivity", str(runs["rgb0"]), str(runs["rgb1"]), "--data", str(runs["rgb-data"]),
                    "--out", str(out), "--points", "2", "--images", "6", "--no-align", "--device", "cpu")
    assert result.exit_code == 0, result.output
    walked = read_connectivity(out)
    assert walked.n_train == walked.n_test == 6 and walked.settings["dataset"] == "imagefolder"
    assert "image folder train and test sets" in walked.settings["images"]
    out = tmp_path / "gray"
    result = invoke("connectivity", str(runs["gray0"]), str(runs["gray1"]), "--data", str(runs["gray-data"]),
                    "--out", str(out), "--points", "3", "--images", "6", "--device", "cpu")
    assert result.exit_code == 0, result.output
    walked = read_connectivity(out)
    assert [c.variant for c in walked.curves] == ["interpolate", "recompute", "interpolate+matched",
                                                  "recompute+matched"]
    assert "alignment_skipped" not in walked.settings and "not aligned" not in result.output


def test_connectivity_without_a_permutation_rule_says_why(runs: dict[str, Path], tmp_path: Path) -> None:
    nets = [weights_like(runs["rgb0"], "torchvision:mobilenet_v2", seed, tmp_path / f"m{seed}.pt") for seed in (0, 1)]
    out = tmp_path / "mobile"
    result = invoke("connectivity", *map(str, nets), "--data", str(runs["rgb-data"]), "--out", str(out),
                    "--points", "2", "--images", "6", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "not aligned: weight matching has no permutation rule for MobileNetV2" in " ".join(result.output.split())
    walked = read_connectivity(out)
    assert [c.variant for c in walked.curves] == ["interpolate", "recompute"]
    assert "no permutation rule for MobileNetV2" in walked.settings["alignment_skipped"]
    assert "no plain chain" in walked.settings["alignment_skipped"]


def test_networks_of_two_data_sets_are_one_line(runs: dict[str, Path], tmp_path: Path) -> None:
    cifar = str(cifar10_weights(tmp_path / "cifar.pt"))
    rgb, gray = str(runs["rgb0"] / FINAL_WEIGHTS), str(runs["gray0"])
    common = ["--data", str(runs["rgb-data"]), "--device", "cpu"]
    for command in ("compare", "connectivity"):
        result = invoke(command, cifar, rgb, *common, "--out", str(tmp_path / command))
        assert_one_line_error(result, "cifar.pt was trained on CIFAR-10 (10 classes")
        assert "final.pt on image folder (3 classes: cat, dog, fox; 24x24 images of 3 channels)" in result.output
        result = invoke(command, rgb, gray, *common, "--out", str(tmp_path / command))
        assert_one_line_error(result, "28x28 images of 1 channel")
    result = invoke("mistakes", str(runs["rgb0"]), gray, "--data", str(runs["rgb-data"]), "--out", str(tmp_path / "m"))
    assert_one_line_error(result, "analyse networks of one data set together")
    assert not any((tmp_path / name).exists() for name in ("compare", "connectivity", "m"))


def test_weight_matching_of_a_plain_chain() -> None:
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                          nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5),
                          nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(), nn.Linear(5, 3))
    images = torch.randn(8, 1, 8, 8)
    with torch.no_grad():  # running statistics other than 0 and 1, so that a wrong permutation would show
        chain.train()(images)
    chain.eval()
    rule = matching.permutation_rule(chain, images)
    assert rule.kind == "plain chain" and rule.views == {"7.weight": (5, 6, 16)}
    assert rule.axes["7.weight"] == ("7", "4", None) and rule.axes["11.weight"] == (None, "7")
    twin = matching.permute_channels_randomly(chain, seed=1, example=images)
    with torch.no_grad():
        torch.testing.assert_close(twin(images), chain(images), rtol=1e-4, atol=1e-5)
    own, back = chain.state_dict(), matching.weight_matching(chain, twin, example=images).state_dict()
    assert all(torch.equal(own[key], back[key]) for key in own)
    labels = torch.randint(0, 3, (8,))
    walked = connectivity.linear_connectivity(chain, twin, images, labels, images, labels, points=3,
                                              bn_modes=("interpolate",), align=True)
    assert all(abs(v) < 1e-5 for v in walked.curve("interpolate+matched").barriers().values())
    with pytest.raises(matching.NoPermutationRule, match="a Softmax: a plain chain holds"):
        matching.permutation_rule(nn.Sequential(chain, nn.Softmax(dim=1)), images)  # it mixes the classes


def test_a_rule_that_does_not_keep_the_function_is_refused() -> None:
    """A ResNet by its modules whose forward reverses its channels somewhere: permuting them changes it."""

    def flipping(seed: int) -> nn.Module:
        model = models.build_model("resnet18-cifar", 3, seed=seed, in_channels=1).eval()
        forward = model.layer2[0].forward
        model.layer2[0].forward = lambda x: forward(x.flip(1))
        return model

    model, twin = flipping(0), flipping(1)
    images = torch.randn(2, 1, 16, 16)
    assert matching.permutation_rule(model).kind == "ResNet"  # by its modules alone, it is one
    with pytest.raises(matching.NoPermutationRule, match="its ResNet rule changes what the network computes"):
        matching.permutation_rule(model, images)
    walked = connectivity.linear_connectivity(model, twin, images, torch.tensor([0, 1]), images, torch.tensor([0, 1]),
                                              points=2, bn_modes=("interpolate",), align=True)
    assert [c.variant for c in walked.curves] == ["interpolate"]
    assert "changes what the network computes" in walked.settings["alignment_skipped"]
