"""A loss surface (:class:`Landscape`, with the networks marked on it) and the three kinds drawn around networks in
memory: along filter-normalised random directions around one, the plane through three, and a run's training path on
its principal plane (see :mod:`minimascope.minima.landscape`, which holds the file and the shells for runs on
disk). Each point is evaluated by :class:`minimascope.minima.landscape_points.PointEvaluator`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from minimascope.errors import MinimascopeError
from minimascope.minima.directions import floating_entries
from minimascope.minima.landscape_points import (
    DEFAULT_BATCH_SIZE,
    METRICS,
    PointEvaluator,
    PointValues,
    Progress,
    check_grid,
    evaluate_grid,
    grid_around,
)

LANDSCAPE_FORMAT = "minimascope-landscape-v1"
KINDS = ("random", "plane", "trajectory")

# ----------------------------------------------------------------------------- a surface


@dataclass(frozen=True)
class MarkedPoint:
    """A network marked on the surface, at its coordinates, with its own values (evaluated there exactly)."""

    label: str
    x: float
    y: float
    values: PointValues


@dataclass(frozen=True)
class Landscape:
    kind: str  # one of KINDS
    dims: int
    x: list[float]
    y: list[float]  # [0.0] for a line
    values: dict[str, list[list[float]] | None]  # METRICS → rows (y) of columns (x); test ones None unless asked
    images: int
    test_images: int | None
    seed: int
    bn: str
    directions: dict[str, Any]  # what the axes are: kind-specific description and numbers
    points: list[MarkedPoint]
    trajectory: list[dict[str, float]] | None = None  # {"epoch", "x", "y"} in epoch order
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def train_loss(self) -> list[list[float]]:
        return self.values["train_loss"]  # type: ignore[return-value]

    @property
    def dataset_title(self) -> str:
        """The data set's title (CIFAR-10 for a file written before surfaces of other data sets)."""
        return str(self.settings.get("dataset_title") or "CIFAR-10")

    def centre_loss(self) -> float:
        """The training loss at the first marked point (the network itself, or A of a plane)."""
        return self.points[0].values.train_loss

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LANDSCAPE_FORMAT,
            "kind": self.kind,
            "dims": self.dims,
            "x": self.x,
            "y": self.y,
            **{metric: None if rows is None else [[_json_number(v) for v in row] for row in rows]
               for metric, rows in self.values.items()},
            "images": self.images,
            "test_images": self.test_images,
            "seed": self.seed,
            "bn": self.bn,
            "bn_meaning": BN_MEANING[self.bn],
            "directions": self.directions,
            "points": [{"label": p.label, "x": p.x, "y": p.y,
                        **{m: _json_number(getattr(p.values, m)) for m in METRICS}} for p in self.points],
            "trajectory": self.trajectory,
            "non_finite": "a loss written as null was not finite (the outputs overflowed): read as +inf",
            "settings": self.settings,
        }


BN_MEANING = {
    "recompute": "batch-norm statistics recomputed at every point from the training images of the surface "
                 "(one train-mode pass over all of them); test images evaluated with those statistics",
    "eval": "batch norm in eval mode with running statistics",
}


def _json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value



# ----------------------------------------------------------------------------- the three kinds


def random_surface(model: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor] | None = None, *,
                   grid: int = 21, span: float = 1.0, dims: int = 2, seed: int = 0, bn: str = "recompute",
                   batch_size: int = DEFAULT_BATCH_SIZE, device: torch.device | str = "cpu", label: str = "network",
                   progress: Progress | None = None) -> Landscape:
    """Loss and accuracy of ``model`` on a line (``dims`` 1) or plane of ``grid`` points per axis in
    [−span, span] along filter-normalised random directions drawn from ``seed`` (see module doc)."""
    from minimascope.minima.directions import parameter_names, random_directions

    check_grid(grid, span, dims, bn)
    origin = floating_entries(model.state_dict())
    axes = random_directions(origin, parameter_names(model), seed, dims)
    evaluator = PointEvaluator(model, origin, axes, train, test, bn=bn, batch_size=batch_size, device=device)
    xs = torch.linspace(-span, span, grid, dtype=torch.float64).tolist()
    ys = xs if dims == 2 else [0.0]
    values = evaluate_grid(evaluator, xs, ys, dims, progress)
    centre = MarkedPoint(label, 0.0, 0.0, evaluator((0.0, 0.0)[:dims]))
    directions = {"kind": "random", "normalisation": "filter",
                  "meaning": "Gaussian directions drawn from the seed, each filter (slice along the first "
                             "dimension) of each conv and linear weight rescaled to that filter's norm in the "
                             "weights; biases, batch-norm parameters and buffers left out (zero)",
                  "units": "1 = every filter moved by its own norm", "span": span}
    return Landscape("random", dims, xs, ys, values, len(train[1]), _count(test), seed, bn, directions, [centre])


