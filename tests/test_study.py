"""The study end to end on the tiny preset: the study directory, keys, resume after SIGKILL, Ray,
a changed arm, a diverged arm, missing ImageNet weights, and one-line study-file errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from helpers import TINY_NODES, assert_one_line_error
from minimascope import io, models, runs
from minimascope.cli import app
from minimascope.errors import MinimascopeError
from minimascope.study import exit_status, run_study
from minimascope.study.graph import Node, topological_order
from minimascope.study.kinds import kind
from minimascope.study.records import SUMMARY_COLUMNS, result
from minimascope.study.spec import load_spec, preset_path
from minimascope.study.state import remaining_seconds
from minimascope.train import run_key

SRC = Path(__file__).resolve().parents[1] / "src"
TINY_ARMS = ["sgd", "adahessian", "sgd-pretrained", "adahessian-pretrained", "adahessian-then-sgd",
             "sgd-then-adahessian", "sgd-scaled-input", "sgd-scaled-normalize", "adahessian-scaled-input",
             "adahessian-scaled-normalize"]


def measure_files(comparison_dir: Path) -> list[str]:
    """A comparison's result files, one per measure (all its JSON but the comparison's own record)."""
    return sorted(p.name for p in comparison_dir.glob("*.json") if p.name not in ("comparison.json", "node.json"))


def nodes_of(study_dir: Path) -> dict[str, dict]:
    return {n["id"]: n for n in json.loads((study_dir / "study.json").read_text())["nodes"]}


def file_stamps(root: Path) -> dict[str, tuple[int, int]]:
    """Every result file's (mtime, size); the study's own lock file records its latest holder, so it is left out."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))
            if p.is_file() and p != root / io.LOCK_FILE}


def assert_same_results(study_a: Path, study_b: Path, node_ids: list[str] | None = None) -> None:
    """Identical final metrics and final weights of every run, identical comparison matrices."""
    nodes_a, nodes_b = nodes_of(study_a), nodes_of(study_b)
    for node_id in node_ids or list(nodes_a):
        a, b = nodes_a[node_id], nodes_b[node_id]
        assert a["key"] == b["key"] and a["status"] == b["status"] == "completed", (a, b)
        if a["kind"] == "run":
            assert a["final"] == b["final"], node_id
            weights_a = models.read_weights(study_a / a["path"])["state_dict"]
            weights_b = models.read_weights(study_b / b["path"])["state_dict"]
            assert weights_a.keys() == weights_b.keys()
            assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), node_id
        elif a["kind"] == "compare":
            measures = measure_files(study_a / a["path"])
            assert measures and measures == measure_files(study_b / b["path"]), node_id
            for measure in measures:
                matrix_a = json.loads((study_a / a["path"] / measure).read_text())
                matrix_b = json.loads((study_b / b["path"] / measure).read_text())
                assert matrix_a["values"] == matrix_b["values"], (node_id, measure)
        else:  # an analysis: its result file, all but the settings (which name the study's paths)
            result_a, result_b = (json.loads((study / n["path"] / f"{n['kind']}.json").read_text())
                                  for study, n in ((study_a, a), (study_b, b)))
            result_a.pop("settings", None), result_b.pop("settings", None)
            assert result_a == result_b, node_id


