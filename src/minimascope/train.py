"""One training run: config, loop, schedule, metrics, checkpoints, resume and divergence.

The loop asks the optimizer whether the coming step needs ``create_graph=True`` (AdaHessian's
Hessian steps do), so first- and second-order optimizers share it unchanged. After every epoch
a checkpoint with the model, optimizer, scheduler and every RNG state is written atomically;
resuming from it gives bit-identical weights on the CPU to a run that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import platform
import statistics
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from minimascope import __version__, data, fast_layers, models, optim, runs
from minimascope.errors import MinimascopeError

CHECKPOINT_FORMAT = "minimascope-checkpoint-v1"
# The study's hyperparameters (chosen by 5-fold validation on the training set).
PAPER_DEFAULTS = {"sgd": {"lr": 0.01, "epochs": 360}, "adahessian": {"lr": 0.15, "epochs": 160}}
# Fields that change where or how fast a run goes, not what it computes.
_NOT_HASHED = ("device", "eval_batch_size")
METRIC_COLUMNS = (
    "epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
    "test_accuracy", "epoch_time_s", "iter_time_mean_s", "iter_time_std_s", "eval_time_s",
)


@dataclass
class TrainConfig:
    """Every option of ``minimascope train``; the same names are the keys of a YAML config."""

    optimizer: str = "sgd"
    arch: str = "resnet18"
    epochs: int | None = None  # None: the study's value for the optimizer
    batch_size: int = 256
    lr: float | None = None  # None: the study's value for the optimizer
    momentum: float = 0.95
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-4
    hessian_power: float = 1.0
    update_every: int = 1
    block_stat: str = "abs_mean"
    hessian_samples: int = 1
    coupled_weight_decay: bool = False
    milestones: tuple[float, ...] = (0.5, 0.75)  # < 1: fractions of the run; else epochs
    gamma: float = 0.1
    seed: int = 0
    pretrained: bool = False
    weights: str | None = None
    init_from: str | None = None
    data: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    val_size: int = 0
    folds: int | None = None
    fold: int = 0
    augment: bool = True
    std_multiplier: tuple[float, float, float] = (1.0, 1.0, 1.0)
    device: str = "auto"
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        if self.optimizer not in optim.OPTIMIZERS:
            raise MinimascopeError(f"optimizer: unknown {self.optimizer!r}; choose one of {', '.join(optim.OPTIMIZERS)}")
        if self.arch not in models.ARCHITECTURES:
            raise MinimascopeError(f"arch: unknown {self.arch!r}; choose one of {', '.join(models.ARCHITECTURES)}")
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
        if self.lr < 0 or self.weight_decay < 0 or self.momentum < 0 or self.gamma <= 0:
            raise MinimascopeError("lr, weight_decay and momentum must be >= 0 and gamma > 0")
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
            converted[key] = _convert(key, value, known[key].type, source)
        return cls(**converted)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def hash(self) -> str:
        hashed = {k: v for k, v in self.to_dict().items() if k not in _NOT_HASHED}
        return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def normalization(self) -> data.Normalization:
        return data.Normalization(std_multiplier=tuple(self.std_multiplier))


def _convert(key: str, value: Any, annotation: str, source: str) -> Any:
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
    """MultiStepLR milestones in epochs: values below 1 are fractions of the run."""
    result = [round(m * epochs) if m < 1 else int(m) for m in milestones]
    if any(m <= 0 for m in milestones) or any(not float(m).is_integer() for m in milestones if m >= 1):
        raise MinimascopeError(f"milestones: expected fractions in (0, 1) or whole epochs, got {list(milestones)}")
    if result != sorted(result):
        raise MinimascopeError(f"milestones: must increase, got {list(milestones)}")
    return result


# ----------------------------------------------------------------------------- the run


class TrainProgress(Protocol):
    """What the loop tells whoever shows progress (the CLI draws it with Rich)."""

    def start(self, first_epoch: int, epochs: int, steps_per_epoch: int) -> None: ...
    def step(self, loss: float) -> None: ...
    def epoch(self, row: dict[str, float | None]) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MinimascopeError(f"device {name} asked for, but torch sees no CUDA device")
    return torch.device(name)


@dataclass
class Splits:
    """The uint8 images and labels of each split, on the training device."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor]


