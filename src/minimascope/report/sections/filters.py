"""6. Filters: the kernels of chosen conv layers of every arm's final weights (the paper's Figs 8–9): the paper's
Fig 8 layer where the architecture has it, and the stem, the first conv layer (:func:`minimascope.layers.stem_conv`),
whose kernels read the image's channels: colour patches for RGB, gray ones for grayscale."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from minimascope.errors import MinimascopeError
from minimascope.layers import stem_conv
from minimascope.models import build_model, payload_channels, read_weights
from minimascope.report import filter_figures
from minimascope.report.text import why_unavailable

if TYPE_CHECKING:
    from minimascope.report.page import Context

TITLE = "Filters (the paper's Figs 8–9)"
PAPER_LAYER = "layer3.1.conv1"  # the paper's Fig 8 layer (the ResNet family's)
STEM = "stem"  # the first conv layer, whatever the architecture names it
MAX_CHANNELS = 32


def _stem_name(payload: dict, stems: dict[tuple, str]) -> str:
    """The name of the stem of a payload's network: its architecture built once (unweighted) per kind."""
    arch = (payload["arch"], payload["num_classes"], payload_channels(payload))
    if arch not in stems:
        stems[arch] = stem_conv(build_model(arch[0], arch[1], in_channels=arch[2]))
    return stems[arch]


def _layer_weights(ctx: Context) -> tuple[dict[str, dict[str, np.ndarray]], list[str], dict, dict[str, str]]:
    """Per layer (the paper's, the stem), arm → kernels of the arm's first completed seed; what is missing; which
    seed each arm used; each arm's name of its stem."""
    found: dict[str, dict[str, np.ndarray]] = {PAPER_LAYER: {}, STEM: {}}
    missing, seeds, stems, names = [], {}, {}, {}
    for arm in ctx.study.arms:
        run = next((r for r in ctx.study.arm_runs(arm) if r.completed), None)
        if run is None:
            missing.append(why_unavailable(ctx.study, arm))
            continue
        if not run.weights_path.is_file():
            missing.append(f"{run.weights_path.relative_to(ctx.study.root)}: not found")
            continue
        try:
            payload = read_weights(run.weights_path)
            names[arm] = _stem_name(payload, stems)
        except MinimascopeError as exc:
            missing.append(f"{arm}: {exc}")
            continue
        except KeyError as exc:  # a payload of the right format that lacks what rebuilds its network
            missing.append(f"{arm}: its final.pt lacks {exc}")
            continue
        seeds[arm] = run.seed
        for layer, name in ((PAPER_LAYER, PAPER_LAYER), (STEM, names[arm])):
            weight = payload["state_dict"].get(f"{name}.weight")
            if weight is None or weight.ndim != 4:
                missing.append(f"{arm}: no conv layer {name} in its final.pt")
            else:
                found[layer][arm] = weight.float().numpy()
    return found, missing, seeds, names


def build(ctx: Context) -> dict[str, Any]:
    found, missing, seeds, names = _layer_weights(ctx)
    shown = []
    for layer, kernels in found.items():
        if not kernels:
            continue
        channels = {w.shape[1] for w in kernels.values()}
        patches = channels in ({1}, {3})  # the image's own channels: colour or gray patches
        out, inp, kh, kw = next(iter(kernels.values())).shape
        shown_kernels = [w if patches else w[:MAX_CHANNELS, :MAX_CHANNELS] for w in kernels.values()]
        scale = filter_figures.common_scale(shown_kernels)
        layer_names = [layer] if layer != STEM else list(dict.fromkeys(names[arm] for arm in kernels))
        src = ctx.figure(ctx.name("filters", layer_names, ".png"),
                         lambda path, kernels=kernels, scale=scale: filter_figures.filters_figure(
                             kernels, path, scale=scale, max_out=MAX_CHANNELS, max_in=MAX_CHANNELS))
        shown.append({"layer": " / ".join(layer_names), "stem": layer == STEM, "src": src, "rgb": channels == {3},
                      "gray": channels == {1}, "out": out, "in": inp, "kh": kh, "kw": kw,
                      "rows": min(out, MAX_CHANNELS), "columns": min(inp, MAX_CHANNELS), "scale": f"{scale:.3g}"})
    used = ", ".join(f"{arm} seed {seed}" for arm, seed in seeds.items()) or "none"
    return {"data_used": f"final.pt of the first completed seed of each arm ({used})",
            "missing": list(dict.fromkeys(missing)), "layers": shown}