@pytest.mark.slow
def test_tiny_study_writes_the_study_directory(tiny_study: Path, cifar_source: str) -> None:
    record = json.loads((tiny_study / "study.json").read_text())
    assert record["format"] == "minimascope-study-v1" and record["name"] == "tiny"
    assert record["source"] == "preset:tiny" and record["seeds"] == [0] and record["wall_time_s"] > 0
    assert record["data"]["source"] == str(Path(cifar_source).resolve()) and record["data"]["train_size"] == 200
    assert record["device"]["type"] == "cpu" and record["versions"]["torch"].startswith("2.14.1")
    assert list(record["arms"]) == TINY_ARMS
    assert record["arms"]["adahessian-then-sgd"]["init_from"] == "adahessian"
    assert record["arms"]["adahessian"]["lr"] == 0.15 and record["arms"]["sgd"]["momentum"] == 0.95
    assert record["compare"]["samples"] == 100 and record["compare"]["within"] == ["sgd", "adahessian"]
    nodes = {n["id"]: n for n in record["nodes"]}
    assert len(nodes) == TINY_NODES
    then = nodes["run:adahessian-then-sgd:seed0"]
    assert then["depends_on"] == ["run:adahessian:seed0"] and then["path"] == "runs/adahessian-then-sgd/seed0"
    assert 0 <= then["final"]["test_accuracy"] <= 1 and then["time_s"] > 0 and then["reason"] is None
    within = nodes["compare:sgd:sgd:seed0"]
    assert within["arms"] == ["sgd", "sgd"] and within["path"] == "comparisons/sgd_vs_sgd/seed0"
    files = {"compare": ("cka.json", "svcca.json", "procrustes.json"), "run": ("run.json", "final.pt"),
             **{kind: (f"{kind}.json",) for kind in ("sharpness", "weights", "connectivity", "mistakes")}}
    for node in record["nodes"]:
        for name in files[node["kind"]]:
            assert (tiny_study / node["path"] / name).is_file(), (node["id"], name)
    assert Counter(n["kind"] for n in record["nodes"]) == {
        "run": 10, "compare": 6, "weights": 4, "connectivity": 3, "mistakes": 3, "sharpness": 2}
    rows = list(csv.DictReader((tiny_study / "summary.csv").open()))
    assert tuple(rows[0]) == SUMMARY_COLUMNS and [r["arm"] for r in rows] == TINY_ARMS
    by_arm = {r["arm"]: r for r in rows}
    assert by_arm["sgd-scaled-input"]["std_multiplier"] == "0.0001;1;1000"
    assert by_arm["adahessian-scaled-normalize"]["std_multiplier"] == "10000;1;0.001"
    assert [by_arm[a]["init"] for a in ("sgd", "sgd-pretrained", "sgd-then-adahessian")] == \
        ["random", "imagenet", "run:sgd"]
    assert float(by_arm["sgd"]["test_accuracy"]) == nodes["run:sgd:seed0"]["final"]["test_accuracy"]
    assert float(by_arm["adahessian"]["epoch_time_mean_s"]) > 0 and float(by_arm["sgd"]["step_time_mean_s"]) > 0
    # study.yaml is the resolved study: a study file giving the same nodes
    assert load_spec(tiny_study / "study.yaml").resolved() == load_spec("tiny").resolved()


@pytest.mark.slow
def test_node_keys_are_what_train_computes(tiny_study: Path) -> None:
    """Keys computed from the study file alone equal train.run_key of the configs as run (whose
    init_from is the upstream run's directory, read for its key)."""
    from minimascope.config import TrainConfig

    for node in nodes_of(tiny_study).values():
        if node["kind"] == "run":
            stored = runs.read_run_json(tiny_study / node["path"])
            assert stored["key"] == node["key"] == run_key(TrainConfig.from_mapping(stored["config"]))
    settings = Node("c", "compare", "x", {"settings": {"samples": 100}})
    assert kind("compare").key(settings, ["k1", "k2"]) != kind("compare").key(settings, ["k1", "k3"])


@pytest.mark.slow
def test_a_second_invocation_recomputes_nothing(tiny_study: Path, cifar_source: str, imagenet_file: str) -> None:
    before = {k: v for k, v in file_stamps(tiny_study).items() if k.startswith(("runs/", "comparisons/"))}
    outcome = run_study("tiny", tiny_study, data=cifar_source, weights=imagenet_file)
    assert outcome.counts == {"completed": TINY_NODES}
    after = {k: v for k, v in file_stamps(tiny_study).items() if k.startswith(("runs/", "comparisons/"))}
    assert after == before


@pytest.mark.slow
def test_status_prints_every_node(tiny_study: Path) -> None:
    result_ = CliRunner().invoke(app, ["status", str(tiny_study)], env={"COLUMNS": "200"})
    assert result_.exit_code == 0, result_.output
    assert "run:adahessian-then-sgd:seed0" in result_.output and f"{TINY_NODES} completed" in result_.output


