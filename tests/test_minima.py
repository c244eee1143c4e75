"""minimascope.minima: Hessian spectra against exact Hessians and known spectra (Lanczos, SLQ and Hutchinson
on explicit matrices), the stored density curve, linear mode connectivity against independent evaluations,
weight matching against known permutations."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from helpers import conv_bn_net
from minimascope.curvature import hutchinson_trace, rademacher_like
from minimascope.errors import MinimascopeError
from minimascope.minima import connectivity, lanczos, matching
from minimascope.minima import sharpness as hessian
from minimascope.models import build_model

# Tiny tensors: on shared cores a second OpenMP thread makes each op much slower.
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers


def symmetric_with_spectrum(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def randomise_batch_norm(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so eval mode is not an identity."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.3)
    return model


def small_problem(seed: int = 0, n: int = 12) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """conftest's conv-BN-tanh net (341 parameters) in float64, with its BN statistics set, on n images."""
    torch.manual_seed(seed)
    model = randomise_batch_norm(conv_bn_net().double(), seed)
    generator = torch.Generator().manual_seed(seed + 100)
    images = torch.randn(n, 1, 8, 8, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=generator)
    return model, images, labels


def exact_hessian(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The Hessian of the eval-mode mean cross-entropy, by torch.autograd.functional.hessian (float64)."""
    names, params = zip(*model.named_parameters())
    sizes = [p.numel() for p in params]
    model.eval()

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        chunks = {n: c.view_as(p) for n, c, p in zip(names, flat.split(sizes), params)}
        return F.cross_entropy(torch.func.functional_call(model, chunks, (images,)), labels)

    return torch.autograd.functional.hessian(loss_of, torch.cat([p.detach().flatten() for p in params]))


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    model, images, labels = small_problem()
    h = exact_hessian(model, images, labels)
    model.train()  # the analyses must switch to eval mode themselves, and back
    return model, images, labels, h


# ----------------------------------------------------------------------------- Lanczos on explicit matrices


def test_lanczos_top_eigenvalues_of_known_spectrum() -> None:
    rest = torch.linspace(-3, 2, 195).tolist()  # a bulk with negative eigenvalues below the outliers
    a = symmetric_with_spectrum([40.0, 25.0, 24.5, 10.0, 9.0] + rest)
    start = torch.randn(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = lanczos.lanczos_top_eigenvalues(lambda v: a @ v, start, 3, tol=1e-3, max_iter=200)
    assert result.converged and result.iterations < 40  # far fewer products than the dimension
    for value, exact in zip(result.values, [40.0, 25.0, 24.5]):
        assert abs(value - exact) <= 1e-3 * exact
    tight = lanczos.lanczos_top_eigenvalues(lambda v: a @ v, start, 3, tol=1e-10, max_iter=200)
    expected = torch.tensor([40.0, 25.0, 24.5], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(tight.values, dtype=torch.float64), expected, rtol=1e-9, atol=0)


def test_lanczos_on_full_dimension_finds_every_eigenvalue_and_stops() -> None:
    eigenvalues = [5.0, 3.0, 1.0, -0.5, -2.0, -7.0]
    a = symmetric_with_spectrum(eigenvalues, seed=3)
    start = torch.randn(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = lanczos.lanczos_top_eigenvalues(lambda v: a @ v, start, 6, tol=1e-12, max_iter=50)
    assert result.converged and result.iterations == 6
    expected = torch.tensor(eigenvalues, dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(result.values, dtype=torch.float64), expected, rtol=0, atol=1e-11)


def test_lanczos_rejects_more_eigenvalues_than_dimensions() -> None:
    with pytest.raises(MinimascopeError, match="k = 4"):
        lanczos.lanczos_top_eigenvalues(lambda v: v, torch.ones(3), 4, tol=1e-3, max_iter=10)


def test_slq_is_gauss_quadrature_of_the_probes() -> None:
    eigenvalues = torch.linspace(-1, 6, 40, dtype=torch.float64)
    a = symmetric_with_spectrum(eigenvalues.tolist(), seed=2)
    generator = torch.Generator().manual_seed(4)
    starts = [torch.randn(40, generator=generator, dtype=torch.float64) for _ in range(3)]
    nodes, weights = lanczos.slq_density(lambda v: a @ v, starts, steps=8)
    assert nodes.shape == weights.shape == (24,)
    assert abs(weights.sum().item() - 1) < 1e-12 and (weights >= 0).all()
    # m-node Gauss quadrature integrates polynomials up to degree 2m - 1 exactly: v^T A^p v / v^T v
    for power in (1, 2, 5):
        exact = sum((v @ torch.linalg.matrix_power(a, power) @ v / (v @ v)).item() for v in starts) / 3
        assert abs((weights * nodes**power).sum().item() - exact) <= 1e-9 * max(1.0, abs(exact))
    full_nodes, _ = lanczos.slq_density(lambda v: a @ v, starts[:1], steps=40)
    torch.testing.assert_close(full_nodes, eigenvalues, rtol=0, atol=1e-10)  # all nodes are eigenvalues


def test_smooth_density_is_a_normalised_gaussian_mixture() -> None:
    nodes, weights = torch.tensor([0.0, 2.0]), torch.tensor([0.25, 0.75])
    grid = torch.linspace(-5, 7, 4001, dtype=torch.float64)
    density = lanczos.smooth_density(nodes, weights, grid, sigma=0.5)
    assert abs(torch.trapezoid(density, grid).item() - 1) < 1e-9
    peak = 0.75 / (0.5 * math.sqrt(2 * math.pi)) + 0.25 * math.exp(-0.5 * 16) / (0.5 * math.sqrt(2 * math.pi))
    assert abs(lanczos.smooth_density(nodes, weights, torch.tensor([2.0]), sigma=0.5).item() - peak) < 1e-12


# ----------------------------------------------------------------------------- the Hessian of a network


def test_batched_hessian_vector_product_equals_unbatched_and_exact(problem) -> None:
    model, images, labels, h = problem
    vector = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    one_batch = hessian.LossHessian(model, images, labels, batch_size=len(labels), device=torch.device("cpu"))
    batched = hessian.LossHessian(model, images, labels, batch_size=5, device=torch.device("cpu"))  # 5, 5, 2
    torch.testing.assert_close(one_batch(vector), h @ vector, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(one_batch(vector), one_batch(vector), rtol=0, atol=0)  # the kept graph reused
    torch.testing.assert_close(batched(vector), h @ vector, rtol=1e-10, atol=1e-12)
    assert model.training  # eval mode only inside


def test_top_eigenvalues_match_exact_hessian(problem) -> None:
    model, images, labels, h = problem
    before = [p.detach().clone() for p in model.parameters()]
    result = hessian.top_eigenvalues(model, images, labels, k=3, batch_size=5)
    exact = torch.linalg.eigvalsh(h).flip(0)[:3]
    assert exact[2] > 0.05 * exact[0]  # three eigenvalues of weight
    assert result.converged and result.iterations < h.shape[0] / 4
    torch.testing.assert_close(torch.tensor(result.values, dtype=torch.float64), exact, rtol=1e-3, atol=0)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters())) and model.training


def test_trace_within_its_standard_error(problem) -> None:
    model, images, labels, h = problem
    result = hessian.hessian_trace(model, images, labels, rel_error=1e-3, max_probes=60)
    assert not result.converged and result.probes == 60  # this small net's trace is a small difference
    exact = h.trace().item()
    assert abs(result.value - exact) < 3 * result.stderr + 1e-9
    # Rademacher probes: Var(z^T H z) = 2 (||H||_F^2 - sum H_ii^2), so the stated error is the true one
    spread = math.sqrt(2 * ((h**2).sum() - (h.diagonal() ** 2).sum()).item() / result.probes)
    assert 0.7 * spread < result.stderr < 1.4 * spread


def test_hutchinson_stops_at_the_requested_standard_error() -> None:
    generator = torch.Generator().manual_seed(0)
    factor = torch.randn(300, 30, generator=generator, dtype=torch.float64)
    a = factor @ factor.T / 30 + torch.diag(torch.rand(300, generator=generator, dtype=torch.float64))
    result = hutchinson_trace(lambda v: a @ v, torch.empty(300, dtype=torch.float64), rel_error=0.01,
                              min_probes=10, max_probes=10_000, generator=torch.Generator().manual_seed(1))
    assert result.converged and result.stderr < 0.01 * result.value
    assert abs(result.value - a.trace().item()) < 3 * result.stderr
    spread = math.sqrt(2 * ((a**2).sum() - (a.diagonal() ** 2).sum()).item())
    assert (spread / 0.01 / result.value) ** 2 / 2 < result.probes < 2 * (spread / 0.01 / result.value) ** 2


def test_density_mean_is_trace_per_parameter(problem) -> None:
    model, images, labels, h = problem
    density = hessian.eigenvalue_density(model, images, labels, steps=20, probes=4, seed=7)
    nodes = torch.tensor(density.nodes, dtype=torch.float64)
    weights = torch.tensor(density.weights, dtype=torch.float64)
    assert len(nodes) == 80 and abs(weights.sum().item() - 1) < 1e-12
    dim = h.shape[0]
    generator = torch.Generator().manual_seed(7)  # the same probes: the quadrature mean is exact for them
    probes = [rademacher_like(torch.empty(dim, dtype=torch.float64), generator) for _ in range(4)]
    assert abs((nodes * weights).sum().item() - sum((z @ h @ z).item() for z in probes) / 4 / dim) < 1e-10
    spread = math.sqrt(2 * ((h**2).sum() - (h.diagonal() ** 2).sum()).item() / 4) / dim
    assert abs((nodes * weights).sum().item() - h.trace().item() / dim) < 4 * spread


def test_sharpness_writes_reads_and_refuses_other_files(problem, tmp_path) -> None:
    model, images, labels, _ = problem
    result = hessian.sharpness(model, images, labels, tmp_path, k=2, max_probes=20, density_steps=6, seed=3)
    record = json.loads((tmp_path / "sharpness.json").read_text())
    assert record["format"] == "minimascope-sharpness-v3" and record["n_images"] == len(labels)
    assert record["eigenvalues"] == result.eigenvalues.values and record["trace"] == result.trace.value
    assert hessian.read_sharpness(tmp_path) == result
    assert (tmp_path / "density.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(MinimascopeError, match="not a minimascope-sharpness-v3"):
        hessian.read_sharpness(tmp_path / "other.json")


def test_stored_density_curve_is_the_smoothed_quadrature(problem, tmp_path) -> None:
    model, images, labels, _ = problem
    hessian.sharpness(model, images, labels, tmp_path, k=2, max_probes=20, density_steps=12, seed=3)
    density = hessian.read_sharpness(tmp_path).density
    nodes, weights = (torch.tensor(v, dtype=torch.float64) for v in (density.nodes, density.weights))
    grid, smoothed = (torch.tensor(v, dtype=torch.float64) for v in (density.grid, density.smoothed))
    span = (nodes.max() - nodes.min()).item()
    assert len(grid) == len(smoothed) == 400 and density.sigma == pytest.approx(0.01 * span, rel=1e-12)
    torch.testing.assert_close(grid, torch.linspace(nodes.min().item() - 0.05 * span, nodes.max().item() + 0.05 * span,
                                                    400, dtype=torch.float64), rtol=0, atol=1e-12 * span)
    expected = lanczos.smooth_density(nodes, weights, grid, density.sigma).clamp_min(1e-12)
    torch.testing.assert_close(smoothed, expected, rtol=1e-13, atol=0)
    assert abs(torch.trapezoid(smoothed, grid).item() - 1) < 1e-6


@pytest.mark.parametrize("nodes, weights", [
    ([0.0, 1e-3, 2e-3, 50.0], [0.5, 0.3, 0.15, 0.05]),  # a bulk near 0 and an outlier: the Hessian's shape
    ([-3.0, -2.5, 4.0], [0.2, 0.2, 0.6]),
    ([7.0], [1.0]),  # one node: the span falls back to the rounding scale of its magnitude
    ([-250.0, 1e4], [0.999, 0.001]),
])
def test_density_curve_integrates_to_one_over_its_grid(nodes, weights) -> None:
    """The clamped mixture on the grid: the tails beyond 5 kernel widths (< 3e-7 each side) are left out,
    and the 1e-12 floor adds at most 1e-12 times the grid's width."""
    grid, values, sigma = hessian.density_curve(torch.tensor(nodes), torch.tensor(weights))
    width = (grid[-1] - grid[0]).item()
    assert len(torch.unique(grid)) == 400 and (values >= 1e-12).all()
    assert grid[0].item() == pytest.approx(min(nodes) - 5 * sigma, abs=1e-3 * sigma)  # five kernel widths
    assert grid[-1].item() == pytest.approx(max(nodes) + 5 * sigma, abs=1e-3 * sigma)
    assert abs(torch.trapezoid(values, grid).item() - 1) < 6e-7 + 1e-12 * width


def test_an_older_sharpness_file_is_one_line(tmp_path) -> None:
    (tmp_path / "sharpness.json").write_text(json.dumps({"format": "minimascope-sharpness-v1", "eigenvalues": [1.0]}))
    with pytest.raises(MinimascopeError, match=r"older minimascope .*re-run `minimascope sharpness`") as error:
        hessian.read_sharpness(tmp_path)
    assert "\n" not in str(error.value)
    (tmp_path / "sharpness.json").write_text(json.dumps({"format": "minimascope-sharpness-v3", "eigenvalues": [1.0]}))
    with pytest.raises(MinimascopeError, match="malformed result file .*sharpness.json: density is missing"):
        hessian.read_sharpness(tmp_path)


# ----------------------------------------------------------------------------- linear mode connectivity


def test_barrier_and_interpolation_by_hand() -> None:
    assert connectivity.barrier([1.0, 3.0, 2.0]) == 1.5
    assert connectivity.barrier([2.0, 1.0, 0.0]) == 1.0  # never below max(ends) - mean(ends)
    a = {"w": torch.tensor([1.0, 2.0]), "count": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, -2.0]), "count": torch.tensor(8)}
    assert torch.equal(connectivity.interpolate_state(a, b, 0.0)["w"], a["w"])
    assert torch.equal(connectivity.interpolate_state(a, b, 1.0)["w"], b["w"])
    middle = connectivity.interpolate_state(a, b, 0.25)
    assert torch.equal(middle["w"], torch.tensor([1.5, 1.0])) and middle["count"].item() == 3


