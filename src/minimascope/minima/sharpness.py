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

* :func:`top_eigenvalues` — Lanczos with full reorthogonalisation. Each product enlarges a Krylov space
  from which all k eigenvalues are read at once; power iteration with deflation (PyHessian's method)
  spends a whole run of products on each eigenvalue and converges with the ratio of neighbouring
  eigenvalues, so Lanczos needs several times fewer products for the same accuracy. Convergence is
  decided by the residual bound ||H y - theta y|| <= tol |theta| of each Ritz pair, which bounds the
  eigenvalue error too (not by the stagnation of an estimate).
* :func:`hessian_trace` — Hutchinson's estimator with Rademacher probes, run until its standard error is
  below ``rel_error`` of the estimate.
* :func:`eigenvalue_density` — stochastic Lanczos quadrature (Ghorbani et al. 2019): per probe, the Ritz
  values of a Lanczos run are nodes and the squared first components of their vectors are weights.

The math cores (:func:`lanczos`, :func:`lanczos_top_eigenvalues`, :func:`slq_density`,
:func:`smooth_density`) take any symmetric matvec, so they are tested on explicit matrices.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from minimascope.curvature import hessian_vector_product, rademacher_like
from minimascope.errors import MinimascopeError
from minimascope.fast_layers import fast_forward
from minimascope.io import atomic_write_bytes, atomic_write_json, read_result_json

SHARPNESS_FORMAT = "minimascope-sharpness-v1"
SHARPNESS_JSON = "sharpness.json"
DENSITY_PNG = "density.png"
DEFAULT_BATCH_SIZE = 1000  # 1,000 CIFAR images are one batch: its graph is built once and reused by every product
Matvec = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------- math on any symmetric matvec


@dataclass(frozen=True)
class LanczosStep:
    """The state after step j: diagonal alpha_1..alpha_j of the tridiagonal T_j, and beta_1..beta_j where
    beta_1..beta_{j-1} are T_j's off-diagonal and beta_j the norm of the residual that would make step j + 1
    (0 when the Krylov space is invariant, which ends the run). float64, on the CPU."""

    alpha: Tensor
    beta: Tensor


def lanczos(matvec: Matvec, start: Tensor, max_steps: int | None = None) -> Iterator[LanczosStep]:
    """Lanczos on a symmetric operator from ``start``, with full reorthogonalisation; yields after each step.

    The run ends after ``max_steps`` steps (default: the dimension), or earlier once the Krylov space is
    invariant; the caller may stop sooner. Every new direction is orthogonalised against all earlier ones
    (classical Gram-Schmidt as two matrix-vector products, repeated when it removed most of the vector: the
    Daniel-Gragg-Kaufman-Stewart test), so no ghost copies of converged eigenvalues appear. The basis is
    kept, in one buffer of ``start``'s dtype and device that doubles as it grows (up to ``max_steps``
    vectors), so memory is about one to two vectors per step taken.
    """
    dim = start.numel()
    limit = dim if max_steps is None else min(dim, max_steps)
    basis = torch.empty((min(limit, 16), dim), dtype=start.dtype, device=start.device)
    basis[0] = start.reshape(-1) / start.norm()
    alphas: list[float] = []
    betas: list[float] = []
    tiny = 1e3 * torch.finfo(start.dtype).eps
    for j in range(limit):
        q = basis[j]
        w = matvec(q.view_as(start)).reshape(-1).clone()
        alphas.append(torch.dot(q, w).item())
        w.sub_(q, alpha=alphas[-1])
        if j > 0:
            w.sub_(basis[j - 1], alpha=betas[-1])
        for _ in range(2):
            before = w.norm()
            w.addmv_(basis[: j + 1].T, basis[: j + 1] @ w, alpha=-1)
            after = w.norm()
            if after > 0.7 * before:
                break
        scale = max(abs(a) for a in alphas) + (max(betas) if betas else 0.0)
        invariant = after.item() <= tiny * scale or j + 1 == dim
        betas.append(0.0 if invariant else after.item())
        yield LanczosStep(torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas, dtype=torch.float64))
        if invariant or j + 1 == limit:
            return
        if j + 1 == len(basis):
            grown = torch.empty((min(limit, 2 * len(basis)), dim), dtype=basis.dtype, device=basis.device)
            grown[: len(basis)] = basis
            basis = grown
        basis[j + 1] = w.div_(after)


