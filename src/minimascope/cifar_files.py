"""CIFAR-10's file formats decoded into uint8 arrays: an image-folder tree, its tar archive, and
torchvision's pickled ``cifar-10-batches-py`` (read with an allow-list of types, so a crafted batch runs no
code). :mod:`minimascope.data` caches what :func:`decode` returns.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from minimascope.errors import MinimascopeError

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SHAPE = (3, 32, 32)
BATCHES_FOLDER = "cifar-10-batches-py"
HELP = "point --data or MINIMASCOPE_DATA at a CIFAR-10 image-folder tree, its .tar.gz, or cifar-10-batches-py"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``, called as a slow step advances (decoding a source)."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def decode(path: Path, progress: Progress | None = None) -> dict[str, np.ndarray]:
    if path.is_file():
        return _decode_archive(path, progress)
    batches = path if (path / "test_batch").is_file() else path / BATCHES_FOLDER
    if (batches / "test_batch").is_file():
        return _decode_pickled_batches(batches)
    return _decode_image_files(
        ((str(p.relative_to(path)), p.read_bytes) for p in path.rglob("*") if p.is_file()), progress
    )


# What the published batches hold besides dicts, lists, bytes and ints: numpy arrays, pickled by
# protocol 2 (py2 or py3: bytes via _codecs.encode) or by protocol 5 (_frombuffer).
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only the types a CIFAR-10 batch holds: a crafted file cannot name a function to
    call (``os.system``, ``builtins.exec``, ...), so reading a batch never runs code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 batch never holds")
        return super().find_class(module, name)


def _decode_pickled_batches(folder: Path) -> dict[str, np.ndarray]:
    """torchvision's official ``cifar-10-batches-py`` (a pickle format, as published), read with an
    allow-list of types (:class:`_BatchUnpickler`)."""

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in names:
            file = folder / name
            if not file.is_file():
                raise MinimascopeError(f"{folder} lacks {name}; {HELP}")
            try:
                with file.open("rb") as f:
                    entry = _BatchUnpickler(f, encoding="bytes").load()
                if not isinstance(entry, dict) or b"data" not in entry or b"labels" not in entry:
                    raise ValueError("no data and labels entries")
                images.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, *IMAGE_SHAPE))
                labels.append(np.asarray(entry[b"labels"], dtype=np.int64))
            except Exception as exc:
                raise MinimascopeError(f"cannot read CIFAR-10 batch {file}: {one_line(exc)}") from None
        return np.concatenate(images), np.concatenate(labels)

    train_x, train_y = read([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = read(["test_batch"])
    return {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}


def _decode_archive(path: Path, progress: Progress | None = None) -> dict[str, np.ndarray]:
    def members() -> Iterator[tuple[str, object]]:
        with path.open("rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as archive:
            size, count = path.stat().st_size, 0
            for member in archive:
                if member.isfile():
                    data = archive.extractfile(member).read()
                    yield member.name, lambda data=data: data
                    count += 1
                    if progress and count % 500 == 0:
                        progress("reading archive", raw.tell(), size)
            if progress:
                progress("reading archive", size, size)

    try:
        return _decode_image_files(members(), progress)
    except tarfile.ReadError as exc:
        # tarfile's r:* explains each compression it tried on its own line: one reason is enough.
        reason = "not a tar archive (plain, gzip, bzip2 or xz)" if "could not be opened" in str(exc) else exc
        raise MinimascopeError(f"corrupt or truncated archive {path}: {one_line(reason)}") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise MinimascopeError(f"corrupt or truncated archive {path}: {one_line(exc)}") from None


def _decode_image_files(files: Iterable[tuple[str, object]],
                        progress: Progress | None = None) -> dict[str, np.ndarray]:
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
        raise MinimascopeError(f"no train/<class>/ or test/<class>/ images found; {HELP}")
    arrays: dict[str, np.ndarray] = {}
    total, done, converted = sum(map(len, found.values())), 0, {}
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
                pixels, mode = _decode_image(name, read())
                if mode != "RGB":
                    converted[mode] = converted.get(mode, 0) + 1
                images.append(pixels)
                labels.append(label_index)
                done += 1
                if progress and (done % 500 == 0 or done == total):
                    progress("decoding images", done, total)
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
    if converted:
        modes = ", ".join(f"{count} {mode}" for mode, count in sorted(converted.items()))
        warnings.warn(f"{sum(converted.values())} of {total} images were not RGB ({modes}; L is grayscale) "
                      f"and were converted to RGB", stacklevel=2)
    return arrays


def _decode_image(name: str, data: bytes) -> tuple[np.ndarray, str]:
    """An image's pixels as uint8 (3, 32, 32) and the PIL mode it was stored in."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.size != IMAGE_SHAPE[1:]:
                raise MinimascopeError(f"{name} is {image.size[0]}x{image.size[1]}; CIFAR-10 images are 32x32")
            mode = image.mode
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise MinimascopeError(f"cannot decode image {name}: not an image format PIL recognises") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL names the in-memory buffer it read from; the file's name is the useful part.
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", one_line(exc))
        raise MinimascopeError(f"cannot decode image {name}: {reason}") from None
    # Contiguous (C, H, W), as the cache file reads back: a transposed view would give the stacked
    # array a channels-last layout, so a cold and a warm cache would run different conv kernels.
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)), mode
