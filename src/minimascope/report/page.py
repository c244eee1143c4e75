"""The report page: ``STUDY_DIR/report/index.html`` with its figures and CSV beside it.

Each section is one context function here (``Context`` → dict for its template) and one template,
``templates/section-<id>.html.j2`` (one flat folder: the package data is ``report/templates/*``);
:data:`SECTIONS` lists them in page order. The frame
(``templates/report.html.j2``) numbers the sections, prints what data each used
(``data_used``) and what it could not show (``missing``). To add a section: write its function,
its template, and one :class:`Section` line.

The report reads result files only (:mod:`minimascope.results`); it never trains or
compares anything. Links are relative and nothing is fetched from a network, so the folder can be
zipped and opened anywhere.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from matplotlib import colormaps
from matplotlib.colors import to_hex

from minimascope import __version__
from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_bytes, atomic_write_text
from minimascope.models import read_weights
from minimascope.report import claims, figures
from minimascope.results import Comparison, RunResult, Study, read_study
from minimascope.similarity import MEASURES, SimilarityMatrix

REPORT_DIR = "report"
INDEX = "index.html"
TABLE_CSV = "table2.csv"
TEMPLATES = Path(__file__).parent / "templates"
FILTER_LAYERS = ("layer3.1.conv1", "conv1")  # the seed's Fig 8 layer, and the stem's colour kernels
OPTIMIZERS = ("sgd", "adahessian")
PAIR_RULE = " vs "
LOSS = "{:#.4g}"  # four significant digits, trailing zeros kept so a column lines up (1.700, not 1.7)

# How each measure maps to anatome, the library the seed used (anatome.distance; all its values are distances).
ANATOME = {
    "cka": "anatome's linear_cka_distance is 1 − CKA: hold 1 − our value against the seed's.",
    "procrustes": "anatome's orthogonal_procrustes_distance is 1 − ‖XᵀY‖_*, half of ours (2 − 2‖XᵀY‖_*): "
                  "hold half our value against the seed's.",
    "svcca": "anatome's svcca_distance reports 1 − mean canonical correlation, and keeps each side's leading "
             "directions until their cumulative singular values (not their squares, the variances) reach 99%, "
             "so it keeps more directions than ours: hold 1 − our value against the seed's, and expect small "
             "differences from the truncation.",
}


@dataclass
class Context:
    """What every section function gets: the study as read, the report folder and shared choices."""

    study: Study
    out: Path
    colours: dict[str, str] = field(default_factory=dict)  # arm → colour, the same in every figure

    def arm_colour(self, arm: str) -> str:
        return self.colours.get(arm, "#444444")


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    build: Callable[[Context], dict[str, Any]]


# ---------------------------------------------------------------- shared helpers

def _seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if value < 120:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def _multiplier(config: dict[str, Any]) -> tuple[float, ...]:
    return tuple(float(m) for m in config.get("std_multiplier", (1.0, 1.0, 1.0)))


def _is_scaled(config: dict[str, Any]) -> bool:
    return any(m != 1.0 for m in _multiplier(config))


def _init_text(config: dict[str, Any]) -> str:
    if config.get("init_from"):
        return f"from {config['init_from']}'s final weights"
    return "ImageNet weights" if config.get("pretrained") else "random"


def reading_text(arm: str, config: dict[str, Any]) -> str:
    """Which reading of the seed's input scaling an arm is (STUDY_FORMAT: arm names of the presets)."""
    stds = ", ".join(f"{m:g}" for m in _multiplier(config))
    if arm.endswith("-scaled-input"):
        return f"scaled input: each channel's input has std {stds}"
    if arm.endswith("-scaled-normalize"):
        return f"scaled Normalize std (the seed's literal wording): the network sees stds {stds}"
    return "normal inputs (std 1 per channel)" if not _is_scaled(config) else f"input stds {stds}"


def _ci_cells(values: Sequence[float], fmt: str) -> dict[str, str]:
    """Mean, 95% CI and each seed's value as display strings."""
    s = claims.spread(values)
    if s.n == 0:
        return {"mean": "—", "ci": "", "seeds": ""}
    return {"mean": fmt.format(s.mean), "ci": f"[{fmt.format(s.low)}, {fmt.format(s.high)}]" if s.n > 1 else "",
            "seeds": ", ".join(fmt.format(v) for v in values)}


def _arm_status(study: Study, arm: str) -> str:
    """A one-line account of an arm's runs: "2 of 2 seeds completed", or the seeds grouped by status."""
    runs = study.arm_runs(arm)
    if not runs:
        return "no runs in study.json"
    completed = sum(r.completed for r in runs)
    if completed == len(runs):
        return f"{completed} of {len(runs)} seeds completed"
    groups: dict[str, list[int]] = {}
    for run in runs:
        groups.setdefault(run.status_text, []).append(run.seed)
    return "; ".join(f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}: {text}"
                     for text, seeds in groups.items())


def _arm_status_short(study: Study, arm: str) -> str:
    """The same without reasons (they are listed under the table)."""
    runs = study.arm_runs(arm)
    counts: dict[str, int] = {}
    for run in runs:
        key = run.status_text if run.status == "diverged" else run.status
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{n} {text}" for text, n in counts.items()) or "no runs"


def why_unavailable(study: Study, arm: str) -> str:
    """Why an arm has no numbers (for claim rows and "not shown" lists)."""
    if arm not in study.arms and not study.arm_runs(arm):
        return f"arm {arm} is not part of this study"
    return f"{arm}: {_arm_status(study, arm)}"


def _pair_missing(study: Study, arm_a: str, arm_b: str) -> str:
    nodes = [c for c in study.comparisons if {c.arm_a, c.arm_b} == {arm_a, arm_b}]
    if not nodes:
        return f"{arm_a} and {arm_b} were not compared in this study"
    return f"{arm_a} vs {arm_b}: " + "; ".join(f"seed {c.seed}: {c.status}" + (f" ({c.reason})" if c.reason else "")
                                              for c in nodes)


def layer_with_itself(matrix: SimilarityMatrix) -> tuple[tuple[str, ...], np.ndarray]:
    """Layer i of A against the layer of B with the same name, in A's order."""
    index_b = {name: j for j, name in enumerate(matrix.layers_b)}
    layers = tuple(name for name in matrix.layers_a if name in index_b)
    rows = [matrix.layers_a.index(name) for name in layers]
    return layers, matrix.values[rows, [index_b[name] for name in layers]]