def tridiagonal_eigh(step: LanczosStep) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending) and eigenvectors (columns) of the tridiagonal T_j of a Lanczos step."""
    t = torch.diag(step.alpha)
    off = step.beta[:-1]
    t += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(t)


@dataclass(frozen=True)
class TopEigenvalues:
    """The k largest eigenvalues, descending, after ``iterations`` Lanczos steps (one matrix-vector or
    Hessian-vector product each); ``converged``: every one has a residual bound below tol times its
    magnitude. Fewer than k values (and not converged) only if the Krylov space of the start vector was
    invariant with fewer than k dimensions: Lanczos sees one copy of each distinct eigenvalue it reaches."""

    values: list[float]
    iterations: int
    converged: bool


def lanczos_top_eigenvalues(matvec: Matvec, start: Tensor, k: int, *, tol: float, max_iter: int) -> TopEigenvalues:
    """The k algebraically largest eigenvalues of a symmetric operator by Lanczos from ``start``.

    Ritz pair i of step j has ||A y_i - theta_i y_i|| = |beta_j s_ji| (s_ji the last component of its
    eigenvector of T_j); the run stops when that is <= tol |theta_i| for the top k, or after ``max_iter``.
    """
    if k < 1:
        raise MinimascopeError(f"k must be >= 1, got {k}")
    if k > start.numel():
        raise MinimascopeError(f"k = {k} eigenvalues asked of a {start.numel()}-dimensional Hessian")
    values: list[float] = []
    converged, iterations = False, 0
    for iterations, step in enumerate(lanczos(matvec, start, max_iter), start=1):  # noqa: B007 (read after the loop)
        ritz, vectors = tridiagonal_eigh(step)
        if len(ritz) >= k:
            top = ritz[-k:].flip(0)
            residuals = (step.beta[-1] * vectors[-1, -k:].flip(0)).abs()
            values = top.tolist()
            converged = bool((residuals <= tol * top.abs()).all())
        if converged:
            break
    return TopEigenvalues(values, iterations, converged)


def slq_density(matvec: Matvec, starts: list[Tensor], steps: int) -> tuple[Tensor, Tensor]:
    """Stochastic Lanczos quadrature: (nodes, weights), float64, concatenated over the start vectors.

    Per start vector v (unit-normed inside), ``steps`` Lanczos steps give T = S diag(theta) S^T; the
    quadrature sum_i S_1i^2 f(theta_i) approximates v^T f(A) v / v^T v, so the nodes theta_i with weights
    S_1i^2 / len(starts) form a density whose weights sum to 1 and whose mean is the mean over starts of
    v^T A v / v^T v (for Rademacher v, Hutchinson's trace / dim).
    """
    if steps < 1 or not starts:
        raise MinimascopeError("a density needs at least one probe and one Lanczos step")
    nodes, weights = [], []
    for start in starts:
        *_, last = lanczos(matvec, start, steps)
        ritz, vectors = tridiagonal_eigh(last)
        nodes.append(ritz)
        weights.append(vectors[0] ** 2 / len(starts))
    return torch.cat(nodes), torch.cat(weights)


def smooth_density(nodes: Tensor, weights: Tensor, grid: Tensor, sigma: float) -> Tensor:
    """The density sum_i w_i N(x; theta_i, sigma^2) on ``grid``: the SLQ nodes spread by a Gaussian kernel
    (so it integrates to sum w_i = 1 when the grid covers the nodes with a few sigma to spare)."""
    z = (grid.double().unsqueeze(1) - nodes.double().unsqueeze(0)) / sigma
    return (torch.exp(-0.5 * z * z) @ weights.double()) / (sigma * math.sqrt(2 * math.pi))


# ----------------------------------------------------------------------------- the loss Hessian of a network


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; every module's own training flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


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
        with torch.enable_grad(), _eval_mode(self.model):
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


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's estimate of tr(H), its standard error, the probes (products) used, and whether the
    standard error met ``rel_error`` before ``max_probes``."""

    value: float
    stderr: float
    probes: int
    converged: bool


def hutchinson_trace(matvec: Matvec, template: Tensor, *, rel_error: float, min_probes: int, max_probes: int,
                     generator: torch.Generator) -> TraceEstimate:
    """Mean of z^T A z over Rademacher probes z (unbiased: E[z z^T] = I), drawn until the standard error
    of the mean (sample std / sqrt(probes)) is below ``rel_error`` |mean|, with at least ``min_probes``."""
    if not 2 <= min_probes <= max_probes:
        raise MinimascopeError(f"need 2 <= min_probes <= max_probes, got {min_probes} and {max_probes}")
    samples: list[float] = []
    mean = stderr = math.nan
    while len(samples) < max_probes:
        z = rademacher_like(template, generator)
        samples.append(torch.dot(z.reshape(-1), matvec(z).reshape(-1)).item())
        if len(samples) >= 2:
            values = torch.tensor(samples, dtype=torch.float64)
            mean, stderr = values.mean().item(), (values.std() / math.sqrt(len(samples))).item()
            if len(samples) >= min_probes and stderr < rel_error * abs(mean):
                return TraceEstimate(mean, stderr, len(samples), True)
    return TraceEstimate(mean, stderr, len(samples), False)


def hessian_trace(model: nn.Module, images: Tensor, labels: Tensor, *, rel_error: float = 1e-2,
                  min_probes: int = 10, max_probes: int = 1000, seed: int = 0,
                  batch_size: int = DEFAULT_BATCH_SIZE, device: str | torch.device | None = None) -> TraceEstimate:
    """tr(H) of the loss Hessian (see module doc) by Hutchinson, to a standard error below ``rel_error``
    of the estimate (``converged`` False when ``max_probes`` came first)."""
    hessian = _operator(model, images, labels, batch_size, device)
    return hutchinson_trace(hessian, hessian.template(), rel_error=rel_error, min_probes=min_probes,
                            max_probes=max_probes, generator=_probe_generator(seed))


@dataclass(frozen=True)
class Density:
    """SLQ nodes (Ritz values) and weights (summing to 1 over all probes)."""

    nodes: list[float]
    weights: list[float]
    steps: int
    probes: int


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
    return Density(nodes.tolist(), weights.tolist(), steps, probes)


# ----------------------------------------------------------------------------- all three, on disk


@dataclass(frozen=True)
class Sharpness:
    eigenvalues: TopEigenvalues
    trace: TraceEstimate
    density: Density
    n_images: int
    parameters: int
    seed: int
    settings: dict[str, Any]

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
                        "steps": self.density.steps, "probes": self.density.probes},
            "n_images": self.n_images,
            "parameters": self.parameters,
            "seed": self.seed,
            "settings": self.settings,
        }


