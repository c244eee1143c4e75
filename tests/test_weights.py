"""Weight statistics: ranks against closed forms and an independent numpy/scipy computation,
invariances, sparsity, distance from init, conv reshaping, and the result files."""

from __future__ import annotations

import csv
import json
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import entropy
from torch import nn

from minimascope.errors import MinimascopeError
from minimascope.minima.weights import (
    WEIGHTS_FORMAT,
    effective_rank,
    layer_statistics,
    read_weight_statistics,
    singular_values,
    small_weight_share,
    stable_rank,
    weight_layers,
    write_weight_statistics,
)
from minimascope.models import build_model


def orthonormal_columns(rows: int, cols: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q


def with_spectrum(rows: int, cols: int, singular_values: list[float], seed: int = 0) -> torch.Tensor:
    """U diag(s) Vᵀ with random orthonormal U, V: a matrix whose singular values are exactly ``s``."""
    k = len(singular_values)
    u, v = orthonormal_columns(rows, k, seed), orthonormal_columns(cols, k, seed + 1)
    return u @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ v.T


def entropy_rank(singular_values: list[float]) -> float:
    p = np.asarray(singular_values) / sum(singular_values)
    p = p[p > 0]
    return math.exp(-float(np.sum(p * np.log(p))))


# ----------------------------------------------------------------------------- ranks


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_identity_has_effective_and_stable_rank_n(n: int) -> None:
    assert effective_rank(torch.eye(n)) == pytest.approx(n, rel=1e-12)
    assert stable_rank(torch.eye(n)) == pytest.approx(n, rel=1e-12)


def test_rank_one_matrix_has_ranks_one() -> None:
    generator = torch.Generator().manual_seed(0)
    w = torch.outer(torch.randn(30, generator=generator), torch.randn(50, generator=generator))
    assert effective_rank(w) == pytest.approx(1.0, abs=1e-9)
    assert stable_rank(w) == pytest.approx(1.0, abs=1e-12)


def test_spectrum_three_one_gives_closed_forms() -> None:
    w = with_spectrum(6, 4, [3.0, 1.0])
    p = np.array([0.75, 0.25])
    assert effective_rank(w) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rel=1e-12)
    assert effective_rank(w) == pytest.approx(math.exp(entropy(p)), rel=1e-12)
    assert stable_rank(w) == pytest.approx(10 / 9, rel=1e-12)


def test_ranks_match_an_independent_numpy_computation() -> None:
    w = torch.randn(40, 25, generator=torch.Generator().manual_seed(3))
    s = np.linalg.svd(w.numpy().astype(np.float64), compute_uv=False)
    assert effective_rank(w) == pytest.approx(math.exp(entropy(s)), rel=1e-10)  # entropy normalises s to sum 1
    assert stable_rank(w) == pytest.approx(np.linalg.norm(w.double().numpy(), "fro") ** 2
                                           / np.linalg.norm(w.double().numpy(), 2) ** 2, rel=1e-10)
    assert 1 <= stable_rank(w) <= effective_rank(w) <= 25


@pytest.mark.parametrize("shape", [(10, 300), (300, 10), (17, 17)])
def test_singular_values_match_numpy(shape: tuple[int, int]) -> None:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = np.linalg.svd(w.numpy(), compute_uv=False)
    assert singular_values(w).numpy() == pytest.approx(expected, rel=1e-12)


def test_rounding_noise_is_not_rank() -> None:
    # An exactly rank-2 float32 matrix: its float32 rounding noise would add ~1e-6 to the effective rank.
    w = with_spectrum(64, 48, [2.0, 1.0]).float()
    values = singular_values(w)
    assert (values[2:] == 0).all()
    raw = np.linalg.svd(w.double().numpy(), compute_uv=False)
    assert abs(math.exp(entropy(raw)) - entropy_rank([2.0, 1.0])) > 1e-6
    assert effective_rank(w) == pytest.approx(entropy_rank([2.0, 1.0]), abs=1e-9)


def test_zero_matrix_has_ranks_zero() -> None:
    assert effective_rank(torch.zeros(3, 5)) == 0.0
    assert stable_rank(torch.zeros(3, 5)) == 0.0


@pytest.mark.parametrize("scale", [1e-4, 0.5, 37.0])
def test_ranks_are_invariant_to_scale(scale: float) -> None:
    w = with_spectrum(9, 12, [5.0, 2.0, 1.0, 0.1])
    assert effective_rank(scale * w) == pytest.approx(effective_rank(w), rel=1e-10)
    assert stable_rank(scale * w) == pytest.approx(stable_rank(w), rel=1e-10)


