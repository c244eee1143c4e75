"""A study whose arms are any optimizers (issue 19), through the command line: sgd, adamw, SAM around SGD,
Muon and an optimizer class by import path (torch.optim:RAdam) train, compare and are described, and the
report is written for those arm names and renders in chromium; and the `optimizers` preset is a valid
study of the five."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import invoke
from minimascope import runs
from minimascope.study.spec import load_spec, preset_path
from test_report_browser import check_report_in_browser

ARMS = {"sgd": {"optimizer": "sgd"}, "adamw": {"optimizer": "adamw"},
        "sam": {"optimizer": "sam", "optimizer_args": {"base": "sgd", "rho": 0.05}},
        "muon": {"optimizer": "muon"}, "radam": {"optimizer": "torch.optim:RAdam"}}


@pytest.mark.slow
def test_a_study_of_five_optimizers_runs_and_reports(cifar_source: str, tmp_path: Path) -> None:
    """The tiny preset's sizes, one epoch of one step: every arm trains, each pair with sgd is compared, and
    the report is written (the analyses do not depend on the optimizer: other tests run them)."""
    file = tmp_path / "optimizers.yaml"
    file.write_text(yaml.safe_dump({
        "defaults": {"epochs": 1, "train_subset": 200, "test_subset": 100, "eval_batch_size": 100},
        "seeds": [0], "arms": ARMS,
        "compare": {"measures": ["cka"], "samples": 100, "pairs": [["sgd", arm] for arm in ARMS if arm != "sgd"],
                    "within": False}}, sort_keys=False))
    study = tmp_path / "study"
    result = invoke("study", str(file), "--out", str(study), "--data", cifar_source)
    assert result.exit_code == 0, result.output
    for arm, options in ARMS.items():
        record = runs.read_run_json(study / "runs" / arm / "seed0")
        assert record["status"] == "completed" and record["optimizer"]["name"] == options["optimizer"], arm
    assert runs.read_run_json(study / "runs" / "sam" / "seed0")["optimizer"]["hyperparameters"]["rho"] == 0.05
    split = runs.read_run_json(study / "runs" / "muon" / "seed0")["optimizer"]["split"]
    assert "fc.weight" in split["adamw"] and "layer4.1.conv2.weight" in split["muon"]
    nodes = json.loads((study / "study.json").read_text())["nodes"]
    statuses = {n["id"]: n["status"] for n in (nodes.values() if isinstance(nodes, dict) else nodes)}
    assert set(statuses.values()) == {"completed"}, statuses
    result = invoke("report", str(study))
    assert result.exit_code == 0, result.output
    page = (study / "report" / "index.html").read_text()
    assert all(arm in page for arm in ARMS)
    check_report_in_browser(study / "report" / "index.html", tmp_path / "optimizers-report.png")


def test_the_optimizers_preset_compares_five_optimizers_over_seeds() -> None:
    spec = load_spec(preset_path("optimizers"))
    assert list(spec.arms) == ["sgd", "adamw", "sam", "muon", "adahessian"] and len(spec.seeds) >= 3
    configs = {name: arm.config(0) for name, arm in spec.arms.items()}
    assert configs["sam"].optimizer_args == {"base": "sgd", "rho": 0.05}
    assert len({(c.train_subset, c.batch_size, c.epochs, c.augment) for c in configs.values()}) == 1  # one budget
    pairs = spec.compare.pair_list(list(spec.arms))
    assert {b for a, b in pairs if a == "sgd"} == set(spec.arms) - {"sgd"}
    assert all("sgd" in pair for pair in pairs) and spec.analyses.across_seeds == ("sgd",)  # seed statistics of each
