"""CIFAR-10: sources, a decode-once cache, in-memory batches, normalisation, subsets and folds.

Every source is decoded once into uint8 arrays (N, 3, 32, 32) and cached under
``MINIMASCOPE_CACHE`` (default ``~/.cache/minimascope``), keyed by the source's content so a
changed source is never served stale. Batches are cut from tensors that already sit on the
training device: shuffling, random crop and flip are index arithmetic on whole batches, with no
per-image Python work per epoch.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_bytes

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SHAPE = (3, 32, 32)
# Per-pixel statistics of the canonical CIFAR-10 training set.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
TORCHVISION = "torchvision"
_CACHE_FORMAT = "v1"  # bump when the cached array layout changes
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_BATCHES_FOLDER = "cifar-10-batches-py"
_HELP = "point --data or MINIMASCOPE_DATA at a CIFAR-10 image-folder tree, its .tar.gz, or cifar-10-batches-py"


@dataclass(frozen=True)
class Cifar10:
    """The decoded data set: uint8 images (N, 3, 32, 32) and int64 labels, on the CPU."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


# ----------------------------------------------------------------------------- sources


def cache_root() -> Path:
    return Path(os.environ.get("MINIMASCOPE_CACHE", Path.home() / ".cache" / "minimascope"))


def resolve_source(source: str | os.PathLike | None) -> str:
    """``--data`` wins, then ``MINIMASCOPE_DATA``, then torchvision's download."""
    if source:
        return str(source)
    return os.environ.get("MINIMASCOPE_DATA") or TORCHVISION


