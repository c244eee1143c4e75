"""One training run: config, loop, schedule, metrics, checkpoints, resume and divergence.

The optimizer comes from the registry (:mod:`minimascope.optim`). The loop asks it whether the coming
step needs ``create_graph=True`` (AdaHessian's Hessian steps do), and hands a closure to the optimizers that
evaluate the loss again (SAM), so every optimizer shares one loop. With ``snapshot_every`` k the weights of
every k-th epoch are kept in ``snapshots/``. After every epoch a checkpoint with the model, optimizer,
scheduler and every RNG state is written atomically; resuming from it gives bit-identical weights on the
CPU to a run that was never interrupted.

The run directory is locked (:func:`minimascope.io.locked`) while a process writes it, so two
processes never mix one run. A loss (train, validation or test) that stops being finite ends the
run as ``diverged``; only a run whose every loss stayed finite is ``completed``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import statistics
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from minimascope import data, datasets, fast_layers, io, models, optim, runs
from minimascope.config import NOT_HASHED, TrainConfig, milestone_epochs
from minimascope.env import environment, resolve_device
from minimascope.errors import MinimascopeError
from minimascope.optim.sam import running_statistics_frozen
from minimascope.splits import describe_test_set, make_splits

CHECKPOINT_FORMAT = "minimascope-checkpoint-v1"


def init_key(config: TrainConfig) -> str | None:
    """The content key of the weights a run starts from: another run's key, a file's digest, or
    torchvision's published ImageNet weights; None for a random init."""
    if config.init_from:
        source = Path(config.init_from)
        if source.is_dir():
            record = runs.read_run_json(source)
            if record.get("key"):
                return record["key"]
            source = source / runs.FINAL_WEIGHTS
        if not source.is_file():
            raise MinimascopeError(f"init_from: no run directory or weights file at {config.init_from}")
        return models.file_sha256(source)
    if config.pretrained and config.weights:
        if not Path(config.weights).is_file():
            raise MinimascopeError(f"weights file not found: {config.weights}")
        return models.file_sha256(Path(config.weights))
    return models.pretrained_weights_id(config.arch) if config.pretrained else None


def run_key(config: TrainConfig) -> str:
    """The run's identity by content (see :meth:`TrainConfig.key`)."""
    return config.key(data.content_key(config.data, config.dataset), init_key(config))


class TrainProgress(Protocol):
    """What the loop tells whoever shows progress (the CLI draws it with Rich)."""

    def start(self, first_epoch: int, epochs: int, steps_per_epoch: int) -> None: ...
    def step(self, loss: float) -> None: ...
    def epoch(self, row: dict[str, float | None]) -> None: ...


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             normalization: data.Normalization, batch_size: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a split, in eval mode."""
    loss, accuracy, _ = evaluate_with_predictions(model, images, labels, normalization, batch_size)
    return loss, accuracy


@torch.inference_mode()
def evaluate_with_predictions(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                              normalization: data.Normalization,
                              batch_size: int) -> tuple[float, float, torch.Tensor]:
    """(mean cross-entropy, accuracy, predicted classes as int64 on the CPU) over a split, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    predicted = []
    for batch, target in data.iterate_batches(images, labels, batch_size, normalization):
        with fast_layers.fast_forward(double_backward=False):
            logits = model(batch)
        loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
        predicted.append(logits.argmax(1))
    classes = torch.cat(predicted)
    accuracy = (classes == labels).sum().item() / len(labels)
    return loss_sum.item() / len(labels), accuracy, classes.to("cpu", torch.int64)


