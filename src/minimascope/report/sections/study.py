"""1. The study: where the data came from, the arms and their runs, every comparison's status."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from minimascope.report.text import data_set, data_sizes, init_text, reading_text, seconds, seeds_text
from minimascope.results import RunResult, Study

if TYPE_CHECKING:
    from minimascope.report.page import Context

TITLE = "The study"


def _node_time(study: Study, run: RunResult) -> float | None:
    for node in study.record.get("nodes", []):
        if node.get("kind") == "run" and node.get("arm") == run.arm and node.get("seed") == run.seed:
            return node.get("time_s")
    return None


def _facts(study: Study) -> list[tuple[str, str]]:
    record = study.record
    device = record.get("device", {})  # study.json holds env.environment()'s fields at its top level
    device_text = ", ".join(f"{k} {v}" for k, v in device.items()) if isinstance(device, dict) else str(device)
    versions = record.get("versions", {})
    compare = record.get("compare", {})
    data = record.get("data", {})
    return [
        ("study", f"{study.name} ({record.get('source', '?')})"),
        ("created / updated", f"{record.get('created', '?')} / {record.get('updated', '?')}"),
        ("data", f"{data.get('source', '?')} (content key {data.get('key', '?')})"),
        ("train / test images", f"{data.get('train_size', '?')} / {data.get('test_size', '?')}"),
        ("seeds", seeds_text(study)),
        ("device", device_text or "?"),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "?"),
        ("total time", seconds(record.get("wall_time_s"))),
        ("comparisons", (f"measures {', '.join(compare.get('measures', [])) or '—'}, "
                         f"{compare.get('samples', '?')} test images, pairs {compare.get('pairs', '?')}, "
                         f"within each network: {compare.get('within', '?')}")),
    ]


def build(ctx: Context) -> dict[str, Any]:
    study = ctx.study
    arms = []
    for arm, config in study.arms.items():
        arms.append({
            "arm": arm, "optimizer": config.get("optimizer", "?"), "init": init_text(config),
            "inputs": reading_text(arm, config), "epochs": config.get("epochs", "?"), "lr": config.get("lr", "?"),
            "batch": config.get("batch_size", "?"),
            "seeds": [{"seed": r.seed, "status": r.status, "text": r.status_text,
                       "time": seconds(time_s) if (time_s := _node_time(study, r)) else ""}
                      for r in study.arm_runs(arm)],
        })
    not_done = [f"run {r.arm} seed {r.seed}: {r.status_text}" for r in study.run_results.values() if not r.completed]
    not_done += [f"comparison {c.label} seed {c.seed}: {c.status}" + (f" ({c.reason})" if c.reason else "")
                 for c in study.comparisons if c.status != "completed"]
    return {
        "data_used": f"study.json, summary.csv and each run's run.json; {data_sizes(study)}",
        "missing": not_done + study.missing,
        "data_set": data_set(study).describe(),
        "facts": _facts(study),
        "arms": arms,
        "comparisons": [{"label": c.label, "seed": c.seed, "status": c.status, "reason": c.reason or ""}
                        for c in study.comparisons],
        "completed_comparisons": sum(c.status == "completed" for c in study.comparisons),
    }
