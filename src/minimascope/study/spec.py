"""The study file: read, validate and resolve it, one clear error per mistake (file, arm and key named).

A study file (YAML) holds::

    defaults: {train options shared by every arm}     # or the path of a YAML holding them (tune's best.yaml)
    seeds: [0, 1]
    arms:
      sgd: {optimizer: sgd}
      adahessian-then-sgd: {optimizer: sgd, init_from: adahessian}   # that arm's final weights, same seed
    compare: {measures: [cka, svcca, procrustes], samples: 10000, pairs: all, within: true}
    analyses:                                         # optional: describe each minimum
      sharpness: {images: 1000, arms: [sgd, adahessian]}   # per run (of these arms; default all): Hessian
                                                      # eigenvalues, trace, density
      weights: {threshold: 1.0e-3}                    # per run: norms, distance from init, ranks
      connectivity: {points: 11, images: 1000}        # per compared pair with the same normalisation
      mistakes: {}                                    # per compared pair: which test images each gets wrong
      landscape: {grid: 7, images: 100}               # per run: the loss surface around its network
      landscape-plane: {grid: 7, images: 100}         # per then-arm and seed: the plane through the arm it
                                                      # started from, it and the plain arm of its optimizer
      across_seeds: [sgd, adahessian]                 # compare every two seeds of one arm; with two or more
                                                      # seeds, the seed statistics of each compared pair of
                                                      # different arms that holds one of these

Every ``train`` option is a key of ``defaults`` and of each arm, checked as ``train`` checks it;
``seed`` comes from ``seeds`` and ImageNet weights from the command line, so neither is a key. Arm
names are folder names (:func:`minimascope.study.records.check_arm_name`: at most 64 letters, digits,
``_ . + -``, no ``..``, no ``_vs_``), seeds lie in 0..2**63-1, ``samples`` is at most the arms' test
subset (the test set's 10,000 without one), and each analysis option is checked against its row of
:data:`minimascope.analyses.ANALYSES` (type, range): every mistake is one line before anything runs.
Presets ship in the package (``presets/<name>.yaml``) and are named instead of a path.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from minimascope.analyses import ANALYSES, CIFAR_TEST_IMAGES, PER_ARM_PAIR
from minimascope.config import TrainConfig
from minimascope.errors import MinimascopeError
from minimascope.io import read_yaml_mapping
from minimascope.study.graph import topological_order
from minimascope.study.records import check_arm_name, check_seed, shown

STUDY_KEYS = ("defaults", "seeds", "arms", "compare", "analyses")
# Each analysis a study file names under ``analyses`` and the options of its function it may set.
# Analyses of a pair of arms over all seeds are not named: ``across_seeds`` plans them.
ANALYSIS_OPTIONS = {name: row.options for name, row in ANALYSES.items() if row.per != PER_ARM_PAIR}
COMPARE_KEYS = ("measures", "samples", "pairs", "within", "layer_set", "policy", "bootstrap")
# Set by the study itself, not by its file.
NOT_IN_STUDY_FILE = {
    "seed": "seeds are given by the study's 'seeds' list",
    "weights": "ImageNet weights come from --weights FILE or MINIMASCOPE_IMAGENET_WEIGHTS",
}
STUDY_PRESETS = ("paper", "quick", "tiny", "optimizers")


def reads_imagenet_file(options: dict[str, Any]) -> bool:
    """Whether an arm starts from the study's ImageNet weights file: a pretrained resnet18 (a pretrained arm of
    another architecture fetches its own published weights when its run starts)."""
    return bool(options.get("pretrained")) and options.get("arch", "resnet18") == "resnet18"


@dataclass(frozen=True)
class Arm:
    """One arm: its train options (defaults merged in, as given: not yet a TrainConfig) and the
    arm whose final weights it starts from."""

    name: str
    options: dict[str, Any]
    init_from: str | None = None

    def config(self, seed: int, data: str | None = None, weights: str | None = None,
               init_dir: str | None = None) -> TrainConfig:
        """The arm's TrainConfig for one seed (paths filled in by whoever runs it)."""
        values = {**self.options, "seed": seed, "data": data, "init_from": init_dir}
        if weights is not None and reads_imagenet_file(values):
            values["weights"] = weights
        return TrainConfig.from_mapping(values)


