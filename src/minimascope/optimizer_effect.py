"""The seed statistics of a pair of arms: per measure and layer, are networks trained with different
optimizers less alike than two seeds of one optimizer? Do the arms differ in test accuracy, sharpness
and cost per step?

:func:`optimizer_effect_tests` holds the similarities of network pairs "across optimizers" against
those "within an optimizer, across seeds" (:func:`minimascope.stats.permutation_test`): for a
similarity the alternative is that across-optimizer values are lower, for a distance that they are
higher. Each p-value carries its smallest attainable p; the family of one measure's layers is corrected
by Holm (family-wise error) and by Benjamini–Hochberg (false discovery rate), both stored; the effect
size is Cohen's d of across against within (pooled sd). :func:`seed_statistics` adds the scalars
(test accuracy, λ1, trace and their |w|-scaled, rescaling-invariant forms) compared PAIRED BY SEED —
arms of one seed share init and data — with :func:`minimascope.stats.paired_comparison` and the verdict
rule :func:`minimascope.stats.higher_verdict`; :func:`minimascope.minima.step_cost.cost_verdict` decides
"b costs more per step than a" from each seed's ``steps.csv``. :func:`seed_statistics_of_pair` is the
analysis (the ``seeds`` row of :data:`minimascope.analyses.ANALYSES`): it reads the pair's comparison
folders, runs and sharpness results, and writes ``seeds.json`` (format ``minimascope-seeds-v3``) and
``seeds.csv``, which
:func:`read_seed_statistics` reads back, so the report never recomputes them.

A caveat: seed pairs that share a network are not independent (with seeds 0, 1, 2 the pairs (0, 1)
and (0, 2) share seed 0), while the permutation test treats every pair's value as exchangeable under
the null hypothesis; its p-values are then approximate.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_json, atomic_write_text, older_format, read_result_fields
from minimascope.minima.step_cost import StepTimeRatio, cost_verdict, read_step_times, step_time_ratio
from minimascope.similarity import MEASURES, SimilarityMatrix, read_similarity_matrix
from minimascope.stats import (
    EXACT_LIMIT,
    N_PERMUTATIONS,
    ConfidenceInterval,
    PairedComparison,
    PermutationTest,
    SignFlipTest,
    Verdict,
    benjamini_hochberg,
    higher_verdict,
    holm,
    mean_confidence_interval,
    paired_comparison,
    permutation_test,
)

SEEDS_FORMAT = "minimascope-seeds-v3"
OLDER_FORMATS = ("minimascope-seeds-v1", "minimascope-seeds-v2")
SEEDS_JSON = "seeds.json"
SEEDS_CSV = "seeds.csv"
SEEDS_FILES = (SEEDS_JSON, SEEDS_CSV)  # what an output folder of seed statistics holds
WITHIN = "within"  # two seeds of the same optimizer
ACROSS = "across"  # two different optimizers
SCALARS = ("test accuracy", "top eigenvalue λ1", "Hessian trace", "adaptive λ1 (|w|-scaled)",
           "adaptive trace (|w|-scaled)")  # one value per seed of each arm
HYPOTHESIS = ("networks of different optimizers are less alike than two seeds of one optimizer: statistic = "
              "mean(across) - mean(within); alternative 'less' for similarities, 'greater' for distances; "
              "scalars: arm a - arm b paired by seed (same init and data), paired t interval and exact sign-flip "
              "test, two-sided")
CORRECTION = ("per measure, over its layers: p_holm by Holm's step-down method (family-wise error), p_bh by "
              "Benjamini-Hochberg (false discovery rate)")
_CSV_COLUMNS = ("measure", "kind", "layer", "within_n", "within_mean", "within_low", "within_high",
                "across_n", "across_mean", "across_low", "across_high", "statistic", "effect_size", "alternative",
                "p_value", "smallest_attainable_p", "p_holm", "p_bh", "method", "n_arrangements")


@dataclass(frozen=True)
class LayerTest:
    """One measure at one layer: across-optimizer pairs (group a) against within-optimizer pairs (b)."""

    measure: str
    kind: str  # "similarity" or "distance"
    layer: str
    within: ConfidenceInterval
    across: ConfidenceInterval
    test: PermutationTest
    effect_size: float  # Cohen's d, (mean across − mean within) / pooled sd; NaN when undefined
    p_holm: float  # adjusted over the measure's layers (see CORRECTION)
    p_bh: float


@dataclass(frozen=True)
class ScalarTest:
    """One number per seed of each arm (test accuracy, sharpness), arm a against arm b paired by seed."""

    name: str
    seeds: list[int]  # the seeds both arms have, in order; the values below follow them
    arm_a_values: list[float]
    arm_b_values: list[float]
    paired: PairedComparison  # differences a − b
    verdict: Verdict  # "a higher than b" by the paired t rule

    @property
    def test(self) -> SignFlipTest:
        """The exact two-sided sign-flip test of the differences."""
        return self.paired.sign_flip


@dataclass(frozen=True)
class SeedStatistics:
    """What the seed statistics of one pair of arms found; ``problems`` says why something is absent."""

    arms: tuple[str, str]
    within_arms: list[str]  # the arms of the pair that had comparisons of two of their seeds
    tests: list[LayerTest]
    scalars: list[ScalarTest]
    problems: list[str]
    costs: tuple[StepTimeRatio, ...] = ()  # per seed with both runs' steps.csv
    cost: Verdict | None = None  # "b costs more per step than a"


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


def cohens_d(group_a: Sequence[float], group_b: Sequence[float]) -> float:
    """(mean a − mean b) / pooled sd (ddof 1 in each group); NaN when the pooled sd is 0 or undefined."""
    a, b = np.asarray(group_a, dtype=np.float64), np.asarray(group_b, dtype=np.float64)
    if a.size + b.size < 3:
        return math.nan
    pooled = (((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / (a.size + b.size - 2)
    return float((a.mean() - b.mean()) / math.sqrt(pooled)) if pooled > 0 else math.nan


def optimizer_effect_tests(within: Mapping[tuple[str, str], Sequence[float]],
                           across: Mapping[tuple[str, str], Sequence[float]], *,
                           n_permutations: int = N_PERMUTATIONS, seed: int = 0, exact_limit: int = EXACT_LIMIT,
                           level: float = 0.95) -> list[LayerTest]:
    """Per (measure, layer) key of ``within`` (values of pairs of seeds of one optimizer) and
    ``across`` (pairs of networks of different optimizers): both means with their intervals, a
    permutation test of across against within, one-sided towards "less alike across optimizers"
    (lower similarity, higher distance), Cohen's d, and the p-values adjusted over the measure's layers.
    Keys come in ``within``'s order; both must hold the same."""
    if set(within) != set(across):
        only = min(set(within) ^ set(across))
        side = "within-optimizer" if only in within else "across-optimizer"
        raise MinimascopeError(f"measure {only[0]} at layer {only[1]} has only {side} values")
    raw = []
    for measure, layer in within:
        if measure not in MEASURES:
            raise MinimascopeError(f"unknown measure {measure!r}; known: {', '.join(MEASURES)}")
        kind = MEASURES[measure].kind
        within_values, across_values = within[measure, layer], across[measure, layer]
        test = permutation_test(across_values, within_values, alternative="less" if kind == "similarity" else "greater",
                                n_permutations=n_permutations, seed=seed, exact_limit=exact_limit)
        raw.append((measure, kind, layer, mean_confidence_interval(within_values, level),
                    mean_confidence_interval(across_values, level), test, cohens_d(across_values, within_values)))
    adjusted: dict[int, tuple[float, float]] = {}
    for measure in dict.fromkeys(entry[0] for entry in raw):
        family = [i for i, entry in enumerate(raw) if entry[0] == measure]
        p_values = [raw[i][5].p_value for i in family]
        adjusted.update(zip(family, zip(holm(p_values), benjamini_hochberg(p_values))))
    return [LayerTest(*entry, *adjusted[i]) for i, entry in enumerate(raw)]


