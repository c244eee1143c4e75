"""The table of analyses: one row per analysis of a minimum (and the seed statistics), read by the
study (which nodes to plan, which options a study file may set, how a node runs), the report (which
reader, which section) and the CLI (which command).

Adding an analysis is its module (a run-level function that writes a versioned result file, and that
file's reader), one row here, and a report template. The modules are imported only when a row is
used, so reading this table loads neither torch nor matplotlib.

Each row's ``options`` is its table of options, one :class:`Option` each: name, type (``int``,
``float`` or ``bool``), default, range (``low``/``high``, inclusive, None for no bound; ``above``
for a bound that is excluded) and help. The study file (``analyses: {name: {option: value}}``) and
the CLI command of the row both check values with :meth:`AnalysisInfo.check_options`, before anything runs; the
CLI takes its defaults and help from the table. ``ordered`` lists pairs of options of which the
first may not exceed the second (``k`` eigenvalues need ``max_iter >= k`` Lanczos steps). A new
option is one line::

    Option("points", int, 11, "evenly spaced points on the path, ends included", low=2, high=1001),
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minimascope.errors import MinimascopeError

# Every function also takes ``study_node`` (see AnalysisInfo.run).
PER_RUN = "run"  # one node per run: function(run_dir, out_dir, **options)
PER_PAIR = "pair"  # one node per compared pair of arms, one seed: function(run_a, run_b, out_dir, **options)
PER_ARM_PAIR = "arm-pair"  # one node per pair of arms over all seeds: function(inputs, out_dir, **options)
# one node per three runs of one seed (the study's: a then-arm, the arm it started from and the plain arm of its
# optimizer): function(run_a, run_b, run_c, out_dir, **options)
PER_TRIPLE = "triple"


SEED_LIMIT = 2**63  # seeds go to torch.manual_seed and numpy, which take less
CIFAR_TRAIN_IMAGES, CIFAR_TEST_IMAGES = 50_000, 10_000


@dataclass(frozen=True)
class Option:
    """One option of an analysis: what a study file and the command line may set, and its range."""

    name: str
    type: type  # int, float or bool
    default: Any
    help: str
    low: float | None = None  # inclusive bounds; None: unbounded
    high: float | None = None
    above: float | None = None  # an excluded lower bound (tol > 0)

    def range_text(self) -> str:
        kind = {int: "an integer", float: "a number", bool: "true or false"}[self.type]
        def text(bound: float) -> str:
            return str(bound) if isinstance(bound, int) else f"{bound:g}"

        bounds = [f">= {text(self.low)}" if self.low is not None else "",
                  f"> {text(self.above)}" if self.above is not None else "",
                  f"<= {text(self.high)}" if self.high is not None else ""]
        return " ".join([kind, " and ".join(b for b in bounds if b)]).strip()

    @property
    def flag(self) -> str:
        """Its command-line name: ``max_iter`` → ``--max-iter``."""
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any, where: str, flag: bool = False) -> Any:
        """``value`` as this option's type, or one error line naming ``where`` (and the option as a study file
        names it, or as its command-line flag) and the range."""
        wrong = MinimascopeError(f"{where}: {self.flag if flag else self.name} must be {self.range_text()}, "
                                 f"got {value!r}")
        if isinstance(value, bool) != (self.type is bool):
            raise wrong
        if self.type is bool:
            return value
        if self.type is int and not isinstance(value, int) or not isinstance(value, (int, float)):
            raise wrong
        if self.type is float and not math.isfinite(value):
            raise wrong
        if (self.low is not None and value < self.low or self.high is not None and value > self.high
                or self.above is not None and value <= self.above):
            raise wrong
        return self.type(value)


def _options(*options: Option) -> dict[str, Option]:
    return {option.name: option for option in options}


def _seed_option(what: str) -> Option:
    return Option("seed", int, 0, what, low=0, high=SEED_LIMIT - 1)


# The surfaces' options that a surface around one network and the plane through three share.
_SURFACE_IMAGES = Option("images", int, 1000, "class-balanced subset of N of the TRAINING images the runs were "
                         "trained on (and N test images with test)", low=2, high=CIFAR_TRAIN_IMAGES)
_SURFACE_TEST = Option("test", bool, False, "also the loss and accuracy on test images")


@dataclass(frozen=True)
class AnalysisInfo:
    """One analysis: its name is its node kind, its CLI command and its folder under ``analyses/``."""

    name: str
    per: str  # PER_RUN, PER_PAIR, PER_TRIPLE or PER_ARM_PAIR
    module: str
    function: str  # the run-level shell that computes and writes the result
    reader: str  # reads ``result_file`` (a file, or the folder holding it) back into its result type
    result_file: str
    options: Mapping[str, Option]  # what a study file may set under ``analyses: {name: {...}}``: see the module doc
    takes: tuple[str, ...] = ()  # of "data_source" and "device": what the function takes besides its options
    section: str = ""  # the report section (``report/sections/<section>.py``) that shows it
    summary: str = ""
    same_inputs: bool = False  # planned only for networks that see identically normalised inputs
    aliases: tuple[str, ...] = ()  # other CLI names of its command
    ordered: tuple[tuple[str, str], ...] = ()  # (a, b): option a may not exceed option b
    # Its ``images`` are drawn among the training images its runs were trained on: a study checks there are as many.
    training_images: bool = False
    # Raised when the same options on the same runs give another result (2: training images drawn among those the
    # runs trained on); from 2 on it enters the study's node keys, so that a study computes the result again.
    version: int = 1

    def check_options(self, values: Mapping[str, Any], where: str, flags: bool = False) -> dict[str, Any]:
        """``values`` (a subset of the options) checked and converted; unknown names and ranges are one
        line naming ``where`` (options as flags with ``flags``); every relation of ``ordered`` holds with the
        defaults filled in."""
        checked = {}
        for name, value in values.items():
            if name not in self.options:
                raise MinimascopeError(f"{where}: unknown option {name!r}; {self.name} takes "
                                       f"{', '.join(self.options) or 'none'}")
            checked[name] = self.options[name].check(value, where, flags)
        full = {name: checked.get(name, option.default) for name, option in self.options.items()}
        for small, large in self.ordered:
            if full[small] > full[large]:
                names = [self.options[n].flag if flags else n for n in (small, large)]
                raise MinimascopeError(f"{where}: {names[0]} ({full[small]}) may not exceed {names[1]} "
                                       f"({full[large]})")
        return checked

    def attribute(self, name: str) -> Any:
        return getattr(importlib.import_module(self.module), name)

    def read(self, path: str | Path) -> Any:
        """The result in ``path`` (its result file, or the folder holding it)."""
        return self.attribute(self.reader)(path)

    def run(self, inputs: Sequence[Path] | Mapping[str, Any], out_dir: Path, options: Mapping[str, Any], *,
            data_source: str | None = None, device: str = "auto", study_node: bool = False) -> Any:
        """Compute and write the result of ``inputs`` (run directories, or for PER_ARM_PAIR the mapping
        the study plans) into ``out_dir``. ``study_node``: the study writes one of its own node folders,
        which every function refuses to anyone else."""
        extra = {"data_source": data_source, "device": device}
        keywords = {**options, **{k: extra[k] for k in self.takes}, "study_node": study_node}
        function = self.attribute(self.function)
        if self.per == PER_ARM_PAIR:
            return function(inputs, out_dir, **keywords)
        return function(*inputs, out_dir, **keywords)


ANALYSES: dict[str, AnalysisInfo] = {row.name: row for row in (
    AnalysisInfo("sharpness", PER_RUN, "minimascope.minima.sharpness", "sharpness_of_run", "read_sharpness",
                 "sharpness.json", _options(
                     Option("images", int, 1000, "class-balanced subset of N of the TRAINING images the run was "
                            "trained on (the loss that was minimised)", low=1, high=CIFAR_TRAIN_IMAGES),
                     Option("k", int, 3, "top eigenvalues computed", low=1, high=100),
                     Option("tol", float, 1e-3, "relative residual at which an eigenvalue counts as converged",
                            above=0, high=1),
                     Option("max_iter", int, 100, "at most this many Lanczos steps for the top eigenvalues",
                            low=1, high=10_000),
                     Option("rel_error", float, 1e-2, "Hutchinson trace: stop when its standard error is below "
                            "this share", above=0, high=1),
                     Option("max_probes", int, 1000, "Hutchinson trace: at most this many probes", low=2,
                            high=1_000_000),
                     Option("density_steps", int, 64, "Lanczos steps of the eigenvalue density", low=1, high=10_000),
                     _seed_option("seed of the image subset and of the probes"),
                     Option("adaptive", bool, True, "also λ1 and trace of D·H·D, D = |w| (unchanged by a "
                            "batch-norm rescaling)")),
                 takes=("data_source", "device"), section="sharpness", ordered=(("k", "max_iter"),),
                 training_images=True, version=2,
                 summary="top Hessian eigenvalues, trace and eigenvalue density of a run's training loss, their "
                         "|w|-scaled (rescaling-invariant) λ1 and trace, and the loss at the weights"),
    AnalysisInfo("connectivity", PER_PAIR, "minimascope.minima.connectivity", "connectivity_of_runs",
                 "read_connectivity", "connectivity.json", _options(
                     Option("points", int, 11, "evenly spaced points on the path from A to B, ends included",
                            low=2, high=1001),
                     Option("images", int, 1000, "class-balanced subsets of N train (at most those the runs "
                            "trained on) and N test images", low=2, high=CIFAR_TEST_IMAGES),
                     Option("align", bool, True, "also walk to B with its channels permuted onto A's "
                            "(weight matching)"),
                     _seed_option("seed of the image subsets and of weight matching's order")),
                 takes=("data_source", "device"), section="connectivity", same_inputs=True, aliases=("connect",),
                 version=2,
                 summary="loss and error along the straight line between two runs' weights, and its barrier"),
    AnalysisInfo("weights", PER_RUN, "minimascope.minima.weights", "weights_of_run", "read_weight_statistics",
                 "weights.json", _options(
                     Option("threshold", float, 1e-3, "|w| below this counts as a small weight", above=0)),
                 section="weights",
                 summary="per-layer weight statistics of a run, distance from its initial weights included"),
    AnalysisInfo("mistakes", PER_PAIR, "minimascope.minima.mistakes", "mistakes_of_runs", "read_mistakes",
                 "mistakes.json", _options(
                     Option("limit", int, 32, "at most this many images in each grid of mistakes", low=1,
                            high=CIFAR_TEST_IMAGES),
                     _seed_option("seed of the images the grids show")),
                 takes=("data_source",), section="mistakes",
                 summary="which test images each of two runs gets wrong, against independent errors"),
    AnalysisInfo("landscape", PER_RUN, "minimascope.minima.landscape", "landscape_of_run", "read_landscape",
                 "landscape.json", _options(
                     Option("grid", int, 21, "points per axis, odd (the network is the middle one)", low=3,
                            high=201),
                     Option("span", float, 1.0, "random directions: coordinates in [-span, span] (1 = each filter "
                            "moved by its own norm)", above=0),
                     _SURFACE_IMAGES,
                     _seed_option("seed of the random directions and of the image subset"),
                     Option("dims", int, 2, "1: a line along one random direction; 2: a plane", low=1, high=2),
                     _SURFACE_TEST),
                 takes=("data_source", "device"), section="landscape", training_images=True, version=2,
                 summary="loss and accuracy on a line or plane of weights around a run, along filter-normalised "
                         "random directions (batch-norm statistics recomputed at every point)"),
    AnalysisInfo("landscape-plane", PER_TRIPLE, "minimascope.minima.landscape", "plane_of_runs", "read_landscape",
                 "landscape.json", _options(
                     Option("grid", int, 21, "points per axis, odd", low=3, high=201),
                     Option("margin", float, 0.25, "the plane: the grid covers the three networks with this share "
                            "of their extent on each side", low=0, high=10),
                     _SURFACE_IMAGES,
                     _seed_option("seed of the image subset"),
                     _SURFACE_TEST),
                 takes=("data_source", "device"), section="landscape", same_inputs=True, training_images=True,
                 version=2,
                 summary="loss and accuracy on the plane through three runs' networks of one seed (a then-arm, the "
                         "arm it started from and the plain arm of its optimizer), each network marked"),
    AnalysisInfo("seeds", PER_ARM_PAIR, "minimascope.optimizer_effect", "seed_statistics_of_pair",
                 "read_seed_statistics", "seeds.json", {}, section="seeds",
                 summary="two arms against two seeds of one arm: layer similarities (across vs within) and "
                         "test accuracy, sharpness (paired by seed) and cost per step"),
)}


def analysis(name: str) -> AnalysisInfo:
    if name not in ANALYSES:
        raise MinimascopeError(f"unknown analysis {name!r}; known: {', '.join(ANALYSES)}")
    return ANALYSES[name]
