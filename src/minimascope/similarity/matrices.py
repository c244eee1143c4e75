"""Layer-by-layer similarity of two networks' activations on the same images.

Every measure takes activations as (n, p) matrices, rows = samples, and centres columns first.

* ``cka`` — linear CKA (Kornblith et al. 2019): ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F), exact over all
  samples. Similarity in [0, 1].
* ``cka_minibatch`` — linear CKA from unbiased HSIC (Song et al. 2012) averaged over
  minibatches (Nguyen et al. 2021): mean HSIC_xy / sqrt(mean HSIC_xx · mean HSIC_yy).
* ``svcca`` — SVCCA (Raghu et al. 2017): keep each side's top singular directions explaining 99%
  of the variance, then the mean canonical correlation. Similarity in [0, 1].
* ``mean_cca`` — mean canonical correlation over every direction above numerical rank.
* ``procrustes`` — orthogonal Procrustes distance (Ding et al. 2021): X, Y centred and divided by
  their Frobenius norms, d = 2 − 2‖XᵀY‖_*. Distance in [0, 2], 0 for identical.

Degenerate inputs never give NaN. A layer without variance (every sample gives the same
activation; constant columns are zeroed exactly, not left as rounding noise) shares nothing with
anything: CKA 0, SVCCA and mean CCA 0, Procrustes 2, with a :class:`SimilarityWarning`; the
same holds for minibatch CKA when a mean unbiased HSIC_xx is not positive. Canonical
correlations are refused (:class:`MinimascopeError`) when a side keeps n − 1 directions, since
they are then all 1 by construction; when the two sides together keep more than n − 1, some
are 1 by construction and a warning says so. NaN or infinite activations are an error.

For whole networks (:func:`similarity_matrices`, :func:`compare_activations`) the work is
planned for 21×21 layers of two ResNet18 on 10,000 images in a few GiB:

* exact CKA walks the upper triangle of the n×n Gram matrices in row panels, all layers at
  once, and accumulates the panels' Frobenius products in float64, so no Gram is ever held
  whole (42 float32 10k×10k Grams would need 16.8 GB) and symmetry halves the flops;
* SVCCA, mean CCA and Procrustes share one eigen-decomposition per layer, of whichever Gram is
  smaller (XᵀX or XXᵀ), truncated to the directions the requested measures need; every layer
  pair then costs one (k_a × n)·(n × k_b) product and small SVDs, on single-threaded workers;
* Procrustes keeps the directions explaining ``procrustes_keep`` (default 99.9%) of each layer's
  variance. The truncation error is bounded per pair (``SimilarityMatrix.error_bound``, a
  rigorous bound on |value − exact|, see :func:`_procrustes_value`) and tested; Grams larger than
  :data:`EXACT_EIGEN_LIMIT` (the 16,384-wide stem on 10,000 images) are decomposed by randomized
  range finding, which the same bound covers.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from minimascope.env import physical_memory_bytes
from minimascope.errors import MinimascopeError

ArrayLike = Tensor | np.ndarray
Progress = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)`` while a comparison runs."""


class SimilarityWarning(UserWarning):
    """A value was defined by convention for degenerate input (see the module docstring)."""


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
POLICIES = ("flatten", "spatial_mean")
LAYER_SETS = ("conv_linear", "blocks")
SVCCA_KEEP = 0.99
EXACT_EIGEN_LIMIT = 4096
"""Gram matrices up to this size are eigen-decomposed exactly; larger ones (when a truncated
factor will do) by randomized range finding: eigh of 10,000² takes minutes on 2 cores."""
_PANEL = 512  # rows per Gram panel: full matmul speed, and the diagonal blocks computed twice cost n/512 % extra


# ---------------------------------------------------------------- plain measures on two matrices

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


def _cka_value(xy: float, xx: float, yy: float) -> float:
    """CKA from <K, L>, ‖K‖², ‖L‖²; 0 (by convention) when a side has no variance."""
    if xx <= 0.0 or yy <= 0.0:
        return 0.0
    return min(max(xy / math.sqrt(xx * yy), 0.0), 1.0)


