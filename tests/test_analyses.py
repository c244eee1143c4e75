"""The table of analyses: every row's module, function and reader exist; its options are keyword
parameters of its function (a renamed option fails here); and its reader reads back what its function
wrote, for every row, on runs made here (a random ResNet18 and its predictions, on a small synthetic
CIFAR-10) with options that keep each analysis to seconds."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_archive, make_image_tree
from minimascope import data, models
from minimascope.analyses import ANALYSES, PER_ARM_PAIR, PER_PAIR, PER_RUN, PER_TRIPLE, AnalysisInfo, analysis
from minimascope.compare import write_similarity
from minimascope.errors import MinimascopeError
from minimascope.io import atomic_torch_save, atomic_write_json
from minimascope.runs import FINAL_WEIGHTS, INITIAL_WEIGHTS, PREDICTIONS, PREDICTIONS_FORMAT, RUN_FORMAT, RUN_JSON
from minimascope.similarity import SimilarityMatrix

pytestmark = pytest.mark.usefixtures("one_thread")

INPUTS = {PER_RUN: 1, PER_PAIR: 2, PER_TRIPLE: 3, PER_ARM_PAIR: 1}  # positional inputs before out_dir
# Per row: options that make it cheap (every one a row option, so these also exercise the table's names).
CHEAP_OPTIONS = {
    "sharpness": {"images": 10, "k": 1, "tol": 0.5, "max_iter": 2, "rel_error": 0.5, "max_probes": 2,
                  "density_steps": 2},
    "weights": {"threshold": 1e-2},
    "connectivity": {"points": 2, "images": 10, "align": False},
    "mistakes": {"limit": 4},
    "seeds": {},
    "landscape": {"grid": 3, "images": 20, "dims": 1},
    "landscape-plane": {"grid": 3, "images": 20},
}


def test_the_table_is_what_the_tests_below_cover() -> None:
    assert set(CHEAP_OPTIONS) == set(ANALYSES)
    assert all(name == row.name for name, row in ANALYSES.items())
    with pytest.raises(MinimascopeError, match="unknown analysis 'hessian'; known: sharpness"):
        analysis("hessian")


@pytest.mark.parametrize("row", ANALYSES.values(), ids=list(ANALYSES))
def test_every_row_names_a_function_and_a_reader_that_exist(row: AnalysisInfo) -> None:
    assert row.per in INPUTS and set(row.takes) <= {"data_source", "device"}
    assert callable(row.attribute(row.function)) and callable(row.attribute(row.reader))
    assert set(CHEAP_OPTIONS[row.name]) <= set(row.options)


@pytest.mark.parametrize("row", ANALYSES.values(), ids=list(ANALYSES))
def test_every_option_is_a_keyword_parameter_of_the_function(row: AnalysisInfo) -> None:
    parameters = inspect.signature(row.attribute(row.function)).parameters
    keywords = {name for name, p in parameters.items()
                if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    missing = [name for name in (*row.options, *row.takes) if name not in keywords]
    assert not missing, f"{row.module}.{row.function} takes no {missing}"
    positional = [name for name, p in parameters.items() if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
                  and p.default is inspect.Parameter.empty]
    assert len(positional) == INPUTS[row.per] + 1, positional  # the inputs, then out_dir


# ----------------------------------------------------------------------------- each row, run and read back


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("cifar")
    make_image_tree(root / "tree", train_per_class=2, test_per_class=2)
    return str(make_archive(root / "tree", root / "cifar10-images.tar.gz"))


def made_run(folder: Path, seed: int, source: str) -> Path:
    """A completed run directory by hand: a random ResNet18 (initial and final weights), its record and
    random predictions of the source's test images."""
    payload = models.weights_payload(models.build_model("resnet18", seed=seed), "resnet18", 10,
                                     dataclasses.asdict(data.Normalization()))
    atomic_torch_save(folder / FINAL_WEIGHTS, payload)
    atomic_torch_save(folder / INITIAL_WEIGHTS, {**payload, "state_dict": {k: v * 0.9 for k, v in
                                                                          payload["state_dict"].items()}})
    labels = data.load("cifar10", source).test_labels
    predicted = torch.randint(0, 10, labels.shape, generator=torch.Generator().manual_seed(seed))
    atomic_torch_save(folder / PREDICTIONS, {"format": PREDICTIONS_FORMAT, "predicted": predicted, "labels": labels,
                                             "test_index": torch.arange(len(labels))})
    accuracy = float((predicted == labels).double().mean())
    atomic_write_json(folder / RUN_JSON, {"format": RUN_FORMAT, "status": "completed",
                                          "final": {"test_accuracy": accuracy}})
    return folder


def seeds_inputs(root: Path, runs: list[Path]) -> dict:
    """What the study plans for the seed statistics of arms a and b over seeds 0 and 1: comparisons of
    a with b per seed and of two seeds of each arm, and the runs (no sharpness)."""
    def compared(path: Path, offset: float) -> str:
        values = np.array([[0.9 - offset, 0.1], [0.2, 0.8 - offset]])
        write_similarity([SimilarityMatrix("cka", "similarity", "", values, ("conv1", "fc"), ("conv1", "fc"), 20,
                                           "flatten", "a", "b")], path)
        return str(path)

    return {"arms": ["a", "b"],
            "across": [{"seed": s, "path": compared(root / f"a_vs_b/seed{s}", 0.3 + 0.1 * s)} for s in (0, 1)],
            "within": [{"arm": arm, "seeds": [0, 1], "path": compared(root / f"{arm}_vs_{arm}/seed0-seed1", offset)}
                       for arm, offset in (("a", 0.0), ("b", 0.05))],
            "runs": [{"arm": arm, "seed": seed, "path": str(runs[seed])} for arm in "ab" for seed in (0, 1)],
            "sharpness": []}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, source: str) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [made_run(root / f"seed{seed}", seed, source) for seed in (0, 1, 2)]


@pytest.mark.parametrize("row", ANALYSES.values(), ids=list(ANALYSES))
def test_the_reader_reads_what_the_function_writes(row: AnalysisInfo, runs: list[Path], source: str,
                                                   tmp_path: Path) -> None:
    inputs = seeds_inputs(tmp_path / "comparisons", runs) if row.per == PER_ARM_PAIR else runs[:INPUTS[row.per]]
    out = tmp_path / "analyses" / row.name
    result = row.run(inputs, out, CHEAP_OPTIONS[row.name], data_source=source, device="cpu")
    assert (out / row.result_file).is_file()
    assert row.read(out) == result and row.read(out / row.result_file) == result
