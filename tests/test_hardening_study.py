"""Issue 18, the study's side: bad names, paths, options and values through the command line (the exit
status, the one ``error:`` line, and the files before and after, outside the folder included), the
records of compare and of the study apart, markers checked before they are trusted, names printed
literally, a killed study shown as interrupted."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from helpers import assert_one_line_error, invoke
from minimascope import io, runs
from minimascope.cli import app
from minimascope.study import run_study
from minimascope.study.records import NODE_JSON, STUDY_JSON, read_study_record

COMMON = {"defaults": {"epochs": 1, "train_subset": 100, "test_subset": 50, "eval_batch_size": 50,
                       "device": "cpu"}}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes; the study's lock file records its latest holder: left out."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != io.LOCK_FILE} if folder.exists() else {}


def study_file(path: Path, arms: object, **values: object) -> Path:
    path.write_text(yaml.safe_dump({**COMMON, "arms": arms, **values}, sort_keys=False))
    return path


def assert_refused(tmp_path: Path, args: list[str], message: str) -> None:
    """``minimascope ARGS`` is one error line holding ``message``, and changes no file under ``tmp_path``."""
    before = snapshot(tmp_path)
    assert_one_line_error(invoke(*args), message)
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, cifar_source: str) -> tuple[Path, Path]:
    """(study file, a completed study of it): two arms of one epoch, their comparison, the weights of one."""
    root = tmp_path_factory.mktemp("small")
    file = study_file(root / "small.yaml", {"a": {"optimizer": "sgd"}, "b": {"optimizer": "sgd", "lr": 0.05}},
                      compare={"measures": ["cka"], "samples": 50, "pairs": [["a", "b"]], "within": False},
                      analyses={"weights": {"arms": ["a"]}})
    outcome = run_study(file, root / "study", data=cifar_source)
    assert outcome.counts == {"completed": 4}, outcome.records
    return file, root / "study"


def copy_of(small: tuple[Path, Path], tmp_path: Path) -> Path:
    study = tmp_path / "study"
    shutil.copytree(small[1], study)
    return study


def rerun(small: tuple[Path, Path], study: Path, source: str):
    return invoke("study", str(small[0]), "--out", str(study), "--data", source)


# ----------------------------------------------------------------------------- names and paths

BAD_ARMS = {
    "300 characters": ("a" * 300, "(300 characters): arm names are folder names"),
    "a newline": ("a\nb", "arm 'a\\nb': arm names are folder names"),
    "a path": ("../evil", "arm '../evil': arm names are folder names"),
    "two dots": ("a..b", "arm 'a..b': arm names are folder names"),
    "the pair separator": ("q_vs_r", "without '..' or '_vs_'"),
    "Rich markup": ("[red]x", "arm '[red]x': arm names are folder names"),
    "YAML's null": (None, "arm None is not text (NoneType"),
}


@pytest.mark.parametrize("case", list(BAD_ARMS))
def test_bad_arm_names_are_refused_before_anything_runs(case: str, tmp_path: Path) -> None:
    name, message = BAD_ARMS[case]
    file = study_file(tmp_path / "s.yaml", {"p": {}, name: {}})
    assert_refused(tmp_path, ["study", str(file), "--out", str(tmp_path / "out")], message)
    assert not (tmp_path / "out").exists()


def test_the_presets_arm_names_and_folders_stay_valid() -> None:
    from minimascope.study.plan import study_nodes
    from minimascope.study.spec import load_spec

    nodes = {n.id: n for n in study_nodes(load_spec("quick"), "torchvision", None, None)}
    assert nodes["run:adahessian-then-sgd:seed0"].path == "runs/adahessian-then-sgd/seed0"
    assert nodes["compare:sgd-pretrained:adahessian-pretrained:seed1"].path == \
        "comparisons/sgd-pretrained_vs_adahessian-pretrained/seed1"


def crafted_study(root: Path, **node: object) -> Path:
    root.mkdir(parents=True)
    base = {"id": "run:a:seed0", "kind": "run", "arm": "a", "seed": 0, "path": "runs/a/seed0",
            "status": "completed", "key": "k"}
    io.atomic_write_json(root / STUDY_JSON, {"format": "minimascope-study-v1", "name": "crafted", "seeds": [0],
                                             "arms": {"a": {}}, "nodes": [{**base, **node}]})
    return root


CRAFTED = {
    "an absolute path": ({"path": "/etc"}, "path '/etc' is not inside the study directory"),
    "an escaping path": ({"path": "runs/../../outside"}, "path 'runs/../../outside' is not inside"),
    "an arm with ../": ({"arm": "../../x"}, "arm '../../x': arm names are folder names"),
    "a seed of text": ({"seed": "0"}, "a seed must be an integer in 0..2**63-1, got '0'"),
    "a NaN time": ({"time_s": float("nan")}, "time_s must be a finite number"),
    "a status of a number": ({"status": 5}, "status must be str, got 5"),
    "a list for final": ({"final": [1]}, "final must be dict, got [1]"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_study_json_is_refused_naming_the_file(case: str, tmp_path: Path) -> None:
    change, message = CRAFTED[case]
    study = crafted_study(tmp_path / "study", **change)
    assert_refused(tmp_path, ["status", str(study)], message)
    assert_refused(tmp_path, ["status", str(study)], f"{study / STUDY_JSON}: node 1")


def test_node_paths_of_a_study_are_relative_and_inside(small) -> None:
    record = read_study_record(small[1])
    assert all(not Path(n["path"]).is_absolute() and ".." not in n["path"] for n in record["nodes"])


def test_a_study_on_a_hand_edited_study_json_is_one_line(small, cifar_source: str, tmp_path: Path) -> None:
    study = copy_of(small, tmp_path)
    record = json.loads((study / STUDY_JSON).read_text())
    record["nodes"][0]["seed"] = [0]
    io.atomic_write_json(study / STUDY_JSON, record)
    before = snapshot(tmp_path)
    assert_one_line_error(rerun(small, study, cifar_source), f"{study / STUDY_JSON}: node 1 ('run:a:seed0')")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- folders of their own


def test_study_out_refuses_a_folder_that_is_not_a_study(tmp_path: Path) -> None:
    file = study_file(tmp_path / "s.yaml", {"a": {}})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "study.yaml").write_text("my notes\n")
    assert_refused(tmp_path, ["study", str(file), "--out", str(tmp_path / "mine")],
                   "holds files but no study.json: not a study directory")


def test_study_out_inside_a_study_is_refused(small, tmp_path: Path) -> None:
    study = copy_of(small, tmp_path)
    assert_refused(tmp_path, ["study", str(small[0]), "--out", str(study / "runs" / "new")],
                   f"is inside study directory {study.resolve()}")


def test_compare_out_inside_a_study_is_refused(small, cifar_source: str, tmp_path: Path) -> None:
    study = copy_of(small, tmp_path)
    a, b = study / "runs/a/seed0", study / "runs/b/seed0"
    assert_refused(tmp_path, ["compare", str(a), str(b), "--samples", "50", "--data", cifar_source, "--out",
                              str(study / "comparisons/a_vs_b/seed0")], "whose folders belong to the study")


def test_compare_into_a_folder_holding_an_old_study_record_is_one_line(small, cifar_source: str,
                                                                        tmp_path: Path) -> None:
    """Before node.json a study's comparison.json held its key, not the networks: once a KeyError."""
    out = tmp_path / "old"
    out.mkdir()
    io.atomic_write_json(out / "comparison.json", {"format": "minimascope-comparison-v1", "key": "abc"})
    a, b = small[1] / "runs/a/seed0", small[1] / "runs/b/seed0"
    assert_refused(tmp_path, ["compare", str(a), str(b), "--samples", "50", "--data", cifar_source, "--out", str(out)],
                   "comparison.json names no compared networks")


