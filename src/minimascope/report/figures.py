"""The report's figures: matplotlib on a bare Agg canvas (no pyplot, no global backend state),
written atomically. Curves and profiles are SVG (vector, small); heatmaps PNG, as the kernel pictures of
:mod:`minimascope.report.filter_figures`.

Each function takes plain arrays and writes one file; the page decides what goes in.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from minimascope.io import atomic_write_bytes

DPI = 100
# Brighter = more alike for both kinds, so similarity and distance maps read the same way.
SIMILARITY_CMAP = "magma"
DISTANCE_CMAP = "magma_r"


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path: Path) -> Path:
    """PNG or SVG by the suffix; SVG without a date and with fixed element ids, so an unchanged
    figure gives the same bytes (a rewritten report differs only where its data did)."""
    buffer = io.BytesIO()
    if path.suffix == ".svg":
        with rc_context({"svg.hashsalt": "minimascope"}):
            figure.savefig(buffer, format="svg", metadata={"Date": None})
    else:
        figure.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def spans_decades(values: np.ndarray) -> bool:
    """Whether positive values span more than a factor 10 (then a log axis reads better)."""
    positive = values[np.isfinite(values) & (values > 0)]
    return positive.size > 1 and float(positive.max() / positive.min()) > 10.0


def shared_legend(figure: Figure, handles: Mapping[str, object], *, fontsize: float, max_columns: int) -> None:
    """One legend below the panels in as many columns (at most max_columns) as fit the figure's
    width: constrained layout centres a wider legend and cuts it off at both edges."""
    renderer = figure.canvas.get_renderer()
    for columns in range(min(max_columns, len(handles)), 0, -1):
        legend = figure.legend(list(handles.values()), list(handles), loc="outside lower center",
                               ncols=columns, fontsize=fontsize, frameon=False)
        if columns == 1 or legend.get_window_extent(renderer).width <= figure.bbox.width:
            return
        legend.remove()


# ---------------------------------------------------------------- curves
@dataclass(frozen=True)
class Curve:
    """One arm's metric per epoch, one row per seed (NaN where a seed has no value, e.g. after it diverged)."""

    label: str
    colour: str
    epochs: np.ndarray  # (E,)
    per_seed: np.ndarray  # (seeds, E)


