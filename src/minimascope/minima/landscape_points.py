"""Evaluating the points of a loss surface (:mod:`minimascope.minima.landscape`) in place: one model, its weights
rewritten per point, the grid walked in rows.

Batch norm, stated in the result's ``bn``:

* ``recompute`` (default) — at every point the statistics are those of the point's own network on the
  training images of the surface: one train-mode forward pass over all of them at once (batch norm's running
  statistics are not used; no other layer is put in train mode). That same pass gives the training loss, so
  a point costs one forward pass, and the loss is exactly "the network normalised by the statistics of these
  images". Test images, when asked, are evaluated in eval mode with exactly those statistics (mean and
  biased variance, as the train-mode pass normalised with).
* ``eval`` — batch norm with running statistics (the origin's; for a plane they move with the plane, so each
  network's own point is exactly that network).

A point is loaded into one model in place (no copy of the network per point); the forward passes run without
gradients, in channels-last layout. The conv and linear layers run on forms computed once
(:mod:`minimascope.minima.inference`): in eval mode batch norm folded into the layer before it, convolutions of
maps smaller than their kernel (resnet18's last stages on 32×32 images) as the dense products they stand for, and
the outputs of the layers applied to the images themselves (resnet18's first conv, linear in its weights) kept for
the origin and each axis; a point combines them, one pass per point along a row. The marked points (the network,
the three networks of a plane) are evaluated exactly, not read off the grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimascope.errors import MinimascopeError
from minimascope.fast_layers import fast_forward
from minimascope.minima.directions import Direction, floating_entries
from minimascope.minima.inference import Combination, LayerForms

BN_MODES = ("recompute", "eval")
METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
DEFAULT_BATCH_SIZE = 1000  # eval-mode passes only: a recompute pass takes all training images at once
Progress = Callable[[str, int, int], None]


def check_grid(grid: int, span: float, dims: int, bn: str) -> None:
    """One line for each option a surface cannot be drawn with (before anything is loaded)."""
    if bn not in BN_MODES:
        raise MinimascopeError(f"--bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
    if grid < 3 or grid % 2 == 0:
        raise MinimascopeError(f"--grid must be an odd number of at least 3 (the network itself is the middle "
                               f"point), got {grid}")
    if not (math.isfinite(span) and span > 0):
        raise MinimascopeError(f"--span must be a positive number, got {span}")
    if dims not in (1, 2):
        raise MinimascopeError(f"--dims must be 1 (a line) or 2 (a plane), got {dims}")


def grid_around(points: Sequence[tuple[float, float]], grid: int, margin: float) -> tuple[list[float], list[float]]:
    """``grid`` evenly spaced values per axis covering ``points`` with ``margin`` of their extent on each side
    (the extent of the larger axis where one axis is flat)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    extent = max(max(xs) - min(xs), max(ys) - min(ys))
    axes = []
    for values in (xs, ys):
        low, high = min(values), max(values)
        pad = margin * max(high - low, extent)
        axes.append(torch.linspace(low - pad, high + pad, grid, dtype=torch.float64).tolist())
    return axes[0], axes[1]


# ----------------------------------------------------------------------------- evaluating points in place


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@dataclass(frozen=True)
class PointValues:
    train_loss: float
    train_accuracy: float
    test_loss: float | None = None
    test_accuracy: float | None = None


