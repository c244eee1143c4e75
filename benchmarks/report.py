"""Report generation time for a study the size of the `quick` preset's: 10 arms × 2 seeds, every
run completed, 50 comparisons (15 pairs of arms + 10 networks with themselves, per seed) of 21×21
layers with CKA, debiased CKA, SVCCA and Procrustes. Goal: under 30 s on this project's 2-core machine.

The study directory is the fake one of tests/helpers.py (made-up numbers, real resnet18
``final.pt`` files), built once in a temporary folder; only ``write_report`` is timed, per section.

    python benchmarks/report.py                 # 25 pairs × 2 seeds = 50 comparisons
    python benchmarks/report.py --all-pairs     # every pair of the 10 arms: 55 pairs × 2 seeds = 110
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import ARMS, MEASURE_NAMES, build_fake_study  # the fake study lives with the tests
from minimascope.env import cpu_name
from minimascope.report import page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all-pairs", action="store_true", help="compare every pair of arms, not 15")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    cross = list(itertools.combinations(ARMS, 2))
    pairs = tuple(cross if args.all_pairs else cross[:15]) + tuple((a, a) for a in ARMS)
    seeds = tuple(range(args.seeds))
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        root = build_fake_study(Path(folder) / "study", seeds=seeds, pairs=pairs, skipped=(), diverged={})
        built = time.perf_counter() - started
        timings = {}

        def timed(section: page.Section) -> page.Section:
            def build(ctx: page.Context) -> dict:
                wall, cpu = time.perf_counter(), time.process_time()
                result = section.build(ctx)
                timings[section.id] = (time.perf_counter() - wall, time.process_time() - cpu)
                return result
            return replace(section, build=build)

        page.SECTIONS = tuple(timed(s) for s in page.SECTIONS)
        wall, cpu = time.perf_counter(), time.process_time()
        page.write_report(root)
        total = (time.perf_counter() - wall, time.process_time() - cpu)
        figures = sorted(p.name for p in (root / "report").iterdir() if p.suffix in (".png", ".svg"))
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}")
    print(f"study: {len(ARMS)} arms × {len(seeds)} seeds, {len(pairs) * len(seeds)} comparisons × "
          f"{len(MEASURE_NAMES)} measures "
          f"(built in {built:.1f} s, not timed); {len(figures)} figures")
    print(f"{'section':<16}{'wall s':>10}{'cpu s':>10}")
    for name, (w, c) in timings.items():
        print(f"{name:<16}{w:>10.2f}{c:>10.2f}")
    print(f"{'write_report':<16}{total[0]:>10.2f}{total[1]:>10.2f}   (goal: < 30 s)")


if __name__ == "__main__":
    main()
