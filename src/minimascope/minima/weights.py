"""Statistics of a network's weight matrices, layer by layer.

Every Linear weight (out × in) and Conv2d kernel (out × in × kh × kw, reshaped to
out × (in·kh·kw), the matrix the convolution applies to each input patch) is one matrix W.
Per layer, in float64:

* ``frobenius_norm`` ‖W‖_F;
* ``distance_from_init`` ‖W − W₀‖_F and ``relative_distance_from_init`` ‖W − W₀‖_F / ‖W₀‖_F,
  when the run's initial weights W₀ are given (NaN relative distance when ‖W₀‖_F = 0);
* ``effective_rank`` (Roy & Vetterli 2007): exp of the Shannon entropy of the singular values
  normalised to sum 1; between 1 and rank(W), n for an n × n orthogonal matrix;
* ``stable_rank`` ‖W‖²_F / σ²_max, at most rank(W);
* ``small_weight_share``: the share of entries with |w| < ``threshold`` (recorded with the result);
* the singular values, descending.

Singular values below σ_max · max(m, n) · ε, ε the machine epsilon of the stored weights' dtype
(numpy's ``matrix_rank`` tolerance), are rounding noise and are set to 0: without that, a float32
rank-1 matrix would have an effective rank of 1.000002, since −p log p is steep near p = 0. The
zero matrix has rank 0, and both ranks are defined as 0 for it.

Layers are named by module (``layer1.0.conv1`` for the key ``layer1.0.conv1.weight``). Only
``.weight`` tensors with 2 (linear) or 4 (conv) dimensions count, so BatchNorm's 1-D weights and
every bias are left out.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_result_fields

WEIGHTS_FORMAT = "minimascope-weights-v1"
WEIGHTS_JSON = "weights.json"
WEIGHTS_CSV = "weights.csv"
SPECTRA_PNG = "spectra.png"
WEIGHTS_FILES = (WEIGHTS_JSON, WEIGHTS_CSV, SPECTRA_PNG)  # what an output folder of weights holds
DEFAULT_THRESHOLD = 1e-3
_CSV_COLUMNS = ("layer", "shape", "rows", "cols", "frobenius_norm", "distance_from_init",
                "relative_distance_from_init", "effective_rank", "stable_rank", "small_weight_share",
                "sigma_max")


@dataclass(frozen=True)
class LayerStatistics:
    layer: str
    shape: tuple[int, ...]  # of the weight tensor as stored; the matrix is shape[0] × prod(shape[1:])
    frobenius_norm: float
    distance_from_init: float | None  # None when no initial weights were given
    relative_distance_from_init: float | None
    effective_rank: float
    stable_rank: float
    small_weight_share: float
    singular_values: tuple[float, ...]  # descending


@dataclass(frozen=True)
class WeightStatistics:
    label: str  # which network, for titles
    threshold: float  # |w| below this counts as small
    has_initial: bool
    layers: tuple[LayerStatistics, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"format": WEIGHTS_FORMAT, "label": self.label, "threshold": self.threshold,
                "has_initial": self.has_initial,
                "layers": [_json_safe({**asdict(layer), "shape": list(layer.shape),
                                       "singular_values": list(layer.singular_values)}) for layer in self.layers]}


# ----------------------------------------------------------------------------- the math


def weight_matrix(weight: Tensor) -> Tensor:
    """A linear weight as it is, a conv kernel (out, in, kh, kw) as out × (in·kh·kw): the matrix the
    convolution applies to each input patch."""
    if weight.ndim not in (2, 4):
        raise MinimascopeError(f"a weight matrix needs a 2-D (linear) or 4-D (conv) tensor, not {weight.ndim}-D")
    return weight.detach().reshape(weight.shape[0], -1)


def _check_matrix(matrix: Tensor) -> Tensor:
    if matrix.ndim != 2:
        raise MinimascopeError(f"expected a matrix, got a {matrix.ndim}-D tensor")
    if not torch.isfinite(matrix).all():
        raise MinimascopeError("the matrix holds NaN or infinite values")
    return matrix.detach()


def singular_values(matrix: Tensor) -> Tensor:
    """Singular values of a matrix in float64, descending, with those below the numerical-rank
    tolerance of its dtype set to 0 (see the module docstring)."""
    matrix = _check_matrix(matrix)
    eps = torch.finfo(matrix.dtype).eps if matrix.dtype.is_floating_point else torch.finfo(torch.float64).eps
    wide = matrix.to(torch.float64)
    if wide.shape[1] > wide.shape[0]:
        wide = wide.T
    if wide.shape[0] >= 2 * wide.shape[1]:
        # A tall matrix and the square R of its QR share their singular values; QR first is
        # backward stable and about twice as fast as an SVD of a 4608 × 512 conv matrix.
        wide = torch.linalg.qr(wide, mode="r")[1]
    values = torch.linalg.svdvals(wide)
    if values.numel():
        values[values < values[0] * max(matrix.shape) * eps] = 0.0
    return values


def effective_rank_of_spectrum(singular_values: Tensor) -> float:
    """exp(H(p)), p = σ / Σσ, with 0·log 0 = 0; 0 for an all-zero spectrum."""
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    p = singular_values[singular_values > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def stable_rank_of_spectrum(singular_values: Tensor) -> float:
    """Σσ² / σ²_max (= ‖W‖²_F / ‖W‖²_2); 0 for an all-zero spectrum."""
    top = singular_values.max()
    if top <= 0:
        return 0.0
    return float((singular_values / top).square().sum())


def effective_rank(matrix: Tensor) -> float:
    """Roy & Vetterli's effective rank of a matrix (see :func:`effective_rank_of_spectrum`)."""
    return effective_rank_of_spectrum(singular_values(matrix))


