"""Minibatch linear CKA (Nguyen et al. 2021) from unbiased HSIC, every layer pair at once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from minimascope.errors import MinimascopeError
from minimascope.similarity.measures import _centre_, _warn


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