def scalar_tests(arms: tuple[str, str], scalars: Mapping[str, tuple[Mapping[int, float], Mapping[int, float]]]
                 ) -> list[ScalarTest]:
    """Per name, arm a's and arm b's values by seed, paired on the seeds both have (at least two)."""
    tests = []
    for name, (by_seed_a, by_seed_b) in scalars.items():
        seeds = sorted(set(by_seed_a) & set(by_seed_b))
        if len(seeds) < 2:
            continue
        a, b = [float(by_seed_a[s]) for s in seeds], [float(by_seed_b[s]) for s in seeds]
        tests.append(ScalarTest(name, seeds, a, b, paired_comparison(a, b),
                                higher_verdict(a, b, label_a=arms[0], label_b=arms[1])))
    return tests


def seed_statistics(arms: tuple[str, str], within_of: Mapping[str, Mapping[tuple[str, str], Sequence[float]]],
                    across: Mapping[tuple[str, str], Sequence[float]],
                    scalars: Mapping[str, tuple[Mapping[int, float], Mapping[int, float]]]) -> SeedStatistics:
    """The seed statistics of ``arms`` (a, b): ``within_of`` holds, for each arm of the pair that has
    comparisons of two of its seeds, its :func:`layer_values` over them; ``across`` the layer values of
    the comparisons of a with b. Within-optimizer values pool both arms' (a's first). Tested are the
    (measure, layer) keys present in both; ``scalars`` (name → each arm's values by seed) are compared by
    :func:`scalar_tests`, and only when there are layer tests."""
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
    return SeedStatistics(arms, within_arms, tests, scalar_tests(arms, scalars), [])


