"""The dataset registry: each data set read from small files the tests write in its real format (CIFAR-100's
pickles, SVHN's .mat, MNIST's idx files, image-folder trees and their archives), checked for classes,
shapes, dtypes, pixels, mean and std; the decode cache for every data set; and bad data as one line."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from helpers import make_archive, make_image_tree
from minimascope import data, datasets
from minimascope.datasets.cifar import CIFAR100_CLASSES
from minimascope.errors import MinimascopeError


def assert_split_arrays(loaded: data.ImageData, expected: dict[str, np.ndarray]) -> None:
    for name, array in expected.items():
        tensor = getattr(loaded, name)
        assert tensor.dtype == (torch.uint8 if name.endswith("images") else torch.int64), name
        assert np.array_equal(tensor.numpy(), array), name


def random_split(rng: np.random.Generator, count: int, shape: tuple[int, ...], classes: int) -> tuple:
    return (rng.integers(0, 256, size=(count, *shape), dtype=np.uint8),
            np.arange(count, dtype=np.int64) % classes)


# ----------------------------------------------------------------------------- the registry


def test_every_dataset_knows_what_it_is() -> None:
    for name, spec in datasets.DATASETS.items():
        assert spec.name == name and spec.sources
        if name != "imagefolder":
            assert len(spec.classes) == len(set(spec.classes)) >= 10
            assert len(spec.mean) == len(spec.std) == spec.channels and spec.image_size
    assert len(datasets.get("cifar100").classes) == 100 and datasets.get("mnist").channels == 1
    assert datasets.get("cifar10").classes[0] == "airplane" and datasets.get("cifar10").mean[0] == 0.4914
    assert data.Normalization().mean == datasets.get("cifar10").mean  # the default normalisation is CIFAR-10's


def test_unknown_dataset_is_one_line_with_a_close_match() -> None:
    with pytest.raises(MinimascopeError, match="unknown dataset 'cifar-100'; did you mean cifar100\\?"):
        datasets.get("cifar-100")
    with pytest.raises(MinimascopeError, match="unknown dataset 'imagenet'; did you mean imagefolder\\?"):
        data.load("imagenet", "/nowhere")
    with pytest.raises(MinimascopeError, match="unknown dataset 'places'; choose one of cifar10, cifar100, svhn"):
        data.content_key("/nowhere", "places")


def test_an_image_folder_needs_a_source() -> None:
    with pytest.raises(MinimascopeError, match="imagefolder needs a source; point --data at a train/<class>/"):
        data.load("imagefolder")


# ----------------------------------------------------------------------------- CIFAR-100


def write_cifar100(folder: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """The published ``cifar-100-python`` layout: ``train``, ``test`` and ``meta`` pickles (protocol 2, as
    published), images as rows of 3072 bytes (R, G, B planes)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    expected = {}
    for split, count in (("train", 30), ("test", 12)):
        images, labels = random_split(rng, count, (3, 32, 32), 100)
        labels = rng.permutation(labels)
        entry = {b"data": images.reshape(count, -1), b"fine_labels": labels.tolist(),
                 b"coarse_labels": (labels // 5).tolist(), b"filenames": [b"x.png"] * count}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
        expected[f"{split}_images"], expected[f"{split}_labels"] = images, labels
    meta = {b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES], b"coarse_label_names": [b"x"] * 20}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return expected


def test_cifar100_from_its_folder_its_parent_and_its_archive(tmp_path: Path) -> None:
    expected = write_cifar100(tmp_path / "root" / "cifar-100-python")
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "root" / "cifar-100-python", arcname="cifar-100-python")
    for source in (tmp_path / "root", tmp_path / "root" / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz"):
        loaded = data.load("cifar100", source)
        assert_split_arrays(loaded, expected)
        assert loaded.classes == CIFAR100_CLASSES and loaded.classes[4] == "beaver"
        assert loaded.channels == 3 and loaded.image_size == (32, 32) and loaded.mean == (0.5071, 0.4865, 0.4409)


def test_a_crafted_cifar100_pickle_runs_nothing(tmp_path: Path) -> None:
    class WritesAFile:
        def __reduce__(self):
            return (os.mknod, (str(tmp_path / "pwned"),))

    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder)
    (folder / "test").write_bytes(pickle.dumps({b"data": WritesAFile(), b"fine_labels": []}))
    with pytest.raises(MinimascopeError, match="it asks for posix.mknod, which a CIFAR-100 batch never holds"):
        data.load("cifar100", folder)
    assert not (tmp_path / "pwned").exists()


