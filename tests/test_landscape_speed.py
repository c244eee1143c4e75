"""The fast evaluation of a loss surface's points (minimascope.minima.inference: batch norm folded into the layer
before it, small-map convolutions as dense products, the layers on the images precomputed) against the plain
forward pass of the network loaded with the point's weights, in float32 on a small net that has each case."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimascope.minima.directions import floating_entries, parameter_names, plane_axes, random_directions
from minimascope.minima.landscape_points import PointEvaluator

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    """A stem on the images feeding batch norm, a 3×3 conv of a 2×2 map (a dense product) with a bias, and a 1×1
    conv whose output feeds batch norm and, with ``twice``, the sum after it too (it cannot be folded)."""

    def __init__(self, seed: int, twice: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.twice = twice
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.small = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.skip = nn.Conv2d(8, 8, 1)
        self.bn3 = nn.BatchNorm2d(8)
        self.head = nn.Linear(32, 3)
        with torch.no_grad():
            for norm in (self.bn1, self.bn2, self.bn3):
                norm.running_mean.normal_(0, 0.3)
                norm.running_var.uniform_(0.5, 2.0)
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.normal_(0, 0.2)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.stem(x))), 2)
        x = F.relu(self.bn2(self.small(x)))
        s = self.skip(x)
        x = self.bn3(s) + (s if self.twice else x)
        return self.head(x.flatten(1))


def images_and_labels(n: int = 24) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(5)
    return torch.randn(n, 3, 8, 8, generator=generator), torch.arange(n) % 3


def plain_loss(net: nn.Module, state: dict[str, Tensor], axes: list[dict[str, Tensor]], point: tuple[float, ...],
               images: Tensor, labels: Tensor, bn: str) -> float:
    """The loss of ``net`` with the point's weights loaded, by its own forward (eval mode or batch statistics)."""
    net = copy.deepcopy(net)
    moved = {key: value + sum(c * axis[key] for c, axis in zip(point, axes)) for key, value in state.items()}
    net.load_state_dict({key: value.float() for key, value in moved.items()}, strict=False)
    net.train(bn == "recompute")
    with torch.no_grad():
        return F.cross_entropy(net(images), labels).item()


@pytest.mark.parametrize("bn", ["eval", "recompute"])
@pytest.mark.parametrize("twice", [False, True])
def test_a_point_is_the_plain_forward_of_its_weights(bn: str, twice: bool) -> None:
    net, (images, labels) = Net(0, twice), images_and_labels()
    state = floating_entries(net.state_dict())
    axes = random_directions(state, parameter_names(net), 3, 2)
    evaluator = PointEvaluator(copy.deepcopy(net), state, axes, (images, labels), bn=bn)
    for point in [(0.0, 0.0), (0.4, -0.3), (-0.2, -0.3), (-0.9, 0.7), (0.0, 0.0)]:  # along a row, then back
        expected = plain_loss(net, state, axes, point, images, labels, bn)
        assert evaluator(point).train_loss == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("twice", [False, True])
def test_batch_norm_is_folded_only_where_that_is_the_same_function(twice: bool) -> None:
    net, (images, labels) = Net(0, twice), images_and_labels()
    state = floating_entries(net.state_dict())
    axes = random_directions(state, parameter_names(net), 3, 2)
    replaced = PointEvaluator(copy.deepcopy(net), state, axes, (images, labels), bn="eval").forms.replaced
    assert {"stem.weight", "small.weight", "small.bias", "head.weight"} <= replaced
    assert ({"bn1.running_mean", "bn2.weight", "bn3.running_var"} <= replaced) is not twice
    recompute = PointEvaluator(copy.deepcopy(net), state, axes, (images, labels), bn="recompute").forms.replaced
    assert not any(key.startswith("bn") for key in recompute)


@pytest.mark.parametrize("bn", ["eval", "recompute"])
def test_the_networks_of_a_plane_are_their_points_when_batch_norm_moves(bn: str) -> None:
    """Plane axes move batch norm's parameters and statistics too: it is not folded, and each network's point is
    still that network."""
    nets, (images, labels) = [Net(seed) for seed in (0, 1, 2)], images_and_labels()
    states = [floating_entries(n.state_dict()) for n in nets]
    plane = plane_axes(*states, parameter_names(nets[0]))
    evaluator = PointEvaluator(copy.deepcopy(nets[0]), states[0], plane.axes, (images, labels), bn=bn)
    assert not any(key.startswith("bn") for key in evaluator.forms.replaced)
    for net, point in zip(nets, plane.points):
        expected = plain_loss(net, floating_entries(net.state_dict()), plane.axes, (0.0, 0.0), images, labels, bn)
        assert evaluator(point).train_loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
