from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from minimascope import models
from minimascope.errors import MinimascopeError


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a = models.build_model("resnet18", seed=1).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    b = models.build_model("resnet18", seed=1).state_dict()
    c = models.build_model("resnet18", seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_architectures() -> None:
    paper = models.build_model("resnet18", seed=0)
    assert paper.conv1.kernel_size == (7, 7) and isinstance(paper.maxpool, torch.nn.MaxPool2d)
    cifar = models.build_model("resnet18-cifar", seed=0)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    assert paper.eval()(x).shape == cifar.eval()(x).shape == (2, 10)
    with pytest.raises(MinimascopeError, match="unknown architecture"):
        models.build_model("vgg11")


def imagenet_like_file(path: Path) -> dict[str, torch.Tensor]:
    """A 1000-class ResNet18 state dict, as torchvision's ImageNet file holds (random values)."""
    torch.manual_seed(5)
    state = resnet18(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_pretrained_from_local_file_replaces_only_the_head(tmp_path: Path) -> None:
    state = imagenet_like_file(tmp_path / "resnet18.pth")
    model = models.build_model("resnet18", seed=0)
    head_before = model.fc.weight.clone()
    with pytest.warns(UserWarning, match="not torchvision's published IMAGENET1K_V1"):
        models.init_pretrained(model, "resnet18", tmp_path / "resnet18.pth")
    loaded = model.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert model.fc.weight.shape == (10, 512) and torch.equal(model.fc.weight, head_before)


def test_pretrained_refuses_the_cifar_stem_and_foreign_files(tmp_path: Path) -> None:
    imagenet_like_file(tmp_path / "w.pth")
    with pytest.raises(MinimascopeError, match="ImageNet stem"):
        models.init_pretrained(models.build_model("resnet18-cifar"), "resnet18-cifar", tmp_path / "w.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(MinimascopeError, match="cannot read weights file"):
        models.init_pretrained(models.build_model("resnet18"), "resnet18", tmp_path / "junk.pth")
    with pytest.raises(MinimascopeError, match="weights file not found"):
        models.init_pretrained(models.build_model("resnet18"), "resnet18", tmp_path / "absent.pth")


def test_checkpoint_of_another_architecture_is_one_line(tmp_path: Path) -> None:
    cifar = models.build_model("resnet18-cifar", seed=0)
    path = tmp_path / "final.pt"
    torch.save(models.weights_payload(cifar, "resnet18-cifar", 10, {}), path)
    with pytest.raises(MinimascopeError, match="holds a resnet18-cifar network, not resnet18"):
        models.init_from_run(models.build_model("resnet18"), "resnet18", path)
    with pytest.raises(MinimascopeError) as error:
        models.load_state_checked(models.build_model("resnet18"), cifar.state_dict(), str(path))
    assert "\n" not in str(error.value) and "shape mismatch" in str(error.value) and "conv1.weight" in str(error.value)


def test_weights_round_trip(tmp_path: Path) -> None:
    model = models.build_model("resnet18", seed=3)
    torch.save(models.weights_payload(model, "resnet18", 10, {"std_multiplier": [1, 1, 1]}), tmp_path / "w.pt")
    loaded, payload = models.load_trained(tmp_path / "w.pt")
    assert payload["normalization"] == {"std_multiplier": [1, 1, 1]}
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded.eval()(x), model.eval()(x))
    with pytest.raises(MinimascopeError, match="not a run directory"):
        models.load_trained(tmp_path)  # a folder without run.json