# ----------------------------------------------------------------------------- files


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
                         repr(t.test.statistic), cell(t.effect_size), t.test.alternative,
                         *map(repr, (t.test.p_value, t.test.smallest_attainable_p, t.p_holm, t.p_bh)),
                         t.test.method, t.test.n_arrangements])
    return buffer.getvalue()


def _nullables(data: Any) -> Any:
    """NaN → None throughout dicts and lists (JSON has no NaN)."""
    if isinstance(data, dict):
        return {key: _nullables(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_nullables(value) for value in data]
    return None if isinstance(data, float) and math.isnan(data) else data


def write_seed_statistics(result: SeedStatistics, out_dir: str | Path, inputs: Sequence[str] = ()) -> list[Path]:
    """``seeds.json`` (format ``minimascope-seeds-v3``: everything, with ``inputs``, the digest of the
    folders it read) and ``seeds.csv`` (one row per measure and layer); returns the paths written."""
    out = Path(out_dir)
    document = _nullables({
        "format": SEEDS_FORMAT, "arms": list(result.arms), "within_arms": list(result.within_arms),
        "hypothesis": HYPOTHESIS, "correction": CORRECTION, "uncertainty": "across seeds",
        "tests": [asdict(t) for t in result.tests], "scalars": [asdict(s) for s in result.scalars],
        "costs": [asdict(c) for c in result.costs], "cost": None if result.cost is None else asdict(result.cost),
        "problems": list(result.problems), "inputs": list(inputs),
    })
    atomic_write_json(out / SEEDS_JSON, document)
    atomic_write_text(out / SEEDS_CSV, _csv_text(result.tests))
    return [out / SEEDS_JSON, out / SEEDS_CSV]


def read_seed_statistics(path: str | Path) -> SeedStatistics:
    """Read ``seeds.json`` (a file, or the folder holding it) back into :class:`SeedStatistics`; a file of
    an older format is one error line asking for a re-run."""
    if (older := older_format(path, SEEDS_JSON, OLDER_FORMATS)) is not None:
        raise MinimascopeError(f"{path} was written by an older minimascope ({older}, unpaired scalars); "
                               f"re-run the study's seeds analysis to rewrite it")
    fields = read_result_fields(path, SEEDS_FORMAT, SEEDS_JSON, "seed statistics")
    arms = fields.texts("arms", length=2)
    cost = None if fields.raw("cost") is None else fields.child("cost").build(Verdict)
    # a seed whose runs have too few steps for a median's interval has the unbounded interval (0, inf)
    costs = tuple(entry.build(StepTimeRatio, infinite=("low", "high")) for entry in fields.children("costs"))
    return SeedStatistics((arms[0], arms[1]), fields.texts("within_arms"),
                          [entry.build(LayerTest) for entry in fields.children("tests")],
                          [entry.build(ScalarTest) for entry in fields.children("scalars")], fields.texts("problems"),
                          costs, cost)


# ----------------------------------------------------------------------------- the analysis of a pair of arms


def comparison_records(folder: str | Path) -> list[SimilarityMatrix]:
    """The similarity matrices of a comparison folder as written (``<measure>.json``, in the order its
    ``comparison.json`` lists them, else by name), for :func:`layer_values`."""
    from minimascope.compare import read_comparison

    folder = Path(folder)
    if not folder.is_dir():
        raise MinimascopeError(f"comparison folder not found: {folder}")
    record = read_comparison(folder)
    measures = (record or {}).get("measures") or sorted(p.stem for p in folder.glob("*.json") if p.stem in MEASURES)
    if not measures:
        raise MinimascopeError(f"{folder} holds no similarity matrix (<measure>.json)")
    return [read_similarity_matrix(folder / f"{measure}.json") for measure in measures]


def _entries(inputs: Mapping[str, Any], key: str, arm: str | None = None) -> list[dict[str, Any]]:
    """The entries of ``inputs[key]`` (of ``arm`` when given) with their paths as :class:`Path`: ``within``
    in the order given, the others in seed order."""
    try:
        chosen = [{**entry, "path": Path(entry["path"])} for entry in inputs.get(key, [])
                  if arm is None or entry["arm"] == arm]
        return chosen if key == "within" else sorted(chosen, key=lambda entry: int(entry["seed"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise MinimascopeError(f"seed statistics: malformed {key!r} inputs ({type(exc).__name__}: {exc})") from None


def scalar_values(inputs: Mapping[str, Any], arm: str) -> dict[str, dict[int, float]]:
    """Per name of :data:`SCALARS`, ``arm``'s values by seed: the final test accuracy of each completed run
    (run.json), and λ1, the trace and their |w|-scaled forms of each sharpness result."""
    from minimascope.runs import read_run_json

    values: dict[str, dict[int, float]] = {name: {} for name in SCALARS}
    for entry in _entries(inputs, "runs", arm):
        record = read_run_json(entry["path"])
        value = (record.get("final") or {}).get("test_accuracy")
        if record.get("status") == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
            values[SCALARS[0]][int(entry["seed"])] = float(value)
    entries = _entries(inputs, "sharpness", arm)
    if entries:
        from minimascope.minima.sharpness import read_sharpness

        for entry in entries:
            result, seed = read_sharpness(entry["path"]), int(entry["seed"])
            values[SCALARS[1]][seed], values[SCALARS[2]][seed] = result.eigenvalues.values[0], result.trace.value
            if result.adaptive is not None:
                values[SCALARS[3]][seed] = result.adaptive.eigenvalues.values[0]
                values[SCALARS[4]][seed] = result.adaptive.trace.value
    return values


def step_time_ratios(inputs: Mapping[str, Any], arms: tuple[str, str]) -> tuple[StepTimeRatio, ...]:
    """:func:`step_time_ratio` of b over a for every seed where both arms' runs completed with a ``steps.csv``
    (runs of an older minimascope have none: their seeds are left out)."""
    from minimascope.runs import STEPS_CSV, is_completed

    paths = [{int(e["seed"]): e["path"] for e in _entries(inputs, "runs", arm)
              if is_completed(e["path"]) and (e["path"] / STEPS_CSV).is_file()} for arm in arms]
    return tuple(step_time_ratio(read_step_times(paths[0][seed]), read_step_times(paths[1][seed]), seed=seed)
                 for seed in sorted(set(paths[0]) & set(paths[1])))


def seed_statistics_of_pair(inputs: Mapping[str, Any], out_dir: str | Path, *,
                            study_node: bool = False) -> SeedStatistics:
    """:func:`seed_statistics` of the pair of arms ``inputs["arms"]``, with the cost per step of b against
    a, read from the folders ``inputs`` names (the study plans them: ``across``, one comparison of a with b
    per seed; ``within``, comparisons of two seeds of a or of b; ``runs`` and ``sharpness`` of both arms,
    each entry with its ``arm``, ``seed`` and ``path``), written to ``out_dir`` (checked by
    :func:`~minimascope.minima.common.check_analysis_folder`; ``study_node``: the study's own folder)."""
    from minimascope.io import digest
    from minimascope.minima.common import check_analysis_folder, result_folder

    identity = [digest(json.loads(json.dumps(inputs, default=str)))]  # its paths as text
    check_analysis_folder(out_dir, SEEDS_FILES, identity, study_node=study_node)
    arms = tuple(str(arm) for arm in inputs.get("arms", ()))
    if len(arms) != 2 or arms[0] == arms[1]:
        raise MinimascopeError(f"seed statistics need two different arms, got {list(arms)}")
    pair = (arms[0], arms[1])
    across = layer_values(m for entry in _entries(inputs, "across") for m in comparison_records(entry["path"]))
    within_of = {}
    for arm in arms:
        folders = [entry["path"] for entry in _entries(inputs, "within", arm)]
        if folders:
            within_of[arm] = layer_values(m for folder in folders for m in comparison_records(folder))
    values_a, values_b = scalar_values(inputs, arms[0]), scalar_values(inputs, arms[1])
    result = seed_statistics(pair, within_of, across, {name: (values_a[name], values_b[name]) for name in SCALARS})
    costs = step_time_ratios(inputs, pair)
    if costs:
        result = replace(result, costs=costs, cost=cost_verdict(costs, label_a=arms[0], label_b=arms[1]))
    with result_folder(out_dir, SEEDS_FILES, identity, study_node=study_node) as out:
        write_seed_statistics(result, out, identity)
    return result