def sharpness(model: nn.Module, images: Tensor, labels: Tensor, out_dir: str | Path | None = None, *, k: int = 3,
              tol: float = 1e-3, max_iter: int = 100, rel_error: float = 1e-2, min_probes: int = 10,
              max_probes: int = 1000, density_steps: int = 64, density_probes: int = 1, seed: int = 0,
              batch_size: int = DEFAULT_BATCH_SIZE, device: str | torch.device | None = None) -> Sharpness:
    """Top-k eigenvalues, trace and eigenvalue density of the loss Hessian (see module doc); with
    ``out_dir``, written there as ``sharpness.json`` and ``density.png``."""
    settings = {"k": k, "tol": tol, "max_iter": max_iter, "rel_error": rel_error, "min_probes": min_probes,
                "max_probes": max_probes, "density_steps": density_steps, "density_probes": density_probes,
                "batch_size": batch_size}
    common: dict[str, Any] = {"seed": seed, "batch_size": batch_size, "device": device}
    eigenvalues = top_eigenvalues(model, images, labels, k, tol=tol, max_iter=max_iter, **common)
    trace = hessian_trace(model, images, labels, rel_error=rel_error, min_probes=min_probes,
                          max_probes=max_probes, **common)
    density = eigenvalue_density(model, images, labels, steps=density_steps, probes=density_probes, **common)
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = Sharpness(eigenvalues, trace, density, len(labels), parameters, seed, settings)
    if out_dir is not None:
        write_sharpness(result, out_dir)
    return result


