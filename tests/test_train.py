"""End-to-end training on a small class-balanced subset: run directory, resume, divergence, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import assert_one_line_error, invoke, small_config
from minimascope import io, models, runs
from minimascope.config import TrainConfig, milestone_epochs
from minimascope.errors import MinimascopeError
from minimascope.train import train

SMALL = ["--train-subset", "200", "--test-subset", "100", "--batch-size", "50", "--eval-batch-size", "100"]


@pytest.mark.slow
def test_cli_train_writes_the_run_directory(cifar_source: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke("train", "--optimizer", "sgd", "--epochs", "2", "--val-size", "50", *SMALL,
                    "--data", cifar_source, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "completed" in result.output
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["epochs_completed"] == 2
    assert record["config"]["lr"] == 0.01 and record["config"]["momentum"] == 0.95  # the study's SGD
    assert record["versions"]["torch"].startswith("2.14.1") and record["device"]["type"] == "cpu"
    assert 0 <= record["final"]["test_accuracy"] <= 1 and record["final"]["test_loss"] > 0
    assert record["time_per_epoch_s"]["mean"] > 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row in rows:
        for column in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
                       "lr", "epoch_time_s", "iter_time_mean_s", "iter_time_std_s", "iter_time_median_s"):
            assert float(row[column]) >= 0, column
    assert float(rows[1]["test_accuracy"]) == record["final"]["test_accuracy"]
    # Every step's time (150 images at batch 50: 3 steps an epoch); run.json's median is theirs.
    steps = list(csv.DictReader((out / "steps.csv").open()))
    assert [(int(s["epoch"]), int(s["step"])) for s in steps] == [(e, s) for e in (1, 2) for s in (1, 2, 3)]
    times = sorted(float(s["time_s"]) for s in steps)
    assert record["time_per_step_s"] == {"median": (times[2] + times[3]) / 2, "mean": pytest.approx(sum(times) / 6),
                                         "n": 6}
    assert float(rows[0]["iter_time_median_s"]) == sorted(float(s["time_s"]) for s in steps[:3])[1]
    assert list(out.glob("events.out.tfevents.*"))
    model, payload = models.load_trained(out)
    assert payload["arch"] == "resnet18" and model.fc.out_features == 10
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_killed_run_resumes_bit_identical(cifar_source: str, tmp_path: Path) -> None:
    """SIGKILL mid-epoch, then --resume: the weights of a run never killed. (Every optimizer's resume, AdaHessian's
    Hessian steps included, is bit-identical in test_interrupted_run_resumes_bit_identical.)"""
    optimizer = "sgd"
    config = small_config(cifar_source, optimizer=optimizer, epochs=3, train_subset=100, batch_size=20)
    train(config, tmp_path / "straight")

    out = tmp_path / "killed"
    args = ["train", "--optimizer", optimizer, "--epochs", "3", "--train-subset", "100", "--test-subset", "100",
            "--batch-size", "20", "--eval-batch-size", "100", "--data", cifar_source, "--out", str(out)]
    command = [sys.executable, "-m", "minimascope.cli", *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads((out / "run.json").read_text()).get("epochs_completed", 0) >= 1:
                break
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)  # mid-epoch 2
    process.wait()
    record = runs.read_run_json(out)
    assert record["status"] == "running" and record["epochs_completed"] < 3
    assert not (out / "final.pt").exists()

    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    straight = io.load_torch_file(tmp_path / "straight" / "final.pt")["state_dict"]
    resumed = io.load_torch_file(out / "final.pt")["state_dict"]
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


@pytest.mark.slow
def test_adahessian_learns_from_the_command_line(shared_cifar: str, tmp_path: Path) -> None:
    """The study's AdaHessian (lr 0.15, betas (0.9, 0.999), Hessian power 1) for two epochs on 1,000 images."""
    result = invoke("train", "--optimizer", "adahessian", "--epochs", "2", "--train-subset", "1000", "--batch-size",
                    "64", "--test-subset", "500", "--data", shared_cifar, "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    record = runs.read_run_json(tmp_path / "run")
    assert record["config"]["lr"] == 0.15 and record["config"]["hessian_power"] == 1.0
    # Chance is 0.10; with 500 balanced test images its standard deviation is 0.013.
    assert record["final"]["test_accuracy"] > 0.15, record["final"]


def test_nan_loss_stops_the_run_as_diverged(cifar_source: str, tmp_path: Path) -> None:
    record = train(small_config(cifar_source, lr=1e12, momentum=0.0, std_multiplier=(1e6, 1e6, 1e6), epochs=3),
                   tmp_path / "run")
    assert record["status"] == "diverged" and record["diverged_epoch"] == 1
    assert runs.read_run_json(tmp_path / "run")["status"] == "diverged"
    assert not (tmp_path / "run" / "final.pt").exists()


def test_yaml_config_with_command_line_overrides(cifar_source: str, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"optimizer: sgd\nepochs: 1\nlr: 0.05\nstd_multiplier: 1000\nmilestones: [0.5]\n"
                      f"data: {cifar_source}\n")
    result = invoke("--help")
    assert result.exit_code == 0
    result = invoke("train", "--config", str(config), "--lr", "0.02", *SMALL, "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    stored = runs.read_run_json(tmp_path / "run")["config"]
    assert stored["lr"] == 0.02 and stored["epochs"] == 1 and stored["std_multiplier"] == [1000.0] * 3


@pytest.mark.parametrize("text, pattern", [
    ("optimiser: sgd\n", "unknown key 'optimiser' (did you mean 'optimizer'?)"),
    ("epochs: many\n", "epochs must be an int"),
    ("betas: [0.9]\n", "betas must be 2 numbers"),
    ("optimizer: adamm\n", "optimizer: unknown 'adamm' (did you mean 'adam'?)"),
    ("optimizer: sam\noptimizer_args: [rho]\n", "optimizer_args must be a mapping of option names to values"),
    ("lr: [0.1\n", "bad YAML in"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("dataset: cifar11\n", "dataset: unknown dataset 'cifar11'; did you mean cifar10?"),
    ("arch: resnet34\n", "arch: unknown architecture 'resnet34'; did you mean resnet18? a torchvision or timm "
                         "model is written torchvision:resnet34"),
    ("arch: resnet18-cifar\npretrained: true\n", "pretrained: ImageNet weights exist for resnet18's"),
])
def test_bad_config_is_one_line_and_writes_nothing(tmp_path: Path, text: str, pattern: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert_one_line_error(invoke("train", "--config", str(config), "--out", str(tmp_path / "run")), pattern)
    assert not (tmp_path / "run").exists()


def test_bad_paths_are_one_line(tmp_path: Path, cifar_source: str) -> None:
    assert_one_line_error(invoke("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")),
                          "CIFAR-10 source not found")
    assert_one_line_error(invoke("train", "--config", str(tmp_path / "absent.yaml")), "cannot read")
    cifar_run = tmp_path / "cifar-run"
    cifar_run.mkdir()
    io.atomic_torch_save(cifar_run / "final.pt", models.weights_payload(
        models.build_model("resnet18-cifar"), "resnet18-cifar", 10, {}))
    io.atomic_write_json(cifar_run / "run.json", {"status": "completed"})
    assert_one_line_error(invoke("train", *SMALL, "--data", cifar_source, "--init-from", str(cifar_run),
                                 "--out", str(tmp_path / "r2")), "holds a resnet18-cifar network, not resnet18")


def test_existing_run_is_never_overwritten(cifar_source: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--epochs", "1", *SMALL, "--data", cifar_source, "--out", str(out)]
    assert invoke(*args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert_one_line_error(invoke(*args), "already holds a run; pass --resume")
    result = invoke(*args, "--resume")  # finished: left as it is
    assert result.exit_code == 0 and "completed" in result.output
    assert_one_line_error(invoke(*args[:-2], "--lr", "0.5", "--out", str(out), "--resume"), "differs in: lr")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.slow
def test_pretrained_from_a_local_weights_file(cifar_source: str, tmp_path: Path) -> None:
    from torchvision.models import resnet18

    torch.save(resnet18(weights=None).state_dict(), tmp_path / "resnet18-imagenet.pth")
    result = invoke("train", "--epochs", "1", *SMALL, "--data", cifar_source, "--weights",
                    str(tmp_path / "resnet18-imagenet.pth"), "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "not torchvision's published IMAGENET1K_V1" in " ".join(result.output.split())
    assert runs.read_run_json(tmp_path / "run")["config"]["pretrained"] is True


def test_milestones_and_value_conversion() -> None:
    assert milestone_epochs((0.5, 0.75), 160) == [80, 120]
    assert milestone_epochs((100, 150), 160) == [100, 150]
    # a fraction never drops the rate before the first epoch: a 1-epoch run trains at the given lr
    assert milestone_epochs((0.5, 0.75), 1) == [1, 1] and milestone_epochs((0.1,), 4) == [1]
    with pytest.raises(MinimascopeError, match="must increase"):
        milestone_epochs((0.75, 0.5), 100)
    config = TrainConfig.from_mapping({"optimizer": "adahessian", "betas": "0.8,0.99", "augment": "false",
                                       "std-multiplier": [1e-4, 1, 1000]})
    assert config.lr == 0.15 and config.epochs == 160  # the study's AdaHessian
    assert config.betas == (0.8, 0.99) and config.augment is False and config.std_multiplier == (1e-4, 1.0, 1000.0)
    assert config.hash() == TrainConfig.from_mapping(config.to_dict()).hash()
    assert config.hash() == TrainConfig.from_mapping({**config.to_dict(), "device": "cpu"}).hash()
    assert config.hash() != TrainConfig.from_mapping({**config.to_dict(), "seed": 1}).hash()


@pytest.mark.slow
def test_cold_and_warm_cache_give_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source decoded just now and the same source read back from the cache train identically
    (decoded images once had a channels-last layout, which ran other conv kernels)."""
    from helpers import make_image_tree

    make_image_tree(tmp_path / "tree", train_per_class=10, test_per_class=5)
    monkeypatch.setenv("MINIMASCOPE_CACHE", str(tmp_path / "cache"))
    # Without augmentation: its crop gathers into a fresh contiguous batch, hiding the layout in training.
    config = small_config(str(tmp_path / "tree"), epochs=1, train_subset=None, test_subset=None, augment=False)
    cold = train(config, tmp_path / "cold")
    assert list((tmp_path / "cache").glob("cifar10-*.npz"))
    warm = train(config, tmp_path / "warm")
    assert cold["final"] == warm["final"]
    cold_weights = io.load_torch_file(tmp_path / "cold" / "final.pt")["state_dict"]
    warm_weights = io.load_torch_file(tmp_path / "warm" / "final.pt")["state_dict"]
    assert all(torch.equal(cold_weights[k], warm_weights[k]) for k in cold_weights)


def test_a_seed_changes_only_what_it_names(cifar_source: str) -> None:
    """`seed` draws init, data order and augmentation; `data_seed` the training subset; the test subset is
    one fixed class-balanced set for every run, recorded in run.json by a digest of its indices."""
    from minimascope.splits import describe_test_set, make_splits

    cpu = torch.device("cpu")
    base = make_splits(small_config(cifar_source), cpu)
    other_seed = make_splits(small_config(cifar_source, seed=1), cpu)
    other_data = make_splits(small_config(cifar_source, data_seed=1), cpu)
    for split in (other_seed, other_data):
        assert split.test_index.equal(base.test_index) and split.test[0].equal(base.test[0])
    assert describe_test_set(other_data.test_index) == describe_test_set(base.test_index)
    assert other_seed.train[0].equal(base.train[0])
    assert not other_data.train[0].equal(base.train[0])
    keys = {config.key("data", None) for config in (small_config(cifar_source), small_config(cifar_source, seed=1),
                                                     small_config(cifar_source, data_seed=1))}
    assert len(keys) == 3


# ----------------------------------------------------------------------------- optimizers


def test_the_studys_optimizers_keep_their_run_keys() -> None:
    """Keys of sgd and adahessian configs as before the registry (finished studies resume): the fields added
    since (optimizer_args, snapshot_every) are left out at their defaults."""
    assert TrainConfig(optimizer="sgd").hash() == "d8ea42b845e37434"
    assert TrainConfig(optimizer="adahessian").hash() == "95ec63011e0ef2fc"
    assert TrainConfig(optimizer="adahessian", update_every=2, hessian_samples=3, coupled_weight_decay=True,
                       block_stat="signed_mean").hash() == "9308110fda222e06"
    assert TrainConfig(optimizer="sgd", snapshot_every=5).hash() == "d8ea42b845e37434"
    assert TrainConfig(optimizer="sgd", dataset="cifar10").hash() == "d8ea42b845e37434"
    assert "dataset" not in TrainConfig().to_dict()
    assert TrainConfig(optimizer="sgd", dataset="cifar100").hash() != "d8ea42b845e37434"
    assert "optimizer_args" not in TrainConfig().to_dict() and "snapshot_every" not in TrainConfig().to_dict()
    sam = TrainConfig(optimizer="sam", optimizer_args={"rho": 0.1})
    assert sam.to_dict()["optimizer_args"] == {"rho": 0.1} and sam.hash() != TrainConfig(optimizer="sam").hash()


def test_optimizer_options_resolve_to_the_optimizers_defaults() -> None:
    adam = TrainConfig(optimizer="adam")
    assert (adam.lr, adam.betas, adam.eps, adam.weight_decay, adam.momentum, adam.epochs) == (
        1e-3, (0.9, 0.999), 1e-8, 0.0, None, 200)
    assert adam.optimizer_hyperparameters() == {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    sam = TrainConfig(optimizer="sam", optimizer_args={"base": "adamw", "rho": 0.1}, lr=0.01)
    assert sam.optimizer_hyperparameters() == {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01,
                                               "base": "adamw", "rho": 0.1}
    ada = TrainConfig(optimizer="adahessian", seed=7)
    assert ada.optimizer_hyperparameters()["seed"] == 7 and ada.momentum == 0.95  # the study's configs hold all
    assert TrainConfig.from_mapping(sam.to_dict()).hash() == sam.hash()


@pytest.mark.parametrize("args, pattern", [
    (["--optimizer", "adam", "--momentum", "0.9"], "momentum: adam does not take momentum"),
    (["--optimizer", "sam", "--optimizer-arg", "rhoo=0.1"], "sam takes no option 'rhoo' (did you mean 'rho'?)"),
    (["--optimizer", "sam", "--optimizer-arg", "lr=0.1"], "lr is a training option: give it as lr"),
    (["--optimizer", "adafactor", "--eps", "0.1"], "adafactor's eps means something else"),
    (["--optimizer-arg", "rho"], "--optimizer-arg: expected KEY=VALUE, got 'rho'"),
    (["--optimizer", "torch.optim:RAdam", "--optimizer-arg", "foo=1"], "torch.optim:RAdam takes no option 'foo'"),
    (["--seed", "-1"], "seed: must be in 0..2**63-1, got -1"),
    (["--data-seed", str(2**63)], "data_seed: must be in 0..2**63-1"),
])
def test_bad_optimizer_options_are_one_line_before_the_data(tmp_path: Path, args: list[str], pattern: str) -> None:
    result = invoke("train", *args, "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "run"))
    assert_one_line_error(result, pattern)
    assert not (tmp_path / "run").exists()


class _Interrupt(KeyboardInterrupt):
    pass


class _StopAfterEpoch:
    """A progress that interrupts the run once an epoch's checkpoint is written: in-process, a run that dies
    there (a kill) leaves what resume starts from."""

    def __init__(self, epoch: int) -> None:
        self.last = epoch

    def start(self, first_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        pass

    def step(self, loss: float) -> None:
        pass

    def epoch(self, row: dict) -> None:
        if row["epoch"] == self.last:
            raise _Interrupt


def _small_net(arch: str, num_classes: int = 10, seed: int | None = None, **_: object) -> torch.nn.Module:
    """A first conv, batch norm, a hidden conv and a classifier: every kind of parameter Muon splits, at a
    fraction of resnet18's cost (whose resume the slow test above checks)."""
    from torch import nn

    with torch.random.fork_rng():
        torch.manual_seed(seed or 0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


@pytest.mark.parametrize("optimizer, args", [
    ("sgd", {}), ("adamw", {}), ("sam", {"base": "sgd", "rho": 0.05}), ("muon", {}), ("adahessian", {}),
])
def test_interrupted_run_resumes_bit_identical(cifar_source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               optimizer: str, args: dict) -> None:
    """Every optimizer's state, the schedule and the RNGs come back from the checkpoint (a small network in
    the real loop); the weight snapshots of the epochs before the interruption are kept."""
    monkeypatch.setattr(models, "build_model", _small_net)
    config = small_config(cifar_source, optimizer=optimizer, optimizer_args=args, epochs=3, train_subset=60,
                          test_subset=20, batch_size=20, eval_batch_size=20, snapshot_every=2, milestones=(2,))
    straight = train(config, tmp_path / "straight")
    with pytest.raises(_Interrupt):
        train(config, tmp_path / "resumed", progress=_StopAfterEpoch(2))
    assert runs.read_run_json(tmp_path / "resumed")["epochs_completed"] == 2
    snapshot = (tmp_path / "resumed" / "snapshots" / "epoch-0002.pt").read_bytes()
    resumed = train(config, tmp_path / "resumed", resume=True)
    assert resumed["final"] == straight["final"] and resumed["optimizer"] == straight["optimizer"]
    final = io.load_torch_file(tmp_path / "straight" / "final.pt")["state_dict"]
    for run in ("straight", "resumed"):
        weights = io.load_torch_file(tmp_path / run / "final.pt")["state_dict"]
        assert all(torch.equal(final[k], weights[k]) for k in final), run
        assert [epoch for epoch, _ in runs.snapshot_paths(tmp_path / run)] == [2]
    assert (tmp_path / "resumed" / "snapshots" / "epoch-0002.pt").read_bytes() == snapshot
    if optimizer == "muon":
        assert straight["optimizer"]["split"] == {"muon": ["3.weight"],
                                                  "adamw": ["0.weight", "0.bias", "1.weight", "1.bias", "3.bias",
                                                            "7.weight", "7.bias"]}


def test_a_grayscale_image_folder_trains_with_resnet18_cifar(tmp_path: Path) -> None:
    """28x28 grayscale images of three classes: a one-channel stem, a three-class head, the data set recorded in
    run.json and final.pt, and the network rebuilt from final.pt alone."""
    from PIL import Image

    from test_datasets import write_tree

    write_tree(tmp_path / "digits", ("one", "two", "three"), (28, 28), "L", per_class=6)
    out = tmp_path / "run"
    result = invoke("train", "--dataset", "imagefolder", "--data", str(tmp_path / "digits"), "--arch",
                    "resnet18-cifar", "--epochs", "1", "--batch-size", "6", "--std-multiplier", "2",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    record = runs.read_run_json(out)
    assert record["config"]["dataset"] == "imagefolder"
    described = record["dataset"]
    assert described["classes"] == ["one", "three", "two"] and described["channels"] == 1
    assert described["image_size"] == [28, 28] and len(described["mean"]) == 1
    model, payload = models.load_trained(out)
    assert payload["num_classes"] == 3 and payload["dataset"] == described
    assert list(payload["normalization"]["std_multiplier"]) == [2.0] and model.conv1.in_channels == 1
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 3)
    assert_one_line_error(invoke("train", "--dataset", "imagefolder", "--data", str(tmp_path / "digits"), "--arch",
                                 "torchvision:resnet999", "--epochs", "1", "--out", str(tmp_path / "r2")),
                          "unknown torchvision model 'resnet999'")
    assert not (tmp_path / "r2").exists()
    Image.new("L", (28, 20)).save(tmp_path / "digits" / "test" / "two" / "01.png")
    assert_one_line_error(invoke("train", "--dataset", "imagefolder", "--data", str(tmp_path / "digits"),
                                 "--out", str(tmp_path / "r3")), "an image folder holds images of one size")
    assert_one_line_error(invoke("train", "--dataset", "imagefolder", "--out", str(tmp_path / "r3")),
                          "imagefolder needs a source; point --data at a train/<class>/")
    assert not (tmp_path / "r3").exists()