class _Run:
    """The state of one run while it trains; written to and read from its directory."""

    def __init__(self, config: TrainConfig, key: str, run_dir: Path, device: torch.device,
                 data_progress: data.Progress | None = None) -> None:
        self.config, self.key, self.run_dir, self.device = config, key, run_dir, device
        self.splits = make_splits(config, device, progress=data_progress)
        self.normalization = self.splits.normalization
        dataset = self.splits.dataset
        self.model = models.build_model(config.arch, len(dataset["classes"]), seed=config.seed,
                                        in_channels=dataset["channels"])
        if config.pretrained:
            models.init_pretrained(self.model, config.arch, config.weights)
        elif config.init_from:
            models.init_from_run(self.model, config.arch, config.init_from)
        self.model.to(device)
        entry, hyperparameters = optim.lookup(config.optimizer), config.optimizer_hyperparameters()
        self.needs_closure = entry.needs_closure
        self.optimizer = optim.create(config.optimizer, self.model.named_parameters(), **hyperparameters)
        self.optimizer_record = {"name": config.optimizer, "source": entry.source,  # run.json's "optimizer"
                                 "hyperparameters": _as_json(optim.resolved(config.optimizer, hyperparameters)),
                                 **optim.describe(self.optimizer)}
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestone_epochs(config.milestones, config.epochs), config.gamma)
        self.generator = torch.Generator().manual_seed(config.seed)  # data order and augmentation
        self.epoch = 0
        self.history: list[dict[str, float | None]] = []
        self.step_times: list[list[float]] = []  # per epoch, in seconds: kept in the checkpoint, steps.csv at the end
        self.record: dict[str, Any] = {}
        self.test_predictions: torch.Tensor | None = None  # of the latest evaluation

    def weights(self) -> dict:
        dataset = self.splits.dataset
        return models.weights_payload(self.model, self.config.arch, len(dataset["classes"]),
                                      dataclasses.asdict(self.normalization),
                                      None if dataset["dataset"] == datasets.DEFAULT else dataset)

    def save_checkpoint(self) -> None:
        io.atomic_torch_save(self.run_dir / runs.CHECKPOINT, {
            "format": CHECKPOINT_FORMAT,
            "key": self.key,
            "epoch": self.epoch,
            "weights": self.weights(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "data": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
            "history": self.history,
            "step_times": self.step_times,
        })

    def load_checkpoint(self) -> None:
        state = io.load_torch_file(self.run_dir / runs.CHECKPOINT)
        if not isinstance(state, Mapping) or state.get("format") != CHECKPOINT_FORMAT:
            raise MinimascopeError(f"{self.run_dir / runs.CHECKPOINT} is not a minimascope checkpoint")
        if state.get("key") != self.key:
            raise MinimascopeError(f"{self.run_dir / runs.CHECKPOINT} belongs to another config")
        models.load_state_checked(self.model, state["weights"]["state_dict"], str(self.run_dir / runs.CHECKPOINT))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["data"])
        if self.device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch, self.history = state["epoch"], list(state["history"])
        # A checkpoint of an earlier version has no step times: those epochs are left out of steps.csv.
        self.step_times = [list(times) for times in state.get("step_times", [])]

    def write_record(self, **fields: Any) -> None:
        self.record.update(fields)
        io.atomic_write_json(self.run_dir / runs.RUN_JSON, self.record)

    def write_predictions(self) -> None:
        if self.test_predictions is None:  # resumed after the last epoch's checkpoint
            *_, self.test_predictions = evaluate_with_predictions(
                self.model, *self.splits.test, self.normalization, self.config.eval_batch_size)
        io.atomic_torch_save(self.run_dir / runs.PREDICTIONS, {
            "format": runs.PREDICTIONS_FORMAT,
            "predicted": self.test_predictions,
            "labels": self.splits.test[1].to("cpu", torch.int64),
            "test_index": self.splits.test_index.to(torch.int64),
        })

    def write_metrics(self) -> None:
        columns = runs.METRIC_COLUMNS
        lines = [",".join(columns)]
        lines += [",".join("" if row.get(c) is None else repr(row[c]) for c in columns) for row in self.history]
        io.atomic_write_text(self.run_dir / runs.METRICS_CSV, "\n".join(lines) + "\n")

    def write_steps(self) -> dict[str, float | int]:
        """``steps.csv`` (every step's time) and its summary for run.json: the median is the cost per step
        a claim reads, robust to the slow first steps and to other jobs on the machine."""
        first = self.epoch - len(self.step_times) + 1
        rows = [f"{epoch},{step},{seconds!r}" for epoch, times in enumerate(self.step_times, first)
                for step, seconds in enumerate(times, 1)]
        io.atomic_write_text(self.run_dir / runs.STEPS_CSV, "\n".join(["epoch,step,time_s", *rows]) + "\n")
        times = [seconds for epoch in self.step_times for seconds in epoch]
        return {"median": statistics.median(times), "mean": statistics.fmean(times), "n": len(times)} if times else {}


