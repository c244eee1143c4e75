"""2. Table II: accuracy, loss and time per arm, beside the paper's numbers, and the same as CSV."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from minimascope.report import claims
from minimascope.report.text import (
    LOSS,
    arm_status,
    arm_status_short,
    budget,
    ci_cells,
    data_set,
    data_sizes,
    epochs_text,
    init_text,
    is_scaled,
    multiplier,
    spread,
    step_text,
)
from minimascope.results import RunResult, Study

if TYPE_CHECKING:
    from minimascope.report.page import Context

TITLE = "Table II: accuracy, loss and time per arm"
TABLE_CSV = "table2.csv"
CSV_COLUMNS = ("arm", "optimizer", "init", "input_std_multiplier", "epochs", "status", "seeds_completed",
               "test_accuracy_mean", "test_accuracy_ci95_low", "test_accuracy_ci95_high", "test_accuracy_per_seed",
               "paper_test_accuracy", "train_loss_mean", "train_loss_ci95_low", "train_loss_ci95_high",
               "train_loss_per_seed", "epoch_time_mean_s", "epoch_time_std_s", "step_time_mean_s",
               "paper_epoch_time_s")


def pooled_mean_std(counts: Sequence[int], means: Sequence[float], stds: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1) of all values of several groups, from each group's count, mean
    and sample std: the sum of squares is Σ (n_k − 1) s_k² + n_k (m_k − m)²."""
    n, m, s = (np.asarray(x, dtype=float) for x in (counts, means, stds))
    total = n.sum()
    mean = float((n * m).sum() / total)
    squares = float(((n - 1) * s**2 + n * (m - mean) ** 2).sum())
    return mean, math.sqrt(squares / (total - 1)) if total > 1 else 0.0


def _pooled_epoch_time(runs: Sequence[RunResult], epochs: int) -> tuple[float | None, float | None]:
    """Mean ± std of the epoch time over every epoch of every completed seed (each ran ``epochs``)."""
    groups = [(r.value("epoch_time_mean_s"), r.value("epoch_time_std_s")) for r in runs if r.completed]
    groups = [(m, s or 0.0) for m, s in groups if m is not None]
    if not groups:
        return None, None
    return pooled_mean_std([epochs] * len(groups), [m for m, _ in groups], [s for _, s in groups])


def table_rows(study: Study) -> list[dict[str, Any]]:
    """One row per arm; the paper's numbers beside them only where the study ran on the paper's data set."""
    paper = data_set(study).is_paper_data
    rows = []
    for arm, config in study.arms.items():
        runs = study.arm_runs(arm)
        accuracy = study.values(arm, "test_accuracy")
        loss = study.values(arm, "train_loss")
        step = study.values(arm, "step_time_mean_s")
        epoch_mean, epoch_std = _pooled_epoch_time(runs, int(config.get("epochs") or 1))
        paper_time = claims.PAPER_EPOCH_TIME_S.get(arm) if paper else None
        rows.append({
            "arm": arm, "optimizer": config.get("optimizer", "?"), "init": init_text(config),
            "inputs": "normal" if not is_scaled(config) else ", ".join(f"{m:g}" for m in multiplier(config)),
            "epochs": config.get("epochs", "?"), "status": arm_status(study, arm),
            "status_short": arm_status_short(study, arm), "complete": bool(runs) and all(r.completed for r in runs),
            "accuracy": accuracy, "accuracy_text": ci_cells(accuracy, claims.PERCENT),
            "paper_accuracy": claims.PAPER_TEST_ACCURACY.get(arm) if paper else None,
            "train_loss": loss, "train_loss_text": ci_cells(loss, LOSS),
            "epoch_time": (epoch_mean, epoch_std),
            "epoch_time_text": "—" if epoch_mean is None else f"{epoch_mean:.2f} ± {epoch_std:.2f} s",
            "step_time": float(np.mean(step)) if step else None,
            "step_time_text": step_text(float(np.mean(step))) if step else "—",
            "paper_epoch_time": paper_time[0] if paper_time else "",
            "paper_epoch_time_text": f"{paper_time[0]} ± {paper_time[1]} s" if paper_time else "",
        })
    return rows


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        acc, loss = spread(row["accuracy"]), spread(row["train_loss"])
        writer.writerow([row["arm"], row["optimizer"], row["init"], row["inputs"], row["epochs"], row["status"],
                         acc.n, _number(acc.mean), _number(acc.low), _number(acc.high),
                         ";".join(repr(v) for v in row["accuracy"]), _number(row["paper_accuracy"]),
                         _number(loss.mean), _number(loss.low), _number(loss.high),
                         ";".join(repr(v) for v in row["train_loss"]), _number(row["epoch_time"][0]),
                         _number(row["epoch_time"][1]), _number(row["step_time"]),
                         row["paper_epoch_time"]])
    return buffer.getvalue()


def build(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    rows = table_rows(study)
    return {
        "data_used": f"summary.csv (final epoch of each completed run); test accuracy on the test split, final train "
                     f"loss on the train split; {data_sizes(study)}; {epochs_text(study, list(study.arms))}",
        "missing": [f"{r['arm']}: {r['status']}" for r in rows if not r["complete"]],
        "rows": rows, "budget": budget(study),
        "csv": ctx.write(TABLE_CSV, table_csv(rows)),
    }
