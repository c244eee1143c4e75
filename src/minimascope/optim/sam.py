"""SAM (Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization", ICLR 2021) and
ASAM (Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep Neural
Networks", ICML 2021) around any first-order optimizer of the registry.

One step, with g the gradient at w (the training loop's backward) and T = diag(|w| + eta) for ASAM, I for SAM::

    e = rho · T² g / ‖T g‖          (SAM: rho · g / ‖g‖; the norm over all parameters together)
    g' = the gradient at w + e      (the closure: a second forward and backward)
    w <- base step from w with g'

The second forward pass must not move batch norm's running statistics (they describe the data at w, and
the paper's implementation updates them once per step): the training loop runs it inside
:func:`running_statistics_frozen`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from minimascope.optim import named


class SAM(torch.optim.Optimizer):
    """The ascent step to the worst point within ``rho`` and the ``base`` optimizer's step from there.

    ``step(closure)``: the gradients of the loss at w must be in ``.grad``; ``closure`` computes the loss
    and its gradients (``backward``) at the current weights and returns the loss. ``param_groups`` and the
    state are the base optimizer's, so a schedule scales the base's learning rate and a checkpoint holds
    the base's state (SAM keeps none between steps).
    """

    def __init__(self, params: list[Tensor], base: torch.optim.Optimizer, *, rho: float, adaptive: bool,
                 eta: float) -> None:
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.base, self.rho, self.adaptive, self.eta = base, rho, adaptive, eta
        self._params = params
        super().__init__(params, {})
        self.param_groups = base.param_groups

    def perturbation(self, params: list[Tensor]) -> list[Tensor]:
        """e of each parameter, from its ``.grad``."""
        grads = [p.grad for p in params]
        scales = [p.abs().add_(self.eta) for p in params] if self.adaptive else None
        scaled = torch._foreach_mul(grads, scales) if scales else grads  # T g
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in scaled]))
        directions = torch._foreach_mul(scaled, scales) if scales else grads  # T² g
        return torch._foreach_mul(directions, self.rho / norm.clamp_min(1e-12))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        if closure is None:
            raise RuntimeError("SAM needs a closure that computes the loss and its gradients at the current weights")
        params = [p for p in self._params if p.grad is not None]
        saved = [p.clone() for p in params]
        torch._foreach_add_(params, self.perturbation(params))
        for p in self._params:
            p.grad = None
        with torch.enable_grad():
            loss = closure()
        for p, w in zip(params, saved):
            p.copy_(w)  # back to w exactly, not w + e - e
        self.base.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups  # loading replaced the base's group dicts

    def describe(self) -> dict[str, Any]:
        from minimascope.optim import describe

        return describe(self.base)


@contextlib.contextmanager
def running_statistics_frozen(model: nn.Module) -> Iterator[None]:
    """Batch-norm layers normalise by the batch, as in training, but neither update nor count their running
    statistics (``track_running_stats`` off for the duration)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True


def build(params: list[Any], *, base: str, rho: float, adaptive: bool, eta: float, **base_options: Any) -> SAM:
    from minimascope import optim

    pairs = named(params)
    return SAM([p for _, p in pairs], optim.create(base, pairs, **base_options), rho=rho, adaptive=adaptive, eta=eta)
