"""Which test images two networks get wrong, and whether their mistakes overlap more than chance.

Every test image falls in one cell of a 2×2 table: both wrong (a), only A wrong (b), only B
wrong (c), both right (d), n = a + b + c + d. With error rates e_A = (a+b)/n and e_B = (a+c)/n,
independent errors would overlap on ``expected_both_wrong`` = e_A·e_B·n images.

Two numbers say how far the observed overlap a is from that:

* ``kappa`` — Cohen's kappa of the two error indicators, (p_o − p_e) / (1 − p_e) with
  p_o = (a+d)/n and p_e = e_A e_B + (1−e_A)(1−e_B); it equals 2(a − e_A e_B n) / (n (1 − p_e)):
  0 for independent errors, 1 when both networks err on exactly the same images, negative when
  their errors avoid each other. NaN (null in JSON) when p_e = 1, i.e. both networks are right on
  every image or wrong on every image.
* ``p_value_more_overlap`` and ``p_value_less_overlap`` — Fisher's exact test of the table:
  given the two error counts, the overlap of independent errors is hypergeometric (n images,
  a+b of them A's errors, a+c drawn as B's), and the p-values are P(X ≥ a) and P(X ≤ a),
  computed exactly with integer binomial coefficients. Networks trained on the same data usually
  share their hard images, so ``more`` is the question to ask; ``less`` is there for the rare
  opposite. The test treats images as exchangeable, so it says whether errors are associated,
  not why (shared hard images, or one network's errors caused by the same feature).

Whether the two networks differ in accuracy on these images is McNemar's exact test
(:func:`minimascope.stats.mcnemar_exact`): two-sided binomial on the discordant counts b (only A wrong)
and c (only B wrong), stored with its smallest attainable p, 2/2^(b+c). Its uncertainty is over test
images "on these networks", not across seeds: two other seeds' networks may differ otherwise.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from minimascope import datasets
from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_bytes, atomic_write_json, atomic_write_text, older_format, read_result_fields
from minimascope.stats import McNemarTest, mcnemar_exact

MISTAKES_FORMAT = "minimascope-mistakes-v2"
OLDER_FORMATS = ("minimascope-mistakes-v1",)  # without McNemar's test
MISTAKES_JSON = "mistakes.json"
MISTAKES_CSV = "mistakes.csv"
ONLY_A_PNG = "only_a.png"
ONLY_B_PNG = "only_b.png"
MISTAKES_FILES = (MISTAKES_JSON, MISTAKES_CSV, ONLY_A_PNG, ONLY_B_PNG)  # what an output folder of mistakes holds
GRID_LIMIT = 32  # images a grid shows: 4 rows of 8, a sample the eye can take in (each costs ~25 ms to draw)
_MISTAKE_COLUMNS = ("index", "true", "predicted_a", "predicted_b")
_CSV_COLUMNS = ("class", "n", "errors_a", "error_rate_a", "errors_b", "error_rate_b", "both_wrong",
                "only_a_wrong", "only_b_wrong")


@dataclass(frozen=True)
class ClassMistakes:
    """The test images of one true class."""

    class_name: str
    n: int
    errors_a: int
    errors_b: int
    both_wrong: int

    @property
    def error_rate_a(self) -> float:
        return self.errors_a / self.n if self.n else math.nan

    @property
    def error_rate_b(self) -> float:
        return self.errors_b / self.n if self.n else math.nan


@dataclass(frozen=True)
class Mistake:
    """A test image exactly one of the two networks gets wrong."""

    index: int
    true: int
    predicted_a: int
    predicted_b: int


@dataclass(frozen=True)
class MistakeComparison:
    label_a: str
    label_b: str
    class_names: tuple[str, ...]
    n: int
    both_wrong: int
    only_a_wrong: int
    only_b_wrong: int
    both_right: int
    expected_both_wrong: float
    kappa: float
    p_value_more_overlap: float
    p_value_less_overlap: float
    per_class: tuple[ClassMistakes, ...]
    only_a: tuple[Mistake, ...]  # by index
    only_b: tuple[Mistake, ...]

    @property
    def mcnemar(self) -> McNemarTest:
        """McNemar's exact test of the accuracies on these images (uncertainty "on these networks")."""
        return mcnemar_exact(self.only_a_wrong, self.only_b_wrong)

    @property
    def errors_a(self) -> int:
        return self.both_wrong + self.only_a_wrong

    @property
    def errors_b(self) -> int:
        return self.both_wrong + self.only_b_wrong

    def rates(self) -> dict[str, float]:
        """Each cell of the table and each network's errors as a share of the n images."""
        counts = {"both_wrong": self.both_wrong, "only_a_wrong": self.only_a_wrong, "only_b_wrong": self.only_b_wrong,
                  "both_right": self.both_right, "errors_a": self.errors_a, "errors_b": self.errors_b,
                  "expected_both_wrong": self.expected_both_wrong}
        return {name: count / self.n for name, count in counts.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MISTAKES_FORMAT, "label_a": self.label_a, "label_b": self.label_b,
            "class_names": list(self.class_names), "n": self.n,
            "counts": {"both_wrong": self.both_wrong, "only_a_wrong": self.only_a_wrong,
                       "only_b_wrong": self.only_b_wrong, "both_right": self.both_right,
                       "errors_a": self.errors_a, "errors_b": self.errors_b},
            "rates": self.rates(),
            "expected_both_wrong": self.expected_both_wrong,
            "kappa": None if math.isnan(self.kappa) else self.kappa,
            "p_value_more_overlap": self.p_value_more_overlap,
            "p_value_less_overlap": self.p_value_less_overlap,
            "mcnemar": {"p_value": self.mcnemar.p_value, "smallest_attainable_p": self.mcnemar.smallest_attainable_p,
                        "test": "McNemar's exact test (two-sided binomial on only_a_wrong vs only_b_wrong)",
                        "uncertainty": "on these networks (over test images), not across seeds"},
            "significance": "Fisher's exact test (hypergeometric overlap given both error counts); "
                            "kappa = Cohen's kappa of the two error indicators",
            "per_class": [{"class": c.class_name, "n": c.n, "errors_a": c.errors_a, "errors_b": c.errors_b,
                           "both_wrong": c.both_wrong,
                           "error_rate_a": None if c.n == 0 else c.error_rate_a,
                           "error_rate_b": None if c.n == 0 else c.error_rate_b} for c in self.per_class],
            "mistake_columns": list(_MISTAKE_COLUMNS),
            "only_a": [[m.index, m.true, m.predicted_a, m.predicted_b] for m in self.only_a],
            "only_b": [[m.index, m.true, m.predicted_a, m.predicted_b] for m in self.only_b],
        }


