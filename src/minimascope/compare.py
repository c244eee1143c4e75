"""Compare two trained networks layer by layer, as ``minimascope compare`` and the study do.

:func:`compare_networks` loads both networks, feeds each the test images normalised the way it
was trained, compares every chosen layer of A with every chosen layer of B
(:func:`minimascope.similarity.similarity_matrices`) and writes per measure a CSV, a JSON matrix
and a heatmap PNG. Files are written atomically, so a killed comparison leaves no half-written
file. Figures are drawn on a bare Agg canvas, not pyplot, so no global backend state changes.

A comparison folder holds ``comparison.json``: which networks (path and sha256 of their weights)
it compared, with which settings, and the measures written. A later comparison into the same
folder may add measures for the same pair and settings; anything else is refused, as is a folder
that is a run directory or holds files of something else, before any computation. A study's
comparison folders belong to the study: only the study itself (``study_node``) writes into them, and
it keeps its own record of the node beside ``comparison.json``.

With ``bootstrap`` > 0 the folder also holds ``bootstrap.json`` (:mod:`minimascope.bootstrap`): for
layer i of A against the same-named layer of B, CKA's interval from resampling images and its
shuffled-image baseline. It is not part of the folder's settings: a later comparison with a
bootstrap rewrites it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from minimascope.errors import MinimascopeError
from minimascope.io import LOCK_FILE, atomic_write_bytes, atomic_write_json, atomic_write_text, locked, read_json
from minimascope.similarity import DEFAULT_MEASURES, MEASURES, Progress, SimilarityMatrix


def similarity_heatmap(matrix: SimilarityMatrix, path: str | Path) -> None:
    """Heatmap of one measure: rows = layers of A, columns = layers of B, on the measure's
    fixed range (so that heatmaps of different runs compare by colour)."""
    rows, cols = len(matrix.layers_a), len(matrix.layers_b)
    # Margins in inches from the longest tick label (7-pt text is ~0.06 in a character): a fixed
    # layout, because constrained layout measures every tick label on each pass, 3x the time.
    left = 0.45 + 0.06 * max(map(len, matrix.layers_a))
    bottom = 0.45 + 0.06 * max(map(len, matrix.layers_b))
    right, top = 1.1, 0.55
    width, height = left + 0.3 * cols + right, bottom + 0.3 * rows + top
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((left / width, bottom / height, 0.3 * cols / width, 0.3 * rows / height))
    colour_axes = figure.add_axes(((width - right + 0.15) / width, bottom / height, 0.15 / width, 0.3 * rows / height))
    low, high = MEASURES[matrix.measure].value_range
    # Brighter = more alike for both kinds, so similarity and distance maps read the same way.
    image = axes.imshow(matrix.values, vmin=low, vmax=high, aspect="auto", interpolation="nearest",
                        cmap="magma" if matrix.kind == "similarity" else "magma_r")
    axes.set_xticks(range(cols), matrix.layers_b, rotation=90, fontsize=7)
    axes.set_yticks(range(rows), matrix.layers_a, fontsize=7)
    axes.set_xlabel(f"layers of {matrix.label_b}")
    axes.set_ylabel(f"layers of {matrix.label_a}")
    axes.set_title(f"{matrix.measure}: {matrix.label_a} vs {matrix.label_b}\n"
                   f"n = {matrix.n_samples} samples, activations: {matrix.policy}", fontsize=9)
    direction = "higher" if matrix.kind == "similarity" else "lower"
    figure.colorbar(image, cax=colour_axes).set_label(f"{matrix.measure} ({matrix.kind}: {direction} = more alike)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def _csv_text(matrix: SimilarityMatrix) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["layer", *matrix.layers_b])
    for name, row in zip(matrix.layers_a, matrix.values):
        writer.writerow([name, *(repr(float(v)) for v in row)])
    return buffer.getvalue()


def write_similarity(matrices: Sequence[SimilarityMatrix], out_dir: str | Path) -> list[Path]:
    """Per measure ``<measure>.csv`` (layers of A down, of B across), ``<measure>.json`` (values
    with layer names, measure, kind, convention, n, policy, labels, error bound) and
    ``<measure>.png``; returns the paths written."""
    out = Path(out_dir)
    written = []
    for matrix in matrices:
        stem = out / matrix.measure
        atomic_write_text(stem.with_suffix(".csv"), _csv_text(matrix))
        atomic_write_json(stem.with_suffix(".json"), matrix.to_dict())
        similarity_heatmap(matrix, stem.with_suffix(".png"))
        written += [stem.with_suffix(suffix) for suffix in (".csv", ".json", ".png")]
    return written


COMPARISON_JSON = "comparison.json"
COMPARISON_FORMAT = "minimascope-comparison-v1"


def read_comparison(out_dir: str | Path) -> dict | None:
    """The ``comparison.json`` of a comparison folder; None when there is none."""
    path = Path(out_dir) / COMPARISON_JSON
    if not path.exists():
        return None
    record = read_json(path, COMPARISON_JSON)
    if not isinstance(record, dict) or record.get("format") != COMPARISON_FORMAT:
        raise MinimascopeError(f"{path} is not a minimascope comparison record")
    return record


def _weights_file(path: Path) -> Path:
    from minimascope.runs import FINAL_WEIGHTS

    return path / FINAL_WEIGHTS if path.is_dir() else path


def check_comparison_folder(out_dir: Path, identity: dict, study_node: bool = False) -> list[str]:
    """Refuse a folder that is (or lies in) a run directory, lies in a study (unless ``study_node``: the
    study writing its own node), is a file, holds other files, or holds a comparison of another pair or
    with other settings; returns the measures already there."""
    from minimascope.runs import RUN_JSON
    from minimascope.study.records import NODE_JSON, enclosing_study

    if out_dir.exists() and not out_dir.is_dir():
        raise MinimascopeError(f"--out {out_dir} is a file; name a folder for the comparison")
    for folder in (out_dir, *out_dir.resolve().parents):
        if (folder / RUN_JSON).is_file():
            raise MinimascopeError(f"--out {out_dir} is inside run directory {folder}; comparisons are written "
                                   f"elsewhere (default: comparisons/<A>_vs_<B>)")
    study = None if study_node else enclosing_study(out_dir)
    if study is not None:
        raise MinimascopeError(f"--out {out_dir} is inside study directory {study}, whose folders belong to the "
                               f"study; choose a folder outside it")
    record = read_comparison(out_dir)
    if record is None:
        if out_dir.is_dir() and any(p.name not in (LOCK_FILE, NODE_JSON) for p in out_dir.iterdir()):
            raise MinimascopeError(f"--out {out_dir} holds files but no {COMPARISON_JSON}; choose another folder")
        return []
    sides = [record.get(side) for side in ("a", "b")]
    if not all(isinstance(side, dict) for side in sides):
        raise MinimascopeError(f"{out_dir / COMPARISON_JSON} names no compared networks (a study's record of an "
                               f"older version?); choose another folder")
    for side, stored in zip(("a", "b"), sides):
        if stored.get("weights_sha256") != identity[side]["weights_sha256"]:
            raise MinimascopeError(f"--out {out_dir} holds a comparison of {sides[0].get('path')} with "
                                   f"{sides[1].get('path')}; choose another folder for this pair")
    stored = record.get("settings", {})
    differ = [k for k, v in identity["settings"].items() if stored.get(k) != v]
    if differ:
        raise MinimascopeError(f"--out {out_dir} holds a comparison of this pair with other settings (differs in: "
                               f"{', '.join(differ)}); choose another folder")
    return list(record.get("measures", []))


def compare_networks(run_a: str | Path, run_b: str | Path, out_dir: str | Path, *,
                     measures: Sequence[str] = DEFAULT_MEASURES, samples: int | None = None,
                     layers_a: Sequence[str] | None = None, layers_b: Sequence[str] | None = None,
                     layer_set: str = "conv_linear", policy: str = "flatten", data_source: str | None = None,
                     device: str = "auto", batch_size: int = 500, bootstrap: int = 0,
                     progress: Progress | None = None, study_node: bool = False) -> list[SimilarityMatrix]:
    """Compare every layer of network A with every layer of network B on ``samples`` test images of the
    data set both were trained on (a class-balanced subset when fewer than all; None: all, recorded as
    their number; networks of two data sets are refused) and write the results to ``out_dir``.

    ``run_a``/``run_b``: run directories or weights/checkpoint files; the same path twice compares
    a network's layers with each other, computing its activations once. ``data_source``: the data set's
    source (``--data``). ``layers_b`` defaults to ``layers_a``, which defaults to
    :func:`minimascope.similarity.default_layers` of ``layer_set`` (found by module type, any architecture).
    ``bootstrap``: subsamples of images for CKA's interval per same-named layer pair (0: none).
    ``study_node``: the study writes its own node's folder (any other caller is refused a study's folder).
    """
    from minimascope import bootstrap as uncertainty
    from minimascope import data, models, similarity
    from minimascope.env import resolve_device
    from minimascope.minima.common import load_trained_data, pair_labels, trained_dataset

    if bootstrap and (bootstrap < 2 or not set(measures) & set(uncertainty.BOOTSTRAP_MEASURES)):
        raise MinimascopeError(f"bootstrap: {bootstrap} must be 0 (off) or at least 2 resamples with "
                               f"{' or '.join(uncertainty.BOOTSTRAP_MEASURES)} among the measures")
    if samples is not None and samples < 1:
        raise MinimascopeError(f"samples must be at least 1, got {samples}")
    if policy not in similarity.POLICIES or layer_set not in similarity.LAYER_SETS:
        raise MinimascopeError(f"policy must be one of {', '.join(similarity.POLICIES)} and layer set one of "
                               f"{', '.join(similarity.LAYER_SETS)}")
    torch_device = resolve_device(device)
    out_dir = Path(out_dir)
    path_a, path_b = Path(run_a).resolve(), Path(run_b).resolve()
    same_run = path_a == path_b
    label_a, label_b = (path_a.name, path_b.name) if same_run else pair_labels(path_a, path_b)
    model_a, payload_a = models.load_trained(path_a)
    model_b, payload_b = (model_a, payload_a) if same_run else models.load_trained(path_b)
    trained_on = {label_a: payload_a, label_b: payload_b}
    dataset = trained_dataset(trained_on)
    identity = {
        "a": {"path": str(path_a), "weights_sha256": models.file_sha256(_weights_file(path_a))},
        "b": {"path": str(path_b), "weights_sha256": models.file_sha256(_weights_file(path_b))},
        "settings": {"samples": samples, "layers_a": list(layers_a) if layers_a else None,
                     "layers_b": list(layers_b) if layers_b else None, "layer_set": layer_set, "policy": policy,
                     "data": data.content_key(data_source, dataset)},
    }
    # before the computation, which may take minutes; the number of samples "all" stands for is known once
    # the data are loaded, and checked with the rest under the lock below
    known = {k: v for k, v in identity["settings"].items() if k != "samples" or samples is not None}
    check_comparison_folder(out_dir, {**identity, "settings": known}, study_node)
    loaded = load_trained_data(trained_on, data_source, progress=progress)
    images = loaded.test_images
    if samples is not None and samples < len(images):
        images = images[data.balanced_subset(loaded.test_labels, samples, seed=0)]
    elif samples is not None and samples > len(images):
        raise MinimascopeError(f"samples: {samples} exceeds the {len(images)} test images")
    identity["settings"]["samples"] = len(images)

    def inputs_for(payload: dict) -> Tensor:
        normalization = data.Normalization(**{k: tuple(v) for k, v in payload["normalization"].items()})
        return normalization(images)

    inputs_a = inputs_for(payload_a)
    same_inputs = same_run or payload_a["normalization"] == payload_b["normalization"]
    inputs_b = inputs_a if same_inputs else inputs_for(payload_b)
    example = inputs_a[:1].to(torch_device)
    names_a = list(layers_a) if layers_a else similarity.default_layers(model_a.to(torch_device), example, layer_set)
    names_b = list(layers_b or layers_a or []) or similarity.default_layers(model_b.to(torch_device), example,
                                                                            layer_set)
    matrices = similarity.similarity_matrices(
        model_a, inputs_a, model_b, inputs_b, layers_a=names_a, layers_b=names_b, measures=measures,
        batch_size=batch_size, device=torch_device, policy=policy, label_a=label_a, label_b=label_b,
        progress=progress)
    result = None
    if bootstrap:
        shared = [name for name in names_a if name in names_b]
        acts_a = similarity.collect_activations(model_a, inputs_a, shared, batch_size=batch_size,
                                                device=torch_device, policy=policy)
        acts_b = acts_a if same_run else similarity.collect_activations(
            model_b, inputs_b, shared, batch_size=batch_size, device=torch_device, policy=policy)
        result = uncertainty.bootstrap_layers(acts_a, acts_b, shared, measures, bootstrap, device=torch_device)
    with locked(out_dir, "comparison folder"):
        # again: another process may have written meanwhile
        earlier = check_comparison_folder(out_dir, identity, study_node)
        measures_written = earlier + [m.measure for m in matrices if m.measure not in earlier]
        atomic_write_json(out_dir / COMPARISON_JSON, {"format": COMPARISON_FORMAT, **identity,
                                                      "measures": measures_written})
        write_similarity(matrices, out_dir)
        if result is not None:
            uncertainty.write_bootstrap(result, out_dir)
    return matrices
