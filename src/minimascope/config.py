"""The configuration of one training run: every field with its help text, the study's defaults,
validation at the edge, and the run's identity by content.

This module imports no torch (nor does the optimizer registry it checks against, unless the optimizer is an
import path), so a mistake in the options is reported before the slow imports.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minimascope import datasets, optim
from minimascope.architectures import CHOICES, check_arch_name
from minimascope.errors import MinimascopeError
from minimascope.io import digest
from minimascope.optim import BLOCK_STATS

# The fields that set the optimizer's hyperparameters where it takes them (optim.options says which).
OPTIMIZER_FIELDS = ("lr", "momentum", "nesterov", "weight_decay", "betas", "eps", "hessian_power", "update_every",
                    "block_stat", "hessian_samples", "coupled_weight_decay")
# The study's hyperparameters (chosen by 5-fold validation on the training set); lr is the registry's default.
PAPER_DEFAULTS = {"sgd": {"lr": optim.REGISTRY["sgd"].defaults()["lr"], "epochs": 360},
                  "adahessian": {"lr": optim.REGISTRY["adahessian"].defaults()["lr"], "epochs": 160}}
DEFAULT_EPOCHS = 200  # of any other optimizer
# The study's optimizers fill every optimizer field, the other's default where one does not take it: their
# configs held all of them before the registry, and their run keys still do.
PAPER_FILL = {name: value for entry in ("adahessian", "sgd") for name, value in optim.REGISTRY[entry].defaults().items()
              if name in OPTIMIZER_FIELDS}
# Fields that change where or how fast a run goes, or what it keeps on the side, not what it computes.
NOT_HASHED = ("device", "eval_batch_size", "snapshot_every")
# Fields naming files: a run's identity holds their content's key instead of the path.
PATH_FIELDS = ("data", "weights", "init_from")
# Fields added after runs were first keyed: in to_dict() only when set, so that the records and keys of
# configs that leave them alone stay what they were.
ADDED_FIELDS = {"optimizer_args": {}, "snapshot_every": 0, "dataset": datasets.DEFAULT}
SEED_LIMIT = 2**63  # torch seeds a generator with a 64-bit signed integer


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every option of ``minimascope train``; the same names are the keys of a YAML config."""

    optimizer: str = _option("sgd", "a registered optimizer (see: minimascope optimizers) or an import path "
                                     "module:Class, e.g. torch.optim:RAdam")
    optimizer_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "the optimizer's other options, e.g. {base: sgd, rho: 0.05} for sam (CLI: --optimizer-arg KEY=VALUE)"})
    arch: str = _option(
        "resnet18", f"{CHOICES}; resnet18 has the ImageNet stem, as in the study, resnet18-cifar a 3x3 stem and no "
                    f"max-pool (see: minimascope models)")
    epochs: int | None = _option(None, f"epochs to train (default: 360 for sgd, 160 for adahessian, "
                                       f"{DEFAULT_EPOCHS} for others)")
    batch_size: int = _option(256, "training batch size")
    lr: float | None = _option(None, "learning rate (default: the optimizer's; 0.01 for sgd, 0.15 for adahessian)")
    momentum: float | None = _option(None, "momentum, where the optimizer takes it (default: the optimizer's; "
                                           "0.95 for sgd)")
    nesterov: bool | None = _option(None, "Nesterov momentum, where the optimizer takes it (default: the optimizer's)")
    weight_decay: float | None = _option(
        None, "weight decay, as the optimizer applies it (sgd: L2 in the gradient, 5e-4; adahessian: decoupled unless "
              "--coupled-weight-decay, 5e-4; default: the optimizer's)")
    betas: tuple[float, float] | None = _option(
        None, "moving-average coefficients, e.g. 0.9,0.999, where the optimizer takes them (default: the optimizer's)")
    eps: float | None = _option(None, "denominator epsilon, where the optimizer takes it (default: the optimizer's; "
                                      "1e-4 for adahessian)")
    hessian_power: float | None = _option(None, "AdaHessian Hessian power k in (0, 1] (default: 1)")
    update_every: int | None = _option(None, "AdaHessian: estimate the Hessian diagonal every k steps (default: 1)")
    block_stat: str | None = _option(
        None, "AdaHessian conv-window statistic: abs_mean (default) or signed_mean")
    hessian_samples: int | None = _option(None, "AdaHessian Hutchinson probes per Hessian step (default: 1)")
    coupled_weight_decay: bool | None = _option(
        None, "AdaHessian: add weight decay to the gradient (L2) instead of decoupling it (default: off)")
    milestones: tuple[float, ...] = _option(
        (0.5, 0.75), "MultiStepLR milestones: fractions of the run (<1) or epochs, e.g. 0.5,0.75")
    gamma: float = _option(0.1, "MultiStepLR factor")
    seed: int = _option(0, "seed of init, data order, augmentation and Hutchinson probes")
    data_seed: int = _option(
        0, "seed of the training subset and of the validation or fold split (the test subset is one fixed "
           "class-balanced set, the same for every run), so two seeds of an arm see the same images")
    pretrained: bool = _option(False, "start from the architecture's published (ImageNet) weights, with a new head "
                                      "of the data set's classes")
    weights: str | None = _option(
        None, "local ImageNet weights file (implies --pretrained; for machines without internet)")
    init_from: str | None = _option(None, "start from the final weights of another run directory")
    dataset: str = _option(datasets.DEFAULT, f"the data set: {', '.join(datasets.DATASETS)} (see: minimascope "
                                              f"datasets)")
    data: str | None = _option(
        None, "the data set's source, e.g. for cifar10 an image-folder tree, its .tar.gz, cifar-10-batches-py or "
              "'torchvision' (env: MINIMASCOPE_DATA, cifar10 only)")
    train_subset: int | None = _option(None, "train on a class-balanced subset of N images")
    test_subset: int | None = _option(None, "evaluate on a class-balanced subset of N test images")
    val_size: int = _option(0, "hold out N training images (class-balanced) for validation")
    folds: int | None = _option(None, "k of a stratified k-fold split of the training images (with --fold)")
    fold: int = _option(0, "which fold (0-based) is the validation set")
    augment: bool = _option(True, "random crop (padding 4) and horizontal flip")
    std_multiplier: tuple[float, float, float] = _option(
        (1.0, 1.0, 1.0), "per-channel multiplier m of the normalised input x̂ = m·(x − mean)/std "
                         "(1 or 3 numbers), e.g. 1e-4,1,1000")
    device: str = _option("auto", "auto (cuda when present), cpu or cuda[:N]")
    eval_batch_size: int = _option(1000, "batch size for evaluation")
    snapshot_every: int = _option(0, "keep the weights every k epochs in snapshots/ (0: none), for trajectories")

    def __post_init__(self) -> None:
        for name, check in (("arch", check_arch_name), ("dataset", datasets.get)):
            try:
                check(getattr(self, name))
            except MinimascopeError as exc:
                raise MinimascopeError(f"{name}: {exc}") from None
        self.weights = str(self.weights) if self.weights is not None else None
        self.init_from = str(self.init_from) if self.init_from is not None else None
        self.data = str(self.data) if self.data is not None else None
        self.pretrained = self.pretrained or self.weights is not None
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "update_every": self.update_every,
                    "hessian_samples": self.hessian_samples, "eval_batch_size": self.eval_batch_size}
        for name, value in positive.items():
            if value is not None and value < 1:
                raise MinimascopeError(f"{name}: must be at least 1, got {value}")
        for name in ("train_subset", "test_subset", "folds"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MinimascopeError(f"{name}: must be at least 1, got {value}")
        for name in ("seed", "data_seed"):
            if not 0 <= getattr(self, name) < SEED_LIMIT:
                raise MinimascopeError(f"{name}: must be in 0..2**63-1, got {getattr(self, name)}")
        if self.val_size < 0:
            raise MinimascopeError(f"val_size: must be at least 0, got {self.val_size}")
        if self.snapshot_every < 0:
            raise MinimascopeError(f"snapshot_every: must be at least 0 (0: no snapshots), got {self.snapshot_every}")
        if self.folds is not None and self.val_size:
            raise MinimascopeError("val_size: give either val_size or folds, not both")
        if self.folds is not None and not (self.folds >= 2 and 0 <= self.fold < self.folds):
            raise MinimascopeError(f"fold: must be in 0..{self.folds - 1} with folds >= 2")
        for name in ("lr", "weight_decay", "momentum", "eps"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise MinimascopeError(f"{name}: must be >= 0, got {value}")
        if not self.gamma > 0:
            raise MinimascopeError(f"gamma: must be > 0, got {self.gamma}")
        # AdaHessian's own checks, here so that they fail before any data are loaded.
        if self.hessian_power is not None and not 0 < self.hessian_power <= 1:
            raise MinimascopeError(f"hessian_power: must be in (0, 1], got {self.hessian_power}")
        if self.betas is not None and (len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas)):
            raise MinimascopeError(f"betas: must be two numbers in [0, 1), got {','.join(map(str, self.betas))}")
        if self.block_stat is not None and self.block_stat not in BLOCK_STATS:
            raise MinimascopeError(f"block_stat: unknown {self.block_stat!r}; choose one of {', '.join(BLOCK_STATS)}")
        if self.pretrained and self.arch == "resnet18-cifar":
            raise MinimascopeError("pretrained: ImageNet weights exist for resnet18's ImageNet stem, not for "
                                   "resnet18-cifar")
        if any(m <= 0 for m in self.std_multiplier):
            raise MinimascopeError(f"std_multiplier: must be positive, got {self.std_multiplier}")
        if self.pretrained and self.init_from:
            raise MinimascopeError("init_from: start either from ImageNet weights or from another run, not both")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise MinimascopeError(f"device: expected auto, cpu or cuda[:N], got {self.device!r}")
        self._resolve_optimizer()
        milestone_epochs(self.milestones, self.epochs)  # validates

    def _resolve_optimizer(self) -> None:
        """Check the optimizer and its options against the registry (or the class an import path names), and
        fill each optimizer field left out with the optimizer's default (None where it does not take it)."""
        optim.check_args(self.optimizer, self.optimizer_args, OPTIMIZER_FIELDS)
        taken, takes_any = optim.options(self.optimizer, self.optimizer_args)
        paper = PAPER_DEFAULTS.get(self.optimizer)
        for name in OPTIMIZER_FIELDS:
            hyperparameter = taken.get(name)
            value = getattr(self, name)
            if hyperparameter is not None and not hyperparameter.field:
                if value is not None and not paper:
                    raise MinimascopeError(f"{name}: {self.optimizer}'s {name} means something else; give it in "
                                           f"optimizer_args")
                hyperparameter = None
            if value is None and hyperparameter is not None:
                if hyperparameter.default is optim.REQUIRED:
                    raise MinimascopeError(f"{name}: {self.optimizer} has no default {name}; give one")
                setattr(self, name, hyperparameter.default)
            elif value is None and paper:
                setattr(self, name, PAPER_FILL[name])
            elif value is not None and hyperparameter is None and not paper and not takes_any:
                raise MinimascopeError(f"{name}: {self.optimizer} does not take {name}; it takes "
                                       f"{', '.join(taken) or 'no options'}")
        if self.epochs is None:
            self.epochs = paper["epochs"] if paper else DEFAULT_EPOCHS

    def optimizer_hyperparameters(self) -> dict[str, Any]:
        """The keyword arguments of ``optim.create(self.optimizer, ...)``: the optimizer fields it takes, its
        ``optimizer_args`` and, for an optimizer with a ``seed`` (AdaHessian's probes), the run's seed."""
        taken, takes_any = optim.options(self.optimizer, self.optimizer_args)
        fields = {name: getattr(self, name) for name in OPTIMIZER_FIELDS
                  if (name in taken and taken[name].field) or (takes_any and getattr(self, name) is not None)}
        seed = {"seed": self.seed} if "seed" in taken and "seed" not in self.optimizer_args else {}
        return {**fields, **seed, **self.optimizer_args}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Build from YAML/CLI values, converting types and naming any unknown or bad key."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        converted = {}
        for key, value in values.items():
            key = str(key).replace("-", "_")
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise MinimascopeError(f"{source}: unknown key {key!r}{hint}")
            converted[key] = convert_value(key, value, known[key].type, source)
        return cls(**converted)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()
                if not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}

    def hash(self) -> str:
        """A digest of what the run computes, from its options alone (paths left out)."""
        hashed = {k: v for k, v in self.to_dict().items() if k not in NOT_HASHED + PATH_FIELDS}
        return digest(hashed)

    def key(self, data_key: str, init_key: str | None) -> str:
        """The run's identity: its options, the content key of its data and of the weights it
        starts from (another run's key or a weights file's digest), never the paths to them."""
        return digest({"config": self.hash(), "data": data_key, "init": init_key})


