"""Training throughput: bare ResNet18 SGD steps against a whole epoch of `minimascope.train`.

The goal: one full-data epoch, data pipeline and evaluation included, costs at most 1.1x the sum
of its bare model steps (forward, backward, update on tensors that are already prepared). A bare step
computes what the training loop does (forward inside ``fast_layers.fast_forward``); the same step with
torch's own convolutions is timed too, for the speed-up that brings.

    python benchmarks/train_throughput.py --data ../shared/data/cifar10-images.tar.gz
    python benchmarks/train_throughput.py --data ... --train-subset 5000   # a shorter check
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from minimascope import data, fast_layers, models, runs
from minimascope.config import TrainConfig
from minimascope.env import environment, resolve_device
from minimascope.train import train


def bare_step_seconds(batch_size: int, device: torch.device, repeats: int, fast: bool = True) -> list[float]:
    """Forward, backward and SGD update of resnet18 on one ready batch, timed ``repeats`` times;
    ``fast``: the forward inside ``fast_layers.fast_forward``, as the training loop runs it."""
    model = models.build_model("resnet18", seed=0).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.95, weight_decay=5e-4)
    images = torch.randn(batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    times = []
    for i in range(repeats + 2):  # two warm-up steps
        started = time.perf_counter()
        with fast_layers.fast_forward(double_backward=False) if fast else contextlib.nullcontext():
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="CIFAR-10 source (default: MINIMASCOPE_DATA or torchvision)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-subset", type=int, default=None, help="train on N images instead of 50,000")
    parser.add_argument("--repeats", type=int, default=10, help="bare steps timed before and after the epoch")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data.load("cifar10", args.data)  # decode outside the timed epoch

    torch_convolutions = bare_step_seconds(args.batch_size, device, args.repeats, fast=False)
    before = bare_step_seconds(args.batch_size, device, args.repeats)
    config = TrainConfig(optimizer="sgd", epochs=1, batch_size=args.batch_size, data=args.data,
                         train_subset=args.train_subset, device=args.device)
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        record = train(config, Path(run_dir) / "run")
        wall = time.perf_counter() - started
        with (Path(run_dir) / "run" / runs.METRICS_CSV).open() as metrics:
            columns = next(csv.DictReader(metrics))
    after = bare_step_seconds(args.batch_size, device, args.repeats)

    epoch, evaluation = float(columns["epoch_time_s"]), float(columns["eval_time_s"])
    step = statistics.median(before + after)
    images = args.train_subset or 50_000
    bare_epoch = images / args.batch_size * step
    machine = environment(device)["device"]
    print(f"machine: {machine['processor']}, {machine['threads']} threads, device {device}, torch {torch.__version__}")
    print(f"{'measure':<44}{'value':>12}")
    print(f"{'bare step, batch ' + str(args.batch_size) + ' (median s)':<44}{step:>12.3f}")
    spread = f"{statistics.median(before):>6.3f}/{statistics.median(after):.3f}"
    print(f"{'bare step spread before/after (median s)':<44}{spread}")
    print(f"{'bare throughput (images/s)':<44}{args.batch_size / step:>12.0f}")
    plain = statistics.median(torch_convolutions)
    print(f"{'bare step, torch convolutions (median s)':<44}{plain:>12.3f}")
    print(f"{'  speed-up from fast_layers':<44}{plain / step:>12.2f}")
    print(f"{'sum of bare steps for the epoch (s)':<44}{bare_epoch:>12.1f}")
    print(f"{'epoch, train + eval (s)':<44}{epoch:>12.1f}")
    print(f"{'  of which evaluation of test set (s)':<44}{evaluation:>12.1f}")
    print(f"{'epoch incl. start-up and checkpoint (s)':<44}{wall:>12.1f}")
    print(f"{'epoch images/s':<44}{images / epoch:>12.0f}")
    print(f"{'ratio epoch / bare steps (goal <= 1.10)':<44}{epoch / bare_epoch:>12.3f}")
    print(f"test accuracy after the epoch: {record['final']['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