class PointEvaluator:
    """Loads ``origin + Σ c_i · axis_i`` into ``model`` in place and evaluates it (see module doc).

    ``origin`` and ``axes`` are state-dict mappings (any float dtype: they are kept in the model's); only the
    entries an axis moves are rewritten per point, and the origin itself (all coordinates 0) is loaded exactly.
    Images are normalised float tensors. The model becomes the evaluator's: its weights are overwritten and the
    forward of its layers on the images replaced (pass a copy to keep it).
    """

    def __init__(self, model: nn.Module, origin: Mapping[str, Tensor], axes: Sequence[Direction],
                 train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor] | None = None, *, bn: str = "recompute",
                 batch_size: int = DEFAULT_BATCH_SIZE, device: torch.device | str = "cpu") -> None:
        if bn not in BN_MODES:
            raise MinimascopeError(f"unknown batch-norm mode {bn!r}; choose from {', '.join(BN_MODES)}")
        if batch_size < 1:
            raise MinimascopeError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.layout = (torch.channels_last if any(isinstance(m, nn.Conv2d) for m in model.modules())
                       else torch.contiguous_format)
        self.model = model.to(self.device, memory_format=self.layout).eval()
        self.norms = batch_norms(self.model) if bn == "recompute" else []
        self.bn, self.batch_size = bn, batch_size
        self.dtype = next(self.model.parameters()).dtype
        if self.norms and len(train[1]) < 2:
            raise MinimascopeError("recomputing batch-norm statistics needs at least 2 training images")
        self.train = self._inputs(*train)
        self.test = None if test is None else self._inputs(*test)
        targets = self.model.state_dict(keep_vars=True)
        origin = floating_entries(origin)
        with torch.no_grad():
            for key, value in origin.items():
                targets[key].copy_(value)
        self.forms = LayerForms(self.model, origin, axes, self.train[0][:2], fold=bn == "eval")
        # The rest (batch norm's entries where not folded, other layers) kept in each entry's own dtype and layout.
        self.moving = [Combination(torch.empty_like(targets[key]).copy_(value),
                                   [torch.empty_like(targets[key]).copy_(axis[key]) for axis in axes], targets[key])
                       for key, value in origin.items()
                       if key not in self.forms.replaced and any(bool(axis[key].any()) for axis in axes)]
        # The batches of every forward pass, cut once: (split, start) → (images, labels); all training images
        # in one when recomputing. The layers on the images know a batch by these very tensors.
        self.batches: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
        for split, (images, labels) in (("train", self.train), *((("test", self.test),) if self.test else ())):
            size = len(labels) if split == "train" and self.norms else self.batch_size
            for start in range(0, len(labels), size):
                self.batches[(split, start)] = images[start:start + size], labels[start:start + size]
                self.forms.precompute(self.batches[(split, start)][0])

    def _inputs(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        images = images.to(self.device, self.dtype)
        if images.ndim == 4:
            images = images.contiguous(memory_format=self.layout)
        return images, labels.to(self.device)

    def load(self, coordinates: Sequence[float]) -> None:
        self.forms.load(coordinates)
        with torch.no_grad():
            for entry in self.moving:
                entry(coordinates)

    def __call__(self, coordinates: Sequence[float]) -> PointValues:
        self.load(coordinates)
        with torch.no_grad(), fast_forward(double_backward=False):  # for layers without forms (called twice)
            if self.norms:
                train_loss, train_accuracy = self._recompute_pass()
            else:
                train_loss, train_accuracy = self._eval_pass("train")
            if self.test is None:
                return PointValues(train_loss, train_accuracy)
            return PointValues(train_loss, train_accuracy, *self._eval_pass("test"))

    def _recompute_pass(self) -> tuple[float, float]:
        """The training loss with batch norm normalising by the statistics of all training images, which are
        left as running statistics (mean, biased variance) for the test pass."""
        sizes: dict[nn.Module, int] = {}

        def count(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            sizes[module] = inputs[0].numel() // inputs[0].shape[1]

        momenta = [norm.momentum for norm in self.norms]
        handles = [norm.register_forward_pre_hook(count) for norm in self.norms]
        try:
            for norm in self.norms:
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average: of one batch, its statistics
                norm.train()
            images, labels = self.batches[("train", 0)]
            result = _loss_and_correct(self.model(images), labels)
        finally:
            for handle in handles:
                handle.remove()
            for norm, momentum in zip(self.norms, momenta):
                norm.momentum = momentum
                norm.eval()
        for norm in self.norms:  # torch stores the unbiased variance; the pass normalised by the biased one
            if norm.running_var is not None and sizes.get(norm, 0) > 1:
                norm.running_var.mul_((sizes[norm] - 1) / sizes[norm])
        return result[0] / len(labels), result[1] / len(labels)

    def _eval_pass(self, split: str) -> tuple[float, float]:
        loss = correct = count = 0.0
        for key in (key for key in self.batches if key[0] == split):
            images, labels = self.batches[key]
            batch_loss, batch_correct = _loss_and_correct(self.model(images), labels)
            loss, correct, count = loss + batch_loss, correct + batch_correct, count + len(labels)
        return loss / count, correct / count


def _loss_and_correct(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    """Summed cross-entropy (in float64) and number of correct predictions."""
    loss = F.cross_entropy(logits, labels, reduction="none").double().sum().item()
    return loss, (logits.argmax(1) == labels).sum().item()


def evaluate_grid(evaluator: PointEvaluator, xs: Sequence[float], ys: Sequence[float], dims: int,
                  progress: Progress | None = None) -> dict[str, list[list[float]] | None]:
    """Every point of the grid, rows = y and columns = x (one row at y = 0 for a line)."""
    rows: dict[str, list[list[float]]] = {metric: [] for metric in METRICS}
    total, done = len(xs) * len(ys), 0
    for y in ys:
        found = []
        for x in xs:
            found.append(evaluator((x, y) if dims == 2 else (x,)))
            done += 1
            if progress is not None:
                progress("loss surface", done, total)
        for metric in METRICS:
            rows[metric].append([getattr(values, metric) for values in found])
    with_test = evaluator.test is not None
    return {metric: rows[metric] if with_test or metric.startswith("train") else None for metric in METRICS}
