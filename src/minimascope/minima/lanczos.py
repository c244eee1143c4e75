"""Lanczos on any symmetric operator given as a matrix-vector product (a ``Matvec``): the tridiagonal
steps, the top eigenvalues, stochastic Lanczos quadrature and its smoothing into a density.

* :func:`lanczos_top_eigenvalues` — Lanczos with full reorthogonalisation. Each product enlarges a Krylov
  space from which all k eigenvalues are read at once; power iteration with deflation (PyHessian's method)
  spends a whole run of products on each eigenvalue and converges with the ratio of neighbouring
  eigenvalues, so Lanczos needs several times fewer products for the same accuracy. Convergence is decided
  by the residual bound ||A y - theta y|| <= tol |theta| of each Ritz pair, which bounds the eigenvalue
  error too (not by the stagnation of an estimate).
* :func:`slq_density` — stochastic Lanczos quadrature (Ghorbani et al. 2019): per probe, the Ritz values of
  a Lanczos run are nodes and the squared first components of their vectors are weights;
  :func:`smooth_density` spreads them into a curve.

Nothing here knows of networks, so everything is tested on explicit matrices; :mod:`minimascope.minima.sharpness`
applies it to the Hessian of a loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from minimascope.errors import MinimascopeError

Matvec = Callable[[Tensor], Tensor]


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