def own_loss_and_error(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(images)
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) != labels).double().mean().item()


def test_path_ends_are_the_networks_and_self_barrier_is_zero(tmp_path) -> None:
    model_a, train_images, train_labels = small_problem(seed=0, n=10)
    model_b, test_images, test_labels = small_problem(seed=1, n=8)
    result = connectivity.linear_connectivity(model_a, model_b, train_images, train_labels, test_images,
                                              test_labels, points=5, batch_size=4, labels=("a", "b"))
    assert result.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    curve = result.curve("interpolate")
    for index, model in ((0, model_a), (-1, model_b)):
        for split, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
            loss, error = own_loss_and_error(model, images, labels)
            assert abs(getattr(curve, f"{split}_loss")[index] - loss) < 1e-12
            assert getattr(curve, f"{split}_error")[index] == error
    assert result.curve("recompute").train_loss != curve.train_loss  # other statistics, other losses
    same = connectivity.linear_connectivity(model_a, model_a, train_images, train_labels, test_images, test_labels,
                                            points=4, batch_size=4)
    for path in same.curves:
        assert path.barriers() == dict.fromkeys(connectivity.METRICS, 0.0)
    connectivity.write_connectivity(result, tmp_path)
    assert connectivity.read_connectivity(tmp_path) == result
    assert json.loads((tmp_path / "connectivity.json").read_text())["format"] == "minimascope-connectivity-v2"
    assert (tmp_path / "connectivity.png").read_bytes().startswith(b"\x89PNG")


