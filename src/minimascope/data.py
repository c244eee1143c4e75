"""Data sets of images: sources, a decode-once cache, in-memory batches, normalisation, subsets and folds.

Every source is decoded once into uint8 arrays (N, C, H, W) and cached under ``MINIMASCOPE_CACHE``
(default ``~/.cache/minimascope``) as ``<dataset>-<key>.npz``, keyed by the source's content so a changed
source is never served stale. What each data set is and how its files are read is in
:mod:`minimascope.datasets`. Batches are cut from tensors that already sit on the training device:
shuffling, random crop and flip are index arithmetic on whole batches, with no per-image Python work per
epoch.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minimascope import datasets
from minimascope.datasets.common import Progress as Progress  # what callers pass to load()
from minimascope.datasets.common import channel_statistics, one_line
from minimascope.errors import MinimascopeError
from minimascope.io import WriteError, atomic_write_bytes, make_folder, temporary_name_pattern

# The test subset is drawn once with this seed, whatever a run's seeds: every run of a study (and every `train`
# by default) is evaluated on the same test images, so its predictions pair image by image with any other run's.
TEST_SUBSET_SEED = 0
TORCHVISION = "torchvision"
_CACHE_FORMAT = "v1"  # bump when the cached array layout changes
_SPLIT_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class ImageData:
    """A decoded data set: uint8 images (N, C, H, W) and int64 labels on the CPU, with what the images are."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    dataset: str  # its name in minimascope.datasets
    classes: tuple[str, ...]  # label i is classes[i]
    mean: tuple[float, ...]  # per channel, pixels in [0, 1], of the training split (published or computed)
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.train_images.shape[2]), int(self.train_images.shape[3])

    def normalization(self, std_multiplier: tuple[float, ...] = (1.0,)) -> Normalization:
        """This data set's normalisation; a multiplier of one number, or of equal ones, serves any channels."""
        if len(std_multiplier) != self.channels:
            if len(set(std_multiplier)) != 1:
                raise MinimascopeError(f"std_multiplier: {len(std_multiplier)} different numbers for the "
                                       f"{self.channels} channel(s) of {self.dataset}")
            std_multiplier = (std_multiplier[0],) * self.channels
        return Normalization(self.mean, self.std, tuple(std_multiplier))

    def describe(self) -> dict:
        """What a run records about its data set (JSON)."""
        return {"dataset": self.dataset, "classes": list(self.classes), "channels": self.channels,
                "image_size": list(self.image_size), "mean": list(self.mean), "std": list(self.std)}


# ----------------------------------------------------------------------------- sources


def cache_root() -> Path:
    return Path(os.environ.get("MINIMASCOPE_CACHE", Path.home() / ".cache" / "minimascope"))


def resolve_source(source: str | os.PathLike | None, dataset: str = datasets.DEFAULT) -> str:
    """``--data`` wins, then ``MINIMASCOPE_DATA`` (CIFAR-10's), then torchvision's download."""
    spec = datasets.get(dataset)
    if source:
        return str(source)
    if spec.reads_environment and os.environ.get("MINIMASCOPE_DATA"):
        return os.environ["MINIMASCOPE_DATA"]
    if spec.download is None:
        raise MinimascopeError(f"{spec.name} needs a source; {spec.sources}")
    return TORCHVISION


def _source_path(source: str, spec: datasets.DatasetSpec) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise MinimascopeError(f"{spec.title} source not found: {path}; {spec.sources}")
    return path


def content_key(source: str | os.PathLike | None = None, dataset: str = datasets.DEFAULT) -> str:
    """The key of a source's content, what a run's identity holds instead of its path.
    torchvision's download is the published data set itself, so its key is its name."""
    spec = datasets.get(dataset)
    source = resolve_source(source, dataset)
    return TORCHVISION if source == TORCHVISION else _source_key(_source_path(source, spec), spec)


