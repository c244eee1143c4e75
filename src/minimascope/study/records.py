"""What a study directory holds at its top and how it is read back: ``study.json`` (every node's
record; STUDY_FORMAT), ``study.yaml`` (the resolved study file) and ``summary.csv`` (one row per
run), and the result record every node's run returns.

Arm names become folder names (``runs/<arm>``, ``comparisons/<a>_vs_<b>``): :func:`check_arm_name`
keeps them short, printable, free of path syntax and of the pair separator ``_vs_``, so that no two
pairs share a folder. :func:`read_study_record` is the one reader of ``study.json`` (the study's and
``status``'s): it checks the names, the types and that every node path lies inside the study, and names
the file in one line when something does not hold. The report's reader (:mod:`minimascope.results`)
leaves a bad node out instead, with the same checks (:func:`check_node`, :func:`expect`), and reads
``summary.csv`` back with :func:`read_summary`.
"""

from __future__ import annotations

import csv
import io as _io
import math
import re
import statistics
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minimascope import io
from minimascope.analyses import ANALYSES, SEED_LIMIT
from minimascope.errors import MinimascopeError
from minimascope.study.graph import Node

STUDY_FORMAT = "minimascope-study-v1"
STUDY_JSON = "study.json"
STUDY_YAML = "study.yaml"
SUMMARY_CSV = "summary.csv"
SUMMARY_COLUMNS = ("arm", "seed", "optimizer", "init", "std_multiplier", "epochs", "status", "test_accuracy",
                   "test_loss", "train_loss", "train_accuracy", "epoch_time_mean_s", "epoch_time_std_s",
                   "step_time_mean_s")
# summary.csv columns that hold numbers (the others are text: arm, optimizer, init, std_multiplier, status).
SUMMARY_NUMBERS = ("seed", "epochs", "test_accuracy", "test_loss", "train_loss", "train_accuracy",
                   "epoch_time_mean_s", "epoch_time_std_s", "step_time_mean_s")
# A node in one of these states is not run again by this invocation.
FINAL_STATUSES = ("completed", "diverged", "failed", "skipped")
STATUSES = ("pending", "running", *FINAL_STATUSES)
NODE_KINDS = ("run", "compare", *ANALYSES)
# The study's record of a finished comparison node, beside compare's own comparison.json.
NODE_JSON = "node.json"
PAIR_SEPARATOR = "_vs_"  # a pair's folder: <a>_vs_<b>
ARM_NAME_LENGTH = 64
_ARM_NAME = re.compile(r"[^\W_][\w.+-]*")  # starts with a letter or digit; then letters, digits, _ . + -
ARM_NAME_RULE = (f"arm names are folder names: 1 to {ARM_NAME_LENGTH} letters, digits, '_', '.', '+' or '-', "
                 f"starting with a letter or digit, without '..' or '{PAIR_SEPARATOR}' (which joins a pair's arms)")


def shown(name: object, length: int = 40) -> str:
    """A name as an error line quotes it: repr (control characters escaped), cut to ``length``."""
    text = repr(name)
    return text if len(text) <= length else f"{text[:length]}...' ({len(str(name))} characters)"


def check_arm_name(name: object, where: str) -> str:
    """``name`` if it is a valid arm name (see ARM_NAME_RULE), else one error line naming ``where``."""
    if not isinstance(name, str):
        raise MinimascopeError(f"{where}: arm {shown(name)} is not text ({type(name).__name__}; YAML reads "
                               f"~ and null as no value, yes/no as booleans: quote the name)")
    if (len(name) > ARM_NAME_LENGTH or not _ARM_NAME.fullmatch(name) or ".." in name
            or PAIR_SEPARATOR in name):
        raise MinimascopeError(f"{where}: arm {shown(name)}: {ARM_NAME_RULE}")
    return name


def check_setting_name(name: str, where: str) -> str:
    """A tune setting's name (``lr=0.1,optimizer=sgd``), which is a folder name too."""
    if len(name) > 255 or not name.isprintable() or any(c in name for c in "/\\") or name.startswith("."):
        raise MinimascopeError(f"{where}: setting {shown(name)} is not a folder name (at most 255 printable "
                               f"characters, no '/' or '\\', not starting with '.'): leave paths out of the grid")
    return name


def check_seed(seed: object, where: str) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise MinimascopeError(f"{where}: a seed must be an integer in 0..2**63-1, got {shown(seed)}")
    return seed


