"""Sharpness of a minimum: top Hessian eigenvalues, Hessian trace and eigenvalue density of the loss.

The loss is the mean cross-entropy over the given images at the network's weights, with the network in
eval mode: batch norm uses its running statistics. That is the loss at the minimum as deployed, and it is
a fixed function of the weights alone. In train mode each image's output would depend on the other images
of its batch, so the "Hessian" would change with the batch composition and size; in eval mode it is well
defined, and the loss over all images is exactly the size-weighted mean of per-batch losses, so the
Hessian-vector product over the images is the sum of per-batch products weighted by batch size / n
(memory stays that of one batch, whatever n).

Everything is matrix-free, through Hessian-vector products by double backward
(:func:`minimascope.curvature.hessian_vector_product`):

* :func:`top_eigenvalues` — Lanczos with full reorthogonalisation
  (:func:`minimascope.minima.lanczos.lanczos_top_eigenvalues`).
* :func:`hessian_trace` — Hutchinson's estimator with Rademacher probes, run until its standard error is
  below ``rel_error`` of the estimate (:func:`minimascope.curvature.hutchinson_trace`).
* :func:`eigenvalue_density` — stochastic Lanczos quadrature (:func:`minimascope.minima.lanczos.slq_density`),
  stored with its smoothed curve (:func:`density_curve`), which ``density.png`` and the report both draw.

Sharpness a rescaling cannot fake: a conv whose output feeds batch norm can be scaled by c > 0 without
changing the function, and its Hessian block scales by 1/c², so raw λ1 and trace partly compare weight
scales. Beside them, :func:`adaptive_sharpness` gives λ1 and the trace of D H D with D = diag|w| (the
Hessian in |w|-scaled coordinates, as in Andriushchenko et al. 2023's adaptive sharpness and Kwon et al.
2021): a block scaled by c gets D → cD and H → H/c², cross blocks H/c, so D H D is exactly unchanged. Its
products are D·H·(D·v), one Hessian-vector product each. The loss and gradient norm at the evaluated
weights are stored too: far from 0 they say the network is not at a minimum.

``sharpness.json`` (format ``minimascope-sharpness-v3``) holds all of it; :func:`read_sharpness` reads it
(an older file is one error line asking for a re-run).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from minimascope.curvature import TraceEstimate, hessian_vector_product, hutchinson_trace, rademacher_like
from minimascope.errors import MinimascopeError
from minimascope.fast_layers import fast_forward
from minimascope.io import Fields, atomic_write_bytes, atomic_write_json, older_format, read_result_fields
from minimascope.layers import evaluating
from minimascope.minima.lanczos import TopEigenvalues, lanczos_top_eigenvalues, slq_density, smooth_density

SHARPNESS_FORMAT = "minimascope-sharpness-v3"
OLDER_FORMATS = ("minimascope-sharpness-v1", "minimascope-sharpness-v2")  # without the |w|-scaled sharpness
SHARPNESS_JSON = "sharpness.json"
DENSITY_PNG = "density.png"
SHARPNESS_FILES = (SHARPNESS_JSON, DENSITY_PNG)  # what an output folder of sharpness holds
DEFAULT_BATCH_SIZE = 1000  # 1,000 CIFAR-sized images are one batch: its graph is built once and reused by every product
# The smoothed density: POINTS points over the nodes' span plus MARGIN of it on each side, a Gaussian kernel
# of WIDTH times the span (so the margin is 5 kernel widths: each tail left out holds < 3e-7 of the mass),
# values floored at FLOOR so that a log axis can show them.
DENSITY_POINTS, DENSITY_MARGIN, DENSITY_WIDTH, DENSITY_FLOOR = 400, 0.05, 0.01, 1e-12


# ----------------------------------------------------------------------------- the loss Hessian of a network


class LossHessian:
    """v -> H v for the mean cross-entropy of ``model`` (eval mode) over ``images``, on flat vectors.

    H is with respect to the parameters that require grad, flattened in ``model.parameters()`` order.
    Images go to the device one batch at a time. With one batch (``batch_size >= n``) its gradient graph is
    built once and reused by every product (a double backward each); otherwise every product runs forward,
    backward and double backward per batch, so memory stays that of one batch.
    """

    def __init__(self, model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int,
                 device: torch.device) -> None:
        if images.ndim < 2 or len(images) != len(labels) or len(labels) == 0:
            raise MinimascopeError(f"need images (n, ...) and n labels, n >= 1; got {tuple(images.shape)} "
                                   f"images and {tuple(labels.shape)} labels")
        if batch_size < 1:
            raise MinimascopeError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.images, self.labels, self.device = model, images, labels, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise MinimascopeError("the model has no parameters that require grad")
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self.dtype = self.params[0].dtype
        n = len(labels)
        self.batches = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
        self.products = 0
        self._kept_grads: tuple[Tensor, ...] | None = None

    def template(self) -> Tensor:
        """A flat vector of the parameters' size, dtype and device (to shape probes)."""
        return torch.empty(self.dim, dtype=self.dtype, device=self.device)

    def _gradients(self, start: int, stop: int) -> tuple[Tensor, ...]:
        x = self.images[start:stop].to(self.device, self.dtype)
        y = self.labels[start:stop].to(self.device)
        with torch.enable_grad(), evaluating(self.model):
            with fast_forward(double_backward=True):  # cheaper convolution double backward, same numbers
                loss = F.cross_entropy(self.model(x), y)
            return torch.autograd.grad(loss, self.params, create_graph=True)

    def __call__(self, vector: Tensor) -> Tensor:
        self.products += 1
        vectors = [c.view_as(p) for c, p in zip(vector.reshape(-1).split(self.sizes), self.params)]
        if len(self.batches) == 1:
            if self._kept_grads is None:
                self._kept_grads = self._gradients(*self.batches[0])
            return _flat(hessian_vector_product(self._kept_grads, self.params, vectors, retain_graph=True))
        n = self.batches[-1][1]
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for start, stop in self.batches:
            products = hessian_vector_product(self._gradients(start, stop), self.params, vectors)
            total.add_(_flat(products), alpha=(stop - start) / n)
        return total


    def loss_and_gradient_norm(self) -> tuple[float, float]:
        """The mean cross-entropy over the images and the norm of its gradient, at the current weights."""
        n = self.batches[-1][1]
        loss, gradient = 0.0, torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        for start, stop in self.batches:
            x = self.images[start:stop].to(self.device, self.dtype)
            with torch.enable_grad(), evaluating(self.model):
                batch_loss = F.cross_entropy(self.model(x), self.labels[start:stop].to(self.device))
                grads = torch.autograd.grad(batch_loss, self.params)
            loss += batch_loss.item() * (stop - start) / n
            gradient.add_(_flat(list(grads)).double(), alpha=(stop - start) / n)
        return loss, gradient.norm().item()