def _as_json(values: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as run.json holds them: a value JSON cannot hold (an imported class's default) as its repr."""
    return json.loads(json.dumps(values, default=repr))


class Diverged(Exception):
    """A loss stopped being finite; the argument names which."""


def _loss_and_gradients(model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The closure of an optimizer that evaluates the loss again (SAM, at its perturbed weights): the batch's
    loss and its gradients at the current weights, batch-norm running statistics left as the step's first
    forward pass set them."""
    with running_statistics_frozen(model), fast_layers.fast_forward(double_backward=False):
        loss = F.cross_entropy(model(batch), target)
    loss.backward()
    return loss


@torch.enable_grad()  # whatever grad mode the caller left on
def _train_epoch(run: _Run, progress: TrainProgress | None) -> dict[str, float]:
    """One pass over the training split; returns train loss/accuracy and step timings."""
    config, model, optimizer = run.config, run.model, run.optimizer
    images, labels = run.splits.train
    model.train()
    loss_sum, correct, step_times = 0.0, torch.zeros((), dtype=torch.int64, device=run.device), []
    for batch, target in data.iterate_batches(images, labels, config.batch_size, run.normalization,
                                              generator=run.generator, augment=config.augment, flip=run.splits.flip):
        started = time.perf_counter()
        create_graph = optim.needs_create_graph(optimizer)
        # small feature maps as matrix products; on a Hessian step also the cheaper double backward
        with fast_layers.fast_forward(double_backward=create_graph):
            logits = model(batch)
        loss = F.cross_entropy(logits, target)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise Diverged("train loss")
        loss.backward(create_graph=create_graph)
        if run.needs_closure:
            optimizer.step(functools.partial(_loss_and_gradients, model, batch, target))
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # also frees any second-order graph at once
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        step_times.append(time.perf_counter() - started)
        loss_sum += loss_value * len(target)
        correct += (logits.detach().argmax(1) == target).sum()
        if progress:
            progress.step(loss_value)
    run.step_times.append(step_times)
    return {
        "train_loss": loss_sum / len(labels),
        "train_accuracy": correct.item() / len(labels),
        "iter_time_mean_s": statistics.fmean(step_times),
        "iter_time_std_s": statistics.stdev(step_times) if len(step_times) > 1 else 0.0,
        "iter_time_median_s": statistics.median(step_times),
    }


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False,
          progress: TrainProgress | None = None, data_progress: data.Progress | None = None) -> dict[str, Any]:
    """Train one run into ``run_dir`` and return its ``run.json`` record.

    An existing run directory is only continued with ``resume`` and the same config; a finished
    one (completed or diverged) is returned as it is. The directory is locked for the whole call:
    a second process on it fails at once. ``data_progress`` sees a cold cache being decoded.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise MinimascopeError(f"{run_dir} is a file, not a run directory; choose another --out")
    key = run_key(config)
    created = not run_dir.exists()
    with io.locked(run_dir, "run directory"):
        try:
            return _train_locked(config, run_dir, key, resume, progress, data_progress)
        except BaseException:
            if created and [p.name for p in run_dir.iterdir()] == [io.LOCK_FILE]:
                (run_dir / io.LOCK_FILE).unlink()  # a run that never started leaves no folder behind
                run_dir.rmdir()
            raise


def _own_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.name != io.LOCK_FILE]


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Temporaries of writes a killed process left (the lock says no one else writes here)."""
    for name in runs.RUN_FILES:
        for stale in run_dir.glob(io.temporary_name_pattern(name)):
            stale.unlink(missing_ok=True)
    for stale in (run_dir / runs.SNAPSHOTS).glob(io.temporary_name_pattern("epoch-*.pt")):
        stale.unlink(missing_ok=True)


def _warn_colliding_milestones(config: TrainConfig) -> None:
    epochs = milestone_epochs(config.milestones, config.epochs)
    within_run = [e for e in epochs if e < config.epochs]  # a drop after the last epoch changes nothing
    if len(set(within_run)) < len(within_run):
        warnings.warn(f"milestones {list(config.milestones)} fall on epochs {epochs} of {config.epochs}: the learning "
                      f"rate drops by gamma^k at once; give whole epochs or more epochs", stacklevel=4)


def _train_locked(config: TrainConfig, run_dir: Path, key: str, resume: bool, progress: TrainProgress | None,
                  data_progress: data.Progress | None) -> dict[str, Any]:
    if (run_dir / runs.RUN_JSON).is_file():
        record = runs.read_run_json(run_dir)
        if not resume:
            raise MinimascopeError(f"{run_dir} already holds a run; pass --resume to continue it "
                                   f"or choose another --out")
        if record.get("key") != key:
            stored = record.get("config", {})
            differ = [k for k, v in config.to_dict().items() if k not in NOT_HASHED and stored.get(k) != v]
            raise MinimascopeError(f"{run_dir} holds a run with another config (differs in: "
                                   f"{', '.join(differ) or 'the content of data or initial weights'})")
        if record.get("status") in ("completed", "diverged"):
            return record
    elif _own_files(run_dir):
        raise MinimascopeError(f"{run_dir} is not empty and holds no run; choose another --out")

    _warn_colliding_milestones(config)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)  # nothing should draw from it, but a custom layer might
    run = _Run(config, key, run_dir, device, data_progress)
    try:
        _remove_stale_temporaries(run_dir)
        fresh = not (resume and (run_dir / runs.CHECKPOINT).is_file())
        if not fresh:
            run.load_checkpoint()
        return _train_loop(run, progress, fresh)
    except io.WriteError as exc:
        if exc.path is None or run_dir.resolve() not in (exc.path.resolve(), *exc.path.resolve().parents):
            raise
        todo = f"free space or make {run_dir} writable"
        if (run_dir / runs.CHECKPOINT).is_file():
            raise io.WriteError(f"{exc}; the last finished epoch's checkpoint is kept: {todo}, then continue with "
                                f"--resume", exc.path) from None
        raise io.WriteError(f"{exc}; no epoch had finished: {todo} and start again", exc.path) from None


def _train_loop(run: _Run, progress: TrainProgress | None, fresh: bool) -> dict[str, Any]:
    config, run_dir = run.config, run.run_dir
    run.record = {"format": runs.RUN_FORMAT, "status": "running", "config": config.to_dict(), "key": run.key,
                  **environment(run.device), "started": io.now(), "epochs_completed": run.epoch,
                  "test_set": describe_test_set(run.splits.test_index), "dataset": run.splits.dataset,
                  "optimizer": run.optimizer_record}
    run.write_record()  # first: from here on the folder is a run that --resume continues
    if fresh:
        io.atomic_torch_save(run_dir / runs.INITIAL_WEIGHTS, run.weights())

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
                    run.scheduler.step()
                    evaluated = time.perf_counter()
                    _evaluate_splits(run, row)
                except Diverged as exc:
                    run.write_record(status="diverged", diverged_epoch=run.epoch + 1, diverged_loss=str(exc),
                                     finished=io.now())
                    return run.record
                row["eval_time_s"] = time.perf_counter() - evaluated
                row["epoch_time_s"] = time.perf_counter() - started
                run.epoch += 1
                run.history.append(row)
                if config.snapshot_every and run.epoch % config.snapshot_every == 0:
                    # before the checkpoint: a run killed between the two redoes this epoch and writes it again
                    io.atomic_torch_save(runs.snapshot_path(run_dir, run.epoch), run.weights())
                run.save_checkpoint()
                run.write_metrics()
                for name, value in row.items():
                    if name != "epoch" and value is not None:
                        writer.add_scalar(name, value, run.epoch)
                writer.flush()
                run.write_record(epochs_completed=run.epoch)
                if progress:
                    progress.epoch(row)
    except MinimascopeError:
        raise
    except Exception as exc:
        run.write_record(status="failed", error=f"{type(exc).__name__}: {exc}", finished=io.now())
        raise
    finally:
        writer.close()
    run.write_predictions()
    io.atomic_torch_save(run_dir / runs.FINAL_WEIGHTS, run.weights())
    epoch_times = [row["epoch_time_s"] for row in run.history]
    last = run.history[-1]
    run.write_record(
        status="completed", finished=io.now(),
        final={k: last[k] for k in runs.FINAL_METRICS},
        time_per_epoch_s={"mean": statistics.fmean(epoch_times),
                          "std": statistics.stdev(epoch_times) if len(epoch_times) > 1 else 0.0},
        time_per_step_s=run.write_steps(),
    )
    return run.record


def _evaluate_splits(run: _Run, row: dict[str, float | None]) -> None:
    """Validation and test loss and accuracy into ``row``; a non-finite loss is divergence."""
    normalization = run.normalization
    row["val_loss"] = row["val_accuracy"] = None
    if run.splits.val is not None:
        row["val_loss"], row["val_accuracy"] = evaluate(run.model, *run.splits.val, normalization,
                                                        run.config.eval_batch_size)
        if not math.isfinite(row["val_loss"]):
            raise Diverged("validation loss")
    row["test_loss"], row["test_accuracy"], run.test_predictions = evaluate_with_predictions(
        run.model, *run.splits.test, normalization, run.config.eval_batch_size)
    if not math.isfinite(row["test_loss"]):
        raise Diverged("test loss")
