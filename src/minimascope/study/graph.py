"""The study as a graph: nodes (a run, a comparison, an analysis), their dependencies, an order.

A leaf: it knows nothing of what a node does (:mod:`.kinds`) or which nodes a study has (:mod:`.plan`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from minimascope.errors import MinimascopeError


@dataclass
class Node:
    """One unit of work. ``params`` is what its kind needs to run it (plain JSON values, so a node
    travels to a Ray worker as it is); ``labels`` are what ``study.json`` shows of it (arm, seed, ...)."""

    id: str
    kind: str
    path: str  # relative to the study directory
    params: dict[str, Any]
    labels: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    key: str | None = None
    skip_reason: str | None = None  # known before anything runs (e.g. no ImageNet weights)


def topological_order(edges: Mapping[str, Sequence[str]]) -> list[str]:
    """Names in an order where each comes after everything it depends on (``edges[name]``), ties
    kept in the mapping's order; a cycle is an error that names it."""
    order: list[str] = []
    state: dict[str, str] = {}  # "visiting" | "done"

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise MinimascopeError(f"dependency cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for dependency in edges.get(name, ()):
            if dependency not in edges:
                raise MinimascopeError(f"{name} depends on unknown {dependency!r}")
            visit(dependency, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in edges:
        visit(name, [])
    return order


def ordered(nodes: Sequence[Node]) -> list[Node]:
    by_id = {node.id: node for node in nodes}
    if len(by_id) != len(nodes):
        raise MinimascopeError("two nodes share an id")
    return [by_id[i] for i in topological_order({node.id: node.depends_on for node in nodes})]


def run_node_id(arm: str, seed: int) -> str:
    return f"run:{arm}:seed{seed}"