def _diagonals(comparisons: Sequence[Comparison], measure: str) -> tuple[tuple[str, ...], list[np.ndarray]]:
    """Per seed, layer i with layer i; only seeds whose layers agree with the first one's."""
    layers: tuple[str, ...] = ()
    per_seed = []
    for comparison in comparisons:
        if measure not in comparison.matrices:
            continue
        names, values = layer_with_itself(comparison.matrices[measure])
        layers = layers or names
        if names == layers and len(names):
            per_seed.append(values)
    return layers, per_seed


def _data_sizes(study: Study) -> str:
    data = study.record.get("data", {})
    return (f"train split {data.get('train_size', '?')} images, test split {data.get('test_size', '?')} images; "
            f"seeds {', '.join(map(str, study.seeds)) or '—'}")


def _epochs_text(study: Study, arms: Sequence[str]) -> str:
    epochs = {str(study.arms.get(a, {}).get("epochs", "?")) for a in arms}
    return f"{', '.join(sorted(epochs))} epochs" if len(epochs) == 1 else "epochs per arm in the study table"


# ---------------------------------------------------------------- 1. the study

def study_section(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    record = study.record
    device = record.get("device", {})  # study.json holds env.environment()'s fields at its top level
    device_text = ", ".join(f"{k} {v}" for k, v in device.items()) if isinstance(device, dict) else str(device)
    versions = record.get("versions", {})
    arms = []
    for arm, config in study.arms.items():
        runs = study.arm_runs(arm)
        arms.append({
            "arm": arm, "optimizer": config.get("optimizer", "?"), "init": _init_text(config),
            "inputs": reading_text(arm, config), "epochs": config.get("epochs", "?"), "lr": config.get("lr", "?"),
            "batch": config.get("batch_size", "?"),
            "seeds": [{"seed": r.seed, "status": r.status, "text": r.status_text,
                       "time": _seconds(record_time) if (record_time := _node_time(study, r)) else ""} for r in runs],
        })
    compare_nodes = [{"label": c.label, "seed": c.seed, "status": c.status, "reason": c.reason or ""}
                     for c in study.comparisons]
    compare = record.get("compare", {})
    not_done = [f"run {r.arm} seed {r.seed}: {r.status_text}" for r in study.run_results.values() if not r.completed]
    not_done += [f"comparison {c.label} seed {c.seed}: {c.status}" + (f" ({c.reason})" if c.reason else "")
                 for c in study.comparisons if c.status != "completed"]
    data = record.get("data", {})
    return {
        "data_used": f"study.json, summary.csv and each run's run.json; {_data_sizes(study)}",
        "missing": not_done + study.missing,
        "facts": [
            ("study", f"{study.name} ({record.get('source', '?')})"),
            ("created / updated", f"{record.get('created', '?')} / {record.get('updated', '?')}"),
            ("data", f"{data.get('source', '?')} (content key {data.get('key', '?')})"),
            ("train / test images", f"{data.get('train_size', '?')} / {data.get('test_size', '?')}"),
            ("seeds", ", ".join(map(str, study.seeds)) or "—"),
            ("device", device_text or "?"),
            ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "?"),
            ("total time", _seconds(record.get("wall_time_s"))),
            ("comparisons", (f"measures {', '.join(compare.get('measures', [])) or '—'}, "
                             f"{compare.get('samples', '?')} test images, pairs {compare.get('pairs', '?')}, "
                             f"within each network: {compare.get('within', '?')}")),
        ],
        "arms": arms,
        "comparisons": compare_nodes,
        "completed_comparisons": sum(c.status == "completed" for c in study.comparisons),
    }


def _node_time(study: Study, run: RunResult) -> float | None:
    for node in study.record.get("nodes", []):
        if node.get("kind") == "run" and node.get("arm") == run.arm and node.get("seed") == run.seed:
            return node.get("time_s")
    return None


# ---------------------------------------------------------------- 2. table II

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


def _step_text(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds >= 1 else f"{1000 * seconds:.3g} ms"


def table_rows(study: Study) -> list[dict[str, Any]]:
    rows = []
    for arm, config in study.arms.items():
        runs = study.arm_runs(arm)
        accuracy = study.values(arm, "test_accuracy")
        loss = study.values(arm, "train_loss")
        step = study.values(arm, "step_time_mean_s")
        epoch_mean, epoch_std = _pooled_epoch_time(runs, int(config.get("epochs") or 1))
        seed_paper_time = claims.SEED_EPOCH_TIME_S.get(arm)
        rows.append({
            "arm": arm, "optimizer": config.get("optimizer", "?"), "init": _init_text(config),
            "inputs": "normal" if not _is_scaled(config) else ", ".join(f"{m:g}" for m in _multiplier(config)),
            "epochs": config.get("epochs", "?"), "status": _arm_status(study, arm),
            "status_short": _arm_status_short(study, arm), "complete": bool(runs) and all(r.completed for r in runs),
            "accuracy": accuracy, "accuracy_text": _ci_cells(accuracy, claims.PERCENT),
            "seed_accuracy": claims.SEED_TEST_ACCURACY.get(arm),
            "train_loss": loss, "train_loss_text": _ci_cells(loss, LOSS),
            "epoch_time": (epoch_mean, epoch_std),
            "epoch_time_text": "—" if epoch_mean is None else f"{epoch_mean:.2f} ± {epoch_std:.2f} s",
            "step_time": float(np.mean(step)) if step else None,
            "step_time_text": _step_text(float(np.mean(step))) if step else "—",
            "seed_epoch_time_text": f"{seed_paper_time[0]} ± {seed_paper_time[1]} s" if seed_paper_time else "",
        })
    return rows


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["arm", "optimizer", "init", "input_std_multiplier", "epochs", "status", "seeds_completed",
                     "test_accuracy_mean", "test_accuracy_ci95_low", "test_accuracy_ci95_high",
                     "test_accuracy_per_seed", "seed_paper_test_accuracy", "train_loss_mean", "train_loss_ci95_low",
                     "train_loss_ci95_high", "train_loss_per_seed", "epoch_time_mean_s", "epoch_time_std_s",
                     "step_time_mean_s", "seed_paper_epoch_time_s"])

    def cell(value: float | None) -> str:
        return "" if value is None or not math.isfinite(value) else repr(float(value))

    for row in rows:
        acc, loss = claims.spread(row["accuracy"]), claims.spread(row["train_loss"])
        writer.writerow([row["arm"], row["optimizer"], row["init"], row["inputs"], row["epochs"], row["status"],
                         acc.n, cell(acc.mean), cell(acc.low), cell(acc.high),
                         ";".join(repr(v) for v in row["accuracy"]), cell(row["seed_accuracy"]),
                         cell(loss.mean), cell(loss.low), cell(loss.high), ";".join(repr(v) for v in row["train_loss"]),
                         cell(row["epoch_time"][0]), cell(row["epoch_time"][1]), cell(row["step_time"]),
                         claims.SEED_EPOCH_TIME_S.get(row["arm"], ("",))[0]])
    return buffer.getvalue()


