"""The local executor: one node after another, in dependency order, in this process."""

from __future__ import annotations

from pathlib import Path

from minimascope.study.state import StudyState
from minimascope.study.tasks import run_after


def execute(state: StudyState, study_dir: Path) -> None:
    for node in state.nodes:
        if state.records[node.id]["status"] in ("completed", "diverged"):
            continue
        upstream = [state.records[d] for d in node.depends_on]
        state.finish(node, run_after(node, study_dir, upstream, state.event))