def linear_cka(x: ArrayLike, y: ArrayLike, *, form: str = "auto") -> float:
    """Linear CKA of two (n, p) activation matrices; ``form`` "gram" (n×n), "feature" (p×p) or
    "auto" (the cheaper). Both forms give the same value."""
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
    if xx <= 0.0 or yy <= 0.0:
        _warn("CKA of a layer without variance is 0 by convention")
    return _cka_value(xy, xx, yy)


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


# ---------------------------------------------------------------- minibatch CKA

def _unbiased_parts(xs: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Per layer: the Gram with zeroed diagonal (flattened), its row sums and its total, float64."""
    grams = []
    for x in xs:
        xc = _centre_(x.clone(), "minibatch activations")
        grams.append((xc @ xc.T).to(torch.float64).fill_diagonal_(0.0))
    k = torch.stack(grams)
    rows = k.sum(2)
    return k.flatten(1), rows, rows.sum(1)


def _unbiased_hsic(kx: tuple[Tensor, Tensor, Tensor], ky: tuple[Tensor, Tensor, Tensor], m: int) -> Tensor:
    """Unbiased HSIC (Song et al. 2012) of every layer pair of one minibatch of m samples:
    [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((m−1)(m−2)) − 2/(m−2)·1ᵀK̃L̃1] / (m(m−3)), K̃ = K with zero diagonal.
    Bilinear in (K̃, L̃), so all pairs come from three small matrix products."""
    (fx, rx, tx), (fy, ry, ty) = kx, ky
    return (fx @ fy.T + torch.outer(tx, ty) / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * (rx @ ry.T)) / (m * (m - 3))


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen et al. 2021): accumulate unbiased HSIC over minibatches, then
    CKA = mean HSIC_xy / sqrt(mean HSIC_xx · mean HSIC_yy), for every layer pair at once.

    ``update(xs, ys)`` takes one minibatch: a list of (m, p_i) activations per layer of each
    network, the same m ≥ 4 samples; ``ys=None`` compares ``xs`` with itself (half the work)."""

    def __init__(self) -> None:
        self._xy: Tensor | None = None
        self._xx: Tensor | None = None
        self._yy: Tensor | None = None

    def update(self, xs: Sequence[Tensor], ys: Sequence[Tensor] | None = None) -> None:
        m = xs[0].shape[0]
        if any(t.shape[0] != m for t in [*xs, *(ys or [])]):
            raise MinimascopeError("every layer of a minibatch must have the same number of samples")
        if m < 4:
            raise MinimascopeError(f"unbiased HSIC needs at least 4 samples per minibatch, got {m}")
        kx = _unbiased_parts(xs)
        ky = kx if ys is None else _unbiased_parts(ys)
        xy = _unbiased_hsic(kx, ky, m)
        xx = xy.diagonal() if ys is None else _unbiased_hsic(kx, kx, m).diagonal()
        yy = xy.diagonal() if ys is None else _unbiased_hsic(ky, ky, m).diagonal()
        if self._xy is None:
            self._xy, self._xx, self._yy = xy.clone(), xx.clone(), yy.clone()
        else:
            self._xy += xy
            self._xx += xx
            self._yy += yy

    def value(self) -> np.ndarray:
        """The (layers of xs) × (layers of ys) CKA matrix; 0 where a side's mean HSIC is not positive."""
        if self._xy is None:
            raise MinimascopeError("minibatch CKA has seen no minibatch")
        good_x, good_y = self._xx > 0, self._yy > 0
        if not (good_x.all() and good_y.all()):
            _warn("minibatch CKA of a layer without variance (mean unbiased HSIC ≤ 0) is 0 by convention")
        scale = torch.outer(self._xx.clamp(min=0), self._yy.clamp(min=0)).sqrt()
        cka = torch.where(torch.outer(good_x, good_y), self._xy / scale.clamp(min=1e-300), 0.0)
        return cka.clamp(0.0, 1.0).numpy()


# ---------------------------------------------------------------- activations

def check_layer_names(model: nn.Module, names: Sequence[str]) -> None:
    """Unknown or repeated layer names → MinimascopeError naming close matches."""
    known = [name for name, _ in model.named_modules()]
    known_set = set(known)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise MinimascopeError(f"layer {name!r} is listed twice")
        seen.add(name)
        if name not in known_set:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = (f"did you mean {', '.join(close)}?" if close
                    else f"the model has {len(known)} named modules, e.g. {', '.join(known[1:4])}")
            raise MinimascopeError(f"unknown layer {name!r} in {type(model).__name__}; {hint}")


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, restoring each module's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _apply_policy(output: Tensor, policy: str) -> Tensor:
    if policy == "spatial_mean" and output.ndim == 4:
        output = output.mean((2, 3))
    return output.detach().flatten(1).to("cpu", torch.float32)


@contextmanager
def capture_activations(model: nn.Module, layer_names: Sequence[str],
                        policy: str = "flatten") -> Iterator[dict[str, Tensor]]:
    """Forward hooks filling the yielded dict with ``name → (N, p)`` float32 CPU activations of
    each forward; clear it between forwards. Conv maps (N, C, H, W) become (N, C·H·W) under
    "flatten" and (N, C) under "spatial_mean" (averaged over H, W); other outputs are flattened.
    A module called twice in one forward raises (its activation would be ambiguous). The hooks
    are removed on exit, also after an exception."""
    if policy not in POLICIES:
        raise MinimascopeError(f"unknown activation policy {policy!r}; choose one of {', '.join(POLICIES)}")
    check_layer_names(model, layer_names)
    modules = dict(model.named_modules())
    store: dict[str, Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if name in store:
                raise MinimascopeError(f"layer {name!r} runs more than once per forward pass; "
                                       f"choose a module that is called once")
            if not isinstance(output, Tensor):
                raise MinimascopeError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
            store[name] = _apply_policy(output, policy)
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layer_names]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _forward_order(model: nn.Module, example_input: Tensor) -> list[str]:
    """Names of the submodules in the order a forward pass enters them (first entry counts)."""
    order: dict[str, None] = {}

    def hook_for(name: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, inputs: Any) -> None:
            order.setdefault(name)
        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in model.named_modules() if name]
    try:
        with _evaluating(model), torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return list(order)