def inside(study_dir: Path, relative: object, where: str) -> Path:
    """``study_dir / relative`` for a relative path that stays inside ``study_dir``, else one line."""
    if not isinstance(relative, str) or not relative:
        raise MinimascopeError(f"{where}: path must be text relative to the study, got {shown(relative)}")
    path = Path(relative)
    root = study_dir.resolve()
    if path.is_absolute() or ".." in path.parts or not (root / path).resolve().is_relative_to(root):
        raise MinimascopeError(f"{where}: path {shown(relative)} is not inside the study directory; node paths "
                               f"are relative to it")
    return study_dir / path


def enclosing_study(folder: str | Path) -> Path | None:
    """The study directory that holds ``folder`` (the folder itself or a parent with a ``study.json``)."""
    folder = Path(folder).resolve()
    return next((f for f in (folder, *folder.parents) if (f / STUDY_JSON).is_file()), None)


def check_study_folder(study_dir: Path, what: str = "study") -> None:
    """Refuse a folder for a study (or tune) that is a file, or holds files but no ``study.json``."""
    if study_dir.exists() and not study_dir.is_dir():
        raise MinimascopeError(f"--out {study_dir} is a file; name a folder for the {what}")
    if (study_dir.is_dir() and not (study_dir / STUDY_JSON).is_file()
            and any(p.name != io.LOCK_FILE for p in study_dir.iterdir())):
        raise MinimascopeError(f"--out {study_dir} holds files but no {STUDY_JSON}: not a {what} directory; "
                               f"choose an empty or new folder")
    holder = enclosing_study(study_dir.parent)
    if holder is not None:
        raise MinimascopeError(f"--out {study_dir} is inside study directory {holder}, whose folders belong to "
                               f"it; choose a folder outside it")


def result(status: str, reason: str | None = None, **fields: Any) -> dict[str, Any]:
    """What running a node returns (and ``study.json`` keeps of it)."""
    return {"status": status, "reason": reason, "diverged_epoch": None, "final": None, **fields}


def read_study_record(study_dir: str | Path) -> dict[str, Any]:
    """A study directory's ``study.json``, checked: its names (arms), types (seeds, nodes and their
    fields) and node paths (relative, inside the study). Names the folder when it holds no study, and
    the file and the node when something does not hold."""
    path = Path(study_dir) / STUDY_JSON
    if not path.is_file():
        raise MinimascopeError(f"not a study directory (no {STUDY_JSON}): {study_dir}")
    record = io.read_json(path, STUDY_JSON)
    if not isinstance(record, dict) or record.get("format") != STUDY_FORMAT:
        raise MinimascopeError(f"{path} is not a minimascope study record")
    expect(record, "name", str, f"{path}", optional=True)
    expect(record, "wall_time_s", (int, float), f"{path}", optional=True)
    arms = expect(record, "arms", dict, f"{path}", optional=True) or {}
    for arm in arms:
        check_arm_name(arm, f"{path}: arms")
    for seed in expect(record, "seeds", list, f"{path}", optional=True) or []:
        check_seed(seed, f"{path}: seeds")
    nodes = expect(record, "nodes", list, f"{path}")
    for index, node in enumerate(nodes):
        check_node(node, Path(study_dir), f"{path}: node {index + 1}")
    return record


