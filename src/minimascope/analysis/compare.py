"""Compare two trained networks layer by layer, as ``minimascope compare`` and the study do.

:func:`compare_networks` loads both networks, feeds each the test images normalised the way it
was trained, compares every chosen layer of A with every chosen layer of B
(:func:`minimascope.similarity.similarity_matrices`) and writes per measure a CSV, a JSON matrix
and a heatmap PNG. Files are written atomically, so a killed comparison leaves no half-written
file. Figures are drawn on a bare Agg canvas, not pyplot, so no global backend state changes.
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
from minimascope.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from minimascope.similarity import DEFAULT_MEASURES, MEASURES, Progress, SimilarityMatrix


def similarity_heatmap(matrix: SimilarityMatrix, path: str | Path) -> None:
    """Heatmap of one measure: rows = layers of A, columns = layers of B, on the measure's
    fixed range (so that heatmaps of different runs compare by colour)."""
    rows, cols = len(matrix.layers_a), len(matrix.layers_b)
    figure = Figure(figsize=(2.5 + 0.3 * cols, 2.0 + 0.3 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
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
    figure.colorbar(image, ax=axes).set_label(f"{matrix.measure} ({matrix.kind}: {direction} = more alike)")
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


def compare_networks(run_a: str | Path, run_b: str | Path, out_dir: str | Path, *,
                     measures: Sequence[str] = DEFAULT_MEASURES, samples: int = 10_000,
                     layers_a: Sequence[str] | None = None, layers_b: Sequence[str] | None = None,
                     layer_set: str = "conv_linear", policy: str = "flatten", data_source: str | None = None,
                     device: str = "auto", batch_size: int = 500,
                     progress: Progress | None = None) -> list[SimilarityMatrix]:
    """Compare every layer of network A with every layer of network B on ``samples`` CIFAR-10
    test images (a class-balanced subset when fewer than all) and write the results to ``out_dir``.

    ``run_a``/``run_b``: run directories or weights/checkpoint files; the same path twice compares
    a network's layers with each other, computing its activations once. ``layers_b`` defaults to
    ``layers_a``, which defaults to :func:`minimascope.similarity.default_layers` of ``layer_set``.
    """
    from minimascope import data, models, similarity
    from minimascope.env import resolve_device

    if samples < 1:
        raise MinimascopeError(f"samples must be at least 1, got {samples}")
    if policy not in similarity.POLICIES or layer_set not in similarity.LAYER_SETS:
        raise MinimascopeError(f"policy must be one of {', '.join(similarity.POLICIES)} and layer set one of "
                               f"{', '.join(similarity.LAYER_SETS)}")
    torch_device = resolve_device(device)
    path_a, path_b = Path(run_a).resolve(), Path(run_b).resolve()
    same_run = path_a == path_b
    label_a, label_b = path_a.name, path_b.name
    if not same_run and label_a == label_b:
        label_a, label_b = f"A {label_a}", f"B {label_b}"
    model_a, payload_a = models.load_trained(path_a)
    model_b, payload_b = (model_a, payload_a) if same_run else models.load_trained(path_b)
    cifar = data.load_cifar10(data_source)
    images = cifar.test_images
    if samples < len(images):
        images = images[data.balanced_subset(cifar.test_labels, samples, seed=0)]
    elif samples > len(images):
        raise MinimascopeError(f"samples: {samples} exceeds the {len(images)} test images")

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
    write_similarity(matrices, out_dir)
    return matrices
