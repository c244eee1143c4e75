"""The measures on two (n, p) activation matrices (:func:`linear_cka`, :func:`svcca`,
:func:`mean_cca`, :func:`procrustes_distance`), their registry :data:`MEASURES`, and what every
comparison shares: input checks, column centring, the values from factors, the warning for
degenerate input."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from minimascope.errors import MinimascopeError
from minimascope.similarity.factors import _Factor, _factor, _parallel_map, _single_threaded

ArrayLike = Tensor | np.ndarray


class SimilarityWarning(UserWarning):
    """A value was defined by convention for degenerate input (see the package docstring)."""


@dataclass(frozen=True)
class Measure:
    name: str
    kind: str  # "similarity" (higher = more alike) or "distance" (lower = more alike)
    value_range: tuple[float, float]
    convention: str


MEASURES: dict[str, Measure] = {m.name: m for m in (
    Measure("cka", "similarity", (0.0, 1.0),
            "linear CKA (Kornblith et al. 2019), exact over all samples, on column-centred "
            "activations; 1 = identical up to rotation and isotropic scale, 0 = nothing shared"),
    Measure("cka_debiased", "similarity", (0.0, 1.0),
            "debiased linear CKA (Kornblith et al. 2019, from the unbiased HSIC of Song et al. 2012), exact over "
            "all samples; unbiased where plain CKA of independent wide layers is far above 0 on few samples: about "
            "0 (it may fall slightly below) for unrelated layers, 1 for identical up to rotation and scale"),
    Measure("cka_minibatch", "similarity", (0.0, 1.0),
            "linear CKA from unbiased HSIC averaged over minibatches (Nguyen et al. 2021); "
            "1 = identical up to rotation and isotropic scale"),
    Measure("svcca", "similarity", (0.0, 1.0),
            "SVCCA (Raghu et al. 2017): mean canonical correlation of each side's top singular "
            "directions explaining 99% of the variance; 1 = same subspace, 0 = orthogonal"),
    Measure("mean_cca", "similarity", (0.0, 1.0),
            "mean canonical correlation over all directions above numerical rank; "
            "1 = same subspace, 0 = orthogonal"),
    Measure("procrustes", "distance", (0.0, 2.0),
            "orthogonal Procrustes distance (Ding et al. 2021) 2 - 2*||X^T Y||_* of centred, "
            "Frobenius-normalised activations; 0 = identical up to rotation and isotropic "
            "scale, 2 = nothing shared"),
)}
DEFAULT_MEASURES = ("cka", "svcca", "procrustes")
SVCCA_KEEP = 0.99


def _as_matrix(x: ArrayLike, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise MinimascopeError(f"{name} must be a 2-D (samples, features) array, got shape {tuple(t.shape)}")
    return t


def _pair64(x: ArrayLike, y: ArrayLike) -> tuple[Tensor, Tensor]:
    """Both inputs as centred float64 copies (the plain functions favour accuracy over speed)."""
    xt, yt = _as_matrix(x, "X"), _as_matrix(y, "Y")
    _check_samples(xt.shape[0], yt.shape[0])
    return _centre_(xt.to(torch.float64, copy=True), "X"), _centre_(yt.to(torch.float64, copy=True), "Y")


def _check_samples(n_a: int, n_b: int) -> None:
    if n_a == 0 or n_b == 0:
        raise MinimascopeError("no samples to compare (0 images)")
    if n_a != n_b:
        raise MinimascopeError(f"sample counts differ ({n_a} vs {n_b}); both sides must see the same images")


def _centre_(x: Tensor, name: str = "X") -> Tensor:
    """Centre columns in place; constant columns become exact zeros, so that a constant layer is
    recognisably constant rather than rounding noise. NaN or inf → MinimascopeError (the
    column extremes catch both, sparing a pass)."""
    low, high = torch.aminmax(x, dim=0)
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise MinimascopeError(f"{name} contains NaN or infinite values")
    x.sub_(x.mean(0, keepdim=True))
    constant = low == high
    if constant.any():  # spares a pass over the usual, constant-free activations
        x.masked_fill_(constant, 0.0)
    return x


def _warn(message: str) -> None:
    warnings.warn(message, SimilarityWarning, stacklevel=3)


def _cka_value(xy: float, xx: float, yy: float, *, clip: bool = True) -> float:
    """CKA from <K, L>, ‖K‖², ‖L‖² (or their unbiased counterparts, then not clipped: a debiased value
    below 0 is information); 0 (by convention) when a side has no variance."""
    if xx <= 0.0 or yy <= 0.0:
        return 0.0
    value = xy / math.sqrt(xx * yy)
    return min(max(value, 0.0), 1.0) if clip else value


def debiased_products(xy: Tensor, xx: Tensor, yy: Tensor, rows_x: Tensor, rows_y: Tensor,
                      n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The unbiased HSIC (Song et al. 2012) of every layer pair, times n(n − 3) (which CKA's ratio
    cancels), from the biased products of column-centred activations: ``xy[i, j]`` = ‖X_iᵀY_j‖²,
    ``xx``/``yy`` their diagonals' counterparts, ``rows_x[i]`` the n squared row norms of X_i.

    With K = XXᵀ and K̃ its zero-diagonal copy, centring makes K1 = 0, so tr(K̃L̃) = ⟨K, L⟩ − d_x·d_y,
    1ᵀK̃1 = −‖X‖² and K̃1 = −d_x (d = the diagonal, the squared row norms): Song et al.'s
    tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1 becomes
    ⟨K, L⟩ − n/(n−2)·d_x·d_y + ‖X‖²‖Y‖²/((n−1)(n−2))."""
    if n < 4:
        raise MinimascopeError(f"debiased CKA needs at least 4 samples, got {n}")
    sx, sy = rows_x.sum(1), rows_y.sum(1)
    c1, c2 = n / (n - 2), 1.0 / ((n - 1) * (n - 2))
    return (xy - c1 * (rows_x @ rows_y.T) + c2 * torch.outer(sx, sy),
            xx - c1 * rows_x.square().sum(1) + c2 * sx.square(),
            yy - c1 * rows_y.square().sum(1) + c2 * sy.square())