class ScaledHessian:
    """v -> D H D v with D = diag|w| (flat, ``model.parameters()`` order): the Hessian in |w|-scaled
    coordinates, unchanged when a conv feeding batch norm is rescaled (see module doc)."""

    def __init__(self, hessian: LossHessian) -> None:
        self.hessian = hessian
        self.scale = _flat([p.detach().abs() for p in hessian.params]).to(hessian.device, hessian.dtype)

    def template(self) -> Tensor:
        return self.hessian.template()

    def __call__(self, vector: Tensor) -> Tensor:
        return self.scale * self.hessian(self.scale * vector.reshape(-1))


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _operator(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int,
              device: str | torch.device | None) -> LossHessian:
    """The Hessian operator on ``device`` (default: the model's); a model elsewhere is copied there,
    never moved."""
    model_device = next(model.parameters()).device
    device = model_device if device is None else torch.device(device)
    if device.type != model_device.type or device.index not in (None, model_device.index):
        model = copy.deepcopy(model).to(device)
    else:
        device = model_device
    return LossHessian(model, images, labels, batch_size=batch_size, device=device)


def _probe_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def top_eigenvalues(model: nn.Module, images: Tensor, labels: Tensor, k: int = 3, *, tol: float = 1e-3,
                    max_iter: int = 100, seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                    device: str | torch.device | None = None) -> TopEigenvalues:
    """The k largest eigenvalues of the loss Hessian (see module doc), by Lanczos from a seeded
    Rademacher start; each within ``tol`` relative residual unless ``converged`` is False."""
    hessian = _operator(model, images, labels, batch_size, device)
    start = rademacher_like(hessian.template(), _probe_generator(seed))
    return lanczos_top_eigenvalues(hessian, start, k, tol=tol, max_iter=max_iter)


def hessian_trace(model: nn.Module, images: Tensor, labels: Tensor, *, rel_error: float = 1e-2,
                  min_probes: int = 10, max_probes: int = 1000, seed: int = 0,
                  batch_size: int = DEFAULT_BATCH_SIZE, device: str | torch.device | None = None) -> TraceEstimate:
    """tr(H) of the loss Hessian (see module doc) by Hutchinson, to a standard error below ``rel_error``
    of the estimate (``converged`` False when ``max_probes`` came first)."""
    hessian = _operator(model, images, labels, batch_size, device)
    return hutchinson_trace(hessian, hessian.template(), rel_error=rel_error, min_probes=min_probes,
                            max_probes=max_probes, generator=_probe_generator(seed))