def _source_path(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise MinimascopeError(f"CIFAR-10 source not found: {path}; {_HELP}")
    return path


def content_key(source: str | os.PathLike | None = None) -> str:
    """The key of a source's content, what a run's identity holds instead of its path.
    torchvision's download is the published data set itself, so its key is its name."""
    source = resolve_source(source)
    return TORCHVISION if source == TORCHVISION else _source_key(_source_path(source))


def load_cifar10(source: str | os.PathLike | None = None) -> Cifar10:
    """Load CIFAR-10 from a source (see module doc), decoding it only the first time."""
    source = resolve_source(source)
    path = _download_with_torchvision(cache_root() / "torchvision") if source == TORCHVISION else _source_path(source)
    cache_file = cache_root() / f"cifar10-{_source_key(path)}.npz"
    if cache_file.is_file():
        try:
            return _from_arrays(np.load(cache_file))
        except (OSError, ValueError, KeyError, zlib.error):
            pass  # a damaged cache is rebuilt, never trusted
    arrays = _decode(path)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(cache_file, buffer.getvalue())
    return _from_arrays(arrays)


def _from_arrays(arrays) -> Cifar10:
    return Cifar10(**{name: torch.from_numpy(np.asarray(arrays[name])) for name in Cifar10.__dataclass_fields__})


def _download_with_torchvision(root: Path) -> Path:
    import torchvision

    try:
        torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
    except Exception as exc:
        raise MinimascopeError(
            f"could not download CIFAR-10 through torchvision ({type(exc).__name__}); {_HELP}"
        ) from None
    return root / _BATCHES_FOLDER


def _source_key(path: Path) -> str:
    """A digest of the source's content (files: bytes; folders: names, sizes and mtimes)."""
    digest = hashlib.sha256(_CACHE_FORMAT.encode())
    if path.is_file():
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    else:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _decode(path: Path) -> dict[str, np.ndarray]:
    if path.is_file():
        return _decode_archive(path)
    batches = path if (path / "test_batch").is_file() else path / _BATCHES_FOLDER
    if (batches / "test_batch").is_file():
        return _decode_pickled_batches(batches)
    return _decode_image_files(
        (str(p.relative_to(path)), p.read_bytes) for p in path.rglob("*") if p.is_file()
    )


def _decode_pickled_batches(folder: Path) -> dict[str, np.ndarray]:
    """torchvision's official ``cifar-10-batches-py`` (a pickle format, as published)."""

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in names:
            file = folder / name
            if not file.is_file():
                raise MinimascopeError(f"{folder} lacks {name}; {_HELP}")
            try:
                with file.open("rb") as f:
                    entry = pickle.load(f, encoding="bytes")
                images.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, *IMAGE_SHAPE))
                labels.append(np.asarray(entry[b"labels"], dtype=np.int64))
            except Exception as exc:
                raise MinimascopeError(f"cannot read CIFAR-10 batch {file}: {type(exc).__name__}") from None
        return np.concatenate(images), np.concatenate(labels)

    train_x, train_y = read([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = read(["test_batch"])
    return {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}


def _decode_archive(path: Path) -> dict[str, np.ndarray]:
    def members() -> Iterator[tuple[str, object]]:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                if member.isfile():
                    data = archive.extractfile(member).read()
                    yield member.name, lambda data=data: data

    try:
        return _decode_image_files(members())
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise MinimascopeError(f"corrupt or truncated archive {path}: {exc or type(exc).__name__}") from None


def _decode_image_files(files: Iterable[tuple[str, object]]) -> dict[str, np.ndarray]:
    """Decode an image-folder tree ``[prefix/]{train,test}/<class>/<image>`` given as (path, read) pairs."""
    found: dict[tuple[str, str], list[tuple[str, object]]] = {}
    for name, read in files:
        parts = PurePosixPath(name.replace(os.sep, "/")).parts
        if len(parts) < 3 or PurePosixPath(name).suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        split, label, filename = parts[-3:]
        if split in ("train", "test"):
            found.setdefault((split, label), []).append((name, read))
    if not found:
        raise MinimascopeError(f"no train/<class>/ or test/<class>/ images found; {_HELP}")
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        names = {label for s, label in found if s == split}
        missing = [c for c in CLASSES if c not in names]
        if missing:
            raise MinimascopeError(f"{split}/ lacks class folder(s) {', '.join(missing)}; "
                                   f"expected {', '.join(CLASSES)}")
        unknown = sorted(names - set(CLASSES))
        if unknown:
            raise MinimascopeError(f"{split}/ has unknown class folder(s) {', '.join(unknown)}; "
                                   f"expected {', '.join(CLASSES)}")
        images, labels = [], []
        for label_index, label in enumerate(CLASSES):
            for name, read in sorted(found[(split, label)], key=lambda item: item[0]):
                images.append(_decode_image(name, read()))
                labels.append(label_index)
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
    return arrays


def _decode_image(name: str, data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.size != IMAGE_SHAPE[1:]:
                raise MinimascopeError(f"{name} is {image.size[0]}x{image.size[1]}; CIFAR-10 images are 32x32")
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MinimascopeError(f"cannot decode image {name}: {exc}") from None
    # Contiguous (C, H, W), as the cache file reads back: a transposed view would give the stacked
    # array a channels-last layout, so a cold and a warm cache would run different conv kernels.
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


# ----------------------------------------------------------------------------- subsets and folds


def _class_permutations(labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        members[torch.randperm(len(members), generator=generator)]
        for members in (torch.nonzero(labels == c).flatten() for c in torch.unique(labels, sorted=True))
    ]


def balanced_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``size`` examples, as equal per class as ``size`` allows (seeded)."""
    per_class = _class_permutations(labels, seed)
    if not 0 < size <= len(labels):
        raise MinimascopeError(f"subset size must be in 1..{len(labels)}, got {size}")
    counts = [size // len(per_class) + (c < size % len(per_class)) for c in range(len(per_class))]
    short = [c for c, (n, members) in enumerate(zip(counts, per_class)) if n > len(members)]
    if short:
        raise MinimascopeError(f"subset of {size} needs more examples of class(es) {short} than there are")
    return torch.cat([members[:n] for n, members in zip(counts, per_class)]).sort().values


def stratified_split(labels: torch.Tensor, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) indices, the held-out part class-balanced with ``holdout`` examples."""
    held_out = balanced_subset(labels, holdout, seed)
    kept = torch.ones(len(labels), dtype=torch.bool)
    kept[held_out] = False
    return torch.nonzero(kept).flatten(), held_out


def kfold_split(labels: torch.Tensor, folds: int, fold: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices of fold ``fold`` of ``folds``: each class is cut into ``folds``
    near-equal seeded parts, so the validation sets are disjoint, stratified and cover every index."""
    if folds < 2 or not 0 <= fold < folds:
        raise MinimascopeError(f"fold must be in 0..{folds - 1} of at least 2 folds, got fold {fold} of {folds}")
    validation = torch.cat([torch.tensor_split(members, folds)[fold] for members in _class_permutations(labels, seed)])
    is_validation = torch.zeros(len(labels), dtype=torch.bool)
    is_validation[validation] = True
    return torch.nonzero(~is_validation).flatten(), validation.sort().values


# ----------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``x̂ = m · (x − mean) / std`` on pixels in [0, 1].

    ``std_multiplier`` m sets the per-channel std of what the network sees: 1 is the usual
    normalisation. The AdaHessian study distorts it per channel in one run (R, G, B) to ask
    whether curvature information makes normalisation unnecessary: m = (1e-4, 1, 1000) reads
    its "multiplies the standard deviation of the three channels by 0.0001, 1 and 1000" as the
    input's std; m = (1e4, 1, 1e-3) reads it as torchvision's ``Normalize`` with its std argument
    multiplied. The study runs both.
    """

    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD
    std_multiplier: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) → float32, as one fused scale-and-shift per channel."""
        multiplier = torch.tensor(self.std_multiplier, dtype=torch.float64)
        std = torch.tensor(self.std, dtype=torch.float64)
        scale = (multiplier / (255.0 * std)).to(torch.float32).to(images.device).view(1, -1, 1, 1)
        shift = (-multiplier * torch.tensor(self.mean, dtype=torch.float64) / std)
        shift = shift.to(torch.float32).to(images.device).view(1, -1, 1, 1)
        return torch.addcmul(shift, images.to(torch.float32), scale)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back at a random offset and flip half the images left-right.

    The same as torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``, for a
    whole batch at once. Draws come from ``generator`` on the CPU so they do not depend on the device.
    """
    n, _, height, width = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(images.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    rows = (offsets[:, 0:1] + torch.arange(height, device=images.device)).view(n, 1, height, 1)
    cols = offsets[:, 1:2] + torch.arange(width, device=images.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols).view(n, 1, 1, width)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    channel = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return padded[batch, channel, rows, cols]


def iterate_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    normalization: Normalization,
    *,
    generator: torch.Generator | None = None,
    augment: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised (images, labels) batches from uint8 tensors already on the device.

    With a ``generator`` the order is shuffled (a seeded permutation per call); ``augment``
    applies :func:`random_crop_flip` with the same generator.
    """
    if augment and generator is None:
        raise ValueError("augmentation needs a generator")
    count = len(labels)
    order = torch.randperm(count, generator=generator).to(images.device) if generator is not None else None
    for start in range(0, count, batch_size):
        index = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
        batch = images[index]
        if augment:
            batch = random_crop_flip(batch, generator)
        yield normalization(batch), labels[index]


def number_of_batches(count: int, batch_size: int) -> int:
    return -(-count // batch_size)
