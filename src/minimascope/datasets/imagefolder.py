"""Image-folder trees ``[prefix/]{train,test}/<class>/<image>``, as folders or tar archives (plain, gzip,
bzip2 or xz).

With ``classes`` and ``size`` given (CIFAR-10's tree) the tree must hold exactly those class folders and
images of that size, all converted to RGB. Without them (``imagefolder``) the classes are the training
split's folder names in sorted order, every image must have the size of the first, and the set is
grayscale (one channel) when every image is, RGB otherwise.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from minimascope.datasets.common import SPLITS, Arrays, Progress, one_line
from minimascope.errors import MinimascopeError

HELP = "point --data at a train/<class>/, test/<class>/ image-folder tree or its .tar.gz"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
GRAYSCALE_MODES = {"1", "L", "LA"}

Files = Iterable[tuple[str, Callable[[], bytes]]]
"""(path inside the tree, read its bytes) pairs."""


def decode(path: Path, progress: Progress | None = None, *, classes: tuple[str, ...] | None = None,
           size: tuple[int, int] | None = None, title: str = "image folder", hint: str = HELP) -> Arrays:
    """Decode a tree or its archive; the result holds ``classes`` when they come from the folder names."""
    if path.is_file():
        return _decode_archive(path, progress, classes=classes, size=size, title=title, hint=hint)
    files = ((str(p.relative_to(path)), p.read_bytes) for p in path.rglob("*") if p.is_file())
    return decode_files(files, progress, classes=classes, size=size, title=title, hint=hint)


def archive_members(path: Path, progress: Progress | None = None) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """The files of a tar archive as (name, read) pairs, read in one pass."""
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


def read_archive(path: Path, use: Callable[[Iterator[tuple[str, Callable[[], bytes]]]], Arrays],
                 progress: Progress | None = None) -> Arrays:
    """``use(members)`` with a damaged archive turned into one line naming it."""
    try:
        return use(archive_members(path, progress))
    except tarfile.ReadError as exc:
        # tarfile's r:* explains each compression it tried on its own line: one reason is enough.
        reason = "not a tar archive (plain, gzip, bzip2 or xz)" if "could not be opened" in str(exc) else exc
        raise MinimascopeError(f"corrupt or truncated archive {path}: {one_line(reason)}") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise MinimascopeError(f"corrupt or truncated archive {path}: {one_line(exc)}") from None


def _decode_archive(path: Path, progress: Progress | None, **options) -> Arrays:
    return read_archive(path, lambda members: decode_files(members, progress, **options), progress)


def _found_files(files: Files) -> dict[tuple[str, str], list[tuple[str, Callable[[], bytes]]]]:
    found: dict[tuple[str, str], list[tuple[str, Callable[[], bytes]]]] = {}
    for name, read in files:
        parts = PurePosixPath(name.replace(os.sep, "/")).parts
        if len(parts) < 3 or PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        split, label = parts[-3:-1]
        if split in SPLITS:
            found.setdefault((split, label), []).append((name, read))
    return found


def _check_classes(found: dict, classes: tuple[str, ...] | None, hint: str) -> tuple[str, ...]:
    """The class names, checked against what each split holds."""
    held = {split: {label for s, label in found if s == split} for split in SPLITS}
    if classes is not None:  # a named data set: both splits hold exactly its classes
        for split in SPLITS:
            missing = [c for c in classes if c not in held[split]]
            if missing:
                raise MinimascopeError(f"{split}/ lacks class folder(s) {', '.join(missing)}; "
                                       f"expected {', '.join(classes)}")
            unknown = sorted(held[split] - set(classes))
            if unknown:
                raise MinimascopeError(f"{split}/ has unknown class folder(s) {', '.join(unknown)}; "
                                       f"expected {', '.join(classes)}")
        return classes
    if not held["test"]:
        raise MinimascopeError(f"the test split is empty: no test/<class>/ images; {hint}")
    if len(held["train"]) < 2:
        found_names = ", ".join(sorted(held["train"])) or "none"
        raise MinimascopeError(f"train/ holds {len(held['train'])} class folder(s) ({found_names}); "
                               f"a classifier needs at least 2")
    unknown = sorted(held["test"] - held["train"])
    if unknown:
        raise MinimascopeError(f"test/ has class folder(s) that train/ lacks: {', '.join(unknown)}")
    return tuple(sorted(held["train"]))


def decode_files(files: Files, progress: Progress | None = None, *, classes: tuple[str, ...] | None = None,
                 size: tuple[int, int] | None = None, title: str = "image folder", hint: str = HELP) -> Arrays:
    """Decode a tree given as (path, read) pairs: images sorted by class, then by path."""
    found = _found_files(files)
    if not found:
        raise MinimascopeError(f"no train/<class>/ or test/<class>/ images found; {hint}")
    named = classes is not None
    classes = _check_classes(found, classes, hint)
    total, done = sum(map(len, found.values())), 0
    modes: dict[str, int] = {}
    first: tuple[str, tuple[int, int]] | None = (f"{title} images", size) if size else None
    decoded: dict[str, tuple[list[np.ndarray], list[int]]] = {split: ([], []) for split in SPLITS}
    for split in SPLITS:
        for label_index, label in enumerate(classes):
            for name, read in sorted(found.get((split, label), ()), key=lambda item: item[0]):
                pixels, mode = decode_image(name, read(), rgb=named)
                first = first or (name, pixels.shape[:0:-1])
                if pixels.shape[:0:-1] != first[1]:
                    width, height = pixels.shape[:0:-1]
                    raise MinimascopeError(f"{name} is {width}x{height}; {first[0]} {'are' if named else 'is'} "
                                           f"{first[1][0]}x{first[1][1]}"
                                           + ("" if named else ": an image folder holds images of one size"))
                modes[mode] = modes.get(mode, 0) + 1
                decoded[split][0].append(pixels)
                decoded[split][1].append(label_index)
                done += 1
                if progress and (done % 500 == 0 or done == total):
                    progress("decoding images", done, total)
    arrays: Arrays = {}
    color = any(image.shape[0] == 3 for images, _ in decoded.values() for image in images)
    for split, (images, labels) in decoded.items():
        if color:  # grayscale images of a colour set: gray in each of R, G and B, as PIL's convert does
            images = [np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image for image in images]
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
    converted = {mode: count for mode, count in modes.items() if mode != "RGB"}
    if named and converted:
        listed = ", ".join(f"{count} {mode}" for mode, count in sorted(converted.items()))
        warnings.warn(f"{sum(converted.values())} of {total} images were not RGB ({listed}; L is grayscale) "
                      f"and were converted to RGB", stacklevel=3)
    if not named:
        arrays["classes"] = np.asarray(classes, dtype=str)
    return arrays


def decode_image(name: str, data: bytes, *, rgb: bool) -> tuple[np.ndarray, str]:
    """An image's pixels as contiguous uint8 (C, H, W) and the PIL mode it was stored in: C = 3, or 1 for a
    grayscale image unless ``rgb``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            gray = not rgb and mode in GRAYSCALE_MODES
            pixels = np.asarray(image.convert("L" if gray else "RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise MinimascopeError(f"cannot decode image {name}: not an image format PIL recognises") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL names the in-memory buffer it read from; the file's name is the useful part.
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", one_line(exc))
        raise MinimascopeError(f"cannot decode image {name}: {reason}") from None
    # Contiguous (C, H, W), as the cache file reads back: a transposed view would give the stacked
    # array a channels-last layout, so a cold and a warm cache would run different conv kernels.
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels), mode
