"""minimascope.fast_layers gives torch's numbers: bit-identical where it uses torch's kernels, equal to
rounding (float64) where it computes the same thing another way; and it takes the route it claims."""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch
import torchvision
from torch import nn

from helpers import conv_bn_net
from minimascope.curvature import hessian_vector_product, rademacher_like
from minimascope.fast_layers import fast_forward

CONVOLUTIONS = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}


def node_names(root: torch.Tensor) -> set[str]:
    names, stack, seen = set(), [root.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack += [nxt for nxt, _ in node.next_functions]
    return names


def first_and_second_order(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, fast: bool) -> dict:
    """Output, gradients, one Hessian-vector product and buffers of a fresh copy of `net`."""
    params = list(net.parameters())
    with fast_forward(double_backward=True) if fast else contextlib.nullcontext():
        out = net(images)
    grads = torch.autograd.grad(nn.functional.cross_entropy(out, labels), params, create_graph=True)
    gen = torch.Generator().manual_seed(1)
    products = hessian_vector_product(grads, params, [rademacher_like(p, gen) for p in params])
    return dict(out=out, grads=[g.detach() for g in grads], products=products, buffers=list(net.buffers()))


def assert_same_second_order(reference: list[torch.Tensor], fast: list[torch.Tensor]) -> None:
    scale = max(p.abs().max() for p in reference)
    for p, q in zip(reference, fast):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12 * scale)


def compare_with_torch(make_net, images: torch.Tensor, labels: torch.Tensor) -> tuple[dict, dict]:
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        results.append(first_and_second_order(make_net().double(), images, labels, fast))
    return results[0], results[1]


def data(shape: tuple[int, ...], classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen, dtype=torch.float64), torch.randint(0, classes, (shape[0],), generator=gen)


# ----------------------------------------------------------------------------- batch norm and convolution rules


def bn_net_1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 3, 3, bias=False), nn.BatchNorm1d(3), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3))


def bn_net_3d() -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 2, 2), nn.BatchNorm3d(2), nn.Tanh(), nn.Flatten(), nn.Linear(54, 3))


def conv_net() -> nn.Module:
    # stride, padding, dilation, groups, with and without bias; input needing no gradient, then one that does
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, bias=False), nn.Tanh(),
        nn.Conv2d(4, 3, 3, padding="same"), nn.Tanh(),  # string padding: torch's own route
        nn.Flatten(), nn.Linear(48, 3),
    )


@pytest.mark.parametrize(
    ("make_net", "input_shape"),
    [(conv_bn_net, (6, 1, 8, 8)), (bn_net_1d, (6, 2, 8)), (bn_net_3d, (6, 1, 4, 4, 4)), (conv_net, (5, 2, 8, 8))],
)
def test_double_backward_rules_give_torchs_numbers(make_net, input_shape) -> None:
    images, labels = data(input_shape)
    torch_result, fast = compare_with_torch(make_net, images, labels)
    names = node_names(fast["out"])
    assert ("_BatchNormBackward" in names) == (make_net is not conv_net)
    assert "_ConvolutionBackward" in names
    assert ("ConvolutionBackward0" in names) == (make_net is conv_net)  # string padding keeps torch's
    # torch's kernels up to first order: bit-identical; second order: their formula vs ours, rounding only
    assert torch.equal(torch_result["out"], fast["out"])
    assert all(torch.equal(a, b) for a, b in zip(torch_result["grads"], fast["grads"]))
    assert all(torch.equal(a, b) for a, b in zip(torch_result["buffers"], fast["buffers"]))  # running stats
    assert_same_second_order(torch_result["products"], fast["products"])


def test_eval_mode_and_no_grad_are_left_to_torch() -> None:
    net = conv_bn_net().double().eval()
    images = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    with fast_forward(double_backward=True):
        out = net(images)
        with torch.no_grad():
            plain = net(images)
    assert "_BatchNormBackward" not in node_names(out)
    assert torch.equal(out, net(images)) and torch.equal(plain, out)


# ----------------------------------------------------------------------------- small feature maps as products


SMALL_MAPS = [  # (dims, map size, kernel, stride, padding, dilation): fewer positions than taps
    (dims, size, kernel, stride, padding, dilation)
    for dims, size, kernel, stride, padding, dilation in itertools.product((1, 2, 3), (1, 2), (2, 3), (1, 2),
                                                                            (0, 1, 2), (1, 2))
    if size**dims < kernel**dims and size + 2 * padding - dilation * (kernel - 1) - 1 >= 0
]


@pytest.mark.parametrize(("dims", "size", "kernel", "stride", "padding", "dilation"), SMALL_MAPS)
def test_small_map_convolution_is_the_convolution(dims, size, kernel, stride, padding, dilation) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, *[size] * dims, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 4, *[kernel] * dims, generator=gen, dtype=torch.float64)
    b = torch.randn(5, generator=gen, dtype=torch.float64)
    conv = CONVOLUTIONS[dims]
    with fast_forward(double_backward=False):
        out = conv(x, w.requires_grad_(), b, stride, padding, dilation)
    assert "ConvolutionBackward0" not in node_names(out)  # the product route was taken
    torch.testing.assert_close(out, conv(x, w, b, stride, padding, dilation), rtol=1e-12, atol=1e-12)


