"""Named architectures and their initialisations: seeded random, ImageNet-pretrained, another run's.

``resnet18`` is torchvision's ResNet18 with a 10-class head and the ImageNet stem (7×7 stride-2
conv and max-pool), the architecture of the AdaHessian-vs-SGD study; ``resnet18-cifar`` swaps
the stem for a 3×3 stride-1 conv without max-pool, the usual CIFAR variant.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from minimascope.config import ARCHITECTURES
from minimascope.errors import MinimascopeError
from minimascope.io import load_torch_file
from minimascope.runs import FINAL_WEIGHTS, read_run_json

WEIGHTS_FORMAT = "minimascope-weights-v1"
IMAGENET_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
# torchvision publishes the first 8 hex digits of each file's sha256 in its name.
IMAGENET_SHA256_PREFIX = IMAGENET_WEIGHTS.url.rsplit("-", 1)[-1].split(".")[0]


def build_model(arch: str, num_classes: int = 10, seed: int | None = None) -> nn.Module:
    """A freshly initialised network; with ``seed`` its init is reproducible and leaves the
    global RNG untouched."""
    if arch not in ARCHITECTURES:
        raise MinimascopeError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = resnet18(weights=None, num_classes=num_classes)
        if arch == "resnet18-cifar":
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
    return model


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


def imagenet_state(weights_file: str | Path | None) -> dict[str, torch.Tensor]:
    """torchvision's IMAGENET1K_V1 ResNet18 weights, from ``weights_file`` or torchvision's download.

    A local file is checked against the sha256 torchvision publishes; a different file is loaded
    all the same (it may be a deliberate variant) but said so in a warning.
    """
    if weights_file is None:
        try:
            return IMAGENET_WEIGHTS.get_state_dict(progress=False)
        except Exception as exc:
            raise MinimascopeError(
                f"could not fetch ImageNet weights through torchvision ({type(exc).__name__}); "
                f"download {IMAGENET_WEIGHTS.url} elsewhere and pass it with --weights FILE"
            ) from None
    path = Path(weights_file)
    state = load_torch_file(path, "weights file")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MinimascopeError(f"weights file {path} is not a state dict of tensors")
    digest = file_sha256(path)
    if not digest.startswith(IMAGENET_SHA256_PREFIX):
        warnings.warn(
            f"weights file {path} has sha256 {digest[:16]}…, not torchvision's published "
            f"IMAGENET1K_V1 ({IMAGENET_SHA256_PREFIX}…): loading it anyway", stacklevel=2
        )
    return dict(state)


def init_pretrained(model: nn.Module, arch: str, weights_file: str | Path | None) -> None:
    """Load ImageNet weights into every layer but the head, which keeps its (seeded) random init."""
    if arch != "resnet18":
        raise MinimascopeError(f"ImageNet weights exist for resnet18's ImageNet stem, not for {arch}")
    load_state_checked(model, imagenet_state(weights_file), "ImageNet weights", skip=("fc.",))


def weights_payload(model: nn.Module, arch: str, num_classes: int, normalization: dict) -> dict:
    """What ``final.pt`` holds: the weights and enough to rebuild and feed the network alone."""
    return {
        "format": WEIGHTS_FORMAT,
        "arch": arch,
        "num_classes": num_classes,
        "normalization": normalization,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


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
    if payload["arch"] not in ARCHITECTURES:
        raise MinimascopeError(f"{path} holds unknown architecture {payload['arch']!r}")
    model = build_model(payload["arch"], payload["num_classes"])
    load_state_checked(model, payload["state_dict"], str(path))
    return model, payload


def init_from_run(model: nn.Module, arch: str, path: str | Path) -> None:
    """Start from another run's final weights (how "train with A, then with B" works)."""
    payload = read_weights(path)
    if payload["arch"] != arch:
        raise MinimascopeError(f"{path} holds a {payload['arch']} network, not {arch}")
    load_state_checked(model, payload["state_dict"], str(path))
