"""Leading directions of one layer's centred activations, from the smaller of its two Gram matrices
(exactly, or by randomized range finding beyond :data:`EXACT_EIGEN_LIMIT`), and the pool of
single-threaded workers the per-layer work runs on."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from minimascope.errors import MinimascopeError

EXACT_EIGEN_LIMIT = 4096
"""Gram matrices up to this size are eigen-decomposed exactly; larger ones (when a truncated
factor will do) by randomized range finding: eigh of 10,000² takes minutes on 2 cores."""
_PANEL = 512  # rows per Gram panel: full matmul speed, and the diagonal blocks computed twice cost n/512 % extra


@dataclass(frozen=True)
class _Factor:
    """One layer's leading directions: centred X ≈ u · diag(s) · vᵀ, strongest first."""

    u: Tensor  # (n, k), orthonormal columns
    s: Tensor  # (k,), float64 singular values
    total: float  # ‖X‖²_F, float64; the variance the k directions fall short of is total − Σs²
    complete: bool = True  # False: a randomized search stopped short of the variance asked for

    def prefix(self, keep: float) -> int:
        return _prefix(self.s, self.total, keep)


def _prefix(s: Tensor, total: float, keep: float) -> int:
    """How many leading directions explain ``keep`` of the variance ``total`` (all if keep ≥ 1)."""
    if keep >= 1.0:
        return len(s)
    cumulative = torch.cumsum(s**2, 0)
    return min(int(torch.searchsorted(cumulative, keep * total)) + 1, len(s))


def _parallel_map(fn: Callable[[Any], Any], items: Sequence[Any],
                  on_result: Callable[[int], None] | None = None) -> list[Any]:
    """``fn`` over ``items`` on a pool of single-threaded workers, one per torch thread;
    ``on_result(count)`` is called in this thread as results arrive.

    LAPACK's eigen/SVD routines synchronise often: here (2 cores, shared) eigh of four 2048² Grams
    took 9.7 s on 2 threads and 1.4 s as two single-threaded calls side by side (4096²: 42 s vs
    4.7 s on one thread). Independent calls keep every core busy instead; matmuls lose nothing."""
    with _single_threaded() as workers, \
            ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        results = []
        for result in pool.map(fn, items):
            results.append(result)
            if on_result:
                on_result(len(results))
        return results


@contextmanager
def _single_threaded() -> Iterator[int]:
    """One torch thread for the duration (see _parallel_map); yields the previous count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def _gram(a: Tensor) -> Tensor:
    """a·aᵀ from row panels of the upper triangle, mirrored (torch has no syrk: halves the flops)."""
    n = a.shape[0]
    g = a.new_empty((n, n))
    for i in range(0, n, _PANEL):
        g[i:i + _PANEL, i:] = a[i:i + _PANEL] @ a[i:].T
        g[i + _PANEL:, i:i + _PANEL] = g[i:i + _PANEL, i + _PANEL:].T
    return g


def _eigh_descending(g: Tensor) -> tuple[Tensor, Tensor]:
    evals, evecs = torch.linalg.eigh(g)
    return evals.flip(0), evecs.flip(1)


def _top_eigen(g: Tensor, keep: float, total: float, generator: torch.Generator) -> tuple[Tensor, Tensor, bool]:
    """Leading eigenpairs of the PSD matrix ``g`` (trace ``total``), and whether they explain
    ``keep`` of it: randomized range finding on g·Ω (which is one power step on the
    activations), then Rayleigh–Ritz (Halko et al. 2011, alg. 4.1 + 5.3). A subspace of
    EXACT_EIGEN_LIMIT/4 is tried first, then EXACT_EIGEN_LIMIT, beyond which eigh gets too slow;
    one that misses under a tenth of what ``keep`` may drop has room to spare, so the kept
    directions come out accurately (tested)."""
    m = g.shape[0]
    for width in (EXACT_EIGEN_LIMIT // 4, EXACT_EIGEN_LIMIT):
        q = torch.linalg.qr(g @ torch.randn((m, min(width, m)), generator=generator, dtype=g.dtype)).Q
        evals, w = _eigh_descending(q.T @ (g @ q))
        if float(evals.sum()) >= total * (1.0 - (1.0 - keep) / 10):
            break
    return evals, q @ w, float(evals.sum()) >= keep * total


def _factor(xc: Tensor, keep: float, seed: int = 0) -> _Factor:
    """Leading directions of the centred activations ``xc`` explaining ``keep`` of its variance
    (every direction above numerical rank when keep ≥ 1), from the smaller Gram matrix, in
    xc's precision (a float32 Gram carries no more than float32 eigenvalues)."""
    n, p = xc.shape
    total = float(torch.linalg.vector_norm(xc, dtype=torch.float64)) ** 2
    if total == 0.0:
        return _Factor(xc.new_zeros((n, 0)), torch.zeros(0, dtype=torch.float64), 0.0)
    wide = p > n  # then the eigenvectors of XXᵀ are the left singular vectors themselves
    g = _gram(xc) if wide else _gram(xc.T)
    complete = True
    if keep < 1.0 and g.shape[0] > EXACT_EIGEN_LIMIT:
        evals, evecs, complete = _top_eigen(g, keep, total, torch.Generator().manual_seed(seed))
    else:
        evals, evecs = _eigh_descending(g)
    del g
    evals = evals.to(torch.float64)
    # The Gram's rounding error is ~sqrt(length)·eps·‖X‖² (sums of n or p products): eigenvalues
    # below that are noise, not directions.
    rank = int((evals > total * math.sqrt(max(n, p)) * torch.finfo(xc.dtype).eps).sum())
    s = evals[:rank].sqrt()
    k = _prefix(s, total, keep)
    vectors = evecs[:, :k].to(xc.dtype)
    u = vectors if wide else (xc @ vectors).div_(s[:k].to(xc.dtype))
    return _Factor(u, s[:k], total, complete)


def _layer_factor(name: str, xc: Tensor, keep: float, seed: int) -> _Factor:
    """:func:`_factor` of one layer; a failed decomposition (LAPACK gives up on inf/nan or
    ill-conditioned activations) is one line naming the layer."""
    try:
        return _factor(xc, keep, seed)
    except torch.linalg.LinAlgError as exc:
        reason = " ".join(str(exc).split()[:12])
        raise MinimascopeError(f"eigen-decomposition of layer {name!r} failed ({reason}): its activations are too "
                               f"ill-conditioned; try --policy spatial_mean or other --layers") from None