def test_cifar100_with_foreign_class_names_or_a_missing_file_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder)
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"a", b"b"]}, protocol=2))
    with pytest.raises(MinimascopeError, match="names 2 classes that are not CIFAR-100's fine labels"):
        data.load("cifar100", folder)
    (folder / "meta").unlink()
    (folder / "test").unlink()
    with pytest.raises(MinimascopeError, match="no CIFAR-100 test file found; point --data at cifar-100-python"):
        data.load("cifar100", folder)


# ----------------------------------------------------------------------------- SVHN


def write_svhn(folder: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """The published format 2: X (32, 32, 3, N) uint8 and y (N, 1) with the digit 0 labelled 10."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split, count in (("train", 20), ("test", 10)):
        images, labels = random_split(rng, count, (3, 32, 32), 10)
        stored_labels = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": stored_labels})
        expected[f"{split}_images"], expected[f"{split}_labels"] = images, labels
    return expected


def test_svhn_from_its_mat_files(tmp_path: Path) -> None:
    expected = write_svhn(tmp_path / "svhn")
    loaded = data.load("svhn", tmp_path / "svhn")
    assert_split_arrays(loaded, expected)
    assert loaded.classes == tuple("0123456789") and set(loaded.train_labels.tolist()) == set(range(10))
    assert loaded.train_images.is_contiguous() and loaded.std == (0.1980, 0.2010, 0.1970)


def test_svhn_missing_or_foreign_file_is_one_line(tmp_path: Path) -> None:
    write_svhn(tmp_path / "svhn")
    (tmp_path / "svhn" / "test_32x32.mat").unlink()
    with pytest.raises(MinimascopeError, match="lacks test_32x32.mat; point --data at the folder holding"):
        data.load("svhn", tmp_path / "svhn")
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"MATLAB? no")
    with pytest.raises(MinimascopeError, match="cannot read SVHN file .*test_32x32.mat"):
        data.load("svhn", tmp_path / "svhn")
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8),
                                                           "y": np.array([[0], [3]], np.uint8)})
    with pytest.raises(MinimascopeError, match="labels outside 1..10"):
        data.load("svhn", tmp_path / "svhn")


# ----------------------------------------------------------------------------- MNIST and Fashion-MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file: two zero bytes, 0x08 (unsigned bytes), the number of dimensions, big-endian sizes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, compress: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    expected = {}
    for split, prefix, count in (("train", "train", 20), ("test", "t10k", 10)):
        images, labels = random_split(rng, count, (28, 28), 10)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            content = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(content))
            else:
                (folder / name).write_bytes(content)
        expected[f"{split}_images"], expected[f"{split}_labels"] = images[:, None], labels
    return expected


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_and_fashion_mnist_from_torchvisions_folders(tmp_path: Path, compress: bool) -> None:
    for name, folder in (("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")):
        expected = write_idx(tmp_path / name / folder / "raw", compress)
        for source in (tmp_path / name, tmp_path / name / folder, tmp_path / name / folder / "raw"):
            loaded = data.load(name, source)
            assert_split_arrays(loaded, expected)
            assert loaded.channels == 1 and loaded.image_size == (28, 28) and len(loaded.mean) == 1
    assert data.load("fashion-mnist", tmp_path / "fashion-mnist").classes[0] == "T-shirt/top"


def test_damaged_idx_files_are_one_line(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw, compress=False)
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    with pytest.raises(MinimascopeError, match="holds 7 values where its header promises 10 .*truncated"):
        data.load("mnist", tmp_path)
    labels.write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + bytes(12))
    with pytest.raises(MinimascopeError, match="is not an idx file of unsigned bytes in 1 dimension"):
        data.load("mnist", tmp_path)
    labels.write_bytes(idx_bytes(np.arange(9) % 10))
    with pytest.raises(MinimascopeError, match="test has 10 images but 9 labels"):
        data.load("mnist", tmp_path)
    labels.unlink()
    with pytest.raises(MinimascopeError, match="lacks t10k-labels-idx1-ubyte \\(or t10k-labels-idx1-ubyte.gz\\)"):
        data.load("mnist", tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(gzip.compress(b"x"))  # gzip data in a file not named .gz
    with pytest.raises(MinimascopeError, match="not an idx file"):
        data.load("mnist", raw)


# ----------------------------------------------------------------------------- image folders


def write_tree(root: Path, classes: tuple[str, ...], size: tuple[int, int], mode: str, *, per_class: int = 3,
               seed: int = 0) -> dict[str, np.ndarray]:
    """``root/{train,test}/<class>/NN.png`` in PIL ``mode`` (RGB or L), width x height ``size``."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    expected = {}
    for split, count in (("train", per_class), ("test", 2)):
        images, labels = [], []
        for label, name in enumerate(sorted(classes)):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
                image = Image.fromarray(pixels if channels == 3 else pixels[..., 0])  # RGB or L
                image.save(root / split / name / f"{i:02d}.png")
                images.append(pixels.transpose(2, 0, 1))
                labels.append(label)
        expected[f"{split}_images"], expected[f"{split}_labels"] = np.stack(images), np.asarray(labels)
    return expected


@pytest.mark.parametrize(("size", "mode"), [((24, 24), "RGB"), ((28, 28), "L"), ((20, 12), "RGB")])
def test_image_folder_classes_shape_and_statistics(tmp_path: Path, size: tuple[int, int], mode: str) -> None:
    expected = write_tree(tmp_path / "tree", ("zebra", "ant", "moth"), size, mode)
    archive = make_archive(tmp_path / "tree", tmp_path / "tree.tar.gz", top="my-images")
    for source in (tmp_path / "tree", archive):
        loaded = data.load("imagefolder", source)
        assert_split_arrays(loaded, expected)
        assert loaded.classes == ("ant", "moth", "zebra")
        assert loaded.channels == (3 if mode == "RGB" else 1) and loaded.image_size == (size[1], size[0])
        # mean and std of the training split, per channel, on [0, 1]: numpy's over all its pixels
        train = expected["train_images"].transpose(1, 0, 2, 3).reshape(loaded.channels, -1) / 255.0
        np.testing.assert_allclose(loaded.mean, train.mean(axis=1), rtol=1e-12)
        np.testing.assert_allclose(loaded.std, train.std(axis=1), rtol=1e-9)
        assert loaded.describe()["classes"] == ["ant", "moth", "zebra"]


def test_image_folder_of_gray_and_colour_images_is_rgb(tmp_path: Path) -> None:
    expected = write_tree(tmp_path / "tree", ("a", "b"), (8, 8), "RGB")
    gray = Image.open(tmp_path / "tree" / "train" / "b" / "00.png").convert("L")
    gray.save(tmp_path / "tree" / "train" / "b" / "00.png")
    loaded = data.load("imagefolder", tmp_path / "tree")
    index = int(np.flatnonzero(expected["train_labels"] == 1)[0])
    assert loaded.channels == 3
    assert np.array_equal(loaded.train_images[index].numpy(), np.repeat(np.asarray(gray)[None], 3, axis=0))
    assert np.array_equal(loaded.test_images.numpy(), expected["test_images"])


def test_bad_image_folders_are_one_line(tmp_path: Path) -> None:
    write_tree(tmp_path / "mixed", ("a", "b", "c"), (24, 24), "RGB")
    Image.new("RGB", (24, 20)).save(tmp_path / "mixed" / "test" / "b" / "01.png")
    with pytest.raises(MinimascopeError, match="test/b/01.png is 24x20; .*train/a/00.png is 24x24: an image "
                                               "folder holds images of one size"):
        data.load("imagefolder", tmp_path / "mixed")
    write_tree(tmp_path / "single", ("only",), (8, 8), "RGB")
    with pytest.raises(MinimascopeError, match="train/ holds 1 class folder\\(s\\) \\(only\\); a classifier needs "
                                               "at least 2"):
        data.load("imagefolder", tmp_path / "single")
    write_tree(tmp_path / "no-test", ("a", "b"), (8, 8), "RGB")
    for folder in (tmp_path / "no-test" / "test").iterdir():
        for file in folder.iterdir():
            file.unlink()
    with pytest.raises(MinimascopeError, match="the test split is empty"):
        data.load("imagefolder", tmp_path / "no-test")
    write_tree(tmp_path / "extra", ("a", "b"), (8, 8), "RGB")
    (tmp_path / "extra" / "test" / "c").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "extra" / "test" / "c" / "0.png")
    with pytest.raises(MinimascopeError, match="test/ has class folder\\(s\\) that train/ lacks: c"):
        data.load("imagefolder", tmp_path / "extra")
    with pytest.raises(MinimascopeError, match="image folder source not found: .*absent"):
        data.load("imagefolder", tmp_path / "absent")