# ----------------------------------------------------------------------------- the numbers


def _labels(values: Sequence[int] | np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim != 1:
        raise MinimascopeError(f"{name} must be one label per image (1-D), not shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise MinimascopeError(f"{name} must be integer class labels, not {array.dtype}")
    return array.astype(np.int64)


def _checked(predicted_a, predicted_b, labels, num_classes: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b, y = _labels(predicted_a, "predicted_a"), _labels(predicted_b, "predicted_b"), _labels(labels, "labels")
    if not len(a) == len(b) == len(y):
        raise MinimascopeError(f"predictions and labels differ in length: {len(a)}, {len(b)}, {len(y)}")
    if len(y) == 0:
        raise MinimascopeError("no test images to compare mistakes on")
    if num_classes is not None:
        for name, array in (("predicted_a", a), ("predicted_b", b), ("labels", y)):
            if array.min() < 0 or array.max() >= num_classes:
                raise MinimascopeError(f"{name} holds a class outside 0..{num_classes - 1}")
    return a, b, y


def only_one_wrong_indices(predicted_a, predicted_b, labels) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ascending) of the images only A gets wrong, and of those only B gets wrong."""
    a, b, y = _checked(predicted_a, predicted_b, labels)
    wrong_a, wrong_b = a != y, b != y
    return np.flatnonzero(wrong_a & ~wrong_b), np.flatnonzero(wrong_b & ~wrong_a)


def expected_overlap(n: int, errors_a: int, errors_b: int) -> float:
    """Images both get wrong if their errors were independent: e_A · e_B · n = errors_a · errors_b / n."""
    return errors_a * errors_b / n


def overlap_p_values(n: int, errors_a: int, errors_b: int, both_wrong: int) -> tuple[float, float]:
    """Fisher's exact test: (P(X ≥ both_wrong), P(X ≤ both_wrong)) for X hypergeometric, the overlap
    of errors_b draws from n images of which errors_a are A's errors."""
    if not (0 <= errors_a <= n and 0 <= errors_b <= n):
        raise MinimascopeError(f"error counts {errors_a}, {errors_b} do not fit {n} images")
    low, high = max(0, errors_a + errors_b - n), min(errors_a, errors_b)
    if not low <= both_wrong <= high:
        raise MinimascopeError(f"an overlap of {both_wrong} is impossible with {errors_a} and {errors_b} "
                               f"errors among {n} images")

    # ways[k] = C(errors_a, k)·C(n − errors_a, errors_b − k), stepped by its exact ratio to ways[k − 1]
    # (the division leaves no remainder since both are integers): one big multiply per k, not two combs.
    ways = [math.comb(errors_a, low) * math.comb(n - errors_a, errors_b - low)]
    for k in range(low + 1, high + 1):
        ways.append(ways[-1] * (errors_a - k + 1) * (errors_b - k + 1) // (k * (n - errors_a - errors_b + k)))
    total = math.comb(n, errors_b)
    # Python's int / int is correctly rounded however large both are, so these are exact to the last bit.
    more = sum(ways[both_wrong - low:]) / total
    less = sum(ways[:both_wrong - low + 1]) / total
    return more, less


def error_kappa(both_wrong: int, only_a_wrong: int, only_b_wrong: int, both_right: int) -> float:
    """Cohen's kappa of the two networks' error indicators; NaN when chance agreement is 1."""
    n = both_wrong + only_a_wrong + only_b_wrong + both_right
    e_a, e_b = (both_wrong + only_a_wrong) / n, (both_wrong + only_b_wrong) / n
    chance = e_a * e_b + (1 - e_a) * (1 - e_b)
    if chance >= 1:
        return math.nan
    observed = (both_wrong + both_right) / n
    return (observed - chance) / (1 - chance)


def compare_mistakes(predicted_a, predicted_b, labels, *,
                     class_names: Sequence[str] = datasets.DATASETS[datasets.DEFAULT].classes,
                     label_a: str = "A", label_b: str = "B") -> MistakeComparison:
    """The 2×2 table of A's and B's mistakes on the same test images, its significance, per-class
    error rates, and the images only one network gets wrong. Inputs are predicted and true class
    indices, one per image (numpy arrays, tensors or lists); ``class_names`` are the data set's (label i
    is ``class_names[i]``; the default data set's when not given)."""
    a, b, y = _checked(predicted_a, predicted_b, labels, len(class_names))
    wrong_a, wrong_b = a != y, b != y
    both_wrong = int((wrong_a & wrong_b).sum())
    only_a_wrong = int((wrong_a & ~wrong_b).sum())
    only_b_wrong = int((wrong_b & ~wrong_a).sum())
    n = len(y)
    both_right = n - both_wrong - only_a_wrong - only_b_wrong
    errors_a, errors_b = both_wrong + only_a_wrong, both_wrong + only_b_wrong
    more, less = overlap_p_values(n, errors_a, errors_b, both_wrong)
    per_class = tuple(
        ClassMistakes(name, int((y == c).sum()), int((wrong_a & (y == c)).sum()), int((wrong_b & (y == c)).sum()),
                      int((wrong_a & wrong_b & (y == c)).sum()))
        for c, name in enumerate(class_names))
    only_a, only_b = (tuple(Mistake(int(i), int(y[i]), int(a[i]), int(b[i])) for i in np.flatnonzero(mask))
                      for mask in (wrong_a & ~wrong_b, wrong_b & ~wrong_a))
    return MistakeComparison(
        label_a=label_a, label_b=label_b, class_names=tuple(class_names), n=n, both_wrong=both_wrong,
        only_a_wrong=only_a_wrong, only_b_wrong=only_b_wrong, both_right=both_right,
        expected_both_wrong=expected_overlap(n, errors_a, errors_b),
        kappa=error_kappa(both_wrong, only_a_wrong, only_b_wrong, both_right),
        p_value_more_overlap=more, p_value_less_overlap=less, per_class=per_class, only_a=only_a, only_b=only_b)


# ----------------------------------------------------------------------------- figures and files


def _images(images: np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim != 4 or array.shape[1] not in (1, 3) or array.dtype != np.uint8:
        raise MinimascopeError(f"images must be uint8 (N, C, H, W) with C 1 or 3, not {array.dtype} {array.shape}")
    if array.shape[0] != n:
        raise MinimascopeError(f"{array.shape[0]} images for {n} predictions: pass the test images the "
                               "predictions were made on")
    return array


def mistake_grid(images: np.ndarray | torch.Tensor, mistakes: Sequence[Mistake], comparison: MistakeComparison,
                 title: str, *, limit: int = GRID_LIMIT, seed: int = 0) -> Figure:
    """Up to ``limit`` of ``mistakes`` (a random sample, drawn with ``seed``, shown in index order):
    each image (RGB, or grayscale in a gray colour map; any size) with its true class and both networks'
    predictions."""
    pixels = _images(images, comparison.n)
    rng = np.random.default_rng(seed)
    shown = sorted(rng.choice(len(mistakes), size=limit, replace=False)) if len(mistakes) > limit \
        else range(len(mistakes))
    chosen = [mistakes[i] for i in shown]
    columns = 8
    rows = max(1, math.ceil(len(chosen) / columns))
    height = rows * 1.55 + 0.6
    figure = Figure(figsize=(columns * 1.3, height))
    FigureCanvasAgg(figure)
    # A fixed layout: each panel's 3-line title takes ~0.35 in above its image (constrained layout
    # would measure every title on each pass, ~5x the time of the whole figure).
    grid = figure.subplots(rows, columns, squeeze=False, gridspec_kw={
        "left": 0.01, "right": 0.99, "bottom": 0.02 / height, "top": 1 - 0.7 / height, "wspace": 0.1, "hspace": 0.45})
    names = comparison.class_names
    for k, axes in enumerate(grid.flat):
        axes.set_axis_off()
        if k < len(chosen):
            m = chosen[k]
            image = pixels[m.index].transpose(1, 2, 0)
            if image.shape[2] == 1:  # grayscale: one plane in a gray map, 0 black and 255 white
                axes.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                axes.imshow(image, interpolation="nearest")
            axes.set_title(f"#{m.index} {names[m.true]}\n{comparison.label_a}: {names[m.predicted_a]}\n"
                           f"{comparison.label_b}: {names[m.predicted_b]}", fontsize=6)
    sample = f"{len(chosen)} of {len(mistakes)} images" + (f", drawn at random (seed {seed})"
                                                            if len(mistakes) > limit else "")
    figure.suptitle(f"{title}: {sample}", fontsize=9)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _csv_text(comparison: MistakeComparison) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for c in comparison.per_class:
        rate_a, rate_b = ("" if c.n == 0 else repr(rate) for rate in (c.error_rate_a, c.error_rate_b))
        writer.writerow([c.class_name, c.n, c.errors_a, rate_a, c.errors_b, rate_b, c.both_wrong,
                         c.errors_a - c.both_wrong, c.errors_b - c.both_wrong])
    return buffer.getvalue()


def write_mistakes(comparison: MistakeComparison, out_dir: str | Path,
                   images: np.ndarray | torch.Tensor | None = None, *, limit: int = GRID_LIMIT,
                   seed: int = 0, inputs: Sequence[str] = ()) -> list[Path]:
    """``mistakes.json`` (format ``minimascope-mistakes-v2``: table, rates, significance, McNemar's test, per class,
    every image only one network gets wrong; ``inputs``: the sha256 of the predictions it is of),
    ``mistakes.csv`` (per class) and, when the test ``images`` (uint8 (N, C, H, W), the ones predicted) are
    given, ``only_a.png`` and ``only_b.png``; returns the paths written."""
    out = Path(out_dir)
    figures = []
    if images is not None:
        a, b = comparison.label_a, comparison.label_b
        figures = [(out / ONLY_A_PNG, mistake_grid(images, comparison.only_a, comparison,
                                                   f"{a} wrong, {b} right", limit=limit, seed=seed)),
                   (out / ONLY_B_PNG, mistake_grid(images, comparison.only_b, comparison,
                                                   f"{b} wrong, {a} right", limit=limit, seed=seed))]
    atomic_write_json(out / MISTAKES_JSON, {**comparison.to_dict(), "inputs": list(inputs)})
    atomic_write_text(out / MISTAKES_CSV, _csv_text(comparison))
    for path, figure in figures:
        atomic_write_bytes(path, _png(figure))
    return [out / MISTAKES_JSON, out / MISTAKES_CSV, *(path for path, _ in figures)]


def read_mistakes(path: str | Path) -> MistakeComparison:
    """Read ``mistakes.json`` (a file, or the folder holding it) back into :class:`MistakeComparison`."""
    if (older := older_format(path, MISTAKES_JSON, OLDER_FORMATS)) is not None:
        raise MinimascopeError(f"{path} was written by an older minimascope ({older}, without McNemar's "
                               f"test); re-run `minimascope mistakes` (or the study) to rewrite it")
    fields = read_result_fields(path, MISTAKES_FORMAT, MISTAKES_JSON, "mistakes result")
    counts = fields.child("counts")
    table = [counts.integer(key, minimum=0) for key in ("both_wrong", "only_a_wrong", "only_b_wrong", "both_right")]
    n = fields.integer("n", minimum=1)
    if sum(table) != n:
        counts.fail("", f"four counts that sum to n = {n}", table)
    class_names = tuple(fields.texts("class_names"))
    per_class = tuple(ClassMistakes(c.text("class"), *(c.integer(k, minimum=0) for k in ("n", "errors_a", "errors_b",
                                                                                           "both_wrong")))
                      for c in fields.children("per_class", length=len(class_names)))
    only = {}
    for side in ("only_a", "only_b"):
        rows = fields.matrix(side, columns=len(_MISTAKE_COLUMNS), of=int)
        if any(not 0 <= row[0] < n or not all(0 <= c < len(class_names) for c in row[1:]) for row in rows):
            fields.fail(side, f"rows of an image in 0..{n - 1} and three classes in 0..{len(class_names) - 1}", rows)
        only[side] = tuple(Mistake(*row) for row in rows)
    kappa = fields.number("kappa", nullable=True)
    return MistakeComparison(
        label_a=fields.text("label_a"), label_b=fields.text("label_b"), class_names=class_names, n=n,
        both_wrong=table[0], only_a_wrong=table[1], only_b_wrong=table[2], both_right=table[3],
        expected_both_wrong=fields.number("expected_both_wrong"), kappa=kappa,
        p_value_more_overlap=fields.number("p_value_more_overlap"),
        p_value_less_overlap=fields.number("p_value_less_overlap"), per_class=per_class, **only)


# ----------------------------------------------------------------------------- two runs, on disk


def mistakes_of_runs(run_a: str | Path, run_b: str | Path, out_dir: str | Path, *, data_source: str | None = None,
                     limit: int = GRID_LIMIT, seed: int = 0, study_node: bool = False) -> MistakeComparison:
    """:func:`compare_mistakes` of two runs' final test predictions (their ``predictions.pt``), named by the
    classes of the data set both were trained on, written to ``out_dir`` with grids of the test images (from
    that data set's ``data_source``, by each prediction's ``test_index``) that only one run gets wrong. Both
    runs must have been trained on one data set and have predicted the same test images.
    ``out_dir`` is checked by :func:`~minimascope.minima.common.check_analysis_folder` (``study_node``: the
    study's own folder)."""
    from minimascope.minima.common import (
        check_analysis_folder,
        load_trained_data,
        pair_labels,
        result_folder,
        trained_dataset,
    )
    from minimascope.models import file_sha256
    from minimascope.runs import PREDICTIONS, read_predictions, read_run_json

    check_analysis_folder(out_dir, MISTAKES_FILES, study_node=study_node)  # before anything is loaded
    path_a, path_b = Path(run_a).resolve(), Path(run_b).resolve()
    for path in (path_a, path_b):
        if not path.is_dir():
            raise MinimascopeError(f"not a run directory: {path} (mistakes are read from a run's predictions.pt)")
    label_a, label_b = pair_labels(path_a, path_b)
    # run.json says what data set a run was trained on, as its final.pt does
    trained_on = {label_a: read_run_json(path_a), label_b: read_run_json(path_b)}
    trained_dataset(trained_on)  # before the predictions of two data sets are compared
    predictions_a, predictions_b = read_predictions(path_a), read_predictions(path_b)
    identity = [file_sha256(path / PREDICTIONS) for path in (path_a, path_b)]
    check_analysis_folder(out_dir, MISTAKES_FILES, identity, study_node=study_node)
    if not torch.equal(predictions_a["test_index"], predictions_b["test_index"]):
        raise MinimascopeError(f"{path_a.name} and {path_b.name} predicted different test images "
                               f"({len(predictions_a['test_index'])} and {len(predictions_b['test_index'])}); "
                               f"train both with the same --test-subset and seed")
    labels = predictions_a["labels"]
    if not torch.equal(labels, predictions_b["labels"]):
        raise MinimascopeError(f"{path_a.name} and {path_b.name} disagree on the test labels: other data sets")
    loaded = load_trained_data(trained_on, data_source)
    index = predictions_a["test_index"]
    if int(index.max()) >= len(loaded.test_labels) or not torch.equal(loaded.test_labels[index], labels):
        raise MinimascopeError(f"the {datasets.get(loaded.dataset).title} source given is not the one the runs were "
                               f"tested on (its test labels differ); pass that source with --data")
    comparison = compare_mistakes(predictions_a["predicted"], predictions_b["predicted"], labels,
                                  class_names=loaded.classes, label_a=label_a, label_b=label_b)
    with result_folder(out_dir, MISTAKES_FILES, identity, study_node=study_node) as out:
        write_mistakes(comparison, out, loaded.test_images[index], limit=limit, seed=seed, inputs=identity)
    return comparison