def test_ranks_are_invariant_to_orthogonal_rotations() -> None:
    w = torch.randn(10, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q_left, q_right = orthonormal_columns(10, 10, 5), orthonormal_columns(8, 8, 6)
    rotated = q_left @ w @ q_right
    assert not torch.allclose(rotated, w)
    assert effective_rank(rotated) == pytest.approx(effective_rank(w), rel=1e-10)
    assert stable_rank(rotated) == pytest.approx(stable_rank(w), rel=1e-10)


def test_ranks_refuse_non_matrices_and_non_finite_values() -> None:
    with pytest.raises(MinimascopeError, match="matrix"):
        effective_rank(torch.ones(2, 2, 2))
    with pytest.raises(MinimascopeError, match="NaN"):
        stable_rank(torch.tensor([[1.0, float("nan")]]))


# ----------------------------------------------------------------------------- sparsity and distance


def test_small_weight_share_counts_strictly_below_threshold() -> None:
    w = torch.tensor([[0.0, 5e-4, -9e-4], [1e-3, -2e-3, 1.0]])
    assert small_weight_share(w) == pytest.approx(3 / 6)
    assert small_weight_share(w, threshold=1.5e-3) == pytest.approx(4 / 6)
    stats = layer_statistics({"fc.weight": w}, threshold=1.5e-3)
    assert stats.threshold == 1.5e-3
    assert stats.layers[0].small_weight_share == pytest.approx(4 / 6)


def small_net() -> nn.Module:
    return nn.Sequential(OrderedDict(
        bn_in=nn.BatchNorm2d(3), conv=nn.Conv2d(3, 4, 3), bn=nn.BatchNorm2d(4), flat=nn.Flatten(),
        fc=nn.Linear(4 * 6 * 6, 10)))


def test_distance_from_init_is_zero_for_identical_weights() -> None:
    state = small_net().state_dict()
    stats = layer_statistics(state, {key: value.clone() for key, value in state.items()})
    assert len(stats.layers) == 2
    assert stats.has_initial
    assert all(layer.distance_from_init == 0.0 and layer.relative_distance_from_init == 0.0 for layer in stats.layers)


def test_distance_from_init_of_a_known_difference() -> None:
    start = torch.ones(3, 4)
    trained = start.clone()
    trained[0, 1] += 3.0
    trained[2, 3] -= 4.0
    layer = layer_statistics({"fc.weight": trained, "fc.bias": torch.zeros(3)}, {"fc.weight": start}).layers[0]
    assert layer.distance_from_init == pytest.approx(5.0, rel=1e-12)
    assert layer.relative_distance_from_init == pytest.approx(5.0 / math.sqrt(12), rel=1e-12)
    assert layer.frobenius_norm == pytest.approx(float(torch.linalg.norm(trained.double())), rel=1e-12)


def test_relative_distance_from_a_zero_init_is_nan() -> None:
    layer = layer_statistics({"fc.weight": torch.ones(2, 2)}, {"fc.weight": torch.zeros(2, 2)}).layers[0]
    assert layer.distance_from_init == pytest.approx(2.0)
    assert math.isnan(layer.relative_distance_from_init)


def test_without_initial_weights_distances_are_none() -> None:
    layer = layer_statistics({"fc.weight": torch.ones(2, 2)}).layers[0]
    assert layer.distance_from_init is None and layer.relative_distance_from_init is None


def test_initial_weights_must_match() -> None:
    with pytest.raises(MinimascopeError, match="lack 1 of the layers, the first fc"):
        layer_statistics({"fc.weight": torch.ones(2, 2)}, {"other.weight": torch.ones(2, 2)})
    with pytest.raises(MinimascopeError, match="shape"):
        layer_statistics({"fc.weight": torch.ones(2, 2)}, {"fc.weight": torch.ones(2, 3)})
    with pytest.raises(MinimascopeError, match="threshold"):
        layer_statistics({"fc.weight": torch.ones(2, 2)}, threshold=0.0)
    with pytest.raises(MinimascopeError, match="no 2-D or 4-D"):
        layer_statistics({"bn.weight": torch.ones(2)})


# ----------------------------------------------------------------------------- layers of a network


def test_conv_kernel_is_reshaped_out_by_in_times_window() -> None:
    # Two output-channel patterns over (in=2, 3, 3) mixed into 5 output channels with singular values
    # (4, 1): rank 2 as a 5 × 18 matrix; read as (5·2) × 9 or any other layout the rank would be higher.
    patterns = orthonormal_columns(18, 2, 11).T  # 2 × 18, orthonormal rows
    mixing = orthonormal_columns(5, 2, 12)  # 5 × 2, orthonormal columns
    kernel = (mixing @ torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64)) @ patterns).reshape(5, 2, 3, 3)
    assert torch.linalg.matrix_rank(kernel.reshape(10, 9)) > 2
    conv = nn.Conv2d(2, 5, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(kernel)
    layer = layer_statistics(nn.Sequential(OrderedDict(conv=conv)).state_dict()).layers[0]
    assert layer.layer == "conv" and layer.shape == (5, 2, 3, 3)
    assert layer.singular_values[:2] == pytest.approx((4.0, 1.0), rel=1e-6)  # float32 kernel
    assert len(layer.singular_values) == 5 and max(layer.singular_values[2:]) < 1e-5
    assert layer.effective_rank == pytest.approx(entropy_rank([4.0, 1.0]), rel=1e-5)
    assert layer.stable_rank == pytest.approx(17 / 16, rel=1e-5)


def test_layers_are_convs_and_linears_named_by_module() -> None:
    assert list(weight_layers(small_net().state_dict())) == ["conv", "fc"]


def test_resnet18_has_its_21_conv_and_linear_layers() -> None:
    names = list(weight_layers(build_model("resnet18-cifar", seed=0).state_dict()))
    assert len(names) == 21
    assert names[0] == "conv1" and names[-1] == "fc" and "layer2.0.downsample.0" in names
    assert not any("bn" in name for name in names)


def test_independent_inits_are_about_root_two_norms_apart() -> None:
    # Two independent zero-mean inits of the same scale: ‖W − W₀‖² ≈ ‖W‖² + ‖W₀‖² ≈ 2‖W₀‖².
    def state(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return nn.Sequential(OrderedDict(fc=nn.Linear(300, 200))).state_dict()

    with torch.random.fork_rng(devices=[]):
        layer = layer_statistics(state(0), state(1)).layers[0]
    assert layer.relative_distance_from_init == pytest.approx(math.sqrt(2), rel=0.01)
    assert len(layer.singular_values) == 200


# ----------------------------------------------------------------------------- files


def test_write_and_read_back(tmp_path) -> None:
    state = OrderedDict(conv=torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0)),
                        fc=torch.zeros(3, 4))
    state = {f"{name}.weight": value for name, value in state.items()}
    initial = {key: torch.ones_like(value) for key, value in state.items()}
    stats = layer_statistics(state, initial, threshold=0.05, label="tiny")
    paths = write_weight_statistics(stats, tmp_path / "out")
    assert [p.name for p in paths] == ["weights.json", "weights.csv", "spectra.png"]

    back = read_weight_statistics(tmp_path / "out")
    assert back == stats
    assert read_weight_statistics(paths[0]) == stats
    assert json.loads(paths[0].read_text())["format"] == WEIGHTS_FORMAT

    rows = list(csv.DictReader(paths[1].open()))
    assert [row["layer"] for row in rows] == ["conv", "fc"]
    assert rows[0]["shape"] == "4x2x3x3" and rows[0]["cols"] == "18"
    assert float(rows[0]["effective_rank"]) == stats.layers[0].effective_rank
    assert float(rows[1]["small_weight_share"]) == 1.0 and float(rows[1]["effective_rank"]) == 0.0
    with Image.open(paths[2]) as image:
        assert image.format == "PNG" and image.width > 500


def test_reader_refuses_other_files(tmp_path) -> None:
    (tmp_path / "weights.json").write_text(json.dumps({"format": "minimascope-mistakes-v1"}))
    with pytest.raises(MinimascopeError, match="not a minimascope-weights-v1"):
        read_weight_statistics(tmp_path)
    with pytest.raises(MinimascopeError, match="not found"):
        read_weight_statistics(tmp_path / "missing.json")
    (tmp_path / "weights.json").write_text(json.dumps({"format": WEIGHTS_FORMAT, "layers": [{}]}))
    with pytest.raises(MinimascopeError, match="malformed"):
        read_weight_statistics(tmp_path)
