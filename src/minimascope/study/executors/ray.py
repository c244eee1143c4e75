"""The Ray executor: each node a Ray task whose arguments are its upstream nodes' results, so Ray
starts it once they are done, on any worker with the resources asked for.

The study directory must be on a filesystem every worker sees at the same path: nodes read their
upstream runs' weights from it and write their own results into it. Only the driver writes
``study.json``; workers send it their starts and epochs through a small actor.

Each task sets torch's CPU thread count to ``threads`` (the driver's count unless given), because
a different count changes how some CPU kernels split their sums and so the last bits of results:
with equal counts a Ray study gives bit-identical results to a local one.

A Ray instance the driver started is shut down when the driver ends: normally, by an error, by
Ctrl-C, or by SIGTERM or SIGHUP (turned into an exit here, so that the shutdown runs). Nothing
runs on SIGKILL; the next ``study`` resumes the nodes it left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from minimascope.errors import MinimascopeError
from minimascope.study.graph import Node
from minimascope.study.kinds import run_after
from minimascope.study.records import result
from minimascope.study.state import StudyState

POLL_S = 0.5


@ray.remote(num_cpus=0)
class _Events:
    """Starts and epochs reported by the workers, collected until the driver drains them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int, int]] = []

    def push(self, node_id: str, event: str, epoch: int, epochs: int) -> None:
        self.events.append((node_id, event, epoch, epochs))

    def drain(self) -> list[tuple[str, str, int, int]]:
        events, self.events = self.events, []
        return events


def _run_node(node: Node, study_dir: str, threads: int, events: Any, *upstream: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)

    def report(node_id: str, event: str, epoch: int, epochs: int) -> None:
        events.push.remote(node_id, event, epoch, epochs)

    return run_after(node, study_dir, list(upstream), report)


@contextlib.contextmanager
def _exit_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP end the driver through ``SystemExit`` (so ``finally`` blocks run) while it executes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, leave) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def execute(state: StudyState, study_dir: Path, *, address: str | None = None, cpus_per_run: float | None = None,
            gpus_per_run: float = 0.0, threads: int | None = None) -> None:
    import torch

    if cpus_per_run is not None and cpus_per_run <= 0 or gpus_per_run < 0:
        raise MinimascopeError("--cpus-per-run must be > 0 and --gpus-per-run >= 0")
    threads = threads or (max(1, int(cpus_per_run)) if cpus_per_run else torch.get_num_threads())
    with _exit_on_termination():
        _execute(state, study_dir, address, cpus_per_run, gpus_per_run, threads)


def _execute(state: StudyState, study_dir: Path, address: str | None, cpus_per_run: float | None,
             gpus_per_run: float, threads: int) -> None:
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True,
                     runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("MINIMASCOPE_")}})
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise MinimascopeError(f"cannot start or join Ray at {address or 'a new local instance'}: {exc}") from None
    try:
        events = _Events.remote()
        task = ray.remote(_run_node).options(num_cpus=1 if cpus_per_run is None else cpus_per_run,
                                             num_gpus=gpus_per_run, max_retries=0)
        refs: dict[str, Any] = {}
        pending: dict[Any, Node] = {}
        for node in state.nodes:
            record = state.records[node.id]
            if record["status"] in ("completed", "diverged"):
                refs[node.id] = record
                continue
            refs[node.id] = task.remote(node, str(study_dir), threads, events, *(refs[d] for d in node.depends_on))
            pending[refs[node.id]] = node
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for event in ray.get(events.drain.remote()):
                state.event(*event)
            for ref in ready:
                node = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died (out of memory, killed)
                    outcome = result("failed", f"Ray task failed: {str(exc).strip().splitlines()[0]}")
                state.finish(node, outcome)
    finally:
        if started_here:
            ray.shutdown()