def test_compare_and_the_study_keep_records_of_their_own(small, cifar_source: str, tmp_path: Path) -> None:
    """compare's comparison.json names the networks; the study's node.json its key. A kill between the two
    writes (node.json missing) resumes: the node runs again into compare's folder and completes."""
    study = copy_of(small, tmp_path)
    folder = study / "comparisons/a_vs_b/seed0"
    comparison = json.loads((folder / "comparison.json").read_text())
    assert {"a", "b", "measures"} <= set(comparison) and "key" not in comparison
    node = json.loads((folder / NODE_JSON).read_text())
    (folder / NODE_JSON).unlink()
    result = rerun(small, study, cifar_source)
    assert result.exit_code == 0, result.output
    assert json.loads((folder / NODE_JSON).read_text())["key"] == node["key"]
    again = json.loads((folder / "comparison.json").read_text())
    assert [again[s]["weights_sha256"] for s in "ab"] == [comparison[s]["weights_sha256"] for s in "ab"]
    assert again["measures"] == comparison["measures"] == ["cka"]


def test_a_study_of_the_old_layout_resumes_without_recomputing(small, cifar_source: str, tmp_path: Path) -> None:
    """Before node.json the study wrote its record over comparison.json: still read as the node's record."""
    study = copy_of(small, tmp_path)
    folder = study / "comparisons/a_vs_b/seed0"
    node = json.loads((folder / NODE_JSON).read_text())
    io.atomic_write_json(folder / "comparison.json", {**node, "format": "minimascope-comparison-v1"})
    (folder / NODE_JSON).unlink()
    stamps = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    result = rerun(small, study, cifar_source)
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps


