"""SVHN's cropped digits as published (format 2): ``train_32x32.mat`` and ``test_32x32.mat``, MATLAB files
holding X (32, 32, 3, N) and y (N, 1) with the digit 0 labelled 10 (here 0, as torchvision has it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minimascope.datasets.common import Arrays, Progress, one_line, split_arrays
from minimascope.errors import MinimascopeError

CLASSES = tuple(str(digit) for digit in range(10))
FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
HELP = "point --data at the folder holding train_32x32.mat and test_32x32.mat (torchvision's SVHN root)"


def decode(path: Path, progress: Progress | None = None) -> Arrays:
    folder = path.parent if path.is_file() else path
    return split_arrays(*(_read(folder / FILES[split], progress) for split in ("train", "test")))


def _read(file: Path, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    if not file.is_file():
        raise MinimascopeError(f"{file.parent} lacks {file.name}; {HELP}")
    if progress:
        progress(f"reading {file.name}", 0, 1)
    try:
        content = scipy.io.loadmat(file, variable_names=("X", "y"))
        images, labels = np.asarray(content["X"]), np.asarray(content["y"]).reshape(-1)
        if images.ndim != 4 or images.shape[2] != 3 or images.shape[3] != len(labels):
            raise ValueError(f"X of shape {images.shape} and y of {len(labels)} labels")
    except Exception as exc:  # scipy's own errors, a missing variable, a wrong shape: the file is not SVHN's
        raise MinimascopeError(f"cannot read SVHN file {file}: {one_line(exc)}") from None
    if images.dtype != np.uint8 or not np.isin(labels, np.arange(1, 11)).all():
        raise MinimascopeError(f"SVHN file {file} holds {images.dtype} pixels or labels outside 1..10")
    if progress:
        progress(f"reading {file.name}", 1, 1)
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), (labels % 10).astype(np.int64)


def download(root: Path) -> Path:
    """torchvision's download, into a folder of its own (its files lie at the top of the root it is given)."""
    import torchvision

    for split in FILES:
        torchvision.datasets.SVHN(root=str(root / "svhn"), split=split, download=True)
    return root / "svhn"
