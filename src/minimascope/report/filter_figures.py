"""The report's pictures of conv kernels (the paper's Figs 8–9): an image-reading layer's kernels as colour or gray
patches, any other layer's as a diverging map, one panel per arm on a common scale, laid out on a fixed grid."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from minimascope.report import figures

FILTER_CMAP = "RdBu_r"


def kernel_mosaic(weight: np.ndarray, max_out: int, max_in: int) -> np.ndarray:
    """Kernels (out, in, kh, kw) → one 2-D array: row block = output channel, column block =
    input channel, one NaN pixel between kernels (drawn as background)."""
    weight = weight[:max_out, :max_in]
    out, inp, kh, kw = weight.shape
    mosaic = np.full((out * (kh + 1) - 1, inp * (kw + 1) - 1), np.nan)
    for o in range(out):
        for i in range(inp):
            mosaic[o * (kh + 1):o * (kh + 1) + kh, i * (kw + 1):i * (kw + 1) + kw] = weight[o, i]
    return mosaic


def colour_mosaic(weight: np.ndarray, scale: float, background: float = 1.0) -> np.ndarray:
    """3-channel kernels (out, 3, kh, kw) → RGB patches in a square-ish grid, 0 weight = grey,
    ±``scale`` = full colour (values beyond are clipped); 1-channel kernels (out, 1, kh, kw) → gray patches,
    ±``scale`` = white or black."""
    out, _, kh, kw = weight.shape
    columns = math.ceil(math.sqrt(out))
    rows = math.ceil(out / columns)
    mosaic = np.full((rows * (kh + 1) - 1, columns * (kw + 1) - 1, 3), background)
    patches = np.clip(0.5 + 0.5 * weight.transpose(0, 2, 3, 1) / scale, 0.0, 1.0)
    for o in range(out):
        r, c = divmod(o, columns)
        mosaic[r * (kh + 1):r * (kh + 1) + kh, c * (kw + 1):c * (kw + 1) + kw] = patches[o]
    return mosaic


def common_scale(weights: Sequence[np.ndarray], quantile: float = 0.99) -> float:
    """One colour scale for every arm: the ``quantile`` of |w| over all shown kernels (so one outlier does not
    wash out the rest)."""
    pooled = np.concatenate([np.abs(w).ravel() for w in weights])
    scale = float(np.quantile(pooled, quantile)) if pooled.size else 1.0
    return scale if scale > 0 else 1.0


@dataclass(frozen=True)
class Grid:
    """Where the panels of a fixed-layout figure go, in inches (constrained layout would measure every artist on
    each pass, for panels whose sizes are known in advance)."""

    count: int
    columns: int
    panel: tuple[float, float]  # width, height of one panel
    gap: tuple[float, float]  # between panels: horizontal, vertical (the vertical one holds the title)
    margins: tuple[float, float, float, float]  # left, right, bottom, top

    @property
    def rows(self) -> int:
        return math.ceil(self.count / self.columns)

    @property
    def size(self) -> tuple[float, float]:
        left, right, bottom, top = self.margins
        return (left + self.columns * self.panel[0] + (self.columns - 1) * self.gap[0] + right,
                bottom + self.rows * self.panel[1] + self.rows * self.gap[1] + top)

    def add_axes(self, figure: Figure, index: int):
        width, height = self.size
        row, column = divmod(index, self.columns)
        x = self.margins[0] + column * (self.panel[0] + self.gap[0])
        y = height - self.margins[3] - (row + 1) * (self.panel[1] + self.gap[1])
        return figure.add_axes((x / width, y / height, self.panel[0] / width, self.panel[1] / height))

    def colorbar_axes(self, figure: Figure):
        width, height = self.size
        _, right, bottom, top = self.margins
        span = min(3.0, height - bottom - top)
        return figure.add_axes(((width - right + 0.25) / width, (height - top - span - self.gap[1]) / height,
                                0.15 / width, span / height))


def filters_figure(kernels: Mapping[str, np.ndarray], path: Path, *, scale: float, max_out: int = 32,
                   max_in: int = 32, columns: int = 5) -> Path:
    """One panel per arm of a conv layer's kernels (out, in, kh, kw) on the common ``scale``: layers that read an
    image (3 or 1 input channels) as RGB or gray patches, others as a diverging map of the first ``max_out`` ×
    ``max_in`` channels."""
    names = list(kernels)
    rgb = {w.shape[1] for w in kernels.values()} in ({3}, {1})  # patches, no colour bar
    # The right margin holds the colour bar, its tick labels and its label.
    grid = Grid(len(names), min(columns, len(names)), (2.2, 2.2), (0.2, 0.3), (0.1, 0.1 if rgb else 1.3, 0.1, 0.05))
    figure = Figure(figsize=grid.size)
    FigureCanvasAgg(figure)
    cmap: Colormap = colormaps[FILTER_CMAP].with_extremes(bad="white")
    image = None
    for index, name in enumerate(names):
        axes = grid.add_axes(figure, index)
        axes.set_axis_off()
        if rgb:
            axes.imshow(colour_mosaic(kernels[name], scale), interpolation="nearest")
        else:
            image = axes.imshow(kernel_mosaic(kernels[name], max_out, max_in), cmap=cmap, vmin=-scale, vmax=scale,
                                interpolation="nearest")
        axes.set_title(name, fontsize=8, pad=3)
    if image is not None:
        figure.colorbar(image, cax=grid.colorbar_axes(figure)).set_label("weight", fontsize=8)
    return figures.save(figure, path)