@dataclass(frozen=True)
class CompareSpec:
    measures: tuple[str, ...] = ("cka", "svcca", "procrustes")
    samples: int = 10_000
    pairs: str | tuple[tuple[str, str], ...] = "all"
    within: bool | tuple[str, ...] = True
    layer_set: str = "conv_linear"
    policy: str = "flatten"
    bootstrap: int = 0  # image subsamples for CKA intervals (minimascope.bootstrap); 0: none

    def pair_list(self, arms: list[str]) -> list[tuple[str, str]]:
        """Every compared (a, b), within-network comparisons (a, a) included, in a fixed order."""
        pairs = ([(a, b) for i, a in enumerate(arms) for b in arms[i + 1:]] if self.pairs == "all"
                 else list(self.pairs))
        within = arms if self.within is True else [] if self.within is False else list(self.within)
        return pairs + [(a, a) for a in within]

    def to_dict(self) -> dict[str, Any]:
        return {"measures": list(self.measures), "samples": self.samples,
                "pairs": self.pairs if self.pairs == "all" else [list(p) for p in self.pairs],
                "within": self.within if isinstance(self.within, bool) else list(self.within),
                "layer_set": self.layer_set, "policy": self.policy,
                # only when set, so that the keys of studies without it stay what they were
                **({"bootstrap": self.bootstrap} if self.bootstrap else {})}


@dataclass(frozen=True)
class AnalysesSpec:
    """Which analyses run, each with its options (None: not run), and the arms compared across seeds."""

    options: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    across_seeds: tuple[str, ...] = ()

    def of(self, name: str, arms: list[str]) -> tuple[list[str], dict[str, Any] | None]:
        """(the arms it runs for, the options of its function), or ([], None) when it does not run."""
        options = self.options.get(name)
        if options is None:
            return [], None
        chosen = options.get("arms", arms)
        return [a for a in arms if a in chosen], {k: v for k, v in options.items() if k != "arms"}

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.options.items() if v is not None}, "across_seeds": list(self.across_seeds)}


@dataclass(frozen=True)
class StudySpec:
    name: str
    source: str  # "preset:<name>" or the file's path
    seeds: tuple[int, ...]
    arms: dict[str, Arm]
    compare: CompareSpec = field(default_factory=CompareSpec)
    analyses: AnalysesSpec = field(default_factory=AnalysesSpec)

    def resolved(self) -> dict[str, Any]:
        """The study as one file again, with the defaults merged into each arm (``study.yaml``)."""
        arms = {}
        for arm in self.arms.values():
            options = {k: list(v) if isinstance(v, tuple) else v for k, v in arm.options.items()}
            arms[arm.name] = {**options, **({"init_from": arm.init_from} if arm.init_from else {})}
        return {"seeds": list(self.seeds), "arms": arms, "compare": self.compare.to_dict(),
                "analyses": self.analyses.to_dict()}


def preset_path(name: str) -> Path:
    return Path(str(resources.files("minimascope.study") / "presets" / f"{name}.yaml"))


def resolve_source(text: str | Path, presets: tuple[str, ...] = STUDY_PRESETS) -> tuple[Path, str, str]:
    """(file, name, source label) of a preset name or a study file path."""
    path = Path(text)
    if path.is_file():
        return path, path.stem, str(path.resolve())
    if str(text) in presets:
        return preset_path(str(text)), str(text), f"preset:{text}"
    raise MinimascopeError(f"no study file {text} and no preset of that name; presets: {', '.join(presets)}")


def _unknown(what: str, key: str, known: tuple[str, ...] | list[str]) -> MinimascopeError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; expected one of {', '.join(known)}"
    return MinimascopeError(f"{what}: unknown key {key!r}{hint}")


