"""Muon as its authors use it (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"):
``torch.optim.Muon`` on the weights of the hidden layers, conv kernels flattened to (out, in·k·k) matrices;
AdamW on the rest: biases, norm scales, and the first and the last layer (the input stem and the
classifier), whose weights are not hidden-layer matrices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from minimascope.optim import named


def split(params: list[tuple[str, Tensor]]) -> tuple[list[tuple[str, Tensor]], list[tuple[str, Tensor]]]:
    """(Muon's, AdamW's) parameters: Muon takes every tensor of 2+ dimensions except the first and the last
    (parameters in the model's order: the first layer's weight comes first, the classifier's last)."""
    matrices = [i for i, (_, p) in enumerate(params) if p.ndim >= 2]
    hidden = set(matrices[1:-1])
    return ([pair for i, pair in enumerate(params) if i in hidden],
            [pair for i, pair in enumerate(params) if i not in hidden])


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer of two: ``torch.optim.Muon`` over 2-D views of the hidden weights (sharing their
    storage, so Muon's in-place update is the weights' update) and ``torch.optim.AdamW`` over the rest.
    ``param_groups`` are the two optimizers' groups, so a learning-rate schedule scales both.

    The views alias the weights' storage: build it after the model has moved to its device.
    """

    def __init__(self, params: Iterable[Any], *, lr: float, momentum: float, nesterov: bool, weight_decay: float,
                 ns_steps: int, adjust_lr_fn: str | None, adamw_lr: float, betas: tuple[float, float],
                 eps: float) -> None:
        pairs = named(params)
        hidden, rest = split(pairs)
        self._params = [p for _, p in pairs]
        self._hidden = [p for _, p in hidden]
        self._views = [nn.Parameter(p.detach().view(len(p), -1)) for p in self._hidden]
        self.muon = torch.optim.Muon(self._views, lr=lr, momentum=momentum, nesterov=nesterov,
                                     weight_decay=weight_decay, ns_steps=ns_steps,
                                     adjust_lr_fn=adjust_lr_fn) if hidden else None
        self.adamw = torch.optim.AdamW([p for _, p in rest], lr=adamw_lr, betas=tuple(betas), eps=eps,
                                       weight_decay=weight_decay) if rest else None
        self.groups = {"muon": [name for name, _ in hidden], "adamw": [name for name, _ in rest]}
        super().__init__(self._params, {})
        self._link_groups()

    def _link_groups(self) -> None:
        # the inner optimizers' own group dicts (load_state_dict replaces them), so a scheduler reaches both
        self.param_groups = [group for opt in self._inner() for group in opt.param_groups]

    def _inner(self) -> list[torch.optim.Optimizer]:
        return [opt for opt in (self.muon, self.adamw) if opt is not None]

    def describe(self) -> dict[str, Any]:
        return {"split": self.groups}

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for view, p in zip(self._views, self._hidden):
            view.grad = None if p.grad is None else p.grad.view(view.shape)
        for opt in self._inner():
            opt.step()
        for view in self._views:
            view.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict() if self.muon else None,
                "adamw": self.adamw.state_dict() if self.adamw else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for opt, key in ((self.muon, "muon"), (self.adamw, "adamw")):
            if opt is not None:
                opt.load_state_dict(state_dict[key])
        self._link_groups()


def build(params: list[Any], **hyperparameters: Any) -> MuonWithAdamW:
    return MuonWithAdamW(params, **hyperparameters)
