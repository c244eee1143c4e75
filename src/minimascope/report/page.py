"""The report page: ``STUDY_DIR/report/index.html`` with its figures and CSV beside it.

This module is the frame only. Each section is a module ``report/sections/<id>.py`` (its ``TITLE``
and ``build(ctx) -> dict``: the data its template shows) and a template
``templates/section-<id>.html.j2`` that says the words (captions, alt texts). :data:`SECTION_IDS`
lists them in page order: adding a section is its module, its template and one id there (an
analysis's section comes from its row in :data:`minimascope.analyses.ANALYSES`). The frame
(``templates/report.html.j2``) numbers the sections, prints what data each used (``data_used``)
and what it could not show (``missing``).

The report reads result files only (:mod:`minimascope.results`); it never trains, compares or
computes a statistic. Every file it writes goes through :class:`Context` (figures, CSV, copies), into
the report folder only: a name made from the study's names (arms, measures, layers) comes from
:meth:`Context.name`, plain names as they are and any other one cleaned and marked with a digest, so no
name leaves the folder or is shared by two files. ``.written.json`` lists the files the report wrote, so
a re-render removes those it did not write again (and nothing else). Links are relative and
URL-encoded, and nothing is fetched from a network, so the folder can be zipped and opened anywhere.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from matplotlib import colormaps
from matplotlib.colors import to_hex

from minimascope.analyses import ANALYSES
from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from minimascope.results import Study, load_study
from minimascope.version import __version__

REPORT_DIR = "report"
INDEX = "index.html"
WRITTEN = ".written.json"  # the names of the files the report wrote, for removing stale ones on a re-render
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # a file the report writes: one name, in its folder
PLAIN_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")  # a study's name used as it is in a file name
PAIR = "_vs_"  # joins the names of a pair in a file name
TEMPLATES = Path(__file__).parent / "templates"
# The study's own sections, then one per analysis in the table's order (an analysis names its section there).
SECTION_IDS = ("study", "table", "curves", "normalisation", "similarity", "filters", "claims",
               *dict.fromkeys(row.section for row in ANALYSES.values() if row.section))


@dataclass
class Context:
    """What every section gets: the study as read, the report folder and shared choices. Sections
    write files only through :meth:`figure`, :meth:`write` and :meth:`copy`, which return the name
    the page links to; a name built from the study's names comes from :meth:`name`."""

    study: Study
    out: Path
    colours: dict[str, str] = field(default_factory=dict)  # arm → colour, the same in every figure
    written: list[str] = field(default_factory=list)  # every file written by this render, in order
    recorded: set[str] = field(default_factory=set)  # what WRITTEN lists: the last render's files and this one's

    def arm_colour(self, arm: str) -> str:
        return self.colours.get(arm, "#444444")

    def name(self, prefix: str, parts: Sequence[str], suffix: str) -> str:
        """``prefix-a_vs_b<suffix>`` from names read from the study: plain parts (letters, digits, ``._+-``,
        without ``_vs_``) as they are, others cleaned up and the whole followed by a digest of the exact parts,
        so two lists of names never share a file and none leaves the folder."""
        stem = PAIR.join(re.sub(r"[^A-Za-z0-9._+-]", "-", part)[:40] for part in parts)
        plain = all(PLAIN_PART.fullmatch(part) and PAIR not in part for part in parts)
        if not plain or f"{prefix}-{stem}{suffix}" in self.written:
            stem += "-" + hashlib.sha256(json.dumps([prefix, *parts, suffix]).encode()).hexdigest()[:10]
        return f"{prefix}-{stem}{suffix}"

    def _path(self, name: str) -> Path:
        """The report folder's file ``name``, recorded in WRITTEN before it is written (so a killed render
        leaves nothing unlisted); one name, never a path."""
        if not FILE_NAME.fullmatch(name) or name == WRITTEN:
            raise MinimascopeError(f"the report cannot write a file named {name[:60]!r}")
        if name in self.written:
            raise MinimascopeError(f"the report wrote {name} twice")
        self.written.append(name)
        if name not in self.recorded:
            self.recorded.add(name)
            atomic_write_json(self.out / WRITTEN, sorted(self.recorded))
        return self.out / name

    def figure(self, name: str, draw: Callable[[Path], Path]) -> str:
        """``draw(path)`` writes the figure to the report folder's ``name``."""
        draw(self._path(name))
        return name

    def write(self, name: str, text: str) -> str:
        atomic_write_text(self._path(name), text)
        return name

    def copy(self, name: str, source: Path) -> str:
        """A result file copied into the report folder, so the folder stays self-contained; a file that leads
        outside the study (a link) is refused."""
        if not source.resolve().is_relative_to(self.study.root.resolve()):
            raise MinimascopeError(f"{source} leads outside the study; the report copies files of the study only")
        data = source.read_bytes()
        atomic_write_bytes(self._path(name), data)
        return name

    def remove_stale(self) -> None:
        """Remove the files an earlier render wrote that this one did not (only names WRITTEN lists)."""
        for name in sorted(self.recorded - set(self.written)):
            stale = self.out / name
            if stale.is_file() or stale.is_symlink():  # a folder of that name is not the report's
                stale.unlink()
        atomic_write_json(self.out / WRITTEN, sorted(self.written))