# ----------------------------------------------------------------------------- checked before anything runs

SPEC_VALUES = {
    "sharpness k 0": ({"analyses": {"sharpness": {"k": 0}}}, "analyses: sharpness: k must be an integer >= 1"),
    "images 0": ({"analyses": {"sharpness": {"images": 0}}}, "sharpness: images must be an integer >= 1"),
    "images 16.5": ({"analyses": {"sharpness": {"images": 16.5}}}, "images must be an integer >= 1 and <= 50000, "
                                                                  "got 16.5"),
    "max_iter 0": ({"analyses": {"sharpness": {"max_iter": 0}}}, "max_iter must be an integer >= 1"),
    "k above max_iter": ({"analyses": {"sharpness": {"k": 5, "max_iter": 3}}}, "k (5) may not exceed max_iter (3)"),
    "points 1": ({"analyses": {"connectivity": {"points": 1}}}, "connectivity: points must be an integer >= 2"),
    "points true": ({"analyses": {"connectivity": {"points": True}}}, "points must be an integer >= 2 and <= 1001, "
                                                                     "got True"),
    "threshold -1": ({"analyses": {"weights": {"threshold": -1}}}, "weights: threshold must be a number > 0"),
    "limit -3": ({"analyses": {"mistakes": {"limit": -3}}}, "mistakes: limit must be an integer >= 1"),
    "tol nan": ({"analyses": {"sharpness": {"tol": float("nan")}}}, "tol must be a number > 0 and <= 1, got nan"),
    "unknown option": ({"analyses": {"weights": {"treshold": 1}}}, "unknown key 'treshold' (did you mean"),
    "a huge seed": ({"seeds": [99999999999999999999999]}, "seeds: a seed must be an integer in 0..2**63-1"),
    "seed 2**63": ({"seeds": [2**63]}, "seeds: a seed must be an integer in 0..2**63-1"),
    "a nested seed": ({"seeds": [[0]]}, "seeds: a seed must be an integer in 0..2**63-1, got [0]"),
    "nested measures": ({"compare": {"measures": [["cka"]]}}, "measures: must be a non-empty list of names"),
    "nested analysis arms": ({"analyses": {"weights": {"arms": [["a"]]}}}, "weights: arms: must be a list of arms"),
    "samples above the test subset": ({"compare": {"samples": 51}}, "samples: must be an integer in 1..50 (the test "
                                                                    "subset of the arms), got 51"),
}


