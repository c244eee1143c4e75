"""`minimascope landscape`: filter-normalised loss surfaces, the plane through three networks and the trajectory
plane. The math on tiny float64 networks against values computed another way (the network's own loss, the
analytic surface of a quadratic, a rescaled network); the shells and the command on fake resnet18 runs with a
3×3 grid on a few images."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from helpers import assert_one_line_error, invoke, resnet18_run
from minimascope.errors import MinimascopeError
from minimascope.io import atomic_write_json
from minimascope.minima import landscape, surfaces
from minimascope.minima.directions import parameter_names, random_directions
from minimascope.minima.landscape import read_landscape

pytestmark = pytest.mark.usefixtures("one_thread")


def conv_net(seed: int) -> nn.Module:
    """A conv feeding batch norm, then a linear head: float64, running statistics from one train pass."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).double()
    with torch.no_grad():
        net.train()
        net(images_and_labels()[0])
    return net.eval()


def images_and_labels(n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=generator, dtype=torch.float64), torch.arange(n) % 3


def own_loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, bn: str) -> float:
    """The network's loss computed plainly: eval mode, or one train-mode batch (batch statistics)."""
    net = copy.deepcopy(net).train(bn == "recompute")
    with torch.no_grad():
        return F.cross_entropy(net(images), labels).item()


@pytest.mark.parametrize("bn", ["eval", "recompute"])
def test_the_centre_of_a_surface_is_the_network_itself(bn: str) -> None:
    net, (images, labels) = conv_net(0), images_and_labels()
    result = surfaces.random_surface(copy.deepcopy(net), (images, labels), grid=5, span=0.5, bn=bn)
    expected = own_loss(net, images, labels, bn)
    assert result.points[0].values.train_loss == pytest.approx(expected, abs=1e-6)
    assert result.train_loss[2][2] == pytest.approx(expected, abs=1e-6)
    assert len(result.train_loss) == 5 and all(len(row) == 5 for row in result.train_loss)
    assert len({round(v, 9) for row in result.train_loss for v in row}) > 20  # the points differ


def test_test_images_see_the_statistics_of_the_training_images() -> None:
    """bn=recompute: the test pass (eval mode) normalises exactly as the training pass did, so the same images
    as test images give the same loss."""
    net, train = conv_net(0), images_and_labels()
    result = surfaces.random_surface(net, train, train, grid=3, dims=1, bn="recompute")
    assert result.values["test_loss"][0] == pytest.approx(result.values["train_loss"][0], abs=1e-12)


def test_directions_are_filter_normalised_and_leave_biases_and_batch_norm_out() -> None:
    net = conv_net(0)
    state = net.state_dict()
    direction, again = (random_directions(state, parameter_names(net), seed, 1)[0] for seed in (7, 7))
    for key, value in state.items():
        if key in ("0.weight", "4.weight"):
            assert direction[key].flatten(1).norm(dim=1) == pytest.approx(value.double().flatten(1).norm(dim=1))
        elif value.is_floating_point():  # conv and linear biases, batch norm's weight, bias and statistics
            assert not direction[key].any(), key
        else:  # batch norm's counter is not a coordinate
            assert key not in direction
    assert all(torch.equal(direction[key], again[key]) for key in direction)


@pytest.mark.parametrize("bn", ["eval", "recompute"])
def test_the_three_networks_of_a_plane_keep_their_losses(bn: str) -> None:
    nets, (images, labels) = [conv_net(seed) for seed in (0, 1, 2)], images_and_labels()
    result = surfaces.plane_surface([copy.deepcopy(n) for n in nets], ["A", "B", "C"], (images, labels), grid=3,
                                     bn=bn)
    for point, net in zip(result.points, nets):
        assert point.values.train_loss == pytest.approx(own_loss(net, images, labels, bn), abs=1e-6)
    flat = [torch.cat([p.detach().flatten() for p in n.parameters()]) for n in nets]
    assert (result.points[0].x, result.points[0].y) == (0.0, 0.0)
    assert result.points[1].x == pytest.approx((flat[1] - flat[0]).norm().item()) and result.points[1].y == 0.0
    assert math.hypot(result.points[2].x, result.points[2].y) == pytest.approx((flat[2] - flat[0]).norm().item())
    assert result.x[0] < min(p.x for p in result.points) and result.y[-1] > max(p.y for p in result.points)