def linear_cka(x: ArrayLike, y: ArrayLike, *, form: str = "auto", debiased: bool = False) -> float:
    """Linear CKA of two (n, p) activation matrices; ``form`` "gram" (n×n), "feature" (p×p) or
    "auto" (the cheaper). Both forms give the same value. ``debiased``: from the unbiased HSIC
    estimator (:func:`debiased_products`), whose expectation is 0 for independent layers at any n,
    where plain CKA's bias grows with the layers' width over n; the value is not clipped below 0."""
    xc, yc = _pair64(x, y)
    n, p, q = xc.shape[0], xc.shape[1], yc.shape[1]
    if form == "auto":
        form = "feature" if p * q + p * p + q * q < n * (p + q) else "gram"
    if form == "feature":
        xy, xx, yy = (float(torch.linalg.matrix_norm(a.T @ b) ** 2) for a, b in ((yc, xc), (xc, xc), (yc, yc)))
    elif form == "gram":
        gram_x, gram_y = xc @ xc.T, yc @ yc.T
        xy, xx, yy = (float((a * b).sum()) for a, b in ((gram_x, gram_y), (gram_x, gram_x), (gram_y, gram_y)))
    else:
        raise MinimascopeError(f"unknown CKA form {form!r}; choose auto, gram or feature")
    if debiased:
        products = debiased_products(*(torch.tensor(v, dtype=torch.float64) for v in ([[xy]], [xx], [yy])),
                                     xc.square().sum(1)[None], yc.square().sum(1)[None], n)
        xy, xx, yy = (float(v.reshape(())) for v in products)
    if xx <= 0.0 or yy <= 0.0:
        _warn("CKA of a layer without variance is 0 by convention")
    return _cka_value(xy, xx, yy, clip=not debiased)


def _cca_value(c: Tensor) -> float:
    """Mean canonical correlation given c = U_xᵀ U_y of orthonormal bases; 0 if a side is empty."""
    if c.numel() == 0:
        return 0.0
    return float(torch.linalg.svdvals(c).clamp(max=1.0).to(torch.float64).mean())


