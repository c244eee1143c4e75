"""What every analysis of a minimum shares: where its results may go, the data set its networks were trained on,
and which images of it it looks at."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from minimascope.errors import MinimascopeError
from minimascope.io import LOCK_FILE, locked, read_json, temporary_name_pattern

if TYPE_CHECKING:
    from minimascope.data import ImageData, Progress


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


def balanced_inputs(payload: dict[str, Any], images: Tensor, labels: Tensor, size: int, seed: int,
                    what: str = "") -> tuple[Tensor, Tensor]:
    """A class-balanced subset of ``size`` uint8 images (all when ``size`` is their number), normalised
    the way the network of ``payload`` (a weights payload) was trained, with its labels (``what`` the images
    are, for the message when there are fewer than ``size``)."""
    from minimascope import data

    if not 1 <= size <= len(labels):
        raise MinimascopeError(f"--images must be in 1..{len(labels)}{f' ({what})' if what else ''}, got {size}")
    if size < len(labels):
        index = data.balanced_subset(labels, size, seed=seed)
        images, labels = images[index], labels[index]
    normalization = data.Normalization(**{k: tuple(v) for k, v in payload["normalization"].items()})
    return normalization(images), labels


def training_inputs(payload: dict[str, Any], loaded: ImageData, runs: Sequence[str | Path], size: int, seed: int, *,
                    at_most: bool = False) -> tuple[Tensor, Tensor, dict[str, str]]:
    """:func:`balanced_inputs` of ``size`` (with ``at_most``: at most ``size``) of the training images every run of
    ``runs`` was trained on (:func:`trained_images`), and the settings that say which: ``subset`` and
    ``drawn_from``."""
    index, drawn_from = trained_images(runs, loaded.train_labels)
    images, labels = loaded.train_images, loaded.train_labels
    if index is not None:
        images, labels = images[index], labels[index]
    size = min(size, len(labels)) if at_most else size
    inputs, labels_drawn = balanced_inputs(payload, images, labels, size, seed, drawn_from)
    return inputs, labels_drawn, {"subset": f"class-balanced, seed {seed}" if size < len(labels) else "all",
                                  "drawn_from": drawn_from}


def run_label(run: str | Path) -> str:
    """A run's folder name (a weights file's stem); a study's ``runs/<arm>/seed<k>`` as "<arm> seed<k>"."""
    path = Path(run).resolve()
    if not path.is_dir():
        return path.stem
    return f"{path.parent.name} {path.name}" if path.name.startswith("seed") else path.name


def pair_labels(path_a: Path, path_b: Path) -> tuple[str, str]:
    """How two networks are named in a result: their folder or file names, "A …" and "B …" where those are one."""
    return (path_a.name, path_b.name) if path_a.name != path_b.name else (f"A {path_a.name}", f"B {path_b.name}")


def _trained_on(record: Mapping[str, Any]) -> tuple[str, tuple[str, ...], int, tuple[int, ...]]:
    """(data set, classes, channels, image size) a weights payload or run.json says its network was trained on;
    a record that says nothing is CIFAR-10's, as every record was before other data sets."""
    from minimascope import datasets, models

    name = models.payload_dataset(record)
    spec = datasets.get(name)
    recorded = record.get("dataset") or {}
    classes = tuple(str(c) for c in recorded.get("classes") or spec.classes or ())
    size = tuple(int(s) for s in recorded.get("image_size") or spec.image_size or ())
    return name, classes, models.payload_channels(record), size


def _described(trained: tuple[str, tuple[str, ...], int, tuple[int, ...]]) -> str:
    from minimascope import datasets

    name, classes, channels, size = trained
    shown = f": {', '.join(classes)}" if len(classes) <= 5 else ""
    image = f"{'x'.join(map(str, size))} " if size else ""
    return (f"{datasets.get(name).title} ({len(classes)} classes{shown}; {image}images of {channels} "
            f"channel{'s' if channels != 1 else ''})")


def trained_dataset(records: Mapping[str, Mapping[str, Any]]) -> str:
    """The data set (its name in :mod:`minimascope.datasets`) the networks of ``records`` (label → weights
    payload or run.json) were trained on. Networks of different data sets, or of one data set with other
    classes, channels or image size (two image folders), are one line: no analysis of two networks compares
    them on images only one of them was trained to read."""
    (first_label, first), *others = ((label, _trained_on(record)) for label, record in records.items())
    for label, trained in others:
        if trained != first:
            raise MinimascopeError(f"{first_label} was trained on {_described(first)}, {label} on "
                                   f"{_described(trained)}: analyse networks of one data set together")
    return first[0]


def load_trained_data(records: Mapping[str, Mapping[str, Any]], source: str | None, *,
                      progress: Progress | None = None) -> ImageData:
    """The data set the networks of ``records`` were trained on (:func:`trained_dataset`), loaded from
    ``source`` (``--data``; see :func:`minimascope.data.resolve_source`). A source of other classes, channels
    or image size than the networks' is one line."""
    from minimascope import data, datasets

    name = trained_dataset(records)
    loaded = data.load(name, source, progress=progress)
    expected = _trained_on(next(iter(records.values())))
    found = (name, loaded.classes, loaded.channels, loaded.image_size)
    if found != expected:
        raise MinimascopeError(f"the {datasets.get(name).title} source given holds {_described(found)}, the "
                               f"networks were trained on {_described(expected)}; pass their source with --data")
    return loaded


def trained_images(runs: Sequence[str | Path], train_labels: Tensor) -> tuple[Tensor | None, str]:
    """The images of the training split (``train_labels``) that every network of ``runs`` (run directories or
    weights files) was trained on, as indices into it (None: all of them), and what they are in words. A run
    directory (or its ``final.pt``) says which in its ``run.json``: its class-balanced ``train_subset`` less the
    images it held out for validation; a weights file of no run says nothing, and all images count. A loss "on
    training images" is then the loss the optimizer lowered, not one on images the network never saw."""
    import torch

    from minimascope import runs as run_files
    from minimascope.config import TrainConfig
    from minimascope.splits import training_index

    kept = torch.ones(len(train_labels), dtype=torch.bool)
    named = []
    for run in runs:
        path, label = Path(run), run_label(run)
        folder = path if path.is_dir() else path.parent if path.name == run_files.FINAL_WEIGHTS else None
        if folder is None or not (folder / run_files.RUN_JSON).is_file():
            continue
        file = folder / run_files.RUN_JSON
        try:
            config = TrainConfig.from_mapping(run_files.read_run_json(folder).get("config") or {}, str(file))
        except MinimascopeError as error:
            raise MinimascopeError(f"cannot tell which images {label} was trained on: {error}") from None
        index, _ = training_index(config, train_labels)
        if len(index) < len(train_labels):
            mask = torch.zeros_like(kept)
            mask[index] = True
            kept &= mask
            named.append(label)
    if not named:
        return None, f"all {len(train_labels):,} training images"
    if not kept.any():
        raise MinimascopeError(f"{' and '.join(named)} were trained on different training images, none shared; "
                               f"analyse networks trained on the same images together")
    whose = named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]} all"
    return kept.nonzero().flatten(), f"the {int(kept.sum()):,} training images {whose} trained on"
