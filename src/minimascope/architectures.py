"""Architecture names, checked without importing torch: the built-in ResNet18s, ``torchvision:NAME`` for any
torchvision classification model and ``timm:NAME`` for any timm model. Whether NAME exists is checked
when the network is built (:func:`minimascope.models.build_model`)."""

from __future__ import annotations

import difflib

from minimascope.errors import MinimascopeError

BUILTIN = ("resnet18", "resnet18-cifar")
SOURCES = ("torchvision", "timm")
CHOICES = "resnet18, resnet18-cifar, torchvision:NAME (e.g. torchvision:resnet34) or timm:NAME"


def split_arch(arch: str) -> tuple[str, str]:
    """(source, model name): ("builtin", "resnet18"), ("torchvision", "resnet34"), ("timm", "vit_tiny_patch16_224")."""
    check_arch_name(arch)
    if arch in BUILTIN:
        return "builtin", arch
    source, _, name = arch.partition(":")
    return source, name


def check_arch_name(arch: str) -> str:
    """``arch`` if it is a built-in name or SOURCE:NAME with a known source; else one line with a hint."""
    if not isinstance(arch, str):
        raise MinimascopeError(f"unknown architecture {arch!r}; choose {CHOICES}")
    if arch in BUILTIN:
        return arch
    source, separator, name = arch.partition(":")
    if separator and source in SOURCES and name.strip() == name and name:
        return arch
    close = difflib.get_close_matches(arch, [*BUILTIN, *(f"{s}:{name or 'NAME'}" for s in SOURCES)], n=1, cutoff=0.6)
    written = f"a torchvision or timm model is written torchvision:{arch} or timm:{arch}; "
    if close:
        hint = f"did you mean {close[0]}? " + (written if not separator and arch else "")
    elif not separator and arch:
        hint = written
    else:
        hint = ""
    raise MinimascopeError(f"unknown architecture {arch!r}; {hint}choose {CHOICES}")