def default_layers(model: nn.Module, example_input: Tensor, layer_set: str = "conv_linear") -> list[str]:
    """Layers to compare, in forward order (found by a hooked dry forward of ``example_input``).

    "conv_linear": every Conv2d and Linear the forward uses (torchvision resnet18: 21 — stem
    conv, 16 block convs, 3 downsample convs, fc). "blocks": the first Conv2d, the output of
    every residual block (torchvision BasicBlock/Bottleneck) and the last Linear (resnet18: 10)."""
    if layer_set not in LAYER_SETS:
        raise MinimascopeError(f"unknown layer set {layer_set!r}; choose one of {', '.join(LAYER_SETS)}")
    modules = dict(model.named_modules())
    order = _forward_order(model, example_input)
    conv_linear = [n for n in order if isinstance(modules[n], (nn.Conv2d, nn.Linear))]
    if layer_set == "conv_linear":
        return conv_linear
    blocks = [n for n in order if isinstance(modules[n], (BasicBlock, Bottleneck))]
    if not blocks:
        raise MinimascopeError(f"layer set 'blocks' needs residual blocks, and {type(model).__name__} has none; "
                               f"use conv_linear")
    first_conv = next(n for n in conv_linear if isinstance(modules[n], nn.Conv2d))
    last_linear = [n for n in conv_linear if isinstance(modules[n], nn.Linear)][-1:]
    return [first_conv, *blocks, *last_linear]