def test_recompute_batch_norm_averages_batch_statistics_by_hand() -> None:
    model, images, _ = small_problem(n=10)
    momentum = model[0].momentum
    connectivity.recompute_batch_norm(model, images, batch_size=4, device=torch.device("cpu"))  # batches 4, 3, 3
    assert not model.training and model[0].momentum == momentum
    batches = images.tensor_split(3)
    first = model[0]  # BatchNorm2d(1) on the raw images: its statistics are the images' own
    means = torch.stack([b.mean() for b in batches])
    variances = torch.stack([b.var(unbiased=True) for b in batches])
    torch.testing.assert_close(first.running_mean, means.mean().view(1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(first.running_var, variances.mean().view(1), rtol=1e-12, atol=1e-14)


def test_connectivity_rejects_unknown_batch_norm_mode() -> None:
    model, images, labels = small_problem(n=4)
    with pytest.raises(MinimascopeError, match="unknown batch-norm mode 'average'"):
        connectivity.linear_connectivity(model, model, images, labels, images, labels, bn_modes=("average",))


# ----------------------------------------------------------------------------- weight matching


def with_running_statistics(model: nn.Module, seed: int) -> nn.Module:
    """A few train-mode forwards, so the running statistics differ from their init."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 32, 32, generator=generator) * 2 + 1)
    return model.eval()


def resnet14_bottleneck() -> nn.Module:
    torch.manual_seed(0)
    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10)


@pytest.mark.parametrize("arch", ["resnet18", "resnet18-cifar", "bottleneck"])
def test_permuted_resnet_computes_the_same_function(arch: str) -> None:
    model = resnet14_bottleneck() if arch == "bottleneck" else build_model(arch, seed=0)
    model = with_running_statistics(model, seed=1)
    twin = matching.permute_channels_randomly(model, seed=2)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(twin(images), model(images), rtol=1e-4, atol=1e-5)
    state, twin_state = model.state_dict(), twin.state_dict()
    moved = {k for k in state if not torch.equal(state[k], twin_state[k])}
    expected = {k for k, v in state.items() if v.ndim == 4 or "running_" in k} | {"fc.weight"}
    assert moved == expected  # BN scales and shifts are still all ones and zeros, so they cannot move
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(matching.resnet_permutation_axes(model)) == len(state) - len(counters)


def test_weight_matching_undoes_a_permutation_of_resnet18() -> None:
    model = with_running_statistics(build_model("resnet18", seed=0), seed=1)
    twin = matching.permute_channels_randomly(model, seed=2)
    matched = matching.weight_matching(model, twin)
    own, back = model.state_dict(), matched.state_dict()
    assert all(torch.equal(own[key], back[key]) for key in own)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(matched(images), twin(images), rtol=1e-4, atol=1e-5)


def test_aligned_path_of_a_permuted_resnet_has_no_barrier() -> None:
    torch.manual_seed(0)
    model = with_running_statistics(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), seed=1)  # ResNet10
    twin = matching.permute_channels_randomly(model, seed=2)
    generator = torch.Generator().manual_seed(3)
    images, labels = torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator)
    result = connectivity.linear_connectivity(model, twin, images, labels, images, labels, points=3,
                                              bn_modes=("interpolate",), align=True)
    assert [c.variant for c in result.curves] == ["interpolate", "interpolate+matched"]
    assert all(abs(v) < 1e-6 for v in result.curve("interpolate+matched").barriers().values())
    assert result.curve("interpolate").test_loss[1] != result.curve("interpolate+matched").test_loss[1]


def test_weight_matching_refuses_other_networks() -> None:
    """A plain chain is recognised from an example input only; a network with neither rule is refused with why."""
    with pytest.raises(MinimascopeError, match="recognised from an example input, which was not given"):
        matching.weight_matching(conv_bn_net(), conv_bn_net())
    mobilenet = build_model("torchvision:mobilenet_v2", 3, seed=0)
    with pytest.raises(MinimascopeError, match="no permutation rule for MobileNetV2"):
        matching.weight_matching(mobilenet, mobilenet, example=torch.zeros(2, 3, 32, 32))