@pytest.mark.parametrize("case", list(SPEC_VALUES))
def test_spec_values_are_checked_before_any_training(case: str, tmp_path: Path) -> None:
    values, message = SPEC_VALUES[case]
    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump({**COMMON, "arms": {"a": {}}, **values}, sort_keys=False))
    assert_refused(tmp_path, ["study", str(file), "--out", str(tmp_path / "out")], message)


def test_samples_at_most_the_test_set_without_subsets(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump({"arms": {"a": {}}, "compare": {"samples": 10001}}))
    assert_refused(tmp_path, ["study", str(file), "--out", str(tmp_path / "out")],
                   "samples: must be an integer in 1..10000 (the test set), got 10001")


COMMAND_OPTIONS = [
    (["sharpness", "RUN", "--k", "0"], "sharpness: --k must be an integer >= 1"),
    (["sharpness", "RUN", "--max-iter", "0"], "sharpness: --max-iter must be an integer >= 1"),
    (["sharpness", "RUN", "--tol", "nan"], "sharpness: --tol must be a number > 0 and <= 1, got nan"),
    (["sharpness", "RUN", "--k", "9", "--max-iter", "4"], "--k (9) may not exceed --max-iter (4)"),
    (["connect", "RUN", "RUN", "--points", "1"], "connectivity: --points must be an integer >= 2"),
    (["connectivity", "RUN", "RUN", "--images", "1"], "connectivity: --images must be an integer >= 2"),
    (["weights", "RUN", "--threshold", "-1"], "weights: --threshold must be a number > 0"),
    (["mistakes", "RUN", "RUN", "--limit", "-3"], "mistakes: --limit must be an integer >= 1"),
]


