"""4. Normalisation: normal against scaled inputs per optimizer (the paper's Fig 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from minimascope.report import claims, figures
from minimascope.report.text import (
    LOSS,
    arm_status_short,
    ci_cells,
    data_sizes,
    epochs_text,
    reading_text,
    why_unavailable,
)
from minimascope.report.views import arm_curve, normalisation_groups

if TYPE_CHECKING:
    from minimascope.report.page import Context

TITLE = "Normalisation (the paper's Fig 1)"


def build(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    groups = normalisation_groups(study)
    rows, missing, panels = [], [], []
    for optimizer, normal, scaled in groups:
        arms = ([normal] if normal else []) + scaled
        loss_curves, accuracy_curves = [], []
        normal_loss = study.values(normal, "train_loss") if normal else []
        for arm in arms:
            loss = study.values(arm, "train_loss")
            rows.append({"optimizer": optimizer, "arm": arm, "reading": reading_text(arm, study.arms[arm]),
                         "status_short": arm_status_short(study, arm), "train_loss": ci_cells(loss, LOSS),
                         "accuracy": ci_cells(study.values(arm, "test_accuracy"), claims.PERCENT),
                         "ratio": (f"{np.mean(loss) / np.mean(normal_loss):.3g}×"
                                   if arm != normal and loss and normal_loss else "")})
            if (curve := arm_curve(study, arm, "train_loss", ctx.arm_colour(arm))) is None:
                missing.append(why_unavailable(study, arm))
                continue
            loss_curves.append(curve)
            accuracy_curves.append(arm_curve(study, arm, "test_accuracy", ctx.arm_colour(arm)))
        if normal is None:
            missing.append(f"{optimizer}: no arm with normal inputs from random init to compare with")
        if loss_curves:
            panels += [(f"{optimizer}: train loss", loss_curves), (f"{optimizer}: test accuracy", accuracy_curves)]
    figure = None
    if panels:
        figure = ctx.figure("normalisation.svg", lambda path: figures.curves_figure(panels, path, columns=2))
    if not groups:
        missing.append("no arm with scaled inputs in this study")
    arms = [a for _, n, s in groups for a in ([n] if n else []) + s]
    return {
        "data_used": f"summary.csv and metrics.csv of the normal- and scaled-input arms; {data_sizes(study)}; "
                     f"{epochs_text(study, arms)}",
        "missing": missing, "rows": rows, "figure": figure,
    }
