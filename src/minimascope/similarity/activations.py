"""Activations of named layers: forward hooks (:func:`capture_activations`) and batched collection
(:func:`collect_activations`); the layers to compare in forward order come from :mod:`minimascope.layers`."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from minimascope.errors import MinimascopeError
from minimascope.layers import evaluating
from minimascope.similarity.measures import _check_samples

Progress = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)`` while a comparison runs."""
POLICIES = ("flatten", "spatial_mean")


def check_layer_names(model: nn.Module, names: Sequence[str]) -> None:
    """Unknown or repeated layer names → MinimascopeError naming close matches."""
    known = [name for name, _ in model.named_modules()]
    known_set = set(known)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise MinimascopeError(f"layer {name!r} is listed twice")
        seen.add(name)
        if name not in known_set:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = (f"did you mean {', '.join(close)}?" if close
                    else f"the model has {len(known)} named modules, e.g. {', '.join(known[1:4])}")
            raise MinimascopeError(f"unknown layer {name!r} in {type(model).__name__}; {hint}")


def _apply_policy(output: Tensor, policy: str) -> Tensor:
    if policy == "spatial_mean" and output.ndim == 4:
        output = output.mean((2, 3))
    return output.detach().flatten(1).to("cpu", torch.float32)


@contextmanager
def capture_activations(model: nn.Module, layer_names: Sequence[str],
                        policy: str = "flatten") -> Iterator[dict[str, Tensor]]:
    """Forward hooks filling the yielded dict with ``name → (N, p)`` float32 CPU activations of
    each forward; clear it between forwards. Conv maps (N, C, H, W) become (N, C·H·W) under
    "flatten" and (N, C) under "spatial_mean" (averaged over H, W); other outputs are flattened.
    A module called twice in one forward raises (its activation would be ambiguous). The hooks
    are removed on exit, also after an exception."""
    if policy not in POLICIES:
        raise MinimascopeError(f"unknown activation policy {policy!r}; choose one of {', '.join(POLICIES)}")
    check_layer_names(model, layer_names)
    modules = dict(model.named_modules())
    store: dict[str, Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if name in store:
                raise MinimascopeError(f"layer {name!r} runs more than once per forward pass; "
                                       f"choose a module that is called once")
            if not isinstance(output, Tensor):
                raise MinimascopeError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
            store[name] = _apply_policy(output, policy)
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layer_names]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Consecutive batches; a remainder under 4 samples joins the previous batch (unbiased HSIC
    needs 4)."""
    if batch_size < 1:
        raise MinimascopeError(f"batch size must be positive, got {batch_size}")
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 4:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _iter_activations(model: nn.Module, inputs: Tensor, layers: Sequence[str], *, batch_size: int,
                      device: str | torch.device, policy: str) -> Iterator[list[Tensor]]:
    """Per batch, the activations of ``layers`` (in that order), in eval mode without gradients."""
    model.to(device)
    with capture_activations(model, layers, policy) as store, evaluating(model):
        for start, stop in _batch_bounds(inputs.shape[0], batch_size):
            store.clear()
            # no_grad only around the forward: a grad-mode context held across ``yield`` leaks
            # into the caller, and two interleaved generators would restore it in the wrong order.
            with torch.no_grad():
                model(inputs[start:stop].to(device))
            missing = [name for name in layers if name not in store]
            if missing:
                raise MinimascopeError(f"layer {missing[0]!r} is not used by the forward pass")
            yield [store[name] for name in layers]


def collect_activations(model: nn.Module, inputs: Tensor, layers: Sequence[str], *, batch_size: int = 500,
                        device: str | torch.device = "cpu", policy: str = "flatten",
                        progress: Progress | None = None) -> dict[str, Tensor]:
    """``name → (N, p)`` float32 activations of ``inputs`` (N, C, H, W), already normalised as the
    model expects. The model is moved to ``device`` and run in eval mode under no_grad."""
    n = inputs.shape[0]
    _check_samples(n, n)
    out: dict[str, Tensor] = {}
    done = 0
    for batch in _iter_activations(model, inputs, layers, batch_size=batch_size, device=device, policy=policy):
        if not out:
            out = {name: torch.empty((n, a.shape[1]), dtype=torch.float32) for name, a in zip(layers, batch)}
        for name, a in zip(layers, batch):
            out[name][done:done + a.shape[0]] = a
        done += batch[0].shape[0]
        if progress:
            progress("activations", done, n)
    return out