def _batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Consecutive batches; a remainder under 4 samples joins the previous batch (unbiased HSIC
    needs 4)."""
    if batch_size < 1:
        raise MinimascopeError(f"batch size must be positive, got {batch_size}")
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 4:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _iter_activations(model: nn.Module, inputs: Tensor, layers: Sequence[str], *, batch_size: int,
                      device: str | torch.device, policy: str) -> Iterator[list[Tensor]]:
    """Per batch, the activations of ``layers`` (in that order), in eval mode without gradients."""
    model.to(device)
    with capture_activations(model, layers, policy) as store, _evaluating(model):
        for start, stop in _batch_bounds(inputs.shape[0], batch_size):
            store.clear()
            # no_grad only around the forward: a grad-mode context held across ``yield`` leaks
            # into the caller, and two interleaved generators would restore it in the wrong order.
            with torch.no_grad():
                model(inputs[start:stop].to(device))
            missing = [name for name in layers if name not in store]
            if missing:
                raise MinimascopeError(f"layer {missing[0]!r} is not used by the forward pass")
            yield [store[name] for name in layers]


def collect_activations(model: nn.Module, inputs: Tensor, layers: Sequence[str], *, batch_size: int = 500,
                        device: str | torch.device = "cpu", policy: str = "flatten",
                        progress: Progress | None = None) -> dict[str, Tensor]:
    """``name → (N, p)`` float32 activations of ``inputs`` (N, 3, H, W), already normalised as the
    model expects. The model is moved to ``device`` and run in eval mode under no_grad."""
    n = inputs.shape[0]
    _check_samples(n, n)
    out: dict[str, Tensor] = {}
    done = 0
    for batch in _iter_activations(model, inputs, layers, batch_size=batch_size, device=device, policy=policy):
        if not out:
            out = {name: torch.empty((n, a.shape[1]), dtype=torch.float32) for name, a in zip(layers, batch)}
        for name, a in zip(layers, batch):
            out[name][done:done + a.shape[0]] = a
        done += batch[0].shape[0]
        if progress:
            progress("activations", done, n)
    return out


# ---------------------------------------------------------------- whole-network comparison

@dataclass(frozen=True, eq=False)
class SimilarityMatrix:
    """One measure for every (layer of A, layer of B) pair: ``values[i, j]`` compares
    ``layers_a[i]`` with ``layers_b[j]``."""

    measure: str
    kind: str
    convention: str
    values: np.ndarray
    layers_a: tuple[str, ...]
    layers_b: tuple[str, ...]
    n_samples: int
    policy: str
    label_a: str
    label_b: str
    error_bound: np.ndarray | None = None  # bound on |value − exact value|; None when exact

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure, "kind": self.kind, "convention": self.convention,
            "n_samples": self.n_samples, "policy": self.policy,
            "label_a": self.label_a, "label_b": self.label_b,
            "layers_a": list(self.layers_a), "layers_b": list(self.layers_b),
            "values": self.values.tolist(),
            "error_bound": None if self.error_bound is None else self.error_bound.tolist(),
        }


@dataclass(frozen=True)
class _Layout:
    """Which layers are compared. When B is A (``same``) there is one set of activations, for
    the union of both layer lists, and every matrix is computed union × union, then selected."""

    la: tuple[str, ...]
    lb: tuple[str, ...]
    same: bool
    n: int
    policy: str
    label_a: str
    label_b: str

    @property
    def names_a(self) -> list[str]:
        return list(dict.fromkeys(self.la + self.lb)) if self.same else list(self.la)

    def select(self, values: np.ndarray) -> np.ndarray:
        if not self.same:
            return values
        index = {name: i for i, name in enumerate(self.names_a)}
        return values[np.ix_([index[x] for x in self.la], [index[y] for y in self.lb])]

    def matrix(self, measure: str, values: np.ndarray, extra: str = "",
               bound: np.ndarray | None = None) -> SimilarityMatrix:
        spec = MEASURES[measure]
        return SimilarityMatrix(measure, spec.kind, spec.convention + extra, self.select(values), self.la, self.lb,
                                self.n, self.policy, self.label_a, self.label_b,
                                None if bound is None else self.select(bound))


def _check_measures(measures: Sequence[str]) -> None:
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise MinimascopeError(f"unknown measure {unknown[0] if unknown else '(none given)'}; "
                               f"choose from {', '.join(MEASURES)}")


def _minibatch_matrix(batches: Iterable[tuple[list[Tensor], list[Tensor] | None]], total: int, minibatch_size: int,
                      layout: _Layout, progress: Progress | None) -> SimilarityMatrix:
    accumulator = MinibatchCKA()
    for done, (xs, ys) in enumerate(batches, 1):
        accumulator.update(xs, ys)
        if progress:
            progress("cka_minibatch", done, total)
    return layout.matrix("cka_minibatch", accumulator.value(), f"; {total} minibatches of {minibatch_size} samples")


def _cka_products(xs: Sequence[Tensor], ys: Sequence[Tensor] | None,
                  progress: Progress | None) -> tuple[Tensor, Tensor, Tensor]:
    """<K_i, L_j>, ‖K_i‖², ‖L_j‖² (float64) for centred activations, K_i = X_i X_iᵀ.

    Walks the n×n Grams in row panels of their upper triangle, one panel of every layer at a
    time, folding its Frobenius products into float64 sums: no Gram is ever held whole, and
    the triangle halves the work (a panel's off-diagonal entries stand for their mirror images
    too). ``ys=None`` compares ``xs`` with itself."""
    n = xs[0].shape[0]
    starts = range(0, n, _PANEL)
    xy = torch.zeros((len(xs), len(ys if ys is not None else xs)), dtype=torch.float64)
    xx = torch.zeros(len(xs), dtype=torch.float64)
    yy = torch.zeros(len(ys), dtype=torch.float64) if ys is not None else xx

    def panel(mats: Sequence[Tensor], start: int) -> Tensor:
        out = mats[0].new_empty((len(mats), min(_PANEL, n - start), n - start))
        for m, o in zip(mats, out):
            torch.matmul(m[start:start + _PANEL], m[start:].T, out=o)
        return out

    def folded(a: Tensor, b: Tensor) -> Tensor:
        """Σ over the panels' triangle entries of a_i·b_j: twice everything, less the diagonal block
        counted once. One panel's sum runs in the activations' dtype (float32: ~2e-6 relative,
        measured; float64 copies of 21 panels would cost more than their matmuls)."""
        diagonal = slice(0, a.shape[1])
        return (2 * (a.flatten(1) @ b.flatten(1).T) - a[:, :, diagonal].flatten(1) @ b[:, :, diagonal].flatten(1).T
                ).to(torch.float64)

    for done, start in enumerate(starts, 1):
        tx = panel(xs, start)
        if ys is None:
            xy += folded(tx, tx)
        else:
            ty = panel(ys, start)
            xy += folded(tx, ty)
            xx += folded(tx, tx).diagonal()
            yy += folded(ty, ty).diagonal()
        if progress:
            progress("cka", done, len(starts))
    if ys is None:
        xx = yy = xy.diagonal().clone()
    return xy, xx, yy


def _warn_constant(names: Sequence[str], what: str) -> None:
    if names:
        _warn(f"{', '.join(names)} {'has' if len(names) == 1 else 'have'} no variance; {what} by convention")


def compare_activations(acts_a: Mapping[str, Tensor], acts_b: Mapping[str, Tensor] | None = None, *,
                        layers_a: Sequence[str] | None = None, layers_b: Sequence[str] | None = None,
                        measures: Sequence[str] = DEFAULT_MEASURES, minibatch_size: int = 250,
                        policy: str = "flatten", label_a: str = "A", label_b: str = "B",
                        procrustes_keep: float = 0.999, seed: int = 0,
                        progress: Progress | None = None) -> list[SimilarityMatrix]:
    """Every measure for every layer pair of pre-collected (N, p) activations.

    ``acts_b=None`` compares A's layers with each other (``layers_b`` then also names layers of
    A), reusing each layer's work. The tensors are centred in place to save memory; ``policy``
    only labels the output. ``procrustes_keep`` is the variance fraction Procrustes keeps per
    layer (1.0: exact up to numerical rank, slow for wide layers); ``seed`` fixes the randomized
    decompositions; ``minibatch_size`` is the batch of ``cka_minibatch``."""
    _check_measures(measures)
    _check_keep(procrustes_keep, "procrustes_keep")
    same = acts_b is None or acts_b is acts_a
    side_b = acts_a if same else acts_b
    la = tuple(layers_a if layers_a is not None else acts_a)
    lb = tuple(layers_b if layers_b is not None else side_b)
    for names, acts, label in ((la, acts_a, label_a), (lb, side_b, label_b)):
        if not names:
            raise MinimascopeError(f"no layers to compare for {label}")
        missing = [name for name in names if name not in acts]
        if missing:
            raise MinimascopeError(f"no activations of layer {missing[0]!r} for {label}")
    n = acts_a[la[0]].shape[0]
    layout = _Layout(la, lb, same, n, policy, label_a, label_b)
    xs = [acts_a[name] for name in layout.names_a]
    ys = None if same else [side_b[name] for name in lb]
    named = list(zip(layout.names_a + ([] if same else list(lb)), xs + (ys or [])))
    for name, t in named:
        if t.ndim != 2:
            raise MinimascopeError(f"activations of {name!r} must be (samples, features), got shape {tuple(t.shape)}")
        _check_samples(n, t.shape[0])

    results: dict[str, SimilarityMatrix] = {}
    if "cka_minibatch" in measures:
        bounds = _batch_bounds(n, minibatch_size)
        batches = (([x[a:b] for x in xs], None if ys is None else [y[a:b] for y in ys]) for a, b in bounds)
        results["cka_minibatch"] = _minibatch_matrix(batches, len(bounds), minibatch_size, layout, progress)
    exact = [m for m in measures if m != "cka_minibatch"]
    for name, t in named if exact else []:
        _centre_(t, f"activations of layer {name!r}")
    if "cka" in exact:
        xy, xx, yy = _cka_products(xs, ys, progress)
        _warn_constant([name for name, v in zip(layout.names_a, xx) if v <= 0] +
                       [name for name, v in zip(lb if ys else [], yy) if v <= 0], "CKA is 0")
        values = np.array([[_cka_value(float(xy[i, j]), float(xx[i]), float(yy[j])) for j in range(xy.shape[1])]
                           for i in range(xy.shape[0])])
        results["cka"] = layout.matrix("cka", values)
    factor_measures = [m for m in exact if m != "cka"]
    if factor_measures:
        needs = {"svcca": SVCCA_KEEP, "mean_cca": 1.0, "procrustes": procrustes_keep}
        keep = max(needs[m] for m in factor_measures)  # each measure then takes its own prefix
        # Widest first, so that the pool's workers finish together.
        order = sorted(range(len(named)), key=lambda i: -named[i][1].shape[1])
        factors = dict(zip(order, _parallel_map(lambda i: _layer_factor(*named[i], keep, seed + i), order,
                                                progress and (lambda done: progress("factors", done, len(order))))))
        short = [name for i, (name, _) in enumerate(named) if not factors[i].complete]
        if short:
            _warn(f"{', '.join(short)}: the {EXACT_EIGEN_LIMIT} leading directions explain less than {keep:.4g} of "
                  f"the variance; the measures use those directions (Procrustes' error_bound accounts for it)")
        fa = [factors[i] for i in range(len(xs))]
        fb = None if same else [factors[len(xs) + j] for j in range(len(lb))]
        names_b = layout.names_a if same else list(lb)
        for m, (values, bound) in _pair_matrices(factor_measures, fa, fb, layout.names_a, names_b, n, needs,
                                                  progress).items():
            extra = "" if bound is None else (f"; each layer truncated to the directions explaining "
                                              f"{needs[m]:.4g} of its variance; error_bound bounds |value - exact|")
            results[m] = layout.matrix(m, values, extra, bound)
    return [results[m] for m in measures]


def _pair_values(fx: _Factor, fy: _Factor, kept: Mapping[str, tuple[int, int]]) -> dict[str, tuple[float, float]]:
    """(value, error bound) of every measure in ``kept`` (measure → directions kept per side)."""
    c = fx.u.T @ fy.u
    out = {}
    for m, (kx, ky) in kept.items():
        if m == "procrustes":
            out[m] = _procrustes_value(c, fx, fy, kx, ky)
        else:
            out[m] = (_cca_value(c[:kx, :ky]), 0.0)
    return out


def _pair_matrices(measures: Sequence[str], fa: list[_Factor], fb: list[_Factor] | None, names_a: list[str],
                   names_b: list[str], n: int, needs: Mapping[str, float],
                   progress: Progress | None) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """SVCCA / mean CCA / Procrustes for every factor pair (``fb=None``: A with itself, each
    unordered pair once, a layer with itself exactly): one U_aᵀU_b product per pair and small
    SVDs of its leading blocks, pairs spread over single-threaded workers."""
    same = fb is None
    fb = fa if fb is None else fb
    cca_measures = [m for m in measures if m != "procrustes"]
    kept_a = [{m: f.prefix(needs[m]) for m in measures} for f in fa]
    kept_b = [{m: f.prefix(needs[m]) for m in measures} for f in fb]
    for m in cca_measures:
        for names, kept in ((names_a, kept_a), (names_b, kept_b)):
            for name, k in zip(names, kept):
                _check_cca_rank(k[m], n, f"{m} of layer {name!r}")
    values = {m: np.zeros((len(fa), len(fb))) for m in measures}
    bound = np.zeros((len(fa), len(fb)))
    for i, fx in enumerate(fa):  # a layer against itself (same activations) is known exactly
        if same:
            for m in measures:
                empty = fx.total == 0.0
                values[m][i, i] = (2.0 if empty else 0.0) if m == "procrustes" else (0.0 if empty else 1.0)
    pairs = [(i, j) for i in range(len(fa)) for j in range(len(fb)) if not same or j > i]
    pairs.sort(key=lambda ij: -fa[ij[0]].u.shape[1] * fb[ij[1]].u.shape[1])  # biggest first: balanced workers
    results = _parallel_map(lambda ij: _pair_values(fa[ij[0]], fb[ij[1]], {m: (kept_a[ij[0]][m], kept_b[ij[1]][m])
                                                                          for m in measures}),
                            pairs, progress and (lambda done: progress("pairs", done, len(pairs))))
    for (i, j), result in zip(pairs, results):
        for m, (value, _error) in result.items():
            values[m][i, j] = value
            if same:
                values[m][j, i] = value
        bound[i, j] = result.get("procrustes", (0.0, 0.0))[1]
        if same:
            bound[j, i] = bound[i, j]
    constant = list(dict.fromkeys(name for names, fs in ((names_a, fa), (names_b, fb))
                                  for name, f in zip(names, fs) if f.total == 0.0))
    for m in cca_measures:
        _warn_constant(constant, f"{m} is 0")
        forced = sum(kept_a[i][m] > 0 and kept_b[j][m] > 0 and kept_a[i][m] + kept_b[j][m] > n - 1
                     for i, j in pairs)
        if forced:
            _warn(f"{m}: in {forced} layer pairs the sides keep more than n - 1 = {n - 1} directions "
                  f"together, so some canonical correlations are 1 by construction")
    if "procrustes" in measures:
        _warn_constant(constant, "Procrustes distance is 2")
    return {m: (values[m], bound if m == "procrustes" else None) for m in measures}


def _num_classes(model: nn.Module) -> int | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _check_activation_memory(networks: Sequence[tuple[nn.Module, Tensor, Sequence[str]]], *,
                             device: str | torch.device, policy: str) -> None:
    """Refuse, before any long forward pass, activations that cannot fit in memory (e.g. the
    flattened maps of resnet18-cifar, 8k–65k wide, ~25 GB per network on 10,000 images).

    Held float32 activations plus the per-layer work on them need about twice their size."""
    held = 0
    for model, inputs, layers in networks:
        widths = collect_activations(model, inputs[:1], layers, batch_size=1, device=device, policy=policy)
        held += 4 * inputs.shape[0] * sum(t.shape[1] for t in widths.values())
    available = physical_memory_bytes()
    if 2 * held > 0.8 * available:
        raise MinimascopeError(
            f"the activations of {inputs.shape[0]} samples need about {2 * held / 2**30:.0f} GiB to compare, "
            f"more than this machine's {available / 2**30:.0f} GiB: use policy spatial_mean, fewer samples or "
            f"fewer layers")


def similarity_matrices(model_a: nn.Module, inputs_a: Tensor, model_b: nn.Module, inputs_b: Tensor, *,
                        layers_a: Sequence[str] | None = None, layers_b: Sequence[str] | None = None,
                        measures: Sequence[str] = DEFAULT_MEASURES, batch_size: int = 500,
                        minibatch_size: int = 250, device: str | torch.device = "cpu", policy: str = "flatten",
                        label_a: str = "A", label_b: str = "B", procrustes_keep: float = 0.999, seed: int = 0,
                        progress: Progress | None = None) -> list[SimilarityMatrix]:
    """Compare every layer of ``model_a`` with every layer of ``model_b`` on the same images.

    ``inputs_a``/``inputs_b``: (N, 3, H, W), the same images each normalised as its network
    expects. Layers default to :func:`default_layers` ("conv_linear"). The models are moved to
    ``device``. Passing the same model and inputs twice computes activations and per-layer work
    once. When only ``cka_minibatch`` is asked for, activations stream in minibatches of
    ``minibatch_size`` and are never held whole; otherwise they are collected in batches of
    ``batch_size`` (flatten: ~2 GB per ResNet18 on 10,000 images) and handed to
    :func:`compare_activations`."""
    _check_measures(measures)
    _check_keep(procrustes_keep, "procrustes_keep")
    _check_samples(inputs_a.shape[0], inputs_b.shape[0])
    classes_a, classes_b = _num_classes(model_a), _num_classes(model_b)
    if classes_a is not None and classes_b is not None and classes_a != classes_b:
        raise MinimascopeError(f"{label_a} has {classes_a} output classes but {label_b} has {classes_b}; "
                               f"compare networks trained on the same task")
    model_a.to(device)
    model_b.to(device)
    la = tuple(layers_a) if layers_a is not None else tuple(default_layers(model_a, inputs_a[:1].to(device)))
    lb = tuple(layers_b) if layers_b is not None else tuple(default_layers(model_b, inputs_b[:1].to(device)))
    check_layer_names(model_a, la)
    check_layer_names(model_b, lb)
    same = model_a is model_b and (inputs_a is inputs_b or torch.equal(inputs_a, inputs_b))
    layout = _Layout(la, lb, same, inputs_a.shape[0], policy, label_a, label_b)
    if list(measures) == ["cka_minibatch"]:
        stream = dict(batch_size=minibatch_size, device=device, policy=policy)
        total = len(_batch_bounds(inputs_a.shape[0], minibatch_size))
        with closing(_iter_activations(model_a, inputs_a, layout.names_a, **stream)) as batches_a, \
                closing(_iter_activations(model_b, inputs_b, lb, **stream)) as batches_b:
            batches = zip(batches_a, repeat(None) if same else batches_b)
            return [_minibatch_matrix(batches, total, minibatch_size, layout, progress)]
    _check_activation_memory([(model_a, inputs_a, layout.names_a)] + ([] if same else [(model_b, inputs_b, lb)]),
                             device=device, policy=policy)
    acts_a = collect_activations(model_a, inputs_a, layout.names_a, batch_size=batch_size, device=device,
                                 policy=policy, progress=progress)
    acts_b = None if same else collect_activations(model_b, inputs_b, lb, batch_size=batch_size, device=device,
                                                   policy=policy, progress=progress)
    return compare_activations(acts_a, acts_b, layers_a=la, layers_b=lb, measures=measures,
                               minibatch_size=minibatch_size, policy=policy, label_a=label_a, label_b=label_b,
                               procrustes_keep=procrustes_keep, seed=seed, progress=progress)