def density_curve(nodes: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, float]:
    """(grid, density, sigma): :func:`smooth_density` of the SLQ nodes and weights with a kernel of
    ``DENSITY_WIDTH`` times their span, on ``DENSITY_POINTS`` points reaching ``DENSITY_MARGIN`` of the span
    beyond the extreme nodes, floored at ``DENSITY_FLOOR``. Over the grid it integrates to 1 within 6e-7 (the
    tails beyond five kernel widths) plus the floor times the grid's width."""
    nodes, weights = nodes.double(), weights.double()
    low, high = nodes.min().item(), nodes.max().item()
    # all nodes equal: a span at the rounding scale of their magnitude, so the grid's points stay distinct
    span = max(high - low, 1e-12 * max(abs(low), abs(high), 1.0))
    sigma = DENSITY_WIDTH * span
    grid = torch.linspace(low - DENSITY_MARGIN * span, high + DENSITY_MARGIN * span, DENSITY_POINTS,
                          dtype=torch.float64)
    return grid, smooth_density(nodes, weights, grid, sigma).clamp_min(DENSITY_FLOOR), sigma


@dataclass(frozen=True)
class Density:
    """SLQ nodes (Ritz values) and weights (summing to 1 over all probes), and the smoothed curve of
    :func:`density_curve` (``grid``, ``smoothed``, kernel width ``sigma``) computed from them once."""

    nodes: list[float]
    weights: list[float]
    steps: int
    probes: int
    grid: list[float]
    smoothed: list[float]
    sigma: float

    @classmethod
    def of_quadrature(cls, nodes: Tensor, weights: Tensor, steps: int, probes: int) -> Density:
        grid, smoothed, sigma = density_curve(nodes, weights)
        return cls(nodes.tolist(), weights.tolist(), steps, probes, grid.tolist(), smoothed.tolist(), sigma)


def eigenvalue_density(model: nn.Module, images: Tensor, labels: Tensor, *, steps: int = 64, probes: int = 1,
                       seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                       device: str | torch.device | None = None) -> Density:
    """Eigenvalue density of the loss Hessian by stochastic Lanczos quadrature: ``probes`` seeded
    Rademacher starts of ``steps`` Lanczos steps each (``steps * probes`` products; the Lanczos basis
    holds ``steps`` parameter-sized vectors)."""
    hessian = _operator(model, images, labels, batch_size, device)
    generator = _probe_generator(seed)
    starts = [rademacher_like(hessian.template(), generator) for _ in range(probes)]
    nodes, weights = slq_density(hessian, starts, steps)
    return Density.of_quadrature(nodes, weights, steps, probes)


@dataclass(frozen=True)
class AdaptiveSharpness:
    """λ1 (top-k) and trace of D H D, D = diag|w|: invariant to rescaling a conv that feeds batch norm."""

    eigenvalues: TopEigenvalues
    trace: TraceEstimate


def adaptive_sharpness(model: nn.Module, images: Tensor, labels: Tensor, k: int = 3, *, tol: float = 1e-3,
                       max_iter: int = 100, rel_error: float = 1e-2, min_probes: int = 10, max_probes: int = 1000,
                       seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                       device: str | torch.device | None = None) -> AdaptiveSharpness:
    """Top-k eigenvalues (Lanczos) and trace (Hutchinson) of the |w|-scaled Hessian D H D (see module doc),
    with the same starts and stopping rules as :func:`top_eigenvalues` and :func:`hessian_trace`."""
    scaled = ScaledHessian(_operator(model, images, labels, batch_size, device))
    start = rademacher_like(scaled.template(), _probe_generator(seed))
    eigenvalues = lanczos_top_eigenvalues(scaled, start, k, tol=tol, max_iter=max_iter)
    trace = hutchinson_trace(scaled, scaled.template(), rel_error=rel_error, min_probes=min_probes,
                             max_probes=max_probes, generator=_probe_generator(seed))
    return AdaptiveSharpness(eigenvalues, trace)


# ----------------------------------------------------------------------------- all of it, on disk


