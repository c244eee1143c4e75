"""The picture of a minimum: loss and accuracy on a line or a plane of weights around a network.

Three kinds of surface (drawn by :mod:`minimascope.minima.surfaces`, their axes from
:mod:`minimascope.minima.directions`):

* ``random`` — around one network along filter-normalised random directions drawn from ``seed`` (Li et al.
  2018): x, y in [−span, span], where 1 moves every filter of every conv and linear weight by its own norm.
* ``plane`` — the plane through three networks A, B, C (Garipov et al. 2018): origin A, x along B − A, y
  orthogonal to it towards C; coordinates are distances in parameter space.
* ``trajectory`` — the plane of the top two principal directions of a run's saved weights minus its final
  ones (Li et al. 2018, Fig. 9), the final network at the origin, the path of the saved weights drawn on it.

How a point is evaluated (batch norm: ``recompute`` or ``eval``) is :mod:`minimascope.minima.landscape_points`.

``landscape.json`` (format ``minimascope-landscape-v1``): ``x``, ``y`` (one row, y = [0], for a line),
``train_loss`` and ``train_accuracy`` as rows = y and columns = x, the test values when asked, ``images``,
``seed``, ``bn``, ``directions`` (what the axes are), ``points`` (the marked networks with their values) and
``trajectory``. A loss that is not finite (far from the network its outputs can overflow) is written as
null and read back as +inf: the loss is unbounded there; figures clip it. :func:`read_landscape` checks
types, shapes and ranges and names a damaged file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor

from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_json, read_result_json
from minimascope.minima.landscape_figures import CONTOUR_PNG, SURFACE_PNG, write_figures
from minimascope.minima.landscape_points import (
    BN_MODES,
    DEFAULT_BATCH_SIZE,
    METRICS,
    PointValues,
    Progress,
    check_grid,
)
from minimascope.minima.surfaces import (
    KINDS,
    LANDSCAPE_FORMAT,
    Landscape,
    MarkedPoint,
    plane_surface,
    random_surface,
    trajectory_surface,
)

LANDSCAPE_JSON = "landscape.json"
LANDSCAPE_FILES = (LANDSCAPE_JSON, CONTOUR_PNG, SURFACE_PNG)  # what an output folder of landscape holds


# ----------------------------------------------------------------------------- on disk


def write_landscape(result: Landscape, out_dir: str | Path, inputs: Sequence[str] = ()) -> list[Path]:
    """``landscape.json`` (with ``inputs``, the sha256 of the weights files it is of) and its figures in
    ``out_dir``; returns their paths."""
    out = Path(out_dir)
    atomic_write_json(out / LANDSCAPE_JSON, {**result.to_dict(), "inputs": list(inputs)})
    if result.dims == 1:  # a line has no 3-D surface: none of an earlier plane is left beside it
        (out / SURFACE_PNG).unlink(missing_ok=True)
    return [out / LANDSCAPE_JSON, *write_figures(result, out)]


def _damaged(file: Path, what: str) -> MinimascopeError:
    return MinimascopeError(f"{file}: damaged {LANDSCAPE_FORMAT} file ({what}); re-run `minimascope landscape`")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _axis(record: dict[str, Any], key: str, file: Path, least: int) -> list[float]:
    values = record.get(key)
    if (not isinstance(values, list) or len(values) < least or not all(_number(v) and math.isfinite(v)
                                                                        for v in values)):
        raise _damaged(file, f"{key} must be a list of at least {least} finite numbers")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise _damaged(file, f"{key} must increase")
    return [float(v) for v in values]


def _cell(value: Any, metric: str, file: Path) -> float:
    """A loss: a number ≥ 0 or null (+inf); an accuracy: a number in [0, 1]."""
    if metric.endswith("loss"):
        if value is None:
            return math.inf
        if _number(value) and math.isfinite(value) and value >= 0:
            return float(value)
        raise _damaged(file, f"{metric} holds {value!r}, not a loss ≥ 0 or null")
    if _number(value) and 0 <= value <= 1:
        return float(value)
    raise _damaged(file, f"{metric} holds {value!r}, not an accuracy in [0, 1]")


def _matrix(record: dict[str, Any], metric: str, shape: tuple[int, int], file: Path) -> list[list[float]] | None:
    rows = record.get(metric)
    if rows is None and metric.startswith("test"):
        return None
    if not isinstance(rows, list) or len(rows) != shape[0] or not all(isinstance(r, list) and len(r) == shape[1]
                                                                       for r in rows):
        raise _damaged(file, f"{metric} must be {shape[0]} rows (y) of {shape[1]} values (x)")
    return [[_cell(v, metric, file) for v in row] for row in rows]


def _point(entry: Any, file: Path, with_test: bool) -> MarkedPoint:
    if not (isinstance(entry, dict) and isinstance(entry.get("label"), str)
            and all(_number(entry.get(k)) and math.isfinite(entry[k]) for k in ("x", "y"))):
        raise _damaged(file, "a marked point needs a label and finite x and y")
    metrics = METRICS if with_test else METRICS[:2]
    values = PointValues(*(_cell(entry.get(m), m, file) for m in metrics))
    return MarkedPoint(entry["label"], float(entry["x"]), float(entry["y"]), values)


def read_landscape(path: str | Path) -> Landscape:
    """A ``landscape.json`` (or the folder holding one) back as a :class:`Landscape`, checked (see module doc)."""
    file = Path(path) / LANDSCAPE_JSON if Path(path).is_dir() else Path(path)
    record = read_result_json(file, LANDSCAPE_FORMAT, LANDSCAPE_JSON, "landscape result")
    if record.get("kind") not in KINDS or record.get("dims") not in (1, 2) or record.get("bn") not in BN_MODES:
        raise _damaged(file, f"kind must be one of {KINDS}, dims 1 or 2, bn one of {BN_MODES}")
    dims = record["dims"]
    x = _axis(record, "x", file, 2)
    y = _axis(record, "y", file, 1 if dims == 1 else 2)
    if dims == 1 and y != [0.0]:
        raise _damaged(file, "a line has y = [0]")
    values = {metric: _matrix(record, metric, (len(y), len(x)), file) for metric in METRICS}
    with_test = values["test_loss"] is not None
    if with_test != (values["test_accuracy"] is not None):
        raise _damaged(file, "test_loss and test_accuracy come together")
    images, test_images, seed = record.get("images"), record.get("test_images"), record.get("seed")
    if not (isinstance(images, int) and images >= 1 and isinstance(seed, int)
            and (test_images is None if not with_test else isinstance(test_images, int) and test_images >= 1)):
        raise _damaged(file, "images (≥ 1), test_images and seed must be integers")
    points, steps = record.get("points"), record.get("trajectory")
    if not isinstance(points, list) or not points:
        raise _damaged(file, "points must list the marked networks")
    if steps is not None and not (isinstance(steps, list) and all(
            isinstance(s, dict) and isinstance(s.get("epoch"), int)
            and all(_number(s.get(k)) and math.isfinite(s[k]) for k in ("x", "y")) for s in steps)):
        raise _damaged(file, "trajectory must be a list of {epoch, x, y}")
    directions, settings = record.get("directions"), record.get("settings", {})
    if not isinstance(directions, dict) or not isinstance(settings, dict):
        raise _damaged(file, "directions and settings must be mappings")
    return Landscape(record["kind"], dims, x, y, values, images, test_images, seed, record["bn"], directions,
                     [_point(p, file, with_test) for p in points], steps, settings)


# ----------------------------------------------------------------------------- runs, on disk


def _data_of(payloads: dict[str, dict[str, Any]], data_source: str | None) -> tuple[Any, str]:
    """(the data set the networks of ``payloads`` (label → payload) were trained on, one for all of them
    (:func:`~minimascope.minima.common.load_trained_data`), from ``data_source``; the key of its content)."""
    from minimascope import data
    from minimascope.minima.common import load_trained_data

    loaded = load_trained_data(payloads, data_source)
    return loaded, data.content_key(data_source, loaded.dataset)


def _inputs(payload: dict[str, Any], runs: Sequence[str | Path], loaded: Any, images: int, seed: int,
            test: bool) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None, dict[str, str]]:
    """The training images, drawn among those every run of ``runs`` was trained on, the test
    images when asked, and the settings that say which."""
    from minimascope.minima.common import balanced_inputs, training_inputs

    train_images, train_labels, sampled = training_inputs(payload, loaded, runs, images, seed)
    test_set = balanced_inputs(payload, loaded.test_images, loaded.test_labels, images, seed) if test else None
    return (train_images, train_labels), test_set, sampled


def _source(result: Landscape, runs: Sequence[str | Path], loaded: Any, data_key: str, sampled: dict[str, str],
            batch_size: int, grid: int) -> Landscape:
    from minimascope import datasets

    settings = {"runs": [str(Path(r).resolve()) for r in runs], "images": "train" + (" and test" if result.test_images
                                                                                     else ""),
                **sampled, "data": data_key, "dataset": loaded.dataset,
                "dataset_title": datasets.get(loaded.dataset).title, "grid": grid, "batch_size": batch_size}
    return replace(result, settings={**result.settings, **settings})


def landscape_of_run(run_dir: str | Path, out_dir: str | Path, *, grid: int = 21, span: float = 1.0,
                     images: int = 1000, seed: int = 0, bn: str = "recompute", dims: int = 2, test: bool = False,
                     trajectory: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, data_source: str | None = None,
                     device: str = "auto", progress: Progress | None = None, study_node: bool = False) -> Landscape:
    """The surface of a run's final network (run directory or weights file) on a class-balanced subset of
    ``images`` of the training images it was trained on (a run's training subset), drawn with ``seed`` (and as
    many test images with ``test``), normalised as the run was trained: along random directions from ``seed``, or
    with ``trajectory`` on the plane of its saved weights (a run directory trained with ``snapshot_every``).
    Written to ``out_dir``, checked before anything is computed
    (:func:`~minimascope.minima.common.check_analysis_folder`; ``study_node``: the study's own folder)."""
    from minimascope import models
    from minimascope.env import resolve_device
    from minimascope.minima.common import check_analysis_folder, result_folder, run_label, weights_identity

    check_grid(grid, span, dims, bn)
    if trajectory and dims != 2:
        raise MinimascopeError("--trajectory draws a plane: --dims 1 does not apply")
    check_analysis_folder(out_dir, LANDSCAPE_FILES, study_node=study_node)  # before anything is loaded
    torch_device = resolve_device(device)
    model, payload = models.load_trained(run_dir)
    states, epochs, saved = _saved_weights(run_dir, payload) if trajectory else ([], [], [])
    identity = [weights_identity(run_dir), *(models.file_sha256(path) for path in saved)]
    check_analysis_folder(out_dir, LANDSCAPE_FILES, identity, study_node=study_node)
    label = run_label(run_dir)
    images_of, data_key = _data_of({label: payload}, data_source)
    train, test_set, sampled = _inputs(payload, [run_dir], images_of, images, seed, test)
    common = {"grid": grid, "bn": bn, "batch_size": batch_size, "device": torch_device, "progress": progress}
    if trajectory:
        result = trajectory_surface(model, states, epochs, train, test_set, label=label, **common)
        result = replace(result, seed=seed)
    else:
        result = random_surface(model, train, test_set, span=span, dims=dims, seed=seed, label=label, **common)
    result = _source(result, [run_dir], images_of, data_key, sampled, batch_size, grid)
    with result_folder(out_dir, LANDSCAPE_FILES, identity, study_node=study_node) as out:
        write_landscape(result, out, identity)
    return result


def _saved_weights(run_dir: str | Path, payload: dict[str, Any]
                   ) -> tuple[list[dict[str, Tensor]], list[int], list[Path]]:
    """The weights a run kept (initial.pt as epoch 0, then its snapshots, then final.pt), checked against the
    final network's architecture: their states, epochs and the files read besides final.pt."""
    from minimascope import models
    from minimascope.runs import INITIAL_WEIGHTS, read_run_json, snapshot_paths

    run = Path(run_dir)
    if not run.is_dir():
        raise MinimascopeError(f"--trajectory needs a run directory (its snapshots/), not the file {run}")
    snapshots = snapshot_paths(run)
    if not snapshots:
        raise MinimascopeError(f"run {run} kept no weight snapshots: train it with snapshot_every (e.g. "
                               f"snapshot_every: 1) to draw its trajectory")
    found = [(0, run / INITIAL_WEIGHTS)] if (run / INITIAL_WEIGHTS).is_file() else []
    found += [(epoch, path) for epoch, path in snapshots if epoch > 0]
    last = int(read_run_json(run).get("config", {}).get("epochs", found[-1][0] + 1))
    states, epochs = [], []
    for epoch, path in found:
        saved = models.read_weights(path)
        if saved["arch"] != payload["arch"]:
            raise MinimascopeError(f"{path} holds a {saved['arch']} network, not {payload['arch']}")
        models.check_finite(saved["state_dict"], str(path))
        states.append(saved["state_dict"])
        epochs.append(epoch)
    if epochs[-1] != last:
        states.append(payload["state_dict"])
        epochs.append(last)
    return states, epochs, [path for _, path in found]


def plane_of_runs(run_a: str | Path, run_b: str | Path, run_c: str | Path, out_dir: str | Path, *, grid: int = 21,
                  margin: float = 0.25, images: int = 1000, seed: int = 0, bn: str = "recompute", test: bool = False,
                  batch_size: int = DEFAULT_BATCH_SIZE, data_source: str | None = None, device: str = "auto",
                  progress: Progress | None = None, study_node: bool = False) -> Landscape:
    """The plane through three runs' final networks (origin A; see
    :func:`~minimascope.minima.surfaces.plane_surface`, ``margin`` of their extent around them) on a class-balanced
    subset of ``images`` of the training images all three were trained on (and test images with ``test``); the
    three must share architecture, data set and input normalisation.
    Written to ``out_dir``, checked first as :func:`landscape_of_run` checks it."""
    from minimascope import models
    from minimascope.env import resolve_device
    from minimascope.minima.common import check_analysis_folder, result_folder, run_label, weights_identity

    check_grid(grid, 1.0, 2, bn)
    if not (math.isfinite(margin) and margin >= 0):
        raise MinimascopeError(f"--margin must be a number >= 0, got {margin}")
    check_analysis_folder(out_dir, LANDSCAPE_FILES, study_node=study_node)  # before anything is loaded
    torch_device = resolve_device(device)
    loaded = [models.load_trained(run) for run in (run_a, run_b, run_c)]
    identity = [weights_identity(run) for run in (run_a, run_b, run_c)]
    check_analysis_folder(out_dir, LANDSCAPE_FILES, identity, study_node=study_node)
    payloads = [payload for _, payload in loaded]
    if any(p["arch"] != payloads[0]["arch"] for p in payloads):
        raise MinimascopeError(f"the three runs hold different architectures: {[p['arch'] for p in payloads]}")
    if any(p["normalization"] != payloads[0]["normalization"] for p in payloads):
        raise MinimascopeError("the three runs were trained on differently normalised inputs: a plane through "
                               "them means nothing")
    labels = [run_label(run) for run in (run_a, run_b, run_c)]
    if len(set(labels)) < 3:
        labels = [f"{name}: {label}" for name, label in zip("ABC", labels)]
    images_of, data_key = _data_of(dict(zip(labels, payloads)), data_source)
    train, test_set, sampled = _inputs(payloads[0], [run_a, run_b, run_c], images_of, images, seed, test)
    result = plane_surface([m for m, _ in loaded], labels, train, test_set, grid=grid, margin=margin, bn=bn,
                           batch_size=batch_size, device=torch_device, progress=progress)
    result = _source(replace(result, seed=seed), [run_a, run_b, run_c], images_of, data_key, sampled, batch_size,
                     grid)
    with result_folder(out_dir, LANDSCAPE_FILES, identity, study_node=study_node) as out:
        write_landscape(result, out, identity)
    return result
