"""The configuration of one training run: every field with its help text, the study's defaults,
validation at the edge, and the run's identity by content.

This module imports no torch, so a mistake in the options is reported before the slow imports.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minimascope.errors import MinimascopeError
from minimascope.io import digest

OPTIMIZERS = ("sgd", "adahessian")
ARCHITECTURES = ("resnet18", "resnet18-cifar")
BLOCK_STATS = ("abs_mean", "signed_mean")  # AdaHessian's conv-window statistics (curvature.block_statistic)
# The study's hyperparameters (chosen by 5-fold validation on the training set).
PAPER_DEFAULTS = {"sgd": {"lr": 0.01, "epochs": 360}, "adahessian": {"lr": 0.15, "epochs": 160}}
# Fields that change where or how fast a run goes, not what it computes.
NOT_HASHED = ("device", "eval_batch_size")
# Fields naming files: a run's identity holds their content's key instead of the path.
PATH_FIELDS = ("data", "weights", "init_from")


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every option of ``minimascope train``; the same names are the keys of a YAML config."""

    optimizer: str = _option("sgd", "sgd or adahessian")
    arch: str = _option(
        "resnet18", "resnet18 (ImageNet stem, as in the study) or resnet18-cifar (3x3 stem, no max-pool)")
    epochs: int | None = _option(None, "epochs to train (default: 360 for sgd, 160 for adahessian)")
    batch_size: int = _option(256, "training batch size")
    lr: float | None = _option(None, "learning rate (default: 0.01 for sgd, 0.15 for adahessian)")
    momentum: float = _option(0.95, "SGD momentum")
    nesterov: bool = _option(False, "SGD with Nesterov momentum")
    weight_decay: float = _option(
        5e-4, "weight decay (SGD: L2 in the gradient; AdaHessian: decoupled unless --coupled-weight-decay)")
    betas: tuple[float, float] = _option((0.9, 0.999), "AdaHessian moving-average coefficients, e.g. 0.9,0.999")
    eps: float = _option(1e-4, "AdaHessian denominator epsilon")
    hessian_power: float = _option(1.0, "AdaHessian Hessian power k in (0, 1]")
    update_every: int = _option(1, "AdaHessian: estimate the Hessian diagonal every k steps")
    block_stat: str = _option("abs_mean", "AdaHessian conv-window statistic: abs_mean or signed_mean")
    hessian_samples: int = _option(1, "AdaHessian Hutchinson probes per Hessian step")
    coupled_weight_decay: bool = _option(
        False, "AdaHessian: add weight decay to the gradient (L2) instead of decoupling it")
    milestones: tuple[float, ...] = _option(
        (0.5, 0.75), "MultiStepLR milestones: fractions of the run (<1) or epochs, e.g. 0.5,0.75")
    gamma: float = _option(0.1, "MultiStepLR factor")
    seed: int = _option(0, "seed of init, data order, augmentation and Hutchinson probes")
    data_seed: int = _option(
        0, "seed of the training subset and of the validation or fold split (the test subset is one fixed "
           "class-balanced set, the same for every run), so two seeds of an arm see the same images")
    pretrained: bool = _option(False, "start from torchvision's ImageNet weights (new 10-class head)")
    weights: str | None = _option(
        None, "local ImageNet weights file (implies --pretrained; for machines without internet)")
    init_from: str | None = _option(None, "start from the final weights of another run directory")
    data: str | None = _option(
        None, "CIFAR-10 source: image-folder tree, its .tar.gz, cifar-10-batches-py, or 'torchvision' "
              "(env: MINIMASCOPE_DATA)")
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

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise MinimascopeError(f"optimizer: unknown {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.arch not in ARCHITECTURES:
            raise MinimascopeError(f"arch: unknown {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        defaults = PAPER_DEFAULTS[self.optimizer]
        self.epochs = defaults["epochs"] if self.epochs is None else self.epochs
        self.lr = defaults["lr"] if self.lr is None else self.lr
        self.weights = str(self.weights) if self.weights is not None else None
        self.init_from = str(self.init_from) if self.init_from is not None else None
        self.data = str(self.data) if self.data is not None else None
        self.pretrained = self.pretrained or self.weights is not None
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "update_every": self.update_every,
                    "hessian_samples": self.hessian_samples, "eval_batch_size": self.eval_batch_size}
        for name, value in positive.items():
            if value < 1:
                raise MinimascopeError(f"{name}: must be at least 1, got {value}")
        for name in ("train_subset", "test_subset", "folds"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MinimascopeError(f"{name}: must be at least 1, got {value}")
        if self.val_size < 0:
            raise MinimascopeError(f"val_size: must be at least 0, got {self.val_size}")
        if self.folds is not None and self.val_size:
            raise MinimascopeError("val_size: give either val_size or folds, not both")
        if self.folds is not None and not (self.folds >= 2 and 0 <= self.fold < self.folds):
            raise MinimascopeError(f"fold: must be in 0..{self.folds - 1} with folds >= 2")
        for name in ("lr", "weight_decay", "momentum", "eps"):
            if not getattr(self, name) >= 0:
                raise MinimascopeError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not self.gamma > 0:
            raise MinimascopeError(f"gamma: must be > 0, got {self.gamma}")
        # AdaHessian's own checks, here so that they fail before any data are loaded.
        if not 0 < self.hessian_power <= 1:
            raise MinimascopeError(f"hessian_power: must be in (0, 1], got {self.hessian_power}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise MinimascopeError(f"betas: must be two numbers in [0, 1), got {','.join(map(str, self.betas))}")
        if self.block_stat not in BLOCK_STATS:
            raise MinimascopeError(f"block_stat: unknown {self.block_stat!r}; choose one of {', '.join(BLOCK_STATS)}")
        if any(m <= 0 for m in self.std_multiplier):
            raise MinimascopeError(f"std_multiplier: must be positive, got {self.std_multiplier}")
        if self.pretrained and self.init_from:
            raise MinimascopeError("init_from: start either from ImageNet weights or from another run, not both")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise MinimascopeError(f"device: expected auto, cpu or cuda[:N], got {self.device!r}")
        milestone_epochs(self.milestones, self.epochs)  # validates

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
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

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
