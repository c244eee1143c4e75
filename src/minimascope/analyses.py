"""The table of analyses: one row per analysis of a minimum (and the seed statistics), read by the
study (which nodes to plan, which options a study file may set, how a node runs), the report (which
reader, which section) and the CLI (which command).

Adding an analysis is its module (a run-level function that writes a versioned result file, and that
file's reader), one row here, and a report template. The modules are imported only when a row is
used, so reading this table loads neither torch nor matplotlib.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minimascope.errors import MinimascopeError

PER_RUN = "run"  # one node per run: function(run_dir, out_dir, **options)
PER_PAIR = "pair"  # one node per compared pair of arms, one seed: function(run_a, run_b, out_dir, **options)
PER_ARM_PAIR = "arm-pair"  # one node per pair of arms over all seeds: function(inputs, out_dir, **options)


@dataclass(frozen=True)
class AnalysisInfo:
    """One analysis: its name is its node kind, its CLI command and its folder under ``analyses/``."""

    name: str
    per: str  # PER_RUN, PER_PAIR or PER_ARM_PAIR
    module: str
    function: str  # the run-level shell that computes and writes the result
    reader: str  # reads ``result_file`` (a file, or the folder holding it) back into its result type
    result_file: str
    options: tuple[str, ...]  # the keys a study file may set under ``analyses: {name: {...}}``
    takes: tuple[str, ...] = ()  # of "data_source" and "device": what the function takes besides its options
    section: str = ""  # the report section (``report/sections/<section>.py``) that shows it
    summary: str = ""
    same_inputs: bool = False  # pairs only of networks that see identically normalised inputs
    aliases: tuple[str, ...] = ()  # other CLI names of its command

    def attribute(self, name: str) -> Any:
        return getattr(importlib.import_module(self.module), name)

    def read(self, path: str | Path) -> Any:
        """The result in ``path`` (its result file, or the folder holding it)."""
        return self.attribute(self.reader)(path)

    def run(self, inputs: Sequence[Path] | Mapping[str, Any], out_dir: Path, options: Mapping[str, Any], *,
            data_source: str | None = None, device: str = "auto") -> Any:
        """Compute and write the result of ``inputs`` (run directories, or for PER_ARM_PAIR the mapping
        the study plans) into ``out_dir``."""
        extra = {"data_source": data_source, "device": device}
        keywords = {**options, **{k: extra[k] for k in self.takes}}
        function = self.attribute(self.function)
        if self.per == PER_ARM_PAIR:
            return function(inputs, out_dir, **keywords)
        return function(*inputs, out_dir, **keywords)


ANALYSES: dict[str, AnalysisInfo] = {row.name: row for row in (
    AnalysisInfo("sharpness", PER_RUN, "minimascope.minima.sharpness", "sharpness_of_run", "read_sharpness",
                 "sharpness.json", ("images", "k", "tol", "max_iter", "rel_error", "max_probes", "density_steps",
                                    "seed", "adaptive"),
                 takes=("data_source", "device"), section="sharpness",
                 summary="top Hessian eigenvalues, trace and eigenvalue density of a run's training loss, their "
                         "|w|-scaled (rescaling-invariant) λ1 and trace, and the loss at the weights"),
    AnalysisInfo("connectivity", PER_PAIR, "minimascope.minima.connectivity", "connectivity_of_runs",
                 "read_connectivity", "connectivity.json", ("points", "images", "align", "seed"),
                 takes=("data_source", "device"), section="connectivity", same_inputs=True, aliases=("connect",),
                 summary="loss and error along the straight line between two runs' weights, and its barrier"),
    AnalysisInfo("weights", PER_RUN, "minimascope.minima.weights", "weights_of_run", "read_weight_statistics",
                 "weights.json", ("threshold",), section="weights",
                 summary="per-layer weight statistics of a run, distance from its initial weights included"),
    AnalysisInfo("mistakes", PER_PAIR, "minimascope.minima.mistakes", "mistakes_of_runs", "read_mistakes",
                 "mistakes.json", ("limit", "seed"), takes=("data_source",), section="mistakes",
                 summary="which test images each of two runs gets wrong, against independent errors"),
    AnalysisInfo("seeds", PER_ARM_PAIR, "minimascope.optimizer_effect", "seed_statistics_of_pair",
                 "read_seed_statistics", "seeds.json", (), section="seeds",
                 summary="two arms against two seeds of one arm: layer similarities (across vs within) and "
                         "test accuracy, sharpness (paired by seed) and cost per step"),
)}


def analysis(name: str) -> AnalysisInfo:
    if name not in ANALYSES:
        raise MinimascopeError(f"unknown analysis {name!r}; known: {', '.join(ANALYSES)}")
    return ANALYSES[name]
