"""k-fold tuning: a grid of train options × k stratified, seeded folds of the training set.

A tune file (YAML)::

    defaults: {train_subset: 5000, epochs: 20}      # options every setting shares
    folds: 5                                        # k (default 5)
    seed: 0                                         # seed of the folds, the init and the data order
    grid:                                           # one mapping, or a list of them (their union)
      - {optimizer: sgd, lr: [0.001, 0.01, 0.1]}    # a list is the values to try; for an option
      - {optimizer: adahessian, lr: [0.015, 0.15, 1.5]}   # that is itself a list, give a list of lists

Every setting trains on one data set (``dataset:`` in the defaults, cifar10 when none), whose classes the
folds are checked against. Each (setting, fold) is a run node of the study machinery (so it resumes and
runs on Ray), trained on the other k-1 folds and validated on its fold (run.json's final
``val_accuracy``/``val_loss``).
Writes ``tune.csv`` (one row per setting and fold), ``tune-summary.csv`` (mean ± std over folds,
ranked by mean validation accuracy) and ``best.yaml``: the best setting's options, usable as a
study file's ``defaults``.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minimascope import datasets, io
from minimascope.analyses import SEED_LIMIT
from minimascope.errors import MinimascopeError
from minimascope.study import StudyOutcome, resolve_data, run_nodes
from minimascope.study.graph import Node
from minimascope.study.plan import assign_keys
from minimascope.study.records import check_setting_name, check_study_folder, write_csv
from minimascope.study.spec import checked_config, resolve_source, train_options
from minimascope.study.state import StudyProgress

TUNE_KEYS = ("defaults", "grid", "folds", "seed")
TUNE_PRESETS = ("tune",)
TUNE_CSV, SUMMARY_CSV, BEST_YAML = "tune.csv", "tune-summary.csv", "best.yaml"
# Set by the tune itself.
NOT_IN_GRID = ("seed", "data_seed", "folds", "fold", "val_size", "init_from", "weights")


@dataclass(frozen=True)
class TuneSpec:
    name: str
    source: str
    defaults: dict[str, Any]
    settings: tuple[dict[str, Any], ...]  # each the grid options of one setting
    folds: int
    seed: int

    def setting_name(self, setting: dict[str, Any]) -> str:
        def text(value: Any) -> str:
            return ";".join(f"{v:g}" for v in value) if isinstance(value, tuple) else \
                f"{value:g}" if isinstance(value, float) else str(value)

        return ",".join(f"{k}={text(v)}" for k, v in setting.items())


def _grid(raw: Any, where: str) -> list[dict[str, Any]]:
    groups = raw if isinstance(raw, list) else [raw]
    if not groups or not all(isinstance(g, dict) and g for g in groups):
        raise MinimascopeError(f"{where}: must be a mapping of options to values, or a non-empty list of them")
    settings = []
    for group in groups:
        keys = [str(k).replace("-", "_") for k in group]
        for key in keys:
            if key in NOT_IN_GRID:
                raise MinimascopeError(f"{where}: {key} is set by the tune itself, not by the grid")
        choices = [v if isinstance(v, list) else [v] for v in group.values()]
        if not all(choices):
            raise MinimascopeError(f"{where}: an option has an empty list of values")
        settings += [train_options(dict(zip(keys, values)), where) for values in itertools.product(*choices)]
    return settings


def load_tune(text: str | Path, folds: int | None = None) -> TuneSpec:
    """A tune from a preset name or a tune file (see the module doc)."""
    file, name, source = resolve_source(text, TUNE_PRESETS)
    values = io.read_yaml_mapping(file)
    if not values:
        raise MinimascopeError(f"{file} is empty: a tune file needs a 'grid'")
    for key in values:
        if key not in TUNE_KEYS:
            raise MinimascopeError(f"{file}: unknown key {key!r}; expected one of {', '.join(TUNE_KEYS)}")
    if "grid" not in values:
        raise MinimascopeError(f"{file}: no 'grid' of options to try")
    raw_defaults = values.get("defaults") or {}
    if isinstance(raw_defaults, dict) and any(str(k).replace("-", "_") in NOT_IN_GRID for k in raw_defaults):
        raise MinimascopeError(f"{file}: defaults: {', '.join(NOT_IN_GRID)} are set by the tune itself")
    defaults = train_options(raw_defaults, f"{file}: defaults")
    k = folds if folds is not None else values.get("folds", 5)
    seed = values.get("seed", 0)
    for key, value, low in (("folds", k, 2), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value < SEED_LIMIT:
            raise MinimascopeError(f"{file}: {key}: must be an integer in {low}..2**63-1, got {value!r}")
    settings = _grid(values["grid"], f"{file}: grid")
    for setting in settings:
        checked_config({**defaults, **setting, "folds": k, "fold": 0}, f"{file}: grid")
    spec = TuneSpec(name, source, defaults, tuple(settings), k, seed)
    classes = datasets.get(tune_dataset(spec)).classes
    if classes is not None:  # an image folder's classes are known once it is read (run_tune checks them then)
        _check_subset_folds(spec, len(classes))
    names = [check_setting_name(spec.setting_name(s), f"{file}: grid") for s in settings]
    if len(set(names)) != len(names):
        raise MinimascopeError(f"{file}: grid: a setting is listed twice")
    return spec


def check_folds(folds: int, per_class: int, where: str, what: str) -> None:
    """Each fold holds out part of every class: a class with fewer images than folds leaves a fold without it."""
    if folds > per_class:
        raise MinimascopeError(f"{where}: {folds} folds need at least {folds} training images of each class; "
                               f"{what} has {per_class} of its smallest class")


def tune_dataset(spec: TuneSpec) -> str:
    """The one data set every setting trains on; settings that name two are one line."""
    found = list(dict.fromkeys(s.get("dataset", spec.defaults.get("dataset", datasets.DEFAULT))
                               for s in spec.settings))
    if len(found) > 1:
        raise MinimascopeError(f"{spec.source}: grid: the settings name {len(found)} data sets "
                               f"({', '.join(found)}); a tune ranks settings on one data set")
    return found[0]


def _check_subset_folds(spec: TuneSpec, classes: int) -> None:
    """A train_subset is class-balanced: its smallest class holds train_subset // classes images."""
    for setting in spec.settings:
        subset = setting.get("train_subset", spec.defaults.get("train_subset"))
        if subset:
            check_folds(spec.folds, subset // classes, f"{spec.source}: folds", f"train_subset {subset}")


def _check_folds_of_data(spec: TuneSpec, data: str, dataset: str) -> None:
    """The folds against the smallest class: of the training set, for settings that train on all of it; of
    each class-balanced subset, where the data set's classes are known only from its files (an image folder)."""
    whole = not all(s.get("train_subset", spec.defaults.get("train_subset")) for s in spec.settings)
    if not whole and datasets.get(dataset).classes is not None:
        return
    import torch

    from minimascope import data as data_sets

    loaded = data_sets.load(dataset, data)
    _check_subset_folds(spec, len(loaded.classes))
    if whole:
        smallest = int(torch.bincount(loaded.train_labels, minlength=len(loaded.classes)).min())
        check_folds(spec.folds, smallest, f"{spec.source}: folds", f"the training set of {data}")


def tune_nodes(spec: TuneSpec, data: str) -> list[Node]:
    from minimascope.config import TrainConfig

    nodes = []
    for setting in spec.settings:
        name = spec.setting_name(setting)
        for fold in range(spec.folds):
            config = TrainConfig.from_mapping({**spec.defaults, **setting, "folds": spec.folds, "fold": fold,
                                               "seed": spec.seed, "data_seed": spec.seed, "data": data})
            nodes.append(Node(id=f"run:{name}:fold{fold}", kind="run", path=f"runs/{name}/fold{fold}",
                              params={"config": config.to_dict(), "init_node": None, "init_path": None},
                              labels={"arm": name, "seed": spec.seed, "fold": fold}))
    return assign_keys(nodes)


def rank_settings(spec: TuneSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std of validation accuracy and loss over the completed folds of each setting, best
    mean accuracy first (settings without a completed fold last, unranked)."""
    summary = []
    for setting in spec.settings:
        name = spec.setting_name(setting)
        done = [r for r in rows if r["setting"] == name and r["status"] == "completed"]
        accuracy, loss = [r["val_accuracy"] for r in done], [r["val_loss"] for r in done]

        def spread(values: list[float]) -> float | None:
            return statistics.stdev(values) if len(values) > 1 else 0.0 if values else None

        summary.append({"setting": name, **setting, "folds_completed": len(done),
                        "val_accuracy_mean": statistics.fmean(accuracy) if accuracy else None,
                        "val_accuracy_std": spread(accuracy),
                        "val_loss_mean": statistics.fmean(loss) if loss else None, "val_loss_std": spread(loss)})
    summary.sort(key=lambda r: (r["val_accuracy_mean"] is None, -(r["val_accuracy_mean"] or 0.0)))
    for rank, row in enumerate(summary, 1):
        row["rank"] = rank if row["val_accuracy_mean"] is not None else None
    return summary


def run_tune(spec: TuneSpec, tune_dir: str | Path, *, data: str | None = None, executor: str = "local",
             executor_options: dict[str, Any] | None = None,
             progress: StudyProgress | None = None) -> tuple[StudyOutcome, list[dict[str, Any]]]:
    """Run (or continue) every (setting, fold) into ``tune_dir`` and write the CSVs and ``best.yaml``."""
    import yaml

    from minimascope import data as data_sets

    tune_dir = Path(tune_dir)
    check_study_folder(tune_dir, "tune")
    dataset = tune_dataset(spec)
    data = resolve_data(data, spec.defaults.get("data"), dataset)
    _check_folds_of_data(spec, data, dataset)
    nodes = tune_nodes(spec, data)
    header = {"name": spec.name, "source": spec.source,
              "data": {"source": data, "key": data_sets.content_key(data, dataset), "dataset": dataset},
              "folds": spec.folds, "seed": spec.seed, "executor": executor}
    outcome = run_nodes(nodes, tune_dir, header, executor=executor, executor_options=executor_options,
                        progress=progress)
    rows = []
    for node in nodes:
        record = outcome.records[node.id]
        final = record.get("final") or {}
        rows.append({"setting": node.labels["arm"], "fold": node.labels["fold"], "status": record["status"],
                     "val_accuracy": final.get("val_accuracy"), "val_loss": final.get("val_loss")})
    write_csv(tune_dir / TUNE_CSV, ("setting", "fold", "status", "val_accuracy", "val_loss"), rows)
    ranked = rank_settings(spec, rows)
    options = list(dict.fromkeys(k for s in spec.settings for k in s))
    write_csv(tune_dir / SUMMARY_CSV, ("rank", "setting", *options, "val_accuracy_mean", "val_accuracy_std",
                                       "val_loss_mean", "val_loss_std", "folds_completed"),
              [{**r, **{k: ";".join(map(str, v)) if isinstance(v, tuple) else v for k, v in r.items()
                        if k in options}} for r in ranked])
    if ranked and ranked[0]["rank"] is not None:
        best = ranked[0]
        setting = next(s for s in spec.settings if spec.setting_name(s) == best["setting"])
        text = (f"# best of {len(spec.settings)} settings by mean validation accuracy over {spec.folds} folds "
                f"({best['val_accuracy_mean']:.4f} ± {best['val_accuracy_std']:.4f}); {spec.source}\n"
                f"# usable as a study file's defaults: `defaults: {BEST_YAML}`\n")
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in setting.items()}
        io.atomic_write_text(tune_dir / BEST_YAML, text + yaml.safe_dump(values, sort_keys=False))
    return outcome, ranked
