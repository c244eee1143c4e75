"""How the report writes numbers and states: every formatting rule of the page in one place.

Pure functions of values and of the study as read; no file is read or written here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from minimascope import datasets
from minimascope.results import Study
from minimascope.stats import ConfidenceInterval, mean_confidence_interval

PAIR_RULE = " vs "
LEVEL = 0.95
LOSS = "{:#.4g}"  # four significant digits, trailing zeros kept so a column lines up (1.700, not 1.7)


def spread(values: Sequence[float]) -> ConfidenceInterval:
    """Mean and 95% CI over seeds (low = high = NaN with one seed; n = 0 and NaN without values)."""
    if not len(values):
        return ConfidenceInterval(math.nan, math.nan, math.nan, LEVEL, 0, math.nan)
    return mean_confidence_interval(values, level=LEVEL)


def number(value: float | None, fmt: str = "{:.3g}") -> str:
    return "—" if value is None or not math.isfinite(value) else fmt.format(value)


def p_text(p_value: float | None, smallest: float | None, name: str = "p") -> str:
    """A p-value always with the least one its test can give at this size: "p = 0.25 (smallest attainable p 0.25)"."""
    if p_value is None:
        return ""
    return f"{name} = {p_value:.3g} (smallest attainable p {number(smallest)})"


def seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if value < 120:
        return f"{value:.1f} s"
    minutes, rest = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {rest:02d} s"


def step_text(value: float) -> str:
    return f"{value:.3g} s" if value >= 1 else f"{1000 * value:.3g} ms"


def multiplier(config: dict[str, Any]) -> tuple[float, ...]:
    return tuple(float(m) for m in config.get("std_multiplier", (1.0, 1.0, 1.0)))


def is_scaled(config: dict[str, Any]) -> bool:
    return any(m != 1.0 for m in multiplier(config))


def init_text(config: dict[str, Any]) -> str:
    if config.get("init_from"):
        return f"from {config['init_from']}'s final weights"
    return "ImageNet weights" if config.get("pretrained") else "random"


def reading_text(arm: str, config: dict[str, Any]) -> str:
    """Which reading of the paper's input scaling an arm is (STUDY_FORMAT: arm names of the presets)."""
    stds = ", ".join(f"{m:g}" for m in multiplier(config))
    if arm.endswith("-scaled-input"):
        return f"scaled input: each channel's input has std {stds}"
    if arm.endswith("-scaled-normalize"):
        return f"scaled Normalize std (the paper's literal wording): the network sees stds {stds}"
    return "normal inputs (std 1 per channel)" if not is_scaled(config) else f"input stds {stds}"


def ci_cells(values: Sequence[float], fmt: str) -> dict[str, str]:
    """Mean, 95% CI and each seed's value as display strings."""
    s = spread(values)
    if s.n == 0:
        return {"mean": "—", "ci": "", "seeds": ""}
    return {"mean": fmt.format(s.mean), "ci": f"[{fmt.format(s.low)}, {fmt.format(s.high)}]" if s.n > 1 else "",
            "seeds": ", ".join(fmt.format(v) for v in values)}


def cells(values: Sequence[float | None], fmt: str = "{:.4g}") -> dict[str, str]:
    """:func:`ci_cells` of the finite values only."""
    return ci_cells([v for v in values if v is not None and math.isfinite(v)], fmt)


def interval_text(interval: Any) -> str:
    """A confidence interval as "mean [low, high] (n = k)"."""
    if interval.n < 2:
        return f"{interval.mean:.3f} (n = 1)"
    return f"{interval.mean:.3f} [{interval.low:.3f}, {interval.high:.3f}] (n = {interval.n})"


def images_text(counts: set[Any], what: str) -> str:
    return f"{', '.join(map(str, sorted(counts))) or '?'} {what}"


def drawn_text(settings: list[dict[str, Any]]) -> str:
    """Where the training images of results (their settings) were drawn from: among those each run trained on,
    or the whole training split (a weights file of no run, a run on all of it, or a result from before results
    said)."""
    whole = {not str(s.get("drawn_from", "all ")).startswith("the ") for s in settings}
    return " / ".join(("drawn from the whole training split" if w else "drawn among the images each run was trained "
                       "on") for w in sorted(whole)) or "drawn from the training split"


def seeds_text(study: Study) -> str:
    return ", ".join(map(str, study.seeds)) or "—"


@dataclass(frozen=True)
class DataSet:
    """What the study trained on, as its study.json records it (an older study, without a record, on CIFAR-10)."""

    name: str
    title: str
    classes: tuple[str, ...]
    channels: int | None
    image_size: tuple[int, int] | None

    @property
    def is_paper_data(self) -> bool:
        """The paper's data set: only then do its numbers stand beside the study's."""
        return self.name == "cifar10"

    def describe(self, shown_classes: int = 20) -> str:
        """"CIFAR-10 (cifar10): 10 classes (airplane, …), 3 channels, 32×32 images"."""
        names = ", ".join(self.classes[:shown_classes]) + (", …" if len(self.classes) > shown_classes else "")
        parts = [f"{len(self.classes)} classes ({names})" if self.classes else "classes ?",
                 f"{self.channels} channel{'s' * (self.channels != 1)}" if self.channels else "channels ?",
                 f"{self.image_size[0]}×{self.image_size[1]} images" if self.image_size else "image size ?"]
        return f"{self.title} ({self.name}): {', '.join(parts)}"