def test_small_map_convolution_on_one_pixel_is_the_centre_tap() -> None:
    # closed form: a 3x3 kernel padded by 1 over a 1x1 map sees only its centre tap
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 1, 1, generator=gen, dtype=torch.float64)
    conv = nn.Conv2d(6, 5, 3, padding=1).double()
    with fast_forward(double_backward=False):
        out = conv(x)
    expected = x.flatten(1) @ conv.weight[:, :, 1, 1].T + conv.bias
    torch.testing.assert_close(out.flatten(1), expected, rtol=0, atol=1e-14)


def small_map_net() -> nn.Module:
    # 2x2 then 1x1 maps (stride 2 in between), batch norm: the last stages of resnet18 on CIFAR
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4), nn.Tanh(), nn.Conv2d(4, 3, 3, padding=1, bias=False), nn.Flatten(),
    )


def test_small_map_network_first_and_second_order() -> None:
    images, labels = data((6, 3, 2, 2))
    torch_result, fast = compare_with_torch(small_map_net, images, labels)
    assert "ConvolutionBackward0" not in node_names(fast["out"])
    torch.testing.assert_close(fast["out"], torch_result["out"], rtol=1e-12, atol=1e-12)
    for a, b in zip(torch_result["grads"], fast["grads"]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert_same_second_order(torch_result["products"], fast["products"])


def test_large_maps_and_groups_keep_torchs_convolution() -> None:
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    for conv in (nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=2)):
        conv = conv.double()
        small = x[:, :, :2, :2] if conv.groups > 1 else x
        with fast_forward(double_backward=False):
            out = conv(small)
        assert "ConvolutionBackward0" in node_names(out)
        assert torch.equal(out, conv(small))


def test_resnet18_float64_matches_torch(one_thread) -> None:
    # the study's network on CIFAR-sized input: 8x8 ... 1x1 maps, both routes, batch norm, ReLU, max pool
    images, labels = data((4, 3, 32, 32), classes=10)
    torch_result, fast = compare_with_torch(lambda: torchvision.models.resnet18(num_classes=10), images, labels)
    torch.testing.assert_close(fast["out"], torch_result["out"], rtol=1e-10, atol=1e-12)
    for a, b in zip(torch_result["grads"], fast["grads"]):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert_same_second_order(torch_result["products"], fast["products"])


class Relu6Sigmoid(nn.Module):
    """Hard sigmoid written another way, through relu6 (hardtanh), which torch differentiates twice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(x + 3) / 6


def test_hessian_steps_through_hard_sigmoid_any_registry_network(one_thread) -> None:
    # torch has no double backward for hard sigmoid: torchvision:mobilenet_v3_small (squeeze-excitation,
    # depthwise convs, hardswish, a one-channel stem, maps down to 1x1) takes Hessian steps only through
    # fast_forward, with the numbers of the same network whose hard sigmoids are relu6(x + 3) / 6.
    from minimascope.models import build_model

    images, labels = data((2, 1, 24, 24), classes=3)

    def network(hard_sigmoid: type[nn.Module]) -> nn.Module:
        torch.manual_seed(0)
        net = build_model("torchvision:mobilenet_v3_small", 3, in_channels=1).double()
        for name, module in list(net.named_modules()):
            if isinstance(module, nn.Hardsigmoid):
                parent, _, child = name.rpartition(".")
                setattr(net.get_submodule(parent), child, hard_sigmoid())
        net.classifier[2].eval()  # its dropout: the same function in both
        return net

    with pytest.raises(RuntimeError, match="hardsigmoid_backward is not implemented"):
        first_and_second_order(network(nn.Hardsigmoid), images, labels, fast=False)
    reference = first_and_second_order(network(Relu6Sigmoid), images, labels, fast=False)
    fast = first_and_second_order(network(nn.Hardsigmoid), images, labels, fast=True)
    torch.testing.assert_close(fast["out"], reference["out"], rtol=1e-10, atol=1e-12)
    assert_same_second_order(reference["products"], fast["products"])


def test_hessian_steps_through_attention() -> None:
    # the fused attention kernels have no double backward; the math one torch keeps as a reference does
    from torch.nn.attention import SDPBackend, sdpa_kernel

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.attention(x, x, x, need_weights=False)[0].mean(1))

    images, labels = data((4, 5, 8))
    torch.manual_seed(0)
    net = Attention().double()
    with sdpa_kernel(SDPBackend.MATH):
        reference = first_and_second_order(net, images, labels, fast=False)
    fast = first_and_second_order(net, images, labels, fast=True)
    torch.testing.assert_close(fast["out"], reference["out"], rtol=1e-12, atol=1e-12)
    assert_same_second_order(reference["products"], fast["products"])
