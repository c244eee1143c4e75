"""The report and the result reader against hostile or damaged study folders (issue 18), through the CLI: the exit
status, the one warning line and the page's note naming each damaged file, and every file before and after, the
study's neighbours included."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from helpers import build_fake_study, invoke, page_tables
from minimascope import io
from minimascope.errors import MinimascopeError
from minimascope.report.page import Context, url
from minimascope.results import load_study
from minimascope.runs import read_metrics

PAPER_ARMS = ("adahessian", "sgd-pretrained", "adahessian-pretrained", "adahessian-then-sgd", "sgd-then-adahessian")


@pytest.fixture(scope="module", autouse=True)
def no_pixels() -> Iterator[None]:
    """Figures written as a few placeholder bytes: these tests are about which files are written where, and
    drawing is most of a report's time (test_report.py looks at the figures themselves)."""
    def placeholder(figure: Figure, target: Any, *args: Any, **kwargs: Any) -> None:
        data = b"figure"
        target.write(data) if hasattr(target, "write") else Path(target).write_bytes(data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", placeholder)
        yield


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two arms, two seeds, one pair, every analysis, one measure (CKA): a report of it takes a few seconds."""
    root = build_fake_study(tmp_path_factory.mktemp("small") / "study", arms=("sgd", "adahessian"),
                            pairs=(("sgd", "adahessian"), ("sgd", "sgd")), skipped=(), diverged={}, weights=False)
    for extra in root.glob("comparisons/*/*/*.json"):
        if extra.stem != "cka":
            extra.unlink()
    edit_json(root / "study.json", lambda record: record["compare"].update(measures=["cka"]))
    return root


@pytest.fixture
def study(small_study: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(small_study, tmp_path / "study"))


def edit_json(path: Path, change: Any) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def tree(folder: Path, *, skip: str | None = None) -> dict[str, str]:
    """Every file under ``folder`` (links as where they point) with a digest of its bytes."""
    return {str(p.relative_to(folder)): (f"link to {p.readlink()}" if p.is_symlink()
                                         else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if (p.is_file() or p.is_symlink())
            and not (skip and p.relative_to(folder).parts[:2] == tuple(skip.split("/")))}


def report(study_dir: Path) -> tuple[Any, str]:
    """``minimascope report STUDY`` through the CLI: its result and the page."""
    result = invoke("report", str(study_dir))
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return result, (study_dir / "report" / "index.html").read_text()


def damaged_note(page: str) -> str:
    found = re.search(r'<div class="damaged" id="damaged">(.*?)</div>', page, re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", found.group(1))).split()) if found else ""


def rename_arms(root: Path, names: dict[str, str]) -> None:
    """Give arms new names everywhere the report reads them (study.json, summary.csv, the seeds analyses); the
    folders keep theirs, as node paths say where each node's files are."""
    def rename(value: Any) -> Any:
        if isinstance(value, dict):
            return {names.get(k, k) if isinstance(k, str) else k: rename(v) for k, v in value.items()
                    if k not in ("path", "id", "key")} | {k: value[k] for k in ("path", "id", "key") if k in value}
        if isinstance(value, list):
            return [rename(v) for v in value]
        return names.get(value, value) if isinstance(value, str) else value

    edit_json(root / "study.json", lambda record: record.update(rename(record)))
    for seeds in root.glob("analyses/seeds/*/seeds.json"):
        edit_json(seeds, lambda record: record.update(arms=rename(record["arms"]),
                                                      within_arms=rename(record["within_arms"])))
    with (root / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with (root / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{**row, "arm": names.get(row["arm"], row["arm"])} for row in rows])


# ---------------------------------------------------------------- 1 and 3: only inside its folder, URLs encoded

def test_crafted_names_and_paths_neither_write_nor_read_outside_the_study(study: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "runs" / "sgd" / "seed0"
    shutil.copytree(study / "runs" / "sgd" / "seed0", outside)
    edit_json(outside / "run.json", lambda record: record["final"].update(test_accuracy=0.987654))
    rename_arms(study, {"adahessian": "adam+w"})  # a valid name whose '+' a URL must encode

    def craft(record: dict) -> None:
        record["arms"]["../../escaped"] = dict(record["arms"]["sgd"])
        record["nodes"] += [{**record["nodes"][0], "id": "run:../../escaped:seed0", "arm": "../../escaped"},
                            {**record["nodes"][1], "id": "run:sgd:seed7", "seed": 7, "path": str(outside)},
                            {**record["nodes"][1], "id": "run:sgd:seed8", "seed": 8, "path": "runs/../../elsewhere"}]
        record["name"] = "<b>crafted</b>"
    edit_json(study / "study.json", craft)
    before = tree(tmp_path, skip="study/report")
    result, page = report(study)
    assert tree(tmp_path, skip="study/report") == before  # nothing written outside the report folder
    assert all(p.parent == study / "report" for p in (study / "report").iterdir())
    note = damaged_note(page)
    assert "study.json" in note and "'../../escaped'" in note and "arm left out" in note
    assert note.count("is not inside the study directory") == 2  # the absolute path and the escaping one
    assert "'run:sgd:seed7'" in note and "'runs/../../elsewhere'" in note
    assert "98.77" not in page and "seed 7" not in page  # the run outside was not read
    assert result.output.count("warning:") == 1 and "1 damaged file left out" in " ".join(result.output.split())
    assert 'src="mistakes-sgd_vs_adam%2Bw-only_a.png"' in page
    assert (study / "report" / "mistakes-sgd_vs_adam+w-only_a.png").is_file()
    assert "&lt;b&gt;crafted&lt;/b&gt;" in page and "<b>crafted</b>" not in page


def test_a_report_folder_or_a_copied_file_that_leads_outside_is_refused(study: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (study / "report").symlink_to(elsewhere, target_is_directory=True)
    before = tree(tmp_path)
    result = invoke("report", str(study))
    assert result.exit_code == 2 and "report is not a folder of the study" in " ".join(result.output.split())
    assert tree(tmp_path) == before and not any(elsewhere.iterdir())
    (study / "report").unlink()
    grid = study / "analyses" / "mistakes" / "sgd_vs_adahessian" / "seed0" / "only_a.png"
    grid.unlink()
    grid.symlink_to(tmp_path / "secret.png")
    (tmp_path / "secret.png").write_bytes(b"secret")
    result = invoke("report", str(study))
    assert result.exit_code == 2 and "leads outside the study" in result.output
    assert not any(p.read_bytes() == b"secret" for p in (study / "report").iterdir())


def test_file_names_from_names_stay_in_the_folder_and_never_collide(tmp_path: Path) -> None:
    ctx = Context(study=None, out=tmp_path)  # type: ignore[arg-type]
    names = [ctx.name("mistakes", arms, "-only_a.png") for arms in
             (("sgd", "adamw"), ("p", "q_vs_r"), ("p_vs_q", "r"), ("../../x", "y"), ("/etc/passwd", "y"), ("é", "y"))]
    assert names[0] == "mistakes-sgd_vs_adamw-only_a.png"
    assert len(set(names)) == len(names) and all("/" not in n and n.startswith("mistakes-") for n in names)
    assert url("mistakes-a+b #1%.png") == "mistakes-a%2Bb%20%231%25.png" and url("x/y z") == "x/y%20z"


# ---------------------------------------------------------------- 2: damaged files render, named

def damage(root: Path) -> dict[str, str]:
    """One of each kind of damage; returns file → what the note says of it."""
    similarity = root / "comparisons" / "sgd_vs_adahessian" / "seed0" / "cka.json"
    edit_json(similarity, lambda record: record["values"][2].__setitem__(3, float("nan")))
    metrics = root / "runs" / "sgd" / "seed1" / "metrics.csv"
    metrics.write_text(metrics.read_text() + "4,garbage,0.1\n")
    (root / "runs" / "adahessian" / "seed1" / "metrics.csv").write_bytes(b"\x00\xff\xfe binary \x89PNG")
    summary = root / "summary.csv"
    summary.write_text(re.sub(r"\nsgd,1,", "\nsgd,nan,", summary.read_text()))
    edit_json(root / "study.json", lambda record: (record.update(seeds="zero"),
                                                   record["arms"]["sgd"].update(epochs="three")))
    weights = root / "analyses" / "weights" / "sgd" / "seed0" / "weights.json"
    weights.write_text(weights.read_text()[:200])
    return {"comparisons/sgd_vs_adahessian/seed0/cka.json": "it holds NaN",
            "runs/sgd/seed1/metrics.csv": "line 5", "runs/adahessian/seed1/metrics.csv": "not a metrics file",
            "summary.csv": "seed 'nan'", "study.json": "seeds", "analyses/weights/sgd/seed0/weights.json": ""}


def test_damaged_files_are_named_and_everything_else_is_shown(study: Path, tmp_path: Path) -> None:
    expected = damage(study)
    before = tree(tmp_path, skip="study/report")
    result, page = report(study)
    assert tree(tmp_path, skip="study/report") == before
    note, output = damaged_note(page), " ".join(result.output.split())
    assert output.count("warning:") == 1 and f"{len(expected)} damaged files" in output
    for file, why in expected.items():
        assert file in note and file in output, file
        assert why in note.split(file, 1)[1][:300], (file, note)
    tables = {table["rows"][0][0]: table for table in page_tables(page) if table["rows"]}
    accuracy = {row[0]: row for row in tables["arm"]["rows"][1:] if row[0] in ("sgd", "adahessian")}
    assert set(accuracy) == {"sgd", "adahessian"}  # Table II still has both arms
    for figure in ("curves.svg", "similarity-cka.png", "weights.svg", "mistakes-sgd_vs_adahessian-only_a.png"):
        assert f'src="{figure}"' in page and (study / "report" / figure).is_file()


DAMAGED_FILE = {"similarity": "cka.json", "metrics": "sgd/seed1/metrics.csv", "summary": "summary.csv",
                "study.json": "study.json", "analysis": "weights.json"}


@pytest.mark.parametrize("kind", DAMAGED_FILE)
def test_load_study_collects_damaged_files_or_raises_naming_the_first(study: Path, kind: str) -> None:
    damaged = damage_one(study, kind)
    found = load_study(study).damaged
    assert found and any(line.startswith(damaged) for line in found), found
    with pytest.raises(MinimascopeError, match=re.escape(str(study / damaged))):
        load_study(study, strict=True)


def damage_one(root: Path, kind: str) -> str:
    """One damage of :func:`damage` alone; returns the damaged file, relative to the study."""
    copy = root.parent / f"{kind}-all"
    shutil.copytree(root, copy)
    name = next(f for f in damage(copy) if f.endswith(DAMAGED_FILE[kind]))
    shutil.copyfile(copy / name, root / name)
    return name


@pytest.mark.parametrize(("text", "why"), [
    ("epoch,lr\n1,0.1\n2,abc\n", "line 3: lr 'abc' is not a number"),
    ("epoch,lr\n1,nan\n", "line 2: lr is nan, not a finite number"),
    ("epoch,lr\n1,inf\n", "line 2: lr is inf, not a finite number"),
    ("epoch,lr\n1,0.1,9\n", "line 2 has 3 fields, the header 2"),
    ("epoch,lr\n1.5,0.1\n", "line 2: epoch '1.5' is not a positive whole number"),
    ("lr\n0.1\n", "no epoch column"),
    (b"epoch,lr\n1,\x00\xff\n", "not a metrics file"),
])
def test_read_metrics_checks_types_and_finiteness_and_names_the_file(tmp_path: Path, text: str | bytes,
                                                                      why: str) -> None:
    path = tmp_path / "metrics.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(MinimascopeError) as caught:
        read_metrics(tmp_path)
    assert str(path) in str(caught.value) and why in str(caught.value)
    path.write_text("epoch,lr,val_loss\n1,0.1,\n2,0.05,\n")
    assert read_metrics(tmp_path) == [{"epoch": 1.0, "lr": 0.1, "val_loss": None},
                                      {"epoch": 2.0, "lr": 0.05, "val_loss": None}]


# ---------------------------------------------------------------- 4: stale files removed, only the report's own

def test_a_rerender_removes_the_files_it_no_longer_writes_and_nothing_else(study: Path, tmp_path: Path) -> None:
    report(study)
    out = study / "report"
    assert (out / "mistakes-sgd_vs_adahessian-only_a.png").is_file()
    (out / "notes.txt").write_text("mine")
    written = json.loads((out / ".written.json").read_text())
    (out / ".written.json").write_text(json.dumps([*written, "../summary.csv", "/etc/hostname"]))
    edit_json(study / "study.json",
              lambda record: record.update(nodes=[n for n in record["nodes"] if n["kind"] != "mistakes"]))
    before = tree(tmp_path, skip="study/report")
    report(study)
    assert tree(tmp_path, skip="study/report") == before
    assert not list(out.glob("mistakes-*")) and (out / "notes.txt").read_text() == "mine"
    assert set(json.loads((out / ".written.json").read_text())) == {p.name for p in out.iterdir()} - {
        "notes.txt", ".written.json"}


# ---------------------------------------------------------------- 5: any arm names

def test_every_section_works_whatever_the_arms_are_called(study: Path) -> None:
    """sgd, adamw, sam, muon, radam: no claim row about an arm the study lacks, every section drawn."""
    rename_arms(study, {"adahessian": "adamw"})

    def more_arms(record: dict) -> None:
        for new, like in (("sam", "sgd"), ("muon", "adamw"), ("radam", "sgd")):
            record["arms"][new] = {**record["arms"][like], "optimizer": new}
            record["nodes"] += [{**n, "id": f"run:{new}:seed{n['seed']}", "arm": new} for n in record["nodes"]
                                if n["kind"] == "run" and n["arm"] == like]
    edit_json(study / "study.json", more_arms)
    with (study / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows += [{**row, "arm": new, "optimizer": new} for new, like in (("sam", "sgd"), ("muon", "adamw"),
                                                                       ("radam", "sgd")) for row in rows
             if row["arm"] == like]
    with (study / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result, page = report(study)
    assert "warning:" not in result.output
    tables = page_tables(page)
    table_two = next(t for t in tables if t["section"] == "table" and t["rows"][0][0] == "arm")
    assert [row[0] for row in table_two["rows"][1:]] == ["sgd", "adamw", "sam", "muon", "radam"]
    claim_rows = next(t for t in tables if t["section"] == "claims" and t["rows"][0][0] == "the paper's claim")
    assert not any(arm in " ".join(row).lower() for row in claim_rows["rows"][1:] for arm in PAPER_ARMS)
    assert "claims are about arms this study does not have (adahessian" in page
    for figure in ("curves.svg", "similarity-cka.png", "similarity-depth.svg", "sharpness.svg", "weights.svg",
                   "connectivity.svg", "mistakes-sgd_vs_adamw-only_a.png", "seeds-sgd_vs_adamw.csv"):
        assert (study / "report" / figure).is_file(), figure
    assert "sgd vs adamw" in page


# ---------------------------------------------------------------- 6: a killed study is interrupted

def test_a_killed_study_is_shown_as_interrupted_and_a_running_one_as_running(study: Path) -> None:
    def killed(record: dict) -> None:
        for node in record["nodes"]:
            if node["kind"] == "run" and node["arm"] == "adahessian" and node["seed"] == 1:
                node.update(status="running", final=None)
    edit_json(study / "study.json", killed)
    _, page = report(study)
    arms = next(t for t in page_tables(page) if t["section"] == "study" and t["rows"][0][0] == "arm")
    runs = next(row[-1] for row in arms["rows"] if row[0] == "adahessian")
    assert "seed 1: interrupted" in runs and "running" not in runs
    with io.locked(study, "study directory"):  # a driver holds the study: its running node is running
        assert load_study(study).run_results[("adahessian", 1)].status == "running"
    assert load_study(study).run_results[("adahessian", 1)].status == "interrupted"
