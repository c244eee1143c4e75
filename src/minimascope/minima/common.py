"""What every analysis of a minimum shares: where its results may go, and which images it looks at."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from torch import Tensor

from minimascope.errors import MinimascopeError
from minimascope.io import LOCK_FILE, locked, read_json, temporary_name_pattern


def check_out_folder(out_dir: str | Path, *, study_node: bool = False) -> Path:
    """Refuse an output folder that is a file or lies in a run directory (a run directory holds only what its
    training wrote; results go elsewhere, e.g. ``analyses/<run>/<analysis>``) or, unless ``study_node`` (the
    study writing one of its own node folders), in a study directory: a study's node folders are its own."""
    from minimascope.runs import RUN_JSON
    from minimascope.study.records import enclosing_study

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MinimascopeError(f"--out {out} is a file; name a folder for the results")
    for folder in (out.resolve(), *out.resolve().parents):
        if (folder / RUN_JSON).is_file():
            raise MinimascopeError(f"--out {out} is inside run directory {folder}; analyses are written elsewhere "
                                   f"(default: analyses/<run>/...)")
    study = None if study_node else enclosing_study(out)
    if study is not None:
        raise MinimascopeError(f"--out {out} is inside study directory {study}, whose folders belong to the "
                               f"study; choose a folder outside it")
    return out


def weights_identity(path: str | Path) -> str:
    """The sha256 of the weights an analysis reads: a run directory's final weights, or a weights file."""
    from minimascope.models import file_sha256
    from minimascope.runs import FINAL_WEIGHTS

    path = Path(path)
    return file_sha256(path / FINAL_WEIGHTS if path.is_dir() else path)


def check_analysis_folder(out_dir: str | Path, files: Sequence[str] = (), inputs: Sequence[str] | None = None, *,
                          study_node: bool = False) -> Path:
    """:func:`check_out_folder`, and unless ``study_node`` (the study decides by its node keys what is stale
    in its own folders) refuse a folder that holds anything but this analysis's ``files`` (its result file
    first), or holds its result of other ``inputs`` than these (the sha256 of each file it read, e.g.
    :func:`weights_identity`, as the result's ``inputs`` records them; None: not known yet, checked once they
    are, before the computation). The same analysis of the same inputs may be written again."""
    out = check_out_folder(out_dir, study_node=study_node)
    if study_node or not files or not out.is_dir():
        return out
    foreign = sorted(p.name for p in out.iterdir() if p.name not in (*files, LOCK_FILE)
                     and not any(fnmatch(p.name, temporary_name_pattern(name)) for name in files))
    if foreign:
        raise MinimascopeError(f"--out {out} holds other files ({', '.join(foreign[:3])}"
                               f"{', ...' if len(foreign) > 3 else ''}); choose another folder")
    result = out / files[0]
    if inputs is not None and result.exists():
        record = read_json(result, files[0])
        recorded = record.get("inputs") if isinstance(record, dict) else None
        if recorded != list(inputs):
            described = "of unknown inputs (an older minimascope wrote it)" if recorded is None else "of other inputs"
            raise MinimascopeError(f"--out {out} holds a {files[0]} {described}; choose another folder")
    return out


@contextmanager
def result_folder(out_dir: str | Path, files: Sequence[str], inputs: Sequence[str], *,
                  study_node: bool = False) -> Iterator[Path]:
    """Hold ``out_dir``'s lock while a result is written there, checked again under it
    (:func:`check_analysis_folder`): another process may have written it while this one computed."""
    with locked(out_dir, "analysis folder"):
        yield check_analysis_folder(out_dir, files, inputs, study_node=study_node)


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