def seed_band(per_seed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of (seeds, points): mean, lowest and highest over the seeds that have a value
    there (NaN where none has: a curve simply stops, e.g. after every seed diverged)."""
    present = np.isfinite(per_seed)
    counts = present.sum(0)
    some = counts > 0
    mean = np.where(some, np.where(present, per_seed, 0.0).sum(0) / np.maximum(counts, 1), np.nan)
    low = np.where(some, np.where(present, per_seed, np.inf).min(0), np.nan)
    high = np.where(some, np.where(present, per_seed, -np.inf).max(0), np.nan)
    return mean, low, high


def _plot_curve(axes, curve: Curve) -> None:
    mean, low, high = seed_band(curve.per_seed)
    n = curve.per_seed.shape[0]
    axes.plot(curve.epochs, mean, color=curve.colour, lw=1.4, label=f"{curve.label} ({n} seed{'s' * (n != 1)})")
    if n > 1:
        axes.fill_between(curve.epochs, low, high, color=curve.colour, alpha=0.2, lw=0)


def curves_figure(panels: Sequence[tuple[str, Sequence[Curve]]], path: Path, *, columns: int = 3) -> Path:
    """One panel per (y label, curves): mean line over seeds and a band from the lowest to the
    highest seed; log y where the values span decades. Shared legend below."""
    rows = math.ceil(len(panels) / columns)
    figure = new_figure(4.2 * min(columns, len(panels)), 3.2 * rows + 0.9)
    axes_list = figure.subplots(rows, min(columns, len(panels)), squeeze=False).ravel()
    handles: dict[str, object] = {}
    for axes, (ylabel, curves) in zip(axes_list, panels):
        for curve in curves:
            _plot_curve(axes, curve)
        values = np.concatenate([c.per_seed.ravel() for c in curves]) if curves else np.array([])
        if spans_decades(values):
            axes.set_yscale("log")
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3, lw=0.5)
        for handle, label in zip(*axes.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    for axes in axes_list[len(panels):]:
        axes.set_visible(False)
    if handles:
        shared_legend(figure, handles, fontsize=8, max_columns=max(2, 2 * min(columns, len(panels))))
    return save(figure, path)


# ---------------------------------------------------------------- similarity
@dataclass(frozen=True)
class Heatmap:
    title: str
    values: np.ndarray  # (len(layers_a), len(layers_b))
    layers_a: tuple[str, ...]
    layers_b: tuple[str, ...]


def heatmap_grid(panels: Sequence[Heatmap], path: Path, *, value_range: tuple[float, float], kind: str,
                 colour_label: str, columns: int = 5) -> Path:
    """Every panel on one fixed colour range (so maps compare by colour), layer names along the
    left and bottom edges. The panels must share their layer lists: they are drawn as one image
    with gaps (one axes for all: 3× faster than an axes per panel, which the report's 30 s budget needs)."""
    if len({(p.layers_a, p.layers_b) for p in panels}) != 1:
        raise ValueError("heatmap_grid needs panels with the same layers; group them first")
    rows_per, cols_per = len(panels[0].layers_a), len(panels[0].layers_b)
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    gap_x, gap_y = 1, 3  # cells between panels; the vertical gap holds each panel's title
    height_cells, width_cells = rows * (rows_per + gap_y), columns * cols_per + (columns - 1) * gap_x
    mosaic = np.full((height_cells, width_cells), np.nan)
    tops, lefts = [], []
    for index, panel in enumerate(panels):
        row, column = divmod(index, columns)
        top, left = row * (rows_per + gap_y) + gap_y, column * (cols_per + gap_x)
        mosaic[top:top + rows_per, left:left + cols_per] = panel.values
        tops.append(top)
        lefts.append(left)
    cell = 2.1 / max(rows_per, cols_per)  # inches: a 21-layer panel is 2.1 in wide
    label_room, colour_room = 1.25, 1.2
    width, height = label_room + width_cells * cell + colour_room, label_room + height_cells * cell + 0.1
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((label_room / width, label_room / height, width_cells * cell / width,
                            height_cells * cell / height))
    cmap = colormaps[SIMILARITY_CMAP if kind == "similarity" else DISTANCE_CMAP].with_extremes(bad="white")
    image = axes.imshow(mosaic, vmin=value_range[0], vmax=value_range[1], cmap=cmap, interpolation="nearest",
                        aspect="auto")
    for panel, top, left in zip(panels, tops, lefts):
        axes.text(left + (cols_per - 1) / 2, top - 0.8, panel.title, ha="center", va="bottom", fontsize=7)
    axes.set_yticks([tops[r * columns] + i for r in range(rows) for i in range(rows_per)],
                    list(panels[0].layers_a) * rows, fontsize=5)
    axes.set_xticks([lefts[c] + j for c in range(columns) for j in range(cols_per)],
                    list(panels[0].layers_b) * columns, fontsize=5, rotation=90)
    axes.tick_params(length=1.5, pad=1)
    for spine in axes.spines.values():
        spine.set_visible(False)
    span = min(3.0, height - label_room - 0.3)
    colour_axes = figure.add_axes(((width - colour_room + 0.25) / width, (height - 0.3 - span) / height,
                                   0.15 / width, span / height))
    figure.colorbar(image, cax=colour_axes).set_label(colour_label, fontsize=8)
    return save(figure, path)


@dataclass(frozen=True)
class Profile:
    """Layer i of A against layer i of B along the depth, one row per seed."""

    label: str
    colour: str
    layers: tuple[str, ...]
    per_seed: np.ndarray  # (seeds, layers)


def depth_profile_figure(panels: Sequence[tuple[str, str, tuple[float, float], Sequence[Profile]]],
                         path: Path) -> Path:
    """One panel per (measure, kind, range, profiles): mean line over seeds with a lowest–highest
    seed band; distances drawn with the axis reversed, so up always means more alike."""
    figure = new_figure(4.6 * len(panels), 4.4)
    axes_list = figure.subplots(1, len(panels), squeeze=False).ravel()
    handles: dict[str, object] = {}
    for axes, (measure, kind, value_range, profiles) in zip(axes_list, panels):
        for profile in profiles:
            x = np.arange(len(profile.layers))
            mean = profile.per_seed.mean(0)
            n = profile.per_seed.shape[0]
            axes.plot(x, mean, color=profile.colour, lw=1.2, marker=".", ms=3, label=profile.label)
            if n > 1:
                axes.fill_between(x, profile.per_seed.min(0), profile.per_seed.max(0), color=profile.colour,
                                  alpha=0.15, lw=0)
        layers = max((p.layers for p in profiles), key=len, default=())
        axes.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
        axes.set_ylim(*(value_range[::-1] if kind == "distance" else value_range))
        direction = "lower" if kind == "distance" else "higher"
        axes.set_ylabel(f"{measure} of layer i with layer i ({direction} = more alike)",
                        fontsize=8)
        axes.set_title(measure, fontsize=9)
        axes.grid(alpha=0.3, lw=0.5)
        for handle, label in zip(*axes.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        shared_legend(figure, handles, fontsize=7, max_columns=4)
    return save(figure, path)


# ---------------------------------------------------------------- minima: sharpness, paths, weights, mistakes
@dataclass(frozen=True)
class SeedValues:
    """One arm's (or pair's) value of a scalar, one per seed."""

    label: str
    colour: str
    values: Sequence[float]


def seed_points_figure(panels: Sequence[tuple[str, Sequence[SeedValues]]], path: Path) -> Path:
    """One panel per scalar: each arm's seeds as dots and their mean as a bar; log y when the values span decades."""
    figure = new_figure(max(3.2, 0.5 * max(len(p) for _, p in panels) + 1.5) * len(panels), 4.0)
    for axes, (title, groups) in zip(figure.subplots(1, len(panels), squeeze=False).ravel(), panels):
        for x, group in enumerate(groups):
            values = np.asarray(group.values, dtype=float)
            axes.bar(x, values.mean(), color=group.colour, alpha=0.35, width=0.7)
            axes.plot(np.full(values.shape, x), values, "o", color=group.colour, ms=4)
        axes.set_xticks(range(len(groups)), [g.label for g in groups], rotation=45, ha="right", fontsize=7)
        every = np.concatenate([np.asarray(g.values, dtype=float) for g in groups]) if groups else np.array([])
        if spans_decades(every) and (every > 0).all():
            axes.set_yscale("log")
        axes.set_title(title, fontsize=9)
        axes.grid(axis="y", alpha=0.3, lw=0.5)
    return save(figure, path)


@dataclass(frozen=True)
class DensityLine:
    label: str
    colour: str
    grid: np.ndarray
    values: np.ndarray


def density_lines_figure(lines: Sequence[DensityLine], path: Path) -> Path:
    """Smoothed Hessian eigenvalue densities on one log-y axes, one line per arm and seed."""
    figure = new_figure(7.0, 4.0)
    axes = figure.add_subplot()
    labelled: set[str] = set()
    for line in lines:
        axes.semilogy(line.grid, line.values, color=line.colour, lw=1,
                      label=None if line.label in labelled else line.label)
        labelled.add(line.label)
    axes.set_xlabel("eigenvalue")
    axes.set_ylabel("density (Gaussian kernel, 1% of each spectrum's span)")
    axes.grid(alpha=0.3, lw=0.5)
    axes.legend(fontsize=7)
    return save(figure, path)


@dataclass(frozen=True)
class PathLines:
    """One pair's curves along alpha: variant → metric → (seeds, points)."""

    title: str
    alphas: np.ndarray
    variants: dict[str, dict[str, np.ndarray]]


def paths_figure(pairs: Sequence[PathLines], path: Path, metrics: Sequence[tuple[str, str]]) -> Path:
    """Rows = pairs, columns = metrics; one colour per batch-norm variant, mean over seeds, lowest–highest band."""
    figure = new_figure(4.2 * len(metrics), 3.2 * len(pairs))
    grid = figure.subplots(len(pairs), len(metrics), squeeze=False)
    for row, pair in zip(grid, pairs):
        for axes, (metric, label) in zip(row, metrics):
            for index, (variant, values) in enumerate(pair.variants.items()):
                mean, low, high = seed_band(values[metric])
                axes.plot(pair.alphas, mean, color=f"C{index}", marker=".", ms=3, lw=1.2, label=variant)
                if values[metric].shape[0] > 1:
                    axes.fill_between(pair.alphas, low, high, color=f"C{index}", alpha=0.15, lw=0)
            axes.set_title(f"{pair.title}: {label}", fontsize=8)
            axes.set_xlabel("alpha (0 = first arm, 1 = second)", fontsize=7)
            axes.grid(alpha=0.3, lw=0.5)
        row[0].legend(fontsize=6)
    return save(figure, path)


def layer_profiles_figure(panels: Sequence[tuple[str, Sequence[Profile]]], path: Path, *, columns: int = 3) -> Path:
    """One panel per per-layer measure along the depth: one line per arm (mean over seeds, band from
    the lowest to the highest seed); log y when a panel's values span decades."""
    rows = math.ceil(len(panels) / columns)
    figure = new_figure(4.6 * min(columns, len(panels)), 3.6 * rows)
    axes_list = figure.subplots(rows, min(columns, len(panels)), squeeze=False).ravel()
    handles: dict[str, object] = {}
    for axes, (title, profiles) in zip(axes_list, panels):
        for profile in profiles:
            mean, low, high = seed_band(profile.per_seed)
            x = np.arange(len(profile.layers))
            axes.plot(x, mean, color=profile.colour, lw=1.2, marker=".", ms=3, label=profile.label)
            if profile.per_seed.shape[0] > 1:
                axes.fill_between(x, low, high, color=profile.colour, alpha=0.15, lw=0)
        layers = max((p.layers for p in profiles), key=len, default=())
        axes.set_xticks(range(len(layers)), layers, rotation=90, fontsize=5)
        every = np.concatenate([p.per_seed.ravel() for p in profiles]) if profiles else np.array([])
        if spans_decades(every) and (every[np.isfinite(every)] > 0).all():
            axes.set_yscale("log")
        axes.set_title(title, fontsize=9)
        axes.grid(alpha=0.3, lw=0.5)
        for handle, label in zip(*axes.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    for axes in axes_list[len(panels):]:
        axes.set_axis_off()
    if handles:
        shared_legend(figure, handles, fontsize=7, max_columns=5)
    return save(figure, path)


@dataclass(frozen=True)
class ClassErrors:
    """One pair's per-class error rates (mean over seeds)."""

    title: str
    class_names: tuple[str, ...]
    label_a: str
    label_b: str
    rate_a: np.ndarray
    rate_b: np.ndarray


def class_errors_figure(pairs: Sequence[ClassErrors], path: Path) -> Path:
    """Per pair, each class's test error rate of the two arms side by side."""
    classes = max((len(pair.class_names) for pair in pairs), default=0)
    figure = new_figure(max(7.0, 0.12 * classes), 2.8 * len(pairs) + (0.8 if classes > 10 else 0.0))
    for axes, pair in zip(figure.subplots(len(pairs), 1, squeeze=False).ravel(), pairs):
        x = np.arange(len(pair.class_names))
        axes.bar(x - 0.2, pair.rate_a, width=0.4, label=pair.label_a, color="C0")
        axes.bar(x + 0.2, pair.rate_b, width=0.4, label=pair.label_b, color="C1")
        # names as written (a class folder may be named "$x$"), turned upright when there are many
        axes.set_xticks(x, pair.class_names, fontsize=7 if len(x) <= 20 else 5, rotation=0 if len(x) <= 10 else 90,
                        parse_math=False)
        axes.set_ylabel("test error rate", fontsize=8)
        axes.set_title(pair.title, fontsize=9)
        axes.legend(fontsize=7)
        axes.grid(axis="y", alpha=0.3, lw=0.5)
    return save(figure, path)
