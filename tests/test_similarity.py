"""Value-level tests of the similarity measures, the activation capture and the similarity report."""

from __future__ import annotations

import csv
import itertools
import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from minimascope.compare import write_similarity
from minimascope.errors import MinimascopeError
from minimascope.similarity import (
    EXACT_EIGEN_LIMIT,
    MinibatchCKA,
    SimilarityWarning,
    capture_activations,
    check_layer_names,
    collect_activations,
    compare_activations,
    default_layers,
    linear_cka,
    mean_cca,
    procrustes_distance,
    similarity_matrices,
    svcca,
)


def gaussian(n: int, p: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn((n, p), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def orthogonal(p: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(gaussian(p, p, seed)).Q


def decaying(n: int, p: int, seed: int, rate: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """n × p activations whose singular values fall off as rate**i (like real layers, unlike noise)."""
    k = min(n, p)
    left = torch.linalg.qr(gaussian(n, k, seed)).Q
    right = torch.linalg.qr(gaussian(p, k, seed + 1)).Q
    return ((left * rate ** torch.arange(k, dtype=torch.float64)) @ right.T).to(dtype)


class TinyNet(nn.Module):
    """Three convs and a linear head on 3×8×8 inputs; registration order ≠ forward order."""

    def __init__(self, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.head = nn.Linear(8 * 4 * 4, classes)  # registered first, runs last
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.norm = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.norm(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        return self.head(x.flatten(1))


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, 3, 8, 8), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- plain measures

def test_identical_inputs_score_perfectly() -> None:
    x = gaussian(200, 30, 0)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert procrustes_distance(x, x) == pytest.approx(0.0, abs=1e-10)
    assert svcca(x, x) == pytest.approx(1.0, abs=1e-10)
    assert mean_cca(x, x) == pytest.approx(1.0, abs=1e-10)


def test_cka_and_procrustes_ignore_rotation_and_isotropic_scale() -> None:
    x, y = gaussian(300, 20, 1), gaussian(300, 20, 2) + 0.5 * gaussian(300, 20, 1)
    moved = 3.7 * x @ orthogonal(20, 3)
    assert linear_cka(moved, y) == pytest.approx(linear_cka(x, y), abs=1e-10)
    assert procrustes_distance(moved, y) == pytest.approx(procrustes_distance(x, y), abs=1e-10)
    assert svcca(moved, y) == pytest.approx(svcca(x, y), abs=1e-10)


def test_cca_ignores_any_invertible_linear_map() -> None:
    x, y = gaussian(400, 15, 4), gaussian(400, 15, 5) + gaussian(400, 15, 4)
    mixing = gaussian(15, 15, 6) + 4 * torch.eye(15, dtype=torch.float64)  # well conditioned
    assert mean_cca(x @ mixing, y) == pytest.approx(mean_cca(x, y), abs=1e-10)
    assert mean_cca(x @ mixing, x) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x @ mixing, x) < 0.99  # while CKA does see it


def test_gram_form_equals_feature_form() -> None:
    x, y = gaussian(150, 40, 7), gaussian(150, 70, 8) + gaussian(150, 70, 9)
    y[:, :40] += x
    assert linear_cka(x, y, form="gram") == pytest.approx(linear_cka(x, y, form="feature"), abs=1e-10)


@pytest.mark.parametrize("noise", [0.0, 0.5, 2.0])
def test_signal_plus_uncorrelated_noise_has_closed_form(noise: float) -> None:
    """Y = X + E with XᵀX = n·I, EᵀE = n·σ²·I and XᵀE = 0 (both centred: an exact version of
    "independent noise of variance σ²"). Then YᵀX = n·I and YᵀY = n(1+σ²)·I, so

    * CKA = ‖YᵀX‖² / (‖XᵀX‖ ‖YᵀY‖) = n²p / (n√p · n(1+σ²)√p) = 1 / (1+σ²);
    * Procrustes: X̃ᵀỸ = n·I / (√(np) · √(np(1+σ²))), nuclear norm p / (p√(1+σ²)), so
      d = 2 − 2/√(1+σ²);
    * every canonical correlation is the cosine between x_i and x_i + e_i, 1/√(1+σ²), and SVCCA
      keeps all p directions (each holds 1/p of a flat spectrum), so both CCA means are that.
    """
    n, p = 500, 6
    basis = gaussian(n, 2 * p, 10)
    q = torch.linalg.qr(basis - basis.mean(0)).Q * math.sqrt(n)
    x, e = q[:, :p], noise * q[:, p:]
    y = x + e
    scale = 1.0 / math.sqrt(1.0 + noise**2)
    assert linear_cka(x, y) == pytest.approx(scale**2, abs=1e-12)
    assert procrustes_distance(x, y) == pytest.approx(2.0 - 2.0 * scale, abs=1e-12)
    assert mean_cca(x, y) == pytest.approx(scale, abs=1e-12)
    assert svcca(x, y) == pytest.approx(scale, abs=1e-12)


def test_degenerate_inputs_give_defined_values_with_warnings() -> None:
    x = gaussian(50, 5, 11)
    constant = torch.full((50, 4), 3.25, dtype=torch.float64)
    expected = {linear_cka: 0.0, procrustes_distance: 2.0, svcca: 0.0, mean_cca: 0.0}
    for measure, value in expected.items():
        with pytest.warns(SimilarityWarning, match="variance"):
            assert measure(x, constant) == value
        with pytest.warns(SimilarityWarning):
            assert measure(constant, constant) == value
    one = torch.ones((1, 3), dtype=torch.float64)
    with pytest.warns(SimilarityWarning):
        assert linear_cka(one, one) == 0.0
    with pytest.raises(MinimascopeError, match="NaN"):
        linear_cka(x, torch.full((50, 2), float("nan")))


def test_cca_refuses_when_kept_rank_reaches_n_minus_1() -> None:
    x, y = gaussian(20, 40, 12), gaussian(20, 40, 13)  # centred rank 19 = n − 1
    with pytest.raises(MinimascopeError, match="1 by construction"):
        mean_cca(x, y)
    with pytest.warns(SimilarityWarning, match="canonical correlations are 1 by construction"):
        svcca(x, y)  # 99% keeps 18 + 18 of 19 possible directions: some forced ones, flagged
    centred = gaussian(20, 19, 14)
    flat = torch.linalg.qr(centred - centred.mean(0)).Q  # 19 directions of equal variance
    with pytest.raises(MinimascopeError, match="1 by construction"):
        svcca(flat, y)


def test_bad_plain_input_is_one_line_error() -> None:
    with pytest.raises(MinimascopeError, match="sample counts differ") as info:
        linear_cka(gaussian(10, 3, 0), gaussian(11, 3, 0))
    assert "\n" not in str(info.value)
    with pytest.raises(MinimascopeError, match="no samples"):
        linear_cka(torch.zeros((0, 3)), torch.zeros((0, 3)))
    with pytest.raises(MinimascopeError, match="2-D"):
        linear_cka(torch.zeros(5), torch.zeros(5))


# ---------------------------------------------------------------- minibatch CKA

def hsic_by_definition(k: np.ndarray, g: np.ndarray) -> float:
    """Unbiased HSIC as the U-statistic over ordered distinct quadruples (Song et al. 2012, thm 2):
    mean of k_ij·g_ij + k_ij·g_qr − 2·k_ij·g_iq (the paper's L is ``g`` here)."""
    quads = np.array(list(itertools.permutations(range(k.shape[0]), 4)))
    i, j, q, r = quads.T
    return float(np.mean(k[i, j] * g[i, j] + k[i, j] * g[q, r] - 2 * k[i, j] * g[i, q]))


def test_minibatch_cka_equals_unbiased_hsic_by_definition() -> None:
    x, y = gaussian(15, 4, 14) + 5.0, gaussian(15, 6, 15)  # an offset: no centring assumed
    y[:, :4] += x
    batches = [slice(0, 7), slice(7, 15)]
    accumulator = MinibatchCKA()
    sums = np.zeros(3)
    for b in batches:
        accumulator.update([x[b]], [y[b]])
        k, g = (x[b] @ x[b].T).numpy(), (y[b] @ y[b].T).numpy()
        sums += [hsic_by_definition(k, g), hsic_by_definition(k, k), hsic_by_definition(g, g)]
    assert accumulator.value()[0, 0] == pytest.approx(sums[0] / math.sqrt(sums[1] * sums[2]), abs=1e-12)


def test_debiased_cka_equals_unbiased_hsic_by_definition() -> None:
    """Against the U-statistic over quadruples on raw (uncentred, offset) features: centring first, as
    linear_cka does, leaves the unbiased HSIC unchanged, and both forms agree to float64 precision."""
    x, y = gaussian(12, 4, 30) + 5.0, gaussian(12, 6, 31) - 2.0
    y[:, :4] += 0.5 * x
    k, g = (x @ x.T).numpy(), (y @ y.T).numpy()
    expected = hsic_by_definition(k, g) / math.sqrt(hsic_by_definition(k, k) * hsic_by_definition(g, g))
    for form in ("gram", "feature"):
        assert linear_cka(x, y, debiased=True, form=form) == pytest.approx(expected, abs=1e-12)
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(MinimascopeError, match="at least 4 samples"):
        linear_cka(x[:3], y[:3], debiased=True)


def test_debiased_cka_is_about_zero_for_independent_wide_layers() -> None:
    """Plain CKA of two unrelated ReLU layers on 250 images is far from 0, and more so the wider they are
    (its bias grows with width / n); the debiased estimate stays near 0 at every width."""
    generator = torch.Generator().manual_seed(32)

    def relu_features(width: int) -> torch.Tensor:
        inputs = torch.randn((250, 64), generator=generator, dtype=torch.float64)
        return torch.relu(inputs @ torch.randn((64, width), generator=generator, dtype=torch.float64))

    plain, debiased = [], []
    for width in (16_384, 4096, 1024):
        a, b = relu_features(width), relu_features(width)
        plain.append(linear_cka(a, b))
        debiased.append(linear_cka(a, b, debiased=True))
    assert min(plain) > 0.25 and plain == sorted(plain, reverse=True)
    assert max(abs(v) for v in debiased) < 0.03


def test_matrix_path_debiased_cka_matches_plain_function() -> None:
    """float32 activations over two Gram panels (n > 512), across two networks and within one."""
    acts_a = {"wide": decaying(700, 300, 33, 0.99, torch.float32), "narrow": gaussian(700, 12, 34, torch.float32)}
    acts_b = {"mid": gaussian(700, 40, 35, torch.float32)}
    acts_b["mid"][:, :12] += acts_a["narrow"]
    plain = {name: t.double().clone() for name, t in [*acts_a.items(), *acts_b.items()]}
    across = compare_activations({k: v.clone() for k, v in acts_a.items()}, dict(acts_b),
                                 measures=("cka_debiased",))[0]
    within = compare_activations(dict(acts_a), measures=("cka", "cka_debiased"))[1]
    for i, a in enumerate(acts_a):
        assert across.values[i, 0] == pytest.approx(linear_cka(plain[a], plain["mid"], debiased=True), abs=1e-5)
        for j, b in enumerate(acts_a):
            assert within.values[i, j] == pytest.approx(linear_cka(plain[a], plain[b], debiased=True), abs=1e-5)
    assert across.measure == "cka_debiased" and across.kind == "similarity"


def test_minibatch_cka_approaches_full_cka_as_batches_grow() -> None:
    x = gaussian(2000, 8, 16)
    y = torch.cat([x[:, :4], gaussian(2000, 4, 17)], 1) @ gaussian(8, 8, 18)
    full = linear_cka(x, y)
    errors = []
    for size in (10, 100, 2000):
        accumulator = MinibatchCKA()
        for start in range(0, 2000, size):
            accumulator.update([x[start:start + size]], [y[start:start + size]])
        errors.append(abs(accumulator.value()[0, 0] - full))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01


def test_minibatch_cka_rejects_tiny_batches_and_handles_constant_layers() -> None:
    with pytest.raises(MinimascopeError, match="at least 4"):
        MinibatchCKA().update([gaussian(3, 2, 0)], [gaussian(3, 2, 1)])
    accumulator = MinibatchCKA()
    accumulator.update([gaussian(10, 3, 0), torch.zeros((10, 3), dtype=torch.float64)])
    with pytest.warns(SimilarityWarning):
        values = accumulator.value()
    assert np.isfinite(values).all()
    assert values[0, 0] == pytest.approx(1.0) and values[1, 1] == 0.0 and values[0, 1] == 0.0


# ---------------------------------------------------------------- whole-network path

def test_matrix_path_matches_plain_measures() -> None:
    """float32 activations through the tiled / factored path against the float64 plain functions."""
    acts_a = {"wide": decaying(300, 400, 20, 0.99, torch.float32), "narrow": gaussian(300, 12, 21, torch.float32)}
    acts_b = {"mid": decaying(300, 150, 22, 0.985, torch.float32)}
    acts_b["mid"][:, :12] += acts_a["narrow"]
    plain = {name: t.double().clone() for name, t in [*acts_a.items(), *acts_b.items()]}
    cka, sv, pro = compare_activations(acts_a, acts_b, measures=("cka", "svcca", "procrustes"), procrustes_keep=1.0)
    for i, a in enumerate(acts_a):
        assert cka.values[i, 0] == pytest.approx(linear_cka(plain[a], plain["mid"]), abs=1e-5)
        assert sv.values[i, 0] == pytest.approx(svcca(plain[a], plain["mid"]), abs=1e-4)
        assert pro.values[i, 0] == pytest.approx(procrustes_distance(plain[a], plain["mid"]), abs=1e-4)
        assert pro.error_bound[i, 0] < 1e-3
    assert cka.layers_a == ("wide", "narrow") and cka.layers_b == ("mid",) and cka.n_samples == 300


def test_cells_whose_canonical_correlations_are_one_by_construction_are_marked() -> None:
    """On 20 samples two 15-wide noise layers keep 15 + 15 > 19 directions together: some canonical
    correlations are 1 whatever the layers, so those SVCCA cells are marked; 3-wide layers are not."""
    acts = {"wide": gaussian(20, 15, 36), "narrow": gaussian(20, 3, 37), "other": gaussian(20, 15, 38)}
    with pytest.warns(SimilarityWarning, match="1 by construction"):
        svcca_matrix, cka = compare_activations(acts, measures=("svcca", "cka"))
    marked = svcca_matrix.by_construction
    assert marked.tolist() == [[False, False, True], [False, False, False], [True, False, False]]
    assert svcca_matrix.to_dict()["by_construction"] == marked.tolist() and cka.by_construction is None


@pytest.mark.parametrize("limit", [EXACT_EIGEN_LIMIT, 128])  # 128: randomized eigen-decomposition
@pytest.mark.parametrize("keep", [0.99, 0.999])
def test_truncated_procrustes_error(monkeypatch: pytest.MonkeyPatch, limit: int, keep: float) -> None:
    """The approximation: each layer keeps the directions explaining ``keep`` of its variance.
    Against the exact float64 distance the error stays within the rigorous per-pair bound and,
    here, under 6·(1 − keep) (≈ 2·(1 − keep) for a layer against a copy of itself: 0.002 at the
    default 0.999); SVCCA, which keeps 99% anyway, is unaffected (to 1e-3 when randomized)."""
    x, y = decaying(300, 500, 23, 0.9), decaying(300, 200, 25, 0.9)
    y += 0.5 * decaying(300, 200, 23, 0.9)[:, :200]
    exact = [(procrustes_distance(layer, y), svcca(layer, y)) for layer in (x, y)]
    acts_a, acts_b = {"x": x.float(), "y": y.float()}, {"y": y.float().clone()}
    monkeypatch.setattr("minimascope.similarity.factors.EXACT_EIGEN_LIMIT", limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the subspaces reach ``keep``: no "short" warning
        pro, sv = compare_activations(acts_a, acts_b, measures=("procrustes", "svcca"), procrustes_keep=keep)
    for i, (distance, correlation) in enumerate(exact):
        error = abs(pro.values[i, 0] - distance)
        assert error <= pro.error_bound[i, 0] + 1e-5
        assert error < 6 * (1 - keep)
        assert sv.values[i, 0] == pytest.approx(correlation, abs=1e-3)
    assert pro.values[1, 0] == pytest.approx(2 * (1 - keep), rel=0.1)
    assert "error_bound" in pro.convention


@pytest.mark.filterwarnings("ignore::minimascope.similarity.SimilarityWarning")  # forced CCA ones: few samples
def test_networks_differ_from_each_other_more_than_from_themselves() -> None:
    inputs = images(120)
    net, other = TinyNet(seed=0), TinyNet(seed=1)
    layers = ["conv1", "conv2", "conv3", "head"]
    itself = similarity_matrices(net, inputs, net, inputs, layers_a=layers, layers_b=layers,
                                 measures=("cka", "svcca", "procrustes", "cka_minibatch"), minibatch_size=40)
    versus = similarity_matrices(net, inputs, other, inputs, layers_a=layers, layers_b=layers,
                                 measures=("cka", "svcca", "procrustes", "cka_minibatch"), minibatch_size=40)
    for self_matrix, other_matrix in zip(itself, versus):
        same_layer_self = np.diag(self_matrix.values)
        same_layer_other = np.diag(other_matrix.values)
        if self_matrix.kind == "similarity":
            assert np.allclose(same_layer_self, 1.0) and (same_layer_other < 0.999).all()
        else:
            assert np.allclose(same_layer_self, 0.0) and (same_layer_other > 1e-3).all()
        assert np.isfinite(other_matrix.values).all()
        assert np.allclose(self_matrix.values, self_matrix.values.T, atol=1e-6)


def test_self_comparison_runs_the_network_once_and_selects_layers() -> None:
    net, inputs = TinyNet(), images(60)
    calls = []
    net.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    cka, = similarity_matrices(net, inputs, net, inputs, layers_a=["conv1", "conv3"], layers_b=["conv3", "head"],
                               measures=("cka",), batch_size=25)
    assert sum(calls) == 1 + 60  # a one-image memory check, then one pass over the images, not one per side
    assert cka.values.shape == (2, 2) and cka.values[1, 0] == pytest.approx(1.0)


def test_streamed_minibatch_cka_equals_collected() -> None:
    a, b, inputs = TinyNet(seed=0), TinyNet(seed=1), images(90)
    layers = ["conv1", "conv2", "head"]
    streamed, = similarity_matrices(a, inputs, b, inputs, layers_a=layers, layers_b=layers,
                                    measures=("cka_minibatch",), minibatch_size=30)
    acts_a, acts_b = (collect_activations(m, inputs, layers) for m in (a, b))
    collected, = compare_activations(acts_a, acts_b, measures=("cka_minibatch",), minibatch_size=30)
    assert np.allclose(streamed.values, collected.values, atol=1e-6)
    assert "3 minibatches of 30" in streamed.convention


def test_bad_network_input_is_one_line_error() -> None:
    net, inputs = TinyNet(), images(10)
    cases = [
        (dict(model_b=TinyNet(classes=5)), "output classes"),
        (dict(inputs_b=images(9)), "sample counts differ"),
        (dict(inputs_a=images(0), inputs_b=images(0)), "no samples"),
        (dict(layers_a=["conv_1"]), "did you mean conv1"),
        (dict(measures=("cka", "nope")), "unknown measure nope"),
        (dict(policy="max"), "unknown activation policy"),
        (dict(procrustes_keep=1.5), "procrustes_keep is a fraction"),
    ]
    for override, message in cases:
        args = dict(model_a=net, inputs_a=inputs, model_b=TinyNet(seed=1), inputs_b=inputs) | override
        with pytest.raises(MinimascopeError, match=message) as info:
            similarity_matrices(args.pop("model_a"), args.pop("inputs_a"), args.pop("model_b"), args.pop("inputs_b"),
                                **args)
        assert "\n" not in str(info.value)


@pytest.mark.filterwarnings("ignore::minimascope.similarity.SimilarityWarning")  # beyond the one checked
def test_constant_layer_in_a_network_gives_finite_matrices() -> None:
    net, inputs = TinyNet(), images(40)
    nn.init.zeros_(net.conv2.weight)
    nn.init.zeros_(net.conv2.bias)
    with pytest.warns(SimilarityWarning, match="conv2"):
        matrices = similarity_matrices(net, inputs, TinyNet(seed=2), inputs, layers_a=["conv1", "conv2"],
                                       layers_b=["conv1"], measures=("cka", "svcca", "procrustes", "cka_minibatch"),
                                       minibatch_size=20)
    for matrix in matrices:
        assert np.isfinite(matrix.values).all()
    assert [m.values[1, 0] for m in matrices] == [0.0, 0.0, 2.0, 0.0]


# ---------------------------------------------------------------- activations

def test_default_layers_follow_forward_order() -> None:
    assert default_layers(TinyNet(), images(1)) == ["conv1", "conv2", "conv3", "head"]
    from torchvision.models import resnet18

    net = resnet18(num_classes=10)
    layers = default_layers(net, torch.randn(1, 3, 32, 32))
    assert len(layers) == 21 and layers[0] == "conv1" and layers[-1] == "fc"
    assert layers.index("layer2.0.downsample.0") == layers.index("layer2.0.conv2") + 1
    blocks = default_layers(net, torch.randn(1, 3, 32, 32), "blocks")
    assert blocks == ["conv1", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                      "layer4.0", "layer4.1", "fc"]
    with pytest.raises(MinimascopeError, match="residual blocks"):
        default_layers(TinyNet(), images(1), "blocks")


def test_capture_policies_and_modes() -> None:
    net = TinyNet().train()
    net.conv1.eval()  # a mixed mode must come back as it was
    before = net.norm.running_mean.clone()
    flat = collect_activations(net, images(30), ["conv2", "head"], batch_size=7)
    pooled = collect_activations(net, images(30), ["conv2"], policy="spatial_mean")
    assert flat["conv2"].shape == (30, 8 * 4 * 4) and flat["head"].shape == (30, 4)
    assert torch.allclose(pooled["conv2"], flat["conv2"].view(30, 8, 16).mean(2), atol=1e-6)
    assert net.training and not net.conv1.training and net.conv2.training
    assert torch.equal(net.norm.running_mean, before)  # eval mode: no batch-norm update


def test_hooks_are_removed_even_after_errors() -> None:
    net = TinyNet()

    def hooks() -> int:
        return sum(len(m._forward_hooks) for m in net.modules())

    with pytest.raises(RuntimeError, match="boom"):
        with capture_activations(net, ["conv1", "head"]):
            assert hooks() == 2
            raise RuntimeError("boom")
    assert hooks() == 0
    with pytest.raises(RuntimeError):
        collect_activations(net, torch.randn(4, 5, 8, 8), ["conv1"])  # wrong channel count
    assert hooks() == 0


def test_module_called_twice_per_forward_is_an_error() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x))

    with pytest.raises(MinimascopeError, match="more than once"):
        collect_activations(Twice(), images(4), ["conv"])


def test_unknown_layer_names_suggest_close_matches() -> None:
    with pytest.raises(MinimascopeError, match="did you mean conv2") as info:
        check_layer_names(TinyNet(), ["conv1", "cnv2"])
    assert "\n" not in str(info.value)
    with pytest.raises(MinimascopeError, match="listed twice"):
        check_layer_names(TinyNet(), ["conv1", "conv1"])


# ---------------------------------------------------------------- report

@pytest.mark.filterwarnings("ignore::minimascope.similarity.SimilarityWarning")  # forced CCA ones: few samples
def test_write_similarity_files(tmp_path) -> None:
    net, inputs = TinyNet(), images(50)
    matrices = similarity_matrices(net, inputs, TinyNet(seed=3), inputs, measures=("cka", "procrustes"),
                                   label_a="SGD", label_b="AdaHessian")
    written = write_similarity(matrices, tmp_path / "similarity")
    assert sorted(p.name for p in written) == sorted(f"{m}.{e}" for m in ("cka", "procrustes")
                                                     for e in ("csv", "json", "png"))
    rows = list(csv.reader((tmp_path / "similarity" / "cka.csv").open()))
    assert rows[0] == ["layer", "conv1", "conv2", "conv3", "head"] and [r[0] for r in rows[1:]] == rows[0][1:]
    assert np.allclose(np.array([r[1:] for r in rows[1:]], dtype=float), matrices[0].values)
    saved = json.loads((tmp_path / "similarity" / "procrustes.json").read_text())
    assert saved["kind"] == "distance" and saved["label_a"] == "SGD" and saved["n_samples"] == 50
    assert saved["policy"] == "flatten" and len(saved["error_bound"]) == 4 and "Ding" in saved["convention"]
    assert (tmp_path / "similarity" / "cka.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "similarity").glob(".*"))  # no temporary files left


def test_activations_too_large_for_memory_are_refused_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    """resnet18 flattened on 32×32 inputs is 50,698 floats per image (stem 16,384 … fc 10)."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=10).eval()
    inputs = torch.randn(8, 3, 32, 32)
    widths = collect_activations(model, inputs[:1], default_layers(model, inputs[:1]), batch_size=1)
    assert sum(t.shape[1] for t in widths.values()) == 50_698
    needed = 2 * 4 * 10_000 * 50_698  # two copies' worth for 10,000 images of one network
    memory = "minimascope.similarity.matrices.physical_memory_bytes"  # patched where the check reads it
    monkeypatch.setattr(memory, lambda: needed)  # 80% of it is not enough
    big = torch.zeros(10_000, 3, 32, 32)
    with pytest.raises(MinimascopeError, match="need about 4 GiB to compare, more than this machine's 4 GiB"):
        similarity_matrices(model, big, model, big, measures=("cka",))
    monkeypatch.setattr(memory, lambda: 2 * needed)
    similarity_matrices(model, inputs, model, inputs, measures=("cka",))  # small: fine
