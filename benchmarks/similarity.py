"""Similarity throughput: 21×21 layers of two randomly initialised ResNet18 on N random images.

Each stage runs in its own process (so that its peak memory, VmHWM, is its own) on the same two
seeded networks and inputs, and the parent prints one table. Goals, as ratios:

* our minibatch CKA (batches of 250, forwards included) ≤ 0.5× torch_cka's on the same batches;
* exact full-data CKA ≤ 1.5× torch_cka's minibatch time;
* exact CKA + SVCCA + Procrustes together ≤ 5 minutes; peak memory < 12 GiB.

    python benchmarks/similarity.py               # N = 10,000 (CIFAR-10 test set size)
    python benchmarks/similarity.py --quick       # smoke run on 500 images
    python benchmarks/similarity.py --samples 2000

torch_cka is a benchmark-only peer: ``pip install torch-cka tqdm --no-deps``; skipped if absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from torchvision.models import resnet18

from minimascope.env import cpu_name
from minimascope.similarity import collect_activations, compare_activations, default_layers, similarity_matrices

STAGES = ("capture", "cka", "minibatch", "svcca", "procrustes", "all", "peer")
NARROW = ("layer3", "layer4", "fc")  # layers narrow enough for an exact Procrustes reference


def networks_and_inputs(samples: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, list[str]]:
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(resnet18(num_classes=10).eval())
    inputs = torch.randn((samples, 3, 32, 32), generator=torch.Generator().manual_seed(2))
    return nets[0], nets[1], inputs, default_layers(nets[0], inputs[:1])


def peak_gib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20


def run_stage(stage: str, samples: int, batch: int) -> dict:
    """One stage in this process: its timed seconds, peak memory and stage-specific checks."""
    a, b, inputs, layers = networks_and_inputs(samples)
    out: dict = {}
    if stage == "peer":
        from torch.utils.data import DataLoader, TensorDataset
        from torch_cka import CKA

        loader = DataLoader(TensorDataset(inputs), batch_size=batch)
        started = time.perf_counter()
        peer = CKA(a, b, model1_name="A", model2_name="B", model1_layers=layers, model2_layers=layers)
        peer.compare(loader)
        out["seconds"] = time.perf_counter() - started
        out["values"] = peer.export()["CKA"].tolist()
    elif stage == "minibatch":
        started = time.perf_counter()
        matrix, = similarity_matrices(a, inputs, b, inputs, layers_a=layers, layers_b=layers,
                                      measures=("cka_minibatch",), minibatch_size=batch)
        out["seconds"] = time.perf_counter() - started
        out["values"] = matrix.values.tolist()
    else:
        started = time.perf_counter()
        acts_a, acts_b = (collect_activations(net, inputs, layers) for net in (a, b))
        out["capture_seconds"] = time.perf_counter() - started
        measures = {"capture": (), "cka": ("cka",), "svcca": ("svcca",), "procrustes": ("procrustes",),
                    "all": ("cka", "svcca", "procrustes")}[stage]
        started = time.perf_counter()
        matrices = compare_activations(acts_a, acts_b, measures=measures) if measures else []
        out["seconds"] = time.perf_counter() - started if measures else out["capture_seconds"]
        for matrix in matrices:
            out[f"{matrix.measure}_diagonal_mean"] = float(np.diag(matrix.values).mean())
            if matrix.error_bound is not None:
                out["max_error_bound"] = float(matrix.error_bound.max())
        if stage == "procrustes":  # the truncation's actual error where an exact value is affordable
            narrow = [name for name in layers if name.startswith(NARROW)]
            exact, = compare_activations(acts_a, acts_b, layers_a=narrow, layers_b=narrow,
                                         measures=("procrustes",), procrustes_keep=1.0)
            index = [layers.index(name) for name in narrow]
            approx = matrices[0].values[np.ix_(index, index)]
            out["narrow_max_error"] = float(np.abs(approx - exact.values).max())
            out["narrow_max_bound"] = float(matrices[0].error_bound[np.ix_(index, index)].max())
    out["peak_gib"] = peak_gib()
    return out


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads"


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=250, help="minibatch size of both minibatch CKAs")
    parser.add_argument("--quick", action="store_true", help="smoke run on 500 images")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: run one stage
    args = parser.parse_args()
    samples = 500 if args.quick else args.samples
    if args.stage:
        print(json.dumps(run_stage(args.stage, samples, args.batch)))
        return

    print(f"machine: {machine()}")
    print(f"two random torchvision resnet18 (10 classes), {samples} random 3×32×32 inputs, 21×21 layers\n")
    print(f"{'stage':<38}{'seconds':>9}{'peak GiB':>10}  load 1/5/15 min before → after")
    results = {}
    for stage in STAGES:
        before = load()
        proc = subprocess.run([sys.executable, __file__, "--stage", stage, "--samples", str(samples),
                               "--batch", str(args.batch)], capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{stage:<38}{'skipped':>9}{'':>10}  ({last})")
            continue
        results[stage] = result = json.loads(proc.stdout.strip().splitlines()[-1])
        label = {"capture": "activation capture (2 nets)", "cka": "exact CKA (after capture)",
                 "minibatch": f"minibatch CKA, batches of {args.batch}*", "svcca": "SVCCA (after capture)",
                 "procrustes": "Procrustes (after capture)", "all": "CKA+SVCCA+Procrustes (after capture)",
                 "peer": f"torch_cka minibatch, batches of {args.batch}*"}[stage]
        print(f"{label:<38}{result['seconds']:>9.1f}{result['peak_gib']:>10.2f}  {before} → {load()}")
    print("* forwards included (the peer runs the networks itself); other rows exclude capture\n")

    if "procrustes" in results:
        r = results["procrustes"]
        print(f"Procrustes truncation (99.9% of variance per layer): max rigorous bound {r['max_error_bound']:.3f}; "
              f"on layer3/layer4/fc pairs max |approx − exact| {r['narrow_max_error']:.4f} "
              f"(bound there {r['narrow_max_bound']:.3f})")
    if "minibatch" in results and "peer" in results:
        ours, peer = results["minibatch"], results["peer"]
        difference = np.abs(np.array(ours["values"]) - np.array(peer["values"])).max()
        print(f"minibatch CKA, ours vs torch_cka: {ours['seconds'] / peer['seconds']:.2f}× the time (goal ≤ 0.5), "
              f"max |difference| {difference:.1e} (torch_cka sums uncentred Grams in float32; ours centres "
              f"and sums in float64)")
        if "cka" in results:
            cka = results["cka"]
            print(f"exact CKA vs torch_cka minibatch: {cka['seconds'] / peer['seconds']:.2f}×, with its capture "
                  f"{(cka['seconds'] + cka['capture_seconds']) / peer['seconds']:.2f}× (goal ≤ 1.5)")
    if "all" in results:
        print(f"CKA + SVCCA + Procrustes: {results['all']['seconds']:.0f} s after a "
              f"{results['all']['capture_seconds']:.0f} s capture (goal ≤ 300 s)")
    print(f"peak memory of any stage: {max(r['peak_gib'] for r in results.values()):.2f} GiB (goal < 12)")


if __name__ == "__main__":
    main()