def test_a_test_split_lacking_a_class_is_accepted(tmp_path: Path) -> None:
    write_tree(tmp_path / "tree", ("a", "b", "c"), (8, 8), "L")
    for file in (tmp_path / "tree" / "test" / "c").iterdir():
        file.unlink()
    loaded = data.load("imagefolder", tmp_path / "tree")
    assert loaded.classes == ("a", "b", "c") and set(loaded.test_labels.tolist()) == {0, 1}


# ----------------------------------------------------------------------------- the cache


def test_every_dataset_is_cached_by_content(tmp_path: Path, private_cache: Path) -> None:
    write_tree(tmp_path / "tree", ("cat", "dog"), (8, 8), "L")
    first = data.load("imagefolder", tmp_path / "tree")
    key = data.content_key(tmp_path / "tree", "imagefolder")
    cache_file = private_cache / f"imagefolder-{key}.npz"
    assert cache_file.is_file()
    os.utime(cache_file, ns=(0, 0))
    again = data.load("imagefolder", tmp_path / "tree")
    assert cache_file.stat().st_mtime_ns == 0  # served from the cache, not rewritten
    assert (again.classes, again.mean, again.std) == (first.classes, first.mean, first.std)
    assert torch.equal(again.train_images, first.train_images) and torch.equal(again.test_labels, first.test_labels)
    assert any(entry.path == cache_file for entry in data.list_caches())
    write_svhn(tmp_path / "svhn")
    data.load("svhn", tmp_path / "svhn")
    assert {entry.path.name.split("-")[0] for entry in data.list_caches()} >= {"imagefolder", "svhn"}


