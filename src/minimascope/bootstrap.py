"""Uncertainty of CKA "on these networks": an interval from resampling images, and a shuffled-image baseline.

For each diagonal layer pair (layer i of A with the same-named layer of B) and each of ``cka`` and
``cka_debiased`` asked for:

* the interval comes from subsampling images WITHOUT replacement: B subsamples of m = n/2 images,
  the same images for every layer. Resampling with replacement would put duplicate images in a
  sample, and a duplicate row biases the unbiased HSIC (its zero-diagonal Gram no longer excludes
  an image paired with itself). The subsample values' deviations from their mean are rescaled by
  sqrt(m / (n − m)), the delete-d jackknife factor (Shao & Wu 1989; 1 at m = n/2) that turns the
  spread of an m-image estimate drawn from n images into that of the n-image estimate, and the basic
  interval [v − c·q_hi, v − c·q_lo] is formed around the full-sample value v. Centring on the
  subsamples' mean, not on v, keeps plain CKA's larger bias on m images out of the interval: the
  interval is the sampling spread over images; the bias shows in the baseline.
* the baseline is the same measure with B's images permuted (rows of B's layer, so nothing is
  shared), the mean over a few permutations on all n images: plain CKA's baseline is its bias,
  debiased CKA's is about 0.

Everything works on the n×n centred Gram matrices of one layer pair at a time (a subsample's
centred Gram is the re-centred submatrix), so activations are read once per layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_json, read_result_fields
from minimascope.similarity.measures import _cka_value, debiased_products

BOOTSTRAP_JSON = "bootstrap.json"
BOOTSTRAP_FORMAT = "minimascope-bootstrap-v1"
BOOTSTRAP_MEASURES = ("cka", "cka_debiased")
LABEL = "on these networks"
LEVEL = 0.95
PERMUTATIONS = 5


@dataclass(frozen=True)
class BootstrapResult:
    """Per measure, per layer: the full-sample value, the interval and the shuffled-image baseline."""

    layers: tuple[str, ...]
    n: int
    subsample: int
    resamples: int
    level: float
    method: str
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # measure → value/low/high/baseline

    def to_dict(self) -> dict[str, Any]:
        return {"format": BOOTSTRAP_FORMAT, "label": LABEL, "layers": list(self.layers), "n": self.n,
                "subsample": self.subsample, "resamples": self.resamples, "level": self.level,
                "method": self.method, "measures": self.values}


def centred_gram(x: Tensor, device: str | torch.device = "cpu") -> Tensor:
    """X Xᵀ (float64) of the column-centred (n, p) activations; the product runs in float32 on ``device``."""
    xc = (x - x.mean(0, dtype=torch.float64).to(x.dtype)).to(device, torch.float32)
    return (xc @ xc.T).to(torch.float64)


def recentre(grams: Tensor) -> Tensor:
    """H K H for (…, m, m) symmetric Grams of any rows: the Grams of those rows after centring them again."""
    row = grams.mean(-1, keepdim=True)
    return grams - row - row.transpose(-1, -2) + row.mean(-2, keepdim=True)


def gram_ckas(kc: Tensor, lc: Tensor, debiased: bool) -> np.ndarray:
    """Linear CKA of each of (c, m, m) pairs of centred Grams, as :func:`minimascope.similarity.linear_cka`
    computes it from the activations."""
    xy, xx, yy = (kc * lc).sum((1, 2)), kc.square().sum((1, 2)), lc.square().sum((1, 2))
    if debiased:  # pairs on the diagonal of debiased_products' every-pair matrix; the rest is unused
        xy, xx, yy = debiased_products(torch.diag(xy), xx, yy, kc.diagonal(dim1=1, dim2=2),
                                       lc.diagonal(dim1=1, dim2=2), kc.shape[-1])
        xy = xy.diagonal()
    return np.array([_cka_value(float(a), float(b), float(c), clip=not debiased) for a, b, c in zip(xy, xx, yy)])


def _resampled_ckas(kc: Tensor, lc: Tensor, rows_k: np.ndarray, rows_l: np.ndarray,
                    measures: Sequence[str]) -> dict[str, np.ndarray]:
    """measure → CKA on each row set (rows_k[i] of A's images with rows_l[i] of B's), in chunks of about
    2**25 Gram entries so that 10,000 images stay within memory."""
    chunk = max(1, 2**25 // rows_k.shape[1] ** 2)
    out: dict[str, list[np.ndarray]] = {m: [] for m in measures}
    for start in range(0, len(rows_k), chunk):
        index_k, index_l = (torch.from_numpy(r[start:start + chunk]).to(kc.device) for r in (rows_k, rows_l))
        sub_k = recentre(kc[index_k[:, :, None], index_k[:, None, :]])
        sub_l = recentre(lc[index_l[:, :, None], index_l[:, None, :]])
        for measure in measures:
            out[measure].append(gram_ckas(sub_k, sub_l, measure == "cka_debiased"))
    return {m: np.concatenate(v) for m, v in out.items()}


def subsample_interval(value: float, sub_values: np.ndarray, n: int, m: int, level: float) -> tuple[float, float]:
    """Basic interval around ``value`` from m-of-n subsample values (see the module docstring)."""
    deviations = (sub_values - sub_values.mean()) * math.sqrt(m / (n - m))
    q_low, q_high = np.quantile(deviations, [(1 - level) / 2, (1 + level) / 2])
    return value - float(q_high), value - float(q_low)


def layer_bootstrap(kc: Tensor, lc: Tensor, measures: Sequence[str], subsets: np.ndarray,
                    permutations: np.ndarray, level: float) -> dict[str, tuple[float, float, float, float]]:
    """measure → (value, low, high, baseline) of one layer pair, from its two centred n×n Grams."""
    n, m = kc.shape[0], subsets.shape[1]
    subsampled = _resampled_ckas(kc, lc, subsets, subsets, measures)
    shuffled = _resampled_ckas(kc, lc, np.tile(np.arange(n), (len(permutations), 1)), permutations, measures)
    out = {}
    for measure in measures:
        value = float(gram_ckas(kc[None], lc[None], measure == "cka_debiased")[0])
        out[measure] = (value, *subsample_interval(value, subsampled[measure], n, m, level),
                        float(shuffled[measure].mean()))
    return out


def bootstrap_layers(acts_a: Mapping[str, Tensor], acts_b: Mapping[str, Tensor], layers: Sequence[str],
                     measures: Sequence[str], resamples: int, *, seed: int = 0, level: float = LEVEL,
                     permutations: int = PERMUTATIONS, device: str | torch.device = "cpu") -> BootstrapResult:
    """The interval and baseline of every layer in ``layers`` (present in both) for the CKA ``measures``."""
    measures = [m for m in measures if m in BOOTSTRAP_MEASURES]
    if not measures or not layers or resamples < 2:
        raise MinimascopeError("bootstrap needs cka or cka_debiased, a layer name shared by both networks "
                               f"and at least 2 resamples (got {resamples})")
    n = acts_a[layers[0]].shape[0]
    m = n // 2
    if m < 4:
        raise MinimascopeError(f"bootstrap needs at least 8 images, got {n}")
    rng = np.random.default_rng(seed)  # one draw of images for every layer, so layers are comparable
    subsets = np.stack([rng.choice(n, m, replace=False) for _ in range(resamples)])
    shuffles = np.stack([rng.permutation(n) for _ in range(permutations)])
    values: dict[str, dict[str, list[float]]] = {k: {"value": [], "low": [], "high": [], "baseline": []}
                                                 for k in measures}
    for name in layers:
        kc = centred_gram(acts_a[name], device)
        lc = kc if acts_b[name] is acts_a[name] else centred_gram(acts_b[name], device)
        for measure, row in layer_bootstrap(kc, lc, measures, subsets, shuffles, level).items():
            for key, v in zip(("value", "low", "high", "baseline"), row):
                values[measure][key].append(v)
    method = (f"subsampling without replacement: {resamples} subsamples of m = {m} of n = {n} images (the same for "
              f"every layer), deviations from their mean scaled by sqrt(m/(n-m)) (delete-d jackknife), basic "
              f"{level:.0%} interval around the full-sample value; baseline: mean over {permutations} permutations "
              f"of B's images")
    return BootstrapResult(tuple(layers), n, m, resamples, level, method, values)


def write_bootstrap(result: BootstrapResult, out_dir: str | Path) -> Path:
    path = Path(out_dir) / BOOTSTRAP_JSON
    atomic_write_json(path, result.to_dict())
    return path


def read_bootstrap(path: str | Path) -> BootstrapResult:
    """A ``bootstrap.json`` (or the folder holding one) back, every field checked; a foreign or damaged file
    is one MinimascopeError naming it."""
    fields = read_result_fields(path, BOOTSTRAP_FORMAT, BOOTSTRAP_JSON, "bootstrap result")
    layers = fields.texts("layers")
    measures = fields.child("measures")
    if not layers or not measures.keys() or not set(measures.keys()) <= set(BOOTSTRAP_MEASURES):
        fields.fail("measures", f"some of {', '.join(BOOTSTRAP_MEASURES)} for at least one layer", measures.keys())
    values: dict[str, dict[str, list[float]]] = {}
    for measure in measures.keys():
        columns = measures.child(measure)
        if set(columns.keys()) != {"value", "low", "high", "baseline"}:
            columns.fail("", "value, low, high and baseline", columns.keys())
        values[measure] = {key: columns.numbers(key, length=len(layers)) for key in columns.keys()}
    level = fields.number("level")
    if not 0 < level < 1:
        fields.fail("level", "in (0, 1)", level)
    return BootstrapResult(tuple(layers), fields.integer("n", minimum=8), fields.integer("subsample", minimum=4),
                           fields.integer("resamples", minimum=2), level, fields.text("method"), values)
