"""Reports on disk. For now the similarity outputs: per measure a heatmap PNG, a CSV and a JSON.

Files are written atomically (temporary file + rename), so a killed run leaves no half-written
report. Figures are drawn on a bare Agg canvas, not pyplot, so no global backend state changes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from minimascope.runs import atomic_write_bytes, atomic_write_json, atomic_write_text
from minimascope.similarity import MEASURES, SimilarityMatrix


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