@dataclass(frozen=True)
class Sharpness:
    eigenvalues: TopEigenvalues
    trace: TraceEstimate
    density: Density
    n_images: int
    parameters: int
    seed: int
    settings: dict[str, Any]
    adaptive: AdaptiveSharpness | None = None  # None when not computed (``adaptive=False``)
    loss: float | None = None  # mean cross-entropy on the images at the evaluated weights (eval mode)
    gradient_norm: float | None = None  # ‖∇ loss‖ there: far from 0, the weights are not at a minimum

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SHARPNESS_FORMAT,
            "eigenvalues": self.eigenvalues.values,
            "eigenvalue_iterations": self.eigenvalues.iterations,
            "eigenvalues_converged": self.eigenvalues.converged,
            "trace": self.trace.value,
            "trace_stderr": self.trace.stderr,
            "probes": self.trace.probes,
            "trace_converged": self.trace.converged,
            "density": {"nodes": self.density.nodes, "weights": self.density.weights,
                        "steps": self.density.steps, "probes": self.density.probes, "sigma": self.density.sigma,
                        "grid": self.density.grid, "smoothed": self.density.smoothed},
            "n_images": self.n_images,
            "parameters": self.parameters,
            "seed": self.seed,
            "settings": self.settings,
            "adaptive": None if self.adaptive is None else {
                "definition": "D H D with D = diag|w|: invariant to rescaling a conv that feeds batch norm",
                "eigenvalues": self.adaptive.eigenvalues.values,
                "eigenvalue_iterations": self.adaptive.eigenvalues.iterations,
                "eigenvalues_converged": self.adaptive.eigenvalues.converged,
                "trace": self.adaptive.trace.value, "trace_stderr": self.adaptive.trace.stderr,
                "probes": self.adaptive.trace.probes, "trace_converged": self.adaptive.trace.converged},
            "loss": self.loss,
            "gradient_norm": self.gradient_norm,
        }


def sharpness(model: nn.Module, images: Tensor, labels: Tensor, out_dir: str | Path | None = None, *, k: int = 3,
              tol: float = 1e-3, max_iter: int = 100, rel_error: float = 1e-2, min_probes: int = 10,
              max_probes: int = 1000, density_steps: int = 64, density_probes: int = 1, seed: int = 0,
              batch_size: int = DEFAULT_BATCH_SIZE, device: str | torch.device | None = None,
              adaptive: bool = True) -> Sharpness:
    """Top-k eigenvalues, trace and eigenvalue density of the loss Hessian, with ``adaptive`` their |w|-scaled
    λ1 and trace, and the loss and gradient norm (see module doc); with ``out_dir``, written there as
    ``sharpness.json`` and ``density.png``."""
    settings = {"k": k, "tol": tol, "max_iter": max_iter, "rel_error": rel_error, "min_probes": min_probes,
                "max_probes": max_probes, "density_steps": density_steps, "density_probes": density_probes,
                "batch_size": batch_size, "adaptive": adaptive}
    common: dict[str, Any] = {"seed": seed, "batch_size": batch_size, "device": device}
    eigenvalues = top_eigenvalues(model, images, labels, k, tol=tol, max_iter=max_iter, **common)
    trace = hessian_trace(model, images, labels, rel_error=rel_error, min_probes=min_probes,
                          max_probes=max_probes, **common)
    density = eigenvalue_density(model, images, labels, steps=density_steps, probes=density_probes, **common)
    scaled = adaptive_sharpness(model, images, labels, k, tol=tol, max_iter=max_iter, rel_error=rel_error,
                                min_probes=min_probes, max_probes=max_probes, **common) if adaptive else None
    loss, gradient_norm = _operator(model, images, labels, batch_size, device).loss_and_gradient_norm()
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = Sharpness(eigenvalues, trace, density, len(labels), parameters, seed, settings, scaled, loss,
                       gradient_norm)
    if out_dir is not None:
        write_sharpness(result, out_dir)
    return result


def write_sharpness(result: Sharpness, out_dir: str | Path, inputs: Sequence[str] = ()) -> list[Path]:
    """``sharpness.json`` (with ``inputs``, the sha256 of the weights it is of) and ``density.png``."""
    out = Path(out_dir)
    atomic_write_json(out / SHARPNESS_JSON, {**result.to_dict(), "inputs": list(inputs)})
    density_figure(result.density, out / DENSITY_PNG, title=f"Hessian eigenvalue density, n = {result.n_images}")
    return [out / SHARPNESS_JSON, out / DENSITY_PNG]


