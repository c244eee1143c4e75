"""Shared fixtures: tiny synthetic CIFAR-10 sources, a private decode cache, the real archive when present."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from minimascope import io, models
from minimascope.data import CLASSES
from minimascope.study import run_study


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


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test decodes into one cache of this session, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("MINIMASCOPE_CACHE", str(cache))
    monkeypatch.delenv("MINIMASCOPE_DATA", raising=False)
    return cache


def _shared_archive() -> str | None:
    """The real CIFAR-10 archive named by ``MINIMASCOPE_TEST_DATA``, if it exists."""
    shared = os.environ.get("MINIMASCOPE_TEST_DATA")
    return shared if shared and Path(shared).is_file() else None


@pytest.fixture(scope="session")
def shared_cifar() -> str:
    """The real CIFAR-10 archive, for tests that need real images to learn from."""
    shared = _shared_archive()
    if shared is None:
        pytest.skip("needs the real CIFAR-10: set MINIMASCOPE_TEST_DATA (make test does when ../shared/data has it)")
    return shared


@pytest.fixture(scope="session")
def cifar_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shared CIFAR-10 archive when ``MINIMASCOPE_TEST_DATA`` names one (make test does),
    else a small synthetic archive of the same layout, so end-to-end tests always run."""
    shared = _shared_archive()
    if shared is not None:
        return shared
    root = tmp_path_factory.mktemp("synthetic-cifar")
    make_image_tree(root / "tree", train_per_class=60, test_per_class=20)
    return str(make_archive(root / "tree", root / "cifar10-images.tar.gz"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread for the module: its tensors are tiny, and on shared cores a second
    OpenMP thread makes each op many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv_bn_net() -> nn.Module:
    """A tiny 2-D net for second-order tests: BN on the raw input (its input needs no gradient), BN
    after a biased conv (a zero Hessian block), tanh for curvature. Input (N, 1, 8, 8), 3 classes."""
    return nn.Sequential(
        nn.BatchNorm2d(1), nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(),
        nn.Linear(72, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3),
    )


# The tiny preset's nodes: 10 runs, 6 comparisons and 12 analyses of the minima (see tiny.yaml).
TINY_NODES = 28


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.getbasetemp() / "cache")  # the one conftest's private_cache names


@pytest.fixture(scope="session")
def imagenet_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A stand-in for torchvision's ImageNet weights: a seeded 1000-class resnet18 state dict."""
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pt"
    io.atomic_torch_save(path, models.build_model("resnet18", 1000, seed=123).state_dict())
    return str(path)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory, cifar_source: str, imagenet_file: str, cache: str) -> Path:
    """One completed tiny study (local executor), shared by the tests that only read it."""
    study_dir = tmp_path_factory.mktemp("tiny") / "study"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINIMASCOPE_CACHE", cache)
        outcome = run_study("tiny", study_dir, data=cifar_source, weights=imagenet_file)
    assert outcome.counts == {"completed": TINY_NODES}, outcome.records
    return study_dir