def _procrustes_value(c: Tensor, fx: _Factor, fy: _Factor, kx: int, ky: int) -> tuple[float, float]:
    """(distance, bound) from the leading kx × ky block of c = U_xᵀ U_y.

    With X = X_k + R_x (R_x the dropped directions), XᵀY − X_kᵀY_k = X_kᵀR_y + R_xᵀY_k + R_xᵀR_y,
    and ‖AᵀB‖_* ≤ ‖A‖_F ‖P B‖_F for P the projector onto A's column space, which for R_y lies
    outside U_y. So the truncated nuclear norm is within
        ‖R_y‖·‖(I−U_yU_yᵀ)X_k‖ + ‖R_x‖·‖(I−U_xU_xᵀ)Y_k‖ + ‖R_x‖·‖R_y‖
    of the exact one (all Frobenius, on normalised X, Y), for any orthonormal U_x, U_y — exact or
    randomized — and the distance within twice that. It is 0 when nothing was dropped."""
    if fx.total == 0.0 or fy.total == 0.0:
        return 2.0, 0.0
    c = c[:kx, :ky]
    sx = (fx.s[:kx] / math.sqrt(fx.total)).to(c.dtype)
    sy = (fy.s[:ky] / math.sqrt(fy.total)).to(c.dtype)
    core = sx[:, None] * c * sy[None, :]
    nuclear = float(torch.linalg.svdvals(core).to(torch.float64).sum()) if core.numel() else 0.0
    c2 = (c * c).to(torch.float64)
    sx2, sy2 = sx.to(torch.float64) ** 2, sy.to(torch.float64) ** 2
    rx, ry = math.sqrt(max(1.0 - float(sx2.sum()), 0.0)), math.sqrt(max(1.0 - float(sy2.sum()), 0.0))
    x_outside = math.sqrt(max(float(sx2.sum() - (c2.T @ sx2).sum()), 0.0))
    y_outside = math.sqrt(max(float(sy2.sum() - (c2 @ sy2).sum()), 0.0))
    bound = 2.0 * (ry * x_outside + rx * y_outside + rx * ry)
    return min(max(2.0 - 2.0 * nuclear, 0.0), 2.0), bound


def _check_keep(keep: float, what: str) -> None:
    if not 0.0 < keep <= 1.0:
        raise MinimascopeError(f"{what} is a fraction of the variance, in (0, 1]; got {keep}")


def _check_cca_rank(k: int, n: int, what: str) -> None:
    if k >= n - 1:
        raise MinimascopeError(
            f"{what} keeps {k} directions of {n} samples, so all canonical correlations are 1 by "
            f"construction; use more samples than directions (or the spatial_mean policy)")


def _plain_factors(x: ArrayLike, y: ArrayLike, keep: float) -> tuple[int, _Factor, _Factor]:
    xc, yc = _pair64(x, y)
    fx, fy = _parallel_map(lambda t: _factor(t, keep), (xc, yc))
    return xc.shape[0], fx, fy


def _plain_cca(x: ArrayLike, y: ArrayLike, keep: float, name: str) -> float:
    n, fx, fy = _plain_factors(x, y, keep)
    _check_cca_rank(len(fx.s), n, f"{name} of X")
    _check_cca_rank(len(fy.s), n, f"{name} of Y")
    if fx.total == 0.0 or fy.total == 0.0:
        _warn(f"{name} of a layer without variance is 0 by convention")
    elif len(fx.s) + len(fy.s) > n - 1:
        _warn(f"{name}: {len(fx.s) + len(fy.s) - (n - 1)} canonical correlations are 1 by construction "
              f"(the sides keep {len(fx.s)} + {len(fy.s)} directions of {n} samples)")
    with _single_threaded():
        return _cca_value(fx.u.T @ fy.u)


def svcca(x: ArrayLike, y: ArrayLike, *, keep: float = SVCCA_KEEP) -> float:
    """SVCCA: mean canonical correlation of the top singular directions of each side that
    explain ``keep`` of its variance."""
    _check_keep(keep, "SVCCA's keep")
    return _plain_cca(x, y, keep, "SVCCA")


def mean_cca(x: ArrayLike, y: ArrayLike) -> float:
    """Mean canonical correlation of the full (numerical-rank) column spaces."""
    return _plain_cca(x, y, 1.0, "mean CCA")


def procrustes_distance(x: ArrayLike, y: ArrayLike) -> float:
    """Orthogonal Procrustes distance 2 − 2‖X̃ᵀỸ‖_* (exact, float64)."""
    _, fx, fy = _plain_factors(x, y, 1.0)
    if fx.total == 0.0 or fy.total == 0.0:
        _warn("Procrustes distance of a layer without variance is 2 by convention")
    with _single_threaded():
        return _procrustes_value(fx.u.T @ fy.u, fx, fy, len(fx.s), len(fy.s))[0]