def read_sharpness(path: str | Path) -> Sharpness:
    """A ``sharpness.json`` (or the folder holding one) back as a :class:`Sharpness`."""
    older = older_format(path, SHARPNESS_JSON, OLDER_FORMATS)
    if older is not None:
        raise MinimascopeError(f"{path} was written by an older minimascope ({older}, without the |w|-scaled "
                               f"sharpness); re-run `minimascope sharpness` (or the study) to rewrite it")
    fields = read_result_fields(path, SHARPNESS_FORMAT, SHARPNESS_JSON, "sharpness result")
    density = fields.child("density")
    nodes = density.numbers("nodes")
    grid = density.numbers("grid")
    scaled = None if fields.raw("adaptive") is None else fields.child("adaptive")
    return Sharpness(
        eigenvalues=_top_eigenvalues(fields),
        trace=_trace(fields),
        density=Density(nodes, density.numbers("weights", length=len(nodes)), density.integer("steps", minimum=1),
                        density.integer("probes", minimum=1), grid,
                        density.numbers("smoothed", length=len(grid)), density.number("sigma")),
        n_images=fields.integer("n_images", minimum=1),
        parameters=fields.integer("parameters", minimum=1),
        seed=fields.integer("seed"),
        settings=fields.child("settings").record,
        adaptive=None if scaled is None else AdaptiveSharpness(_top_eigenvalues(scaled), _trace(scaled)),
        loss=None if fields.raw("loss") is None else fields.number("loss"),
        gradient_norm=None if fields.raw("gradient_norm") is None else fields.number("gradient_norm"),
    )


def _top_eigenvalues(fields: Fields) -> TopEigenvalues:
    values = fields.numbers("eigenvalues")
    if not values:
        fields.fail("eigenvalues", "at least one number", values)
    return TopEigenvalues(values, fields.integer("eigenvalue_iterations", minimum=0),
                          fields.flag("eigenvalues_converged"))


def _trace(fields: Fields) -> TraceEstimate:
    return TraceEstimate(fields.number("trace"), fields.number("trace_stderr"), fields.integer("probes", minimum=1),
                         fields.flag("trace_converged"))


def density_figure(density: Density, path: str | Path, *, title: str) -> None:
    """The stored smoothed density on a log axis (the bulk near 0 and the outliers differ by orders of
    magnitude)."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.semilogy(density.grid, density.smoothed)
    axes.set_xlabel("eigenvalue")
    axes.set_ylabel(f"density (Gaussian kernel, sigma = {density.sigma:.3g})")
    axes.set_title(f"{title}\n{density.probes} probe(s) x {density.steps} Lanczos steps", fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------- a run's sharpness, on disk


def sharpness_of_run(run_dir: str | Path, out_dir: str | Path, *, images: int = 1000, data_source: str | None = None,
                     device: str = "auto", seed: int = 0, k: int = 3, tol: float = 1e-3, max_iter: int = 100,
                     rel_error: float = 1e-2, max_probes: int = 1000, density_steps: int = 64,
                     batch_size: int = DEFAULT_BATCH_SIZE, adaptive: bool = True,
                     study_node: bool = False) -> Sharpness:
    """:func:`sharpness` of a run's final network (run directory or weights file) on a class-balanced
    subset of ``images`` of the TRAINING images it was trained on (a run's training subset; from ``data_source``;
    drawn with ``seed``: the training loss is the one the optimizer minimised), normalised as the run was trained;
    written to ``out_dir`` with the images used stated in the JSON's settings. ``out_dir`` is checked before
    anything is computed (:func:`~minimascope.minima.common.check_analysis_folder`; ``study_node``: the study's
    own folder)."""
    from minimascope import data, models
    from minimascope.env import resolve_device
    from minimascope.minima.common import (
        check_analysis_folder,
        load_trained_data,
        result_folder,
        training_inputs,
        weights_identity,
    )

    check_analysis_folder(out_dir, SHARPNESS_FILES, study_node=study_node)  # before anything is loaded
    torch_device = resolve_device(device)
    model, payload = models.load_trained(run_dir)
    identity = [weights_identity(run_dir)]
    check_analysis_folder(out_dir, SHARPNESS_FILES, identity, study_node=study_node)
    loaded = load_trained_data({Path(run_dir).name: payload}, data_source)
    data_key = data.content_key(data_source, loaded.dataset)
    inputs, labels, sampled = training_inputs(payload, loaded, [run_dir], images, seed)
    result = sharpness(model.to(torch_device), inputs, labels, k=k, tol=tol, max_iter=max_iter, rel_error=rel_error,
                       min_probes=min(10, max_probes), max_probes=max_probes, density_steps=density_steps, seed=seed,
                       batch_size=batch_size, device=torch_device, adaptive=adaptive)
    source = {"run": str(Path(run_dir).resolve()), "dataset": loaded.dataset, "images": "train",
              "n_images": len(labels), **sampled, "data": data_key, "mode": "eval (batch norm with running statistics)"}
    result = replace(result, settings={**result.settings, **source})
    with result_folder(out_dir, SHARPNESS_FILES, identity, study_node=study_node) as out:
        write_sharpness(result, out, identity)
    return result
