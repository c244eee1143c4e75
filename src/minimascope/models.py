"""Named architectures and their initialisations: seeded random, pretrained (ImageNet), another run's.

``resnet18`` is torchvision's ResNet18 with the ImageNet stem (7×7 stride-2 conv and max-pool), the
architecture of the AdaHessian-vs-SGD study; ``resnet18-cifar`` swaps the stem for a 3×3 stride-1 conv
without max-pool, the usual CIFAR variant. ``torchvision:NAME`` is any torchvision classification model and
``timm:NAME`` any timm model (the optional extra ``minimascope[timm]``). Every network gets a head with one
output per class of the data set and a stem that reads its channels (1 for grayscale).
"""

from __future__ import annotations

import difflib
import hashlib
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from minimascope import layers
from minimascope.architectures import check_arch_name, split_arch
from minimascope.errors import MinimascopeError
from minimascope.io import load_torch_file
from minimascope.runs import FINAL_WEIGHTS, read_run_json

WEIGHTS_FORMAT = "minimascope-weights-v1"
IMAGENET_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
# torchvision publishes the first 8 hex digits of each file's sha256 in its name.
IMAGENET_SHA256_PREFIX = IMAGENET_WEIGHTS.url.rsplit("-", 1)[-1].split(".")[0]
TIMM_EXTRA = "pip install 'minimascope[timm]'"
# torchvision models whose auxiliary classifiers would make a training forward return a tuple.
_AUX_LOGITS = ("googlenet", "inception_v3")


def build_model(arch: str, num_classes: int = 10, seed: int | None = None, in_channels: int = 3) -> nn.Module:
    """A freshly initialised network with ``num_classes`` outputs reading ``in_channels`` channels; with
    ``seed`` its init is reproducible and leaves the global RNG untouched."""
    source, name = split_arch(arch)
    if num_classes < 2 or in_channels not in (1, 3):
        raise MinimascopeError(f"{arch}: needs 2 or more classes and 1 or 3 channels, got {num_classes} and "
                               f"{in_channels}")
    if source == "torchvision":
        constructor = _torchvision_constructor(name)
    elif source == "timm":
        constructor = _timm_constructor(name)
    else:
        constructor = _builtin
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = constructor(name, num_classes, in_channels)
    return model


def _builtin(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    model = resnet18(weights=None, num_classes=num_classes)
    if arch == "resnet18-cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        _read_channels(model, in_channels)
    return model


def _read_channels(model: nn.Module, in_channels: int) -> None:
    """Swap the stem conv for one like it reading ``in_channels`` (freshly initialised)."""
    name = layers.stem_conv(model)
    old = model.get_submodule(name)
    layers.replace_module(model, name, nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation, old.groups,
        old.bias is not None, old.padding_mode))


def _unknown(source: str, name: str, known: list[str]) -> MinimascopeError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(f'{source}:{c}' for c in close)}?" if close else f"{len(known)} are known"
    return MinimascopeError(f"unknown {source} model {name!r}; {hint}")


def _torchvision_constructor(name: str) -> Callable[[str, int, int], nn.Module]:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)  # the classification models
    if name not in known:
        raise _unknown("torchvision", name, known)

    def construct(name: str, num_classes: int, in_channels: int) -> nn.Module:
        options = {"aux_logits": False, "init_weights": True} if name in _AUX_LOGITS else {}
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
        if in_channels != 3:
            _read_channels(model, in_channels)
        return model

    return construct


def _import_timm():
    try:
        import timm
    except ImportError:
        raise MinimascopeError(f"timm: models need the timm package: {TIMM_EXTRA}") from None
    return timm


def _timm_constructor(name: str) -> Callable[[str, int, int], nn.Module]:
    timm = _import_timm()
    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())

    def construct(name: str, num_classes: int, in_channels: int) -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)

    return construct


def pretrained_weights_id(arch: str) -> str:
    """What a run's identity records for the published weights of ``arch`` (resnet18's as it always has)."""
    source, name = split_arch(arch)
    if source == "timm":
        return f"timm:{name}"
    return f"torchvision:{_published_weights(source, name)}"


def _published_weights(source: str, name: str):
    """torchvision's weights enum member for a built-in or torchvision architecture."""
    if name == "resnet18-cifar":
        raise MinimascopeError("ImageNet weights exist for resnet18's ImageNet stem, not for resnet18-cifar")
    if source == "builtin":
        return IMAGENET_WEIGHTS
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise MinimascopeError(f"torchvision publishes no weights for {name}") from None


def _published_state(source: str, name: str, weights_file: str | Path | None, model: nn.Module
                     ) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, what it is) of the published weights, from ``weights_file`` or the source's download."""
    if source == "timm":
        timm = _import_timm()
        overlay = {"file": str(weights_file)} if weights_file is not None else None
        try:  # timm fits the stem to the channels itself; the head is replaced by the seeded one
            published = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay,
                                          in_chans=_in_channels(model))
        except Exception as exc:
            raise MinimascopeError(f"could not load timm's weights for {name} ({type(exc).__name__}: "
                                   f"{' '.join(str(exc).split())[:200]})") from None
        return dict(published.state_dict()), f"timm's {name} weights"
    weights = _published_weights(source, name)
    what = f"{weights} weights" if source == "torchvision" else "ImageNet weights"
    if weights_file is None:
        try:
            return weights.get_state_dict(progress=False), what
        except Exception as exc:
            raise MinimascopeError(
                f"could not fetch {weights} through torchvision ({type(exc).__name__}); "
                f"download {weights.url} elsewhere and pass it with --weights FILE") from None
    path = Path(weights_file)
    state = load_torch_file(path, "weights file")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MinimascopeError(f"weights file {path} is not a state dict of tensors")
    published = re.search(r"-([0-9a-f]{8,})\.pth$", weights.url)
    digest = file_sha256(path)
    if published and not digest.startswith(published.group(1)):
        warnings.warn(f"weights file {path} has sha256 {digest[:16]}…, not torchvision's published "
                      f"{weights.name} ({published.group(1)}…): loading it anyway", stacklevel=3)
    return dict(state), what


