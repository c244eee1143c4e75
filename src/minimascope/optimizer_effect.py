"""The optimizer-versus-seed tests: per measure and layer, are networks trained with different
optimizers less alike than two seeds of one optimizer?

:func:`optimizer_effect_tests` holds the similarities of network pairs "across optimizers" against
those "within an optimizer, across seeds" (:func:`minimascope.stats.permutation_test`): for a
similarity the alternative is that across-optimizer values are lower, for a distance that they are
higher. Written as ``seeds.json`` and ``seeds.csv`` with a reader, so the report never recomputes them.

A caveat: seed pairs that share a network are not independent (with seeds 0, 1, 2 the pairs (0, 1)
and (0, 2) share seed 0), while the permutation test treats every pair's value as exchangeable under
the null hypothesis. The p-values are then approximate, and they are per test: with 21 layers × 3
measures some will be small by chance.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_json, atomic_write_text, read_result_json
from minimascope.similarity import MEASURES, SimilarityMatrix
from minimascope.stats import (
    EXACT_LIMIT,
    N_PERMUTATIONS,
    ConfidenceInterval,
    PermutationTest,
    mean_confidence_interval,
    permutation_test,
)

SEEDS_FORMAT = "minimascope-seeds-v1"
SEEDS_JSON = "seeds.json"
SEEDS_CSV = "seeds.csv"
WITHIN = "within"  # two seeds of the same optimizer
ACROSS = "across"  # two different optimizers
_CSV_COLUMNS = ("measure", "kind", "layer", "within_n", "within_mean", "within_low", "within_high",
                "across_n", "across_mean", "across_low", "across_high", "statistic", "alternative", "p_value",
                "method", "n_arrangements")


@dataclass(frozen=True)
class LayerTest:
    """One measure at one layer: across-optimizer pairs (group a) against within-optimizer pairs (b)."""

    measure: str
    kind: str  # "similarity" or "distance"
    layer: str
    within: ConfidenceInterval
    across: ConfidenceInterval
    test: PermutationTest


# ----------------------------------------------------------------------------- optimizers vs seeds


def layer_values(matrices: Iterable[SimilarityMatrix | Mapping[str, Any]]) -> dict[tuple[str, str], list[float]]:
    """(measure, layer) → the values of every matrix at (layer of A, the same layer of B): one
    value per network pair. Takes :class:`SimilarityMatrix` objects or their ``to_dict()`` form
    (what ``compare`` writes as ``<measure>.json``)."""
    values: dict[tuple[str, str], list[float]] = {}
    for matrix in matrices:
        fields = matrix if isinstance(matrix, Mapping) else matrix.to_dict()
        try:
            layers_a, layers_b, table = list(fields["layers_a"]), list(fields["layers_b"]), fields["values"]
            column = {name: j for j, name in enumerate(layers_b)}
            for i, name in enumerate(layers_a):
                if name in column:
                    values.setdefault((fields["measure"], name), []).append(float(table[i][column[name]]))
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise MinimascopeError(f"not a similarity matrix ({type(exc).__name__}: {exc})") from None
    return values


def optimizer_effect_tests(within: Mapping[tuple[str, str], Sequence[float]],
                           across: Mapping[tuple[str, str], Sequence[float]], *,
                           n_permutations: int = N_PERMUTATIONS, seed: int = 0, exact_limit: int = EXACT_LIMIT,
                           level: float = 0.95) -> list[LayerTest]:
    """Per (measure, layer) key of ``within`` (values of pairs of seeds of one optimizer) and
    ``across`` (pairs of networks of different optimizers): both means with their intervals, and
    a permutation test of across against within, one-sided towards "less alike across optimizers"
    (lower similarity, higher distance). Keys come in ``within``'s order; both must hold the same."""
    if set(within) != set(across):
        only = min(set(within) ^ set(across))
        side = "within-optimizer" if only in within else "across-optimizer"
        raise MinimascopeError(f"measure {only[0]} at layer {only[1]} has only {side} values")
    tests = []
    for measure, layer in within:
        if measure not in MEASURES:
            raise MinimascopeError(f"unknown measure {measure!r}; known: {', '.join(MEASURES)}")
        kind = MEASURES[measure].kind
        within_values, across_values = within[measure, layer], across[measure, layer]
        test = permutation_test(across_values, within_values, alternative="less" if kind == "similarity" else "greater",
                                n_permutations=n_permutations, seed=seed, exact_limit=exact_limit)
        tests.append(LayerTest(measure, kind, layer, mean_confidence_interval(within_values, level),
                               mean_confidence_interval(across_values, level), test))
    return tests


# ----------------------------------------------------------------------------- files


def _nullable(value: float) -> float | None:
    return None if math.isnan(value) else value


def _interval_dict(interval: ConfidenceInterval) -> dict[str, Any]:
    return {key: _nullable(value) if isinstance(value, float) else value for key, value in asdict(interval).items()}


def _interval(data: Mapping[str, Any]) -> ConfidenceInterval:
    def number(key: str) -> float:
        return math.nan if data[key] is None else float(data[key])

    return ConfidenceInterval(number("mean"), number("low"), number("high"), float(data["level"]), int(data["n"]),
                              number("std"))


def _csv_text(tests: Sequence[LayerTest]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)

    def cell(value: float) -> str:
        return "" if math.isnan(value) else repr(value)

    for t in tests:
        writer.writerow([t.measure, t.kind, t.layer,
                         t.within.n, *map(cell, (t.within.mean, t.within.low, t.within.high)),
                         t.across.n, *map(cell, (t.across.mean, t.across.low, t.across.high)),
                         repr(t.test.statistic), t.test.alternative, repr(t.test.p_value), t.test.method,
                         t.test.n_arrangements])
    return buffer.getvalue()


def write_optimizer_effect_tests(tests: Sequence[LayerTest], out_dir: str | Path) -> list[Path]:
    """``seeds.json`` (format ``minimascope-seeds-v1``) and ``seeds.csv`` (one row per measure and
    layer); returns the paths written."""
    out = Path(out_dir)
    document = {
        "format": SEEDS_FORMAT,
        "hypothesis": "networks of different optimizers are less alike than two seeds of one optimizer: "
                      "statistic = mean(across) - mean(within); alternative 'less' for similarities, "
                      "'greater' for distances",
        "tests": [{"measure": t.measure, "kind": t.kind, "layer": t.layer, "within": _interval_dict(t.within),
                   "across": _interval_dict(t.across), "test": asdict(t.test)} for t in tests],
    }
    atomic_write_json(out / SEEDS_JSON, document)
    atomic_write_text(out / SEEDS_CSV, _csv_text(tests))
    return [out / SEEDS_JSON, out / SEEDS_CSV]


def read_optimizer_effect_tests(path: str | Path) -> list[LayerTest]:
    """Read ``seeds.json`` (a file, or the folder holding it) back into :class:`LayerTest` rows."""
    data = read_result_json(path, SEEDS_FORMAT, SEEDS_JSON)
    try:
        return [LayerTest(entry["measure"], entry["kind"], entry["layer"], _interval(entry["within"]),
                          _interval(entry["across"]), PermutationTest(**entry["test"])) for entry in data["tests"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise MinimascopeError(f"{path}: malformed {SEEDS_FORMAT} file ({type(exc).__name__}: {exc})") from None