def data_set(study: Study) -> DataSet:
    """The study's data set from study.json's data header, the registry filling in what an older header lacks."""
    data = study.record.get("data", {})
    data = data if isinstance(data, dict) else {}
    name = data.get("dataset") if isinstance(data.get("dataset"), str) else datasets.DEFAULT
    spec = datasets.DATASETS.get(name)
    title = data.get("title") if isinstance(data.get("title"), str) else spec.title if spec else name
    classes = data.get("classes")
    classes = tuple(map(str, classes)) if isinstance(classes, list) else (spec.classes or ()) if spec else ()
    channels = data.get("channels") if isinstance(data.get("channels"), int) else spec.channels if spec else None
    size = data.get("image_size")
    size = (tuple(size) if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)
            else spec.image_size if spec else None)
    return DataSet(name, title, classes, channels, size)


def data_sizes(study: Study) -> str:
    data = study.record.get("data", {})
    return (f"train split {data.get('train_size', '?')} images, test split {data.get('test_size', '?')} images; "
            f"seeds {seeds_text(study)}")


def epochs_text(study: Study, arms: Sequence[str]) -> str:
    epochs = {str(study.arms.get(a, {}).get("epochs", "?")) for a in arms}
    return f"{', '.join(sorted(epochs))} epochs" if len(epochs) == 1 else "epochs per arm in the study table"


def arm_status(study: Study, arm: str) -> str:
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


def arm_status_short(study: Study, arm: str) -> str:
    """The same without reasons (they are listed under the table)."""
    counts: dict[str, int] = {}
    for run in study.arm_runs(arm):
        key = run.status_text if run.status == "diverged" else run.status
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{n} {text}" for text, n in counts.items()) or "no runs"


def why_unavailable(study: Study, arm: str) -> str:
    """Why an arm has no numbers (for claim rows and "not shown" lists)."""
    if arm not in study.arms and not study.arm_runs(arm):
        return f"arm {arm} is not part of this study"
    return f"{arm}: {arm_status(study, arm)}"


def pair_missing(study: Study, arm_a: str, arm_b: str) -> str:
    """Why a pair of arms has no comparison."""
    nodes = [c for c in study.comparisons if {c.arm_a, c.arm_b} == {arm_a, arm_b}]
    if not nodes:
        return f"{arm_a} and {arm_b} were not compared in this study"
    return f"{arm_a} vs {arm_b}: " + "; ".join(f"seed {c.seed}: {c.status}" + (f" ({c.reason})" if c.reason else "")
                                              for c in nodes)


def analysis_missing(study: Study, kind: str) -> list[str]:
    """Each analysis node of ``kind`` that has no result, with why; or that the study has none."""
    nodes = study.analysis_nodes(kind)
    if not nodes:
        return [f"no {kind} nodes in this study's study.json"]
    return [f"{kind} {a.label}{'' if a.seed is None else f' seed {a.seed}'}: "
            + (a.problem or a.status + (f" ({a.reason})" if a.reason else "")) for a in nodes if a.result is None]


# The paper's setting (Yao et al.'s CIFAR-10 ResNet-18 experiments), beside which the banner puts this study's.
PAPER_SETTING = {"training images": "50,000", "test images": "10,000", "epochs per arm": "SGD 360, AdaHessian 160",
                 "batch size": "256", "seeds": "not stated", "images per comparison": "10,000"}


def _arm_values(study: Study, key: str) -> str:
    values = {arm: config.get(key, "?") for arm, config in study.arms.items()}
    if len(set(map(str, values.values()))) == 1:
        return str(next(iter(values.values()), "?"))
    return ", ".join(f"{arm} {value}" for arm, value in values.items())


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value if value is not None else "?")


def budget(study: Study) -> dict[str, Any]:
    """What the study ran beside the paper's setting, and whether they differ ("not the paper's setting"): on
    another data set than CIFAR-10 (``paper_data`` false), or only in its budget."""
    data, compare = study.record.get("data", {}), study.record.get("compare", {})
    epochs = {arm: config.get("epochs") for arm, config in study.arms.items()}
    trained_on = data_set(study)
    ours = {"training images": _count(data.get("train_size")), "test images": _count(data.get("test_size")),
            "epochs per arm": _arm_values(study, "epochs"), "batch size": _arm_values(study, "batch_size"),
            "seeds": f"{len(study.seeds)} ({seeds_text(study)})",
            "images per comparison": _count(compare.get("samples"))}
    same = (trained_on.is_paper_data and data.get("train_size") == 50_000 and data.get("test_size") == 10_000
            and epochs.get("sgd") == 360 and epochs.get("adahessian") == 160 and compare.get("samples") == 10_000)
    return {"rows": [(what, ours[what], paper) for what, paper in PAPER_SETTING.items()], "paper_setting": same,
            "paper_data": trained_on.is_paper_data, "title": trained_on.title}
