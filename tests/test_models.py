from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import resnet18

from minimascope import layers, models
from minimascope.errors import MinimascopeError

pytestmark = pytest.mark.usefixtures("one_thread")  # small forwards: a second thread only waits on shared cores


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


# ----------------------------------------------------------------------------- the model registry


def test_builtin_resnets_are_todays_networks_bit_for_bit() -> None:
    """The registry builds resnet18 and resnet18-cifar as before it existed: same init for a seed, so the runs
    of existing configs are the same runs."""
    for arch in ("resnet18", "resnet18-cifar"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4)
            reference = resnet18(weights=None, num_classes=10)
            if arch == "resnet18-cifar":
                reference.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        built = models.build_model(arch, 10, seed=4).state_dict()
        assert built.keys() == reference.state_dict().keys()
        assert all(torch.equal(built[k], v) for k, v in reference.state_dict().items()), arch


def test_any_torchvision_model_sized_to_the_data() -> None:
    model = models.build_model("torchvision:resnet34", 3, seed=0)
    assert model.eval()(torch.randn(2, 3, 24, 24)).shape == (2, 3) and len(model.layer3) == 6
    gray = models.build_model("resnet18-cifar", 10, seed=0, in_channels=1)
    assert gray.conv1.in_channels == 1 and gray.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    squeeze = models.build_model("torchvision:squeezenet1_1", 4, seed=0, in_channels=1)  # a Conv2d head
    assert squeeze.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 4) and squeeze.features[0].in_channels == 1
    assert models.build_model("resnet18", 5, seed=0, in_channels=1).eval()(torch.randn(1, 1, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize(("arch", "message"), [
    ("vgg11", "unknown architecture 'vgg11'; a torchvision or timm model is written torchvision:vgg11 or timm:vgg11"),
    ("resnet18cifar", "did you mean resnet18-cifar\\?"),
    ("torchvison:resnet34", "did you mean torchvision:resnet34\\?"),
    ("torchvision:resnet43", "unknown torchvision model 'resnet43'; did you mean torchvision:resnet34"),
    ("torchvision:fasterrcnn_resnet50_fpn", "unknown torchvision model"),  # detection, not classification
    ("torchvision:", "unknown architecture"),
])
def test_unknown_architectures_are_one_line(arch: str, message: str) -> None:
    with pytest.raises(MinimascopeError, match=message) as error:
        models.build_model(arch, 3)
    assert "\n" not in str(error.value)


def test_timm_models_need_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(MinimascopeError, match=r"timm package: pip install 'minimascope\[timm\]'"):
        models.build_model("timm:resnet18", 3)


def test_timm_models_get_the_datas_classes_and_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def create_model(name: str, **options) -> torch.nn.Module:
        calls.append((name, options))
        return torch.nn.Sequential(torch.nn.Conv2d(options["in_chans"], 4, 3), torch.nn.Flatten(),
                                   torch.nn.LazyLinear(options.get("num_classes", 1000)))

    fake = types.SimpleNamespace(is_model=lambda name: name == "tiny", list_models=lambda: ["tiny"],
                                 create_model=create_model)
    monkeypatch.setitem(sys.modules, "timm", fake)
    models.build_model("timm:tiny", 7, seed=0, in_channels=1)
    assert calls == [("tiny", {"pretrained": False, "num_classes": 7, "in_chans": 1})]
    with pytest.raises(MinimascopeError, match="unknown timm model 'tinny'; did you mean timm:tiny\\?"):
        models.build_model("timm:tinny", 7)


def test_pretrained_torchvision_weights_from_a_file_fit_the_stem_and_keep_the_head(tmp_path: Path) -> None:
    torch.manual_seed(1)
    published = torchvision.models.get_model("squeezenet1_1", weights=None).state_dict()  # 1000 classes, RGB
    torch.save(published, tmp_path / "squeezenet.pth")
    model = models.build_model("torchvision:squeezenet1_1", 3, seed=0, in_channels=1)
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("classifier.1.")}
    with pytest.warns(UserWarning, match="not torchvision's published IMAGENET1K_V1"):
        models.init_pretrained(model, "torchvision:squeezenet1_1", tmp_path / "squeezenet.pth")
    loaded = model.state_dict()
    # a gray image x through the summed filters = the same image in R, G and B through the published ones
    assert torch.equal(loaded["features.0.weight"], published["features.0.weight"].sum(1, keepdim=True))
    assert all(torch.equal(loaded[k], v) for k, v in published.items()
               if k.startswith("features.") and k != "features.0.weight")
    assert all(torch.equal(loaded[k], v) for k, v in head.items())
    assert models.pretrained_weights_id("resnet18") == f"torchvision:{models.IMAGENET_WEIGHTS}"
    assert models.pretrained_weights_id("torchvision:squeezenet1_1") == \
        "torchvision:SqueezeNet1_1_Weights.IMAGENET1K_V1"


def test_a_payload_of_another_dataset_rebuilds_its_network(tmp_path: Path) -> None:
    model = models.build_model("resnet18-cifar", 3, seed=2, in_channels=1)
    dataset = {"dataset": "imagefolder", "classes": ["a", "b", "c"], "channels": 1, "image_size": [28, 28],
               "mean": [0.5], "std": [0.2]}
    torch.save(models.weights_payload(model, "resnet18-cifar", 3, {}, dataset), tmp_path / "w.pt")
    loaded, payload = models.load_trained(tmp_path / "w.pt")
    x = torch.randn(2, 1, 28, 28)
    assert payload["dataset"] == dataset and torch.equal(loaded.eval()(x), model.eval()(x))
    assert models.payload_dataset(payload) == "imagefolder" and models.payload_channels(payload) == 1
    assert (models.payload_dataset({}), models.payload_channels({})) == ("cifar10", 3)  # every earlier payload


# ----------------------------------------------------------------------------- layers by module type


def test_comparable_layers_of_resnet18_are_the_names_compared_so_far() -> None:
    model = models.build_model("resnet18", 10, seed=0)
    x = torch.zeros(1, 3, 32, 32)
    conv_linear = layers.comparable_layers(model, x)
    assert len(conv_linear) == 21 and conv_linear[:2] == ["conv1", "layer1.0.conv1"] and conv_linear[-1] == "fc"
    assert "layer2.0.downsample.0" in conv_linear
    assert layers.comparable_layers(model, x, "blocks") == ["conv1", *(f"layer{s}.{b}" for s in (1, 2, 3, 4)
                                                                       for b in (0, 1)), "fc"]
    assert (layers.stem_conv(model), layers.head(model)) == ("conv1", "fc")


def test_comparable_layers_of_other_architectures() -> None:
    mobilenet = models.build_model("torchvision:mobilenet_v3_small", 3, seed=0, in_channels=1)
    x = torch.zeros(1, 1, 24, 24)
    blocks = layers.comparable_layers(mobilenet, x, "blocks")
    assert blocks[0] == "features.0.0" and blocks[-1] == "classifier.3" and len(blocks) == 2 + 11
    assert all(type(mobilenet.get_submodule(n)).__name__ == "InvertedResidual" for n in blocks[1:-1])
    assert layers.head(mobilenet) == "classifier.3"
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16, 2))
    assert layers.comparable_layers(plain, torch.zeros(1, 1, 4, 4)) == ["0", "3"]
    with pytest.raises(MinimascopeError, match="layer set 'blocks' needs residual blocks, and Sequential has none"):
        layers.comparable_layers(plain, torch.zeros(1, 1, 4, 4), "blocks")
