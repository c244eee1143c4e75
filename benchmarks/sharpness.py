"""Hessian sharpness of ResNet18 on CIFAR-10 images: minimascope.minima.sharpness against PyHessian 0.1.

Both compute, for the eval-mode mean cross-entropy over the same N images (one batch, whose gradient graph
both keep and reuse for every Hessian-vector product):

* the top-k eigenvalues at tolerance ``--tol`` — PyHessian by power iteration with deflation (one run per
  eigenvalue, stopped when the estimate changes by less than tol, relatively), minimascope by Lanczos
  (stopped when every Ritz pair's residual is below tol times its value). Accuracy is measured against a
  reference: minimascope's Lanczos at tolerance 1e-6 (untimed; ``--no-reference`` skips it);
* the trace by Hutchinson's estimator with Rademacher probes, ``--trace-probes`` of them for both: the same
  estimator with the same number of probes has the same standard error (given for both), so this times
  equal accuracy. (PyHessian's own stopping rule, a change of the running mean below tol, says nothing of
  the estimate's error.)

The table gives seconds, Hessian-vector products, values and the time ratio minimascope / PyHessian. On the
CPU the ratio is of CPU seconds (``time.process_time``): on cores shared with other work, wall time mostly
measures the others; run with ``--threads 1`` there, where OpenMP threads would mostly wait for each other.

    python benchmarks/sharpness.py                           # 1,000 images of the real archive, if present
    python benchmarks/sharpness.py --images 100 --trace-probes 10
    python benchmarks/sharpness.py --run runs/sgd-seed0      # at a trained network's weights

PyHessian is a benchmark-only peer: ``pip install --no-deps pyhessian==0.1``; skipped if absent.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from minimascope import data  # noqa: E402
from minimascope.env import cpu_name  # noqa: E402
from minimascope.minima.sharpness import hessian_trace, top_eigenvalues  # noqa: E402
from minimascope.models import build_model, load_trained  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-images.tar.gz"
SHARED_DATA = Path("/work/shared/data/cifar10-images.tar.gz")
REFERENCE_TOL = 1e-6


def load_images(source: str | None, count: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``count`` class-balanced normalised training images of the archive, or seeded random ones."""
    path = source or next((str(p) for p in (DEFAULT_DATA, SHARED_DATA) if p.is_file()), None)
    if path is None:
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, 10, (count,), generator=generator)
        return data.Normalization()(images), labels, "synthetic random images"
    cifar = data.load("cifar10", path)
    index = data.balanced_subset(cifar.train_labels, count, seed=0)
    return data.Normalization()(cifar.train_images[index]), cifar.train_labels[index], path


