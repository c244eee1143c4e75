"""Linear mode connectivity: loss and error along the straight line between two networks' weights.

At evenly spaced alpha in [0, 1] the network with weights (1 - alpha) theta_A + alpha theta_B is evaluated
(eval mode) on training and test images; the barrier of a curve is its maximum along the path minus the
mean of its two ends (Frankle et al. 2020), for the loss and for the error; the chord-form barrier (Entezari
et al. 2022) is the maximum over alpha of the curve minus the straight chord between its ends,
L(alpha) − [(1 − alpha) L(0) + alpha L(1)], stored beside it. Every point carries its standard error over
the images (the sample sd of the per-image losses, or of the 0/1 errors, over √n): uncertainty "on these
networks", not across seeds. Batch norm needs a choice,
since the running statistics of an interpolated network are not those of either end:

* ``interpolate`` — the running statistics are interpolated like the weights;
* ``recompute`` — at every point they are recomputed from the training images: reset, then train-mode
  forward passes without gradients with ``momentum=None`` (a cumulative average over the batches), as in
  Jordan et al. 2023 (REPAIR) and Ainsworth et al. 2023. Only the statistics change, never the weights.

With ``align=True`` B is also first permuted onto A by weight matching (``minimascope.minima.matching``),
which changes B's weights but not its function, and each variant is repeated on that path
(named ``<bn>+matched``). Weight matching has permutation rules for ResNets and plain chains of layers; for
any other architecture the paths to the matched B are left out and the result's settings say why
(``alignment_skipped``).
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_bytes, atomic_write_json, older_format, read_result_fields

CONNECTIVITY_FORMAT = "minimascope-connectivity-v2"
OLDER_FORMATS = ("minimascope-connectivity-v1",)  # without the chord-form barrier and standard errors
CONNECTIVITY_JSON = "connectivity.json"
CONNECTIVITY_PNG = "connectivity.png"
CONNECTIVITY_FILES = (CONNECTIVITY_JSON, CONNECTIVITY_PNG)  # what an output folder of connectivity holds
BN_MODES = ("interpolate", "recompute")
METRICS = ("train_loss", "train_error", "test_loss", "test_error")
MATCHED = "+matched"


def barrier(values: Sequence[float]) -> float:
    """Maximum along the path minus the mean of its two ends (0 for a path no worse than its ends' mean)."""
    return max(values) - (values[0] + values[-1]) / 2


def chord_barrier(values: Sequence[float], alphas: Sequence[float]) -> float:
    """max over alpha of value(alpha) − [(1 − alpha) value(0) + alpha value(1)] (Entezari et al. 2022)."""
    return max(v - ((1 - a) * values[0] + a * values[-1]) for v, a in zip(values, alphas))


def interpolate_state(state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """(1 - alpha) A + alpha B for floating-point entries (exactly A at 0 and B at 1); others (batch norm's
    batch counters) are A's."""
    return {key: torch.lerp(a, state_b[key].to(a.device), alpha) if a.is_floating_point() else a
            for key, a in state_a.items()}


def _batches(count: int, batch_size: int) -> list[slice]:
    """Near-equal consecutive batches (sizes differ by at most 1), so no batch is left with one image."""
    pieces = torch.arange(count).tensor_split(-(-count // batch_size))
    return [slice(int(p[0]), int(p[-1]) + 1) for p in pieces]


def recompute_batch_norm(model: nn.Module, images: Tensor, *, batch_size: int, device: torch.device) -> None:
    """Replace every batch norm's running statistics by their average over ``images`` in batches (train-mode
    forward passes without gradients, momentum None: each batch's mean and unbiased variance count alike).
    The model is left in eval mode, with its own momenta."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    if len(images) < 2:
        raise MinimascopeError("recomputing batch-norm statistics needs at least 2 training images")
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    dtype = next(model.parameters()).dtype
    try:
        with torch.no_grad():
            for batch in _batches(len(images), batch_size):
                model(images[batch].to(device, dtype))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int,
             device: torch.device) -> tuple[float, float, float, float]:
    """(mean cross-entropy, error rate, and their standard errors over the images) of ``model`` in eval
    mode on normalised ``images``; a standard error is NaN with one image."""
    model.eval()
    dtype = next(model.parameters()).dtype
    losses, wrongs = [], []
    with torch.no_grad():
        for batch in _batches(len(labels), batch_size):
            logits = model(images[batch].to(device, dtype))
            target = labels[batch].to(device)
            losses.append(F.cross_entropy(logits, target, reduction="none").double())
            wrongs.append((logits.argmax(1) != target).double())
    loss, wrong = torch.cat(losses), torch.cat(wrongs)
    n = len(labels)
    if n < 2:
        return loss.mean().item(), wrong.mean().item(), math.nan, math.nan
    return (loss.mean().item(), wrong.mean().item(), (loss.std() / math.sqrt(n)).item(),
            (wrong.std() / math.sqrt(n)).item())


@dataclass(frozen=True)
class PathCurve:
    """Loss and error along one path; ``variant`` is the batch-norm mode, with ``+matched`` for the
    path to the weight-matched B."""

    variant: str
    train_loss: list[float]
    train_error: list[float]
    test_loss: list[float]
    test_error: list[float]
    # metric → standard error over the images at each point (empty for a curve built without them)
    standard_errors: dict[str, list[float]] = field(default_factory=dict)

    def barriers(self) -> dict[str, float]:
        return {metric: barrier(getattr(self, metric)) for metric in METRICS}

    def chord_barriers(self, alphas: Sequence[float]) -> dict[str, float]:
        return {metric: chord_barrier(getattr(self, metric), alphas) for metric in METRICS}


@dataclass(frozen=True)
class Connectivity:
    alphas: list[float]
    curves: list[PathCurve]
    n_train: int
    n_test: int
    labels: tuple[str, str]
    settings: dict[str, Any]

    def curve(self, variant: str) -> PathCurve:
        for curve in self.curves:
            if curve.variant == variant:
                return curve
        raise MinimascopeError(f"no {variant!r} path; have {', '.join(c.variant for c in self.curves)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CONNECTIVITY_FORMAT,
            "alphas": self.alphas,
            "variants": {c.variant: {**{m: getattr(c, m) for m in METRICS}, "barriers": c.barriers(),
                                     "chord_barriers": c.chord_barriers(self.alphas),
                                     "standard_errors": {m: [None if math.isnan(v) else v for v in values]
                                                         for m, values in c.standard_errors.items()}}
                         for c in self.curves},
            "uncertainty": "standard errors over the images: on these networks, not across seeds",
            "n_train": self.n_train,
            "n_test": self.n_test,
            "labels": list(self.labels),
            "settings": self.settings,
        }


def linear_connectivity(model_a: nn.Module, model_b: nn.Module, train_images: Tensor, train_labels: Tensor,
                        test_images: Tensor, test_labels: Tensor, *, points: int = 11,
                        bn_modes: Sequence[str] = BN_MODES, align: bool = False, batch_size: int = 500,
                        device: str | torch.device | None = None, seed: int = 0,
                        labels: tuple[str, str] = ("A", "B")) -> Connectivity:
    """Loss and error on both image sets at ``points`` evenly spaced alphas from A (0) to B (1), per
    batch-norm mode (and per mode again to the weight-matched B with ``align``); see module doc. Images
    are normalised float tensors; ``seed`` orders weight matching's coordinate descent. A network weight
    matching has no rule for is walked without it, the reason in ``settings["alignment_skipped"]``."""
    unknown = [mode for mode in bn_modes if mode not in BN_MODES]
    if unknown or not bn_modes:
        raise MinimascopeError(f"unknown batch-norm mode {unknown[0] if unknown else None!r}; "
                               f"choose from {', '.join(BN_MODES)}")
    if points < 2:
        raise MinimascopeError(f"a path needs at least 2 points, got {points}")
    shapes_a, shapes_b = ({k: tuple(v.shape) for k, v in m.state_dict().items()} for m in (model_a, model_b))
    if shapes_a != shapes_b:
        differ = next(k for k in {**shapes_a, **shapes_b} if shapes_a.get(k) != shapes_b.get(k))
        raise MinimascopeError(f"the two networks have different architectures (first difference: {differ}, "
                               f"{shapes_a.get(differ)} and {shapes_b.get(differ)})")
    device = next(model_a.parameters()).device if device is None else torch.device(device)
    alphas = torch.linspace(0, 1, points, dtype=torch.float64).tolist()
    targets = [("", model_b)]
    skipped = None
    if align:
        from minimascope.minima.matching import NoPermutationRule, weight_matching

        try:
            targets.append((MATCHED, weight_matching(model_a, model_b, example=train_images[:2], seed=seed)))
        except NoPermutationRule as exc:
            skipped = str(exc)
    state_a = model_a.state_dict()
    walker = copy.deepcopy(model_a).to(device)
    curves = []
    for suffix, target in targets:
        state_b = target.state_dict()
        for mode in bn_modes:
            values: dict[str, list[float]] = {metric: [] for metric in METRICS}
            errors: dict[str, list[float]] = {metric: [] for metric in METRICS}
            for alpha in alphas:
                walker.load_state_dict(interpolate_state(state_a, state_b, alpha))
                if mode == "recompute":
                    recompute_batch_norm(walker, train_images, batch_size=batch_size, device=device)
                for split, images, split_labels in (("train", train_images, train_labels),
                                                    ("test", test_images, test_labels)):
                    loss, error, loss_se, error_se = evaluate(walker, images, split_labels, batch_size=batch_size,
                                                              device=device)
                    for metric, value, se in (("loss", loss, loss_se), ("error", error, error_se)):
                        values[f"{split}_{metric}"].append(value)
                        errors[f"{split}_{metric}"].append(se)
            curves.append(PathCurve(mode + suffix, **values, standard_errors=errors))
    settings = {"points": points, "bn_modes": list(bn_modes), "align": align, "batch_size": batch_size, "seed": seed}
    if skipped is not None:
        settings["alignment_skipped"] = skipped
    return Connectivity(alphas, curves, len(train_labels), len(test_labels), labels, settings)


def write_connectivity(result: Connectivity, out_dir: str | Path, inputs: Sequence[str] = ()) -> list[Path]:
    """``connectivity.json`` (with ``inputs``: the sha256 of the two networks' weights) and
    ``connectivity.png`` in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    atomic_write_json(out / CONNECTIVITY_JSON, {**result.to_dict(), "inputs": list(inputs)})
    connectivity_figure(result, out / CONNECTIVITY_PNG)
    return [out / CONNECTIVITY_JSON, out / CONNECTIVITY_PNG]


def read_connectivity(path: str | Path) -> Connectivity:
    """A ``connectivity.json`` (or the folder holding one) back as a :class:`Connectivity`."""
    if (older := older_format(path, CONNECTIVITY_JSON, OLDER_FORMATS)) is not None:
        raise MinimascopeError(f"{path} was written by an older minimascope ({older}, without the chord "
                               f"barrier and standard errors); re-run `minimascope connectivity` (or the study)")
    fields = read_result_fields(path, CONNECTIVITY_FORMAT, CONNECTIVITY_JSON, "connectivity result")
    alphas = fields.numbers("alphas")
    if len(alphas) < 2:
        fields.fail("alphas", "at least 2 numbers", alphas)
    variants = fields.child("variants")
    curves = []
    for variant in variants.keys():
        values = variants.child(variant)
        errors = values.child("standard_errors")
        curves.append(PathCurve(variant, **{m: values.numbers(m, length=len(alphas)) for m in METRICS},
                                standard_errors={m: errors.numbers(m, length=len(alphas), nullable=True)
                                                 for m in errors.keys()}))
    if not curves:
        fields.fail("variants", "at least one path", {})
    labels = fields.texts("labels", length=2)
    return Connectivity(alphas, curves, fields.integer("n_train", minimum=1), fields.integer("n_test", minimum=1),
                        (labels[0], labels[1]), fields.child("settings").record)


def connectivity_figure(result: Connectivity, path: str | Path) -> None:
    """Loss (left) and error (right) against alpha: one colour per variant, train solid, test dashed."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, error_axes = figure.subplots(1, 2)
    colours = [f"C{i}" for i in range(len(result.curves))]
    for curve, colour in zip(result.curves, colours):
        for split, style in (("train", "-"), ("test", "--")):
            for axes, metric in ((loss_axes, "loss"), (error_axes, "error")):
                values = getattr(curve, f"{split}_{metric}")
                axes.plot(result.alphas, values, style, color=colour, marker=".",
                          label=f"{curve.variant}, {split} (barrier {barrier(values):.3g})")
    label_a, label_b = result.labels
    for axes, metric in ((loss_axes, "cross-entropy"), (error_axes, "error rate")):
        axes.set_xlabel(f"alpha: {label_a} (0) to {label_b} (1)")
        axes.set_ylabel(metric)
        axes.legend(fontsize=7)
    figure.suptitle(f"linear interpolation, {result.n_train} train / {result.n_test} test images", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def connectivity_of_runs(run_a: str | Path, run_b: str | Path, out_dir: str | Path, *, points: int = 11,
                         images: int = 1000, align: bool = True, bn_modes: Sequence[str] = BN_MODES,
                         data_source: str | None = None, device: str = "auto", seed: int = 0,
                         batch_size: int = 500, study_node: bool = False) -> Connectivity:
    """:func:`linear_connectivity` between two runs' final networks (run directories or weights files) on
    class-balanced subsets of at most ``images`` of the training images both were trained on (their runs' training
    subset) and ``images`` test images of their data set (from ``data_source``; drawn with ``seed``; batch-norm
    statistics are recomputed from the same training images), written to ``out_dir``. Both runs must have been
    trained on one data set, identically normalised: between two normalisations no path means anything.
    ``out_dir`` is checked by :func:`~minimascope.minima.common.check_analysis_folder` before anything is computed
    (``study_node``: the study's own folder)."""
    from minimascope import data, datasets, models
    from minimascope.env import resolve_device
    from minimascope.minima.common import (
        balanced_inputs,
        check_analysis_folder,
        load_trained_data,
        pair_labels,
        result_folder,
        trained_dataset,
        training_inputs,
        weights_identity,
    )

    check_analysis_folder(out_dir, CONNECTIVITY_FILES, study_node=study_node)  # before anything is loaded
    torch_device = resolve_device(device)
    path_a, path_b = Path(run_a).resolve(), Path(run_b).resolve()
    model_a, payload_a = models.load_trained(path_a)
    model_b, payload_b = models.load_trained(path_b)
    identity = [weights_identity(path_a), weights_identity(path_b)]
    check_analysis_folder(out_dir, CONNECTIVITY_FILES, identity, study_node=study_node)
    labels = pair_labels(path_a, path_b)
    trained_on = dict(zip(labels, (payload_a, payload_b)))
    trained_dataset(trained_on)  # two data sets first: their networks' architectures differ as a consequence
    if (payload_a["arch"], payload_a["num_classes"]) != (payload_b["arch"], payload_b["num_classes"]):
        raise MinimascopeError(f"{path_a.name} is a {payload_a['arch']} with {payload_a['num_classes']} classes, "
                               f"{path_b.name} a {payload_b['arch']} with {payload_b['num_classes']}: no straight "
                               f"path joins two architectures")
    if payload_a["normalization"] != payload_b["normalization"]:
        raise MinimascopeError(f"{path_a.name} and {path_b.name} were trained on differently normalised inputs; "
                               f"a path between them has no input that suits both")
    loaded = load_trained_data(trained_on, data_source)
    data_key = data.content_key(data_source, loaded.dataset)
    train_images, train_labels, sampled = training_inputs(payload_a, loaded, [path_a, path_b], images, seed,
                                                          at_most=True)
    test_images, test_labels = balanced_inputs(payload_a, loaded.test_images, loaded.test_labels,
                                               min(images, len(loaded.test_labels)), seed)
    result = linear_connectivity(model_a.to(torch_device), model_b.to(torch_device), train_images, train_labels,
                                 test_images, test_labels, points=points, bn_modes=bn_modes, align=align,
                                 batch_size=batch_size, device=torch_device, seed=seed, labels=labels)
    title = datasets.get(loaded.dataset).title
    source = {"run_a": str(path_a), "run_b": str(path_b), "dataset": loaded.dataset, "data": data_key,
              "images": f"class-balanced subsets (seed {seed}) of the {title} train and test sets; batch-norm "
                        f"statistics recomputed from the same train images",
              "drawn_from": f"{sampled['drawn_from']}; the test set"}
    result = Connectivity(result.alphas, result.curves, result.n_train, result.n_test, result.labels,
                          {**result.settings, **source})
    with result_folder(out_dir, CONNECTIVITY_FILES, identity, study_node=study_node) as out:
        write_connectivity(result, out, identity)
    return result
