"""Curvature of a loss through autograd: Rademacher probes, Hessian-vector products, Hutchinson's
estimates of the Hessian diagonal and of the trace, and the kernel-window statistics AdaHessian applies
to the diagonal.

Only torch (and the names of AdaHessian's window statistics, from the optimizer registry): AdaHessian
(``minimascope.optim.adahessian``) and the analyses of a minimum (``minimascope.minima.sharpness``) share
these, so a Hessian-vector product is computed one way everywhere.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from minimascope.errors import MinimascopeError
from minimascope.optim import BLOCK_STATS

_BITS_PER_CODE = 8  # one random byte gives the signs of eight entries


@functools.cache
def _sign_table(dtype: torch.dtype, device: torch.device) -> Tensor:
    """Row b holds the eight signs encoded by the bits of byte b (+1 for a set bit, -1 otherwise)."""
    codes = torch.arange(256, device=device).unsqueeze(1)
    bits = (codes >> torch.arange(_BITS_PER_CODE, device=device)) & 1
    return (2 * bits - 1).to(dtype)


def rademacher_like(tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Independent +1/-1 entries (probability 1/2 each), with the shape, dtype and device of ``tensor``.

    The random bytes are always drawn on the CPU (``generator`` must be a CPU generator; None uses
    torch's default one) and only then moved, so a seed gives the same probes on every device and one
    small generator state makes a run resumable. Drawing a byte per eight entries and expanding its bits
    through a table is ~3x faster than drawing every entry, and the transfer is one byte per entry.
    """
    n = tensor.numel()
    n_codes = -(-n // _BITS_PER_CODE)
    codes = torch.randint(0, 256, (n_codes,), generator=generator, dtype=torch.int64, device="cpu")
    signs = _sign_table(tensor.dtype, tensor.device).index_select(0, codes.to(tensor.device))
    return signs.view(-1)[:n].view(tensor.shape)


def hessian_vector_product(
    grads: Sequence[Tensor], params: Sequence[Tensor], vectors: Sequence[Tensor], *, retain_graph: bool = False
) -> list[Tensor]:
    """H v by double backward: the gradient of sum_i <grads_i, vectors_i> with respect to ``params``.

    ``grads`` must carry an autograd graph (``create_graph=True``). A parameter the gradients do not
    depend on gets zeros, which is its exact Hessian block. Keep ``retain_graph=True`` to take several
    products on one graph (the last call may free it).
    """
    return list(
        torch.autograd.grad(
            grads, params, grad_outputs=vectors, retain_graph=retain_graph, allow_unused=True, materialize_grads=True
        )
    )


def hutchinson_diagonal(
    grads: Sequence[Tensor],
    params: Sequence[Tensor],
    *,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    retain_graph: bool = False,
) -> list[Tensor]:
    """Hutchinson estimate of diag(H): the mean over ``n_samples`` Rademacher probes z of z * (H z).

    Unbiased because E[z z^T] = I. Probes are drawn per parameter, in order, from ``generator``.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    total: list[Tensor] = []
    for sample in range(n_samples):
        probes = [rademacher_like(p, generator) for p in params]
        keep = retain_graph or sample < n_samples - 1
        products = hessian_vector_product(grads, params, probes, retain_graph=keep)
        estimates = [z.mul_(hz) for z, hz in zip(probes, products)]  # probes are not needed afterwards
        total = [t.add_(e) for t, e in zip(total, estimates)] if total else estimates
    return [t.div_(n_samples) for t in total] if n_samples > 1 else total


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's estimate of tr(H), its standard error, the probes (products) used, and whether the
    standard error met ``rel_error`` before ``max_probes``."""

    value: float
    stderr: float
    probes: int
    converged: bool


def hutchinson_trace(matvec: Callable[[Tensor], Tensor], template: Tensor, *, rel_error: float, min_probes: int,
                     max_probes: int, generator: torch.Generator) -> TraceEstimate:
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


def block_dims(ndim: int) -> tuple[int, ...]:
    """Dimensions averaged over: 2.. for tensors of 3+ dims (the kernel window of Conv1d/2d/3d and
    transposed convs), none otherwise (biases, norm scales, linear weights)."""
    return tuple(range(2, ndim)) if ndim >= 3 else ()


def block_statistic(diagonal: Tensor, stat: str = "abs_mean") -> Tensor:
    """Window statistic of a Hessian-diagonal estimate, kept with size-1 window dims for broadcasting.

    ``abs_mean``: mean of |D| over the window (the authors' CV code); ``signed_mean``: |mean of D|
    (the paper's formula). Both are |D| where there is no window.
    """
    if stat not in BLOCK_STATS:
        raise ValueError(f"unknown block_stat {stat!r}; expected one of {', '.join(BLOCK_STATS)}")
    dims = block_dims(diagonal.ndim)
    if not dims:
        return diagonal.abs()
    if stat == "abs_mean":
        return diagonal.abs().mean(dim=dims, keepdim=True)
    return diagonal.mean(dim=dims, keepdim=True).abs()