def table_section(ctx: Context) -> dict[str, Any]:
    rows = table_rows(ctx.study)
    atomic_write_text(ctx.out / TABLE_CSV, table_csv(rows))
    return {
        "data_used": f"summary.csv (final epoch of each completed run); test accuracy on the test split, final train "
                     f"loss on the train split; {_data_sizes(ctx.study)}; "
                     f"{_epochs_text(ctx.study, list(ctx.study.arms))}",
        "missing": [f"{r['arm']}: {r['status']}" for r in rows if not r["complete"]],
        "rows": rows,
        "csv": TABLE_CSV,
    }


# ---------------------------------------------------------------- 3. curves and 4. normalisation

def arm_curve(ctx: Context, arm: str, column: str, label: str | None = None) -> figures.Curve | None:
    """The arm's ``column`` per epoch, one row per finished seed (completed or diverged)."""
    runs = [r for r in ctx.study.arm_runs(arm) if r.status in ("completed", "diverged") and r.metrics]
    if not runs:
        return None
    epochs = sorted({int(row["epoch"]) for r in runs for row in r.metrics if math.isfinite(row.get("epoch", math.nan))})
    if not epochs:
        return None
    position = {e: i for i, e in enumerate(epochs)}
    per_seed = np.full((len(runs), len(epochs)), np.nan)
    for k, run in enumerate(runs):
        for row in run.metrics:
            if math.isfinite(row.get("epoch", math.nan)):
                per_seed[k, position[int(row["epoch"])]] = row.get(column, math.nan)
    diverged = any(r.status == "diverged" for r in runs)
    return figures.Curve((label or arm) + (" (diverged)" if diverged else ""), ctx.arm_colour(arm),
                         np.array(epochs, dtype=float), per_seed)


CURVE_PANELS = (("test_accuracy", "test accuracy"), ("test_loss", "test loss"), ("train_loss", "train loss"))


