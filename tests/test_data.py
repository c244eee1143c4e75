from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import make_archive, make_image_tree, write_batches_py
from minimascope import data, datasets
from minimascope.errors import MinimascopeError

CIFAR10 = datasets.get("cifar10")


def assert_loaded(cifar: data.ImageData, expected: dict[str, np.ndarray]) -> None:
    for name, array in expected.items():
        assert np.array_equal(getattr(cifar, name).numpy(), array), name


def test_image_folder_tree_and_archive_decode_to_the_same_pixels(tmp_path: Path) -> None:
    expected = make_image_tree(tmp_path / "tree")
    assert_loaded(data.load("cifar10", tmp_path / "tree"), expected)
    assert_loaded(data.load("cifar10", make_archive(tmp_path / "tree", tmp_path / "c.tar.gz")), expected)
    # The archive keeps a top folder; the tree itself may also be the top.
    assert_loaded(data.load("cifar10", make_archive(tmp_path / "tree", tmp_path / "flat.tar.gz", top=".")), expected)


def test_pickled_batches_folder_and_its_parent(tmp_path: Path) -> None:
    expected = make_image_tree(tmp_path / "tree")
    write_batches_py(tmp_path / "root" / "cifar-10-batches-py", expected)
    assert_loaded(data.load("cifar10", tmp_path / "root"), expected)
    assert_loaded(data.load("cifar10", tmp_path / "root" / "cifar-10-batches-py"), expected)


def test_environment_variable_names_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = make_image_tree(tmp_path / "tree")
    monkeypatch.setenv("MINIMASCOPE_DATA", str(tmp_path / "tree"))
    assert_loaded(data.load("cifar10", None), expected)


def test_cache_is_reused_and_never_stale(tmp_path: Path, private_cache: Path) -> None:
    make_image_tree(tmp_path / "tree", seed=1)
    archive = make_archive(tmp_path / "tree", tmp_path / "c.tar.gz")
    first = data.load("cifar10", archive)
    cached = set(private_cache.glob("cifar10-*.npz"))
    assert data.load("cifar10", archive).train_images.equal(first.train_images)
    assert set(private_cache.glob("cifar10-*.npz")) == cached  # served from the cache
    # Same path, new content: a new key, new pixels.
    (tmp_path / "tree2").mkdir()
    changed = make_image_tree(tmp_path / "tree2" / "t", seed=2)
    make_archive(tmp_path / "tree2" / "t", archive)
    assert_loaded(data.load("cifar10", archive), changed)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_archive_is_one_clear_error(tmp_path: Path, damage: str) -> None:
    make_image_tree(tmp_path / "tree")
    archive = make_archive(tmp_path / "tree", tmp_path / "c.tar.gz")
    content = archive.read_bytes()
    archive.write_bytes(b"not a tar file at all" * 100 if damage == "garbage" else content[: len(content) // 2])
    with pytest.raises(MinimascopeError, match="corrupt or truncated archive"):
        data.load("cifar10", archive)


def test_bad_layouts_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MinimascopeError, match="source not found"):
        data.load("cifar10", tmp_path / "nowhere")
    make_image_tree(tmp_path / "small", size=(28, 28))
    with pytest.raises(MinimascopeError, match="is 28x28; CIFAR-10 images are 32x32"):
        data.load("cifar10", tmp_path / "small")
    make_image_tree(tmp_path / "missing", skip=("test", "cat"))
    with pytest.raises(MinimascopeError, match="test/ lacks class folder.*cat"):
        data.load("cifar10", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MinimascopeError, match="no train/<class>/"):
        data.load("cifar10", tmp_path / "empty")


def test_normalization_closed_form_and_std_multiplier() -> None:
    values = torch.tensor([0, 51, 255], dtype=torch.uint8)
    images = values.view(1, 3, 1, 1).expand(2, 3, 4, 4).contiguous()
    for multiplier in [(1.0, 1.0, 1.0), (1e-4, 1.0, 1000.0)]:
        out = data.Normalization(std_multiplier=multiplier)(images)
        expected = [m * (v / 255 - mu) / s for v, mu, s, m in
                    zip(values.tolist(), CIFAR10.mean, CIFAR10.std, multiplier)]
        assert out.dtype == torch.float32
        torch.testing.assert_close(out[0, :, 0, 0], torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=1e-8)
    # The multiplier sets the std of what the network sees: std(x̂) = m · std(x) / std_c.
    pixels = torch.randint(0, 256, (500, 3, 8, 8), dtype=torch.uint8)
    plain = data.Normalization()(pixels)
    scaled = data.Normalization(std_multiplier=(1000.0, 1000.0, 1000.0))(pixels)
    torch.testing.assert_close(scaled.std(dim=(0, 2, 3)), 1000 * plain.std(dim=(0, 2, 3)), rtol=1e-5, atol=0)


def test_random_crop_flip_matches_per_image_reference() -> None:
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(3)
    replay = torch.Generator().manual_seed(3)
    out = data.random_crop_flip(images, generator)
    offsets = torch.randint(0, 9, (16, 2), generator=replay)
    flips = torch.rand(16, generator=replay) < 0.5
    assert 0 < flips.sum() < 16
    for i in range(16):
        y, x = offsets[i].tolist()
        crop = F.pad(images[i], (4, 4, 4, 4))[:, y:y + 32, x:x + 32]
        assert torch.equal(out[i], crop.flip(-1) if flips[i] else crop)


def test_batches_cover_every_image_once_in_a_seeded_order() -> None:
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).contiguous()
    labels = torch.arange(100)
    norm = data.Normalization(mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))  # identity on pixel values

    def epoch(seed: int) -> torch.Tensor:
        batches = list(data.iterate_batches(images, labels, 32, norm, generator=torch.Generator().manual_seed(seed)))
        assert [len(y) for _, y in batches] == [32, 32, 32, 4]
        for x, y in batches:  # images travel with their labels
            assert torch.equal(x[:, 0, 0, 0].round().long(), y)
        return torch.cat([y for _, y in batches])

    order = epoch(0)
    assert sorted(order.tolist()) == list(range(100)) and not torch.equal(order, labels)
    assert torch.equal(order, epoch(0)) and not torch.equal(order, epoch(1))
    unshuffled = torch.cat([y for _, y in data.iterate_batches(images, labels, 32, norm)])
    assert torch.equal(unshuffled, labels)


