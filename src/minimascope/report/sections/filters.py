"""6. Filters: the kernels of chosen conv layers of every arm's final weights (the paper's Figs 8–9)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from minimascope.errors import MinimascopeError
from minimascope.models import read_weights
from minimascope.report import figures
from minimascope.report.text import why_unavailable

if TYPE_CHECKING:
    from minimascope.report.page import Context

TITLE = "Filters (the paper's Figs 8–9)"
LAYERS = ("layer3.1.conv1", "conv1")  # the paper's Fig 8 layer, and the stem's colour kernels
MAX_CHANNELS = 32


def _layer_weights(ctx: Context, layers: Sequence[str]) -> tuple[dict[str, dict[str, np.ndarray]], list[str], dict]:
    """Per layer, arm → kernels of the arm's first completed seed; what is missing; which seed each arm used."""
    found: dict[str, dict[str, np.ndarray]] = {layer: {} for layer in layers}
    missing, seeds = [], {}
    for arm in ctx.study.arms:
        run = next((r for r in ctx.study.arm_runs(arm) if r.completed), None)
        if run is None:
            missing.append(why_unavailable(ctx.study, arm))
            continue
        if not run.weights_path.is_file():
            missing.append(f"{run.weights_path.relative_to(ctx.study.root)}: not found")
            continue
        try:
            state = read_weights(run.weights_path)["state_dict"]
        except MinimascopeError as exc:
            missing.append(f"{arm}: {exc}")
            continue
        seeds[arm] = run.seed
        for layer in layers:
            weight = state.get(f"{layer}.weight")
            if weight is None or weight.ndim != 4:
                missing.append(f"{arm}: no conv layer {layer} in its final.pt")
            else:
                found[layer][arm] = weight.float().numpy()
    return found, missing, seeds


def build(ctx: Context) -> dict[str, Any]:
    found, missing, seeds = _layer_weights(ctx, LAYERS)
    shown = []
    for layer in LAYERS:
        kernels = found[layer]
        if not kernels:
            continue
        rgb = all(w.shape[1] == 3 for w in kernels.values())
        out, inp, kh, kw = next(iter(kernels.values())).shape
        scale = figures.common_scale([w if rgb else w[:MAX_CHANNELS, :MAX_CHANNELS] for w in kernels.values()])
        src = ctx.figure(f"filters-{layer}.png", lambda path, kernels=kernels, scale=scale: figures.filters_figure(
            kernels, path, scale=scale, max_out=MAX_CHANNELS, max_in=MAX_CHANNELS))
        shown.append({"layer": layer, "src": src, "rgb": rgb, "out": out, "in": inp, "kh": kh, "kw": kw,
                      "rows": min(out, MAX_CHANNELS), "columns": min(inp, MAX_CHANNELS), "scale": f"{scale:.3g}"})
    used = ", ".join(f"{arm} seed {seed}" for arm, seed in seeds.items()) or "none"
    return {"data_used": f"final.pt of the first completed seed of each arm ({used})",
            "missing": list(dict.fromkeys(missing)), "layers": shown}
