"""Cost of one training step of each optimizer of the registry against SGD's, in the same run.

torchvision resnet18 (num_classes=10) on random 3x32x32 inputs, CPU, as `minimascope train` steps: zero_grad,
forward inside minimascope.fast_layers.fast_forward, cross-entropy, backward (create_graph when the optimizer
asks), optimizer step (with the loop's closure for SAM and ASAM: a second forward and backward, batch-norm
statistics frozen). Each optimizer has its own network; the optimizers are timed round-robin, one step each
per round after one warm-up round, so that a change of load hits all of them alike. Reported: the median
wall and CPU seconds per step (the process's CPU time, which other jobs on a shared machine inflate far
less than the wall time: with --threads 1 the fairer ratio) and their ratios to SGD's medians.

Muon's Newton-Schulz iterations cost the same whatever the batch (five rounds of products of each hidden
layer's matrix, up to 512 x 4608 in resnet18), so its ratio to SGD shrinks as the batch grows.

    python benchmarks/optimizer_step.py [--batch 256] [--rounds 3] [--threads N] [--only sgd,sam]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from minimascope import models, optim  # noqa: E402
from minimascope.env import cpu_name  # noqa: E402
from minimascope.fast_layers import fast_forward  # noqa: E402
from minimascope.optim.sam import running_statistics_frozen  # noqa: E402


class Arm:
    """One optimizer with its own resnet18."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.model = models.build_model("resnet18", 10, seed=0).train()
        self.optimizer = optim.create(name, self.model.named_parameters())
        self.needs_closure = optim.lookup(name).needs_closure
        self.times: list[tuple[float, float]] = []  # (wall, CPU) seconds

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        self.optimizer.zero_grad(set_to_none=True)
        create_graph = optim.needs_create_graph(self.optimizer)
        with fast_forward(double_backward=create_graph):
            loss = F.cross_entropy(self.model(images), labels)
        loss.backward(create_graph=create_graph)
        if self.needs_closure:
            self.optimizer.step(lambda: self._loss_and_gradients(images, labels))
        else:
            self.optimizer.step()
        return time.perf_counter() - started, time.process_time() - cpu

    def _loss_and_gradients(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with running_statistics_frozen(self.model), fast_forward(double_backward=False):
            loss = F.cross_entropy(self.model(images), labels)
        loss.backward()
        return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps of each optimizer (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default=None, help="comma-separated names (sgd is always included)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = optim.names() if args.only is None else ["sgd", *[n for n in args.only.split(",") if n != "sgd"]]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (args.batch,), generator=generator)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")
        arms = [Arm(name) for name in names]
        for round_ in range(args.rounds + 1):
            for arm in arms:
                seconds = arm.step(images, labels)
                if round_:
                    arm.times.append(seconds)
    def medians(arm: Arm) -> tuple[float, float]:
        return statistics.median(t[0] for t in arm.times), statistics.median(t[1] for t in arm.times)

    sgd_wall, sgd_cpu = medians(arms[0])
    print(f"optimizer step, resnet18, batch {args.batch}, {args.rounds} steps each round-robin; "
          f"{cpu_name()} ({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'optimizer':<12} {'wall s':>8} {'x SGD':>7} {'CPU s':>8} {'x SGD':>7}")
    for arm in arms:
        wall, cpu = medians(arm)
        print(f"{arm.name:<12} {wall:>8.3f} {wall / sgd_wall:>7.2f} {cpu:>8.3f} {cpu / sgd_cpu:>7.2f}")


if __name__ == "__main__":
    main()
