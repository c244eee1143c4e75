"""study.json read back checked, for :mod:`minimascope.results`: its fields of the wrong type and its nodes that
cannot be read are left out, each named in :class:`Notes` (what the report lists as missing or damaged)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minimascope.analyses import ANALYSES, PER_RUN, PER_TRIPLE
from minimascope.errors import MinimascopeError
from minimascope.similarity import MEASURES
from minimascope.study.records import STUDY_JSON, check_arm_name, check_node, check_seed, expect, shown


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


@dataclass
class Notes:
    """What could not be read, as the report lists it: absent files, and files there but damaged."""

    root: Path
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)

    def failed(self, path: Path, exc: Exception) -> str:
        """A reader's one-line message, with paths relative to the study (the report may move), as missing when
        the file is not there and as damaged when it is; returns the line."""
        line = str(exc).replace(f"{self.root}{os.sep}", "")
        if isinstance(exc, MinimascopeError) and not path.exists():
            self.missing.append(line)
        else:
            name = relative(path, self.root)  # first, so every line of the note starts with its file
            rest = line[len(name):].lstrip(": ") if line.startswith(name) else line.replace(name, path.name)
            line = f"{name}: {rest}"
            self.damaged.append(line)
        return line

    def bad(self, path: Path, why: str) -> None:
        self.damaged.append(f"{relative(path, self.root)}: {why}")


def as_mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _checked_node(node: Any, root: Path, where: str) -> tuple[dict[str, Any], Path]:
    """A node of study.json checked (:func:`minimascope.study.records.check_node`) with the fields this reader
    takes apart, and its folder (inside the study); else one MinimascopeError naming ``where``."""
    folder = check_node(node, root, where)
    kind, where = node["kind"], f"{where} ({shown(node.get('id'))})"
    needed = {"run": ("arm", "seed"), "compare": ("arms",)}.get(kind) or (
        ("arm",) if ANALYSES[kind].per == PER_RUN else ("arms",))
    for key in needed:
        if key not in node:
            raise MinimascopeError(f"{where}: no {key}")
    arms = 3 if kind in ANALYSES and ANALYSES[kind].per == PER_TRIPLE else 2  # three runs' analysis: three arms
    for key, count in (("arms", arms), ("seeds", 2)):  # a compare node and a pair's analysis: two arms, one seed or two
        if key in node and len(node[key]) != count:
            raise MinimascopeError(f"{where}: {key} must be a list of {'three' if count == 3 else 'two'}")
    if kind in ("run", "compare") and node.get("seed") is None and "seeds" not in node:
        raise MinimascopeError(f"{where}: no seed")
    return node, folder


# Fields of study.json the report reads beyond the nodes, and what each must be: a wrong one is left out.
_RECORD_FIELDS = {"name": str, "arms": dict, "seeds": list, "compare": dict, "data": dict, "versions": dict,
                  "device": (dict, str), "wall_time_s": (int, float), "created": str, "updated": str, "source": str}
_ARM_FIELDS = {"optimizer": str, "epochs": int, "batch_size": int, "lr": (int, float), "pretrained": bool,
               "init_from": (str, type(None)), "std_multiplier": list, "arch": str}


def _checked_fields(mapping: dict[str, Any], fields: dict[str, Any], where: str, notes: Notes) -> dict[str, Any]:
    """``mapping`` without the ``fields`` of the wrong type (:func:`minimascope.study.records.expect`), each one
    left out named in ``notes`` (``where`` starts with study.json, the file every such line names first)."""
    checked = dict(mapping)
    for key, types in fields.items():
        if key in checked:
            try:
                expect(checked, key, types, where)
            except MinimascopeError as exc:
                notes.damaged.append(f"{exc}; left out")
                checked.pop(key)
    return checked


def checked_record(record: dict[str, Any], notes: Notes) -> dict[str, Any]:
    """study.json's fields with every one of the wrong type left out (and named in ``notes``)."""
    path = notes.root / STUDY_JSON
    checked = _checked_fields(record, _RECORD_FIELDS, STUDY_JSON, notes)
    try:
        for seed in checked.get("seeds", []):
            check_seed(seed, f"{STUDY_JSON}: seeds")
    except MinimascopeError as exc:
        notes.damaged.append(f"{exc}; seeds left out")
        checked.pop("seeds")
    measures = as_mapping(checked.get("compare")).get("measures", [])
    if not isinstance(measures, list) or not all(isinstance(m, str) and m in MEASURES for m in measures):
        notes.bad(path, f"compare: measures {shown(measures, 60)} are not measure names; left out")
        checked["compare"] = {k: v for k, v in checked["compare"].items() if k != "measures"}
    arms = {}
    for arm, config in checked.get("arms", {}).items():
        try:
            check_arm_name(arm, f"{STUDY_JSON}: arms")
            expect(checked["arms"], arm, dict, f"{STUDY_JSON}: arms")
        except MinimascopeError as exc:
            notes.damaged.append(f"{exc}; arm left out")
            continue
        arms[arm] = _checked_fields(config, _ARM_FIELDS, f"{STUDY_JSON}: arms: {arm}", notes)
        multiplier = arms[arm].get("std_multiplier")
        if multiplier is not None and not (len(multiplier) == 3 and all(
                isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) for m in multiplier)):
            notes.bad(path, f"arms: {arm}: std_multiplier {shown(multiplier)} is not three numbers; left out")
            arms[arm].pop("std_multiplier")
    if "arms" in checked:
        checked["arms"] = arms
    if not isinstance(record.get("nodes", []), list):
        notes.bad(path, "nodes is not a list; no node read")
    return checked


def checked_nodes(record: dict[str, Any], notes: Notes) -> list[tuple[dict[str, Any], Path]]:
    """study.json's nodes that can be read, each with its folder; every other one named in ``notes``."""
    nodes = record.get("nodes", [])
    checked = []
    for index, node in enumerate(nodes if isinstance(nodes, list) else [], start=1):
        try:
            checked.append(_checked_node(node, notes.root, f"node {index}"))
        except MinimascopeError as exc:
            notes.bad(notes.root / STUDY_JSON, f"{exc}; node left out")
    return checked