def stable_rank(matrix: Tensor) -> float:
    """‖W‖²_F / σ²_max of a matrix; 0 for the zero matrix."""
    return stable_rank_of_spectrum(singular_values(matrix))


def small_weight_share(weight: Tensor, threshold: float = DEFAULT_THRESHOLD) -> float:
    """The share of entries with |w| strictly below ``threshold``."""
    if weight.numel() == 0:
        raise MinimascopeError("cannot take the share of small weights of an empty tensor")
    return float((weight.detach().abs() < threshold).sum()) / weight.numel()


def weight_layers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Module name → weight tensor, for every 2-D or 4-D ``.weight`` of a state dict, in its order."""
    return {key.removesuffix(".weight"): value for key, value in state.items()
            if key.endswith(".weight") and isinstance(value, Tensor) and value.ndim in (2, 4)}


def _one_layer(name: str, weight: Tensor, initial: Tensor | None, threshold: float) -> LayerStatistics:
    spectrum = singular_values(weight_matrix(weight))
    matrix = weight_matrix(weight).to(torch.float64)
    distance = relative = None
    if initial is not None:
        if initial.shape != weight.shape:
            raise MinimascopeError(f"layer {name}: initial weights have shape {tuple(initial.shape)}, "
                                   f"trained ones {tuple(weight.shape)}")
        start = _check_matrix(weight_matrix(initial)).to(torch.float64)
        distance = float(torch.linalg.matrix_norm(matrix - start))
        start_norm = float(torch.linalg.matrix_norm(start))
        relative = distance / start_norm if start_norm > 0 else math.nan
    return LayerStatistics(
        layer=name, shape=tuple(weight.shape), frobenius_norm=float(torch.linalg.matrix_norm(matrix)),
        distance_from_init=distance, relative_distance_from_init=relative,
        effective_rank=effective_rank_of_spectrum(spectrum), stable_rank=stable_rank_of_spectrum(spectrum),
        small_weight_share=small_weight_share(weight, threshold), singular_values=tuple(spectrum.tolist()))


def layer_statistics(state: Mapping[str, Tensor], initial_state: Mapping[str, Tensor] | None = None, *,
                     threshold: float = DEFAULT_THRESHOLD, label: str = "") -> WeightStatistics:
    """Statistics of every conv/linear layer of ``state`` (a state dict); distances from
    ``initial_state`` (the same network's weights before training) when given."""
    if not threshold > 0 or not math.isfinite(threshold):
        raise MinimascopeError(f"the small-weight threshold must be a positive number, not {threshold}")
    layers = weight_layers(state)
    if not layers:
        raise MinimascopeError("the state dict has no 2-D or 4-D .weight tensor (no conv or linear layer)")
    initial = None
    if initial_state is not None:
        initial = weight_layers(initial_state)
        missing = [name for name in layers if name not in initial]
        if missing:
            raise MinimascopeError(f"the initial weights lack {len(missing)} of the layers, the first {missing[0]}")
    return WeightStatistics(
        label=label, threshold=threshold, has_initial=initial is not None,
        layers=tuple(_one_layer(name, weight, None if initial is None else initial[name], threshold)
                     for name, weight in layers.items()))


# ----------------------------------------------------------------------------- files


def _json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """NaN is not JSON: write it as null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}


def _csv_text(stats: WeightStatistics) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for layer in stats.layers:
        rows = layer.shape[0]
        cols = math.prod(layer.shape[1:])
        writer.writerow([layer.layer, "x".join(map(str, layer.shape)), rows, cols,
                         *("" if v is None or math.isnan(v) else repr(v) for v in (
                             layer.frobenius_norm, layer.distance_from_init, layer.relative_distance_from_init,
                             layer.effective_rank, layer.stable_rank, layer.small_weight_share,
                             layer.singular_values[0]))])
    return buffer.getvalue()


def spectra_figure(stats: WeightStatistics) -> Figure:
    """Left: singular values per layer against their index; right: σ / σ_max against index / count,
    so layers of different widths compare by shape. Both log y; colour runs from first to last layer."""
    figure = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(figure)
    raw, relative = figure.subplots(1, 2)
    colours = _layer_colours(len(stats.layers))
    for layer, colour in zip(stats.layers, colours):
        values = np.asarray(layer.singular_values)
        positive = values > 0  # log axes cannot show exact zeros
        index = np.arange(1, len(values) + 1)
        raw.plot(index[positive], values[positive], color=colour, linewidth=1, label=layer.layer)
        if values[0] > 0:
            relative.plot(index[positive] / len(values), values[positive] / values[0], color=colour, linewidth=1)
    raw.set_xlabel("index of singular value")
    raw.set_ylabel("singular value")
    relative.set_xlabel("index / number of singular values")
    relative.set_ylabel("σ / σ_max")
    for axes in (raw, relative):
        axes.set_yscale("log")
        axes.grid(True, which="both", alpha=0.3)
    raw.set_title("singular values per layer", fontsize=10)
    relative.set_title("normalised spectra", fontsize=10)
    figure.legend(loc="outside right center", fontsize=6, ncols=1 if len(stats.layers) <= 30 else 2)
    if stats.label:
        figure.suptitle(f"weight spectra of {stats.label}", fontsize=11)
    return figure


def _layer_colours(count: int) -> list[tuple[float, ...]]:
    cmap = colormaps["viridis"]
    return [cmap(i / max(count - 1, 1)) for i in range(count)]


def write_weight_statistics(stats: WeightStatistics, out_dir: str | Path, inputs: Sequence[str] = ()) -> list[Path]:
    """``weights.json`` (everything, format ``minimascope-weights-v1``, with ``inputs``: the sha256 of the
    weights it is of), ``weights.csv`` (one row per layer, no spectra) and ``spectra.png``; returns the paths
    written."""
    out = Path(out_dir)
    paths = [out / name for name in WEIGHTS_FILES]
    atomic_write_json(paths[0], {**stats.to_dict(), "inputs": list(inputs)})
    atomic_write_text(paths[1], _csv_text(stats))
    buffer = io.BytesIO()
    spectra_figure(stats).savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(paths[2], buffer.getvalue())
    return paths


def read_weight_statistics(path: str | Path) -> WeightStatistics:
    """Read ``weights.json`` (a file, or the folder holding it) back into :class:`WeightStatistics`."""
    fields = read_result_fields(path, WEIGHTS_FORMAT, WEIGHTS_JSON, "weight statistics")
    has_initial = fields.flag("has_initial")
    layers = []
    for entry in fields.children("layers"):
        distance = entry.number("distance_from_init", nullable=True) if has_initial else None
        relative = entry.number("relative_distance_from_init", nullable=True) if has_initial else None
        layers.append(LayerStatistics(
            layer=entry.text("layer"), shape=tuple(entry.integers("shape", minimum=1)),
            frobenius_norm=entry.number("frobenius_norm"), distance_from_init=distance,
            relative_distance_from_init=relative, effective_rank=entry.number("effective_rank"),
            stable_rank=entry.number("stable_rank"), small_weight_share=entry.number("small_weight_share"),
            singular_values=tuple(entry.numbers("singular_values"))))
        if len(layers[-1].shape) not in (2, 4) or not layers[-1].singular_values:
            entry.fail("shape", "2 or 4 sizes with singular values", entry.raw("shape"))
    if not layers:
        fields.fail("layers", "a non-empty list", [])
    return WeightStatistics(label=fields.text("label"), threshold=fields.number("threshold"), has_initial=has_initial,
                            layers=tuple(layers))


# ----------------------------------------------------------------------------- run-level shells


def weights_of_run(run_dir: str | Path, out_dir: str | Path, *, threshold: float = DEFAULT_THRESHOLD,
                   study_node: bool = False) -> WeightStatistics:
    """:func:`layer_statistics` of a run's final weights, distances taken from its ``initial.pt``,
    written to ``out_dir`` (:func:`write_weight_statistics`; checked by
    :func:`~minimascope.minima.common.check_analysis_folder`, ``study_node``: the study's own folder).
    ``run_dir`` may also be a weights file; then, or when a run directory has no ``initial.pt``,
    distances are left out (with a warning)."""
    import warnings

    from minimascope.minima.common import check_analysis_folder, result_folder, weights_identity
    from minimascope.models import read_weights
    from minimascope.runs import INITIAL_WEIGHTS

    check_analysis_folder(out_dir, WEIGHTS_FILES, study_node=study_node)  # before anything is loaded
    run = Path(run_dir)
    final = read_weights(run)
    identity = [weights_identity(run)]
    check_analysis_folder(out_dir, WEIGHTS_FILES, identity, study_node=study_node)
    initial = None
    if (run / INITIAL_WEIGHTS).is_file():
        initial = read_weights(run / INITIAL_WEIGHTS)
        if initial["arch"] != final["arch"]:
            raise MinimascopeError(f"{run / INITIAL_WEIGHTS} holds a {initial['arch']} network, final.pt a "
                                   f"{final['arch']}")
    else:
        warnings.warn(f"{run} has no {INITIAL_WEIGHTS}: distances from the initial weights are left out",
                      stacklevel=2)
    stats = layer_statistics(final["state_dict"], None if initial is None else initial["state_dict"],
                             threshold=threshold, label=run.resolve().name if run.is_dir() else run.stem)
    with result_folder(out_dir, WEIGHTS_FILES, identity, study_node=study_node) as out:
        write_weight_statistics(stats, out, identity)
    return stats
