"""Shared fixtures: tiny synthetic CIFAR-10 sources, a private decode cache, the real archive when present."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import TINY_NODES, build_fake_study, make_archive, make_image_tree
from minimascope import io, models
from minimascope.report import write_report
from minimascope.study import run_study


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


@pytest.fixture(scope="session")
def fake_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report's fake study directory (helpers.build_fake_study), built once per session."""
    return build_fake_study(tmp_path_factory.mktemp("study") / "fake")


@pytest.fixture(scope="session")
def report_page(fake_study: Path) -> Path:
    """The fake study's report, written once per session: ``report/index.html``."""
    return write_report(fake_study)
