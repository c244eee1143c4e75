"""MNIST and Fashion-MNIST as published: four idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-...``), gzipped or not, in the folder given, its ``raw/``, or torchvision's ``MNIST/raw`` and
``FashionMNIST/raw``.

An idx file is a big-endian header (two zero bytes, a type byte, the number of dimensions, one 4-byte size
per dimension) followed by the values; both data sets hold unsigned bytes (type 0x08).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from minimascope.datasets.common import Arrays, Progress, one_line, split_arrays
from minimascope.errors import MinimascopeError

MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
PREFIXES = {"train": "train", "test": "t10k"}
UNSIGNED_BYTE = 0x08


def help_text(folder_name: str) -> str:
    return (f"point --data at the folder holding the four idx files (gzipped or not) or at torchvision's root "
            f"(with {folder_name}/raw)")


def decode(path: Path, progress: Progress | None = None, *, folder_name: str) -> Arrays:
    """The four files of ``path``, ``path/raw`` or ``path/<folder_name>/raw`` (torchvision's folder of the data
    set), whichever holds them."""
    folder = path.parent if path.is_file() else path
    names = [f"{prefix}-{kind}-ubyte" for prefix in PREFIXES.values() for kind in ("images-idx3", "labels-idx1")]
    for candidate in (folder, folder / "raw", folder / folder_name / "raw"):
        if any(_find(candidate, name) for name in names):
            folder = candidate
            break
    splits = []
    for split, prefix in PREFIXES.items():
        images = read_idx(_file(folder, f"{prefix}-images-idx3-ubyte", folder_name), dimensions=3)
        labels = read_idx(_file(folder, f"{prefix}-labels-idx1-ubyte", folder_name), dimensions=1)
        if len(images) != len(labels):
            raise MinimascopeError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels")
        splits.append((np.array(images[:, None]), labels.astype(np.int64)))  # copies: the buffer is read-only
    return split_arrays(*splits)


def _find(folder: Path, name: str) -> Path | None:
    return next((file for file in (folder / name, folder / f"{name}.gz") if file.is_file()), None)


def _file(folder: Path, name: str, folder_name: str) -> Path:
    file = _find(folder, name)
    if file is None:
        raise MinimascopeError(f"{folder} lacks {name} (or {name}.gz); {help_text(folder_name)}")
    return file


def read_idx(file: Path, dimensions: int) -> np.ndarray:
    """The unsigned-byte array of an idx file (gzipped when its name ends in .gz)."""
    try:
        content = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise MinimascopeError(f"cannot read idx file {file}: {one_line(exc)}") from None
    header = 4 + 4 * dimensions
    if len(content) < header or content[:2] != b"\0\0" or content[2] != UNSIGNED_BYTE or content[3] != dimensions:
        raise MinimascopeError(f"{file} is not an idx file of unsigned bytes in {dimensions} dimension(s)")
    shape = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(dimensions))
    count = int(np.prod(shape))
    if len(content) - header != count:
        raise MinimascopeError(f"{file} holds {len(content) - header} values where its header promises "
                               f"{count} {shape}: truncated or damaged")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def download(root: Path, *, torchvision_class: str) -> Path:
    """torchvision's download of ``torchvision_class`` (MNIST or FashionMNIST) into ``root``."""
    import torchvision

    for train in (True, False):
        getattr(torchvision.datasets, torchvision_class)(root=str(root), train=train, download=True)
    return root / torchvision_class / "raw"