@pytest.mark.parametrize(("args", "message"), COMMAND_OPTIONS, ids=[" ".join(a) for a, _ in COMMAND_OPTIONS])
def test_analysis_commands_check_the_options_of_the_table_first(args: list[str], message: str,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_refused(tmp_path, [a.replace("RUN", str(tmp_path / "no-run")) for a in args] + ["--out", str(out)],
                   message)
    assert not out.exists()


def test_the_commands_take_their_defaults_and_help_from_the_table() -> None:
    import typer.main

    from minimascope.analyses import ANALYSES
    from minimascope.cli import app

    commands = {c.name: c for c in typer.main.get_command(app).commands.values()}
    for name in ("sharpness", "connectivity", "weights", "mistakes"):
        params = {p.name: p for p in commands[name].params}
        for option in ANALYSES[name].options.values():
            assert params[option.name].default == option.default, (name, option.name)
            assert params[option.name].help == option.help


# ----------------------------------------------------------------------------- tune


def test_tune_folds_at_most_the_images_per_class(tmp_path: Path) -> None:
    file = tmp_path / "grid.yaml"
    file.write_text(yaml.safe_dump({"defaults": {"train_subset": 20, "epochs": 1}, "folds": 3,
                                    "grid": {"optimizer": "sgd", "lr": [0.1]}}))
    out = tmp_path / "tune"
    assert_refused(tmp_path, ["tune", str(file), "--out", str(out)],
                   "folds: 3 folds need at least 3 training images of each class; train_subset 20 has 2")
    assert_refused(tmp_path, ["tune", str(file), "--folds", "5", "--out", str(out)], "folds: 5 folds need at least 5")
    assert not out.exists()


@pytest.mark.slow
def test_tune_prints_no_best_setting_when_none_was_written(cifar_source: str, tmp_path: Path) -> None:
    file = tmp_path / "grid.yaml"  # every fold diverges: no setting has a completed fold
    file.write_text(yaml.safe_dump({"defaults": {"train_subset": 40, "test_subset": 20, "epochs": 1,
                                                 "batch_size": 20, "eval_batch_size": 20, "device": "cpu"},
                                    "folds": 2, "grid": {"optimizer": "sgd", "lr": 1e38}}))
    result = invoke("tune", str(file), "--out", str(tmp_path / "tune"), "--data", cifar_source)
    assert result.exit_code == 3, result.output
    assert "no best setting: no fold completed, no best.yaml written" in result.output
    assert "\nbest setting:" not in result.output and not (tmp_path / "tune" / "best.yaml").exists()


# ----------------------------------------------------------------------------- markers


def test_a_completed_run_without_its_weights_is_named(small, cifar_source: str, tmp_path: Path) -> None:
    study = copy_of(small, tmp_path)
    (study / "runs/a/seed0" / runs.FINAL_WEIGHTS).unlink()
    before = snapshot(tmp_path)
    assert_one_line_error(rerun(small, study, cifar_source),
                          f"run:a:seed0: {study / 'runs/a/seed0'} says completed but has no final.pt")
    assert snapshot(tmp_path) == before


def test_a_run_json_whose_config_was_edited_is_named(small, cifar_source: str, tmp_path: Path) -> None:
    study = copy_of(small, tmp_path)
    path = study / "runs/b/seed0" / runs.RUN_JSON
    record = json.loads(path.read_text())
    record["config"]["lr"] = 0.5
    io.atomic_write_json(path, record)
    before = snapshot(tmp_path)
    assert_one_line_error(rerun(small, study, cifar_source), "holds another config than its key says "
                                                             "(differs in: lr)")
    assert snapshot(tmp_path) == before


def test_an_analysis_whose_result_is_gone_is_recomputed(small, cifar_source: str, tmp_path: Path) -> None:
    study = copy_of(small, tmp_path)
    result_file = study / "analyses/weights/a/seed0/weights.json"
    expected = json.loads(result_file.read_text())
    result_file.unlink()
    run_stamps = {p: p.stat().st_mtime_ns for p in (study / "runs").rglob("*") if p.is_file()}
    result = rerun(small, study, cifar_source)
    assert result.exit_code == 0, result.output
    assert json.loads(result_file.read_text()) == expected
    assert {p: p.stat().st_mtime_ns for p in (study / "runs").rglob("*") if p.is_file()} == run_stamps


def test_a_garbage_metrics_row_is_named_and_the_rest_written(small, cifar_source: str, tmp_path: Path) -> None:
    study = copy_of(small, tmp_path)
    metrics = study / "runs/a/seed0" / runs.METRICS_CSV
    metrics.write_bytes(metrics.read_bytes() + b"\x00\xff garbage,,\n")
    result = rerun(small, study, cifar_source)
    assert "Traceback" not in result.output
    assert f"the metrics of run:a:seed0 are left empty: {metrics}" in " ".join(result.output.split())
    summary = (study / "summary.csv").read_text().splitlines()
    assert summary[1].startswith("a,0,sgd,random,1;1;1,1,completed,,") and summary[2].startswith("b,0,")


# ----------------------------------------------------------------------------- display


def test_status_prints_names_literally_and_a_killed_study_as_interrupted(small, tmp_path: Path) -> None:
    study = copy_of(small, tmp_path)
    record = json.loads((study / STUDY_JSON).read_text())
    record["nodes"][0].update(status="running", reason="[red]boom[/red] :smile:")
    io.atomic_write_json(study / STUDY_JSON, record)
    result = CliRunner().invoke(app, ["status", str(study)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "[red]boom[/red] :smile:" in result.output and "😄" not in result.output
    assert "interrupted" in result.output and "1 interrupted" in result.output
    with io.locked(study, "study directory"):  # a driver that is alive holds the lock
        alive = invoke("status", str(study))
    assert "1 running" in alive.output and "interrupted" not in alive.output


def test_node_lines_print_names_literally() -> None:
    from minimascope.cli.study import node_line

    console = Console(record=True, emoji=False, width=200)
    console.print(node_line({"status": "failed", "id": "run:a:seed0", "reason": "[bold]x[/bold] :smile:"}))
    assert "run:a:seed0  ([bold]x[/bold] :smile:)" in console.export_text()


def test_a_terminated_ray_driver_leaves_through_its_finally_blocks() -> None:
    pytest.importorskip("ray")
    from minimascope.study.executors.ray import _exit_on_termination

    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info, _exit_on_termination():
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next statement
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is handler
