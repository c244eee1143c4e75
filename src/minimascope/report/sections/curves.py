"""3. Curves: accuracy and loss per epoch of every arm with normal inputs (the paper's Figs 3–4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from minimascope.report import figures
from minimascope.report.text import data_sizes, epochs_text, is_scaled, why_unavailable
from minimascope.report.views import arm_curve

if TYPE_CHECKING:
    from minimascope.report.page import Context

TITLE = "Curves: accuracy and loss per epoch (the paper's Figs 3–4)"
PANELS = (("test_accuracy", "test accuracy"), ("test_loss", "test loss"), ("train_loss", "train loss"))


def build(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    arms = [a for a, config in study.arms.items() if not is_scaled(config)]
    curves = {arm: {column: arm_curve(study, arm, column, ctx.arm_colour(arm)) for column, _ in PANELS}
              for arm in arms}
    shown = [a for a in arms if curves[a]["train_loss"] is not None]
    figure = None
    if shown:
        panels = [(label, [c for a in shown if (c := curves[a][column]) is not None]) for column, label in PANELS]
        figure = ctx.figure("curves.svg", lambda path: figures.curves_figure(panels, path))
    return {
        "data_used": f"metrics.csv of every completed or diverged run (per epoch: train loss on the train split as "
                     f"the epoch ran, test loss and accuracy on the whole test split); {data_sizes(study)}; "
                     f"{epochs_text(study, shown)}",
        "missing": [why_unavailable(study, a) for a in arms if a not in shown], "figure": figure,
    }
