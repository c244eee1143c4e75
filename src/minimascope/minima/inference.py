"""The conv and linear layers of a network as operators linear in the point of a loss surface, for evaluating
many points (:mod:`minimascope.minima.landscape_points`) with the work that does not change between them done
once.

A layer's output is linear in its weight and bias, which are ``origin + Σ c_i · axis_i`` at a point. Each layer
called once per forward pass is given *forms* computed once from the origin and each axis, and at a point runs on
their combination:

* batch norm folded in (eval mode only, where its parameters and running statistics do not move along the
  axes): the form of a layer feeding batch norm is its weight scaled by γ / √(var + ε) per output channel, and a
  bias β − μ · γ / √(var + ε); batch norm itself then passes its input through (no pass over the activations).
  Checked on two images before use: where a layer's output also feeds something else, no fold is made.
* small maps: a convolution of a map with fewer positions than its kernel has taps (resnet18's last stages on
  32×32 images) is the product with the dense matrix it stands for (:mod:`minimascope.fast_layers`), here built
  once per form (by indexing: exact) and laid out for channels-last inputs, so neither the matrix nor a copy of
  the input is made per point; combining the dense forms per point also skips the taps that meet only padding
  (8 of 9 on a 1×1 map).
* layers applied to the images themselves (resnet18's first conv): their outputs for the origin and each axis
  are computed once per batch of images, and a point combines them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
FOLD_CHECK_TOL = 1e-4  # relative, on the logits of two images: a wrong fold changes them by O(1)


class Combination:
    """``origin + Σ c_i · axis_i`` at the coordinates asked, written into ``target`` (the origin itself, exactly,
    at coordinates 0). The part along every axis but the first is kept from the call before: the grid is walked
    in rows (one y, every x), so a point costs one pass over the tensors, not one per axis."""

    def __init__(self, origin: Tensor, axes: Sequence[Tensor], target: Tensor | None = None) -> None:
        self.origin, self.axes = origin, list(axes)
        self.target = torch.empty_like(origin) if target is None else target
        self.moves = any(bool(axis.any()) for axis in self.axes)
        self.rest, self.row = origin, tuple(0.0 for _ in self.axes[1:])

    def __call__(self, coordinates: Sequence[float]) -> Tensor:
        row = tuple(coordinates[1:])
        if row != self.row:
            if self.rest is self.origin:
                self.rest = torch.empty_like(self.origin)
            torch.add(self.origin, self.axes[1], alpha=row[0], out=self.rest)
            for value, axis in zip(row[1:], self.axes[2:]):
                self.rest.add_(axis, alpha=value)
            self.row = row
        return torch.add(self.rest, self.axes[0], alpha=coordinates[0], out=self.target)


@dataclass
class _Layer:
    module: nn.Module
    apply: Callable[[Tensor, Tensor, Tensor | None], Tensor]
    weight: Combination
    bias: Combination | None
    on_images: bool  # applied to the images themselves: its outputs are kept per batch
    outputs: list[tuple[Tensor, Combination]] = field(default_factory=list)  # (images, of the origin's and axes')


@dataclass
class _Call:
    module: nn.Module
    input: Tensor
    output: Tensor


class LayerForms:
    """Replaces the forward of ``model``'s conv and linear layers (and of folded batch norms) by their forms; see
    the module doc. ``origin`` and ``axes`` are float64 state entries, ``sample`` a couple of the images (in the
    model's dtype, device and layout); ``fold`` asks for batch norm to be folded (eval mode). ``replaced`` are
    the state keys the model no longer reads; :meth:`load` sets a point."""

    def __init__(self, model: nn.Module, origin: Mapping[str, Tensor], axes: Sequence[Mapping[str, Tensor]],
                 sample: Tensor, *, fold: bool) -> None:
        self.model, self.coordinates = model, tuple(0.0 for _ in axes)
        self.dtype, self.device = sample.dtype, sample.device
        with torch.no_grad():
            calls = _trace(model, sample)
            folds = _folds(model, calls, origin, axes) if fold else {}
            reference = model(sample) if folds else None
            self._build(calls, folds, origin, axes, sample)
            if reference is not None and not torch.allclose(
                    model(sample), reference, rtol=FOLD_CHECK_TOL, atol=FOLD_CHECK_TOL * float(reference.abs().max())):
                self.remove()
                self._build(calls, {}, origin, axes, sample)

    def _build(self, calls: list[_Call], folds: dict[nn.Module, nn.Module], origin: Mapping[str, Tensor],
               axes: Sequence[Mapping[str, Tensor]], sample: Tensor) -> None:
        names = {module: name for name, module in self.model.named_modules()}
        self.layers: list[_Layer] = []
        self.replaced: set[str] = set()
        for call in calls:
            if isinstance(call.module, LAYERS) and _called_once(call.module, calls) and _plain(call.module):
                norm = folds.get(call.module)
                prefixes = {names[call.module]} | ({names[norm]} if norm is not None else set())
                self.replaced.update(key for key in origin if key.rpartition(".")[0] in prefixes)
                self.layers.append(self._layer(call, names, norm, origin, axes, call.input is sample))
        for layer in self.layers:
            layer.module.forward = functools.partial(self._forward, layer)
        for norm in folds.values():
            norm.forward = _identity

    def _layer(self, call: _Call, names: Mapping[nn.Module, str], norm: nn.Module | None,
               origin: Mapping[str, Tensor], axes: Sequence[Mapping[str, Tensor]], on_images: bool) -> _Layer:
        module, name = call.module, names[call.module]
        weights = [origin[f"{name}.weight"]] + [axis[f"{name}.weight"] for axis in axes]
        zero = weights[0].new_zeros(weights[0].shape[0])
        biases = ([origin.get(f"{name}.bias", zero)] + [axis.get(f"{name}.bias", zero) for axis in axes]
                  if f"{name}.bias" in origin or norm is not None else [])
        if norm is not None:
            scale, shift = _affine(norm, origin, names[norm])
            weights = [w * scale.view(-1, *[1] * (w.ndim - 1)) for w in weights]
            biases = [biases[0] * scale + shift] + [b * scale for b in biases[1:]]
        apply: Callable[[Tensor, Tensor, Tensor | None], Tensor]
        if isinstance(module, nn.Linear):
            apply = F.linear
        elif (module.groups == 1 and module.padding_mode == "zeros"
              and math.prod(call.input.shape[2:]) < math.prod(module.kernel_size)):
            weights = [_dense(module, w, tuple(call.input.shape[2:])) for w in weights]
            out_size = tuple(call.output.shape[2:])
            biases = [b.repeat(math.prod(out_size)) for b in biases]
            apply = _dense_apply(out_size)
        else:
            apply = module._conv_forward
        return _Layer(module, apply, self._forms(weights), self._forms(biases) if biases else None, on_images)

    def _forms(self, values: list[Tensor]) -> Combination:
        layout = torch.channels_last if values[0].ndim == 4 else torch.contiguous_format
        forms = [v.to(self.device, self.dtype).contiguous(memory_format=layout) for v in values]
        return Combination(forms[0], forms[1:], forms[0].clone())

    def remove(self) -> None:
        """The model's own forwards back."""
        for module in self.model.modules():
            module.__dict__.pop("forward", None)

    def precompute(self, images: Tensor) -> None:
        """Keeps the outputs of the layers applied to the images for ``images`` (that very tensor, as the forward
        passes will give it) at the origin and along each axis."""
        with torch.no_grad():
            for layer in (layer for layer in self.layers if layer.on_images):
                bias = layer.bias
                outputs = [layer.apply(images, layer.weight.origin, None if bias is None else bias.origin)]
                outputs += [layer.apply(images, weight, None if bias is None else bias.axes[i])
                            for i, weight in enumerate(layer.weight.axes)]
                layer.outputs.append((images, Combination(outputs[0], outputs[1:])))

    def load(self, coordinates: Sequence[float]) -> None:
        self.coordinates = tuple(coordinates)
        with torch.no_grad():
            for layer in self.layers:
                for forms in (layer.weight, layer.bias):
                    if forms is not None and forms.moves:
                        forms(coordinates)

    def _forward(self, layer: _Layer, x: Tensor) -> Tensor:
        for images, outputs in layer.outputs:
            if x is images:
                return outputs(self.coordinates)
        return layer.apply(x, layer.weight.target, None if layer.bias is None else layer.bias.target)


def _identity(x: Tensor) -> Tensor:
    return x


def _called_once(module: nn.Module, calls: Sequence[_Call]) -> bool:
    return sum(call.module is module for call in calls) == 1


def _plain(module: nn.Module) -> bool:
    """A layer of torch's own forward (subclasses that change the forward, e.g. weight standardisation, keep it)."""
    return type(module).forward in (nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


def _folds(model: nn.Module, calls: list[_Call], origin: Mapping[str, Tensor],
           axes: Sequence[Mapping[str, Tensor]]) -> dict[nn.Module, nn.Module]:
    """Layer → the eval-mode batch norm applied to its output, where both are called once and none of the batch
    norm's entries move along the axes."""
    names = {module: name for name, module in model.named_modules()}
    moving = {key for key in origin if any(bool(axis[key].any()) for axis in axes)}
    produced = {id(call.output): call.module for call in calls if isinstance(call.module, LAYERS)}
    folds = {}
    for call in calls:
        norm, layer = call.module, produced.get(id(call.input))
        if (layer is not None and type(norm).forward is nn.modules.batchnorm._BatchNorm.forward
                and not norm.training and norm.running_mean is not None and _called_once(norm, calls)
                and _called_once(layer, calls) and _plain(layer)
                and not any(key.startswith(f"{names[norm]}.") for key in moving)):
            folds[layer] = norm
    return folds


def _affine(norm: nn.Module, origin: Mapping[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
    """Eval-mode batch norm as x · scale + shift per channel (float64)."""
    mean, var = origin[f"{name}.running_mean"], origin[f"{name}.running_var"]
    scale = 1 / (var + norm.eps).sqrt()
    shift = -mean * scale
    if norm.affine:
        gamma, beta = origin[f"{name}.weight"], origin[f"{name}.bias"]
        scale, shift = scale * gamma, shift * gamma + beta
    return scale, shift


def _dense(module: nn.Module, weight: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """The (inputs, outputs) matrix of the convolution (zero padding, one group) on maps of ``spatial`` size, rows
    and columns ordered (position, channel) as a channels-last map flattens: each entry the weight's tap that joins
    the two positions, or 0. Which tap: the convolution of each one-position map with a kernel numbering its taps
    (zero padding joins two positions by at most one tap)."""
    taps, positions = math.prod(module.kernel_size), math.prod(spatial)
    numbers = torch.arange(1, taps + 1, dtype=torch.float64).view(1, 1, *module.kernel_size)
    basis = torch.eye(positions, dtype=torch.float64).view(positions, 1, *spatial)
    tap = module._conv_forward(basis, numbers, None).reshape(positions, -1).round().long().to(weight.device)
    padded = torch.cat([torch.zeros_like(weight.flatten(2)[..., :1]), weight.flatten(2)], dim=2)  # tap 0: none
    return padded[:, :, tap].permute(2, 1, 3, 0).reshape(positions * weight.shape[1], -1)


def _dense_apply(out_size: tuple[int, ...]) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    def apply(x: Tensor, matrix: Tensor, bias: Tensor | None) -> Tensor:
        flat = x.movedim(1, -1).reshape(x.shape[0], -1)  # a view of a channels-last map
        out = flat @ matrix if bias is None else torch.addmm(bias, flat, matrix)
        return out.view(x.shape[0], *out_size, -1).movedim(-1, 1)
    return apply


def _trace(model: nn.Module, images: Tensor) -> list[_Call]:
    """The calls of the layers and batch norms of one forward pass, in order (a model's own forward, no grad)."""
    calls: list[_Call] = []

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if inputs and isinstance(inputs[0], Tensor) and isinstance(output, Tensor):
            calls.append(_Call(module, inputs[0], output))

    kinds = (*LAYERS, nn.modules.batchnorm._BatchNorm)
    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return calls
