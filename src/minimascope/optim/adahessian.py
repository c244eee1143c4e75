"""AdaHessian (Yao et al., "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning", AAAI 2021):
Adam with the squared gradient replaced by a squared, window-averaged Hutchinson estimate of the Hessian
diagonal. The estimate and the window statistic come from ``minimascope.curvature`` (``hutchinson_diagonal``,
``block_statistic``), which the loss-landscape analyses share; the forward pass of a Hessian step is cheaper
inside ``minimascope.fast_layers.fast_forward(double_backward=True)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from minimascope.curvature import BLOCK_STATS, block_dims, block_statistic, hutchinson_diagonal


def _check_hyperparameters(
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    hessian_power: float,
    block_stat: str,
) -> None:
    if not lr >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not 0.0 < hessian_power <= 1.0:
        raise ValueError(f"hessian_power must be in (0, 1], got {hessian_power}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
    if block_stat not in BLOCK_STATS:
        raise ValueError(f"unknown block_stat {block_stat!r}; expected one of {', '.join(BLOCK_STATS)}")


class AdaHessian(torch.optim.Optimizer):
    r"""AdaHessian (Yao et al. 2021), following the authors' image-classification code.

    Per step t and parameter tensor, with g its gradient::

        D  = z * (H z),  z Rademacher (mean of n_samples probes)   # Hutchinson estimate of diag(H)
        Ds = block_statistic(D, block_stat)                          # conv kernels: over the window
        m  = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) Ds^2
        theta <- theta - lr (m / (1 - b1^t)) / ((v / (1 - b2^h))^(k/2) + eps) - lr wd theta

    h counts this parameter's Hessian updates (h = t unless ``update_every > 1``).

    Usage: ``loss.backward(create_graph=opt.needs_create_graph()); opt.step(); opt.zero_grad()``.
    ``loss.backward(create_graph=True)`` on every step also works, at the cost of the graph. Running
    the forward pass inside ``minimascope.fast_layers.fast_forward(double_backward=True)`` makes
    Hessian steps of convolutional networks cheaper.

    Args:
        lr: learning rate.
        betas: decay of the gradient and Hessian moving averages.
        eps: added to the denominator.
        weight_decay: decoupled (shrink theta by lr * wd) by default. The authors' script takes
            ``--weight-decay W`` and hands their optimizer ``W / lr``, applied exactly as here, so their
            published CIFAR setting (``--lr 0.15 --weight-decay 5e-4``) is ``lr=0.15,
            weight_decay=5e-4 / 0.15`` (about 3.33e-3) here; ``weight_decay=5e-4`` is 6.7x weaker.
        hessian_power: k in (0, 1]; 1 is the full Newton-like scaling, smaller values move towards Adam.
        update_every: estimate the Hessian only on every ``update_every``-th step (the first included);
            v is updated only then and bias-corrected by the number of such updates. Other steps need
            only a plain ``loss.backward()`` and cost about an SGD step.
        block_stat: ``"abs_mean"`` (default) or ``"signed_mean"``, see :func:`block_statistic`. The
            default is the authors' CV code, which produced their published results; it also cannot cancel
            to ~0 where curvature of both signs (or Hutchinson noise) meets in a window, which would leave
            only eps in the denominator and a step ~lr/eps times the gradient.
        n_samples: Rademacher probes (Hessian-vector products) averaged per Hessian estimate.
        decoupled_weight_decay: False adds wd * theta to g (coupled L2, as torch's SGD/Adam); the Hessian
            estimate is of the loss alone either way.
        seed: seeds this optimizer's own CPU generator for the probes; its state is in ``state_dict()``.

    Gradients are detached in place by ``step()`` so the double-backward graph is freed at once,
    whatever the loop does with ``zero_grad``. Parameters without a gradient are skipped. On a Hessian
    step, a gradient without a graph (plain ``backward()``) keeps that parameter's previous estimate
    (one warning per optimizer); a parameter with no Hessian estimate yet is not updated.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 5e-4,
        hessian_power: float = 1.0,
        update_every: int = 1,
        block_stat: str = "abs_mean",
        n_samples: int = 1,
        decoupled_weight_decay: bool = True,
        seed: int = 0,
    ) -> None:
        _check_hyperparameters(lr, betas, eps, weight_decay, hessian_power, block_stat)
        if not (isinstance(update_every, int) and update_every >= 1):
            raise ValueError(f"update_every must be an integer >= 1, got {update_every}")
        if not (isinstance(n_samples, int) and n_samples >= 1):
            raise ValueError(f"n_samples must be an integer >= 1, got {n_samples}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            hessian_power=hessian_power,
            block_stat=block_stat,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults)
        self.update_every = update_every
        self.n_samples = n_samples
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self._calls = 0  # calls to step(): drives the lazy-Hessian schedule
        self._warned_no_graph = False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"],
                               group["hessian_power"], group["block_stat"])

    def needs_create_graph(self) -> bool:
        """True when the next ``step()`` estimates the Hessian, so ``backward`` needs ``create_graph=True``."""
        return self._calls % self.update_every == 0

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # Plain ints and a uint8 tensor, so torch.load(weights_only=True) can read it back.
        state["adahessian"] = {"calls": self._calls, "generator_state": self.generator.get_state()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("adahessian")
        super().load_state_dict(state_dict)
        self._calls = int(extra["calls"])
        self.generator.set_state(extra["generator_state"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One update. A ``closure`` must call ``backward(create_graph=self.needs_create_graph())`` itself."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        hessian_step = self.needs_create_graph()
        self._calls += 1
        live = [[p for p in group["params"] if p.grad is not None] for group in self.param_groups]
        all_live = [p for params in live for p in params]
        if any(p.grad.is_sparse for p in all_live):
            raise RuntimeError("AdaHessian does not support sparse gradients")
        diagonals = self._estimate_diagonals(all_live) if hessian_step else {}
        for group, params in zip(self.param_groups, live):
            for p in params:
                p.grad = p.grad.detach()  # drop the graph now; the values are all the update needs
            self._update_group(group, params, diagonals)
        return loss

    def _estimate_diagonals(self, params: list[Tensor]) -> dict[Tensor, Tensor]:
        """Hutchinson diagonals of the parameters whose gradients carry a graph, keyed by parameter."""
        with_graph = [p for p in params if p.grad.requires_grad]
        if len(with_graph) < len(params) and not self._warned_no_graph:
            self._warned_no_graph = True
            warnings.warn(
                "AdaHessian: on a Hessian step some gradients have no autograd graph, so those parameters keep "
                "their previous Hessian estimate (or are not updated before their first one). Call "
                "loss.backward(create_graph=optimizer.needs_create_graph()).",
                RuntimeWarning,
                stacklevel=3,
            )
        if not with_graph:
            return {}
        with torch.enable_grad():
            diagonals = hutchinson_diagonal(
                [p.grad for p in with_graph], with_graph, n_samples=self.n_samples, generator=self.generator
            )
        return dict(zip(with_graph, diagonals))

    def _state_of(self, p: Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["hessian_updates"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            window_shape = [1 if d in block_dims(p.ndim) else s for d, s in enumerate(p.shape)]
            state["exp_hessian_diag_sq"] = torch.zeros(window_shape, dtype=p.dtype, device=p.device)
        return state

    def _update_group(self, group: dict[str, Any], params: list[Tensor], diagonals: dict[Tensor, Tensor]) -> None:
        """The update of one parameter group, as list-wide (foreach) ops."""
        beta1, beta2 = group["betas"]
        states = [self._state_of(p) for p in params]
        fresh = [(state, diagonals[p]) for p, state in zip(params, states) if p in diagonals]
        if fresh:
            v_fresh = [state["exp_hessian_diag_sq"] for state, _ in fresh]
            stats = [block_statistic(diagonal, group["block_stat"]) for _, diagonal in fresh]
            torch._foreach_mul_(v_fresh, beta2)
            torch._foreach_addcmul_(v_fresh, stats, stats, value=1.0 - beta2)
            for state, _ in fresh:
                state["hessian_updates"] += 1
        # a parameter with no curvature seen yet is not moved: the denominator would be eps alone
        moving = [(p, state) for p, state in zip(params, states) if state["hessian_updates"] > 0]
        if not moving:
            return
        params, states = [p for p, _ in moving], [state for _, state in moving]
        lr, wd = group["lr"], group["weight_decay"]
        grads = [p.grad for p in params]
        if wd and not group["decoupled_weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=wd)
        for state in states:
            state["step"] += 1
        m = [state["exp_avg"] for state in states]
        torch._foreach_lerp_(m, grads, 1.0 - beta1)  # b1 m + (1 - b1) g in one pass
        denom = torch._foreach_div(
            [state["exp_hessian_diag_sq"] for state in states],
            [1.0 - beta2 ** state["hessian_updates"] for state in states],
        )
        torch._foreach_pow_(denom, group["hessian_power"] / 2.0)
        torch._foreach_add_(denom, group["eps"])
        if wd and group["decoupled_weight_decay"]:
            torch._foreach_mul_(params, 1.0 - lr * wd)
        torch._foreach_addcdiv_(params, m, denom, [-lr / (1.0 - beta1 ** state["step"]) for state in states])


def build(params: Iterable[Tensor] | Iterable[dict[str, Any]], *, lr: float, betas: tuple[float, float], eps: float,
          weight_decay: float, hessian_power: float, update_every: int, block_stat: str, hessian_samples: int,
          coupled_weight_decay: bool, seed: int) -> AdaHessian:
    """The registry's builder: the training options' names for :class:`AdaHessian`'s arguments."""
    return AdaHessian(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                      hessian_power=hessian_power, update_every=update_every, block_stat=block_stat,
                      n_samples=hessian_samples, decoupled_weight_decay=not coupled_weight_decay, seed=seed)
