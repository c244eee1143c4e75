"""The study as a graph: nodes (a run, a comparison, ...), their dependencies, their keys, an order.

A node's key is the hash of its own settings and its dependencies' keys, never of paths, so all
keys are known from the study file before anything runs: a run's key is what
:func:`minimascope.train.run_key` will compute once its upstream run exists.
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


def assign_keys(nodes: Sequence[Node]) -> list[Node]:
    """Nodes in dependency order, each with its key computed from its kind and its dependencies' keys."""
    from minimascope.study.tasks import kind

    result = ordered(nodes)
    keys: dict[str, str] = {}
    for node in result:
        node.key = kind(node.kind).key(node, [keys[d] for d in node.depends_on])
        keys[node.id] = node.key
    return result


def run_node_id(arm: str, seed: int) -> str:
    return f"run:{arm}:seed{seed}"


def study_nodes(spec, data: str, weights: str | None, weights_missing: str | None) -> list[Node]:
    """Every node of a study (runs of each arm and seed, comparisons, the analyses of each run and
    compared pair, comparisons across seeds), keyed, in dependency order.

    ``data`` is the resolved CIFAR-10 source; ``weights`` the ImageNet weights file, or None with
    ``weights_missing`` saying why, which skips the pretrained arms and whatever depends on them.
    """
    from minimascope.study.spec import StudySpec

    assert isinstance(spec, StudySpec)
    nodes: list[Node] = []
    for seed in spec.seeds:
        for arm in spec.arms.values():
            config = arm.config(seed, data=data, weights=weights)
            upstream = run_node_id(arm.init_from, seed) if arm.init_from else None
            nodes.append(Node(
                id=run_node_id(arm.name, seed), kind="run", path=f"runs/{arm.name}/seed{seed}",
                params={"config": config.to_dict(), "init_node": upstream,
                        "init_path": f"runs/{arm.init_from}/seed{seed}" if arm.init_from else None},
                labels={"arm": arm.name, "seed": seed}, depends_on=(upstream,) if upstream else (),
                skip_reason=weights_missing if config.pretrained and weights is None else None))
        for a, b in spec.compare.pair_list(list(spec.arms)):
            nodes.append(_compare_node(spec, data, a, b, seed, seed))
        for name in ("sharpness", "weights"):
            arms, options = spec.analyses.of(name, list(spec.arms))
            for arm in arms:
                nodes.append(Node(
                    id=f"{name}:{arm}:seed{seed}", kind=name, path=f"analyses/{name}/{arm}/seed{seed}",
                    params={"options": options, "run_paths": [f"runs/{arm}/seed{seed}"], "data": data,
                            "device": spec.arms[arm].options.get("device", "auto")},
                    labels={"arm": arm, "seed": seed}, depends_on=(run_node_id(arm, seed),)))
        for name in ("connectivity", "mistakes"):
            arms, options = spec.analyses.of(name, list(spec.arms))
            for a, b in spec.compare.pair_list(list(spec.arms)):
                chosen = a != b and a in arms and b in arms
                if not chosen or (name == "connectivity" and not _same_inputs(spec, a, b)):
                    continue  # no path between networks that see differently normalised inputs
                nodes.append(Node(
                    id=f"{name}:{a}:{b}:seed{seed}", kind=name, path=f"analyses/{name}/{a}_vs_{b}/seed{seed}",
                    params={"options": options, "run_paths": [f"runs/{a}/seed{seed}", f"runs/{b}/seed{seed}"],
                            "data": data, "device": spec.arms[a].options.get("device", "auto")},
                    labels={"arms": [a, b], "seed": seed}, depends_on=(run_node_id(a, seed), run_node_id(b, seed))))
    for arm in spec.analyses.across_seeds:
        for i, first in enumerate(spec.seeds):
            for second in spec.seeds[i + 1:]:
                nodes.append(_compare_node(spec, data, arm, arm, first, second))
    return assign_keys(nodes)


def _same_inputs(spec, a: str, b: str) -> bool:
    def multiplier(arm: str) -> tuple[float, ...]:
        return tuple(spec.arms[arm].options.get("std_multiplier", (1.0, 1.0, 1.0)))

    return multiplier(a) == multiplier(b)


def _compare_node(spec, data: str, a: str, b: str, seed_a: int, seed_b: int) -> Node:
    """Arm a of seed_a against arm b of seed_b, layer by layer (a == b and one seed: a network with itself)."""
    settings = {k: v for k, v in spec.compare.to_dict().items() if k not in ("pairs", "within")}
    device = spec.arms[a].options.get("device", "auto")
    run_a, run_b = run_node_id(a, seed_a), run_node_id(b, seed_b)
    seeds = f"seed{seed_a}" if seed_a == seed_b else f"seed{seed_a}-seed{seed_b}"
    return Node(
        id=f"compare:{a}:{b}:{seeds}", kind="compare", path=f"comparisons/{a}_vs_{b}/{seeds}",
        params={"settings": settings, "run_paths": [f"runs/{a}/seed{seed_a}", f"runs/{b}/seed{seed_b}"],
                "data": data, "device": device},
        labels={"arms": [a, b], **({"seed": seed_a} if seed_a == seed_b else {"seeds": [seed_a, seed_b]})},
        depends_on=(run_a,) if run_a == run_b else (run_a, run_b))
