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
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minimascope.cifar_files import BATCHES_FOLDER, HELP, IMAGE_SHAPE, Progress, decode, one_line
from minimascope.cifar_files import CLASSES as CLASSES  # the class names, where every caller looks for them
from minimascope.errors import MinimascopeError
from minimascope.io import WriteError, atomic_write_bytes, make_folder, temporary_name_pattern

# The test subset is drawn once with this seed, whatever a run's seeds: every run of a study (and every `train`
# by default) is evaluated on the same test images, so its predictions pair image by image with any other run's.
TEST_SUBSET_SEED = 0
# Per-pixel statistics of the canonical CIFAR-10 training set.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
TORCHVISION = "torchvision"
_CACHE_FORMAT = "v1"  # bump when the cached array layout changes
_CACHE_GLOB = "cifar10-*.npz"




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
        raise MinimascopeError(f"CIFAR-10 source not found: {path}; {HELP}")
    return path


def content_key(source: str | os.PathLike | None = None) -> str:
    """The key of a source's content, what a run's identity holds instead of its path.
    torchvision's download is the published data set itself, so its key is its name."""
    source = resolve_source(source)
    return TORCHVISION if source == TORCHVISION else _source_key(_source_path(source))


def load_cifar10(source: str | os.PathLike | None = None, *, progress: Progress | None = None) -> Cifar10:
    """Load CIFAR-10 from a source (see module doc), decoding it only the first time.

    A damaged cache file is rebuilt from the source with a warning, never trusted; a cache folder
    that cannot be written is one line naming it, before any decoding.
    """
    source = resolve_source(source)
    root = _writable_cache_root()
    path = _download_with_torchvision(root / "torchvision") if source == TORCHVISION else _source_path(source)
    cache_file = root / f"cifar10-{_source_key(path)}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as cached:
                return _from_arrays(cached)
        except Exception as exc:  # zip, zlib, OS and shape errors alike: the file is not what we wrote
            warnings.warn(f"CIFAR-10 cache {cache_file} is damaged ({one_line(exc)}); rebuilding it from {path}",
                          stacklevel=2)
    arrays = decode(path, progress)
    buffer = io.BytesIO()
    np.savez(buffer, source=np.asarray(source if source == TORCHVISION else str(path.resolve())), **arrays)
    try:
        atomic_write_bytes(cache_file, buffer.getvalue())
    except WriteError as exc:
        raise WriteError(f"{exc}; set MINIMASCOPE_CACHE to a writable folder with 200 MB free", exc.path) from None
    return _from_arrays(arrays)


def _writable_cache_root() -> Path:
    root = cache_root()
    try:
        make_folder(root)
    except WriteError as exc:
        raise WriteError(f"CIFAR-10 cache: {exc}; set MINIMASCOPE_CACHE to a writable folder", root) from None
    if not os.access(root, os.W_OK):
        raise WriteError(f"CIFAR-10 cache folder {root} is not writable (read-only filesystem or permissions); "
                         f"set MINIMASCOPE_CACHE to a writable folder", root)
    return root


def _from_arrays(arrays) -> Cifar10:
    tensors = {name: torch.from_numpy(np.asarray(arrays[name])) for name in Cifar10.__dataclass_fields__}
    for split in ("train", "test"):
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != IMAGE_SHAPE or len(images) != len(labels):
            raise ValueError(f"{split} arrays of shape {tuple(images.shape)} and {tuple(labels.shape)}")
    return Cifar10(**tensors)


@dataclass(frozen=True)
class CacheEntry:
    """One thing under the cache folder: a decoded source, a download, or a killed write's leftover."""

    path: Path
    size_bytes: int
    source: str


def list_caches() -> list[CacheEntry]:
    """What ``cache_root()`` holds: decoded sources (with the source each was decoded from),
    torchvision's download, and temporaries a killed decode left behind."""
    root = cache_root()
    if not root.is_dir():
        return []
    entries = []
    for file in sorted(root.glob(_CACHE_GLOB)):
        entries.append(CacheEntry(file, file.stat().st_size, _cached_source(file)))
    for file in sorted(root.glob(temporary_name_pattern(_CACHE_GLOB))):
        entries.append(CacheEntry(file, file.stat().st_size, "left by an interrupted decode"))
    download = root / "torchvision"
    if download.is_dir():
        size = sum(f.stat().st_size for f in download.rglob("*") if f.is_file())
        entries.append(CacheEntry(download, size, "torchvision's CIFAR-10 download"))
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


def _download_with_torchvision(root: Path) -> Path:
    import torchvision

    try:
        torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
    except Exception as exc:
        raise MinimascopeError(
            f"could not download CIFAR-10 through torchvision ({type(exc).__name__}); {HELP}"
        ) from None
    return root / BATCHES_FOLDER


def _source_key(path: Path) -> str:
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
        raise MinimascopeError(f"cannot read CIFAR-10 source {path}: {exc.strerror}") from None
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
