"""What every analysis of a minimum shares: where its results may go, and which images it looks at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from minimascope.errors import MinimascopeError


def check_analysis_folder(out_dir: str | Path) -> Path:
    """Refuse an output folder that is a file or lies in a run directory (a run directory holds
    only what its training wrote; analyses go elsewhere, e.g. ``analyses/<run>/<analysis>``)."""
    from minimascope.runs import RUN_JSON

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MinimascopeError(f"--out {out} is a file; name a folder for the results")
    for folder in (out.resolve(), *out.resolve().parents):
        if (folder / RUN_JSON).is_file():
            raise MinimascopeError(f"--out {out} is inside run directory {folder}; analyses are written elsewhere "
                                   f"(default: analyses/<run>/...)")
    return out



def balanced_inputs(payload: dict[str, Any], images: Tensor, labels: Tensor, size: int,
                    seed: int) -> tuple[Tensor, Tensor]:
    """A class-balanced subset of ``size`` uint8 images (all when ``size`` is their number), normalised
    the way the network of ``payload`` (a weights payload) was trained, with its labels."""
    from minimascope import data

    if not 1 <= size <= len(labels):
        raise MinimascopeError(f"--images must be in 1..{len(labels)}, got {size}")
    if size < len(labels):
        index = data.balanced_subset(labels, size, seed=seed)
        images, labels = images[index], labels[index]
    normalization = data.Normalization(**{k: tuple(v) for k, v in payload["normalization"].items()})
    return normalization(images), labels