def timed(function: Callable[[], Any]) -> tuple[Any, float, float]:
    """The result, wall seconds and this process's CPU seconds (all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def ours(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    common = {"batch_size": len(labels), "device": args.device}
    eigen, eigen_s, eigen_cpu = timed(lambda: top_eigenvalues(model, images, labels, args.k, tol=args.tol, **common))
    trace, trace_s, trace_cpu = timed(lambda: hessian_trace(
        model, images, labels, rel_error=0.0, min_probes=args.trace_probes, max_probes=args.trace_probes, **common))
    return {"eigen": eigen.values, "eigen_s": eigen_s, "eigen_cpu": eigen_cpu, "eigen_hvps": eigen.iterations,
            "trace": trace.value, "trace_stderr": trace.stderr, "trace_s": trace_s, "trace_cpu": trace_cpu,
            "trace_hvps": trace.probes}


def peer(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    peer_hessian = importlib.import_module("pyhessian.hessian")  # the package rebinds .hessian to the class

    products = [0]
    plain_product = peer_hessian.hessian_vector_product

    def counted(*inputs: Any) -> Any:
        products[0] += 1
        return plain_product(*inputs)

    peer_hessian.hessian_vector_product = counted
    torch.manual_seed(0)  # PyHessian draws its start vectors from torch's global generator
    device = torch.device(args.device)
    x, y = images.to(device), labels.to(device)

    def eigenvalues() -> list[float]:
        engine = peer_hessian.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=device.type == "cuda")
        return engine.eigenvalues(maxIter=100, tol=args.tol, top_n=args.k)[0]

    eigen, eigen_s, eigen_cpu = timed(eigenvalues)
    eigen_hvps, products[0] = products[0], 0

    def trace() -> list[float]:
        engine = peer_hessian.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=device.type == "cuda")
        return engine.trace(maxIter=args.trace_probes, tol=0.0)  # tol 0: exactly maxIter probes

    samples, trace_s, trace_cpu = timed(trace)
    peer_hessian.hessian_vector_product = plain_product
    return {"eigen": sorted(eigen, reverse=True), "eigen_s": eigen_s, "eigen_cpu": eigen_cpu, "eigen_hvps": eigen_hvps,
            "trace": statistics.fmean(samples), "trace_stderr": statistics.stdev(samples) / math.sqrt(len(samples)),
            "trace_s": trace_s, "trace_cpu": trace_cpu, "trace_hvps": len(samples)}


def peer_available() -> bool:
    try:
        import pyhessian  # noqa: F401
    except ImportError:
        return False
    return True


def relative_errors(values: list[float], reference: list[float] | None) -> str:
    if reference is None:
        return ""
    return " ".join(f"{abs(v - r) / abs(r):.1e}" for v, r in zip(values, reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help=f"CIFAR-10 source (default {DEFAULT_DATA} if present, else random images)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--run", help="a run directory or weights file (default: seeded random init)")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--trace-probes", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--no-reference", action="store_true", help="skip the tight-tolerance reference run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels, source = load_images(args.data, args.images)
    model = load_trained(args.run)[0] if args.run else build_model(args.arch, seed=0)
    model = model.to(args.device)
    weights = args.run or f"{args.arch}, seeded random init"

    print(f"CPU: {cpu_name()} | cores: {os.cpu_count()} | torch threads: {torch.get_num_threads()} | "
          f"device: {args.device}")
    print(f"torch {torch.__version__} | torchvision {torchvision.__version__} | python {platform.python_version()}")
    print(f"{weights}; {args.images} images of {source}; top-{args.k} at tol {args.tol}, "
          f"trace with {args.trace_probes} probes", flush=True)
    results = {"minimascope": ours(model, images, labels, args)}
    print(f"minimascope done: {results['minimascope']['eigen_s'] + results['minimascope']['trace_s']:.0f} s wall",
          flush=True)
    if peer_available():
        results["pyhessian"] = peer(copy.deepcopy(model), images, labels, args)
    else:
        print("PyHessian not importable: install with `pip install --no-deps pyhessian==0.1` to compare")
    reference = None
    if not args.no_reference:
        reference = top_eigenvalues(model, images, labels, args.k, tol=REFERENCE_TOL, batch_size=len(labels),
                                    device=args.device).values
        print(f"reference (Lanczos, tol {REFERENCE_TOL:g}): " + ", ".join(f"{v:.6g}" for v in reference))

    clock = "cpu" if args.device == "cpu" else "s"
    print(f"\ntimes: wall seconds, and {'CPU seconds of this process (all threads), ' if clock == 'cpu' else ''}"
          f"on which 'x peer' is based{': robust to other load on shared cores' if clock == 'cpu' else ''}")
    header = f"{'task':<6} {'method':<12} {'wall s':>7} {'CPU s':>7} {'HVPs':>5} {'per HVP':>7} {'x peer':>7}  values"
    print(header)
    print("-" * (len(header) + 40))
    for task in ("eigen", "trace"):
        for name, result in results.items():
            seconds, hvps = result[f"{task}_{clock}"], result[f"{task}_hvps"]
            ratio = f"{seconds / results['pyhessian'][f'{task}_{clock}']:.2f}" if "pyhessian" in results else "n/a"
            if task == "eigen":
                values = ", ".join(f"{v:.5g}" for v in result["eigen"])
                errors = relative_errors(result["eigen"], reference)
                values += f"  (rel. error {errors})" if errors else ""
            else:
                values = f"{result['trace']:.5g} ± {result['trace_stderr']:.2g} (standard error)"
            print(f"{task:<6} {name:<12} {result[f'{task}_s']:>7.1f} {result[f'{task}_cpu']:>7.1f} {hvps:>5} "
                  f"{seconds / hvps:>7.2f} {ratio:>7}  {values}")
    if "pyhessian" in results:
        ours_s = sum(results["minimascope"][f"{t}_{clock}"] for t in ("eigen", "trace"))
        peer_s = sum(results["pyhessian"][f"{t}_{clock}"] for t in ("eigen", "trace"))
        print(f"\nboth tasks: minimascope {ours_s:.1f} s, PyHessian {peer_s:.1f} s: {ours_s / peer_s:.2f}x "
              f"(goal <= 0.33x)")

if __name__ == "__main__":
    main()
