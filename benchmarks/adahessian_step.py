"""Cost of one training step: SGD vs AdaHessian (every step, and lazy with update_every=10).

torchvision resnet18 (num_classes=10) on random 3x32x32 inputs, CPU. Variants are timed round-robin in
one process (so load changes hit all of them alike); each timing is a full step: zero_grad, forward,
cross-entropy, backward (create_graph when the optimizer asks), optimizer step. The lazy variant is
timed over whole 10-step cycles and reported per step. torch_optimizer.Adahessian, when importable,
is the peer (install with `pip install torch-optimizer pytorch-ranger --no-deps`).

"+fast" variants run the forward pass inside minimascope.fast_layers.fast_forward, as `minimascope
train` does (small feature maps as matrix products; on Hessian steps the cheaper double backward).
Ratios are given against torch's plain SGD step (the issue's baseline, which the peer is measured
against) and against minimascope's own SGD step (sgd+fast: like for like). "forward+backward+fast" is
that step without its update. An exact Hessian-vector product differentiates the forward and the
backward pass once more: each convolution (most of the work) then costs two forward and two backward
convolutions, twice its first-order work, so 3x forward+backward estimates the floor of an exact
AdaHessian step (the line under the table).

Peak memory: each variant runs again in a fresh subprocess; reported is VmHWM (peak resident set,
from /proc/self/status) after two units, minus VmRSS just before the first step. That
is what the steps add on top of model, inputs and libraries, as the OS sees it (allocator caching
included, so it is an upper bound on tensor memory).

    python benchmarks/adahessian_step.py [--batch 256] [--repeats 5] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from minimascope.env import cpu_name  # noqa: E402
from minimascope.fast_layers import fast_forward  # noqa: E402
from minimascope.optim import AdaHessian, needs_create_graph  # noqa: E402

LAZY_EVERY = 10
FAST = "+fast"  # suffix: forward pass inside fast_forward(), as `minimascope train` runs it
FIRST_ORDER = "forward+backward" + FAST  # an SGD step without the update
GOALS = {"adahessian" + FAST: 2.5, f"adahessian_lazy{LAZY_EVERY}" + FAST: 1.25}


def peer_available() -> bool:
    try:
        import torch_optimizer  # noqa: F401
    except ImportError:
        return False
    return True


def variant_names() -> list[str]:
    peer = ["torch_optimizer"] if peer_available() else []
    return ["sgd", "sgd" + FAST, FIRST_ORDER, "adahessian", "adahessian" + FAST,
            f"adahessian_lazy{LAZY_EVERY}" + FAST] + peer


def make_optimizer(name: str, model: nn.Module) -> tuple[torch.optim.Optimizer, int]:
    """The optimizer and how many steps make one timed unit."""
    params = model.parameters()
    name = name.removesuffix(FAST)
    if name in ("sgd", FIRST_ORDER.removesuffix(FAST)):
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4), 1
    if name == "adahessian":
        return AdaHessian(params), 1
    if name == f"adahessian_lazy{LAZY_EVERY}":
        return AdaHessian(params, update_every=LAZY_EVERY), LAZY_EVERY
    if name == "torch_optimizer":
        import torch_optimizer

        return torch_optimizer.Adahessian(params, lr=0.15, weight_decay=5e-4 / 0.15), 1
    raise ValueError(name)


def make_unit(name: str, batch: int) -> Callable[[], None]:
    """One timed unit (a step, or a whole lazy cycle) of variant `name` on its own model copy."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    images = torch.randn(batch, 3, 32, 32)
    labels = torch.randint(0, 10, (batch,))
    opt, steps = make_optimizer(name, model)
    # the peer needs the graph on every step; it has no needs_create_graph
    always_graph = name == "torch_optimizer"

    def unit() -> None:
        for _ in range(steps):
            opt.zero_grad()
            create_graph = always_graph or needs_create_graph(opt)
            with fast_forward(double_backward=create_graph) if name.endswith(FAST) else contextlib.nullcontext():
                loss = nn.functional.cross_entropy(model(images), labels)
            loss.backward(create_graph=create_graph)
            if name != FIRST_ORDER:
                opt.step()

    return unit


def time_round_robin(batch: int, repeats: int) -> tuple[dict[str, float], dict[str, int]]:
    names = variant_names()
    units = {n: make_unit(n, batch) for n in names}
    steps = {n: LAZY_EVERY if "lazy" in n else 1 for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for unit in units.values():  # warm-up: allocator, oneDNN primitives, first lazy cycle
        unit()
    for _ in range(repeats):
        for n, unit in units.items():
            start = time.perf_counter()
            unit()
            times[n].append((time.perf_counter() - start) / steps[n])
    return {n: statistics.median(t) for n, t in times.items()}, {n: len(t) for n, t in times.items()}


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_child(name: str, batch: int) -> None:
    """Subprocess body: print the peak RSS growth (MiB) caused by running variant `name`."""
    unit = make_unit(name, batch)
    before = status_kib("VmRSS")
    for _ in range(2):
        unit()
    print(json.dumps({"peak_mib": (status_kib("VmHWM") - before) / 1024}))


def peak_memory(name: str, batch: int) -> float | None:
    if not Path("/proc/self/status").exists():
        return None
    cmd = [sys.executable, __file__, "--memory-child", name, "--batch", str(batch)]
    cmd += ["--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy()).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (median reported)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--quick", action="store_true", help="batch 4, 2 rounds, 1 thread: a smoke run, not a measurement"
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*create_graph=True.*")
    if args.quick:
        # one thread: on shared cores, OpenMP threads of tiny ops mostly wait for each other
        args.batch, args.repeats, args.threads = 4, 2, args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        peak_memory_child(args.memory_child, args.batch)
        return

    print(f"CPU: {cpu_name()} | cores: {os.cpu_count()} | torch threads: {torch.get_num_threads()}")
    print(f"torch {torch.__version__} | torchvision {torchvision.__version__} | python {platform.python_version()}")
    print(f"resnet18(num_classes=10), batch {args.batch}, 3x32x32, CPU | load average at start: {load_average()}")
    medians, counts = time_round_robin(args.batch, args.repeats)
    memory = {n: peak_memory(n, args.batch) for n in medians}
    print(f"load average at end: {load_average()}\n")
    header = f"{'variant':<24} {'median s/step':>13} {'x SGD':>6} {'x SGD+fast':>10} {'peak MiB':>9} {'goal':>6}  n"
    print(header)
    print("-" * len(header))
    for n, median in medians.items():
        goal = f"<={GOALS[n]:.2f}" if n in GOALS else ""
        mem = f"{memory[n]:.0f}" if memory[n] is not None else "n/a"
        print(f"{n:<24} {median:>13.3f} {median / medians['sgd']:>6.2f} {median / medians['sgd' + FAST]:>10.2f} "
              f"{mem:>9} {goal:>6}  {counts[n]}")
    floor = 3 * medians[FIRST_ORDER] / medians["sgd" + FAST]
    print(f"\nfloor estimate for an exact AdaHessian step, 3 x forward+backward: {floor:.2f} x SGD+fast")
    print("goals (issue 3) are against torch's plain SGD step ('x SGD'); 'x SGD+fast' is like for like")


if __name__ == "__main__":
    main()