def curves_section(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    arms = [a for a, config in study.arms.items() if not _is_scaled(config)]
    shown = [a for a in arms if arm_curve(ctx, a, "train_loss") is not None]
    missing = [why_unavailable(study, a) for a in arms if a not in shown]
    figure = None
    if shown:
        panels = [(label, [c for a in shown if (c := arm_curve(ctx, a, column)) is not None])
                  for column, label in CURVE_PANELS]
        figure = {"src": figures.curves_figure(panels, ctx.out / "curves.svg").name,
                  "alt": "test accuracy, test loss and train loss per epoch for each arm",
                  "caption": "Line: mean over seeds; band: lowest to highest seed. Loss axes are logarithmic where "
                             "the values span more than a factor 10. Arms with scaled inputs are in the next section."}
    return {
        "data_used": f"metrics.csv of every completed or diverged run (per epoch: train loss on the train split as "
                     f"the epoch ran, test loss and accuracy on the whole test split); {_data_sizes(study)}; "
                     f"{_epochs_text(study, shown)}",
        "missing": missing, "figure": figure,
    }


def normalisation_groups(study: Study) -> list[tuple[str, str | None, list[str]]]:
    """(optimizer, its normal-input arm or None, its scaled-input arms) for every optimizer with scaled arms."""
    groups = []
    for optimizer in dict.fromkeys(c.get("optimizer", "?") for c in study.arms.values()):
        scaled = [a for a, c in study.arms.items() if c.get("optimizer") == optimizer and _is_scaled(c)]
        if not scaled:
            continue
        normal = next((a for a, c in study.arms.items() if c.get("optimizer") == optimizer and not _is_scaled(c)
                       and not c.get("pretrained") and not c.get("init_from")), None)
        groups.append((optimizer, normal, scaled))
    return groups


def normalisation_section(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    groups = normalisation_groups(study)
    rows, missing, panels = [], [], []
    for optimizer, normal, scaled in groups:
        arms = ([normal] if normal else []) + scaled
        loss_curves, accuracy_curves = [], []
        normal_loss = study.values(normal, "train_loss") if normal else []
        for arm in arms:
            config = study.arms[arm]
            loss = study.values(arm, "train_loss")
            accuracy = study.values(arm, "test_accuracy")
            rows.append({"optimizer": optimizer, "arm": arm, "reading": reading_text(arm, config),
                         "status_short": _arm_status_short(study, arm), "train_loss": _ci_cells(loss, LOSS),
                         "accuracy": _ci_cells(accuracy, claims.PERCENT),
                         "ratio": (f"{np.mean(loss) / np.mean(normal_loss):.3g}×"
                                   if arm != normal and loss and normal_loss else "")})
            if (curve := arm_curve(ctx, arm, "train_loss")) is None:
                missing.append(why_unavailable(study, arm))
                continue
            loss_curves.append(curve)
            accuracy_curves.append(arm_curve(ctx, arm, "test_accuracy"))
        if normal is None:
            missing.append(f"{optimizer}: no arm with normal inputs from random init to compare with")
        if loss_curves:
            panels += [(f"{optimizer}: train loss", loss_curves), (f"{optimizer}: test accuracy", accuracy_curves)]
    figure = None
    if panels:
        figure = {"src": figures.curves_figure(panels, ctx.out / "normalisation.svg", columns=2).name,
                  "alt": "train loss and test accuracy per epoch with normal and scaled inputs",
                  "caption": "Per optimizer, normal against scaled inputs. Line: mean over seeds; band: lowest to "
                             "highest seed; logarithmic loss axis where the values span decades."}
    if not groups:
        missing.append("no arm with scaled inputs in this study")
    arms = [a for _, n, s in groups for a in ([n] if n else []) + s]
    return {
        "data_used": f"summary.csv and metrics.csv of the normal- and scaled-input arms; {_data_sizes(study)}; "
                     f"{_epochs_text(study, arms)}",
        "missing": missing, "rows": rows, "figure": figure,
    }


# ---------------------------------------------------------------- 5. similarity

def _pair_colours(pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    palette = colormaps["tab20" if len(pairs) > 10 else "tab10"]
    return {pair: to_hex(palette(i % palette.N)) for i, pair in enumerate(pairs)}


def _mean_matrix(comparisons: Sequence[Comparison], measure: str) -> SimilarityMatrix | None:
    """The seeds' mean of one pair's matrix (only seeds with the first seed's layers)."""
    matrices = [c.matrices[measure] for c in comparisons if measure in c.matrices]
    if not matrices:
        return None
    first = matrices[0]
    same = [m.values for m in matrices if (m.layers_a, m.layers_b) == (first.layers_a, first.layers_b)]
    return SimilarityMatrix(first.measure, first.kind, first.convention, np.mean(same, axis=0), first.layers_a,
                            first.layers_b, first.n_samples, first.policy, first.label_a, first.label_b)


def similarity_section(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    pairs = study.pairs()
    cross = [p for p in pairs if p[0] != p[1]]
    within = [p for p in pairs if p[0] == p[1]]
    ordered = cross + within
    colours = _pair_colours(cross)
    measures, missing, profiles, summary = [], [], [], {}
    n_samples, policies = set(), set()
    for measure in study.measures:
        spec = MEASURES.get(measure)
        panels = []
        for arm_a, arm_b in ordered:
            comparisons = study.pair_comparisons(arm_a, arm_b)
            mean = _mean_matrix(comparisons, measure)
            if mean is None:
                missing.append(f"{measure}: {_pair_missing(study, arm_a, arm_b)} (no {measure}.json)")
                continue
            n_samples.add(mean.n_samples)
            policies.add(mean.policy)
            seeds = sum(measure in c.matrices for c in comparisons)
            label = f"within {arm_a}" if arm_a == arm_b else f"{arm_a}{PAIR_RULE}{arm_b}"
            panels.append(figures.Heatmap(f"{label} ({seeds} seed{'s' * (seeds != 1)})", mean.values,
                                          mean.layers_a, mean.layers_b))
            if arm_a != arm_b:
                summary.setdefault(label, {})[measure] = float(np.mean(layer_with_itself(mean)[1]))
        if not panels:
            continue
        kind = spec.kind if spec else "similarity"
        value_range = spec.value_range if spec else (0.0, 1.0)
        direction = "higher" if kind == "similarity" else "lower"
        first = next(c.matrices[measure] for c in study.comparisons if measure in c.matrices)
        groups: dict[tuple, list[figures.Heatmap]] = {}  # one figure per layer list (normally one in all)
        for panel in panels:
            groups.setdefault((panel.layers_a, panel.layers_b), []).append(panel)
        grids = [figures.heatmap_grid(group, ctx.out / f"similarity-{measure}{'' if i == 0 else f'-{i + 1}'}.png",
                                      value_range=value_range, kind=kind,
                                      colour_label=f"{measure} ({kind}: {direction} = more alike)")
                 for i, group in enumerate(groups.values())]
        measures.append({
            "measure": measure, "kind": kind, "range": f"{value_range[0]:g} to {value_range[1]:g}",
            "convention": first.convention, "anatome": ANATOME.get(measure, ""),
            "figures": [{"src": grid.name, "alt": f"{measure} heatmaps of every compared pair",
                         "caption": f"{measure}: in each panel rows = layers of the first arm, columns = layers of "
                                    f"the second; mean over the seeds compared; colour range fixed at "
                                    f"{value_range[0]:g}–{value_range[1]:g} for every pair (brighter = more alike)."}
                        for grid in grids],
        })
        pair_profiles = []
        for arm_a, arm_b in cross:
            layers, per_seed = _diagonals(study.pair_comparisons(arm_a, arm_b), measure)
            if per_seed:
                pair_profiles.append(figures.Profile(f"{arm_a}{PAIR_RULE}{arm_b}", colours[(arm_a, arm_b)], layers,
                                                     np.array(per_seed)))
        if pair_profiles:
            profiles.append((measure, kind, value_range, pair_profiles))
    profile_figure = None
    if profiles:
        profile_figure = {
            "src": figures.depth_profile_figure(profiles, ctx.out / "similarity-depth.svg").name,
            "alt": "similarity of layer i with layer i along the depth, one line per compared pair",
            "caption": "Each line: one pair of arms, layer i of the first against layer i of the second, mean over "
                       "seeds, band from the lowest to the highest seed. Up is more alike for every measure "
                       "(distance axes reversed)."}
    if not pairs:
        missing.append("no completed comparison in this study")
    return {
        "data_used": f"comparisons/*/seed*/<measure>.json; activations of "
                     f"{', '.join(map(str, sorted(n_samples))) or '?'} test images "
                     f"({', '.join(sorted(policies)) or '?'}"
                     f" policy) through each run's final.pt; seeds {', '.join(map(str, study.seeds))}; "
                     f"{len(cross)} pairs of arms and {len(within)} networks compared with themselves",
        "missing": missing, "measures": measures, "profile": profile_figure,
        "summary_measures": [m["measure"] for m in measures],
        "summary": [{"pair": label, "values": [f"{values[m]:.3f}" if m in values else "—"
                                               for m in (x["measure"] for x in measures)]}
                    for label, values in summary.items()],
    }


# ---------------------------------------------------------------- 6. filters

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


def filters_section(ctx: Context, layers: Sequence[str] = FILTER_LAYERS, max_channels: int = 32) -> dict[str, Any]:
    found, missing, seeds = _layer_weights(ctx, layers)
    shown = []
    for layer in layers:
        kernels = found[layer]
        if not kernels:
            continue
        rgb = all(w.shape[1] == 3 for w in kernels.values())
        out, inp, kh, kw = next(iter(kernels.values())).shape
        shown_parts = [w if rgb else w[:max_channels, :max_channels] for w in kernels.values()]
        scale = figures.common_scale(shown_parts)
        path = figures.filters_figure(kernels, ctx.out / f"filters-{layer}.png", scale=scale,
                                      max_out=max_channels, max_in=max_channels)
        if rgb:
            what = (f"all {out} kernels ({kh}×{kw}) as colour patches: red, green and blue = the weights on the "
                    f"three input channels, grey = 0, full colour = ±{scale:.3g}")
        else:
            what = (f"the first {min(out, max_channels)} output (rows) × {min(inp, max_channels)} input channels "
                    f"(columns) of {out} × {inp}, {kh}×{kw} kernels; colour range ±{scale:.3g}")
        shown.append({"layer": layer, "figure": {
            "src": path.name, "alt": f"kernels of {layer} for each arm",
            "caption": f"{layer}: {what}, the same for every arm (99th percentile of |w| over all arms' shown "
                       f"kernels; larger values are clipped)."}})
    used = ", ".join(f"{arm} seed {seed}" for arm, seed in seeds.items()) or "none"
    return {"data_used": f"final.pt of the first completed seed of each arm ({used})",
            "missing": list(dict.fromkeys(missing)), "layers": shown}


# ---------------------------------------------------------------- 7. claims

def _checked(study: Study, claim: claims.Claim, check: Callable[..., claims.ClaimRow],
             inputs: Sequence[tuple[str | None, str]]) -> claims.ClaimRow:
    """``check`` on the per-seed values of each (arm, summary column); when an arm has none, the
    row says why; runs that did not complete (e.g. diverged) are named in the reason."""
    values = [study.values(arm, column) if arm else [] for arm, column in inputs]
    if not all(values):
        return claim.unavailable("; ".join(why_unavailable(study, arm) if arm else "no such arm"
                                           for (arm, _), v in zip(inputs, values) if not v))
    row = check(*values)
    notes = [why_unavailable(study, arm) for arm in dict.fromkeys(arm for arm, _ in inputs)
             if arm and not all(r.completed for r in study.arm_runs(arm))]
    return dataclasses.replace(row, reason="; ".join([row.reason, *notes])) if notes else row


def claim_rows(study: Study) -> list[claims.ClaimRow]:
    """Every claim of the seed, checked against this study's numbers (unavailable ones say why)."""
    rows = [_checked(study, claims.ACCURACY_MATCHES, claims.accuracy_matches,
                     [("sgd", "test_accuracy"), ("adahessian", "test_accuracy")])]
    for optimizer in OPTIMIZERS:
        rows.append(_checked(study, claims.pretrained_claim(optimizer),
                             partial(claims.pretrained_raises_accuracy, optimizer=optimizer),
                             [(optimizer, "test_accuracy"), (f"{optimizer}-pretrained", "test_accuracy")]))
    rows.append(_checked(study, claims.ADAHESSIAN_COSTS_MORE_TIME, claims.adahessian_costs_more_time,
                         [("sgd", "epoch_time_mean_s"), ("adahessian", "epoch_time_mean_s")]))
    rows += _similarity_claims(study)
    groups = normalisation_groups(study)
    for optimizer, normal, scaled in groups:
        for arm in scaled:
            reading = reading_text(arm, study.arms[arm]).split(":")[0]
            rows.append(_checked(study, claims.normalisation_loss_claim(optimizer, reading),
                                 partial(claims.normalisation_lowers_train_loss, optimizer=optimizer, reading=reading),
                                 [(normal, "train_loss"), (arm, "train_loss")]))
            rows.append(_checked(study, claims.normalisation_accuracy_claim(optimizer, reading),
                                 partial(claims.normalisation_raises_accuracy, optimizer=optimizer, reading=reading),
                                 [(normal, "test_accuracy"), (arm, "test_accuracy")]))
    if not groups:
        for claim in (claims.normalisation_loss_claim("sgd, adahessian", "either reading"),
                      claims.normalisation_accuracy_claim("sgd, adahessian", "either reading")):
            rows.append(claim.unavailable("no arm with scaled inputs in this study"))
    return rows


def _similarity_claims(study: Study) -> list[claims.ClaimRow]:
    if "cka" not in study.measures:
        reason = "CKA was not among the compared measures"
        return [c.unavailable(reason) for c in (claims.FIRST_LAYERS_MORE_SIMILAR, claims.PRETRAINED_REDUCES_DIFFERENCE,
                                                claims.ISOLATED_LAYERS, claims.SGD_FROM_ADAHESSIAN_STAYS)]
    rows = []

    def diagonals(arm_a: str, arm_b: str) -> tuple[tuple[str, ...], list[np.ndarray]]:
        return _diagonals(study.pair_comparisons(arm_a, arm_b), "cka")

    _, optimizers = diagonals("sgd", "adahessian")
    rows.append(claims.first_layers_more_similar(optimizers) if optimizers else
                claims.FIRST_LAYERS_MORE_SIMILAR.unavailable(_pair_missing(study, "sgd", "adahessian")))
    _, pretrained = diagonals("sgd-pretrained", "adahessian-pretrained")
    if optimizers and pretrained:
        rows.append(claims.pretrained_reduces_difference(optimizers, pretrained))
    else:
        rows.append(claims.PRETRAINED_REDUCES_DIFFERENCE.unavailable("; ".join(
            _pair_missing(study, a, b) for (a, b), v in ((("sgd", "adahessian"), optimizers),
                                                         (("sgd-pretrained", "adahessian-pretrained"), pretrained))
            if not v)))
    networks = {}
    for arm_a, arm_b in study.pairs():
        if arm_a == arm_b:
            matrices = [c.matrices["cka"] for c in study.pair_comparisons(arm_a, arm_a) if "cka" in c.matrices]
            same = [m.values for m in matrices if m.layers_a == m.layers_b == matrices[0].layers_a]
            if same:
                networks[arm_a] = (matrices[0].layers_a, same)
    rows.append(claims.isolated_layers(networks))
    layers, stay = diagonals("adahessian-then-sgd", "adahessian")
    _, move = diagonals("sgd-then-adahessian", "sgd")
    if stay and move:
        rows.append(claims.sgd_from_adahessian_stays_close(stay, move, layers))
    else:
        rows.append(claims.SGD_FROM_ADAHESSIAN_STAYS.unavailable("; ".join(
            _pair_missing(study, a, b) for (a, b), v in ((("adahessian-then-sgd", "adahessian"), stay),
                                                         (("sgd-then-adahessian", "sgd"), move)) if not v)))
    return rows


def claims_section(ctx: Context) -> dict[str, Any]:
    rows = claim_rows(ctx.study)
    return {
        "data_used": f"summary.csv (accuracy, loss and time of each seed) and the CKA comparison files; "
                     f"{_data_sizes(ctx.study)}",
        "missing": [], "rows": rows, "rules": claims.VERDICT_RULES,
    }


# ---------------------------------------------------------------- 8.–11. minima: sharpness, paths, weights, mistakes

def _analysis_missing(study: Study, kind: str) -> list[str]:
    """Each analysis node of ``kind`` that has no result, with why; or that the study has none."""
    nodes = study.analysis_nodes(kind)
    if not nodes:
        return [f"no {kind} nodes in this study's study.json"]
    return [f"{kind} {a.label} seed {a.seed}: " + (a.problem or a.status + (f" ({a.reason})" if a.reason else ""))
            for a in nodes if a.result is None]


def _by_arms(analyses: Sequence[Any]) -> dict[tuple[str, ...], list[Any]]:
    """Analyses grouped by their arm (or pair of arms), in node order, each group in seed order."""
    groups: dict[tuple[str, ...], list[Any]] = {}
    for analysis in analyses:
        groups.setdefault(analysis.arms, []).append(analysis)
    return {arms: sorted(group, key=lambda a: a.seed) for arms, group in groups.items()}


def _cells(values: Sequence[float], fmt: str = "{:.4g}") -> dict[str, str]:
    return _ci_cells([v for v in values if v is not None and math.isfinite(v)], fmt)


def _images_text(counts: set[Any], what: str) -> str:
    return f"{', '.join(map(str, sorted(counts))) or '?'} {what}"


def sharpness_section(ctx: Context) -> dict[str, Any]:
    import torch  # the library's smoothing, so the page draws what `sharpness` draws

    from minimascope.minima.sharpness import smooth_density

    study = ctx.study
    groups = _by_arms(study.completed_analyses("sharpness"))
    rows, lines, points = [], [], {"top eigenvalue λ1": [], "trace (Hutchinson)": []}
    images, sources = set(), set()
    for (arm,), analyses in groups.items():
        results = [a.result for a in analyses]
        images |= {r.n_images for r in results}
        sources |= {str(r.settings.get("images", "?")) for r in results}
        k = min(len(r.eigenvalues.values) for r in results)
        top = [r.eigenvalues.values[0] for r in results]
        traces = [r.trace.value for r in results]
        unconverged = [f"seed {a.seed}" for a in analyses if not (a.result.eigenvalues.converged
                                                                  and a.result.trace.converged)]
        rows.append({"arm": arm, "seeds": ", ".join(str(a.seed) for a in analyses),
                     "eigenvalues": [_cells([r.eigenvalues.values[i] for r in results]) for i in range(k)],
                     "trace": _cells(traces),
                     "trace_stderr": ", ".join(f"{r.trace.stderr:.2g} ({r.trace.probes} probes)" for r in results),
                     "ratio": _cells([r.eigenvalues.values[0] / r.trace.value for r in results
                                      if r.trace.value != 0], "{:.3g}"),
                     "unconverged": ", ".join(unconverged)})
        points["top eigenvalue λ1"].append(figures.SeedValues(arm, ctx.arm_colour(arm), top))
        points["trace (Hutchinson)"].append(figures.SeedValues(arm, ctx.arm_colour(arm), traces))
        for result in results:
            nodes = np.asarray(result.density.nodes, dtype=float)
            span = max(float(nodes.max() - nodes.min()), 1e-12 * max(abs(float(nodes.max())), 1.0))
            grid = np.linspace(nodes.min() - 0.05 * span, nodes.max() + 0.05 * span, 400)
            values = smooth_density(torch.tensor(nodes), torch.tensor(result.density.weights, dtype=torch.float64),
                                    torch.tensor(grid), 0.01 * span).clamp_min(1e-12).numpy()
            lines.append(figures.DensityLine(arm, ctx.arm_colour(arm), grid, values))
    figure_list = []
    if rows:
        figure_list.append({"src": figures.seed_points_figure(list(points.items()), ctx.out / "sharpness.svg").name,
                            "alt": "top Hessian eigenvalue and trace of each arm, one dot per seed",
                            "caption": "Dots: seeds; bar: their mean. Larger = sharper minimum."})
        figure_list.append({"src": figures.density_lines_figure(lines, ctx.out / "sharpness-density.svg").name,
                            "alt": "Hessian eigenvalue density of each arm and seed",
                            "caption": "Stochastic Lanczos quadrature, smoothed; one line per seed, coloured by arm. "
                                       "Log scale: the bulk near 0 and the outliers differ by orders of magnitude."})
    return {
        "data_used": f"analyses/sharpness/<arm>/seed<k>/sharpness.json; loss = mean cross-entropy over "
                     f"{_images_text(images, 'CIFAR-10 ' + ('/'.join(sorted(sources)) or 'train') + ' images')} "
                     f"(class-balanced subset) at each run's final weights, in eval mode (batch norm with running "
                     f"statistics, so the loss is a function of the weights alone)",
        "missing": _analysis_missing(study, "sharpness"),
        "rows": rows, "k": max((len(r["eigenvalues"]) for r in rows), default=0), "figures": figure_list,
    }


CONNECTIVITY_METRICS = (("train_loss", "train loss"), ("test_error", "test error"))


def connectivity_section(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    groups = _by_arms(study.completed_analyses("connectivity"))
    rows, pairs, sizes = [], [], set()
    for arms, analyses in groups.items():
        results = [a.result for a in analyses]
        sizes |= {(r.n_train, r.n_test, r.settings.get("points", len(r.alphas))) for r in results}
        label = PAIR_RULE.join(arms)
        alphas = results[0].alphas
        same = [r for r in results if r.alphas == alphas]
        variants = list(dict.fromkeys(c.variant for r in same for c in r.curves))
        curves: dict[str, dict[str, np.ndarray]] = {}
        for variant in variants:
            having = [r.curve(variant) for r in same if variant in {c.variant for c in r.curves}]
            curves[variant] = {m: np.array([getattr(c, m) for c in having]) for m, _ in CONNECTIVITY_METRICS}
            barriers = [c.barriers() for c in having]
            rows.append({"pair": label, "variant": variant, "seeds": len(having),
                         **{metric: _cells([b[metric] for b in barriers]) for metric in
                            ("train_loss", "train_error", "test_loss", "test_error")}})
        pairs.append(figures.PathLines(label, np.asarray(alphas), curves))
    figure = None
    if pairs:
        figure = {"src": figures.paths_figure(pairs, ctx.out / "connectivity.svg", CONNECTIVITY_METRICS).name,
                  "alt": "train loss and test error along the straight line between the two arms' weights",
                  "caption": "Each row: one pair of arms. Lines: batch-norm variants (interpolate: running statistics "
                             "interpolated with the weights; recompute: recomputed from training images at each point; "
                             "+matched: B's channels first permuted onto A's by weight matching). Mean over seeds, "
                             "band from the lowest to the highest seed. The arms of one seed start from the same "
                             "initial weights (or one from the other's final ones), so their channels may already "
                             "correspond: matching then finds the identity and the +matched lines lie on the plain "
                             "ones."}
    sizes_text = "; ".join(f"{n_train} train and {n_test} test images, {points} points"
                           for n_train, n_test, points in sorted(sizes)) or "?"
    return {
        "data_used": f"analyses/connectivity/<a>_vs_<b>/seed<k>/connectivity.json; {sizes_text} (class-balanced "
                     f"subsets of the CIFAR-10 train and test sets); same-seed networks of the two arms",
        "missing": _analysis_missing(study, "connectivity"), "rows": rows, "figure": figure,
    }


WEIGHT_MEASURES = (("relative_distance_from_init", "‖W − W₀‖ / ‖W₀‖"), ("frobenius_norm", "Frobenius norm ‖W‖"),
                   ("effective_rank", "effective rank (Roy & Vetterli)"), ("stable_rank", "stable rank ‖W‖²/σ²max"),
                   ("small_weight_share", "share of |w| below the threshold"))
WEIGHTS_CSV = "weights.csv"


def _weights_csv(groups: dict[tuple[str, ...], list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["arm", "seed", "layer", "shape", *(m for m, _ in WEIGHT_MEASURES), "distance_from_init",
                     "sigma_max", "threshold"])
    for (arm,), analyses in groups.items():
        for analysis in analyses:
            for layer in analysis.result.layers:
                values = [getattr(layer, m) for m, _ in WEIGHT_MEASURES] + [layer.distance_from_init,
                                                                            layer.singular_values[0]]
                writer.writerow([arm, analysis.seed, layer.layer, "x".join(map(str, layer.shape)),
                                 *("" if v is None or not math.isfinite(v) else repr(float(v)) for v in values),
                                 analysis.result.threshold])
    return buffer.getvalue()


def weights_section(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    groups = _by_arms(study.completed_analyses("weights"))
    panels: dict[str, list[figures.Profile]] = {label: [] for _, label in WEIGHT_MEASURES}
    rows, thresholds, missing = [], set(), []
    for (arm,), analyses in groups.items():
        layers = tuple(layer.layer for layer in analyses[0].result.layers)
        same = [a for a in analyses if tuple(layer.layer for layer in a.result.layers) == layers]
        thresholds |= {a.result.threshold for a in same}
        if not all(a.result.has_initial for a in same):
            missing.append(f"{arm}: no initial weights recorded, so no distance from init")
        row = {"arm": arm, "seeds": ", ".join(str(a.seed) for a in same), "layers": len(layers), "values": []}
        for measure, label in WEIGHT_MEASURES:
            per_seed = np.array([[math.nan if getattr(layer, measure) is None else getattr(layer, measure)
                                  for layer in a.result.layers] for a in same], dtype=float)
            if np.isfinite(per_seed).any():
                panels[label].append(figures.Profile(arm, ctx.arm_colour(arm), layers, per_seed))
            row["values"].append(_cells([float(np.nanmean(seed)) for seed in per_seed if np.isfinite(seed).any()],
                                        "{:.3g}"))
        rows.append(row)
    figure = None
    shown = [(label, profiles) for label, profiles in panels.items() if profiles]
    if shown:
        figure = {"src": figures.layer_profiles_figure(shown, ctx.out / "weights.svg").name,
                  "alt": "per-layer weight statistics along the depth, one line per arm",
                  "caption": "Every conv and linear layer (conv kernels as out × in·kh·kw matrices) of each arm's "
                             "final weights, in forward order. Line: mean over seeds; band: lowest to highest seed."}
        atomic_write_text(ctx.out / WEIGHTS_CSV, _weights_csv(groups))
    return {
        "data_used": f"analyses/weights/<arm>/seed<k>/weights.json (final.pt against initial.pt of each run; no "
                     f"images); small weights: |w| below {', '.join(f'{t:g}' for t in sorted(thresholds)) or '?'}",
        "missing": _analysis_missing(study, "weights") + missing, "rows": rows,
        "measures": [label for _, label in WEIGHT_MEASURES], "figure": figure,
        "csv": WEIGHTS_CSV if shown else None,
    }


def mistakes_section(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    groups = _by_arms(study.completed_analyses("mistakes"))
    rows, class_pairs, grids, sizes = [], [], [], set()
    for arms, analyses in groups.items():
        label = PAIR_RULE.join(arms)
        for analysis in analyses:
            c = analysis.result
            sizes.add(c.n)
            rows.append({"pair": label, "seed": analysis.seed, "n": c.n, "errors_a": c.errors_a,
                         "errors_b": c.errors_b, "both": c.both_wrong, "expected": f"{c.expected_both_wrong:.1f}",
                         "only_a": c.only_a_wrong, "only_b": c.only_b_wrong,
                         "kappa": "—" if math.isnan(c.kappa) else f"{c.kappa:.3f}",
                         "p_more": f"{c.p_value_more_overlap:.3g}"})
        first = analyses[0].result
        same = [a.result for a in analyses if a.result.class_names == first.class_names]
        class_pairs.append(figures.ClassErrors(
            label, first.class_names, arms[0], arms[1],
            np.mean([[k.error_rate_a for k in r.per_class] for r in same], axis=0),
            np.mean([[k.error_rate_b for k in r.per_class] for r in same], axis=0)))
        for name, who in (("only_a.png", arms[0]), ("only_b.png", arms[1])):
            source = analyses[0].path / name
            if source.is_file():
                target = ctx.out / f"mistakes-{'_vs_'.join(arms)}-{name}"
                atomic_write_bytes(target, source.read_bytes())
                grids.append({"src": target.name, "alt": f"test images only {who} gets wrong ({label})",
                              "caption": f"{label}, seed {analyses[0].seed}: test images only {who} gets wrong, with "
                                         f"the true class and both predictions (at most 64, drawn at random)."})
    figure = None
    if class_pairs:
        figure = {"src": figures.class_errors_figure(class_pairs, ctx.out / "mistakes-classes.svg").name,
                  "alt": "test error rate per class of both arms of each pair",
                  "caption": "Per class, the test error rate of each arm (mean over seeds)."}
    return {
        "data_used": f"analyses/mistakes/<a>_vs_<b>/seed<k>/mistakes.json (each run's final predictions, "
                     f"predictions.pt); {_images_text(sizes, 'CIFAR-10 test images')} per comparison",
        "missing": _analysis_missing(study, "mistakes"), "rows": rows, "figure": figure, "grids": grids,
    }


# ---------------------------------------------------------------- 12. seed statistics

SCALARS = (("test accuracy", "runs"), ("top eigenvalue λ1", "sharpness"), ("Hessian trace", "sharpness"))
ALPHA = 0.05


def _scalar_values(study: Study, arm: str, name: str) -> list[float]:
    if name == "test accuracy":
        return study.values(arm, "test_accuracy")
    results = [a.result for a in study.completed_analyses("sharpness") if a.arms == (arm,)]
    return [r.eigenvalues.values[0] if name == "top eigenvalue λ1" else r.trace.value for r in results]


def seeds_section(ctx: Context) -> dict[str, Any]:
    from minimascope.optimizer_effect import layer_values, optimizer_effect_tests, write_optimizer_effect_tests
    from minimascope.stats import permutation_test

    study = ctx.study
    within_of = {}
    for arm in study.arms:
        matrices = [m for c in study.seed_comparisons if c.arm == arm and c.status == "completed"
                    for m in c.matrices.values()]
        if matrices:
            within_of[arm] = layer_values(matrices)
    missing, tables, scalars = [], [], []
    if len(study.seeds) < 2:
        missing.append(f"one seed only ({', '.join(map(str, study.seeds)) or 'none'}): nothing to hold a "
                       f"difference against")
    if not study.seed_comparisons:
        missing.append("no cross-seed comparisons (comparisons/<arm>_vs_<arm>/seed<i>-seed<j>) in this study")
    missing += [f"cross-seed comparison {c.arm} seeds {c.seeds[0]}-{c.seeds[1]}: {c.status}"
                + (f" ({c.reason})" if c.reason else "") for c in study.seed_comparisons if c.status != "completed"]
    for arm_a, arm_b in [p for p in study.pairs() if p[0] != p[1]]:
        if arm_a not in within_of and arm_b not in within_of:
            continue
        across = layer_values([m for c in study.pair_comparisons(arm_a, arm_b) for m in c.matrices.values()])
        within: dict[tuple[str, str], list[float]] = {}
        for arm in (arm_a, arm_b):
            for key, values in within_of.get(arm, {}).items():
                within.setdefault(key, []).extend(values)
        keys = [key for key in within if key in across]
        if not keys:
            missing.append(f"{arm_a}{PAIR_RULE}{arm_b}: no measure and layer with both kinds of comparison")
            continue
        tests = optimizer_effect_tests({k: within[k] for k in keys}, {k: across[k] for k in keys})
        folder = ctx.out / f"seeds-{arm_a}_vs_{arm_b}"
        write_optimizer_effect_tests(tests, folder)
        tables.append({
            "pair": f"{arm_a}{PAIR_RULE}{arm_b}", "csv": f"{folder.name}/seeds.csv",
            "within_arms": ", ".join(a for a in (arm_a, arm_b) if a in within_of),
            "significant": sum(t.test.p_value < ALPHA for t in tests), "count": len(tests),
            "rows": [{"measure": t.measure, "kind": t.kind, "layer": t.layer,
                      "within": _interval_text(t.within), "across": _interval_text(t.across),
                      "statistic": f"{t.test.statistic:+.3g}", "p": f"{t.test.p_value:.3g}",
                      "significant": t.test.p_value < ALPHA,
                      "method": f"{t.test.method}, {t.test.n_arrangements} arrangements"} for t in tests]})
        for name, _ in SCALARS:
            a_values, b_values = _scalar_values(study, arm_a, name), _scalar_values(study, arm_b, name)
            if len(a_values) < 2 or len(b_values) < 2:
                continue
            test = permutation_test(a_values, b_values, alternative="two-sided")
            scalars.append({"pair": f"{arm_a}{PAIR_RULE}{arm_b}", "name": name,
                            "a": _cells(a_values), "b": _cells(b_values), "statistic": f"{test.statistic:+.4g}",
                            "p": f"{test.p_value:.3g}", "significant": test.p_value < ALPHA,
                            "method": f"{test.method}, {test.n_arrangements} arrangements"})
    if tables and not any(n.arms[0] == n.arms[-1] for n in study.analysis_nodes("connectivity")):
        missing.append("barrier: no connectivity between two seeds of one arm, so the barrier between arms "
                       "cannot be held against seed noise")
    return {
        "data_used": f"comparisons/<a>_vs_<b>/seed<k>/<measure>.json (across arms, same seed) and "
                     f"comparisons/<arm>_vs_<arm>/seed<i>-seed<j>/<measure>.json (two seeds of one arm), layer i "
                     f"with layer i; summary.csv and sharpness.json for the scalars; seeds "
                     f"{', '.join(map(str, study.seeds)) or '—'}",
        "missing": missing, "tables": tables, "scalars": scalars, "alpha": ALPHA,
    }


def _interval_text(interval: Any) -> str:
    if interval.n < 2:
        return f"{interval.mean:.3f} (n = 1)"
    return f"{interval.mean:.3f} [{interval.low:.3f}, {interval.high:.3f}] (n = {interval.n})"


SECTIONS = (
    Section("study", "The study", study_section),
    Section("table", "Table II: accuracy, loss and time per arm", table_section),
    Section("curves", "Curves: accuracy and loss per epoch (the seed's Figs 3–4)", curves_section),
    Section("normalisation", "Normalisation (the seed's Fig 1)", normalisation_section),
    Section("similarity", "Similarity of layers (the seed's Figs 5–7)", similarity_section),
    Section("filters", "Filters (the seed's Figs 8–9)", filters_section),
    Section("claims", "The seed's claims, checked", claims_section),
    Section("sharpness", "Sharpness: Hessian eigenvalues and trace", sharpness_section),
    Section("connectivity", "Connectivity: the straight path between minima", connectivity_section),
    Section("weights", "Weights: norms, ranks and spectra per layer", weights_section),
    Section("mistakes", "Mistakes: which test images each arm gets wrong", mistakes_section),
    Section("seeds", "Seed statistics: optimizer against seed", seeds_section),
)


def environment() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def _arm_colours(arms: Sequence[str]) -> dict[str, str]:
    palette = colormaps["tab10" if len(arms) <= 10 else "tab20"]
    return {arm: to_hex(palette(i % palette.N)) for i, arm in enumerate(arms)}


def write_report(study_dir: str | Path) -> Path:
    """Write ``STUDY_DIR/report/index.html`` with its figures and ``table2.csv``; returns the page's path."""
    study = read_study(study_dir)
    out = study.root / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(study, out, _arm_colours(list(study.arms)))
    sections = [{"id": s.id, "number": i, "title": s.title, **s.build(ctx)} for i, s in enumerate(SECTIONS, 1)]
    html = environment().get_template("report.html.j2").render(
        study_name=study.name, sections=sections, version=__version__,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    atomic_write_text(out / INDEX, html)
    return out / INDEX