def test_balanced_subset_and_holdout() -> None:
    labels = torch.arange(10).repeat_interleave(30)
    subset = data.balanced_subset(labels, 45, seed=0)
    counts = labels[subset].bincount(minlength=10)
    assert len(subset) == 45 and counts.max() - counts.min() <= 1 and len(set(subset.tolist())) == 45
    assert torch.equal(subset, data.balanced_subset(labels, 45, seed=0))
    kept, held = data.stratified_split(labels, 50, seed=1)
    assert len(held) == 50 and labels[held].bincount().tolist() == [5] * 10
    assert set(kept.tolist()).isdisjoint(held.tolist()) and len(kept) + len(held) == 300
    with pytest.raises(MinimascopeError):
        data.balanced_subset(labels, 301, seed=0)


@pytest.mark.parametrize("folds", [2, 5])
def test_kfold_is_disjoint_stratified_and_covering(folds: int) -> None:
    labels = torch.arange(10).repeat_interleave(23)[torch.randperm(230, generator=torch.Generator().manual_seed(0))]
    validation_sets = []
    for fold in range(folds):
        train, val = data.kfold_split(labels, folds, fold, seed=7)
        assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == 230
        per_class = labels[val].bincount(minlength=10)
        assert per_class.max() - per_class.min() <= 1 and abs(per_class.float().mean() - 23 / folds) < 1
        validation_sets.append(set(val.tolist()))
    assert set().union(*validation_sets) == set(range(230))
    assert sum(map(len, validation_sets)) == 230  # pairwise disjoint
    assert torch.equal(data.kfold_split(labels, folds, 0, seed=7)[1], data.kfold_split(labels, folds, 0, seed=7)[1])
    with pytest.raises(MinimascopeError):
        data.kfold_split(labels, folds, folds, seed=0)
