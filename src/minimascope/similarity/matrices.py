"""Whole-network comparison: every measure for every (layer of A, layer of B) pair as a
:class:`SimilarityMatrix`, from two models (:func:`similarity_matrices`) or from collected
activations (:func:`compare_activations`); the package docstring says how the work is planned."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from minimascope.env import physical_memory_bytes
from minimascope.errors import MinimascopeError
from minimascope.io import read_checked_json
from minimascope.layers import comparable_layers as default_layers
from minimascope.similarity.activations import (
    Progress,
    _batch_bounds,
    _iter_activations,
    check_layer_names,
    collect_activations,
)
from minimascope.similarity.factors import _PANEL, EXACT_EIGEN_LIMIT, _Factor, _layer_factor, _parallel_map
from minimascope.similarity.measures import (
    DEFAULT_MEASURES,
    MEASURES,
    SVCCA_KEEP,
    _cca_value,
    _centre_,
    _check_cca_rank,
    _check_keep,
    _check_samples,
    _cka_value,
    _procrustes_value,
    _warn,
    debiased_products,
)
from minimascope.similarity.minibatch import MinibatchCKA

CKA_MEASURES = ("cka", "cka_debiased")  # from the Gram products; the others from per-layer factors


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
    # SVCCA / mean CCA: True where the two sides keep more than n − 1 directions together, so some
    # canonical correlations are 1 by construction and the value says little about the layers.
    by_construction: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure, "kind": self.kind, "convention": self.convention,
            "n_samples": self.n_samples, "policy": self.policy,
            "label_a": self.label_a, "label_b": self.label_b,
            "layers_a": list(self.layers_a), "layers_b": list(self.layers_b),
            "values": self.values.tolist(),
            "error_bound": None if self.error_bound is None else self.error_bound.tolist(),
            "by_construction": None if self.by_construction is None else self.by_construction.tolist(),
        }


def read_similarity_matrix(path: str | Path) -> SimilarityMatrix:
    """A ``<measure>.json`` as ``compare`` writes it (:meth:`SimilarityMatrix.to_dict`) back, every field
    checked (types, one finite value per layer pair); a damaged file is one MinimascopeError naming it."""
    fields = read_checked_json(path, "similarity matrix")
    absent = [key for key in ("measure", "layers_a", "layers_b", "values") if key not in fields.record]
    if absent:  # it has no format to name it: what it holds says what it is
        raise MinimascopeError(f"{path} is not a similarity matrix (it has no {absent[0]})")
    measure = fields.text("measure")
    if measure not in MEASURES:
        fields.fail("measure", f"one of {', '.join(MEASURES)}", measure)
    layers_a, layers_b = fields.texts("layers_a"), fields.texts("layers_b")
    if not layers_a or not layers_b:
        fields.fail("layers_a" if not layers_a else "layers_b", "a non-empty list of layer names", [])
    shape = len(layers_a), len(layers_b)
    bound, forced = (fields.record.get(key) for key in ("error_bound", "by_construction"))

    def optional(key: str, default: str) -> str:
        return fields.text(key) if key in fields.record else default

    return SimilarityMatrix(
        measure, fields.text("kind"), optional("convention", ""), np.array(fields.matrix("values", *shape)),
        tuple(layers_a), tuple(layers_b), fields.integer("n_samples", minimum=1), optional("policy", ""),
        optional("label_a", "A"), optional("label_b", "B"),
        None if bound is None else np.array(fields.matrix("error_bound", *shape)),
        None if forced is None else np.array(fields.matrix("by_construction", *shape, of=bool)))


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

    def matrix(self, measure: str, values: np.ndarray, extra: str = "", bound: np.ndarray | None = None,
               by_construction: np.ndarray | None = None) -> SimilarityMatrix:
        spec = MEASURES[measure]
        return SimilarityMatrix(measure, spec.kind, spec.convention + extra, self.select(values), self.la, self.lb,
                                self.n, self.policy, self.label_a, self.label_b,
                                None if bound is None else self.select(bound),
                                None if by_construction is None else self.select(by_construction))


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
                  progress: Progress | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """<K_i, L_j>, ‖K_i‖², ‖L_j‖² and the diagonals of K_i and L_j (layers × n, what debiased CKA
    also needs; float64) for centred activations, K_i = X_i X_iᵀ.

    Walks the n×n Grams in row panels of their upper triangle, one panel of every layer at a
    time, folding its Frobenius products into float64 sums: no Gram is ever held whole, and
    the triangle halves the work (a panel's off-diagonal entries stand for their mirror images
    too). ``ys=None`` compares ``xs`` with itself."""
    n = xs[0].shape[0]
    starts = range(0, n, _PANEL)
    xy = torch.zeros((len(xs), len(ys if ys is not None else xs)), dtype=torch.float64)
    xx = torch.zeros(len(xs), dtype=torch.float64)
    yy = torch.zeros(len(ys), dtype=torch.float64) if ys is not None else xx
    rows_x = torch.zeros((len(xs), n), dtype=torch.float64)
    rows_y = torch.zeros((len(ys), n), dtype=torch.float64) if ys is not None else rows_x

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
        diagonal = slice(start, start + tx.shape[1])  # a panel's first columns hold its rows' own products
        rows_x[:, diagonal] = tx.diagonal(dim1=1, dim2=2)
        if ys is None:
            xy += folded(tx, tx)
        else:
            ty = panel(ys, start)
            rows_y[:, diagonal] = ty.diagonal(dim1=1, dim2=2)
            xy += folded(tx, ty)
            xx += folded(tx, tx).diagonal()
            yy += folded(ty, ty).diagonal()
        if progress:
            progress("cka", done, len(starts))
    if ys is None:
        xx = yy = xy.diagonal().clone()
    return xy, xx, yy, rows_x, rows_y


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
    cka_measures = [m for m in exact if m in CKA_MEASURES]
    if cka_measures:
        products = _cka_products(xs, ys, progress)
        _warn_constant([name for name, v in zip(layout.names_a, products[1]) if v <= 0] +
                       [name for name, v in zip(lb if ys else [], products[2]) if v <= 0], "CKA is 0")
        for measure in cka_measures:
            xy, xx, yy = products[:3] if measure == "cka" else debiased_products(*products, n)
            results[measure] = layout.matrix(measure, np.array(
                [[_cka_value(float(xy[i, j]), float(xx[i]), float(yy[j]), clip=measure == "cka")
                  for j in range(xy.shape[1])] for i in range(xy.shape[0])]))
    factor_measures = [m for m in exact if m not in CKA_MEASURES]
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
        for m, (values, bound, forced) in _pair_matrices(factor_measures, fa, fb, layout.names_a, names_b, n,
                                                          needs, progress).items():
            extra = "" if bound is None else (f"; each layer truncated to the directions explaining "
                                              f"{needs[m]:.4g} of its variance; error_bound bounds |value - exact|")
            results[m] = layout.matrix(m, values, extra, bound, forced)
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
                   progress: Progress | None) -> dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """SVCCA / mean CCA / Procrustes for every factor pair (``fb=None``: A with itself, each
    unordered pair once, a layer with itself exactly): one U_aᵀU_b product per pair and small
    SVDs of its leading blocks, pairs spread over single-threaded workers. Per measure: values,
    Procrustes' error bound, and the canonical-correlation cells that are partly 1 by construction."""
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
    forced = {}
    for m in cca_measures:
        _warn_constant(constant, f"{m} is 0")
        forced[m] = np.zeros((len(fa), len(fb)), dtype=bool)
        for i, j in pairs:
            forced[m][i, j] = kept_a[i][m] > 0 and kept_b[j][m] > 0 and kept_a[i][m] + kept_b[j][m] > n - 1
            if same:
                forced[m][j, i] = forced[m][i, j]
        if forced[m].any():
            count = sum(forced[m][i, j] for i, j in pairs)
            _warn(f"{m}: in {count} layer pairs the sides keep more than n - 1 = {n - 1} directions "
                  f"together, so some canonical correlations are 1 by construction")
    if "procrustes" in measures:
        _warn_constant(constant, "Procrustes distance is 2")
    return {m: (values[m], bound if m == "procrustes" else None, forced.get(m)) for m in measures}


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

    ``inputs_a``/``inputs_b``: (N, C, H, W), the same images each normalised as its network
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