def load(dataset: str = datasets.DEFAULT, source: str | os.PathLike | None = None, *,
         progress: Progress | None = None) -> ImageData:
    """Load a data set from a source (see :mod:`minimascope.datasets`), decoding it only the first time.

    A damaged cache file is rebuilt from the source with a warning, never trusted; a cache folder
    that cannot be written is one line naming it, before any decoding. Bad data (images of mixed sizes,
    a single class, an empty test split) is one line.
    """
    spec = datasets.get(dataset)
    source = resolve_source(source, dataset)
    root = _writable_cache_root(spec)
    path = _download(spec, root / TORCHVISION) if source == TORCHVISION else _source_path(source, spec)
    cache_file = root / f"{spec.name}-{_source_key(path, spec)}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as cached:
                return _image_data(spec, {name: cached[name] for name in cached.files})
        except Exception as exc:  # zip, zlib, OS and shape errors alike: the file is not what we wrote
            warnings.warn(f"{spec.title} cache {cache_file} is damaged ({one_line(exc)}); rebuilding it from {path}",
                          stacklevel=2)
    arrays = spec.decode(path, progress)
    loaded = _image_data(spec, arrays)
    recorded = {"classes": np.asarray(loaded.classes, dtype=str), "mean": np.asarray(loaded.mean),
                "std": np.asarray(loaded.std)}
    buffer = io.BytesIO()
    np.savez(buffer, source=np.asarray(source if source == TORCHVISION else str(path.resolve())),
             **{name: arrays[name] for name in _SPLIT_ARRAYS}, **recorded)
    try:
        atomic_write_bytes(cache_file, buffer.getvalue())
    except WriteError as exc:
        raise WriteError(f"{exc}; set MINIMASCOPE_CACHE to a writable folder with 200 MB free", exc.path) from None
    return loaded


def _writable_cache_root(spec: datasets.DatasetSpec) -> Path:
    root = cache_root()
    try:
        make_folder(root)
    except WriteError as exc:
        raise WriteError(f"{spec.title} cache: {exc}; set MINIMASCOPE_CACHE to a writable folder", root) from None
    if not os.access(root, os.W_OK):
        raise WriteError(f"{spec.title} cache folder {root} is not writable (read-only filesystem or permissions); "
                         f"set MINIMASCOPE_CACHE to a writable folder", root)
    return root


def _image_data(spec: datasets.DatasetSpec, arrays: dict[str, np.ndarray]) -> ImageData:
    """Decoded (or cached) arrays checked against the spec, with its classes, mean and std, or with those the
    data bring (an image folder's; an older cache of a named data set has none and needs none)."""
    classes = spec.classes or tuple(str(c) for c in arrays["classes"])
    tensors = {name: torch.from_numpy(np.asarray(arrays[name])) for name in _SPLIT_ARRAYS}
    shape = None
    for split in ("train", "test"):
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if images.dtype != torch.uint8 or images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise MinimascopeError(f"{spec.title}: {split} arrays of shape {tuple(images.shape)} and "
                                   f"{tuple(labels.shape)}")
        if not len(labels):
            raise MinimascopeError(f"{spec.title}: the {split} split is empty")
        if labels.min() < 0 or labels.max() >= len(classes):
            raise MinimascopeError(f"{spec.title}: {split} labels outside 0..{len(classes) - 1}")
        if shape is not None and tuple(images.shape[1:]) != shape:
            raise MinimascopeError(f"{spec.title}: test images of shape {tuple(images.shape[1:])}, "
                                   f"training images of {shape}")
        shape = tuple(images.shape[1:])
    expected = (spec.channels, *spec.image_size) if spec.channels and spec.image_size else shape
    if shape != expected or shape[0] not in (1, 3):
        raise MinimascopeError(f"{spec.title}: images of shape {shape}, expected {expected} (C, H, W), C 1 or 3")
    if len(classes) < 2 or len(torch.unique(tensors["train_labels"])) < 2:
        raise MinimascopeError(f"{spec.title}: the training split holds a single class; a classifier needs two")
    if spec.mean is not None:
        mean, std = spec.mean, spec.std
    elif "mean" in arrays:
        mean, std = tuple(float(m) for m in arrays["mean"]), tuple(float(s) for s in arrays["std"])
    else:
        mean, std = channel_statistics(np.asarray(arrays["train_images"]))
    if len(mean) != shape[0] or len(std) != shape[0] or not all(s > 0 for s in std):
        raise MinimascopeError(f"{spec.title}: mean {mean} and std {std} do not fit {shape[0]} channel(s) "
                               f"(a std of 0: every training image is one flat colour)")
    return ImageData(**tensors, dataset=spec.name, classes=classes, mean=tuple(mean), std=tuple(std))


@dataclass(frozen=True)
class CacheEntry:
    """One thing under the cache folder: a decoded source, a download, or a killed write's leftover."""

    path: Path
    size_bytes: int
    source: str