def test_rescaling_a_filter_that_feeds_batch_norm_leaves_the_surface_unchanged() -> None:
    net, train = conv_net(0), images_and_labels()
    scaled = copy.deepcopy(net)
    with torch.no_grad():
        scaled[0].weight[1] *= 7.0  # filter 1 of the conv, its bias and the statistics it feeds scale with it
        scaled[0].bias[1] *= 7.0
        scaled[1].running_mean[1] *= 7.0
        scaled[1].running_var[1] *= 49.0
    for bn in ("recompute", "eval"):
        plain = surfaces.random_surface(copy.deepcopy(net), train, grid=5, span=0.8, bn=bn, seed=3)
        rescaled = surfaces.random_surface(copy.deepcopy(scaled), train, grid=5, span=0.8, bn=bn, seed=3)
        # only batch norm's eps (1e-5 beside variances of order 1) tells the two apart
        for rescaled_row, plain_row in zip(rescaled.train_loss, plain.train_loss):
            assert rescaled_row == pytest.approx(plain_row, rel=1e-4)


class Quadratic(nn.Module):
    """A model whose mean cross-entropy is c + ½ Σ_k a_k ‖W_k‖² exactly, whatever the images: the logits
    (0, log(e^L − 1)) of class 0 give −log softmax_0 = L."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.0, 2.0]], dtype=torch.float64))
        self.bias = nn.Parameter(torch.tensor([0.7, -0.4], dtype=torch.float64))
        self.register_buffer("curvature", torch.tensor([2.0, 0.5], dtype=torch.float64))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        loss = 0.1 + 0.5 * (self.curvature * (self.weight**2).sum(1)).sum() + (self.bias**2).sum()
        zero = torch.zeros(len(images), dtype=loss.dtype)
        return torch.stack([zero, torch.log(torch.expm1(loss)).expand(len(images))], 1)


def test_a_quadratic_gives_its_analytic_surface() -> None:
    model, images, labels = Quadratic(), torch.zeros(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    d1, d2 = random_directions(model.state_dict(), parameter_names(model), 11, 2)
    result = surfaces.random_surface(Quadratic(), (images, labels), grid=7, span=1.5, seed=11)
    weight, bias, a = model.weight.detach(), model.bias.detach(), model.curvature
    for j, y in enumerate(result.y):
        for i, x in enumerate(result.x):
            moved = weight + x * d1["weight"] + y * d2["weight"]  # biases stay: directions leave them out
            expected = 0.1 + 0.5 * (a * (moved**2).sum(1)).sum().item() + (bias**2).sum().item()
            assert result.train_loss[j][i] == pytest.approx(expected, rel=1e-9)
    assert not d1["bias"].any() and not d1["curvature"].any()


def test_the_result_file_round_trips_and_a_damaged_one_is_named(tmp_path: Path) -> None:
    result = surfaces.random_surface(conv_net(0), images_and_labels(), images_and_labels(), grid=3, bn="eval")
    result = dataclasses.replace(result, values={**result.values,
                                                 "train_loss": [[math.inf, *result.train_loss[0][1:]],
                                                                *result.train_loss[1:]]})
    landscape.write_landscape(result, tmp_path)
    assert json.loads((tmp_path / "landscape.json").read_text())["train_loss"][0][0] is None
    back = read_landscape(tmp_path)
    assert back.train_loss[0][0] == math.inf and back.train_loss[1:] == result.train_loss[1:]
    assert back.values["test_accuracy"] == result.values["test_accuracy"] and back.bn == "eval"
    assert (tmp_path / "landscape.png").is_file() and (tmp_path / "landscape-3d.png").is_file()
    record = json.loads((tmp_path / "landscape.json").read_text())
    for key, bad in (("train_loss", [[1.0]]), ("train_accuracy", [[2.0] * 3] * 3), ("x", [0.0, "a", 1.0])):
        atomic_write_json(tmp_path / "bad.json", {**record, key: bad})
        with pytest.raises(MinimascopeError, match="bad.json"):
            read_landscape(tmp_path / "bad.json")


# ----------------------------------------------------------------------------- the shells and the command

FAST = ("--grid", "3", "--images", "20", "--device", "cpu")


def test_the_command_writes_a_surface_its_reader_reads(cifar_source: str, tmp_path: Path) -> None:
    run = resnet18_run(tmp_path / "run", 0)
    result = invoke("landscape", str(run), "--data", cifar_source, "--out", str(tmp_path / "out"), "--dims", "1",
                    "--test", *FAST)
    assert result.exit_code == 0, result.output
    surface = read_landscape(tmp_path / "out")
    assert surface.dims == 1 and surface.y == [0.0] and len(surface.x) == 3 and surface.images == 20
    assert surface.test_images == 20 and surface.bn == "recompute" and surface.settings["images"] == "train and test"
    assert f"train loss {surface.centre_loss():.4g}" in result.output


def test_the_command_draws_a_plane_and_a_trajectory(cifar_source: str, tmp_path: Path) -> None:
    runs = [resnet18_run(tmp_path / name, seed, snapshots=1 if name == "a" else 0) for name, seed in
            (("a", 0), ("b", 1), ("c", 2))]
    result = invoke("landscape", *map(str, runs[:1]), "--plane", str(runs[1]), str(runs[2]), "--data", cifar_source,
                    "--out", str(tmp_path / "plane"), "--bn", "eval", *FAST)
    assert result.exit_code == 0, result.output
    plane = read_landscape(tmp_path / "plane")
    assert plane.kind == "plane" and [p.label for p in plane.points] == ["a", "b", "c"] and plane.bn == "eval"
    result = invoke("landscape", str(runs[0]), "--trajectory", "--data", cifar_source,
                    "--out", str(tmp_path / "path"), *FAST)
    assert result.exit_code == 0, result.output
    path = read_landscape(tmp_path / "path")
    assert [s["epoch"] for s in path.trajectory] == [0, 1, 2] and path.kind == "trajectory"
    assert path.trajectory[-1]["x"] == pytest.approx(0.0, abs=1e-9)  # the final network is the origin


@pytest.mark.parametrize(("args", "message"), [
    (("--bn", "train"), "--bn must be one of recompute, eval"),
    (("--grid", "1"), "landscape: --grid must be an integer >= 3 and <= 201, got 1"),
    (("--grid", "4"), "--grid must be an odd number of at least 3"),
    (("--span", "0"), "landscape: --span must be a number > 0, got 0.0"),
    (("--dims", "3"), "landscape: --dims must be an integer >= 1 and <= 2, got 3"),
    (("--trajectory",), "kept no weight snapshots: train it with snapshot_every"),
])
def test_the_command_refuses_bad_options_in_one_line(args: tuple[str, ...], message: str, tmp_path: Path,
                                                     cifar_source: str) -> None:
    run = resnet18_run(tmp_path / "run", 0)
    (run / "snapshots").mkdir()
    assert_one_line_error(invoke("landscape", str(run), "--data", cifar_source, "--out", str(tmp_path / "out"),
                                 *args), message)
    assert not (tmp_path / "out").exists()


def test_the_trajectory_axes_are_the_top_principal_directions() -> None:
    from minimascope.minima.directions import trajectory_axes

    generator = torch.Generator().manual_seed(5)
    final = {"w": torch.randn(3, 4, generator=generator, dtype=torch.float64), "b": torch.zeros(3, dtype=torch.float64)}
    states = [{"w": final["w"] + torch.randn(3, 4, generator=generator, dtype=torch.float64), "b": final["b"]}
              for _ in range(5)]
    path = trajectory_axes(states, final, ["w", "b"])
    rows = torch.stack([(s["w"] - final["w"]).flatten() for s in states])
    _, singular, right = torch.linalg.svd(rows - rows.mean(0), full_matrices=False)
    for axis, expected in zip(path.axes, right[:2]):
        assert abs(torch.dot(axis["w"].flatten(), expected).item()) == pytest.approx(1.0)
        assert not axis["b"].any()
    assert list(path.explained) == pytest.approx((singular[:2] ** 2 / (singular**2).sum()).tolist())
    u, v = (axis["w"].flatten() for axis in path.axes)
    assert [c for point in path.points for c in point] == pytest.approx([float(r @ w) for r in rows for w in (u, v)])


def test_the_report_section_shows_surfaces_and_planes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from minimascope.report.page import Context, environment
    from minimascope.report.sections import landscape as section
    from minimascope.results import Analysis, Study

    train, nets = images_and_labels(), [conv_net(seed) for seed in (0, 1, 2)]
    nodes = [Analysis("landscape", (arm,), seed, "completed", None, tmp_path,
                      surfaces.random_surface(copy.deepcopy(nets[seed]), train, grid=3, seed=seed, label=arm))
             for arm in ("sgd", "adahessian") for seed in (0, 1)]
    plane = surfaces.plane_surface(nets, ["adahessian", "adahessian-then-sgd", "sgd"], train, grid=3)
    nodes.append(Analysis("landscape", ("adahessian", "adahessian-then-sgd", "sgd"), 0, "completed", None, tmp_path,
                          plane))
    study = Study(tmp_path, {}, {}, [], [], analyses={"landscape": nodes})
    monkeypatch.setattr(section, "kinds", lambda: ["landscape"])
    shown = section.build(Context(study, tmp_path))
    assert [r["arm"] for r in shown["rows"]] == ["sgd", "adahessian"] and shown["missing"] == []
    assert [p["label"] for p in shown["plane_rows"][0]["points"]] == ["adahessian", "adahessian-then-sgd", "sgd"]
    rise = [section.edge_rise(n.result) for n in nodes[:2]]
    assert shown["rows"][0]["rise"]["seeds"] == ", ".join(f"{v:.4g}" for v in rise)
    assert (tmp_path / shown["figures"]["surfaces"]).read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / shown["figures"]["planes"]).is_file()
    html = environment().get_template("section-landscape.html.j2").render(s=shown)
    assert "adahessian-then-sgd" in html and "rise at the edge" in html


def test_a_study_plans_runs_and_reports_a_surface_per_run(cifar_source: str, tmp_path: Path) -> None:
    """``analyses: {landscape: {...}}`` in a study file: one surface node per run, read back by the study's
    results and drawn in the report's landscape section."""

    file = tmp_path / "tiny.yaml"
    file.write_text(yaml.safe_dump({
        "defaults": {"epochs": 1, "train_subset": 100, "test_subset": 50, "eval_batch_size": 50},
        "seeds": [0], "arms": {"sgd": {"optimizer": "sgd"}},
        "compare": {"measures": ["cka"], "samples": 50, "pairs": [], "within": False},
        "analyses": {"landscape": {"grid": 3, "images": 20}}}, sort_keys=False))
    study = tmp_path / "study"
    result = invoke("study", str(file), "--out", str(study), "--data", cifar_source)
    assert result.exit_code == 0, result.output
    surfaces = [n for n in json.loads((study / "study.json").read_text())["nodes"] if n["kind"] == "landscape"]
    assert [(n["id"], n["status"]) for n in surfaces] == [("landscape:sgd:seed0", "completed")]
    surface = read_landscape(next(study.rglob("landscape.json")))
    assert len(surface.x) == len(surface.y) == 3 and surface.images == 20 and surface.bn == "recompute"
    result = invoke("report", str(study))
    assert result.exit_code == 0, result.output
    page = (study / "report" / "index.html").read_text()
    section = page[page.index("Loss surfaces: the picture of each minimum"):]
    assert "contours of the training loss around each arm" in section and "<img" in section
