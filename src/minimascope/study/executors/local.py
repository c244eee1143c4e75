"""The local executor: one node after another, in dependency order, in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minimascope.study.kinds import run_after
from minimascope.study.state import StudyState


def execute(state: StudyState, study_dir: Path, **ignored: Any) -> None:
    """Runs here with no options of its own: what a caller gives for another executor is ignored."""
    for node in state.nodes:
        if state.records[node.id]["status"] in ("completed", "diverged"):
            continue
        upstream = [state.records[d] for d in node.depends_on]
        state.finish(node, run_after(node, study_dir, upstream, state.event))