def make_splits(config: TrainConfig, device: torch.device) -> Splits:
    cifar = data.load_cifar10(config.data)
    train_index = torch.arange(len(cifar.train_labels))
    if config.train_subset is not None:
        train_index = data.balanced_subset(cifar.train_labels, config.train_subset, config.seed)
    val_index = None
    labels = cifar.train_labels[train_index]
    if config.folds is not None:
        kept, held = data.kfold_split(labels, config.folds, config.fold, config.seed)
        train_index, val_index = train_index[kept], train_index[held]
    elif config.val_size:
        kept, held = data.stratified_split(labels, config.val_size, config.seed)
        train_index, val_index = train_index[kept], train_index[held]
    test_index = torch.arange(len(cifar.test_labels))
    if config.test_subset is not None:
        test_index = data.balanced_subset(cifar.test_labels, config.test_subset, config.seed)

    def on_device(images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor):
        return images[index].to(device), labels[index].to(device)

    return Splits(
        train=on_device(cifar.train_images, cifar.train_labels, train_index),
        val=on_device(cifar.train_images, cifar.train_labels, val_index) if val_index is not None else None,
        test=on_device(cifar.test_images, cifar.test_labels, test_index),
    )


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             normalization: data.Normalization, batch_size: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a split, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for batch, target in data.iterate_batches(images, labels, batch_size, normalization):
        with fast_layers.fast_forward(double_backward=False):
            logits = model(batch)
        loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
        correct += (logits.argmax(1) == target).sum()
    return loss_sum.item() / len(labels), correct.item() / len(labels)


