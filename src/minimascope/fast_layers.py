"""Faster forward and double backward for the layers of ResNets (and a double backward where torch has none),
with the same numbers up to rounding.

Two kinds of waste, both large for CIFAR-sized images through an ImageNet-style ResNet, whose last
stages see 2x2 and 1x1 feature maps:

- Convolutions of small feature maps. A 3x3 kernel over a 1x1 map touches one real pixel and eight
  padding zeros, and the convolution kernels multiply all nine (2.25x the work at 2x2). When the map
  has fewer positions than the kernel has taps, the convolution here is one matrix product with the
  dense matrix it stands for (built from the kernel by indexing, so it stays differentiable): forward,
  backward and double backward then do only the multiplications that count.
- Second derivatives (Hessian-vector products by double backward). torch's generic formula for a
  convolution's double backward re-expresses the weight gradient's derivative as a convolution whose
  "kernel" is the whole feature map, on transposed copies; here each term is one of the three kernels
  a plain backward uses. Batch norm's takes ~45 small element-wise ops per layer; here ~11 fused
  passes over the activation.

Two of torch's kernels have no double backward at all, so a Hessian step through them fails: hard sigmoid
(MobileNetV3's squeeze-excitation) and the fused attention kernels behind ``scaled_dot_product_attention``
(ViT's self-attention, also where ``multi_head_attention_forward`` calls it, out of a mode's reach). For Hessian
steps hard sigmoid is written here as the formula it computes, and attention runs on torch's math kernel.

``fast_forward()`` routes a forward pass through these. With ``double_backward=False`` (first-order
training) only small-map convolutions change; the second-derivative rules are for Hessian steps:
their forward values, running statistics and first-order gradients come from torch's own kernels
(bit-identical), and third-order derivatives through them are not supported.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel


def _channel_sum(t: Tensor) -> Tensor:
    return t.sum(dim=[d for d in range(t.ndim) if d != 1])


def _per_channel(t: Tensor, ndim: int) -> Tensor:
    return t.view(1, -1, *([1] * (ndim - 2)))


class _BatchNormBackward(torch.autograd.Function):
    """Training-mode batch-norm backward (torch's kernel) with a fused double backward.

    Per channel, with M values, r = 1/sqrt(var + eps), xh = (x - mean) r and the first backward
    gx = w r (gy - S_g/M - xh S_gxh/M), gw = S_gxh, gb = S_g (S_ab = sum of a*b), the cotangents
    (u, a, b) of (gx, gw, gb) give, with K = S_ugy - S_u S_g/M - S_uxh S_gxh/M and q = dL/dxh at fixed r:
        d/dgy = w r (u - S_u/M - xh S_uxh/M) + a xh + b
        d/dw  = r K
        d/dx  = r (q - S_q/M - xh S_qxh/M) - w K r^2 xh / M,  q = a gy - w r (S_gxh u + S_uxh gy) / M
    i.e. per-channel combinations of u, gy, xh: ~11 passes over the activation where torch's generic
    formula takes ~45, each a separate small op.
    """

    @staticmethod
    def forward(ctx, gy: Tensor, x: Tensor, w: Tensor, mean: Tensor, invstd: Tensor, eps: float):  # type: ignore[override]
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            gy, x, w, None, None, mean, invstd, True, eps, [True, True, True]
        )
        ctx.save_for_backward(gy, x, w, mean, invstd, gw, gb)
        return gx, gw, gb

    @staticmethod
    @once_differentiable
    def backward(ctx, u: Tensor, a: Tensor, b: Tensor):  # type: ignore[override]
        # unused outputs arrive as zeros (autograd materializes them for custom Functions)
        gy, x, w, mean, invstd, s_gxh, s_g = ctx.saved_tensors
        n, size = x.ndim, x.numel() // x.shape[1]
        xh = torch.addcmul(_per_channel(-mean * invstd, n), x, _per_channel(invstd, n))
        s_u, s_uxh, s_ugy = _channel_sum(u), _channel_sum(u * xh), _channel_sum(u * gy)
        k = s_ugy - s_u * s_g / size - s_uxh * s_gxh / size
        wr = w * invstd
        grad_gy = torch.addcmul(_per_channel(b - wr * s_u / size, n), xh, _per_channel(a - wr * s_uxh / size, n))
        grad_gy.addcmul_(u, _per_channel(wr, n))
        grad_x = None
        if ctx.needs_input_grad[1]:
            s_q = a * s_g - wr * (s_gxh * s_u + s_uxh * s_g) / size
            s_qxh = a * s_gxh - 2 * wr * s_gxh * s_uxh / size
            coef_gy = a * invstd - wr * invstd * s_uxh / size
            coef_xh = -(invstd * s_qxh + wr * invstd * k) / size
            grad_x = torch.addcmul(_per_channel(-invstd * s_q / size, n), gy, _per_channel(coef_gy, n))
            grad_x.addcmul_(xh, _per_channel(coef_xh, n))
            grad_x.addcmul_(u, _per_channel(-wr * invstd * s_gxh / size, n))
        return grad_gy, grad_x, invstd * k, None, None, None


class _BatchNorm(torch.autograd.Function):
    """Training-mode batch norm by torch's kernels, with ``_BatchNormBackward`` as its backward."""

    @staticmethod
    def forward(ctx, x, w, b, running_mean, running_var, momentum: float, eps: float):  # type: ignore[override]
        out, mean, invstd = torch.native_batch_norm(x, w, b, running_mean, running_var, True, momentum, eps)
        ctx.save_for_backward(x, w, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        x, w, mean, invstd = ctx.saved_tensors
        gx, gw, gb = _BatchNormBackward.apply(gy, x, w, mean, invstd, ctx.eps)
        return gx, gw, gb, None, None, None, None


def _fast_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> Tensor | None:
    """``F.batch_norm`` through ``_BatchNorm`` where that is equivalent, else None (use torch's)."""
    supported = (
        training
        and weight is not None
        and bias is not None
        and momentum is not None
        and input.dtype in (torch.float32, torch.float64)
        and weight.dtype == input.dtype
        and input.ndim >= 2
        and input.numel() > input.shape[1]  # torch raises for one value per channel
    )
    if not supported:
        return None
    return _BatchNorm.apply(input, weight, bias, running_mean, running_var, momentum, eps)


class _ConvolutionBackward(torch.autograd.Function):
    """The first backward of ``_Convolution``, whose own backward uses only plain-backward kernels.

    gx = dgrad(gy, w) and gw = wgrad(x, gy) are bilinear, gb = sum(gy), and <u, dgrad(gy, w)> =
    <conv(u, w), gy>, <a, wgrad(x, gy)> = <conv(x, a), gy>, so the cotangents (u, a, b) give
        d/dgy = conv(u, w) + conv(x, a) + b,   d/dw = wgrad(u, gy),   d/dx = dgrad(gy, a).
    """

    @staticmethod
    def forward(ctx, gy: Tensor, x: Tensor, w: Tensor, layout: tuple, output_mask: list[bool]):  # type: ignore[override]
        ctx.set_materialize_grads(False)  # an unused output gets None: its terms are skipped, not multiplied by 0
        ctx.save_for_backward(gy, x, w)
        ctx.layout = layout
        bias_sizes = [w.shape[0]] if output_mask[2] else None
        return torch.ops.aten.convolution_backward(gy, x, w, bias_sizes, *_aten_layout(layout), output_mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, u: Tensor | None, a: Tensor | None, b: Tensor | None):  # type: ignore[override]
        gy, x, w = ctx.saved_tensors
        layout = ctx.layout
        terms = []
        if u is not None:
            terms.append(torch.ops.aten.convolution(u, w, None, *_aten_layout(layout)))
        if a is not None:
            terms.append(torch.ops.aten.convolution(x, a, None, *_aten_layout(layout)))
        grad_gy = terms[0] if terms else None
        for term in terms[1:]:
            grad_gy.add_(term)
        if b is not None:
            bias = b.view(1, -1, *([1] * (gy.ndim - 2)))
            grad_gy = bias.expand_as(gy).clone() if grad_gy is None else grad_gy.add_(bias)
        grad_x = grad_w = None
        if a is not None and ctx.needs_input_grad[1]:
            grad_x = torch.ops.aten.convolution_backward(gy, x, a, None, *_aten_layout(layout), [True, False, False])[0]
        if u is not None and ctx.needs_input_grad[2]:
            grad_w = torch.ops.aten.convolution_backward(gy, u, w, None, *_aten_layout(layout), [False, True, False])[1]
        return grad_gy, grad_x, grad_w, None, None


class _Convolution(torch.autograd.Function):
    """A convolution by torch's kernel, with ``_ConvolutionBackward`` as its backward."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, bias: Tensor | None, layout: tuple):  # type: ignore[override]
        ctx.save_for_backward(x, w)
        ctx.layout = layout
        return torch.ops.aten.convolution(x, w, bias, *_aten_layout(layout))

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        x, w = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:3])
        gx, gw, gb = _ConvolutionBackward.apply(gy, x, w, ctx.layout, mask)
        return gx, gw, gb, None


def _aten_layout(layout: tuple) -> tuple:
    """(stride, padding, dilation, groups) as aten's convolution ops take them (not transposed)."""
    stride, padding, dilation, groups = layout
    return stride, padding, dilation, False, [0] * len(stride), groups


_CONVOLUTIONS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


@functools.lru_cache(maxsize=256)
def _tap_selector(
    in_size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
    dilation: tuple[int, ...], dtype: torch.dtype, device: torch.device,
) -> tuple[Tensor, tuple[int, ...]]:
    """A (taps, outputs * inputs) 0/1 matrix: column (o, i) selects the kernel tap joining output
    position o to input position i (all zeros where none does); and the output size."""
    n = len(in_size)
    flat, linked, out_size = torch.zeros((), dtype=torch.int64), torch.ones((), dtype=torch.bool), []
    for dim, (size, k, s, p, d) in enumerate(zip(in_size, kernel, stride, padding, dilation)):
        outputs = (size + 2 * p - d * (k - 1) - 1) // s + 1
        offset = torch.arange(size) - torch.arange(outputs).unsqueeze(1) * s + p  # dilation * tap, if linked
        shape = [1] * (2 * n)
        shape[dim], shape[n + dim] = outputs, size
        flat = flat * k + (offset // d).view(shape)
        linked = linked & ((offset % d == 0) & (offset >= 0) & (offset < d * k)).view(shape)
        out_size.append(outputs)
    n_taps = math.prod(kernel)
    index = torch.where(linked, flat, n_taps).reshape(-1)  # n_taps: the dropped column below
    selector = F.one_hot(index, n_taps + 1)[:, :n_taps].T
    return selector.to(dtype=dtype, device=device).contiguous(), tuple(out_size)


def _dense_convolution(x: Tensor, w: Tensor, bias: Tensor | None, layout: tuple) -> Tensor:
    """The convolution as one product with its dense (outputs x inputs) matrix, assembled from w
    (a product with a 0/1 matrix: exact, and differentiable to any order)."""
    stride, padding, dilation, _ = layout
    spatial = tuple(x.shape[2:])
    selector, out_size = _tap_selector(
        spatial, tuple(w.shape[2:]), tuple(stride), tuple(padding), tuple(dilation), w.dtype, w.device
    )
    (c_out, c_in), n_out, n_in = w.shape[:2], math.prod(out_size), math.prod(spatial)
    dense = (w.reshape(c_out * c_in, -1) @ selector).view(c_out, c_in, n_out, n_in)
    dense = dense.permute(0, 2, 1, 3).reshape(c_out * n_out, c_in * n_in)
    if bias is not None:
        bias = bias.repeat_interleave(n_out)
    return F.linear(x.reshape(x.shape[0], -1), dense, bias).view(x.shape[0], c_out, *out_size)


def _map_is_small(x: Tensor, w: Tensor) -> bool:
    """Fewer map positions than kernel taps: the dense product does fewer multiplications."""
    return math.prod(x.shape[2:]) < math.prod(w.shape[2:])


def _convolution(func, double_backward: bool, input: Tensor, weight: Tensor,  # type: ignore[no-untyped-def]
                 bias: Tensor | None = None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor | None:
    """``F.conv{1,2,3}d`` as a dense product on small maps (groups of 1), else through ``_Convolution``
    when ``double_backward``; None (use torch's own) otherwise, and for string padding or an unbatched input."""
    dims = _CONVOLUTIONS[func]
    if isinstance(padding, str) or input.ndim != dims + 2:
        return None
    layout = tuple(_as_list(v, dims) for v in (stride, padding, dilation)) + (groups,)
    if groups == 1 and _map_is_small(input, weight):
        return _dense_convolution(input, weight, bias, layout)
    if double_backward:
        return _Convolution.apply(input, weight, bias, layout)
    return None


def _as_list(value: int | tuple[int, ...] | list[int], dims: int) -> list[int]:
    return [value] * dims if isinstance(value, int) else list(value)


def _hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor | None:
    """Hard sigmoid as aten computes it, min(max(x + 3, 0), 6) / 6, in differentiable ops."""
    return None if inplace else torch.clamp(input + 3, 0, 6) / 6


_SECOND_ORDER_FORMULAS = {F.hardsigmoid: _hardsigmoid}


class _FastForwardMode(torch.overrides.TorchFunctionMode):
    def __init__(self, double_backward: bool) -> None:
        super().__init__()
        self.double_backward = double_backward
        self.contexts = contextlib.ExitStack()

    def __enter__(self):  # type: ignore[no-untyped-def]
        if self.double_backward:
            self.contexts.enter_context(sdpa_kernel(SDPBackend.MATH))
        return super().__enter__()

    def __exit__(self, *exc_info) -> None:  # type: ignore[no-untyped-def]
        try:
            super().__exit__(*exc_info)
        finally:
            self.contexts.close()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        second_order = self.double_backward and torch.is_grad_enabled()
        out = None
        if func in _CONVOLUTIONS:
            out = _convolution(func, second_order, *args, **kwargs)
        elif func is F.batch_norm and second_order:
            out = _fast_batch_norm(*args, **kwargs)
        elif func in _SECOND_ORDER_FORMULAS and second_order:
            out = _SECOND_ORDER_FORMULAS[func](*args, **kwargs)
        return func(*args, **kwargs) if out is None else out


def fast_forward(*, double_backward: bool) -> torch.overrides.TorchFunctionMode:
    """Context manager for a forward pass: convolutions of maps smaller than their kernel become dense
    matrix products; with ``double_backward=True`` (a Hessian step), convolutions and training-mode
    batch norm also get the cheaper second derivative, and hard sigmoid and attention one at all. Usage::

        with fast_forward(double_backward=optimizer.needs_create_graph()):
            loss = criterion(model(x), y)
        loss.backward(create_graph=optimizer.needs_create_graph())
    """
    return _FastForwardMode(double_backward)