@pytest.mark.slow
def test_a_changed_arm_is_refused(tiny_study: Path, cifar_source: str, imagenet_file: str, tmp_path: Path) -> None:
    values = yaml.safe_load(preset_path("tiny").read_text())
    values["arms"]["sgd"]["lr"] = 0.02
    changed = tmp_path / "tiny.yaml"
    changed.write_text(yaml.safe_dump(values))
    before = file_stamps(tiny_study)
    result_ = CliRunner().invoke(app, ["study", str(changed), "--out", str(tiny_study), "--data", cifar_source,
                                       "--weights", imagenet_file], env={"COLUMNS": "400"})
    assert_one_line_error(result_, "arm 'sgd' changed")
    old_key = nodes_of(tiny_study)["run:sgd:seed0"]["key"]
    assert old_key in result_.output and "differs in: lr" in result_.output
    assert file_stamps(tiny_study) == before  # nothing overwritten, not even study.json


def small_study(path: Path, arms: dict, pairs: list | str, analyses: dict | None = None,
                seeds: tuple[int, ...] = (0,), within: bool | list[str] = False) -> Path:
    values = {"defaults": {"epochs": 2, "train_subset": 100, "test_subset": 50, "eval_batch_size": 50},
              "seeds": list(seeds), "arms": arms, "compare": {"measures": ["cka"], "samples": 50, "pairs": pairs,
                                                        "within": within}}
    if analyses:
        values["analyses"] = analyses
    path.write_text(yaml.safe_dump(values, sort_keys=False))  # arms run in the file's order
    return path