def expect(mapping: dict[str, Any], key: str, types: type | tuple[type, ...], where: str, *,
            optional: bool = False) -> Any:
    """``mapping[key]`` if it has one of ``types`` (None allowed when ``optional``), else one line."""
    value = mapping.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, types) or isinstance(value, bool) and bool not in (types if isinstance(types, tuple)
                                                                               else (types,)):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise MinimascopeError(f"{where}: {key} must be {names}, got {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise MinimascopeError(f"{where}: {key} must be a finite number, got {value!r}")
    return value


def check_node(node: Any, study_dir: Path, where: str) -> Path:
    """A node of study.json checked (its id, kind, status, names, seeds, path and the types of its other
    fields), one error line naming ``where`` and the node's id when something does not hold; returns the
    node's folder, inside the study."""
    if not isinstance(node, dict):
        raise MinimascopeError(f"{where}: must be a mapping, got {shown(node)}")
    where = f"{where} ({shown(node.get('id'))})"
    expect(node, "id", str, where)
    if expect(node, "kind", str, where) not in NODE_KINDS:
        raise MinimascopeError(f"{where}: unknown kind {shown(node['kind'])}; known: {', '.join(NODE_KINDS)}")
    if expect(node, "status", str, where) not in STATUSES:
        raise MinimascopeError(f"{where}: unknown status {shown(node['status'])}; known: {', '.join(STATUSES)}")
    folder = inside(study_dir, node.get("path"), where)
    if "fold" in node:  # a tune's node: its "arm" is a setting's name, a folder name made from its options
        expect(node, "fold", int, where)
        check_setting_name(expect(node, "arm", str, where), where)
    elif "arm" in node:
        check_arm_name(node["arm"], where)
    if "arms" in node:
        arms = expect(node, "arms", list, where)
        if not 1 <= len(arms) <= 3:
            raise MinimascopeError(f"{where}: arms must be a list of one to three arms, got {shown(arms)}")
        for arm in arms:
            check_arm_name(arm, where)
    if node.get("seed") is not None:
        check_seed(node["seed"], where)
    for seed in expect(node, "seeds", list, where, optional=True) or []:
        check_seed(seed, where)
    for key in ("key", "reason", "started", "finished"):
        expect(node, key, str, where, optional=True)
    for key in ("epoch", "diverged_epoch"):
        expect(node, key, int, where, optional=True)
    expect(node, "time_s", (int, float), where, optional=True)
    for value in (expect(node, "final", dict, where, optional=True) or {}).values():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise MinimascopeError(f"{where}: final must hold numbers, got {shown(value)}")
    if not all(isinstance(d, str) for d in expect(node, "depends_on", list, where, optional=True) or []):
        raise MinimascopeError(f"{where}: depends_on must be a list of node ids")
    return folder


def _init_label(config: dict[str, Any], init_arm: str | None) -> str:
    if init_arm:
        return f"run:{init_arm}"
    return "imagenet" if config.get("pretrained") else "random"


def summary_rows(study_dir: Path, nodes: Sequence[Node], records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run node (``summary.csv``); metric cells empty unless the run completed."""
    from minimascope import runs

    rows = []
    for node in nodes:
        if node.kind != "run":
            continue
        config, record = node.params["config"], records[node.id]
        init_arm = node.params["init_path"].split("/")[1] if node.params.get("init_path") else None
        row: dict[str, Any] = {
            "arm": node.labels.get("arm"), "seed": node.labels.get("seed"), "optimizer": config["optimizer"],
            "init": _init_label(config, init_arm),
            "std_multiplier": ";".join(f"{m:g}" for m in config["std_multiplier"]),
            "epochs": config["epochs"], "status": record["status"]}
        if record["status"] == "completed":
            try:
                run = runs.read_run_json(study_dir / node.path)
                final, per_epoch = run.get("final") or {}, run.get("time_per_epoch_s") or {}
                steps = [r["iter_time_mean_s"] for r in runs.read_metrics(study_dir / node.path)
                         if r.get("iter_time_mean_s") is not None]
            except MinimascopeError as exc:  # a damaged file: its row says so, the others are written
                warnings.warn(f"{SUMMARY_CSV}: the metrics of {node.id} are left empty: {exc}", stacklevel=2)
                rows.append(row)
                continue
            row.update({k: final.get(k) for k in ("test_accuracy", "test_loss", "train_loss", "train_accuracy")})
            row.update({"epoch_time_mean_s": per_epoch.get("mean"), "epoch_time_std_s": per_epoch.get("std"),
                        "step_time_mean_s": statistics.fmean(steps) if steps else None})
        rows.append(row)
    return rows


def _number(text: str | None) -> float | None:
    """A summary.csv number cell: blank is None; anything else a finite number (else ValueError)."""
    if text is None or text.strip() == "":
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def read_summary(path: Path) -> tuple[dict[tuple[str, int], dict[str, Any]], list[str]]:
    """summary.csv as (arm, seed) → row, number columns as float (blank → None), and a line for each row or cell
    that is damaged (the row, or the cell, is left out); a file that is no CSV is one MinimascopeError."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise MinimascopeError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:  # binary bytes, a NUL, a broken quote
        raise MinimascopeError(f"{path}: not a CSV file ({exc})") from None
    table, problems = {}, []
    for line, row in enumerate(rows, start=2):
        if None in row or None in row.values():
            problems.append(f"line {line} does not have the header's {len(row) - (None in row)} fields; left out")
            continue
        try:
            seed = int(row.get("seed") or "")
            check_seed(seed, "")
        except (ValueError, MinimascopeError):
            problems.append(f"line {line}: seed {row.get('seed')!r} is not a seed; row left out")
            continue
        parsed: dict[str, Any] = dict(row)
        for column in SUMMARY_NUMBERS:
            try:
                parsed[column] = _number(row.get(column))
            except ValueError:
                problems.append(f"line {line}: {column} {str(row[column])[:40]!r} is not a finite number; left out")
                parsed[column] = None
        if row.get("arm"):
            table[(str(row["arm"]), seed)] = parsed
    return table, problems


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` as a CSV of ``columns`` (missing and None cells empty), written atomically."""
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    io.atomic_write_text(path, buffer.getvalue())