def help_text(name: str) -> str:
    """The help of one ``TrainConfig`` field."""
    return next(f.metadata["help"] for f in dataclasses.fields(TrainConfig) if f.name == name)


def convert_value(key: str, value: Any, annotation: str, source: str) -> Any:
    """Convert ``value`` to the field's annotated type (the annotations are strings here)."""
    def bad(expected: str) -> MinimascopeError:
        return MinimascopeError(f"{source}: {key} must be {expected}, got {value!r}")

    if value is None:
        if "None" in annotation:
            return None
        raise bad(annotation)
    base = annotation.replace(" | None", "")
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise bad("true or false")
    if base in ("int", "float"):
        try:
            number = float(value) if base == "float" else int(value)
        except (TypeError, ValueError):
            raise bad(f"a{'n' if base == 'int' else ''} {base}") from None
        if isinstance(value, bool) or (base == "int" and isinstance(value, float) and value != int(value)):
            raise bad(f"a{'n' if base == 'int' else ''} {base}")
        if base == "float" and not math.isfinite(number):
            raise bad("a finite number")
        return number
    if base == "dict[str, Any]":
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise bad("a mapping of option names to values")
        return {k.replace("-", "_"): v for k, v in value.items()}
    if base == "str":
        if isinstance(value, (str, Path)):
            return str(value)
        raise bad("a string")
    if base.startswith("tuple[float"):
        items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, (int, float)) else value
        try:
            numbers = tuple(float(v) for v in items)
        except (TypeError, ValueError):
            raise bad("a list of numbers") from None
        length = None if "..." in base else base.count("float")
        if length == 3 and len(numbers) == 1:  # one multiplier for every channel
            numbers = numbers * 3
        if length is not None and len(numbers) != length:
            raise bad(f"{length} numbers")
        return numbers
    raise AssertionError(f"no conversion for {annotation}")


def milestone_epochs(milestones: tuple[float, ...], epochs: int) -> list[int]:
    """MultiStepLR milestones in epochs: values below 1 are fractions of the run, never before its
    first epoch (a milestone at epoch 0 would run a 1-epoch run at lr * gamma throughout)."""
    result = [max(1, round(m * epochs)) if m < 1 else int(m) for m in milestones]
    if any(m <= 0 for m in milestones) or any(not float(m).is_integer() for m in milestones if m >= 1):
        raise MinimascopeError(f"milestones: expected fractions in (0, 1) or whole epochs, got {list(milestones)}")
    if result != sorted(result):
        raise MinimascopeError(f"milestones: must increase, got {list(milestones)}")
    return result