def _recorded(out: Path) -> set[str]:
    """The names WRITTEN lists that the report could have written; a damaged list is ignored."""
    try:
        names = read_json(out / WRITTEN, WRITTEN) if (out / WRITTEN).is_file() else []
    except MinimascopeError:
        return set()
    return {n for n in names if isinstance(n, str) and FILE_NAME.fullmatch(n) and n != WRITTEN} \
        if isinstance(names, list) else set()


def report_folder(root: Path) -> Path:
    """``root/report``, made if need be; refused when it is a link or leads outside the study."""
    out = root / REPORT_DIR
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise MinimascopeError(f"{out} is not a folder of the study (a link or a file); move it away to write the "
                               f"report there")
    out.mkdir(parents=True, exist_ok=True)
    if not out.resolve().is_relative_to(root.resolve()):
        raise MinimascopeError(f"{out} leads outside the study {root}")
    return out


def url(link: str) -> str:
    """A relative link with each path segment percent-encoded (a file named from an arm may hold '#' or '%')."""
    return "/".join(quote(part, safe="") for part in link.split("/"))


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    build: Callable[[Context], dict[str, Any]]


def _section(section_id: str) -> Section:
    module = importlib.import_module(f"minimascope.report.sections.{section_id}")
    return Section(section_id, module.TITLE, module.build)


SECTIONS = tuple(_section(section_id) for section_id in SECTION_IDS)


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["url"] = url
    return env


def _arm_colours(arms: Sequence[str]) -> dict[str, str]:
    palette = colormaps["tab10" if len(arms) <= 10 else "tab20"]
    return {arm: to_hex(palette(i % palette.N)) for i, arm in enumerate(arms)}


@dataclass(frozen=True)
class WrittenReport:
    path: Path  # index.html
    damaged: list[str]  # "<file>: <why>" for each damage in the study's files, as the page lists them

    @property
    def damaged_files(self) -> list[str]:
        return damaged_files(self.damaged)


def damaged_files(damaged: Sequence[str]) -> list[str]:
    """The files named by damage lines ("<file>: <why>"), once each, in order."""
    return list(dict.fromkeys(line.split(": ", 1)[0] for line in damaged))


def render_report(study_dir: str | Path) -> WrittenReport:
    """Write ``STUDY_DIR/report/index.html`` with its figures and ``table2.csv``, remove the files an earlier
    render wrote and this one did not, and say which damaged files were left out."""
    study = load_study(study_dir)
    out = report_folder(study.root)
    ctx = Context(study, out, _arm_colours(list(study.arms)), recorded=_recorded(out))
    sections = [{"id": s.id, "number": i, "title": s.title, **s.build(ctx)} for i, s in enumerate(SECTIONS, 1)]
    html = environment().get_template("report.html.j2").render(
        study_name=study.name, sections=sections, version=__version__, damaged=study.damaged,
        damaged_files=len(damaged_files(study.damaged)),
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    ctx.write(INDEX, html)
    ctx.remove_stale()
    return WrittenReport(out / INDEX, study.damaged)


def write_report(study_dir: str | Path) -> Path:
    """:func:`render_report`; returns the page's path."""
    return render_report(study_dir).path
