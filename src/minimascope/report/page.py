"""The report page: ``STUDY_DIR/report/index.html`` with its figures and CSV beside it.

This module is the frame only. Each section is a module ``report/sections/<id>.py`` (its ``TITLE``
and ``build(ctx) -> dict``: the data its template shows) and a template
``templates/section-<id>.html.j2`` that says the words (captions, alt texts). :data:`SECTION_IDS`
lists them in page order: adding a section is its module, its template and one id there (an
analysis's section comes from its row in :data:`minimascope.analyses.ANALYSES`). The frame
(``templates/report.html.j2``) numbers the sections, prints what data each used (``data_used``)
and what it could not show (``missing``).

The report reads result files only (:mod:`minimascope.results`); it never trains, compares or
computes a statistic. Every file it writes goes through :class:`Context` (figures, CSV, copies),
links are relative and nothing is fetched from a network, so the folder can be zipped and opened
anywhere.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from matplotlib import colormaps
from matplotlib.colors import to_hex

from minimascope.analyses import ANALYSES
from minimascope.io import atomic_write_bytes, atomic_write_text
from minimascope.results import Study, load_study
from minimascope.version import __version__

REPORT_DIR = "report"
INDEX = "index.html"
TEMPLATES = Path(__file__).parent / "templates"
# The study's own sections, then one per analysis in the table's order (an analysis names its section there).
SECTION_IDS = ("study", "table", "curves", "normalisation", "similarity", "filters", "claims",
               *dict.fromkeys(row.section for row in ANALYSES.values() if row.section))


@dataclass
class Context:
    """What every section gets: the study as read, the report folder and shared choices. Sections
    write files only through :meth:`figure`, :meth:`write` and :meth:`copy`, which return the name
    the page links to."""

    study: Study
    out: Path
    colours: dict[str, str] = field(default_factory=dict)  # arm → colour, the same in every figure

    def arm_colour(self, arm: str) -> str:
        return self.colours.get(arm, "#444444")

    def _link(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()

    def figure(self, name: str, draw: Callable[[Path], Path]) -> str:
        """``draw(path)`` writes the figure to the report folder's ``name``."""
        return self._link(draw(self.out / name))

    def write(self, name: str, text: str) -> str:
        atomic_write_text(self.out / name, text)
        return name

    def copy(self, name: str, source: Path) -> str:
        """A result file copied into the report folder, so the folder stays self-contained."""
        atomic_write_bytes(self.out / name, source.read_bytes())
        return name


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
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def _arm_colours(arms: Sequence[str]) -> dict[str, str]:
    palette = colormaps["tab10" if len(arms) <= 10 else "tab20"]
    return {arm: to_hex(palette(i % palette.N)) for i, arm in enumerate(arms)}


def write_report(study_dir: str | Path) -> Path:
    """Write ``STUDY_DIR/report/index.html`` with its figures and ``table2.csv``; returns the page's path."""
    study = load_study(study_dir)
    out = study.root / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(study, out, _arm_colours(list(study.arms)))
    sections = [{"id": s.id, "number": i, "title": s.title, **s.build(ctx)} for i, s in enumerate(SECTIONS, 1)]
    html = environment().get_template("report.html.j2").render(
        study_name=study.name, sections=sections, version=__version__,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    atomic_write_text(out / INDEX, html)
    return out / INDEX
