"""The data sets minimascope trains on, by name: one :class:`DatasetSpec` per data set, one module per file
format (:mod:`.cifar`, :mod:`.svhn`, :mod:`.idx`, :mod:`.imagefolder`).

A spec says what the data set is (classes, channels, image size, the per-channel mean and std of its
training split) and where its files come from (what ``--data`` may name, torchvision's download). Where the
data name their own classes (``imagefolder``) those fields are None and come from the decoded files, the
mean and std computed on the training split. :mod:`minimascope.data` decodes a source once and caches it.

This package imports no torch, so a name can be checked before the slow imports.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from minimascope.datasets import cifar, idx, imagefolder, svhn
from minimascope.datasets.common import Arrays, Progress
from minimascope.errors import MinimascopeError

DEFAULT = "cifar10"


@dataclass(frozen=True)
class DatasetSpec:
    """One data set: what it is, and how its files are read."""

    name: str  # the registry key: --dataset NAME, dataset: NAME
    title: str  # as people write it, in messages
    classes: tuple[str, ...] | None  # label i is classes[i]; None: the folder names of the data
    channels: int | None  # 1 (grayscale) or 3 (RGB); None: from the data
    image_size: tuple[int, int] | None  # (height, width); None: from the data
    mean: tuple[float, ...] | None  # per channel, pixels in [0, 1], of the training split; None: computed
    std: tuple[float, ...] | None
    sources: str  # what --data may name, as a hint after an error
    decode: Callable[[Path, Progress | None], Arrays]
    download: Callable[[Path], Path] | None  # torchvision's download into a root → the path to decode
    flip: bool = True  # whether a left-right flip keeps an image's class (not so for digits)
    reads_environment: bool = False  # MINIMASCOPE_DATA names its source when --data does not


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("cifar10", "CIFAR-10", cifar.CIFAR10_CLASSES, 3, (32, 32),
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), cifar.CIFAR10_HELP,
                cifar.decode_cifar10, cifar.download_cifar10, reads_environment=True),
    DatasetSpec("cifar100", "CIFAR-100", cifar.CIFAR100_CLASSES, 3, (32, 32),
                (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), cifar.CIFAR100_HELP,
                cifar.decode_cifar100, cifar.download_cifar100),
    DatasetSpec("svhn", "SVHN", svhn.CLASSES, 3, (32, 32),
                (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), svhn.HELP,
                svhn.decode, svhn.download, flip=False),
    DatasetSpec("fashion-mnist", "Fashion-MNIST", idx.FASHION_MNIST_CLASSES, 1, (28, 28), (0.2860,), (0.3530,),
                idx.help_text("FashionMNIST"), partial(idx.decode, folder_name="FashionMNIST"),
                partial(idx.download, torchvision_class="FashionMNIST")),
    DatasetSpec("mnist", "MNIST", idx.MNIST_CLASSES, 1, (28, 28), (0.1307,), (0.3081,),
                idx.help_text("MNIST"), partial(idx.decode, folder_name="MNIST"),
                partial(idx.download, torchvision_class="MNIST"), flip=False),
    DatasetSpec("imagefolder", "image folder", None, None, None, None, None, imagefolder.HELP,
                imagefolder.decode, None),
)}


def source_title(name: str, source: str | Path | None) -> str:
    """The title a study shows: a data set whose files name their own classes (one spec for any image folder) is
    told apart by its folder's name, as in "image folder flowers"."""
    spec = get(name)
    if spec.classes is not None or not source:
        return spec.title
    folder = Path(source).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        folder = folder.removesuffix(suffix)
    return f"{spec.title} {folder}"


def get(name: str) -> DatasetSpec:
    """The spec of a data set; an unknown name is one line with the closest known one."""
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(str(name).lower(), DATASETS, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    raise MinimascopeError(f"unknown dataset {name!r}; {hint}choose one of {', '.join(DATASETS)}")