def _cache_globs() -> list[str]:
    return [f"{name}-*.npz" for name in datasets.DATASETS]


def list_caches() -> list[CacheEntry]:
    """What ``cache_root()`` holds: decoded sources (with the source each was decoded from),
    torchvision's downloads, and temporaries a killed decode left behind."""
    root = cache_root()
    if not root.is_dir():
        return []
    entries = []
    for pattern in _cache_globs():
        for file in sorted(root.glob(pattern)):
            entries.append(CacheEntry(file, file.stat().st_size, _cached_source(file)))
    for pattern in _cache_globs():
        for file in sorted(root.glob(temporary_name_pattern(pattern))):
            entries.append(CacheEntry(file, file.stat().st_size, "left by an interrupted decode"))
    download = root / TORCHVISION
    if download.is_dir():
        size = sum(f.stat().st_size for f in download.rglob("*") if f.is_file())
        entries.append(CacheEntry(download, size, "torchvision's downloads"))
    return entries


def _cached_source(file: Path) -> str:
    try:
        with np.load(file, allow_pickle=False) as cached:
            return str(cached["source"]) if "source" in cached.files else "unknown (an older cache)"
    except Exception as exc:
        return f"damaged ({one_line(exc)}): rebuilt when next used"


def clear_caches() -> list[CacheEntry]:
    """Remove everything :func:`list_caches` lists; returns what was removed."""
    entries = list_caches()
    for entry in entries:
        try:
            if entry.path.is_dir():
                shutil.rmtree(entry.path)
            else:
                entry.path.unlink(missing_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot remove {entry.path}: {exc.strerror}", entry.path) from None
    return entries


def _download(spec: datasets.DatasetSpec, root: Path) -> Path:
    try:
        return spec.download(root)
    except Exception as exc:
        raise MinimascopeError(
            f"could not download {spec.title} through torchvision ({type(exc).__name__}); {spec.sources}"
        ) from None


def _source_key(path: Path, spec: datasets.DatasetSpec) -> str:
    """A digest of the source's content (files: bytes; folders: names, sizes and mtimes)."""
    digest = hashlib.sha256(_CACHE_FORMAT.encode())
    try:
        if path.is_file():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        else:
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                stat = file.stat()
                digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    except OSError as exc:
        raise MinimascopeError(f"cannot read {spec.title} source {path}: {exc.strerror}") from None
    return digest.hexdigest()[:20]


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

    mean: tuple[float, ...] = datasets.DATASETS[datasets.DEFAULT].mean  # CIFAR-10's, the study's data set
    std: tuple[float, ...] = datasets.DATASETS[datasets.DEFAULT].std
    std_multiplier: tuple[float, ...] = (1.0, 1.0, 1.0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) → float32, as one fused scale-and-shift per channel."""
        multiplier = torch.tensor(self.std_multiplier, dtype=torch.float64)
        std = torch.tensor(self.std, dtype=torch.float64)
        scale = (multiplier / (255.0 * std)).to(torch.float32).to(images.device).view(1, -1, 1, 1)
        shift = (-multiplier * torch.tensor(self.mean, dtype=torch.float64) / std)
        shift = shift.to(torch.float32).to(images.device).view(1, -1, 1, 1)
        return torch.addcmul(shift, images.to(torch.float32), scale)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4,
                     flip: bool = True) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back at a random offset and (with ``flip``) flip half the images left-right.

    The same as torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``, for a
    whole batch at once. Draws come from ``generator`` on the CPU so they do not depend on the device;
    the flips are drawn either way, so turning them off changes no crop.
    """
    n, _, height, width = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(images.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(images.device) & flip
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
    flip: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised (images, labels) batches from uint8 tensors already on the device.

    With a ``generator`` the order is shuffled (a seeded permutation per call); ``augment``
    applies :func:`random_crop_flip` with the same generator (flipping only with ``flip``).
    """
    if augment and generator is None:
        raise ValueError("augmentation needs a generator")
    count = len(labels)
    order = torch.randperm(count, generator=generator).to(images.device) if generator is not None else None
    for start in range(0, count, batch_size):
        index = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
        batch = images[index]
        if augment:
            batch = random_crop_flip(batch, generator, flip=flip)
        yield normalization(batch), labels[index]


def number_of_batches(count: int, batch_size: int) -> int:
    return -(-count // batch_size)
