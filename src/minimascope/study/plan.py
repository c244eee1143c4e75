"""A study's nodes from its spec: the runs of each arm and seed, their comparisons, and the
analyses of :data:`minimascope.analyses.ANALYSES` by what each is of (a run, a compared pair, three
runs of one seed, a pair of arms over all seeds), each keyed before anything runs.

A node's key is the hash of its own settings and its dependencies' keys, never of paths, so all
keys are known from the study file alone: a run's key is what :func:`minimascope.train.run_key`
will compute once its upstream run exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from minimascope.analyses import ANALYSES, PER_ARM_PAIR, PER_PAIR, PER_RUN, PER_TRIPLE, AnalysisInfo
from minimascope.study.graph import Node, ordered, run_node_id
from minimascope.study.kinds import kind
from minimascope.study.spec import StudySpec, reads_imagenet_file


def assign_keys(nodes: Sequence[Node]) -> list[Node]:
    """Nodes in dependency order, each with its key computed from its kind and its dependencies' keys."""
    result = ordered(nodes)
    keys: dict[str, str] = {}
    for node in result:
        node.key = kind(node.kind).key(node, [keys[d] for d in node.depends_on])
        keys[node.id] = node.key
    return result


def study_nodes(spec: StudySpec, data: str, weights: str | None, weights_missing: str | None) -> list[Node]:
    """Every node of a study (runs of each arm and seed, comparisons, the analyses of each run, compared
    pair and then-arm's three runs (:func:`_then_triples`), comparisons across seeds, the analyses of each
    compared pair of arms over all seeds), keyed, in dependency order.

    ``data`` is the resolved source of the data set; ``weights`` the ImageNet weights file, or None with
    ``weights_missing`` saying why, which skips the pretrained arms and whatever depends on them.
    """
    arms = list(spec.arms)
    pairs = spec.compare.pair_list(arms)
    nodes: list[Node] = []
    for seed in spec.seeds:
        nodes += [_run_node(spec, arm, seed, data, weights, weights_missing) for arm in arms]
        nodes += [_compare_node(spec, data, a, b, seed, seed) for a, b in pairs]
        for info in _rows(PER_RUN):
            chosen, options = spec.analyses.of(info.name, arms)
            nodes += [_analysis_node(spec, info, options, data, [arm], [seed]) for arm in chosen]
        for info in _rows(PER_PAIR):
            chosen, options = spec.analyses.of(info.name, arms)
            for a, b in pairs:
                # same_inputs: no path between networks that see differently normalised inputs
                if a != b and a in chosen and b in chosen and (not info.same_inputs or _same_inputs(spec, a, b)):
                    nodes.append(_analysis_node(spec, info, options, data, [a, b], [seed, seed]))
        for info in _rows(PER_TRIPLE):
            chosen, options = spec.analyses.of(info.name, arms)
            nodes += [_analysis_node(spec, info, options, data, list(three), [seed] * 3)
                      for three in _then_triples(spec, chosen, info.same_inputs)]
    seed_pairs = [(first, second) for i, first in enumerate(spec.seeds) for second in spec.seeds[i + 1:]]
    for arm in spec.analyses.across_seeds:
        nodes += [_compare_node(spec, data, arm, arm, first, second) for first, second in seed_pairs]
        # Two seeds of one arm start from different inits: the pair weight matching has work to do, and the
        # seed-to-seed baseline of a barrier or of shared mistakes (one test set for every run).
        for info in _rows(PER_PAIR):
            chosen, options = spec.analyses.of(info.name, arms)
            if arm in chosen:
                nodes += [_analysis_node(spec, info, options, data, [arm, arm], [first, second])
                          for first, second in seed_pairs]
    if len(spec.seeds) >= 2:
        planned = {node.id for node in nodes}
        for a, b in pairs:
            if a != b and (a in spec.analyses.across_seeds or b in spec.analyses.across_seeds):
                nodes += [_arm_pair_node(spec, info, data, a, b, planned) for info in _rows(PER_ARM_PAIR)]
    return assign_keys(nodes)


def _rows(per: str) -> list[AnalysisInfo]:
    return [info for info in ANALYSES.values() if info.per == per]


def _device(spec: StudySpec, arm: str) -> str:
    return spec.arms[arm].options.get("device", "auto")


def _same_inputs(spec: StudySpec, a: str, b: str) -> bool:
    def multiplier(arm: str) -> tuple[float, ...]:
        return tuple(spec.arms[arm].options.get("std_multiplier", (1.0, 1.0, 1.0)))

    return multiplier(a) == multiplier(b)


def _plain_arm(spec: StudySpec, like: str) -> str | None:
    """The first plain arm of ``like``'s optimizer, architecture and data set: no init_from, not pretrained,
    the data set's own normalisation; None when the study has none."""
    wanted = spec.arms[like].config(0)
    for name, arm in spec.arms.items():
        config = arm.config(0)
        if (arm.init_from is None and not config.pretrained and all(m == 1.0 for m in config.std_multiplier)
                and (config.optimizer, config.arch, config.dataset) == (wanted.optimizer, wanted.arch, wanted.dataset)):
            return name
    return None