@pytest.fixture(scope="module")
def straight_small_study(tmp_path_factory: pytest.TempPathFactory, cifar_source: str, cache: str) -> tuple[Path, Path]:
    """(study file, the study run straight through): a run, a run a test kills, a run started from that one,
    their comparisons and analyses."""
    root = tmp_path_factory.mktemp("small-study")
    file = small_study(root / "small.yaml", {
        "sgd": {"optimizer": "sgd"},
        "adahessian": {"optimizer": "adahessian", "epochs": 4, "batch_size": 50},  # killed in: 2 steps an epoch
        "then": {"optimizer": "sgd", "init_from": "adahessian"}}, [["sgd", "adahessian"], ["then", "adahessian"]],
        analyses={"weights": True, "mistakes": True})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINIMASCOPE_CACHE", cache)
        straight = run_study(file, root / "straight", data=cifar_source)
    assert straight.counts == {"completed": 10}, straight.records
    return file, root / "straight"


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_results(straight_small_study: tuple[Path, Path], cifar_source: str,
                                                  cache: str, tmp_path: Path) -> None:
    """The small study killed with SIGKILL and run again equals the same study run straight through."""
    file, straight = straight_small_study
    study_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(SRC), "MINIMASCOPE_CACHE": cache}
    process = subprocess.Popen(
        [sys.executable, "-m", "minimascope.cli", "study", str(file), "--out", str(study_dir), "--data", cifar_source],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    interrupted = study_dir / "runs/adahessian/seed0"
    deadline = time.monotonic() + 300
    try:  # kill once the first run has completed and the second has a checkpoint (epoch 1 of 4)
        while not (runs.is_completed(study_dir / "runs/sgd/seed0") and (interrupted / runs.CHECKPOINT).is_file()):
            assert process.poll() is None and time.monotonic() < deadline, "the study ended before it was killed"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not runs.is_completed(interrupted)
    first = file_stamps(study_dir / "runs/sgd/seed0")
    record = json.loads((study_dir / "study.json").read_text())
    assert {n["id"]: n["status"] for n in record["nodes"]}["run:sgd:seed0"] == "completed"
    outcome = run_study(file, study_dir, data=cifar_source)
    assert outcome.counts == {"completed": 10}
    assert file_stamps(study_dir / "runs/sgd/seed0") == first  # not recomputed
    assert [int(r["epoch"]) for r in runs.read_metrics(interrupted)] == [1, 2, 3, 4]  # resumed, not restarted
    assert_same_results(straight, study_dir)


@pytest.mark.slow
def test_ray_study_gives_the_local_results(straight_small_study: tuple[Path, Path], cifar_source: str,
                                          tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    file, straight = straight_small_study
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:  # a node holds both CPUs: nodes run one at a time, with the local study's thread count
        outcome = run_study(file, tmp_path / "ray", data=cifar_source, executor="ray",
                            executor_options={"cpus_per_run": 2, "threads": torch.get_num_threads()})
    finally:
        ray.shutdown()
    assert outcome.counts == {"completed": 10}, outcome.records
    assert_same_results(straight, tmp_path / "ray")


@pytest.mark.slow
def test_a_diverged_arm_skips_its_dependants_only(cifar_source: str, tmp_path: Path) -> None:
    file = small_study(tmp_path / "diverge.yaml", {
        "exploding": {"optimizer": "sgd", "lr": 1e38},  # the first step leaves weights whose loss is not finite
        "after": {"optimizer": "sgd", "init_from": "exploding"},
        "plain": {"optimizer": "sgd", "epochs": 1}}, [["exploding", "plain"]])
    result_ = CliRunner().invoke(app, ["study", str(file), "--out", str(tmp_path / "s"), "--data", cifar_source])
    assert result_.exit_code == 3, result_.output
    nodes = nodes_of(tmp_path / "s")
    exploding = nodes["run:exploding:seed0"]
    # the first step leaves non-finite weights, so epoch 1's test loss is not finite
    assert exploding["status"] == "diverged" and exploding["diverged_epoch"] == 1
    assert nodes["run:after:seed0"]["status"] == "skipped"
    assert nodes["run:after:seed0"]["reason"] == "needs run:exploding:seed0, which diverged at epoch 1"
    assert nodes["compare:exploding:plain:seed0"]["status"] == "skipped"
    assert nodes["run:plain:seed0"]["status"] == "completed"
    rows = {r["arm"]: r for r in csv.DictReader((tmp_path / "s" / "summary.csv").open())}
    assert rows["exploding"]["status"] == "diverged" and rows["exploding"]["test_accuracy"] == ""


@pytest.mark.slow
def test_missing_imagenet_weights_skip_the_pretrained_arms_only(cifar_source: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINIMASCOPE_IMAGENET_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached download either
    file = small_study(tmp_path / "weights.yaml", {
        "sgd": {"optimizer": "sgd", "epochs": 1},
        "sgd-pretrained": {"optimizer": "sgd", "pretrained": True},
        "then": {"optimizer": "sgd", "init_from": "sgd-pretrained"}}, [["sgd", "sgd-pretrained"]])
    result_ = CliRunner().invoke(app, ["study", str(file), "--out", str(tmp_path / "s"), "--data", cifar_source,
                                       "--no-download-weights"])
    assert result_.exit_code == 0, result_.output  # skipped nodes are listed, not an error
    nodes = nodes_of(tmp_path / "s")
    assert nodes["run:sgd:seed0"]["status"] == "completed"
    assert nodes["run:sgd-pretrained:seed0"]["status"] == "skipped"
    assert "no ImageNet weights" in nodes["run:sgd-pretrained:seed0"]["reason"]
    assert nodes["run:then:seed0"]["reason"].startswith("needs run:sgd-pretrained:seed0, which was skipped")
    assert nodes["compare:sgd:sgd-pretrained:seed0"]["status"] == "skipped"
    assert not (tmp_path / "s/runs/sgd-pretrained").exists()


STUDY_ERRORS = {
    "unknown key": ("seeds: [0]\narms: {sgd: {optimizer: sgd, learning_rate: 0.1}}\n",
                    "arm 'sgd': unknown key 'learning_rate'"),
    "unknown top-level key": ("seed: [0]\narms: {sgd: {}}\n", "unknown key 'seed' (did you mean 'seeds'?)"),
    "unknown arm in init_from": ("arms: {sgd: {}, then: {init_from: sdg}}\n",
                                 "arm 'then': init_from: unknown arm 'sdg'"),
    "dependency cycle": ("arms: {a: {init_from: b}, b: {init_from: a}}\n", "dependency cycle: a -> b -> a"),
    "unknown optimizer": ("arms: {sgd: {optimizer: lion}}\n", "arm 'sgd': optimizer: unknown 'lion'"),
    "bad value type": ("arms: {sgd: {epochs: many}}\n", "arm 'sgd': epochs must be an int"),
    "bad default type": ("defaults: {lr: fast}\narms: {sgd: {}}\n", "defaults: lr must be a float"),
    "bad seeds": ("seeds: 3\narms: {sgd: {}}\n", "seeds: must be a non-empty list"),
    "seed in an arm": ("arms: {sgd: {seed: 3}}\n", "arm 'sgd': seed is not a study-file key"),
    "unknown pair arm": ("arms: {sgd: {}}\ncompare: {pairs: [[sgd, adam]]}\n", "pairs: unknown arm 'adam'"),
    "unknown measure": ("arms: {sgd: {}}\ncompare: {measures: [cosine]}\n", "measures: unknown 'cosine'"),
    "empty file": ("", "is empty"),
    "non-mapping file": ("- sgd\n- adahessian\n", "must hold a mapping"),
}


@pytest.mark.parametrize("case", list(STUDY_ERRORS))
def test_study_file_errors_are_one_line(case: str, tmp_path: Path) -> None:
    text, message = STUDY_ERRORS[case]
    file = tmp_path / "study.yaml"
    file.write_text(text)
    result_ = CliRunner().invoke(app, ["study", str(file), "--out", str(tmp_path / "out")], env={"COLUMNS": "300"})
    assert_one_line_error(result_, message)
    assert str(file) in result_.output or case in ("empty file", "non-mapping file")
    assert not (tmp_path / "out").exists()


def test_unknown_preset_is_one_line(tmp_path: Path) -> None:
    result_ = CliRunner().invoke(app, ["study", "quik", "--out", str(tmp_path / "out")], env={"COLUMNS": "300"})
    assert_one_line_error(result_, "no study file quik and no preset of that name; presets: paper, quick, tiny")


def test_presets_are_valid_and_share_the_paper_arms() -> None:
    paper, quick, tiny = (load_spec(name) for name in ("paper", "quick", "tiny"))
    assert list(paper.arms) == list(tiny.arms) == TINY_ARMS
    # quick: one reading of the distorted normalisation (scaled-input) pays for its third seed
    assert list(quick.arms) == [arm for arm in TINY_ARMS if not arm.endswith("scaled-normalize")]
    assert paper.seeds == (0, 1, 2) and len(quick.seeds) == 3 and tiny.seeds == (0,)
    assert "svcca" not in quick.compare.measures and "cka_debiased" in quick.compare.measures
    for name, arm in paper.arms.items():  # hyperparameters from config.PAPER_DEFAULTS, not repeated
        config = arm.config(0)
        assert (config.lr, config.epochs) == ((0.01, 360) if config.optimizer == "sgd" else (0.15, 160)), name
        assert config.train_subset is None and config.batch_size == 256 and config.weight_decay == 5e-4
    assert paper.compare.pairs == "all" and paper.compare.within is True and paper.compare.samples == 10_000
    assert paper.arms["sgd-scaled-input"].options["std_multiplier"] == (1e-4, 1.0, 1000.0)
    assert paper.arms["sgd-scaled-normalize"].options["std_multiplier"] == (1e4, 1.0, 1e-3)


def test_topological_order_and_cycles() -> None:
    assert topological_order({"c": ["b"], "a": [], "b": ["a"]}) == ["a", "b", "c"]
    with pytest.raises(MinimascopeError, match="dependency cycle: x -> y -> z -> x"):
        topological_order({"x": ["y"], "y": ["z"], "z": ["x"]})


def test_remaining_time_scales_finished_epochs_by_optimizer() -> None:
    def run(name: str, optimizer: str, epochs: int) -> Node:
        return Node(name, "run", name, {"config": {"optimizer": optimizer, "epochs": epochs}})

    nodes = [run("a", "sgd", 2), run("b", "sgd", 4), run("c", "adahessian", 3), Node("d", "compare", "d", {})]
    records = {"a": {**result("completed"), "time_s": 10.0, "timed": True}, "b": result("running"),
               "c": result("pending"), "d": result("pending")}
    # sgd: 5 s per epoch; b has 3 epochs left; c has no adahessian rate yet: the sgd rate; d unknown
    assert remaining_seconds(nodes, records, {"b": 1}) == pytest.approx(5 * 3 + 5 * 3)
    assert remaining_seconds(nodes, {k: result("pending") for k in records}, {}) is None


def test_exit_status_says_whether_everything_completed() -> None:
    assert exit_status({"completed": 3}) == 0
    assert exit_status({"completed": 3, "skipped": 1}) == 0 and exit_status({"diverged": 1, "skipped": 1}) == 3
    assert exit_status({"completed": 3, "failed": 1, "skipped": 2}) == 1


def test_a_study_directory_is_read_back_or_refused(tmp_path: Path) -> None:
    from minimascope.study import read_study_record

    with pytest.raises(MinimascopeError, match="not a study directory"):
        read_study_record(tmp_path)
    shutil.copy(preset_path("tiny"), tmp_path / "study.json")
    with pytest.raises(MinimascopeError, match="broken study.json"):
        read_study_record(tmp_path)


def test_unknown_executor_is_one_line(tmp_path: Path) -> None:
    result_ = CliRunner().invoke(app, ["study", "tiny", "--executor", "slurm", "--out", str(tmp_path / "out")])
    assert_one_line_error(result_, "unknown executor 'slurm'; choose local or ray")
    assert not (tmp_path / "out").exists()


def test_missing_ray_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from minimascope.study.executors import load_executor

    monkeypatch.delitem(sys.modules, "minimascope.study.executors.ray", raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(MinimascopeError, match=r"^--executor ray needs Ray: pip install 'minimascope\[ray\]'$"):
        load_executor("ray")


def keyed_study(tmp_path: Path, seeds: tuple[int, ...]) -> dict[str, Node]:
    """The nodes of a fixed four-arm study on torchvision's CIFAR-10 (a data key that needs no file)."""
    from minimascope.study.plan import study_nodes

    file = small_study(tmp_path / "keyed.yaml", {
        "sgd": {"optimizer": "sgd"}, "adahessian": {"optimizer": "adahessian"},
        "then": {"optimizer": "sgd", "init_from": "adahessian"},
        "scaled": {"optimizer": "sgd", "std_multiplier": [1.0e-4, 1, 1000]}}, "all", analyses={
        "sharpness": {"images": 16, "arms": ["sgd"]}, "weights": True, "connectivity": {"points": 3},
        "mistakes": True, "across_seeds": ["sgd", "adahessian"]}, seeds=seeds, within=["sgd"])
    return {node.id: node for node in study_nodes(load_spec(file), "torchvision", None, None)}


def test_node_keys_stay_what_earlier_versions_computed(tmp_path: Path) -> None:
    """A study run by an earlier minimascope resumes without recomputing: its keys are pinned. They changed
    on purpose when `data_seed` joined the options (a seed no longer draws the training subset, so a run of
    seed 1 trains on other images than before), and the keys of sharpness and connectivity when their training
    images became those the runs were trained on (version 2 of their rows)."""
    nodes = keyed_study(tmp_path, (0, 1))
    assert {i: nodes[i].key for i in ("run:sgd:seed0", "run:then:seed1", "compare:sgd:adahessian:seed0",
                                      "compare:sgd:sgd:seed0-seed1", "sharpness:sgd:seed0",
                                      "connectivity:sgd:adahessian:seed0")} == {
        "run:sgd:seed0": "141804c9da5fd6fb", "run:then:seed1": "f0a7280fcccd949c",
        "compare:sgd:adahessian:seed0": "e822456814815791", "compare:sgd:sgd:seed0-seed1": "d2510cf9e3a425fb",
        "sharpness:sgd:seed0": "e7fc00feaa6ad5be", "connectivity:sgd:adahessian:seed0": "e2ae64689b20ddc0"}
    assert "connectivity:sgd:scaled:seed0" not in nodes and "mistakes:sgd:scaled:seed0" in nodes  # same_inputs


def test_an_analysis_of_a_pair_of_arms_is_planned_and_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PER_ARM_PAIR row (here a fake one): one node per compared pair of different arms holding an
    arm compared across seeds, given every seed's comparisons, runs and sharpness; run with absolute paths."""
    import types

    from minimascope import analyses
    from minimascope.study import kinds

    def fake_of_pair(inputs: dict, out_dir: Path, study_node: bool = False) -> None:
        io.atomic_write_json(out_dir / "fake.json", {"paths": [str(r["path"]) for r in inputs["runs"]]})

    monkeypatch.setitem(sys.modules, "fake_arm_pair", types.SimpleNamespace(fake_of_pair=fake_of_pair))
    monkeypatch.setitem(analyses.ANALYSES, "fake", analyses.AnalysisInfo(
        "fake", analyses.PER_ARM_PAIR, "fake_arm_pair", "fake_of_pair", "read", "fake.json", {}))
    monkeypatch.setitem(kinds.KINDS, "fake", kinds.AnalysisKind("fake"))
    assert not [i for i in keyed_study(tmp_path, (0,)) if i.startswith("fake:")]  # one seed: no spread to test
    nodes = keyed_study(tmp_path, (0, 1))
    assert sorted(i for i in nodes if i.startswith("fake:")) == [
        "fake:adahessian:scaled", "fake:adahessian:then", "fake:sgd:adahessian", "fake:sgd:scaled", "fake:sgd:then"]
    node = nodes["fake:sgd:adahessian"]
    inputs, arms = node.params["inputs"], ["sgd", "adahessian"]
    assert (node.path, node.labels, inputs["arms"]) == ("analyses/fake/sgd_vs_adahessian", {"arms": arms}, arms)
    assert inputs["across"] == [{"seed": s, "path": f"comparisons/sgd_vs_adahessian/seed{s}"} for s in (0, 1)]
    assert inputs["within"] == [{"arm": a, "seeds": [0, 1], "path": f"comparisons/{a}_vs_{a}/seed0-seed1"}
                                for a in arms]
    assert inputs["runs"] == [{"arm": a, "seed": s, "path": f"runs/{a}/seed{s}"} for a in arms for s in (0, 1)]
    assert inputs["sharpness"] == [{"arm": "sgd", "seed": s, "path": f"analyses/sharpness/sgd/seed{s}"} for s in (0, 1)]
    assert node.depends_on == ("compare:sgd:adahessian:seed0", "compare:sgd:adahessian:seed1",
                               "compare:sgd:sgd:seed0-seed1", "compare:adahessian:adahessian:seed0-seed1",
                               *(f"run:{a}:seed{s}" for a in arms for s in (0, 1)), "sharpness:sgd:seed0",
                               "sharpness:sgd:seed1")
    assert node.params["options"] == {} and node.key and nodes["fake:sgd:then"].key != node.key
    assert kind("fake").run(node, tmp_path, lambda *event: None)["status"] == "completed"
    out = tmp_path / node.path
    assert json.loads((out / "fake.json").read_text())["paths"][0] == str(tmp_path / "runs/sgd/seed0")
    assert kind("fake").stored(out) == {**result("completed"), "key": node.key}


def test_the_package_imports_one_way() -> None:
    """No import cycle in the package: every ``import minimascope...`` and ``from minimascope... import``,
    at module or function level, is an edge (``from minimascope import X`` with X no module: the ``__init__``);
    imports under ``if TYPE_CHECKING:`` never run and are not edges."""
    import ast

    paths = {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (SRC / "minimascope").rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in paths.items():
        edges[name] = set()
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                       for statement in block.body for n in ast.walk(statement)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in typing_only:
                assert not getattr(node, "level", 0), f"{path}: a relative import"
                module = getattr(node, "module", None)
                for target in (f"{module}.{a.name}" if module else a.name for a in node.names):
                    while target and target not in paths:  # a name in a module, or a module outside the package
                        target = target.rpartition(".")[0]
                    edges[name] |= {target} - {"", name}
    assert {"minimascope.study.kinds", "minimascope.analyses"} <= edges["minimascope.study.plan"]
    assert edges["minimascope.study.graph"] == {"minimascope.errors"}
    try:
        topological_order({name: sorted(imported) for name, imported in edges.items()})
    except MinimascopeError as exc:
        pytest.fail(f"import {exc}")


def test_two_seeds_of_an_arm_compared_across_seeds_get_a_path_and_their_mistakes(tmp_path: Path) -> None:
    """Networks of two seeds of one arm start from different inits: the pair weight matching has work to do,
    and the seed-to-seed baseline of a barrier and of shared mistakes (every run sees the same test images)."""
    nodes = keyed_study(tmp_path, (0, 1))
    for name in ("connectivity", "mistakes"):
        node = nodes[f"{name}:sgd:sgd:seed0-seed1"]
        assert node.path == f"analyses/{name}/sgd_vs_sgd/seed0-seed1" and node.labels == {
            "arms": ["sgd", "sgd"], "seeds": [0, 1]}
        assert node.params["run_paths"] == ["runs/sgd/seed0", "runs/sgd/seed1"]
        assert node.depends_on == ("run:sgd:seed0", "run:sgd:seed1")
    assert {i for i in nodes if ":seed0-seed1" in i and i.split(":")[0] in ("connectivity", "mistakes")} == {
        f"{k}:{a}:{a}:seed0-seed1" for k in ("connectivity", "mistakes") for a in ("sgd", "adahessian")}
    assert not [i for i in keyed_study(tmp_path, (0,)) if "-seed" in i]