def checked_config(values: dict[str, Any], where: str) -> TrainConfig:
    """A TrainConfig from ``values``, every error prefixed by where the values came from."""
    for key in values:
        if str(key).replace("-", "_") in NOT_IN_STUDY_FILE:
            raise MinimascopeError(f"{where}: {key} is not a study-file key: {NOT_IN_STUDY_FILE[key]}")
    try:
        return TrainConfig.from_mapping(values, source=where)
    except MinimascopeError as exc:
        message = str(exc)
        raise MinimascopeError(message if message.startswith(where) else f"{where}: {message}") from None


def train_options(values: Any, where: str) -> dict[str, Any]:
    """Train options of a mapping, keys normalised (``train-subset`` → ``train_subset``) and values converted."""
    if not isinstance(values, dict):
        raise MinimascopeError(f"{where}: must be a mapping of train options, got {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    config = checked_config(values, where)
    return {k: getattr(config, k) for k in values}


def _defaults(raw: Any, file: Path) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):  # the path of a YAML of options, such as tune's best.yaml
        path = Path(raw) if Path(raw).is_absolute() else file.parent / raw
        if not path.is_file():
            raise MinimascopeError(f"{file}: defaults: no file {path}")
        return train_options(read_yaml_mapping(path), f"{file}: defaults ({path})")
    return train_options(raw, f"{file}: defaults")


def _seeds(raw: Any, file: Path) -> tuple[int, ...]:
    if raw is None:
        return (0,)
    if not isinstance(raw, list) or not raw:
        raise MinimascopeError(f"{file}: seeds: must be a non-empty list of integers >= 0, got {shown(raw)}")
    for seed in raw:
        check_seed(seed, f"{file}: seeds")
    if len(set(raw)) != len(raw):
        raise MinimascopeError(f"{file}: seeds: repeated seed in {raw!r}")
    return tuple(raw)


def _arms(raw: Any, defaults: dict[str, Any], file: Path) -> dict[str, Arm]:
    if not isinstance(raw, dict) or not raw:
        raise MinimascopeError(f"{file}: arms: must be a non-empty mapping of arm names to train options")
    arms = {}
    for name, values in raw.items():
        check_arm_name(name, f"{file}: arms")
        where = f"{file}: arm {name!r}"
        values = dict(values or {}) if isinstance(values, dict) or values is None else values
        if not isinstance(values, dict):
            raise MinimascopeError(f"{where}: must be a mapping of train options, got {type(values).__name__}")
        init_from = values.pop("init_from", values.pop("init-from", None))
        if init_from is not None:
            if not isinstance(init_from, str) or init_from not in raw:
                raise MinimascopeError(f"{where}: init_from: unknown arm {init_from!r}; arms: {', '.join(raw)}")
            if init_from == name:
                raise MinimascopeError(f"{where}: init_from: an arm cannot start from itself")
        options = {**defaults, **train_options(values, where)}
        checked_config({**options, "init_from": f"<{init_from}>" if init_from else None}, where)
        arms[name] = Arm(name, options, init_from)
    _check_acyclic(arms, file)
    return arms


def _check_acyclic(arms: dict[str, Arm], file: Path) -> None:
    edges = {name: [arm.init_from] if arm.init_from else [] for name, arm in arms.items()}
    try:
        topological_order(edges)
    except MinimascopeError as exc:
        raise MinimascopeError(f"{file}: arms: {exc}") from None


