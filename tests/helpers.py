"""Helpers the test modules share (fixtures live in conftest.py): synthetic CIFAR-10 sources in each
real format, tiny networks, the CLI runner and its one-line-error check."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from minimascope.cli import app
from minimascope.config import TrainConfig
from minimascope.data import CLASSES

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
        for label, name in enumerate(CLASSES):
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