def _in_channels(model: nn.Module) -> int:
    return model.get_submodule(layers.stem_conv(model)).in_channels


def init_pretrained(model: nn.Module, arch: str, weights_file: str | Path | None) -> None:
    """Load published (ImageNet) weights into every layer but the head, which keeps its (seeded) random
    init. A grayscale stem gets the sum of the published RGB filters (the same response to a gray image)."""
    source, name = split_arch(arch)
    state, what = _published_state(source, name, weights_file, model)
    stem = f"{layers.stem_conv(model)}.weight"
    own = model.state_dict()
    if stem in state and stem in own and state[stem].shape[1] == 3 and own[stem].shape[1] == 1:
        state[stem] = state[stem].sum(dim=1, keepdim=True)
    aux = tuple(f"{k.split('.')[0]}." for k in state if k.startswith(("aux1.", "aux2.", "AuxLogits.")))
    load_state_checked(model, state, what, skip=(f"{layers.head(model)}.", *aux))


def load_state_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, *,
                       skip: tuple[str, ...] = ()) -> None:
    """``load_state_dict`` that names the first mismatch in one line instead of a page of keys."""
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    given = {k: v for k, v in state.items() if not k.startswith(skip)}
    missing = sorted(own.keys() - given.keys())
    unexpected = sorted(given.keys() - own.keys())
    wrong_shape = [k for k in own.keys() & given.keys() if tuple(own[k].shape) != tuple(given[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) (first {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) (first {unexpected[0]})")
    if wrong_shape:
        key = sorted(wrong_shape)[0]
        problems.append(f"{len(wrong_shape)} shape mismatch(es) "
                        f"(first {key}: {tuple(given[key].shape)} vs {tuple(own[key].shape)})")
    if problems:
        raise MinimascopeError(f"{source} does not fit this {type(model).__name__}: {'; '.join(problems)}")
    check_finite(given, source)
    model.load_state_dict(given, strict=not skip)


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding inf or nan (a diverged run's): nothing trained from them means anything."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise MinimascopeError(f"{source} holds non-finite values in {len(bad)} tensor(s) (first {bad[0]}): "
                               f"weights of a diverged run are not loaded")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_payload(model: nn.Module, arch: str, num_classes: int, normalization: dict,
                    dataset: dict | None = None) -> dict:
    """What ``final.pt`` holds: the weights and enough to rebuild and feed the network alone; ``dataset``
    (``ImageData.describe()``: name, classes, channels, image size, mean, std) where it is not CIFAR-10's.
    A payload without one is a CIFAR-10 network reading 3 channels, as every earlier one is."""
    payload = {
        "format": WEIGHTS_FORMAT,
        "arch": arch,
        "num_classes": num_classes,
        "normalization": normalization,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if dataset is not None:
        payload["dataset"] = dataset
    return payload


def payload_channels(payload: Mapping) -> int:
    """The input channels of a payload's network."""
    return int(payload.get("dataset", {}).get("channels", 3))


def payload_dataset(payload: Mapping) -> str:
    """The name of the data set a payload's network was trained on (in ``minimascope.datasets``)."""
    return str(payload.get("dataset", {}).get("dataset", "cifar10"))


def read_weights(path: str | Path) -> dict:
    """The ``final.pt`` payload of a run directory or a weights/checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise MinimascopeError(f"no run directory or weights file at {path}")
    if path.is_dir():
        status = read_run_json(path).get("status")
        if status == "diverged":
            raise MinimascopeError(f"run {path} diverged, no final weights")
        if status != "completed":
            raise MinimascopeError(f"run {path} has not completed ({status}): it has no final weights yet")
        path = path / FINAL_WEIGHTS
    payload = load_torch_file(path, "weights file")
    if isinstance(payload, Mapping) and payload.get("format") == WEIGHTS_FORMAT:
        return dict(payload)
    if isinstance(payload, Mapping) and isinstance(payload.get("weights"), Mapping):  # a checkpoint
        return dict(payload["weights"])
    raise MinimascopeError(f"{path} is not a minimascope run, weights or checkpoint file")


def load_trained(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a trained network from a run directory or weights file; also returns the payload
    (arch, classes, normalisation) so callers can feed it the inputs it was trained on."""
    payload = read_weights(path)
    try:
        check_arch_name(payload["arch"])
    except MinimascopeError:
        raise MinimascopeError(f"{path} holds unknown architecture {payload['arch']!r}") from None
    model = build_model(payload["arch"], payload["num_classes"], in_channels=payload_channels(payload))
    load_state_checked(model, payload["state_dict"], str(path))
    return model, payload


def init_from_run(model: nn.Module, arch: str, path: str | Path) -> None:
    """Start from another run's final weights (how "train with A, then with B" works)."""
    payload = read_weights(path)
    if payload["arch"] != arch:
        raise MinimascopeError(f"{path} holds a {payload['arch']} network, not {arch}")
    load_state_checked(model, payload["state_dict"], str(path))