def _compare(raw: Any, arms: dict[str, Arm], file: Path) -> CompareSpec:
    from minimascope import similarity

    where = f"{file}: compare"
    if raw is None:
        return CompareSpec()
    if not isinstance(raw, dict):
        raise MinimascopeError(f"{where}: must be a mapping with keys {', '.join(COMPARE_KEYS)}")
    for key in raw:
        if key not in COMPARE_KEYS:
            raise _unknown(where, str(key), COMPARE_KEYS)
    measures = raw.get("measures", list(CompareSpec.measures))
    measures = [measures] if isinstance(measures, str) else measures
    if not isinstance(measures, list) or not measures or not all(isinstance(m, str) for m in measures):
        raise MinimascopeError(f"{where}: measures: must be a non-empty list of names, got {shown(measures)}")
    for measure in measures:
        if measure not in similarity.MEASURES:
            raise MinimascopeError(f"{where}: measures: unknown {measure!r}; "
                                   f"choose from {', '.join(similarity.MEASURES)}")
    samples = raw.get("samples", CompareSpec.samples)
    # Comparisons see a class-balanced subset of the test set; a run tested on a subset promises no more.
    subsets = [arm.options["test_subset"] for arm in arms.values() if arm.options.get("test_subset")]
    most = min(subsets, default=CIFAR_TEST_IMAGES)
    if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= most:
        raise MinimascopeError(f"{where}: samples: must be an integer in 1..{most} (the test "
                               f"{'subset of the arms' if subsets else 'set'}), got {shown(samples)}")
    pairs = raw.get("pairs", "all")
    if pairs != "all":
        if not isinstance(pairs, list):
            raise MinimascopeError(f"{where}: pairs: must be 'all' or a list of [arm, arm], got {pairs!r}")
        checked = []
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(a, str) for a in pair)):
                raise MinimascopeError(f"{where}: pairs: each pair must be [arm, arm], got {pair!r}")
            for arm in pair:
                if arm not in arms:
                    raise MinimascopeError(f"{where}: pairs: unknown arm {arm!r}; arms: {', '.join(arms)}")
            if pair[0] == pair[1]:
                raise MinimascopeError(f"{where}: pairs: {pair!r} compares an arm with itself; use within")
            checked.append((pair[0], pair[1]))
        if len(set(checked)) != len(checked):
            raise MinimascopeError(f"{where}: pairs: a pair is listed twice")
        pairs = tuple(checked)
    within = raw.get("within", True)
    if not isinstance(within, bool):
        if not isinstance(within, list) or not all(isinstance(a, str) for a in within):
            raise MinimascopeError(f"{where}: within: must be true, false or a list of arms, got {within!r}")
        for arm in within:
            if arm not in arms:
                raise MinimascopeError(f"{where}: within: unknown arm {arm!r}; arms: {', '.join(arms)}")
        within = tuple(within)
    layer_set = raw.get("layer_set", CompareSpec.layer_set)
    if not isinstance(layer_set, str) or layer_set not in similarity.LAYER_SETS:
        raise MinimascopeError(f"{where}: layer_set: must be one of {', '.join(similarity.LAYER_SETS)}")
    policy = raw.get("policy", CompareSpec.policy)
    if not isinstance(policy, str) or policy not in similarity.POLICIES:
        raise MinimascopeError(f"{where}: policy: must be one of {', '.join(similarity.POLICIES)}")
    bootstrap = raw.get("bootstrap", 0)
    if not isinstance(bootstrap, int) or isinstance(bootstrap, bool) or bootstrap < 0 or bootstrap == 1:
        raise MinimascopeError(f"{where}: bootstrap: must be 0 (off) or an integer >= 2, got {bootstrap!r}")
    if bootstrap and not {"cka", "cka_debiased"} & set(measures):
        raise MinimascopeError(f"{where}: bootstrap: needs cka or cka_debiased among the measures")
    return CompareSpec(tuple(measures), samples, pairs, within, layer_set, policy, bootstrap)