def plane_surface(models: Sequence[nn.Module], labels: Sequence[str], train: tuple[Tensor, Tensor],
                  test: tuple[Tensor, Tensor] | None = None, *, grid: int = 21, margin: float = 0.25,
                  bn: str = "recompute", batch_size: int = DEFAULT_BATCH_SIZE, device: torch.device | str = "cpu",
                  progress: Progress | None = None) -> Landscape:
    """The plane through three networks A, B, C of one architecture (see module doc), on a grid covering the
    three with ``margin`` of their extent on each side; each network marked with its own values."""
    from minimascope.minima.directions import parameter_names, plane_axes

    check_grid(grid, 1.0, 2, bn)
    if len(models) != 3 or len(labels) != 3:
        raise MinimascopeError("a plane is drawn through exactly three networks")
    states = [m.state_dict() for m in models]
    if any(s.keys() != states[0].keys() or any(s[k].shape != states[0][k].shape for k in s) for s in states[1:]):
        raise MinimascopeError("the three networks have different architectures")
    plane = plane_axes(*states, parameter_names(models[0]))
    evaluator = PointEvaluator(models[0], states[0], plane.axes, train, test, bn=bn, batch_size=batch_size,
                               device=device)
    xs, ys = grid_around(plane.points, grid, margin)
    values = evaluate_grid(evaluator, xs, ys, 2, progress)
    points = [MarkedPoint(label, x, y, evaluator((x, y))) for label, (x, y) in zip(labels, plane.points)]
    directions = {"kind": "plane", "origin": labels[0], "x_axis": f"{labels[1]} − {labels[0]}",
                  "y_axis": f"{labels[2]} − {labels[0]}, made orthogonal to the x axis (Gram–Schmidt)",
                  "meaning": "orthonormal axes over the parameters; buffers (running statistics) follow the same "
                             "combination of the three networks",
                  "units": "distance in parameter space", "margin": margin}
    return Landscape("plane", 2, xs, ys, values, len(train[1]), _count(test), 0, bn, directions, points)


def trajectory_surface(model: nn.Module, states: Sequence[Mapping[str, Tensor]], epochs: Sequence[int],
                       train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor] | None = None, *, grid: int = 21,
                       margin: float = 0.25, bn: str = "recompute", batch_size: int = DEFAULT_BATCH_SIZE,
                       device: torch.device | str = "cpu", label: str = "final",
                       progress: Progress | None = None) -> Landscape:
    """The surface on the top two principal directions of ``states`` (the saved weights at ``epochs``) minus
    ``model``'s (the final network, at the origin), covering the projected path with ``margin``."""
    from minimascope.minima.directions import parameter_names, trajectory_axes

    check_grid(grid, 1.0, 2, bn)
    final = model.state_dict()
    path = trajectory_axes(states, final, parameter_names(model))
    evaluator = PointEvaluator(model, final, path.axes, train, test, bn=bn, batch_size=batch_size, device=device)
    xs, ys = grid_around([*path.points, (0.0, 0.0)], grid, margin)
    values = evaluate_grid(evaluator, xs, ys, 2, progress)
    points = [MarkedPoint(label, 0.0, 0.0, evaluator((0.0, 0.0)))]
    directions = {"kind": "trajectory", "meaning": "top two principal directions (centred PCA) of the saved "
                  "weights minus the final ones, over the parameters; buffers stay the final network's",
                  "explained_variance": list(path.explained), "units": "distance in parameter space",
                  "margin": margin}
    steps = [{"epoch": int(e), "x": x, "y": y} for e, (x, y) in zip(epochs, path.points)]
    return Landscape("trajectory", 2, xs, ys, values, len(train[1]), _count(test), 0, bn, directions, points, steps)


def _count(test: tuple[Tensor, Tensor] | None) -> int | None:
    return None if test is None else len(test[1])