def _then_triples(spec: StudySpec, chosen: list[str], same_inputs: bool) -> list[tuple[str, str, str]]:
    """(S, T, P) for each then-arm T among ``chosen``: S the arm it starts from, P the plain arm of its optimizer
    (:func:`_plain_arm`); none where P is missing or is S itself (two of the three networks would be one), nor,
    with ``same_inputs``, where the three see differently normalised inputs."""
    triples = []
    for then in chosen:
        start, plain = spec.arms[then].init_from, _plain_arm(spec, then)
        if start is None or plain is None or plain == start:
            continue
        if not same_inputs or (_same_inputs(spec, start, then) and _same_inputs(spec, then, plain)):
            triples.append((start, then, plain))
    return triples


def _run_node(spec: StudySpec, name: str, seed: int, data: str, weights: str | None,
              weights_missing: str | None) -> Node:
    arm = spec.arms[name]
    config = arm.config(seed, data=data, weights=weights)
    upstream = run_node_id(arm.init_from, seed) if arm.init_from else None
    return Node(
        id=run_node_id(name, seed), kind="run", path=f"runs/{name}/seed{seed}",
        params={"config": config.to_dict(), "init_node": upstream,
                "init_path": f"runs/{arm.init_from}/seed{seed}" if arm.init_from else None},
        labels={"arm": name, "seed": seed}, depends_on=(upstream,) if upstream else (),
        skip_reason=weights_missing if reads_imagenet_file(arm.options) and weights is None else None)


def _compare_node(spec: StudySpec, data: str, a: str, b: str, seed_a: int, seed_b: int) -> Node:
    """Arm a of seed_a against arm b of seed_b, layer by layer (a == b and one seed: a network with itself)."""
    settings = {k: v for k, v in spec.compare.to_dict().items() if k not in ("pairs", "within")}
    run_a, run_b = run_node_id(a, seed_a), run_node_id(b, seed_b)
    seeds = f"seed{seed_a}" if seed_a == seed_b else f"seed{seed_a}-seed{seed_b}"
    return Node(
        id=f"compare:{a}:{b}:{seeds}", kind="compare", path=f"comparisons/{a}_vs_{b}/{seeds}",
        params={"settings": settings, "run_paths": [f"runs/{a}/seed{seed_a}", f"runs/{b}/seed{seed_b}"],
                "data": data, "device": _device(spec, a)},
        labels={"arms": [a, b], **({"seed": seed_a} if seed_a == seed_b else {"seeds": [seed_a, seed_b]})},
        depends_on=(run_a,) if run_a == run_b else (run_a, run_b))


def _analysis_node(spec: StudySpec, info: AnalysisInfo, options: dict[str, Any] | None, data: str,
                   arms: list[str], seeds: list[int]) -> Node:
    """An analysis of one run (one arm), of a compared pair of runs (or three runs) of one seed, or of two seeds
    of one arm."""
    folder = "_vs_".join(arms)
    same_seed = len(set(seeds)) == 1
    seed_text = f"seed{seeds[0]}" if same_seed else "-".join(f"seed{s}" for s in seeds)
    labels: dict[str, Any] = {"seed": seeds[0]} if same_seed else {"seeds": seeds}
    return Node(
        id=f"{info.name}:{':'.join(arms)}:{seed_text}", kind=info.name,
        path=f"analyses/{info.name}/{folder}/{seed_text}",
        params={"options": options, "run_paths": [f"runs/{arm}/seed{s}" for arm, s in zip(arms, seeds)],
                "data": data, "device": _device(spec, arms[0])},
        labels={"arm": arms[0], **labels} if len(arms) == 1 else {"arms": arms, **labels},
        depends_on=tuple(dict.fromkeys(run_node_id(arm, s) for arm, s in zip(arms, seeds))))


def _arm_pair_node(spec: StudySpec, info: AnalysisInfo, data: str, a: str, b: str, planned: set[str]) -> Node:
    """An analysis of arms a and b over all seeds: their comparisons at each seed ("across"), each arm's
    comparisons of two of its seeds ("within", those planned), their runs and their sharpness where it
    runs; paths relative to the study directory (the node's kind makes them absolute)."""
    pairs = [(i, j) for n, i in enumerate(spec.seeds) for j in spec.seeds[n + 1:]]
    sharp_arms, _ = spec.analyses.of("sharpness", list(spec.arms))
    across = [(f"compare:{a}:{b}:seed{s}", {"seed": s, "path": f"comparisons/{a}_vs_{b}/seed{s}"})
              for s in spec.seeds]
    within = [(f"compare:{arm}:{arm}:seed{i}-seed{j}",
               {"arm": arm, "seeds": [i, j], "path": f"comparisons/{arm}_vs_{arm}/seed{i}-seed{j}"})
              for arm in (a, b) for i, j in pairs]
    runs = [(run_node_id(arm, s), {"arm": arm, "seed": s, "path": f"runs/{arm}/seed{s}"})
            for arm in (a, b) for s in spec.seeds]
    sharpness = [(f"sharpness:{arm}:seed{s}", {"arm": arm, "seed": s, "path": f"analyses/sharpness/{arm}/seed{s}"})
                 for arm in (a, b) if arm in sharp_arms for s in spec.seeds]
    groups = {"across": across, "within": [(i, v) for i, v in within if i in planned], "runs": runs,
              "sharpness": sharpness}
    inputs = {"arms": [a, b], **{name: [value for _, value in group] for name, group in groups.items()}}
    return Node(
        id=f"{info.name}:{a}:{b}", kind=info.name, path=f"analyses/{info.name}/{a}_vs_{b}",
        params={"options": {}, "inputs": inputs, "data": data, "device": _device(spec, a)},
        labels={"arms": [a, b]},
        depends_on=tuple(node_id for group in groups.values() for node_id, _ in group))