def write_sharpness(result: Sharpness, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    atomic_write_json(out / SHARPNESS_JSON, result.to_dict())
    density_figure(result.density, out / DENSITY_PNG, title=f"Hessian eigenvalue density, n = {result.n_images}")
    return [out / SHARPNESS_JSON, out / DENSITY_PNG]


def read_sharpness(path: str | Path) -> Sharpness:
    """A ``sharpness.json`` (or the folder holding one) back as a :class:`Sharpness`."""
    record = read_result_json(path, SHARPNESS_FORMAT, SHARPNESS_JSON, "sharpness result")
    density = record["density"]
    return Sharpness(
        eigenvalues=TopEigenvalues(record["eigenvalues"], record["eigenvalue_iterations"],
                                   record["eigenvalues_converged"]),
        trace=TraceEstimate(record["trace"], record["trace_stderr"], record["probes"], record["trace_converged"]),
        density=Density(density["nodes"], density["weights"], density["steps"], density["probes"]),
        n_images=record["n_images"],
        parameters=record["parameters"],
        seed=record["seed"],
        settings=record["settings"],
    )


def density_figure(density: Density, path: str | Path, *, title: str, points: int = 1000) -> None:
    """The smoothed density on a log axis (the bulk near 0 and the outliers differ by orders of magnitude);
    the kernel width is 1% of the spectrum's span."""
    nodes, weights = torch.tensor(density.nodes), torch.tensor(density.weights)
    low, high = nodes.min().item(), nodes.max().item()
    span = max(high - low, 1e-12 * max(abs(low), abs(high), 1.0))
    sigma = 0.01 * span
    grid = torch.linspace(low - 5 * sigma, high + 5 * sigma, points, dtype=torch.float64)
    values = smooth_density(nodes, weights, grid, sigma).clamp_min(1e-12)
    figure = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.semilogy(grid.numpy(), values.numpy())
    axes.set_xlabel("eigenvalue")
    axes.set_ylabel(f"density (Gaussian kernel, sigma = {sigma:.3g})")
    axes.set_title(f"{title}\n{density.probes} probe(s) x {density.steps} Lanczos steps", fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())



# ----------------------------------------------------------------------------- a run's sharpness, on disk


def sharpness_of_run(run_dir: str | Path, out_dir: str | Path, *, images: int = 1000, data_source: str | None = None,
                     device: str = "auto", seed: int = 0, k: int = 3, tol: float = 1e-3, max_iter: int = 100,
                     rel_error: float = 1e-2, max_probes: int = 1000, density_steps: int = 64,
                     batch_size: int = DEFAULT_BATCH_SIZE) -> Sharpness:
    """:func:`sharpness` of a run's final network (run directory or weights file) on a class-balanced
    subset of ``images`` CIFAR-10 TRAINING images (drawn with ``seed``; the training loss is the one the
    optimizer minimised), normalised as the run was trained; written to ``out_dir`` with the images
    used stated in the JSON's settings."""
    from minimascope import data, models
    from minimascope.env import resolve_device
    from minimascope.minima.common import balanced_inputs, check_analysis_folder

    out = check_analysis_folder(out_dir)
    torch_device = resolve_device(device)
    model, payload = models.load_trained(run_dir)
    data_key = data.content_key(data_source)
    cifar = data.load_cifar10(data_source)
    inputs, labels = balanced_inputs(payload, cifar.train_images, cifar.train_labels, images, seed)
    result = sharpness(model.to(torch_device), inputs, labels, k=k, tol=tol, max_iter=max_iter, rel_error=rel_error,
                       min_probes=min(10, max_probes), max_probes=max_probes, density_steps=density_steps, seed=seed,
                       batch_size=batch_size, device=torch_device)
    source = {"run": str(Path(run_dir).resolve()), "images": "train", "n_images": len(labels),
              "subset": f"class-balanced, seed {seed}" if len(labels) < len(cifar.train_labels) else "all",
              "data": data_key, "mode": "eval (batch norm with running statistics)"}
    result = replace(result, settings={**result.settings, **source})
    write_sharpness(result, out)
    return result
