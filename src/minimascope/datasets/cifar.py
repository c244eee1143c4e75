"""CIFAR-10 and CIFAR-100 as published: python pickles (``cifar-10-batches-py``, ``cifar-100-python``, or
CIFAR-100's .tar.gz) read with an allow-list of types, so a crafted file runs no code; CIFAR-10 also as an
image-folder tree or its archive (:mod:`minimascope.datasets.imagefolder`)."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from minimascope.datasets import imagefolder
from minimascope.datasets.common import Arrays, Progress, one_line, split_arrays
from minimascope.errors import MinimascopeError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
# The fine labels, in the order of the published meta file (alphabetical).
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle
caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish
forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
willow_tree wolf woman worm
""".split())
IMAGE_SHAPE = (3, 32, 32)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_HELP = "point --data or MINIMASCOPE_DATA at a CIFAR-10 image-folder tree, its .tar.gz, or cifar-10-batches-py"
CIFAR100_HELP = "point --data at cifar-100-python (or the folder holding it), or cifar-100-python.tar.gz"

# What the published batches hold besides dicts, lists, bytes and ints: numpy arrays, pickled by
# protocol 2 (py2 or py3: bytes via _codecs.encode) or by protocol 5 (_frombuffer).
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickles only the types a CIFAR batch holds: a crafted file cannot name a function to call
    (``os.system``, ``builtins.exec``, ...), so reading a batch never runs code."""

    def __init__(self, file, title: str) -> None:
        super().__init__(file, encoding="bytes")
        self.title = title

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a {self.title} batch never holds")
        return super().find_class(module, name)


def unpickle(name: str, data: bytes, title: str, keys: tuple[bytes, ...]) -> dict:
    """A pickled dict holding ``keys``, read through :class:`SafeUnpickler`; anything else is one line."""
    try:
        entry = SafeUnpickler(io.BytesIO(data), title).load()
        if not isinstance(entry, dict) or not all(key in entry for key in keys):
            raise ValueError(f"no {' and '.join(key.decode() for key in keys)} entries")
    except Exception as exc:
        raise MinimascopeError(f"cannot read {title} batch {name}: {one_line(exc)}") from None
    return entry


def _images_and_labels(name: str, entry: dict, label_key: bytes, title: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        images = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, *IMAGE_SHAPE)
        labels = np.asarray(entry[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise MinimascopeError(f"cannot read {title} batch {name}: {one_line(exc)}") from None
    return images, labels


# ----------------------------------------------------------------------------- CIFAR-10


def decode_cifar10(path: Path, progress: Progress | None = None) -> Arrays:
    if path.is_file():
        return imagefolder.decode(path, progress, classes=CIFAR10_CLASSES, size=IMAGE_SHAPE[1:],
                                  title="CIFAR-10", hint=CIFAR10_HELP)
    batches = path if (path / "test_batch").is_file() else path / CIFAR10_FOLDER
    if (batches / "test_batch").is_file():
        return _decode_cifar10_batches(batches)
    return imagefolder.decode(path, progress, classes=CIFAR10_CLASSES, size=IMAGE_SHAPE[1:],
                              title="CIFAR-10", hint=CIFAR10_HELP)


def _decode_cifar10_batches(folder: Path) -> Arrays:
    """torchvision's official ``cifar-10-batches-py`` (a pickle format, as published)."""

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for name in names:
            file = folder / name
            if not file.is_file():
                raise MinimascopeError(f"{folder} lacks {name}; {CIFAR10_HELP}")
            entry = unpickle(str(file), file.read_bytes(), "CIFAR-10", (b"data", b"labels"))
            parts.append(_images_and_labels(str(file), entry, b"labels", "CIFAR-10"))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    return split_arrays(read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"]))


def download_cifar10(root: Path) -> Path:
    import torchvision

    torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
    return root / CIFAR10_FOLDER


# ----------------------------------------------------------------------------- CIFAR-100


def decode_cifar100(path: Path, progress: Progress | None = None) -> Arrays:
    """``cifar-100-python`` (files ``train``, ``test`` and ``meta``), the folder holding it, or its .tar.gz;
    the labels are the 100 fine ones."""
    if path.is_file():
        return imagefolder.read_archive(path, _decode_cifar100_members, progress)
    names = ("train", "test", "meta")
    folder = path if any((path / name).is_file() for name in names) else path / CIFAR100_FOLDER
    return _decode_cifar100_members((str(folder / n), (folder / n).read_bytes) for n in names if (folder / n).is_file())


def _decode_cifar100_members(members: Iterator[tuple[str, Callable[[], bytes]]]) -> Arrays:
    files = {PurePosixPath(name).name: (name, read) for name, read in members
             if PurePosixPath(name).name in ("train", "test", "meta")}
    missing = [name for name in ("train", "test") if name not in files]
    if missing:
        raise MinimascopeError(f"no CIFAR-100 {' or '.join(missing)} file found; {CIFAR100_HELP}")
    if "meta" in files:  # the published names, in label order: a check that this is CIFAR-100 at all
        name, read = files["meta"]
        meta = unpickle(name, read(), "CIFAR-100", (b"fine_label_names",))
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"fine_label_names"])
        if names != CIFAR100_CLASSES:
            raise MinimascopeError(f"{name} names {len(names)} classes that are not CIFAR-100's fine labels")
    splits = []
    for split in ("train", "test"):
        name, read = files[split]
        entry = unpickle(name, read(), "CIFAR-100", (b"data", b"fine_labels"))
        splits.append(_images_and_labels(name, entry, b"fine_labels", "CIFAR-100"))
    return split_arrays(*splits)


def download_cifar100(root: Path) -> Path:
    import torchvision

    torchvision.datasets.CIFAR100(root=str(root), train=True, download=True)
    return root / CIFAR100_FOLDER
