"""minimascope.load_study: every DataFrame against the result files it comes from, read here another way
(csv and json, not the package's readers), an analysis the study did not run, and the README's example."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

import minimascope
from minimascope import frames

pytestmark = pytest.mark.slow  # the tiny study is built once per session (about a minute and a half)

FRAMES = {"runs": frames.RUN_COLUMNS, "curves": frames.CURVE_COLUMNS, "similarity": frames.SIMILARITY_COLUMNS,
          "sharpness": frames.SHARPNESS_COLUMNS, "connectivity": frames.CONNECTIVITY_COLUMNS,
          "weights": frames.WEIGHT_COLUMNS, "mistakes": frames.MISTAKE_COLUMNS}


def nodes(study_dir: Path, kind: str) -> list[dict]:
    record = json.loads((study_dir / "study.json").read_text())
    return [n for n in record["nodes"] if n["kind"] == kind and n["status"] == "completed"]


def result_json(study_dir: Path, node: dict, name: str) -> dict:
    return json.loads((study_dir / node["path"] / name).read_text())


def number(text: str) -> float | None:
    return float(text) if text != "" else None


def same(a: float, b: float) -> bool:
    return a == b or math.isnan(a) and math.isnan(b)


def test_runs_and_curves_agree_with_summary_and_metrics(tiny_study: Path) -> None:
    study = minimascope.load_study(tiny_study)
    with (tiny_study / "summary.csv").open(newline="") as f:
        summary = list(csv.DictReader(f))
    assert list(study.runs.columns) == list(frames.RUN_COLUMNS) == list(summary[0])
    assert len(study.runs) == len(summary) == 10
    by_run = study.runs.set_index(["arm", "seed"])
    for row in summary:
        got = by_run.loc[(row["arm"], int(row["seed"]))]
        assert got.status == row["status"] and got.optimizer == row["optimizer"] and got.init == row["init"]
        for column in ("test_accuracy", "test_loss", "train_loss", "epoch_time_mean_s", "step_time_mean_s"):
            expected = number(row[column])
            assert (pd.isna(got[column]) if expected is None else got[column] == pytest.approx(expected, rel=1e-12))
    curves = study.curves
    assert list(curves.columns) == list(frames.CURVE_COLUMNS)
    for node in nodes(tiny_study, "run"):
        with (tiny_study / node["path"] / "metrics.csv").open(newline="") as f:
            metrics = list(csv.DictReader(f))
        mine = curves[(curves.arm == node["arm"]) & (curves.seed == node["seed"])]
        cells = {(int(r["epoch"]), k): float(v) for r in metrics for k, v in r.items() if k != "epoch" and v != ""}
        assert {(int(e), m): v for e, m, v in zip(mine.epoch, mine.metric, mine.value)} == pytest.approx(cells)


def test_similarity_frame_holds_every_cell_of_every_matrix(tiny_study: Path) -> None:
    study = minimascope.load_study(tiny_study)
    table = study.similarity
    expected = 0
    for node in nodes(tiny_study, "compare"):
        arm_a, arm_b = node["arms"]
        for measure in ("cka", "svcca", "procrustes"):
            matrix = result_json(tiny_study, node, f"{measure}.json")
            expected += len(matrix["layers_a"]) * len(matrix["layers_b"])
            rows = table[(table.arm_a == arm_a) & (table.arm_b == arm_b) & (table.seed_a == node["seed"])
                         & (table.measure == measure)]
            got = {(a, b): v for a, b, v in zip(rows.layer_a, rows.layer_b, rows.value)}
            assert got == {(a, b): matrix["values"][i][j] for i, a in enumerate(matrix["layers_a"])
                           for j, b in enumerate(matrix["layers_b"])}
            assert set(rows.convention) == {matrix["convention"]} and set(rows.n_samples) == {matrix["n_samples"]}
    assert len(table) == expected > 0


def test_analysis_frames_agree_with_their_json(tiny_study: Path) -> None:
    study = minimascope.load_study(tiny_study)
    sharpness = study.sharpness.set_index(["arm", "seed"])
    for node in nodes(tiny_study, "sharpness"):
        record = result_json(tiny_study, node, "sharpness.json")
        row = sharpness.loc[(node["arm"], node["seed"])]
        assert list(row.eigenvalues) == record["eigenvalues"] and row.top_eigenvalue == record["eigenvalues"][0]
        assert (row.trace, row.trace_stderr, row.trace_probes) == (record["trace"], record["trace_stderr"],
                                                                 record["probes"])
    assert len(sharpness) == len(nodes(tiny_study, "sharpness")) == 2
    weights = study.weights
    for node in nodes(tiny_study, "weights"):
        layers = result_json(tiny_study, node, "weights.json")["layers"]
        mine = weights[(weights.arm == node["arm"]) & (weights.seed == node["seed"])]
        assert list(mine.layer) == [layer["layer"] for layer in layers]
        for column in ("frobenius_norm", "effective_rank", "stable_rank", "small_weight_share",
                       "relative_distance_from_init"):
            assert list(mine[column]) == [layer[column] for layer in layers]
    connectivity = study.connectivity
    for node in nodes(tiny_study, "connectivity"):
        record = result_json(tiny_study, node, "connectivity.json")
        for variant, curve in record["variants"].items():
            mine = connectivity[(connectivity.arm_a == node["arms"][0]) & (connectivity.arm_b == node["arms"][1])
                                & (connectivity.variant == variant)]
            assert list(mine.alpha) == record["alphas"]
            assert list(mine.train_loss) == curve["train_loss"] and list(mine.test_error) == curve["test_error"]
    mistakes = study.mistakes.set_index(["arm_a", "arm_b", "seed"])
    for node in nodes(tiny_study, "mistakes"):
        record = result_json(tiny_study, node, "mistakes.json")
        row = mistakes.loc[(*node["arms"], node["seed"])]
        assert row.n == record["n"] and row.both_wrong == record["counts"]["both_wrong"]
        assert row.only_a_wrong == record["counts"]["only_a_wrong"]
        assert same(row.p_value_more_overlap, record["p_value_more_overlap"])
    assert len(mistakes) == len(nodes(tiny_study, "mistakes")) > 0


def test_an_analysis_the_study_did_not_run_is_an_empty_frame_with_its_columns(tiny_study: Path,
                                                                             tmp_path: Path) -> None:
    study_dir = tmp_path / "runs-only"
    shutil.copytree(tiny_study, study_dir, ignore=shutil.ignore_patterns("analyses", "comparisons", "report"))
    record = json.loads((study_dir / "study.json").read_text())
    record["nodes"] = [n for n in record["nodes"] if n["kind"] == "run"]
    (study_dir / "study.json").write_text(json.dumps(record))
    study = minimascope.load_study(study_dir)
    assert len(study.runs) == 10 and len(study.curves) > 0
    for name, columns in FRAMES.items():
        table = getattr(study, name)
        assert list(table.columns) == list(columns), name
        if name not in ("runs", "curves"):
            assert table.empty, name


def test_the_readme_example_runs(tiny_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"<!-- load_study example -->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README.md has no load_study example"
    monkeypatch.chdir(tmp_path)
    code = block.group(1).replace('"studies/quick"', repr(str(tiny_study)))
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102  (the README's own example)
    assert (tmp_path / "test-accuracy.png").stat().st_size > 0
