"""What every format module shares: the arrays a decoder returns, one-line reasons, progress callbacks and
the per-channel statistics of a training split."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``, called as a slow step advances (decoding a source)."""

Arrays = dict[str, np.ndarray]
"""A decoder's result: ``{train,test}_images`` uint8 (N, C, H, W), ``{train,test}_labels`` int64 (N,), and
``classes`` (str, one per label) where the data name their classes themselves (an image-folder tree)."""

SPLITS = ("train", "test")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def split_arrays(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Arrays:
    return {"train_images": train[0], "train_labels": train[1], "test_images": test[0], "test_labels": test[1]}


def channel_statistics(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 images (N, C, H, W), on the [0, 1]
    scale, accumulated in float64 a chunk at a time so a large split needs no float copy of itself."""
    channels = images.shape[1]
    total, squares = np.zeros(channels), np.zeros(channels)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        squares += np.square(block).sum(axis=(0, 2, 3))
    count = images.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
