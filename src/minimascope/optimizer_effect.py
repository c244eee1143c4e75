"""The seed statistics of a pair of arms: per measure and layer, are networks trained with different
optimizers less alike than two seeds of one optimizer? And do the arms' seeds differ in test accuracy,
top Hessian eigenvalue and Hessian trace?

:func:`optimizer_effect_tests` holds the similarities of network pairs "across optimizers" against
those "within an optimizer, across seeds" (:func:`minimascope.stats.permutation_test`): for a
similarity the alternative is that across-optimizer values are lower, for a distance that they are
higher. :func:`seed_statistics` adds two-sided permutation tests of the scalars between the arms'
seeds. :func:`seed_statistics_of_pair` is the analysis (the ``seeds`` row of
:data:`minimascope.analyses.ANALYSES`): it reads the pair's comparison folders, runs and sharpness
results, and writes ``seeds.json`` and ``seeds.csv``, which :func:`read_seed_statistics` reads back,
so the report never recomputes them.

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
from minimascope.io import atomic_write_json, atomic_write_text, read_json, read_result_json
from minimascope.similarity import MEASURES, SimilarityMatrix
from minimascope.stats import (
    EXACT_LIMIT,
    N_PERMUTATIONS,
    ConfidenceInterval,
    PermutationTest,
    mean_confidence_interval,
    permutation_test,
)

SEEDS_FORMAT = "minimascope-seeds-v2"
SEEDS_JSON = "seeds.json"
SEEDS_CSV = "seeds.csv"
WITHIN = "within"  # two seeds of the same optimizer
ACROSS = "across"  # two different optimizers
SCALARS = ("test accuracy", "top eigenvalue λ1", "Hessian trace")  # one value per seed of each arm
HYPOTHESIS = ("networks of different optimizers are less alike than two seeds of one optimizer: statistic = "
              "mean(across) - mean(within); alternative 'less' for similarities, 'greater' for distances; "
              "scalars: mean(arm a) - mean(arm b), two-sided")
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


@dataclass(frozen=True)
class ScalarTest:
    """One number per seed of each arm (test accuracy, top eigenvalue, trace), arm a against arm b."""

    name: str
    arm_a_values: list[float]
    arm_b_values: list[float]
    test: PermutationTest  # two-sided; statistic = mean(a) - mean(b)


@dataclass(frozen=True)
class SeedStatistics:
    """What the seed statistics of one pair of arms found; ``problems`` says why something is absent."""

    arms: tuple[str, str]
    within_arms: list[str]  # the arms of the pair that had comparisons of two of their seeds
    tests: list[LayerTest]
    scalars: list[ScalarTest]
    problems: list[str]


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


def seed_statistics(arms: tuple[str, str], within_of: Mapping[str, Mapping[tuple[str, str], Sequence[float]]],
                    across: Mapping[tuple[str, str], Sequence[float]],
                    scalars: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> SeedStatistics:
    """The seed statistics of ``arms`` (a, b): ``within_of`` holds, for each arm of the pair that has
    comparisons of two of its seeds, its :func:`layer_values` over them; ``across`` the layer values of
    the comparisons of a with b. Within-optimizer values pool both arms' (a's first). Tested are the
    (measure, layer) keys present in both; ``scalars`` (name → each arm's values, one per seed) are tested
    two-sided when each arm has at least two values, and only when there are layer tests."""
    within_arms = [arm for arm in arms if arm in within_of]
    if not within_arms:
        return SeedStatistics(arms, [], [], [], [f"neither {arms[0]} nor {arms[1]} has comparisons of two of "
                                                 f"its seeds"])
    within: dict[tuple[str, str], list[float]] = {}
    for arm in within_arms:
        for key, values in within_of[arm].items():
            within.setdefault(key, []).extend(values)
    keys = [key for key in within if key in across]
    if not keys:
        return SeedStatistics(arms, within_arms, [], [], ["no measure and layer with both kinds of comparison"])
    tests = optimizer_effect_tests({k: within[k] for k in keys}, {k: across[k] for k in keys})
    scalar_tests = [ScalarTest(name, list(a), list(b), permutation_test(a, b, alternative="two-sided"))
                    for name, (a, b) in scalars.items() if len(a) >= 2 and len(b) >= 2]
    return SeedStatistics(arms, within_arms, tests, scalar_tests, [])


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


def _layer_test_dict(t: LayerTest) -> dict[str, Any]:
    return {"measure": t.measure, "kind": t.kind, "layer": t.layer, "within": _interval_dict(t.within),
            "across": _interval_dict(t.across), "test": asdict(t.test)}


def write_seed_statistics(result: SeedStatistics, out_dir: str | Path) -> list[Path]:
    """``seeds.json`` (format ``minimascope-seeds-v2``: everything) and ``seeds.csv`` (one row per
    measure and layer); returns the paths written."""
    out = Path(out_dir)
    document = {
        "format": SEEDS_FORMAT, "arms": list(result.arms), "within_arms": list(result.within_arms),
        "hypothesis": HYPOTHESIS, "tests": [_layer_test_dict(t) for t in result.tests],
        "scalars": [{"name": s.name, "arm_a_values": s.arm_a_values, "arm_b_values": s.arm_b_values,
                     "test": asdict(s.test)} for s in result.scalars],
        "problems": list(result.problems),
    }
    atomic_write_json(out / SEEDS_JSON, document)
    atomic_write_text(out / SEEDS_CSV, _csv_text(result.tests))
    return [out / SEEDS_JSON, out / SEEDS_CSV]


def read_seed_statistics(path: str | Path) -> SeedStatistics:
    """Read ``seeds.json`` (a file, or the folder holding it) back into :class:`SeedStatistics`."""
    data = read_result_json(path, SEEDS_FORMAT, SEEDS_JSON, "seed statistics")
    try:
        arm_a, arm_b = (str(arm) for arm in data["arms"])
        tests = [LayerTest(entry["measure"], entry["kind"], entry["layer"], _interval(entry["within"]),
                           _interval(entry["across"]), PermutationTest(**entry["test"])) for entry in data["tests"]]
        scalars = [ScalarTest(entry["name"], [float(v) for v in entry["arm_a_values"]],
                              [float(v) for v in entry["arm_b_values"]], PermutationTest(**entry["test"]))
                   for entry in data["scalars"]]
        return SeedStatistics((arm_a, arm_b), [str(arm) for arm in data["within_arms"]], tests, scalars,
                              [str(problem) for problem in data["problems"]])
    except (KeyError, TypeError, ValueError) as exc:
        raise MinimascopeError(f"{path}: malformed {SEEDS_FORMAT} file ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------- the analysis of a pair of arms


def comparison_records(folder: str | Path) -> list[dict[str, Any]]:
    """The similarity matrices of a comparison folder as written (``<measure>.json``, in the order its
    ``comparison.json`` lists them, else by name), for :func:`layer_values`."""
    from minimascope.compare import COMPARISON_JSON, read_comparison

    folder = Path(folder)
    if not folder.is_dir():
        raise MinimascopeError(f"comparison folder not found: {folder}")
    record = read_comparison(folder)
    measures = (record or {}).get("measures") or sorted(p.stem for p in folder.glob("*.json")
                                                         if p.name != COMPARISON_JSON)
    if not measures:
        raise MinimascopeError(f"{folder} holds no similarity matrix (<measure>.json)")
    return [read_json(folder / f"{measure}.json", "similarity matrix") for measure in measures]


def _entries(inputs: Mapping[str, Any], key: str, arm: str | None = None) -> list[dict[str, Any]]:
    """The entries of ``inputs[key]`` (of ``arm`` when given) with their paths as :class:`Path`: ``within``
    in the order given, the others in seed order."""
    try:
        chosen = [{**entry, "path": Path(entry["path"])} for entry in inputs.get(key, [])
                  if arm is None or entry["arm"] == arm]
        return chosen if key == "within" else sorted(chosen, key=lambda entry: int(entry["seed"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise MinimascopeError(f"seed statistics: malformed {key!r} inputs ({type(exc).__name__}: {exc})") from None


def scalar_values(inputs: Mapping[str, Any], arm: str) -> dict[str, list[float]]:
    """Per name of :data:`SCALARS`, ``arm``'s values in seed order: the final test accuracy of each
    completed run (run.json), and λ1 and the trace of each sharpness result."""
    from minimascope.runs import read_run_json

    accuracies = []
    for entry in _entries(inputs, "runs", arm):
        record = read_run_json(entry["path"])
        value = (record.get("final") or {}).get("test_accuracy")
        if record.get("status") == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
            accuracies.append(float(value))
    values = {SCALARS[0]: accuracies, SCALARS[1]: [], SCALARS[2]: []}
    entries = _entries(inputs, "sharpness", arm)
    if entries:
        from minimascope.minima.sharpness import read_sharpness

        for entry in entries:
            result = read_sharpness(entry["path"])
            values[SCALARS[1]].append(result.eigenvalues.values[0])
            values[SCALARS[2]].append(result.trace.value)
    return values


def seed_statistics_of_pair(inputs: Mapping[str, Any], out_dir: str | Path) -> SeedStatistics:
    """:func:`seed_statistics` of the pair of arms ``inputs["arms"]``, read from the folders ``inputs``
    names (the study plans them: ``across``, one comparison of a with b per seed; ``within``, comparisons
    of two seeds of a or of b; ``runs`` and ``sharpness`` of both arms, each entry with its ``arm``,
    ``seed`` and ``path``), written to ``out_dir``."""
    from minimascope.minima.common import check_analysis_folder

    out = check_analysis_folder(out_dir)
    arms = tuple(str(arm) for arm in inputs.get("arms", ()))
    if len(arms) != 2 or arms[0] == arms[1]:
        raise MinimascopeError(f"seed statistics need two different arms, got {list(arms)}")
    across = layer_values(m for entry in _entries(inputs, "across") for m in comparison_records(entry["path"]))
    within_of = {}
    for arm in arms:
        folders = [entry["path"] for entry in _entries(inputs, "within", arm)]
        if folders:
            within_of[arm] = layer_values(m for folder in folders for m in comparison_records(folder))
    values_a, values_b = scalar_values(inputs, arms[0]), scalar_values(inputs, arms[1])
    result = seed_statistics((arms[0], arms[1]), within_of, across,
                             {name: (values_a[name], values_b[name]) for name in SCALARS})
    write_seed_statistics(result, out)
    return result
