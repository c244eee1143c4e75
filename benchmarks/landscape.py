"""A filter-normalised 2-D loss surface of ResNet18 on CIFAR-10 images: minimascope.minima.landscape against the
``loss-landscapes`` package (3.0.6), in one run, on the same network, grid and images.

Both evaluate the mean cross-entropy over the same N images at grid × grid points along two filter-normalised
random directions, all N images in one forward pass per point:

* loss-landscapes: ``random_plane(model, Loss(...), steps=grid, normalization="filter")``, the model in eval mode
  (its usual use: batch norm with running statistics), and once more in train mode (batch norm normalising by
  the statistics of the N images, what minimascope's default computes);
* minimascope: :func:`random_surface` with ``bn="eval"`` and with ``bn="recompute"`` (the default), whose one
  train-mode pass gives both the statistics and the loss;
* with ``--two-pass``, loss-landscapes with a metric that recomputes the statistics in a pass of their own and
  then evaluates in eval mode (how statistics are usually recomputed, e.g. for mode connectivity).

The table gives wall and CPU seconds, seconds per point and the ratio to loss-landscapes in the matching
batch-norm mode. On the CPU the ratio is of CPU seconds of this process (``time.process_time``): on cores
shared with other work, wall time mostly measures the others; ``--threads 1`` there.

    python benchmarks/landscape.py                       # 21 x 21 grid, 1,000 images of the real archive
    python benchmarks/landscape.py --grid 7 --threads 1  # the same per point, a ninth of the time
    python benchmarks/landscape.py --no-peer             # minimascope alone: the 21 x 21 time goal

loss-landscapes is a benchmark-only peer (``pip install loss-landscapes``: pure Python, numpy only); skipped if
absent.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from minimascope.env import cpu_name  # noqa: E402
from minimascope.minima.surfaces import random_surface  # noqa: E402
from minimascope.models import build_model, load_trained  # noqa: E402
from sharpness import DEFAULT_DATA, load_images, timed  # noqa: E402  (the sharpness benchmark's, beside this one)

GOAL = 0.5


def without_zero_entries(model: nn.Module) -> nn.Module:
    """The model with each parameter entry that is exactly 0 (a fresh init's biases) set to a small seeded value:
    loss-landscapes divides by the norm of every bias entry and fails on a zero one."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = 0.01 * torch.randn(parameter.shape, generator=generator).to(parameter)
            parameter.copy_(torch.where(parameter == 0, noise, parameter))
    return model


def recomputed_loss(images: torch.Tensor, labels: torch.Tensor) -> Any:
    """A loss-landscapes metric that recomputes batch norm's statistics at each point (a train-mode pass with a
    cumulative average, then the loss in eval mode), what a user of the package writes to get them: two passes."""
    from loss_landscapes.metrics import Metric

    class RecomputedLoss(Metric):
        def __call__(self, model_wrapper: Any) -> float:
            model = model_wrapper.modules[0]
            norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None
            model.train()
            model_wrapper.forward(images)
            model.eval()
            return nn.functional.cross_entropy(model_wrapper.forward(images), labels).item()

    return RecomputedLoss()


def peer(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, grid: int, mode: str) -> Any:
    import loss_landscapes
    from loss_landscapes.metrics import Loss

    model = copy.deepcopy(model).train(mode == "train")
    torch.manual_seed(0)  # loss-landscapes draws its directions from torch's global generator
    # distance 0.5: its grid reaches ‖θ‖ / (2 · distance) = ‖θ‖ from the centre along each axis, as span 1 does here
    metric = recomputed_loss(images, labels) if mode == "two-pass" else Loss(nn.CrossEntropyLoss(), images, labels)
    return loss_landscapes.random_plane(model, metric, distance=0.5, steps=grid, normalization="filter",
                                        deepcopy_model=False)


def peer_available() -> bool:
    try:
        import loss_landscapes  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help=f"CIFAR-10 source (default {DEFAULT_DATA} if present, else random images)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--grid", type=int, default=21, help="points per axis (odd)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--run", help="a run directory or weights file (default: seeded random init)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--modes", default="eval,recompute", help="batch-norm modes to time, comma-separated")
    parser.add_argument("--no-peer", action="store_true", help="time minimascope alone (the 21 x 21 time goal)")
    parser.add_argument("--two-pass", action="store_true",
                        help="also loss-landscapes recomputing batch-norm statistics in a pass of their own")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels, source = load_images(args.data, args.images)
    model = load_trained(args.run)[0] if args.run else build_model(args.arch, seed=0)
    model = without_zero_entries(model).to(args.device).eval()
    images, labels = images.to(args.device), labels.to(args.device)
    weights = args.run or f"{args.arch}, seeded random init"
    print(f"CPU: {cpu_name()} | cores: {os.cpu_count()} | torch threads: {torch.get_num_threads()} | "
          f"device: {args.device}")
    print(f"torch {torch.__version__} | torchvision {torchvision.__version__} | python {platform.python_version()}")
    print(f"{weights}; {args.images} images of {source}; {args.grid} x {args.grid} grid", flush=True)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    with_peer = not args.no_peer and peer_available()
    peer_mode = {"eval": "eval", "recompute": "train"}
    rows: dict[str, tuple[float, float, str]] = {}
    for mode in modes:
        result, wall, cpu = timed(lambda bn=mode: random_surface(copy.deepcopy(model), (images, labels),
                                                                 grid=args.grid, span=1.0, bn=bn, device=args.device))
        rows[f"minimascope bn={mode}"] = (wall, cpu, peer_mode[mode])
        print(f"minimascope bn={mode}: {wall:.1f} s wall, loss at the network {result.centre_loss():.4f}", flush=True)
        if with_peer:
            losses, wall, cpu = timed(lambda bn=mode: peer(model, images, labels, args.grid, peer_mode[bn]))
            rows[f"loss-landscapes {peer_mode[mode]}"] = (wall, cpu, peer_mode[mode])
            print(f"loss-landscapes model.{peer_mode[mode]}(): {wall:.1f} s wall, loss range "
                  f"{losses.min():.4f}-{losses.max():.4f}", flush=True)
        if with_peer and mode == "recompute" and args.two_pass:
            losses, wall, cpu = timed(lambda: peer(model, images, labels, args.grid, "two-pass"))
            rows["loss-landscapes two-pass"] = (wall, cpu, "two-pass")
            print(f"loss-landscapes, statistics recomputed in a pass of their own: {wall:.1f} s wall", flush=True)
    if not args.no_peer and not with_peer:
        print("loss-landscapes not importable: `pip install loss-landscapes` to compare")
    clock = 1 if args.device == "cpu" else 0
    points = args.grid**2
    print(f"\n{points} points; 'x peer' is minimascope / loss-landscapes in the matching batch-norm mode, of "
          f"{'CPU' if clock else 'wall'} seconds")
    header = f"{'method':<26} {'wall s':>8} {'CPU s':>8} {'s/point':>8} {'x peer':>7}"
    print(header)
    print("-" * len(header))
    for name, (wall, cpu, mode) in rows.items():
        reference = rows.get(f"loss-landscapes {mode}")
        ratio = f"{(wall, cpu)[clock] / reference[clock]:.2f}" if reference and name.startswith("mini") else ""
        two_pass = rows.get("loss-landscapes two-pass")
        if two_pass and name == "minimascope bn=recompute":
            ratio += f" ({(wall, cpu)[clock] / two_pass[clock]:.2f} x two-pass)"
        print(f"{name:<26} {wall:>8.1f} {cpu:>8.1f} {(wall, cpu)[clock] / points:>8.3f} {ratio:>7}")
    print(f"goal: minimascope <= {GOAL}x loss-landscapes, and a 21 x 21 grid on 1,000 images in <= 300 s "
          f"(here: {args.grid} x {args.grid})")


if __name__ == "__main__":
    main()