def _analyses(raw: Any, arms: dict[str, Arm], file: Path) -> AnalysesSpec:
    where = f"{file}: analyses"
    if raw is None:
        return AnalysesSpec()
    if not isinstance(raw, dict):
        raise MinimascopeError(f"{where}: must be a mapping with keys {', '.join([*ANALYSIS_OPTIONS, 'across_seeds'])}")
    options: dict[str, dict[str, Any] | None] = {}
    for name, value in raw.items():
        if name == "across_seeds":
            continue
        if name not in ANALYSIS_OPTIONS:
            raise _unknown(where, str(name), (*ANALYSIS_OPTIONS, "across_seeds"))
        if value is False or value is None:
            options[name] = None
            continue
        value = {} if value is True else value
        if not isinstance(value, dict):
            raise MinimascopeError(f"{where}: {name}: must be true, false or a mapping of options, got {shown(value)}")
        chosen = value.get("arms", list(arms))
        if not isinstance(chosen, list) or not all(isinstance(arm, str) and arm in arms for arm in chosen):
            raise MinimascopeError(f"{where}: {name}: arms: must be a list of arms ({', '.join(arms)}), "
                                   f"got {shown(chosen)}")
        for key in value:
            if key != "arms" and key not in ANALYSIS_OPTIONS[name]:
                raise _unknown(f"{where}: {name}", str(key), (*ANALYSIS_OPTIONS[name], "arms"))
        # Checked now, before any run trains; kept as written, so that the node keys stay what they were.
        ANALYSES[name].check_options({k: v for k, v in value.items() if k != "arms"}, f"{where}: {name}")
        if ANALYSES[name].training_images:
            _check_training_images(value.get("images", ANALYSES[name].options["images"].default),
                                   {arm: arms[arm] for arm in chosen}, f"{where}: {name}: images")
        options[name] = dict(value)
    across = raw.get("across_seeds", [])
    if not isinstance(across, list) or not all(isinstance(a, str) for a in across):
        raise MinimascopeError(f"{where}: across_seeds: must be a list of arms, got {across!r}")
    for arm in across:
        if arm not in arms:
            raise MinimascopeError(f"{where}: across_seeds: unknown arm {arm!r}; arms: {', '.join(arms)}")
    return AnalysesSpec(options, tuple(across))


def _check_training_images(images: int, arms: dict[str, Arm], where: str) -> None:
    """One line where an analysis would draw more training images than an arm trains on (the one with the fewest
    named): its ``train_subset`` less the images it holds out for validation (a fold's share rounded up: at most a
    few more per class)."""
    trained = {}
    for name, arm in arms.items():
        subset, folds, val_size = (arm.options.get(key) for key in ("train_subset", "folds", "val_size"))
        if subset is not None:
            trained[name] = subset - (val_size or 0) - (math.ceil(subset / folds) if folds else 0)
    fewest = min(trained, key=trained.__getitem__, default=None)
    if fewest is not None and images > trained[fewest]:
        options = arms[fewest].options
        held = " less those held out for validation" if options.get("folds") or options.get("val_size") else ""
        raise MinimascopeError(f"{where}: {images} is more than the {trained[fewest]} training images arm {fewest!r} "
                               f"trains on (its train_subset{held}); analyses draw among those")


def parse_study(values: dict[str, Any], file: Path, name: str, source: str) -> StudySpec:
    """Validate a study file's mapping (see the module doc)."""
    for key in values:
        if key not in STUDY_KEYS:
            raise _unknown(str(file), str(key), STUDY_KEYS)
    if "arms" not in values:
        raise MinimascopeError(f"{file}: no 'arms': a study needs at least one arm")
    defaults = _defaults(values.get("defaults"), file)
    arms = _arms(values["arms"], defaults, file)
    return StudySpec(name=name, source=source, seeds=_seeds(values.get("seeds"), file), arms=arms,
                     compare=_compare(values.get("compare"), arms, file),
                     analyses=_analyses(values.get("analyses"), arms, file))


def load_spec(text: str | Path) -> StudySpec:
    """A study from a preset name or a study file path."""
    file, name, source = resolve_source(text)
    values = read_yaml_mapping(file)
    if not values:
        raise MinimascopeError(f"{file} is empty: a study file needs 'arms' (and usually seeds, compare)")
    return parse_study(values, file, name, source)
