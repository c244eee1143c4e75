"""The cost per step of two runs: is a step of run b dearer than a step of run a?

Each completed run has ``steps.csv`` (epoch, step, time_s: every training step, evaluation excluded).
The paper says "per iteration"; the reading here is the median time of one training step, which a few
slow steps (warm-up, a pause of the machine) do not move. :func:`step_time_ratio` gives median(b) /
median(a) for the runs of one seed with a distribution-free interval (exact order-statistic intervals of
each median, no resampling and no generator), and :func:`cost_verdict` the rule over seeds. The
variability used is that of steps within each run, not across seeds: thousands of steps make it
decisive with one seed, and the row says so.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minimascope.errors import MinimascopeError
from minimascope.stats import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Verdict


@dataclass(frozen=True)
class StepTimeRatio:
    """median(b) / median(a) of one seed's two runs' step times, with an interval at ``level`` from the exact
    distribution-free order-statistic interval of each median at level √level (the runs are independent,
    so both cover at once with probability ≥ level): [low_b / high_a, high_b / low_a]. It assumes the
    steps of a run are independent draws of one distribution; warm-up steps and drifts widen nothing."""

    seed: int
    ratio: float
    low: float  # 0 and inf when a run has too few steps for its median's interval
    high: float
    level: float
    median_a: float
    median_b: float
    n_a: int
    n_b: int



def read_step_times(run_dir: str | Path) -> list[float]:
    """The ``time_s`` column of a run's ``steps.csv`` (every training step, evaluation excluded)."""
    from minimascope.runs import STEPS_CSV

    file = Path(run_dir) / STEPS_CSV
    try:
        with file.open(newline="") as handle:
            times = [float(row["time_s"]) for row in csv.DictReader(handle)]
    except FileNotFoundError:
        raise MinimascopeError(f"{file} not found: the run predates step timing; re-run it") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise MinimascopeError(f"{file}: malformed steps file ({type(exc).__name__}: {exc})") from None
    if not times:
        raise MinimascopeError(f"{file} holds no steps")
    return times


def median_interval(values: Sequence[float], level: float) -> tuple[float, float]:
    """(x_(j), x_(n+1−j)) with the largest j whose coverage 1 − 2 P(B ≤ j − 1), B ~ Bin(n, ½), is ≥
    ``level`` (exact for independent draws of any continuous distribution); (−inf, inf) when none is."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    log_pmf = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
               for i in range((n + 1) // 2)]
    fitting = np.flatnonzero(np.cumsum(np.exp(log_pmf)) <= (1 - level) / 2)  # candidate j − 1 with j ≤ n + 1 − j
    if fitting.size == 0:
        return -math.inf, math.inf
    j = int(fitting[-1]) + 1
    return float(x[j - 1]), float(x[n - j])


def step_time_ratio(times_a: Sequence[float], times_b: Sequence[float], *, seed: int = 0,
                    level: float = 0.95) -> StepTimeRatio:
    """How many times a step of run b costs a step of run a (see :class:`StepTimeRatio`)."""
    a, b = np.asarray(times_a, dtype=np.float64), np.asarray(times_b, dtype=np.float64)
    if a.size == 0 or b.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all() and (a > 0).all()
                                          and (b > 0).all()):
        raise MinimascopeError("step times must be positive finite numbers, at least one per run")
    (low_a, high_a), (low_b, high_b) = (median_interval(x, math.sqrt(level)) for x in (a, b))
    low = max(low_b, 0.0) / high_a
    high = high_b / low_a if low_a > 0 else math.inf
    return StepTimeRatio(seed, float(np.median(b) / np.median(a)), low, high, level, float(np.median(a)),
                         float(np.median(b)), int(a.size), int(b.size))


def cost_verdict(ratios: Sequence[StepTimeRatio], *, label_a: str = "A", label_b: str = "B") -> Verdict:
    """"b costs more per step than a", one :class:`StepTimeRatio` per seed: supported when every seed's
    interval lies above 1, not supported when every one lies below 1, else inconclusive."""
    if not ratios:
        raise MinimascopeError("a cost claim needs the step times of at least one seed")
    claim = f"{label_b} costs more per step than {label_a}"
    verdict, decide = INCONCLUSIVE, (f"{sum(r.low <= 1 <= r.high for r in ratios)} of {len(ratios)} seeds' "
                                     f"intervals include 1: longer runs (more steps) narrow each interval")
    if all(r.low > 1 for r in ratios):
        verdict, decide = SUPPORTED, ""
    elif all(r.high < 1 for r in ratios):
        verdict, decide = NOT_SUPPORTED, ""
    mean = float(np.mean([r.ratio for r in ratios]))
    direction = claim if mean > 1 else f"{label_a} costs more per step than {label_b}" if mean < 1 else ""
    rule = (f"per seed, median step time of {label_b} / {label_a} with a {ratios[0].level:.0%} distribution-free "
            f"interval (order statistics of each run's steps, evaluation excluded): all above 1 → supported, "
            f"all below 1 → not supported, else inconclusive")
    return Verdict(verdict, claim, direction, rule, "over steps within each run", None, None, None, decide)
