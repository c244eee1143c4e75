"""The study scheduler's own overhead: wall time of the tiny study minus the sum of its nodes' times.

Runs the ``tiny`` preset into fresh directories with the local executor and, when Ray is
installed, the Ray executor with one CPU (so nodes run one after another and the difference is
the scheduler's: building the graph, study.json rewrites, Ray's start, task dispatch and worker
imports). Pretrained arms use a stand-in weights file (a seeded 1000-class resnet18).

    python benchmarks/study_overhead.py --data /path/to/cifar10-images.tar.gz
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from minimascope import io, models
from minimascope.env import cpu_name
from minimascope.study import run_study


def measure(executor: str, data: str, weights: str, root: Path) -> dict[str, float]:
    options = {}
    started = time.perf_counter()
    if executor == "ray":
        import ray

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    try:
        outcome = run_study("tiny", root / executor, data=data, weights=weights, executor=executor,
                            executor_options=options if executor == "ray" else None)
    finally:
        if executor == "ray":
            ray.shutdown()
    wall = time.perf_counter() - started
    nodes = sum(r.get("time_s") or 0.0 for r in outcome.records.values())
    return {"wall": wall, "nodes": nodes, "overhead": wall - nodes, "start": ray_start,
            "count": len(outcome.records), "completed": outcome.counts.get("completed", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MINIMASCOPE_DATA"), help="CIFAR-10 source")
    parser.add_argument("--executors", default="local,ray", help="comma-separated: local, ray")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        weights = root / "imagenet-standin.pt"
        io.atomic_torch_save(weights, models.build_model("resnet18", 1000, seed=0).state_dict())
        results = {}
        for executor in args.executors.split(","):
            if executor == "ray":
                try:
                    import ray  # noqa: F401
                except ImportError:
                    print("ray is not installed: skipping the Ray executor")
                    continue
            results[executor] = measure(executor, args.data, str(weights), root)
    print(f"\nstudy scheduler overhead, tiny preset ({cpu_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(f"{'executor':<9} {'nodes':>6} {'wall s':>8} {'sum of nodes s':>15} {'overhead s':>11} "
          f"{'per node s':>11} {'ray start s':>12}")
    for executor, r in results.items():
        print(f"{executor:<9} {r['completed']:>3}/{r['count']:<2} {r['wall']:>8.1f} {r['nodes']:>15.1f} "
              f"{r['overhead']:>11.1f} {r['overhead'] / r['count']:>11.2f} "
              f"{r['start'] if executor == 'ray' else float('nan'):>12.1f}")


if __name__ == "__main__":
    main()