def environment(device: torch.device) -> dict[str, Any]:
    import numpy
    import torchvision

    info: dict[str, Any] = {
        "versions": {"minimascope": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": numpy.__version__},
        "device": {"type": device.type, "threads": torch.get_num_threads(), "machine": platform.machine(),
                   "processor": cpu_name()},
    }
    if device.type == "cuda":
        info["device"]["name"] = torch.cuda.get_device_name(device)
        info["versions"]["cuda"] = torch.version.cuda
    return info


def cpu_name() -> str:
    """The processor's model name, for run records and benchmark tables."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Run:
    """The state of one run while it trains; written to and read from its directory."""

    def __init__(self, config: TrainConfig, run_dir: Path, device: torch.device) -> None:
        self.config, self.run_dir, self.device = config, run_dir, device
        self.splits = make_splits(config, device)
        self.model = models.build_model(config.arch, len(data.CLASSES), seed=config.seed)
        if config.pretrained:
            models.init_pretrained(self.model, config.arch, config.weights)
        elif config.init_from:
            models.init_from_run(self.model, config.arch, config.init_from)
        self.model.to(device)
        self.optimizer = optim.build_optimizer(
            config.optimizer, self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
            momentum=config.momentum, nesterov=config.nesterov, betas=config.betas, eps=config.eps,
            hessian_power=config.hessian_power, update_every=config.update_every, block_stat=config.block_stat,
            n_samples=config.hessian_samples, decoupled_weight_decay=not config.coupled_weight_decay, seed=config.seed,
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestone_epochs(config.milestones, config.epochs), config.gamma)
        self.generator = torch.Generator().manual_seed(config.seed)  # data order and augmentation
        self.epoch = 0
        self.history: list[dict[str, float | None]] = []
        self.record: dict[str, Any] = {}

    def weights(self) -> dict:
        return models.weights_payload(self.model, self.config.arch, len(data.CLASSES),
                                      dataclasses.asdict(self.config.normalization))

    def save_checkpoint(self) -> None:
        runs.atomic_torch_save(self.run_dir / runs.CHECKPOINT, {
            "format": CHECKPOINT_FORMAT,
            "config_hash": self.config.hash(),
            "epoch": self.epoch,
            "weights": self.weights(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "data": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
            "history": self.history,
        })

    def load_checkpoint(self) -> None:
        state = runs.load_torch_file(self.run_dir / runs.CHECKPOINT)
        if not isinstance(state, Mapping) or state.get("format") != CHECKPOINT_FORMAT:
            raise MinimascopeError(f"{self.run_dir / runs.CHECKPOINT} is not a minimascope checkpoint")
        if state["config_hash"] != self.config.hash():
            raise MinimascopeError(f"{self.run_dir / runs.CHECKPOINT} belongs to another config")
        models.load_state_checked(self.model, state["weights"]["state_dict"], str(self.run_dir / runs.CHECKPOINT))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["data"])
        if self.device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch, self.history = state["epoch"], list(state["history"])

    def write_record(self, **fields: Any) -> None:
        self.record.update(fields)
        runs.atomic_write_json(self.run_dir / runs.RUN_JSON, self.record)

    def write_metrics(self) -> None:
        lines = [",".join(METRIC_COLUMNS)]
        lines += [",".join("" if row.get(c) is None else repr(row[c]) for c in METRIC_COLUMNS) for row in self.history]
        runs.atomic_write_text(self.run_dir / runs.METRICS_CSV, "\n".join(lines) + "\n")


class Diverged(Exception):
    """The loss stopped being finite."""


@torch.enable_grad()  # whatever grad mode the caller left on
def _train_epoch(run: _Run, progress: TrainProgress | None) -> dict[str, float]:
    """One pass over the training split; returns train loss/accuracy and step timings."""
    config, model, optimizer = run.config, run.model, run.optimizer
    images, labels = run.splits.train
    model.train()
    loss_sum, correct, step_times = 0.0, torch.zeros((), dtype=torch.int64, device=run.device), []
    for batch, target in data.iterate_batches(images, labels, config.batch_size, config.normalization,
                                              generator=run.generator, augment=config.augment):
        started = time.perf_counter()
        create_graph = optim.needs_create_graph(optimizer)
        # small feature maps as matrix products; on a Hessian step also the cheaper double backward
        with fast_layers.fast_forward(double_backward=create_graph):
            logits = model(batch)
        loss = F.cross_entropy(logits, target)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise Diverged
        loss.backward(create_graph=create_graph)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # also frees any second-order graph at once
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        step_times.append(time.perf_counter() - started)
        loss_sum += loss_value * len(target)
        correct += (logits.detach().argmax(1) == target).sum()
        if progress:
            progress.step(loss_value)
    return {
        "train_loss": loss_sum / len(labels),
        "train_accuracy": correct.item() / len(labels),
        "iter_time_mean_s": statistics.fmean(step_times),
        "iter_time_std_s": statistics.stdev(step_times) if len(step_times) > 1 else 0.0,
    }


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False,
          progress: TrainProgress | None = None) -> dict[str, Any]:
    """Train one run into ``run_dir`` and return its ``run.json`` record.

    An existing run directory is only continued with ``resume`` and the same config; a finished
    one (completed or diverged) is returned as it is.
    """
    run_dir = Path(run_dir)
    if (run_dir / runs.RUN_JSON).is_file():
        record = runs.read_run_json(run_dir)
        if not resume:
            raise MinimascopeError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        if record.get("config_hash") != config.hash():
            stored = record.get("config", {})
            differ = [k for k, v in config.to_dict().items() if k not in _NOT_HASHED and stored.get(k) != v]
            raise MinimascopeError(f"{run_dir} holds a run with another config (differs in: {', '.join(differ) or 'hash'})")
        if record.get("status") in ("completed", "diverged"):
            return record
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise MinimascopeError(f"{run_dir} is not empty and holds no run; choose another --out")

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)  # nothing should draw from it, but a custom layer might
    run = _Run(config, run_dir, device)
    if resume and (run_dir / runs.CHECKPOINT).is_file():
        run.load_checkpoint()
    run.record = {"status": "running", "config": config.to_dict(), "config_hash": config.hash(),
                  **environment(device), "started": _now(), "epochs_completed": run.epoch}
    run.write_record()

    from torch.utils.tensorboard import SummaryWriter  # slow import, only needed here

    # purge_step drops events that a killed run wrote after its last checkpoint.
    writer = SummaryWriter(log_dir=str(run_dir), purge_step=run.epoch + 1 if run.epoch else None)
    steps_per_epoch = data.number_of_batches(len(run.splits.train[1]), config.batch_size)
    if progress:
        progress.start(run.epoch, config.epochs, steps_per_epoch)
    try:
        with warnings.catch_warnings():
            # AdaHessian's create_graph=True backward warns of a grad/param cycle; zero_grad(set_to_none) breaks it.
            warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")
            while run.epoch < config.epochs:
                started = time.perf_counter()
                lr = run.optimizer.param_groups[0]["lr"]
                try:
                    row: dict[str, float | None] = {"epoch": run.epoch + 1, "lr": lr, **_train_epoch(run, progress)}
                except Diverged:
                    run.write_record(status="diverged", diverged_epoch=run.epoch + 1, finished=_now())
                    return run.record
                run.scheduler.step()
                evaluated = time.perf_counter()
                split_metrics = {"val": run.splits.val, "test": run.splits.test}
                for name, split in split_metrics.items():
                    loss, accuracy = (evaluate(run.model, *split, config.normalization, config.eval_batch_size)
                                      if split is not None else (None, None))
                    row[f"{name}_loss"], row[f"{name}_accuracy"] = loss, accuracy
                row["eval_time_s"] = time.perf_counter() - evaluated
                row["epoch_time_s"] = time.perf_counter() - started
                run.epoch += 1
                run.history.append(row)
                run.save_checkpoint()
                run.write_metrics()
                for key, value in row.items():
                    if key != "epoch" and value is not None:
                        writer.add_scalar(key, value, run.epoch)
                writer.flush()
                run.write_record(epochs_completed=run.epoch)
                if progress:
                    progress.epoch(row)
    except MinimascopeError:
        raise
    except Exception as exc:
        run.write_record(status="failed", error=f"{type(exc).__name__}: {exc}", finished=_now())
        raise
    finally:
        writer.close()
    runs.atomic_torch_save(run_dir / runs.FINAL_WEIGHTS, run.weights())
    epoch_times = [row["epoch_time_s"] for row in run.history]
    last = run.history[-1]
    run.write_record(
        status="completed", finished=_now(),
        final={k: last[k] for k in ("test_accuracy", "test_loss", "train_accuracy", "train_loss",
                                    "val_accuracy", "val_loss")},
        time_per_epoch_s={"mean": statistics.fmean(epoch_times),
                          "std": statistics.stdev(epoch_times) if len(epoch_times) > 1 else 0.0},
    )
    return run.record
