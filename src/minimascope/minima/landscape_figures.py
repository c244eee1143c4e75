"""Figures of a loss surface (:mod:`minimascope.minima.landscape`): contours, a 3-D surface, a line; matplotlib on a
bare Agg canvas, written atomically. Losses are clipped at ``CLIP`` times the lowest loss on the grid (and at the
largest finite one), so that a surface climbing by orders of magnitude far out keeps its basin readable; the
caption says the clip."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from minimascope.io import atomic_write_bytes

if TYPE_CHECKING:
    from minimascope.minima.landscape import Landscape

CONTOUR_PNG = "landscape.png"
SURFACE_PNG = "landscape-3d.png"
CLIP = 5.0  # losses above CLIP × the lowest one (at least CLIP_FLOOR) are drawn at that level
CLIP_FLOOR = 1.0
LEVELS = 30
DPI = 110


def clipped(rows: Sequence[Sequence[float]]) -> tuple[np.ndarray, str]:
    """The losses as an array clipped for drawing (inf included), and what the clip was ("" for none)."""
    values = np.asarray(rows, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values), " (none finite)"
    level = min(float(finite.max()), max(CLIP * float(finite.min()), CLIP_FLOOR))
    shown = np.minimum(np.nan_to_num(values, nan=level, posinf=level), level)
    return shown, f" (clipped at {level:.3g})" if bool((~np.isfinite(values) | (values > level)).any()) else ""


def _axis_labels(result: Landscape) -> tuple[str, str]:
    if result.kind == "plane":
        return (f"x: towards {result.points[1].label} (distance)", f"y: towards {result.points[2].label} (distance)")
    if result.kind == "trajectory":
        share = result.directions.get("explained_variance", [math.nan, math.nan])
        return f"PC 1 ({share[0]:.0%} of the variance)", f"PC 2 ({share[1]:.0%})"
    return "direction 1 (filter-normalised)", "direction 2 (filter-normalised)"


def draw_contours(axes, result: Landscape, title: str) -> None:  # noqa: ANN001 (a matplotlib Axes)
    """Filled contours of the training loss with its marked networks and trajectory, or the line of a 1-D one."""
    x = np.asarray(result.x)
    if result.dims == 1:
        loss, clip = clipped(result.train_loss)
        axes.plot(x, loss[0], label="train loss")
        if result.values["test_loss"] is not None:
            axes.plot(x, clipped(result.values["test_loss"])[0][0], "--", label="test loss")
        axes.set_xlabel(_axis_labels(result)[0])
        axes.set_ylabel(f"cross-entropy{clip}")
        axes.legend(fontsize=7)
        axes.set_title(title, fontsize=9)
        return
    loss, clip = clipped(result.train_loss)
    filled = axes.contourf(x, np.asarray(result.y), loss, levels=LEVELS, cmap="viridis")
    axes.contour(x, np.asarray(result.y), loss, levels=10, colors="white", linewidths=0.4, alpha=0.6)
    axes.figure.colorbar(filled, ax=axes, label=f"train loss{clip}")
    if result.trajectory:
        axes.plot([s["x"] for s in result.trajectory], [s["y"] for s in result.trajectory], "-o", color="red",
                  markersize=3, linewidth=1, label="trajectory")
        first = result.trajectory[0]
        axes.annotate(f"epoch {first['epoch']}", (first["x"], first["y"]), fontsize=7, color="red")
    for point in result.points:
        axes.plot(point.x, point.y, "*", color="white", markeredgecolor="black", markersize=11)
        axes.annotate(f"{point.label}\n{point.values.train_loss:.3g}", (point.x, point.y), fontsize=7,
                      textcoords="offset points", xytext=(5, 5), color="white")
    x_label, y_label = _axis_labels(result)
    axes.set_xlabel(x_label, fontsize=8)
    axes.set_ylabel(y_label, fontsize=8)
    if result.kind != "random":
        axes.set_aspect("equal")
    axes.set_title(title, fontsize=9)


def _save(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def contour_figure(panels: Sequence[tuple[str, Landscape]], path: Path, *, columns: int = 2) -> Path:
    """One panel of :func:`draw_contours` per (title, surface), ``columns`` to a row."""
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5.2 * columns, 4.4 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    for index, (title, result) in enumerate(panels):
        draw_contours(figure.add_subplot(rows, columns, index + 1), result, title)
    return _save(figure, path)


def surface_figure(result: Landscape, path: Path, title: str) -> Path:
    """The training loss as a 3-D surface (clipped as the contours are)."""
    figure = Figure(figsize=(6, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(projection="3d")
    grid_x, grid_y = np.meshgrid(np.asarray(result.x), np.asarray(result.y))
    loss, clip = clipped(result.train_loss)
    axes.plot_surface(grid_x, grid_y, loss, cmap="viridis", linewidth=0, antialiased=True)
    x_label, y_label = _axis_labels(result)
    axes.set_xlabel(x_label, fontsize=7)
    axes.set_ylabel(y_label, fontsize=7)
    axes.set_zlabel(f"train loss{clip}", fontsize=7)
    axes.set_title(title, fontsize=9)
    return _save(figure, path)


def _title(result: Landscape) -> str:
    names = ", ".join(p.label for p in result.points)
    return f"{result.kind} surface of {names}: {result.images} training images, batch norm {result.bn}"


def write_figures(result: Landscape, out: Path) -> list[Path]:
    """``landscape.png`` (contours, or the line of a 1-D surface) and, for a plane, ``landscape-3d.png``."""
    paths = [contour_figure([(_title(result), result)], out / CONTOUR_PNG)]
    if result.dims == 2:
        paths.append(surface_figure(result, out / SURFACE_PNG, _title(result)))
    return paths
