"""A network's layers found by module type, for any architecture: its stem convolution and classification
head (which a data set's channels and classes resize), and the layers worth comparing between two networks
in forward order: every Conv2d and Linear, or the residual blocks.

For torchvision's resnet18 the names are those :mod:`minimascope.similarity` has always compared: 21
conv/linear layers (``conv1``, ``layer1.0.conv1`` … ``layer4.1.downsample.0``, ``fc``) and 10 for blocks
(``conv1``, ``layer1.0`` … ``layer4.1``, ``fc``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from minimascope.errors import MinimascopeError

LAYER_SETS = ("conv_linear", "blocks")
# Residual (and other repeated) blocks by class name, so that any library's count: torchvision's ResNet,
# ConvNeXt, EfficientNet, MobileNet, RegNet, ShuffleNet, DenseNet, ViT, Swin, MaxViT; timm's by the same
# names or the suffixes below. Only the outermost of nested blocks is one.
BLOCK_CLASSES = {"BasicBlock", "Bottleneck", "CNBlock", "MBConv", "FusedMBConv", "InvertedResidual",
                 "ResBottleneckBlock", "EncoderBlock", "SwinTransformerBlock", "SwinTransformerBlockV2",
                 "MaxVitLayer", "_DenseLayer", "EdgeResidual", "DepthwiseSeparableConv"}
BLOCK_SUFFIXES = ("Block", "Bottleneck")


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, restoring each module's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def is_block(module: nn.Module) -> bool:
    name = type(module).__name__
    return name in BLOCK_CLASSES or name.endswith(BLOCK_SUFFIXES)


def stem_conv(model: nn.Module) -> str:
    """The name of the first Conv2d (in registration order): the layer that reads the image's channels."""
    name = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if name is None:
        raise MinimascopeError(f"{type(model).__name__} has no Conv2d to read the image's channels")
    return name


def head(model: nn.Module) -> str:
    """The name of the classification head: the last Linear or Conv2d (in registration order)."""
    name = next((n for n, m in reversed(list(model.named_modules())) if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if name is None:
        raise MinimascopeError(f"{type(model).__name__} has no Linear or Conv2d layer to be its head")
    return name


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def forward_order(model: nn.Module, example_input: Tensor) -> list[str]:
    """Names of the submodules in the order a forward pass enters them (first entry counts)."""
    order: dict[str, None] = {}

    def hook_for(name: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, inputs: Any) -> None:
            order.setdefault(name)
        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in model.named_modules() if name]
    try:
        with evaluating(model), torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return list(order)


def comparable_layers(model: nn.Module, example_input: Tensor, layer_set: str = "conv_linear") -> list[str]:
    """Layers to compare, in forward order (found by a hooked dry forward of ``example_input``, one image of
    the data set's shape).

    "conv_linear": every Conv2d and Linear the forward uses (torchvision resnet18: 21: stem conv, 16 block
    convs, 3 downsample convs, fc). "blocks": the first Conv2d, the output of every outermost block
    (:func:`is_block`) and the last Linear (resnet18: 10)."""
    if layer_set not in LAYER_SETS:
        raise MinimascopeError(f"unknown layer set {layer_set!r}; choose one of {', '.join(LAYER_SETS)}")
    modules = dict(model.named_modules())
    order = forward_order(model, example_input)
    conv_linear = [n for n in order if isinstance(modules[n], (nn.Conv2d, nn.Linear))]
    if layer_set == "conv_linear":
        return conv_linear
    blocks: list[str] = []
    for name in order:
        if is_block(modules[name]) and not any(name.startswith(f"{outer}.") for outer in blocks):
            blocks.append(name)
    if not blocks:
        raise MinimascopeError(f"layer set 'blocks' needs residual blocks, and {type(model).__name__} has none; "
                               f"use conv_linear")
    first_conv = [n for n in conv_linear if isinstance(modules[n], nn.Conv2d)][:1]
    last_linear = [n for n in conv_linear if isinstance(modules[n], nn.Linear)][-1:]
    return [*first_conv, *blocks, *last_linear]