def test_cifar10_cache_file_and_key_are_unchanged(tmp_path: Path, private_cache: Path) -> None:
    """The cache name and content key of a CIFAR-10 source are what they have always been: sha256 of
    "v1" and the archive's bytes, so run keys and caches made before the registry stay valid."""
    make_image_tree(tmp_path / "tree")
    archive = make_archive(tmp_path / "tree", tmp_path / "c.tar.gz")
    key = hashlib.sha256(b"v1" + archive.read_bytes()).hexdigest()[:20]
    assert data.content_key(archive) == data.content_key(archive, "cifar10") == key
    loaded = data.load("cifar10", archive)
    assert (private_cache / f"cifar10-{key}.npz").is_file()
    assert loaded.dataset == "cifar10" and loaded.classes == datasets.get("cifar10").classes
    assert loaded.std == datasets.get("cifar10").std


def test_a_cache_from_before_the_registry_is_read(tmp_path: Path, private_cache: Path) -> None:
    """A CIFAR-10 cache file holding only the arrays and the source (as written before) serves as ever."""
    expected = make_image_tree(tmp_path / "tree")
    archive = make_archive(tmp_path / "tree", tmp_path / "c.tar.gz")
    private_cache.mkdir(parents=True, exist_ok=True)
    cache_file = private_cache / f"cifar10-{data.content_key(archive)}.npz"
    np.savez(cache_file, source=np.asarray(str(archive)), **expected)
    os.utime(cache_file, ns=(0, 0))
    assert_split_arrays(data.load("cifar10", archive), expected)
    assert cache_file.stat().st_mtime_ns == 0


# ----------------------------------------------------------------------------- batches of any channels


def test_grayscale_normalization_and_crop_without_flip() -> None:
    loaded = data.ImageData(*(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1])) * 2,
                            dataset="mnist", classes=("a", "b"), mean=(0.5,), std=(0.25,))
    normalization = loaded.normalization((2.0, 2.0, 2.0))
    assert normalization.std_multiplier == (2.0,)
    torch.testing.assert_close(normalization(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)),
                               torch.full((1, 1, 2, 2), 4.0))
    with pytest.raises(MinimascopeError, match="std_multiplier: 3 different numbers for the 1 channel"):
        loaded.normalization((1.0, 2.0, 3.0))
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    crops = data.random_crop_flip(images, torch.Generator().manual_seed(0), padding=0, flip=False)
    assert torch.equal(crops, images)
    flipped = data.random_crop_flip(images, torch.Generator().manual_seed(0), padding=0)
    assert 0 < sum(torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images)) < 64


def test_torchvisions_download_only_without_a_source(tmp_path: Path, private_cache: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """No --data: torchvision's download into the cache's torchvision folder (here a stand-in writing the files
    where torchvision puts them), read from its own layout; with a source, no download at all."""
    import torchvision

    downloads = []

    class FakeMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            downloads.append((root, train, download))
            if not (Path(root) / "MNIST" / "raw").exists():
                write_idx(Path(root) / "MNIST" / "raw", compress=True)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    loaded = data.load("mnist")
    assert downloads == [(str(private_cache / "torchvision"), True, True), (str(private_cache / "torchvision"),
                                                                             False, True)]
    assert loaded.channels == 1 and data.content_key(None, "mnist") == "torchvision"
    write_idx(tmp_path / "mine", compress=False)
    data.load("mnist", tmp_path / "mine")
    assert len(downloads) == 2


def test_an_image_folder_is_titled_by_its_own_name() -> None:
    """One spec serves every image folder: a study's title tells them apart by the folder's name."""
    assert datasets.source_title("imagefolder", "/data/flowers.tar.gz") == "image folder flowers"
    assert datasets.source_title("imagefolder", "/data/birds") == "image folder birds"
    assert datasets.source_title("imagefolder", None) == "image folder"
    assert datasets.source_title("cifar10", "/data/cifar10-images.tar.gz") == "CIFAR-10"
